//! What a policy can call: the `state` interface of the WIT world (rooms,
//! configuration, its key-value namespace, logging), answered from a
//! [`PolicyContext`]. Rooms are read through [`RoomView`], so the policy
//! host does not depend on signaling's registry.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{state, types};
use super::kv::{KvStore, Scope};

/// The rooms a policy may read: who is where. Implemented by signaling's
/// `RoomRegistry`; anything else that knows rooms (a test, a bench) can
/// implement it too.
pub trait RoomView: Send + Sync {
    /// The room a session is in, if any.
    fn room_of(&self, session: &str) -> Option<String>;
    /// The sessions in a room, in join order (empty for no room).
    fn members(&self, room: &str) -> Vec<String>;
    fn room_exists(&self, room: &str) -> bool;
    /// The name a session logged in with, if it has joined.
    fn username_of(&self, session: &str) -> Option<String>;
}

/// Host state that policies can read through their imports.
pub struct PolicyContext {
    pub rooms: Arc<dyn RoomView>,
    pub kv: Arc<KvStore>,
    /// What `config(key)` answers, e.g. "room-max".
    pub config: HashMap<String, String>,
}

/// The data of one policy instance's store.
pub(super) struct StoreData {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: super::limiter::InstanceLimits,
    pub ctx: Arc<PolicyContext>,
    pub name: Arc<str>,
    /// Shared by the policy's instances.
    pub log_budget: Arc<LogBudget>,
    /// The CPU-time budget of one call (the policy's deadline).
    pub deadline: std::time::Duration,
    /// When the current call (or the instantiation) started.
    pub call_started: std::time::Instant,
}

/// Lines a policy may log: 20 a second, 50 at once; a client's messages
/// must not turn a policy's `log` into a flood of the host's log. What is
/// dropped is counted and said once the budget allows.
pub(super) type LogBudget = chat_turn::stats::LogBudget;

/// A policy's budget (see [`LogBudget`]).
pub(super) fn policy_log_budget() -> LogBudget {
    LogBudget::with_rate(20.0, 50.0)
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
        self.ctx.rooms.room_of(&s)
    }

    async fn members(&mut self, r: String) -> Vec<String> {
        self.ctx.rooms.members(&r)
    }

    async fn room_exists(&mut self, r: String) -> bool {
        self.ctx.rooms.room_exists(&r)
    }

    async fn username_of(&mut self, s: String) -> Option<String> {
        self.ctx.rooms.username_of(&s)
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
        let policy = &*self.name;
        let Some(dropped) = self.log_budget.take() else {
            return;
        };
        if dropped > 0 {
            tracing::warn!(
                policy,
                "{dropped} log lines of this policy suppressed (over 20/s)"
            );
        }
        let msg: String = msg.chars().take(1024).collect();
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
