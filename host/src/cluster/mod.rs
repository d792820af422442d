//! Cluster mode (`--redis-url`): several hosts serve as one, coordinated by
//! Redis, in the manner of LiveKit's Redis router.
//!
//! - Each room has one **owner** host, named by a lease in Redis (claimed
//!   with a compare-and-set script, renewed every [`TICK`]). The owner's
//!   registry holds the whole room and runs the policy chain for its frames
//!   in process, so capacity checks, room-scoped state and the policies'
//!   synchronous state calls never wait on the network.
//! - A client's own host (its **edge**) relays the frames of a session in a
//!   room owned elsewhere to the owner over the owner's pub/sub channel, one
//!   at a time (it waits for the owner's `Ack`, as a local frame is handled
//!   before the next is read). On the owner the session is a **proxy**: a
//!   registry entry whose send queue is published back to the edge, in
//!   order.
//! - Hosts heartbeat; a host that stops is declared dead, its proxies are
//!   logged out and its rooms are taken over from the member lists owners
//!   keep in Redis. See docs/cluster.md.
//!
//! Here: the shared state, the channels and the messages between hosts;
//! `edge.rs`, `owner.rs`, `failover.rs` and `turn.rs` hold each side's work,
//! [`store`] the Redis keys and commands, [`wire`] the message format.

mod edge;
mod failover;
mod owner;
pub mod store;
mod turn;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::signaling::Hub;
use crate::signaling::dispatch::{self, Sender};
use crate::signaling::frame;
use crate::signaling::names::{self, MAX_ROOM_CHARS};
use crate::signaling::queue::{OutboundQueue, SessionHandle};
use crate::signaling::rooms::{Outbound, RoomId, RoomObserver, SessionId};
use store::{MemberRecord, Store};
use wire::{Envelope, Msg};

/// Heartbeats, lease renewals and death checks run this often.
pub const TICK: Duration = Duration::from_secs(2);
/// A host whose heartbeat is older than this is dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(6);
/// A room lease not renewed for this long lapses.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long an edge waits for the owner to handle a relayed frame.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// An errand another host has not answered for this long is given up.
const ERRAND_LIMIT: Duration = Duration::from_secs(600);
/// A claimed lease whose room never came to be is released after this.
const CLAIM_GRACE: Duration = Duration::from_secs(10);

const UNAVAILABLE: &str = "unavailable";
/// A host's record of its TURN sessions lapses this long after its last
/// heartbeat.
const SESSIONS_TTL: Duration = Duration::from_secs(30);
/// Every this many ticks each host re-reads the others' TURN sessions.
const RECONCILE_TICKS: u32 = 5;
/// Messages waiting to be published to other hosts hold at most this many
/// bytes: past it a client frame (relayed, or delivered to a member on
/// another host) is refused, never queued and lost (see `Cluster::send`).
const OUT_BUDGET_BYTES: usize = 16 << 20;
/// A host declared dead is remembered this long (its stale messages
/// dropped), then forgotten: hosts that shut down never come back under
/// the same id, and one that comes back speaks at a new epoch.
const DEAD_MEMORY: Duration = Duration::from_secs(3600);
/// How long a session whose undo a dead host owed refuses a new owner's
/// word (`Msg::Owner`): until the dead host's rooms were taken over.
const UNDONE_MEMORY: Duration = Duration::from_secs(LEASE_TTL.as_secs() + ALIVE_TTL.as_secs());
/// Membership changes waiting to be written to Redis, at most; past it they
/// are dropped and the whole state is written again instead.
const MIRROR_CAP: usize = 16_384;

/// Where a local session's room lives when another host owns it.
#[derive(Clone, Debug)]
struct Route {
    room: RoomId,
    owner: Arc<str>,
    username: Arc<str>,
}

/// A remote session on this (owning) host.
struct Proxy {
    edge: Arc<str>,
    inbox: mpsc::UnboundedSender<Work>,
    /// The edge's latest epoch heard about this session (0: none): a death
    /// of the edge at an earlier epoch does not end it.
    epoch: u64,
}

enum Work {
    Frame {
        host: String,
        q: u64,
        text: String,
    },
    /// Put the session back into `room` (see `Msg::Rejoin`).
    Rejoin {
        room: String,
        name: String,
        seen: Option<Vec<(String, String)>>,
    },
    Leave,
    /// Undo frame `q` if it changed the session's room; answer `u` (see
    /// `Msg::Undo`).
    Undo {
        q: u64,
        u: u64,
    },
    /// The session's socket ended (or its host died): it disconnects here.
    Gone,
    /// The session lives on in another host's copy of its room (handed
    /// over): the proxy ends without a disconnect.
    Handed,
}

