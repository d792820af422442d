//! password-rooms: the first member of a room may set a password (`password`
//! in the `login` data); everyone after must give the same one, or gets
//! `error passwordRequired` (none given) or `error wrongPassword`. It tells
//! clients it is there by adding `password` to a `hello`'s capabilities.
//! The password is removed from the login before any
//! other policy or member sees it, is kept only as a salted hash in the
//! host's room-scoped key-value store, and is never logged.

use sha2::{Digest, Sha256};
use webrtc_chat_policy::{
    Envelope, LogLevel, Policy, Scope, Verdict, log, register_policy, reply_error, state,
    with_capability,
};

const KEY: &str = "password-sha256";

struct PasswordRooms;

impl Policy for PasswordRooms {
    fn on_message(e: &Envelope) -> Verdict {
        if e.kind == "hello" {
            return with_capability(e, "password");
        }
        if e.kind != "login" {
            return Verdict::Next;
        }
        let Some(mut data) = e.json() else {
            return Verdict::Next; // the default policy answers badRequest
        };
        let Some(obj) = data.as_object_mut() else {
            return Verdict::Next;
        };
        let password = obj.remove("password");
        let Some(room) = obj
            .get("roomrequest")
            .and_then(|r| r.as_str())
            .map(|r| r.trim().to_owned())
        else {
            return Verdict::Next;
        };
        let given = password.as_ref().and_then(|p| p.as_str()).unwrap_or("");
        let scope = Scope::Room(room.clone());
        if state::room_exists(&room) {
            if let Some(expected) = state::kv_get(&scope, KEY)
                && digest(&room, given) != expected
            {
                let (error_type, error_text) = if given.is_empty() {
                    ("passwordRequired", "This room needs a password.")
                } else {
                    ("wrongPassword", "That is not this room's password.")
                };
                return reply_error(e, error_type, error_text);
            }
        } else if given.is_empty() {
            // A new open room: forget what an earlier room of this name had.
            let _ = state::kv_set(&scope, KEY, None);
        } else if let Err(e) = state::kv_set(&scope, KEY, Some(&digest(&room, given))) {
            log(
                LogLevel::Warn,
                &format!("cannot store a room password: {e}"),
            );
            return Verdict::Deny("The server cannot protect this room right now.".into());
        }
        Verdict::NextWith(Envelope {
            data: Some(data.to_string()),
            ..e.clone()
        })
    }
}

register_policy!(PasswordRooms);

/// Salted with the room name, so equal passwords of two rooms differ.
fn digest(room: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(room.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
