//! Owns the server's configuration: [`TurnConfig`] and [`TlsSettings`], with
//! their defaults and validation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default STUN/TURN port (UDP and TCP).
pub const DEFAULT_PORT: u16 = 3478;
/// Default TURN-over-TLS port.
pub const DEFAULT_TLS_PORT: u16 = 5349;
/// Longest allocation lifetime the `turn` crate grants (RFC 5766 §6.2
/// recommends 3600 s); a larger request gets the 600 s default from it.
pub const MAX_CRATE_LIFETIME: Duration = Duration::from_secs(3599);

/// TURN over TLS (TCP) settings.
#[derive(Clone)]
pub struct TlsSettings {
    /// Port for `turns:` (default 5349).
    pub port: u16,
    /// The rustls server configuration (the host shares its own HTTPS one).
    pub config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Settings on the default port (5349) with the given rustls configuration.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            port: DEFAULT_TLS_PORT,
            config,
        }
    }

    /// Builds settings from a PEM certificate chain and a PEM private key,
    /// with the given rustls crypto provider (e.g. ring's or aws-lc-rs's).
    pub fn from_pem(
        port: u16,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Tls("no certificate in the PEM data".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::Tls(format!("bad private key PEM: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self {
            port,
            config: Arc::new(config),
        })
    }
}

/// Everything the TURN server needs to know. Its `Debug` output hides the
/// secret.
#[derive(Clone)]
pub struct TurnConfig {
    /// Address to listen on (UDP, TCP, TLS) and to open relay sockets on.
    pub listen: IpAddr,
    /// STUN/TURN port for UDP and TCP (default 3478; 0 = any, for tests).
    pub port: u16,
    /// TURN over TLS, when a certificate is available.
    pub tls: Option<TlsSettings>,
    /// Realm sent to clients (default "webrtc-chat").
    pub realm: String,
    /// Address advertised as the relayed address (default: `listen`, or when
    /// `listen` is unspecified the first public interface address, else the
    /// first non-loopback one). Set it behind NAT.
    pub public_ip: Option<IpAddr>,
    /// Relay port range, inclusive; (0, 0) lets the OS pick any port.
    pub relay_ports: (u16, u16),
    /// Shared secret for the TURN REST credentials (must not be empty).
    pub secret: Vec<u8>,
    /// Allow relaying to loopback peers (tests on one machine).
    pub allow_loopback: bool,
    /// Extra peer networks allowed even though they are private/reserved.
    pub allow_peers: Vec<ipnet::IpNet>,
    /// Most live allocations one session may hold, whatever credential
    /// (expiry) it uses: each (re)join hands out a new username.
    pub max_allocations_per_session: usize,
    /// Most live allocations one client IPv4 address or IPv6 /64 may hold.
    pub max_allocations_per_ip: usize,
    /// Most live allocations in the whole server.
    pub max_allocations_total: usize,
    /// Longest lifetime granted by one Allocate or Refresh (capped at 3599 s).
    pub max_lifetime: Duration,
    /// How long a credential stays honoured after its session ended.
    pub credential_grace: Duration,
    /// Validity of the credentials handed out by [`crate::ice_servers`].
    pub credential_ttl: Duration,
    /// Most simultaneous TCP/TLS client connections per listener.
    pub max_tcp_connections: usize,
    /// A TCP/TLS connection that holds no allocation this long after it
    /// opened is closed (30 s): its slot is for relaying.
    pub tcp_allocate_within: Duration,
    /// Bytes per second one allocation may relay, both directions together
    /// (None = no cap). Packets over it are dropped, with one second's
    /// worth (at least 16 KiB) of burst.
    pub max_bandwidth_per_allocation: Option<u64>,
    /// UDP listening sockets on the TURN port (SO_REUSEPORT: the kernel
    /// spreads clients across them, each read by its own task); 0 = one
    /// per CPU core.
    pub udp_sockets: usize,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("realm", &self.realm)
            .field("public_ip", &self.public_ip)
            .field("relay_ports", &self.relay_ports)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("allow_loopback", &self.allow_loopback)
            .field("allow_peers", &self.allow_peers)
            .field(
                "max_allocations_per_session",
                &self.max_allocations_per_session,
            )
            .field("max_allocations_per_ip", &self.max_allocations_per_ip)
            .field("max_allocations_total", &self.max_allocations_total)
            .field("max_lifetime", &self.max_lifetime)
            .field("credential_grace", &self.credential_grace)
            .field("credential_ttl", &self.credential_ttl)
            .field("max_tcp_connections", &self.max_tcp_connections)
            .field(
                "max_bandwidth_per_allocation",
                &self.max_bandwidth_per_allocation,
            )
            .field("udp_sockets", &self.udp_sockets)
            .finish()
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            tls: None,
            realm: "webrtc-chat".into(),
            public_ip: None,
            relay_ports: (0, 0),
            secret: Vec::new(),
            allow_loopback: false,
            allow_peers: Vec::new(),
            max_allocations_per_session: 10,
            max_allocations_per_ip: 50,
            max_allocations_total: 1000,
            max_lifetime: Duration::from_secs(600),
            credential_grace: Duration::from_secs(30),
            credential_ttl: Duration::from_secs(12 * 3600),
            max_tcp_connections: 1024,
            tcp_allocate_within: crate::stream::ALLOCATE_WITHIN,
            max_bandwidth_per_allocation: None,
            udp_sockets: 0,
        }
    }
}

