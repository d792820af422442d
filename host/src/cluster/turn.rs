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
        let Some((sign, host, session)) = parse_turn_message(text) else {
            return;
        };
        if host == &*self.id {
            return;
        }
        match sign {
            '!' => {
                // A host leaving: from now on nothing it sends counts.
                let gone: Arc<str> = Arc::from(host);
                if self
                    .dead
                    .lock()
                    .insert(gone.clone(), (u64::MAX, Instant::now()))
                    .is_none()
                {
                    let (this, hub) = (self.clone(), hub.clone());
                    tokio::spawn(async move { this.bury(&hub, gone, u64::MAX).await });
                }
            }
            '+' => {
                hub.ice.session_seen(session);
                self.turn_remote.lock().insert(session.to_string());
            }
            '-' if self.turn_remote.lock().remove(session) => {
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

/// `SIGN HOST SESSION` → its parts. The payload comes from another host
/// through Redis: anything malformed (a multi-byte first character
/// included) is `None`, never a panic that would end the subscriber.
fn parse_turn_message(text: &str) -> Option<(char, &str, &str)> {
    let sign = text.chars().next()?;
    let (host, session) = text[sign.len_utf8()..].split_once(' ')?;
    Some((sign, host, session))
}

#[cfg(test)]
mod tests {
    use super::parse_turn_message;

    #[test]
    fn malformed_turn_messages_are_ignored_not_a_panic() {
        assert_eq!(parse_turn_message("+h1 s1"), Some(('+', "h1", "s1")));
        assert_eq!(parse_turn_message("!h1 "), Some(('!', "h1", "")));
        assert_eq!(parse_turn_message("éh1 s1"), Some(('é', "h1", "s1")));
        assert_eq!(parse_turn_message("é"), None);
        assert_eq!(parse_turn_message(""), None);
        assert_eq!(parse_turn_message("+nospace"), None);
    }
}
