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

pub mod store;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use wire::Msg;

/// Heartbeats, lease renewals and death checks run this often.
pub const TICK: Duration = Duration::from_secs(2);
/// A host whose heartbeat is older than this is dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(6);
/// A room lease not renewed for this long lapses.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long an edge waits for the owner to handle a relayed frame.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// A claimed lease whose room never came to be is released after this.
const CLAIM_GRACE: Duration = Duration::from_secs(10);

const UNAVAILABLE: &str = "unavailable";
/// A host's record of its TURN sessions lapses this long after its last
/// heartbeat.
const SESSIONS_TTL: Duration = Duration::from_secs(30);
/// Every this many ticks each host re-reads the others' TURN sessions.
const RECONCILE_TICKS: u32 = 5;

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
}

enum Work {
    Frame { host: String, text: String },
    Leave,
    Gone,
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

#[derive(Default)]
pub struct Stats {
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    publish_dropped: AtomicU64,
    hosts_seen: AtomicU64,
    rtt_us: AtomicU64,
    hosts_died: AtomicU64,
    rooms_taken_over: AtomicU64,
}

pub struct Cluster {
    id: Arc<str>,
    store: Store,
    out: mpsc::UnboundedSender<(String, String)>,
    out_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    mirror: mpsc::UnboundedSender<MirrorOp>,
    mirror_rx: Mutex<Option<mpsc::UnboundedReceiver<MirrorOp>>>,
    /// Local sessions in rooms other hosts own.
    routes: Mutex<HashMap<SessionId, Route>>,
    /// Hosts each local session's frames were relayed to (told when it ends).
    touched: Mutex<HashMap<SessionId, HashSet<Arc<str>>>>,
    pending: Mutex<HashMap<SessionId, oneshot::Sender<Ack>>>,
    proxies: Mutex<HashMap<SessionId, Proxy>>,
    /// Leases claimed for rooms that may not exist yet.
    claims: Mutex<HashMap<RoomId, Instant>>,
    dead: Mutex<HashSet<Arc<str>>>,
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
        let (mirror, mirror_rx) = mpsc::unbounded_channel();
        let seq_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Ok(Arc::new(Self {
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            store,
            out,
            out_rx: Mutex::new(Some(out_rx)),
            mirror,
            mirror_rx: Mutex::new(Some(mirror_rx)),
            routes: Mutex::default(),
            touched: Mutex::default(),
            pending: Mutex::default(),
            proxies: Mutex::default(),
            claims: Mutex::default(),
            dead: Mutex::default(),
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
        hub.registry
            .set_observer(Arc::new(Observer(self.mirror.clone())));
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

    fn send(&self, host: &str, msg: &Msg) {
        if let Ok(payload) = serde_json::to_string(msg) {
            self.stats.relayed_out.fetch_add(1, Ordering::Relaxed);
            let _ = self.out.send((store::host_channel(host), payload));
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

    // ----- the edge: a local client's frames -----

    /// Relays `text` to the owner of the room it concerns when another
    /// host owns it. True when the frame was dealt with here (relayed, or
    /// refused because the cluster is unreachable); false when the caller
    /// handles it locally.
    pub async fn route(&self, hub: &Hub, sender: &Sender<'_>, text: &str) -> bool {
        if self.is_proxy(sender.id) {
            return false;
        }
        let Ok(inbound) = frame::parse(text) else {
            return false;
        };
        let data = inbound.data.map(|d| d.get());
        let target = match &*inbound.kind {
            "login" => data.and_then(login_room),
            "randomCheck" => data
                .and_then(|d| serde_json::from_str::<String>(d).ok())
                .map(|s| s.trim().to_string()),
            _ => None,
        };
        let joining = inbound.kind == "login";
        let current = self.routes.lock().get(sender.id).cloned();
        let owner: Arc<str> = if let Some(room) = &target {
            if hub.registry.room_exists(room) {
                return false;
            }
            let found = if joining {
                self.store
                    .claim(room, &self.id, LEASE_TTL, "")
                    .await
                    .map(Some)
            } else {
                self.store.owner(room).await
            };
            match found {
                Ok(Some(o)) if *o == *self.id => {
                    if joining {
                        self.claims
                            .lock()
                            .insert(Arc::from(room.as_str()), Instant::now());
                    }
                    return false;
                }
                Ok(Some(o)) => Arc::from(o),
                Ok(None) => return false,
                Err(e) => {
                    tracing::debug!(session = %sender.id, "cluster lookup failed: {e}");
                    unavailable(hub, sender);
                    return true;
                }
            }
        } else if let Some(r) = current {
            r.owner
        } else {
            return false;
        };
        self.relay(hub, sender, text, owner).await;
        true
    }

    async fn relay(&self, hub: &Hub, sender: &Sender<'_>, text: &str, owner: Arc<str>) {
        let id = sender.id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        self.touched
            .lock()
            .entry(id.clone())
            .or_default()
            .insert(owner.clone());
        self.send(
            &owner,
            &Msg::Frame {
                src: self.id.to_string(),
                s: id.to_string(),
                h: sender.host.to_string(),
                t: text.to_string(),
            },
        );
        let ack = match tokio::time::timeout(ACK_WAIT, rx).await {
            Ok(Ok(ack)) => ack,
            _ => {
                self.pending.lock().remove(&**id);
                unavailable(hub, sender);
                return;
            }
        };
        match ack.room {
            Some(room) => {
                let route = Route {
                    room: Arc::from(room),
                    owner: owner.clone(),
                    username: Arc::from(ack.name.unwrap_or_default()),
                };
                let previous = self.routes.lock().insert(id.clone(), route);
                hub.ice.session_seen(id);
                self.announce_turn(id);
                // Joined a room elsewhere: out of the room it had here …
                if let Some(d) = hub.registry.leave(id) {
                    dispatch::announce_departure(hub, &d);
                }
                // … or on a third host.
                if let Some(p) = previous
                    && p.owner != owner
                {
                    self.send(
                        &p.owner,
                        &Msg::Leave {
                            src: self.id.to_string(),
                            s: id.to_string(),
                        },
                    );
                }
            }
            None => {
                let mut routes = self.routes.lock();
                if routes.get(&**id).is_some_and(|r| r.owner == owner) {
                    routes.remove(&**id);
                }
            }
        }
    }

    /// After a frame was handled here: a session that joined a room of this
    /// host leaves the room it had on another.
    pub fn handled_locally(&self, hub: &Hub, session: &str) {
        if hub.registry.room_of(session).is_none() || self.is_proxy(session) {
            return;
        }
        if let Some(id) = hub.registry.session_key(session) {
            self.announce_turn(&id);
        }
        if self.routes.lock().get(session).is_none() {
            return;
        }
        if let Some(old) = self.routes.lock().remove(session) {
            self.send(
                &old.owner,
                &Msg::Leave {
                    src: self.id.to_string(),
                    s: session.to_string(),
                },
            );
        }
    }

    /// Once per session: its TURN credentials are honoured on every host.
    fn announce_turn(&self, id: &SessionId) {
        if self.turn_local.lock().insert(id.clone()) {
            let _ = self.mirror.send(MirrorOp::Announce(id.clone()));
        }
    }

    /// A local session ended: the hosts that knew it are told.
    pub fn session_closed(&self, session: &str) {
        if self.is_proxy(session) {
            return;
        }
        if let Some(id) = self.turn_local.lock().take(session) {
            let _ = self.mirror.send(MirrorOp::Retract(id));
        }
        self.routes.lock().remove(session);
        self.pending.lock().remove(session);
        let hosts = self.touched.lock().remove(session).unwrap_or_default();
        for h in hosts {
            self.send(
                &h,
                &Msg::Gone {
                    src: self.id.to_string(),
                    s: session.to_string(),
                },
            );
        }
    }

    // ----- messages from other hosts -----

    fn on_message(self: &Arc<Self>, hub: &Arc<Hub>, payload: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Msg>(payload) else {
            tracing::warn!("cluster: unreadable message on this host's channel, dropped");
            return;
        };
        if self.dead.lock().contains(msg.src()) {
            return;
        }
        self.stats.relayed_in.fetch_add(1, Ordering::Relaxed);
        match msg {
            Msg::Frame { src, s, h, t } => {
                let inbox = self.proxy(hub, &s, &src);
                let _ = inbox.send(Work::Frame { host: h, text: t });
            }
            Msg::Gone { s, .. } => {
                if let Some(p) = self.proxies.lock().get(s.as_str()) {
                    let _ = p.inbox.send(Work::Gone);
                }
            }
            Msg::Leave { s, .. } => {
                if let Some(p) = self.proxies.lock().get(s.as_str()) {
                    let _ = p.inbox.send(Work::Leave);
                }
            }
            Msg::Ack { s, room, name, .. } => {
                if let Some(tx) = self.pending.lock().remove(s.as_str()) {
                    let _ = tx.send(Ack { room, name });
                }
            }
            Msg::Owner { src, s, room, name } => {
                let owner: Arc<str> = Arc::from(src);
                match hub.registry.session_key(&s) {
                    Some(id) if !self.is_proxy(&id) => {
                        let route = Route {
                            room: Arc::from(room),
                            owner: owner.clone(),
                            username: Arc::from(name),
                        };
                        self.routes.lock().insert(id.clone(), route);
                        // Told when the session ends.
                        self.touched.lock().entry(id).or_default().insert(owner);
                    }
                    // It ended meanwhile: the new owner forgets it.
                    _ => self.send(
                        &owner,
                        &Msg::Gone {
                            src: self.id.to_string(),
                            s,
                        },
                    ),
                }
            }
            Msg::Deliver { s, t, .. } => {
                if let Some(h) = hub.registry.handle_of(&s) {
                    h.deliver(Outbound::Frame(Utf8Bytes::from(t)));
                }
            }
            Msg::Close {
                s, code, reason, ..
            } => {
                if let Some(h) = hub.registry.handle_of(&s) {
                    h.deliver(Outbound::Close(code, Utf8Bytes::from(reason)));
                }
            }
        }
    }

    /// `+HOST SESSION` / `-HOST SESSION`: another host's session began or
    /// ended holding TURN credentials.
    fn on_turn_message(self: &Arc<Self>, hub: &Arc<Hub>, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let (sign, rest) = text.split_at(text.len().min(1));
        let Some((host, session)) = rest.split_once(' ') else {
            return;
        };
        if host == &*self.id {
            return;
        }
        match sign {
            "!" => {
                // A host leaving: from now on nothing it sends counts.
                let gone: Arc<str> = Arc::from(host);
                if self.dead.lock().insert(gone.clone()) {
                    let (this, hub) = (self.clone(), hub.clone());
                    tokio::spawn(async move { this.bury(&hub, gone).await });
                }
            }
            "+" => {
                hub.ice.session_seen(session);
                self.turn_remote.lock().insert(session.to_string());
            }
            "-" if self.turn_remote.lock().remove(session) => {
                hub.ice.session_ended(session);
            }
            _ => {}
        }
    }

    /// Re-reads which sessions the live hosts serve (a missed message, a
    /// host that died): TURN honours exactly those, plus this host's own.
    async fn reconcile_turn(&self, hub: &Hub) -> store::Result<()> {
        let hosts: Vec<String> = self
            .store
            .live_hosts()
            .await?
            .into_iter()
            .filter(|h| *h != *self.id)
            .collect();
        let live: HashSet<String> = self
            .store
            .sessions_of(&hosts)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut known = self.turn_remote.lock();
        for s in live.difference(&known) {
            hub.ice.session_seen(s);
        }
        for s in known.difference(&live) {
            hub.ice.session_ended(s);
        }
        *known = live;
        Ok(())
    }

    /// The inbox of the proxy for `session` of host `edge`, made on first use.
    fn proxy(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        session: &str,
        edge: &str,
    ) -> mpsc::UnboundedSender<Work> {
        if let Some(p) = self.proxies.lock().get(session) {
            return p.inbox.clone();
        }
        let id: SessionId = Arc::from(session);
        let edge: Arc<str> = Arc::from(edge);
        let (inbox, work) = mpsc::unbounded_channel();
        let (handle, rx) = SessionHandle::new(&hub.limits.send);
        self.proxies.lock().insert(
            id.clone(),
            Proxy {
                edge: edge.clone(),
                inbox: inbox.clone(),
            },
        );
        hub.registry.register(
            id.clone(),
            handle.clone(),
            SocketAddr::from(([0, 0, 0, 0], 0)),
        );
        tokio::spawn(
            self.clone()
                .pump(id.clone(), edge.clone(), rx, handle.kill.clone()),
        );
        tokio::spawn(
            self.clone()
                .proxy_worker(hub.clone(), id, edge, handle, work),
        );
        inbox
    }

    /// Publishes what the owner queues for a proxy to its edge, in order.
    async fn pump(
        self: Arc<Self>,
        id: SessionId,
        edge: Arc<str>,
        mut rx: OutboundQueue,
        kill: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                biased;
                _ = kill.cancelled() => {
                    self.send(&edge, &Msg::Close { src: self.id.to_string(), s: id.to_string(), code: 1008, reason: "too slow: send queue full".into() });
                    return;
                }
                next = rx.recv() => next,
            };
            let msg = match next {
                Some(Outbound::Frame(t)) => Msg::Deliver {
                    src: self.id.to_string(),
                    s: id.to_string(),
                    t: t.to_string(),
                },
                Some(Outbound::Close(code, reason)) => Msg::Close {
                    src: self.id.to_string(),
                    s: id.to_string(),
                    code,
                    reason: reason.to_string(),
                },
                // The edge pings its own sockets.
                Some(Outbound::Ping) => continue,
                None => return,
            };
            self.send(&edge, &msg);
        }
    }

    /// A `login` relayed here names a room this host owns (or may claim):
    /// a room is never made on a host without its lease.
    async fn owns_target(&self, hub: &Hub, text: &str) -> bool {
        let Ok(inbound) = frame::parse(text) else {
            return true;
        };
        if inbound.kind != "login" {
            return true;
        }
        let Some(room) = inbound.data.and_then(|d| login_room(d.get())) else {
            return true;
        };
        if hub.registry.room_exists(&room) {
            return true;
        }
        match self.store.claim(&room, &self.id, LEASE_TTL, "").await {
            Ok(owner) if *owner == *self.id => {
                self.claims
                    .lock()
                    .insert(Arc::from(room.as_str()), Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Handles a proxy's frames one at a time, in order, as a local
    /// session's reader does.
    async fn proxy_worker(
        self: Arc<Self>,
        hub: Arc<Hub>,
        id: SessionId,
        edge: Arc<str>,
        handle: SessionHandle,
        mut work: mpsc::UnboundedReceiver<Work>,
    ) {
        let mut host = String::new();
        while let Some(w) = work.recv().await {
            match w {
                Work::Frame { host: h, text } => {
                    host = h;
                    let sender = Sender {
                        id: &id,
                        handle: &handle,
                        host: &host,
                    };
                    if self.owns_target(&hub, &text).await {
                        dispatch::handle_text(&hub, &sender, &text).await;
                    } else {
                        // The room changed hands since the edge looked.
                        unavailable(&hub, &sender);
                    }
                    let room = hub.registry.room_of(&id).map(|r| r.to_string());
                    let name = hub.registry.username_of(&id).map(|n| n.to_string());
                    self.send(
                        &edge,
                        &Msg::Ack {
                            src: self.id.to_string(),
                            s: id.to_string(),
                            room,
                            name,
                        },
                    );
                }
                Work::Leave => {
                    if let Some(d) = hub.registry.leave(&id) {
                        dispatch::announce_departure(&hub, &d);
                    }
                }
                Work::Gone => break,
            }
        }
        let sender = Sender {
            id: &id,
            handle: &handle,
            host: &host,
        };
        dispatch::handle_disconnect(&hub, &sender).await;
        self.proxies.lock().remove(&*id);
    }

    // ----- Redis: publishing, subscribing, the mirror, the ticker -----

    async fn publisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
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
            let connected =
                tokio::time::timeout(store::CALL_LIMIT, self.store.client.get_async_pubsub()).await;
            if let Ok(Ok(mut pubsub)) = connected
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
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn mirror_writer(
        self: Arc<Self>,
        hub: Arc<Hub>,
        mut rx: mpsc::UnboundedReceiver<MirrorOp>,
    ) {
        while let Some(op) = rx.recv().await {
            if self.leaving.load(Ordering::SeqCst) {
                continue;
            }
            let done = match op {
                MirrorOp::Joined {
                    room,
                    session,
                    username,
                } => {
                    let record = self.record(&session, &username);
                    self.store.put_member(&room, &record).await
                }
                MirrorOp::Left {
                    room,
                    session,
                    room_deleted,
                } => {
                    if room_deleted && !self.keeps(&hub, &room) {
                        self.store.release(&room, &self.id).await
                    } else {
                        self.store.drop_member(&room, &session).await
                    }
                }
                MirrorOp::Clear { room } => self.store.put_members(&room, &[]).await,
                MirrorOp::Announce(s) => {
                    self.store
                        .announce(&self.id, &[s.to_string()], SESSIONS_TTL)
                        .await
                }
                MirrorOp::Retract(s) => self.store.retract(&self.id, &s).await,
            };
            if let Err(e) = done {
                // Written again in full once Redis answers.
                tracing::debug!("cluster: member list not written: {e}");
                self.synced.store(false, Ordering::Relaxed);
            }
        }
    }

    fn record(&self, session: &str, username: &str) -> MemberRecord {
        let host = self
            .proxies
            .lock()
            .get(session)
            .map(|p| p.edge.to_string())
            .unwrap_or_else(|| self.id.to_string());
        MemberRecord {
            session: session.to_string(),
            host,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            username: username.to_string(),
        }
    }

    /// Whether this host still wants `room`'s lease: the room exists here,
    /// or was claimed a moment ago for a join under way.
    fn keeps(&self, hub: &Hub, room: &str) -> bool {
        hub.registry.room_exists(room)
            || self
                .claims
                .lock()
                .get(room)
                .is_some_and(|t| t.elapsed() < CLAIM_GRACE)
    }

    async fn ticker(self: Arc<Self>, hub: Arc<Hub>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        loop {
            ticks = ticks.wrapping_add(1);
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            if self.leaving.load(Ordering::SeqCst) {
                continue;
            }
            let started = Instant::now();
            match self.store.heartbeat(&self.id, ALIVE_TTL).await {
                Ok(had_key) => {
                    if !had_key {
                        // Our heartbeat vanished before its time: Redis
                        // restarted (or was flushed). Everyone's keys are
                        // gone until their next heartbeat.
                        if self.synced.swap(false, Ordering::Relaxed) {
                            tracing::warn!(
                                "cluster: Redis lost this host's state (restarted?): writing it again"
                            );
                        }
                        self.restarted_clocks();
                    }
                    self.stats
                        .rtt_us
                        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if !self.healthy.swap(true, Ordering::Relaxed) {
                        *self.healthy_since.lock() = Instant::now();
                        tracing::info!("cluster: Redis reachable");
                    }
                }
                Err(e) => {
                    if self.healthy.swap(false, Ordering::Relaxed)
                        || self.synced.load(Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "cluster: cannot reach Redis ({e}): serving this host's rooms only until it answers"
                        );
                    }
                    self.synced.store(false, Ordering::Relaxed);
                    continue;
                }
            }
            if let Ok(n) = self.store.hosts_alive().await {
                self.stats.hosts_seen.store(n as u64, Ordering::Relaxed);
            }
            if !self.synced.load(Ordering::Relaxed) {
                match self.resync(&hub).await {
                    Ok(()) => {
                        self.synced.store(true, Ordering::Relaxed);
                        tracing::info!("cluster: this host's rooms are recorded in Redis");
                    }
                    Err(e) => tracing::debug!("cluster: resync failed: {e}"),
                }
            } else {
                self.renew(&hub).await;
                let _ = self.store.refresh_sessions(&self.id, SESSIONS_TTL).await;
                if ticks.is_multiple_of(RECONCILE_TICKS) {
                    let _ = self.reconcile_turn(&hub).await;
                }
            }
            // Only after every live host had time to heartbeat (after an
            // outage too) is a missing heartbeat a death.
            if self.healthy_since.lock().elapsed() >= ALIVE_TTL + TICK {
                self.find_dead(&hub).await;
            }
        }
    }

    /// Redis may have lost every heartbeat: nobody is judged dead until
    /// all had time to beat again.
    fn restarted_clocks(&self) {
        *self.healthy_since.lock() = Instant::now();
        self.suspects.lock().clear();
    }

    /// Renews this host's leases; releases claims whose room never came.
    async fn renew(&self, hub: &Hub) {
        let mut rooms: Vec<RoomId> = hub.registry.room_ids();
        let stale: Vec<RoomId> = {
            let mut claims = self.claims.lock();
            let stale = claims
                .iter()
                .filter(|(r, t)| t.elapsed() >= CLAIM_GRACE && !hub.registry.room_exists(r))
                .map(|(r, _)| r.clone())
                .collect();
            claims.retain(|r, t| t.elapsed() < CLAIM_GRACE && !hub.registry.room_exists(r));
            rooms.extend(claims.keys().cloned());
            stale
        };
        for room in stale {
            let _ = self.store.release(&room, &self.id).await;
        }
        for room in rooms {
            match self.store.claim(&room, &self.id, LEASE_TTL, "").await {
                Ok(owner) if *owner != *self.id => tracing::warn!(
                    room = %room, %owner,
                    "cluster: another host holds the lease of a room this host serves"
                ),
                _ => {}
            }
        }
    }

    /// Writes this host's leases and member lists again (after an outage
    /// or a Redis restart lost them).
    async fn resync(&self, hub: &Hub) -> store::Result<()> {
        for room in hub.registry.room_ids() {
            let owner = self.store.claim(&room, &self.id, LEASE_TTL, "").await?;
            if *owner != *self.id {
                tracing::warn!(room = %room, %owner, "cluster: another host took a room this host serves");
                continue;
            }
            let members: Vec<MemberRecord> = hub
                .registry
                .members(&room)
                .iter()
                .map(|s| {
                    let name = hub.registry.username_of(s).unwrap_or_default();
                    self.record(s, &name)
                })
                .collect();
            self.store.put_members(&room, &members).await?;
        }
        let announced: Vec<String> = self
            .turn_local
            .lock()
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.store
            .announce(&self.id, &announced, SESSIONS_TTL)
            .await?;
        self.reconcile_turn(hub).await
    }

    /// Declares hosts without a heartbeat dead: their sessions leave this
    /// host's rooms, and the rooms they owned are taken over.
    async fn find_dead(self: &Arc<Self>, hub: &Arc<Hub>) {
        let mut peers: HashSet<Arc<str>> = HashSet::new();
        peers.extend(self.routes.lock().values().map(|r| r.owner.clone()));
        peers.extend(self.proxies.lock().values().map(|p| p.edge.clone()));
        peers.remove(&self.id);
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let Ok(alive) = self.store.alive(&peers).await else {
            return;
        };
        let mut died = Vec::new();
        {
            let mut suspects = self.suspects.lock();
            for (peer, alive) in peers.iter().zip(alive) {
                let peer: Arc<str> = Arc::from(peer.as_str());
                if alive {
                    suspects.remove(&peer);
                    continue;
                }
                // Missing for a tick: not a heartbeat in flight.
                let since = *suspects.entry(peer.clone()).or_insert_with(Instant::now);
                if since.elapsed() >= TICK {
                    suspects.remove(&peer);
                    died.push(peer);
                }
            }
        }
        for peer in died {
            self.host_died(hub, peer).await;
        }
    }

    async fn host_died(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>) {
        if !self.dead.lock().insert(dead.clone()) {
            return;
        }
        self.bury(hub, dead).await;
    }

    /// A host is gone (dead, or said goodbye): its sessions leave this
    /// host's rooms and its rooms with members here get a new owner.
    async fn bury(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>) {
        self.stats.hosts_died.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(host = %dead, "cluster: a host is gone (heartbeat lapsed, or it shut down); its sessions are logged out and its rooms taken over");
        // Its sessions in this host's rooms are gone.
        for p in self.proxies.lock().values().filter(|p| p.edge == dead) {
            let _ = p.inbox.send(Work::Gone);
        }
        // Its rooms with members here get a new owner.
        let rooms: HashSet<RoomId> = self
            .routes
            .lock()
            .values()
            .filter(|r| r.owner == dead)
            .map(|r| r.room.clone())
            .collect();
        for room in rooms {
            self.take_over(hub, &room, &dead).await;
        }
        self.touched.lock().values_mut().for_each(|h| {
            h.remove(&dead);
        });
    }

    /// Claims `room` from the dead host; the winner rebuilds it from the
    /// recorded member list, the others point their members at the winner.
    async fn take_over(self: &Arc<Self>, hub: &Arc<Hub>, room: &RoomId, dead: &Arc<str>) {
        let mine: Vec<(SessionId, Route)> = self
            .routes
            .lock()
            .iter()
            .filter(|(_, r)| r.room == *room && r.owner == *dead)
            .map(|(s, r)| (s.clone(), r.clone()))
            .collect();
        let owner = match self.store.claim(room, &self.id, LEASE_TTL, dead).await {
            Ok(o) => o,
            Err(e) => {
                // Redis is down too: these members are in no room now.
                tracing::warn!(room = %room, "cluster: room not taken over ({e})");
                let mut routes = self.routes.lock();
                for (s, _) in &mine {
                    routes.remove(s);
                }
                return;
            }
        };
        if *owner != *self.id {
            let owner: Arc<str> = Arc::from(owner);
            let mut routes = self.routes.lock();
            let mut touched = self.touched.lock();
            for (s, _) in &mine {
                if let Some(r) = routes.get_mut(s) {
                    r.owner = owner.clone();
                    touched.entry(s.clone()).or_default().insert(owner.clone());
                }
            }
            return;
        }
        self.claims.lock().insert(room.clone(), Instant::now());
        self.stats.rooms_taken_over.fetch_add(1, Ordering::Relaxed);
        let recorded = self.store.members(room).await.unwrap_or_default();
        let hosts: Vec<String> = recorded
            .iter()
            .map(|m| m.host.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let alive: HashMap<String, bool> = match self.store.alive(&hosts).await {
            Ok(a) => hosts.iter().cloned().zip(a).collect(),
            Err(_) => HashMap::new(),
        };
        let _ = self.mirror.send(MirrorOp::Clear { room: room.clone() });
        let mut gone = Vec::new();
        for m in &recorded {
            let live = m.host != **dead && alive.get(&m.host).copied().unwrap_or(false);
            if !live {
                gone.push(m);
                continue;
            }
            if *m.host == *self.id {
                self.routes.lock().remove(m.session.as_str());
            } else {
                self.proxy(hub, &m.session, &m.host);
                self.send(
                    &m.host,
                    &Msg::Owner {
                        src: self.id.to_string(),
                        s: m.session.clone(),
                        room: room.to_string(),
                        name: m.username.clone(),
                    },
                );
            }
            hub.registry.restore(&m.session, room, &m.username);
        }
        // Members of this host the record missed (written after it was read).
        for (s, r) in &mine {
            if self.routes.lock().remove(s).is_some() {
                hub.registry.restore(s, room, &r.username);
            }
        }
        let members = hub.registry.members(room);
        for m in gone {
            let notice = Utf8Bytes::from(frame::logout(&m.session, &m.username));
            for s in &members {
                if let Some(h) = hub.registry.handle_of(s) {
                    h.deliver(Outbound::Frame(notice.clone()));
                }
            }
        }
        tracing::info!(room = %room, members = members.len(), "cluster: room taken over");
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

/// `data.roomrequest` of a login, trimmed, when it is a valid room id.
fn login_room(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Login {
        roomrequest: String,
    }
    let login: Login = serde_json::from_str(data).ok()?;
    names::check("room id", &login.roomrequest, MAX_ROOM_CHARS)
        .ok()
        .map(str::to_string)
}

fn unavailable(hub: &Hub, sender: &Sender<'_>) {
    hub.metrics.error(UNAVAILABLE);
    sender.handle.deliver(Outbound::Frame(Utf8Bytes::from(frame::error(
        UNAVAILABLE,
        "The hosts of this service cannot reach each other right now; nothing was delivered. Rooms on this host still work: try again shortly.",
    ))));
}

/// Forwards registry changes to the mirror writer, without blocking.
struct Observer(mpsc::UnboundedSender<MirrorOp>);

impl RoomObserver for Observer {
    fn joined(&self, room: &RoomId, session: &SessionId, username: &Arc<str>) {
        let _ = self.0.send(MirrorOp::Joined {
            room: room.clone(),
            session: session.clone(),
            username: username.clone(),
        });
    }

    fn left(&self, room: &RoomId, session: &SessionId, room_deleted: bool) {
        let _ = self.0.send(MirrorOp::Left {
            room: room.clone(),
            session: session.clone(),
            room_deleted,
        });
    }
}