/// Membership changes to mirror into Redis, in order.
enum MirrorOp {
    Joined {
        room: RoomId,
        session: SessionId,
        username: Arc<str>,
    },
    Left {
        room: RoomId,
        session: SessionId,
        room_deleted: bool,
    },
    /// Forget the recorded member list before a takeover restores it.
    Clear { room: RoomId },
    /// A local session holds TURN credentials: every host honours them.
    Announce(SessionId),
    /// … no longer: it ended.
    Retract(SessionId),
}

struct Ack {
    room: Option<String>,
    name: Option<String>,
}

/// A relayed frame waiting for its owner's `Ack`: `q` tells a late ack of
/// an earlier frame (one that timed out) from the ack of this one.
struct Pending {
    q: u64,
    tx: oneshot::Sender<Ack>,
}

/// What another host must do about a local session for the two to agree
/// on its membership. Pub/sub keeps nothing, so each is sent again until
/// that host answers (`Ack { q: u }`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Errand {
    /// Undo frame `q`, answered `error unavailable` when its `Ack` did not
    /// come (see `Msg::Undo`).
    Undo(u64),
    /// Take the session out of its room there: it joined one elsewhere.
    Leave,
    /// End the session there: its socket ended.
    Gone,
}

#[derive(Clone, Debug)]
struct Owed {
    errand: Errand,
    u: u64,
    since: Instant,
}

impl Owed {
    fn msg(&self, session: &str) -> Msg {
        let (s, u) = (session.to_string(), self.u);
        match self.errand {
            Errand::Undo(q) => Msg::Undo { s, q, u },
            Errand::Leave => Msg::Leave { s, u: Some(u) },
            Errand::Gone => Msg::Gone { s, u: Some(u) },
        }
    }
}

/// A message for another host's channel, with what it counts against
/// `OUT_BUDGET_BYTES`.
struct Outgoing {
    channel: String,
    payload: String,
    bytes: usize,
}

/// What became of a message to another host.
#[derive(Debug, PartialEq)]
enum Sent {
    Queued,
    /// Redis is known to be down: dropped at once (at most once).
    Dropped,
    /// The queue to Redis holds `OUT_BUDGET_BYTES`: refused.
    Full,
}

#[derive(Default)]
pub struct Stats {
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    publish_dropped: AtomicU64,
    relay_refused: AtomicU64,
    mirror_overflows: AtomicU64,
    hosts_seen: AtomicU64,
    rtt_us: AtomicU64,
    hosts_died: AtomicU64,
    rooms_taken_over: AtomicU64,
}

pub struct Cluster {
    id: Arc<str>,
    store: Store,
    out: mpsc::UnboundedSender<Outgoing>,
    out_rx: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// Bytes of `Outgoing` messages not yet taken by the publisher.
    out_bytes: AtomicUsize,
    out_full: AtomicBool,
    mirror: mpsc::Sender<MirrorOp>,
    mirror_rx: Mutex<Option<mpsc::Receiver<MirrorOp>>>,
    /// A membership change was dropped (the mirror queue was full): Redis
    /// gets this host's whole state again once the queue drained.
    mirror_lost: AtomicBool,
    /// Local sessions in rooms other hosts own.
    routes: Mutex<HashMap<SessionId, Route>>,
    /// Hosts each local session's frames were relayed to (told when it ends).
    touched: Mutex<HashMap<SessionId, HashSet<Arc<str>>>>,
    pending: Mutex<HashMap<SessionId, Pending>>,
    /// Errands for other hosts about local sessions, not answered yet. A
    /// session's next frame to that host waits until it is.
    owed: Mutex<HashMap<(SessionId, Arc<str>), Owed>>,
    /// Local sessions whose undo a host died owing (or timed out after it
    /// was buried), and when: a new owner restoring one from the dead
    /// host's record into the room its undone `login` asked for is refused
    /// for `UNDONE_MEMORY`, as the pending undo refused it.
    undone: Mutex<HashMap<SessionId, Instant>>,
    /// Hosts heard speaking an older `wire::REVISION`: they are owed no
    /// errand they cannot read or answer.
    old_hosts: Mutex<HashSet<Arc<str>>>,
    /// Numbers relayed frames (`Msg::Frame::q`).
    relay_seq: AtomicU64,
    proxies: Mutex<HashMap<SessionId, Proxy>>,
    /// Leases claimed for rooms that may not exist yet.
    claims: Mutex<HashMap<RoomId, Instant>>,
    /// Hosts declared dead, with the epoch they were declared dead at
    /// (and when): their messages of that epoch or before are dropped; a
    /// later epoch revives them. Forgotten after `DEAD_MEMORY`.
    dead: Mutex<HashMap<Arc<str>, (u64, Instant)>>,
    /// This host's epoch (`Envelope::e`), raised when its heartbeat is
    /// found lapsed.
    epoch: AtomicU64,
    /// The heartbeat had lapsed: the other hosts may have declared this one
    /// dead and logged its sessions out of their rooms; the next resync puts
    /// them back.
    rejoin: AtomicBool,
    /// Hosts whose heartbeat was missing, since when.
    suspects: Mutex<HashMap<Arc<str>, Instant>>,
    /// Reachable at the last heartbeat, and since when.
    healthy: AtomicBool,
    healthy_since: Mutex<Instant>,
    /// Redis holds this host's leases and member lists (false after an
    /// outage until they are written again).
    synced: AtomicBool,
    /// This host's channel is subscribed.
    subscribed: AtomicBool,
    /// Runs the ticker at once (a new subscription: write our state now).
    wake: tokio::sync::Notify,
    seq: AtomicU64,
    /// Shutting down: the record in Redis is left as it was for the takeover.
    leaving: AtomicBool,
    /// Local sessions announced to the other hosts' TURN servers.
    turn_local: Mutex<HashSet<SessionId>>,
    /// Other hosts' sessions this host's TURN server honours.
    turn_remote: Mutex<HashSet<String>>,
    pub stats: Stats,
}

