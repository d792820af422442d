//! Every row of protocol.md, against the real binary over WSS.

mod common;

use std::time::Duration;

use common::{Client, Host, assert_error};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn login_joins_and_notifies_the_room() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    let joined = a.login("lobby", "alice").await;
    // `data` is the own session id, a UUID v4.
    assert!(uuid_like(joined["data"].as_str().unwrap()), "{joined}");
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["members"], json!([]));
    assert!(joined["iceServers"].is_array());

    let mut b = host.client().await;
    let joined_b = b.login("lobby", "bob").await;
    assert_eq!(
        joined_b["members"],
        json!([{"sessionId": a.id, "username": "alice"}])
    );
    let notice = a.recv().await;
    assert_eq!(notice["type"], "login");
    assert_eq!(notice["from"], b.id);
    assert_eq!(notice["data"]["username"], "bob");
    assert_eq!(notice["data"]["roomrequest"], "lobby");
    // The newcomer gets no notice of its own login.
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn room_names_are_trimmed_and_case_sensitive() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    let mut c = host.client().await;
    a.login("  Room ", "a").await;
    let j = b.login("Room", "b").await;
    assert_eq!(j["members"].as_array().unwrap().len(), 1);
    let j = c.login("room", "c").await;
    assert_eq!(j["members"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn offers_fan_out_or_unicast_and_spoofing_is_overwritten() {
    let host = Host::start(&[]);
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    a.login("r", "alice").await;
    b.login("r", "bob").await;
    c.login("r", "carol").await;
    a.recv().await; // bob's login
    a.recv().await; // carol's login
    b.recv().await; // carol's login

    // The original client's offer: `username` beside `data`, no `to` → everyone else.
    a.send(json!({"type":"offer","username":"mallory","from":"forged","data":{"type":"offer","sdp":"v=0"},"extra":7}))
        .await;
    for peer in [&mut b, &mut c] {
        let f = peer.recv().await;
        assert_eq!(f["type"], "offer");
        assert_eq!(f["from"], a.id, "from is stamped by the host");
        assert_eq!(f["username"], "alice", "username is stamped by the host");
        assert_eq!(f["data"]["sdp"], "v=0");
        assert_eq!(f["extra"], 7, "other members are kept");
    }
    a.expect_silence(QUIET).await;

    // With `to`: only the target.
    a.send(json!({"type":"offer","to":b.id,"data":"sdp2"}))
        .await;
    assert_eq!(b.recv().await["data"], "sdp2");
    c.expect_silence(QUIET).await;

    // An empty `to` is "everyone", as in the original client.
    a.send(json!({"type":"offer","to":"","data":"sdp3"})).await;
    assert_eq!(b.recv().await["data"], "sdp3");
    assert_eq!(c.recv().await["data"], "sdp3");
}

#[tokio::test]
async fn answers_and_candidates_are_unicast_within_the_room() {
    let host = Host::start(&[]);
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    let mut outsider = host.client().await;
    a.login("r", "a").await;
    b.login("r", "b").await;
    c.login("r", "c").await;
    outsider.login("elsewhere", "o").await;
    a.recv().await;
    a.recv().await;
    b.recv().await;

    b.send(json!({"type":"answer","to":a.id,"data":{"sdp":"ans"}}))
        .await;
    let f = a.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["from"].as_str()),
        (Some("answer"), Some(b.id.as_str()))
    );
    c.send(json!({"type":"candidate","to":a.id,"data":{"candidate":"cand"}}))
        .await;
    assert_eq!(a.recv().await["data"]["candidate"], "cand");
    b.expect_silence(QUIET).await;

    // A target in another room, or unknown, is dropped silently.
    a.send(json!({"type":"candidate","to":outsider.id,"data":"x"}))
        .await;
    a.send(json!({"type":"answer","to":"no-such-session","data":"x"}))
        .await;
    outsider.expect_silence(QUIET).await;
    a.expect_silence(QUIET).await;
    // ... and the sender keeps working.
    a.send(json!({"type":"candidate","to":b.id,"data":"after"}))
        .await;
    assert_eq!(b.recv().await["data"], "after");

    // An answer needs a target.
    a.send(json!({"type":"answer","data":"x"})).await;
    assert_error(&a.recv().await, "badRequest");
}

#[tokio::test]
async fn relaying_before_login_is_not_in_room() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    for kind in ["offer", "answer", "candidate"] {
        a.send(json!({"type":kind,"to":"x","data":"d"})).await;
        assert_error(&a.recv().await, "notInRoom");
    }
}

