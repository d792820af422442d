//! `RoomRegistry`: who is connected, who is in which room, and the queue
//! that reaches each session. One lock guards it all, so a capacity check
//! and the join it allows are one atomic step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

pub type SessionId = Arc<str>;
pub type RoomId = Arc<str>;

/// What a session's writer task sends, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    Frame(Utf8Bytes),
    Close(u16, Utf8Bytes),
    /// A WebSocket ping, to learn whether the peer is still there.
    Ping,
}

pub use super::queue::SessionHandle;

struct SessionEntry {
    handle: SessionHandle,
    #[allow(dead_code)] // read by limits and logs
    peer: SocketAddr,
    username: Option<Arc<str>>,
    room: Option<RoomId>,
}

#[derive(Default)]
struct Room {
    /// In join order.
    members: Vec<SessionId>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionEntry>,
    rooms: HashMap<RoomId, Room>,
}

/// Told of every membership change, under the registry's lock (so in the
/// order they happen). Must not block or call back into the registry.
pub trait RoomObserver: Send + Sync {
    fn joined(&self, room: &RoomId, session: &SessionId, username: &Arc<str>);
    fn left(&self, room: &RoomId, session: &SessionId, room_deleted: bool);
}

#[derive(Default)]
pub struct RoomRegistry {
    inner: Mutex<Inner>,
    /// Rooms in total; 0 = no limit.
    max_rooms: usize,
    /// The cluster's mirror of memberships, when there is one.
    observer: std::sync::OnceLock<Arc<dyn RoomObserver>>,
}

/// A member as others see it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: SessionId,
    pub username: Arc<str>,
}

/// Someone left a room: who, and who must be told.
pub struct Departure {
    pub room: RoomId,
    pub session: SessionId,
    pub username: Arc<str>,
    pub remaining: Vec<SessionHandle>,
    /// True when the room is now empty and gone.
    pub room_deleted: bool,
}

pub struct Joined {
    /// The other members (they get the joiner's `login` notice); the joiner
    /// itself heard who they are through `welcome`.
    pub other_handles: Vec<SessionHandle>,
    /// The room the session moved out of, if it was in another one.
    pub left: Option<Departure>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    Full,
    /// The server holds its maximum number of rooms.
    TooManyRooms,
    UnknownSession,
}

impl RoomRegistry {
    pub fn with_max_rooms(max_rooms: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_rooms,
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Sets the membership observer (once, at start-up).
    pub fn set_observer(&self, observer: Arc<dyn RoomObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Every room's id.
    pub fn room_ids(&self) -> Vec<RoomId> {
        self.inner.lock().rooms.keys().cloned().collect()
    }

    /// The registry's own id of a connected session.
    pub fn session_key(&self, id: &str) -> Option<SessionId> {
        Some(self.inner.lock().sessions.get_key_value(id)?.0.clone())
    }

    /// The sending side of a connected session.
    pub fn handle_of(&self, id: &str) -> Option<SessionHandle> {
        Some(self.inner.lock().sessions.get(id)?.handle.clone())
    }

    /// Puts a registered session that is in no room into `room` silently
    /// (no `joined`, no notices, no capacity check): a room's new owner
    /// taking over members that are already in the call.
    pub fn restore(&self, id: &str, room: &str, username: &str) -> bool {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let Some((session_key, entry)) = inner.sessions.get_key_value(id) else {
            return false;
        };
        if entry.room.is_some() {
            return false;
        }
        let session_key = session_key.clone();
        let room_key: RoomId = match inner.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        inner
            .rooms
            .entry(room_key.clone())
            .or_default()
            .members
            .push(session_key.clone());
        let username: Arc<str> = Arc::from(username);
        if let Some(entry) = inner.sessions.get_mut(id) {
            entry.room = Some(room_key.clone());
            entry.username = Some(username.clone());
        }
        if let Some(o) = self.observer.get() {
            o.joined(&room_key, &session_key, &username);
        }
        true
    }

    pub fn session_count(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn room_count(&self) -> usize {
        self.inner.lock().rooms.len()
    }

    /// Every connected session's handle (shutdown tells them all).
    pub fn all_handles(&self) -> Vec<SessionHandle> {
        self.inner
            .lock()
            .sessions
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }

    /// Every connected session's id and handle.
    pub fn all_sessions(&self) -> Vec<(SessionId, SessionHandle)> {
        self.inner
            .lock()
            .sessions
            .iter()
            .map(|(id, e)| (id.clone(), e.handle.clone()))
            .collect()
    }

    pub fn register(&self, id: SessionId, handle: SessionHandle, peer: SocketAddr) {
        self.inner.lock().sessions.insert(
            id,
            SessionEntry {
                handle,
                peer,
                username: None,
                room: None,
            },
        );
    }

    /// Forgets a session; returns its departure from its room, if any.
    pub fn unregister(&self, id: &str) -> Option<Departure> {
        let mut inner = self.inner.lock();
        let departure = self.leave_locked(&mut inner, id);
        inner.sessions.remove(id);
        departure
    }

    /// Puts `id` into `room` unless it holds `capacity` members already.
    /// A session in another room leaves it only once the join succeeded.
    /// `welcome` makes the joiner's `joined` frame from the members already
    /// there; it is queued under the lock, so the joiner hears of its own
    /// join before any later joiner's `login` notice.
    pub fn join(
        &self,
        id: &str,
        room: &str,
        username: &str,
        capacity: u32,
        welcome: impl FnOnce(&[Member]) -> Outbound,
    ) -> Result<Joined, JoinError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let (session_key, current_room) = match inner.sessions.get_key_value(id) {
            Some((k, e)) => (k.clone(), e.room.clone()),
            None => return Err(JoinError::UnknownSession),
        };
        let same_room = current_room.as_deref() == Some(room);
        let occupied = inner.rooms.get(room).map_or(0, |r| r.members.len());
        let occupied_by_others = if same_room { occupied - 1 } else { occupied };
        if occupied_by_others >= capacity as usize {
            return Err(JoinError::Full);
        }
        if occupied == 0 && self.max_rooms > 0 && inner.rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms);
        }

        let left = if same_room {
            None
        } else {
            self.leave_locked(inner, id)
        };
        let room_key: RoomId = match inner.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let members = &mut inner.rooms.entry(room_key.clone()).or_default().members;
        if !same_room {
            members.push(session_key.clone());
        }
        let mut others = Vec::with_capacity(members.len());
        let mut other_handles = Vec::with_capacity(members.len());
        for m in members.iter().filter(|m| **m != session_key) {
            if let Some(e) = inner.sessions.get(m) {
                others.push(Member {
                    id: m.clone(),
                    username: e.username.clone().unwrap_or_else(|| Arc::from("")),
                });
                other_handles.push(e.handle.clone());
            }
        }
        if let Some(entry) = inner.sessions.get_mut(id) {
            let username: Arc<str> = Arc::from(username);
            entry.room = Some(room_key.clone());
            entry.username = Some(username.clone());
            entry.handle.deliver(welcome(&others));
            if let Some(o) = self.observer.get() {
                o.joined(&room_key, &session_key, &username);
            }
        }
        Ok(Joined {
            other_handles,
            left,
        })
    }

