//! `Quarantine`: a policy that fails call after call is taken out of
//! service — it denies everything — so a broken policy costs one failed
//! call each, not a deadline each. It stays failed closed, but is probed
//! again with backoff: one call is let through, and if it succeeds the
//! policy is back (a policy that only missed deadlines on an overloaded
//! machine is not lost until its file changes).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Consecutive failed calls after which a policy is quarantined.
const QUARANTINE_AFTER: u32 = 5;
/// First wait before a quarantined policy is probed; doubles per failed
/// probe up to `PROBE_MAX`.
pub(super) const PROBE_FIRST: Duration = Duration::from_secs(5);
const PROBE_MAX: Duration = Duration::from_secs(300);

pub(super) struct Quarantine {
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
    /// When the next probe may run, and the wait after it if it fails.
    probe: Mutex<(Instant, Duration)>,
    /// False for the built-in default: it is the host's own code, and
    /// quarantining it (say, after deadlines missed on an overloaded
    /// machine) would deny everything. Its failures still fail closed,
    /// call by call.
    quarantinable: bool,
}

impl Quarantine {
    pub fn new(quarantinable: bool) -> Self {
        Self {
            consecutive_failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            probe: Mutex::new((Instant::now(), PROBE_FIRST)),
            quarantinable,
        }
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Whether a call may run: always when in service; when quarantined,
    /// one call per probe interval (the probe).
    pub fn admits(&self) -> bool {
        if !self.is_quarantined() {
            return true;
        }
        let mut probe = self.probe.lock();
        let now = Instant::now();
        if now < probe.0 {
            return false;
        }
        // Others wait while this probe runs (or until it would have timed out).
        probe.0 = now + probe.1;
        true
    }

    pub fn succeeded(&self, policy: &str) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.quarantined.swap(false, Ordering::Relaxed) {
            *self.probe.lock() = (Instant::now(), PROBE_FIRST);
            tracing::warn!(policy = %policy, "policy restored: a probe call succeeded");
        }
    }

    /// Counts a failure; logs once when it puts the policy in quarantine,
    /// and backs off the next probe when a probe failed.
    pub fn failed(&self, policy: &str) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.quarantinable || n < QUARANTINE_AFTER {
            return;
        }
        let mut probe = self.probe.lock();
        if self.quarantined.swap(true, Ordering::Relaxed) {
            probe.1 = (probe.1 * 2).min(PROBE_MAX);
            probe.0 = Instant::now() + probe.1;
            tracing::info!(policy = %policy, "policy probe failed; next probe in {:?}", probe.1);
        } else {
            *probe = (Instant::now() + PROBE_FIRST, PROBE_FIRST);
            tracing::error!(
                policy = %policy,
                "policy quarantined after {n} consecutive failures; it denies everything, and is probed again in {PROBE_FIRST:?} (or replace or remove its file)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_back_off_and_restore() {
        let q = Quarantine::new(true);
        for _ in 0..QUARANTINE_AFTER {
            assert!(q.admits());
            q.failed("p");
        }
        assert!(q.is_quarantined());
        assert!(!q.admits(), "no probe before the first wait");
        // The wait is over: one probe, not two.
        q.probe.lock().0 = Instant::now();
        assert!(q.admits());
        assert!(!q.admits());
        q.failed("p");
        assert_eq!(q.probe.lock().1, PROBE_FIRST * 2, "backed off");
        q.probe.lock().0 = Instant::now();
        assert!(q.admits());
        q.succeeded("p");
        assert!(!q.is_quarantined());
        assert!(q.admits());
    }

    #[test]
    fn the_default_is_never_quarantined() {
        let q = Quarantine::new(false);
        for _ in 0..100 {
            q.failed("default");
        }
        assert!(!q.is_quarantined());
    }
}
