//! Owns relay sockets: the allocation registry (quotas per session, per
//! client network and in total; closing relays whose session is gone or whose
//! TCP connection ended) and the relay `Conn` that refuses forbidden peers
//! in both directions, plus the `RelayAddressGenerator` that makes them.
//!
//! Relay to relay: a peer that is one of this server's own live relay
//! addresses (two clients that both relay) is allowed whatever its class,
//! and its packets are handed to that allocation inside the process
//! instead of through the network (which may not hairpin a NAT's public
//! address). The server's other own addresses and ports stay refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

use crate::creds::parse_username;
use crate::fast::{Batch, FastPath, FastRelay, FastTable};
use crate::peer::{PeerPolicy, PeerRefusal, canonical};
use crate::stats::SessionBytes;

/// A packet handed from one allocation to another inside the process:
/// payload and the sender's relayed address.
pub(crate) type LocalPacket = (Vec<u8>, SocketAddr);

/// Packets one allocation may have waiting from other allocations (more
/// are dropped, as a full socket buffer would).
const LOCAL_QUEUE: usize = 512;

/// Who is asking for the allocation being made: set by the listener gate
/// for each Allocate request, read by the relay generator of that listener.
#[derive(Debug, Clone)]
pub(crate) struct RequestCtx {
    pub(crate) listener: usize,
    pub(crate) client: SocketAddr,
    pub(crate) username: String,
    pub(crate) transaction: [u8; 12],
    /// Set by the generator when it refused for quota (the gate turns the
    /// crate's 508 answer into 486 Allocation Quota Reached).
    pub(crate) quota_refused: bool,
}

/// Shared per-listener slot for the current Allocate request.
pub(crate) type CtxSlot = Arc<Mutex<Option<RequestCtx>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocation limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Per session id, whatever credential (expiry) it comes with: every
    /// join mints a new username for the same session.
    pub(crate) per_session: usize,
    /// Per IPv4 address or IPv6 /64.
    pub(crate) per_ip: usize,
    pub(crate) total: usize,
}

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaRefusal {
    PerSession,
    PerIp,
    Total,
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaRefusal::PerSession => "allocations per session",
            QuotaRefusal::PerIp => "allocations per client address (IPv6: per /64)",
            QuotaRefusal::Total => "allocations in total",
        })
    }
}

#[derive(Debug)]
struct Entry {
    username: String,
    session: String,
    client: SocketAddr,
    listener: usize,
    kill: CancellationToken,
    /// Its relayed address (canonical), once its socket is bound.
    relay: Option<SocketAddr>,
    /// Payload bytes it relayed, both directions.
    bytes: Arc<AtomicU64>,
    /// The fast-path table of its UDP listener, which lists it until it
    /// closes.
    table: Option<Arc<FastTable>>,
    /// The crate answered the Allocate with this relay: an allocation,
    /// not a relay socket opened only to find a free port (EVEN-PORT).
    granted: bool,
}

/// Where packets for one live relayed address go inside the process.
#[derive(Debug)]
struct LocalRelay {
    tx: mpsc::Sender<LocalPacket>,
    kill: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_session: HashMap<String, usize>,
    per_ip: HashMap<IpAddr, usize>,
    relays: HashMap<SocketAddr, LocalRelay>,
    /// Bytes relayed by the closed allocations of sessions that still hold
    /// one (added to the histogram when their last one closes).
    session_bytes: HashMap<String, u64>,
    ended: SessionBytes,
}

/// Live allocations, for quotas, for closing them from outside and for
/// relay-to-relay delivery.
#[derive(Debug)]
pub(crate) struct Registry {
    limits: Limits,
    /// The addresses advertised in XOR-RELAYED-ADDRESS (canonical): only
    /// peers on them are looked up among the live relays.
    relay_ips: Vec<IpAddr>,
    inner: Mutex<Inner>,
    /// Live relayed address (canonical) -> its allocation, for the fast
    /// path's relay to relay (read without a lock).
    fast: ArcSwap<HashMap<SocketAddr, Arc<FastRelay>>>,
}

