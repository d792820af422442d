//! A real TURN client (the `turn` crate's) against our server, on loopback:
//! relaying both ways over UDP, TCP and TLS, credential checks, peer rules,
//! quotas and the lifetime cap.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_turn::{Transport, credentials};
use common::*;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

#[tokio::test]
async fn udp_relays_both_ways_with_fresh_credential() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("alice");
    let (user, pass) = credentials(SECRET, "alice", Duration::from_secs(600));
    let udp = server.addr(Transport::Udp).expect("udp");
    let client = udp_client(udp, &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    assert_eq!(server.allocation_count(), 1);
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    // Several rounds: the first goes by Send indication, later ones by
    // ChannelData once the channel is bound.
    relay_round_trip(&relay, &peer, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay_round_trip(&relay, &peer, 3).await;
    let stats = server.stats();
    assert!(stats.bytes_to_peers >= 8 * 14, "{stats:?}");
    assert!(stats.bytes_from_peers >= 8 * 14, "{stats:?}");
    // STUN binding works too.
    let mapped = within("binding", client.send_binding_request())
        .await
        .expect("binding");
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    client.close().await.expect("close client");
    server.close().await;
}

#[tokio::test]
async fn forged_and_unknown_credentials_are_refused() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("bob");
    let udp = server.addr(Transport::Udp).expect("udp");

    let (user, _) = credentials(SECRET, "bob", Duration::from_secs(600));
    let forged = udp_client(udp, &user, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").await;
    assert!(within("forged", forged.allocate()).await.is_err());

    let (user, pass) = credentials(b"another-secret", "bob", Duration::from_secs(600));
    let wrong_secret = udp_client(udp, &user, &pass).await;
    assert!(
        within("wrong secret", wrong_secret.allocate())
            .await
            .is_err()
    );

    let (user, pass) = credentials(SECRET, "nobody", Duration::from_secs(600));
    let unknown = udp_client(udp, &user, &pass).await;
    assert!(within("unknown session", unknown.allocate()).await.is_err());

    let user = format!("{}:bob", 1_000_000);
    let pass = chat_turn::creds::rest_password(SECRET, &user);
    let expired = udp_client(udp, &user, &pass).await;
    assert!(within("expired", expired.allocate()).await.is_err());

    assert_eq!(server.allocation_count(), 0);
    let stats = server.stats();
    assert_eq!(stats.allocations_made, 0);
    assert!(stats.refused_credentials >= 2, "{stats:?}"); // unknown, expired
    server.close().await;
}

#[tokio::test]
async fn ended_session_loses_its_relay_after_the_grace() {
    let mut cfg = loopback_config();
    cfg.credential_grace = Duration::from_secs(1);
    let (server, dir) = start(cfg).await;
    dir.session_started("carol");
    let (user, pass) = credentials(SECRET, "carol", Duration::from_secs(600));
    let udp = server.addr(Transport::Udp).expect("udp");
    let client = udp_client(udp, &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 1).await;

    dir.session_ended("carol");
    // Still honoured inside the grace (1 s): a new allocation works.
    let again = udp_client(udp, &user, &pass).await;
    let relay2 = within("allocate in grace", again.allocate())
        .await
        .expect("in grace");
    drop(relay2);

    // After the grace and one reaper pass, the relays are gone...
    wait_until("relays closed", || server.allocation_count() == 0).await;
    peer.send_to(b"late", relay.local_addr().expect("addr"))
        .await
        .expect("peer send");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), relay.recv_from(&mut buf))
            .await
            .map_or(true, |r| r.is_err()),
        "no data after the session ended"
    );
    // ...and the credential is refused.
    let late = udp_client(udp, &user, &pass).await;
    assert!(
        within("allocate after grace", late.allocate())
            .await
            .is_err()
    );
    let stats = server.stats();
    assert_eq!(stats.closed_session_gone, 2);
    // The session's two allocations are one observation of its relayed
    // bytes ("late" was dropped: the relay was closed).
    let relayed = stats.bytes_to_peers + stats.bytes_from_peers;
    assert!(relayed > 0);
    assert_eq!(stats.session_bytes.count, 1, "{stats:?}");
    assert_eq!(stats.session_bytes.sum, relayed, "{stats:?}");
    assert_eq!(stats.session_bytes.buckets[0], 1, "{stats:?}"); // <= 10 kB
    server.close().await;
}

#[tokio::test]
async fn loopback_peer_refused_by_default() {
    let mut cfg = loopback_config();
    cfg.allow_loopback = false;
    let (server, dir) = start(cfg).await;
    dir.session_started("dave");
    let (user, pass) = credentials(SECRET, "dave", Duration::from_secs(600));
    let udp = server.addr(Transport::Udp).expect("udp");
    let client = udp_client(udp, &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    let peer_addr = peer.local_addr().expect("addr");

    // CreatePermission for 127.0.0.1 is answered 403: send_to fails.
    let sent = within("send to loopback", relay.send_to(b"x", peer_addr)).await;
    assert!(
        sent.is_err(),
        "permission to a loopback peer must be refused"
    );
    // Nothing reaches the peer, and the peer cannot reach the client.
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf))
            .await
            .is_err()
    );
    let relayed = relay.local_addr().expect("relayed");
    peer.send_to(b"in", relayed).await.expect("send");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), relay.recv_from(&mut buf))
            .await
            .is_err()
    );
    // The IPv4-mapped form of loopback too. (Other classes are covered by
    // the classifier's unit tests: tests never aim packets off loopback.)
    let mapped = "[::ffff:127.0.0.1]:9".parse().expect("addr");
    let r = within("send to mapped loopback", relay.send_to(b"x", mapped)).await;
    assert!(r.is_err(), "{mapped} must be refused");
    assert!(server.stats().refused_peers >= 2);
    server.close().await;
}

