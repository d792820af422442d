//! `PolicyEngine`: the one wasmtime engine, its linker with the host's
//! imports, the epoch ticker behind every deadline and the precompiled
//! cache. [`PolicyEngine::new`] is the only way to build one — the app, the
//! harness and the benches all go through it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{Envelope, Policy, PolicyPre};
use super::cache::ComponentCache;
use super::imports::{PolicyContext, RoomView, StoreData};
use super::kv::KvStore;
use super::pool::LoadedPolicy;

/// Import name prefixes the linker provides: the policy world and the WASI
/// 0.2 interfaces `wasmtime_wasi::p2::add_to_linker_async` adds. Anything
/// else (wasi:http, say) is refused with its name, before linking.
const PROVIDED: &[&str] = &[
    "webrtc-chat:policy/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

/// The epoch ticks once a millisecond; deadlines are counted in ticks.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

/// Everything a policy engine is built from.
pub struct EngineSettings {
    /// What `members`, `room-of`, … answer.
    pub rooms: Arc<dyn RoomView>,
    pub kv: Arc<KvStore>,
    /// What `config("room-max")` answers.
    pub room_max: u32,
    pub limits: SandboxLimits,
    /// Keeps precompiled components by content hash, so a restart does not
    /// recompile; it must be a directory only the operator can write (its
    /// files are loaded as native code). `None`: compile every time.
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "not a WebAssembly component ({0}); build it with `cargo build --target wasm32-wasip2`"
    )]
    Compile(String),
    #[error(
        "does not fit the webrtc-chat:policy@0.1.0 world ({0}); regenerate its bindings from wit/policy.wit"
    )]
    WrongWorld(String),
    #[error(
        "imports {0}, which this host does not provide (only webrtc-chat:policy@0.1.0 and WASI 0.2 cli/clocks/filesystem/io/random/sockets); build it without that import (componentize-qjs or componentize-py: --stub-wasi; jco/componentize-js: --disable http; Rust: drop the crate that needs it)"
    )]
    UnknownImport(String),
    #[error("failed its canary call ({0})")]
    Canary(String),
}

/// Owns the engine, the linker and the epoch ticker behind every deadline.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<StoreData>,
    ctx: Arc<PolicyContext>,
    limits: SandboxLimits,
    ticker_stop: Arc<AtomicBool>,
    cache: Option<ComponentCache>,
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PolicyEngine {
    pub fn new(settings: EngineSettings) -> anyhow::Result<Self> {
        let ctx = Arc::new(PolicyContext {
            rooms: settings.rooms,
            kv: settings.kv,
            config: HashMap::from([("room-max".to_string(), settings.room_max.to_string())]),
        });
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Async component support makes every sync call several times slower.
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Policy::add_to_linker::<_, HasSelf<StoreData>>(&mut linker, |d| d)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    // Sampled before the tick, so a call that reaches its
                    // deadline at this tick has its sample.
                    super::cpu::sample_busy_threads();
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        let cache = settings
            .cache_dir
            .and_then(|dir| ComponentCache::open(dir, &engine));
        Ok(Self {
            engine,
            linker,
            ctx,
            limits: settings.limits,
            ticker_stop,
            cache,
        })
    }

    /// The built-in default policy (plugins/default, embedded at build time).
    pub async fn load_default(&self) -> Result<Arc<LoadedPolicy>, LoadError> {
        self.load(super::BUILT_IN_DEFAULT, super::DEFAULT_POLICY)
            .await
    }

    /// Compiles, links and canary-tests a policy. Compiling takes tens of
    /// milliseconds of CPU: run it off the async workers (`spawn_blocking`
    /// or a thread of its own with `Handle::block_on`).
    pub async fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<LoadedPolicy>, LoadError> {
        self.load_with(name, bytes, self.limits).await
    }

    /// The host's sandbox limits (the flags), before any sidecar.
    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// [`load`](Self::load) with limits of its own (a sidecar `NAME.toml`).
    pub async fn load_with(
        &self,
        name: &str,
        bytes: &[u8],
        limits: SandboxLimits,
    ) -> Result<Arc<LoadedPolicy>, LoadError> {
        let component = match &self.cache {
            Some(cache) => cache.component(&self.engine, bytes),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Compile(root_cause(&e)))?;
        if let Some(import) = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name)
            .find(|name| !PROVIDED.iter().any(|p| name.starts_with(p)))
        {
            return Err(LoadError::UnknownImport(one_line(import)));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(root_cause(&e)))?;
        let pre = PolicyPre::new(pre).map_err(|e| LoadError::WrongWorld(root_cause(&e)))?;
        let policy = Arc::new(LoadedPolicy::new(
            name,
            pre,
            self.engine.clone(),
            self.ctx.clone(),
            limits,
        ));
        let canary = Envelope {
            kind: "webrtc-chat.canary".into(),
            from: "00000000-0000-4000-8000-000000000000".into(),
            to: None,
            data: None,
        };
        policy
            .on_message(&canary)
            .await
            .map_err(|e| LoadError::Canary(e.to_string()))?;
        Ok(policy)
    }
}

/// The error and its first cause, on one line (log lines stay one line).
fn root_cause(e: &wasmtime::Error) -> String {
    let mut msg = e.to_string();
    if let Some(cause) = e.chain().nth(1) {
        msg = format!("{msg}: {cause}");
    }
    one_line(&msg)
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}
