//! Owns the listener gate: a `Conn` wrapped around each listening socket
//! (UDP, TCP, TLS) that looks at authenticated TURN requests before the
//! `turn` crate handles them. It records who is allocating (for quotas),
//! answers 403 to CreatePermission/ChannelBind for forbidden peers, caps
//! the LIFETIME of Allocate/Refresh at the configured maximum (re-signing
//! the request with the client's key), and turns the crate's 508 answer to
//! a quota refusal into 486 Allocation Quota Reached. It answers 508 to a
//! permission or channel beyond the per-allocation cap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_FINGERPRINT, ATTR_LIFETIME, ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_ERROR_RESPONSE, Getter, Message, MessageType, Setter};
use stun::textattrs::TextAttribute;
use webrtc_util::Conn;

use crate::creds::Authenticator;
use crate::fast::{FastPath, FastTable, Gather, UdpIo};
use crate::peer::PeerPolicy;
use crate::relay::{CtxSlot, RequestCtx, lock};

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const METHOD_ALLOCATE: u16 = 0x003;
const METHOD_REFRESH: u16 = 0x004;
const METHOD_CREATE_PERMISSION: u16 = 0x008;
const METHOD_CHANNEL_BIND: u16 = 0x009;
const CLASS_REQUEST: u8 = 0;
const CLASS_SUCCESS: u8 = 2;
const CLASS_ERROR: u8 = 3;
/// The lifetime the `turn` crate grants when none (or too much) is asked.
const CRATE_DEFAULT_LIFETIME: u32 = 600;
const CRATE_MAX_LIFETIME: u32 = 3600;

/// Method and class of a STUN message, from its header alone.
pub(crate) fn stun_header(p: &[u8]) -> Option<(u16, u8)> {
    if p.len() < 20 || p[0] & 0xc0 != 0 || p[4..8] != MAGIC_COOKIE {
        return None;
    }
    let t = u16::from_be_bytes([p[0], p[1]]);
    let method = (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2);
    let class = (((t & 0x0010) >> 4) | ((t & 0x0100) >> 7)) as u8;
    Some((method, class))
}

/// True for a first byte of 0x80 or more: neither STUN (0-3) nor
/// ChannelData (64-79, RFC 7983). Such datagrams are dropped before the
/// crate sees them: turn 0.17 ignores the top two bits of the message type
/// (0x8003 would be an Allocate the gate never checked).
pub(crate) fn not_turn(first: u8) -> bool {
    first >= 0x80
}

/// The XOR-RELAYED-ADDRESS of the crate's Allocate success answer `buf`.
fn relayed_address(buf: &[u8]) -> Option<SocketAddr> {
    let mut m = Message {
        raw: buf.to_vec(),
        ..Default::default()
    };
    m.decode().ok()?;
    let v = m.get(stun::attributes::ATTR_XOR_RELAYED_ADDRESS).ok()?;
    decode_xor_address(&v, &m.transaction_id.0)
}

/// Decodes an XOR-PEER-ADDRESS value (RFC 5389 §15.2): exactly 8 bytes for
/// IPv4, 20 for IPv6, anything else is `None`.
pub(crate) fn decode_xor_address(v: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE);
    key[4..].copy_from_slice(transaction);
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// How long the gate hands out one crate-issued nonce before asking the
/// crate for a new one.
const NONCE_ROTATE: Duration = Duration::from_secs(600);
/// How long a crate-issued nonce is accepted (the crate's own limit is 1 h).
const NONCE_ACCEPT: Duration = Duration::from_secs(3000);
/// At most one challenge per this interval reaches the crate.
const NONCE_PASS_EVERY: Duration = Duration::from_secs(1);
/// Crate-issued nonces remembered.
const NONCE_KEEP: usize = 8;
/// Challenges (401/438) answered over UDP per client network (IPv4
/// address, IPv6 /64) per second in full: an unauthenticated request is
/// spoofable over UDP and its answer is about five times its size, so
/// without a cap the server would reflect a flood at any address. A
/// browser joining a full room asks ~30 at once (a peer connection per
/// member, three TURN URLs each). Past it only one request in
/// [`CHALLENGE_SLIP`] is answered: a flood is reflected at about its own
/// size (no amplification), and a client whose address someone else
/// floods still gets an answer within a few retransmissions. TCP/TLS
/// sources cannot be spoofed: not counted.
const CHALLENGES_PER_NETWORK: u16 = 40;
const CHALLENGE_SLIP: u16 = 4;
/// Counters of the challenge budget (a fixed table indexed by a keyed hash
/// of the network, cleared every second: no growth, whatever the number
/// of sources; networks that share a slot share a budget).
const CHALLENGE_SLOTS: usize = 1 << 16;