impl Cluster {
    /// Checks the URL; connects lazily, so a host starts while Redis is down.
    pub fn new(url: &str) -> Result<Arc<Self>, String> {
        let store = Store::open(url)?;
        let (out, out_rx) = mpsc::unbounded_channel();
        let (mirror, mirror_rx) = mpsc::channel(MIRROR_CAP);
        let seq_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Ok(Arc::new(Self {
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            store,
            out,
            out_rx: Mutex::new(Some(out_rx)),
            out_bytes: AtomicUsize::new(0),
            out_full: AtomicBool::new(false),
            mirror,
            mirror_rx: Mutex::new(Some(mirror_rx)),
            mirror_lost: AtomicBool::new(false),
            routes: Mutex::default(),
            touched: Mutex::default(),
            pending: Mutex::default(),
            owed: Mutex::default(),
            undone: Mutex::default(),
            old_hosts: Mutex::default(),
            relay_seq: AtomicU64::new(1),
            proxies: Mutex::default(),
            claims: Mutex::default(),
            dead: Mutex::default(),
            epoch: AtomicU64::new(1),
            rejoin: AtomicBool::new(false),
            suspects: Mutex::default(),
            healthy: AtomicBool::new(false),
            healthy_since: Mutex::new(Instant::now()),
            synced: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            seq: AtomicU64::new(seq_base),
            leaving: AtomicBool::new(false),
            turn_local: Mutex::default(),
            turn_remote: Mutex::default(),
            stats: Stats::default(),
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the background tasks; `hub` must carry this cluster.
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) {
        hub.registry.set_observer(Arc::new(Observer(self.clone())));
        if let Some(rx) = self.out_rx.lock().take() {
            tokio::spawn(self.clone().publisher(rx));
        }
        if let Some(rx) = self.mirror_rx.lock().take() {
            tokio::spawn(self.clone().mirror_writer(hub.clone(), rx));
        }
        tokio::spawn(self.clone().subscriber(hub.clone()));
        tokio::spawn(self.clone().ticker(hub));
        tracing::info!(host = %self.id, "cluster mode: sharing rooms through Redis");
    }

    /// Ready: Redis answers and holds this host's state.
    pub fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.subscribed.load(Ordering::Relaxed)
    }

    /// Whether messages can go to other hosts and their answers come back:
    /// the last heartbeat reached Redis and this host's channel is
    /// subscribed (a subscription ends at once when Redis goes away).
    fn reachable(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }

    /// Queues `msg` for `host`'s channel. Client frames (`Frame`,
    /// `Deliver`) are dropped at once while Redis is known to be down, and
    /// refused while the queue holds `OUT_BUDGET_BYTES`: the caller answers
    /// the sender or closes the recipient, so nothing accepted is lost in
    /// the queue. Control messages are small, one per frame or session, and
    /// always queued.
    fn send(&self, host: &str, msg: Msg) -> Sent {
        let client_frame = matches!(msg, Msg::Frame { .. } | Msg::Deliver { .. });
        if client_frame && !self.reachable() {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        let envelope = Envelope {
            src: self.id.to_string(),
            e: self.epoch.load(Ordering::SeqCst),
            v: wire::REVISION,
            msg,
        };
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return Sent::Dropped;
        };
        let channel = store::host_channel(host);
        let bytes = channel.len() + payload.len();
        let queued = self.out_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if client_frame && queued > OUT_BUDGET_BYTES {
            self.out_bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.stats.relay_refused.fetch_add(1, Ordering::Relaxed);
            if !self.out_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cluster: {} MiB wait to be published to Redis: frames to other hosts are refused until it catches up (is Redis overloaded or slow to reach?)",
                    OUT_BUDGET_BYTES >> 20
                );
            }
            return Sent::Full;
        }
        self.stats.relayed_out.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(Outgoing {
            channel,
            payload,
            bytes,
        });
        Sent::Queued
    }

