//! The HTTPS surface: the router (web app, /.well-known, /healthz and the
//! WebSocket upgrade at `/` and `/ws`) and the TLS accept loop that serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::signaling::{Hub, session};
use crate::web;

/// How long a client may take to finish the TLS handshake, and to send
/// request headers: slow clients must not hold sockets open forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
}

pub fn router(state: AppState, well_known_dir: &std::path::Path) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .nest_service("/.well-known", ServeDir::new(well_known_dir))
        .fallback(get(|uri: Uri| async move { web::serve(uri.path()) }))
        .with_state(state)
}

/// `/` is both the app's page and, for the original client, the socket.
async fn root(State(state): State<AppState>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return web::serve("/");
    }
    let (mut parts, _body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let headers = parts.headers.clone();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => upgrade(state, ws, peer, &headers, &parts.uri),
        Err(rejection) => rejection.into_response(),
    }
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, ws, Some(peer), &headers, &uri)
}

fn upgrade(
    state: AppState,
    ws: WebSocketUpgrade,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let host = request_host(headers, uri);
    let limit = state.hub.limits.max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, state.hub, peer, host))
}

/// The host name the client used, without the port: ICE server URLs use it
/// so TURN is reached the same way the page was.
fn request_host(headers: &HeaderMap, uri: &Uri) -> String {
    let raw = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())
        .unwrap_or("localhost");
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().map(|h| format!("[{h}]"))
    } else {
        raw.rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .or_else(|| Some(raw.to_string()))
    };
    host.filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
    })
    .unwrap_or_else(|| "localhost".to_string())
}

/// Accepts TLS connections until `shutdown`, serving HTTP/1.1 (with
/// WebSocket upgrades) and HTTP/2.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(h: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, h.parse().unwrap());
        request_host(&headers, &Uri::from_static("/"))
    }

    #[test]
    fn host_header_without_port() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("chat.example.com"), "chat.example.com");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("evil\"host:1"), "localhost");
    }
}
