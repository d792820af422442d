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
/// Longest room or session name of a scope (room ids are at most 128
/// characters of up to 4 bytes).
pub const MAX_SCOPE_BYTES: usize = 512;
/// What an entry costs besides its bytes (map slot, strings' headers): an
/// empty value is not free.
pub const ENTRY_OVERHEAD: usize = 64;

/// One policy's entries, by scope: a room or session that ends drops its
/// own map, without looking at anyone else's entries (a disconnect must
/// not cost a scan of the whole store under its lock).
#[derive(Default)]
struct Namespace {
    entries: HashMap<Scope, HashMap<String, String>>,
    bytes: usize,
}

pub struct KvStore {
    namespaces: Mutex<HashMap<String, Namespace>>,
    cap_bytes: usize,
    /// Rooms written by messages still being handled, with how many: a
    /// room's entries are dropped at the end of the last such message when
    /// the room does not exist (a join that failed).
    pending_rooms: Mutex<HashMap<String, usize>>,
}

tokio::task_local! {
    /// The rooms one message's policies wrote (see [`KvStore::tracking`]).
    static WRITTEN_ROOMS: std::cell::RefCell<Vec<String>>;
}

fn cost(scope: &Scope, key: &str, v: &str) -> usize {
    let scope_len = match scope {
        Scope::Global => 0,
        Scope::Room(s) | Scope::Session(s) => s.len(),
    };
    ENTRY_OVERHEAD + scope_len + key.len() + v.len()
}

impl KvStore {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            namespaces: Mutex::new(HashMap::new()),
            cap_bytes,
            pending_rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one message's handling; afterwards drops the entries of every
    /// room it wrote that does not exist (unless another message that
    /// wrote the same room is still being handled).
    pub async fn tracking<F: std::future::Future<Output = ()>>(
        &self,
        room_exists: impl Fn(&str) -> bool,
        handling: F,
    ) {
        let written = WRITTEN_ROOMS
            .scope(std::cell::RefCell::new(Vec::new()), async {
                handling.await;
                WRITTEN_ROOMS.with(|w| w.take())
            })
            .await;
        if written.is_empty() {
            return;
        }
        let mut orphans = Vec::new();
        {
            let mut pending = self.pending_rooms.lock();
            for room in written {
                if let Some(n) = pending.get_mut(&room) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(&room);
                        if !room_exists(&room) {
                            orphans.push(room);
                        }
                    }
                }
            }
        }
        for room in orphans {
            self.drop_scope(&Scope::Room(room));
        }
    }

    /// Bytes held by all policies (what their caps count).
    pub fn bytes(&self) -> usize {
        self.namespaces.lock().values().map(|n| n.bytes).sum()
    }

    /// Notes a room written by the message being handled (once per message).
    fn note_room(&self, room: &str) {
        let first = WRITTEN_ROOMS
            .try_with(|w| {
                let mut w = w.borrow_mut();
                let first = !w.iter().any(|r| r == room);
                if first {
                    w.push(room.to_owned());
                }
                first
            })
            .unwrap_or(false);
        if first {
            *self
                .pending_rooms
                .lock()
                .entry(room.to_owned())
                .or_insert(0) += 1;
        }
    }

    pub fn get(&self, ns: &str, scope: &Scope, key: &str) -> Option<String> {
        let namespaces = self.namespaces.lock();
        namespaces.get(ns)?.entries.get(scope)?.get(key).cloned()
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
        match &scope {
            Scope::Room(s) | Scope::Session(s) if s.len() > MAX_SCOPE_BYTES => {
                return Err(format!("scope names are at most {MAX_SCOPE_BYTES} bytes"));
            }
            Scope::Room(room) if value.is_some() => self.note_room(room),
            _ => {}
        }
        let mut namespaces = self.namespaces.lock();
        let space = namespaces.entry(ns.to_owned()).or_default();
        let old = space
            .entries
            .get(&scope)
            .and_then(|m| m.get(key))
            .map_or(0, |v| cost(&scope, key, v));
        match value {
            Some(v) => {
                let new = cost(&scope, key, &v);
                let total = space.bytes - old + new;
                if total > self.cap_bytes {
                    return Err(format!(
                        "the policy's key-value space is full ({} bytes)",
                        self.cap_bytes
                    ));
                }
                space.bytes = total;
                space
                    .entries
                    .entry(scope)
                    .or_default()
                    .insert(key.to_owned(), v);
            }
            None => {
                if let Some(m) = space.entries.get_mut(&scope)
                    && m.remove(key).is_some()
                {
                    space.bytes -= old;
                    if m.is_empty() {
                        space.entries.remove(&scope);
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every policy's entries of one scope (a room or session ended).
    pub fn drop_scope(&self, scope: &Scope) {
        let mut namespaces = self.namespaces.lock();
        for space in namespaces.values_mut() {
            if let Some(gone) = space.entries.remove(scope) {
                space.bytes -= gone.iter().map(|(k, v)| cost(scope, k, v)).sum::<usize>();
            }
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
    fn scope_names_are_capped_and_entries_cost_their_overhead() {
        let kv = KvStore::new(10 * ENTRY_OVERHEAD);
        let long = Scope::Room("r".repeat(MAX_SCOPE_BYTES + 1));
        assert!(kv.set("a", long, "k", Some("v".into())).is_err());
        // Empty values are not free: ten entries fill 10 × the overhead.
        let mut stored = 0;
        while kv
            .set("a", Scope::Global, &stored.to_string(), Some(String::new()))
            .is_ok()
        {
            stored += 1;
        }
        assert!(
            stored < 10,
            "{stored} empty entries fit in 10 × the overhead"
        );
    }

    #[tokio::test]
    async fn rooms_written_by_a_failed_join_are_dropped() {
        let kv = KvStore::new(1 << 20);
        let room = Scope::Room("never-made".into());
        kv.tracking(|_| false, async {
            kv.set("a", room.clone(), "pw", Some("x".into())).unwrap();
        })
        .await;
        assert_eq!(kv.get("a", &room, "pw"), None, "the room does not exist");
        let kept = Scope::Room("made".into());
        kv.tracking(|r| r == "made", async {
            kv.set("a", kept.clone(), "pw", Some("x".into())).unwrap();
        })
        .await;
        assert!(kv.get("a", &kept, "pw").is_some());
        // Another message still writing the room keeps it for that one.
        kv.tracking(|_| false, async {
            kv.set("a", room.clone(), "pw", Some("y".into())).unwrap();
            kv.tracking(|_| false, async {
                kv.set("a", room.clone(), "other", Some("z".into()))
                    .unwrap();
            })
            .await;
            assert!(
                kv.get("a", &room, "pw").is_some(),
                "the outer message is still running"
            );
        })
        .await;
        assert_eq!(kv.get("a", &room, "pw"), None);
    }

    #[test]
    fn cap_is_enforced_and_freed() {
        let kv = KvStore::new(ENTRY_OVERHEAD + 10);
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
        let kv = KvStore::new(1024 + 2 * ENTRY_OVERHEAD);
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
