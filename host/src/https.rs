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
/// A connection with no request in progress for this long — from its
/// accept, or since its last response — is closed, whatever its protocol
/// (HTTP/1 or HTTP/2, TLS or plain).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connection being closed for idleness may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 pings: a peer that answers none within the timeout is gone.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
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
    // Behind a trusted proxy the TCP connection was not counted by
    // address: count the session by its forwarded address instead.
    let forwarded = match &slot {
        Some(s) if s.ip.is_some() => None,
        _ => match state.per_ip.acquire(Some(peer.ip()), false) {
            Some(s) => Some(s),
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
        static LOG: chat_turn::stats::LogBudget = chat_turn::stats::LogBudget::new();
        if let Some(suppressed) = LOG.take() {
            tracing::info!(%peer, origin, suppressed, "signaling refused: origin not allowed");
        }
        return refuse(
            &state,
            StatusCode::FORBIDDEN,
            "This origin may not use this signaling server (see --allowed-origins).",
        );
    }
    if state.max_sessions > 0 && state.hub.local_sessions() >= state.max_sessions {
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
            let _slots = (slot, forwarded);
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
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    state: AppState,
    shutdown: CancellationToken,
) {
    loop {
        let Some((tcp, peer)) = accept(&listener, &shutdown).await else {
            break;
        };
        let accepted_at = tokio::time::Instant::now();
        // A trusted proxy carries many clients: they are counted at the
        // upgrade, by forwarded address.
        let ip = (!state.is_trusted(peer.ip())).then_some(peer.ip());
        let slot = match state.per_ip.acquire(ip, true) {
            Some(s) => Some(Arc::new(s)),
            None => {
                tracing::debug!(%peer, "connection refused: too many open");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The certificate of the moment is resolved per handshake.
        let acceptor = TlsAcceptor::from(tls.clone());
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
            serve_connection(TokioIo::new(tls), svc, peer, accepted_at).await;
        });
    }
}

/// The next connection, or None once `shutdown` is cancelled.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) and HTTP/2 on one connection until the
/// client is done, or has had no request in progress for `IDLE_TIMEOUT`.
async fn serve_connection<I, S>(
    io: TokioIo<I>,
    svc: S,
    peer: SocketAddr,
    accepted_at: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Mutex::new(Activity {
        in_flight: 0,
        idle_since: accepted_at,
    }));
    let tracked = activity.clone();
    let svc = svc.map_future(move |response| {
        let busy = Busy::begin(&tracked);
        async move {
            let _busy = busy;
            response.await
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut check_at = accepted_at + IDLE_TIMEOUT;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(check_at) => {
                let now = tokio::time::Instant::now();
                let a = *activity.lock();
                if a.in_flight > 0 {
                    check_at = now + IDLE_TIMEOUT;
                } else if a.idle_since + IDLE_TIMEOUT > now {
                    check_at = a.idle_since + IDLE_TIMEOUT;
                } else {
                    tracing::debug!(%peer, "connection closed: no request for {IDLE_TIMEOUT:?}");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// Whether a connection is serving a request, and since when it is not.
#[derive(Clone, Copy)]
struct Activity {
    in_flight: usize,
    idle_since: tokio::time::Instant,
}

/// One request in progress on a connection (also when its future is dropped).
struct Busy(Arc<Mutex<Activity>>);

impl Busy {
    fn begin(activity: &Arc<Mutex<Activity>>) -> Self {
        activity.lock().in_flight += 1;
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight -= 1;
        a.idle_since = tokio::time::Instant::now();
    }
}

/// Serves `app` over plain HTTP (the --http-port listener) with the same
/// connection limits and idle bound as HTTPS.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    limiter: Arc<ConnLimiter>,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = accept(&listener, &shutdown).await {
        let accepted_at = tokio::time::Instant::now();
        let Some(slot) = limiter.acquire(Some(peer.ip()), true) else {
            tracing::debug!(%peer, "plain HTTP connection refused: too many open");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(TokioIo::new(tcp), app, peer, accepted_at).await;
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

/// Counts open connections (TCP, so HTTP and WebSocket alike) in total and
/// per client network — an IPv4 address, or an IPv6 /64, which one
/// subscriber holds whole; a connection over a limit is closed at once.
pub struct ConnLimiter {
    max_per_ip: u32,
    max_total: usize,
    inner: Mutex<OpenConns>,
}

#[derive(Default)]
struct OpenConns {
    per_ip: HashMap<IpAddr, u32>,
    total: usize,
}

/// One counted connection; dropping it frees the slot.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: Option<IpAddr>,
    counts_in_total: bool,
}

/// What connections are counted by: the IPv4 address, or the IPv6 /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl ConnLimiter {
    /// A limit of 0 is no limit.
    pub fn new(max_per_ip: u32, max_total: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_ip,
            max_total,
            inner: Mutex::default(),
        })
    }

    /// Counts a connection from `ip`'s network (None: not per address, e.g.
    /// a trusted proxy) and, with `in_total`, in the total.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>, in_total: bool) -> Option<ConnSlot> {
        let ip = ip.map(network_of);
        let mut inner = self.inner.lock();
        if in_total && self.max_total > 0 && inner.total >= self.max_total {
            return None;
        }
        if let Some(ip) = ip {
            let n = inner.per_ip.entry(ip).or_insert(0);
            if self.max_per_ip > 0 && *n >= self.max_per_ip {
                return None;
            }
            *n += 1;
        }
        if in_total {
            inner.total += 1;
        }
        Some(ConnSlot {
            limiter: self.clone(),
            ip,
            counts_in_total: in_total,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut inner = self.limiter.inner.lock();
        if self.counts_in_total {
            inner.total -= 1;
        }
        if let Some(ip) = self.ip
            && let Some(n) = inner.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&ip);
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
        let l = ConnLimiter::new(2, 0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.acquire(Some(ip), true).unwrap();
        let _b = l.acquire(Some(ip), true).unwrap();
        assert!(l.acquire(Some(ip), true).is_none());
        assert!(l.acquire(Some([127, 0, 0, 2].into()), true).is_some());
        drop(a);
        assert!(l.acquire(Some(ip), true).is_some());
        assert!(ConnLimiter::new(0, 0).acquire(Some(ip), true).is_some());
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let l = ConnLimiter::new(2, 0);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let _a = l.acquire(ip("2001:db8:1:2::1"), true).unwrap();
        let _b = l.acquire(ip("2001:db8:1:2:ffff::9"), true).unwrap();
        assert!(
            l.acquire(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), true)
                .is_none()
        );
        assert!(
            l.acquire(ip("2001:db8:1:3::1"), true).is_some(),
            "another /64"
        );
        // An IPv4-mapped address is the IPv4 address.
        let _c = l.acquire(ip("192.0.2.1"), true).unwrap();
        let _d = l.acquire(ip("::ffff:192.0.2.1"), true).unwrap();
        assert!(l.acquire(ip("192.0.2.1"), true).is_none());
    }

    #[test]
    fn total_connections_are_capped() {
        let l = ConnLimiter::new(0, 2);
        let a = l.acquire(Some([10, 0, 0, 1].into()), true).unwrap();
        let _b = l.acquire(None, true).unwrap();
        assert!(l.acquire(Some([10, 0, 0, 2].into()), true).is_none());
        // Sessions behind a proxy are counted per address only.
        assert!(l.acquire(Some([10, 0, 0, 3].into()), false).is_some());
        drop(a);
        assert!(l.acquire(Some([10, 0, 0, 2].into()), true).is_some());
    }

    #[test]
    fn host_header_without_port() {
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("chat.example.com"), "chat.example.com");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("evil\"host:1"), "localhost");
    }
}
