//! Shared helpers for the integration tests: a loopback server, a TURN
//! client over UDP/TCP/TLS, and bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_turn::stream::StreamClientConn;
use chat_turn::{SessionDirectory, TurnConfig, TurnServer};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

pub const SECRET: &[u8] = b"test-secret";
pub const REALM: &str = "test.realm";
pub const WAIT: Duration = Duration::from_secs(5);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chat_turn=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A config bound to 127.0.0.1 on a free port, loopback peers allowed.
pub fn loopback_config() -> TurnConfig {
    TurnConfig {
        listen: "127.0.0.1".parse().expect("ip"),
        port: 0,
        realm: REALM.into(),
        secret: SECRET.to_vec(),
        allow_loopback: true,
        credential_grace: Duration::from_millis(200),
        ..TurnConfig::default()
    }
}

pub async fn start(cfg: TurnConfig) -> (TurnServer, Arc<SessionDirectory>) {
    init_tracing();
    let dir = Arc::new(SessionDirectory::default());
    let server = TurnServer::start(cfg, Arc::clone(&dir))
        .await
        .expect("server starts");
    (server, dir)
}

pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `cond` every 50 ms until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `turn` crate client on `conn`, already listening.
pub async fn client_on(
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

pub async fn udp_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client_on(Arc::new(sock), server, username, password).await
}

pub async fn tcp_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let conn = StreamClientConn::connect_tcp(server)
        .await
        .expect("tcp connect");
    client_on(Arc::new(conn), server, username, password).await
}

/// Sends through the relay to `peer` and back; panics on loss.
pub async fn relay_round_trip(relay: &(impl Conn + Send + Sync), peer: &UdpSocket, rounds: usize) {
    let relayed = relay.local_addr().expect("relayed addr");
    let peer_addr = peer.local_addr().expect("peer addr");
    let mut buf = vec![0u8; 1500];
    for i in 0..rounds {
        let out = format!("client->peer {i}");
        within("relay send", relay.send_to(out.as_bytes(), peer_addr))
            .await
            .expect("relay send_to");
        let (n, from) = within("peer receive", peer.recv_from(&mut buf))
            .await
            .expect("peer recv");
        assert_eq!(&buf[..n], out.as_bytes());
        assert_eq!(from, relayed, "peer sees the relayed address");

        let back = format!("peer->client {i}");
        peer.send_to(back.as_bytes(), relayed)
            .await
            .expect("peer send");
        let (n, from) = within("client receive", relay.recv_from(&mut buf))
            .await
            .expect("relay recv");
        assert_eq!(&buf[..n], back.as_bytes());
        assert_eq!(from, peer_addr);
    }
}
