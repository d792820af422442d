//! Every bound hit on purpose: the server's answer is asserted and the
//! other sessions are unaffected.

mod common;

use std::time::Duration;

use common::{Client, Host, assert_error};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed() {
    let host = Host::start(&["--rate-limit", "5", "--rate-burst", "5"]);
    let (mut a, mut b) = host.pair("r").await;
    let mut flooder = host.client().await;
    flooder.login("r", "f").await;
    a.recv().await;
    b.recv().await;
    for i in 0..40 {
        // The server may close the socket mid-flood: later sends can fail.
        let frame = json!({"type":"candidate","to":a.id,"data":i}).to_string();
        if flooder.ws.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match flooder.next_message().await {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["message"]["errorType"], "rateLimited");
                    limited += 1;
                }
            }
            Some(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            None => break None,
            _ => {}
        }
    };
    assert!(limited >= 1, "rateLimited errors before the close");
    assert_eq!(code, Some(1008));
    // Only the burst got through; the room keeps working.
    let mut delivered = 0;
    loop {
        let f = a.recv().await;
        if f["type"] == "logout" {
            break;
        }
        delivered += 1;
    }
    assert!(delivered <= 6, "{delivered} of the flood were delivered");
    b.send(json!({"type":"candidate","to":a.id,"data":"calm"}))
        .await;
    assert_eq!(a.recv().await["data"], "calm");
}

