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
    /// Relays closed because their signaling session was gone.
    pub closed_session_gone: u64,
    /// Payload bytes relayed to peers, and from peers back to clients.
    pub bytes_to_peers: u64,
    pub bytes_from_peers: u64,
    /// Of `bytes_to_peers`, those handed to another allocation of this
    /// server inside the process (relay to relay).
    pub bytes_relay_to_relay: u64,
}

/// The live counters behind [`TurnStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allocations_made: AtomicU64,
    pub(crate) refused_credentials: AtomicU64,
    pub(crate) refused_peers: AtomicU64,
    pub(crate) refused_quota: AtomicU64,
    pub(crate) closed_session_gone: AtomicU64,
    pub(crate) bytes_to_peers: AtomicU64,
    pub(crate) bytes_from_peers: AtomicU64,
    pub(crate) bytes_relay_to_relay: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, allocations: usize) -> TurnStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TurnStats {
            allocations,
            allocations_made: get(&self.allocations_made),
            refused_credentials: get(&self.refused_credentials),
            refused_peers: get(&self.refused_peers),
            refused_quota: get(&self.refused_quota),
            closed_session_gone: get(&self.closed_session_gone),
            bytes_to_peers: get(&self.bytes_to_peers),
            bytes_from_peers: get(&self.bytes_from_peers),
            bytes_relay_to_relay: get(&self.bytes_relay_to_relay),
        }
    }
}
