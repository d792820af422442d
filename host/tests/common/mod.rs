//! Test support: start the real host binary on an ephemeral port and talk
//! to it with real WebSocket clients over TLS.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// A running host process, killed on drop.
pub struct Host {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Lines the host logged up to its start line.
    pub startup: Vec<String>,
    /// Lines the host logged after its start line.
    pub log: std_mpsc::Receiver<String>,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn host_bin() -> &'static str {
    env!("CARGO_BIN_EXE_host")
}

/// The host binary with none of the caller's `WEBRTC_CHAT_*` settings (a
/// developer's `WEBRTC_CHAT_CONFIG` must not change what a test sees) and
/// plain log lines.
pub fn host_command() -> Command {
    let mut cmd = Command::new(host_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEBRTC_CHAT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

impl Host {
    pub fn start(extra: &[&str]) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    /// Starts the host with its ssl, plugins and policy cache directories
    /// inside `dir`, every port picked by the OS.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Host {
        Self::start_with_env(dir, extra, &[])
    }

    /// As [`start_in`](Self::start_in), with these environment variables
    /// (the only `WEBRTC_CHAT_*` ones the host sees).
    pub fn start_with_env(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Host {
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let mut cmd = host_command();
        cmd.args(["--bind", "127.0.0.1", "--https-port", "0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--turn-port", "0", "--turn-tls-port", "0"])
            .arg("--ssl-dir")
            .arg(dir.path().join("ssl"))
            .arg("--plugins-dir")
            .arg(&plugins)
            .args(["--log", "info,host=debug"])
            .args(extra);
        if !extra.contains(&"--cache-dir") {
            cmd.arg("--cache-dir").arg(dir.path().join("cache"));
        }
        cmd.envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start host");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let mut startup = Vec::new();
        let port = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                break None;
            };
            let port = line
                .split("https://localhost:")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches('/').parse::<u16>().ok());
            startup.push(line);
            if port.is_some() {
                break port;
            }
        };
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "host did not print its serving line (it exited, or 90 s passed):\n{}",
                startup.join("\n")
            );
        };
        Host {
            child,
            port,
            dir,
            startup,
            log: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the host has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name: state is the 3rd, utime the 14th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_sec: u64 = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100);
        Duration::from_millis(ticks * 1000 / per_sec)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.send_sigterm();
        self.wait_exit(within)
    }

    /// Sends SIGTERM (the host starts draining) without waiting.
    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (bounded) for the host to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The STUN/TURN UDP address from the start-up log.
    pub fn turn_addr(&self) -> std::net::SocketAddr {
        let line = self
            .startup
            .iter()
            .find(|l| l.contains("STUN/TURN on"))
            .expect("TURN address logged at start");
        let rest = line.split("Udp ").nth(1).expect("a UDP listener");
        rest.split([',', ' ']).next().unwrap().parse().unwrap()
    }

    /// The plain-HTTP metrics listener's address from the start-up log.
    pub fn metrics_addr(&self) -> String {
        let line = self
            .startup
            .iter()
            .find(|l| l.contains("metrics on http://"))
            .expect("metrics address logged at start");
        let rest = line.split("http://").nth(1).unwrap();
        rest.trim_end_matches("/metrics").to_string()
    }

    /// The value of one line of `/metrics` (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let body = http_get(&self.metrics_addr(), "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().expect("a counter"))
    }

    /// The TURN-over-TLS address from the start-up log (a real certificate only).
    pub fn turn_tls_addr(&self) -> std::net::SocketAddr {
        let line = self
            .startup
            .iter()
            .find(|l| l.contains("STUN/TURN on"))
            .expect("TURN address logged at start");
        let rest = line.split("Tls ").nth(1).expect("a TURN-over-TLS listener");
        rest.split([',', ' ']).next().unwrap().parse().unwrap()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn url(&self, path: &str) -> String {
        format!("wss://localhost:{}{path}", self.port)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url("/ws")).await
    }

    /// Two clients, "a" and "b", logged into `room` (a first), with a's
    /// notice of b's login read: ready to exchange frames.
    pub async fn pair(&self, room: &str) -> (Client, Client) {
        let (mut a, mut b) = (self.client().await, self.client().await);
        a.login(room, "a").await;
        b.login(room, "b").await;
        a.recv().await;
        (a, b)
    }

    /// How many log lines contain `needle`, reading until none comes for
    /// `quiet`.
    pub fn count_log(&self, needle: &str, quiet: Duration) -> usize {
        let mut n = 0;
        while let Ok(line) = self.log.recv_timeout(quiet) {
            if line.contains(needle) {
                n += 1;
            }
        }
        n
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        self.wait_log_any(&[needle], within)
    }

    /// The first log line containing any of `needles`.
    pub fn wait_log_any(&self, needles: &[&str], within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if needles.iter().any(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing any of {needles:?} within {within:?}"),
            }
        }
    }
}

#[derive(Debug)]
struct AcceptAnyCert;

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client that accepts the host's self-signed certificate.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert))
        .with_no_client_auth();
    Arc::new(config)
}

pub fn tls_connector() -> Connector {
    Connector::Rustls(client_config())
}

/// A TLS connection to the host on loopback.
async fn tls_connect(port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_alpn(port, &[]).await
}

/// A TLS connection offering these ALPN protocols (e.g. `h2`).
pub async fn tls_connect_alpn(
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = (*client_config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Own session id, once joined.
    pub id: String,
}

impl Client {
    /// Connects with extra request headers (e.g. Origin); the error on refusal.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_tls_with_config(
                req,
                None,
                true,
                Some(tls_connector()),
            ),
        )
        .await
        .expect("connect timed out")?;
        Ok(Client {
            ws,
            id: String::new(),
        })
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_tls_with_config(
                url,
                None,
                true,
                Some(tls_connector()),
            ),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        Client {
            ws,
            id: String::new(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).await.expect("send");
    }

    /// The next message of any kind.
    pub async fn next_message(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(_) => None,
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next JSON frame; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Message::Text(t)) => return serde_json::from_str(&t).expect("JSON frame"),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, waiting as long as the caller's timeout allows.
    pub async fn ws_next_text(&mut self) -> Value {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }

    pub async fn login(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"type":"login","data":{"roomrequest":room,"username":name}}))
            .await;
        let joined = self.recv().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        self.id = joined["data"].as_str().unwrap().to_string();
        joined
    }

    /// The close code the server ends with.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_message().await {
                Some(Message::Close(Some(f))) => return Some(f.code.into()),
                Some(Message::Close(None)) | None => return None,
                Some(_) => continue,
            }
        }
    }
}

pub fn assert_error(v: &Value, error_type: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["message"]["errorType"], error_type, "{v}");
    assert!(
        v["message"]["errorText"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
}

/// Where a built policy .wasm lands: `target/policy-build` holds the nested builds.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A plain HTTP/1.1 GET over TLS: (status, lower-cased head, body).
pub async fn https_get(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(port).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

/// A plain-HTTP GET of the metrics listener's `path`.
pub async fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// A plain-HTTP GET, or the error when the listener is gone.
pub async fn try_http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await?;
    Ok(raw)
}

/// The certificate the server presents in a fresh handshake (DER).
pub async fn server_cert(port: u16) -> Vec<u8> {
    let tls = tls_connect(port).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
