//! The default policy: the behaviour documented in protocol.md.
//!
//! It sits at the end of every policy chain. It decides `login`, `offer`,
//! `answer`, `candidate` and `randomCheck`, plus the `leave` and `hello`
//! extensions, and answers `badRequest` for any type that no policy in front
//! of it handled.

use webrtc_chat_policy::{
    Action, Envelope, Policy, Verdict, error, join, register_policy, room_max, send, state,
};

struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn on_message(e: &Envelope) -> Verdict {
        Verdict::Done(decide(e))
    }
}

register_policy!(DefaultPolicy);

fn decide(e: &Envelope) -> Vec<Action> {
    match e.kind.as_str() {
        "login" => login(e),
        "offer" => relay(e, true),
        "answer" | "candidate" => relay(e, false),
        "randomCheck" => random_check(e),
        "leave" => vec![Action::Leave(e.from.clone())],
        "hello" => hello(e),
        other => vec![error(
            &e.from,
            "badRequest",
            &format!("Unknown message type \"{}\".", truncate(other, 40)),
        )],
    }
}

fn login(e: &Envelope) -> Vec<Action> {
    match e.login() {
        Some(login) => vec![join(e, &login, room_max())],
        None => vec![error(
            &e.from,
            "badRequest",
            "A login needs data with string fields \"roomrequest\" and \"username\".",
        )],
    }
}

/// Offers without a target fan out to the whole room; everything else is
/// unicast. A target outside the room is dropped by the host, silently.
fn relay(e: &Envelope, fan_out: bool) -> Vec<Action> {
    let Some(room) = state::room_of(&e.from) else {
        return vec![error(
            &e.from,
            "notInRoom",
            "Join a room (login) before sending offers, answers or candidates.",
        )];
    };
    match e.to.as_deref().filter(|t| !t.is_empty()) {
        Some(to) => vec![Action::Forward(vec![to.to_owned()])],
        None if fan_out => {
            let others = state::members(&room)
                .into_iter()
                .filter(|m| *m != e.from)
                .collect();
            vec![Action::Forward(others)]
        }
        None => vec![error(
            &e.from,
            "badRequest",
            &format!("A {} needs a \"to\" session id.", e.kind),
        )],
    }
}

fn random_check(e: &Envelope) -> Vec<Action> {
    let candidate = e.data_as::<String>().filter(|c| is_uuid(c));
    let Some(candidate) = candidate else {
        return vec![error(
            &e.from,
            "badRequest",
            "randomCheck needs a UUID string as data.",
        )];
    };
    let result = if state::room_exists(&candidate) {
        "fail"
    } else {
        "ok"
    };
    let frame = serde_json::json!({
        "type": "randomCheckResult",
        "data": { "result": result, "roomrequest": candidate },
    });
    vec![send(&e.from, &frame)]
}

/// Most capabilities a `hello` answer lists.
const MAX_CAPABILITIES: usize = 32;

/// `hello` asks what this server offers. Policies in front of the default
/// that add a feature put its name into `data.capabilities` (`next-with`);
/// the default answers with the list, sorted and without repeats. Names are
/// 1-32 ASCII letters, digits or `-`; anything else is left out.
fn hello(e: &Envelope) -> Vec<Action> {
    let data = e.json();
    let mut capabilities: Vec<&str> = data
        .as_ref()
        .and_then(|d| d.get("capabilities"))
        .and_then(|c| c.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|c| c.as_str())
                .filter(|c| is_capability(c))
                .collect()
        })
        .unwrap_or_default();
    capabilities.sort_unstable();
    capabilities.dedup();
    capabilities.truncate(MAX_CAPABILITIES);
    let frame = serde_json::json!({
        "type": "hello",
        "data": { "capabilities": capabilities },
    });
    vec![send(&e.from, &frame)]
}

fn is_capability(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `8-4-4-4-12` hex digits, any version: what `crypto.randomUUID()` and
/// the original client's generator produce.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shapes() {
        assert!(is_uuid("0b6f4c1e-3c1a-4b8e-9d2a-1f2e3d4c5b6a"));
        assert!(is_uuid("0B6F4C1E-3C1A-4B8E-9D2A-1F2E3D4C5B6A"));
        assert!(!is_uuid("0b6f4c1e3c1a4b8e9d2a1f2e3d4c5b6a"));
        assert!(!is_uuid("my room"));
        assert!(!is_uuid("0b6f4c1e-3c1a-4b8e-9d2a-1f2e3d4c5b6g"));
    }

    #[test]
    fn capability_names() {
        assert!(is_capability("password"));
        assert!(is_capability("kick-2"));
        assert!(!is_capability(""));
        assert!(!is_capability("no spaces"));
        assert!(!is_capability(&"x".repeat(33)));
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("가나다라", 2), "가나");
        assert_eq!(truncate("ab", 5), "ab");
    }
}
