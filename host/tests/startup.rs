//! Operator errors are one clear line and a non-zero exit, not a panic.

mod common;

/// Runs the host to its exit: every port but the HTTPS one picked by the
/// OS, a fresh policy cache, none of the caller's `WEBRTC_CHAT_*` settings.
fn run_host(args: &[&str]) -> (bool, String) {
    let cache = tempfile::tempdir().unwrap();
    let out = common::host_command()
        .args(["--turn-port", "0", "--turn-tls-port", "0"])
        .args(["--metrics-addr", "127.0.0.1:0", "--cache-dir"])
        // A subdirectory: the cache's key is kept beside it.
        .arg(cache.path().join("cache"))
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
fn help_lists_every_flag_of_the_readme_with_its_env_fallback() {
    let out = common::host_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // The stable interface (never renamed).
    for flag in [
        "--https-port",
        "--plugins-dir",
        "--room-max",
        "--ssl-dir",
        "--turn-port",
        "--turn-secret",
        "--turn-allow-loopback",
        "--rate-limit",
        "--max-conns-per-ip",
        "--allowed-origins",
        "--metrics-addr",
    ] {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} missing from --help"
        );
    }
    // Every row of README's configuration table: `| `--flag` | `WEBRTC_CHAT_X` | ...`.
    let readme = std::fs::read_to_string(common::workspace_root().join("README.md")).unwrap();
    let rows: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let flag = cells.next()?.strip_prefix("`--")?.strip_suffix('`')?;
            let env = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((flag, env))
        })
        .collect();
    assert!(rows.len() >= 30, "README's table: {rows:?}");
    // --help's sections: an option's header line, then its indented text.
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        if line.trim_start().starts_with('-') && indent < 10 {
            let header = line.trim().to_string();
            sections.push((header, String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    for (flag, env) in rows {
        let long = format!("--{flag}");
        let Some((_, text)) = sections
            .iter()
            .find(|(h, _)| h.split([' ', ',']).any(|w| w == long))
        else {
            panic!("{long} (README) missing from --help");
        };
        assert!(
            // `NAME=` with its value shown, `NAME]` when hidden (the secret).
            text.contains(&format!("[env: {env}=")) || text.contains(&format!("[env: {env}]")),
            "{env} (README) is not {long}'s env fallback in --help: {text}"
        );
    }
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
    let turns = host.turn_tls_addr().port();
    assert_eq!(common::server_cert(host.port).await, first);
    assert_eq!(common::server_cert(turns).await, first);
    let mut a = host.client().await;
    a.login("call", "a").await;

    let second = write_cert(&ssl, "second.example");
    host.wait_log("certificate reloaded", std::time::Duration::from_secs(15));
    assert_eq!(common::server_cert(host.port).await, second);
    // TURN over TLS serves the renewed certificate too.
    assert_eq!(common::server_cert(turns).await, second);
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

#[tokio::test]
async fn environment_wins_over_the_file_and_flags_over_the_environment() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "room-max = 1\n").unwrap();
    let config = file.path().to_str().unwrap();
    // The file says 1, the environment 2: two fit.
    let host = common::Host::start_with_env(
        tempfile::tempdir().unwrap(),
        &[],
        &[
            ("WEBRTC_CHAT_CONFIG", config),
            ("WEBRTC_CHAT_ROOM_MAX", "2"),
        ],
    );
    let (mut a, mut b, mut c) = (
        host.client().await,
        host.client().await,
        host.client().await,
    );
    a.login("r", "a").await;
    b.login("r", "b").await;
    c.send(serde_json::json!({"type":"login","data":{"roomrequest":"r","username":"c"}}))
        .await;
    common::assert_error(&c.recv().await, "full");

    // The flag says 1, the environment 2: one fits.
    let host = common::Host::start_with_env(
        tempfile::tempdir().unwrap(),
        &["--room-max", "1"],
        &[
            ("WEBRTC_CHAT_CONFIG", config),
            ("WEBRTC_CHAT_ROOM_MAX", "2"),
        ],
    );
    let (mut a, mut b) = (host.client().await, host.client().await);
    a.login("r", "a").await;
    b.send(serde_json::json!({"type":"login","data":{"roomrequest":"r","username":"b"}}))
        .await;
    common::assert_error(&b.recv().await, "full");
}

#[tokio::test]
async fn a_broken_plugin_already_in_place_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(
        dir.path().join("plugins/20-broken.wasm"),
        b"\0asm not really",
    )
    .unwrap();
    let host = common::Host::start_in(dir, &[]);
    let startup = host.startup.join("\n");
    assert!(startup.contains("20-broken.wasm not loaded"), "{startup}");
    assert!(startup.contains("policy chain: default"), "{startup}");
    // Serving, with the default behaviour.
    let mut a = host.client().await;
    a.login("r", "a").await;
    a.send(serde_json::json!({"type":"randomCheck","data":"9e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b"}))
        .await;
    assert_eq!(a.recv().await["data"]["result"], "ok");
}

/// A precompiled component is native code: one that was tampered with,
/// is not the host user's, is writable by others or is a symlink is
/// refused with one log line, and the policy is compiled afresh.
#[test]
fn a_tampered_or_foreign_cache_file_is_refused_and_compiled_afresh() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let run = || -> Vec<String> {
        let mut host = common::Host::start(&["--cache-dir", cache_arg]);
        assert!(host.terminate(std::time::Duration::from_secs(10)).is_some());
        host.startup
            .iter()
            .filter(|l| l.contains("policy cache: refusing"))
            .cloned()
            .collect()
    };
    let cached = || -> std::path::PathBuf {
        let files: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    };
    assert!(run().is_empty());
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache directory is the host user's alone");
    assert!(run().is_empty(), "an intact file is used");

    // One byte of the compiled code changed.
    let file = cached();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let refused = run();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("tampered"), "{refused:?}");
    assert!(run().is_empty(), "compiled afresh and cached again");

    // Writable by others.
    let file = cached();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = run();
    assert!(
        refused.len() == 1 && refused[0].contains("writable"),
        "{refused:?}"
    );

    // A symlink in its place.
    let file = cached();
    let elsewhere = base.path().join("elsewhere.cwasm");
    std::fs::rename(&file, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    let refused = run();
    assert!(
        refused.len() == 1 && refused[0].contains("symlink"),
        "{refused:?}"
    );

    // Another user's file (checked when the tests run as root, who can
    // give a file away).
    let file = cached();
    let given = std::process::Command::new("chown")
        .args(["65534", file.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    if given {
        let refused = run();
        assert!(
            refused.len() == 1 && refused[0].contains("owned by uid 65534"),
            "{refused:?}"
        );
    }
}

#[test]
fn the_precompiled_policy_cache_is_reused_on_restart() {
    use std::os::unix::fs::MetadataExt;
    let base = tempfile::tempdir().unwrap();
    // A subdirectory: the cache's key is kept beside it.
    let cache = base.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let cached = || -> Vec<(std::ffi::OsString, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().ino())
            })
            .collect();
        v.sort();
        v
    };
    let mut host = common::Host::start(&["--cache-dir", cache_arg]);
    assert!(host.terminate(std::time::Duration::from_secs(10)).is_some());
    let first = cached();
    assert_eq!(first.len(), 1, "the default policy is cached: {first:?}");
    // A restart loads that file: compiling again would write a new one.
    let mut host = common::Host::start(&["--cache-dir", cache_arg]);
    assert!(host.terminate(std::time::Duration::from_secs(10)).is_some());
    assert_eq!(cached(), first, "the cached component was replaced");
}
