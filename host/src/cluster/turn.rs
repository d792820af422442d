//! TURN across hosts: which sessions, on any host, hold credentials that
//! this host's TURN server honours.

use super::*;

impl Cluster {
    /// `+HOST SESSION` / `-HOST SESSION`: another host's session began or
    /// ended holding TURN credentials.
    pub(super) fn on_turn_message(self: &Arc<Self>, hub: &Arc<Hub>, payload: &[u8]) {
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
                if self.dead.lock().insert(gone.clone(), u64::MAX).is_none() {
                    let (this, hub) = (self.clone(), hub.clone());
                    tokio::spawn(async move { this.bury(&hub, gone, u64::MAX).await });
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
    pub(super) async fn reconcile_turn(&self, hub: &Hub) -> store::Result<()> {
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
}
