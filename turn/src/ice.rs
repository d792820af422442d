//! Owns the `iceServers` list handed to a browser (RTCIceServer shape).

use serde::{Deserialize, Serialize};

use crate::config::TurnConfig;
use crate::creds::credentials;

/// One RTCIceServer entry, as the browser's `RTCPeerConnection` expects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN password (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// The host part for a URL: brackets an IPv6 literal, and drops a port
/// (so an HTTP `Host` header value such as `chat.example:8443` or
/// `[2001:db8::1]:443` works too).
fn url_host(host: &str) -> String {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let inner = rest.split(']').next().unwrap_or(rest);
        return format!("[{inner}]");
    }
    match host.matches(':').count() {
        0 => host.to_owned(),
        1 => host.split(':').next().unwrap_or(host).to_owned(),
        _ => format!("[{host}]"),
    }
}

/// The ICE servers for one signaling session. `host_for_urls` is the name
/// or address browsers reach this machine by (a port in it is dropped).
/// A STUN entry comes first
/// (`stun:host:port`), then one TURN entry with a fresh credential for
/// `session_id` and the URLs `turn:host:port?transport=udp`,
/// `turn:host:port?transport=tcp` and, when TLS is configured,
/// `turns:host:tlsport?transport=tcp`.
pub fn ice_servers(host_for_urls: &str, cfg: &TurnConfig, session_id: &str) -> Vec<IceServer> {
    let host = url_host(host_for_urls);
    let port = cfg.port;
    let (username, password) = credentials(&cfg.secret, session_id, cfg.credential_ttl);
    let mut turn_urls = vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ];
    if let Some(tls) = &cfg.tls {
        turn_urls.push(format!("turns:{host}:{}?transport=tcp", tls.port));
    }
    vec![
        IceServer {
            urls: vec![format!("stun:{host}:{port}")],
            username: None,
            credential: None,
        },
        IceServer {
            urls: turn_urls,
            username: Some(username),
            credential: Some(password),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::{parse_username, rest_password};

    #[test]
    fn stun_first_then_turn_with_rest_credentials() {
        let cfg = TurnConfig {
            secret: b"sekrit".to_vec(),
            ..TurnConfig::default()
        };
        let list = ice_servers("chat.example", &cfg, "sess");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, vec!["stun:chat.example:3478"]);
        assert!(list[0].username.is_none());
        assert_eq!(
            list[1].urls,
            vec![
                "turn:chat.example:3478?transport=udp",
                "turn:chat.example:3478?transport=tcp"
            ]
        );
        let user = list[1].username.clone().expect("username");
        assert_eq!(parse_username(&user).map(|(_, s)| s), Some("sess"));
        assert_eq!(list[1].credential, Some(rest_password(b"sekrit", &user)));
        let json = serde_json::to_value(&list).expect("json");
        assert!(json[0].get("username").is_none());
        assert_eq!(json[1]["credential"], serde_json::json!(list[1].credential));
    }

    #[test]
    fn turns_and_ipv6_literal() {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let tls = crate::TlsSettings::from_pem(
            5349,
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
            provider,
        )
        .expect("tls");
        let cfg = TurnConfig {
            secret: b"x".to_vec(),
            tls: Some(tls),
            ..TurnConfig::default()
        };
        let list = ice_servers("2001:db8::1", &cfg, "s");
        assert_eq!(list[0].urls, vec!["stun:[2001:db8::1]:3478"]);
        assert_eq!(list[1].urls[2], "turns:[2001:db8::1]:5349?transport=tcp");
        for (given, want) in [
            ("[2001:db8::1]:443", "[2001:db8::1]"),
            ("[2001:db8::1]", "[2001:db8::1]"),
            ("chat.example:8443", "chat.example"),
            ("192.0.2.1", "192.0.2.1"),
            (" chat.example ", "chat.example"),
        ] {
            assert_eq!(url_host(given), want, "{given}");
        }
    }
}
