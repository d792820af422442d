//! The WebAssembly policy host: the engine and its sandbox limits
//! (`engine`), what a policy may call (`imports`), pooled instances
//! (`pool`) with their `quarantine`, the `chain` that asks them in turn,
//! which measure their CPU time (`cpu`),
//! and the drop-in directory that swaps chains (`reload`), reading each
//! policy's sidecar limits (`settings`).
//!
//! Nothing here depends on signaling: rooms are read through
//! [`RoomView`], and a reload hands its chain to a [`ChainSlot`].

mod bindings;
pub mod cache;
mod chain;
mod cpu;
mod engine;
mod imports;
pub mod kv;
mod limiter;
mod pool;
mod quarantine;
pub mod reload;
mod settings;

pub use bindings::{Action, CloseRequest, Envelope, ErrorReply, JoinRequest, Outbound, Verdict};
pub use chain::{Decision, PolicyChain};
pub use engine::{EngineSettings, LoadError, PolicyEngine, SandboxLimits};
pub use imports::{PolicyContext, RoomView};
pub use pool::{CallError, LoadedPolicy, PolicyStats};
pub use settings::PolicySettings;

/// Where the chain in force lives: swapped whole on reload; a message uses
/// the chain it started with.
pub type ChainSlot = arc_swap::ArcSwap<PolicyChain>;

/// The name of the built-in default policy (no file can take it: drop-in
/// names are file stems, and `default.wasm` would be named `default` — so
/// it is refused at load).
pub const BUILT_IN_DEFAULT: &str = "default";

/// The default policy component (plugins/default), built by build.rs for
/// wasm32-wasip2.
pub static DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-policy.wasm"));

#[cfg(test)]
mod tests {
    #[test]
    fn default_policy_is_embedded() {
        assert_eq!(&super::DEFAULT_POLICY[..4], b"\0asm");
    }
}