#[tokio::test]
async fn random_check_needs_no_login_and_only_takes_uuids() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    let taken = "0b6f4c1e-3c1a-4b8e-9d2a-1f2e3d4c5b6a";
    let free = "9e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b";
    b.login(taken, "b").await;

    a.send(json!({"type":"randomCheck","data":free})).await;
    let r = a.recv().await;
    assert_eq!(r["type"], "randomCheckResult");
    assert_eq!(r["from"], "", "a policy's own frame comes from the server");
    assert_eq!(r["data"], json!({"result":"ok","roomrequest":free}));

    a.send(json!({"type":"randomCheck","data":taken})).await;
    assert_eq!(a.recv().await["data"]["result"], "fail");

    // Typed room names cannot be probed.
    b.login("my room", "b").await;
    a.send(json!({"type":"randomCheck","data":"my room"})).await;
    assert_error(&a.recv().await, "badRequest");
    a.send(json!({"type":"randomCheck"})).await;
    assert_error(&a.recv().await, "badRequest");
}

#[tokio::test]
async fn hello_answers_the_chains_capabilities_without_login() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    b.login("r", "b").await;
    a.send(json!({"type":"hello"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type":"hello","from":"","data":{"capabilities":[]}}),
        "only the default policy: nothing extra"
    );
    // In a room too, and nobody else hears of it.
    b.send(json!({"type":"hello"})).await;
    assert_eq!(b.recv().await["type"], "hello");
    a.expect_silence(QUIET).await;
}

#[tokio::test]
async fn eleventh_login_is_full_and_stays_put() {
    let host = Host::start(&[]);
    let mut members = Vec::new();
    for i in 0..10 {
        let mut c = host.client().await;
        c.login("big", &format!("user{i}")).await;
        members.push(c);
    }
    let mut eleventh = host.client().await;
    eleventh.login("small", "e").await;
    eleventh
        .send(json!({"type":"login","data":{"roomrequest":"big","username":"e"}}))
        .await;
    assert_error(&eleventh.recv().await, "full");
    // It is still in its old room: a fan-out offer reaches nobody, with no error.
    eleventh.send(json!({"type":"offer","data":"x"})).await;
    eleventh.expect_silence(QUIET).await;
}

#[tokio::test]
async fn room_max_is_configurable() {
    let host = Host::start(&["--room-max", "2"]);
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    a.login("r", "a").await;
    b.login("r", "b").await;
    c.send(json!({"type":"login","data":{"roomrequest":"r","username":"c"}}))
        .await;
    assert_error(&c.recv().await, "full");
}

#[tokio::test]
async fn fifty_concurrent_logins_fill_exactly_ten_slots() {
    let host = Host::start(&[]);
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(host.client().await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                c.send(json!({"type":"login","data":{"roomrequest":"race","username":format!("u{i}")}}))
                    .await;
                // The first frame answering the login is `joined` or `error`;
                // `login` notices of later joiners may follow a `joined`.
                let first = c.recv().await;
                if first["type"] == "error" {
                    // Only `full` counts as a refusal for capacity.
                    assert_error(&first, "full");
                }
                (first["type"].as_str().unwrap().to_string(), c)
            })
        })
        .collect();
    let mut joined = 0;
    let mut full = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (kind, c) = t.await.unwrap();
        match kind.as_str() {
            "joined" => joined += 1,
            "error" => full += 1,
            other => panic!("unexpected {other}"),
        }
        keep.push(c);
    }
    assert_eq!((joined, full), (10, 40));
}

