//! Owns the relay fast path: ChannelData and Send/Data indications of
//! established channels and permissions are relayed here, straight between
//! the UDP listener and the relay sockets, without the `turn` crate (no
//! per-packet allocation, task hop or lock; batched receives).
//!
//! The crate keeps the control plane. The gate learns each successful
//! CreatePermission/ChannelBind from the crate's answer and installs it in
//! read-mostly tables (`ArcSwap`: lock-free reads, copy-on-write updates
//! on the rare control messages); entries expire a second before the
//! crate's own (permissions 300 s, channels 600 s), die with their
//! allocation (its kill token, checked per packet, so a departed session
//! stops within the reaper's 0.5 s) and are swept by the reaper. What the
//! tables do not know goes to the crate as before.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::peer::canonical;
use crate::relay::{Bandwidth, Registry, lock};
use crate::stats::Counters;

/// Bytes kept free before each received datagram, so a ChannelData header
/// or a Data indication (20 + 24 + 4 bytes for IPv6) is written in place.
pub(crate) const HEADROOM: usize = 48;
/// Largest datagram handled (the `turn` crate's own buffers are 1500).
const MTU: usize = 1500;
/// One receive buffer: headroom, datagram, padding.
const BUF_LEN: usize = HEADROOM + MTU + 4;
/// Permission lifetime of the `turn` crate (RFC 5766: 300 s), minus one
/// second so the fast path never outlives the crate's entry.
const PERMISSION_SECS: u64 = 299;
/// Channel lifetime of the `turn` crate (600 s), minus one second.
const CHANNEL_SECS: u64 = 599;

/// Permissions (peer IPs) and channels one allocation may hold: the gate
/// answers 508 Insufficient Capacity beyond. Bounds the copy each change
/// of these copy-on-write maps makes (a WebRTC call needs a few per
/// remote participant).
pub(crate) const MAX_PERMISSIONS: usize = 256;
pub(crate) const MAX_CHANNELS: usize = 256;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const SEND_INDICATION: [u8; 2] = [0x00, 0x16];
const DATA_INDICATION: [u8; 2] = [0x00, 0x17];
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;

/// Whole seconds since the first call (a monotonic clock; one read per
/// batch of packets).
pub(crate) fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    until: u64,
}

/// One allocation as the fast path sees it. Shared by the relay `Conn`
/// (the crate's side), the listener's table and the registry.
#[derive(Debug)]
pub(crate) struct FastRelay {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) relay_addr: SocketAddr,
    pub(crate) kill: CancellationToken,
    /// Payload bytes relayed, both directions (the session's total).
    pub(crate) bytes: Arc<AtomicU64>,
    pub(crate) bandwidth: Option<Bandwidth>,
    /// The client's address, and the UDP listening socket it talks to
    /// (`None` over TCP/TLS: those stay on the crate's path).
    pub(crate) client: SocketAddr,
    pub(crate) reply: Option<Arc<UdpSocket>>,
    /// Peer IP (canonical) -> permission expiry (seconds, [`now_secs`]).
    perms: ArcSwap<HashMap<IpAddr, u64>>,
    channels: ArcSwap<HashMap<u16, Channel>>,
    /// Peer address (canonical) -> channel number.
    by_peer: ArcSwap<HashMap<SocketAddr, u16>>,
    /// Exact peer addresses (canonical) the client named in a granted
    /// CreatePermission or ChannelBind -> until when. Permissions are per
    /// IP, but this server's relayed addresses all share one IP and belong
    /// to different users: a packet from another allocation here is
    /// accepted only from an address the client named (see
    /// [`accepts_relay`](Self::accepts_relay)).
    named: ArcSwap<HashMap<SocketAddr, u64>>,
}

/// Exact peer addresses one allocation keeps (a permission names one each).
const MAX_NAMED: usize = 2 * MAX_PERMISSIONS;

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

impl FastRelay {
    pub(crate) fn new(
        socket: Arc<UdpSocket>,
        relay_addr: SocketAddr,
        kill: CancellationToken,
        bytes: Arc<AtomicU64>,
        bandwidth: Option<Bandwidth>,
        client: SocketAddr,
        reply: Option<Arc<UdpSocket>>,
    ) -> Self {
        Self {
            socket,
            relay_addr,
            kill,
            bytes,
            bandwidth,
            client,
            reply,
            perms: ArcSwap::default(),
            channels: ArcSwap::default(),
            by_peer: ArcSwap::default(),
            named: ArcSwap::default(),
        }
    }

    pub(crate) fn within_bandwidth(&self, n: usize) -> bool {
        self.bandwidth.as_ref().is_none_or(|b| b.take(n))
    }

    /// True when a permission for `peer` (and channel `channel`) fits in
    /// [`MAX_PERMISSIONS`] / [`MAX_CHANNELS`]: a refresh always does.
    fn has_room(&self, peer: SocketAddr, channel: Option<u16>, now: u64) -> bool {
        let perms = self.perms.load();
        let perm_ok = perms.get(&canonical(peer.ip())).is_some_and(|u| *u > now)
            || perms.values().filter(|u| **u > now).count() < MAX_PERMISSIONS;
        let channel_ok = channel.is_none_or(|n| {
            let channels = self.channels.load();
            channels.get(&n).is_some_and(|c| c.until > now)
                || channels.values().filter(|c| c.until > now).count() < MAX_CHANNELS
        });
        perm_ok && channel_ok
    }

    pub(crate) fn permit(&self, ip: IpAddr, until: u64) {
        let ip = canonical(ip);
        self.perms.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.len() < MAX_PERMISSIONS || m.contains_key(&ip) {
                m.insert(ip, until);
            }
            m
        });
    }

    fn bind(&self, number: u16, peer: SocketAddr, until: u64) {
        let peer = canonical_addr(peer);
        if self.channels.load().len() >= MAX_CHANNELS && !self.channels.load().contains_key(&number)
        {
            return;
        }
        self.channels.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(number, Channel { peer, until });
            m
        });
        self.by_peer.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(peer, number);
            m
        });
    }

    /// Remembers that the client named `peer` exactly, until `until`.
    fn name(&self, peer: SocketAddr, until: u64) {
        let peer = canonical_addr(peer);
        self.named.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.len() < MAX_NAMED || m.contains_key(&peer) {
                m.insert(peer, until);
            }
            m
        });
    }

    /// True when the client takes a packet from `peer`, another allocation
    /// of this server (relay to relay): a live channel to it, or a live
    /// permission that named this exact address. Another user of this
    /// server cannot send into (and drain the bucket of) a relay whose
    /// client only meant to talk to a third one on the same IP.
    pub(crate) fn accepts_relay(&self, peer: SocketAddr, now: u64) -> bool {
        self.channel_of(peer, now).is_some()
            || self
                .named
                .load()
                .get(&canonical_addr(peer))
                .is_some_and(|u| *u > now)
    }

    /// True when the crate would relay a packet from `peer` to the client:
    /// a live channel or permission for it.
    pub(crate) fn accepts(&self, peer: SocketAddr, now: u64) -> bool {
        self.permitted(peer.ip(), now) || self.channel_of(peer, now).is_some()
    }

    fn permitted(&self, ip: IpAddr, now: u64) -> bool {
        self.perms
            .load()
            .get(&canonical(ip))
            .is_some_and(|until| *until > now)
    }

    fn channel_peer(&self, number: u16, now: u64) -> Option<SocketAddr> {
        self.channels
            .load()
            .get(&number)
            .filter(|c| c.until > now)
            .map(|c| c.peer)
    }

    fn channel_of(&self, peer: SocketAddr, now: u64) -> Option<u16> {
        let peer = canonical_addr(peer);
        let number = *self.by_peer.load().get(&peer)?;
        // The number may have expired and been bound to another peer since.
        (self.channel_peer(number, now)? == peer).then_some(number)
    }

    /// Drops expired permissions and channels (copying only when one did).
    fn sweep(&self, now: u64) {
        if self.perms.load().values().any(|u| *u <= now) {
            self.perms.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.retain(|_, u| *u > now);
                m
            });
        }
        if self.named.load().values().any(|u| *u <= now) {
            self.named.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.retain(|_, u| *u > now);
                m
            });
        }
        if self.channels.load().values().any(|c| c.until <= now) {
            self.channels.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.retain(|_, c| c.until > now);
                m
            });
            let live = self.channels.load();
            self.by_peer.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.retain(|_, n| live.contains_key(n));
                m
            });
        }
    }
}

