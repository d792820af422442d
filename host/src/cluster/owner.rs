//! The owner: other hosts' sessions in this host's rooms run here as
//! proxies, and the rooms' member lists are mirrored into Redis.

use super::*;

/// A session's room and user name there.
type Membership = (RoomId, Arc<str>);

/// What the last frame handled for a session did to its membership: what
/// an `Undo` of that frame reverts, and when.
struct Handled {
    q: u64,
    /// The room (and name) before the frame, and how many members that
    /// room had then (the session among them).
    before: Option<(Membership, usize)>,
    /// The room after it.
    after: Option<RoomId>,
}

impl Cluster {
    /// The inbox of the proxy for `session` of host `edge`, made on first
    /// use: looked up and inserted under one lock, so two messages about a
    /// new session never make two proxies.
    pub(super) fn proxy(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        session: &str,
        edge: &str,
        epoch: u64,
    ) -> mpsc::UnboundedSender<Work> {
        let mut proxies = self.proxies.lock();
        self.proxy_in(&mut proxies, hub, session, edge, epoch)
    }

    /// `proxy`, with the map already locked.
    fn proxy_in(
        self: &Arc<Self>,
        proxies: &mut HashMap<SessionId, Proxy>,
        hub: &Arc<Hub>,
        session: &str,
        edge: &str,
        epoch: u64,
    ) -> mpsc::UnboundedSender<Work> {
        if let Some(p) = proxies.get_mut(session) {
            p.epoch = p.epoch.max(epoch);
            return p.inbox.clone();
        }
        // (Tests widen the window between the look-up and the insert.)
        #[cfg(test)]
        std::thread::sleep(Duration::from_millis(2));
        let id: SessionId = Arc::from(session);
        let edge: Arc<str> = Arc::from(edge);
        let (inbox, work) = mpsc::unbounded_channel();
        let (handle, rx) = SessionHandle::new(&hub.limits.send);
        proxies.insert(
            id.clone(),
            Proxy {
                edge: edge.clone(),
                inbox: inbox.clone(),
                epoch,
            },
        );
        // Registered before the lock is let go: whoever finds the proxy
        // finds its session too.
        hub.registry.register(
            id.clone(),
            handle.clone(),
            SocketAddr::from(([0, 0, 0, 0], 0)),
        );
        tokio::spawn(self.clone().pump(
            id.clone(),
            edge.clone(),
            rx,
            handle.kill.clone(),
            inbox.clone(),
        ));
        tokio::spawn(self.clone().proxy_worker(
            hub.clone(),
            id,
            edge,
            handle,
            (inbox.clone(), work),
        ));
        inbox
    }

    /// Hands `work` to the proxy of `session`. A proxy that is ending takes
    /// nothing more (its inbox is closed once it left the map), so the work
    /// goes to a new proxy rather than being lost.
    pub(super) fn to_proxy(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        session: &str,
        edge: &str,
        epoch: u64,
        work: Work,
    ) {
        let mut work = work;
        for _ in 0..3 {
            match self.proxy(hub, session, edge, epoch).send(work) {
                Ok(()) => return,
                Err(mpsc::error::SendError(w)) => work = w,
            }
        }
        // Unreachable in practice (the ended proxy left the map before its
        // inbox closed); never silently.
        tracing::warn!(
            session,
            "cluster: a relayed message found no proxy to take it"
        );
        if let Work::Frame { q, .. } = work {
            self.send(
                edge,
                Msg::Ack {
                    s: session.to_string(),
                    q,
                    room: None,
                    name: None,
                },
            );
        }
    }

