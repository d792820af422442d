//! moderation: the longest-present member of a room is its owner and may
//! remove others with `{"type":"kick","to":"<session id>"}`. The kicked
//! session gets `{"type":"kicked"}`, leaves (the room gets `logout`) and is
//! disconnected. When the owner leaves, the next-oldest member owns the room.
//! It tells clients it is there by adding `kick` to a `hello`'s capabilities.

// The generated bindings' import shims take one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use webrtc_chat::policy::state;
use webrtc_chat::policy::types::{CloseRequest, ErrorReply, Outbound};

/// The close code a kicked session sees (application range 4000-4999).
const CLOSE_KICKED: u16 = 4001;

struct Moderation;

impl Guest for Moderation {
    fn on_connect(_s: SessionId, _peer_addr: String) -> Verdict {
        Verdict::Next
    }

    fn on_message(e: Envelope) -> Verdict {
        if e.kind == "hello" {
            return with_capability(e, "kick");
        }
        if e.kind != "kick" {
            return Verdict::Next;
        }
        let Some(room) = state::room_of(&e.from) else {
            return Verdict::Done(vec![error(
                &e.from,
                "notInRoom",
                "Join a room before kicking.",
            )]);
        };
        let members = state::members(&room);
        if members.first() != Some(&e.from) {
            return Verdict::Deny("Only the room's owner can remove people.".into());
        }
        let Some(target) = e.to.clone().filter(|t| *t != e.from && members.contains(t)) else {
            return Verdict::Done(vec![error(
                &e.from,
                "badRequest",
                "kick needs \"to\": the session id of another member.",
            )]);
        };
        let by = state::username_of(&e.from).unwrap_or_default();
        let notice = serde_json::json!({
            "type": "kicked",
            "data": { "room": room, "by": by },
        });
        Verdict::Done(vec![
            Action::Send(Outbound {
                to: target.clone(),
                frame: notice.to_string(),
            }),
            // Closing is checked against the room, so it goes before leaving.
            Action::Close(CloseRequest {
                session: target.clone(),
                code: CLOSE_KICKED,
                reason: "removed by the room owner".into(),
            }),
            Action::Leave(target),
        ])
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

fn error(to: &str, error_type: &str, error_text: &str) -> Action {
    Action::Error(ErrorReply {
        to: to.into(),
        error_type: error_type.into(),
        error_text: error_text.into(),
    })
}

export!(Moderation);
