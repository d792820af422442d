//! The Rust SDK for WebRTC Chat policies (`webrtc-chat:policy@0.1.0`).
//!
//! A policy is a type that implements [`Policy`] — every hook has a
//! default that passes to the next policy — registered once with
//! [`register_policy!`]. Build the crate as a `cdylib` for
//! `wasm32-wasip2` and drop the `.wasm` into the host's plugins directory
//! (`scripts/install-policy.sh` does both):
//!
//! ```ignore
//! use webrtc_chat_policy::{Envelope, Policy, Verdict, join, register_policy, room_max};
//!
//! struct OneToOne;
//!
//! impl Policy for OneToOne {
//!     fn on_message(e: &Envelope) -> Verdict {
//!         match e.login() {
//!             Some(login) if e.kind == "login" => Verdict::Done(vec![join(e, &login, 2)]),
//!             _ => Verdict::Next,
//!         }
//!     }
//! }
//!
//! register_policy!(OneToOne);
//! ```
//!
//! The host keeps a pool of instances per policy and may call any of them,
//! or a fresh one, for the next message: keep state in the key-value store
//! ([`state::kv_get`], [`state::kv_set`]), never in globals.

// The generated import shims take one argument per flattened value.
#![allow(clippy::too_many_arguments)]

/// The generated bindings of the WIT world (kept in this crate, so a
/// policy needs no path to a `.wit` file).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "webrtc_chat_policy::bindings",
    });
}

use serde::de::DeserializeOwned;

pub use bindings::webrtc_chat::policy::state;
pub use bindings::webrtc_chat::policy::types::{
    Action, CloseRequest, Envelope, ErrorReply, JoinRequest, LogLevel, Outbound, Scope, SessionId,
    Verdict,
};

/// Room capacity when the operator configured none (the original `roomMax`).
pub const DEFAULT_ROOM_MAX: u32 = 10;

/// A policy's hooks. Each has a default that leaves the decision to the
/// next policy in the chain, so a policy writes only the hooks it needs.
/// They are associated functions, not methods: instances are pooled, so
/// there is no `self` worth keeping state in (use the key-value store).
pub trait Policy {
    /// A socket opened. `Verdict::Next` (from every policy) admits it;
    /// `Verdict::Deny` closes it.
    fn on_connect(session: &str, peer_addr: &str) -> Verdict {
        let _ = (session, peer_addr);
        Verdict::Next
    }

    /// A frame arrived from a session.
    fn on_message(e: &Envelope) -> Verdict {
        let _ = e;
        Verdict::Next
    }

    /// A socket closed; the host then removes the session from its room
    /// and tells the others itself.
    fn on_disconnect(session: &str) -> Vec<Action> {
        let _ = session;
        Vec::new()
    }
}

/// Registers `$policy` (a type implementing [`Policy`]) as this
/// component's policy. Use it once per crate.
#[macro_export]
macro_rules! register_policy {
    ($policy:ty) => {
        const _: () = {
            struct __WebrtcChatPolicy;
            impl $crate::bindings::Guest for __WebrtcChatPolicy {
                fn on_connect(s: ::std::string::String, peer: ::std::string::String) -> $crate::Verdict {
                    <$policy as $crate::Policy>::on_connect(&s, &peer)
                }
                fn on_message(e: $crate::Envelope) -> $crate::Verdict {
                    <$policy as $crate::Policy>::on_message(&e)
                }
                fn on_disconnect(s: ::std::string::String) -> ::std::vec::Vec<$crate::Action> {
                    <$policy as $crate::Policy>::on_disconnect(&s)
                }
            }
            $crate::bindings::__export_policy_world!(__WebrtcChatPolicy with_types_in $crate::bindings);
        };
    };
}

/// The `data` of a `login` as the original client sends it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Login {
    #[serde(rename = "roomrequest")]
    pub room: String,
    pub username: String,
}

impl Envelope {
    /// `data` parsed as `T`; `None` when absent or not a `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.data.as_deref()?).ok()
    }

    /// `data` as a JSON value (`None` when absent or not JSON).
    pub fn json(&self) -> Option<serde_json::Value> {
        self.data_as()
    }

    /// The room and user name of a `login` (`None` for any other type, or
    /// when they are missing: leave that to the default's `badRequest`).
    pub fn login(&self) -> Option<Login> {
        if self.kind != "login" {
            return None;
        }
        self.data_as()
    }
}