    /// Publishes what the owner queues for a proxy to its edge, in order.
    /// When it gives up on a slow member, the edge is told to close it and
    /// the proxy ends here too (`inbox`): the member leaves the room even
    /// if that word is lost.
    pub(super) async fn pump(
        self: Arc<Self>,
        id: SessionId,
        edge: Arc<str>,
        mut rx: OutboundQueue,
        kill: CancellationToken,
        inbox: mpsc::UnboundedSender<Work>,
    ) {
        loop {
            let next = tokio::select! {
                biased;
                _ = kill.cancelled() => {
                    self.close_slow(&edge, &id, "too slow: send queue full");
                    let _ = inbox.send(Work::Gone);
                    return;
                }
                next = rx.recv() => next,
            };
            let msg = match next {
                Some(Outbound::Frame(t)) => Msg::Deliver {
                    s: id.to_string(),
                    t: t.to_string(),
                },
                Some(Outbound::Close(code, reason)) => Msg::Close {
                    s: id.to_string(),
                    code,
                    reason: reason.to_string(),
                },
                // The edge pings its own sockets.
                Some(Outbound::Ping) => continue,
                None => return,
            };
            if self.send(&edge, msg) == Sent::Full {
                // A frame the owner accepted for this member cannot be
                // queued: the member is closed as a slow one is, rather
                // than silently missing it.
                self.close_slow(&edge, &id, "too slow: the relay between hosts is full");
                let _ = inbox.send(Work::Gone);
                return;
            }
        }
    }

    fn close_slow(&self, edge: &str, id: &str, reason: &str) {
        self.send(
            edge,
            Msg::Close {
                s: id.to_string(),
                code: 1008,
                reason: reason.into(),
            },
        );
    }

