//! Owns the running server: binding the UDP, TCP and TLS listeners, wiring
//! the gate, the relay generator and the auth handler into the `turn`
//! crate, the reaper that closes relays of departed sessions, and shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::TurnConfig;
use crate::creds::{Authenticator, SessionDirectory};
use crate::error::{Error, Result};
use crate::gate::{Gate, NonceCache};
use crate::peer::PeerPolicy;
use crate::relay::{CtxSlot, FilteredRelayGenerator, Limits, Registry};
use crate::stats::{Counters, TurnStats};
use crate::stream::{StreamListenerConfig, StreamMux};

/// How often departed sessions' relays are looked for.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// The transport of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// STUN/TURN over UDP.
    Udp,
    /// STUN/TURN over TCP.
    Tcp,
    /// TURN over TLS (TCP).
    Tls,
}

/// A running STUN/TURN server. Dropping it without [`close`](Self::close)
/// stops accepting TCP/TLS connections but leaves the UDP loop to the
/// runtime's shutdown.
pub struct TurnServer {
    server: Server,
    addrs: Vec<(Transport, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    udp_sockets: Vec<std::sync::Weak<UdpSocket>>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

fn bind_error(
    proto: &'static str,
    addr: SocketAddr,
    flag: &'static str,
    e: std::io::Error,
) -> Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        Error::PortInUse {
            proto,
            ip: addr.ip(),
            port: addr.port(),
            flag,
        }
    } else {
        Error::Bind {
            proto,
            addr,
            source: e,
        }
    }
}

/// Binds `udp_sockets` UDP sockets (SO_REUSEPORT when more than one) and
/// TCP on the same port; with port 0 retries until one port number is free
/// for both.
async fn bind_pair(
    ip: IpAddr,
    port: u16,
    udp_sockets: usize,
) -> Result<(Vec<UdpSocket>, TcpListener)> {
    let tries = if port == 0 { 20 } else { 1 };
    let reuse = udp_sockets > 1;
    let mut last = None;
    for _ in 0..tries {
        let addr = SocketAddr::new(ip, port);
        let bind = |addr| {
            crate::relay::bind_udp_with(addr, crate::relay::LISTENER_RCVBUF, reuse)
                .map_err(|e| bind_error("UDP", addr, "--turn-port", e))
        };
        let first = bind(addr)?;
        let udp_addr = first
            .local_addr()
            .map_err(|e| bind_error("UDP", addr, "--turn-port", e))?;
        let mut udp = vec![first];
        for _ in 1..udp_sockets {
            udp.push(bind(udp_addr)?);
        }
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(bind_error("TCP", udp_addr, "--turn-port", e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("cannot bind".into())))
}

/// The host's own addresses (relaying to them is refused).
fn own_addresses(cfg: &TurnConfig) -> Vec<IpAddr> {
    let mut own = vec![cfg.listen];
    own.extend(cfg.public_ip);
    if let Ok(ifaces) = webrtc_util::ifaces::ifaces() {
        own.extend(ifaces.iter().filter_map(|i| i.addr.map(|a| a.ip())));
    }
    own.retain(|ip| !ip.is_unspecified());
    own.sort();
    own.dedup();
    own
}

/// Relay (bind, advertised) addresses per family, from `listen`,
/// `public_ip` and the interfaces.
type RelayAddrs = (Option<(IpAddr, IpAddr)>, Option<(IpAddr, IpAddr)>);

fn relay_addrs(cfg: &TurnConfig, own: &[IpAddr]) -> Result<RelayAddrs> {
    let public = |v4: bool| cfg.public_ip.filter(|ip| ip.is_ipv4() == v4);
    let first_iface = |v4: bool| {
        own.iter()
            .copied()
            .find(|ip| {
                ip.is_ipv4() == v4 && !ip.is_loopback() && crate::peer::classify(*ip).is_public()
            })
            .or_else(|| {
                own.iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == v4 && !ip.is_loopback())
            })
    };
    let addrs = match cfg.listen {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            let adv = public(true)
                .or_else(|| first_iface(true))
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            (Some((cfg.listen, adv)), None)
        }
        IpAddr::V4(_) => (Some((cfg.listen, public(true).unwrap_or(cfg.listen))), None),
        IpAddr::V6(v6) if v6.is_unspecified() => {
            let v4 = public(true)
                .or_else(|| first_iface(true))
                .map(|adv| (IpAddr::V4(Ipv4Addr::UNSPECIFIED), adv));
            let v6 = public(false)
                .or_else(|| first_iface(false))
                .map(|adv| (cfg.listen, adv));
            (v4, v6)
        }
        IpAddr::V6(_) => (
            None,
            Some((cfg.listen, public(false).unwrap_or(cfg.listen))),
        ),
    };
    if let Some(p) = cfg.public_ip {
        let served = if p.is_ipv4() { addrs.0 } else { addrs.1 };
        if served.is_none() {
            return Err(Error::Config(format!(
                "public_ip {p} is of an address family that listen {} does not serve",
                cfg.listen
            )));
        }
    }
    if addrs.0.is_none() && addrs.1.is_none() {
        return Err(Error::Config(
            "no relay address: set public_ip (e.g. --turn-public-ip)".into(),
        ));
    }
    Ok(addrs)
}

