//! Heartbeats, lease renewal, state written again after an outage, and
//! the takeover of a dead host's rooms.

use super::*;

impl Cluster {
    pub(super) async fn ticker(self: Arc<Self>, hub: Arc<Hub>) {
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
    pub(super) fn restarted_clocks(&self) {
        *self.healthy_since.lock() = Instant::now();
        self.suspects.lock().clear();
    }

    /// Renews this host's leases; releases claims whose room never came.
    pub(super) async fn renew(&self, hub: &Hub) {
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
    pub(super) async fn resync(&self, hub: &Hub) -> store::Result<()> {
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
    pub(super) async fn find_dead(self: &Arc<Self>, hub: &Arc<Hub>) {
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

    pub(super) async fn host_died(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>) {
        if !self.dead.lock().insert(dead.clone()) {
            return;
        }
        self.bury(hub, dead).await;
    }

    /// A host is gone (dead, or said goodbye): its sessions leave this
    /// host's rooms and its rooms with members here get a new owner.
    pub(super) async fn bury(self: &Arc<Self>, hub: &Arc<Hub>, dead: Arc<str>) {
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
}
