//! `PolicyHarness`: runs `.wasm` policies in front of the built-in default,
//! exactly as the host does, against scripted sessions: no browser, no
//! sockets. Policy crates use it in their tests:
//!
//! ```no_run
//! use host::harness::{PolicyHarness, build_policy};
//! let wasm = build_policy("password-rooms").unwrap();
//! let h = PolicyHarness::new(&[wasm]).unwrap();
//! let mut alice = h.connect();
//! let joined = alice.login("room", "alice");
//! assert_eq!(joined["type"], "joined");
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::policy::kv::KvStore;
use crate::policy::{EngineSettings, PolicyChain, PolicyEngine, SandboxLimits};
use crate::signaling::dispatch::{self, Sender};
use crate::signaling::queue::{OutboundQueue, SendBudget};
use crate::signaling::rooms::{Outbound, RoomRegistry, SessionHandle};
use crate::signaling::{Hub, NoIceServers, SessionLimits};

pub struct PolicyHarness {
    hub: Arc<Hub>,
    runtime: Arc<tokio::runtime::Runtime>,
    _engine: PolicyEngine,
}

/// What a scripted session received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Frame(Value),
    Close(u16, String),
}

impl PolicyHarness {
    /// The given policies (in this order) in front of the default, with
    /// the default room capacity of 10.
    pub fn new(policies: &[PathBuf]) -> anyhow::Result<Self> {
        Self::with_room_max(policies, 10)
    }

