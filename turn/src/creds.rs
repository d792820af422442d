//! Owns short-lived TURN credentials (TURN REST API scheme, as coturn's
//! `use-auth-secret`), the [`SessionDirectory`] that says which signaling
//! sessions still have their credentials honoured, and the `turn` crate
//! auth handler that combines both.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::prelude::BASE64_STANDARD;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64_STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Makes a credential for `session_id`, valid for `ttl` from now:
/// username `"<unix-expiry>:<sessionId>"`, password
/// base64(HMAC-SHA1(secret, username)).
pub fn credentials(secret: &[u8], session_id: &str, ttl: Duration) -> (String, String) {
    let expiry = unix_now().saturating_add(ttl.as_secs());
    let username = format!("{expiry}:{session_id}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// Splits a REST username into its expiry and session id.
pub fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, session) = username.split_once(':')?;
    let expiry = expiry.parse::<u64>().ok()?;
    if session.is_empty() {
        return None;
    }
    Some((expiry, session))
}

#[derive(Debug, Clone, Copy)]
enum SessionState {
    Live,
    Ended(Instant),
}

/// Which signaling sessions have their TURN credentials honoured.
///
/// Thread-safe; share it as `Arc<SessionDirectory>` between the signaling
/// code (which calls [`session_started`](Self::session_started) and
/// [`session_ended`](Self::session_ended)) and the TURN server.
#[derive(Debug)]
pub struct SessionDirectory {
    inner: Mutex<Directory>,
    grace_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Directory {
    sessions: HashMap<String, SessionState>,
    /// Ended sessions, oldest first, so forgetting them after their grace
    /// costs nothing per disconnect beyond the entries that expire.
    ended: VecDeque<(Instant, String)>,
}

impl Directory {
    /// Forgets ended sessions whose grace is over (unless they started again).
    fn expire(&mut self, now: Instant, grace: Duration) {
        while let Some((t, id)) = self
            .ended
            .pop_front_if(|(t, _)| now.duration_since(*t) >= grace)
        {
            if let Some(SessionState::Ended(e)) = self.sessions.get(&id)
                && *e == t
            {
                self.sessions.remove(&id);
            }
        }
    }
}

impl Default for SessionDirectory {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl SessionDirectory {
    /// An empty directory whose ended sessions stay honoured for `grace`.
    /// [`crate::TurnServer::start`] replaces the grace with the config's.
    pub fn new(grace: Duration) -> Self {
        Self {
            inner: Mutex::new(Directory::default()),
            grace_ms: AtomicU64::new(duration_ms(grace)),
        }
    }

    /// Changes how long ended sessions stay honoured.
    pub fn set_grace(&self, grace: Duration) {
        self.grace_ms.store(duration_ms(grace), Ordering::Relaxed);
    }

    /// How long ended sessions stay honoured.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        // A panic while holding this lock leaves plain collections: keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A signaling session began (or reconnected): honour its credentials.
    pub fn session_started(&self, session_id: &str) {
        self.lock()
            .sessions
            .insert(session_id.to_owned(), SessionState::Live);
    }

    /// A signaling session ended: its credentials stay honoured for the grace
    /// period, then stop working (and its relays are closed).
    pub fn session_ended(&self, session_id: &str) {
        let grace = self.grace();
        let now = Instant::now();
        let mut guard = self.lock();
        let dir = &mut *guard;
        // A session that was never given credentials has nothing to honour.
        if let Some(state @ SessionState::Live) = dir.sessions.get_mut(session_id) {
            *state = SessionState::Ended(now);
            dir.ended.push_back((now, session_id.to_owned()));
        }
        dir.expire(now, grace);
    }

    /// True while the session is live, or ended less than the grace ago.
    pub fn is_honoured(&self, session_id: &str) -> bool {
        match self.lock().sessions.get(session_id) {
            Some(SessionState::Live) => true,
            Some(SessionState::Ended(t)) => t.elapsed() < self.grace(),
            None => false,
        }
    }

    /// Number of sessions known (live or in their grace period).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when no session is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops ended sessions whose grace is over.
    pub(crate) fn prune(&self) {
        let grace = self.grace();
        self.lock().expire(Instant::now(), grace);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a credential was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The username is not `"<expiry>:<sessionId>"`.
    Malformed,
    /// The realm is not ours.
    WrongRealm,
    /// The expiry is in the past.
    Expired,
    /// The session ended more than the grace ago, or was never started.
    SessionGone,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "malformed username",
            Refusal::WrongRealm => "wrong realm",
            Refusal::Expired => "expired credential",
            Refusal::SessionGone => "session ended or unknown",
        })
    }
}

/// Checks credentials: REST HMAC (through the long-term key), expiry and
/// session liveness.
pub(crate) struct Authenticator {
    pub(crate) secret: Vec<u8>,
    pub(crate) realm: String,
    pub(crate) directory: Arc<SessionDirectory>,
    pub(crate) counters: Arc<crate::stats::Counters>,
}

