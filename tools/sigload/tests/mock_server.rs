//! sigload against a minimal in-test server (plain ws://) that speaks only
//! the core of protocol.md — `joined` carries just `data`, no `members` —
//! and drops / duplicates some deliveries on purpose: the tool must see
//! exactly the losses and duplicates the server made.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct State {
    /// room → members (id, sender)
    rooms: HashMap<String, Vec<(String, mpsc::UnboundedSender<String>)>>,
    next_id: u64,
}

struct Mock {
    state: Mutex<State>,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    drop_every: u64,
    dup_every: u64,
    /// (username, index of the listener the login came in on)
    logins: Mutex<Vec<(String, usize)>>,
}

impl Mock {
    fn deliver(&self, tx: &mpsc::UnboundedSender<String>, frame: &str) {
        let n = self.deliveries.fetch_add(1, SeqCst) + 1;
        if n.is_multiple_of(self.drop_every) {
            self.dropped.fetch_add(1, SeqCst);
            return;
        }
        let _ = tx.send(frame.to_string());
        if n.is_multiple_of(self.dup_every) {
            self.duplicated.fetch_add(1, SeqCst);
            let _ = tx.send(frame.to_string());
        }
    }
}

async fn session(mock: Arc<Mock>, tcp: tokio::net::TcpStream, listener: usize) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.send(Message::text(f)).await.is_err() {
                break;
            }
        }
    });
    let mut me: Option<(String, String)> = None; // (id, room)
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        if kind == "login" {
            let room = v["data"]["roomrequest"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let user = v["data"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            mock.logins.lock().unwrap().push((user, listener));
            let mut st = mock.state.lock().unwrap();
            st.next_id += 1;
            let id = format!("mock-{}", st.next_id);
            v["from"] = id.clone().into();
            let notice = v.to_string();
            let members = st.rooms.entry(room.clone()).or_default();
            for (_, other) in members.iter() {
                let _ = other.send(notice.clone());
            }
            members.push((id.clone(), tx.clone()));
            let _ = tx.send(serde_json::json!({"type": "joined", "data": id}).to_string());
            me = Some((id, room));
            continue;
        }
        let Some((id, room)) = &me else { continue };
        v["from"] = id.clone().into();
        let to = v.get("to").and_then(|t| t.as_str()).map(str::to_string);
        let frame = v.to_string();
        let st = mock.state.lock().unwrap();
        for (mid, mtx) in st.rooms.get(room).into_iter().flatten() {
            let hit = match &to {
                Some(t) => t == mid,
                None => mid != id,
            };
            if hit {
                mock.deliver(mtx, &frame);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_what_a_lossy_server_dropped_and_duplicated() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mock = Arc::new(Mock {
        state: Mutex::default(),
        deliveries: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        drop_every: 97,
        dup_every: 89,
        logins: Mutex::default(),
    });
    let m = mock.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(session(m.clone(), tcp, 0));
        }
    });

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sigload"))
            .args(["--url", &format!("ws://127.0.0.1:{port}/ws"), "--json"])
            .args([
                "--rooms",
                "2",
                "--clients",
                "4",
                "--duration",
                "1.5",
                "--warmup",
                "0.2",
            ])
            .args([
                "--rate",
                "100",
                "--inflight",
                "10000",
                "--offer-fanout",
                "0.5",
            ])
            .args(["--drain-timeout", "10"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.abort();
    assert!(out.status.success(), "sigload failed: {:?}", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(r["sessions"]["joined"], 8, "{r:#}");
    // Only `login` notices teach membership here: each session learns the
    // ones that joined after it (the data-only `joined` lists nobody).
    let links = r["sessions"]["membership_links"].as_u64().unwrap();
    let learned = r["sessions"]["membership_links_learned"].as_u64().unwrap();
    assert_eq!(links, 24, "{r:#}");
    assert!(learned >= 12 && learned <= links, "{r:#}");

    let t = &r["load"]["tally"];
    let dropped = mock.dropped.load(SeqCst);
    let duplicated = mock.duplicated.load(SeqCst);
    assert!(
        dropped > 0 && duplicated > 0,
        "the mock should have dropped and duplicated some"
    );
    assert_eq!(t["lost"].as_u64().unwrap(), dropped, "{r:#}");
    assert_eq!(t["duplicated"].as_u64().unwrap(), duplicated, "{r:#}");
    assert_eq!(t["reordered"], 0, "{r:#}");
    assert_eq!(t["phantom"], 0, "{r:#}");
    assert_eq!(
        t["expected"].as_u64().unwrap(),
        mock.deliveries.load(SeqCst),
        "every delivery the tool asked for reached the server: {r:#}"
    );
    assert_eq!(
        r["load"]["drained"], false,
        "lost messages never drain: {r:#}"
    );
}

/// Two listeners sharing one room table, like two hosts of a cluster: with
/// `--url` given twice, client i of every room must log in on listener
/// i mod 2, and deliveries between them are counted as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_clients_over_several_urls_round_robin() {
    let mock = Arc::new(Mock {
        state: Mutex::default(),
        deliveries: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        drop_every: u64::MAX,
        dup_every: u64::MAX,
        logins: Mutex::default(),
    });
    let mut urls = Vec::new();
    let mut servers = Vec::new();
    for index in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        urls.push(format!("ws://127.0.0.1:{port}/ws"));
        let m = mock.clone();
        servers.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(session(m.clone(), tcp, index));
            }
        }));
    }

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sigload"))
            .args(["--url", &urls[0], "--url", &urls[1], "--json"])
            .args(["--rooms", "3", "--clients", "3"])
            .args(["--duration", "1", "--warmup", "0.2", "--rate", "20"])
            .args(["--drain-timeout", "10"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    for s in servers {
        s.abort();
    }
    assert!(out.status.success(), "sigload failed: {:?}", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sessions"]["joined"], 9, "{r:#}");

    let mut logins = mock.logins.lock().unwrap().clone();
    logins.sort();
    let want: Vec<(String, usize)> = {
        let mut w: Vec<_> = (0..3)
            .flat_map(|room| (0..3).map(move |slot| (format!("sl-r{room}-c{slot}"), slot % 2)))
            .collect();
        w.sort();
        w
    };
    assert_eq!(logins, want, "client i of each room on listener i mod 2");

    let t = &r["load"]["tally"];
    assert!(t["expected"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(t["lost"], 0, "{r:#}");
    assert_eq!(t["duplicated"], 0, "{r:#}");
    assert_eq!(r["load"]["drained"], true, "{r:#}");
}