/// A CreatePermission/ChannelBind the gate let through, waiting for the
/// crate's answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    transaction: [u8; 12],
    client: SocketAddr,
    peer: SocketAddr,
    channel: Option<u16>,
}

/// Requests remembered while waiting for their answer (the crate answers
/// each before reading the next datagram, so a few are plenty).
const PENDING_KEEP: usize = 32;

/// The fast-path state of one listener: its clients' allocations (with
/// their channels and permissions) and, on a UDP listening socket, the
/// batch receiver. A TCP/TLS listener's clients stay on the crate's path;
/// their table only tells the relay which peers the crate will accept.
#[derive(Debug)]
pub(crate) struct FastTable {
    pub(crate) udp: Option<UdpIo>,
    clients: ArcSwap<HashMap<SocketAddr, Arc<FastRelay>>>,
    pending: Mutex<std::collections::VecDeque<Pending>>,
}

/// A UDP listening socket and its batch receiver.
#[derive(Debug)]
pub(crate) struct UdpIo {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) batch: tokio::sync::Mutex<Batch>,
}

impl FastTable {
    /// The table of UDP listening socket `udp`.
    pub(crate) fn new(udp: Arc<UdpSocket>) -> std::io::Result<Self> {
        let batch = Batch::new(&udp, LISTENER_BATCH)?;
        Ok(Self {
            udp: Some(UdpIo {
                socket: udp,
                batch: tokio::sync::Mutex::new(batch),
            }),
            clients: ArcSwap::default(),
            pending: Mutex::default(),
        })
    }

    /// The table of a TCP/TLS listener.
    pub(crate) fn stream() -> Self {
        Self {
            udp: None,
            clients: ArcSwap::default(),
            pending: Mutex::default(),
        }
    }

    /// A new allocation of `relay.client` on this listener. Never replaces
    /// a live one (the crate keeps one allocation per 5-tuple); false when
    /// there is one.
    pub(crate) fn add(&self, relay: Arc<FastRelay>) -> bool {
        let mut added = false;
        self.clients.rcu(|m| {
            let mut m = HashMap::clone(m);
            added = m.get(&relay.client).is_none_or(|r| r.kill.is_cancelled());
            if added {
                m.insert(relay.client, Arc::clone(&relay));
            }
            m
        });
        added
    }

    /// Allocation `relay` of `client` closed.
    pub(crate) fn remove(&self, client: SocketAddr, relay: SocketAddr) {
        self.clients.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.get(&client)
                .is_some_and(|r| canonical_addr(r.relay_addr) == relay)
            {
                m.remove(&client);
            }
            m
        });
    }

    /// True when `client`'s allocation (if any) has room for a permission
    /// for `peer` and channel `channel` (see [`MAX_PERMISSIONS`]).
    pub(crate) fn has_room(
        &self,
        client: SocketAddr,
        peer: SocketAddr,
        channel: Option<u16>,
    ) -> bool {
        self.clients
            .load()
            .get(&client)
            .is_none_or(|r| r.has_room(peer, channel, now_secs()))
    }

    /// Remembers a verified CreatePermission (`channel` None) or
    /// ChannelBind until the crate answers it.
    pub(crate) fn expect(
        &self,
        transaction: [u8; 12],
        client: SocketAddr,
        peer: SocketAddr,
        channel: Option<u16>,
    ) {
        let mut g = lock(&self.pending);
        // A retransmission (or a reuse) of the transaction replaces it: the
        // crate answers the last one it read.
        g.retain(|p| !(p.transaction == transaction && p.client == client));
        g.push_back(Pending {
            transaction,
            client,
            peer,
            channel,
        });
        while g.len() > PENDING_KEEP {
            g.pop_front();
        }
    }

    /// The crate refused transaction `transaction` of `client`: forgets it
    /// (a later success of the same id must not install it).
    pub(crate) fn refused(&self, transaction: &[u8], client: SocketAddr) {
        lock(&self.pending).retain(|p| !(p.transaction == transaction && p.client == client));
    }

    /// The crate answered transaction `transaction` of `client` with
    /// success: installs its permission (and channel).
    pub(crate) fn confirmed(&self, transaction: &[u8], client: SocketAddr) {
        let p = {
            let mut g = lock(&self.pending);
            let Some(i) = g
                .iter()
                .position(|p| p.transaction == transaction && p.client == client)
            else {
                return;
            };
            g.remove(i)
        };
        let Some(p) = p else { return };
        let clients = self.clients.load();
        let Some(relay) = clients.get(&p.client) else {
            return;
        };
        let now = now_secs();
        relay.permit(p.peer.ip(), now + PERMISSION_SECS);
        relay.name(p.peer, now + PERMISSION_SECS);
        if let Some(n) = p.channel {
            relay.bind(n, p.peer, now + CHANNEL_SECS);
        }
    }

    /// Forgets closed allocations and expired entries.
    pub(crate) fn sweep(&self) {
        let now = now_secs();
        let clients = self.clients.load();
        if clients.values().any(|r| r.kill.is_cancelled()) {
            self.clients.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.retain(|_, r| !r.kill.is_cancelled());
                m
            });
        }
        for r in self.clients.load().values() {
            r.sweep(now);
        }
    }

    /// Relays a client's ChannelData or Send indication at
    /// `buf[off..off + len]` if its channel or permission is known; false
    /// hands it to the crate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn client_packet(
        &self,
        path: &FastPath<'_>,
        buf: &mut [u8],
        off: usize,
        len: usize,
        src: SocketAddr,
        now: u64,
        gather: Option<Gather<'_>>,
    ) -> bool {
        let pkt = &buf[off..off + len];
        let (peer, data_off, data_len, clients) = if (0x40..0x80).contains(&pkt[0]) {
            if len < 4 {
                return false;
            }
            let number = u16::from_be_bytes([pkt[0], pkt[1]]);
            let data_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if 4 + data_len > len {
                return false;
            }
            let clients = self.clients.load();
            let Some(relay) = clients.get(&src) else {
                return false;
            };
            let Some(peer) = relay.channel_peer(number, now) else {
                return false;
            };
            (peer, off + 4, data_len, clients)
        } else if pkt.len() >= 20 && pkt[0..2] == SEND_INDICATION && pkt[4..8] == MAGIC_COOKIE {
            let Some((peer, d_off, d_len)) = parse_send_indication(pkt) else {
                return false;
            };
            let clients = self.clients.load();
            let Some(relay) = clients.get(&src) else {
                return false;
            };
            if !relay.permitted(peer.ip(), now) {
                return false;
            }
            (peer, off + d_off, d_len, clients)
        } else {
            return false;
        };
        let Some(relay) = clients.get(&src) else {
            return false;
        };
        if relay.kill.is_cancelled() {
            return false;
        }
        path.to_peer(relay, buf, data_off, data_len, peer, now, gather);
        true
    }
}

