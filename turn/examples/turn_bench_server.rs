//! A small TURN server for benchmarks and manual interop runs, on loopback
//! only: `turn-bench-server PORT SECRET [SESSION] [--bare]`.
//!
//! It honours the REST credentials `<expiry>:SESSION` (SESSION defaults to
//! "bench"; coturn's `turnutils_uclient -W SECRET -u SESSION` makes them),
//! allows loopback peers, and prints `listening udp=ADDR ...` once ready.
//! With `--bare` it runs the `turn` crate alone (UDP only, static relay
//! generator, REST auth without session checks), to measure what this
//! crate's gate, filtered relays and quotas cost on top of it.
//! With TURN_TLS_CERT and TURN_TLS_KEY (PEM files) in the environment it
//! also serves TLS on TURN_TLS_PORT (default 5349). TURN_LISTEN (default
//! 127.0.0.1) sets the listening and relayed address; on a non-loopback
//! one, loopback peers are refused (the default rules: relay to relay
//! only), as turn-chromium-check.sh does in a network namespace of its own.
//! TURN_UDP_SOCKETS sets the number of UDP sockets on the port (default 0:
//! one per core). Stop it with SIGINT (Ctrl-C).

use std::net::SocketAddr;
use std::sync::Arc;

use chat_turn::creds::rest_password;
use chat_turn::{SessionDirectory, Transport, TurnConfig, TurnServer};

struct RestAuth(Vec<u8>);

impl turn::auth::AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let password = rest_password(&self.0, username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }
}

async fn bare(port: u16, secret: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    use turn::relay::relay_static::RelayAddressGeneratorStatic;
    use turn::server::config::{ConnConfig, ServerConfig};
    let conn = Arc::new(tokio::net::UdpSocket::bind(("127.0.0.1", port)).await?);
    println!("listening udp={} (bare turn crate)", conn.local_addr()?);
    let server = turn::server::Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                relay_address: "127.0.0.1".parse()?,
                address: "127.0.0.1".into(),
                net: Arc::new(webrtc_util::vnet::net::Net::new(None)),
            }),
        }],
        realm: "bench".into(),
        auth_handler: Arc::new(RestAuth(secret)),
        channel_bind_timeout: std::time::Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?;
    tokio::signal::ctrl_c().await?;
    server.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let is_bare = args.iter().any(|a| a == "--bare");
    let mut args = args.into_iter().filter(|a| a != "--bare");
    let port: u16 = args.next().unwrap_or_else(|| "3478".into()).parse()?;
    let secret = args.next().unwrap_or_else(|| "bench-secret".into());
    let session = args.next().unwrap_or_else(|| "bench".into());
    if is_bare {
        return bare(port, secret.into_bytes()).await;
    }
    let dir = Arc::new(SessionDirectory::default());
    dir.session_started(&session);
    let listen: std::net::IpAddr = std::env::var("TURN_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()?;
    let cfg = TurnConfig {
        listen,
        port,
        realm: "bench".into(),
        secret: secret.into_bytes(),
        allow_loopback: listen.is_loopback(),
        max_allocations_per_session: 1000,
        max_allocations_per_ip: 1000,
        // TURN_UDP_SOCKETS: UDP sockets on the port (0 = one per core).
        udp_sockets: std::env::var("TURN_UDP_SOCKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ..TurnConfig::default()
    };
    let tls = match (
        std::env::var_os("TURN_TLS_CERT"),
        std::env::var_os("TURN_TLS_KEY"),
    ) {
        (Some(cert), Some(key)) => {
            let port = std::env::var("TURN_TLS_PORT")
                .unwrap_or_else(|_| "5349".into())
                .parse()?;
            Some(chat_turn::TlsSettings::from_pem(
                port,
                &std::fs::read(cert)?,
                &std::fs::read(key)?,
                Arc::new(rustls::crypto::ring::default_provider()),
            )?)
        }
        _ => None,
    };
    let server = TurnServer::start(TurnConfig { tls, ..cfg }, dir).await?;
    println!(
        "listening udp={} tcp={} tls={}",
        server
            .addr(Transport::Udp)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        server
            .addr(Transport::Tcp)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        server
            .addr(Transport::Tls)
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    tokio::signal::ctrl_c().await?;
    let s = server.stats();
    println!(
        "stats allocations_made={} fast_packets_to_peers={} fast_packets_from_peers={} fast_sends={} bytes_to_peers={} bytes_from_peers={}",
        s.allocations_made,
        s.fast_packets_to_peers,
        s.fast_packets_from_peers,
        s.fast_sends,
        s.bytes_to_peers,
        s.bytes_from_peers
    );
    server.close().await;
    Ok(())
}
