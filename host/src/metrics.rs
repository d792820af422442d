//! `Metrics`: counters the host keeps for operators, rendered in the
//! Prometheus text format on `--metrics-addr` (loopback by default, so it is
//! not public). Label sets are fixed, so a client cannot grow them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::policy::PolicyChain;

/// Message types counted by name; anything else is `other`.
const KINDS: &[&str] = &[
    "login",
    "offer",
    "answer",
    "candidate",
    "randomCheck",
    "leave",
    "other",
];
/// `error` frames by `errorType`; anything a policy invents is `other`.
const ERRORS: &[&str] = &[
    "full",
    "badRequest",
    "notInRoom",
    "rateLimited",
    "forbidden",
    "internal",
    "unavailable",
    "other",
];

#[derive(Default)]
pub struct Metrics {
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub frames_out: AtomicU64,
    frames_in: [AtomicU64; 7],
    errors: [AtomicU64; 8],
}

fn index(table: &[&str], name: &str) -> usize {
    table
        .iter()
        .position(|k| *k == name)
        .unwrap_or(table.len() - 1)
}

impl Metrics {
    pub fn frame_in(&self, kind: &str) {
        self.frames_in[index(KINDS, kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, error_type: &str) {
        self.errors[index(ERRORS, error_type)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn frames_out(&self, n: u64) {
        self.frames_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends this host's counters to a Prometheus text exposition.
    pub fn render(&self, out: &mut String, sessions: usize, rooms: usize) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_sessions Connected signaling sessions."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_sessions gauge");
        let _ = writeln!(out, "webrtc_chat_sessions {sessions}");
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_rooms Rooms with at least one member."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_rooms gauge");
        let _ = writeln!(out, "webrtc_chat_rooms {rooms}");
        let _ = writeln!(out, "# TYPE webrtc_chat_sessions_opened_total counter");
        let _ = writeln!(
            out,
            "webrtc_chat_sessions_opened_total {}",
            get(&self.sessions_opened)
        );
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_sessions_refused_total Connections refused by a limit."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_sessions_refused_total counter");
        let _ = writeln!(
            out,
            "webrtc_chat_sessions_refused_total {}",
            get(&self.sessions_refused)
        );
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_messages_in_total Client frames by type."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_messages_in_total counter");
        for (kind, n) in KINDS.iter().zip(&self.frames_in) {
            let _ = writeln!(
                out,
                "webrtc_chat_messages_in_total{{type=\"{kind}\"}} {}",
                get(n)
            );
        }
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_messages_out_total Frames queued to clients."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_messages_out_total counter");
        let _ = writeln!(
            out,
            "webrtc_chat_messages_out_total {}",
            get(&self.frames_out)
        );
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_errors_total Error frames sent, by errorType."
        );
        let _ = writeln!(out, "# TYPE webrtc_chat_errors_total counter");
        for (kind, n) in ERRORS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "webrtc_chat_errors_total{{kind=\"{kind}\"}} {}",
                get(n)
            );
        }
    }
}

/// `/metrics`, `/healthz` (live: the process answers) and `/readyz` (ready:
/// serving, not draining, and in cluster mode Redis answers) for the
/// metrics listener.
pub fn router(hub: Arc<dyn Observed>, turn: Option<Arc<chat_turn::TurnServer>>) -> Router {
    let ready = hub.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let hub = hub.clone();
                let turn = turn.clone();
                async move {
                    let mut body = String::with_capacity(4096);
                    hub.render(&mut body);
                    if let Some(turn) = turn {
                        render_turn(&mut body, &turn.stats());
                    }
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.draining() {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if let Some(why) = ready.not_ready() {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, why)
                } else {
                    (axum::http::StatusCode::OK, "ready")
                }
            }),
        )
}

/// The TURN server's counters.
pub fn render_turn(out: &mut String, t: &chat_turn::TurnStats) {
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_allocations Live TURN allocations."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_turn_allocations gauge");
    let _ = writeln!(out, "webrtc_chat_turn_allocations {}", t.allocations);
    let _ = writeln!(out, "# TYPE webrtc_chat_turn_allocations_total counter");
    let _ = writeln!(
        out,
        "webrtc_chat_turn_allocations_total {}",
        t.allocations_made
    );
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_refused_total TURN requests refused, by reason."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_turn_refused_total counter");
    for (reason, n) in [
        ("credential", t.refused_credentials),
        ("peer", t.refused_peers),
        ("quota", t.refused_quota),
        ("capacity", t.refused_capacity),
    ] {
        let _ = writeln!(
            out,
            "webrtc_chat_turn_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_relayed_bytes_total Payload bytes relayed, by direction."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_turn_relayed_bytes_total counter");
    let _ = writeln!(
        out,
        "webrtc_chat_turn_relayed_bytes_total{{direction=\"to_peers\"}} {}",
        t.bytes_to_peers
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_relayed_bytes_total{{direction=\"from_peers\"}} {}",
        t.bytes_from_peers
    );
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_relay_to_relay_bytes_total Of the bytes relayed to peers, those handed to another allocation of this server (relay-only peers meeting)."
    );
    let _ = writeln!(
        out,
        "# TYPE webrtc_chat_turn_relay_to_relay_bytes_total counter"
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_relay_to_relay_bytes_total {}",
        t.bytes_relay_to_relay
    );
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_fastpath_packets_total Packets relayed on the fast path (established channels and permissions, without the turn crate), by direction."
    );
    let _ = writeln!(
        out,
        "# TYPE webrtc_chat_turn_fastpath_packets_total counter"
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_fastpath_packets_total{{direction=\"to_peers\"}} {}",
        t.fast_packets_to_peers
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_fastpath_packets_total{{direction=\"from_peers\"}} {}",
        t.fast_packets_from_peers
    );
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_fastpath_sends_total Datagrams the fast path handed the kernel (a run of frames to one client or peer leaves as one segmented datagram, GSO; a relay-to-relay packet is counted in both directions above but sent once)."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_turn_fastpath_sends_total counter");
    let _ = writeln!(
        out,
        "webrtc_chat_turn_fastpath_sends_total {}",
        t.fast_sends
    );
    // Per session as a histogram (fixed series whatever the number of
    // sessions): one observation when a session's last allocation closes.
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_session_relayed_bytes Payload bytes each ended session relayed through TURN (all its allocations, both directions)."
    );
    let _ = writeln!(
        out,
        "# TYPE webrtc_chat_turn_session_relayed_bytes histogram"
    );
    for (le, n) in t.session_bytes.cumulative() {
        let le = le.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "webrtc_chat_turn_session_relayed_bytes_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "webrtc_chat_turn_session_relayed_bytes_sum {}",
        t.session_bytes.sum
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_session_relayed_bytes_count {}",
        t.session_bytes.count
    );
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_turn_closed_session_gone_total Relays closed because their session ended."
    );
    let _ = writeln!(
        out,
        "# TYPE webrtc_chat_turn_closed_session_gone_total counter"
    );
    let _ = writeln!(
        out,
        "webrtc_chat_turn_closed_session_gone_total {}",
        t.closed_session_gone
    );
}

/// What the metrics listener reads from the serving state (signaling's
/// `Hub`), so this module needs nothing from signaling.
pub trait Observed: Send + Sync + 'static {
    /// Appends everything the host counts, in the Prometheus text format.
    fn render(&self, out: &mut String);
    /// Shutdown has begun: /readyz answers 503.
    fn draining(&self) -> bool;
    /// Why the host cannot serve fully now (/readyz answers 503), if so:
    /// e.g. cluster mode without Redis.
    fn not_ready(&self) -> Option<&'static str> {
        None
    }
}

