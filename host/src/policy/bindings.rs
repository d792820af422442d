//! The host side of wit/policy.wit (`webrtc-chat:policy@0.1.0`), generated
//! once here; the rest of the policy host uses the types re-exported from
//! `policy` and never names the generated modules directly.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Async, so a policy waiting on a host future (a WASI sleep, say)
    // never blocks a thread, and a call can be cancelled at its deadline.
    imports: { default: async },
    exports: { default: async },
});

// `Action`, `Envelope` and `Verdict` are named at the top by the world itself.
pub use webrtc_chat::policy::types::{CloseRequest, ErrorReply, JoinRequest, Outbound};
pub(super) use webrtc_chat::policy::{state, types};
