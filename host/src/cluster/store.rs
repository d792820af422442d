//! The cluster's Redis keys and the few commands run on them. Every call is
//! bounded in time: an unreachable Redis is an error, never a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};

/// One Redis call never waits longer than this.
pub const CALL_LIMIT: Duration = Duration::from_secs(2);

const PREFIX: &str = "webrtc-chat";

pub fn host_channel(host: &str) -> String {
    format!("{PREFIX}:host:{host}")
}
/// Where hosts tell each other which sessions hold TURN credentials.
pub const TURN_CHANNEL: &str = "webrtc-chat:turn";

fn sessions_key(host: &str) -> String {
    format!("{PREFIX}:sessions:{host}")
}
fn alive_key(host: &str) -> String {
    format!("{PREFIX}:alive:{host}")
}
/// A host's current epoch; outlives its heartbeat, so a host declaring it
/// dead learns which epoch it declares dead.
fn epoch_key(host: &str) -> String {
    format!("{PREFIX}:epoch:{host}")
}
/// How long a host's epoch is remembered after its last heartbeat.
const EPOCH_TTL: Duration = Duration::from_secs(3600);
fn owner_key(room: &str) -> String {
    format!("{PREFIX}:room:{room}:owner")
}
fn members_key(room: &str) -> String {
    format!("{PREFIX}:room:{room}:members")
}

/// Sets the owner unless another live host holds the lease: returns the
/// owner after the call. `ARGV[3]` names a host known dead whose lease may
/// be taken over ("" for none), `KEYS[2]` its heartbeat: a host that beat
/// again since it was declared dead keeps its lease.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return v
end
if (not v) or (ARGV[3] ~= '' and v == ARGV[3]
    and redis.call('EXISTS', KEYS[2]) == 0) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return v
";

/// Deletes the lease and the member list when this host still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
";

/// Changes a room's member list only while `ARGV[1]` holds the room's
/// lease: a host that lost a room never edits its new owner's list. An
/// addition to a room nobody holds takes the lease first (for `ARGV[3]`
/// ms), as the host's next renewal would (a policy joined a session into a
/// room on a host without its lease). `ARGV[2]`: `set` (pairs of session,
/// value follow), `replace` (the same, after emptying the list) or `del`
/// (one session follows). Returns 1 when it wrote.
const MEMBERS: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner == false and ARGV[2] == 'set' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  owner = ARGV[1]
end
if owner ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'del' then
  redis.call('HDEL', KEYS[2], ARGV[4])
  return 1
end
if ARGV[2] == 'replace' then
  redis.call('DEL', KEYS[2])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {CALL_LIMIT:?}")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// (Logged once, with what to do, when it starts: `Store::refusal`.)
    #[error("Redis refused this host's AUTH ({0})")]
    Auth(redis::RedisError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A member as the room's owner recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRecord {
    pub session: String,
    pub host: String,
    pub seq: u64,
    pub username: String,
}

impl MemberRecord {
    fn value(&self) -> String {
        format!("{}\t{}\t{}", self.host, self.seq, self.username)
    }

    fn parse(session: String, value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, '\t');
        let host = parts.next()?.to_string();
        let seq = parts.next()?.parse().ok()?;
        let username = parts.next()?.to_string();
        Some(Self {
            session,
            host,
            seq,
            username,
        })
    }
}

#[derive(Clone)]
pub struct Store {
    pub client: redis::Client,
    /// Replaced when Redis refuses the credentials: the crate's manager
    /// reconnects after a dropped connection, but keeps returning a failed
    /// authentication for good (see `Credentials`). With its generation
    /// (raised at each replacement): only what the current one does counts.
    con: Arc<Mutex<(ConnectionManager, u64)>>,
    config: ConnectionManagerConfig,
    credentials: Arc<Mutex<Credentials>>,
    /// `credentials` holds a refusal (read first, without the lock, by
    /// every successful call).
    refusing: Arc<AtomicBool>,
    claim: Script,
    release: Script,
    members: Script,
}

/// `url` with the password of its user part (`redis://user:PASSWORD@…`)
/// replaced, for messages and logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{}", &rest[user.len() + 1..])
        }
        _ => url.to_string(),
    }
}

