//! one-to-one: every room holds two people, whatever the server's room-max.
//! It decides `login` itself (a `join` with capacity 2); the host checks
//! the capacity atomically and answers `error full` to a third.

use webrtc_chat_policy::{Envelope, Policy, Verdict, join, register_policy};

struct OneToOne;

impl Policy for OneToOne {
    fn on_message(e: &Envelope) -> Verdict {
        match e.login() {
            Some(login) => Verdict::Done(vec![join(e, &login, 2)]),
            // Not a login, or a malformed one: the default answers it.
            None => Verdict::Next,
        }
    }
}

register_policy!(OneToOne);