/// An `error` frame to `to`.
pub fn error(to: &str, error_type: &str, error_text: &str) -> Action {
    Action::Error(ErrorReply {
        to: to.to_owned(),
        error_type: error_type.to_owned(),
        error_text: error_text.to_owned(),
    })
}

/// Decided: answer the sender of `e` with an `error` frame.
pub fn reply_error(e: &Envelope, error_type: &str, error_text: &str) -> Verdict {
    Verdict::Done(vec![error(&e.from, error_type, error_text)])
}

/// Put the sender of `e` into the room of its `login`, with this capacity
/// (the host checks it atomically and answers `error full` itself).
pub fn join(e: &Envelope, login: &Login, capacity: u32) -> Action {
    Action::Join(JoinRequest {
        session: e.from.clone(),
        room: login.room.clone(),
        username: login.username.clone(),
        capacity,
    })
}

/// A frame of the policy's own to one session: a JSON object with a
/// `type` that is not one of the host's (`joined`, `logout`, `error`).
pub fn send(to: &str, frame: &serde_json::Value) -> Action {
    Action::Send(Outbound {
        to: to.to_owned(),
        frame: frame.to_string(),
    })
}

/// Answers a `hello` for a policy that adds a feature: passes it on with
/// `name` added to `data.capabilities` (the default replies with the list).
pub fn with_capability(e: &Envelope, name: &str) -> Verdict {
    let mut data = e
        .json()
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
        ..e.clone()
    })
}

/// The operator's room capacity (`--room-max`), or [`DEFAULT_ROOM_MAX`].
pub fn room_max() -> u32 {
    state::config("room-max")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_ROOM_MAX)
}

/// Logs through the host (tagged with the policy's name).
pub fn log(level: LogLevel, msg: &str) {
    state::log(level, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, data: Option<&str>) -> Envelope {
        Envelope {
            kind: kind.into(),
            from: "s1".into(),
            to: None,
            data: data.map(str::to_owned),
        }
    }

    #[test]
    fn login_needs_both_string_fields() {
        let e = envelope(
            "login",
            Some(r#"{"roomrequest":"r","username":"u","password":"p"}"#),
        );
        let login = e.login().unwrap();
        assert_eq!((login.room.as_str(), login.username.as_str()), ("r", "u"));
        assert!(
            envelope("login", Some(r#"{"roomrequest":"r"}"#))
                .login()
                .is_none()
        );
        assert!(
            envelope("login", Some(r#"{"roomrequest":1,"username":"u"}"#))
                .login()
                .is_none()
        );
        assert!(envelope("login", Some("not json")).login().is_none());
        assert!(envelope("login", None).login().is_none());
        // The same data under another type is not a login.
        assert!(envelope("offer", e.data.as_deref()).login().is_none());
    }

    #[test]
    fn data_is_parsed_as_asked() {
        let e = envelope("randomCheck", Some(r#""abc""#));
        assert_eq!(e.data_as::<String>().as_deref(), Some("abc"));
        assert_eq!(e.data_as::<u32>(), None);
        assert_eq!(
            envelope("x", Some("[1,2]")).json(),
            Some(serde_json::json!([1, 2]))
        );
    }

    #[test]
    fn capabilities_are_added_to_a_hello() {
        let Verdict::NextWith(e) = with_capability(&envelope("hello", None), "kick") else {
            panic!("not next-with")
        };
        assert_eq!(
            e.json(),
            Some(serde_json::json!({"capabilities": ["kick"]}))
        );
        let Verdict::NextWith(e) = with_capability(&e, "password") else {
            panic!("not next-with")
        };
        assert_eq!(
            e.json().unwrap()["capabilities"],
            serde_json::json!(["kick", "password"])
        );
    }

    #[test]
    fn join_and_error_address_the_sender() {
        let e = envelope("login", Some(r#"{"roomrequest":"r","username":"u"}"#));
        let Action::Join(j) = join(&e, &e.login().unwrap(), 2) else {
            panic!("not a join")
        };
        assert_eq!(
            (j.session.as_str(), j.room.as_str(), j.capacity),
            ("s1", "r", 2)
        );
        let Verdict::Done(actions) = reply_error(&e, "badRequest", "no") else {
            panic!("not done")
        };
        assert!(
            matches!(&actions[..], [Action::Error(r)] if r.to == "s1" && r.error_type == "badRequest")
        );
    }
}
