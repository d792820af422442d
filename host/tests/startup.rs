//! Operator errors are one clear line and a non-zero exit, not a panic.

mod common;

/// Runs the host to its exit: every port but the HTTPS one picked by the
/// OS, a fresh policy cache, none of the caller's `WEBRTC_CHAT_*` settings.
fn run_host(args: &[&str]) -> (bool, String) {
    let cache = tempfile::tempdir().unwrap();
    let out = common::host_command()
        .args(["--turn-port", "0", "--turn-tls-port", "0"])
        .args(["--metrics-addr", "127.0.0.1:0", "--cache-dir"])
        .arg(cache.path())
        .args(args)
        .output()
        .expect("run host");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr)
}

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let ssl = dir.path().join("ssl");
    let (ok, stderr) = run_host(&[
        "--bind",
        "127.0.0.1",
        "--https-port",
        &port,
        "--ssl-dir",
        ssl.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("port {port} is in use")),
        "{stderr}"
    );
    assert!(stderr.contains("--https-port"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn broken_certificate_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert1.pem"), "garbage").unwrap();
    std::fs::write(dir.path().join("privkey1.pem"), "garbage").unwrap();
    let (ok, stderr) = run_host(&[
        "--bind",
        "127.0.0.1",
        "--https-port",
        "0",
        "--ssl-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{stderr}"
    );
}

#[test]
fn help_lists_the_stable_flags_with_env_fallbacks() {
    let out = common::host_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--https-port", "--plugins-dir", "--room-max", "--ssl-dir"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("WEBRTC_CHAT_HTTPS_PORT"), "{help}");
}

#[tokio::test]
async fn serves_the_web_app_and_well_known() {
    let dir = tempfile::tempdir().unwrap();
    let wk = dir.path().join("wk");
    std::fs::create_dir_all(wk.join("acme-challenge")).unwrap();
    std::fs::write(wk.join("acme-challenge/token"), "proof").unwrap();
    let host = common::Host::start_in(dir, &["--well-known-dir", wk.to_str().unwrap()]);

    let (status, head, body) = common::https_get(host.port, "/").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<div id=\"app\""));
    let (status, _, body) = common::https_get(host.port, "/?room=abc").await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());

    let (status, head, body) = common::https_get(host.port, "/manifest.json").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("application/json") || head.contains("manifest+json"),
        "{head}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(manifest["icons"].as_array().is_some_and(|i| !i.is_empty()));

    let (status, _, body) = common::https_get(host.port, "/.well-known/acme-challenge/token").await;
    assert_eq!((status, body.as_slice()), (200, &b"proof"[..]));
    let (status, _, _) = common::https_get(host.port, "/.well-known/../../etc/passwd").await;
    assert_ne!(status, 200);
    let (status, _, body) = common::https_get(host.port, "/healthz").await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

fn write_cert(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let cert = rcgen::generate_simple_self_signed(vec![name.into(), "localhost".into()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    // Like certbot: write, then rename into place.
    for (file, body) in [
        ("cert1.pem", cert.cert.pem()),
        ("privkey1.pem", cert.signing_key.serialize_pem()),
    ] {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    cert.cert.der().to_vec()
}

#[tokio::test]
async fn renewed_certificates_are_served_without_a_restart_or_a_dropped_call() {
    let dir = tempfile::tempdir().unwrap();
    let ssl = dir.path().join("ssl");
    let first = write_cert(&ssl, "first.example");
    let host = common::Host::start_in(dir, &[]);
    assert_eq!(common::server_cert(host.port).await, first);
    let mut a = host.client().await;
    a.login("call", "a").await;

    let second = write_cert(&ssl, "second.example");
    host.wait_log("certificate reloaded", std::time::Duration::from_secs(15));
    assert_eq!(common::server_cert(host.port).await, second);
    // The established socket carries on.
    a.send(serde_json::json!({"type":"randomCheck","data":"9e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b"}))
        .await;
    assert_eq!(a.recv().await["type"], "randomCheckResult");

    // A broken renewal keeps the running certificate.
    std::fs::write(host.dir.path().join("ssl/privkey1.pem"), "broken").unwrap();
    host.wait_log(
        "keeping the current certificate",
        std::time::Duration::from_secs(15),
    );
    assert_eq!(common::server_cert(host.port).await, second);
}

#[tokio::test]
async fn plain_http_redirects_and_serves_acme_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let wk = dir.path().join("wk");
    std::fs::create_dir_all(wk.join("acme-challenge")).unwrap();
    std::fs::write(wk.join("acme-challenge/t0k3n"), "challenge").unwrap();
    let host = common::Host::start_in(
        dir,
        &["--http-port", "0", "--well-known-dir", wk.to_str().unwrap()],
    );
    // The port the OS picked, from the start-up log.
    let line = host
        .startup
        .iter()
        .find(|l| l.contains("plain HTTP on http://"))
        .expect("the plain-HTTP address is logged at start");
    let addr = line.split("http://").nth(1).unwrap();
    let addr = addr.split('/').next().unwrap().to_string();
    let redirect = common::http_get(&addr, "/?room=abc").await;
    assert!(
        redirect.starts_with("HTTP/1.1 308") || redirect.starts_with("HTTP/1.1 301"),
        "{redirect}"
    );
    assert!(
        redirect.to_lowercase().contains(&format!(
            "location: https://127.0.0.1:{}/?room=abc",
            host.port
        )),
        "{redirect}"
    );
    let challenge = common::http_get(&addr, "/.well-known/acme-challenge/t0k3n").await;
    assert!(
        challenge.starts_with("HTTP/1.1 200") && challenge.ends_with("challenge"),
        "{challenge}"
    );
}

#[test]
fn a_config_file_is_read_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "room-max = 3\nhttps-prot = 443\n").unwrap();
    let (ok, stderr) = run_host(&["--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unknown option \"https-prot\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let wrong_type = dir.path().join("wrong.toml");
    std::fs::write(&wrong_type, "room-max = \"many\"\n").unwrap();
    let (ok, stderr) = run_host(&["--config", wrong_type.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("wrong.toml") && stderr.contains("many"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_file_values_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    std::fs::write(&file, "room-max = 1\nrate-limit = 0\n").unwrap();
    let host = common::Host::start(&["--config", file.to_str().unwrap()]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    a.login("r", "a").await;
    b.send(serde_json::json!({"type":"login","data":{"roomrequest":"r","username":"b"}}))
        .await;
    common::assert_error(&b.recv().await, "full");

    let host = common::Host::start(&["--config", file.to_str().unwrap(), "--room-max", "2"]);
    let mut a = host.client().await;
    let mut b = host.client().await;
    a.login("r", "a").await;
    b.login("r", "b").await;
}
