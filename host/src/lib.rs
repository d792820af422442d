//! WebRTC Chat host as a library: the binary (`src/main.rs`) runs [`app`];
//! policy authors' tests use [`harness`] to run a policy without a network.

pub mod app;
pub mod cluster;
pub mod config;
pub mod harness;
pub mod https;
pub mod metrics;
pub mod policy;
/// The nested cargo build of policy crates (also used by build.rs).
mod policy_build;
pub mod signaling;
pub mod tls;
pub mod turn;
pub mod web;
