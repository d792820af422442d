//! A session's outbound queue: bounded in frames and in bytes, with a byte
//! budget shared by every session, so receivers that do not read cannot
//! pin the host's memory. A receiver past its own bounds is disconnected;
//! when the shared budget is spent, the receivers with the largest backlogs
//! (the ones spending it) are, never one merely a frame behind. Each
//! session also has an allowance of bytes its own frames may put into the
//! others' queues, so one sender cannot fill them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rate::{Flooding, TokenBucket};
use super::rooms::Outbound;

/// The bounds of every session's queue, and the bytes queued in all of them.
#[derive(Debug)]
pub struct SendBudget {
    /// Frames (and pings) one session may have waiting.
    pub frames: usize,
    /// Bytes one session may have waiting.
    pub session_bytes: usize,
    /// Bytes all sessions together may have waiting.
    pub total_bytes: usize,
    /// Bytes per second one session's frames may add to others' queues,
    /// counted once per recipient; 0 = no limit. Its burst is half of
    /// `session_bytes`: one sender alone never fills a receiver's queue.
    pub sender_bytes_per_sec: usize,
    queued: AtomicUsize,
    /// Every open queue, so the largest can be found when the total is spent.
    queues: Mutex<HashMap<u64, Weak<Queued>>>,
    next_id: AtomicU64,
}

impl SendBudget {
    pub fn new(
        frames: usize,
        session_bytes: usize,
        total_bytes: usize,
        sender_bytes_per_sec: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            frames,
            session_bytes,
            total_bytes,
            sender_bytes_per_sec,
            queued: AtomicUsize::new(0),
            queues: Mutex::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Bytes waiting in all sessions' queues now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Cuts off the largest backlogs until the total is within the budget
    /// again. Linear in the open queues, but each call frees at least the
    /// largest backlog, so a flood pays for its own searches.
    fn shed(&self) {
        let queues = self.queues.lock();
        while self.queued_bytes() > self.total_bytes {
            let largest = queues
                .values()
                .filter_map(Weak::upgrade)
                .max_by_key(|q| q.backlog.lock().bytes);
            match largest {
                Some(q) if q.backlog.lock().bytes > 0 => {
                    tracing::info!(
                        bytes = q.backlog.lock().bytes,
                        "closed: the largest send queue while all queues together held more than {} bytes",
                        self.total_bytes
                    );
                    q.cut_off();
                }
                _ => break,
            }
        }
    }
}

/// What one session has waiting.
#[derive(Debug, Default)]
struct Backlog {
    bytes: usize,
    /// Cut off: its bytes were given back at once, whatever its writer
    /// still holds; nothing more is queued or counted.
    cut_off: bool,
}

/// One session's share of the budget.
#[derive(Debug)]
struct Queued {
    id: u64,
    backlog: Mutex<Backlog>,
    budget: Arc<SendBudget>,
    kill: CancellationToken,
}

impl Queued {
    /// Charges `n` bytes; false (and nothing charged) when this session is
    /// past its own bound, or is cut off to bring the total back within the
    /// budget.
    fn charge(&self, n: usize) -> bool {
        let total = {
            let mut b = self.backlog.lock();
            if b.cut_off {
                return false;
            }
            if b.bytes + n > self.budget.session_bytes {
                drop(b);
                self.cut_off();
                return false;
            }
            b.bytes += n;
            self.budget.queued.fetch_add(n, Ordering::Relaxed) + n
        };
        if total > self.budget.total_bytes {
            self.budget.shed();
        }
        !self.backlog.lock().cut_off
    }

