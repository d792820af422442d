//! one-to-one: every room holds two people, whatever the server's room-max.
//! It decides `login` itself (a `join` with capacity 2); the host checks
//! the capacity atomically and answers `error full` to a third.

// The generated bindings' import shims take one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use webrtc_chat::policy::types::JoinRequest;

struct OneToOne;

impl Guest for OneToOne {
    fn on_connect(_s: SessionId, _peer_addr: String) -> Verdict {
        Verdict::Next
    }

    fn on_message(e: Envelope) -> Verdict {
        if e.kind != "login" {
            return Verdict::Next;
        }
        let data: Option<serde_json::Value> =
            e.data.as_deref().and_then(|d| serde_json::from_str(d).ok());
        let field = |k: &str| {
            data.as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        match (field("roomrequest"), field("username")) {
            (Some(room), Some(username)) => Verdict::Done(vec![Action::Join(JoinRequest {
                session: e.from,
                room,
                username,
                capacity: 2,
            })]),
            // Malformed: let the default policy answer badRequest.
            _ => Verdict::Next,
        }
    }

    fn on_disconnect(_s: SessionId) -> Vec<Action> {
        Vec::new()
    }
}

export!(OneToOne);