/// Nonces issued by the `turn` crate, reused by the gate.
///
/// turn 0.17 stores every nonce it hands out in a map that nothing sweeps,
/// so each unauthenticated (or stale-nonce) request, even a spoofed UDP
/// one, would grow the server's memory for good. The gate therefore lets
/// at most one challenge per second through to the crate, remembers the
/// nonces the crate answers with, and answers every other 401/438 itself
/// with the current one: the crate's map grows by a handful a hour.
#[derive(Debug, Default)]
pub(crate) struct NonceCache {
    inner: std::sync::Mutex<NonceInner>,
}

#[derive(Debug, Default)]
struct NonceInner {
    issued: std::collections::VecDeque<(String, Instant)>,
    last_pass: Option<Instant>,
    /// This second's challenges per client network (see
    /// [`CHALLENGES_PER_NETWORK`]).
    window: Option<Instant>,
    challenged: Vec<u16>,
}

impl NonceCache {
    fn current(&self) -> Option<String> {
        let g = lock(&self.inner);
        g.issued
            .back()
            .filter(|(_, t)| t.elapsed() < NONCE_ROTATE)
            .map(|(n, _)| n.clone())
    }

    fn is_known(&self, nonce: &str) -> bool {
        lock(&self.inner)
            .issued
            .iter()
            .any(|(n, t)| n == nonce && t.elapsed() < NONCE_ACCEPT)
    }

    /// True when a challenge may be answered to `src` this second (see
    /// [`CHALLENGES_PER_NETWORK`]).
    fn may_challenge(&self, src: IpAddr) -> bool {
        use std::hash::BuildHasher;
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let slot = KEYS
            .get_or_init(Default::default)
            .hash_one(crate::peer::client_network(src)) as usize
            % CHALLENGE_SLOTS;
        let mut g = lock(&self.inner);
        if g.window
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            g.window = Some(Instant::now());
            g.challenged.clear();
            g.challenged.resize(CHALLENGE_SLOTS, 0);
        }
        let n = &mut g.challenged[slot];
        *n = n.saturating_add(1);
        *n <= CHALLENGES_PER_NETWORK || (*n - CHALLENGES_PER_NETWORK).is_multiple_of(CHALLENGE_SLIP)
    }

    /// True (at most once per [`NONCE_PASS_EVERY`]) when a challenge may go
    /// to the crate.
    fn may_pass(&self) -> bool {
        let mut g = lock(&self.inner);
        if g.last_pass.is_some_and(|t| t.elapsed() < NONCE_PASS_EVERY) {
            return false;
        }
        g.last_pass = Some(Instant::now());
        true
    }

    fn record(&self, nonce: String) {
        let mut g = lock(&self.inner);
        if g.issued.iter().any(|(n, _)| *n == nonce) {
            return;
        }
        g.issued.push_back((nonce, Instant::now()));
        while g.issued.len() > NONCE_KEEP {
            g.issued.pop_front();
        }
    }
}

enum Verdict {
    Pass,
    Replace(Vec<u8>),
    Answer(Vec<u8>),
}

/// Wraps one listening `Conn` (see the module doc).
pub(crate) struct Gate {
    pub(crate) inner: Arc<dyn Conn + Send + Sync>,
    pub(crate) listener: usize,
    pub(crate) ctx: CtxSlot,
    pub(crate) policy: Arc<PeerPolicy>,
    pub(crate) registry: Arc<crate::relay::Registry>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) max_lifetime: Duration,
    pub(crate) nonces: Arc<NonceCache>,
    pub(crate) counters: Arc<crate::stats::Counters>,
    /// UDP listeners: the fast path's table and batch receiver (the
    /// listening socket is read through it, not through `inner`).
    pub(crate) fast: Option<Arc<FastTable>>,
}

