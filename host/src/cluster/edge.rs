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
                let mut pending = self.pending.lock();
                if pending.get(&**id).is_some_and(|p| p.q == q) {
                    pending.remove(&**id);
                }
                drop(pending);
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
                    self.send(&p.owner, Msg::Leave { s: id.to_string() });
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
        if let Some(old) = self.routes.lock().remove(session) {
            self.send(
                &old.owner,
                Msg::Leave {
                    s: session.to_string(),
                },
            );
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
        let hosts = self.touched.lock().remove(session).unwrap_or_default();
        for h in hosts {
            self.send(
                &h,
                Msg::Gone {
                    s: session.to_string(),
                },
            );
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
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
