//! A small TURN server for benchmarks and manual interop runs, on loopback
//! only: `turn-bench-server PORT SECRET [SESSION]`.
//!
//! It honours the REST credentials `<expiry>:SESSION` (SESSION defaults to
//! "bench"; coturn's `turnutils_uclient -W SECRET -u SESSION` makes them),
//! allows loopback peers, and prints `listening udp=ADDR tcp=ADDR` once
//! ready. Stop it with SIGINT (Ctrl-C).

use std::sync::Arc;

use chat_turn::{SessionDirectory, Transport, TurnConfig, TurnServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().unwrap_or_else(|| "3478".into()).parse()?;
    let secret = args.next().unwrap_or_else(|| "bench-secret".into());
    let session = args.next().unwrap_or_else(|| "bench".into());
    let dir = Arc::new(SessionDirectory::default());
    dir.session_started(&session);
    let cfg = TurnConfig {
        listen: "127.0.0.1".parse()?,
        port,
        realm: "bench".into(),
        secret: secret.into_bytes(),
        allow_loopback: true,
        max_allocations_per_credential: 1000,
        max_allocations_per_ip: 1000,
        ..TurnConfig::default()
    };
    let server = TurnServer::start(cfg, dir).await?;
    println!(
        "listening udp={} tcp={}",
        server
            .addr(Transport::Udp)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        server
            .addr(Transport::Tcp)
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    tokio::signal::ctrl_c().await?;
    server.close().await;
    Ok(())
}
