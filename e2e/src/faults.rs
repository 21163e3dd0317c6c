//! Fault injection for the e2e scenarios: a TCP link between a stepup process and the API
//! server that the test can cut or stall, a webhook process of the test's own that talks to
//! the API server through it, and a client that sends that webhook AdmissionReviews directly
//! (as the API server would), so a scenario can ask it for decisions while its link is down.

use std::{net::SocketAddr, path::PathBuf, process::Child, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{Env, http_get};

/// What the link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Pass,
    /// Connections stay open and nothing flows: a stall, with no error for anyone to see.
    Stall,
    /// Every connection is closed and new ones are closed at once: a partition.
    Cut,
}

/// A kubeconfig (saved as `name`) of identity `who` that reaches the API server through `link`.
pub fn kubeconfig_via(env: &Env, who: &str, link: &FaultyLink, name: &str) -> PathBuf {
    let dir = PathBuf::from(env.var("STEPUP_E2E_DIR"));
    let kubeconfig = std::fs::read_to_string(env.kubeconfig(who)).unwrap();
    let server = env.var("KUBE_APISERVER_URL");
    let routed = kubeconfig.replace(server, &format!("https://{}", link.addr));
    let path = dir.join(format!("kubeconfig/{name}.yaml"));
    std::fs::write(&path, routed).unwrap();
    path
}

/// A TCP proxy to `upstream` whose [`Link`] the test sets.
pub struct FaultyLink {
    pub addr: SocketAddr,
    mode: watch::Sender<Link>,
}

impl FaultyLink {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Link::Pass);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                if *rx.borrow() == Link::Cut {
                    drop(down);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, rx.clone()), pipe(ur, dw, rx));
                });
            }
        });
        Self { addr, mode }
    }

    pub fn set(&self, link: Link) {
        let _ = self.mode.send(link);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = mode.wait_for(|m| *m == Link::Cut) => return,
        };
        // Hold the bytes while stalled; drop the connection when cut.
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Link::Pass => break,
                Link::Cut => return,
                Link::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A `stepup webhook` of the scenario's own, reaching the API server through `link`, on its
/// own ports, with the e2e certificate and key. Killed on drop.
pub struct WebhookProcess {
    child: Child,
    pub url: String,
    pub admin_url: String,
    pub ca: PathBuf,
}

impl WebhookProcess {
    pub async fn spawn(env: &Env, name: &str, link: &FaultyLink, port: u16, extra: &[&str]) -> Self {
        let dir = PathBuf::from(env.var("STEPUP_E2E_DIR"));
        let kubeconfig_path = kubeconfig_via(env, "stepup-webhook", link, name);
        let pki = dir.join("stepup-pki");
        let log = std::fs::File::create(format!("{}/stepup-webhook-{name}.log", env.var("STEPUP_LOGS_DIR"))).unwrap();
        let admin = port + 1;
        let child = std::process::Command::new(env.var("STEPUP_BIN"))
            .arg("webhook")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--tls-cert-file")
            .arg(pki.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(pki.join("tls.key"))
            .arg("--key-file")
            .arg(env.var("STEPUP_KEY_FILE"))
            .args(["--namespace", "stepup-system", "--break-glass-group", "stepup:break-glass"])
            .args(["--admin-group", "stepup:admins,system:masters", "--drain-period", "0s", "--event-interval", "1s"])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig_path)
            .env("POD_NAME", format!("e2e-{name}"))
            .envs(env.sign_in_env())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the webhook starts");
        let this = Self {
            child,
            url: format!("https://127.0.0.1:{port}/validate"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            ca: ca_file(env).await,
        };
        crate::eventually(Duration::from_secs(30), || async { this.ready().await.map(|_| ()) })
            .await
            .expect("the scenario's webhook becomes ready");
        this
    }

    /// `Ok` when `/readyz` says ready; the reason otherwise.
    pub async fn ready(&self) -> Result<String> {
        http_get(&format!("{}/readyz", self.admin_url)).await
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.admin_url)).await.unwrap_or_default()
    }

    /// Sends one AdmissionReview, as the API server would; returns the answer's `response`.
    pub async fn review(&self, review: &Value) -> Result<Value> {
        post_review(&self.url, &self.ca, review).await
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CA that signs the webhook's serving certificate (from the Secret the controller manages).
async fn ca_file(env: &Env) -> PathBuf {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(env.client("admin").await, "stepup-system");
    let secret = api.get("stepup-webhook-tls").await.expect("the webhook's certificate");
    let ca = secret.data.unwrap()["ca.crt"].0.clone();
    let path = PathBuf::from(env.var("STEPUP_E2E_DIR")).join("stepup-pki/webhook-ca.crt");
    std::fs::write(&path, ca).unwrap();
    path
}

/// POSTs `review` to `url` over TLS, trusting only `ca`.
pub async fn post_review(url: &str, ca: &std::path::Path, review: &Value) -> Result<Value> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let rest = url.strip_prefix("https://").context("https URL")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let tcp = TcpStream::connect(host).await?;
    let ip = host.split(':').next().unwrap_or("127.0.0.1").to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(ip)?, tcp).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = Request::post(path)
        .header("content-type", "application/json")
        .header("host", host)
        .body(Full::new(Bytes::from(review.to_string())))?;
    let response = tokio::time::timeout(Duration::from_secs(15), sender.send_request(request)).await??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let value: Value =
        serde_json::from_slice(&body).with_context(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))?;
    Ok(value.get("response").cloned().unwrap_or(value))
}