fn text_attr(m: &Message, t: stun::attributes::AttrType) -> Option<String> {
    let mut a = TextAttribute::new(t, String::new());
    a.get_from(m).ok()?;
    Some(a.text)
}

fn build_error(m: &Message, code: u16, reason: &str, key: Option<&[u8]>) -> Option<Vec<u8>> {
    build_error_with(m, code, reason, key, Vec::new())
}

fn build_error_with(
    m: &Message,
    code: u16,
    reason: &str,
    key: Option<&[u8]>,
    extra: Vec<Box<dyn Setter>>,
) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: m.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: ErrorCode(code),
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    setters.extend(extra);
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut out = Message::new();
    out.build(&setters).ok()?;
    Some(out.raw)
}

impl Gate {
    /// The long-term key of a request whose MESSAGE-INTEGRITY verifies with
    /// an honoured credential; `None` otherwise (the crate then refuses it).
    fn verified_key(&self, m: &Message) -> Option<(String, Vec<u8>)> {
        let username = text_attr(m, ATTR_USERNAME)?;
        let realm = text_attr(m, ATTR_REALM)?;
        let key = self.auth.key_for(&username, &realm).ok()?;
        MessageIntegrity(key.clone()).check(&mut m.clone()).ok()?;
        Some((username, key))
    }

    fn inspect(&self, pkt: &[u8], src: SocketAddr) -> Verdict {
        let Some((method, class)) = stun_header(pkt) else {
            return Verdict::Pass;
        };
        if class != CLASS_REQUEST
            || !matches!(
                method,
                METHOD_ALLOCATE | METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND
            )
        {
            return Verdict::Pass;
        }
        let mut m = Message {
            raw: pkt.to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() {
            return Verdict::Pass;
        }
        if method == METHOD_ALLOCATE {
            // Only a verified Allocate (below) says who is allocating: an
            // unverified one must not leave a stale context behind.
            *lock(&self.ctx) = None;
        }
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return self.challenge(&m, 401, "Unauthorized", src);
        }
        let nonce_ok = text_attr(&m, ATTR_NONCE).is_some_and(|n| self.nonces.is_known(&n));
        if !nonce_ok {
            return self.challenge(&m, 438, "Stale Nonce", src);
        }
        let Some((username, key)) = self.verified_key(&m) else {
            return Verdict::Pass;
        };
        if method == METHOD_ALLOCATE {
            // The crate handles this request before reading the next one
            // (and its relay generator takes the context).
            *lock(&self.ctx) = Some(RequestCtx {
                listener: self.listener,
                client: src,
                username: username.clone(),
                transaction: m.transaction_id.0,
                quota_refused: false,
            });
        }
        match method {
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => {
                for a in &m.attributes.0 {
                    if a.typ != ATTR_XOR_PEER_ADDRESS {
                        continue;
                    }
                    let Some(peer) = decode_xor_address(&a.value, &m.transaction_id.0) else {
                        // The crate would zero-fill a short value into an
                        // address nobody checked: refuse it here.
                        tracing::debug!(client = %src, %username, "TURN permission refused: malformed XOR-PEER-ADDRESS");
                        return match build_error(&m, 400, "Bad Request", Some(&key)) {
                            Some(b) => Verdict::Answer(b),
                            None => Verdict::Answer(Vec::new()),
                        };
                    };
                    if let Err(why) = crate::relay::check_peer(&self.policy, &self.registry, peer) {
                        crate::stats::Counters::add(&self.counters.refused_peers, 1);
                        static LOG: crate::stats::LogBudget = crate::stats::LogBudget::new();
                        if let Some(suppressed) = LOG.take() {
                            tracing::info!(client = %src, %username, %peer, reason = %why, suppressed,
                                "TURN permission refused: forbidden peer");
                        }
                        return match build_error(&m, 403, "Forbidden peer address", Some(&key)) {
                            Some(b) => Verdict::Answer(b),
                            None => Verdict::Answer(Vec::new()),
                        };
                    }
                }
                if !self.has_room(&m, method, src) {
                    crate::stats::Counters::add(&self.counters.refused_capacity, 1);
                    static LOG: crate::stats::LogBudget = crate::stats::LogBudget::new();
                    if let Some(suppressed) = LOG.take() {
                        tracing::info!(client = %src, %username, suppressed,
                            "TURN permission refused: too many permissions or channels");
                    }
                    return match build_error(&m, 508, "Insufficient Capacity", Some(&key)) {
                        Some(b) => Verdict::Answer(b),
                        None => Verdict::Answer(Vec::new()),
                    };
                }
                self.expect_answer(&m, method, src);
                Verdict::Pass
            }
            _ => self.cap_lifetime(&m, &key),
        }
    }