/// Decides whether a relay may exchange packets with `peer`: one of this
/// server's own live relayed addresses is allowed whatever its class;
/// everything else is up to the [`PeerPolicy`] (which refuses the server's
/// own addresses).
pub(crate) fn check_peer(
    policy: &PeerPolicy,
    registry: &Registry,
    peer: SocketAddr,
) -> Result<(), PeerRefusal> {
    if registry.is_live_relay(peer) {
        return Ok(());
    }
    policy.check(peer.ip())
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Registry {
    /// A registry whose relays are advertised on `relay_ips`.
    pub(crate) fn new(limits: Limits, relay_ips: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            relay_ips: relay_ips.into_iter().map(canonical).collect(),
            inner: Mutex::new(Inner::default()),
            fast: ArcSwap::default(),
        })
    }

    fn canonical_relay(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let ip = canonical(addr.ip());
        self.relay_ips
            .contains(&ip)
            .then_some(SocketAddr::new(ip, addr.port()))
    }

    /// Records the relayed address of allocation `id`; returns the queue
    /// that other allocations deliver to it through.
    fn bind_relay(&self, id: u64, relay: SocketAddr) -> mpsc::Receiver<LocalPacket> {
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let relay = SocketAddr::new(canonical(relay.ip()), relay.port());
        let mut g = lock(&self.inner);
        if let Some(e) = g.entries.get_mut(&id) {
            e.relay = Some(relay);
            let kill = e.kill.clone();
            g.relays.insert(relay, LocalRelay { tx, kill });
        }
        rx
    }

    /// True when `ip` is one of the addresses relays are advertised on.
    pub(crate) fn is_relay_ip(&self, ip: IpAddr) -> bool {
        self.relay_ips.contains(&canonical(ip))
    }

    /// Makes allocation `id` (`relay`) reachable by the fast path: from its
    /// client through `table` (UDP listeners) and from other allocations
    /// (relay to relay), until it is released.
    fn add_fast(&self, id: u64, relay: Arc<FastRelay>, table: Option<Arc<FastTable>>) {
        if let Some(t) = &table
            && !t.add(Arc::clone(&relay))
        {
            // Cannot happen while the crate keeps one allocation per
            // 5-tuple; the live one keeps its route.
            tracing::warn!(client = %relay.client, relay = %relay.relay_addr,
                "TURN allocation not on the fast path: its client already has one");
        }
        if let Some(e) = lock(&self.inner).entries.get_mut(&id) {
            e.table = table;
        }
        let addr = SocketAddr::new(canonical(relay.relay_addr.ip()), relay.relay_addr.port());
        self.fast.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(addr, Arc::clone(&relay));
            m
        });
    }

    /// The live allocation relayed at `addr`, without a lock.
    pub(crate) fn fast_relay(&self, addr: SocketAddr) -> Option<Arc<FastRelay>> {
        let addr = self.canonical_relay(addr)?;
        self.fast
            .load()
            .get(&addr)
            .filter(|r| !r.kill.is_cancelled())
            .cloned()
    }

    /// Queues `payload` from `from` for the live allocation at `to` (its
    /// crate-side read loop takes it); false when there is none or its
    /// queue is full.
    pub(crate) fn hand_over(&self, to: SocketAddr, payload: &[u8], from: SocketAddr) -> bool {
        self.local_relay(to)
            .is_some_and(|tx| tx.try_send((payload.to_vec(), from)).is_ok())
    }

    /// True when `addr` is the relayed address of a live allocation here.
    pub(crate) fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.local_relay(addr).is_some()
    }

    /// The in-process queue of the live allocation relayed at `addr`.
    /// Costs one comparison per advertised address when `addr` is not on
    /// one of them.
    fn local_relay(&self, addr: SocketAddr) -> Option<mpsc::Sender<LocalPacket>> {
        let addr = self.canonical_relay(addr)?;
        let g = lock(&self.inner);
        g.relays
            .get(&addr)
            .filter(|r| !r.kill.is_cancelled())
            .map(|r| r.tx.clone())
    }

    /// Counts one more allocation for `ctx`, or says which quota is full.
    pub(crate) fn reserve(self: &Arc<Self>, ctx: &RequestCtx) -> Result<Lease, QuotaRefusal> {
        let mut g = lock(&self.inner);
        if g.entries.len() >= self.limits.total {
            return Err(QuotaRefusal::Total);
        }
        let ip = crate::peer::client_network(ctx.client.ip());
        if g.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip {
            return Err(QuotaRefusal::PerIp);
        }
        // Not a REST username (cannot happen once authenticated): the
        // whole name stands for the session.
        let session = parse_username(&ctx.username)
            .map_or(ctx.username.as_str(), |(_, s)| s)
            .to_owned();
        if g.per_session.get(&session).copied().unwrap_or(0) >= self.limits.per_session {
            return Err(QuotaRefusal::PerSession);
        }
        g.next_id += 1;
        let id = g.next_id;
        let kill = CancellationToken::new();
        let bytes = Arc::new(AtomicU64::new(0));
        g.entries.insert(
            id,
            Entry {
                username: ctx.username.clone(),
                session: session.clone(),
                client: ctx.client,
                listener: ctx.listener,
                kill: kill.clone(),
                relay: None,
                bytes: Arc::clone(&bytes),
                table: None,
                granted: false,
            },
        );
        *g.per_ip.entry(ip).or_insert(0) += 1;
        *g.per_session.entry(session).or_insert(0) += 1;
        Ok(Lease {
            id,
            registry: Arc::clone(self),
            kill,
            bytes,
            released: AtomicBool::new(false),
        })
    }

    /// The crate granted an Allocate with relayed address `relay`.
    pub(crate) fn granted(&self, relay: SocketAddr) {
        let relay = SocketAddr::new(canonical(relay.ip()), relay.port());
        let mut g = lock(&self.inner);
        if let Some(e) = g.entries.values_mut().find(|e| e.relay == Some(relay)) {
            e.granted = true;
        }
    }

    fn release(&self, id: u64) {
        let mut g = lock(&self.inner);
        if let Some(e) = g.entries.remove(&id) {
            e.kill.cancel();
            if let (Some(t), Some(relay)) = (&e.table, e.relay) {
                t.remove(e.client, relay);
            }
            if let Some(relay) = e.relay {
                g.relays.remove(&relay);
                self.fast.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    m.remove(&relay);
                    m
                });
            }
            let ip = crate::peer::client_network(e.client.ip());
            dec(&mut g.per_ip, &ip);
            dec(&mut g.per_session, &e.session);
            let pending = g.session_bytes.remove(&e.session);
            let total = pending.unwrap_or(0) + e.bytes.load(Ordering::Relaxed);
            if g.per_session.contains_key(&e.session) {
                g.session_bytes.insert(e.session, total);
            } else if e.granted || pending.is_some() {
                // A session that never had an allocation granted (only
                // EVEN-PORT's throwaway sockets, or failed ones) is not one
                // that relayed.
                g.ended.observe(total);
            }
        }
    }

    /// Relayed bytes of the sessions whose last allocation closed.
    pub(crate) fn session_bytes(&self) -> SessionBytes {
        lock(&self.inner).ended
    }

    /// Closes the relays of every allocation whose session is no longer
    /// honoured; returns how many.
    pub(crate) fn close_unhonoured(&self, honoured: impl Fn(&str) -> bool) -> usize {
        let g = lock(&self.inner);
        let mut n = 0;
        for e in g.entries.values() {
            if !e.kill.is_cancelled() && !honoured(&e.session) {
                tracing::info!(
                    client = %e.client,
                    username = %e.username,
                    "closing TURN allocation: its signaling session is gone"
                );
                e.kill.cancel();
                n += 1;
            }
        }
        n
    }

    /// True when `client` of listener `listener` holds an allocation.
    pub(crate) fn has_client(&self, listener: usize, client: SocketAddr) -> bool {
        lock(&self.inner)
            .entries
            .values()
            .any(|e| e.listener == listener && e.client == client)
    }

    /// Closes the relays of the allocations a client holds on a listener
    /// (its TCP connection ended).
    pub(crate) fn close_client(&self, listener: usize, client: SocketAddr) {
        let g = lock(&self.inner);
        for e in g.entries.values() {
            if e.listener == listener && e.client == client {
                tracing::debug!(%client, "closing TURN allocation: its TCP connection ended");
                e.kill.cancel();
            }
        }
    }

    #[cfg(test)]
    fn relays_is_empty(&self) -> bool {
        lock(&self.inner).relays.is_empty()
    }

    /// Number of live allocations.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }
}

