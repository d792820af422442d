//! TLS for HTTPS/WSS: the operator's certificate — certbot's `live/` layout
//! (`fullchain.pem` + `privkey.pem`), or its `archive/` layout as the
//! original server read it (`cert1.pem` + `chain1.pem` + `privkey1.pem`) —
//! or a self-signed one made at start when the directory has none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub const CERT_FILE: &str = "cert1.pem";
pub const CHAIN_FILE: &str = "chain1.pem";
pub const KEY_FILE: &str = "privkey1.pem";
/// certbot's `live/<name>/` layout, preferred when present.
pub const LIVE_CHAIN_FILE: &str = "fullchain.pem";
pub const LIVE_KEY_FILE: &str = "privkey.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{dir} has {present} but not {missing}: put all of cert1.pem, chain1.pem and privkey1.pem there, or none for a self-signed certificate"
    )]
    Incomplete {
        dir: String,
        present: String,
        missing: String,
    },
    #[error(
        "cannot read the certificate file {path}: {reason} (check the file and its permissions, or pass --ssl-dir)"
    )]
    Unreadable { path: String, reason: String },
    #[error("the certificate in {dir} is not usable: {reason}")]
    Invalid { dir: String, reason: String },
    #[error("could not make a self-signed certificate: {0}")]
    SelfSigned(String),
}

/// The certificate chain and key the host serves, with where they came from.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// True when made at start because the ssl directory had no certificate.
    pub self_signed: bool,
}

impl CertifiedKey {
    /// Reads the certbot-layout files from `dir`; makes a self-signed
    /// certificate when none of them exists.
    pub fn load_or_self_signed(dir: &Path) -> Result<Self, TlsError> {
        // certbot's live/ directory: symlinks it repoints on every renewal.
        let (fullchain, live_key) = (dir.join(LIVE_CHAIN_FILE), dir.join(LIVE_KEY_FILE));
        if fullchain.exists() && live_key.exists() {
            return Self::from_files(dir, &read_certs(&fullchain)?, &live_key);
        }
        let files = [CERT_FILE, CHAIN_FILE, KEY_FILE].map(|f| dir.join(f));
        let (present, missing): (Vec<&PathBuf>, Vec<&PathBuf>) =
            files.iter().partition(|p| p.exists());
        if present.is_empty() {
            return self_signed();
        }
        // chain1.pem is optional for a self-contained leaf (e.g. a private CA in tests).
        let missing: Vec<&PathBuf> = missing
            .into_iter()
            .filter(|p| !p.ends_with(CHAIN_FILE))
            .collect();
        if !missing.is_empty() {
            let names = |ps: &[&PathBuf]| {
                ps.iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(TlsError::Incomplete {
                dir: dir.display().to_string(),
                present: names(&present),
                missing: names(&missing),
            });
        }
        let [cert, chain, key] = files;
        let mut certs = read_certs(&cert)?;
        if chain.exists() {
            certs.extend(read_certs(&chain)?);
        }
        Self::from_files(dir, &certs, &key)
    }

    fn from_files(
        dir: &Path,
        certs: &[CertificateDer<'static>],
        key: &Path,
    ) -> Result<Self, TlsError> {
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Unreadable {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(TlsError::Invalid {
                dir: dir.display().to_string(),
                reason: "the certificate file holds no certificate".into(),
            });
        }
        Ok(Self {
            chain: certs.to_vec(),
            key,
            self_signed: false,
        })
    }

    /// The chain with its key loaded for signing, checked to belong together.
    pub fn signing(&self, dir: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let invalid = |reason: String| TlsError::Invalid {
            dir: dir.display().to_string(),
            reason,
        };
        let key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| invalid(e.to_string()))?;
        let ck = rustls::sign::CertifiedKey::new(self.chain.clone(), key);
        ck.keys_match()
            .map_err(|e| invalid(format!("{e} (does privkey1.pem belong to cert1.pem?)")))?;
        Ok(Arc::new(ck))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))
}

fn self_signed() -> Result<CertifiedKey, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    Ok(CertifiedKey {
        chain: vec![cert.cert.der().clone()],
        key,
        self_signed: true,
    })
}

/// The certificate every TLS listener serves (HTTPS and TURN over TLS
/// resolve it per handshake), swapped whole when certbot renews the files
/// in the ssl directory: new handshakes use the new certificate,
/// established connections (and calls) carry on.
#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// ALPN protocols of the HTTPS listener.
pub const HTTPS_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Quiet time after the last file event before the files are read: certbot
/// writes several files in a row.
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

impl ReloadingCert {
    pub fn new(dir: &Path, initial: &CertifiedKey) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            current: arc_swap::ArcSwap::new(initial.signing(dir)?),
        }))
    }

    /// A server configuration that serves this certificate, whatever it
    /// is at the time of each handshake, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid {
                dir: self.dir.display().to_string(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the directory again; a broken or half-written set of files
    /// keeps the running certificate.
    pub fn reload(&self) {
        let loaded = CertifiedKey::load_or_self_signed(&self.dir)
            .and_then(|ck| Ok((ck.signing(&self.dir)?, ck.self_signed)));
        match loaded {
            Ok((_, true)) => {
                tracing::warn!(
                    "the certificate files in {} are gone; keeping the current certificate",
                    self.dir.display()
                );
            }
            Ok((config, false)) => {
                self.current.store(config);
                tracing::info!("certificate reloaded from {}", self.dir.display());
            }
            Err(e) => tracing::warn!("keeping the current certificate: {e}"),
        }
    }

    /// Watches the ssl directory (when it exists) and reloads on change.
    /// Returns the watcher, which must be kept alive.
    pub fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        if !self.dir.is_dir() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .ok()?;
        if let Err(e) = watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} for renewed certificates: {e}",
                self.dir.display()
            );
            return None;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                while let Ok(event) = rx.recv() {
                    if event.is_err() {
                        continue;
                    }
                    while rx.recv_timeout(RELOAD_DEBOUNCE).is_ok() {}
                    this.reload();
                }
            });
        spawned.ok().map(|_| watcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_gives_self_signed() {
        let dir = tempfile::tempdir().unwrap();
        let ck = CertifiedKey::load_or_self_signed(dir.path()).unwrap();
        assert!(ck.self_signed);
        ck.signing(dir.path()).unwrap();
    }

    #[test]
    fn partial_dir_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CERT_FILE), "x").unwrap();
        let err = CertifiedKey::load_or_self_signed(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("privkey1.pem"), "{err}");
    }

    #[test]
    fn operator_files_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["example.test".into()]).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), cert.signing_key.serialize_pem()).unwrap();
        let ck = CertifiedKey::load_or_self_signed(dir.path()).unwrap();
        assert!(!ck.self_signed);
        assert_eq!(ck.chain.len(), 1);
        ck.signing(dir.path()).unwrap();
    }

    #[test]
    fn certbot_live_layout_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["example.test".into()]).unwrap();
        std::fs::write(dir.path().join(LIVE_CHAIN_FILE), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join(LIVE_KEY_FILE),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        let ck = CertifiedKey::load_or_self_signed(dir.path()).unwrap();
        assert!(!ck.self_signed);
        assert_eq!(ck.chain[0].as_ref(), cert.cert.der().as_ref());
        ck.signing(dir.path()).unwrap();
    }

    #[test]
    fn garbage_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["example.test".into()]).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = CertifiedKey::load_or_self_signed(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("privkey1.pem"), "{err}");
    }
}
