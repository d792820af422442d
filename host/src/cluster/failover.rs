//! Heartbeats, lease renewal, state written again after an outage, and
//! the takeover of a dead host's rooms.

use super::*;

impl Cluster {
    pub(super) async fn ticker(self: Arc<Self>, hub: Arc<Hub>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        let mut beaten = false;
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
            let epoch = self.epoch.load(Ordering::SeqCst);
            match self.store.heartbeat(&self.id, epoch, ALIVE_TTL).await {
                Ok(had_key) => {
                    if !had_key && std::mem::replace(&mut beaten, true) {
                        // Our heartbeat lapsed: Redis restarted (or was
                        // flushed), or this host was cut off from it long
                        // enough for the others to declare it dead and log
                        // its sessions out. From a new epoch on (what this
                        // host sent before may be dropped as stale), its
                        // rooms are claimed again and its members put back.
                        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                        self.rejoin.store(true, Ordering::SeqCst);
                        self.synced.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            epoch,
                            "cluster: this host's heartbeat had lapsed (Redis restarted, or this host was cut off from it): writing its state again and putting its members back in their rooms"
                        );
                        self.restarted_clocks();
                    } else if !had_key {
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
            self.resend_errands();
            // Only after every live host had time to heartbeat (after an
            // outage too) is a missing heartbeat a death.
            if self.healthy_since.lock().elapsed() >= ALIVE_TTL + TICK {
                self.find_dead(&hub).await;
            }
            self.prune_dead(Instant::now());
        }
    }

    /// Redis may have lost every heartbeat: nobody is judged dead until
    /// all had time to beat again.
    pub(super) fn restarted_clocks(&self) {
        *self.healthy_since.lock() = Instant::now();
        self.suspects.lock().clear();
    }

    /// Renews this host's leases; releases claims whose room never came.
    pub(super) async fn renew(self: &Arc<Self>, hub: &Arc<Hub>) {
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
                Ok(owner) if *owner != *self.id => self.lost_lease(hub, &room, owner),
                _ => {}
            }
        }
    }

    /// Another host holds the lease of `room`: a claim for a join under
    /// way is dropped; a room this host serves is handed over to the owner.
    fn lost_lease(self: &Arc<Self>, hub: &Arc<Hub>, room: &RoomId, owner: String) {
        self.claims.lock().remove(room);
        if hub.registry.room_exists(room) {
            self.hand_over(hub, room, Arc::from(owner));
        }
    }

    /// Moves every member of this host's copy of `room` into the copy of
    /// `owner`, which holds the lease (this host was cut off and declared
    /// dead, or two hosts made the room at once): each leaves this copy
    /// silently and is put back into the owner's, which tells the others
    /// there it is back and it who came and went. This host's own
    /// members are relayed to the owner from now on; other hosts' members
    /// are routed there by the owner.
    pub(super) fn hand_over(self: &Arc<Self>, hub: &Arc<Hub>, room: &RoomId, owner: Arc<str>) {
        let members = hub.registry.members(room);
        let seen: Vec<(String, String)> = members
            .iter()
            .map(|m| {
                let name = hub.registry.username_of(m).unwrap_or_default();
                (m.to_string(), name.to_string())
            })
            .collect();
        tracing::warn!(
            room = %room, %owner, members = members.len(),
            "cluster: another host holds the lease of a room this host serves: handing its members over"
        );
        self.hand_members(hub, room, &owner, &members, &seen);
    }

    /// `hand_over` of `members` (read from the room a moment ago, with
    /// their names in `seen`).
    fn hand_members(
        &self,
        hub: &Hub,
        room: &RoomId,
        owner: &Arc<str>,
        members: &[SessionId],
        seen: &[(String, String)],
    ) {
        for (m, (_, name)) in members.iter().zip(seen) {
            let edge = self.proxies.lock().get(&**m).map(|p| p.edge.clone());
            // Out of this copy without a word: the member stays in the call.
            if hub.registry.leave(m).is_none() {
                // It ended since the room was read (a proxy that ended is
                // no local member): nothing to hand over.
                continue;
            }
            let edge = match edge {
                Some(edge) => {
                    if let Some(p) = self.proxies.lock().get(&**m) {
                        let _ = p.inbox.send(Work::Handed);
                    }
                    edge
                }
                None => {
                    let route = Route {
                        room: room.clone(),
                        owner: owner.clone(),
                        username: Arc::from(name.as_str()),
                    };
                    self.routes.lock().insert(m.clone(), route);
                    self.touched
                        .lock()
                        .entry(m.clone())
                        .or_default()
                        .insert(owner.clone());
                    self.id.clone()
                }
            };
            self.send(
                owner,
                Msg::Rejoin {
                    s: m.to_string(),
                    edge: edge.to_string(),
                    room: room.to_string(),
                    name: name.clone(),
                    seen: Some(seen.to_vec()),
                },
            );
        }
    }

    /// Writes this host's leases and member lists again (after an outage
    /// or a Redis restart lost them).
    pub(super) async fn resync(self: &Arc<Self>, hub: &Arc<Hub>) -> store::Result<()> {
        for room in hub.registry.room_ids() {
            let owner = self.store.claim(&room, &self.id, LEASE_TTL, "").await?;
            if *owner != *self.id {
                self.lost_lease(hub, &room, owner);
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
            self.store.put_members(&room, &self.id, &members).await?;
        }
        if self.rejoin.swap(false, Ordering::SeqCst) {
            // The owners of the rooms this host's sessions are in may have
            // logged them out: each is put back (an owner that did not
            // finds it still there and does nothing).
            let routes: Vec<(SessionId, Route)> = self
                .routes
                .lock()
                .iter()
                .map(|(s, r)| (s.clone(), r.clone()))
                .collect();
            for (s, r) in routes {
                tracing::debug!(session = %s, owner = %r.owner, room = %r.room, "cluster: asking the owner to put a session back");
                self.send(
                    &r.owner,
                    Msg::Rejoin {
                        s: s.to_string(),
                        edge: self.id.to_string(),
                        room: r.room.to_string(),
                        name: r.username.to_string(),
                        seen: None,
                    },
                );
            }
        }
        let announced: Vec<String> = self
            .turn_local
            .lock()
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.store
            .announce(&self.id, &announced, SESSIONS_TTL, true)
            .await?;
        self.reconcile_turn(hub).await
    }

    /// Declares hosts without a heartbeat dead: their sessions leave this
    /// host's rooms, and the rooms they owned are taken over.
    pub(super) async fn find_dead(self: &Arc<Self>, hub: &Arc<Hub>) {
        let mut peers: HashSet<Arc<str>> = HashSet::new();
        peers.extend(self.routes.lock().values().map(|r| r.owner.clone()));
        peers.extend(self.proxies.lock().values().map(|p| p.edge.clone()));
        peers.extend(self.owed.lock().keys().map(|(_, h)| h.clone()));
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
            // Checked again atomically with reading its epoch: a host that
            // beat meanwhile is not dead.
            if let Ok(Some(epoch)) = self.store.dead_epoch(&peer).await {
                self.host_died(hub, peer, epoch).await;
            }
        }
    }

    pub(super) async fn host_died(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>, epoch: u64) {
        {
            let mut known = self.dead.lock();
            if let Some(&(buried, _)) = known.get(&dead)
                && buried >= epoch
            {
                drop(known);
                // Already buried; a session of it put back since (by a
                // message that crossed the burial) still ends, and an
                // errand made for it meanwhile is dropped.
                self.drop_errands_to(&dead);
                for p in self
                    .proxies
                    .lock()
                    .values()
                    .filter(|p| p.edge == dead && p.epoch <= buried)
                {
                    let _ = p.inbox.send(Work::Gone);
                }
                return;
            }
            known.insert(dead.clone(), (epoch, Instant::now()));
        }
        self.bury(hub, dead, epoch).await;
    }

    /// A host is gone (dead, or said goodbye): its sessions leave this
    /// host's rooms and its rooms with members here get a new owner.
    pub(super) async fn bury(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>, epoch: u64) {
        self.stats.hosts_died.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(host = %dead, "cluster: a host is gone (heartbeat lapsed, or it shut down); its sessions are logged out and its rooms taken over");
        // (Before the takeover below changes routes.)
        self.drop_errands_to(&dead);
        // Its sessions in this host's rooms are gone (but for those it
        // spoke of again since, at a later epoch: it is back).
        for p in self
            .proxies
            .lock()
            .values()
            .filter(|p| p.edge == dead && p.epoch <= epoch)
        {
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

    /// A host is gone: its proxies went with it, so nothing is left to do
    /// there; a session in no room elsewhere whose undo it owed (an undone
    /// `login`) keeps refusing a new owner's word for a while (`undone`).
    /// (One routed to a room has its route to judge that word by.)
    fn drop_errands_to(&self, dead: &Arc<str>) {
        let mut undone = Vec::new();
        let routes = self.routes.lock();
        self.owed.lock().retain(|(s, h), o| {
            if *h != *dead {
                return true;
            }
            if matches!(o.errand, Errand::Undo(_)) && !routes.contains_key(s) {
                undone.push(s.clone());
            }
            false
        });
        drop(routes);
        let now = Instant::now();
        self.undone
            .lock()
            .extend(undone.into_iter().map(|s| (s, now)));
    }

    /// Claims `room` from the dead host; the winner rebuilds it from the
    /// recorded member list, the others point their members at the winner.
    pub(super) async fn take_over(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        room: &RoomId,
        dead: &Arc<str>,
    ) {
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
        self.mirror(MirrorOp::Clear { room: room.clone() });
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
                self.proxy(hub, &m.session, &m.host, 0);
                self.send(
                    &m.host,
                    Msg::Owner {
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
        // (One put back meanwhile by its host's Rejoin is not gone.)
        for m in gone
            .into_iter()
            .filter(|m| !members.iter().any(|s| **s == *m.session))
        {
            let notice = Utf8Bytes::from(frame::logout(&m.session, &m.username));
            for s in &members {
                if let Some(h) = hub.registry.handle_of(s) {
                    h.deliver(Outbound::Frame(notice.clone()));
                }
            }
        }
        tracing::info!(room = %room, members = members.len(), "cluster: room taken over");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::PolicyHarness;

    #[test]
    fn a_member_that_ended_during_a_hand_over_is_not_handed_over() {
        let harness = PolicyHarness::new(&[]).unwrap();
        let hub = harness.hub();
        let runtime = crate::cluster::test_runtime();
        let _in_runtime = runtime.enter();
        let cluster = Cluster::new("redis://127.0.0.1:1/0").unwrap();
        let mut out = cluster.out_rx.lock().take().unwrap();
        let (handle, _rx) = SessionHandle::new(&hub.limits.send);
        let local: SessionId = Arc::from("local");
        hub.registry
            .register(local.clone(), handle, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(hub.registry.restore("local", "R", "l"));
        let room: RoomId = Arc::from("R");
        // "ended" was in the room when it was read: a proxy that ended
        // since (out of the registry, out of the proxies).
        let members = vec![local.clone(), Arc::from("ended")];
        let seen = vec![
            ("local".to_string(), "l".to_string()),
            ("ended".to_string(), "e".to_string()),
        ];
        cluster.hand_members(&hub, &room, &Arc::from("x"), &members, &seen);
        let mut rejoins = Vec::new();
        while let Ok(m) = out.try_recv() {
            let envelope: Envelope = serde_json::from_str(&m.payload).unwrap();
            if let Msg::Rejoin { s, .. } = envelope.msg {
                rejoins.push(s);
            }
        }
        assert_eq!(rejoins, vec!["local".to_string()]);
        assert!(
            cluster.routes.lock().get("ended").is_none(),
            "a route for it"
        );
        assert!(cluster.routes.lock().get("local").is_some());
    }
}
