//! The HTTPS surface: the router (web app, /.well-known, /healthz and the
//! WebSocket upgrade at `/` and `/ws`) and the TLS accept loop that serves it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
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
/// Read chunk of one WebSocket. It is resident in every session
/// (tungstenite zero-fills it); frames are still assembled up to the frame
/// limit, this is only how much one read takes.
const READ_BUFFER: usize = 4 * 1024;
/// Frames queued in one WebSocket before they are handed to TLS even
/// without a flush (the writer flushes after each batch anyway). Not
/// preallocated: an idle session holds only what its largest batch needed.
const WRITE_BUFFER: usize = 8 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    /// Sessions in total; 0 = no limit.
    pub max_sessions: usize,
    pub origins: Arc<AllowedOrigins>,
    /// Send HSTS (only with a real certificate: a self-signed one would
    /// lock browsers out of the name).
    pub hsts: bool,
    /// Proxies whose X-Forwarded-For names the real client.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// Connections per client address; sessions behind a trusted proxy are
    /// counted here at the upgrade, by their forwarded address.
    pub per_ip: Arc<ConnLimiter>,
}

impl AppState {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        is_trusted(&self.trusted_proxies, ip)
    }

    fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        client_addr(&self.trusted_proxies, peer, headers)
    }
}

fn is_trusted(trusted: &[ipnet::IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's address: the TCP peer, or — when the peer is a trusted
/// proxy — the nearest X-Forwarded-For hop that is not one.
fn client_addr(trusted: &[ipnet::IpNet], peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    {
        if !is_trusted(trusted, peer.ip()) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !is_trusted(trusted, *ip))
            .map_or(peer, |ip| SocketAddr::new(ip, 0))
    }
}

/// Who may open the signaling socket, by the `Origin` header browsers send.
#[derive(Debug, Clone)]
pub enum AllowedOrigins {
    /// The page's own origin (`https://` + the Host header) only.
    SameOrigin,
    /// The own origin and these.
    List(Vec<String>),
    Any,
}

impl AllowedOrigins {
    pub fn from_flags(list: &[String]) -> Self {
        let list: Vec<String> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if list.iter().any(|o| o == "*") {
            Self::Any
        } else if list.is_empty() {
            Self::SameOrigin
        } else {
            Self::List(list)
        }
    }

    /// Clients without an `Origin` (not browsers) are not subject to it.
    fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let same = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")));
        match self {
            Self::Any => true,
            Self::SameOrigin => same,
            Self::List(list) => same || list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

pub fn router(state: AppState, well_known_dir: &std::path::Path) -> Router {
    let hsts = state.hsts;
    Router::new()
        .route("/", get(root))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .nest_service("/.well-known", ServeDir::new(well_known_dir))
        .fallback(get(|uri: Uri| async move { web::serve(uri.path()) }))
        .layer(axum::middleware::map_response(
            move |r: Response| async move { security_headers(r, hsts) },
        ))
        .with_state(state)
}

/// The app needs its own origin, WebSockets to it, camera/microphone
/// streams and blob/data images; nothing else.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self' wss:; \
worker-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'";

fn security_headers(mut r: Response, hsts: bool) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
    );
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
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
    let slot = parts
        .extensions
        .get::<Option<Arc<ConnSlot>>>()
        .cloned()
        .flatten();
    let headers = parts.headers.clone();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => upgrade(state, ws, peer, slot, &headers, &parts.uri),
        Err(rejection) => rejection.into_response(),
    }
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<axum::Extension<Option<Arc<ConnSlot>>>>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(
        state,
        ws,
        Some(peer),
        slot.and_then(|s| s.0),
        &headers,
        &uri,
    )
}

