//! STUN and TURN server (RFC 5389 / RFC 5766) for WebRTC Chat, built on the
//! `turn` crate 0.17 (webrtc-rs): UDP and TCP on one port (default 3478),
//! TLS on another (default 5349) when a certificate is given.
//!
//! # Public API (what the host calls)
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_turn::{SessionDirectory, TurnConfig, TurnServer, ice_servers};
//!
//! # async fn run() -> chat_turn::Result<()> {
//! let directory = Arc::new(SessionDirectory::default());
//! let cfg = TurnConfig {
//!     secret: b"a long random secret, made at start-up".to_vec(),
//!     ..TurnConfig::default()
//! };
//! let server = TurnServer::start(cfg.clone(), Arc::clone(&directory)).await?;
//!
//! // When a signaling session joins a room:
//! let session_id = "2b0c6f0e-0d4e-4c39-9d0e-3a8f0f6f0b1a";
//! directory.session_started(session_id);
//! let list = ice_servers("chat.example.org", &cfg, session_id); // -> joined.iceServers
//! let _json = serde_json::to_value(&list);
//! // When its socket ends (its relays close after cfg.credential_grace):
//! directory.session_ended(session_id);
//!
//! server.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! - [`TurnConfig`] / [`TlsSettings`]: configuration with defaults.
//! - [`SessionDirectory`]: `session_started`, `session_ended`, `is_honoured`.
//! - [`credentials`]`(secret, session_id, ttl) -> (username, password)`:
//!   TURN REST API scheme (coturn `use-auth-secret`).
//! - [`ice_servers`]`(host, &cfg, session_id) -> Vec<IceServer>`: RTCIceServer list.
//! - [`TurnServer::start`], [`TurnServer::local_addrs`], [`TurnServer::close`],
//!   [`TurnServer::stats`] ([`TurnStats`], for /metrics).
//!
//! # Rules enforced
//! - A credential is honoured only when its HMAC is right (checked through
//!   MESSAGE-INTEGRITY), its expiry is in the future and its session is
//!   live or ended less than `credential_grace` ago. Relays of a session
//!   that is no longer honoured are closed within half a second; its next
//!   Refresh is refused. (turn 0.17 answers 400, not 401, to a bad
//!   credential.)
//! - Peers: see [`peer`]; refused peers get 403 on CreatePermission and
//!   ChannelBind, and the relay socket itself drops traffic to and from them.
//! - Quotas per credential, per client IP and in total (486 Allocation
//!   Quota Reached); lifetimes capped at `max_lifetime`; an optional
//!   bandwidth cap per allocation.
//! - Nonces: turn 0.17 never forgets a nonce it issued, so the gate reuses
//!   a few of them instead of letting every challenge reach the crate.
//! - TCP/TLS: STUN and ChannelData framed on the stream ([`stream`]); an
//!   allocation made over TCP ends with its connection.
//! - Relayed packets of established channels and permissions (UDP clients)
//!   take a fast path outside the `turn` crate (batched I/O, tables filled
//!   from the crate's answers), under the same rules: peers, bandwidth,
//!   byte counters, a session's end. The UDP port is served by one socket
//!   per core (SO_REUSEPORT, `udp_sockets`).
//!
//! The `turn` crate logs through `log`; this crate through `tracing`.
//! See docs/turn.md for the design, the tests and the benchmark.

pub mod config;
pub mod creds;
pub mod error;
mod fast;
mod gate;
pub mod ice;
pub mod peer;
mod relay;
pub mod server;
pub mod stats;
pub mod stream;

pub use config::{DEFAULT_PORT, DEFAULT_TLS_PORT, TlsSettings, TurnConfig};
pub use creds::{SessionDirectory, credentials};
pub use error::{Error, Result};
pub use ice::{IceServer, ice_servers};
pub use server::{Transport, TurnServer};
pub use stats::{SessionBytes, TurnStats};