    /// Handles a proxy's frames one at a time, in order, as a local
    /// session's reader does.
    pub(super) async fn proxy_worker(
        self: Arc<Self>,
        hub: Arc<Hub>,
        id: SessionId,
        edge: Arc<str>,
        handle: SessionHandle,
        (inbox, mut work): (mpsc::UnboundedSender<Work>, mpsc::UnboundedReceiver<Work>),
    ) {
        let mut host = String::new();
        let mut handed = false;
        // The last frame handled: what an `Undo` of that frame reverts.
        let mut last: Option<Handled> = None;
        while let Some(w) = work.recv().await {
            match w {
                Work::Frame { host: h, q, text } => {
                    host = h;
                    let sender = Sender {
                        id: &id,
                        handle: &handle,
                        host: &host,
                    };
                    let before = hub.registry.room_of(&id).map(|r| {
                        let name = hub.registry.username_of(&id).unwrap_or_default();
                        let count = hub.registry.members(&r).len();
                        ((r, name), count)
                    });
                    if self.owns_target(&hub, &text).await {
                        dispatch::handle_text(&hub, &sender, &text).await;
                    } else {
                        // The room changed hands since the edge looked.
                        unavailable(&hub, &sender);
                    }
                    let after = hub.registry.room_of(&id);
                    let room = after.as_ref().map(|r| r.to_string());
                    last = Some(Handled { q, before, after });
                    let name = hub.registry.username_of(&id).map(|n| n.to_string());
                    self.send(
                        &edge,
                        Msg::Ack {
                            s: id.to_string(),
                            q,
                            room,
                            name,
                        },
                    );
                }
                Work::Leave => {
                    last = None;
                    if let Some(d) = hub.registry.leave(&id) {
                        dispatch::announce_departure(&hub, &d);
                    }
                }
                Work::Undo { q, u } => {
                    if let Some(handled) = last.take_if(|h| h.q == q) {
                        self.undo(&hub, &id, handled);
                    }
                    let room = hub.registry.room_of(&id).map(|r| r.to_string());
                    let name = hub.registry.username_of(&id).map(|n| n.to_string());
                    let s = id.to_string();
                    self.send(
                        &edge,
                        Msg::Ack {
                            s,
                            q: u,
                            room,
                            name,
                        },
                    );
                }
                Work::Rejoin { room, name, seen } => {
                    last = None;
                    tracing::debug!(session = %id, %room, now = ?hub.registry.room_of(&id), "cluster: putting a session back");
                    if hub.registry.room_of(&id).is_none()
                        && self.readmit(&hub, &id, &room, &name, seen)
                    {
                        self.send(
                            &edge,
                            Msg::Owner {
                                s: id.to_string(),
                                room,
                                name,
                            },
                        );
                    }
                }
                Work::Gone => break,
                Work::Handed => {
                    handed = true;
                    break;
                }
            }
        }
        if handed {
            // Not a disconnect: no policy hook, no logout, and its TURN
            // credentials stay honoured; only this host forgets it.
            if let Some(d) = hub.registry.unregister(&id) {
                // (Joined a room here again since the hand-over.)
                dispatch::announce_departure(&hub, &d);
            }
            hub.kv
                .drop_scope(&crate::policy::kv::Scope::Session(id.to_string()));
        } else {
            let sender = Sender {
                id: &id,
                handle: &handle,
                host: &host,
            };
            dispatch::handle_disconnect(&hub, &sender).await;
        }
        // Out of the map, closed, and what was sent to this inbox meanwhile
        // handed to a new proxy (with this one's epoch), all under the
        // map's lock: a message that comes later finds the new proxy with
        // these queued before it, in the order they came.
        let mut proxies = self.proxies.lock();
        let epoch = match proxies.get(&*id) {
            Some(p) if p.inbox.same_channel(&inbox) => proxies.remove(&*id).map_or(0, |p| p.epoch),
            _ => 0,
        };
        work.close();
        let mut left = Vec::new();
        while let Ok(w) = work.try_recv() {
            left.push(w);
        }
        // Only a frame or a Rejoin needs a session here; a lone Leave,
        // Gone or Handed has nothing left to end, and an Undo is answered
        // with the session as it is now (in no room here), so that the
        // edge's errand is done and its next frame does not wait for it.
        if left
            .iter()
            .any(|w| matches!(w, Work::Frame { .. } | Work::Rejoin { .. }))
        {
            let next = self.proxy_in(&mut proxies, &hub, &id, &edge, epoch);
            for w in left {
                // (An inbox in the map is open: it closes only once out.)
                let _ = next.send(w);
            }
            return;
        }
        drop(proxies);
        for w in left {
            if let Work::Undo { u, .. } = w {
                let room = hub.registry.room_of(&id).map(|r| r.to_string());
                let name = room
                    .as_ref()
                    .and_then(|_| hub.registry.username_of(&id))
                    .map(|n| n.to_string());
                let s = id.to_string();
                self.send(
                    &edge,
                    Msg::Ack {
                        s,
                        q: u,
                        room,
                        name,
                    },
                );
            }
        }
    }

    /// Undoes what a frame of `id` did to its membership (its edge answered
    /// it `error unavailable`), if it changed the room and nothing moved the
    /// session since (a policy taking it out, say): out of the room it
    /// joined (the others there get `logout`), back into the one it had if
    /// that room still exists here and has room for it (the others there
    /// get `login`).
    fn undo(&self, hub: &Hub, id: &str, handled: Handled) {
        let before_room = handled.before.as_ref().map(|((r, _), _)| r.clone());
        let now = hub.registry.room_of(id);
        if before_room == handled.after || now != handled.after {
            return;
        }
        tracing::info!(session = %id, room = ?now, "cluster: undoing a frame its edge answered `unavailable`");
        if let Some(d) = hub.registry.leave(id) {
            dispatch::announce_departure(hub, &d);
            // The member may have heard `joined` (before its `error
            // unavailable`, or after it from a slow owner): it hears it is
            // out, as the others do.
            if let Some(me) = hub.registry.handle_of(id) {
                let notice = frame::logout(&d.session, &d.username);
                me.deliver(Outbound::Frame(Utf8Bytes::from(notice)));
            }
        }
        if let Some(((room, name), count)) = handled.before
            && self.has_seat(hub, &room, &name, count)
        {
            self.readmit(hub, id, &room, &name, None);
        }
    }

