//! One frame's way through the host: parse once, stamp, ask the policy
//! chain, check each action it returns, and apply them in order. The
//! forwarded frame is rendered once and shared by every recipient.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;

use super::Hub;
use super::frame::{self, Inbound, Stamped};
use super::names::{self, MAX_NAME_CHARS, MAX_ROOM_CHARS};
use super::rate::Flooding;
use super::rooms::{Departure, JoinError, Member, Outbound, SessionHandle};
use super::session::CLOSE_POLICY;
use crate::policy::kv::Scope;
use crate::policy::{Action, CloseRequest, Decision, Envelope, ErrorReply, JoinRequest};

/// Frame types only the host may send.
const HOST_TYPES: &[&str] = &["joined", "logout", "error"];

/// The session a frame came from.
pub struct Sender<'a> {
    pub id: &'a Arc<str>,
    pub handle: &'a SessionHandle,
    /// The Host header the client connected with, for ICE server URLs.
    pub host: &'a str,
}

impl Sender<'_> {
    /// Charges a frame of `bytes` for `recipients` to this sender's fan-out
    /// budget; false (the sender told, or closed) when it is spent.
    fn may_fan_out(&self, hub: &Hub, bytes: usize, recipients: usize) -> bool {
        match self.handle.may_fan_out(bytes.saturating_mul(recipients)) {
            Ok(()) => true,
            Err(Flooding::Warn) => {
                self.error(
                    hub,
                    "rateLimited",
                    "Too much data for the room: slow down; this one was not delivered.",
                );
                false
            }
            Err(Flooding::Persisting) => {
                tracing::info!(session = %self.id, "closed: kept sending past its byte rate limit");
                self.handle.deliver(Outbound::Close(
                    CLOSE_POLICY,
                    Utf8Bytes::from_static("rate limit exceeded"),
                ));
                false
            }
        }
    }

    fn error(&self, hub: &Hub, error_type: &str, error_text: &str) {
        hub.metrics.error(error_type);
        self.handle
            .deliver(Outbound::Frame(Utf8Bytes::from(frame::error(
                error_type, error_text,
            ))));
    }
}

/// Answers a frame that cannot be handled (a binary frame) with `badRequest`.
pub fn reject(hub: &Hub, sender: &Sender<'_>, why: &str) {
    hub.metrics.frame_in("other");
    sender.error(hub, "badRequest", why);
}

/// Answers a frame refused by the session's rate limit.
pub fn rate_limited(hub: &Hub, sender: &Sender<'_>) {
    hub.metrics.frame_in("other");
    sender.error(
        hub,
        "rateLimited",
        "Too many messages: slow down; this one was not delivered.",
    );
}

/// Handles one text frame from `sender`: here, or (cluster mode) on the
/// host that owns the room it concerns.
pub async fn handle_text(hub: &Hub, sender: &Sender<'_>, text: &str) {
    let Some(cluster) = &hub.cluster else {
        return handle_here(hub, sender, text).await;
    };
    if cluster.route(hub, sender, text).await {
        return;
    }
    handle_here(hub, sender, text).await;
    cluster.handled_locally(hub, sender.id);
}

async fn handle_here(hub: &Hub, sender: &Sender<'_>, text: &str) {
    let inbound = match frame::parse(text) {
        Ok(f) => f,
        Err(e) => {
            hub.metrics.frame_in("other");
            return sender.error(hub, "badRequest", &e.to_string());
        }
    };
    hub.metrics.frame_in(&inbound.kind);
    // Checked and made canonical before any policy sees them: a policy
    // must not keep state under a name the host would refuse (e.g. a
    // 60 KB room id), and every policy must read the same login.
    let login = if inbound.kind == "login" {
        match canonical_login(inbound.data) {
            Ok(data) => data,
            Err(why) => return sender.error(hub, "badRequest", &why),
        }
    } else {
        None
    };
    let rooms = &hub.registry;
    hub.kv
        .tracking(
            |r| rooms.room_exists(r),
            decide_and_apply(hub, sender, &inbound, login),
        )
        .await;
}

