//! The WebAssembly policy host: one wasmtime engine, the linker with the
//! host's imports, sandboxed instances (deadline, memory cap, no WASI
//! files/sockets/env) pooled per policy, and the chain that asks them in turn.

pub mod cache;
pub mod kv;
#[cfg(feature = "native-routing")]
mod native;
pub mod reload;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::signaling::rooms::RoomRegistry;
use kv::{KvStore, Scope};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        // Async, so a policy waiting on a host future (a WASI sleep, say)
        // never blocks a thread, and a call can be cancelled at its deadline.
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::webrtc_chat::policy::types::{
    Action, CloseRequest, Envelope, ErrorReply, JoinRequest, Outbound, Verdict,
};
use bindings::webrtc_chat::policy::{state, types};
use bindings::{Policy, PolicyPre};

/// The name of the built-in default policy (no file can take it: drop-in
/// names are file stems, and `default.wasm` would be named `default` — so
/// it is refused at load).
pub const BUILT_IN_DEFAULT: &str = "default";

/// Consecutive failed calls after which a policy is quarantined.
const QUARANTINE_AFTER: u32 = 5;
/// Idle instances kept per policy; more are made on demand and dropped after.
const POOL_SIZE: usize = 8;
/// The epoch ticks once a millisecond; deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Host state that policies can read through their imports.
pub struct PolicyContext {
    pub registry: Arc<RoomRegistry>,
    pub kv: Arc<KvStore>,
    /// What `config(key)` answers, e.g. "room-max".
    pub config: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

/// The data of one policy instance's store.
struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    ctx: Arc<PolicyContext>,
    name: Arc<str>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreData {}

impl state::Host for StoreData {
    async fn room_of(&mut self, s: String) -> Option<String> {
        self.ctx.registry.room_of(&s).map(|r| r.to_string())
    }

    async fn members(&mut self, r: String) -> Vec<String> {
        self.ctx
            .registry
            .members(&r)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    async fn room_exists(&mut self, r: String) -> bool {
        self.ctx.registry.room_exists(&r)
    }

    async fn username_of(&mut self, s: String) -> Option<String> {
        self.ctx.registry.username_of(&s).map(|u| u.to_string())
    }

    async fn config(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }

    async fn kv_get(&mut self, s: types::Scope, key: String) -> Option<String> {
        self.ctx.kv.get(&self.name, &scope(s), &key)
    }

    async fn kv_set(
        &mut self,
        s: types::Scope,
        key: String,
        value: Option<String>,
    ) -> Result<(), String> {
        self.ctx.kv.set(&self.name, scope(s), &key, value)
    }

    async fn log(&mut self, level: types::LogLevel, msg: String) {
        let msg: String = msg.chars().take(1024).collect();
        let policy = &*self.name;
        match level {
            types::LogLevel::Error => tracing::error!(policy, "{msg}"),
            types::LogLevel::Warn => tracing::warn!(policy, "{msg}"),
            types::LogLevel::Info => tracing::info!(policy, "{msg}"),
            types::LogLevel::Debug => tracing::debug!(policy, "{msg}"),
        }
    }
}

fn scope(s: types::Scope) -> Scope {
    match s {
        types::Scope::Global => Scope::Global,
        types::Scope::Room(r) => Scope::Room(r),
        types::Scope::Session(s) => Scope::Session(s),
    }
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
    cache: Option<cache::ComponentCache>,
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PolicyEngine {
    /// `cache_dir` keeps precompiled components by content hash, so a
    /// restart does not recompile; it must be a directory only the operator
    /// can write (its files are loaded as native code).
    pub fn new(
        ctx: Arc<PolicyContext>,
        limits: SandboxLimits,
        cache_dir: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
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
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        let cache = cache_dir.and_then(|dir| cache::ComponentCache::open(dir, &engine));
        Ok(Self {
            engine,
            linker,
            ctx,
            limits,
            ticker_stop,
            cache,
        })
    }

    /// Compiles, links and canary-tests a policy. Compiling takes tens of
    /// milliseconds of CPU: run it off the async workers (`spawn_blocking`
    /// or a thread of its own with `Handle::block_on`).
    pub async fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<LoadedPolicy>, LoadError> {
        let component = match &self.cache {
            Some(cache) => cache.component(&self.engine, bytes),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Compile(root_cause(&e)))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(root_cause(&e)))?;
        let pre = PolicyPre::new(pre).map_err(|e| LoadError::WrongWorld(root_cause(&e)))?;
        let policy = Arc::new(LoadedPolicy {
            name: Arc::from(name),
            pre,
            engine: self.engine.clone(),
            ctx: self.ctx.clone(),
            limits: self.limits,
            deadline_ticks: (self.limits.deadline.as_millis() as u64).max(1),
            pool: Mutex::new(Vec::new()),
            stats: PolicyStats::default(),
            consecutive_failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            quarantinable: name != BUILT_IN_DEFAULT,
        });
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

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

struct PolicyInstance {
    store: Store<StoreData>,
    bindings: Policy,
}

/// Counters a policy accumulates; read by logs and /metrics.
#[derive(Default)]
pub struct PolicyStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub nanos: AtomicU64,
}

/// Why a policy call produced no verdict.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("policy {policy} failed: {reason}")]
    Failed { policy: Arc<str>, reason: String },
    #[error("policy {policy} is quarantined after repeated failures")]
    Quarantined { policy: Arc<str> },
}

/// One compiled policy and its pool of ready instances.
pub struct LoadedPolicy {
    name: Arc<str>,
    pre: PolicyPre<StoreData>,
    engine: Engine,
    ctx: Arc<PolicyContext>,
    limits: SandboxLimits,
    deadline_ticks: u64,
    pool: Mutex<Vec<PolicyInstance>>,
    pub stats: PolicyStats,
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
    /// False for the built-in default: it is the host's own code, and
    /// quarantining it (say, after deadlines missed on an overloaded
    /// machine) would deny everything until a restart. Its failures still
    /// fail closed, call by call.
    quarantinable: bool,
}

impl LoadedPolicy {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    async fn instantiate(&self) -> wasmtime::Result<PolicyInstance> {
        let data = StoreData {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .table_elements(100_000)
                .trap_on_grow_failure(true)
                .build(),
            ctx: self.ctx.clone(),
            name: self.name.clone(),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limits);
        // WASI start-up code runs during instantiation, under the deadline too.
        store.set_epoch_deadline(self.deadline_ticks);
        let bindings = self.pre.instantiate_async(&mut store).await?;
        Ok(PolicyInstance { store, bindings })
    }