#[tokio::test]
async fn bad_input_is_answered_and_the_room_keeps_working() {
    let host = Host::start(&["--max-frame-bytes", "4096"]);
    let (mut a, mut b) = host.pair("r").await;

    b.send_text("{not json").await;
    assert_error(&b.recv().await, "badRequest");
    b.send_text("[1,2,3]").await;
    assert_error(&b.recv().await, "badRequest");
    b.send_text("\"just a string\"").await;
    assert_error(&b.recv().await, "badRequest");
    b.send_text(r#"{"data":1}"#).await;
    assert_error(&b.recv().await, "badRequest");
    b.send(json!({"type":"noSuchType","data":1})).await;
    assert_error(&b.recv().await, "badRequest");
    b.ws.send_binary_frame().await;
    assert_error(&b.recv().await, "badRequest");
    // Nothing of that reached the other member.
    a.expect_silence(QUIET).await;
    // b still works.
    b.send(json!({"type":"candidate","to":a.id,"data":"ok"}))
        .await;
    assert_eq!(a.recv().await["data"], "ok");

    // Oversized: close 1009 for that session only.
    let mut big = host.client().await;
    big.login("r", "big").await;
    a.recv().await;
    b.recv().await;
    big.send(json!({"type":"offer","data":"x".repeat(5000)}))
        .await;
    assert_eq!(big.close_code().await, Some(1009));
    // The others get its logout and keep exchanging messages.
    assert_eq!(a.recv().await["type"], "logout");
    assert_eq!(b.recv().await["type"], "logout");
    a.send(json!({"type":"offer","to":b.id,"data":"still here"}))
        .await;
    assert_eq!(b.recv().await["data"], "still here");
}

#[tokio::test]
async fn bad_names_are_refused() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    for (room, name) in [
        ("", "a"),
        ("r", "   "),
        ("r", "evil\u{202E}name"),
        ("r\u{200B}", "a"),
        (&*"x".repeat(129), "a"),
        ("r", &*"n".repeat(65)),
    ] {
        a.send(json!({"type":"login","data":{"roomrequest":room,"username":name}}))
            .await;
        assert_error(&a.recv().await, "badRequest");
    }
    a.send(json!({"type":"login","data":{"roomrequest":5,"username":"a"}}))
        .await;
    assert_error(&a.recv().await, "badRequest");
    a.send(json!({"type":"login","data":"lobby"})).await;
    assert_error(&a.recv().await, "badRequest");
}

#[tokio::test]
async fn disconnect_and_leave_send_logout_to_the_rest() {
    let host = Host::start(&[]);
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    a.login("r", "alice").await;
    b.login("r", "bob").await;
    c.login("r", "carol").await;
    a.recv().await;
    a.recv().await;
    b.recv().await;

    drop(c.ws.close(None).await);
    let expect = json!({"type":"logout","from":c.id,"data":{"username":"carol","sessionId":c.id}});
    assert_eq!(a.recv().await, expect);
    assert_eq!(b.recv().await, expect);

    b.send(json!({"type":"leave"})).await;
    let f = a.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["from"].as_str()),
        (Some("logout"), Some(b.id.as_str()))
    );
    // b is out of the room now.
    b.send(json!({"type":"offer","data":"x"})).await;
    assert_error(&b.recv().await, "notInRoom");
}

#[tokio::test]
async fn a_second_login_moves_the_session() {
    let host = Host::start(&[]);
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    // A UUID-named room, so that `randomCheck` can see it come and go.
    let one = "5a0c7e2d-1b3f-4c6a-8d9e-2f4b6c8a0e1d";
    a.login(one, "a").await;
    b.login(one, "b").await;
    a.recv().await;
    c.login("two", "c").await;

    b.login("two", "b2").await;
    let f = a.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["from"].as_str()),
        (Some("logout"), Some(b.id.as_str()))
    );
    let f = c.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["data"]["username"].as_str()),
        (Some("login"), Some("b2"))
    );
    // The room lives while a member is left in it...
    let mut probe = host.client().await;
    probe.send(json!({"type":"randomCheck","data":one})).await;
    assert_eq!(probe.recv().await["data"]["result"], "fail");
    // ...and the last member leaving deletes it (the close is handled
    // asynchronously: ask until it is gone, bounded).
    drop(a.ws.close(None).await);
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        probe.send(json!({"type":"randomCheck","data":one})).await;
        if probe.recv().await["data"]["result"] == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room outlived its last member"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_socket_is_also_accepted_at_the_root_path() {
    let host = Host::start(&[]);
    let mut a = Client::connect(&host.url("/")).await;
    a.login("root", "a").await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let host = Host::start(&[]);
    let mut a = host.client().await;
    use futures_util::SinkExt;
    a.ws.send(Message::Ping(vec![1, 2, 3].into()))
        .await
        .unwrap();
    match a.next_message().await {
        Some(Message::Pong(p)) => assert_eq!(&p[..], &[1, 2, 3]),
        other => panic!("expected pong, got {other:?}"),
    }
}

/// A UUID v4 in its canonical hyphenated, lower-case form.
fn uuid_like(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| {
        u.get_version() == Some(uuid::Version::Random)
            && u.get_variant() == uuid::Variant::RFC4122
            && u.hyphenated().to_string() == s
    })
}

trait BinaryFrame {
    async fn send_binary_frame(&mut self);
}

impl BinaryFrame
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn send_binary_frame(&mut self) {
        use futures_util::SinkExt;
        self.send(Message::Binary(vec![0, 1, 2].into()))
            .await
            .unwrap();
    }
}