    /// Queues a membership change for Redis without blocking; when the
    /// queue is full the change is dropped and the whole state written
    /// again once it drained.
    fn mirror(&self, op: MirrorOp) {
        if self.mirror.try_send(op).is_err() {
            self.stats.mirror_overflows.fetch_add(1, Ordering::Relaxed);
            if !self.mirror_lost.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "cluster: membership changes come faster than Redis takes them: this host's whole state is written again once it catches up"
                );
            }
        }
    }

    /// Whether `session` is another host's, in a room this host owns.
    pub fn is_proxy(&self, session: &str) -> bool {
        self.proxies.lock().contains_key(session)
    }

    pub fn proxy_count(&self) -> usize {
        self.proxies.lock().len()
    }

    /// Shutdown: stops recording, and tells the other hosts to treat this
    /// one as gone now (log its sessions out, take its rooms over from the
    /// record) rather than after its heartbeat lapses.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        match self.store.goodbye(&self.id).await {
            Ok(()) => tracing::info!("cluster: the other hosts take this host's rooms over"),
            Err(e) => tracing::warn!(
                "cluster: could not say goodbye ({e}); the other hosts take over when the heartbeat lapses"
            ),
        }
    }

    fn on_message(self: &Arc<Self>, hub: &Arc<Hub>, payload: &[u8]) {
        let Ok(Envelope { src, e, v, msg }) = serde_json::from_slice::<Envelope>(payload) else {
            tracing::warn!("cluster: unreadable message on this host's channel, dropped");
            return;
        };
        {
            let mut dead = self.dead.lock();
            if let Some(&(buried, _)) = dead.get(src.as_str()) {
                if e <= buried {
                    return;
                }
                dead.remove(src.as_str());
                tracing::info!(host = %src, "cluster: a host declared dead is back (new epoch): its messages count again");
            }
        }
        self.stats.relayed_in.fetch_add(1, Ordering::Relaxed);
        if v < wire::REVISION {
            self.old_hosts.lock().insert(Arc::from(src.as_str()));
        } else if self.old_hosts.lock().remove(src.as_str()) {
            tracing::debug!(host = %src, "cluster: a host answers errands now");
        }
        match msg {
            Msg::Frame { s, q, h, t } => {
                let work = Work::Frame {
                    host: h,
                    q,
                    text: t,
                };
                self.to_proxy(hub, &s, &src, e, work);
            }
            Msg::Rejoin {
                s,
                edge,
                room,
                name,
                seen,
            } => {
                tracing::debug!(session = %s, %edge, %room, from = %src, "cluster: asked to put a session back into its room");
                if self.dead.lock().contains_key(edge.as_str()) {
                    // Its host is gone (and buried here): put back, the
                    // session would never leave.
                    tracing::debug!(session = %s, %edge, "cluster: a Rejoin for a session of a dead host, dropped");
                    return;
                }
                if *edge == *self.id {
                    self.rejoin_local(hub, &src, &s, &room, &name, seen);
                } else {
                    // (`e` is the edge's epoch only when the edge sent it.)
                    let epoch = if edge == src { e } else { 0 };
                    self.to_proxy(hub, &s, &edge, epoch, Work::Rejoin { room, name, seen });
                }
            }
            Msg::Gone { s, u } => {
                if let Some(p) = self.proxies.lock().get(s.as_str()) {
                    let _ = p.inbox.send(Work::Gone);
                }
                // Queued for the proxy, ahead of anything later: done.
                self.answer(&src, s, u);
            }
            Msg::Leave { s, u } => {
                if let Some(p) = self.proxies.lock().get(s.as_str()) {
                    let _ = p.inbox.send(Work::Leave);
                }
                self.answer(&src, s, u);
            }
            Msg::Undo { s, q, u } => {
                let proxies = self.proxies.lock();
                if let Some(p) = proxies.get(s.as_str()) {
                    let _ = p.inbox.send(Work::Undo { q, u });
                } else {
                    drop(proxies);
                    // Never a member here (or gone since): nothing to undo.
                    let (room, name) = (None, None);
                    self.send(
                        &src,
                        Msg::Ack {
                            s,
                            q: u,
                            room,
                            name,
                        },
                    );
                }
            }
            Msg::Ack { s, q, room, name } => {
                self.errand_done(hub, &src, &s, q, (&room, &name));
                self.settle(&s, q, Ack { room, name });
            }
            Msg::Owner { s, room, name } => {
                let owner: Arc<str> = Arc::from(src);
                match hub.registry.session_key(&s) {
                    Some(id) if !self.is_proxy(&id) && self.owner_fits(hub, &id, &room) => {
                        let route = Route {
                            room: Arc::from(room),
                            owner: owner.clone(),
                            username: Arc::from(name),
                        };
                        self.routes.lock().insert(id.clone(), route);
                        // Told when the session ends.
                        self.touched.lock().entry(id).or_default().insert(owner);
                    }
                    // It ended meanwhile, or it is in another room now (the
                    // owner put it back from a stale record or a Rejoin that
                    // crossed its move): the owner drops it.
                    _ => {
                        tracing::debug!(session = %s, %room, from = %owner, "cluster: a stale Owner message: the sender drops the session");
                        if let Some(id) = hub.registry.session_key(&s) {
                            self.owe(&id, &owner, Errand::Gone);
                        } else {
                            self.send(&owner, Msg::Gone { s, u: None });
                        }
                    }
                }
            }
            Msg::Deliver { s, t } => {
                if let Some(h) = hub.registry.handle_of(&s) {
                    h.deliver(Outbound::Frame(Utf8Bytes::from(t)));
                }
            }
            Msg::Close { s, code, reason } => {
                if let Some(h) = hub.registry.handle_of(&s) {
                    h.deliver(Outbound::Close(code, Utf8Bytes::from(reason)));
                }
            }
        }
    }

    /// Whether another host may take `id` as a member of `room`
    /// (`Msg::Owner`): its route names that room (the owner changed), or it
    /// is in no room at all and not being undone out of one. A session that
    /// moved on since is not pulled back into a room it left, nor one whose
    /// `login` it was told failed (`error unavailable`) into the room it
    /// asked for (a new owner restoring it from the record).
    fn owner_fits(&self, hub: &Hub, id: &str, room: &str) -> bool {
        match self.routes.lock().get(id) {
            Some(r) => *r.room == *room,
            None => {
                hub.registry.room_of(id).is_none()
                    && !self
                        .owed
                        .lock()
                        .iter()
                        .any(|((s, _), o)| **s == *id && matches!(o.errand, Errand::Undo(_)))
                    && self
                        .undone
                        .lock()
                        .get(id)
                        .is_none_or(|t| t.elapsed() >= UNDONE_MEMORY)
            }
        }
    }

    /// Answers an errand numbered `u` (none: the sender wants no answer).
    fn answer(&self, host: &str, s: String, u: Option<u64>) {
        if let Some(u) = u {
            let (room, name) = (None, None);
            self.send(
                host,
                Msg::Ack {
                    s,
                    q: u,
                    room,
                    name,
                },
            );
        }
    }

    /// Forgets the hosts declared dead longer than `DEAD_MEMORY` ago (and
    /// the undos they owed, after `UNDONE_MEMORY`).
    fn prune_dead(&self, now: Instant) {
        self.dead
            .lock()
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < DEAD_MEMORY);
        self.undone
            .lock()
            .retain(|_, since| now.saturating_duration_since(*since) < UNDONE_MEMORY);
    }

    async fn publisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut taken = first.bytes;
            batch.push((first.channel, first.payload));
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(m) => {
                        taken += m.bytes;
                        batch.push((m.channel, m.payload));
                    }
                    Err(_) => break,
                }
            }
            let left = self.out_bytes.fetch_sub(taken, Ordering::SeqCst) - taken;
            if left <= OUT_BUDGET_BYTES / 2 {
                self.out_full.store(false, Ordering::Relaxed);
            }
            if let Err(e) = self.store.publish_all(&batch).await {
                // At most once: what cannot be published now is dropped.
                self.stats
                    .publish_dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::debug!("cluster: {} relayed frames dropped: {e}", batch.len());
            }
            batch.clear();
        }
    }

    async fn subscriber(self: Arc<Self>, hub: Arc<Hub>) {
        let channel = store::host_channel(&self.id);
        loop {
            if let Ok(mut pubsub) = self.store.pubsub().await
                && let Ok(Ok(())) = tokio::time::timeout(
                    store::CALL_LIMIT,
                    pubsub.subscribe(&[channel.as_str(), store::TURN_CHANNEL]),
                )
                .await
            {
                tracing::debug!("cluster: subscribed to {channel}");
                // A new connection may be a new (empty) Redis: this host's
                // leases and member lists are written again before it
                // counts as ready.
                self.synced.store(false, Ordering::Relaxed);
                self.restarted_clocks();
                self.subscribed.store(true, Ordering::Relaxed);
                self.wake.notify_one();
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    if m.get_channel_name() == store::TURN_CHANNEL {
                        self.on_turn_message(&hub, m.get_payload_bytes());
                    } else {
                        self.on_message(&hub, m.get_payload_bytes());
                    }
                }
                self.subscribed.store(false, Ordering::Relaxed);
                tracing::debug!("cluster: subscription to {channel} ended");
            }
            tokio::time::sleep(self.store.retry_delay()).await;
        }
    }

    /// Cluster lines of /metrics.
    pub fn render(&self, out: &mut String, rooms_owned: usize) {
        use std::fmt::Write as _;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut line = |help: &str, kind: &str, name: &str, v: u64| {
            let _ = writeln!(out, "# HELP webrtc_chat_cluster_{name} {help}");
            let _ = writeln!(out, "# TYPE webrtc_chat_cluster_{name} {kind}");
            let _ = writeln!(out, "webrtc_chat_cluster_{name} {v}");
        };
        line(
            "1 when Redis answers and holds this host's rooms.",
            "gauge",
            "ready",
            self.ready() as u64,
        );
        line(
            "Hosts with a current heartbeat in Redis.",
            "gauge",
            "hosts_seen",
            get(&self.stats.hosts_seen),
        );
        line(
            "Rooms this host owns (holds the lease of).",
            "gauge",
            "rooms_owned",
            rooms_owned as u64,
        );
        line(
            "Sessions of other hosts in rooms this host owns.",
            "gauge",
            "remote_sessions",
            self.proxies.lock().len() as u64,
        );
        line(
            "Messages published to other hosts.",
            "counter",
            "relayed_out_total",
            get(&self.stats.relayed_out),
        );
        line(
            "Messages received from other hosts.",
            "counter",
            "relayed_in_total",
            get(&self.stats.relayed_in),
        );
        line(
            "Messages to other hosts dropped because Redis did not take them.",
            "counter",
            "relay_dropped_total",
            get(&self.stats.publish_dropped),
        );
        line(
            "Client frames to other hosts refused because the queue to Redis was full.",
            "counter",
            "relay_refused_total",
            get(&self.stats.relay_refused),
        );
        line(
            "Membership changes dropped because the queue to Redis was full (the whole state is written again).",
            "counter",
            "mirror_overflows_total",
            get(&self.stats.mirror_overflows),
        );
        line(
            "Round trip of the last heartbeat to Redis, in microseconds.",
            "gauge",
            "redis_rtt_microseconds",
            get(&self.stats.rtt_us),
        );
        line(
            "Hosts declared dead (heartbeat missing).",
            "counter",
            "hosts_died_total",
            get(&self.stats.hosts_died),
        );
        line(
            "Rooms this host took over from a dead host.",
            "counter",
            "rooms_taken_over_total",
            get(&self.stats.rooms_taken_over),
        );
    }
}

