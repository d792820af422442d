//! Signaling: the state the host owns (sessions, rooms, policy key-value
//! data), the per-socket session loop, and the dispatch of each frame
//! through the policy chain.

pub mod dispatch;
pub mod frame;
pub mod names;
pub mod queue;
pub mod rate;
pub mod rooms;
pub mod session;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::metrics::{Metrics, Observed};
use crate::policy::ChainSlot;
use crate::policy::kv::KvStore;
use rooms::RoomRegistry;

/// Per-session bounds.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_frame_bytes: usize,
    /// Every session's outbound queue bounds, and their shared byte budget.
    pub send: Arc<queue::SendBudget>,
    /// Messages per second (token bucket refill); 0 = no limit.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// Makes the `iceServers` list of a `joined` frame: per session, because
/// TURN credentials are per session; `host` is the name the client used to
/// reach us (its Host header), so the URLs work from where it stands.
pub trait IceServers: Send + Sync {
    /// The JSON list for a session that just joined.
    fn for_session(&self, session: &str, host: &str) -> String;
    /// The session's socket ended: its credentials stop being honoured
    /// (after a grace for reconnects).
    fn session_ended(&self, _session: &str) {}
    /// The session is in a room another host owns (cluster mode): its
    /// credentials are honoured here too, while it lives.
    fn session_seen(&self, _session: &str) {}
}

/// No ICE servers from this host: clients use their own defaults.
pub struct NoIceServers;

impl IceServers for NoIceServers {
    fn for_session(&self, _session: &str, _host: &str) -> String {
        "[]".into()
    }
}

/// Everything a session needs, shared by all of them.
pub struct Hub {
    pub registry: Arc<RoomRegistry>,
    pub kv: Arc<KvStore>,
    /// Swapped whole on reload; a message uses the chain it started with.
    pub chain: Arc<ChainSlot>,
    pub limits: SessionLimits,
    pub ice: Box<dyn IceServers>,
    pub metrics: Metrics,
    /// Set when shutdown begins: /readyz answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Cluster mode (`--redis-url`): rooms shared with other hosts.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Hub {
    /// Sessions with a socket on this host (in cluster mode the registry
    /// also holds other hosts' members of the rooms this host owns).
    pub fn local_sessions(&self) -> usize {
        let remote = self.cluster.as_ref().map_or(0, |c| c.proxy_count());
        self.registry.session_count().saturating_sub(remote)
    }
}

impl Observed for Hub {
    fn render(&self, out: &mut String) {
        self.metrics
            .render(out, self.local_sessions(), self.registry.room_count());
        let queued = self.limits.send.queued_bytes();
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_send_queue_bytes Bytes waiting in all sessions' send queues.\n\
             # TYPE webrtc_chat_send_queue_bytes gauge\n\
             webrtc_chat_send_queue_bytes {queued}"
        );
        let kv = self.kv.bytes();
        let _ = writeln!(
            out,
            "# HELP webrtc_chat_policy_kv_bytes Bytes policies keep in the host's key-value store (entry overhead included).\n\
             # TYPE webrtc_chat_policy_kv_bytes gauge\n\
             webrtc_chat_policy_kv_bytes {kv}"
        );
        if let Some(cluster) = &self.cluster {
            cluster.render(out, self.registry.room_count());
        }
        crate::metrics::render_policies(out, &self.chain.load());
    }

    fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn not_ready(&self) -> Option<&'static str> {
        self.cluster
            .as_ref()
            .is_some_and(|c| !c.ready())
            .then_some("cluster: Redis unreachable")
    }
}
