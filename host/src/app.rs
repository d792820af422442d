//! Start-up and shutdown: builds the shared state from the configuration,
//! binds the listeners and runs the servers until a signal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::policy::kv::KvStore;
use crate::policy::reload::PolicyDirectory;
use crate::policy::{PolicyChain, PolicyContext, PolicyEngine, SandboxLimits};
use crate::signaling::rooms::RoomRegistry;
use crate::signaling::{Hub, SessionLimits};
use crate::{https, tls, web};

/// Bytes of key-value state each policy may keep.
pub const KV_CAP_BYTES: usize = 4 * 1024 * 1024;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let cert = tls::CertifiedKey::load_or_self_signed(&config.ssl_dir)?;
    if cert.self_signed {
        tracing::warn!(
            "no certificate in {}: using a self-signed one (browsers will warn); put cert1.pem, chain1.pem and privkey1.pem there for a real one",
            config.ssl_dir.display()
        );
    }
    let tls_config = cert.server_config(&config.ssl_dir)?;

    let registry = Arc::new(RoomRegistry::default());
    let kv = Arc::new(KvStore::new(KV_CAP_BYTES));
    let ctx = Arc::new(PolicyContext {
        registry: registry.clone(),
        kv: kv.clone(),
        config: HashMap::from([("room-max".to_string(), config.room_max.to_string())]),
    });
    let limits = SandboxLimits {
        deadline: Duration::from_millis(config.policy_deadline_ms.into()),
        memory_bytes: (config.policy_memory_mib as usize) << 20,
    };
    let engine = PolicyEngine::new(ctx, limits, config.policy_cache_dir())
        .context("cannot start the policy engine")?;
    let default = engine
        .load("default", web::DEFAULT_POLICY)
        .await
        .context("the built-in default policy does not load; rebuild the host")?;
    let chain = PolicyChain::new(Vec::new(), default.clone());

    let hub = Arc::new(Hub {
        registry,
        kv,
        chain: ArcSwap::from_pointee(chain),
        limits: SessionLimits {
            max_frame_bytes: config.max_frame_bytes as usize,
            send_queue: config.send_queue as usize,
        },
        ice: Box::new(crate::signaling::NoIceServers),
    });

    let policies = PolicyDirectory::new(engine, config.plugins_dir.clone(), default, hub.clone());
    let _watcher = tokio::task::spawn_blocking(move || policies.watch()).await??;

    let addr = std::net::SocketAddr::new(config.bind, config.https_port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "port {} is in use: stop the other server or pick another with --https-port",
            config.https_port
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "no permission to listen on port {}: run as root, grant CAP_NET_BIND_SERVICE, or pick a port above 1023 with --https-port",
            config.https_port
        ),
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    let port = listener.local_addr()?.port();

    let app = https::router(https::AppState { hub }, &config.well_known_dir);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(https::serve(listener, tls_config, app, shutdown.clone()));
    tracing::info!("WebRTC Chat is serving: open https://localhost:{port}/");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        _ = server => {}
    }
    shutdown.cancel();
    Ok(())
}
