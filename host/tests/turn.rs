//! The host's TURN: each session gets its own short-lived credential in
//! `joined.iceServers`, a real TURN client relays with it, and it stops
//! working once the session has ended (after the grace).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Host;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

async fn turn_client(server: std::net::SocketAddr, username: &str, password: &str) -> Client {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: "webrtc-chat".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

#[tokio::test]
async fn joined_carries_per_session_credentials_that_relay_and_then_expire() {
    let host = Host::start(&["--turn-allow-loopback", "--turn-grace-secs", "1"]);
    let turn_addr = host.turn_addr();
    let mut a = host.client().await;
    let joined = a.login("relay", "a").await;
    let ice = joined["iceServers"].as_array().unwrap();
    assert_eq!(
        ice[0]["urls"][0],
        format!("stun:localhost:{}", turn_addr.port()),
        "STUN first"
    );
    let turn = &ice[1];
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(urls.contains(&format!("turn:localhost:{}?transport=udp", turn_addr.port()).as_str()));
    assert!(urls.contains(&format!("turn:localhost:{}?transport=tcp", turn_addr.port()).as_str()));
    let username = turn["username"].as_str().unwrap();
    let password = turn["credential"].as_str().unwrap();
    let (expiry, session) = username.split_once(':').unwrap();
    assert_eq!(session, a.id, "username is expiry:sessionId");
    assert!(expiry.parse::<u64>().is_ok());

    // A real TURN client allocates and relays both ways with it.
    let client = turn_client(turn_addr, username, password).await;
    let relay = client
        .allocate()
        .await
        .expect("allocate with the session's credential");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relay.send_to(b"hello peer", peer_addr).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello peer");
    peer.send_to(b"hello client", from).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello client");
    relay.close().await.unwrap();
    client.close().await.unwrap();

    // A forged credential is refused.
    let forged = turn_client(turn_addr, username, "not-the-password").await;
    assert!(forged.allocate().await.is_err());
    forged.close().await.unwrap();

    // The session ends; after the grace its credential is refused.
    drop(a.ws.close(None).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let late = turn_client(turn_addr, username, password).await;
        let refused = late.allocate().await.is_err();
        late.close().await.unwrap();
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a departed session's credential is still honoured 10 s later"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn loopback_peers_are_refused_by_default() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    let joined = a.login("r", "a").await;
    let turn = &joined["iceServers"][1];
    let client = turn_client(
        host.turn_addr(),
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    )
    .await;
    let relay = client.allocate().await.expect("allocation itself is fine");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = r#"webrtc_chat_turn_refused_total{reason="peer"}"#;
    assert_eq!(host.metric(refused).await, 0);
    // The client asks for a permission first; the server refuses it.
    let sent = relay
        .send_to(b"to loopback", peer.local_addr().unwrap())
        .await;
    assert!(
        sent.is_err(),
        "the permission for 127.0.0.1 is refused: {sent:?}"
    );
    assert_eq!(host.metric(refused).await, 1, "the refusal is counted");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing is relayed to 127.0.0.1 by default"
    );
    client.close().await.unwrap();
}