    /// Runs one export on a pooled instance under the deadline: the epoch
    /// stops a guest that computes too long, the timeout one that waits too
    /// long on the host. A trap, timeout or out-of-memory discards the
    /// instance (a trapped instance cannot be entered again) and counts
    /// towards quarantine.
    async fn call<R, F>(&self, f: F) -> Result<R, CallError>
    where
        F: AsyncFnOnce(&Policy, &mut Store<StoreData>) -> wasmtime::Result<R>,
    {
        if self.is_quarantined() {
            return Err(CallError::Quarantined {
                policy: self.name.clone(),
            });
        }
        let start = Instant::now();
        let pooled = self.pool.lock().pop();
        let attempt = async {
            let mut inst = match pooled {
                Some(inst) => inst,
                None => self.instantiate().await?,
            };
            inst.store.set_epoch_deadline(self.deadline_ticks);
            let r = f(&inst.bindings, &mut inst.store).await?;
            Ok::<_, wasmtime::Error>((r, inst))
        };
        // A call that never waits on the host finishes in its first poll
        // (a CPU loop is stopped there by the epoch), so no timer is armed
        // for it: arming and cancelling one per message costs more than the
        // rest of the wait machinery. Only a call that waits (a WASI sleep)
        // gets the wall-clock limit: the epoch deadline plus a margin for
        // the ticker's granularity.
        let mut attempt = std::pin::pin!(attempt);
        let first = std::future::poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let wall_limit = self.limits.deadline * 2 + Duration::from_millis(5);
                let left = wall_limit.saturating_sub(start.elapsed());
                match tokio::time::timeout(left, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(wasmtime::Trap::Interrupt.into()),
                }
            }
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok((r, inst)) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let mut pool = self.pool.lock();
                if pool.len() < POOL_SIZE {
                    pool.push(inst);
                }
                Ok(r)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let reason = describe_trap(&e, self.limits);
                let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.quarantinable
                    && n >= QUARANTINE_AFTER
                    && !self.quarantined.swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        policy = %self.name,
                        "policy quarantined after {n} consecutive failures; it denies everything until its file is replaced or removed"
                    );
                }
                tracing::warn!(policy = %self.name, "policy call failed: {reason}");
                Err(CallError::Failed {
                    policy: self.name.clone(),
                    reason,
                })
            }
        }
    }

    pub async fn on_message(&self, e: &Envelope) -> Result<Verdict, CallError> {
        self.call(async |p, store| p.call_on_message(store, e).await)
            .await
    }

    pub async fn on_connect(&self, session: &str, peer: &str) -> Result<Verdict, CallError> {
        let session = session.to_owned();
        self.call(async |p, store| p.call_on_connect(store, &session, peer).await)
            .await
    }

    pub async fn on_disconnect(&self, session: &str) -> Result<Vec<Action>, CallError> {
        let session = session.to_owned();
        self.call(async |p, store| p.call_on_disconnect(store, &session).await)
            .await
    }
}

