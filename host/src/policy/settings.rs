//! `PolicySettings`: per-policy limits from a sidecar `NAME.toml` next to
//! `NAME.wasm`, e.g. a larger memory cap for a Python policy. The directory
//! watcher reads it with the `.wasm` and reloads the policy when either
//! changes, so limits change without a restart.

use std::time::Duration;

use super::engine::SandboxLimits;

/// Bounds an operator can set: large enough for real guests, small enough
/// that a typo (`memory_mib = 40000`) is refused instead of obeyed.
const MEMORY_MIB: std::ops::RangeInclusive<u32> = 1..=4096;
const DEADLINE_MS: std::ops::RangeInclusive<u32> = 1..=60_000;

/// The sidecar's content; every key is optional (absent: the host's flag).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Linear memory cap of one instance, in MiB (`--policy-memory-mib`).
    pub memory_mib: Option<u32>,
    /// Deadline of one call, in ms (`--policy-deadline-ms`).
    pub deadline_ms: Option<u32>,
}

impl PolicySettings {
    /// Parses a sidecar; the error is one line naming what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Self = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            format!("{msg} (allowed keys: memory_mib, deadline_ms)")
        })?;
        if let Some(m) = s.memory_mib.filter(|m| !MEMORY_MIB.contains(m)) {
            return Err(format!(
                "memory_mib = {m} is outside {}..={}",
                MEMORY_MIB.start(),
                MEMORY_MIB.end()
            ));
        }
        if let Some(d) = s.deadline_ms.filter(|d| !DEADLINE_MS.contains(d)) {
            return Err(format!(
                "deadline_ms = {d} is outside {}..={}",
                DEADLINE_MS.start(),
                DEADLINE_MS.end()
            ));
        }
        Ok(s)
    }

    /// The host's limits with this sidecar's overrides.
    pub fn apply(&self, host: SandboxLimits) -> SandboxLimits {
        SandboxLimits {
            deadline: self
                .deadline_ms
                .map_or(host.deadline, |ms| Duration::from_millis(ms.into())),
            memory_bytes: self
                .memory_mib
                .map_or(host.memory_bytes, |m| (m as usize) << 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_only_what_is_set() {
        let host = SandboxLimits {
            deadline: Duration::from_millis(50),
            memory_bytes: 32 << 20,
        };
        let s = PolicySettings::parse("memory_mib = 64\n").unwrap();
        let l = s.apply(host);
        assert_eq!((l.memory_bytes, l.deadline), (64 << 20, host.deadline));
        let l = PolicySettings::parse("deadline_ms = 200")
            .unwrap()
            .apply(host);
        assert_eq!(
            (l.memory_bytes, l.deadline),
            (32 << 20, Duration::from_millis(200))
        );
        assert_eq!(
            PolicySettings::parse("").unwrap(),
            PolicySettings::default()
        );
    }

    #[test]
    fn mistakes_are_one_clear_line() {
        let e = PolicySettings::parse("memory = 64").unwrap_err();
        assert!(e.contains("memory") && e.contains("allowed keys"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = PolicySettings::parse("memory_mib = 0").unwrap_err();
        assert!(e.contains("outside 1..=4096"), "{e}");
        assert!(PolicySettings::parse("deadline_ms = 600000").is_err());
        assert!(PolicySettings::parse("memory_mib = \"lots\"").is_err());
    }
}
