//! A real webhook server on a free port, with certificates made for the test, and a client
//! that holds its own TLS connections so tests can say which connection a request used.

#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1};
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use kube_stepup::{
    admission::{self, Caches, Readiness, Settings, Webhook, lookup::GrantSource, tls::ReloadingCertificate},
    metrics::Metrics,
    pki::{CertificateAuthority, ServingCertificate},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::Value;
use stepup_core::{
    api::{StepUpGrant, StepUpPolicy},
    decision::DecisionConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

pub const CONTROLLER: &str = "system:serviceaccount:stepup-system:stepup-controller";

pub fn decision_config() -> DecisionConfig {
    DecisionConfig {
        controller_users: vec![CONTROLLER.into()],
        admin_groups: vec!["stepup:admins".into()],
        break_glass_groups: vec!["stepup:break-glass".into()],
        exempt_namespaces: vec!["kube-system".into(), "stepup-system".into()],
        ..Default::default()
    }
}

pub fn new_ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::generate(name, Timestamp::now(), SignedDuration::from_hours(24)).expect("CA")
}

pub fn serving(ca: &CertificateAuthority) -> ServingCertificate {
    ca.issue(&["localhost".into(), "127.0.0.1".into()], Timestamp::now(), SignedDuration::from_hours(1)).expect("leaf")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub caches: Arc<Caches>,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub certificate: Arc<ReloadingCertificate>,
    pub ca: CertificateAuthority,
    pub dir: tempfile::TempDir,
    pub stop: CancellationToken,
    pub served: tokio::task::JoinHandle<()>,
}

pub struct Options {
    pub settings: Settings,
    pub lookup: Option<Arc<dyn GrantSource>>,
    /// Mark every cache synced at start, as a running webhook would be.
    pub synced: bool,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<CertificateAuthority>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            settings: Settings { decision: decision_config(), ..Settings::default() },
            lookup: None,
            synced: true,
            client_ca: None,
        }
    }
}

impl TestServer {
    pub async fn start(policies: Vec<StepUpPolicy>, grants: Vec<StepUpGrant>) -> Self {
        Self::start_with(policies, grants, Options::default()).await
    }

    pub async fn start_with(policies: Vec<StepUpPolicy>, grants: Vec<StepUpGrant>, options: Options) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("stepup-test-ca");
        let leaf = serving(&ca);
        std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
        let certificate =
            ReloadingCertificate::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).expect("certificate");

        let caches = Caches::new(vec![]);
        assert!(caches.replace_policies(policies).is_empty(), "test policies compile");
        caches.replace_grants(grants);
        if options.synced {
            for kind in admission::CacheKind::ALL {
                caches.mark_synced(kind);
            }
        }
        let metrics = Metrics::webhook();
        let readiness = Arc::new(Readiness::default());
        let state = Arc::new(Webhook {
            caches: caches.clone(),
            bodies: admission::BodyBudget::new(options.settings.max_body_bytes_in_flight),
            settings: options.settings,
            metrics: metrics.clone(),
            lookup: options.lookup,
            events: None,
            readiness: readiness.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tls = match &options.client_ca {
            Some(ca) => admission::tls::mutual_server_config(
                certificate.clone(),
                ca.cert_pem.as_bytes(),
                std::path::Path::new("client-ca.crt"),
            )
            .expect("client CA"),
            None => admission::tls::server_config(certificate.clone()),
        };
        let served = tokio::spawn(admission::serve_tls(
            listener,
            tls,
            admission::router(state.clone()),
            stop.clone(),
            Duration::from_secs(5),
            admission::ConnectionLimits::default(),
        ));
        tokio::spawn({
            let app = admission::admin_router(state);
            let stop = stop.clone();
            async move {
                let _ = axum::serve(admin, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            }
        });
        readiness.set_listening();
        Self { addr, admin_addr, caches, metrics, readiness, certificate, ca, dir, stop, served }
    }

    /// Writes a new certificate pair (from `ca`) over the served files and reloads.
    pub fn rotate(&self, ca: &CertificateAuthority) -> ServingCertificate {
        let leaf = serving(ca);
        std::fs::write(self.path("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(self.path("tls.key"), &leaf.key_pem).unwrap();
        leaf
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub async fn connect(&self) -> Connection {
        Connection::open(self.addr, &[&self.ca]).await
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let tcp = TcpStream::connect(self.admin_addr).await.unwrap();
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of a metric sample line starting with `prefix`, if present.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// One HTTP/1.1 keep-alive connection over TLS.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// The end-entity certificate the server presented in this connection's handshake.
    pub server_cert: CertificateDer<'static>,
}

pub fn client_config(cas: &[&CertificateAuthority], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_with(cas, alpn, None)
}

/// A client trusting `cas`, presenting `identity` (certificate and key PEM) when given.
pub fn client_config_with(
    cas: &[&CertificateAuthority],
    alpn: &[&[u8]],
    identity: Option<&ServingCertificate>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()];
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

impl Connection {
    pub async fn open(addr: SocketAddr, cas: &[&CertificateAuthority]) -> Self {
        Self::try_open(addr, cas, None).await.expect("TLS handshake")
    }

    /// Opens a connection presenting `identity`; `Err` when the handshake (or the first
    /// exchange, where TLS 1.3 reports a refused client certificate) fails.
    pub async fn try_open(
        addr: SocketAddr,
        cas: &[&CertificateAuthority],
        identity: Option<&ServingCertificate>,
    ) -> Result<Self, String> {
        let connector = TlsConnector::from(client_config_with(cas, &[b"http/1.1"], identity));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls =
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| e.to_string())?;
        let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { sender, server_cert })
    }

    /// Like [`Self::post`], but a failure to get a response is an `Err` (the connection was
    /// refused or closed), not a panic.
    pub async fn try_post(&mut self, path: &str, body: impl Into<Bytes>) -> Result<(StatusCode, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes()))
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        self.sender.ready().await.expect("connection still open");
        let req = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("response");
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Posts an AdmissionReview and returns its `response`.
    pub async fn review(&mut self, review: &Value) -> Value {
        let (status, body) = self.post("/validate?timeout=10s", review.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let parsed: Value = serde_json::from_slice(&body).expect("JSON response");
        assert_eq!(parsed["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(parsed["kind"], "AdmissionReview");
        parsed["response"].clone()
    }

    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}