impl TurnServer {
    /// Binds the listeners and starts serving. The directory's grace is set
    /// to `cfg.credential_grace`.
    pub async fn start(cfg: TurnConfig, directory: Arc<SessionDirectory>) -> Result<TurnServer> {
        cfg.validate()?;
        directory.set_grace(cfg.credential_grace);
        let own = own_addresses(&cfg);
        let policy = Arc::new(PeerPolicy {
            allow_loopback: cfg.allow_loopback,
            allow: cfg.allow_peers.clone(),
            own: own.clone(),
        });
        let (relay_v4, relay_v6) = relay_addrs(&cfg, &own)?;
        let counters = Arc::new(Counters::default());
        let auth = Arc::new(Authenticator {
            secret: cfg.secret.clone(),
            realm: cfg.realm.clone(),
            directory: Arc::clone(&directory),
            counters: Arc::clone(&counters),
        });
        let registry = Registry::new(
            Limits {
                per_session: cfg.max_allocations_per_session,
                per_ip: cfg.max_allocations_per_ip,
                total: cfg.max_allocations_total,
            },
            [relay_v4, relay_v6]
                .into_iter()
                .flatten()
                .map(|(_, adv)| adv)
                .collect(),
        );
        let shutdown = CancellationToken::new();
        // Stops the tasks started so far if a later step fails.
        let started = shutdown.clone().drop_guard();
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        let mut listeners: Vec<Arc<dyn Conn + Send + Sync>> = Vec::new();
        let mut fast_tables = Vec::new();

        let (udp, tcp) = bind_pair(cfg.listen, cfg.port, cfg.effective_udp_sockets()).await?;
        let udp_addr = udp[0]
            .local_addr()
            .map_err(|e| Error::Config(e.to_string()))?;
        addrs.push((Transport::Udp, udp_addr));
        let mut udp_sockets = Vec::new();
        for socket in udp {
            let socket = Arc::new(socket);
            udp_sockets.push(Arc::downgrade(&socket));
            let table = crate::fast::FastTable::new(Arc::clone(&socket))
                .map_err(|e| bind_error("UDP", udp_addr, "--turn-port", e))?;
            fast_tables.push(Some(Arc::new(table)));
            listeners.push(socket);
        }
        let first_stream = listeners.len();

        let idle_timeout = cfg.effective_max_lifetime() + Duration::from_secs(30);
        let stream_cfg = |tls: Option<tokio_rustls::TlsAcceptor>, listener: usize| {
            let registry = Arc::clone(&registry);
            let holds = Arc::clone(&registry);
            StreamListenerConfig {
                tls,
                max_connections: cfg.max_tcp_connections,
                // One allocation per connection, plus a few for STUN only.
                max_connections_per_ip: cfg.max_allocations_per_ip.saturating_add(4),
                idle_timeout,
                allocate_within: cfg.tcp_allocate_within,
                has_allocation: Arc::new(move |peer| holds.has_client(listener, peer)),
                on_close: Arc::new(move |peer| registry.close_client(listener, peer)),
                shutdown: shutdown.clone(),
            }
        };
        let tcp_addr = tcp.local_addr().map_err(|e| Error::Config(e.to_string()))?;
        let (mux, task) = StreamMux::start(tcp, stream_cfg(None, first_stream))
            .map_err(|e| bind_error("TCP", tcp_addr, "--turn-port", e))?;
        addrs.push((Transport::Tcp, tcp_addr));
        listeners.push(mux);
        tasks.push(task);

        if let Some(tls) = &cfg.tls {
            let addr = SocketAddr::new(cfg.listen, tls.port);
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error("TLS", addr, "--turn-tls-port", e))?;
            let tls_addr = l
                .local_addr()
                .map_err(|e| bind_error("TLS", addr, "--turn-tls-port", e))?;
            // The host may share its HTTPS configuration: drop its ALPN list
            // (h2, http/1.1), which would refuse TURN clients offering
            // "stun.turn" (RFC 7443).
            let mut tls_config = (*tls.config).clone();
            tls_config.alpn_protocols.clear();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
            let (mux, task) = StreamMux::start(l, stream_cfg(Some(acceptor), first_stream + 1))
                .map_err(|e| bind_error("TLS", tls_addr, "--turn-tls-port", e))?;
            addrs.push((Transport::Tls, tls_addr));
            listeners.push(mux);
            tasks.push(task);
        }