    /// The peer (first XOR-PEER-ADDRESS) and channel number of a verified
    /// CreatePermission/ChannelBind; `None` when there is none to take.
    fn peer_and_channel(m: &Message, method: u16) -> Option<(SocketAddr, Option<u16>)> {
        let peer = m
            .get(ATTR_XOR_PEER_ADDRESS)
            .ok()
            .and_then(|v| decode_xor_address(&v, &m.transaction_id.0))?;
        let channel = if method == METHOD_CHANNEL_BIND {
            match m.get(ATTR_CHANNEL_NUMBER) {
                Ok(v) if v.len() >= 2 => Some(u16::from_be_bytes([v[0], v[1]])),
                _ => return None,
            }
        } else {
            None
        };
        Some((peer, channel))
    }

    /// False when the client's allocation holds as many permissions (or
    /// channels) as it may and this request would add one.
    fn has_room(&self, m: &Message, method: u16, src: SocketAddr) -> bool {
        let (Some(fast), Some((peer, channel))) = (&self.fast, Self::peer_and_channel(m, method))
        else {
            return true;
        };
        fast.has_room(src, peer, channel)
    }

    /// Remembers a verified CreatePermission/ChannelBind so that the fast
    /// path installs it once the crate says yes. Like turn 0.17, only the
    /// first XOR-PEER-ADDRESS counts.
    fn expect_answer(&self, m: &Message, method: u16, src: SocketAddr) {
        let Some(fast) = &self.fast else { return };
        let Some((peer, channel)) = Self::peer_and_channel(m, method) else {
            return;
        };
        fast.expect(m.transaction_id.0, src, peer, channel);
    }

    /// Answers 401/438 with a crate-issued nonce, or lets the request reach
    /// the crate so that it issues one (see [`NonceCache`]).
    fn challenge(&self, m: &Message, code: u16, reason: &str, src: SocketAddr) -> Verdict {
        let udp = self.fast.as_ref().is_some_and(|f| f.udp.is_some());
        if udp && !self.nonces.may_challenge(src.ip()) {
            return Verdict::Answer(Vec::new()); // dropped: not a reflector
        }
        if let Some(nonce) = self.nonces.current() {
            let extra: Vec<Box<dyn Setter>> = vec![
                Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
                Box::new(TextAttribute::new(ATTR_REALM, self.auth.realm.clone())),
            ];
            if let Some(b) = build_error_with(m, code, reason, None, extra) {
                return Verdict::Answer(b);
            }
        }
        if self.nonces.may_pass() {
            Verdict::Pass
        } else {
            Verdict::Answer(Vec::new()) // dropped: the client retransmits
        }
    }

    /// Remembers the nonce of a 401/438 answer from the crate.
    fn learn_nonce(&self, buf: &[u8]) {
        if !matches!(stun_header(buf), Some((_, CLASS_ERROR))) {
            return;
        }
        let mut m = Message {
            raw: buf.to_vec(),
            ..Default::default()
        };
        if m.decode().is_ok()
            && let Some(nonce) = text_attr(&m, ATTR_NONCE)
        {
            self.nonces.record(nonce);
        }
    }