/// The `data` of a `login` as every policy gets it: strict JSON (no lone
/// surrogate, no number out of range: a lenient parser in one policy and
/// a strict one in another must not read two different logins, e.g. a
/// password check that gives up while the default joins), with duplicate
/// members collapsed (the last one, as JSON.parse and json.loads keep)
/// and the room id and user name trimmed and checked as the host joins
/// them (`"call#2 "` is room `call#2` for a policy too). `None` when the
/// login has no `data` (the default answers that).
fn canonical_login(data: Option<&RawValue>) -> Result<Option<String>, String> {
    let Some(data) = data else {
        return Ok(None);
    };
    let mut value: serde_json::Value = serde_json::from_str(data.get())
        .map_err(|e| format!("The login's data is not valid JSON ({e})."))?;
    if let Some(obj) = value.as_object_mut() {
        for (key, what, max) in [
            ("roomrequest", "room id", MAX_ROOM_CHARS),
            ("username", "user name", MAX_NAME_CHARS),
        ] {
            if let Some(serde_json::Value::String(raw)) = obj.get_mut(key) {
                let name = names::check(what, raw, max)?;
                if name.len() != raw.len() {
                    *raw = name.to_owned();
                }
            }
        }
    }
    Ok(Some(value.to_string()))
}

/// Asks the chain about one parsed frame (with the canonical data of a
/// login) and applies its decision.
async fn decide_and_apply(
    hub: &Hub,
    sender: &Sender<'_>,
    inbound: &Inbound<'_>,
    login: Option<String>,
) {
    let envelope = Envelope {
        kind: inbound.kind.to_string(),
        from: sender.id.to_string(),
        to: inbound.to.as_deref().map(str::to_owned),
        data: login.or_else(|| inbound.data.map(|d| d.get().to_owned())),
    };
    let chain = hub.chain.load_full();
    match chain.on_message(envelope).await {
        Decision::Act {
            actions,
            envelope,
            rewritten,
        } => {
            let mut ctx = Applying {
                hub,
                sender,
                inbound,
                envelope,
                rewritten,
                rendered: None,
            };
            for action in actions {
                if !ctx.apply(action) {
                    break;
                }
            }
        }
        Decision::Deny { reason } => sender.error(hub, "forbidden", &reason),
        Decision::Failed(e) => {
            sender.error(
                hub,
                "internal",
                "A server policy failed on this message; nothing was delivered.",
            );
            tracing::debug!(session = %sender.id, "{e}");
        }
        Decision::Unhandled => sender.error(
            hub,
            "badRequest",
            &format!("Unknown message type \"{}\".", inbound.kind),
        ),
    }
}

/// Tells the chain a session is gone, applies what the policies ask, then
/// removes the session and sends `logout` to its room.
pub async fn handle_disconnect(hub: &Hub, sender: &Sender<'_>) {
    let chain = hub.chain.load_full();
    let actions = chain.on_disconnect(sender.id).await;
    apply_without_message(hub, sender, "disconnect", actions);
    if let Some(cluster) = &hub.cluster {
        cluster.session_closed(sender.id);
    }
    let departure = hub.registry.unregister(sender.id);
    hub.ice.session_ended(sender.id);
    hub.kv.drop_scope(&Scope::Session(sender.id.to_string()));
    if let Some(d) = departure {
        announce_departure(hub, &d);
    }
}

/// Applies the actions a policy returned from `on-connect`, checked like any
/// other (a `done` is never dropped).
pub fn handle_connect_actions(hub: &Hub, sender: &Sender<'_>, actions: Vec<Action>) {
    apply_without_message(hub, sender, "connect", actions);
}

/// Applies actions that no client frame carries (`on-connect`,
/// `on-disconnect`): there is nothing to forward.
fn apply_without_message(hub: &Hub, sender: &Sender<'_>, kind: &str, actions: Vec<Action>) {
    if actions.is_empty() {
        return;
    }
    let inbound = Inbound {
        kind: kind.into(),
        to: None,
        data: None,
        extras: Vec::new(),
    };
    let mut ctx = Applying {
        hub,
        sender,
        inbound: &inbound,
        envelope: Envelope {
            kind: kind.into(),
            from: sender.id.to_string(),
            to: None,
            data: None,
        },
        rewritten: false,
        rendered: None,
    };
    for action in actions {
        if matches!(action, Action::Forward(_)) {
            tracing::warn!(session = %sender.id, "policy forward refused: no message to forward on {kind}");
            continue;
        }
        if !ctx.apply(action) {
            break;
        }
    }
}