    fn release(&self, n: usize) {
        let mut b = self.backlog.lock();
        if !b.cut_off {
            b.bytes -= n;
            self.budget.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Ends the session: its backlog is given back now (its writer may be
    /// stuck on a socket that accepts nothing), and its tasks are told.
    fn cut_off(&self) {
        let mut b = self.backlog.lock();
        if !b.cut_off {
            b.cut_off = true;
            self.budget.queued.fetch_sub(b.bytes, Ordering::Relaxed);
            b.bytes = 0;
        }
        drop(b);
        self.kill.cancel();
    }
}

/// Frames refused in a row for their bytes before the sender is closed.
const PATIENCE: u32 = 200;

fn cost(o: &Outbound) -> usize {
    match o {
        Outbound::Frame(t) | Outbound::Close(_, t) => t.len(),
        Outbound::Ping => 0,
    }
}

/// The sending side of one session: its queue, and a token that ends it at
/// once (a receiver too far behind).
#[derive(Clone)]
pub struct SessionHandle {
    tx: mpsc::Sender<Outbound>,
    queued: Arc<Queued>,
    /// What this session's own frames may still put into others' queues.
    fan_out: Arc<Mutex<TokenBucket>>,
    pub kill: CancellationToken,
}

impl SessionHandle {
    /// A new session's queue, within `budget`.
    pub fn new(budget: &Arc<SendBudget>) -> (SessionHandle, OutboundQueue) {
        let (tx, rx) = mpsc::channel(budget.frames);
        let kill = CancellationToken::new();
        let queued = Arc::new(Queued {
            id: budget.next_id.fetch_add(1, Ordering::Relaxed),
            backlog: Mutex::default(),
            budget: budget.clone(),
            kill: kill.clone(),
        });
        budget
            .queues
            .lock()
            .insert(queued.id, Arc::downgrade(&queued));
        let fan_out = TokenBucket::new(
            u32::try_from(budget.sender_bytes_per_sec).unwrap_or(u32::MAX),
            u32::try_from(budget.session_bytes / 2).unwrap_or(u32::MAX),
            PATIENCE,
        );
        let handle = SessionHandle {
            tx,
            queued: queued.clone(),
            fan_out: Arc::new(Mutex::new(fan_out)),
            kill,
        };
        (handle, OutboundQueue { rx, queued })
    }

    /// Queues a frame. A receiver too slow to keep its queue below the
    /// bounds is disconnected instead of growing memory or stalling the
    /// sender.
    pub fn deliver(&self, frame: Outbound) {
        let n = cost(&frame);
        if !self.queued.charge(n) {
            return;
        }
        if self.tx.try_send(frame).is_err() {
            self.queued.release(n);
            self.queued.cut_off();
        }
    }

    /// Charges `bytes` — a frame of this session's times its recipients —
    /// to what this session may send; refused when it sends more than the
    /// others' queues should take from one sender.
    pub fn may_fan_out(&self, bytes: usize) -> Result<(), Flooding> {
        self.fan_out.lock().take_n(bytes)
    }

    /// Bytes waiting in this session's queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued.backlog.lock().bytes
    }
}

/// The receiving side, read by the session's writer; what it still holds
/// when dropped is given back to the budget.
pub struct OutboundQueue {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<Queued>,
}

impl OutboundQueue {
    pub async fn recv(&mut self) -> Option<Outbound> {
        let o = self.rx.recv().await?;
        self.queued.release(cost(&o));
        Some(o)
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        let o = self.rx.try_recv().ok()?;
        self.queued.release(cost(&o));
        Some(o)
    }
}

impl Drop for OutboundQueue {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
        self.queued.budget.queues.lock().remove(&self.queued.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame(Utf8Bytes::from("x".repeat(n)))
    }

    #[test]
    fn a_session_is_bounded_in_bytes() {
        let budget = SendBudget::new(100, 1000, 1_000_000, 0);
        let (h, mut q) = SessionHandle::new(&budget);
        h.deliver(frame(600));
        assert_eq!(h.queued_bytes(), 600);
        assert!(!h.kill.is_cancelled());
        h.deliver(frame(600));
        assert!(h.kill.is_cancelled(), "1200 bytes > 1000");
        // Given back at once, though its writer has not read them.
        assert_eq!(budget.queued_bytes(), 0);
        assert!(q.try_recv().is_some());
        assert_eq!((h.queued_bytes(), budget.queued_bytes()), (0, 0));
    }

    #[test]
    fn the_total_cuts_off_the_largest_backlogs_only() {
        let budget = SendBudget::new(100, 1000, 1500, 0);
        let (hog, _q1) = SessionHandle::new(&budget);
        let (behind, _q2) = SessionHandle::new(&budget);
        let (other, _q3) = SessionHandle::new(&budget);
        hog.deliver(frame(900));
        behind.deliver(frame(100));
        behind.deliver(frame(100)); // a frame behind: normal in a burst
        other.deliver(frame(600)); // 1700 > 1500: the hog goes, at once
        assert!(hog.kill.is_cancelled());
        assert!(!behind.kill.is_cancelled() && !other.kill.is_cancelled());
        assert_eq!(budget.queued_bytes(), 800, "the hog's bytes are given back");
        hog.deliver(frame(10));
        assert_eq!(budget.queued_bytes(), 800, "nothing more is queued for it");
    }

    #[test]
    fn a_dropped_queue_gives_its_bytes_back() {
        let budget = SendBudget::new(100, 1000, 1_000_000, 0);
        let (h, q) = SessionHandle::new(&budget);
        h.deliver(frame(500));
        h.deliver(Outbound::Ping);
        drop(q);
        assert_eq!(budget.queued_bytes(), 0);
        h.deliver(frame(10)); // the writer is gone
        assert!(h.kill.is_cancelled());
        assert_eq!(budget.queued_bytes(), 0);
    }

    #[test]
    fn frames_are_still_bounded_by_count() {
        let budget = SendBudget::new(2, 1000, 1_000_000, 0);
        let (h, _q) = SessionHandle::new(&budget);
        h.deliver(Outbound::Ping);
        h.deliver(Outbound::Ping);
        assert!(!h.kill.is_cancelled());
        h.deliver(Outbound::Ping);
        assert!(h.kill.is_cancelled());
    }
}
