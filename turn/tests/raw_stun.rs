//! Raw STUN against our server: the LIFETIME granted to Allocate and
//! Refresh is capped at `max_lifetime` (and the re-signed exchange still
//! verifies with the client's key); a flood of unauthenticated requests is
//! answered with one reused nonce.

mod common;

use std::time::Duration;

use chat_turn::{Transport, TurnServer, credentials};
use common::*;
use stun::agent::TransactionId;
use stun::attributes::ATTR_NONCE;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_REFRESH, Message, MessageType, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use tokio::net::UdpSocket;
use turn::proto::PROTO_UDP;
use turn::proto::lifetime::Lifetime;
use turn::proto::reqtrans::RequestedTransport;

async fn exchange(sock: &UdpSocket, setters: Vec<Box<dyn Setter>>) -> Message {
    let mut m = Message::new();
    m.build(&setters).expect("build");
    sock.send(&m.raw).await.expect("send");
    let mut buf = vec![0u8; 1500];
    let n = within("STUN answer", sock.recv(&mut buf))
        .await
        .expect("recv");
    let mut r = Message {
        raw: buf[..n].to_vec(),
        ..Default::default()
    };
    r.decode().expect("decode answer");
    assert_eq!(r.transaction_id, m.transaction_id);
    r
}

/// An Allocate request without credentials (answered with a challenge).
fn unsigned_allocate() -> Vec<Box<dyn Setter>> {
    vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
    ]
}

/// The error code of answer `r`, if it has one.
fn error_code(r: &Message) -> Option<u16> {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(r).ok().map(|()| code.code.0)
}

/// A UDP client of `server` holding session `name`'s credential and the
/// nonce from an unsigned Allocate's 401: it builds signed requests.
struct SignedClient {
    sock: UdpSocket,
    user: String,
    nonce: Nonce,
    mi: MessageIntegrity,
}

impl SignedClient {
    async fn connect(server: &TurnServer, name: &str) -> Self {
        let (user, pass) = credentials(SECRET, name, Duration::from_secs(600));
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect(server.addr(Transport::Udp).expect("udp"))
            .await
            .expect("connect");
        let r = exchange(&sock, unsigned_allocate()).await;
        let mut nonce = Nonce::new(ATTR_NONCE, String::new());
        nonce.get_from(&r).expect("nonce");
        let mi = MessageIntegrity::new_long_term_integrity(user.clone(), REALM.into(), pass);
        Self {
            sock,
            user,
            nonce,
            mi,
        }
    }

    /// [`connect`](Self::connect) for a live session `name`, then a
    /// signed Allocate that must succeed.
    async fn allocated(server: &TurnServer, dir: &chat_turn::SessionDirectory, name: &str) -> Self {
        dir.session_started(name);
        let c = Self::connect(server, name).await;
        let r = exchange(
            &c.sock,
            c.request(METHOD_ALLOCATE, TransactionId::new(), vec![]),
        )
        .await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");
        c
    }

    /// A request of `method` with `extra` attributes, signed.
    fn request(
        &self,
        method: stun::message::Method,
        id: TransactionId,
        extra: Vec<Box<dyn Setter>>,
    ) -> Vec<Box<dyn Setter>> {
        let mut s: Vec<Box<dyn Setter>> = vec![
            Box::new(id),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
        ];
        s.extend(extra);
        s.push(Box::new(Username::new(
            stun::attributes::ATTR_USERNAME,
            self.user.clone(),
        )));
        s.push(Box::new(Realm::new(
            stun::attributes::ATTR_REALM,
            REALM.into(),
        )));
        s.push(Box::new(self.nonce.clone()));
        s.push(Box::new(self.mi.clone()));
        s
    }
}