#[tokio::test]
async fn tcp_relays_both_ways() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("erin");
    let (user, pass) = credentials(SECRET, "erin", Duration::from_secs(600));
    let tcp = server.addr(Transport::Tcp).expect("tcp");
    assert_eq!(tcp.port(), server.addr(Transport::Udp).expect("udp").port());
    let conn = Arc::new(
        chat_turn::stream::StreamClientConn::connect_tcp(tcp)
            .await
            .expect("tcp connect"),
    );
    let client = client_on(conn.clone(), tcp, &user, &pass).await;
    let relay = within("allocate over TCP", client.allocate())
        .await
        .expect("allocate over TCP");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay_round_trip(&relay, &peer, 3).await;
    assert_eq!(server.allocation_count(), 1);

    // Forged credential over TCP.
    let forged = tcp_client(tcp, &user, "bm90IHRoZSBwYXNzd29yZA==").await;
    assert!(within("forged over TCP", forged.allocate()).await.is_err());

    // Loopback peer refused over TCP with default rules.
    let mut cfg = loopback_config();
    cfg.allow_loopback = false;
    let (strict, dir2) = start(cfg).await;
    dir2.session_started("erin");
    let c2 = tcp_client(strict.addr(Transport::Tcp).expect("tcp"), &user, &pass).await;
    let r2 = within("allocate strict", c2.allocate())
        .await
        .expect("allocate");
    let sent = within(
        "tcp send loopback",
        r2.send_to(b"x", peer.local_addr().expect("a")),
    )
    .await;
    assert!(sent.is_err());

    // Closing the TCP connection ends its allocation.
    client.close().await.expect("close");
    conn.close().await.expect("close TCP");
    wait_until("TCP allocation closed", || server.allocation_count() == 0).await;
    strict.close().await;
    server.close().await;
}

#[tokio::test]
async fn tls_relays_both_ways() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let mut cfg = loopback_config();
    let mut tls = chat_turn::TlsSettings::from_pem(
        0,
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
        Arc::clone(&provider),
    )
    .expect("tls settings");
    // As if shared with the HTTPS server: its ALPN list must not refuse a
    // TURN client that offers "stun.turn".
    let mut shared = (*tls.config).clone();
    shared.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls.config = Arc::new(shared);
    cfg.tls = Some(tls);
    let (server, dir) = start(cfg).await;
    dir.session_started("frank");
    let tls_addr = server.addr(Transport::Tls).expect("tls");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    let tcp = tokio::net::TcpStream::connect(tls_addr)
        .await
        .expect("connect");
    let local = tcp.local_addr().expect("local");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let conn = chat_turn::stream::StreamClientConn::new(Box::new(tls), local, tls_addr);
    let (user, pass) = credentials(SECRET, "frank", Duration::from_secs(600));
    let client = client_on(Arc::new(conn), tls_addr, &user, &pass).await;
    let relay = within("allocate over TLS", client.allocate())
        .await
        .expect("allocate over TLS");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 3).await;
    server.close().await;
}

#[tokio::test]
async fn quota_per_session_and_total() {
    let mut cfg = loopback_config();
    cfg.max_allocations_per_session = 1;
    cfg.max_allocations_total = 2;
    let (server, dir) = start(cfg).await;
    let udp = server.addr(Transport::Udp).expect("udp");
    for s in ["g1", "g2", "g3"] {
        dir.session_started(s);
    }
    let (u1, p1) = credentials(SECRET, "g1", Duration::from_secs(600));
    let a = udp_client(udp, &u1, &p1).await;
    let _ra = within("first", a.allocate())
        .await
        .expect("first allocation");
    let b = udp_client(udp, &u1, &p1).await;
    let err = within("second", b.allocate())
        .await
        .err()
        .expect("quota refusal");
    assert!(err.to_string().contains("486"), "486 expected, got {err}");

    let (u2, p2) = credentials(SECRET, "g2", Duration::from_secs(600));
    let c = udp_client(udp, &u2, &p2).await;
    let _rc = within("g2", c.allocate()).await.expect("g2 allocation");
    let (u3, p3) = credentials(SECRET, "g3", Duration::from_secs(600));
    let d = udp_client(udp, &u3, &p3).await;
    assert!(within("total", d.allocate()).await.is_err());
    assert_eq!(server.allocation_count(), 2);
    let stats = server.stats();
    assert_eq!((stats.allocations, stats.allocations_made), (2, 2));
    assert!(stats.refused_quota >= 2, "{stats:?}");
    server.close().await;
}