fn upgrade(
    state: AppState,
    ws: WebSocketUpgrade,
    peer: Option<SocketAddr>,
    slot: Option<Arc<ConnSlot>>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let peer = state.client_addr(peer, headers);
    // Behind a trusted proxy the TCP connection was not counted: count the
    // session by its forwarded address instead.
    let slot = match slot {
        Some(s) => Some(s),
        None => match state.per_ip.acquire(peer.ip()) {
            Some(s) => Some(Arc::new(s)),
            None => {
                tracing::debug!(%peer, "signaling refused: too many connections from this address");
                return refuse(
                    &state,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many connections from your address.",
                );
            }
        },
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !state.origins.allows(origin, host_header) {
        tracing::info!(%peer, origin, "signaling refused: origin not allowed");
        return refuse(
            &state,
            StatusCode::FORBIDDEN,
            "This origin may not use this signaling server (see --allowed-origins).",
        );
    }
    if state.max_sessions > 0 && state.hub.registry.session_count() >= state.max_sessions {
        tracing::warn!(%peer, "signaling refused: {} sessions, the maximum", state.max_sessions);
        return refuse(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is full; try again later.",
        );
    }
    let host = request_host(headers, uri);
    let limit = state.hub.limits.max_frame_bytes;
    // tungstenite's default 128 KiB read buffer, zero-filled per socket,
    // was most of an idle session's memory; frames are small.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            session::run(socket, state.hub, peer, host).await;
        })
}

/// Answers a refused upgrade, counted in the metrics.
fn refuse(state: &AppState, status: StatusCode, why: &'static str) -> Response {
    state
        .hub
        .metrics
        .sessions_refused
        .fetch_add(1, Ordering::Relaxed);
    (status, why).into_response()
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
    tls: Arc<crate::tls::ReloadingConfig>,
    app: Router,
    state: AppState,
    shutdown: CancellationToken,
) {
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
        // A trusted proxy carries many clients: they are counted at the
        // upgrade, by forwarded address.
        let slot = if state.is_trusted(peer.ip()) {
            None
        } else {
            match state.per_ip.acquire(peer.ip()) {
                Some(s) => Some(Arc::new(s)),
                None => {
                    tracing::debug!(%peer, "connection refused: too many from this address");
                    continue;
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        // The certificate of the moment (it is reloaded when renewed).
        let acceptor = TlsAcceptor::from(tls.current());
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot.clone();
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
            // A WebSocket outlives this connection task (hyper hands the
            // socket over on upgrade), so the session keeps the slot too.
            let conn_slot = slot.clone();
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(conn_slot.clone());
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

/// The plain-HTTP listener (--http-port): ACME http-01 challenges from
/// /.well-known/, and a permanent redirect to HTTPS for everything else.
pub fn redirect_router(https_port: u16, well_known_dir: &std::path::Path) -> Router {
    Router::new()
        .nest_service("/.well-known", ServeDir::new(well_known_dir))
        .fallback(move |headers: HeaderMap, uri: Uri| async move {
            let host = request_host(&headers, &uri);
            let port = if https_port == 443 {
                String::new()
            } else {
                format!(":{https_port}")
            };
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            axum::response::Redirect::permanent(&format!("https://{host}{port}{path}"))
        })
}

/// Counts open connections per client address (TCP, so HTTP and
/// WebSocket alike); a connection over the limit is closed at once.
pub struct ConnLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One counted connection; dropping it frees the slot.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// `max` = 0: no limit.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
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
    fn forwarded_for_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(
            client_addr(&[], proxy, &headers),
            proxy,
            "untrusted: header ignored"
        );
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_addr(&trusted, proxy, &headers).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the nearest hop that is not a proxy"
        );
    }

    #[test]
    fn origins() {
        let same = AllowedOrigins::from_flags(&[]);
        assert!(same.allows(None, Some("h:1")));
        assert!(same.allows(Some("https://h:1"), Some("h:1")));
        assert!(!same.allows(Some("https://evil.example"), Some("h:1")));
        let list = AllowedOrigins::from_flags(&["https://app.example/".into()]);
        assert!(list.allows(Some("https://app.example"), Some("h:1")));
        assert!(list.allows(Some("https://h:1"), Some("h:1")));
        assert!(!list.allows(Some("https://evil.example"), Some("h:1")));
        assert!(AllowedOrigins::from_flags(&["*".into()]).allows(Some("https://x"), None));
    }

    #[test]
    fn conn_limiter_frees_slots() {
        let l = ConnLimiter::new(2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none());
        assert!(l.acquire([127, 0, 0, 2].into()).is_some());
        drop(a);
        assert!(l.acquire(ip).is_some());
        assert!(ConnLimiter::new(0).acquire(ip).is_some());
    }

    #[test]
    fn host_header_without_port() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("chat.example.com"), "chat.example.com");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("evil\"host:1"), "localhost");
    }
}
