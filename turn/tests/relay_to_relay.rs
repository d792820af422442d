//! Two clients that both must relay meet through this server: each one's
//! peer is the other's relayed address, which is the server's own. Real
//! `turn` crate clients; the relayed address is neither loopback nor
//! allow-listed. Packets never leave this machine: the clients talk to the
//! server on a local address and relay-to-relay packets are handed over
//! inside the server.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chat_turn::{Transport, TurnConfig, TurnServer, credentials};
use common::*;
use tokio::net::UdpSocket;
use turn::client::Client;
use webrtc_util::Conn;

/// Sends `msg` from `from` to `to`'s relayed address until `to` receives it
/// (the first packets are dropped until both sides hold a permission for
/// each other, as in ICE); checks it comes from `from`'s relayed address.
async fn deliver(from: &(impl Conn + Send + Sync), to: &(impl Conn + Send + Sync), msg: &[u8]) {
    let from_addr = from.local_addr().expect("relayed addr");
    let to_addr = to.local_addr().expect("relayed addr");
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        within("relay send", from.send_to(msg, to_addr))
            .await
            .expect("send to the other relay");
        // Earlier packets (the opening one, retries) may arrive first.
        while let Ok(r) =
            tokio::time::timeout(Duration::from_millis(300), to.recv_from(&mut buf)).await
        {
            let (n, src) = r.expect("recv");
            assert_eq!(src, from_addr, "the packet comes from the other relay");
            if &buf[..n] == msg {
                return;
            }
        }
    }
    panic!("{from_addr} -> {to_addr}: nothing arrived");
}

async fn client(server: &TurnServer, local: IpAddr, session: &str) -> Client {
    let (user, pass) = credentials(SECRET, session, Duration::from_secs(600));
    let sock = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .expect("bind");
    let udp = server.addr(Transport::Udp).expect("udp");
    client_on(std::sync::Arc::new(sock), udp, &user, &pass).await
}

/// Two allocations relay to each other both ways; the server's own TURN
/// port on the same address stays refused.
async fn relay_only_peers_meet(cfg: TurnConfig, client_ip: IpAddr, relay_ip: IpAddr) {
    let (server, dir) = start(cfg).await;
    dir.session_started("alice");
    dir.session_started("bob");
    dir.session_started("carol");
    let alice = client(&server, client_ip, "alice").await;
    let bob = client(&server, client_ip, "bob").await;
    let ra = within("allocate", alice.allocate())
        .await
        .expect("alice allocates");
    let rb = within("allocate", bob.allocate())
        .await
        .expect("bob allocates");
    assert_eq!(ra.local_addr().expect("a").ip(), relay_ip);
    assert_eq!(rb.local_addr().expect("b").ip(), relay_ip);

    // Bob's first packet opens his permission for Alice (Alice has none
    // for him yet, so hers is dropped), then both ways, over several
    // rounds (Send indications, then ChannelData once channels are bound).
    let _ = within(
        "bob opens",
        rb.send_to(b"hello", ra.local_addr().expect("a")),
    )
    .await;
    for i in 0..4 {
        deliver(&ra, &rb, format!("alice->bob {i}").as_bytes()).await;
        deliver(&rb, &ra, format!("bob->alice {i}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = server.stats();
    assert!(stats.bytes_relay_to_relay >= 8 * 10, "{stats:?}");

    // The server's own non-relay ports on the relay address are refused:
    // its TURN listener (CreatePermission answered 403)...
    let carol = client(&server, client_ip, "carol").await;
    let rc = within("allocate", carol.allocate())
        .await
        .expect("carol allocates");
    let refused_before = server.stats().refused_peers;
    let turn_port = SocketAddr::new(relay_ip, server.addr(Transport::Udp).expect("udp").port());
    let sent = within("send to the TURN port", rc.send_to(b"x", turn_port)).await;
    assert!(
        sent.is_err(),
        "{turn_port} (the TURN listener) must be refused"
    );
    assert!(server.stats().refused_peers > refused_before);
    // ...and any other service on it, even from an allocation that already
    // holds a permission for the address (permissions are per IP).
    if let Ok(service) = UdpSocket::bind(SocketAddr::new(relay_ip, 0)).await {
        let service_addr = service.local_addr().expect("addr");
        let _ = within("send to a service", ra.send_to(b"x", service_addr)).await;
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), service.recv_from(&mut buf))
                .await
                .is_err(),
            "{service_addr} (not a relay) must not receive relayed packets"
        );
    }

    // Dave, another user of this server, cannot send into Alice's relay:
    // Alice's permission for the relay address is per IP, but the only
    // relayed address she named is Bob's.
    dir.session_started("dave");
    let dave = client(&server, client_ip, "dave").await;
    let rd = within("allocate", dave.allocate())
        .await
        .expect("dave allocates");
    let ra_addr = ra.local_addr().expect("a");
    let before = server.stats();
    for _ in 0..3 {
        let _ = within("dave sends", rd.send_to(b"junk from dave", ra_addr)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 1500];
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), ra.recv_from(&mut buf)).await
    {
        let (n, src) = r.expect("recv");
        assert_ne!(&buf[..n], b"junk from dave", "from {src}");
    }
    let after = server.stats();
    assert_eq!(
        after.bytes_relay_to_relay, before.bytes_relay_to_relay,
        "nothing of Dave's was relayed or charged"
    );
    deliver(&rb, &ra, b"bob still reaches alice").await;
    rd.close().await.expect("close relay");
    dave.close().await.expect("close client");
    wait_until("dave's allocation closed", || {
        server.allocation_count() == 3
    })
    .await;

    // Once Bob's allocation is gone, its address is refused again.
    let rb_addr = rb.local_addr().expect("b");
    rb.close().await.expect("close relay");
    bob.close().await.expect("close client");
    wait_until("bob's allocation closed", || server.allocation_count() == 2).await;
    let sent = within("send to a closed relay", rc.send_to(b"x", rb_addr)).await;
    assert!(sent.is_err(), "{rb_addr} (closed) must be refused");
    server.close().await;
}

/// Behind NAT: listening on loopback, advertising a public-looking address
/// (TEST-NET-3, which the peer rules refuse as reserved). Nothing on this
/// machine owns it: only in-process delivery can carry the packets.
#[tokio::test]
async fn relay_only_peers_meet_behind_an_advertised_address() {
    let relay_ip: IpAddr = "203.0.113.77".parse().expect("ip");
    let cfg = TurnConfig {
        allow_loopback: false,
        public_ip: Some(relay_ip),
        ..loopback_config()
    };
    relay_only_peers_meet(cfg, "127.0.0.1".parse().expect("ip"), relay_ip).await;
}

/// On a local non-loopback address of this machine (e.g. the address of
/// its network interface), not allow-listed.
#[tokio::test]
async fn relay_only_peers_meet_on_a_local_interface_address() {
    let ifaces = webrtc_util::ifaces::ifaces().expect("list interfaces");
    let ip = ifaces
        .iter()
        .filter_map(|i| i.addr.map(|a| a.ip()))
        .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .expect("this test needs a non-loopback IPv4 address on this machine");
    let cfg = TurnConfig {
        listen: ip,
        allow_loopback: false,
        ..loopback_config()
    };
    relay_only_peers_meet(cfg, ip, ip).await;
}
