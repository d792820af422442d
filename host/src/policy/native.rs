//! Bench-only (`--features native-routing`): the default policy's decisions
//! (plugins/default) written in Rust against the host's state directly, so
//! benchmarks can compare WebAssembly routing with native routing in one
//! build. Kept in step with plugins/default by the protocol tests, which
//! the bench script runs against this build too.

use super::{Action, Envelope, ErrorReply, JoinRequest, Outbound, PolicyContext};

pub fn decide(ctx: &PolicyContext, e: &Envelope) -> Vec<Action> {
    let rooms = &ctx.rooms;
    match e.kind.as_str() {
        "login" => {
            let data: Option<serde_json::Value> =
                e.data.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let field = |k: &str| {
                data.as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let (Some(room), Some(username)) = (field("roomrequest"), field("username")) else {
                return error(
                    e,
                    "badRequest",
                    "A login needs data with string fields \"roomrequest\" and \"username\".",
                );
            };
            let capacity = ctx
                .config
                .get("room-max")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            vec![Action::Join(JoinRequest {
                session: e.from.clone(),
                room,
                username,
                capacity,
            })]
        }
        "offer" | "answer" | "candidate" => {
            let Some(room) = rooms.room_of(&e.from) else {
                return error(
                    e,
                    "notInRoom",
                    "Join a room (login) before sending offers, answers or candidates.",
                );
            };
            match e.to.as_deref().filter(|t| !t.is_empty()) {
                Some(to) => vec![Action::Forward(vec![to.to_owned()])],
                None if e.kind == "offer" => vec![Action::Forward(
                    rooms
                        .members(&room)
                        .into_iter()
                        .filter(|m| *m != e.from)
                        .collect(),
                )],
                None => error(e, "badRequest", "This message needs a \"to\" session id."),
            }
        }
        "randomCheck" => {
            let candidate = e
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<String>(d).ok())
                .filter(|c| uuid::Uuid::parse_str(c).is_ok() && c.len() == 36);
            let Some(candidate) = candidate else {
                return error(e, "badRequest", "randomCheck needs a UUID string as data.");
            };
            let result = if rooms.room_exists(&candidate) {
                "fail"
            } else {
                "ok"
            };
            let frame = serde_json::json!({
                "type": "randomCheckResult",
                "data": { "result": result, "roomrequest": candidate },
            });
            vec![Action::Send(Outbound {
                to: e.from.clone(),
                frame: frame.to_string(),
            })]
        }
        "leave" => vec![Action::Leave(e.from.clone())],
        "hello" => {
            let data: Option<serde_json::Value> =
                e.data.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let mut capabilities: Vec<&str> = data
                .as_ref()
                .and_then(|d| d["capabilities"].as_array())
                .map(|l| l.iter().filter_map(|c| c.as_str()).collect())
                .unwrap_or_default();
            capabilities.retain(|c| {
                (1..=32).contains(&c.len())
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            capabilities.sort_unstable();
            capabilities.dedup();
            capabilities.truncate(32);
            let frame =
                serde_json::json!({"type": "hello", "data": {"capabilities": capabilities}});
            vec![Action::Send(Outbound {
                to: e.from.clone(),
                frame: frame.to_string(),
            })]
        }
        _ => error(e, "badRequest", "Unknown message type."),
    }
}

fn error(e: &Envelope, error_type: &str, text: &str) -> Vec<Action> {
    vec![Action::Error(ErrorReply {
        to: e.from.clone(),
        error_type: error_type.into(),
        error_text: text.into(),
    })]
}
