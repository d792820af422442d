//! Runs sigload for ~2 s against a real host binary: `HOST_BIN`, or the
//! workspace's target/debug/host. Without one the test fails and says how
//! to build it (`cargo test --workspace` builds it first).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Host {
    child: Child,
    dir: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOST_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/host");
    p.is_file().then_some(p)
}

fn start_host(bin: &PathBuf) -> (Host, u16) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("sigload-smoke-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(dir.join("ssl")).unwrap();
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    // Turn off what the host may have of limits and extra listeners (fixed
    // ports that another host on this machine may hold), by what --help lists.
    let help = Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let help = String::from_utf8_lossy(&help);
    let mut extra: Vec<&str> = Vec::new();
    for (flag, args) in [
        ("--rate-limit ", &["--rate-limit", "0"][..]),
        ("--max-conns-per-ip", &["--max-conns-per-ip", "0"]),
        ("--metrics-addr", &["--metrics-addr", "off"]),
        ("--no-turn", &["--no-turn"]),
    ] {
        if help.contains(flag) {
            extra.extend(args);
        }
    }
    let mut cmd = Command::new(bin);
    if help.contains("--cache-dir") {
        // Not the user's ~/.cache.
        cmd.arg("--cache-dir").arg(dir.join("cache"));
    }
    // None of the caller's WEBRTC_CHAT_* settings (a config file, say).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEBRTC_CHAT_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["--bind", "127.0.0.1", "--https-port", "0", "--log", "info"])
        .args(&extra)
        .arg("--ssl-dir")
        .arg(dir.join("ssl"))
        .arg("--plugins-dir")
        .arg(dir.join("plugins"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the host");
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = line.find("https://localhost:") {
                    let port: String = line[i + 18..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    let _ = tx.send(port.parse::<u16>().ok());
                }
            }
        });
    }
    let host = Host { child, dir };
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("the host logs https://localhost:<port>/ within 60 s");
    (host, port)
}

fn sigload(args: &[String]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigload"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sigload");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sigload did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sigload failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout).expect("sigload --json prints JSON")
}

#[test]
fn two_seconds_against_the_real_host() {
    let Some(bin) = host_binary() else {
        panic!(
            "no host binary: build it with `cargo build -p host` (or run `cargo test --workspace`), \
             or point HOST_BIN at one"
        );
    };
    let (host, port) = start_host(&bin);
    let pid = host.child.id().to_string();
    let url = format!("wss://127.0.0.1:{port}/ws");
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--url", &url, "--insecure", "--json", "--server-pid", &pid]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let r = sigload(&common(&[
        "--rooms",
        "2",
        "--clients",
        "3",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--rate",
        "40",
        "--offer-fanout",
        "0.5",
    ]));
    assert_eq!(r["sessions"]["joined"], 6, "{r:#}");
    assert_eq!(r["sessions"]["connect_failures"], 0, "{r:#}");
    // Every client learns its room-mates from the protocol (login notices).
    assert_eq!(r["sessions"]["membership_links"], 12, "{r:#}");
    let load = &r["load"];
    let t = &load["tally"];
    assert!(t["delivered"].as_u64().unwrap() > 100, "{r:#}");
    assert_eq!(t["duplicated"], 0, "{r:#}");
    assert_eq!(t["reordered"], 0, "{r:#}");
    assert_eq!(t["phantom"], 0, "{r:#}");
    assert_eq!(load["misattributed"], 0, "{r:#}");
    // Anything lost must be explained by an error frame the server sent.
    let errors: u64 = load["error_frames"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(t["lost"].as_u64().unwrap() <= errors, "{r:#}");
    assert!(load["latency"]["count"].as_u64().unwrap() > 0, "{r:#}");
    assert!(load["latency"]["p50_us"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["server"]["rss_peak_kb"].as_u64().unwrap() > 0, "{r:#}");
    assert!(
        r["server"]["cpu_us_per_delivered"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );

    let r = sigload(&common(&[
        "--idle",
        "--rooms",
        "3",
        "--clients",
        "4",
        "--duration",
        "1",
        "--settle",
        "0.5",
    ]));
    assert_eq!(r["mode"], "idle", "{r:#}");
    assert_eq!(r["sessions"]["joined"], 12, "{r:#}");
    assert_eq!(r["sessions"]["closed_early"], 0, "{r:#}");
    assert!(r["idle"]["server_rss_per_session_kb"].is_number(), "{r:#}");
}