#[tokio::test]
async fn relay_ports_stay_in_the_configured_range() {
    let mut cfg = loopback_config();
    cfg.relay_ports = (41000, 41019);
    let (server, dir) = start(cfg).await;
    dir.session_started("ida");
    let udp = server.addr(Transport::Udp).expect("udp");
    let mut relays = Vec::new();
    for _ in 0..3 {
        let (user, pass) = credentials(SECRET, "ida", Duration::from_secs(600));
        let client = udp_client(udp, &user, &pass).await;
        let relay = within("allocate", client.allocate())
            .await
            .expect("allocate");
        let port = relay.local_addr().expect("addr").port();
        assert!((41000..=41019).contains(&port), "relay port {port}");
        relays.push((client, relay));
    }
    server.close().await;
}

#[tokio::test]
async fn busy_port_says_what_to_do() {
    let busy = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut cfg = loopback_config();
    cfg.port = busy.local_addr().expect("addr").port();
    let dir = Arc::new(chat_turn::SessionDirectory::default());
    let err = chat_turn::TurnServer::start(cfg, dir)
        .await
        .expect_err("the port is taken");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "port {} ",
            busy.local_addr().expect("addr").port()
        )) && msg.contains("is in use: pick another with --turn-port or stop the other server"),
        "{msg}"
    );
}

#[tokio::test]
async fn close_frees_the_port_for_a_restart() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("jo");
    let udp = server.addr(Transport::Udp).expect("udp");
    let (user, pass) = credentials(SECRET, "jo", Duration::from_secs(600));
    let client = udp_client(udp, &user, &pass).await;
    let _relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    within("close", server.close()).await;
    let mut cfg = loopback_config();
    cfg.port = udp.port();
    let again = chat_turn::TurnServer::start(cfg, dir)
        .await
        .expect("restart on the same port right after close");
    again.close().await;
}

#[tokio::test]
async fn busy_tls_port_names_its_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let mut cfg = loopback_config();
    cfg.tls = Some(
        chat_turn::TlsSettings::from_pem(
            busy.local_addr().expect("addr").port(),
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
            provider,
        )
        .expect("tls settings"),
    );
    let dir = Arc::new(chat_turn::SessionDirectory::default());
    let err = chat_turn::TurnServer::start(cfg, dir)
        .await
        .expect_err("the TLS port is taken");
    assert!(err.to_string().contains("--turn-tls-port"), "{err}");
}

#[tokio::test]
async fn bandwidth_cap_drops_the_excess() {
    let mut cfg = loopback_config();
    cfg.max_bandwidth_per_allocation = Some(1000); // 1 kB/s, 16 KiB burst
    let (server, dir) = start(cfg).await;
    dir.session_started("kim");
    let (user, pass) = credentials(SECRET, "kim", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    let peer_addr = peer.local_addr().expect("addr");
    let payload = [7u8; 1000];
    for _ in 0..40 {
        within("send", relay.send_to(&payload, peer_addr))
            .await
            .expect("send");
    }
    let mut got = 0;
    let mut buf = [0u8; 1500];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await
    {
        got += 1;
    }
    assert!(
        (10..=20).contains(&got),
        "{got} of 40 packets passed a 16 KiB burst"
    );
    server.close().await;
}

/// A TCP connection that holds no allocation `tcp_allocate_within` after
/// it opened is closed (its slot is for relaying: slots held by
/// Binding-only connections would lock TURN/TCP users out); one that
/// allocated keeps relaying past that.
#[tokio::test]
async fn a_tcp_connection_without_an_allocation_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = loopback_config();
    cfg.tcp_allocate_within = Duration::from_secs(3);
    let (server, dir) = start(cfg).await;
    let tcp = server.addr(Transport::Tcp).expect("tcp");

    // Binding requests only: answered, then closed.
    let mut idle = tokio::net::TcpStream::connect(tcp).await.expect("connect");
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    binding.extend([7u8; 12]);
    idle.write_all(&binding).await.expect("binding");
    let mut head = [0u8; 20];
    within("binding answer", idle.read_exact(&mut head))
        .await
        .expect("answer");
    assert_eq!(head[..2], [0x01, 0x01], "a Binding success");
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
    idle.read_exact(&mut rest).await.expect("attributes");

    // Meanwhile a client that allocates keeps its connection.
    dir.session_started("gil");
    let (user, pass) = credentials(SECRET, "gil", Duration::from_secs(600));
    let conn = Arc::new(
        chat_turn::stream::StreamClientConn::connect_tcp(tcp)
            .await
            .expect("tcp connect"),
    );
    let client = client_on(conn.clone(), tcp, &user, &pass).await;
    let relay = within("allocate over TCP", client.allocate())
        .await
        .expect("allocate over TCP");

    let mut buf = [0u8; 64];
    let n = within("closed", idle.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the idle connection is closed: {n:?}"
    );
    // Past two more checks, the allocating client still relays.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 2).await;
    assert_eq!(server.allocation_count(), 1);
    server.close().await;
}
