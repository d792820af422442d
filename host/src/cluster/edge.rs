//! The edge: a local client's frames about a room another host owns are
//! relayed to that owner, one at a time, and its membership followed.

use super::*;

impl Cluster {
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
            if !self.reachable() {
                // Redis is known to be down: refused now, not after a
                // look-up that cannot answer.
                unavailable(hub, sender);
                return true;
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

    pub(super) async fn relay(&self, hub: &Hub, sender: &Sender<'_>, text: &str, owner: Arc<str>) {
        let id = sender.id;
        if !self.reachable() {
            // Redis is known to be down: refused now, not after ACK_WAIT.
            unavailable(hub, sender);
            return;
        }
        if !self.errand_first(id, &owner).await {
            unavailable(hub, sender);
            return;
        }
        let (tx, rx) = oneshot::channel();
        let q = self.relay_seq.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(id.clone(), Pending { q, tx });
        self.touched
            .lock()
            .entry(id.clone())
            .or_default()
            .insert(owner.clone());
        let sent = self.send(
            &owner,
            Msg::Frame {
                s: id.to_string(),
                q,
                h: sender.host.to_string(),
                t: text.to_string(),
            },
        );
        let acked = match sent {
            Sent::Queued => tokio::time::timeout(ACK_WAIT, rx).await.ok(),
            // Not queued: refused now, nothing was delivered.
            Sent::Dropped | Sent::Full => None,
        };
        let ack = match acked {
            Some(Ok(ack)) => ack,
            _ => {
                self.forget_pending(id, q);
                if sent == Sent::Queued {
                    // The owner may have handled it and only its answer be
                    // lost: whatever it did to the session's membership is
                    // undone, so that `unavailable` stays true.
                    self.owe(id, &owner, Errand::Undo(q));
                }
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
                    self.owe(id, &p.owner, Errand::Leave);
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

    fn forget_pending(&self, id: &str, q: u64) {
        let mut pending = self.pending.lock();
        if pending.get(id).is_some_and(|p| p.q == q) {
            pending.remove(id);
        }
    }

    /// Gives `host` an errand about local session `id` (replacing the one
    /// it had), sent now and again until `host` answers. None for a host
    /// buried here: its proxies went with it (and a relay that timed out
    /// after the burial would otherwise leave an errand nothing clears).
    pub(super) fn owe(&self, id: &SessionId, host: &Arc<str>, errand: Errand) {
        if self.dead.lock().contains_key(host) {
            if matches!(errand, Errand::Undo(_)) && !self.routes.lock().contains_key(id) {
                // (A new owner may restore it from the dead host's record.)
                self.undone.lock().insert(id.clone(), Instant::now());
            }
            return;
        }
        if self.old_hosts.lock().contains(host) {
            // A host from before errands: told once, as it always was.
            let s = id.to_string();
            match errand {
                Errand::Undo(_) => {}
                Errand::Leave => _ = self.send(host, Msg::Leave { s, u: None }),
                Errand::Gone => _ = self.send(host, Msg::Gone { s, u: None }),
            }
            return;
        }
        let owed = Owed {
            errand,
            u: self.relay_seq.fetch_add(1, Ordering::Relaxed),
            since: Instant::now(),
        };
        let msg = owed.msg(id);
        self.owed.lock().insert((id.clone(), host.clone()), owed);
        self.send(host, msg);
    }

    /// An errand for `owner` about `id` (an undo, a leave) is sent again,
    /// and answered, before the session's next frame goes there: it never
    /// lands after a later frame. False when the owner did not answer in
    /// time.
    async fn errand_first(&self, id: &SessionId, owner: &Arc<str>) -> bool {
        let key = (id.clone(), owner.clone());
        let Some(owed) = self.owed.lock().get(&key).cloned() else {
            return true;
        };
        if self.old_hosts.lock().contains(owner) {
            // Found to be from before errands since: it will not answer.
            self.owed.lock().remove(&key);
            return true;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .insert(id.clone(), Pending { q: owed.u, tx });
        self.send(owner, owed.msg(id));
        let _ = tokio::time::timeout(ACK_WAIT, rx).await;
        self.forget_pending(id, owed.u);
        !self.owed.lock().contains_key(&key)
    }

    /// An `Ack` from `host` numbered `u`: when it answers an errand about
    /// `session`, the errand is done. For an undo, the owner's word on
    /// where the session is now is taken as its route if it fits what this
    /// host knows; if not, the owner is told to take it out.
    pub(super) fn errand_done(
        &self,
        hub: &Hub,
        host: &str,
        session: &str,
        u: u64,
        (room, name): (&Option<String>, &Option<String>),
    ) {
        let host: Arc<str> = Arc::from(host);
        // (A session that ended is owed its `Gone` all the same.)
        let key: (SessionId, Arc<str>) = (Arc::from(session), host.clone());
        let errand = {
            let mut owed = self.owed.lock();
            match owed.get(&key) {
                Some(o) if o.u == u => owed.remove(&key).map(|o| o.errand),
                _ => None,
            }
        };
        if !matches!(errand, Some(Errand::Undo(_))) {
            return;
        }
        let Some(id) = hub.registry.session_key(session) else {
            return;
        };
        let mut routes = self.routes.lock();
        let routed_there = routes.get(session).map(|r| r.owner == host);
        match room {
            None => {
                if routed_there == Some(true) {
                    routes.remove(session);
                }
            }
            Some(room)
                if routed_there == Some(true)
                    || (routed_there.is_none() && hub.registry.room_of(session).is_none()) =>
            {
                let route = Route {
                    room: Arc::from(room.as_str()),
                    owner: host,
                    username: Arc::from(name.as_deref().unwrap_or_default()),
                };
                routes.insert(id, route);
            }
            Some(_) => {
                drop(routes);
                self.owe(&id, &host, Errand::Leave);
            }
        }
    }

    /// Sends again every errand not answered yet (the ticker, while Redis
    /// answers): one published while Redis or the other host's
    /// subscription was down is lost, as any message is. One unanswered
    /// for `ERRAND_LIMIT` is given up (a host that never answers them).
    pub(super) fn resend_errands(&self) {
        if !self.reachable() {
            return;
        }
        let owed: Vec<((SessionId, Arc<str>), Owed)> = {
            let old = self.old_hosts.lock();
            let mut owed = self.owed.lock();
            owed.retain(|(_, h), o| o.since.elapsed() < ERRAND_LIMIT && !old.contains(h));
            owed.iter().map(|(k, o)| (k.clone(), o.clone())).collect()
        };
        for ((s, host), o) in owed {
            self.send(&host, o.msg(&s));
        }
    }

    /// The owner acknowledged frame `q` of `session`: its relay goes on.
    /// An ack of an earlier frame (one that timed out) is ignored.
    pub(super) fn settle(&self, session: &str, q: u64, ack: Ack) -> bool {
        let mut pending = self.pending.lock();
        if pending.get(session).is_none_or(|p| p.q != q) {
            return false;
        }
        pending
            .remove(session)
            .is_some_and(|p| p.tx.send(ack).is_ok())
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
        if let Some(old) = self.routes.lock().remove(session)
            && let Some(id) = hub.registry.session_key(session)
        {
            self.owe(&id, &old.owner, Errand::Leave);
        }
    }

    /// Once per session: its TURN credentials are honoured on every host.
    pub(super) fn announce_turn(&self, id: &SessionId) {
        if self.turn_local.lock().insert(id.clone()) {
            self.mirror(MirrorOp::Announce(id.clone()));
        }
    }

    /// A local session ended: the hosts that knew it are told.
    pub fn session_closed(&self, session: &str) {
        if self.is_proxy(session) {
            return;
        }
        if let Some(id) = self.turn_local.lock().take(session) {
            self.mirror(MirrorOp::Retract(id));
        }
        self.routes.lock().remove(session);
        self.pending.lock().remove(session);
        // Its end, told to every host that knew it, replaces what else they
        // were owed.
        self.owed.lock().retain(|(s, _), _| **s != *session);
        let hosts = self.touched.lock().remove(session).unwrap_or_default();
        let id: SessionId = Arc::from(session);
        for h in hosts {
            self.owe(&id, &h, Errand::Gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(room: &str) -> Ack {
        Ack {
            room: Some(room.into()),
            name: None,
        }
    }

    #[test]
    fn a_login_elsewhere_while_redis_is_known_down_is_refused_without_asking_it() {
        let harness = crate::harness::PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        let runtime = crate::cluster::test_runtime();
        runtime.block_on(async {
            // A "Redis" that takes connections and never answers; this
            // host's last heartbeat failed.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}/0", listener.local_addr().unwrap());
            let cluster = Cluster::new(&url).unwrap();
            let id: SessionId = Arc::from("s1");
            let (handle, mut rx) = SessionHandle::new(&hub.limits.send);
            let sender = Sender {
                id: &id,
                handle: &handle,
                host: "localhost",
            };
            for text in [
                r#"{"type":"login","data":{"roomrequest":"elsewhere","username":"a"}}"#,
                r#"{"type":"randomCheck","data":"elsewhere"}"#,
            ] {
                assert!(cluster.route(&hub, &sender, text).await, "{text}");
                let Some(Outbound::Frame(f)) = rx.recv().await else {
                    panic!("no answer to {text}");
                };
                assert!(f.as_str().contains(UNAVAILABLE), "{f}");
            }
            let asked = tokio::time::timeout(Duration::from_millis(100), listener.accept());
            assert!(asked.await.is_err(), "Redis was asked");
        });
    }

    #[tokio::test]
    async fn a_host_from_before_errands_is_told_once_and_not_waited_for() {
        let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        let mut out = cluster.out_rx.lock().take().unwrap();
        let (old, new): (Arc<str>, Arc<str>) = (Arc::from("old"), Arc::from("new"));
        cluster.old_hosts.lock().insert(old.clone());
        let s: SessionId = Arc::from("s1");
        cluster.owe(&s, &old, Errand::Undo(3));
        cluster.owe(&s, &old, Errand::Leave);
        cluster.owe(&s, &new, Errand::Leave);
        let mut sent = Vec::new();
        while let Ok(m) = out.try_recv() {
            let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
            assert_eq!(envelope.v, wire::REVISION);
            sent.push((m.channel, envelope.msg));
        }
        let [
            (to_old, Msg::Leave { u: None, .. }),
            (to_new, Msg::Leave { u: Some(_), .. }),
        ] = &sent[..]
        else {
            panic!("{sent:?}");
        };
        assert_eq!(to_old, &store::host_channel("old"));
        assert_eq!(to_new, &store::host_channel("new"));
        let owed: Vec<_> = cluster.owed.lock().keys().cloned().collect();
        assert_eq!(owed, vec![(s, new)], "only the new host is waited for");
    }

    #[test]
    fn a_host_buried_here_is_given_no_errand_and_keeps_none() {
        let harness = crate::harness::PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        let runtime = crate::cluster::test_runtime();
        runtime.block_on(async {
            let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
            let dead: Arc<str> = Arc::from("dead");
            let s: SessionId = Arc::from("s1");
            cluster.host_died(&hub, dead.clone(), 1).await;
            // A relay to it that timed out after the burial.
            cluster.owe(&s, &dead, Errand::Undo(3));
            assert!(cluster.owed.lock().is_empty(), "an errand for a dead host");
            // One made before the burial was known (a race): found dead again,
            // it goes.
            let owed = Owed {
                errand: Errand::Undo(4),
                u: 9,
                since: Instant::now(),
            };
            cluster.owed.lock().insert((s, dead.clone()), owed);
            cluster.host_died(&hub, dead, 1).await;
            assert!(cluster.owed.lock().is_empty(), "kept after a burial");
        });
    }

    #[tokio::test]
    async fn a_late_ack_of_an_earlier_frame_is_not_taken_for_the_current_one() {
        let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        let session: SessionId = Arc::from("s1");
        let (tx, mut rx) = oneshot::channel();
        cluster
            .pending
            .lock()
            .insert(session.clone(), Pending { q: 8, tx });
        // Frame 7 timed out; its ack comes now, while frame 8 waits.
        assert!(!cluster.settle("s1", 7, ack("old")));
        assert!(rx.try_recv().is_err(), "frame 8 still waits");
        assert!(cluster.settle("s1", 8, ack("new")));
        assert_eq!(rx.await.unwrap().room.as_deref(), Some("new"));
        assert!(!cluster.settle("s1", 8, ack("again")), "settled once");
    }
}