/// `data.roomrequest` of a login, trimmed, when it is a valid room id —
/// read as the host's canonical login reads it (strict JSON, a duplicated
/// member's last value: see `dispatch::canonical_login`), so the room a
/// login is routed to is the room its owner's policies and join see.
fn login_room(data: &str) -> Option<String> {
    let login: serde_json::Value = serde_json::from_str(data).ok()?;
    names::check(
        "room id",
        login.get("roomrequest")?.as_str()?,
        MAX_ROOM_CHARS,
    )
    .ok()
    .map(str::to_string)
}

/// The runtime the cluster's unit tests run on: one thread (a proxy's
/// worker runs only once the test awaits).
#[cfg(test)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn unavailable(hub: &Hub, sender: &Sender<'_>) {
    hub.metrics.error(UNAVAILABLE);
    sender.handle.deliver(Outbound::Frame(Utf8Bytes::from(frame::error(
        UNAVAILABLE,
        "The hosts of this service cannot reach each other right now; nothing was delivered. Rooms on this host still work: try again shortly.",
    ))));
}

/// Forwards registry changes to the mirror writer, without blocking.
struct Observer(Arc<Cluster>);

impl RoomObserver for Observer {
    fn joined(&self, room: &RoomId, session: &SessionId, username: &Arc<str>) {
        self.0.mirror(MirrorOp::Joined {
            room: room.clone(),
            session: session.clone(),
            username: username.clone(),
        });
    }