/// A read loop that keeps finding datagrams yields to the runtime after
/// this many batches (at most 256 packets on a listener), so that one busy
/// socket does not hold a worker thread for long and delay the others.
pub(crate) const YIELD_EVERY: usize = 8;

/// Datagrams read per system call on a listener and on a relay socket
/// (at most 64: [`send_many`] reports in a `u64`).
const LISTENER_BATCH: usize = 32;
const _: () = assert!(LISTENER_BATCH <= 64);
pub(crate) const RELAY_BATCH: usize = 8;

/// Buffers for one socket's batched receives (`recvmmsg` through
/// quinn-udp), consumed one datagram at a time.
pub(crate) struct Batch {
    state: quinn_udp::UdpSocketState,
    bufs: Vec<Box<[u8]>>,
    meta: Vec<quinn_udp::RecvMeta>,
    /// Received messages, the one being read, and the next segment in it
    /// (one message holds several datagrams only with GRO).
    filled: usize,
    msg: usize,
    seg: usize,
    /// Frames for this socket's clients, sent together by [`flush`](Self::flush).
    out: Vec<Out>,
}

/// One frame waiting in a [`Batch`]'s outbox: where it sits in the batch's
/// buffers, where it goes, and the allocation to count it for.
#[derive(Debug)]
pub(crate) struct Out {
    slot: usize,
    start: usize,
    len: usize,
    to: SocketAddr,
    payload: usize,
    relay: Arc<FastRelay>,
    /// To `relay`'s client through its listening socket (`reply`), or to a
    /// peer through `relay`'s relay socket.
    to_client: bool,
}

impl Out {
    /// The socket this frame leaves through.
    fn socket(&self) -> &UdpSocket {
        match (&self.relay.reply, self.to_client) {
            (Some(reply), true) => reply,
            _ => &self.relay.socket,
        }
    }
}

/// Where [`FastPath::to_client`] and [`FastPath::to_peer`] leave frames
/// instead of sending each one: a batch's outbox and the batch buffer the
/// frame is in. Sent by [`Batch::flush`].
pub(crate) struct Gather<'a> {
    pub(crate) out: &'a mut Vec<Out>,
    pub(crate) slot: usize,
}

