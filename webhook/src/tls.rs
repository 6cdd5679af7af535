//! Serving certificate: loads the PEM files into a rustls config (TLS 1.2 and 1.3 only, ring) and
//! swaps in a new config when the files change, so that cert-manager rotations need no restart.
//!
//! The files are polled and compared by content, which also catches the symlink swap of a mounted
//! Secret. A swap only affects new handshakes: open connections keep their session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

/// Why the serving certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: bad PEM certificate: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The PEM bytes a config was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl PemPair {
    pub fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        Ok(PemPair {
            cert: read(cert)?,
            key: read(key)?,
        })
    }
}

/// Builds the server config: TLS 1.3 and 1.2, ring, ALPN h2 and http/1.1, no client auth.
pub fn server_config(pem: &PemPair, cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|source| TlsError::BadKey {
        path: key_path.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the files once; the returned config is what the server serves and what [`watch`] updates.
pub fn load(cert: &Path, key: &Path) -> Result<(RustlsConfig, PemPair), TlsError> {
    let pem = PemPair::read(cert, key)?;
    let config = server_config(&pem, cert, key)?;
    Ok((RustlsConfig::from_config(Arc::new(config)), pem))
}

/// Polls the files every `interval` and reloads `rustls` when their content changes. A pair that
/// does not load (e.g. cert written, key not yet) is logged, counted, and retried next time; the
/// old certificate keeps serving meanwhile.
pub async fn watch(
    rustls: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    mut current: PemPair,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failed: Option<PemPair> = None;
    loop {
        tick.tick().await;
        let pem = match PemPair::read(&cert, &key) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable; keeping the current certificate");
                continue;
            }
        };
        if pem == current || last_failed.as_ref() == Some(&pem) {
            continue;
        }
        match server_config(&pem, &cert, &key) {
            Ok(c) => {
                rustls.reload_from_config(Arc::new(c));
                metrics.tls_reload(true);
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                current = pem;
                last_failed = None;
            }
            Err(e) => {
                metrics.tls_reload(false);
                tracing::warn!(error = %e, "new TLS files do not load; keeping the current certificate");
                last_failed = Some(pem);
            }
        }
    }
}