    pub fn leave(&self, id: &str) -> Option<Departure> {
        self.leave_locked(&mut self.inner.lock(), id)
    }

    fn leave_locked(&self, inner: &mut Inner, id: &str) -> Option<Departure> {
        let entry = inner.sessions.get_mut(id)?;
        let room = entry.room.take()?;
        let username = entry.username.clone().unwrap_or_else(|| Arc::from(""));
        let (session, room_deleted, remaining_ids) = {
            let r = inner.rooms.get_mut(&room)?;
            let pos = r.members.iter().position(|m| &**m == id)?;
            let session = r.members.remove(pos);
            (session, r.members.is_empty(), r.members.clone())
        };
        if room_deleted {
            inner.rooms.remove(&room);
        }
        if let Some(o) = self.observer.get() {
            o.left(&room, &session, room_deleted);
        }
        let remaining = remaining_ids
            .iter()
            .filter_map(|m| inner.sessions.get(m).map(|e| e.handle.clone()))
            .collect();
        Some(Departure {
            room,
            session,
            username,
            remaining,
            room_deleted,
        })
    }

    pub fn room_of(&self, id: &str) -> Option<RoomId> {
        self.inner.lock().sessions.get(id)?.room.clone()
    }

    pub fn username_of(&self, id: &str) -> Option<Arc<str>> {
        self.inner.lock().sessions.get(id)?.username.clone()
    }

    pub fn members(&self, room: &str) -> Vec<SessionId> {
        self.inner
            .lock()
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    pub fn room_exists(&self, room: &str) -> bool {
        self.inner.lock().rooms.contains_key(room)
    }

    /// Handles of those `targets` that share `sender`'s room (the sender
    /// included); everyone else is dropped silently.
    pub fn room_handles(&self, sender: &str, targets: &[String]) -> Vec<SessionHandle> {
        let inner = self.inner.lock();
        let Some(room) = inner.sessions.get(sender).and_then(|e| e.room.as_ref()) else {
            return Vec::new();
        };
        targets
            .iter()
            .filter_map(|t| inner.sessions.get(t.as_str()))
            .filter(|e| e.room.as_ref() == Some(room))
            .map(|e| e.handle.clone())
            .collect()
    }

    /// The handle of `target` when it is the sender or shares its room.
    pub fn reachable(&self, sender: &str, target: &str) -> Option<SessionHandle> {
        let inner = self.inner.lock();
        let entry = inner.sessions.get(target)?;
        if sender == target {
            return Some(entry.handle.clone());
        }
        let sender_room = inner.sessions.get(sender)?.room.as_ref()?;
        (entry.room.as_ref() == Some(sender_room)).then(|| entry.handle.clone())
    }
}

/// What policies read about rooms (their `state` imports).
impl crate::policy::RoomView for RoomRegistry {
    fn room_of(&self, session: &str) -> Option<String> {
        RoomRegistry::room_of(self, session).map(|r| r.to_string())
    }