    pub fn with_room_max(policies: &[PathBuf], room_max: u32) -> anyhow::Result<Self> {
        let registry = Arc::new(RoomRegistry::default());
        let kv = Arc::new(KvStore::new(crate::app::KV_CAP_BYTES));
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let engine = PolicyEngine::new(EngineSettings {
            rooms: registry.clone(),
            kv: kv.clone(),
            room_max,
            limits: SandboxLimits {
                deadline: Duration::from_millis(100),
                memory_bytes: 32 << 20,
            },
            // The host's cache (same checks, same place, same
            // WEBRTC_CHAT_CACHE_DIR): a test suite compiles each policy once.
            cache_dir: std::env::var_os("WEBRTC_CHAT_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(crate::config::default_cache_dir),
        })?;
        let default = runtime.block_on(engine.load_default())?;
        let mut drop_ins = Vec::new();
        for path in policies {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("policy");
            drop_ins.push(
                runtime
                    .block_on(engine.load(name, &bytes))
                    .with_context(|| format!("loading {}", path.display()))?,
            );
        }
        let hub = Arc::new(Hub {
            registry,
            kv,
            chain: Arc::new(ArcSwap::from_pointee(PolicyChain::new(drop_ins, default))),
            limits: SessionLimits {
                max_frame_bytes: 64 * 1024,
                send: SendBudget::new(4096, 64 << 20, 1 << 30, 0),
                rate_per_sec: 0,
                rate_burst: 1,
            },
            ice: Box::new(NoIceServers),
            metrics: Default::default(),
            draining: Default::default(),
            cluster: None,
        });
        Ok(Self {
            hub,
            runtime,
            _engine: engine,
        })
    }

    /// The hub the scripted sessions share, for the host's own tests of
    /// what sits around it (e.g. cluster proxies).
    #[doc(hidden)]
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Opens a session (the chain's `on-connect` runs). A refused
    /// connection shows as a queued `Close`.
    pub fn connect(&self) -> TestSession {
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let (handle, rx) = SessionHandle::new(&self.hub.limits.send);
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        self.hub.registry.register(id.clone(), handle.clone(), peer);
        let chain = self.hub.chain.load_full();
        if let Err(reason) = self
            .runtime
            .block_on(chain.on_connect(&id, &peer.to_string()))
        {
            handle.deliver(Outbound::Close(1008, reason.into()));
        }
        TestSession {
            hub: self.hub.clone(),
            runtime: self.runtime.clone(),
            id,
            handle,
            rx,
        }
    }
}

pub struct TestSession {
    hub: Arc<Hub>,
    runtime: Arc<tokio::runtime::Runtime>,
    id: Arc<str>,
    handle: SessionHandle,
    rx: OutboundQueue,
}

impl TestSession {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn send(&self, frame: Value) {
        self.send_text(&frame.to_string());
    }

    pub fn send_text(&self, text: &str) {
        let sender = Sender {
            id: &self.id,
            handle: &self.handle,
            host: "localhost",
        };
        self.runtime
            .block_on(dispatch::handle_text(&self.hub, &sender, text));
    }

    /// The next thing queued for this session, if any.
    pub fn next_received(&mut self) -> Option<Received> {
        match self.rx.try_recv()? {
            Outbound::Frame(t) => Some(Received::Frame(
                serde_json::from_str(&t).expect("the host sends JSON"),
            )),
            Outbound::Close(code, reason) => Some(Received::Close(code, reason.to_string())),
            // The harness has no socket to keep alive.
            Outbound::Ping => self.next_received(),
        }
    }

    /// The next queued frame; panics when there is none or a close is next.
    pub fn recv(&mut self) -> Value {
        match self.next_received() {
            Some(Received::Frame(v)) => v,
            other => panic!("expected a frame for {}, got {other:?}", self.id),
        }
    }

    /// Everything queued so far.
    pub fn drain(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.next_received()).collect()
    }

    /// Sends the original client's `login` and returns the answer
    /// (`joined` or `error`).
    pub fn login(&mut self, room: &str, username: &str) -> Value {
        self.login_with(json!({"roomrequest": room, "username": username}))
    }

    pub fn login_with(&mut self, data: Value) -> Value {
        self.send(json!({"type": "login", "data": data}));
        self.recv()
    }

    /// The socket closes: policies are told, the room gets `logout`.
    pub fn disconnect(self) {
        let sender = Sender {
            id: &self.id,
            handle: &self.handle,
            host: "localhost",
        };
        self.runtime
            .block_on(dispatch::handle_disconnect(&self.hub, &sender));
    }
}

/// Builds a workspace policy crate for wasm32-wasip2 (release) and returns
/// the path of its `.wasm`. Uses its own target dir, so it works from
/// inside `cargo test`.
pub fn build_policy(package: &str) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("host/ lives in the workspace")?;
    use crate::policy_build::{cargo_error_lines, ensure_policy_target, policy_build_command};
    ensure_policy_target(root).map_err(anyhow::Error::msg)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (mut cmd, wasm) = policy_build_command(&cargo, root, package);
    let output = cmd.arg("--quiet").output().context("running cargo")?;
    anyhow::ensure!(
        output.status.success(),
        "building policy {package} failed:\n{}",
        cargo_error_lines(&output.stderr).join("\n")
    );
    Ok(wasm)
}

/// Builds and installs a policy with `scripts/install-policy.sh` — the
/// operator's own command, for any language it takes (a crate name or
/// directory, a `.js` or a `.py` file) — into `dir` as `ORDER-NAME.wasm`,
/// and returns that path. JavaScript and Python toolchains are installed
/// on first use (into `.toolchains/` of the workspace).
pub fn install_policy(source: &Path, dir: &Path, order: u32) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("host/ lives in the workspace")?;
    let output = std::process::Command::new(root.join("scripts/install-policy.sh"))
        .arg(source)
        .arg(dir)
        .arg(order.to_string())
        .output()
        .context("running scripts/install-policy.sh")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "install-policy.sh {} failed:\n{}{stdout}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // "installed DIR/ORDER-NAME.wasm (N KiB)"
    let installed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("installed "))
        .and_then(|l| l.rsplit_once(" (").map(|(p, _)| PathBuf::from(p)))
        .context("install-policy.sh did not say what it installed")?;
    Ok(installed)
}
