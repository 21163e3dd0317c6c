//! The identity providers the controller trusts for `OIDC` step-up: read from the API server's
//! own AuthenticationConfiguration, their keys fetched by OIDC discovery and cached. A token
//! signed by a key not in the cache fetches the keys again (a rotation at the identity
//! provider), at most once per [`REFETCH_INTERVAL`] per issuer, so forged `kid`s cannot make
//! the controller hammer the provider. I/O.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::Value;
use stepup_core::verify::oidc::{self, Expect, Jwks, SignIn, TokenError, TrustedIssuer};

/// How long fetched keys are used before they are fetched again.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);

/// The least time between two fetches of one issuer's keys.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long one fetch (discovery or keys) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// Why no sign-in was verified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the ID token was issued by {0:?}, which the cluster does not trust for step-up")]
    Untrusted(String),
    #[error("the identity provider's keys could not be fetched ({0}): try again shortly; nothing was issued")]
    Unavailable(String),
    #[error("this cluster's stepup controller trusts no identity provider (no --oidc-authentication-config)")]
    NotConfigured,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.label(),
            Refusal::Untrusted(_) => "untrusted_issuer",
            Refusal::Unavailable(_) => "idp_unavailable",
            Refusal::NotConfigured => "unsupported",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.reason(),
            Refusal::Untrusted(_) => "TokenIssuer",
            Refusal::Unavailable(_) => "IdentityProviderUnavailable",
            Refusal::NotConfigured => "UnsupportedMethod",
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

struct Provider {
    trusted: TrustedIssuer,
    http: HttpClient,
    keys: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    jwks: Option<Arc<Jwks>>,
    fetched: Option<Instant>,
}

/// The trusted issuers, each with its HTTP client and key cache.
pub struct IdentityProviders {
    providers: Vec<Provider>,
}

impl IdentityProviders {
    /// From the AuthenticationConfiguration file the API server is started with.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the authentication configuration {}: {e}", path.display()))?;
        let issuers = oidc::issuers_from_config(&text)
            .map_err(|e| anyhow::anyhow!("authentication configuration {}: {e}", path.display()))?;
        let providers = issuers
            .into_iter()
            .map(|trusted| {
                let http = http_client(trusted.certificate_authority.as_deref())
                    .map_err(|e| anyhow::anyhow!("issuer {}: {e}", trusted.issuer.url))?;
                Ok(Provider { trusted, http, keys: Default::default() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { providers })
    }

    /// The trusted issuers' URLs.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.trusted.issuer.url.as_str())
    }

    /// Verifies `token` with the keys of the issuer it names (fetched again once if it names
    /// a key not seen yet).
    pub async fn verify(&self, token: &str, expect: &Expect<'_>) -> Result<SignIn, Refusal> {
        let iss = oidc::claimed_issuer(token).ok_or(TokenError::Malformed)?;
        let provider = self.providers.iter().find(|p| p.trusted.issuer.url == iss).ok_or(Refusal::Untrusted(iss))?;
        let kid = oidc::claimed_kid(token);
        let keys = provider.keys(kid.as_deref()).await?;
        Ok(oidc::verify(token, &provider.trusted.issuer, &keys, expect)?)
    }
}

impl Provider {
    /// The cached keys if they name `kid` (or no kid is asked for) and are fresh; otherwise
    /// fetched, unless the last fetch was less than [`REFETCH_INTERVAL`] ago.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<Jwks>, Refusal> {
        let mut cache = self.keys.lock().await;
        let fresh = cache.fetched.is_some_and(|at| at.elapsed() < KEYS_TTL);
        let recent = cache.fetched.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL);
        if let Some(jwks) = &cache.jwks
            && ((fresh && kid.is_none_or(|k| jwks.has_kid(k))) || recent)
        {
            return Ok(jwks.clone());
        }
        match self.fetch().await {
            Ok(jwks) => {
                let jwks = Arc::new(jwks);
                tracing::info!(issuer = %self.trusted.issuer.url, keys = jwks.len(), "fetched the identity provider's keys");
                *cache = Cache { jwks: Some(jwks.clone()), fetched: Some(Instant::now()) };
                Ok(jwks)
            }
            Err(why) => {
                tracing::warn!(issuer = %self.trusted.issuer.url, %why, "cannot fetch the identity provider's keys");
                // Keys fetched before still verify what they signed.
                cache.jwks.clone().filter(|_| fresh).ok_or(Refusal::Unavailable(why))
            }
        }
    }

    async fn fetch(&self) -> Result<Jwks, String> {
        let url = &self.trusted.issuer.url;
        let discovery_url = self
            .trusted
            .discovery_url
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/openid-configuration", url.trim_end_matches('/')));
        let discovery: Value = serde_json::from_slice(&self.get(&discovery_url, MAX_DISCOVERY_BYTES).await?)
            .map_err(|e| format!("{discovery_url}: not JSON: {e}"))?;
        // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it is for.
        if discovery.get("issuer").and_then(Value::as_str) != Some(url.as_str()) {
            return Err(format!("{discovery_url} is the discovery document of another issuer"));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://"))
            .ok_or_else(|| format!("{discovery_url} names no https jwks_uri"))?;
        Jwks::parse(&self.get(jwks_uri, oidc::MAX_JWKS_BYTES).await?).map_err(|e| format!("{jwks_uri}: {e}"))
    }

    async fn get(&self, url: &str, limit: usize) -> Result<Bytes, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let fetch = async {
            let response = self.http.request(request).await.map_err(|e| format!("{url}: {}", error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("{url}: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// An HTTPS-only client trusting `ca_pem`, or the system's roots when there is none.
fn http_client(ca_pem: Option<&str>) -> anyhow::Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.map_err(|e| anyhow::anyhow!("certificateAuthority: {e}"))?)?;
            }
            if roots.is_empty() {
                anyhow::bail!("certificateAuthority holds no certificate");
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder.with_provider_and_native_roots(provider)?,
    };
    let connector = builder.https_only().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