#[tokio::test]
async fn lifetime_is_capped_and_resigned() {
    let mut cfg = loopback_config();
    cfg.max_lifetime = Duration::from_secs(60);
    let (server, dir) = start(cfg).await;
    dir.session_started("hank");
    let (user, pass) = credentials(SECRET, "hank", Duration::from_secs(600));
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(server.addr(Transport::Udp).expect("udp"))
        .await
        .expect("connect");

    // 1. unauthenticated: 401 with nonce and realm
    let r = exchange(
        &sock,
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(FINGERPRINT),
        ],
    )
    .await;
    assert_eq!(r.typ.class, CLASS_ERROR_RESPONSE);
    assert_eq!(error_code(&r), Some(401));
    let mut nonce = Nonce::new(ATTR_NONCE, String::new());
    nonce.get_from(&r).expect("nonce");
    let mut realm = Realm::new(stun::attributes::ATTR_REALM, String::new());
    realm.get_from(&r).expect("realm");
    assert_eq!(realm.text, REALM);

    let mi = MessageIntegrity::new_long_term_integrity(user.clone(), REALM.into(), pass);
    let authed = |method, lifetime: u64| -> Vec<Box<dyn Setter>> {
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(Lifetime(Duration::from_secs(lifetime))),
            Box::new(Username::new(stun::attributes::ATTR_USERNAME, user.clone())),
            Box::new(realm.clone()),
            Box::new(nonce.clone()),
            Box::new(mi.clone()),
            Box::new(FINGERPRINT),
        ]
    };

    // 2. Allocate asking 3000 s gets 60 s, and the answer verifies.
    let mut r = exchange(&sock, authed(METHOD_ALLOCATE, 3000)).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");
    mi.check(&mut r).expect("answer integrity");
    let mut lt = Lifetime::default();
    lt.get_from(&r).expect("lifetime");
    assert_eq!(lt.0, Duration::from_secs(60));

    // 3. Refresh asking 3000 s gets 60 s; asking 30 s gets 30 s.
    let mut r = exchange(&sock, authed(METHOD_REFRESH, 3000)).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "refresh: {r}");
    mi.check(&mut r).expect("refresh integrity");
    lt.get_from(&r).expect("lifetime");
    assert_eq!(lt.0, Duration::from_secs(60));
    let r = exchange(&sock, authed(METHOD_REFRESH, 30)).await;
    lt.get_from(&r).expect("lifetime");
    assert_eq!(lt.0, Duration::from_secs(30));

    // 4. Refresh with lifetime 0 deletes the allocation.
    let r = exchange(&sock, authed(METHOD_REFRESH, 0)).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    wait_until("allocation deleted", || server.allocation_count() == 0).await;
    server.close().await;
}

#[tokio::test]
async fn unauthenticated_flood_reuses_one_nonce() {
    let (server, _dir) = start(loopback_config()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(server.addr(Transport::Udp).expect("udp"))
        .await
        .expect("connect");
    // A flood from one address: 40 challenges a second are answered, then
    // one request in four (a spoofed source must not make us a reflector,
    // and someone whose address is flooded still gets answers), all with
    // one nonce.
    let mut first = Message::new();
    first.build(&unsigned_allocate()).expect("build");
    for _ in 0..100 {
        sock.send(&first.raw).await.expect("send");
    }
    let mut seen = std::collections::HashSet::new();
    let mut answers = 0;
    let mut buf = vec![0u8; 1500];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
    {
        let mut r = Message {
            raw: buf[..n].to_vec(),
            ..Default::default()
        };
        r.decode().expect("decode answer");
        assert_eq!(error_code(&r), Some(401));
        let mut nonce = Nonce::new(ATTR_NONCE, String::new());
        nonce.get_from(&r).expect("nonce");
        seen.insert(nonce.text);
        answers += 1;
    }
    assert!(
        (41..=70).contains(&answers),
        "{answers} of 100 challenges answered (40, then one in four)"
    );
    // The next second answers again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let r = exchange(&sock, unsigned_allocate()).await;
        assert_eq!(error_code(&r), Some(401));
        let mut nonce = Nonce::new(ATTR_NONCE, String::new());
        nonce.get_from(&r).expect("nonce");
        seen.insert(nonce.text);
    }
    assert_eq!(seen.len(), 1, "one nonce for all challenges");

    // A request signed with an unknown nonce gets 438 and the current nonce.
    let (user, pass) = credentials(SECRET, "ivan", Duration::from_secs(600));
    let mi = MessageIntegrity::new_long_term_integrity(user.clone(), REALM.into(), pass);
    let r = exchange(
        &sock,
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(Username::new(stun::attributes::ATTR_USERNAME, user)),
            Box::new(Realm::new(stun::attributes::ATTR_REALM, REALM.into())),
            Box::new(Nonce::new(ATTR_NONCE, "made-up".into())),
            Box::new(mi),
        ],
    )
    .await;
    assert_eq!(error_code(&r), Some(438));
    let mut nonce = Nonce::new(ATTR_NONCE, String::new());
    nonce.get_from(&r).expect("nonce");
    assert!(seen.contains(&nonce.text));
    server.close().await;
}