impl TurnConfig {
    /// The number of UDP listening sockets `udp_sockets` asks for (0: one
    /// per CPU core; at most 256).
    pub fn effective_udp_sockets(&self) -> usize {
        match self.udp_sockets {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(256)
    }

    /// Checks the fields that the server cannot run without.
    pub fn validate(&self) -> Result<()> {
        if self.secret.is_empty() {
            return Err(Error::Config("secret must not be empty".into()));
        }
        if self.realm.is_empty() {
            return Err(Error::Config("realm must not be empty".into()));
        }
        let (lo, hi) = self.relay_ports;
        if (lo, hi) != (0, 0) && (lo == 0 || hi < lo) {
            return Err(Error::Config(format!(
                "relay port range {lo}-{hi} is invalid: give 0-0 (any) or low <= high, both > 0"
            )));
        }
        if self.max_lifetime < Duration::from_secs(30) {
            return Err(Error::Config("max_lifetime must be at least 30 s".into()));
        }
        if self.max_allocations_total == 0
            || self.max_allocations_per_ip == 0
            || self.max_allocations_per_session == 0
        {
            return Err(Error::Config("allocation quotas must be at least 1".into()));
        }
        if self.max_bandwidth_per_allocation == Some(0) {
            return Err(Error::Config(
                "max_bandwidth_per_allocation must be above 0 (or None for no cap)".into(),
            ));
        }
        if let Some(tls) = &self.tls
            && tls.port != 0
            && tls.port == self.port
        {
            return Err(Error::Config(format!(
                "TLS port {} is the same as the STUN/TURN port",
                tls.port
            )));
        }
        Ok(())
    }

    /// The lifetime the server grants, capped by what the `turn` crate allows.
    pub(crate) fn effective_max_lifetime(&self) -> Duration {
        self.max_lifetime.min(MAX_CRATE_LIFETIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_validate_checks_fields() {
        let cfg = TurnConfig {
            secret: b"hunter2-secret".to_vec(),
            ..TurnConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<14 bytes>"));
        assert!(cfg.validate().is_ok());
        assert!(TurnConfig::default().validate().is_err()); // empty secret
        for bad in [
            TurnConfig {
                relay_ports: (0, 10),
                ..cfg.clone()
            },
            TurnConfig {
                relay_ports: (20, 10),
                ..cfg.clone()
            },
            TurnConfig {
                max_lifetime: Duration::from_secs(5),
                ..cfg.clone()
            },
            TurnConfig {
                max_allocations_total: 0,
                ..cfg.clone()
            },
            TurnConfig {
                max_bandwidth_per_allocation: Some(0),
                ..cfg.clone()
            },
            TurnConfig {
                realm: String::new(),
                ..cfg.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(cfg.effective_max_lifetime(), Duration::from_secs(600));
        let long = TurnConfig {
            max_lifetime: Duration::from_secs(7200),
            ..cfg
        };
        assert_eq!(long.effective_max_lifetime(), MAX_CRATE_LIFETIME);
    }
}