impl Authenticator {
    /// The long-term key (MD5 of `user:realm:password`) for an honoured
    /// username; the `turn` crate checks MESSAGE-INTEGRITY with it, which is
    /// what proves the HMAC password.
    pub(crate) fn key_for(&self, username: &str, realm: &str) -> Result<Vec<u8>, Refusal> {
        if realm != self.realm {
            return Err(Refusal::WrongRealm);
        }
        let (expiry, session) = parse_username(username).ok_or(Refusal::Malformed)?;
        if expiry <= unix_now() {
            return Err(Refusal::Expired);
        }
        if !self.directory.is_honoured(session) {
            return Err(Refusal::SessionGone);
        }
        let password = rest_password(&self.secret, username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }
}

impl turn::auth::AuthHandler for Authenticator {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key_for(username, realm).map_err(|why| {
            crate::stats::Counters::add(&self.counters.refused_credentials, 1);
            static LOG: crate::stats::LogBudget = crate::stats::LogBudget::new();
            if let Some(suppressed) = LOG.take() {
                tracing::info!(%src_addr, username, reason = %why, suppressed,
                    "TURN credential refused");
            }
            turn::Error::Other(format!("credential refused: {why}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_coturn_rest_scheme() {
        // Known answer: base64(HMAC-SHA1("secret", "1700000000:abc")), the
        // TURN REST password coturn's use-auth-secret expects, computed
        // outside this code:
        //   printf %s 1700000000:abc | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1700000000:abc"),
            "JHgegmW+/B84iarkT5SFAOC1Iqw="
        );
        let (user, pass) = credentials(b"s3", "sess-1", Duration::from_secs(60));
        let (exp, sess) = parse_username(&user).expect("well-formed");
        assert_eq!(sess, "sess-1");
        assert!(exp > unix_now() + 50 && exp <= unix_now() + 60);
        assert_eq!(pass, rest_password(b"s3", &user));
    }

    #[test]
    fn rfc2202_hmac_sha1_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?"
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        assert_eq!(
            rest_password(b"Jefe", "what do ya want for nothing?"),
            BASE64_STANDARD.encode(tag.as_ref())
        );
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(parse_username("12:ab"), Some((12, "ab")));
        assert_eq!(parse_username("12:a:b"), Some((12, "a:b")));
        assert!(parse_username("12").is_none());
        assert!(parse_username("x:ab").is_none());
        assert!(parse_username("12:").is_none());
        assert!(parse_username(":ab").is_none());
    }

    #[test]
    fn directory_grace() {
        let d = SessionDirectory::new(Duration::from_millis(50));
        assert!(!d.is_honoured("a"));
        d.session_started("a");
        assert!(d.is_honoured("a"));
        let ended = Instant::now();
        d.session_ended("a");
        // Honoured through its grace, then no more (polled, bounded).
        wait_until(|| !d.is_honoured("a"));
        assert!(
            ended.elapsed() >= Duration::from_millis(50),
            "grace cut short"
        );
        d.prune();
        assert!(d.is_empty());
        d.session_started("a");
        assert!(d.is_honoured("a"));
    }

    #[test]
    fn directory_forgets_expired_sessions_as_others_end() {
        let d = SessionDirectory::new(Duration::from_millis(200));
        // Never given credentials: ending it registers nothing.
        d.session_ended("stranger");
        assert!(!d.is_honoured("stranger"));
        assert!(d.is_empty());
        for id in ["a", "b", "c"] {
            d.session_started(id);
        }
        d.session_ended("a");
        // "b" ends, then starts again (a reconnect) before its grace is over.
        d.session_ended("b");
        d.session_started("b");
        wait_until(|| !d.is_honoured("a"));
        // The next disconnect forgets what expired, without a prune.
        d.session_ended("c");
        assert!(!d.is_honoured("a"));
        assert!(d.is_honoured("b"), "restarted: live again");
        assert!(d.is_honoured("c"), "within its grace");
        assert_eq!(d.len(), 2);
        wait_until(|| !d.is_honoured("c"));
        d.prune();
        assert_eq!(d.len(), 1);
        assert!(d.is_honoured("b"));
    }

    #[test]
    fn authenticator_checks_expiry_realm_and_session() {
        let dir = Arc::new(SessionDirectory::new(Duration::from_millis(10)));
        let auth = Authenticator {
            secret: b"k".to_vec(),
            realm: "r".into(),
            directory: Arc::clone(&dir),
            counters: Arc::default(),
        };
        let (user, pass) = credentials(b"k", "s", Duration::from_secs(60));
        assert_eq!(auth.key_for(&user, "r"), Err(Refusal::SessionGone));
        dir.session_started("s");
        assert_eq!(
            auth.key_for(&user, "r"),
            Ok(turn::auth::generate_auth_key(&user, "r", &pass))
        );
        assert_eq!(auth.key_for(&user, "other"), Err(Refusal::WrongRealm));
        assert_eq!(auth.key_for("nope", "r"), Err(Refusal::Malformed));
        let old = format!("{}:s", unix_now() - 1);
        assert_eq!(auth.key_for(&old, "r"), Err(Refusal::Expired));
        dir.session_ended("s");
        wait_until(|| auth.key_for(&user, "r") == Err(Refusal::SessionGone));
    }

    /// Polls `done` until it holds; fails after 5 s.
    fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "condition not reached within 5 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