fn describe_trap(e: &wasmtime::Error, limits: SandboxLimits) -> String {
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return format!("ran past its {} ms deadline", limits.deadline.as_millis());
    }
    let root = e.root_cause().to_string();
    if root.contains("growing memory") {
        return format!(
            "exceeded its memory cap of {} MiB",
            limits.memory_bytes >> 20
        );
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("trapped: {trap}"),
        None => one_line(&root),
    }
}

/// The result of asking the chain about one message.
pub enum Decision {
    /// A policy decided: apply these actions with the (possibly rewritten) envelope.
    Act {
        actions: Vec<Action>,
        envelope: Envelope,
        rewritten: bool,
    },
    /// A policy refused: `error forbidden` to the sender.
    Deny { reason: String },
    /// A policy failed: fail closed, `error internal` to the sender.
    Failed(CallError),
    /// Every policy passed; nobody handles this type.
    Unhandled,
}

/// Policies in file-name order, then the built-in default.
pub struct PolicyChain {
    policies: Vec<Arc<LoadedPolicy>>,
}

impl PolicyChain {
    pub fn new(drop_ins: Vec<Arc<LoadedPolicy>>, default: Arc<LoadedPolicy>) -> Self {
        let mut policies = drop_ins;
        policies.push(default);
        Self { policies }
    }

    pub fn policies(&self) -> &[Arc<LoadedPolicy>] {
        &self.policies
    }

    pub async fn on_message(&self, mut envelope: Envelope) -> Decision {
        let from = envelope.from.clone();
        let mut rewritten = false;
        for (i, policy) in self.policies.iter().enumerate() {
            // Bench-only: the default's decisions made in Rust, to measure
            // what WebAssembly routing costs (docs/benchmarks.md).
            #[cfg(feature = "native-routing")]
            if i + 1 == self.policies.len() {
                return Decision::Act {
                    actions: native::decide(&policy.ctx, &envelope),
                    envelope,
                    rewritten,
                };
            }
            let _ = i;
            match policy.on_message(&envelope).await {
                Err(e) => return Decision::Failed(e),
                Ok(Verdict::Next) => {}
                Ok(Verdict::NextWith(mut e)) => {
                    e.from = from.clone();
                    envelope = e;
                    rewritten = true;
                }
                Ok(Verdict::Done(actions)) => {
                    return Decision::Act {
                        actions,
                        envelope,
                        rewritten,
                    };
                }
                Ok(Verdict::Deny(reason)) => return Decision::Deny { reason },
            }
        }
        Decision::Unhandled
    }

    /// Admits a socket unless a policy denies it (or fails: closed).
    pub async fn on_connect(&self, session: &str, peer: &str) -> Result<Vec<Action>, String> {
        for policy in &self.policies {
            match policy.on_connect(session, peer).await {
                Err(e) => return Err(e.to_string()),
                Ok(Verdict::Deny(reason)) => return Err(reason),
                Ok(Verdict::Done(actions)) => return Ok(actions),
                Ok(Verdict::Next | Verdict::NextWith(_)) => {}
            }
        }
        Ok(Vec::new())
    }

    /// Every policy is told; their actions are returned in chain order.
    pub async fn on_disconnect(&self, session: &str) -> Vec<Action> {
        let mut all = Vec::new();
        for policy in &self.policies {
            match policy.on_disconnect(session).await {
                Ok(actions) => all.extend(actions),
                Err(e) => tracing::warn!("{e} (on-disconnect; the session is removed anyway)"),
            }
        }
        all
    }
}