/// One counted allocation; uncounted when closed or dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    id: u64,
    registry: Arc<Registry>,
    kill: CancellationToken,
    /// Payload bytes relayed (the registry adds them to the session's
    /// total when the allocation closes).
    bytes: Arc<AtomicU64>,
    released: AtomicBool,
}

impl Lease {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.registry.release(self.id);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

fn other(msg: impl Into<String>) -> webrtc_util::Error {
    webrtc_util::Error::Other(msg.into())
}

/// A token bucket over relayed bytes (both directions of one allocation),
/// kept as one atomic "theoretical arrival time" (GCRA): each byte costs
/// 1/rate seconds, and a packet passes while that time runs at most one
/// burst ahead of now. No lock: the fast path takes it from any worker.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    /// Nanoseconds one byte costs (scaled by 2^10 for precision).
    cost: u64,
    /// How far ahead of now the arrival time may run (ns).
    burst: u64,
    start: std::time::Instant,
    /// Theoretical arrival time, ns since `start`.
    tat: AtomicU64,
}

/// What a relayed packet costs the bandwidth bucket besides its payload:
/// its IPv4 and UDP headers and a ChannelData header. Empty packets are not
/// free: a packet rate is capped too.
pub(crate) const PACKET_OVERHEAD: usize = 36;

