//! The relay fast path (ChannelData and Send/Data indications of
//! established channels and permissions, relayed without the `turn`
//! crate) carries the traffic, and the control plane's rules hold on it:
//! bandwidth cap, byte counters, a session's end, peers without a
//! permission, relay to relay. Real `turn` crate clients on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_turn::{Transport, TurnConfig, credentials};
use common::*;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

/// Receives on `sock` until nothing comes for `quiet`; returns how many.
async fn drain(sock: &UdpSocket, quiet: Duration) -> usize {
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
        n += 1;
    }
    n
}

#[tokio::test]
async fn fast_path_carries_both_ways_and_counts_bytes() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("ann");
    let (user, pass) = credentials(SECRET, "ann", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    // Send indications first, then ChannelData once the client's channel
    // is bound: both are fast-path traffic once the crate said yes.
    relay_round_trip(&relay, &peer, 30).await;
    let s = server.stats();
    assert!(
        s.fast_packets_to_peers >= 28 && s.fast_packets_from_peers >= 28,
        "the fast path carried the traffic: {s:?}"
    );
    // The same byte counters as the crate's path: payload bytes, both ways
    // ("client->peer N" and "peer->client N", 14-15 bytes each).
    let expected: u64 = (0..30)
        .map(|i| format!("client->peer {i}").len() as u64)
        .sum();
    assert_eq!(s.bytes_to_peers, expected, "{s:?}");
    assert_eq!(s.bytes_from_peers, expected, "{s:?}");
    drop(relay);
    client.close().await.expect("close");
    server.close().await;
}

#[tokio::test]
async fn bandwidth_cap_holds_on_the_fast_path() {
    let mut cfg = loopback_config();
    cfg.max_bandwidth_per_allocation = Some(1000); // 1 kB/s, 16 KiB burst
    let (server, dir) = start(cfg).await;
    dir.session_started("bo");
    let (user, pass) = credentials(SECRET, "bo", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 1).await; // permission and channel
    let before = server.stats().fast_packets_to_peers;
    let payload = [7u8; 1000];
    for _ in 0..40 {
        within(
            "send",
            relay.send_to(&payload, peer.local_addr().expect("a")),
        )
        .await
        .expect("send");
    }
    let got = drain(&peer, Duration::from_millis(300)).await;
    assert!(
        (10..=20).contains(&got),
        "{got} of 40 packets of 1000 bytes passed a 16 KiB burst"
    );
    let fast = server.stats().fast_packets_to_peers - before;
    assert_eq!(
        fast as usize, got,
        "every packet that passed took the fast path"
    );
    server.close().await;
}

#[tokio::test]
async fn a_departed_session_stops_on_the_fast_path() {
    let mut cfg = loopback_config();
    cfg.credential_grace = Duration::from_millis(100);
    let (server, dir) = start(cfg).await;
    dir.session_started("cy");
    let (user, pass) = credentials(SECRET, "cy", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 3).await;
    assert!(server.stats().fast_packets_to_peers > 0);

    dir.session_ended("cy");
    wait_until("relay closed", || server.allocation_count() == 0).await;
    let before = server.stats();
    // The client still holds its channel and sends ChannelData: nothing
    // reaches the peer, and nothing comes back from it.
    for _ in 0..5 {
        let _ = relay
            .send_to(b"after the end", peer.local_addr().expect("a"))
            .await;
    }
    assert_eq!(drain(&peer, Duration::from_millis(300)).await, 0);
    let after = server.stats();
    assert_eq!(after.fast_packets_to_peers, before.fast_packets_to_peers);
    assert_eq!(after.bytes_to_peers, before.bytes_to_peers);
    server.close().await;
}

#[tokio::test]
async fn packets_from_a_peer_without_permission_are_not_relayed() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("di");
    let (user, pass) = credentials(SECRET, "di", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 2).await;
    // Another socket on another IP (127.0.0.2): no permission for it.
    let stranger = UdpSocket::bind("127.0.0.2:0").await.expect("stranger");
    let relayed = relay.local_addr().expect("relayed");
    let before = server.stats();
    for _ in 0..5 {
        stranger.send_to(b"uninvited", relayed).await.expect("send");
    }
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(300), relay.recv_from(&mut buf)).await;
    assert!(got.is_err(), "nothing from a peer without permission");
    let after = server.stats();
    assert_eq!(
        after.fast_packets_from_peers,
        before.fast_packets_from_peers
    );
    // The permitted peer still gets through.
    relay_round_trip(&relay, &peer, 1).await;
    server.close().await;
}