    fn members(&self, room: &str) -> Vec<String> {
        RoomRegistry::members(self, room)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    fn room_exists(&self, room: &str) -> bool {
        RoomRegistry::room_exists(self, room)
    }

    fn username_of(&self, session: &str) -> Option<String> {
        RoomRegistry::username_of(self, session).map(|u| u.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::queue::{OutboundQueue, SendBudget};

    fn welcome(_: &[Member]) -> Outbound {
        Outbound::Ping
    }

    fn handle() -> (SessionHandle, OutboundQueue) {
        SessionHandle::new(&SendBudget::new(4, 1 << 20, 1 << 20, 0))
    }

    fn registry_with(ids: &[&str]) -> (RoomRegistry, Vec<OutboundQueue>) {
        let reg = RoomRegistry::default();
        let mut rxs = Vec::new();
        for id in ids {
            let (h, rx) = handle();
            reg.register(Arc::from(*id), h, "127.0.0.1:1".parse().unwrap());
            rxs.push(rx);
        }
        (reg, rxs)
    }

    #[test]
    fn capacity_is_enforced() {
        let (reg, _rx) = registry_with(&["a", "b", "c"]);
        reg.join("a", "r", "A", 2, welcome).unwrap();
        let j = reg.join("b", "r", "B", 2, welcome).unwrap();
        assert_eq!(j.other_handles.len(), 1);
        assert_eq!(
            reg.join("c", "r", "C", 2, welcome).err(),
            Some(JoinError::Full)
        );
        assert_eq!(reg.room_of("c"), None);
        // Re-joining one's own room never counts oneself twice.
        assert!(reg.join("b", "r", "B2", 2, welcome).is_ok());
        assert_eq!(reg.members("r").len(), 2);
    }

    #[test]
    fn moving_leaves_the_old_room_only_after_success() {
        let (reg, _rx) = registry_with(&["a", "b", "c"]);
        reg.join("a", "full", "A", 1, welcome).unwrap();
        reg.join("b", "old", "B", 5, welcome).unwrap();
        reg.join("c", "old", "C", 5, welcome).unwrap();
        assert_eq!(
            reg.join("b", "full", "B", 1, welcome).err(),
            Some(JoinError::Full)
        );
        assert_eq!(reg.room_of("b").as_deref(), Some("old"));
        let j = reg.join("b", "new", "B", 5, welcome).unwrap();
        let left = j.left.unwrap();
        assert_eq!(&*left.room, "old");
        assert_eq!(left.remaining.len(), 1);
        assert!(!left.room_deleted);
        assert_eq!(reg.members("old").len(), 1);
    }

    #[test]
    fn room_count_is_bounded() {
        let reg = RoomRegistry::with_max_rooms(1);
        for id in ["a", "b"] {
            let (h, rx) = handle();
            std::mem::forget(rx);
            reg.register(Arc::from(id), h, "127.0.0.1:1".parse().unwrap());
        }
        reg.join("a", "one", "A", 5, welcome).unwrap();
        assert_eq!(
            reg.join("b", "two", "B", 5, welcome).err(),
            Some(JoinError::TooManyRooms)
        );
        assert!(
            reg.join("b", "one", "B", 5, welcome).is_ok(),
            "existing rooms stay open"
        );
        assert_eq!(reg.room_count(), 1);
        assert_eq!(reg.session_count(), 2);
    }

    #[test]
    fn last_member_deletes_the_room() {
        let (reg, _rx) = registry_with(&["a"]);
        reg.join("a", "r", "A", 5, welcome).unwrap();
        let d = reg.unregister("a").unwrap();
        assert!(d.room_deleted);
        assert!(!reg.room_exists("r"));
        assert!(reg.reachable("a", "a").is_none());
    }

    #[test]
    fn forwarding_stays_inside_the_room() {
        let (reg, _rx) = registry_with(&["a", "b", "x"]);
        reg.join("a", "r", "A", 5, welcome).unwrap();
        reg.join("b", "r", "B", 5, welcome).unwrap();
        reg.join("x", "other", "X", 5, welcome).unwrap();
        let targets = vec!["b".to_string(), "x".to_string(), "ghost".to_string()];
        assert_eq!(reg.room_handles("a", &targets).len(), 1);
        assert!(reg.reachable("a", "x").is_none());
        assert!(reg.reachable("a", "b").is_some());
        assert!(reg.reachable("a", "a").is_some());
    }
}
