//! `LoadedPolicy`: one compiled policy and its pool of ready instances.
//! Each call runs on a pooled instance under the deadline and the memory
//! cap; a failed instance is discarded, and failures feed the quarantine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::bindings::{Action, Envelope, Policy, PolicyPre, Verdict};
use super::cpu::{self, Judgement, Overloaded};
use super::engine::{EPOCH_TICK, SandboxLimits, one_line};
use super::imports::{LogBudget, PolicyContext, StoreData};
use super::limiter::InstanceLimits;
use super::quarantine::Quarantine;

/// Core instances, tables and memories one policy instance may create.
/// Real guests need more than a hand-written Rust policy's handful: a
/// componentize-py component creates 14 core instances (38 when built with
/// `--stub-wasi`), componentize-qjs about 10. The memory cap is charged
/// for all of an instance's linear memories together (`InstanceLimits`).
const MAX_CORE_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 4;

/// Idle instances kept per policy; more are made on demand and dropped after.
const POOL_SIZE: usize = 8;
/// Instances of one policy in use at once: calls beyond wait (within their
/// deadline) instead of each creating an instance of up to the memory cap.
const MAX_INSTANCES: usize = 32;
/// Resources (WASI handles) one instance may hold.
const MAX_RESOURCES: usize = 1024;

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
    /// Instances in use at once (each may hold the memory cap).
    in_use: tokio::sync::Semaphore,
    log_budget: Arc<LogBudget>,
    pub stats: PolicyStats,
    quarantine: Quarantine,
}

impl LoadedPolicy {
    pub(super) fn new(
        name: &str,
        pre: PolicyPre<StoreData>,
        engine: Engine,
        ctx: Arc<PolicyContext>,
        limits: SandboxLimits,
    ) -> Self {
        Self {
            name: Arc::from(name),
            pre,
            engine,
            ctx,
            limits,
            deadline_ticks: (limits.deadline.as_millis() as u64).max(1),
            pool: Mutex::new(Vec::new()),
            in_use: tokio::sync::Semaphore::new(MAX_INSTANCES),
            log_budget: Arc::new(super::imports::policy_log_budget()),
            stats: PolicyStats::default(),
            quarantine: Quarantine::new(name != super::BUILT_IN_DEFAULT),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantine.is_quarantined()
    }

    async fn instantiate(&self) -> wasmtime::Result<PolicyInstance> {
        let data = StoreData {
            wasi: WasiCtxBuilder::new().build(),
            table: {
                let mut t = ResourceTable::new();
                t.set_max_capacity(MAX_RESOURCES);
                t
            },
            limits: InstanceLimits {
                per_item: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .instances(MAX_CORE_INSTANCES)
                    .tables(MAX_TABLES)
                    .memories(MAX_MEMORIES)
                    .table_elements(100_000)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_cap: self.limits.memory_bytes,
                memory_total: 0,
            },
            ctx: self.ctx.clone(),
            name: self.name.clone(),
            log_budget: self.log_budget.clone(),
            deadline: self.limits.deadline,
            call_started: Instant::now(),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limits);
        // At the deadline in wall-clock time, the call's CPU time decides.
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            let wall = data.call_started.elapsed();
            let cpu = cpu::used_by_current_call(EPOCH_TICK);
            match cpu::judge(cpu, wall, data.deadline, EPOCH_TICK) {
                Judgement::Stop => Err(wasmtime::Trap::Interrupt.into()),
                Judgement::Overloaded => Err(Overloaded {
                    wall,
                    cpu: cpu.unwrap_or(wall),
                }
                .into()),
                Judgement::Extend(ticks) => Ok(UpdateDeadline::Continue(ticks)),
            }
        });
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
        if !self.quarantine.admits() {
            return Err(CallError::Quarantined {
                policy: self.name.clone(),
            });
        }
        // Waiting for an instance is bounded by the wall-clock limit too,
        // but apart from the call: a call that waited keeps its whole time.
        let wall_limit = self.limits.deadline * 2 + Duration::from_millis(5);
        let permit = match self.in_use.try_acquire() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(wall_limit, self.in_use.acquire()).await {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(CallError::Failed {
                        policy: self.name.clone(),
                        reason: format!("more than {MAX_INSTANCES} calls at once"),
                    });
                }
            },
        };
        let _permit = permit;
        let start = Instant::now();
        let pooled = self.pool.lock().pop();
        let attempt = async {
            let mut inst = match pooled {
                Some(inst) => inst,
                None => {
                    // A fresh instance started under a budget of its own;
                    // the call gets a whole one too, as before.
                    let inst = self.instantiate().await?;
                    cpu::restart();
                    inst
                }
            };
            inst.store.data_mut().call_started = Instant::now();
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
        // Each poll marks its thread busy, for the CPU time of the call.
        let mut attempt = std::pin::pin!(attempt);
        let first = std::future::poll_fn(|cx| {
            let _busy = cpu::enter();
            Poll::Ready(attempt.as_mut().poll(cx))
        })
        .await;
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let left = wall_limit.saturating_sub(start.elapsed());
                let rest = std::future::poll_fn(|cx| {
                    let _busy = cpu::enter();
                    attempt.as_mut().poll(cx)
                });
                match tokio::time::timeout(left, rest).await {
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
                self.quarantine.succeeded(&self.name);
                let mut pool = self.pool.lock();
                if pool.len() < POOL_SIZE {
                    pool.push(inst);
                }
                Ok(r)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let reason = describe_trap(&e, self.limits);
                // Preempted on an overloaded machine: failed closed, but
                // not the policy's fault.
                if e.downcast_ref::<Overloaded>().is_none() {
                    self.quarantine.failed(&self.name);
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