/// Relay to relay is handed over between allocations on the fast path
/// (no queue, no copy): both allocations count it. One UDP socket, so both
/// clients are on it and the frames go out through its batched send.
#[tokio::test]
async fn relay_to_relay_on_the_fast_path() {
    let cfg = TurnConfig {
        public_ip: Some("203.0.113.77".parse().expect("ip")),
        allow_loopback: false,
        udp_sockets: 1,
        ..loopback_config()
    };
    let (server, dir) = start(cfg).await;
    dir.session_started("ed");
    dir.session_started("flo");
    let udp = server.addr(Transport::Udp).expect("udp");
    let (u1, p1) = credentials(SECRET, "ed", Duration::from_secs(600));
    let (u2, p2) = credentials(SECRET, "flo", Duration::from_secs(600));
    let c1 = udp_client(udp, &u1, &p1).await;
    let c2 = udp_client(udp, &u2, &p2).await;
    let r1 = within("allocate", c1.allocate()).await.expect("r1");
    let r2 = within("allocate", c2.allocate()).await.expect("r2");
    let (a1, a2): (SocketAddr, SocketAddr) =
        (r1.local_addr().expect("a1"), r2.local_addr().expect("a2"));
    // Both open permissions (the first packets are dropped until both
    // have), then 20 packets one way.
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        let _ = r1.send_to(b"open", a2).await;
        let _ = r2.send_to(b"open", a1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(100), r2.recv_from(&mut buf)).await
    {}
    let before = server.stats();
    for i in 0..20 {
        let msg = format!("r2r {i}");
        within("send", r1.send_to(msg.as_bytes(), a2))
            .await
            .expect("send");
        let (n, from) = within("receive", r2.recv_from(&mut buf))
            .await
            .expect("recv");
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(from, a1);
    }
    let after = server.stats();
    assert_eq!(
        after.fast_packets_to_peers - before.fast_packets_to_peers,
        20
    );
    assert_eq!(
        after.fast_packets_from_peers - before.fast_packets_from_peers,
        20
    );
    assert!(after.bytes_relay_to_relay > before.bytes_relay_to_relay);
    server.close().await;
}

/// With several UDP sockets on the port (SO_REUSEPORT, the kernel picks
/// one per client address), every client's control messages and relayed
/// packets meet the same socket: eight clients all relay both ways, on the
/// fast path.
#[tokio::test]
async fn clients_spread_over_several_udp_sockets_all_relay() {
    let cfg = TurnConfig {
        udp_sockets: 4,
        ..loopback_config()
    };
    let (server, dir) = start(cfg).await;
    let udp = server.addr(Transport::Udp).expect("udp");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    let mut clients = Vec::new();
    for i in 0..8 {
        let session = format!("s{i}");
        dir.session_started(&session);
        let (user, pass) = credentials(SECRET, &session, Duration::from_secs(600));
        let client = udp_client(udp, &user, &pass).await;
        let relay = within("allocate", client.allocate())
            .await
            .expect("allocate");
        relay_round_trip(&relay, &peer, 5).await;
        clients.push((client, relay));
    }
    let s = server.stats();
    assert_eq!(s.allocations, 8);
    assert!(
        s.fast_packets_to_peers >= 32 && s.fast_packets_from_peers >= 32,
        "{s:?}"
    );
    server.close().await;
}

/// SO_REUSEPORT on the UDP sockets must not let a second server (same
/// user) share the port unnoticed: its TCP listener on the same port
/// fails, and it says so.
#[tokio::test]
async fn a_second_server_on_the_same_port_is_refused() {
    let cfg = TurnConfig {
        udp_sockets: 2,
        ..loopback_config()
    };
    let (first, _dir) = start(cfg.clone()).await;
    let port = first.addr(Transport::Udp).expect("udp").port();
    let second = chat_turn::TurnServer::start(
        TurnConfig { port, ..cfg },
        std::sync::Arc::new(chat_turn::SessionDirectory::default()),
    )
    .await;
    let err = second.expect_err("the second server is refused");
    assert!(
        err.to_string().contains("in use") && err.to_string().contains("--turn-port"),
        "{err}"
    );
    first.close().await;
}