    /// Re-signs an Allocate/Refresh whose granted lifetime would exceed the
    /// configured maximum, asking for the maximum instead.
    fn cap_lifetime(&self, m: &Message, key: &[u8]) -> Verdict {
        let requested = m
            .get(ATTR_LIFETIME)
            .ok()
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(u32::from_be_bytes);
        if requested == Some(0) {
            return Verdict::Pass; // deallocation
        }
        let granted = match requested {
            Some(s) if s < CRATE_MAX_LIFETIME => s,
            _ => CRATE_DEFAULT_LIFETIME,
        };
        let max = u32::try_from(self.max_lifetime.as_secs()).unwrap_or(u32::MAX);
        let want = granted.min(max).max(1);
        if want == granted {
            return Verdict::Pass;
        }
        let mut out = Message::new();
        out.typ = m.typ;
        out.transaction_id = m.transaction_id;
        out.write_header();
        let had_fingerprint = m.contains(ATTR_FINGERPRINT);
        for a in &m.attributes.0 {
            if a.typ == ATTR_MESSAGE_INTEGRITY
                || a.typ == ATTR_MESSAGE_INTEGRITY_SHA256
                || a.typ == ATTR_FINGERPRINT
            {
                break; // nothing but FINGERPRINT may follow the integrity
            }
            if a.typ != ATTR_LIFETIME {
                out.add(a.typ, &a.value);
            }
        }
        out.add(ATTR_LIFETIME, &want.to_be_bytes());
        if MessageIntegrity(key.to_vec()).add_to(&mut out).is_err() {
            return Verdict::Pass;
        }
        if had_fingerprint && FINGERPRINT.add_to(&mut out).is_err() {
            return Verdict::Pass;
        }
        Verdict::Replace(out.raw)
    }

    /// The crate answers an Allocate: its request context ends here (so a
    /// later request never finds it). Returns it when it is this answer's.
    fn answered(&self, buf: &[u8], target: SocketAddr) -> Option<RequestCtx> {
        let (method, class) = stun_header(buf)?;
        if method != METHOD_ALLOCATE || !matches!(class, CLASS_SUCCESS | CLASS_ERROR) {
            return None;
        }
        lock(&self.ctx).take_if(|c| c.client == target && buf[8..20] == c.transaction)
    }

    /// Turns the crate's 508 answer to a quota refusal into 486.
    fn quota_answer(&self, buf: &[u8], ctx: Option<RequestCtx>) -> Option<Vec<u8>> {
        let ctx = ctx.filter(|c| c.quota_refused)?;
        if !matches!(stun_header(buf), Some((_, CLASS_ERROR))) {
            return None;
        }
        let mut m = Message {
            raw: buf.to_vec(),
            ..Default::default()
        };
        m.decode().ok()?;
        let key = self.auth.key_for(&ctx.username, &self.auth.realm).ok();
        build_error(&m, 486, "Allocation Quota Reached", key.as_deref())
    }
}

impl Gate {
    /// The UDP listener's read loop: reads datagrams in batches, relays
    /// what the fast path knows and returns the first other one to the
    /// crate (after the usual inspection); the rest of the batch waits
    /// for the next call.
    async fn recv_batched(
        &self,
        fast: &FastTable,
        udp: &UdpIo,
        buf: &mut [u8],
    ) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut batch = udp.batch.lock().await;
        let mut batches = 0usize;
        let path = FastPath {
            registry: &self.registry,
            policy: &self.policy,
            counters: &self.counters,
        };
        loop {
            let now = crate::fast::now_secs();
            while let Some((i, off, n, src)) = batch.next() {
                let single = batch.single(i);
                let (b, out) = batch.parts(i);
                if not_turn(b[off]) {
                    continue;
                }
                let gather = single.then_some(Gather { out, slot: i });
                if fast.client_packet(&path, b, off, n, src, now, gather) {
                    continue;
                }
                // Frames relayed so far go out before the crate's turn.
                batch.flush(&self.counters);
                let pkt = &batch.buf(i)[off..off + n];
                match self.inspect(pkt, src) {
                    Verdict::Pass => {}
                    Verdict::Replace(r) if r.len() <= buf.len() => {
                        buf[..r.len()].copy_from_slice(&r);
                        return Ok((r.len(), src));
                    }
                    Verdict::Replace(_) => {}
                    Verdict::Answer(a) => {
                        if !a.is_empty()
                            && let Err(e) = self.inner.send_to(&a, src).await
                        {
                            tracing::debug!(client = %src, error = %e, "cannot answer");
                        }
                        continue;
                    }
                }
                let n = n.min(buf.len());
                buf[..n].copy_from_slice(&pkt[..n]);
                return Ok((n, src));
            }
            batch.flush(&self.counters);
            batches += 1;
            if batches.is_multiple_of(crate::fast::YIELD_EVERY) {
                // A busy listener lets the relay tasks on this worker run.
                tokio::task::yield_now().await;
            }
            batch.fill(&udp.socket).await?;
        }
    }
}

