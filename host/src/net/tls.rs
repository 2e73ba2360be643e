//! TLS on a listener (rustls), with a certificate that can be replaced
//! while the listener serves.
//!
//! The certificate and key are read from PEM files at start; a bad pair
//! stops the host from starting. [`Tls::reload`] reads them again (on
//! SIGHUP, and when either file changes: [`Tls::watch`]) and swaps them in
//! for new handshakes only: connections already open keep the session they
//! have. A pair that does not load is logged and the old one kept.
//!
//! A handshake must finish within the listener's header timeout, on the
//! connection's own task, so a peer that starts one and stalls holds only
//! its own connection (already counted by the connection caps).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// `tls = { cert = "…", key = "…" }`: PEM files of a listener's certificate
/// chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS certificate `{cert}` with key `{key}`: {reason}")]
pub struct TlsError {
    cert: String,
    key: String,
    reason: String,
}

/// A listener's TLS: its acceptor, and the certificate it presents.
pub struct Tls {
    files: TlsConfig,
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The certificate new handshakes get.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads `files`, for a listener speaking the ALPN protocols `alpn`
    /// (`h2` and `http/1.1` for the gateway; none for the TCP envelopes).
    pub fn load(files: &TlsConfig, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified(files)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error(files, e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        Ok(Self {
            files: files.clone(),
            current,
            acceptor: TlsAcceptor::from(config.clone()),
            config,
        })
    }

    /// The rustls configuration, for a listener that runs its own
    /// handshakes (QUIC); it presents the certificate [`Tls::reload`] swaps.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Reads the files again; new handshakes get what they hold. On error
    /// the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified(&self.files)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// The handshake on `io`, within `timeout`.
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::time::timeout(timeout, self.acceptor.accept(io))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }

    /// Reloads whenever the certificate or key file changes (written,
    /// replaced or renamed into place), for as long as `self` lives;
    /// changes within 200 ms are taken as one.
    pub fn watch(self: &Arc<Self>) -> Result<(), TlsError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let names = [self.files.cert.file_name(), self.files.key.file_name()]
            .map(|name| name.map(ToOwned::to_owned));
        // Only events about the two files: their directory may hold others
        // that change all the time (a log, data).
        let ours = move |event: &notify::Event| {
            !event.kind.is_access()
                && event.paths.iter().any(|path| {
                    names
                        .iter()
                        .flatten()
                        .any(|name| path.file_name() == Some(name.as_os_str()))
                })
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| ours(&event)) {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| error(&self.files, format!("cannot watch the files: {e}")))?;
        // The directories, not the files: a certificate is usually replaced
        // by renaming a new file over the old one.
        for dir in [parent(&self.files.cert), parent(&self.files.key)] {
            use notify::Watcher as _;
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| {
                    error(
                        &self.files,
                        format!("cannot watch `{}`: {e}", dir.display()),
                    )
                })?;
        }
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                let Some(tls) = tls.upgrade() else { return };
                tls.log_reload("a file changed");
            }
        });
        Ok(())
    }

    /// Reloads, and says how it went.
    pub fn log_reload(&self, why: &str) {
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded ({why})")
            }
            Err(e) => tracing::warn!("{e}; the certificate in use stays"),
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn error(files: &TlsConfig, reason: String) -> TlsError {
    TlsError {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason,
    }
}

/// The certificate chain and key of `files`, checked to belong together.
fn certified(files: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(files, format!("cannot read the certificate: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            files,
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| error(files, format!("cannot read the key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| error(files, format!("the key does not fit the certificate: {e}")))
}