    fn left(&self, room: &RoomId, session: &SessionId, room_deleted: bool) {
        self.0.mirror(MirrorOp::Left {
            room: room.clone(),
            session: session.clone(),
            room_deleted,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplicated `roomrequest` routes by its last value, as the owner's
    /// canonical login reads it (a derived struct refused it, so the login
    /// stayed on a host that does not own the room and split it).
    #[test]
    fn a_login_room_is_read_as_the_canonical_login_reads_it() {
        assert_eq!(
            login_room(r#"{"roomrequest":"x","username":"e","roomrequest":" R "}"#).as_deref(),
            Some("R")
        );
        assert_eq!(login_room(r#"{"roomrequest":"R","x":"\ud800"}"#), None);
        assert_eq!(login_room(r#"{"roomrequest":"  "}"#), None);
    }

    /// A cluster that believes Redis answers (nothing is started).
    fn reachable() -> Arc<Cluster> {
        let c = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        c.healthy.store(true, Ordering::Relaxed);
        c.subscribed.store(true, Ordering::Relaxed);
        c
    }

    fn deliver(c: &Cluster, t: &str) -> Sent {
        c.send(
            "h",
            Msg::Deliver {
                s: "s".into(),
                t: t.into(),
            },
        )
    }

    fn close(c: &Cluster) -> Sent {
        c.send(
            "h",
            Msg::Close {
                s: "s".into(),
                code: 1008,
                reason: "r".into(),
            },
        )
    }

    #[tokio::test]
    async fn frames_to_other_hosts_are_refused_past_the_byte_budget() {
        let c = reachable();
        let frame = "x".repeat(64 << 10);
        let fits = OUT_BUDGET_BYTES / frame.len();
        let mut queued = 0;
        while deliver(&c, &frame) == Sent::Queued {
            queued += 1;
            assert!(queued <= fits, "queued past the budget");
        }
        assert!(queued + 1 >= fits, "refused early: {queued} of {fits}");
        assert_eq!(c.stats.relay_refused.load(Ordering::Relaxed), 1);
        // Control messages still go (a slow member can be closed).
        assert_eq!(close(&c), Sent::Queued);
        // Once the publisher took the queue (to fail: nothing listens on
        // port 1), frames are queued again.
        let rx = c.out_rx.lock().take().unwrap();
        tokio::spawn(c.clone().publisher(rx));
        let deadline = Instant::now() + Duration::from_secs(30);
        while deliver(&c, &frame) != Sent::Queued {
            assert!(Instant::now() < deadline, "the budget never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn frames_are_dropped_at_once_while_redis_is_known_down() {
        let c = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        assert_eq!(deliver(&c, "x"), Sent::Dropped);
        assert_eq!(c.out_bytes.load(Ordering::SeqCst), 0, "nothing queued");
        assert_eq!(close(&c), Sent::Queued);
    }

    fn route(room: &str, owner: &str) -> Route {
        Route {
            room: Arc::from(room),
            owner: Arc::from(owner),
            username: Arc::from("alice"),
        }
    }

    /// `Msg::Owner { a1, R }` from host `x`, as `c` receives it.
    fn owner_msg(c: &Arc<Cluster>, hub: &Arc<Hub>, room: &str) {
        let envelope = Envelope {
            src: "x".into(),
            e: 1,
            v: wire::REVISION,
            msg: Msg::Owner {
                s: "a1".into(),
                room: room.into(),
                name: "alice".into(),
            },
        };
        c.on_message(hub, serde_json::to_string(&envelope).unwrap().as_bytes());
    }

    /// What `c` queued for other hosts: (channel, message).
    fn sent(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<(String, Msg)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
            out.push((m.channel, envelope.msg));
        }
        out
    }

    #[test]
    fn a_stale_owner_message_never_moves_a_session_back_into_a_room_it_left() {
        let harness = crate::harness::PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        let runtime = crate::cluster::test_runtime();
        let _in_runtime = runtime.enter();
        let c = reachable();
        let mut out = c.out_rx.lock().take().unwrap();
        let (handle, _rx) = SessionHandle::new(&hub.limits.send);
        hub.registry.register(
            Arc::from("a1"),
            handle,
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        // (The sender is owed an answer: `u` numbers the errand.)
        let gone = |sent: Vec<(String, Msg)>| {
            let [(channel, Msg::Gone { s, u: Some(_) })] = &sent[..] else {
                panic!("not one Gone: {sent:?}");
            };
            assert_eq!(
                (channel.as_str(), s.as_str()),
                (&*store::host_channel("x"), "a1")
            );
        };

        // a1 moved from R to T (owned by c): x put it back into R from a
        // stale record. Its route stays; x is told to drop it.
        c.routes.lock().insert(Arc::from("a1"), route("T", "c"));
        owner_msg(&c, &hub, "R");
        let r = c.routes.lock().get("a1").cloned().unwrap();
        assert_eq!((&*r.room, &*r.owner), ("T", "c"), "route replaced");
        gone(sent(&mut out));

        // a1 is in a room of this host now: the same.
        c.routes.lock().clear();
        assert!(hub.registry.restore("a1", "L", "alice"));
        owner_msg(&c, &hub, "R");
        assert!(c.routes.lock().get("a1").is_none(), "routed away from L");
        gone(sent(&mut out));
        hub.registry.leave("a1");

        // R changed owner (d died, x took it over): a1 follows it.
        c.routes.lock().insert(Arc::from("a1"), route("R", "d"));
        owner_msg(&c, &hub, "R");
        let r = c.routes.lock().get("a1").cloned().unwrap();
        assert_eq!((&*r.room, &*r.owner), ("R", "x"));
        assert!(sent(&mut out).is_empty());

        // In no room anywhere: taken as a member of R.
        c.routes.lock().clear();
        owner_msg(&c, &hub, "R");
        assert_eq!(
            c.routes.lock().get("a1").map(|r| r.room.clone()),
            Some(Arc::from("R"))
        );
        assert!(sent(&mut out).is_empty());
    }

    #[test]
    fn a_login_undone_toward_a_host_that_died_is_not_taken_over() {
        let harness = crate::harness::PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        let runtime = crate::cluster::test_runtime();
        runtime.block_on(async {
            let c = reachable();
            let mut out = c.out_rx.lock().take().unwrap();
            let (handle, _rx) = SessionHandle::new(&hub.limits.send);
            let a1: SessionId = Arc::from("a1");
            hub.registry
                .register(a1.clone(), handle, SocketAddr::from(([127, 0, 0, 1], 1)));
            // a1's login to R on host o was answered `unavailable`: its undo
            // is owed to o. o dies before answering; x takes R over and
            // restores a1 from o's record.
            let o: Arc<str> = Arc::from("o");
            c.owe(&a1, &o, Errand::Undo(3));
            c.host_died(&hub, o.clone(), 1).await;
            assert!(c.owed.lock().is_empty(), "an errand for a dead host");
            sent(&mut out);
            owner_msg(&c, &hub, "R");
            assert!(
                c.routes.lock().get("a1").is_none(),
                "in R, told unavailable"
            );
            let told = sent(&mut out);
            assert!(
                matches!(&told[..], [(_, Msg::Gone { s, .. })] if s == "a1"),
                "x not told to drop it: {told:?}"
            );

            // The same when its relay to o timed out only after the burial.
            c.undone.lock().clear();
            c.owe(&a1, &o, Errand::Undo(4));
            owner_msg(&c, &hub, "R");
            assert!(
                c.routes.lock().get("a1").is_none(),
                "in R, told unavailable"
            );

            // One in a room of o (its undone frame did not change it) has
            // its route to judge a new owner's word by: not marked.
            c.undone.lock().clear();
            let b1: SessionId = Arc::from("b1");
            c.routes.lock().insert(b1.clone(), route("R", "p"));
            c.owe(&b1, &Arc::from("p"), Errand::Undo(5));
            c.host_died(&hub, Arc::from("p"), 1).await;
            assert!(!c.undone.lock().contains_key("b1"), "{:?}", c.undone.lock());
            c.owe(&a1, &o, Errand::Undo(6));

            // Once the takeover is long over, a new owner's word counts.
            c.prune_dead(Instant::now() + UNDONE_MEMORY);
            owner_msg(&c, &hub, "R");
            assert!(c.routes.lock().get("a1").is_some(), "refused for good");
        });
    }

    #[tokio::test]
    async fn hosts_declared_dead_are_forgotten_after_a_while() {
        let c = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        let then = Instant::now();
        c.dead.lock().insert(Arc::from("gone"), (u64::MAX, then));
        c.prune_dead(then + DEAD_MEMORY - Duration::from_secs(1));
        assert!(c.dead.lock().contains_key("gone"), "forgotten early");
        c.prune_dead(then + DEAD_MEMORY);
        assert!(c.dead.lock().is_empty(), "never forgotten");
    }

    #[tokio::test]
    async fn membership_changes_past_the_cap_force_a_full_rewrite() {
        let c = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        for i in 0..MIRROR_CAP {
            c.mirror(MirrorOp::Retract(Arc::from(i.to_string())));
        }
        assert!(!c.mirror_lost.load(Ordering::SeqCst));
        c.mirror(MirrorOp::Retract(Arc::from("one too many")));
        assert!(c.mirror_lost.load(Ordering::SeqCst));
        assert_eq!(c.stats.mirror_overflows.load(Ordering::Relaxed), 1);
    }
}
