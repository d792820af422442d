//! The owner: other hosts' sessions in this host's rooms run here as
//! proxies, and the rooms' member lists are mirrored into Redis.

use super::*;

impl Cluster {
    /// The inbox of the proxy for `session` of host `edge`, made on first use.
    pub(super) fn proxy(
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
    pub(super) async fn pump(
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

    /// Handles a proxy's frames one at a time, in order, as a local
    /// session's reader does.
    pub(super) async fn proxy_worker(
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
                Work::Frame { host: h, q, text } => {
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
                            q,
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