/// Whether Redis refuses this host's connections, each kind on its own: the
/// commands' (shared by every call) and the subscriber's (made anew for each
/// attempt). The host logs one line when either starts being refused and
/// one when neither is any more.
#[derive(Default)]
struct Credentials {
    commands: Refusal,
    subscriber: Refusal,
}

/// One connection's refusal: the wait before it is tried again (doubling)
/// and when that may be.
#[derive(Default)]
struct Refusal {
    refused: bool,
    backoff: Duration,
    next_try: Option<Instant>,
}

impl Refusal {
    /// A refusal: true when the wait for the next try is over (and a new
    /// one, twice as long, begins).
    fn refused(&mut self, now: Instant) -> bool {
        self.refused = true;
        if self.next_try.is_some_and(|t| now < t) {
            return false;
        }
        self.backoff = (self.backoff * 2).clamp(REBUILD_MIN, REBUILD_MAX);
        self.next_try = Some(now + self.backoff);
        true
    }
}

impl Credentials {
    fn refused(&self) -> bool {
        self.commands.refused || self.subscriber.refused
    }
}

/// Rebuilding a connection Redis refused waits this long at first, twice as
/// long each time after, up to `REBUILD_MAX`.
const REBUILD_MIN: Duration = Duration::from_secs(1);
const REBUILD_MAX: Duration = Duration::from_secs(8);

