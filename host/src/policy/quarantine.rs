//! `Quarantine`: a policy that fails call after call is taken out of
//! service — it denies everything — until its file is replaced or removed,
//! so a broken policy costs one failed call each, not a deadline each.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Consecutive failed calls after which a policy is quarantined.
const QUARANTINE_AFTER: u32 = 5;

pub(super) struct Quarantine {
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
    /// False for the built-in default: it is the host's own code, and
    /// quarantining it (say, after deadlines missed on an overloaded
    /// machine) would deny everything until a restart. Its failures still
    /// fail closed, call by call.
    quarantinable: bool,
}

impl Quarantine {
    pub fn new(quarantinable: bool) -> Self {
        Self {
            consecutive_failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            quarantinable,
        }
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; logs once when it puts the policy in quarantine.
    pub fn failed(&self, policy: &str) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.quarantinable
            && n >= QUARANTINE_AFTER
            && !self.quarantined.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                policy = %policy,
                "policy quarantined after {n} consecutive failures; it denies everything until its file is replaced or removed"
            );
        }
    }
}