/// Junk from a host the client never permitted must not cost the
/// allocation anything: the crate drops it, so it is dropped before the
/// bandwidth bucket and the byte counters (otherwise anyone who knows a
/// relayed address could starve its traffic). UDP (fast path) and TCP
/// (the crate's path) clients alike.
#[tokio::test]
async fn a_stranger_cannot_drain_the_bandwidth_bucket() {
    for tcp in [false, true] {
        let mut cfg = loopback_config();
        cfg.max_bandwidth_per_allocation = Some(1000); // 1 kB/s, 16 KiB burst
        let (server, dir) = start(cfg).await;
        dir.session_started("gil");
        let (user, pass) = credentials(SECRET, "gil", Duration::from_secs(600));
        let client = if tcp {
            tcp_client(server.addr(Transport::Tcp).expect("tcp"), &user, &pass).await
        } else {
            udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await
        };
        let relay = within("allocate", client.allocate())
            .await
            .expect("allocate");
        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
        relay_round_trip(&relay, &peer, 1).await; // permission and channel
        let relayed = relay.local_addr().expect("relayed");
        let before = server.stats();
        // 40 kB of junk from a host without permission (127.0.0.2).
        let stranger = UdpSocket::bind("127.0.0.2:0").await.expect("stranger");
        for _ in 0..40 {
            stranger.send_to(&[9u8; 1000], relayed).await.expect("junk");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            server.stats().bytes_from_peers,
            before.bytes_from_peers,
            "junk is not counted (tcp: {tcp})"
        );
        // The permitted peer's 10 kB still fit in the burst.
        let mut buf = [0u8; 1500];
        let mut got = 0;
        for _ in 0..10 {
            peer.send_to(&[1u8; 1000], relayed).await.expect("send");
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(500), relay.recv_from(&mut buf)).await
            {
                assert_eq!(&buf[..n], &[1u8; 1000][..], "only the peer's packets");
                got += 1;
            }
        }
        assert_eq!(got, 10, "the peer's packets all passed (tcp: {tcp})");
        drop(relay);
        client.close().await.expect("close");
        server.close().await;
    }
}

/// Bursts like a video frame's packets (equal-size packets, a shorter
/// last one), which the fast path may send as segmented datagrams (GSO),
/// arrive whole and in order both ways.
#[tokio::test]
async fn bursts_arrive_whole_and_in_order_both_ways() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("gus");
    let (user, pass) = credentials(SECRET, "gus", Duration::from_secs(600));
    let client = udp_client(server.addr(Transport::Udp).expect("udp"), &user, &pass).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    relay_round_trip(&relay, &peer, 2).await; // permission and channel
    let relayed = relay.local_addr().expect("relayed");
    let peer_addr = peer.local_addr().expect("peer");
    // Packet k of burst b: (b, k) then filler; 6 x 1000 bytes, then 200.
    let packet = |b: u8, k: u8| {
        let mut p = vec![b ^ k; if k == 6 { 200 } else { 1000 }];
        p[0] = b;
        p[1] = k;
        p
    };
    let expected: Vec<Vec<u8>> = (0..8u8)
        .flat_map(|b| (0..7u8).map(move |k| (b, k)))
        .map(|(b, k)| packet(b, k))
        .collect();
    let before = server.stats();
    for p in &expected {
        peer.send_to(p, relayed).await.expect("peer send");
    }
    let mut buf = vec![0u8; 2000];
    for (i, p) in expected.iter().enumerate() {
        let (n, from) = within("client receive", relay.recv_from(&mut buf))
            .await
            .expect("relay recv");
        assert_eq!(from, peer_addr);
        assert_eq!(
            &buf[..n],
            &p[..],
            "packet {i} to the client, whole and in order"
        );
    }
    for p in &expected {
        within("relay send", relay.send_to(p, peer_addr))
            .await
            .expect("relay send");
    }
    for (i, p) in expected.iter().enumerate() {
        let (n, from) = within("peer receive", peer.recv_from(&mut buf))
            .await
            .expect("peer recv");
        assert_eq!(from, relayed);
        assert_eq!(
            &buf[..n],
            &p[..],
            "packet {i} to the peer, whole and in order"
        );
    }
    let s = server.stats();
    let packets = s.fast_packets_to_peers + s.fast_packets_from_peers
        - before.fast_packets_to_peers
        - before.fast_packets_from_peers;
    assert_eq!(
        packets,
        2 * expected.len() as u64,
        "all on the fast path: {s:?}"
    );
    let sends = s.fast_sends - before.fast_sends;
    assert!(
        sends >= 1 && sends <= packets,
        "{sends} sends for {packets} packets"
    );
    eprintln!("{packets} packets relayed in {sends} datagrams handed to the kernel");
    drop(relay);
    client.close().await.expect("close");
    server.close().await;
}
