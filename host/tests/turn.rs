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

/// The TURN entry of a `joined` frame: (username, credential).
fn turn_credential(joined: &serde_json::Value) -> (String, String) {
    let turn = &joined["iceServers"][1];
    (
        turn["username"].as_str().expect("a TURN username").into(),
        turn["credential"]
            .as_str()
            .expect("a TURN credential")
            .into(),
    )
}

#[tokio::test]
async fn no_turn_hands_out_no_ice_servers() {
    let host = Host::start(&["--no-turn"]);
    assert!(
        !host.startup.iter().any(|l| l.contains("STUN/TURN on")),
        "no TURN server starts: {:?}",
        host.startup
    );
    let mut a = host.client().await;
    let joined = a.login("r", "a").await;
    assert_eq!(joined["iceServers"], serde_json::json!([]), "{joined}");
}

#[tokio::test]
async fn turn_external_hands_out_credentials_for_the_external_server() {
    let host = Host::start(&[
        "--no-turn",
        "--turn-external",
        "turn.example.org:3479",
        "--turn-secret",
        "s3cret",
    ]);
    assert!(!host.startup.iter().any(|l| l.contains("STUN/TURN on")));
    let mut a = host.client().await;
    let joined = a.login("r", "a").await;
    let ice = &joined["iceServers"];
    assert_eq!(
        ice[0]["urls"],
        serde_json::json!(["stun:turn.example.org:3479"])
    );
    assert_eq!(
        ice[1]["urls"],
        serde_json::json!([
            "turn:turn.example.org:3479?transport=udp",
            "turn:turn.example.org:3479?transport=tcp"
        ])
    );
    let (username, credential) = turn_credential(&joined);
    let (expiry, session) = username.split_once(':').unwrap();
    assert_eq!(session, a.id);
    assert!(expiry.parse::<u64>().is_ok(), "{username}");
    // What coturn's use-auth-secret checks (the scheme's known answer is
    // pinned in chat-turn's own tests).
    assert_eq!(
        credential,
        chat_turn::creds::rest_password(b"s3cret", &username)
    );
}

#[tokio::test]
async fn turn_public_ip_is_the_advertised_relay_address() {
    let host = Host::start(&["--turn-public-ip", "203.0.113.7"]);
    let mut a = host.client().await;
    let (username, credential) = turn_credential(&a.login("r", "a").await);
    let client = turn_client(host.turn_addr(), &username, &credential).await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "203.0.113.7", "{relayed}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn turn_relay_ports_bound_the_relay_port() {
    // A one-port range around a port the OS just had free.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let range = format!("{port}-{port}");
    let host = Host::start(&["--turn-relay-ports", &range]);
    let mut a = host.client().await;
    let (username, credential) = turn_credential(&a.login("r", "a").await);
    let client = turn_client(host.turn_addr(), &username, &credential).await;
    let relay = client.allocate().await.expect("allocate");
    assert_eq!(relay.local_addr().unwrap().port(), port);
    client.close().await.unwrap();
}

#[tokio::test]
async fn turn_allow_peers_opens_exactly_the_given_networks() {
    let host = Host::start(&["--turn-allow-peers", "127.0.0.2/32"]);
    let mut a = host.client().await;
    let (username, credential) = turn_credential(&a.login("r", "a").await);
    let client = turn_client(host.turn_addr(), &username, &credential).await;
    let relay = client.allocate().await.expect("allocate");

    // 127.0.0.2 is allowed: relayed both ways.
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    relay
        .send_to(b"to an allowed peer", peer.local_addr().unwrap())
        .await
        .expect("the permission for 127.0.0.2 is granted");
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("relayed to 127.0.0.2")
        .unwrap();
    assert_eq!(&buf[..n], b"to an allowed peer");
    peer.send_to(b"back", from).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .expect("relayed back from 127.0.0.2")
        .unwrap();
    assert_eq!(&buf[..n], b"back");

    // The rest of loopback is still refused.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(
        relay
            .send_to(b"x", other.local_addr().unwrap())
            .await
            .is_err(),
        "127.0.0.1 is not in --turn-allow-peers"
    );
    client.close().await.unwrap();
}

