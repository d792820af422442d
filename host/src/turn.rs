//! STUN/TURN for the host: starts the `chat-turn` server (or points
//! clients at an external one) and hands each session its own short-lived
//! credential in `joined.iceServers`, honoured while the session lives.

use std::sync::Arc;
use std::time::Duration;

use chat_turn::{SessionDirectory, TlsSettings, TurnConfig, TurnServer, ice_servers};

use crate::config::Config;
use crate::signaling::{IceServers, NoIceServers};

/// The ICE servers a session gets: STUN first, then TURN (UDP, TCP, TLS).
pub struct TurnIce {
    cfg: TurnConfig,
    directory: Arc<SessionDirectory>,
    /// Overrides the page's host name in the URLs (--turn-host, --turn-external).
    host: Option<String>,
}

impl IceServers for TurnIce {
    fn for_session(&self, session: &str, host: &str) -> String {
        self.directory.session_started(session);
        let host = self.host.as_deref().unwrap_or(host);
        serde_json::to_string(&ice_servers(host, &self.cfg, session))
            .unwrap_or_else(|_| "[]".into())
    }

    fn session_ended(&self, session: &str) {
        self.directory.session_ended(session);
    }

    fn session_seen(&self, session: &str) {
        self.directory.session_started(session);
    }
}

/// Starts TURN as configured. Returns the ICE provider for `joined` and
/// the running server (None with --no-turn).
pub async fn start(
    config: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(Box<dyn IceServers>, Option<TurnServer>)> {
    let secret = match &config.turn_secret {
        Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
        Some(_) => {
            anyhow::bail!("--turn-secret is empty: give a long random string, or leave it unset")
        }
        // Per process: credentials end with the process anyway.
        None => [
            *uuid::Uuid::new_v4().as_bytes(),
            *uuid::Uuid::new_v4().as_bytes(),
        ]
        .concat(),
    };
    let directory = Arc::new(SessionDirectory::new(Duration::from_secs(
        config.turn_grace_secs,
    )));
    if config.no_turn {
        let Some(external) = &config.turn_external else {
            tracing::info!("TURN is off (--no-turn): clients get no ICE servers from this host");
            return Ok((Box::new(NoIceServers), None));
        };
        let (host, port) = external
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--turn-external {external:?} is not HOST:PORT"))?;
        tracing::info!("TURN: clients use the external server {host}:{port}");
        let cfg = TurnConfig {
            secret,
            port,
            ..TurnConfig::default()
        };
        return Ok((
            Box::new(TurnIce {
                cfg,
                directory,
                host: Some(host),
            }),
            None,
        ));
    }
    let mut cfg = TurnConfig {
        listen: config.turn_listen.unwrap_or(config.bind),
        port: config.turn_port,
        tls: tls.map(|c| TlsSettings {
            port: config.turn_tls_port,
            config: c,
        }),
        realm: config.turn_realm.clone(),
        public_ip: config.turn_public_ip,
        relay_ports: config.turn_relay_ports.unwrap_or((0, 0)),
        secret,
        allow_loopback: config.turn_allow_loopback,
        allow_peers: config.turn_allow_peers.clone(),
        credential_grace: Duration::from_secs(config.turn_grace_secs),
        max_allocations_per_session: config.turn_quota_per_session as usize,
        max_allocations_per_ip: config.turn_quota_per_ip as usize,
        max_allocations_total: config.turn_quota_total as usize,
        max_bandwidth_per_allocation: (config.turn_bandwidth_kbps > 0)
            .then(|| u64::from(config.turn_bandwidth_kbps) * 1000 / 8),
        udp_sockets: usize::from(config.turn_udp_sockets),
        ..TurnConfig::default()
    };
    cfg.validate()?;
    let server = TurnServer::start(cfg.clone(), directory.clone()).await?;
    // With --turn-port 0 the OS picked the port: advertise the real one.
    if let Some(addr) = server.addr(chat_turn::Transport::Udp) {
        cfg.port = addr.port();
    }
    if let (Some(tls), Some(addr)) = (cfg.tls.as_mut(), server.addr(chat_turn::Transport::Tls)) {
        tls.port = addr.port();
    }
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|(t, a)| format!("{t:?} {a}"))
        .collect();
    tracing::info!("STUN/TURN on {}", addrs.join(", "));
    Ok((
        Box::new(TurnIce {
            cfg,
            directory,
            host: config.turn_host.clone(),
        }),
        Some(server),
    ))
}