/// A raw attribute value, as a hostile client may shape it.
struct RawAttr(stun::attributes::AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// A short XOR-PEER-ADDRESS would be zero-filled by the `turn` crate into
/// an address the peer check never saw (here 10.0.0.0): it is refused.
#[tokio::test]
async fn a_peer_address_that_does_not_decode_exactly_is_refused() {
    let (server, dir) = start(loopback_config()).await;
    let client = SignedClient::allocated(&server, &dir, "judy").await;
    let sock = &client.sock;
    let signed = |method, extra| client.request(method, TransactionId::new(), extra);

    // IPv4 family, port, and one address byte: 10 ^ 0x21 (magic cookie).
    let short = RawAttr(
        stun::attributes::ATTR_XOR_PEER_ADDRESS,
        vec![0, 1, 0x21 ^ 0x13, 0x12 ^ 0x88, 10 ^ 0x21],
    );
    let r = exchange(
        sock,
        signed(
            stun::message::METHOD_CREATE_PERMISSION,
            vec![Box::new(short)],
        ),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_ERROR_RESPONSE, "short peer address: {r}");
    assert_eq!(error_code(&r), Some(400));
    // An unknown family is refused the same way.
    let odd = RawAttr(
        stun::attributes::ATTR_XOR_PEER_ADDRESS,
        vec![0, 3, 0, 1, 1, 2, 3, 4],
    );
    let r = exchange(
        sock,
        signed(stun::message::METHOD_CREATE_PERMISSION, vec![Box::new(odd)]),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_ERROR_RESPONSE, "unknown family: {r}");
    server.close().await;
}

/// Sets the top two bits of the message type already written: turn 0.17
/// ignores them (0x8003 decodes as an Allocate request), RFC 7983 says the
/// datagram is neither STUN nor ChannelData. Placed before the integrity,
/// so the crate would verify it.
struct TopBits;

impl Setter for TopBits {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.raw[0] |= 0x80;
        Ok(())
    }
}