/// A 64 KiB frame of thousands of distinct members costs about what a
/// plain 64 KiB frame costs: parsing is linear in the frame's size.
#[tokio::test]
async fn wide_frames_cost_no_more_cpu_than_plain_ones() {
    let host = Host::start(&["--rate-limit", "0"]);
    let mut c = host.client().await;
    const SIZE: usize = 64 * 1024 - 64;
    let mut wide = String::from(r#"{"type":"x""#);
    for i in 0.. {
        let member = format!(r#","k{i}":0"#);
        if wide.len() + member.len() + 1 > SIZE {
            break;
        }
        wide.push_str(&member);
    }
    wide.push('}');
    let plain = format!(r#"{{"type":"x","data":"{}"}}"#, "x".repeat(wide.len() - 22));
    assert_eq!(plain.len(), wide.len());
    async fn cost(host: &Host, c: &mut Client, frame: &str) -> Duration {
        let before = host.cpu_time();
        for _ in 0..100 {
            c.send_text(frame).await;
            assert_error(&c.recv().await, "badRequest");
        }
        host.cpu_time() - before
    }
    let plain_cpu = cost(&host, &mut c, &plain).await;
    let wide_cpu = cost(&host, &mut c, &wide).await;
    let plain_cpu = plain_cpu.max(cost(&host, &mut c, &plain).await);
    // Clock ticks are 10 ms: allow a few of them besides the ratio.
    assert!(
        wide_cpu <= plain_cpu * 2 + Duration::from_millis(50),
        "100 wide frames took {wide_cpu:?} of host CPU, 100 plain ones {plain_cpu:?}"
    );
}

/// An IPv6 subscriber holds a whole /64: its addresses share one cap.
#[tokio::test]
async fn ipv6_clients_are_capped_per_64() {
    let host = Host::start(&["--max-conns-per-ip", "2", "--trusted-proxy", "127.0.0.1/32"]);
    let url = host.url("/ws");
    let from = |ip: &'static str| {
        let url = url.clone();
        async move { Client::try_connect_with(&url, &[("x-forwarded-for", ip)]).await }
    };
    let _a = from("2001:db8:1:2::1").await.unwrap();
    let _b = from("2001:db8:1:2::2").await.unwrap();
    assert!(from("2001:db8:1:2:ffff:ffff:ffff:ffff").await.is_err());
    let mut other = from("2001:db8:1:3::1").await.unwrap();
    other.login("r", "another network").await;
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    let host = Host::start(&["--max-conns-per-ip", "3"]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(host.client().await);
    }
    assert!(
        Client::try_connect_with(&host.url("/ws"), &[])
            .await
            .is_err()
    );
    open[0].login("r", "still works").await;
    drop(open.pop());
    // The freed slot is counted once the host has seen the close: retry, bounded.
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut again = loop {
        match Client::try_connect_with(&host.url("/ws"), &[]).await {
            Ok(c) => break c,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the closed connection's slot was never freed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    again.login("r", "again").await;
}

#[tokio::test]
async fn total_sessions_and_rooms_are_capped() {
    let host = Host::start(&["--max-sessions", "2", "--max-rooms", "1"]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    let refused = Client::try_connect_with(&host.url("/ws"), &[]).await;
    assert!(
        format!("{:?}", refused.err()).contains("503"),
        "a third session is refused with 503"
    );
    a.login("only", "a").await;
    b.send(json!({"type":"login","data":{"roomrequest":"second","username":"b"}}))
        .await;
    assert_error(&b.recv().await, "full");
    b.login("only", "b").await;
}

#[tokio::test]
async fn foreign_origins_are_refused_by_default() {
    let host = Host::start(&[]);
    let evil =
        Client::try_connect_with(&host.url("/ws"), &[("origin", "https://evil.example")]).await;
    assert!(format!("{:?}", evil.err()).contains("403"));
    let own = format!("https://localhost:{}", host.port);
    let mut ok = Client::try_connect_with(&host.url("/ws"), &[("origin", &own)])
        .await
        .unwrap();
    ok.login("r", "a").await;

    let widened = Host::start(&[
        "--allowed-origins",
        "https://app.example,https://other.example",
    ]);
    let mut c = Client::try_connect_with(&widened.url("/ws"), &[("origin", "https://app.example")])
        .await
        .unwrap();
    c.login("r", "c").await;
    assert!(
        Client::try_connect_with(&widened.url("/ws"), &[("origin", "https://evil.example")])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_without_stalling_its_room() {
    let host = Host::start(&[
        "--send-queue",
        "16",
        "--rate-limit",
        "0",
        "--rate-limit-bytes",
        "0",
    ]);
    let (mut a, mut b) = host.pair("r").await;
    let mut slow = host.client().await;
    slow.login("r", "slow").await;
    a.recv().await;
    b.recv().await;
    // `slow` never reads. Fill its queue with big offers.
    let big = "x".repeat(60_000);
    let mut slow_left = false;
    for i in 0..400 {
        a.send(json!({"type":"offer","to":slow.id,"data":big}))
            .await;
        if i % 50 == 0 {
            // The room keeps flowing meanwhile.
            a.send(json!({"type":"candidate","to":b.id,"data":i})).await;
            loop {
                let f = b.recv().await;
                if f["type"] == "logout" {
                    assert_eq!(f["from"], slow.id);
                    slow_left = true;
                    continue;
                }
                assert_eq!(f["data"], i);
                break;
            }
        }
    }
    if !slow_left {
        // The slow reader was disconnected: the room hears its logout.
        let f = b.recv().await;
        assert_eq!(
            (f["type"].as_str(), f["from"].as_str()),
            (Some("logout"), Some(slow.id.as_str()))
        );
    }
}

#[tokio::test]
async fn a_dead_socket_is_reaped_within_30_seconds() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    a.login("r", "a").await;
    let mut dead = host.client().await;
    dead.login("r", "dead").await;
    a.recv().await;
    // `dead` stops reading: it answers no pings from here on. The reaper
    // closes it after 30 s without a pong; 40 s leaves room for a slow
    // machine (the time is printed, not asserted).
    let started = std::time::Instant::now();
    let f = tokio::time::timeout(Duration::from_secs(40), a.ws_next_text())
        .await
        .expect("the dead socket was never reaped");
    assert_eq!(f["type"], "logout");
    assert_eq!(f["from"], dead.id);
    eprintln!("reaped after {:?}", started.elapsed());
    drop(dead);
}

#[tokio::test]
async fn shutdown_tells_clients_and_exits() {
    let mut host = Host::start(&[]);
    let (mut a, mut b) = host.pair("r").await;
    let status = host
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s");
    assert!(status.success(), "{status:?}");
    assert_eq!(a.close_code().await, Some(1001));
    assert_eq!(b.close_code().await, Some(1001));
}

#[tokio::test]
async fn draining_is_not_ready_and_delivers_queued_frames_before_1001() {
    // Room for all of b's frames in its queue: more than the socket buffers
    // hold, so most of them are still in the host when the drain begins.
    let mut host = Host::start(&["--rate-limit", "0", "--send-queue-bytes", "67108864"]);
    let metrics = host.metrics_addr();
    let (mut a, mut b) = host.pair("r").await;
    let mut c = host.client().await;
    c.login("r", "c").await;
    a.recv().await;
    b.recv().await;
    assert!(
        common::http_get(&metrics, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // `b` reads nothing until the drain has begun; a's frames are queued for
    // it. The host handles a's frames in order: once `c` has the last one,
    // every frame for `b` is in b's queue.
    const N: u64 = 200;
    let pad = "x".repeat(50_000);
    for seq in 0..N {
        a.send(json!({"type":"candidate","to":b.id,"data":{"seq":seq,"pad":pad}}))
            .await;
    }
    a.send(json!({"type":"candidate","to":c.id,"data":"done"}))
        .await;
    assert_eq!(c.recv().await["data"], "done");

    host.send_sigterm();
    // Draining: /readyz says 503 while `b` has not taken its close.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let ready = common::try_http_get(&metrics, "/readyz")
            .await
            .unwrap_or_else(|e| panic!("the drain ended without /readyz saying 503 ({e})"));
        if ready.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never said 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything queued for `b` arrives, in order, then the 1001.
    for seq in 0..N {
        let f = b.recv().await;
        assert_eq!(f["data"]["seq"], seq, "{f}");
    }
    assert_eq!(b.close_code().await, Some(1001));
    let status = host
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn metrics_reflect_a_scripted_session() {
    let host = Host::start(&[]);
    let addr = host.metrics_addr();
    let (mut a, mut b) = host.pair("m").await;
    a.send(json!({"type":"offer","data":"sdp"})).await;
    b.recv().await;
    b.send(json!({"type":"answer","to":a.id,"data":"sdp"}))
        .await;
    a.recv().await;
    a.send(json!({"type":"nope"})).await;
    a.recv().await;
    let body = common::http_get(&addr, "/metrics").await;
    for expected in [
        "webrtc_chat_sessions 2",
        "webrtc_chat_rooms 1",
        "webrtc_chat_messages_in_total{type=\"login\"} 2",
        "webrtc_chat_messages_in_total{type=\"offer\"} 1",
        "webrtc_chat_messages_in_total{type=\"answer\"} 1",
        "webrtc_chat_messages_in_total{type=\"other\"} 1",
        "webrtc_chat_errors_total{kind=\"badRequest\"} 1",
        "webrtc_chat_policy_calls_total{policy=\"default\"}",
        "webrtc_chat_turn_allocations 0",
        "webrtc_chat_turn_relayed_bytes_total{direction=\"to_peers\"} 0",
    ] {
        assert!(body.contains(expected), "missing {expected} in\n{body}");
    }
    assert!(common::http_get(&addr, "/healthz").await.ends_with("ok"));
    let ready = common::http_get(&addr, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready"),
        "{ready}"
    );
}

#[tokio::test]
async fn security_headers_are_set() {
    let host = Host::start(&[]);
    let (_, head, _) = common::https_get(host.port, "/").await;
    for h in [
        "content-security-policy: default-src 'self'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(head.contains(h), "missing {h} in {head}");
    }
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS on a self-signed certificate"
    );
}

/// A receiver that never reads but answers for itself with pings: it looks
/// alive, so only its queue's bounds or a stalled socket can end it.
async fn never_reading(c: Client) -> (String, tokio::task::JoinHandle<()>) {
    use futures_util::StreamExt;
    let id = c.id.clone();
    let pinger = tokio::spawn(async move {
        let (mut sink, _unread) = c.ws.split();
        while sink.send(Message::Ping(Default::default())).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (id, pinger)
}

/// Reads `b` until the logout of `id`, skipping the offers meant for it.
async fn logout_of(b: &mut Client, id: &str, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let f = tokio::time::timeout(within, b.ws_next_text())
            .await
            .unwrap_or_else(|_| panic!("no logout of the stuck receiver within {within:?}"));
        if f["type"] == "logout" && f["from"] == id {
            return started.elapsed();
        }
    }
}

#[tokio::test]
async fn a_receiver_that_never_reads_is_bounded_in_bytes() {
    // Default bounds (1024 frames, 1 MiB) apart from the rate limits.
    let host = Host::start(&["--rate-limit", "0", "--rate-limit-bytes", "0"]);
    let (mut a, mut b) = host.pair("r").await;
    let mut slow = host.client().await;
    slow.login("r", "slow").await;
    a.recv().await;
    b.recv().await;
    let (slow_id, pinger) = never_reading(slow).await;
    let big = "x".repeat(60_000);
    let mut most_queued = 0;
    for i in 0..400 {
        a.send(json!({"type":"offer","to":slow_id,"data":big}))
            .await;
        if i % 20 == 0 {
            most_queued = most_queued.max(host.metric("webrtc_chat_send_queue_bytes").await);
        }
    }
    // 400 frames of 60 KB are far fewer than 1024 frames, but far more
    // than 1 MiB and the socket buffers.
    logout_of(&mut b, &slow_id, Duration::from_secs(30)).await;
    assert!(
        most_queued <= 1024 * 1024 + 61_000,
        "{most_queued} bytes queued"
    );
    // What it still had queued is given back once its writer ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.metric("webrtc_chat_send_queue_bytes").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "queued bytes never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pinger.abort();
}

#[tokio::test]
async fn a_socket_that_accepts_nothing_is_closed_after_15_seconds() {
    // Bounds so wide that only the stalled socket can end the session.
    let host = Host::start(&["--rate-limit", "0", "--send-queue-bytes", "268435456"]);
    let (mut a, mut b) = host.pair("r").await;
    let mut slow = host.client().await;
    slow.login("r", "slow").await;
    a.recv().await;
    b.recv().await;
    let (slow_id, pinger) = never_reading(slow).await;
    let big = "x".repeat(60_000);
    // More than loopback's socket buffers hold.
    for _ in 0..600 {
        a.send(json!({"type":"offer","to":slow_id,"data":big}))
            .await;
    }
    let after = logout_of(&mut b, &slow_id, Duration::from_secs(40)).await;
    assert!(after < Duration::from_secs(30), "{after:?}");
    host.wait_log("accepted nothing for 15s", Duration::from_secs(5));
    pinger.abort();
}

/// Connections that never send a request are closed, whatever the protocol.
#[tokio::test]
async fn silent_connections_are_closed_within_15_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = Host::start(&["--http-port", &http_port.to_string()]);
    let port = host.port;

    /// Reads (answering HTTP/2 pings when `h2`) until the server closes.
    async fn until_closed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        h2: bool,
    ) -> Duration {
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(40), s.read(&mut chunk)).await {
                Err(_) => panic!("still open after 40 s"),
                Ok(Ok(0) | Err(_)) => return started.elapsed(),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
            // HTTP/2 frames: 3-byte length, type, flags, 4-byte stream.
            while h2 && buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                if kind == 6 && flags & 1 == 0 {
                    // PING: answer it, as a live client would.
                    let mut ack = buf[..9 + len].to_vec();
                    ack[4] = 1;
                    let _ = s.write_all(&ack).await;
                }
                buf.drain(..9 + len);
            }
        }
    }

    // TLS done, then nothing.
    let tls_silent = async {
        let s = common::tls_connect_alpn(port, &[]).await;
        until_closed(s, false).await
    };
    // HTTP/2: preface and settings, pings answered, but no request.
    let h2_silent = async {
        let mut s = common::tls_connect_alpn(port, &[b"h2"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        until_closed(s, true).await
    };
    // HTTP/1.1: one request, then idle on the kept-alive connection.
    let h1_idle = async {
        let mut s = common::tls_connect_alpn(port, &[b"http/1.1"]).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        until_closed(s, false).await
    };
    // Plain TCP to the --http-port listener, nothing sent.
    let plain_silent = async {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .unwrap();
        until_closed(s, false).await
    };
    let (tls, h2, h1, plain) = tokio::join!(tls_silent, h2_silent, h1_idle, plain_silent);
    for (what, after) in [
        ("TLS", tls),
        ("HTTP/2", h2),
        ("HTTP/1.1 idle", h1),
        ("plain", plain),
    ] {
        assert!(
            after < Duration::from_secs(20),
            "{what}: closed after {after:?}"
        );
    }
}

/// A WebSocket upgraded while shutdown is draining (its connection was
/// already open) is told the server is going away, like the others.
#[tokio::test]
async fn sessions_registered_during_shutdown_are_closed_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = Host::start(&["--rate-limit", "0", "--send-queue-bytes", "268435456"]);
    let (mut a, mut b) = host.pair("r").await;
    let mut slow = host.client().await;
    slow.login("r", "slow").await;
    a.recv().await;
    b.recv().await;
    // A receiver whose socket is full keeps the drain waiting (up to 5 s).
    let (slow_id, pinger) = never_reading(slow).await;
    let big = "x".repeat(60_000);
    for _ in 0..300 {
        a.send(json!({"type":"offer","to":slow_id,"data":big}))
            .await;
    }
    // An HTTP/1.1 connection kept alive from before the shutdown.
    let mut tls = common::tls_connect_alpn(host.port, &[b"http/1.1"]).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\nok") {
        let mut byte = [0u8; 1];
        assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "healthz answered");
        head.push(byte[0]);
    }
    std::process::Command::new("kill")
        .args(["-TERM", &host.pid().to_string()])
        .status()
        .unwrap();
    host.wait_log("shutting down: closing", common::WAIT);
    let url = format!("wss://localhost:{}/ws", host.port);
    let (mut late, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let code = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(common::WAIT, late.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    pinger.abort();
}

/// Receivers that never read, fed by their own room's sender, spend the
/// shared send-queue budget: they are closed (the largest backlogs first),
/// while a pair trading candidate bursts meanwhile, a few frames behind at
/// times, is not.
#[tokio::test]
async fn a_spent_total_budget_closes_the_largest_backlogs_not_laggards() {
    use futures_util::StreamExt;
    const SINKS: usize = 6;
    let host = Host::start(&[
        "--rate-limit",
        "0",
        "--rate-limit-bytes",
        "0",
        "--send-queue-total-mib",
        "2",
        "--max-conns-per-ip",
        "20",
    ]);
    let (mut a, mut b) = host.pair("calls").await;
    let mut feeder = host.client().await;
    feeder.login("sinks", "feeder").await;
    let mut sinks = Vec::new();
    for i in 0..SINKS {
        let mut s = host.client().await;
        s.login("sinks", &format!("sink{i}")).await;
        assert_eq!(feeder.recv().await["type"], "login");
        sinks.push(never_reading(s).await);
    }
    // The feeder fans offers out to every sink until all are gone: big ones
    // to fill their queues, small ones to fill the budget to the brim.
    let (mut feed, mut heard) = feeder.ws.split();
    let pump = tokio::spawn(async move {
        let big = json!({"type":"offer","data":"x".repeat(60_000)}).to_string();
        let small = json!({"type":"offer","data":"x".repeat(100)}).to_string();
        for _ in 0..2000 {
            for offer in std::iter::once(&big).chain([&small; 30]) {
                if feed.send(Message::text(offer.clone())).await.is_err() {
                    return;
                }
            }
        }
    });
    let sinks_gone = tokio::spawn(async move {
        let mut gone = 0;
        while gone < SINKS {
            match heard.next().await {
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"logout""#) => gone += 1,
                Some(Ok(_)) => {}
                other => panic!("the feeder's socket ended: {other:?}"),
            }
        }
    });
    // Meanwhile the pair trades bursts of candidates, as a call starting does.
    // Killed receivers' bytes used to stay counted for seconds: keep
    // trading a while after the sinks are gone.
    let mut round = 0;
    let mut trading_until = None;
    while trading_until.is_none_or(|t| std::time::Instant::now() < t) {
        if trading_until.is_none() && sinks_gone.is_finished() {
            trading_until = Some(std::time::Instant::now() + Duration::from_secs(3));
        }
        for i in 0..30 {
            a.send(json!({"type":"candidate","to":b.id,"data":{"round":round,"i":i,"pad":"c".repeat(1000)}}))
                .await;
        }
        for i in 0..30 {
            let f = b.recv().await;
            assert_eq!(
                (f["data"]["round"].as_u64(), f["data"]["i"].as_u64()),
                (Some(round), Some(i)),
                "{f}"
            );
        }
        round += 1;
    }
    tokio::time::timeout(common::WAIT, sinks_gone)
        .await
        .expect("every sink is closed")
        .unwrap();
    host.wait_log("the largest send queue", common::WAIT);
    pump.abort();
    b.send(json!({"type":"candidate","to":a.id,"data":"still here"}))
        .await;
    assert_eq!(a.recv().await["data"], "still here");
    for (_, pinger) in sinks {
        pinger.abort();
    }
}

/// Refusals a client can provoke at will do not flood the log: 100
/// refused origins write a burst of lines, and the next line, once the
/// budget refilled, says how many were suppressed.
#[tokio::test]
async fn refused_origins_do_not_flood_the_log() {
    let host = Host::start(&[]);
    let evil = [("origin", "https://evil.example")];
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let refused = Client::try_connect_with(&host.url("/ws"), &evil).await;
        assert!(format!("{:?}", refused.err()).contains("403"));
    }
    // A burst of 20, then 10 a second for as long as the refusals took
    // (a loaded machine takes longer).
    let most = 21 + (10.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    let lines = host.count_log("origin not allowed", Duration::from_millis(500));
    assert!(
        (1..=most.min(99)).contains(&lines),
        "{lines} lines for 100 refusals (at most {most})"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = Client::try_connect_with(&host.url("/ws"), &evil).await;
    assert!(refused.is_err());
    let line = host.wait_log("origin not allowed", Duration::from_secs(10));
    assert!(
        line.contains("suppressed=") && !line.contains("suppressed=0"),
        "{line}"
    );
}

/// One member fanning big offers out to its room at the frame rate limit
/// is limited by the bytes it makes the host deliver, not the receivers:
/// a member reading slowly is not closed.
#[tokio::test]
async fn a_member_fanning_out_big_frames_is_limited_not_its_slow_room() {
    use futures_util::StreamExt;
    // Default limits: 50 frames/s, a burst of 200.
    let host = Host::start(&[]);
    let (mut sender, mut slow) = host.pair("r").await;
    let mut other = host.client().await;
    other.login("r", "other").await;
    sender.recv().await;
    slow.recv().await;
    // `other` reads at full speed; `slow` only every 50 ms.
    let (mut other_tx, mut other_rx) = other.ws.split();
    let other_reads = tokio::spawn(async move { while let Some(Ok(_)) = other_rx.next().await {} });
    let offer = json!({"type":"offer","data":"x".repeat(65_000)}).to_string();
    for _ in 0..200 {
        if sender.ws.send(Message::text(offer.clone())).await.is_err() {
            break;
        }
    }
    // The sender is told (or, persisting, closed).
    let limited = tokio::time::timeout(common::WAIT, async {
        loop {
            match sender.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "error" {
                        assert_error(&v, "rateLimited");
                        return true;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    return f.is_some_and(|f| u16::from(f.code) == 1008);
                }
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    // The slow member gets what was delivered, then a later frame: it
    // was never closed.
    other_tx
        .send(Message::text(
            json!({"type":"candidate","to":slow.id,"data":"still here"}).to_string(),
        ))
        .await
        .expect("`other`, a member reading at full speed, was closed by the flood");
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let f = slow.recv().await;
        if f["data"] == "still here" {
            break;
        }
        assert!(f["type"] == "offer" || f["type"] == "logout", "{f}");
    }
    assert!(limited, "the sender was neither refused nor closed");
    other_reads.abort();
}

/// Binary frames take a token like text frames (a stream of them is a
/// flood), and refusals are answered at most once a second: a flood of
/// 40 binary frames gets a burst's worth of `badRequest`, one
/// `rateLimited` and the 1008 close.
#[tokio::test]
async fn a_binary_flood_is_rate_limited_then_closed_and_answered_sparingly() {
    let host = Host::start(&["--rate-limit", "5", "--rate-burst", "5"]);
    let mut flooder = host.client().await;
    for _ in 0..40 {
        if flooder
            .ws
            .send(Message::Binary(vec![0, 1, 2].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut bad, mut limited) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        // Pings keep coming: bounded by a deadline, not per message.
        let Ok(next) = tokio::time::timeout_at(deadline, flooder.next_message()).await else {
            break None; // never closed
        };
        match next {
            Some(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["message"]["errorType"].as_str() {
                    Some("badRequest") => bad += 1,
                    Some("rateLimited") => limited += 1,
                    _ => {}
                }
            }
            Some(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            None => break None,
            _ => {}
        }
    };
    assert_eq!(
        code,
        Some(1008),
        "closed: {bad} badRequest, {limited} rateLimited"
    );
    assert!(bad <= 6, "{bad} binary frames answered");
    assert_eq!(limited, 1, "one rateLimited answer for the refusals");
}
