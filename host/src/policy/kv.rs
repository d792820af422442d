//! `KvStore`: host-owned key-value state for policies. Each policy has its
//! own namespace (its name), capped in bytes, so a policy keeps what it must
//! remember across reloads and can neither read nor crowd out another's.
//! Room entries vanish with the room, session entries with the session.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Where an entry lives (mirrors the WIT `scope`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Room(String),
    Session(String),
}

pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

#[derive(Default)]
struct Namespace {
    entries: HashMap<(Scope, String), String>,
    bytes: usize,
}

pub struct KvStore {
    namespaces: Mutex<HashMap<String, Namespace>>,
    cap_bytes: usize,
}

impl KvStore {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            namespaces: Mutex::new(HashMap::new()),
            cap_bytes,
        }
    }

    pub fn get(&self, ns: &str, scope: &Scope, key: &str) -> Option<String> {
        let namespaces = self.namespaces.lock();
        namespaces
            .get(ns)?
            .entries
            .get(&(scope.clone(), key.to_owned()))
            .cloned()
    }

    pub fn set(
        &self,
        ns: &str,
        scope: Scope,
        key: &str,
        value: Option<String>,
    ) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("keys are at most {MAX_KEY_BYTES} bytes"));
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(format!("values are at most {MAX_VALUE_BYTES} bytes"));
        }
        let mut namespaces = self.namespaces.lock();
        let space = namespaces.entry(ns.to_owned()).or_default();
        let entry_key = (scope, key.to_owned());
        let cost = |k: &(Scope, String), v: &str| {
            let scope_len = match &k.0 {
                Scope::Global => 0,
                Scope::Room(s) | Scope::Session(s) => s.len(),
            };
            scope_len + k.1.len() + v.len()
        };
        let old = space
            .entries
            .get(&entry_key)
            .map_or(0, |v| cost(&entry_key, v));
        match value {
            Some(v) => {
                let new = cost(&entry_key, &v);
                let total = space.bytes - old + new;
                if total > self.cap_bytes {
                    return Err(format!(
                        "the policy's key-value space is full ({} bytes)",
                        self.cap_bytes
                    ));
                }
                space.bytes = total;
                space.entries.insert(entry_key, v);
            }
            None => {
                if space.entries.remove(&entry_key).is_some() {
                    space.bytes -= old;
                }
            }
        }
        Ok(())
    }

    /// Drops every policy's entries of one scope (a room or session ended).
    pub fn drop_scope(&self, scope: &Scope) {
        let mut namespaces = self.namespaces.lock();
        for space in namespaces.values_mut() {
            let mut freed = 0;
            space.entries.retain(|(s, k), v| {
                let keep = s != scope;
                if !keep {
                    freed += match s {
                        Scope::Global => 0,
                        Scope::Room(x) | Scope::Session(x) => x.len(),
                    } + k.len()
                        + v.len();
                }
                keep
            });
            space.bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate() {
        let kv = KvStore::new(1024);
        kv.set("a", Scope::Global, "k", Some("1".into())).unwrap();
        assert_eq!(kv.get("a", &Scope::Global, "k").as_deref(), Some("1"));
        assert_eq!(kv.get("b", &Scope::Global, "k"), None);
    }

    #[test]
    fn cap_is_enforced_and_freed() {
        let kv = KvStore::new(10);
        kv.set("a", Scope::Global, "k", Some("1234567890".into()))
            .unwrap_err();
        kv.set("a", Scope::Global, "k", Some("12345".into()))
            .unwrap();
        kv.set("a", Scope::Global, "k", Some("1234567".into()))
            .unwrap();
        kv.set("a", Scope::Global, "k", None).unwrap();
        kv.set("a", Scope::Global, "k", Some("123456789".into()))
            .unwrap();
    }

    #[test]
    fn scopes_are_dropped() {
        let kv = KvStore::new(1024);
        let room = Scope::Room("r".into());
        kv.set("a", room.clone(), "pw", Some("x".into())).unwrap();
        kv.set("a", Scope::Session("s".into()), "k", Some("y".into()))
            .unwrap();
        kv.drop_scope(&room);
        assert_eq!(kv.get("a", &room, "pw"), None);
        assert!(kv.get("a", &Scope::Session("s".into()), "k").is_some());
        // The freed bytes are usable again.
        kv.set("a", room.clone(), "pw", Some("x".repeat(1000)))
            .unwrap();
    }
}
