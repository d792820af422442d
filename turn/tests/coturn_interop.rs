//! Interop: coturn's `turnutils_uclient` relays through our server with
//! TURN REST credentials, over UDP (`-W secret`, coturn computes the
//! credential) and over TCP (`-u/-w` with a credential we compute). Only
//! 127.0.0.1 is used: the server, the client and the relayed peers (`-y`:
//! the client talks to itself through two allocations).
//!
//! Needs `turnutils_uclient` (Debian package `coturn`); without it this
//! test FAILS on purpose.

mod common;

use std::time::Duration;

use chat_turn::{Transport, credentials};
use common::*;

fn uclient_path() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("turnutils_uclient"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "turnutils_uclient not found on PATH: install coturn \
             (apt-get update && apt-get install -y coturn) to run the TURN interop test"
        ),
    }
}

struct Run {
    sent: u64,
    received: u64,
    lost_line: String,
}

/// uclient's arguments for one client talking to itself (`-y`) through
/// our server on 127.0.0.1:`port`: `mode` flags first (`-t` TCP, `-s` Send
/// indications only), `msgs` 100-byte messages 5 ms apart, then `auth`
/// (`-W secret -u name`: coturn computes the REST credential; or
/// `-u user -w password`).
fn uclient_args<'a>(
    mode: &[&'a str],
    msgs: &'a str,
    port: &'a str,
    auth: &[&'a str],
) -> Vec<&'a str> {
    let mut a = mode.to_vec();
    a.extend([
        "-y",
        "-n",
        msgs,
        "-m",
        "1",
        "-l",
        "100",
        "-z",
        "5",
        "-e",
        "127.0.0.1",
        "-L",
        "127.0.0.1",
        "-p",
        port,
    ]);
    a.extend_from_slice(auth);
    a.push("127.0.0.1");
    a
}

/// One uclient run: its counts, or why it is no interop success.
async fn attempt(args: &[&str]) -> Result<Run, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new(uclient_path())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("turnutils_uclient {args:?} did not finish within 40 s"))?
    .expect("turnutils_uclient runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .rev()
            .find_map(|l| l.split(name).nth(1))
            .and_then(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .ok()
            })
    };
    let lost_line = text
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_default()
        .to_owned();
    let run = Run {
        sent: field("tot_send_msgs=").unwrap_or(0),
        received: field("tot_recv_msgs=").unwrap_or(0),
        lost_line,
    };
    // Loopback does not lose 40 gently paced datagrams; a loaded CI machine
    // might drop one or two, which is no interop failure.
    if run.sent == 0 || run.received * 100 < run.sent * 95 {
        return Err(format!(
            "uclient {args:?}: sent {} received {} ({})\n{text}",
            run.sent, run.received, run.lost_line
        ));
    }
    Ok(run)
}

/// uclient against our server, once more if the first run fails (uclient
/// gives up on a lost Allocate answer, which a loaded machine can cause):
/// two failures in a row fail the test, with both outputs.
async fn run_uclient(args: &[&str]) -> Run {
    match attempt(args).await {
        Ok(run) => run,
        Err(first) => {
            eprintln!("uclient failed once, running it again:\n{first}");
            attempt(args)
                .await
                .unwrap_or_else(|second| panic!("twice:\n{first}\n---\n{second}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_relays_through_our_server() {
    let path = uclient_path(); // fail first, clearly, when coturn is missing
    assert!(path.is_file());
    let mut cfg = loopback_config();
    cfg.secret = b"interop-secret".to_vec();
    let (server, dir) = start(cfg).await;
    let port = server.addr(Transport::Udp).expect("udp").port().to_string();
    dir.session_started("uclient");

    // UDP, coturn computes "<expiry>:uclient" and its HMAC from -W.
    let udp = uclient_args(&[], "10", &port, &["-W", "interop-secret", "-u", "uclient"]);
    // TCP, with a credential from our credentials().
    let (user, pass) = credentials(b"interop-secret", "uclient", Duration::from_secs(600));
    let tcp = uclient_args(&["-t"], "10", &port, &["-u", &user, "-w", &pass]);
    let (u, t) = tokio::join!(run_uclient(&udp), run_uclient(&tcp));
    eprintln!(
        "uclient UDP: {}/{} ({}); TCP: {}/{} ({})",
        u.received, u.sent, u.lost_line, t.received, t.sent, t.lost_line
    );

    // A wrong secret is refused: nothing gets relayed.
    let bad = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new(&path)
            .args(uclient_args(
                &[],
                "2",
                &port,
                &["-W", "wrong-secret", "-u", "uclient"],
            ))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("finished")
    .expect("runs");
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    // turn 0.17 answers 400 (not 401) to a bad credential; uclient gives up.
    assert!(
        !bad.status.success() && text.contains("error 400") && !text.contains("tot_recv_msgs=2"),
        "a wrong secret must not relay:\n{text}"
    );
    server.close().await;
}

/// coturn's client with Send indications only (`-s`, no channels), client
/// to client: our fast path relays its Send indications and hands them to
/// the other client as Data indications that uclient understands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_send_and_data_indications_on_the_fast_path() {
    let mut cfg = loopback_config();
    cfg.secret = b"interop-secret".to_vec();
    let (server, dir) = start(cfg).await;
    let port = server.addr(Transport::Udp).expect("udp").port().to_string();
    dir.session_started("uclient");
    let run = run_uclient(&uclient_args(
        &["-s"],
        "20",
        &port,
        &["-W", "interop-secret", "-u", "uclient"],
    ))
    .await;
    let s = server.stats();
    eprintln!("uclient -s: {}/{}; {s:?}", run.received, run.sent);
    assert!(
        s.fast_packets_to_peers >= run.received && s.fast_packets_from_peers >= run.received,
        "Send/Data indications on the fast path: {s:?}"
    );
    server.close().await;
}