impl Gather<'_> {
    /// Leaves a frame in the outbox; false when it is full (then the
    /// caller sends it at once).
    fn push(
        &mut self,
        start: usize,
        len: usize,
        to: SocketAddr,
        payload: usize,
        relay: &Arc<FastRelay>,
        to_client: bool,
    ) -> bool {
        if self.out.len() >= LISTENER_BATCH {
            return false;
        }
        self.out.push(Out {
            slot: self.slot,
            start,
            len,
            to,
            payload,
            relay: Arc::clone(relay),
            to_client,
        });
        true
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("size", &self.bufs.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    pub(crate) fn new(socket: &UdpSocket, size: usize) -> std::io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new(socket.into())?;
        GSO.probe(&state);
        restore_socket_defaults(socket);
        Ok(Self {
            state,
            bufs: (0..size)
                .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
                .collect(),
            meta: vec![quinn_udp::RecvMeta::default(); size],
            filled: 0,
            msg: 0,
            seg: 0,
            out: Vec::with_capacity(size),
        })
    }

    /// The next received datagram: (buffer index, offset, length, source).
    pub(crate) fn next(&mut self) -> Option<(usize, usize, usize, SocketAddr)> {
        while self.msg < self.filled {
            let m = &self.meta[self.msg];
            let stride = m.stride.max(1);
            let start = self.seg * stride;
            if start < m.len {
                self.seg += 1;
                let len = stride.min(m.len - start);
                return Some((self.msg, HEADROOM + start, len, m.addr));
            }
            self.msg += 1;
            self.seg = 0;
        }
        None
    }

    /// True when message `i` holds one datagram. Several (GRO, which these
    /// sockets turn off, best effort) sit back to back, so a frame built in
    /// place before one would overwrite the end of the one before: such a
    /// datagram's frame must leave at once, not wait in the outbox.
    pub(crate) fn single(&self, i: usize) -> bool {
        let m = &self.meta[i];
        m.stride == 0 || m.stride >= m.len
    }

    pub(crate) fn buf(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i]
    }

    /// Buffer `i` and the outbox, for the listener's fast path.
    pub(crate) fn parts(&mut self, i: usize) -> (&mut [u8], &mut Vec<Out>) {
        (&mut self.bufs[i], &mut self.out)
    }

    /// Forgets the frames in the outbox unsent (their allocation closed).
    pub(crate) fn discard(&mut self) {
        self.out.clear();
    }

    /// Sends the frames in the outbox, as few system calls and datagrams
    /// through the kernel's stack as possible (see [`send_all`]); a full
    /// socket buffer drops the rest of that socket's frames, as the
    /// network would. Counts what was sent.
    pub(crate) fn flush(&mut self, counters: &Counters) {
        if self.out.is_empty() {
            return;
        }
        // A closed allocation relays nothing more, not even what its
        // batch produced before it closed.
        self.out.retain(|o| !o.relay.kill.is_cancelled());
        let (sent, sends) = send_all(&self.bufs, &self.out, &GSO);
        Counters::add(&counters.fast_sends, sends);
        for (_, o) in self
            .out
            .iter()
            .enumerate()
            .filter(|(k, _)| sent & (1 << k) != 0)
        {
            if o.to_client {
                Counters::add(&counters.bytes_from_peers, o.payload as u64);
                Counters::add(&counters.fast_packets_from_peers, 1);
            } else {
                Counters::add(&counters.bytes_to_peers, o.payload as u64);
                Counters::add(&counters.fast_packets_to_peers, 1);
            }
            o.relay.bytes.fetch_add(o.payload as u64, Ordering::Relaxed);
        }
        self.out.clear();
    }

    /// Waits for datagrams and reads as many as are queued (up to the
    /// batch size). Cancel-safe: nothing is consumed before it returns.
    pub(crate) async fn fill(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        loop {
            socket.readable().await?;
            let Self {
                state,
                bufs,
                meta,
                filled,
                msg,
                seg,
                ..
            } = &mut *self;
            let mut iovs: [IoSliceMut<'_>; LISTENER_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            let n = bufs.len().min(LISTENER_BATCH);
            for (iov, b) in iovs.iter_mut().zip(bufs.iter_mut()) {
                *iov = IoSliceMut::new(&mut b[HEADROOM..HEADROOM + MTU]);
            }
            match socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut iovs[..n], &mut meta[..n])
            }) {
                Ok(got) => {
                    *filled = got;
                    *msg = 0;
                    *seg = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // ICMP errors from earlier sends (port unreachable) surface
                // here: not this socket's fault.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Generic segmentation offload (UDP_SEGMENT, Linux 4.18+): whether runs
/// of frames may leave as one segmented datagram. Probed with the first
/// batch socket. A destination a segmented datagram could not reach while
/// its frames one by one could (a path MTU below the frames: GSO does not
/// fragment; a route through IPsec, a device without checksum offload:
/// EIO) gets its frames one by one for [`GSO_REFUSED_FOR`]: one
/// destination's path (which a client can shape for its own peers) never
/// costs the others their segmentation.
pub(crate) struct Gso {
    on: std::sync::atomic::AtomicBool,
    probed: std::sync::Once,
    /// Destination IP -> until when its frames go one by one. Read only
    /// while `any_refused` (never, on a healthy path).
    refused: Mutex<HashMap<IpAddr, Instant>>,
    any_refused: std::sync::atomic::AtomicBool,
}

/// How long a destination that refused a segmented datagram gets its
/// frames one by one (Linux keeps a learnt path MTU for 10 minutes).
const GSO_REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// Destinations remembered as refusing segmentation, at most.
const GSO_REFUSED_MAX: usize = 1024;

impl Gso {
    fn new() -> Self {
        Self {
            on: std::sync::atomic::AtomicBool::new(false),
            probed: std::sync::Once::new(),
            refused: Mutex::default(),
            any_refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Turns GSO on if the kernel offers it on `state`'s socket.
    fn probe(&self, state: &quinn_udp::UdpSocketState) {
        self.probed.call_once(|| {
            if state.max_gso_segments() > 1 {
                self.on.store(true, Ordering::Relaxed);
            }
        });
    }

    fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The destinations that get no segmented datagrams now (`None`: all
    /// may), for one batch.
    fn refusing(&self) -> Option<std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>>> {
        if !self.any_refused.load(Ordering::Relaxed) {
            return None;
        }
        let mut g = lock(&self.refused);
        let now = Instant::now();
        g.retain(|_, until| *until > now);
        if g.is_empty() {
            self.any_refused.store(false, Ordering::Relaxed);
            return None;
        }
        Some(g)
    }

    /// A segmented datagram to `to` was refused with `err`, while its
    /// frames one by one went out.
    fn refused(&self, to: IpAddr, err: &std::io::Error) {
        let mut g = lock(&self.refused);
        if g.len() >= GSO_REFUSED_MAX && !g.contains_key(&to) {
            let now = Instant::now();
            g.retain(|_, until| *until > now);
            if g.len() >= GSO_REFUSED_MAX
                && let Some(k) = g.keys().next().copied()
            {
                g.remove(&k);
            }
        }
        let first = g.is_empty();
        g.insert(to, Instant::now() + GSO_REFUSED_FOR);
        self.any_refused.store(true, Ordering::Relaxed);
        if first {
            tracing::info!(peer = %to, error = %err,
                "TURN: the path refused a segmented send; frames to it go one by one for 10 minutes");
        } else {
            tracing::debug!(peer = %to, error = %err,
                "TURN: the path refused a segmented send; frames to it go one by one for 10 minutes");
        }
    }
}

/// The process's [`Gso`] state.
static GSO: std::sync::LazyLock<Gso> = std::sync::LazyLock::new(Gso::new);

/// Segments (frames) in one datagram handed to the kernel: the kernel's
/// UDP_MAX_SEGMENTS is 64 (128 since Linux 6.9); a batch holds at most
/// [`LISTENER_BATCH`] frames anyway.
const MAX_SEGMENTS: usize = 64;
/// The largest frame sent as a segment: a 1500-byte MTU less the IPv6 and
/// UDP headers (GSO does not fragment; a larger frame goes alone and the
/// kernel fragments it as before).
const MAX_SEGMENT_LEN: usize = 1500 - 40 - 8;
/// Bytes of frames in one segmented datagram (an IP datagram holds 65,535
/// bytes with its headers).
const MAX_SEGMENTED: usize = 65_000;

/// Sends `out` (at most [`LISTENER_BATCH`] frames); returns which went out
/// (bit k: frame k) and how many datagrams the kernel was handed.
///
/// Frames are grouped by socket and destination, in their order (frames
/// of one flow are never reordered). A run of frames to one destination
/// of equal length (the last may be shorter: a video frame's packets)
/// leaves as one segmented datagram (GSO, see [`Gso`]): it crosses the
/// kernel's stack once and is cut into the original datagrams at the
/// device (or, on loopback, at the receiving socket), so the wire and the
/// client see the same packets. Each socket's datagrams leave with one
/// `sendmmsg`. A frame the kernel refuses on its own (e.g. a pending ICMP
/// error) is skipped and not counted; a full socket buffer drops the rest
/// of that socket's frames; a segmented datagram the path refuses is sent
/// again one frame at a time.
#[cfg(target_os = "linux")]
fn send_all(bufs: &[Box<[u8]>], out: &[Out], gso: &Gso) -> (u64, u64) {
    use std::os::fd::AsRawFd;
    let n = out.len().min(LISTENER_BATCH);
    // Frames in send order: by socket, then destination, then arrival.
    let mut order: [u8; LISTENER_BATCH] = std::array::from_fn(|k| k as u8);
    let order = &mut order[..n];
    order.sort_unstable_by_key(|&k| {
        let o = &out[usize::from(k)];
        (o.socket().as_raw_fd(), o.to, k)
    });
    let iov = |o: &Out| libc::iovec {
        iov_base: bufs[o.slot][o.start..o.start + o.len].as_ptr() as *mut libc::c_void,
        iov_len: o.len,
    };
    let mut iovs: [libc::iovec; LISTENER_BATCH] = std::array::from_fn(|k| match order.get(k) {
        Some(&f) => iov(&out[usize::from(f)]),
        None => libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
    });
    // Datagrams: (first position in `order`, frames, segment size).
    let on = gso.is_on();
    let refusing = if on { gso.refusing() } else { None };
    let mut grams: [(usize, usize, usize); LISTENER_BATCH] = [(0, 0, 0); LISTENER_BATCH];
    let mut count = 0;
    for pos in 0..n {
        let o = &out[usize::from(order[pos])];
        if count > 0 {
            let (first, frames, size) = &mut grams[count - 1];
            let head = &out[usize::from(order[*first])];
            let last = &out[usize::from(order[*first + *frames - 1])];
            if on
                && head.to == o.to
                && head.socket().as_raw_fd() == o.socket().as_raw_fd()
                && last.len == *size
                && (1..=*size).contains(&o.len)
                && *size <= MAX_SEGMENT_LEN
                && *frames < MAX_SEGMENTS
                && (*frames + 1) * *size <= MAX_SEGMENTED
                && refusing
                    .as_ref()
                    .is_none_or(|r| !r.contains_key(&o.to.ip()))
            {
                *frames += 1;
                continue;
            }
        }
        grams[count] = (pos, 1, o.len);
        count += 1;
    }
    drop(refusing);
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let addrs: [socket2::SockAddr; LISTENER_BATCH] = std::array::from_fn(|d| {
        socket2::SockAddr::from(if d < count {
            out[usize::from(order[grams[d].0])].to
        } else {
            unspecified
        })
    });
    // One UDP_SEGMENT control message per segmented datagram.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    let mut control = [[0u64; 4]; LISTENER_BATCH];
    debug_assert!(space <= std::mem::size_of::<[u64; 4]>());
    // SAFETY: mmsghdr is plain old data, for which all zeroes is valid.
    let mut hdrs: [libc::mmsghdr; LISTENER_BATCH] = unsafe { std::mem::zeroed() };
    for d in 0..count {
        let (first, frames, size) = grams[d];
        let h = &mut hdrs[d].msg_hdr;
        h.msg_name = addrs[d].as_ptr() as *mut libc::c_void;
        h.msg_namelen = addrs[d].len();
        // SAFETY: first + frames <= n <= LISTENER_BATCH: inside `iovs`.
        h.msg_iov = unsafe { iovs.as_mut_ptr().add(first) };
        h.msg_iovlen = frames as _;
        if frames > 1 {
            h.msg_control = control[d].as_mut_ptr().cast();
            h.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, aligned bytes
            // that live until this function returns; the first header fits.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
            }
        }
    }
    let frames_of = |d: usize| {
        let (first, frames, _) = grams[d];
        order[first..first + frames]
            .iter()
            .fold(0u64, |m, &f| m | 1u64 << f)
    };
    let (mut sent, mut sends) = (0u64, 0u64);
    let mut d = 0;
    while d < count {
        // This socket's datagrams: grams[d..end].
        let fd = out[usize::from(order[grams[d].0])].socket().as_raw_fd();
        let mut end = d + 1;
        while end < count && out[usize::from(order[grams[end].0])].socket().as_raw_fd() == fd {
            end += 1;
        }
        while d < end {
            // SAFETY: hdrs[d..end] point at addresses, iovecs, buffers and
            // control messages that live (unchanged) until this function
            // returns; the kernel only reads them and writes msg_len.
            let r = unsafe {
                libc::sendmmsg(fd, hdrs.as_mut_ptr().add(d), (end - d) as libc::c_uint, 0)
            };
            if r > 0 {
                for k in d..d + r as usize {
                    sent |= frames_of(k);
                }
                sends += r as u64;
                d += r as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                // A full socket buffer: the rest of this socket's frames
                // are dropped, as the network would.
                std::io::ErrorKind::WouldBlock => break,
                _ => {}
            }
            let (first, frames, _) = grams[d];
            if frames > 1 && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                // Maybe the path cannot take it segmented: frame by frame,
                // and if that goes, its frames go so for a while.
                let before = sent;
                for &f in &order[first..first + frames] {
                    let mut one = iov(&out[usize::from(f)]);
                    let mut h = hdrs[d].msg_hdr;
                    h.msg_iov = &mut one;
                    h.msg_iovlen = 1;
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                    // SAFETY: as above, for one datagram whose iovec lives
                    // until the call returns.
                    if unsafe { libc::sendmsg(fd, &h, 0) } >= 0 {
                        sent |= 1u64 << f;
                        sends += 1;
                    }
                }
                if sent != before {
                    gso.refused(out[usize::from(order[first])].to.ip(), &err);
                }
            }
            // Refused (or sent one by one): on with the next.
            d += 1;
        }
        d = end;
    }
    (sent, sends)
}

#[cfg(not(target_os = "linux"))]
fn send_all(bufs: &[Box<[u8]>], out: &[Out], _gso: &Gso) -> (u64, u64) {
    let mut sent = 0u64;
    for (k, o) in out.iter().take(LISTENER_BATCH).enumerate() {
        if o.socket()
            .try_send_to(&bufs[o.slot][o.start..o.start + o.len], o.to)
            .is_ok()
        {
            sent |= 1 << k;
        }
    }
    (sent, sent.count_ones().into())
}

/// Undoes what quinn-udp turns on that this data path does not want: GRO
/// (coalesced datagrams would need 64 KiB per slot, and TURN traffic is
/// small mixed packets), the per-datagram destination-address, TOS and
/// receive-timestamp control messages (nothing here reads them; they cost
/// the kernel work per packet), "probe" path-MTU discovery and IPv6
/// "don't fragment" (back to the kernel's defaults, as on the other
/// sockets of this server: a relayed datagram above the path MTU is
/// fragmented, not dropped with EMSGSIZE). Best effort: a socket that
/// keeps them still works.
fn restore_socket_defaults(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
            // SAFETY: a valid socket descriptor and a pointer to a c_int of
            // the size given; setsockopt only reads it.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        set(libc::SOL_UDP, libc::UDP_GRO, 0);
        set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
        set(libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
        set(libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_WANT,
        );
        if socket.local_addr().is_ok_and(|a| a.is_ipv6()) {
            set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
            set(libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
            set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0);
            set(
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_WANT,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// XOR-PEER-ADDRESS and DATA of a Send indication: (peer, data offset,
/// data length). Any other attribute is skipped, as the crate does.
fn parse_send_indication(pkt: &[u8]) -> Option<(SocketAddr, usize, usize)> {
    let body = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let end = 20 + body;
    if end > pkt.len() {
        return None;
    }
    let transaction: &[u8; 12] = pkt[8..20].try_into().ok()?;
    let (mut peer, mut data) = (None, None);
    let mut i = 20;
    while i + 4 <= end {
        let typ = u16::from_be_bytes([pkt[i], pkt[i + 1]]);
        let len = usize::from(u16::from_be_bytes([pkt[i + 2], pkt[i + 3]]));
        let v = i + 4;
        if v + len > end {
            return None;
        }
        match typ {
            ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                peer = Some(crate::gate::decode_xor_address(
                    &pkt[v..v + len],
                    transaction,
                )?);
            }
            ATTR_DATA if data.is_none() => data = Some((v, len)),
            _ => {}
        }
        i = v + len.div_ceil(4) * 4;
    }
    let (d_off, d_len) = data?;
    Some((peer?, d_off, d_len))
}

/// Writes a Data indication (XOR-PEER-ADDRESS `from`, DATA) around the
/// payload at `buf[off..off + len]`; returns where it starts and its
/// length. Needs [`HEADROOM`] before the payload and 3 bytes after.
fn data_indication(
    buf: &mut [u8],
    off: usize,
    len: usize,
    from: SocketAddr,
    transaction: [u8; 12],
) -> Option<(usize, usize)> {
    let addr_len = if from.is_ipv4() { 8 } else { 20 };
    let start = off.checked_sub(20 + 4 + addr_len + 4)?;
    let padded = len.div_ceil(4) * 4;
    if off + padded > buf.len() {
        return None;
    }
    buf[off + len..off + padded].fill(0);
    let body = 4 + addr_len + 4 + padded;
    let h = &mut buf[start..off];
    h[0..2].copy_from_slice(&DATA_INDICATION);
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE);
    h[8..20].copy_from_slice(&transaction);
    h[20..22].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    h[24] = 0;
    h[26..28].copy_from_slice(&(from.port() ^ 0x2112).to_be_bytes());
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE);
    key[4..].copy_from_slice(&transaction);
    match from.ip() {
        IpAddr::V4(ip) => {
            h[25] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                h[28 + i] = b ^ key[i];
            }
        }
        IpAddr::V6(ip) => {
            h[25] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                h[28 + i] = b ^ key[i];
            }
        }
    }
    let a = 24 + addr_len;
    h[a..a + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    h[a + 2..a + 4].copy_from_slice(&(len as u16).to_be_bytes());
    Some((start, 20 + body))
}

/// A transaction id for a Data indication: a random prefix chosen at
/// start and a counter (indications are not answered; they only need to
/// differ).
fn indication_transaction() -> [u8; 12] {
    static PREFIX: OnceLock<[u8; 4]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 4];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        b
    });
    let mut t = [0u8; 12];
    t[..4].copy_from_slice(prefix);
    t[4..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t
}

/// What one relayed packet needs besides its allocation: the registry
/// (relay to relay) and the counters.
pub(crate) struct FastPath<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) policy: &'a crate::peer::PeerPolicy,
    pub(crate) counters: &'a Counters,
}