#[tokio::test]
async fn turns_is_offered_and_served_with_a_real_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ssl = dir.path().join("ssl");
    std::fs::create_dir_all(&ssl).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(ssl.join("cert1.pem"), cert.cert.pem()).unwrap();
    std::fs::write(ssl.join("privkey1.pem"), cert.signing_key.serialize_pem()).unwrap();
    let host = Host::start_in(dir, &[]);
    let line = host
        .startup
        .iter()
        .find(|l| l.contains("STUN/TURN on"))
        .expect("TURN addresses logged");
    let tls: std::net::SocketAddr = line
        .split("Tls ")
        .nth(1)
        .expect("a TURN-over-TLS listener with a real certificate")
        .split([',', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut a = host.client().await;
    let joined = a.login("r", "a").await;
    let urls = &joined["iceServers"][1]["urls"];
    assert!(
        urls.as_array()
            .unwrap()
            .contains(&serde_json::json!(format!(
                "turns:localhost:{}?transport=tcp",
                tls.port()
            ))),
        "{urls}"
    );
    // The TLS listener presents the operator's certificate.
    assert_eq!(
        common::server_cert(tls.port()).await,
        cert.cert.der().to_vec()
    );
}

/// Every join hands the session a new credential (a later expiry): the
/// allocation quota counts the session, not the credential.
#[tokio::test]
async fn the_allocation_quota_counts_sessions_not_credentials() {
    let host = Host::start(&["--turn-allow-loopback", "--turn-quota-per-session", "1"]);
    let mut a = host.client().await;
    let (user1, pass1) = turn_credential(&a.login("r1", "a").await);
    let first = turn_client(host.turn_addr(), &user1, &pass1).await;
    let _relay = first
        .allocate()
        .await
        .expect("the session's first allocation");
    // A second join, a second later: a new username for the same session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (user2, pass2) = turn_credential(&a.login("r2", "a").await);
    assert_ne!(user1, user2);
    let second = turn_client(host.turn_addr(), &user2, &pass2).await;
    let err = second
        .allocate()
        .await
        .err()
        .expect("a second allocation of the same session is over the quota");
    assert!(err.to_string().contains("486"), "486 expected, got {err}");
    // Another session is not affected.
    let mut b = host.client().await;
    let (user_b, pass_b) = turn_credential(&b.login("r3", "b").await);
    let other = turn_client(host.turn_addr(), &user_b, &pass_b).await;
    other.allocate().await.expect("another session allocates");
}

/// --turn-bandwidth-kbps caps what one allocation relays (16 KiB burst).
#[tokio::test]
async fn the_bandwidth_per_allocation_is_capped() {
    let host = Host::start(&["--turn-allow-loopback", "--turn-bandwidth-kbps", "8"]);
    let mut a = host.client().await;
    let (user, pass) = turn_credential(&a.login("r", "a").await);
    let client = turn_client(host.turn_addr(), &user, &pass).await;
    let relay = client.allocate().await.expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let packet = [7u8; 1000];
    for _ in 0..60 {
        relay
            .send_to(&packet, peer.local_addr().unwrap())
            .await
            .unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 1500];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await
    {
        got += 1;
    }
    // 1000 B/s with a 16 KiB burst: about 17 of the 60 packets pass.
    assert!((1..=25).contains(&got), "{got} of 60 packets relayed");
}

/// Two sessions that both relay (each one's peer is the other's relayed
/// address, the host's --turn-public-ip) reach each other through the host,
/// both ways; the host's own TURN and metrics ports on that address stay
/// refused, and /metrics counts the relay-to-relay bytes.
#[tokio::test]
async fn relay_only_sessions_meet_through_the_hosts_public_ip() {
    let host = Host::start(&["--turn-public-ip", "203.0.113.7"]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    let (user_a, pass_a) = turn_credential(&a.login("r2r", "a").await);
    let (user_b, pass_b) = turn_credential(&b.login("r2r", "b").await);
    let ca = turn_client(host.turn_addr(), &user_a, &pass_a).await;
    let cb = turn_client(host.turn_addr(), &user_b, &pass_b).await;
    let ra = ca.allocate().await.expect("a allocates");
    let rb = cb.allocate().await.expect("b allocates");
    let (addr_a, addr_b) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
    assert_eq!(addr_a.ip().to_string(), "203.0.113.7");

    // B's first packet opens its permission for A; then both ways.
    let _ = rb.send_to(b"open", addr_a).await;
    let mut buf = [0u8; 256];
    for (from, to, from_addr, to_addr, msg) in [
        (&ra, &rb, addr_a, addr_b, &b"a->b"[..]),
        (&rb, &ra, addr_b, addr_a, &b"b->a"[..]),
    ] {
        let mut got = false;
        for _ in 0..10 {
            from.send_to(msg, to_addr).await.expect("relay send");
            while let Ok(r) =
                tokio::time::timeout(Duration::from_millis(300), to.recv_from(&mut buf)).await
            {
                let (n, src) = r.expect("recv");
                assert_eq!(src, from_addr);
                if &buf[..n] == msg {
                    got = true;
                    break;
                }
            }
            if got {
                break;
            }
        }
        assert!(got, "{from_addr} -> {to_addr}: nothing arrived");
    }
    assert!(
        host.metric("webrtc_chat_turn_relay_to_relay_bytes_total")
            .await
            >= 8
    );

    // The host's own services on that address are refused.
    let (user_c, pass_c) = turn_credential(&host.client().await.login("r2r", "c").await);
    let cc = turn_client(host.turn_addr(), &user_c, &pass_c).await;
    let rc = cc.allocate().await.expect("c allocates");
    let metrics_port: u16 = host
        .metrics_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for port in [host.turn_addr().port(), metrics_port] {
        let own = std::net::SocketAddr::new(addr_a.ip(), port);
        assert!(
            rc.send_to(b"x", own).await.is_err(),
            "{own} must be refused"
        );
    }
}

/// Relayed packets of established channels and permissions take the fast
/// path (with two UDP sockets on the TURN port, --turn-udp-sockets), and
/// /metrics counts them per direction.
#[tokio::test]
async fn the_fast_path_relays_and_metrics_count_it() {
    let host = Host::start(&["--turn-allow-loopback", "--turn-udp-sockets", "2"]);
    let mut a = host.client().await;
    let (user, pass) = turn_credential(&a.login("fast", "a").await);
    let client = turn_client(host.turn_addr(), &user, &pass).await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = [0u8; 256];
    for i in 0..20 {
        let out = format!("to peer {i}");
        relay.send_to(out.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("the peer receives")
            .unwrap();
        assert_eq!((&buf[..n], from), (out.as_bytes(), relayed));
        let back = format!("to client {i}");
        peer.send_to(back.as_bytes(), relayed).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("the client receives")
            .unwrap();
        assert_eq!((&buf[..n], from), (back.as_bytes(), peer_addr));
    }
    for direction in ["to_peers", "from_peers"] {
        let n = host
            .metric(&format!(
                "webrtc_chat_turn_fastpath_packets_total{{direction=\"{direction}\"}}"
            ))
            .await;
        assert!(n >= 18, "{n} packets {direction} on the fast path");
    }
}