/// A request whose type has the top bits set never reaches the crate: it
/// would skip the gate (quotas, LIFETIME cap, peer check) and, before the
/// fix, make an allocation charged to whoever sent the last Allocate with
/// a USERNAME — here another session's name from another address.
#[tokio::test]
async fn stun_types_with_the_top_bits_set_are_dropped() {
    let (server, dir) = start(loopback_config()).await;
    dir.session_started("mallory");
    dir.session_started("victim");
    let udp = server.addr(Transport::Udp).expect("udp");
    let victim = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    victim.connect(udp).await.expect("connect");
    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    attacker.connect(udp).await.expect("connect");

    // 1. An unsigned Allocate naming the victim's session, from "its" address.
    let r = exchange(
        &victim,
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(Username::new(
                stun::attributes::ATTR_USERNAME,
                "1:victim".into(),
            )),
        ],
    )
    .await;
    assert_eq!(error_code(&r), Some(401));
    let mut nonce = Nonce::new(ATTR_NONCE, String::new());
    nonce.get_from(&r).expect("nonce");

    // 2. Allocate (0x8003), Refresh (0x8004) and CreatePermission (0x8008),
    // properly signed with the attacker's own credential: no answer, no
    // allocation.
    let (user, pass) = credentials(SECRET, "mallory", Duration::from_secs(600));
    let mi = MessageIntegrity::new_long_term_integrity(user.clone(), REALM.into(), pass);
    for method in [
        METHOD_ALLOCATE,
        METHOD_REFRESH,
        stun::message::METHOD_CREATE_PERMISSION,
    ] {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(TopBits),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(Username::new(stun::attributes::ATTR_USERNAME, user.clone())),
            Box::new(Realm::new(stun::attributes::ATTR_REALM, REALM.into())),
            Box::new(nonce.clone()),
            Box::new(mi.clone()),
        ])
        .expect("build");
        assert_eq!(m.raw[0] & 0xc0, 0x80);
        attacker.send(&m.raw).await.expect("send");
        let mut buf = [0u8; 1500];
        let answer =
            tokio::time::timeout(Duration::from_millis(500), attacker.recv(&mut buf)).await;
        assert!(
            answer.is_err(),
            "method {method:?} with the top bits set was answered"
        );
    }
    assert_eq!(server.allocation_count(), 0, "no allocation was made");

    // The same Allocate without the top bits is the attacker's own.
    let r = exchange(
        &attacker,
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(Username::new(stun::attributes::ATTR_USERNAME, user.clone())),
            Box::new(Realm::new(stun::attributes::ATTR_REALM, REALM.into())),
            Box::new(nonce.clone()),
            Box::new(mi.clone()),
        ],
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");
    // Charged to the attacker's session: the victim's end does not close it.
    dir.session_ended("victim");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(server.allocation_count(), 1);
    dir.session_ended("mallory");
    wait_until("closed with its own session", || {
        server.allocation_count() == 0
    })
    .await;
    server.close().await;
}

/// An allocation holds at most 256 permissions and 256 channels (each
/// change copies its map): one more gets 508 Insufficient Capacity, a
/// refresh of one it holds still succeeds.
#[tokio::test]
async fn permissions_and_channels_are_capped_per_allocation() {
    use stun::message::{METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};
    use turn::proto::channum::ChannelNumber;
    use turn::proto::peeraddr::PeerAddress;

    let (server, dir) = start(loopback_config()).await;
    let client = SignedClient::allocated(&server, &dir, "kim").await;
    let (sock, mi) = (&client.sock, &client.mi);
    let signed = |method, extra| client.request(method, TransactionId::new(), extra);
    let peer = |i: u32, port: u16| PeerAddress {
        ip: std::net::Ipv4Addr::from(0x7f00_0000 + 0x100 + i).into(),
        port,
    };
    for i in 0..256 {
        let r = exchange(
            sock,
            signed(METHOD_CREATE_PERMISSION, vec![Box::new(peer(i, 9))]),
        )
        .await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "permission {i}: {r}");
    }
    let r = exchange(
        sock,
        signed(METHOD_CREATE_PERMISSION, vec![Box::new(peer(256, 9))]),
    )
    .await;
    assert_eq!(error_code(&r), Some(508), "permission 257: {r}");
    mi.check(&mut r.clone()).expect("signed answer");
    let r = exchange(
        sock,
        signed(METHOD_CREATE_PERMISSION, vec![Box::new(peer(7, 9))]),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "a refresh: {r}");
    // A channel to a peer without a permission needs one more: refused.
    let r = exchange(
        sock,
        signed(
            METHOD_CHANNEL_BIND,
            vec![Box::new(peer(300, 9)), Box::new(ChannelNumber(0x4000))],
        ),
    )
    .await;
    assert_eq!(error_code(&r), Some(508), "channel to a 257th peer: {r}");

    // Channels: 256 to ports of permitted peers, then no more.
    for i in 0..256u16 {
        let r = exchange(
            sock,
            signed(
                METHOD_CHANNEL_BIND,
                vec![
                    Box::new(peer(0, 1000 + i)),
                    Box::new(ChannelNumber(0x4000 + i)),
                ],
            ),
        )
        .await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "channel {i}: {r}");
    }
    let r = exchange(
        sock,
        signed(
            METHOD_CHANNEL_BIND,
            vec![Box::new(peer(0, 2000)), Box::new(ChannelNumber(0x4100))],
        ),
    )
    .await;
    assert_eq!(error_code(&r), Some(508), "channel 257: {r}");
    assert_eq!(server.stats().refused_capacity, 3, "each 508 is counted");
    server.close().await;
}