impl FastPath<'_> {
    /// Relays `buf[off..off + len]` from `relay` to `peer` (whose channel
    /// or permission is established). The peer was checked when that was
    /// installed (the gate answers 403 otherwise); a peer on one of this
    /// server's relayed addresses gets it in the process, or nothing if no
    /// live allocation is there.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn to_peer(
        &self,
        relay: &Arc<FastRelay>,
        buf: &mut [u8],
        off: usize,
        len: usize,
        peer: SocketAddr,
        now: u64,
        gather: Option<Gather<'_>>,
    ) {
        // Port 0 is nobody (the kernel refuses it): dropped.
        if peer.port() == 0 {
            return;
        }
        // A peer on the address relays are advertised on: another live
        // allocation gets it in the process; any other port there is judged
        // by the policy again (a relay that was live when the permission was
        // made may have closed).
        let target = if self.registry.is_relay_ip(peer.ip()) {
            match self.registry.fast_relay(peer) {
                Some(t) => Some(t),
                None if self.policy.check(peer.ip()).is_ok() => None,
                None => return,
            }
        } else {
            None
        };
        if let Some(target) = target {
            // Only from an address the receiving client named: dropped
            // before either bucket or counter (see `accepts_relay`).
            if !target.accepts_relay(relay.relay_addr, now) {
                return;
            }
            if !relay.within_bandwidth(len) {
                return;
            }
            let handed = match self.to_client(&target, buf, off, len, relay.relay_addr, now, gather)
            {
                Some(_) => true,
                // The receiving side has no fast route (TCP client, no
                // permission yet): its crate-side queue decides.
                None => self
                    .registry
                    .hand_over(peer, &buf[off..off + len], relay.relay_addr),
            };
            if handed {
                self.count_to_peer(relay, len);
                Counters::add(&self.counters.bytes_relay_to_relay, len as u64);
            }
            return;
        }
        if !relay.within_bandwidth(len) {
            return; // over the cap: dropped, as a congested path would
        }
        if let Some(mut g) = gather
            && g.push(off, len, peer, len, relay, false)
        {
            return; // counted when sent
        }
        // A full socket buffer drops, as the network would.
        if let Ok(n) = relay.socket.try_send_to(&buf[off..off + len], peer) {
            self.count_to_peer(relay, n);
            Counters::add(&self.counters.fast_sends, 1);
        }
    }

    fn count_to_peer(&self, relay: &FastRelay, n: usize) {
        Counters::add(&self.counters.bytes_to_peers, n as u64);
        Counters::add(&self.counters.fast_packets_to_peers, 1);
        relay.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Sends `buf[off..off + len]`, received from `from`, to `relay`'s
    /// client as ChannelData (channel bound) or a Data indication
    /// (permission only). `Some(false)`: dropped, uncharged and uncounted
    /// when the crate would drop it too (no channel or permission for
    /// `from`, allocation closed); `None`: accepted but no fast route (a
    /// TCP/TLS client: the crate's path carries it); `Some(sent)`
    /// otherwise. A frame for `gather`'s socket waits in its outbox (sent
    /// and counted by [`Batch::flush`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn to_client(
        &self,
        relay: &Arc<FastRelay>,
        buf: &mut [u8],
        off: usize,
        len: usize,
        from: SocketAddr,
        now: u64,
        gather: Option<Gather<'_>>,
    ) -> Option<bool> {
        if relay.kill.is_cancelled() {
            return Some(false);
        }
        let Some(reply) = relay.reply.as_ref() else {
            return (!relay.accepts(from, now)).then_some(false);
        };
        let (start, frame_len) = if let Some(number) = relay.channel_of(from, now) {
            let start = off.checked_sub(4)?;
            buf[start..start + 2].copy_from_slice(&number.to_be_bytes());
            buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
            (start, 4 + len)
        } else if relay.permitted(from.ip(), now) {
            data_indication(buf, off, len, from, indication_transaction())?
        } else {
            return Some(false); // the crate would drop it: nobody pays
        };
        if !relay.within_bandwidth(len) {
            return Some(false);
        }
        if let Some(mut g) = gather
            && g.push(start, frame_len, relay.client, len, relay, true)
        {
            return Some(true); // counted when sent
        }
        let sent = reply
            .try_send_to(&buf[start..start + frame_len], relay.client)
            .is_ok();
        if sent {
            Counters::add(&self.counters.fast_sends, 1);
            Counters::add(&self.counters.bytes_from_peers, len as u64);
            Counters::add(&self.counters.fast_packets_from_peers, 1);
            relay.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_decodes_with_the_stun_crate() {
        use stun::message::Message;
        for from in ["198.51.100.7:4000", "[2001:db8::9]:5000"] {
            let from: SocketAddr = from.parse().expect("addr");
            let payload = b"hello";
            let mut buf = vec![0u8; BUF_LEN];
            buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
            let (start, n) =
                data_indication(&mut buf, HEADROOM, payload.len(), from, [7; 12]).expect("fits");
            let mut m = Message {
                raw: buf[start..start + n].to_vec(),
                ..Default::default()
            };
            m.decode().expect("decodes");
            assert_eq!(m.typ.method, stun::message::METHOD_DATA);
            let data = m.get(stun::attributes::ATTR_DATA).expect("data");
            assert_eq!(data, payload);
            let peer = m
                .get(stun::attributes::ATTR_XOR_PEER_ADDRESS)
                .expect("peer");
            assert_eq!(crate::gate::decode_xor_address(&peer, &[7; 12]), Some(from));
        }
    }

    #[tokio::test]
    async fn channels_and_permissions_expire_and_rebind() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let relay = FastRelay::new(
            socket,
            "127.0.0.1:1".parse().expect("addr"),
            CancellationToken::new(),
            Arc::default(),
            None,
            "127.0.0.1:2".parse().expect("addr"),
            None,
        );
        let a: SocketAddr = "198.51.100.1:1000".parse().expect("addr");
        let b: SocketAddr = "198.51.100.2:2000".parse().expect("addr");
        relay.bind(0x4000, a, 10);
        relay.permit(a.ip(), 5);
        assert_eq!(relay.channel_of(a, 9), Some(0x4000));
        assert_eq!(relay.channel_peer(0x4000, 9), Some(a));
        // IPv4-mapped forms are the same peer.
        let mapped: SocketAddr = "[::ffff:198.51.100.1]:1000".parse().expect("addr");
        assert_eq!(relay.channel_of(mapped, 9), Some(0x4000));
        assert!(relay.permitted(a.ip(), 4) && !relay.permitted(a.ip(), 5));
        assert_eq!(relay.channel_of(a, 10), None, "expired");
        // The number bound again to another peer: the old one has no channel.
        relay.bind(0x4000, b, 20);
        assert_eq!(relay.channel_of(a, 11), None);
        assert_eq!(relay.channel_of(b, 11), Some(0x4000));
        relay.sweep(12);
        assert!(!relay.permitted(a.ip(), 0), "swept");
        assert_eq!(relay.channel_of(b, 12), Some(0x4000));
    }

    #[tokio::test]
    async fn a_live_allocation_is_never_replaced_in_the_table() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let table = FastTable::new(Arc::clone(&udp)).expect("table");
        let client: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let relay = |port: u16| {
            Arc::new(FastRelay::new(
                Arc::clone(&udp),
                SocketAddr::from(([127, 0, 0, 1], port)),
                CancellationToken::new(),
                Arc::default(),
                None,
                client,
                None,
            ))
        };
        let (first, second) = (relay(1), relay(2));
        assert!(table.add(Arc::clone(&first)));
        assert!(!table.add(Arc::clone(&second)), "live: kept");
        let route = |t: &FastTable| t.clients.load().get(&client).map(|r| r.relay_addr);
        assert_eq!(route(&table), Some(first.relay_addr));
        first.kill.cancel();
        assert!(table.add(Arc::clone(&second)), "closed: replaced");
        assert_eq!(route(&table), Some(second.relay_addr));
    }

    /// What quinn-udp turns on is off again once a batch receiver is set
    /// up (IPv4 and IPv6 sockets).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn batch_sockets_keep_the_kernel_defaults() {
        use std::os::fd::AsRawFd;
        let get = |s: &UdpSocket, level: libc::c_int, name: libc::c_int| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid descriptor, a c_int and its size.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "getsockopt({level}, {name})");
            v
        };
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let s = UdpSocket::bind(addr).await.expect("bind");
            let _batch = Batch::new(&s, RELAY_BATCH).expect("batch");
            assert_eq!(get(&s, libc::SOL_UDP, libc::UDP_GRO), 0, "{addr} GRO");
            assert_eq!(
                get(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
                0,
                "{addr} SO_TIMESTAMPNS"
            );
            assert_eq!(
                get(&s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
                libc::IP_PMTUDISC_WANT,
                "{addr} IP_MTU_DISCOVER"
            );
            if addr.starts_with('[') {
                assert_eq!(
                    get(&s, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
                    0,
                    "{addr} IPV6_DONTFRAG"
                );
                assert_eq!(
                    get(&s, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
                    libc::IPV6_PMTUDISC_WANT,
                    "{addr} IPV6_MTU_DISCOVER"
                );
            }
        }
    }

    /// A frame the kernel refuses in the middle of a `sendmmsg` batch is
    /// not counted as sent; the ones after it are.
    #[tokio::test]
    async fn a_refused_frame_in_a_batch_is_not_counted() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        let to = client.local_addr().expect("addr");
        let relay = Arc::new(FastRelay::new(
            Arc::clone(&udp),
            "127.0.0.1:1".parse().expect("addr"),
            CancellationToken::new(),
            Arc::default(),
            None,
            to,
            Some(Arc::clone(&udp)),
        ));
        let mut batch = Batch::new(&udp, LISTENER_BATCH).expect("batch");
        // The middle frame goes to an IPv6 address, which an IPv4 socket
        // refuses.
        let bad: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        for (slot, to) in [to, bad, to].into_iter().enumerate() {
            batch.bufs[slot][HEADROOM..HEADROOM + 3].copy_from_slice(b"abc");
            batch.out.push(Out {
                slot,
                start: HEADROOM,
                len: 3,
                to,
                payload: 3,
                relay: Arc::clone(&relay),
                to_client: true,
            });
        }
        let counters = Counters::default();
        batch.flush(&counters);
        assert_eq!(counters.fast_packets_from_peers.load(Ordering::Relaxed), 2);
        assert_eq!(relay.bytes.load(Ordering::Relaxed), 6);
        let mut buf = [0u8; 16];
        for _ in 0..2 {
            let (n, _) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.recv_from(&mut buf),
            )
            .await
            .expect("in time")
            .expect("recv");
            assert_eq!(&buf[..n], b"abc");
        }
    }

    /// A batch whose outbox holds `frames` (destination, bytes), frame k
    /// filled with byte k, for `relay`'s client socket `udp`.
    fn outbox(udp: &Arc<UdpSocket>, frames: &[(SocketAddr, usize)]) -> Batch {
        let relay = Arc::new(FastRelay::new(
            Arc::clone(udp),
            "127.0.0.1:1".parse().expect("addr"),
            CancellationToken::new(),
            Arc::default(),
            None,
            "127.0.0.1:2".parse().expect("addr"),
            Some(Arc::clone(udp)),
        ));
        let mut batch = Batch::new(udp, LISTENER_BATCH).expect("batch");
        for (slot, &(to, len)) in frames.iter().enumerate() {
            batch.bufs[slot][HEADROOM..HEADROOM + len].fill(slot as u8);
            batch.out.push(Out {
                slot,
                start: HEADROOM,
                len,
                to,
                payload: len,
                relay: Arc::clone(&relay),
                to_client: true,
            });
        }
        batch
    }

    /// The next `n` datagrams on `sock`: (first byte, length).
    async fn datagrams(sock: &UdpSocket, n: usize) -> Vec<(u8, usize)> {
        let mut buf = vec![0u8; 65_536];
        let mut got = Vec::new();
        for _ in 0..n {
            let (len, _) =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
                    .await
                    .expect("in time")
                    .expect("recv");
            assert!(
                buf[..len].iter().all(|&b| b == buf[0]),
                "one frame per datagram"
            );
            got.push((buf[0], len));
        }
        got
    }

    /// Runs of equal-size frames to one client leave as one segmented
    /// datagram each (the last frame of a run may be shorter), and every
    /// client receives its frames as the original datagrams, in order.
    #[tokio::test]
    async fn runs_to_one_destination_leave_segmented_and_arrive_whole_in_order() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        let (at, bt) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        // a: 500 500 300 | 500 (a shorter frame ends a run); b: 500 500.
        let frames = [
            (at, 500),
            (bt, 500),
            (at, 500),
            (at, 300),
            (bt, 500),
            (at, 500),
        ];
        let batch = outbox(&udp, &frames);
        let gso = Gso::new();
        gso.probe(&batch.state);
        let (sent, sends) = send_all(&batch.bufs, &batch.out, &gso);
        assert_eq!(sent, 0b11_1111, "all sent");
        if gso.is_on() {
            assert_eq!(sends, 3, "a: two datagrams, b: one");
        } else {
            assert_eq!(sends, 6, "no GSO on this kernel: one datagram per frame");
        }
        assert_eq!(
            datagrams(&a, 4).await,
            [(0, 500), (2, 500), (3, 300), (5, 500)]
        );
        assert_eq!(datagrams(&b, 2).await, [(1, 500), (4, 500)]);
    }

    /// Empty frames (legal ChannelData) are never folded into a segmented
    /// datagram: each leaves as its own (empty) datagram.
    #[tokio::test]
    async fn empty_frames_are_not_segmented() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let at = a.local_addr().expect("a");
        let batch = outbox(&udp, &[(at, 0), (at, 0), (at, 40), (at, 0)]);
        let (sent, sends) = send_all(&batch.bufs, &batch.out, &GSO);
        assert_eq!((sent, sends), (0b1111, 4));
        let got: Vec<usize> = datagrams(&a, 4).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, [0, 0, 40, 0]);
    }

    /// A segmented datagram the path refuses (here: a socket without UDP
    /// checksums, which GSO cannot serve; in the field, a segment over the
    /// path MTU) is sent again one frame at a time, and that destination's
    /// frames then go one by one; other destinations keep segmentation.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_refused_segmented_datagram_goes_frame_by_frame_for_that_destination_only() {
        use std::os::fd::AsRawFd;
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let at = a.local_addr().expect("a");
        let batch = outbox(&udp, &[(at, 400); 5]);
        let gso = Gso::new();
        gso.probe(&batch.state);
        if !gso.is_on() {
            return; // nothing to refuse: covered by the test above
        }
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and option value.
        let r = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK");
        let (sent, sends) = send_all(&batch.bufs, &batch.out, &gso);
        assert_eq!((sent, sends), (0b1_1111, 5), "sent one by one");
        assert!(
            gso.refusing().is_some_and(|r| r.contains_key(&at.ip())),
            "that destination is remembered"
        );
        assert_eq!(
            datagrams(&a, 5).await,
            [(0, 400), (1, 400), (2, 400), (3, 400), (4, 400)]
        );
        // The next batch to it goes one by one at once (no refused try).
        let (sent, sends) = send_all(&batch.bufs, &batch.out, &gso);
        assert_eq!((sent, sends), (0b1_1111, 5));
        assert_eq!(datagrams(&a, 5).await.len(), 5);
        // Another destination (another IP, a healthy socket) is segmented.
        let other = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let b = UdpSocket::bind("127.0.0.2:0").await.expect("b");
        let batch = outbox(&other, &[(b.local_addr().expect("b"), 400); 5]);
        let (sent, sends) = send_all(&batch.bufs, &batch.out, &gso);
        assert_eq!((sent, sends), (0b1_1111, 1), "one segmented datagram");
        assert_eq!(datagrams(&b, 5).await.len(), 5);
    }

    /// A run the kernel refuses for itself, not for segmentation (port 0:
    /// nobody), is not taken as the path refusing GSO: nothing is
    /// remembered, so nobody can switch segmentation off for others.
    #[tokio::test]
    async fn a_run_to_port_zero_does_not_turn_segmentation_off() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let to: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let batch = outbox(&udp, &[(to, 1), (to, 1), (to, 1)]);
        let gso = Gso::new();
        gso.probe(&batch.state);
        let (sent, _) = send_all(&batch.bufs, &batch.out, &gso);
        assert_eq!(sent, 0, "nothing reaches port 0");
        assert!(gso.refusing().is_none(), "no destination remembered");
    }

    /// Frames of an allocation that closed before its batch was flushed
    /// are not sent and not counted.
    #[tokio::test]
    async fn a_closed_allocation_s_frames_are_not_flushed() {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let at = a.local_addr().expect("a");
        let mut batch = outbox(&udp, &[(at, 10), (at, 10)]);
        batch.out[0].relay.kill.cancel();
        let counters = Counters::default();
        batch.flush(&counters);
        assert_eq!(counters.fast_packets_from_peers.load(Ordering::Relaxed), 0);
        assert_eq!(counters.fast_sends.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 64];
        let got =
            tokio::time::timeout(std::time::Duration::from_millis(200), a.recv_from(&mut buf))
                .await;
        assert!(got.is_err(), "nothing sent");
    }

    #[test]
    fn send_indication_parses() {
        use stun::message::{Message, MessageType};
        let peer: SocketAddr = "203.0.113.5:9".parse().expect("addr");
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(
                stun::message::METHOD_SEND,
                stun::message::CLASS_INDICATION,
            )),
        ])
        .expect("build");
        let x = stun::xoraddr::XorMappedAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        x.add_to_as(&mut m, stun::attributes::ATTR_XOR_PEER_ADDRESS)
            .expect("peer");
        m.add(stun::attributes::ATTR_DATA, b"abcde");
        let (p, off, len) = parse_send_indication(&m.raw).expect("parses");
        assert_eq!(p, peer);
        assert_eq!(&m.raw[off..off + len], b"abcde");
        // Truncated: refused, not read past the end.
        assert!(parse_send_indication(&m.raw[..m.raw.len() - 2]).is_none());
    }
}