    /// Whether a member taken back into `room` as `name` keeps what the
    /// room's policies granted when it held `count` members (the member
    /// among them): the room still exists, holds fewer than that (the
    /// capacity a policy gave is not known here, so a room that filled up
    /// again since counts as full), and no one there has the name, as
    /// unique-names compares them (ignoring case and surrounding spaces).
    /// Otherwise the member stays in no room (its next frame gets
    /// `notInRoom`).
    fn has_seat(&self, hub: &Hub, room: &str, name: &str, count: usize) -> bool {
        let members = hub.registry.members(room);
        let same = |n: &str| n.trim().to_lowercase() == name.trim().to_lowercase();
        !members.is_empty()
            && members.len() < count
            && !members
                .iter()
                .any(|m| hub.registry.username_of(m).is_some_and(|n| same(&n)))
    }

    /// Puts `id` (in no room here) silently into `room` as `name`, then
    /// tells the room's others it is back (`login`) and it who came and
    /// went since `seen`: the member list everyone sees is this room's.
    pub(super) fn readmit(
        &self,
        hub: &Hub,
        id: &str,
        room: &str,
        name: &str,
        seen: Option<Vec<(String, String)>>,
    ) -> bool {
        if !hub.registry.restore(id, room, name) {
            return false;
        }
        let members = hub.registry.members(room);
        let notice = Utf8Bytes::from(frame::login_notice(id, name, room));
        for m in members.iter().filter(|m| &***m != id) {
            if let Some(h) = hub.registry.handle_of(m) {
                h.deliver(Outbound::Frame(notice.clone()));
            }
        }
        let (Some(seen), Some(me)) = (seen, hub.registry.handle_of(id)) else {
            return true;
        };
        for (s, n) in &seen {
            if *s != id && !members.iter().any(|m| **m == **s) {
                me.deliver(Outbound::Frame(Utf8Bytes::from(frame::logout(s, n))));
            }
        }
        for m in members.iter().filter(|m| &***m != id) {
            if !seen.iter().any(|(s, _)| **s == **m) {
                let n = hub.registry.username_of(m).unwrap_or_default();
                me.deliver(Outbound::Frame(Utf8Bytes::from(frame::login_notice(
                    m, &n, room,
                ))));
            }
        }
        true
    }

    /// `Msg::Rejoin` of a session whose socket is on this host: `from`
    /// served its room and hands it back to this host, the room's owner.
    pub(super) fn rejoin_local(
        &self,
        hub: &Hub,
        from: &str,
        session: &str,
        room: &str,
        name: &str,
        seen: Option<Vec<(String, String)>>,
    ) {
        if self.is_proxy(session) || hub.registry.room_of(session).is_some() {
            return;
        }
        let routed_there = self
            .routes
            .lock()
            .get(session)
            .is_some_and(|r| *r.owner == *from && *r.room == *room);
        if !routed_there {
            return;
        }
        self.routes.lock().remove(session);
        self.readmit(hub, session, room, name, seen);
    }

