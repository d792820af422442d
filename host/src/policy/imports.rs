//! What a policy can call: the `state` interface of the WIT world (rooms,
//! configuration, its key-value namespace, logging), answered from a
//! [`PolicyContext`]. Rooms are read through [`RoomView`], so the policy
//! host does not depend on signaling's registry.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::StoreLimits;
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
    pub limits: StoreLimits,
    pub ctx: Arc<PolicyContext>,
    pub name: Arc<str>,
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