        let nonces = Arc::new(NonceCache::default());
        // TCP/TLS listeners: tables of permissions only (see `FastTable`).
        while fast_tables.len() < listeners.len() {
            fast_tables.push(Some(Arc::new(crate::fast::FastTable::stream())));
        }
        let sweep_tables: Vec<_> = fast_tables.iter().flatten().cloned().collect();
        let conn_configs = listeners
            .into_iter()
            .zip(fast_tables)
            .enumerate()
            .map(|(i, (inner, fast))| {
                let ctx: CtxSlot = Arc::default();
                let gate = Gate {
                    inner,
                    listener: i,
                    ctx: Arc::clone(&ctx),
                    policy: Arc::clone(&policy),
                    registry: Arc::clone(&registry),
                    auth: Arc::clone(&auth),
                    max_lifetime: cfg.effective_max_lifetime(),
                    nonces: Arc::clone(&nonces),
                    counters: Arc::clone(&counters),
                    fast: fast.clone(),
                };
                ConnConfig {
                    conn: Arc::new(gate),
                    relay_addr_generator: Box::new(FilteredRelayGenerator {
                        v4: relay_v4,
                        v6: relay_v6,
                        ports: cfg.relay_ports,
                        policy: Arc::clone(&policy),
                        registry: Arc::clone(&registry),
                        ctx,
                        bandwidth: cfg.max_bandwidth_per_allocation,
                        counters: Arc::clone(&counters),
                        fast,
                    }),
                }
            })
            .collect();

        let server = Server::new(ServerConfig {
            conn_configs,
            realm: cfg.realm.clone(),
            auth_handler: auth,
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await?;

        tasks.push(tokio::spawn({
            let registry = Arc::clone(&registry);
            let counters = Arc::clone(&counters);
            let shutdown = shutdown.clone();
            async move {
                let mut tick = tokio::time::interval(REAP_INTERVAL);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => {
                            directory.prune();
                            let n = registry.close_unhonoured(|s| directory.is_honoured(s));
                            Counters::add(&counters.closed_session_gone, n as u64);
                            for t in &sweep_tables {
                                t.sweep();
                            }
                        }
                    }
                }
            }
        }));

