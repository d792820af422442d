//! Owns the server's counters ([`TurnStats`]), for the host's /metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the TURN server's counters (totals since start, except
/// `allocations`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TurnStats {
    /// Live allocations now.
    pub allocations: usize,
    /// Allocations made.
    pub allocations_made: u64,
    /// Requests whose credential was refused (malformed, expired, wrong
    /// realm, session gone). Wrong passwords are refused by the `turn`
    /// crate's integrity check and are not counted here.
    pub refused_credentials: u64,
    /// CreatePermission/ChannelBind requests refused for a forbidden peer.
    pub refused_peers: u64,
    /// Allocations refused by a quota.
    pub refused_quota: u64,
    /// CreatePermission/ChannelBind requests refused (508) because their
    /// allocation holds the most permissions or channels it may.
    pub refused_capacity: u64,
    /// Relays closed because their signaling session was gone.
    pub closed_session_gone: u64,
    /// Payload bytes relayed to peers, and from peers back to clients.
    pub bytes_to_peers: u64,
    pub bytes_from_peers: u64,
    /// Of `bytes_to_peers`, those handed to another allocation of this
    /// server inside the process (relay to relay).
    pub bytes_relay_to_relay: u64,
    /// Packets relayed on the fast path (see docs/turn.md), to peers and
    /// from peers back to clients; the rest went through the `turn` crate.
    pub fast_packets_to_peers: u64,
    pub fast_packets_from_peers: u64,
    /// Datagrams the fast path handed the kernel for those packets: a run
    /// of frames to one destination leaves as one segmented datagram
    /// (GSO), so packets ÷ sends is how well sends were batched.
    pub fast_sends: u64,
    /// Payload bytes each ended session relayed (all its allocations, both
    /// directions), as a histogram: one observation when a session's last
    /// allocation closes.
    pub session_bytes: SessionBytes,
}

/// Upper bounds (bytes) of the [`SessionBytes`] buckets: 10 kB to 10 GB by
/// decades (a one-hour video call at 2 Mbit/s relays about 0.9 GB).
pub const SESSION_BYTES_BOUNDS: [u64; 7] = [
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// A histogram of relayed bytes per session: a fixed number of series
/// whatever the number of sessions (session ids never become labels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionBytes {
    /// Sessions with at most `SESSION_BYTES_BOUNDS[i]` bytes (not
    /// cumulative); the last slot counts those above every bound.
    pub buckets: [u64; SESSION_BYTES_BOUNDS.len() + 1],
    /// Bytes of every observed session.
    pub sum: u64,
    /// Sessions observed.
    pub count: u64,
}

impl SessionBytes {
    pub(crate) fn observe(&mut self, bytes: u64) {
        let i = SESSION_BYTES_BOUNDS
            .iter()
            .position(|b| bytes <= *b)
            .unwrap_or(SESSION_BYTES_BOUNDS.len());
        self.buckets[i] += 1;
        self.sum = self.sum.saturating_add(bytes);
        self.count += 1;
    }

    /// Cumulative counts per bound (`le`), as Prometheus wants them; the
    /// last one (+Inf) equals `count`.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = SESSION_BYTES_BOUNDS.iter().map(|b| Some(*b)).chain([None]);
        bounds.zip(self.buckets.iter().scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        }))
    }
}

/// The live counters behind [`TurnStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allocations_made: AtomicU64,
    pub(crate) refused_credentials: AtomicU64,
    pub(crate) refused_peers: AtomicU64,
    pub(crate) refused_quota: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) closed_session_gone: AtomicU64,
    pub(crate) bytes_to_peers: AtomicU64,
    pub(crate) bytes_from_peers: AtomicU64,
    pub(crate) bytes_relay_to_relay: AtomicU64,
    pub(crate) fast_packets_to_peers: AtomicU64,
    pub(crate) fast_packets_from_peers: AtomicU64,
    pub(crate) fast_sends: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, allocations: usize, session_bytes: SessionBytes) -> TurnStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TurnStats {
            allocations,
            allocations_made: get(&self.allocations_made),
            refused_credentials: get(&self.refused_credentials),
            refused_peers: get(&self.refused_peers),
            refused_quota: get(&self.refused_quota),
            refused_capacity: get(&self.refused_capacity),
            closed_session_gone: get(&self.closed_session_gone),
            bytes_to_peers: get(&self.bytes_to_peers),
            bytes_from_peers: get(&self.bytes_from_peers),
            bytes_relay_to_relay: get(&self.bytes_relay_to_relay),
            fast_packets_to_peers: get(&self.fast_packets_to_peers),
            fast_packets_from_peers: get(&self.fast_packets_from_peers),
            fast_sends: get(&self.fast_sends),
            session_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_bytes_histogram() {
        let mut h = SessionBytes::default();
        for b in [0, 10_000, 10_001, 5_000_000_000, 20_000_000_000] {
            h.observe(b);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 25_000_020_001);
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c[0], (Some(10_000), 2));
        assert_eq!(c[1], (Some(100_000), 3));
        assert_eq!(c[5], (Some(1_000_000_000), 3));
        assert_eq!(c[6], (Some(10_000_000_000), 4));
        assert_eq!(c[7], (None, 5));
    }
}

/// Lines one log site may write: `per_sec` a second, `burst` at once.
/// Refusals a client can provoke at will (bad credentials, even spoofed
/// over UDP; connections over a limit; forbidden peers; a policy's own
/// `log`) must not flood the host's log, or trip journald's rate limit,
/// which would then drop the lines that matter. What is dropped is counted
/// and reported with the next line written. `const`, for a `static` per
/// site. (Public for the host's own sites.)
pub struct LogBudget {
    per_sec: f64,
    burst: f64,
    /// Tokens, when last refilled, lines dropped since the last written.
    state: std::sync::Mutex<Option<(f64, std::time::Instant, u64)>>,
}

impl LogBudget {
    /// The budget of this crate's sites: 10 lines a second, 20 at once.
    pub const fn new() -> Self {
        Self::with_rate(10.0, 20.0)
    }

    pub const fn with_rate(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            state: std::sync::Mutex::new(None),
        }
    }

    /// `Some(lines dropped before this one)` when a line may be written now.
    pub fn take(&self) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let s = g.get_or_insert((self.burst, now, 0));
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.per_sec).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod log_budget_tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_the_dropped_are_counted() {
        let b = LogBudget::new();
        let written = (0..1000).filter(|_| b.take().is_some()).count();
        assert!(
            (20..=22).contains(&written),
            "{written} lines written at once"
        );
        std::thread::sleep(std::time::Duration::from_millis(150));
        let dropped = b.take().expect("refilled");
        assert!(dropped >= 978, "{dropped} dropped lines reported");
    }
}