/// Redis refused the credentials (at connection, or on a command of a
/// connection that never authenticated).
fn refused(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

impl Store {
    /// The commands' connection, and its generation (for `bounded`).
    fn con(&self) -> (ConnectionManager, u64) {
        self.con.lock().clone()
    }

    /// Runs one call on the commands' connection (of that `generation`),
    /// bounded by `CALL_LIMIT`. Redis refusing the credentials rebuilds the
    /// connection (with backoff) so that it authenticates again once they
    /// are right; one line is logged when that starts and one when it ends.
    async fn bounded<T>(
        &self,
        generation: u64,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let result = match tokio::time::timeout(CALL_LIMIT, f).await {
            Ok(r) => r,
            Err(_) => return Err(StoreError::Timeout),
        };
        match result {
            Ok(v) => {
                if self.refusing.load(Ordering::Relaxed) {
                    self.commands_accepted(generation);
                }
                Ok(v)
            }
            Err(e) if refused(&e) => {
                self.commands_refused(generation, &e);
                Err(StoreError::Auth(e))
            }
            Err(e) => Err(StoreError::Redis(e)),
        }
    }

    /// A call on the commands' connection of `generation` succeeded:
    /// it counts only if that is the current one (a call in flight on the
    /// one just replaced proves nothing).
    fn commands_accepted(&self, generation: u64) {
        let mut c = self.credentials.lock();
        if c.commands.refused && self.con.lock().1 == generation {
            c.commands = Refusal::default();
            self.settle(&c);
        }
    }

    /// The commands' connection of `generation` was refused: if it is the
    /// current one, it is rebuilt once its backoff is over.
    fn commands_refused(&self, generation: u64, e: &RedisError) {
        let mut c = self.credentials.lock();
        if self.con.lock().1 != generation {
            return; // replaced already: the new one's answers count
        }
        self.refusal(&c, e);
        if !c.commands.refused(Instant::now()) {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(con) => {
                let mut current = self.con.lock();
                *current = (con, current.1 + 1);
            }
            Err(e) => tracing::debug!("cluster: Redis connection not rebuilt: {e}"),
        }
    }

    /// Logs that Redis refuses this host, when it is the first refusal.
    fn refusal(&self, c: &Credentials, e: &RedisError) {
        if !c.refused() {
            self.refusing.store(true, Ordering::Relaxed);
            tracing::warn!(
                "cluster: Redis refused this host's AUTH (wrong password/ACL, or it turned the connection away, e.g. max clients) ({e}): make the password (and user) in --redis-url match Redis's requirepass or ACL (or raise its maxclients); this host reconnects by itself, within about 10 s of Redis accepting it"
            );
        }
    }

    /// Logs that Redis accepts this host again, when nothing is refused
    /// any more.
    fn settle(&self, c: &Credentials) {
        if !c.refused() && self.refusing.swap(false, Ordering::Relaxed) {
            tracing::info!("cluster: Redis accepts this host's AUTH again");
        }
    }

    /// A new pub/sub connection (the subscriber makes one per attempt).
    /// A refusal is noted (and backs the subscriber off), never rebuilds
    /// the commands' connection, which may well work; a connection made
    /// ends the subscriber's refusal.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        match tokio::time::timeout(CALL_LIMIT, self.client.get_async_pubsub()).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(pubsub)) => {
                self.subscriber_accepted();
                Ok(pubsub)
            }
            Ok(Err(e)) if refused(&e) => {
                self.subscriber_refused(&e);
                Err(StoreError::Auth(e))
            }
            Ok(Err(e)) => Err(StoreError::Redis(e)),
        }
    }

    fn subscriber_accepted(&self) {
        if self.refusing.load(Ordering::Relaxed) {
            let mut c = self.credentials.lock();
            c.subscriber = Refusal::default();
            self.settle(&c);
        }
    }

    fn subscriber_refused(&self, e: &RedisError) {
        let mut c = self.credentials.lock();
        self.refusal(&c, e);
        c.subscriber.refused(Instant::now());
    }

    /// Whether Redis refuses this host's connections now.
    #[cfg(test)]
    fn refuses(&self) -> bool {
        self.credentials.lock().refused()
    }

    /// How long to wait before connecting again after a failure: longer
    /// while Redis refuses the credentials.
    pub fn retry_delay(&self) -> Duration {
        let c = self.credentials.lock();
        if c.refused() {
            c.subscriber
                .backoff
                .max(c.commands.backoff)
                .max(REBUILD_MIN)
        } else {
            Duration::from_millis(250)
        }
    }

    /// Connects lazily: the host starts (and serves its own rooms) while
    /// Redis is down.
    pub fn open(url: &str) -> std::result::Result<Self, String> {
        let shown = redacted(url);
        let client = redis::Client::open(url).map_err(|e| {
            format!("--redis-url {shown:?} is not a Redis URL like redis://127.0.0.1:6379/0 ({e})")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("--redis-url {shown:?}: {e}"))?;
        Ok(Self {
            client,
            con: Arc::new(Mutex::new((con, 0))),
            config,
            credentials: Arc::default(),
            refusing: Arc::default(),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            members: Script::new(MEMBERS),
        })
    }

    /// Marks `host` alive at `epoch` for `ttl`; true when its previous mark
    /// was still there (false: it lapsed, and the others may have declared
    /// the host dead meanwhile).
    pub async fn heartbeat(&self, host: &str, epoch: u64, ttl: Duration) -> Result<bool> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(alive_key(host))
            .arg(epoch)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .arg("GET");
        pipe.cmd("SET")
            .arg(epoch_key(host))
            .arg(epoch)
            .arg("PX")
            .arg(EPOCH_TTL.as_millis() as u64)
            .ignore();
        let (previous,): (Option<String>,) =
            self.bounded(generation, pipe.query_async(&mut con)).await?;
        Ok(previous.is_some())
    }

    /// Whether `host` may be declared dead: `None` while its heartbeat is
    /// current, else the epoch it is declared dead at (0 when unknown).
    /// One atomic read: a host that beats again after this call beats at a
    /// later epoch (it finds its heartbeat lapsed), so what it sends then
    /// counts.
    pub async fn dead_epoch(&self, host: &str) -> Result<Option<u64>> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        pipe.atomic().exists(alive_key(host)).get(epoch_key(host));
        let (alive, epoch): (bool, Option<u64>) =
            self.bounded(generation, pipe.query_async(&mut con)).await?;
        Ok((!alive).then(|| epoch.unwrap_or(0)))
    }

    /// Hosts whose heartbeat is current.
    pub async fn hosts_alive(&self) -> Result<usize> {
        self.live_hosts().await.map(|hosts| hosts.len())
    }

    /// Ids of the hosts with a current heartbeat.
    pub async fn live_hosts(&self) -> Result<Vec<String>> {
        let (mut con, generation) = self.con();
        let pattern = format!("{PREFIX}:alive:*");
        let prefix = format!("{PREFIX}:alive:");
        self.bounded(generation, async move {
            let mut hosts = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con)
                    .await?;
                hosts.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
                );
                if next == 0 {
                    return Ok(hosts);
                }
                cursor = next;
            }
        })
        .await
    }

    /// Records that `host` serves `sessions` holding TURN credentials (the
    /// record lapses `ttl` after the host's last refresh) and tells the
    /// other hosts; `replace`: they are all it serves.
    pub async fn announce(
        &self,
        host: &str,
        sessions: &[String],
        ttl: Duration,
        replace: bool,
    ) -> Result<()> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if replace {
            pipe.del(sessions_key(host)).ignore();
        }
        for s in sessions {
            pipe.sadd(sessions_key(host), s).ignore();
            pipe.publish(TURN_CHANNEL, format!("+{host} {s}")).ignore();
        }
        pipe.pexpire(sessions_key(host), ttl.as_millis() as i64)
            .ignore();
        self.bounded(generation, pipe.query_async::<()>(&mut con))
            .await
    }

    /// `host` is shutting down: its heartbeat and session record go, and
    /// every host hears it at once.
    pub async fn goodbye(&self, host: &str) -> Result<()> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        pipe.del(alive_key(host)).ignore();
        pipe.del(sessions_key(host)).ignore();
        pipe.publish(TURN_CHANNEL, format!("!{host} -")).ignore();
        self.bounded(generation, pipe.query_async::<()>(&mut con))
            .await
    }

    /// The session ended on `host`.
    pub async fn retract(&self, host: &str, session: &str) -> Result<()> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        pipe.srem(sessions_key(host), session).ignore();
        pipe.publish(TURN_CHANNEL, format!("-{host} {session}"))
            .ignore();
        self.bounded(generation, pipe.query_async::<()>(&mut con))
            .await
    }

    /// Keeps `host`'s session record from lapsing.
    pub async fn refresh_sessions(&self, host: &str, ttl: Duration) -> Result<()> {
        let (mut con, generation) = self.con();
        self.bounded(
            generation,
            con.pexpire::<_, ()>(sessions_key(host), ttl.as_millis() as i64),
        )
        .await
    }

    /// The sessions each of `hosts` recorded.
    pub async fn sessions_of(&self, hosts: &[String]) -> Result<Vec<Vec<String>>> {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        for h in hosts {
            pipe.smembers(sessions_key(h));
        }
        self.bounded(generation, pipe.query_async(&mut con)).await
    }

    /// Which of `hosts` have a current heartbeat.
    pub async fn alive(&self, hosts: &[String]) -> Result<Vec<bool>> {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        for h in hosts {
            pipe.exists(alive_key(h));
        }
        self.bounded(generation, pipe.query_async(&mut con)).await
    }

    /// Claims (or renews) the lease on `room`: the owner afterwards.
    pub async fn claim(&self, room: &str, me: &str, ttl: Duration, dead: &str) -> Result<String> {
        let (mut con, generation) = self.con();
        let mut inv = self.claim.key(owner_key(room));
        inv.key(alive_key(dead))
            .arg(me)
            .arg(ttl.as_millis() as u64)
            .arg(dead);
        self.bounded(generation, inv.invoke_async(&mut con)).await
    }

    /// The host holding `room`'s lease, if any.
    pub async fn owner(&self, room: &str) -> Result<Option<String>> {
        let (mut con, generation) = self.con();
        self.bounded(generation, con.get(owner_key(room))).await
    }

    pub async fn release(&self, room: &str, me: &str) -> Result<()> {
        let (mut con, generation) = self.con();
        let mut inv = self.release.key(owner_key(room));
        inv.key(members_key(room)).arg(me);
        self.bounded(generation, inv.invoke_async::<i64>(&mut con))
            .await
            .map(|_| ())
    }

    /// Runs the fenced `MEMBERS` script for `me`: true when it wrote.
    async fn edit_members(
        &self,
        room: &str,
        (me, lease): (&str, Duration),
        op: &str,
        args: &[&str],
    ) -> Result<bool> {
        let (mut con, generation) = self.con();
        let mut inv = self.members.key(owner_key(room));
        inv.key(members_key(room))
            .arg(me)
            .arg(op)
            .arg(lease.as_millis() as u64);
        for a in args {
            inv.arg(*a);
        }
        self.bounded(generation, inv.invoke_async::<i64>(&mut con))
            .await
            .map(|n| n == 1)
    }

    /// Records a member of a room `me` owns; of a room nobody owns, `me`
    /// takes the lease (for `lease`) and records it.
    pub async fn put_member(
        &self,
        room: &str,
        me: &str,
        lease: Duration,
        m: &MemberRecord,
    ) -> Result<bool> {
        let value = m.value();
        self.edit_members(room, (me, lease), "set", &[&m.session, &value])
            .await
    }

    /// Forgets a member of a room `me` owns.
    pub async fn drop_member(&self, room: &str, me: &str, session: &str) -> Result<bool> {
        self.edit_members(room, (me, Duration::ZERO), "del", &[session])
            .await
    }

    /// Replaces the whole member list of a room `me` owns.
    pub async fn put_members(
        &self,
        room: &str,
        me: &str,
        members: &[MemberRecord],
    ) -> Result<bool> {
        let values: Vec<String> = members.iter().map(MemberRecord::value).collect();
        let mut args: Vec<&str> = Vec::with_capacity(members.len() * 2);
        for (m, v) in members.iter().zip(&values) {
            args.push(&m.session);
            args.push(v);
        }
        self.edit_members(room, (me, Duration::ZERO), "replace", &args)
            .await
    }

    /// The member list of `room`, in join order.
    pub async fn members(&self, room: &str) -> Result<Vec<MemberRecord>> {
        let (mut con, generation) = self.con();
        let all: Vec<(String, String)> = self
            .bounded(generation, con.hgetall(members_key(room)))
            .await?;
        let mut out: Vec<MemberRecord> = all
            .into_iter()
            .filter_map(|(s, v)| MemberRecord::parse(s, &v))
            .collect();
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// Publishes `(channel, payload)` pairs in order, in one round trip.
    pub async fn publish_all(&self, batch: &[(String, String)]) -> Result<()> {
        let (mut con, generation) = self.con();
        let mut pipe = redis::pipe();
        for (channel, payload) in batch {
            pipe.publish(channel, payload).ignore();
        }
        self.bounded(generation, pipe.query_async::<()>(&mut con))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_records_round_trip() {
        let m = MemberRecord {
            session: "s".into(),
            host: "h".into(),
            seq: 42,
            username: "a\tb".into(),
        };
        assert_eq!(MemberRecord::parse("s".into(), &m.value()), Some(m));
        assert_eq!(MemberRecord::parse("s".into(), "h\tx\tn"), None);
    }

    /// The subscriber refused while the commands work: no flapping between
    /// "refused" and "accepted", no rebuild of the working connection; a
    /// call in flight on a replaced connection proves nothing.
    #[tokio::test]
    async fn each_connection_counts_for_itself_and_only_the_current_one() {
        let store = Store::open("redis://127.0.0.1:1/0").unwrap();
        let auth = || RedisError::from((redis::ErrorKind::AuthenticationFailed, "refused"));
        let ok = || async { Ok::<(), RedisError>(()) };
        let generation = || store.con.lock().1;

        store.subscriber_refused(&auth());
        assert!(store.refuses());
        assert_eq!(generation(), 0, "a working connection rebuilt");
        store.bounded(0, ok()).await.unwrap();
        assert!(store.refuses(), "the subscriber's refusal forgotten");
        store.subscriber_accepted();
        assert!(!store.refuses());

        // The commands' connection is refused: rebuilt (once).
        let refused = store.bounded(0, async { Err::<(), _>(auth()) }).await;
        assert!(matches!(refused, Err(StoreError::Auth(_))));
        assert_eq!(generation(), 1);
        let _ = store.bounded(0, async { Err::<(), _>(auth()) }).await;
        assert_eq!(generation(), 1, "rebuilt again for the old one");
        // A call made on the old one answers now: it does not count.
        store.bounded(0, ok()).await.unwrap();
        assert!(store.refuses(), "accepted on the replaced connection");
        store.bounded(1, ok()).await.unwrap();
        assert!(!store.refuses());
    }

    #[test]
    fn bad_urls_are_one_clear_line() {
        let e = Store::open("http://nope").err().unwrap();
        assert!(e.contains("--redis-url"), "{e}");
        assert!(!e.contains('\n'));
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.1:6379/2"),
            "redis://:***@10.0.0.1:6379/2"
        );
        assert_eq!(
            redacted("redis://app:s3cret@host/0"),
            "redis://app:***@host/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