/// Per-policy counters of the chain in force.
pub fn render_policies(out: &mut String, chain: &PolicyChain) {
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_policy_calls_total Policy calls, by policy."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_policy_calls_total counter");
    for p in chain.policies() {
        let _ = writeln!(
            out,
            "webrtc_chat_policy_calls_total{{policy=\"{}\"}} {}",
            p.name(),
            p.stats.calls.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_policy_failures_total Failed policy calls (trap, deadline, memory)."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_policy_failures_total counter");
    for p in chain.policies() {
        let _ = writeln!(
            out,
            "webrtc_chat_policy_failures_total{{policy=\"{}\"}} {}",
            p.name(),
            p.stats.failures.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_policy_seconds_total Time spent in policy calls."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_policy_seconds_total counter");
    for p in chain.policies() {
        let _ = writeln!(
            out,
            "webrtc_chat_policy_seconds_total{{policy=\"{}\"}} {:.6}",
            p.name(),
            p.stats.nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
    }
    let _ = writeln!(
        out,
        "# HELP webrtc_chat_policy_quarantined Whether a policy is quarantined."
    );
    let _ = writeln!(out, "# TYPE webrtc_chat_policy_quarantined gauge");
    for p in chain.policies() {
        let _ = writeln!(
            out,
            "webrtc_chat_policy_quarantined{{policy=\"{}\"}} {}",
            p.name(),
            u8::from(p.is_quarantined())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_fall_into_other() {
        let m = Metrics::default();
        m.frame_in("offer");
        m.frame_in("x".repeat(50).as_str());
        m.error("weird");
        let mut out = String::new();
        m.render(&mut out, 3, 1);
        assert!(out.contains("webrtc_chat_messages_in_total{type=\"offer\"} 1"));
        assert!(out.contains("webrtc_chat_messages_in_total{type=\"other\"} 1"));
        assert!(out.contains("webrtc_chat_errors_total{kind=\"other\"} 1"));
        assert!(out.contains("webrtc_chat_sessions 3"));
    }

    #[test]
    fn turn_session_bytes_render_as_a_cumulative_histogram() {
        let mut t = chat_turn::TurnStats::default();
        // One session of 5 kB, one of 50 MB.
        t.session_bytes.buckets[0] = 1;
        t.session_bytes.buckets[4] = 1;
        t.session_bytes.sum = 50_005_000;
        t.session_bytes.count = 2;
        t.bytes_relay_to_relay = 7;
        t.fast_packets_to_peers = 11;
        t.fast_packets_from_peers = 12;
        t.fast_sends = 5;
        t.refused_capacity = 4;
        let mut out = String::new();
        render_turn(&mut out, &t);
        for line in [
            "# TYPE webrtc_chat_turn_session_relayed_bytes histogram",
            "webrtc_chat_turn_session_relayed_bytes_bucket{le=\"10000\"} 1",
            "webrtc_chat_turn_session_relayed_bytes_bucket{le=\"10000000\"} 1",
            "webrtc_chat_turn_session_relayed_bytes_bucket{le=\"100000000\"} 2",
            "webrtc_chat_turn_session_relayed_bytes_bucket{le=\"+Inf\"} 2",
            "webrtc_chat_turn_session_relayed_bytes_sum 50005000",
            "webrtc_chat_turn_session_relayed_bytes_count 2",
            "webrtc_chat_turn_relay_to_relay_bytes_total 7",
            "webrtc_chat_turn_fastpath_packets_total{direction=\"to_peers\"} 11",
            "webrtc_chat_turn_fastpath_packets_total{direction=\"from_peers\"} 12",
            "webrtc_chat_turn_fastpath_sends_total 5",
            "webrtc_chat_turn_refused_total{reason=\"capacity\"} 4",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
    }
}
