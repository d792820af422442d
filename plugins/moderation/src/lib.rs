//! moderation: the longest-present member of a room is its owner and may
//! remove others with `{"type":"kick","to":"<session id>"}`. The kicked
//! session gets `{"type":"kicked"}`, leaves (the room gets `logout`) and is
//! disconnected. When the owner leaves, the next-oldest member owns the room.
//! It tells clients it is there by adding `kick` to a `hello`'s capabilities.

use webrtc_chat_policy::{
    Action, CloseRequest, Envelope, Policy, Verdict, register_policy, reply_error, send, state,
    with_capability,
};

/// The close code a kicked session sees (application range 4000-4999).
const CLOSE_KICKED: u16 = 4001;

struct Moderation;

impl Policy for Moderation {
    fn on_message(e: &Envelope) -> Verdict {
        if e.kind == "hello" {
            return with_capability(e, "kick");
        }
        if e.kind != "kick" {
            return Verdict::Next;
        }
        let Some(room) = state::room_of(&e.from) else {
            return reply_error(e, "notInRoom", "Join a room before kicking.");
        };
        let members = state::members(&room);
        if members.first() != Some(&e.from) {
            return Verdict::Deny("Only the room's owner can remove people.".into());
        }
        let Some(target) = e.to.clone().filter(|t| *t != e.from && members.contains(t)) else {
            return reply_error(
                e,
                "badRequest",
                "kick needs \"to\": the session id of another member.",
            );
        };
        let by = state::username_of(&e.from).unwrap_or_default();
        let notice = serde_json::json!({
            "type": "kicked",
            "data": { "room": room, "by": by },
        });
        Verdict::Done(vec![
            send(&target, &notice),
            // Closing is checked against the room, so it goes before leaving.
            Action::Close(CloseRequest {
                session: target.clone(),
                code: CLOSE_KICKED,
                reason: "removed by the room owner".into(),
            }),
            Action::Leave(target),
        ])
    }
}

register_policy!(Moderation);