#[async_trait]
impl Conn for Gate {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        if let Some(fast) = &self.fast
            && let Some(udp) = &fast.udp
        {
            return self.recv_batched(fast, udp, buf).await;
        }
        loop {
            let (n, src) = self.inner.recv_from(buf).await?;
            if buf[..n].first().copied().is_some_and(not_turn) {
                continue;
            }
            match self.inspect(&buf[..n], src) {
                Verdict::Pass => return Ok((n, src)),
                Verdict::Replace(b) if b.len() <= buf.len() => {
                    buf[..b.len()].copy_from_slice(&b);
                    return Ok((b.len(), src));
                }
                Verdict::Replace(_) => return Ok((n, src)),
                Verdict::Answer(b) => {
                    if !b.is_empty()
                        && let Err(e) = self.inner.send_to(&b, src).await
                    {
                        tracing::debug!(client = %src, error = %e, "cannot answer");
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.learn_nonce(buf);
        // An allocation is made when the crate says so: with EVEN-PORT it
        // opens (and drops) relay sockets just to find a free even port.
        if stun_header(buf) == Some((METHOD_ALLOCATE, CLASS_SUCCESS)) {
            crate::stats::Counters::add(&self.counters.allocations_made, 1);
            if let Some(relay) = relayed_address(buf) {
                self.registry.granted(relay);
            }
        }
        if let Some(fast) = &self.fast
            && let Some((METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND, class)) = stun_header(buf)
        {
            match class {
                CLASS_SUCCESS => fast.confirmed(&buf[8..20], target),
                CLASS_ERROR => fast.refused(&buf[8..20], target),
                _ => {}
            }
        }
        let ctx = self.answered(buf, target);
        if let Some(b) = self.quota_answer(buf, ctx) {
            self.inner.send_to(&b, target).await?;
            return Ok(buf.len());
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    /// Never closes the shared listener: the `turn` crate calls this when
    /// any one allocation ends. [`crate::TurnServer::close`] stops listeners.
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_method_and_class() {
        // Allocate request 0x0003, CreatePermission error 0x0118, Refresh ok 0x0104
        let mut p = [0u8; 20];
        p[4..8].copy_from_slice(&MAGIC_COOKIE);
        p[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
        assert_eq!(stun_header(&p), Some((METHOD_ALLOCATE, 0)));
        p[0..2].copy_from_slice(&0x0118u16.to_be_bytes());
        assert_eq!(stun_header(&p), Some((METHOD_CREATE_PERMISSION, 3)));
        p[0..2].copy_from_slice(&0x0104u16.to_be_bytes());
        assert_eq!(stun_header(&p), Some((METHOD_REFRESH, 2)));
        p[0] = 0x40; // ChannelData
        assert_eq!(stun_header(&p), None);
        assert_eq!(stun_header(&p[..10]), None);
    }

    #[test]
    fn xor_peer_address_roundtrip() {
        use stun::xoraddr::XorMappedAddress;
        for ip in ["127.0.0.1", "2001:db8::7", "::ffff:10.0.0.1"] {
            let ip: IpAddr = ip.parse().expect("addr");
            let mut m = Message::new();
            m.build(&[
                Box::new(stun::message::BINDING_REQUEST),
                Box::new(stun::agent::TransactionId::new()),
            ])
            .expect("build");
            let a = XorMappedAddress { ip, port: 4242 };
            a.add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS).expect("add");
            let v = m.get(ATTR_XOR_PEER_ADDRESS).expect("attr");
            assert_eq!(
                decode_xor_address(&v, &m.transaction_id.0),
                Some(SocketAddr::new(ip, 4242))
            );
        }
        assert_eq!(decode_xor_address(&[0, 1, 0], &[0; 12]), None);
        assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1], &[0; 12]), None);
    }
}
