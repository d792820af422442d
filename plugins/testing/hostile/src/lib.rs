//! A policy that misbehaves on request, for the host's sandbox tests:
//! - `loop` spins forever, `trap` panics, `oom` allocates until it is
//!   stopped, `sleep` waits an hour on a WASI clock;
//! - `illegal` returns the action its `data` names, one the host must refuse
//!   (`{"what": "send-joined" | "send-not-json" | "close-1001" |
//!   "join-other" | "bad-error-type", "target": sessionId}`);
//! - `kv-fill` stores 16 000-byte values until the key-value store refuses, and
//!   answers `{"type":"kv-fill","stored":bytes,"error":text}`;
//!   `kv-put` stores its `data` (a string), `kv-get` answers it back;
//! - `wasi` tries files, the environment and a socket (to its `data`,
//!   `"HOST:PORT"`), and answers what worked;
//! - `spin` computes until its `data` (ms) have passed on the WASI
//!   monotonic clock, and answers `{"type":"spun"}`;
//! - `deny-connects` makes `on-connect` deny every later socket.
//!
//! Anything else passes to the next policy.

use serde_json::json;
use webrtc_chat_policy::{
    Action, CloseRequest, Envelope, ErrorReply, JoinRequest, Outbound, Policy, Scope, Verdict,
    register_policy, send, state,
};

struct Hostile;

impl Policy for Hostile {
    fn on_connect(session: &str, _peer_addr: &str) -> Verdict {
        if state::kv_get(&Scope::Global, "deny-connects").is_some() {
            return Verdict::Deny("no new connections".into());
        }
        if state::kv_get(&Scope::Global, "greet-connects").is_some() {
            return Verdict::Done(vec![send(session, &json!({"type":"greeting"}))]);
        }
        Verdict::Next
    }

    fn on_message(e: &Envelope) -> Verdict {
        match e.kind.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "spin" => {
                let ms = e.data_as::<u64>().unwrap_or_default();
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::black_box(start);
                }
                reply(e, json!({"type":"spun"}))
            }
            "trap" => panic!("hostile policy traps on purpose"),
            // Waits on the host (a WASI clock), where the epoch cannot reach.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Verdict::Next
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "illegal" => Verdict::Done(vec![illegal(e)]),
            "kv-fill" => {
                let chunk = "x".repeat(16_000);
                let (mut stored, mut error) = (0usize, String::new());
                for i in 0..1000 {
                    match state::kv_set(&Scope::Global, &format!("fill-{i}"), Some(&chunk)) {
                        Ok(()) => stored += chunk.len(),
                        Err(e) => {
                            error = e;
                            break;
                        }
                    }
                }
                reply(e, json!({"type":"kv-fill","stored":stored,"error":error}))
            }
            "kv-put" => {
                let value = e.data_as::<String>().unwrap_or_default();
                let stored = state::kv_set(&Scope::Global, "kept", Some(&value));
                reply(e, json!({"type":"kv-put","ok":stored.is_ok()}))
            }
            "kv-get" => {
                let value = state::kv_get(&Scope::Global, "kept");
                reply(e, json!({"type":"kv-get","value":value}))
            }
            "wasi" => {
                let target = e.data_as::<String>().unwrap_or_default();
                reply(
                    e,
                    json!({
                        "type": "wasi",
                        "readDir": std::fs::read_dir("/").is_ok(),
                        "open": std::fs::File::open("/etc/passwd").is_ok(),
                        "write": std::fs::write("/tmp/hostile-policy", "x").is_ok(),
                        "cwd": std::env::current_dir().is_ok(),
                        "env": std::env::vars().count(),
                        "args": std::env::args().count(),
                        "tcp": std::net::TcpStream::connect(&target).map_err(|e| e.to_string()).err(),
                    }),
                )
            }
            // Rewrites the message into the type its data names, for the
            // next policy (a second copy of this one) to forward.
            "rewrite-as" => Verdict::NextWith(Envelope {
                kind: e.data_as::<String>().unwrap_or_default(),
                ..e.clone()
            }),
            // Host-only types, forwarded to the sender's room as they came.
            "joined" | "logout" | "error" => {
                let everyone = state::room_of(&e.from)
                    .map(|r| state::members(&r))
                    .unwrap_or_default();
                Verdict::Done(vec![Action::Forward(everyone)])
            }
            "log-flood" => {
                for i in 0..1000 {
                    webrtc_chat_policy::log(
                        webrtc_chat_policy::LogLevel::Info,
                        &format!("flood line {i}"),
                    );
                }
                reply(e, json!({"type":"log-flood"}))
            }
            "greet-connects" => {
                let set = state::kv_set(&Scope::Global, "greet-connects", Some("1"));
                reply(e, json!({"type":"greet-connects","ok":set.is_ok()}))
            }
            "deny-connects" => {
                let set = state::kv_set(&Scope::Global, "deny-connects", Some("1"));
                reply(e, json!({"type":"deny-connects","ok":set.is_ok()}))
            }
            _ => Verdict::Next,
        }
    }
}

register_policy!(Hostile);

fn reply(e: &Envelope, frame: serde_json::Value) -> Verdict {
    Verdict::Done(vec![send(&e.from, &frame)])
}

/// An action the host must refuse.
fn illegal(e: &Envelope) -> Action {
    let data = e.json().unwrap_or_default();
    let what = data["what"].as_str().unwrap_or_default();
    let target = data["target"].as_str().unwrap_or_default().to_string();
    match what {
        // A host type, forged.
        "send-joined" => Action::Send(Outbound {
            to: target,
            frame: json!({"type":"joined","data":"forged"}).to_string(),
        }),
        "send-not-json" => Action::Send(Outbound {
            to: target,
            frame: "not json".into(),
        }),
        // 1001 is the host's own (going away).
        "close-1001" => Action::Close(CloseRequest {
            session: target,
            code: 1001,
            reason: "forged".into(),
        }),
        // Only the sender may be joined.
        "join-other" => Action::Join(JoinRequest {
            session: target,
            room: "elsewhere".into(),
            username: "moved".into(),
            capacity: 10,
        }),
        _ => Action::Error(ErrorReply {
            to: target,
            error_type: "not a valid type!".into(),
            error_text: "x".into(),
        }),
    }
}
