//! password-rooms: the first member of a room may set a password (`password`
//! in the `login` data); everyone after must give the same one, or gets
//! `error passwordRequired` (none given) or `error wrongPassword`. It tells
//! clients it is there by adding `password` to a `hello`'s capabilities.
//! The password is removed from the login before any
//! other policy or member sees it, is kept only as a salted hash in the
//! host's room-scoped key-value store, and is never logged.

// The generated bindings' import shims take one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use sha2::{Digest, Sha256};
use webrtc_chat::policy::state;
use webrtc_chat::policy::types::{ErrorReply, LogLevel, Scope};

const KEY: &str = "password-sha256";

struct PasswordRooms;

impl Guest for PasswordRooms {
    fn on_connect(_s: SessionId, _peer_addr: String) -> Verdict {
        Verdict::Next
    }

    fn on_message(e: Envelope) -> Verdict {
        if e.kind == "hello" {
            return with_capability(e, "password");
        }
        if e.kind != "login" {
            return Verdict::Next;
        }
        let Some(mut data) = e
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        else {
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
                return Verdict::Done(vec![Action::Error(ErrorReply {
                    to: e.from,
                    error_type: error_type.into(),
                    error_text: error_text.into(),
                })]);
            }
        } else if given.is_empty() {
            // A new open room: forget what an earlier room of this name had.
            let _ = state::kv_set(&scope, KEY, None);
        } else if let Err(e) = state::kv_set(&scope, KEY, Some(&digest(&room, given))) {
            state::log(
                LogLevel::Warn,
                &format!("cannot store a room password: {e}"),
            );
            return Verdict::Deny("The server cannot protect this room right now.".into());
        }
        Verdict::NextWith(Envelope {
            data: Some(data.to_string()),
            ..e
        })
    }

    fn on_disconnect(_s: SessionId) -> Vec<Action> {
        Vec::new()
    }
}

/// Passes a `hello` on with `name` added to `data.capabilities`.
fn with_capability(e: Envelope, name: &str) -> Verdict {
    let mut data = e
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    if !data["capabilities"].is_array() {
        data["capabilities"] = serde_json::json!([]);
    }
    if let Some(list) = data["capabilities"].as_array_mut() {
        list.push(name.into());
    }
    Verdict::NextWith(Envelope {
        data: Some(data.to_string()),
        ..e
    })
}

/// Salted with the room name, so equal passwords of two rooms differ.
fn digest(room: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(room.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

export!(PasswordRooms);