/// A refused ChannelBind leaves nothing behind: when the same transaction
/// id is then granted for another peer, the fast path installs what the
/// crate granted (channel 0x4000 to A), not the refused request (to B).
#[tokio::test]
async fn a_refused_request_is_not_installed_by_a_later_success() {
    use stun::message::METHOD_CHANNEL_BIND;
    use turn::proto::channum::ChannelNumber;
    use turn::proto::peeraddr::PeerAddress;

    let (server, dir) = start(loopback_config()).await;
    let client = SignedClient::allocated(&server, &dir, "lou").await;
    let sock = &client.sock;
    let signed = |method, id, extra| client.request(method, id, extra);
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("peer a");
    let b = UdpSocket::bind("127.0.0.3:0").await.expect("peer b");
    let bind = |peer: &UdpSocket| -> Vec<Box<dyn Setter>> {
        let addr = peer.local_addr().expect("addr");
        vec![
            Box::new(PeerAddress {
                ip: addr.ip(),
                port: addr.port(),
            }),
            Box::new(ChannelNumber(0x4000)),
        ]
    };
    let r = exchange(
        sock,
        signed(METHOD_CHANNEL_BIND, TransactionId::new(), bind(&a)),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "bind to A: {r}");
    // Same id: 0x4000 to B is refused (bound to A), then to A granted.
    let id = TransactionId::new();
    let r = exchange(sock, signed(METHOD_CHANNEL_BIND, id, bind(&b))).await;
    assert_eq!(r.typ.class, CLASS_ERROR_RESPONSE, "rebind to B: {r}");
    let r = exchange(sock, signed(METHOD_CHANNEL_BIND, id, bind(&a))).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "refresh to A: {r}");

    let before = server.stats().fast_packets_to_peers;
    sock.send(&[0x40, 0x00, 0x00, 0x04, b'd', b'a', b't', b'a'])
        .await
        .expect("channel data");
    let mut buf = [0u8; 64];
    let (n, _) = within("A receives", a.recv_from(&mut buf))
        .await
        .expect("recv");
    assert_eq!(&buf[..n], b"data");
    assert_eq!(server.stats().fast_packets_to_peers, before + 1);
    let at_b = tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await;
    assert!(at_b.is_err(), "nothing reaches B");
    server.close().await;
}

/// An Allocate with EVEN-PORT is one allocation: turn 0.17 opens (and
/// drops) relay sockets just to find a free even port, which must not
/// count as allocations made.
#[tokio::test]
async fn an_even_port_allocation_counts_once() {
    use turn::proto::evenport::EvenPort;
    use turn::proto::relayaddr::RelayedAddress;

    let (server, dir) = start(loopback_config()).await;
    dir.session_started("nina");
    let client = SignedClient::connect(&server, "nina").await;
    let r = exchange(
        &client.sock,
        client.request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![Box::new(EvenPort::default())],
        ),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&r).expect("relayed address");
    assert_eq!(relayed.port % 2, 0, "an even port");
    let s = server.stats();
    assert_eq!((s.allocations, s.allocations_made), (1, 1), "{s:?}");
    // Deleted (Refresh 0): the session's one allocation ends, one
    // observation in the relayed-bytes histogram.
    let r = exchange(
        &client.sock,
        client.request(
            METHOD_REFRESH,
            TransactionId::new(),
            vec![Box::new(Lifetime(Duration::from_secs(0)))],
        ),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "refresh 0: {r}");
    wait_until("deleted", || server.allocation_count() == 0).await;
    assert_eq!(server.stats().session_bytes.count, 1, "one session ended");
    server.close().await;
}