/// Sends `logout` to the room `d` left; drops the room's state when it is gone.
pub(crate) fn announce_departure(hub: &Hub, d: &Departure) {
    let notice = Utf8Bytes::from(frame::logout(&d.session, &d.username));
    for h in &d.remaining {
        h.deliver(Outbound::Frame(notice.clone()));
    }
    if d.room_deleted {
        hub.kv.drop_scope(&Scope::Room(d.room.to_string()));
    }
}

struct Applying<'a> {
    hub: &'a Hub,
    sender: &'a Sender<'a>,
    inbound: &'a Inbound<'a>,
    envelope: Envelope,
    rewritten: bool,
    /// The stamped frame, rendered on first use.
    rendered: Option<Utf8Bytes>,
}

impl Applying<'_> {
    /// Applies one action; false stops the rest.
    fn apply(&mut self, action: Action) -> bool {
        let from = self.sender.id;
        match action {
            Action::Forward(targets) => {
                // A client sent, or a policy rewrote, a type only the host
                // may send: forwarding it would let a peer forge one.
                if HOST_TYPES.contains(&self.envelope.kind.as_str()) {
                    tracing::warn!(session = %from, kind = %self.envelope.kind, "policy forward refused: host-only type");
                    return true;
                }
                let handles = self.hub.registry.room_handles(from, &targets);
                if handles.is_empty() {
                    return true;
                }
                let Some(frame) = self.stamped(None) else {
                    return false;
                };
                if !self
                    .sender
                    .may_fan_out(self.hub, frame.len(), handles.len())
                {
                    return false;
                }
                self.hub.metrics.frames_out(handles.len() as u64);
                for h in handles {
                    h.deliver(Outbound::Frame(frame.clone()));
                }
                true
            }
            Action::Send(out) => {
                match (
                    self.hub.registry.reachable(from, &out.to),
                    policy_frame(&out.frame),
                ) {
                    (Some(h), Ok(frame)) => h.deliver(Outbound::Frame(Utf8Bytes::from(frame))),
                    (None, _) => {}
                    (Some(_), Err(why)) => {
                        tracing::warn!(session = %from, "policy send refused: {why}");
                    }
                }
                true
            }
            Action::Error(ErrorReply {
                to,
                error_type,
                error_text,
            }) => {
                let valid_type = !error_type.is_empty()
                    && error_type.len() <= 32
                    && error_type.chars().all(|c| c.is_ascii_alphanumeric());
                if !valid_type {
                    tracing::warn!(session = %from, "policy error refused: bad errorType");
                    return true;
                }
                if let Some(h) = self.hub.registry.reachable(from, &to) {
                    self.hub.metrics.error(&error_type);
                    let text: String = error_text.chars().take(512).collect();
                    h.deliver(Outbound::Frame(Utf8Bytes::from(frame::error(
                        &error_type,
                        &text,
                    ))));
                }
                true
            }
            Action::Join(req) => self.join(req),
            Action::Leave(session) => {
                if self.hub.registry.reachable(from, &session).is_some()
                    && let Some(d) = self.hub.registry.leave(&session)
                {
                    announce_departure(self.hub, &d);
                }
                true
            }
            Action::Close(CloseRequest {
                session,
                code,
                reason,
            }) => {
                if !(code == 1000 || code == 1008 || (4000..=4999).contains(&code)) {
                    tracing::warn!(session = %from, code, "policy close refused: code must be 1000, 1008 or 4000-4999");
                    return true;
                }
                if let Some(h) = self.hub.registry.reachable(from, &session) {
                    // A close reason is at most 123 bytes on the wire.
                    let mut reason = reason;
                    while reason.len() > 123 {
                        reason.pop();
                    }
                    h.deliver(Outbound::Close(code, Utf8Bytes::from(reason)));
                }
                true
            }
        }
    }

    fn join(&mut self, req: JoinRequest) -> bool {
        let from = self.sender.id;
        if req.session != **from {
            tracing::warn!(session = %from, "policy join refused: a policy may only join the sender");
            return true;
        }
        let room = match names::check("room id", &req.room, MAX_ROOM_CHARS) {
            Ok(r) => r,
            Err(why) => {
                self.sender.error(self.hub, "badRequest", &why);
                return false;
            }
        };
        let username = match names::check("user name", &req.username, MAX_NAME_CHARS) {
            Ok(n) => n,
            Err(why) => {
                self.sender.error(self.hub, "badRequest", &why);
                return false;
            }
        };
        // Rendered before the join, so a join is never half-announced.
        let notice = if self.envelope.kind == "login" {
            match self.stamped(Some(username)) {
                Some(f) => f,
                None => return false,
            }
        } else {
            Utf8Bytes::from(frame::login_notice(from, username, room))
        };
        // The notice (a login's whole `data`) goes to everyone already there.
        let others = self
            .hub
            .registry
            .members(room)
            .iter()
            .filter(|m| ***m != **from)
            .count();
        if !self.sender.may_fan_out(self.hub, notice.len(), others) {
            return false;
        }
        let ice = self.hub.ice.for_session(from, self.sender.host);
        let welcome = |others: &[Member]| {
            let members: Vec<(String, String)> = others
                .iter()
                .map(|m| (m.id.to_string(), m.username.to_string()))
                .collect();
            Outbound::Frame(Utf8Bytes::from(frame::joined(from, room, &members, &ice)))
        };
        let joined = match self
            .hub
            .registry
            .join(from, room, username, req.capacity, welcome)
        {
            Ok(j) => j,
            Err(JoinError::Full) => {
                self.sender.error(
                    self.hub,
                    "full",
                    &format!("The room is full ({} people).", req.capacity),
                );
                return false;
            }
            Err(JoinError::TooManyRooms) => {
                self.sender.error(
                    self.hub,
                    "full",
                    "The server holds as many rooms as it can; join an existing room or try later.",
                );
                return false;
            }
            Err(JoinError::UnknownSession) => return false,
        };
        if let Some(left) = &joined.left {
            announce_departure(self.hub, left);
        }

        self.hub
            .metrics
            .frames_out(joined.other_handles.len() as u64 + 1);
        for h in &joined.other_handles {
            h.deliver(Outbound::Frame(notice.clone()));
        }
        true
    }

    /// The envelope as forwarded: `from` and `username` set by the host,
    /// the client's other members kept. Rendered once per message.
    /// `username` names the sender when it is joining (not yet registered).
    fn stamped(&mut self, username: Option<&str>) -> Option<Utf8Bytes> {
        if let Some(f) = &self.rendered {
            return Some(f.clone());
        }
        let from = self.sender.id;
        let data = match (&self.envelope.data, self.rewritten) {
            (Some(d), true) if serde_json::from_str::<&RawValue>(d).is_err() => {
                tracing::warn!(session = %from, "policy rewrote data into invalid JSON; nothing delivered");
                self.sender.error(
                    self.hub,
                    "internal",
                    "A server policy failed on this message; nothing was delivered.",
                );
                return None;
            }
            (d, _) => d.as_deref(),
        };
        let registered = match username {
            Some(_) => None,
            None => self.hub.registry.username_of(from),
        };
        let username = username.or(registered.as_deref());
        let rendered = Utf8Bytes::from(
            Stamped {
                kind: &self.envelope.kind,
                from,
                to: self.envelope.to.as_deref(),
                username,
                data,
                extras: &self.inbound.extras,
            }
            .render(),
        );
        self.rendered = Some(rendered.clone());
        Some(rendered)
    }
}

/// A policy's own frame: a JSON object with a string `type` that is not
/// one of the host's, sent with `from` = "".
fn policy_frame(text: &str) -> Result<String, &'static str> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| "not a JSON object")?;
    match value.get("type").and_then(|t| t.as_str()) {
        None => return Err("no string type"),
        Some(t) if HOST_TYPES.contains(&t) => return Err("uses a host-only type"),
        Some(_) => {}
    }
    value.insert("from".into(), serde_json::Value::String(String::new()));
    serde_json::to_string(&value).map_err(|_| "not serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_frames_are_checked_and_stamped() {
        let f = policy_frame(r#"{"type":"randomCheckResult","from":"x","data":1}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["from"], "");
        assert!(policy_frame(r#"{"type":"joined","data":"x"}"#).is_err());
        assert!(policy_frame(r#"{"type":"error"}"#).is_err());
        assert!(policy_frame(r#"[1]"#).is_err());
        assert!(policy_frame(r#"{"data":1}"#).is_err());
    }
}