/// Fixed-point scale of [`Bandwidth::cost`].
const COST_SCALE: u64 = 1 << 10;

impl Bandwidth {
    /// `rate` bytes per second, with one second's worth (at least 16 KiB)
    /// of burst.
    pub(crate) fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        let burst_bytes = rate.max(16 * 1024);
        let cost = (1_000_000_000 * COST_SCALE) / rate;
        Self {
            cost,
            burst: (u128::from(burst_bytes) * u128::from(cost) / u128::from(COST_SCALE))
                .try_into()
                .unwrap_or(u64::MAX),
            start: std::time::Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a packet of `n` payload bytes (plus [`PACKET_OVERHEAD`]) from
    /// the bucket; false when it has too few.
    pub(crate) fn take(&self, n: usize) -> bool {
        self.take_at(n + PACKET_OVERHEAD, std::time::Instant::now())
    }

    /// [`take`](Self::take) at a given time (a moment before the last one
    /// refills nothing).
    fn take_at(&self, n: usize, now: std::time::Instant) -> bool {
        let now =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let need = (n as u64).saturating_mul(self.cost) / COST_SCALE;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(need);
            if next - now > self.burst {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

/// A relay socket that only talks to allowed peers (and, with a bandwidth
/// cap, drops what exceeds it): the crate's side of an allocation. Packets
/// the fast path can carry (see [`crate::fast`]) never reach the crate.
pub(crate) struct FilteredRelayConn {
    fast: Arc<FastRelay>,
    policy: Arc<PeerPolicy>,
    lease: Lease,
    counters: Arc<crate::stats::Counters>,
    /// Packets from other allocations of this server (relay to relay), and
    /// the batch receiver of the relay socket: only the crate's one read
    /// loop per allocation takes it.
    io: tokio::sync::Mutex<(mpsc::Receiver<LocalPacket>, Batch)>,
}

impl FilteredRelayConn {
    fn relayed(&self, total: &AtomicU64, n: usize) {
        crate::stats::Counters::add(total, n as u64);
        self.lease.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Conn for FilteredRelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(other("relay sockets are not connected"))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(other("use recv_from on relay sockets"))
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut io = self.io.lock().await;
        let (local, batch) = &mut *io;
        let mut batches = 0usize;
        let path = FastPath {
            registry: &self.lease.registry,
            policy: &self.policy,
            counters: &self.counters,
        };
        loop {
            if self.lease.kill.is_cancelled() {
                // Closed: what is left of the batch is dropped, not handed
                // to the crate (which would send it to the client).
                batch.discard();
                return Err(webrtc_util::Error::ErrAlreadyClosed);
            }
            let now = crate::fast::now_secs();
            while let Some((i, off, n, from)) = batch.next() {
                if self.lease.kill.is_cancelled() {
                    batch.discard();
                    return Err(webrtc_util::Error::ErrAlreadyClosed);
                }
                // A live relay of this server never reaches another over
                // the network (they are handed over in the process): a
                // packet claiming to come from one is spoofed (say, behind
                // a 1:1 NAT whose public address is not a local one).
                if check_peer(&self.policy, &self.lease.registry, from).is_err()
                    || self.lease.registry.is_live_relay(from)
                {
                    tracing::debug!(relay = %self.fast.relay_addr, peer = %from,
                        "dropped a packet from a forbidden peer");
                    continue;
                }
                let single = batch.single(i);
                let (b, out) = batch.parts(i);
                let gather = single.then_some(crate::fast::Gather { out, slot: i });
                if path
                    .to_client(&self.fast, b, off, n, from, now, gather)
                    .is_some()
                {
                    // Relayed (its frame waits in the outbox), or dropped
                    // without charging the bucket (no channel or
                    // permission: anyone could send those).
                    continue;
                }
                // A TCP/TLS client's accepted packet: the crate's path.
                batch.flush(&self.counters);
                if self.fast.within_bandwidth(n) {
                    let b = batch.buf(i);
                    let n = n.min(buf.len());
                    buf[..n].copy_from_slice(&b[off..off + n]);
                    self.relayed(&self.counters.bytes_from_peers, n);
                    return Ok((n, from));
                }
            }
            // The batch's frames for the client leave together.
            batch.flush(&self.counters);
            tokio::select! {
                biased;
                _ = self.lease.kill.cancelled() => {
                    return Err(webrtc_util::Error::ErrAlreadyClosed);
                }
                Some((pkt, from)) = local.recv() => {
                    // Checked by the sending allocation (it aimed at us);
                    // unless our client named that relayed address (a
                    // channel, or a permission naming it exactly) it is
                    // dropped here, uncharged.
                    let n = pkt.len().min(buf.len());
                    buf[..n].copy_from_slice(&pkt[..n]);
                    if self.fast.accepts_relay(from, crate::fast::now_secs())
                        && self.fast.within_bandwidth(n)
                    {
                        self.relayed(&self.counters.bytes_from_peers, n);
                        return Ok((n, from));
                    }
                }
                r = batch.fill(&self.fast.socket) => r?,
            }
            batches += 1;
            if batches.is_multiple_of(crate::fast::YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(other("use send_to on relay sockets"))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.lease.kill.is_cancelled() {
            return Err(webrtc_util::Error::ErrAlreadyClosed);
        }
        let relay_addr = self.fast.relay_addr;
        if let Some(tx) = self.lease.registry.local_relay(target) {
            // Relay to relay: handed over in the process (only if the
            // receiving client named this relay: see `accepts_relay`,
            // checked before anything is charged); a full queue drops, as
            // a congested path would.
            let named = self
                .lease
                .registry
                .fast_relay(target)
                .is_none_or(|t| t.accepts_relay(relay_addr, crate::fast::now_secs()));
            if named
                && self.fast.within_bandwidth(buf.len())
                && tx.try_send((buf.to_vec(), relay_addr)).is_ok()
            {
                self.relayed(&self.counters.bytes_to_peers, buf.len());
                crate::stats::Counters::add(&self.counters.bytes_relay_to_relay, buf.len() as u64);
            }
            return Ok(buf.len());
        }
        if let Err(why) = self.policy.check(target.ip()) {
            tracing::debug!(relay = %relay_addr, peer = %target, reason = %why,
                "refused to relay to a forbidden peer");
            return Err(other(format!("peer {target} refused: {why}")));
        }
        if !self.fast.within_bandwidth(buf.len()) {
            return Ok(buf.len()); // over the cap: dropped, as a congested path would
        }
        let sent = self.fast.socket.send_to(buf, target).await?;
        self.relayed(&self.counters.bytes_to_peers, sent);
        Ok(sent)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.fast.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.lease.release();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Makes filtered relay sockets for one listener, counting them against
/// the quotas of the client asking.
pub(crate) struct FilteredRelayGenerator {
    /// IPv4 relays: (address relay sockets bind to, address advertised in
    /// XOR-RELAYED-ADDRESS); `None` when IPv4 is not served.
    pub(crate) v4: Option<(IpAddr, IpAddr)>,
    /// IPv6 relays, likewise.
    pub(crate) v6: Option<(IpAddr, IpAddr)>,
    pub(crate) ports: (u16, u16),
    pub(crate) policy: Arc<PeerPolicy>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) ctx: CtxSlot,
    /// Bytes per second one allocation may relay (both directions).
    pub(crate) bandwidth: Option<u64>,
    pub(crate) counters: Arc<crate::stats::Counters>,
    /// The fast-path table of this listener (UDP listeners only).
    pub(crate) fast: Option<Arc<FastTable>>,
}

/// Receive buffer asked for on relay sockets (the kernel caps it at
/// net.core.rmem_max): absorbs bursts while the relay task is not running.
pub(crate) const RELAY_RCVBUF: usize = 256 * 1024;
/// Receive buffer asked for on the UDP listening socket.
pub(crate) const LISTENER_RCVBUF: usize = 2 * 1024 * 1024;

/// Binds a non-blocking UDP socket with the given receive buffer size.
pub(crate) fn bind_udp(addr: SocketAddr, rcvbuf: usize) -> std::io::Result<UdpSocket> {
    bind_udp_with(addr, rcvbuf, false)
}

/// [`bind_udp`], with SO_REUSEPORT when `reuse_port` (several sockets of
/// this process on one port, the kernel spreading clients across them).
pub(crate) fn bind_udp_with(
    addr: SocketAddr,
    rcvbuf: usize,
    reuse_port: bool,
) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(rcvbuf);
    let _ = socket.set_send_buffer_size(rcvbuf);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn random_u16() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    // On failure b stays zero: the range start is tried first, then others.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

impl FilteredRelayGenerator {
    fn bind(&self, ip: IpAddr, requested_port: u16) -> std::io::Result<UdpSocket> {
        if requested_port != 0 {
            return bind_udp(SocketAddr::new(ip, requested_port), RELAY_RCVBUF);
        }
        let (lo, hi) = self.ports;
        if (lo, hi) == (0, 0) {
            return bind_udp(SocketAddr::new(ip, 0), RELAY_RCVBUF);
        }
        let span = u32::from(hi - lo) + 1;
        let start = u32::from(random_u16()) % span;
        let tries = span.min(64);
        let mut last = None;
        for i in 0..tries {
            // Random start, then consecutive ports: quick even in a busy range.
            let port = lo as u32 + (start + i) % span;
            match bind_udp(SocketAddr::new(ip, port as u16), RELAY_RCVBUF) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("empty relay port range")))
    }
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for FilteredRelayGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        // Set by the gate for the verified Allocate being handled, cleared
        // when the crate answers it (EVEN-PORT makes the crate call this
        // more than once for one request).
        let ctx = lock(&self.ctx)
            .clone()
            .ok_or_else(|| turn::Error::Other("allocation without a request context".into()))?;
        let lease = match self.registry.reserve(&ctx) {
            Ok(l) => l,
            Err(why) => {
                crate::stats::Counters::add(&self.counters.refused_quota, 1);
                static LOG: crate::stats::LogBudget = crate::stats::LogBudget::new();
                if let Some(suppressed) = LOG.take() {
                    tracing::warn!(client = %ctx.client, username = %ctx.username, quota = %why,
                        suppressed, "TURN allocation refused: quota reached");
                }
                // For the gate, which turns the crate's 508 into 486.
                if let Some(c) = lock(&self.ctx).as_mut() {
                    c.quota_refused = true;
                }
                return Err(turn::Error::Other(format!("quota reached: {why}")));
            }
        };
        let Some((bind_ip, relay_ip)) = (if use_ipv4 { self.v4 } else { self.v6 }) else {
            tracing::info!(client = %ctx.client, ipv6 = !use_ipv4,
                "TURN allocation refused: address family not served");
            return Err(turn::Error::Other(
                "requested address family is not served".into(),
            ));
        };
        let socket = self.bind(bind_ip, requested_port).map_err(|e| {
            tracing::warn!(error = %e, "TURN allocation failed: no relay port");
            turn::Error::Other(format!("cannot open a relay socket: {e}"))
        })?;
        let port = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?
            .port();
        let relay_addr = SocketAddr::new(relay_ip, port);
        let batch = Batch::new(&socket, crate::fast::RELAY_BATCH)
            .map_err(|e| turn::Error::Other(format!("cannot set up a relay socket: {e}")))?;
        let socket = Arc::new(socket);
        let local = self.registry.bind_relay(lease.id, relay_addr);
        let fast = Arc::new(FastRelay::new(
            socket,
            relay_addr,
            lease.kill.clone(),
            Arc::clone(&lease.bytes),
            self.bandwidth.map(Bandwidth::new),
            ctx.client,
            self.fast
                .as_ref()
                .and_then(|t| t.udp.as_ref())
                .map(|u| Arc::clone(&u.socket)),
        ));
        self.registry
            .add_fast(lease.id, Arc::clone(&fast), self.fast.clone());
        tracing::debug!(client = %ctx.client, %relay_addr, "TURN relay socket opened");
        let conn = FilteredRelayConn {
            fast,
            policy: Arc::clone(&self.policy),
            lease,
            counters: Arc::clone(&self.counters),
            io: tokio::sync::Mutex::new((local, batch)),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(user: &str, client: &str) -> RequestCtx {
        RequestCtx {
            listener: 0,
            client: client.parse().expect("addr"),
            username: user.into(),
            transaction: [0; 12],
            quota_refused: false,
        }
    }

    /// A relay conn as the generator makes it, for a TCP client (no fast
    /// route: what it accepts goes to the crate), holding a permission for
    /// 127.0.0.5; its relay is advertised on 127.0.0.1.
    fn relay_conn(r: &Arc<Registry>) -> (FilteredRelayConn, SocketAddr) {
        let lease = r.reserve(&ctx("1:a", "127.0.0.1:1")).expect("lease");
        let socket = bind_udp("127.0.0.1:0".parse().expect("addr"), RELAY_RCVBUF).expect("bind");
        let relay_addr = socket.local_addr().expect("addr");
        let batch = Batch::new(&socket, crate::fast::RELAY_BATCH).expect("batch");
        let local = r.bind_relay(lease.id, relay_addr);
        let fast = Arc::new(FastRelay::new(
            Arc::new(socket),
            relay_addr,
            lease.kill.clone(),
            Arc::clone(&lease.bytes),
            None,
            "127.0.0.1:1".parse().expect("addr"),
            None,
        ));
        fast.permit(
            "127.0.0.5".parse().expect("ip"),
            crate::fast::now_secs() + 100,
        );
        let conn = FilteredRelayConn {
            fast,
            policy: Arc::new(PeerPolicy {
                allow_loopback: true,
                ..PeerPolicy::default()
            }),
            lease,
            counters: Arc::default(),
            io: tokio::sync::Mutex::new((local, batch)),
        };
        (conn, relay_addr)
    }

    /// Once its allocation is killed, a relay hands the crate nothing more
    /// (the crate would send it to the client without looking at the kill):
    /// neither packets other allocations queued for it nor the rest of a
    /// batch already read.
    #[tokio::test]
    async fn a_killed_relay_hands_nothing_more_to_the_crate() {
        let r = Registry::new(
            Limits {
                per_session: 99,
                per_ip: 99,
                total: 99,
            },
            vec!["127.0.0.1".parse().expect("ip")],
        );
        let from: SocketAddr = "127.0.0.5:7".parse().expect("addr");
        let mut buf = [0u8; 64];
        // Queued in process (relay to relay); repeated, as an unbiased
        // select would pick the queue half of the time.
        for _ in 0..16 {
            let (conn, relay_addr) = relay_conn(&r);
            assert!(r.hand_over(relay_addr, b"queued", from));
            conn.lease.kill.cancel();
            let got = conn.recv_from(&mut buf).await;
            assert!(
                matches!(got, Err(webrtc_util::Error::ErrAlreadyClosed)),
                "killed relay handed over {got:?}"
            );
        }
        // The rest of a batch: three packets read at once, the first handed
        // to the crate before the kill.
        let (conn, relay_addr) = relay_conn(&r);
        let peer = UdpSocket::bind("127.0.0.5:0").await.expect("peer");
        for i in 0..3u8 {
            peer.send_to(&[i], relay_addr).await.expect("send");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (n, _) = conn.recv_from(&mut buf).await.expect("first");
        assert_eq!(&buf[..n], &[0]);
        conn.lease.kill.cancel();
        let got = conn.recv_from(&mut buf).await;
        assert!(
            matches!(got, Err(webrtc_util::Error::ErrAlreadyClosed)),
            "killed relay handed over {got:?}"
        );
    }

    #[test]
    fn quotas_count_and_release() {
        let r = Registry::new(
            Limits {
                per_session: 2,
                per_ip: 3,
                total: 4,
            },
            Vec::new(),
        );
        let a1 = r.reserve(&ctx("1:a", "1.1.1.1:1")).expect("a1");
        let _a2 = r.reserve(&ctx("1:a", "1.1.1.1:2")).expect("a2");
        // A new credential (another expiry) of the same session counts too.
        assert_eq!(
            r.reserve(&ctx("2:a", "2.2.2.2:1")).err(),
            Some(QuotaRefusal::PerSession)
        );
        let _b1 = r.reserve(&ctx("1:b", "1.1.1.1:3")).expect("b1");
        assert_eq!(
            r.reserve(&ctx("1:c", "[::ffff:1.1.1.1]:4")).err(),
            Some(QuotaRefusal::PerIp)
        );
        let _c1 = r.reserve(&ctx("1:c", "3.3.3.3:1")).expect("c1");
        assert_eq!(
            r.reserve(&ctx("1:d", "4.4.4.4:1")).err(),
            Some(QuotaRefusal::Total)
        );
        drop(a1);
        assert_eq!(r.len(), 3);
        let _a3 = r
            .reserve(&ctx("1:a", "5.5.5.5:1"))
            .expect("a3 after release");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let r = Registry::new(
            Limits {
                per_session: 9,
                per_ip: 2,
                total: 9,
            },
            Vec::new(),
        );
        let _a = r.reserve(&ctx("1:a", "[2001:db8:1:2::1]:1")).expect("a");
        let _b = r.reserve(&ctx("1:b", "[2001:db8:1:2::2]:1")).expect("b");
        assert_eq!(
            r.reserve(&ctx("1:c", "[2001:db8:1:2:ffff::3]:1")).err(),
            Some(QuotaRefusal::PerIp)
        );
        let _d = r
            .reserve(&ctx("1:d", "[2001:db8:1:3::1]:1"))
            .expect("another /64");
    }

    #[test]
    fn own_public_address_allowed_only_on_live_relay_ports() {
        let own: IpAddr = "8.8.8.8".parse().expect("ip");
        let policy = PeerPolicy {
            own: vec![own],
            ..PeerPolicy::default()
        };
        let r = Registry::new(
            Limits {
                per_session: 9,
                per_ip: 9,
                total: 9,
            },
            vec![own],
        );
        let relay: SocketAddr = "8.8.8.8:50000".parse().expect("addr");
        let a = r.reserve(&ctx("1:a", "1.1.1.1:1")).expect("a");
        let _rx = r.bind_relay(a.id, relay);
        assert_eq!(check_peer(&policy, &r, relay), Ok(()));
        let mapped: SocketAddr = "[::ffff:8.8.8.8]:50000".parse().expect("addr");
        assert_eq!(check_peer(&policy, &r, mapped), Ok(()));
        let service: SocketAddr = "8.8.8.8:3478".parse().expect("addr");
        assert_eq!(
            check_peer(&policy, &r, service),
            Err(PeerRefusal::OwnAddress)
        );
        // Closed (by the reaper, then released): refused again.
        r.close_unhonoured(|_| false);
        assert_eq!(check_peer(&policy, &r, relay), Err(PeerRefusal::OwnAddress));
        drop(a);
        assert_eq!(check_peer(&policy, &r, relay), Err(PeerRefusal::OwnAddress));
        assert!(r.relays_is_empty());
    }

    #[test]
    fn bandwidth_bucket() {
        let b = Bandwidth::new(1000);
        let t0 = b.start;
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        // 16 KiB burst at least, then nothing.
        assert!(b.take_at(16 * 1024, at(0)));
        assert!(!b.take_at(100, at(0)));
        // 1000 B/s: 120 ms refill 120 bytes.
        assert!(b.take_at(100, at(120)));
        assert!(!b.take_at(100, at(120)));
        assert!(b.take_at(100, at(220)));
    }

    /// Empty packets cost their headers: a 16 KiB burst passes about 455.
    #[test]
    fn empty_packets_are_not_free() {
        let b = Bandwidth::new(1000);
        let passed = (0..10_000).filter(|_| b.take(0)).count();
        assert!(
            (400..=470).contains(&passed),
            "{passed} empty packets passed"
        );
    }

    #[test]
    fn close_unhonoured_cancels_only_gone_sessions() {
        let r = Registry::new(
            Limits {
                per_session: 9,
                per_ip: 9,
                total: 9,
            },
            Vec::new(),
        );
        let a = r.reserve(&ctx("1:alive", "1.1.1.1:1")).expect("a");
        let b = r.reserve(&ctx("1:gone", "1.1.1.1:2")).expect("b");
        assert_eq!(r.close_unhonoured(|s| s == "alive"), 1);
        assert!(!a.kill.is_cancelled());
        assert!(b.kill.is_cancelled());
        r.close_client(0, "1.1.1.1:1".parse().expect("addr"));
        assert!(a.kill.is_cancelled());
    }
}
