//! Cluster mode: several real host processes sharing rooms through a real
//! `redis-server` that each test starts on a free loopback port, in its own
//! temporary directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Host, assert_error, http_get};
use serde_json::{Value, json};

/// Host death and Redis outages take seconds to notice.
const SLOW: Duration = Duration::from_secs(30);

struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With extra `redis-server` arguments.
    fn start_with(args: &[&str]) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn_redis(port, dir.path(), &args);
        Redis {
            child,
            port,
            dir,
            args,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye, no saved data).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, empty, on the same port.
    fn restart(&mut self) {
        self.child = spawn_redis(self.port, self.dir.path(), &self.args);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed: install it (Debian: apt-get install redis-server; scripts/test.sh does) to run the cluster tests"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 7];
            // (One with a password answers that it wants it.)
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
            {
                return child;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("redis-server did not answer on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A host of the cluster at `redis`.
fn member_host(redis: &Redis, extra: &[&str]) -> Host {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--turn-secret", "cluster-test-secret"];
    args.extend_from_slice(extra);
    Host::start(&args)
}

fn metrics_addr(host: &Host) -> String {
    host.startup
        .iter()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .expect("metrics address logged at start")
        .to_string()
}

async fn readyz(host: &Host) -> bool {
    http_get(&metrics_addr(host), "/readyz")
        .await
        .starts_with("HTTP/1.1 200")
}

/// Waits until /readyz says `ready` (bounded).
async fn wait_ready(host: &Host, ready: bool) {
    let deadline = Instant::now() + SLOW;
    while readyz(host).await != ready {
        assert!(
            Instant::now() < deadline,
            "/readyz did not become {} within {SLOW:?}",
            if ready { "ready" } else { "unready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Host> {
    let hosts: Vec<Host> = (0..n).map(|_| member_host(redis, extra)).collect();
    for h in &hosts {
        wait_ready(h, true).await;
    }
    hosts
}

/// The next frame that is not a keep-alive, waiting up to `within`.
async fn recv_within(c: &mut Client, within: Duration) -> Value {
    tokio::time::timeout(within, c.ws_next_text())
        .await
        .unwrap_or_else(|_| panic!("no frame within {within:?}"))
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A WebSocket ping from each client: the host counts it as a sign of life.
async fn signs_of_life(clients: &mut [&mut Client]) {
    use futures_util::SinkExt;
    for c in clients.iter_mut() {
        c.ws.send(tokio_tungstenite::tungstenite::Message::Ping(
            Default::default(),
        ))
        .await
        .expect("ping");
    }
}

fn kill9(host: &Host) {
    let status = Command::new("kill")
        .args(["-KILL", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_takeover_leaves_the_lease_of_a_host_that_came_back() {
    use host::cluster::store::Store;
    let redis = Redis::start();
    let store = Store::open(&redis.url()).unwrap();
    let lease = Duration::from_secs(10);
    let beat = Duration::from_secs(6);
    let deadline = Instant::now() + SLOW;
    // (The server takes a moment to listen.)
    while store.heartbeat("d", 1, beat).await.is_err() {
        assert!(Instant::now() < deadline, "redis-server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.claim("r", "d", lease, "").await.unwrap(), "d");
    // x declared d dead a moment ago, but d beats again (it was only slow,
    // or cut off for a while): d keeps its room.
    assert_eq!(store.claim("r", "x", lease, "d").await.unwrap(), "d");
    // Once d's heartbeat is gone, x takes the room over.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("webrtc-chat:alive:d")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(store.claim("r", "x", lease, "d").await.unwrap(), "x");
    // Nobody else's lease is taken in d's name.
    assert_eq!(store.claim("r", "y", lease, "d").await.unwrap(), "x");
}

#[tokio::test]
async fn only_the_lease_holder_writes_a_member_list() {
    use host::cluster::store::{MemberRecord, Store};
    let redis = Redis::start();
    let store = Store::open(&redis.url()).unwrap();
    let lease = Duration::from_secs(10);
    let record = |session: &str, host: &str| MemberRecord {
        session: session.into(),
        host: host.into(),
        seq: 1,
        username: "n".into(),
    };
    let deadline = Instant::now() + SLOW;
    while store.owner("r").await.is_err() {
        assert!(Instant::now() < deadline, "redis-server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nobody holds r: x records a member and holds the lease with it.
    assert!(
        store
            .put_member("r", "x", lease, &record("a", "x"))
            .await
            .unwrap()
    );
    assert_eq!(store.owner("r").await.unwrap().as_deref(), Some("x"));
    // y, which does not hold it, writes nothing.
    assert!(
        !store
            .put_member("r", "y", lease, &record("b", "y"))
            .await
            .unwrap()
    );
    assert!(!store.drop_member("r", "y", "a").await.unwrap());
    let members = store.members("r").await.unwrap();
    assert_eq!(members, vec![record("a", "x")]);
}

#[tokio::test]
async fn members_on_two_hosts_exchange_every_frame_type() {
    let redis = Redis::start();
    let hosts = cluster(&redis, 2, &[]).await;
    let mut alice = hosts[0].client().await;
    let mut bob = hosts[1].client().await;

    let joined = alice.login("lobby", "alice").await;
    assert_eq!(joined["members"], json!([]));
    let joined = bob.login("lobby", "bob").await;
    assert_eq!(
        joined["members"],
        json!([{"sessionId": alice.id, "username": "alice"}]),
        "bob, on the other host, sees alice"
    );
    assert_eq!(joined["room"], "lobby");
    assert!(
        joined["iceServers"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{joined}"
    );

    let notice = alice.recv().await;
    assert_eq!(notice["type"], "login");
    assert_eq!(notice["from"], bob.id.as_str());
    assert_eq!(notice["username"], "bob");

    // Offer fan-out and unicast, both directions.
    alice
        .send(json!({"type":"offer","data":{"type":"offer","sdp":"v=0 a"}}))
        .await;
    let offer = bob.recv().await;
    assert_eq!(offer["type"], "offer");
    assert_eq!(offer["from"], alice.id.as_str());
    assert_eq!(offer["username"], "alice");
    assert_eq!(offer["data"]["sdp"], "v=0 a");
    bob.send(json!({"type":"offer","to":alice.id,"data":{"sdp":"v=0 b"},"extra":[1,2]}))
        .await;
    let offer = alice.recv().await;
    assert_eq!(offer["from"], bob.id.as_str());
    assert_eq!(offer["to"], alice.id.as_str());
    assert_eq!(offer["extra"], json!([1, 2]));

    // Answer and candidates: unicast, in the order sent.
    bob.send(json!({"type":"answer","to":alice.id,"data":{"type":"answer","sdp":"v=0 b"}}))
        .await;
    for i in 0..5 {
        bob.send(json!({"type":"candidate","to":alice.id,"data":{"candidate":format!("c{i}")}}))
            .await;
    }
    let answer = alice.recv().await;
    assert_eq!(answer["type"], "answer");
    assert_eq!(answer["from"], bob.id.as_str());
    for i in 0..5 {
        let c = alice.recv().await;
        assert_eq!(c["type"], "candidate");
        assert_eq!(c["data"]["candidate"], format!("c{i}"));
    }
    alice
        .send(json!({"type":"candidate","to":bob.id,"data":{"candidate":"a0"}}))
        .await;
    assert_eq!(bob.recv().await["data"]["candidate"], "a0");

    // Errors from the owner reach the remote member: answer without `to`.
    bob.send(json!({"type":"answer","data":{}})).await;
    assert_error(&bob.recv().await, "badRequest");

    // leave, then login again, then the socket closing: `logout` each time.
    bob.send(json!({"type":"leave"})).await;
    let logout = alice.recv().await;
    assert_eq!(logout["type"], "logout");
    assert_eq!(logout["data"]["sessionId"], bob.id.as_str());
    bob.send(json!({"type":"offer","data":{}})).await;
    assert_error(&bob.recv().await, "notInRoom");
    bob.login("lobby", "bobby").await;
    assert_eq!(alice.recv().await["username"], "bobby");
    drop(bob);
    let logout = alice.recv().await;
    assert_eq!(logout["type"], "logout");
    assert_eq!(logout["data"]["username"], "bobby");

    // Moving between rooms owned by different hosts: the old room hears
    // `logout`, the new one the `login` notice.
    let mut carol = hosts[1].client().await;
    carol.login("elsewhere", "carol").await; // owned by host 1
    carol.login("lobby", "carol").await; // owned by host 0
    assert_eq!(alice.recv().await["type"], "login");
    let mut dave = hosts[1].client().await;
    let joined = dave.login("elsewhere", "dave").await;
    assert_eq!(joined["members"], json!([]), "carol left 'elsewhere'");

    // /metrics shows the cluster: both hosts, who owns what, the relaying.
    // (Hosts are counted at each heartbeat: host 1 may not be counted yet.)
    let deadline = Instant::now() + SLOW;
    let metrics = loop {
        let metrics = http_get(&metrics_addr(&hosts[0]), "/metrics").await;
        if metrics.contains("\nwebrtc_chat_cluster_hosts_seen 2\n") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "hosts_seen is not 2: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("webrtc_chat_cluster_ready"), 1);
    assert_eq!(value("webrtc_chat_cluster_rooms_owned"), 1, "lobby");
    assert_eq!(value("webrtc_chat_cluster_remote_sessions"), 1, "carol");
    assert_eq!(
        value("webrtc_chat_sessions"),
        1,
        "alice: carol's socket is on host 1"
    );
    assert!(value("webrtc_chat_cluster_relayed_in_total") > 0);
    assert!(value("webrtc_chat_cluster_relayed_out_total") > 0);
    assert!(value("webrtc_chat_cluster_redis_rtt_microseconds") > 0);
}

#[tokio::test]
async fn three_hosts_share_rooms_and_random_check_sees_them_all() {
    let redis = Redis::start();
    let hosts = cluster(&redis, 3, &[]).await;
    let room = uuid();
    let mut members = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut c = h.client().await;
        let joined = c.login(&room, &format!("m{i}")).await;
        assert_eq!(joined["members"].as_array().unwrap().len(), i);
        for earlier in members.iter_mut() {
            let n: Value = Client::recv(earlier).await;
            assert_eq!(n["type"], "login");
        }
        members.push(c);
    }
    // A fan-out offer from each host reaches the two others.
    for i in 0..3 {
        let from = members[i].id.clone();
        members[i]
            .send(json!({"type":"offer","data":{"n":i}}))
            .await;
        for (j, m) in members.iter_mut().enumerate() {
            if j != i {
                let o = m.recv().await;
                assert_eq!(o["from"], from.as_str());
                assert_eq!(o["data"]["n"], i);
            }
        }
    }
    // randomCheck on every host, for the room held by host 0 and a free id.
    let free = uuid();
    for h in &hosts {
        let mut c = h.client().await;
        c.send(json!({"type":"randomCheck","data":room})).await;
        let r = c.recv().await;
        assert_eq!(r["type"], "randomCheckResult", "{r}");
        assert_eq!(
            r["data"]["result"], "fail",
            "the room exists on another host"
        );
        c.send(json!({"type":"randomCheck","data":free})).await;
        assert_eq!(c.recv().await["data"]["result"], "ok");
    }
}

#[tokio::test]
async fn capacity_holds_across_hosts() {
    let redis = Redis::start();
    let hosts = cluster(&redis, 3, &["--room-max", "10"]).await;
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(hosts[i % 3].client().await);
    }
    let room = uuid();
    let results = futures_util::future::join_all(clients.iter_mut().enumerate().map(|(i, c)| {
        let room = room.clone();
        async move {
            c.send(json!({"type":"login","data":{"roomrequest":room,"username":format!("u{i}")}}))
                .await;
            let r = c.recv().await;
            match (r["type"].as_str(), r["message"]["errorType"].as_str()) {
                (Some("joined"), _) => true,
                (Some("error"), Some("full")) => false,
                _ => panic!("neither joined nor full: {r}"),
            }
        }
    }))
    .await;
    let joined = results.iter().filter(|j| **j).count();
    assert_eq!(joined, 10, "exactly the room's capacity joined");
    // Every host joined some (the room is one room, not three).
    let per_host: Vec<usize> = (0..3)
        .map(|h| (h..50).step_by(3).filter(|i| results[*i]).count())
        .collect();
    assert_eq!(per_host.iter().sum::<usize>(), 10, "{per_host:?}");
}

#[tokio::test]
async fn a_killed_host_is_logged_out_and_its_room_lives_on() {
    let redis = Redis::start();
    let mut hosts = cluster(&redis, 3, &[]).await;
    let mut alice = hosts[0].client().await;
    alice.login("standup", "alice").await; // host 0 owns the room
    let mut bob = hosts[1].client().await;
    bob.login("standup", "bob").await;
    let mut carol = hosts[2].client().await;
    carol.login("standup", "carol").await;
    assert_eq!(bob.recv().await["username"], "carol");
    // Two who stay silent from now on, one on each surviving host.
    let mut erin = hosts[1].client().await;
    erin.login("standup", "erin").await;
    let mut frank = hosts[2].client().await;
    frank.login("standup", "frank").await;
    for c in [&mut bob, &mut carol] {
        assert_eq!(c.recv().await["username"], "erin");
        assert_eq!(c.recv().await["username"], "frank");
    }
    assert_eq!(erin.recv().await["username"], "frank");

    signs_of_life(&mut [&mut bob, &mut carol, &mut erin, &mut frank]).await;
    kill9(&hosts[0]);
    for c in [&mut bob, &mut carol, &mut erin, &mut frank] {
        let logout = recv_within(c, SLOW).await;
        assert_eq!(logout["type"], "logout", "{logout}");
        assert_eq!(logout["data"]["sessionId"], alice.id.as_str());
    }
    // They leave without having said a word since the takeover: whichever
    // host now owns the room hears of it.
    drop(erin);
    drop(frank);
    for c in [&mut bob, &mut carol] {
        let mut gone = Vec::new();
        for _ in 0..2 {
            let logout = recv_within(c, SLOW).await;
            assert_eq!(logout["type"], "logout", "{logout}");
            gone.push(logout["data"]["username"].as_str().unwrap().to_string());
        }
        gone.sort();
        assert_eq!(gone, ["erin", "frank"]);
    }
    // The room lives on, now owned by host 1 or 2.
    bob.send(json!({"type":"offer","to":carol.id,"data":{"sdp":"again"}}))
        .await;
    let offer = carol.recv().await;
    assert_eq!(offer["from"], bob.id.as_str());
    carol
        .send(json!({"type":"answer","to":bob.id,"data":{"sdp":"ok"}}))
        .await;
    assert_eq!(bob.recv().await["type"], "answer");
    let mut dave = hosts[2].client().await;
    let joined = dave.login("standup", "dave").await;
    let names: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "carol"], "no duplicate, no ghost of alice");
    assert_eq!(bob.recv().await["username"], "dave");
    assert_eq!(carol.recv().await["username"], "dave");

    // A host with members (not the owner) dies: they are logged out too.
    kill9(&hosts[2]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let logout = recv_within(&mut bob, SLOW).await;
        assert_eq!(logout["type"], "logout", "{logout}");
        seen.push(logout["data"]["username"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["carol", "dave"]);
    drop(alice);
    hosts.truncate(2);
}

#[tokio::test]
async fn redis_restarted_mid_call_the_call_continues() {
    let mut redis = Redis::start();
    let hosts = cluster(&redis, 2, &[]).await;
    let mut alice = hosts[0].client().await;
    alice.login("call", "alice").await; // host 0 owns the room
    let mut bob = hosts[1].client().await;
    bob.login("call", "bob").await;
    assert_eq!(alice.recv().await["type"], "login");

    redis.kill();
    wait_ready(&hosts[0], false).await;
    wait_ready(&hosts[1], false).await;
    // Host 0 keeps serving its own room …
    let mut erin = hosts[0].client().await;
    let joined = erin.login("call", "erin").await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 2);
    assert_eq!(alice.recv().await["username"], "erin");
    drop(erin);
    assert_eq!(alice.recv().await["type"], "logout");
    // … while a join that needs the other host is refused, clearly.
    let mut dave = hosts[1].client().await;
    dave.send(json!({"type":"login","data":{"roomrequest":"call","username":"dave"}}))
        .await;
    assert_error(&dave.recv().await, "unavailable");
    drop(dave);
    let metrics = http_get(&metrics_addr(&hosts[1]), "/metrics").await;
    assert!(
        metrics.contains("\nwebrtc_chat_errors_total{kind=\"unavailable\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nwebrtc_chat_cluster_ready 0\n"),
        "{metrics}"
    );
    // A member whose room another host owns is refused at once: the frame
    // is not queued for a Redis known to be down (and then dropped).
    let dropped = |metrics: &str| -> String {
        metrics
            .lines()
            .find(|l| l.starts_with("webrtc_chat_cluster_relay_dropped_total "))
            .unwrap_or_else(|| panic!("relay_dropped_total in {metrics}"))
            .to_string()
    };
    let before = dropped(&metrics);
    bob.send(json!({"type":"offer","to":alice.id,"data":{"sdp":"lost"}}))
        .await;
    assert_error(&recv_within(&mut bob, SLOW).await, "unavailable");
    let metrics = http_get(&metrics_addr(&hosts[1]), "/metrics").await;
    assert!(
        metrics.contains("\nwebrtc_chat_errors_total{kind=\"unavailable\"} 2\n"),
        "{metrics}"
    );
    assert_eq!(dropped(&metrics), before, "the frame was never queued");

    // (Signs of life, so that a slow machine's long wait below does not get
    // the idle members reaped.)
    signs_of_life(&mut [&mut alice, &mut bob]).await;
    redis.restart();
    wait_ready(&hosts[0], true).await;
    wait_ready(&hosts[1], true).await;
    signs_of_life(&mut [&mut alice, &mut bob]).await;
    // The call continues across the hosts …
    bob.send(json!({"type":"offer","to":alice.id,"data":{"sdp":"renegotiate"}}))
        .await;
    let offer = recv_within(&mut alice, SLOW).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["from"], bob.id.as_str());
    alice
        .send(json!({"type":"answer","to":bob.id,"data":{"sdp":"fine"}}))
        .await;
    // (bob hears of erin, who came and went during the outage, only if
    // the owner reached him; it did not: at most once.)
    loop {
        let f = recv_within(&mut bob, SLOW).await;
        if f["type"] == "answer" {
            assert_eq!(f["from"], alice.id.as_str());
            break;
        }
        assert!(f["type"] == "login" || f["type"] == "logout", "{f}");
    }
    // … and new joins work again, on either host.
    let mut dave = hosts[1].client().await;
    let joined = dave.login("call", "dave").await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 2, "{joined}");
    assert_eq!(alice.recv().await["username"], "dave");
    assert_eq!(recv_within(&mut bob, SLOW).await["username"], "dave");
    let mut frank = hosts[1].client().await;
    frank.login(&uuid(), "frank").await;
}

#[test]
fn cluster_flags_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        // No WEBRTC_CHAT_* of the caller's; a policy cache of its own.
        let out = common::host_command()
            .args([
                "--bind",
                "127.0.0.1",
                "--https-port",
                "0",
                "--turn-port",
                "0",
            ])
            .args(["--metrics-addr", "off", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--ssl-dir")
            .arg(dir.path().join("ssl"))
            .arg("--plugins-dir")
            .arg(dir.path().join("plugins"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--redis-url", "redis://127.0.0.1:1/0"]);
    assert!(err.contains("--redis-url needs --turn-secret"), "{err}");
    let err = run(&["--redis-url", "http://example", "--turn-secret", "x"]);
    assert!(err.contains("is not a Redis URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

async fn turn_allocates(server: std::net::SocketAddr, username: &str, password: &str) -> bool {
    use std::sync::Arc;
    use turn::client::{Client as TurnClient, ClientConfig};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = TurnClient::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: "webrtc-chat".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let ok = client.allocate().await.is_ok();
    client.close().await.unwrap();
    ok
}

/// Polls (bounded) until allocating with the credential gives `wanted`.
async fn wait_turn(server: std::net::SocketAddr, user: &str, pass: &str, wanted: bool) {
    let deadline = Instant::now() + SLOW;
    while turn_allocates(server, user, pass).await != wanted {
        assert!(
            Instant::now() < deadline,
            "TURN on {server} did not {} the credential within {SLOW:?}",
            if wanted { "honour" } else { "refuse" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn turn_credentials_are_honoured_on_every_host_while_the_session_lives() {
    let redis = Redis::start();
    let hosts = cluster(
        &redis,
        3,
        &["--turn-allow-loopback", "--turn-grace-secs", "1"],
    )
    .await;
    let mut alice = hosts[0].client().await;
    alice.login("relay", "alice").await; // host 0 owns the room
    let mut bob = hosts[1].client().await;
    let joined = bob.login("relay", "bob").await;
    let turn = &joined["iceServers"][1];
    let user = turn["username"].as_str().unwrap().to_string();
    let pass = turn["credential"].as_str().unwrap().to_string();
    // Host 2 has no part in bob's room, host 1 is bob's, host 0 the owner.
    for h in hosts.iter().rev() {
        wait_turn(h.turn_addr(), &user, &pass, true).await;
    }
    // A forged credential stays refused.
    assert!(!turn_allocates(hosts[2].turn_addr(), &user, "forged").await);
    // Bob's session ends: after the grace, no host honours it any more.
    drop(bob);
    for h in &hosts {
        wait_turn(h.turn_addr(), &user, &pass, false).await;
    }
    drop(alice);
}

#[tokio::test]
async fn a_host_shut_down_hands_its_rooms_over() {
    let redis = Redis::start();
    let mut hosts = cluster(&redis, 3, &[]).await;
    let mut alice = hosts[0].client().await;
    alice.login("upgrade", "alice").await; // host 0 owns the room
    let mut bob = hosts[1].client().await;
    bob.login("upgrade", "bob").await;
    let mut carol = hosts[2].client().await;
    carol.login("upgrade", "carol").await;
    assert_eq!(bob.recv().await["username"], "carol");

    // SIGTERM, as in a rolling upgrade: alice (on host 0) is closed with
    // 1001; bob and carol, on the other hosts, stay in the call.
    let status = hosts[0].terminate(SLOW).expect("host 0 exits");
    assert!(status.success());
    assert_eq!(alice.close_code().await, Some(1001));
    for c in [&mut bob, &mut carol] {
        let logout = recv_within(c, SLOW).await;
        assert_eq!(logout["type"], "logout", "{logout}");
        assert_eq!(logout["data"]["sessionId"], alice.id.as_str());
    }
    bob.send(json!({"type":"candidate","to":carol.id,"data":{"candidate":"c"}}))
        .await;
    assert_eq!(carol.recv().await["from"], bob.id.as_str());
    let mut dave = hosts[1].client().await;
    let joined = dave.login("upgrade", "dave").await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 2, "{joined}");
    hosts.remove(0);
}

/// The next frame that is not an `error unavailable` (a frame sent just
/// before a host was cut off from Redis may get one).
async fn next_notice(c: &mut Client) -> Value {
    loop {
        let f = recv_within(c, SLOW).await;
        if f["type"] != "error" || f["message"]["errorType"] != "unavailable" {
            return f;
        }
    }
}

/// A TCP path to Redis that a test can cut (its connections reset, new ones
/// refused) and mend: one host's network partition. It can also hold back
/// what Redis pushes on the host's subscriptions (connections that sent a
/// `SUBSCRIBE` command) while the host's commands still go through: messages
/// to the host are delayed, and lost if the cable is cut meanwhile.
struct Cable {
    port: u16,
    cut: Flag,
    hold: Flag,
    /// Everything held back so far.
    held: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// The live connections: each one's "severed" flag and task. (Checked
    /// and filled under this lock, so no connection slips past a cut.)
    conns: std::sync::Arc<std::sync::Mutex<Vec<(Flag, tokio::task::AbortHandle)>>>,
}

type Flag = std::sync::Arc<std::sync::atomic::AtomicBool>;

impl Cable {
    async fn to(redis: &Redis) -> Cable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = redis.port;
        let cable = Cable {
            port,
            cut: Default::default(),
            hold: Default::default(),
            held: Default::default(),
            conns: Default::default(),
        };
        let (cut, conns) = (cable.cut.clone(), cable.conns.clone());
        let (hold, held) = (cable.hold.clone(), cable.held.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut conns = conns.lock().unwrap();
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let severed = Flag::default();
                let (hold, held, flag) = (hold.clone(), held.clone(), severed.clone());
                let task = tokio::spawn(async move {
                    if let Ok(out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        splice(inbound, out, hold, held, flag).await;
                    }
                });
                conns.push((severed, task.abort_handle()));
            }
        });
        cable
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Resets every connection: what it had not passed on yet is lost, even
    /// if its task is running right now on another worker (an abort only
    /// takes effect at its next await).
    fn cut(&self) {
        use std::sync::atomic::Ordering;
        let mut conns = self.conns.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for (severed, task) in conns.drain(..) {
            severed.store(true, Ordering::SeqCst);
            task.abort();
        }
    }

    fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds back (true) or lets through what Redis pushes on subscriptions.
    fn hold_subscriptions(&self, hold: bool) {
        self.hold.store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (bounded) until what was held back contains `needle`.
    async fn wait_held(&self, needle: &str) {
        let deadline = Instant::now() + SLOW;
        loop {
            let held = String::from_utf8_lossy(&self.held.lock().unwrap()).to_string();
            if held.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "{needle} never held: {held}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Copies both ways between a host and Redis until `severed`; see `Cable`.
async fn splice(
    host: tokio::net::TcpStream,
    redis: tokio::net::TcpStream,
    hold: Flag,
    held: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    severed: Flag,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut host_rx, mut host_tx) = host.into_split();
    let (mut redis_rx, mut redis_tx) = redis.into_split();
    let subscriber = std::sync::Arc::new(AtomicBool::new(false));
    let up = {
        let (subscriber, severed) = (subscriber.clone(), severed.clone());
        async move {
            let mut buf = vec![0u8; 16 << 10];
            // The end of what came before, for a command split across reads.
            let mut recent = Vec::new();
            while let Ok(n) = host_rx.read(&mut buf).await
                && n > 0
            {
                if !subscriber.load(Ordering::SeqCst) {
                    recent.extend_from_slice(&buf[..n]);
                    if sends_subscribe(&recent) {
                        subscriber.store(true, Ordering::SeqCst);
                    }
                    recent.drain(..recent.len().saturating_sub(32));
                }
                if severed.load(Ordering::SeqCst) || redis_tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = redis_tx.shutdown().await;
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut waiting = Vec::new();
        loop {
            let read = tokio::time::timeout(Duration::from_millis(20), redis_rx.read(&mut buf));
            let n = match read.await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => 0, // nothing new: maybe let the held bytes go
            };
            let holding = hold.load(Ordering::SeqCst) && subscriber.load(Ordering::SeqCst);
            waiting.extend_from_slice(&buf[..n]);
            // Read after `hold`: a cut comes before the hold is lifted, so a
            // lifted hold seen here means a cut is seen too.
            if severed.load(Ordering::SeqCst) {
                break; // what waits is lost with the connection
            }
            if holding {
                held.lock().unwrap().extend_from_slice(&buf[..n]);
            } else if !waiting.is_empty() {
                if host_tx.write_all(&waiting).await.is_err() {
                    break;
                }
                waiting.clear();
            }
        }
        let _ = host_tx.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Whether `bytes` hold a command named SUBSCRIBE: a RESP array whose first
/// element is that word (`*<n>\r\n$9\r\nSUBSCRIBE\r\n`), not merely the word,
/// which a PUBLISH payload may contain (JSON has no raw line breaks).
fn sends_subscribe(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_ascii_uppercase();
    text.match_indices("\r\n$9\r\nSUBSCRIBE\r\n")
        .any(|(at, _)| {
            let head = text[..at].trim_end_matches(|c: char| c.is_ascii_digit());
            head.len() < at && head.ends_with('*')
        })
}

#[test]
fn the_cable_tells_a_subscribe_command_from_the_word_in_a_payload() {
    assert!(sends_subscribe(
        b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n"
    ));
    assert!(sends_subscribe(b"*2\r\n$9\r\nsubscribe\r\n$1\r\na\r\n"));
    // A payload with the word, even written as the command (escaped, as
    // JSON does), and the word as an argument.
    let publish = b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n\
        $35\r\n{\"sdp\":\"*2\\r\\n$9\\r\\nSUBSCRIBE\\r\\n\"}\r\n";
    assert!(!sends_subscribe(publish));
    assert!(!sends_subscribe(
        b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$9\r\nSUBSCRIBE\r\n"
    ));
}

/// One host alone cut off from Redis (its connections reset, new ones
/// refused) while the others keep it: they declare it dead and
/// take its room over; once it is back it hands its members over, so each
/// member is in one room with one owner and everyone sees the same list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_alone_rejoins_without_duplicating_or_losing_members() {
    let redis = Redis::start();
    let cable = Cable::to(&redis).await;
    let url = cable.url();
    let turn = ["--turn-allow-loopback", "--turn-grace-secs", "1"];
    let mut args = vec!["--redis-url", &url, "--turn-secret", "cluster-test-secret"];
    args.extend_from_slice(&turn);
    let cut_off = Host::start(&args);
    let other = member_host(&redis, &turn);
    wait_ready(&cut_off, true).await;
    wait_ready(&other, true).await;
    // "standup" is owned by the host to be cut off, "retro" by the other.
    let mut alice = cut_off.client().await;
    alice.login("standup", "alice").await;
    let mut bob = other.client().await;
    let joined = bob.login("standup", "bob").await;
    let bob_turn = &joined["iceServers"][1];
    let bob_user = bob_turn["username"].as_str().unwrap().to_string();
    let bob_pass = bob_turn["credential"].as_str().unwrap().to_string();
    assert_eq!(alice.recv().await["username"], "bob");
    let mut dave = other.client().await;
    dave.login("retro", "dave").await;
    let mut carol = cut_off.client().await;
    carol.login("retro", "carol").await;
    assert_eq!(dave.recv().await["username"], "carol");
    // A frame from each relayed member arrives: its edge has the owner's
    // acknowledgement of its login (its route), which a cut could lose. (The
    // acknowledgement of this last frame may be lost: its sender then gets
    // `error unavailable`, skipped below.)
    bob.send(json!({"type":"candidate","to":alice.id,"data":{"candidate":"b"}}))
        .await;
    assert_eq!(alice.recv().await["from"], bob.id.as_str());
    carol
        .send(json!({"type":"candidate","to":dave.id,"data":{"candidate":"c"}}))
        .await;
    assert_eq!(dave.recv().await["from"], carol.id.as_str());

    signs_of_life(&mut [&mut alice, &mut bob, &mut carol, &mut dave]).await;
    cable.cut();
    // The other host declares it dead: alice and carol are logged out, and
    // the other host takes "standup" over.
    let logout = recv_within(&mut bob, SLOW).await;
    assert_eq!(logout["type"], "logout", "{logout}");
    assert_eq!(logout["data"]["sessionId"], alice.id.as_str());
    let logout = recv_within(&mut dave, SLOW).await;
    assert_eq!(logout["type"], "logout", "{logout}");
    assert_eq!(logout["data"]["sessionId"], carol.id.as_str());
    // Meanwhile the cut-off host keeps serving, and refuses what needs Redis.
    let mut erin = cut_off.client().await;
    erin.send(json!({"type":"login","data":{"roomrequest":"retro","username":"erin"}}))
        .await;
    assert_error(&erin.recv().await, "unavailable");
    drop(erin);

    signs_of_life(&mut [&mut alice, &mut bob, &mut carol, &mut dave]).await;
    cable.mend();
    wait_ready(&cut_off, true).await;
    // alice and carol are back in the one copy of their rooms: the others
    // hear them join again.
    let back = next_notice(&mut bob).await;
    assert_eq!(back["type"], "login", "{back}");
    assert_eq!(back["from"], alice.id.as_str());
    let back = next_notice(&mut dave).await;
    assert_eq!(back["type"], "login", "{back}");
    assert_eq!(back["from"], carol.id.as_str());
    signs_of_life(&mut [&mut alice, &mut bob, &mut carol, &mut dave]).await;

    // Frames flow both ways again.
    alice
        .send(json!({"type":"offer","to":bob.id,"data":{"sdp":"again"}}))
        .await;
    let offer = next_notice(&mut bob).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["from"], alice.id.as_str());
    bob.send(json!({"type":"answer","to":alice.id,"data":{"sdp":"ok"}}))
        .await;
    let answer = next_notice(&mut alice).await;
    assert_eq!(answer["type"], "answer", "{answer}");
    carol
        .send(json!({"type":"candidate","to":dave.id,"data":{"candidate":"c"}}))
        .await;
    assert_eq!(next_notice(&mut dave).await["from"], carol.id.as_str());
    // bob's membership was handed over, his session lives on: the host that
    // handed it over still honours his TURN credentials (past the grace a
    // disconnect would have started).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        turn_allocates(cut_off.turn_addr(), &bob_user, &bob_pass).await,
        "bob's TURN credentials refused by the host that handed him over"
    );

    // Newcomers on either host find each room once, with each member once.
    let names = |joined: &Value| -> Vec<String> {
        joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["username"].as_str().unwrap().to_string())
            .collect()
    };
    let mut frank = cut_off.client().await;
    let joined = frank.login("standup", "frank").await;
    assert_eq!(names(&joined), ["bob", "alice"], "{joined}");
    let mut gina = other.client().await;
    let joined = gina.login("retro", "gina").await;
    assert_eq!(names(&joined), ["dave", "carol"], "{joined}");
    for c in [&mut alice, &mut bob] {
        assert_eq!(next_notice(c).await["username"], "frank");
    }
    for c in [&mut carol, &mut dave] {
        assert_eq!(next_notice(c).await["username"], "gina");
    }
    drop(redis);
}

/// The owner handles a member's `login` but its acknowledgement never
/// reaches the member's host (held back on that host's subscription, then
/// lost as the host's path to Redis is cut for a moment): the member is
/// answered `error unavailable`, and the owner is made to take it out of
/// the room again, so the others see it leave and nobody is left half-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_acknowledgement_is_lost_leaves_no_ghost() {
    let redis = Redis::start();
    let cable = Cable::to(&redis).await;
    let url = cable.url();
    let edge = Host::start(&["--redis-url", &url, "--turn-secret", "cluster-test-secret"]);
    let owner = member_host(&redis, &[]);
    wait_ready(&edge, true).await;
    wait_ready(&owner, true).await;
    let mut alice = owner.client().await;
    alice.login("ghosts", "alice").await; // the owner's room
    let mut gus = edge.client().await;

    cable.hold_subscriptions(true);
    gus.send(json!({"type":"login","data":{"roomrequest":"ghosts","username":"gus"}}))
        .await;
    // The owner let gus in …
    let notice = recv_within(&mut alice, SLOW).await;
    assert_eq!(notice["type"], "login", "{notice}");
    assert_eq!(notice["username"], "gus");
    let gus_id = notice["from"].as_str().unwrap().to_string();
    // … and its acknowledgement reached Redis, held back before gus's host.
    cable.wait_held(r#""k":"a""#).await;
    cable.cut();
    cable.hold_subscriptions(false);
    cable.mend();
    assert_error(&recv_within(&mut gus, SLOW).await, "unavailable");

    // gus is in no room on either side: the others see him leave, he is
    // told he left too (he might have heard `joined`), and his host tells
    // him he is in none. (Within the time a silent client is kept: a sign
    // of life each first.)
    signs_of_life(&mut [&mut alice, &mut gus]).await;
    let logout = recv_within(&mut alice, Duration::from_secs(20)).await;
    assert_eq!(logout["type"], "logout", "{logout}");
    assert_eq!(logout["data"]["sessionId"], gus_id.as_str());
    let logout = recv_within(&mut gus, SLOW).await;
    assert_eq!(logout["type"], "logout", "{logout}");
    assert_eq!(logout["data"]["sessionId"], gus_id.as_str());
    gus.send(json!({"type":"offer","data":{"sdp":"x"}})).await;
    assert_error(&recv_within(&mut gus, SLOW).await, "notInRoom");

    // Logging in again works, and everyone sees one room with each once.
    let joined = gus.login("ghosts", "gus").await;
    assert_eq!(
        joined["members"],
        json!([{"sessionId": alice.id, "username": "alice"}]),
        "{joined}"
    );
    assert_eq!(gus.id, gus_id);
    assert_eq!(recv_within(&mut alice, SLOW).await["from"], gus.id.as_str());
    gus.send(json!({"type":"offer","to":alice.id,"data":{"sdp":"y"}}))
        .await;
    let offer = recv_within(&mut alice, SLOW).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["from"], gus.id.as_str());
    let mut hal = edge.client().await;
    let joined = hal.login("ghosts", "hal").await;
    let names: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "gus"], "{joined}");
    drop(redis);
}

/// Redis stops accepting the hosts' password (changed, and their
/// connections killed so that they must log in again), then accepts it
/// again: each host is unready meanwhile, says so once with what to do,
/// and becomes ready again by itself, frames crossing hosts as before.
#[tokio::test]
async fn hosts_refused_by_redis_recover_once_it_accepts_their_password_again() {
    let redis = Redis::start_with(&["--requirepass", "first"]);
    let url = format!("redis://:first@127.0.0.1:{}/0", redis.port);
    let args = ["--redis-url", &url, "--turn-secret", "cluster-test-secret"];
    let hosts = [Host::start(&args), Host::start(&args)];
    for h in &hosts {
        wait_ready(h, true).await;
    }
    let mut alice = hosts[0].client().await;
    alice.login("vault", "alice").await;
    let mut bob = hosts[1].client().await;
    bob.login("vault", "bob").await;
    assert_eq!(alice.recv().await["username"], "bob");

    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut run = async |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query_async(&mut admin).await.unwrap();
    };
    // The password changes; the hosts' connections are killed (not this
    // one): they must log in again, and are refused.
    run(&["CONFIG", "SET", "requirepass", "second"]).await;
    run(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    run(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for h in &hosts {
        wait_ready(h, false).await;
    }
    let refused = "cluster: Redis refused this host's AUTH";
    let accepted = "cluster: Redis accepts this host's AUTH again";
    for h in &hosts {
        let line = h.wait_log(refused, SLOW);
        assert!(line.contains("--redis-url"), "says what to do: {line}");
    }
    // Refused for a while: several attempts, each its own backoff.
    tokio::time::sleep(Duration::from_secs(5)).await;
    signs_of_life(&mut [&mut alice, &mut bob]).await;

    run(&["CONFIG", "SET", "requirepass", "first"]).await;
    for h in &hosts {
        wait_ready(h, true).await;
    }
    for h in &hosts {
        // One line when it began, one when it ended: none per attempt.
        let line = h.wait_log_any(&[refused, accepted], SLOW);
        assert!(line.contains(accepted), "{line}");
    }
    signs_of_life(&mut [&mut alice, &mut bob]).await;
    bob.send(json!({"type":"offer","to":alice.id,"data":{"sdp":"again"}}))
        .await;
    let offer = next_notice(&mut alice).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["from"], bob.id.as_str());
    let mut carol = hosts[1].client().await;
    let joined = carol.login("vault", "carol").await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 2, "{joined}");
}

/// While a host is cut off from Redis for a moment, one of its members in a
/// room another host owns closes its socket and another joins a room of its
/// own host: what it tells the owner then is lost, and told again once it
/// is back, so the owner's room keeps no ghost of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_and_moves_told_while_cut_off_reach_the_owner_once_back() {
    let redis = Redis::start();
    let cable = Cable::to(&redis).await;
    let url = cable.url();
    let edge = Host::start(&["--redis-url", &url, "--turn-secret", "cluster-test-secret"]);
    let owner = member_host(&redis, &[]);
    wait_ready(&edge, true).await;
    wait_ready(&owner, true).await;
    let mut alice = owner.client().await;
    alice.login("far", "alice").await; // the owner's room
    let mut dave = edge.client().await;
    dave.login("near", "dave").await; // the edge's room
    let mut gus = edge.client().await;
    gus.login("far", "gus").await;
    let mut hal = edge.client().await;
    hal.login("far", "hal").await;
    assert_eq!(alice.recv().await["username"], "gus");
    assert_eq!(alice.recv().await["username"], "hal");
    assert_eq!(gus.recv().await["username"], "hal");
    // (A frame each, relayed only once the owner acknowledged their login.)
    for c in [&mut gus, &mut hal] {
        c.send(json!({"type":"candidate","to":alice.id,"data":{"candidate":"c"}}))
            .await;
        assert_eq!(alice.recv().await["from"], c.id.as_str());
    }

    let dropped = "webrtc_chat_cluster_relay_dropped_total";
    let before = edge.metric(dropped).await;
    signs_of_life(&mut [&mut alice, &mut dave, &mut hal]).await;
    cable.cut();
    drop(gus);
    let joined = hal.login("near", "hal").await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 1, "{joined}");
    assert_eq!(dave.recv().await["username"], "hal");
    // Both words to the owner (gus's end, hal's move) were lost.
    let deadline = Instant::now() + SLOW;
    while edge.metric(dropped).await < before + 2 {
        assert!(Instant::now() < deadline, "nothing dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cable.mend();

    signs_of_life(&mut [&mut alice, &mut dave, &mut hal]).await;
    let mut gone = Vec::new();
    for _ in 0..2 {
        let logout = recv_within(&mut alice, Duration::from_secs(20)).await;
        assert_eq!(logout["type"], "logout", "{logout}");
        gone.push(logout["data"]["username"].as_str().unwrap().to_string());
    }
    gone.sort();
    assert_eq!(gone, ["gus", "hal"]);
    let mut ivy = edge.client().await;
    let joined = ivy.login("far", "ivy").await;
    assert_eq!(
        joined["members"],
        json!([{"sessionId": alice.id, "username": "alice"}]),
        "{joined}"
    );
    drop(redis);
}
