//! A session's outbound queue: bounded in frames and in bytes, with a byte
//! budget shared by every session, so receivers that do not read cannot
//! pin the host's memory. A receiver past either bound is disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    queued: AtomicUsize,
}

impl SendBudget {
    pub fn new(frames: usize, session_bytes: usize, total_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            frames,
            session_bytes,
            total_bytes,
            queued: AtomicUsize::new(0),
        })
    }

    /// Bytes waiting in all sessions' queues now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// One session's share of the budget.
#[derive(Debug)]
struct Queued {
    bytes: AtomicUsize,
    budget: Arc<SendBudget>,
}

impl Queued {
    /// Charges `n` bytes; false (and nothing charged) when a bound is hit.
    fn charge(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        let total = self.budget.queued.fetch_add(n, Ordering::Relaxed) + n;
        // A session with nothing waiting is keeping up: it always gets its
        // next frame, so a full budget only ever cuts off laggards.
        let over = before + n > self.budget.session_bytes
            || (before > 0 && total > self.budget.total_bytes);
        if over {
            self.release(n);
        }
        !over
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.budget.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

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
    pub kill: CancellationToken,
}

impl SessionHandle {
    /// A new session's queue, within `budget`.
    pub fn new(budget: &Arc<SendBudget>) -> (SessionHandle, OutboundQueue) {
        let (tx, rx) = mpsc::channel(budget.frames);
        let queued = Arc::new(Queued {
            bytes: AtomicUsize::new(0),
            budget: budget.clone(),
        });
        let handle = SessionHandle {
            tx,
            queued: queued.clone(),
            kill: CancellationToken::new(),
        };
        (handle, OutboundQueue { rx, queued })
    }

    /// Queues a frame. A receiver too slow to keep its queue below the
    /// bounds is disconnected instead of growing memory or stalling the
    /// sender.
    pub fn deliver(&self, frame: Outbound) {
        let n = cost(&frame);
        if !self.queued.charge(n) {
            self.kill.cancel();
            return;
        }
        if self.tx.try_send(frame).is_err() {
            self.queued.release(n);
            self.kill.cancel();
        }
    }

    /// Bytes waiting in this session's queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Relaxed)
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
        let budget = SendBudget::new(100, 1000, 1_000_000);
        let (h, mut q) = SessionHandle::new(&budget);
        h.deliver(frame(600));
        assert_eq!(h.queued_bytes(), 600);
        assert!(!h.kill.is_cancelled());
        h.deliver(frame(600));
        assert!(h.kill.is_cancelled(), "1200 bytes > 1000");
        assert_eq!(budget.queued_bytes(), 600);
        assert!(q.try_recv().is_some());
        assert_eq!((h.queued_bytes(), budget.queued_bytes()), (0, 0));
    }

    #[test]
    fn the_total_cuts_off_laggards_only() {
        let budget = SendBudget::new(100, 1000, 1500);
        let (slow, _q1) = SessionHandle::new(&budget);
        let (other, _q2) = SessionHandle::new(&budget);
        slow.deliver(frame(900));
        other.deliver(frame(900)); // over the total, but `other` was empty
        assert!(!other.kill.is_cancelled());
        slow.deliver(frame(10));
        assert!(slow.kill.is_cancelled(), "behind, and the total is spent");
    }

    #[test]
    fn a_dropped_queue_gives_its_bytes_back() {
        let budget = SendBudget::new(100, 1000, 1_000_000);
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
        let budget = SendBudget::new(2, 1000, 1_000_000);
        let (h, _q) = SessionHandle::new(&budget);
        h.deliver(Outbound::Ping);
        h.deliver(Outbound::Ping);
        assert!(!h.kill.is_cancelled());
        h.deliver(Outbound::Ping);
        assert!(h.kill.is_cancelled());
    }
}
