//! Start-up and shutdown: builds the shared state from the configuration,
//! binds the listeners and runs the servers until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::policy::kv::KvStore;
use crate::policy::reload::PolicyDirectory;
use crate::policy::{EngineSettings, PolicyChain, PolicyEngine, SandboxLimits};
use crate::signaling::queue::SendBudget;
use crate::signaling::rooms::Outbound;
use crate::signaling::rooms::RoomRegistry;
use crate::signaling::session;
use crate::signaling::{Hub, SessionLimits};
use crate::{https, metrics, tls};
use axum::extract::ws::Utf8Bytes;

/// Bytes of key-value state each policy may keep.
pub const KV_CAP_BYTES: usize = 4 * 1024 * 1024;

pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.send_queue_bytes < config.max_frame_bytes.saturating_mul(2) {
        anyhow::bail!(
            "--send-queue-bytes ({}) must be at least twice --max-frame-bytes ({}): raise it, or lower --max-frame-bytes",
            config.send_queue_bytes,
            config.max_frame_bytes
        );
    }
    let cluster = match &config.redis_url {
        None => None,
        Some(url) => {
            if config.turn_secret.is_none() && !config.no_turn {
                anyhow::bail!(
                    "--redis-url needs --turn-secret, the same on every host, so each host honours the TURN credentials the others hand out"
                );
            }
            Some(crate::cluster::Cluster::new(url).map_err(|e| anyhow::anyhow!(e))?)
        }
    };
    let cert = tls::CertifiedKey::load_or_self_signed(&config.ssl_dir)?;
    if cert.self_signed {
        tracing::warn!(
            "no certificate in {}: using a self-signed one (browsers will warn); point --ssl-dir at certbot's live/ directory (fullchain.pem + privkey.pem) or put cert1.pem, chain1.pem and privkey1.pem there for a real one",
            config.ssl_dir.display()
        );
    }
    // One certificate for HTTPS and TURN over TLS, swapped on renewal.
    let served_cert = tls::ReloadingCert::new(&config.ssl_dir, &cert)?;
    let tls_config = served_cert.server_config(tls::HTTPS_ALPN)?;
    // TURN over TLS only with a real certificate: browsers refuse a
    // self-signed one for `turns:` without a way to accept it. No ALPN
    // list: TURN clients may offer "stun.turn" (RFC 7443) or nothing.
    let turn_tls = if cert.self_signed {
        None
    } else {
        Some(served_cert.server_config(&[])?)
    };
    let (ice, turn_server) = crate::turn::start(&config, turn_tls).await?;
    let turn_server = turn_server.map(Arc::new);

    let registry = Arc::new(RoomRegistry::with_max_rooms(config.max_rooms as usize));
    let kv = Arc::new(KvStore::new(KV_CAP_BYTES));
    let engine = PolicyEngine::new(EngineSettings {
        rooms: registry.clone(),
        kv: kv.clone(),
        room_max: config.room_max,
        limits: SandboxLimits {
            deadline: Duration::from_millis(config.policy_deadline_ms.into()),
            memory_bytes: (config.policy_memory_mib as usize) << 20,
        },
        cache_dir: config.policy_cache_dir(),
    })
    .context("cannot start the policy engine")?;
    let default = engine
        .load_default()
        .await
        .context("the built-in default policy does not load; rebuild the host")?;
    let chain = PolicyChain::new(Vec::new(), default.clone());

    let hub = Arc::new(Hub {
        registry,
        kv,
        chain: Arc::new(ArcSwap::from_pointee(chain)),
        limits: SessionLimits {
            max_frame_bytes: config.max_frame_bytes as usize,
            send: SendBudget::new(
                config.send_queue as usize,
                config.send_queue_bytes as usize,
                (config.send_queue_total_mib as usize) << 20,
                config.rate_limit_bytes as usize,
            ),
            rate_per_sec: config.rate_limit,
            rate_burst: config.rate_burst,
        },
        ice,
        metrics: Default::default(),
        draining: Default::default(),
        cluster: cluster.clone(),
    });
    if let Some(cluster) = &cluster {
        cluster.start(hub.clone());
    }

    let policies = PolicyDirectory::new(
        engine,
        config.plugins_dir.clone(),
        default,
        hub.chain.clone(),
    );
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

    let metrics_listener = bind_metrics(&config.metrics_addr).await;

    let state = https::AppState {
        hub: hub.clone(),
        max_sessions: config.max_sessions as usize,
        origins: Arc::new(https::AllowedOrigins::from_flags(&config.allowed_origins)),
        hsts: !cert.self_signed,
        trusted_proxies: Arc::new(config.trusted_proxy.clone()),
        per_ip: https::ConnLimiter::new(config.max_conns_per_ip, config.max_conns as usize),
    };
    let app = https::router(state.clone(), &config.well_known_dir);
    let shutdown = CancellationToken::new();
    let metrics_stop = CancellationToken::new();

    let _cert_watcher = if cert.self_signed {
        None
    } else {
        served_cert.watch()
    };
    let limiter = state.per_ip.clone();
    let server = tokio::spawn(https::serve(
        listener,
        tls_config,
        app,
        state,
        shutdown.clone(),
    ));
    if let Some(http_port) = config.http_port {
        let addr = std::net::SocketAddr::new(config.bind, http_port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for HTTP on {addr} ({e}): free the port or drop --http-port"
            )
        })?;
        if let Ok(a) = listener.local_addr() {
            tracing::info!("plain HTTP on http://{a}/: redirects to HTTPS, serves /.well-known/");
        }
        let router = https::redirect_router(port, &config.well_known_dir);
        tokio::spawn(https::serve_plain(
            listener,
            router,
            limiter,
            shutdown.clone(),
        ));
        tracing::info!("HTTP on {addr} redirects to HTTPS");
    }
    if let Some(listener) = metrics_listener {
        let router = metrics::router(hub.clone(), turn_server.clone());
        // Stops after the drain, so /readyz can say "draining" meanwhile.
        let stop = metrics_stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    tracing::info!("WebRTC Chat is serving: open https://localhost:{port}/");

    tokio::select! {
        _ = shutdown_signal() => {}
        _ = server => {}
    }
    drain(&hub, shutdown).await;
    metrics_stop.cancel();
    // The metrics listener may still hold a handle; then dropping ours is
    // enough (the process is ending).
    if let Some(Ok(turn)) = turn_server.map(Arc::try_unwrap) {
        turn.close().await;
    }
    Ok(())
}