        started.disarm();
        tracing::info!(?addrs, relay_ipv4 = ?relay_v4.map(|a| a.1),
            relay_ipv6 = ?relay_v6.map(|a| a.1), realm = %cfg.realm, "TURN server listening");
        Ok(TurnServer {
            server,
            addrs,
            shutdown,
            tasks,
            registry,
            counters,
            udp_sockets,
        })
    }

    /// Every listening socket with its transport.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.addrs.clone()
    }

    /// The listening address of one transport, if it is served.
    pub fn addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| *a)
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.registry.len()
    }

    /// The server's counters, for metrics.
    pub fn stats(&self) -> TurnStats {
        self.counters
            .snapshot(self.registry.len(), self.registry.session_bytes())
    }

    /// Stops serving: closes every allocation and listener; the ports are
    /// free when it returns (it waits up to a few seconds for that).
    pub async fn close(mut self) {
        self.shutdown.cancel();
        if let Err(e) = self.server.close().await {
            tracing::debug!(error = %e, "TURN server close");
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        // The crate's read loops drop the UDP sockets once they have
        // stopped: wait for that (briefly) so the port is free when this
        // returns.
        for _ in 0..100 {
            if self.udp_sockets.iter().all(|s| s.strong_count() == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn relay_addresses_per_family() {
        let own = vec![
            ip("127.0.0.1"),
            ip("10.0.0.5"),
            ip("203.0.114.7"),
            ip("::1"),
            ip("2001:4860::5"),
        ];
        let mut cfg = TurnConfig::default();
        // 0.0.0.0: bind any, advertise the first public address.
        let (v4, v6) = relay_addrs(&cfg, &own).expect("addrs");
        assert_eq!(v4, Some((ip("0.0.0.0"), ip("203.0.114.7"))));
        assert_eq!(v6, None);
        // public_ip wins.
        cfg.public_ip = Some(ip("198.51.100.1"));
        assert_eq!(
            relay_addrs(&cfg, &own).expect("a").0,
            Some((ip("0.0.0.0"), ip("198.51.100.1")))
        );
        // specific listen address.
        cfg.public_ip = None;
        cfg.listen = ip("127.0.0.1");
        assert_eq!(
            relay_addrs(&cfg, &own).expect("a").0,
            Some((ip("127.0.0.1"), ip("127.0.0.1")))
        );
        // dual stack.
        cfg.listen = ip("::");
        let (v4, v6) = relay_addrs(&cfg, &own).expect("addrs");
        assert_eq!(v4, Some((ip("0.0.0.0"), ip("203.0.114.7"))));
        assert_eq!(v6, Some((ip("::"), ip("2001:4860::5"))));
        // a public_ip of a family not served is a config error.
        cfg.listen = ip("127.0.0.1");
        cfg.public_ip = Some(ip("2001:4860::5"));
        assert!(relay_addrs(&cfg, &own).is_err());
        // only private interfaces: the first non-loopback one.
        cfg.listen = ip("0.0.0.0");
        cfg.public_ip = None;
        let own = vec![ip("127.0.0.1"), ip("10.0.0.5")];
        assert_eq!(
            relay_addrs(&cfg, &own).expect("a").0,
            Some((ip("0.0.0.0"), ip("10.0.0.5")))
        );
    }

    #[test]
    fn own_addresses_include_listen_and_public() {
        let cfg = TurnConfig {
            listen: ip("127.0.0.2"),
            public_ip: Some(ip("198.51.100.9")),
            ..TurnConfig::default()
        };
        let own = own_addresses(&cfg);
        assert!(own.contains(&ip("127.0.0.2")));
        assert!(own.contains(&ip("198.51.100.9")));
        assert!(!own.iter().any(|a| a.is_unspecified()));
    }
}