    /// A `login` relayed here names a room this host owns (or may claim):
    /// a room is never made on a host without its lease.
    pub(super) async fn owns_target(&self, hub: &Hub, text: &str) -> bool {
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

    pub(super) async fn mirror_writer(
        self: Arc<Self>,
        hub: Arc<Hub>,
        mut rx: mpsc::Receiver<MirrorOp>,
    ) {
        loop {
            if rx.is_empty() && self.mirror_lost.swap(false, Ordering::SeqCst) {
                // Changes were dropped: the ticker writes everything again.
                self.synced.store(false, Ordering::Relaxed);
            }
            let Some(op) = rx.recv().await else {
                return;
            };
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
                    self.store
                        .put_member(&room, &self.id, LEASE_TTL, &record)
                        .await
                        .map(drop)
                }
                MirrorOp::Left {
                    room,
                    session,
                    room_deleted,
                } => {
                    if room_deleted && !self.keeps(&hub, &room) {
                        self.store.release(&room, &self.id).await
                    } else {
                        self.store
                            .drop_member(&room, &self.id, &session)
                            .await
                            .map(drop)
                    }
                }
                MirrorOp::Clear { room } => {
                    self.store.put_members(&room, &self.id, &[]).await.map(drop)
                }
                MirrorOp::Announce(s) => {
                    self.store
                        .announce(&self.id, &[s.to_string()], SESSIONS_TTL, false)
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

    pub(super) fn record(&self, session: &str, username: &str) -> MemberRecord {
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
    pub(super) fn keeps(&self, hub: &Hub, room: &str) -> bool {
        hub.registry.room_exists(room)
            || self
                .claims
                .lock()
                .get(room)
                .is_some_and(|t| t.elapsed() < CLAIM_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::PolicyHarness;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_proxy_is_made_once_however_many_ask_at_once() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            for i in 0..20 {
                let session = format!("s{i}");
                let start = Arc::new(tokio::sync::Barrier::new(8));
                let asks: Vec<_> = (0..8)
                    .map(|_| {
                        let (c, hub, s, start) =
                            (cluster.clone(), hub.clone(), session.clone(), start.clone());
                        tokio::spawn(async move {
                            start.wait().await;
                            c.proxy(&hub, &s, "edge", 0)
                        })
                    })
                    .collect();
                let inboxes: Vec<_> = futures_util::future::join_all(asks)
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                assert!(
                    inboxes.iter().all(|x| x.same_channel(&inboxes[0])),
                    "two proxies made for {session}"
                );
            }
        });
    }

    #[test]
    fn a_host_declared_dead_keeps_the_sessions_it_spoke_of_since_at_a_later_epoch() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            cluster.proxy(&hub, "before", "edge", 1);
            // The edge came back at epoch 2 and put this one back before
            // the death at epoch 1 was acted on here.
            cluster.proxy(&hub, "since", "edge", 2);
            cluster.bury(&hub, Arc::from("edge"), 1).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.is_proxy("before") {
                assert!(
                    Instant::now() < deadline,
                    "the dead edge's session lives on"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                cluster.is_proxy("since"),
                "a session of the edge's new epoch ended"
            );
            assert!(hub.registry.session_key("since").is_some());
        });
    }

    async fn ends(cluster: &Cluster, session: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.is_proxy(session) {
            assert!(Instant::now() < deadline, "{session} lives on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_rejoin_for_a_session_of_a_dead_host_makes_no_member() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            cluster
                .dead
                .lock()
                .insert(Arc::from("edge"), (1, Instant::now()));
            // Host x hands room R over to this host; one member's edge is
            // dead (buried here already).
            let envelope = Envelope {
                src: "x".into(),
                e: 1,
                v: wire::REVISION,
                msg: Msg::Rejoin {
                    s: "ghost".into(),
                    edge: "edge".into(),
                    room: "R".into(),
                    name: "g".into(),
                    seen: None,
                },
            };
            let payload = serde_json::to_string(&envelope).unwrap();
            cluster.on_message(&hub, payload.as_bytes());
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!cluster.is_proxy("ghost"), "a proxy for a dead host");
            assert!(hub.registry.members("R").is_empty(), "a ghost member");
        });
    }

