//! Policies in JavaScript and Python, built by `scripts/install-policy.sh`
//! (its pinned toolchains are installed on first use) and run through the
//! same harness as the Rust examples, then dropped into a running host.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{Client, Host, assert_error, workspace_root};
use futures_util::StreamExt;
use host::harness::{PolicyHarness, install_policy};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const RELOAD: Duration = Duration::from_secs(60);

/// Built once per test binary: the install script is the slow part.
fn built(source: &str, order: u32) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    install_policy(&workspace_root().join(source), dir.path(), order).unwrap()
}

fn unique_names() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| built("plugins/unique-names/unique-names.js", 20))
        .clone()
}

fn room_sizes() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| built("plugins/room-sizes/room_sizes.py", 30))
        .clone()
}

#[test]
fn js_unique_names_refuses_a_second_ana_in_the_same_room() {
    let h = PolicyHarness::new(&[unique_names()]).unwrap();
    let mut ana = h.connect();
    assert_eq!(ana.login("r", "Ana")["type"], "joined");
    let mut other = h.connect();
    let refused = other.login("r", "  ana ");
    assert_error(&refused, "nameTaken");
    // Nor in the same room written with spaces around it.
    let mut spaced = h.connect();
    assert_error(&spaced.login(" r ", "ana"), "nameTaken");
    // Another room, or another name, is fine.
    assert_eq!(other.login("elsewhere", "ana")["type"], "joined");
    let mut bob = h.connect();
    assert_eq!(bob.login("r", "bob")["type"], "joined");
    // Once Ana has gone, her name is free again.
    ana.disconnect();
    let mut again = h.connect();
    assert_eq!(again.login("r", "ANA")["type"], "joined");
    // Anything else goes on to the default.
    again.send(json!({"type":"no-such-type"}));
    assert_error(&again.recv(), "badRequest");
}

#[test]
fn python_room_sizes_holds_rooms_to_their_number() {
    let h = PolicyHarness::with_room_max(&[room_sizes()], 5).unwrap();
    let mut a = h.connect();
    let mut b = h.connect();
    let mut c = h.connect();
    assert_eq!(a.login("pair#2", "a")["type"], "joined");
    assert_eq!(b.login("pair#2", "b")["type"], "joined");
    assert_error(&c.login("pair#2", "c"), "full");
    // Capped at the server's room-max (5 here): #50 holds five.
    let mut many: Vec<_> = (0..5).map(|_| h.connect()).collect();
    for (i, s) in many.iter_mut().enumerate() {
        assert_eq!(s.login("big#50", &format!("p{i}"))["type"], "joined");
    }
    assert_error(&c.login("big#50", "c"), "full");
    // Other rooms are the default's: room-max.
    assert_eq!(c.login("plain", "c")["type"], "joined");
    // The room the host joins is the one the policy judged: spaces around
    // a name do not make "pair#2" another room for the policy.
    let mut d = h.connect();
    assert_error(&d.login("pair#2 ", "d"), "full");
    assert_error(&d.login(" pair#2", "d"), "full");
}

#[test]
fn js_and_python_policies_chain_with_the_rust_default() {
    let h = PolicyHarness::new(&[unique_names(), room_sizes()]).unwrap();
    let mut a = h.connect();
    let mut b = h.connect();
    assert_eq!(a.login("duo#2", "same")["type"], "joined");
    // JavaScript decides first…
    assert_error(&b.login("duo#2", "Same"), "nameTaken");
    // …then Python, then the default relays.
    assert_eq!(b.login("duo#2", "other")["type"], "joined");
    a.recv(); // b's login notice
    a.send(json!({"type":"offer","data":{"sdp":"x"}}));
    assert_eq!(b.recv()["type"], "offer");
}

/// A running host with a live call; a JavaScript then a Python policy
/// dropped in with the install script: both join the chain, new sessions
/// obey them, the call in progress goes on untouched.
// Multi-threaded: the call's clients keep answering the host's pings on a
// worker while this thread blocks on builds and the host's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_host_takes_a_js_then_a_python_policy() {
    let host = Host::start(&[]);
    let (a, b) = host.pair("call").await;
    let call = keep_answering_pings(a, b);

    let dir = host.plugins_dir();
    install("plugins/unique-names/unique-names.js", &dir, 20);
    host.wait_log("policy chain: 20-unique-names → default", RELOAD);
    let mut dup = host.client().await;
    dup.send(json!({"type":"login","data":{"roomrequest":"call","username":"A"}}))
        .await;
    assert_error(&dup.recv().await, "nameTaken");

    install("plugins/room-sizes/room_sizes.py", &dir, 30);
    host.wait_log(
        "policy chain: 20-unique-names → 30-room-sizes → default",
        RELOAD,
    );
    let (mut x, mut y, mut z) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    x.login("pair#2", "x").await;
    y.login("pair#2", "y").await;
    z.send(json!({"type":"login","data":{"roomrequest":"pair#2","username":"z"}}))
        .await;
    assert_error(&z.recv().await, "full");

    // The call that was going on before either policy still flows.
    let (mut a, mut b) = call.finish().await;
    a.send(json!({"type":"candidate","to":b.id,"data":"still here"}))
        .await;
    assert_eq!(b.recv().await["data"], "still here");
    b.send(json!({"type":"answer","to":a.id,"data":{"sdp":"y"}}))
        .await;
    assert_eq!(a.recv().await["type"], "answer");
}

fn install(source: &str, dir: &Path, order: u32) {
    install_policy(&workspace_root().join(source), dir, order).unwrap();
}

/// Two clients in a quiet call that keep reading, as a browser does: the
/// host pings every 10 s and closes a socket that does not answer, and
/// building a Python policy takes longer than that. Any frame arriving
/// meanwhile fails the test.
struct QuietCall {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Client, Client)>,
}

fn keep_answering_pings(mut a: Client, mut b: Client) -> QuietCall {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return (a, b),
                m = a.ws.next() => expect_ping("first", m),
                m = b.ws.next() => expect_ping("second", m),
            }
        }
    });
    QuietCall { stop, task }
}

fn expect_ping(who: &str, m: Option<Result<Message, WsError>>) {
    assert!(
        matches!(m, Some(Ok(Message::Ping(_)))),
        "the call's {who} client got {m:?}"
    );
}

impl QuietCall {
    async fn finish(self) -> (Client, Client) {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Without Node.js/npm (for `.js`) or Python (for `.py`), the install
/// command says in one line what to install, and installs nothing.
#[test]
fn the_install_command_names_a_missing_toolchain_in_one_line() {
    let bin = tempfile::tempdir().unwrap();
    // What the script needs besides the missing toolchain.
    for tool in ["bash", "mkdir", "mktemp", "rm", "dirname", "basename"] {
        let path = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
    }
    let plugins = tempfile::tempdir().unwrap();
    for (source, needs) in [
        (
            "plugins/unique-names/unique-names.js",
            "need Node.js 20+ and npm",
        ),
        (
            "plugins/room-sizes/room_sizes.py",
            "need Python 3.10+ with venv",
        ),
    ] {
        let out = std::process::Command::new(workspace_root().join("scripts/install-policy.sh"))
            .arg(workspace_root().join(source))
            .arg(plugins.path())
            .env("PATH", bin.path())
            .env("WEBRTC_CHAT_TOOLCHAINS", plugins.path().join("toolchains"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{source}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{source}: {stderr}");
        assert!(stderr.contains(needs), "{source}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(plugins.path()).unwrap().count(), 0);
}
