//! Owns the crate's error type: every fallible public function returns [`Error`].

use std::net::SocketAddr;

/// What can go wrong while configuring or starting the TURN server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be bound (the message says what to do).
    #[error(
        "{proto} port {port} on {ip} is in use: pick another with {flag} or stop the other server"
    )]
    PortInUse {
        /// "UDP", "TCP" or "TLS".
        proto: &'static str,
        /// The address that was asked for.
        ip: std::net::IpAddr,
        /// The port that was asked for.
        port: u16,
        /// The command-line flag that changes this port.
        flag: &'static str,
    },
    /// Any other error binding a listening socket.
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        /// "UDP", "TCP" or "TLS".
        proto: &'static str,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is inconsistent (the message says which field).
    #[error("invalid TURN configuration: {0}")]
    Config(String),
    /// The certificate or key given for TURN over TLS is unusable.
    #[error("TURN TLS certificate: {0}")]
    Tls(String),
    /// The underlying `turn` crate refused to start.
    #[error("TURN server: {0}")]
    Turn(#[from] turn::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
