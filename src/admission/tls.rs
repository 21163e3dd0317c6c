//! The serving certificate: loaded from PEM files and reloaded when they change, without a
//! restart and without dropping connections (established sessions keep their certificate;
//! new handshakes get the new one).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use crate::error::TlsError;

/// A certificate resolver that always hands out the latest good certificate.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Hash of the file contents behind `current`, and of the last contents that failed.
    fingerprints: Mutex<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ReloadingCertificate {
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (key, fingerprint) = read_pair(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(key),
            fingerprints: Mutex::new((fingerprint, None)),
        }))
    }

    /// Re-reads the files; swaps in the new certificate when they changed and are valid.
    /// `Ok(true)` when a new certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let fingerprint = fingerprint(&cert_pem, &key_pem);
        let mut fps = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        if fps.0 == fingerprint || fps.1.as_ref() == Some(&fingerprint) {
            return Ok(false);
        }
        match certified_key(&cert_pem, &key_pem, &self.cert_path, &self.key_path) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                *fps = (fingerprint, None);
                Ok(true)
            }
            Err(e) => {
                // Remember the failure so a half-written pair is reported once, and retried
                // as soon as either file changes again.
                fps.1 = Some(fingerprint);
                Err(e)
            }
        }
    }

    /// Polls the files every `interval` until `stop` fires. Polling, rather than inotify,
    /// follows the symlink swap Kubernetes uses to update mounted Secrets.
    pub fn watch(self: Arc<Self>, interval: Duration, metrics: Metrics, stop: CancellationToken) {
        metrics.certificate_expiry.set(self.expiry_unix());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.reload_if_changed() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.certificate_reloads.with_label_values(&["success"]).inc();
                        metrics.certificate_expiry.set(self.expiry_unix());
                        tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        metrics.certificate_reloads.with_label_values(&["failure"]).inc();
                        tracing::error!(error = %e, "serving certificate not reloaded; keeping the previous one");
                    }
                }
            }
        });
    }

    /// Expiry of the leaf being served, Unix seconds (0 when unreadable).
    pub fn expiry_unix(&self) -> i64 {
        let chain = self.current_chain();
        let Some(leaf) = chain.first() else { return 0 };
        x509_parser::parse_x509_certificate(leaf).map(|(_, c)| c.validity().not_after.timestamp()).unwrap_or(0)
    }

    /// The certificate chain being served now.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2 via ALPN; no client certificate asked for.
pub fn server_config(resolver: Arc<ReloadingCertificate>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Like [`server_config`], but every client must present a certificate signed by one of the
/// CAs in `client_ca_pem` (the API server's, from its AdmissionConfiguration kubeconfig):
/// anyone else fails the handshake before a byte of HTTP is read.
pub fn mutual_server_config(
    resolver: Arc<ReloadingCertificate>,
    client_ca_pem: &[u8],
    path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem) {
        let cert = cert.map_err(|e| TlsError::Pem { path: path.to_owned(), message: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsError::Pem { path: path.to_owned(), message: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), message: e.to_string() })?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the client CA file for [`mutual_server_config`].
pub fn read_client_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    read(path)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(cert_pem);
    h.update([0u8]);
    h.update(key_pem);
    h.finalize().to_vec()
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let key = certified_key(&cert_pem, &key_pem, cert_path, key_path)?;
    Ok((key, fingerprint(&cert_pem, &key_pem)))
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: cert_path.to_owned(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem { path: key_path.to_owned(), message: e.to_string() })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}