    #[test]
    fn a_session_of_a_buried_host_put_back_since_ends_when_it_is_found_dead_again() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            cluster.host_died(&hub, Arc::from("edge"), 1).await;
            // A message that crossed the burial made a proxy for it.
            cluster.proxy(&hub, "late", "edge", 0);
            cluster.host_died(&hub, Arc::from("edge"), 1).await;
            ends(&cluster, "late").await;
            assert!(hub.registry.session_key("late").is_none());
        });
    }

    fn rejoin(room: &str) -> Work {
        Work::Rejoin {
            room: room.into(),
            name: "n".into(),
            seen: None,
        }
    }

    #[test]
    fn an_ending_proxy_hands_on_an_end_after_a_rejoin() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        // One thread: all three are in the inbox before the worker runs.
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let inbox = cluster.proxy(&hub, "s", "edge", 0);
            inbox.send(Work::Gone).unwrap();
            inbox.send(rejoin("R")).unwrap();
            inbox.send(Work::Gone).unwrap();
            ends(&cluster, "s").await;
            assert!(hub.registry.members("R").is_empty(), "a ghost member");
        });
    }

    #[test]
    fn an_ending_proxy_hands_on_its_epoch() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let inbox = cluster.proxy(&hub, "s", "edge", 2);
            inbox.send(Work::Gone).unwrap();
            inbox.send(rejoin("R")).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while hub.registry.members("R").is_empty() {
                assert!(Instant::now() < deadline, "never put back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let next = cluster.proxies.lock().get("s").map(|p| p.epoch);
            assert_eq!(next, Some(2), "the new proxy forgot the edge's epoch");
        });
    }

    #[test]
    fn a_remote_member_closed_as_too_slow_leaves_the_room() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            // Its send queue overflowed.
            let inbox = cluster.proxy(&hub, "slow", "edge", 0);
            inbox.send(rejoin("R")).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while hub.registry.members("R").is_empty() {
                assert!(Instant::now() < deadline, "never put back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            hub.registry.handle_of("slow").unwrap().kill.cancel();
            ends(&cluster, "slow").await;
            assert!(hub.registry.members("R").is_empty(), "still in the room");

            // The relay to its edge is full.
            cluster.healthy.store(true, Ordering::Relaxed);
            cluster.subscribed.store(true, Ordering::Relaxed);
            let inbox = cluster.proxy(&hub, "far", "edge", 0);
            inbox.send(rejoin("R")).unwrap();
            while hub.registry.members("R").is_empty() {
                assert!(Instant::now() < deadline, "never put back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cluster.out_bytes.store(OUT_BUDGET_BYTES, Ordering::SeqCst);
            let frame = Utf8Bytes::from(r#"{"type":"x"}"#);
            hub.registry
                .handle_of("far")
                .unwrap()
                .deliver(Outbound::Frame(frame));
            ends(&cluster, "far").await;
            assert!(hub.registry.members("R").is_empty(), "still in the room");
        });
    }

    #[test]
    fn an_undo_reverts_only_the_last_frame_handled_and_only_once() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            // (Believes Redis answers: what the proxy's pump relays is queued.)
            cluster.healthy.store(true, Ordering::Relaxed);
            cluster.subscribed.store(true, Ordering::Relaxed);
            let mut out = cluster.out_rx.lock().take().unwrap();
            // Rooms R and T exist here, each with a local member.
            for (member, room) in [("r", "R"), ("t", "T")] {
                let (handle, _rx) = SessionHandle::new(&hub.limits.send);
                let addr = SocketAddr::from(([127, 0, 0, 1], 1));
                hub.registry.register(Arc::from(member), handle, addr);
                assert!(hub.registry.restore(member, room, member));
            }
            let inbox = cluster.proxy(&hub, "s", "edge", 0);
            inbox.send(rejoin("R")).unwrap();
            let login = r#"{"type":"login","data":{"roomrequest":"T","username":"s"}}"#;
            let work = |q| Work::Frame {
                host: "localhost".into(),
                q,
                text: login.into(),
            };
            inbox.send(work(5)).unwrap();
            assert_eq!(answer(&mut out, 5).await.as_deref(), Some("T"));
            // An undo of another frame (one never handled here) changes nothing.
            inbox.send(Work::Undo { q: 4, u: 100 }).unwrap();
            assert_eq!(answer(&mut out, 100).await.as_deref(), Some("T"));
            // The undo of frame 5 puts s back where it was, telling it it
            // left T (it may have heard `joined`) …
            inbox.send(Work::Undo { q: 5, u: 101 }).unwrap();
            let mut told = Vec::new();
            let room = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(m) = out.recv().await {
                    let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
                    match envelope.msg {
                        Msg::Deliver { s, t } if s == "s" => told.push(t),
                        Msg::Ack { q: 101, room, .. } => return room,
                        _ => {}
                    }
                }
                panic!("the queue to other hosts closed");
            })
            .await
            .expect("answered");
            assert_eq!(room.as_deref(), Some("R"));
            // (Its pump forwards what it was told: wait for it.)
            while !told.iter().any(|t| t.contains(r#""type":"logout""#)) {
                let m = tokio::time::timeout(Duration::from_secs(30), out.recv())
                    .await
                    .expect("s never told it is out of T")
                    .unwrap();
                let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
                if let Msg::Deliver { s, t } = envelope.msg
                    && s == "s"
                {
                    told.push(t);
                }
            }
            let logout = told.iter().find(|t| t.contains("logout")).unwrap();
            let logout: serde_json::Value = serde_json::from_str(logout).unwrap();
            assert_eq!(logout["data"]["sessionId"], "s", "{logout}");
            assert_eq!(hub.registry.members("T").len(), 1, "still in T");
            assert_eq!(hub.registry.members("R").len(), 2);
            // … once: asked again, it changes nothing.
            inbox.send(Work::Undo { q: 5, u: 102 }).unwrap();
            assert_eq!(answer(&mut out, 102).await.as_deref(), Some("R"));
        });
    }

    /// A proxy "s" in R (with local members), its inbox and the answers
    /// to the edge (the room of each `Ack` by its number).
    fn undo_setup(
        hub: &Arc<Hub>,
        cluster: &Arc<Cluster>,
        locals: &[(&str, &str)],
    ) -> mpsc::UnboundedSender<Work> {
        for (member, room) in locals {
            let (handle, _rx) = SessionHandle::new(&hub.limits.send);
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            hub.registry.register(Arc::from(*member), handle, addr);
            assert!(hub.registry.restore(member, room, member));
        }
        let inbox = cluster.proxy(hub, "s", "edge", 0);
        inbox.send(rejoin("R")).unwrap();
        inbox
    }

    fn login_frame(q: u64, room: &str, name: &str) -> Work {
        Work::Frame {
            host: "localhost".into(),
            q,
            text: format!(
                r#"{{"type":"login","data":{{"roomrequest":"{room}","username":"{name}"}}}}"#
            ),
        }
    }

    /// The room the `Ack` numbered `u` reports.
    async fn answer(out: &mut mpsc::UnboundedReceiver<Outgoing>, u: u64) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = out.recv().await {
                let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
                if let Msg::Ack { q, room, .. } = envelope.msg
                    && q == u
                {
                    return room;
                }
            }
            panic!("the queue to other hosts closed");
        })
        .await
        .expect("answered")
    }

    #[test]
    fn an_undo_leaves_a_session_moved_since_by_someone_else() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let mut out = cluster.out_rx.lock().take().unwrap();
            let inbox = undo_setup(&hub, &cluster, &[("r", "R"), ("t", "T")]);
            inbox.send(login_frame(5, "T", "s")).unwrap();
            assert_eq!(answer(&mut out, 5).await.as_deref(), Some("T"));
            // A policy takes s out of T (a kick by another member) …
            let d = hub.registry.leave("s").expect("was in T");
            dispatch::announce_departure(&hub, &d);
            // … so undoing its move to T must not put it back in R.
            inbox.send(Work::Undo { q: 5, u: 100 }).unwrap();
            assert_eq!(answer(&mut out, 100).await, None);
            assert_eq!(hub.registry.members("R").len(), 1, "put back in R");
        });
    }

    #[test]
    fn an_undo_puts_no_one_back_into_a_room_that_filled_up() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let mut out = cluster.out_rx.lock().take().unwrap();
            let inbox = undo_setup(&hub, &cluster, &[("r", "R"), ("t", "T")]);
            inbox.send(login_frame(5, "T", "s")).unwrap();
            assert_eq!(answer(&mut out, 5).await.as_deref(), Some("T"));
            // Someone took s's place in R meanwhile.
            let (handle, _rx) = SessionHandle::new(&hub.limits.send);
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            hub.registry.register(Arc::from("x"), handle, addr);
            assert!(hub.registry.restore("x", "R", "x"));
            inbox.send(Work::Undo { q: 5, u: 100 }).unwrap();
            assert_eq!(answer(&mut out, 100).await, None, "back in a fuller R");
            assert_eq!(hub.registry.members("R").len(), 2);
            assert_eq!(hub.registry.members("T").len(), 1, "still in T");
        });
    }

    #[test]
    fn an_undo_puts_no_one_back_into_a_room_where_its_name_is_taken() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let mut out = cluster.out_rx.lock().take().unwrap();
            let locals = [("r", "R"), ("q", "R"), ("t", "T")];
            let inbox = undo_setup(&hub, &cluster, &locals);
            inbox.send(login_frame(5, "T", "s")).unwrap();
            assert_eq!(answer(&mut out, 5).await.as_deref(), Some("T"));
            // q leaves R, and an " N " joins: R is smaller than s (named
            // "n" there) left it, but its name is taken.
            hub.registry.leave("q");
            assert!(hub.registry.restore("q", "R", " N "));
            inbox.send(Work::Undo { q: 5, u: 100 }).unwrap();
            assert_eq!(answer(&mut out, 100).await, None, "two named s in R");
            assert_eq!(hub.registry.members("R").len(), 2);
        });
    }

    #[test]
    fn an_undo_reaching_an_ending_proxy_is_answered() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        // One thread: both are in the inbox before the worker reads either.
        crate::cluster::test_runtime().block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let mut out = cluster.out_rx.lock().take().unwrap();
            let inbox = cluster.proxy(&hub, "s", "edge", 0);
            inbox.send(Work::Gone).unwrap();
            inbox.send(Work::Undo { q: 5, u: 100 }).unwrap();
            ends(&cluster, "s").await;
            let mut answered = false;
            while let Ok(m) = out.try_recv() {
                let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
                if let Msg::Ack { q: 100, room, .. } = envelope.msg {
                    assert_eq!(room, None, "in a room of an ended proxy");
                    answered = true;
                }
            }
            assert!(answered, "the undo was dropped unanswered");
            assert!(!cluster.is_proxy("s"), "a proxy made for an undo");
        });
    }

    #[test]
    fn a_frame_reaching_an_ending_proxy_is_handled_not_lost() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        // One thread: the proxy's worker runs only once the test awaits, so
        // both messages below are in its inbox before it reads the first.
        let runtime = crate::cluster::test_runtime();
        runtime.block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let mut out = cluster.out_rx.lock().take().unwrap();
            // The proxy is told to end (its edge was declared dead), and a
            // frame of the session reaches it before it ended (the edge is
            // back).
            let inbox = cluster.proxy(&hub, "s", "edge", 0);
            inbox.send(Work::Gone).unwrap();
            let frame = r#"{"type":"offer","data":{}}"#.to_string();
            let work = Work::Frame {
                host: "localhost".into(),
                q: 5,
                text: frame,
            };
            assert!(inbox.send(work).is_ok(), "accepted by the ending proxy");
            // Its sender hears back (here: notInRoom, and the ack).
            let acked = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(m) = out.recv().await {
                    let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
                    if let Msg::Ack { s, q, .. } = envelope.msg {
                        return (s, q);
                    }
                }
                panic!("the queue to other hosts closed");
            })
            .await
            .expect("the frame was answered");
            assert_eq!(acked, ("s".to_string(), 5));
        });
    }
}