/// How long shutdown waits for clients to take their close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Stops accepting, tells every client the server is going away (close
/// 1001, after the frames already queued for it), and waits a bounded time
/// for the sessions to end.
async fn drain(hub: &Hub, shutdown: CancellationToken) {
    hub.draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    shutdown.cancel();
    // In a cluster the other hosts take this host's rooms over first; the
    // members of other hosts in them stay connected.
    if let Some(cluster) = &hub.cluster {
        cluster.leave().await;
    }
    let remote = |id: &str| hub.cluster.as_ref().is_some_and(|c| c.is_proxy(id));
    let handles: Vec<_> = hub
        .registry
        .all_sessions()
        .into_iter()
        .filter(|(id, _)| !remote(id))
        .map(|(_, h)| h)
        .collect();
    tracing::info!("shutting down: closing {} sessions", handles.len());
    for h in handles {
        h.deliver(Outbound::Close(
            session::CLOSE_GOING_AWAY,
            Utf8Bytes::from_static(session::SHUTTING_DOWN),
        ));
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while hub.local_sessions() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The metrics listener is an operator's aid, not the service: if it
/// cannot bind, say so and serve anyway.
async fn bind_metrics(addr: &str) -> Option<tokio::net::TcpListener> {
    if addr.eq_ignore_ascii_case("off") {
        return None;
    }
    let parsed: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(
                "--metrics-addr {addr:?} is not an address like 127.0.0.1:9090 (or \"off\"): /metrics is off"
            );
            return None;
        }
    };
    match tokio::net::TcpListener::bind(parsed).await {
        Ok(l) => {
            if let Ok(a) = l.local_addr() {
                tracing::info!("metrics on http://{a}/metrics");
            }
            Some(l)
        }
        Err(e) => {
            tracing::warn!(
                "cannot listen for metrics on {addr} ({e}): /metrics is off; pick another --metrics-addr"
            );
            None
        }
    }
}
