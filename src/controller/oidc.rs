//! The identity providers the controller trusts for `OIDC` step-up: read from the API server's
//! own AuthenticationConfiguration, their keys fetched by OIDC discovery and cached. A token
//! signed by a key not in the cache fetches the keys again (a rotation at the identity
//! provider), at most once per [`REFETCH_INTERVAL`] per issuer, so forged `kid`s cannot make
//! the controller hammer the provider. I/O.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use stepup_core::verify::oidc::{self, Expect, Jwks, SignIn, TokenError, TrustedIssuer};

/// How long fetched keys are used before they are fetched again.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);

/// The least time between two fetches of one issuer's keys.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

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

struct Provider {
    trusted: TrustedIssuer,
    http: crate::http::Https,
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
    /// The device-grant client (one of an issuer's audiences), published for the plugin.
    device_client_id: Option<String>,
}

impl IdentityProviders {
    /// From the AuthenticationConfiguration file the API server is started with, and the
    /// client for terminals without a browser, which must be one of an issuer's audiences.
    pub fn from_file(path: &std::path::Path, device_client_id: Option<&str>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the authentication configuration {}: {e}", path.display()))?;
        let issuers = oidc::issuers_from_config(&text)
            .map_err(|e| anyhow::anyhow!("authentication configuration {}: {e}", path.display()))?;
        let providers = issuers
            .into_iter()
            .map(|trusted| {
                let http = crate::http::Https::new(trusted.certificate_authority.as_deref())
                    .map_err(|e| anyhow::anyhow!("issuer {}: {e}", trusted.issuer.url))?;
                Ok(Provider { trusted, http, keys: Default::default() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(device) = device_client_id
            && !providers.iter().any(|p| p.trusted.issuer.audiences.iter().any(|a| a == device))
        {
            anyhow::bail!(
                "--oidc-device-client-id {device:?} is not an audience of any issuer in {}: the API server and stepup would refuse its tokens",
                path.display()
            );
        }
        Ok(Self { providers, device_client_id: device_client_id.map(str::to_owned) })
    }

    /// The issuers as the plugin signs in at them: the first audience is its client.
    pub fn published(&self) -> Vec<stepup_core::decision::PublishedIdentityProvider> {
        self.providers
            .iter()
            .map(|p| stepup_core::decision::PublishedIdentityProvider {
                issuer: p.trusted.issuer.url.clone(),
                client_id: p.trusted.issuer.audiences.first().cloned().unwrap_or_default(),
                device_client_id: self.device_client_id.clone().filter(|d| p.trusted.issuer.audiences.contains(d)),
                certificate_authority: p.trusted.certificate_authority.clone(),
            })
            .collect()
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
    /// fetched. A key not seen yet (a rotation) fetches again, but never sooner than
    /// [`REFETCH_INTERVAL`] after the last fetch: such a request waits for it (once) instead.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<Jwks>, Refusal> {
        let mut waited = false;
        loop {
            let mut cache = self.keys.lock().await;
            let age = cache.fetched.map(|at| at.elapsed());
            let fresh = age.is_some_and(|a| a < KEYS_TTL);
            if let Some(jwks) = &cache.jwks
                && fresh
                && kid.is_none_or(|k| jwks.has_kid(k))
            {
                return Ok(jwks.clone());
            }
            if let (Some(age), Some(jwks)) = (age.filter(|a| *a < REFETCH_INTERVAL), &cache.jwks) {
                if waited {
                    return Ok(jwks.clone());
                }
                drop(cache);
                waited = true;
                tokio::time::sleep(REFETCH_INTERVAL.saturating_sub(age)).await;
                continue;
            }
            return match self.fetch().await {
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
            };
        }
    }

    async fn fetch(&self) -> Result<Jwks, String> {
        let url = &self.trusted.issuer.url;
        let endpoints = crate::http::discover(&self.http, url, self.trusted.discovery_url.as_deref()).await?;
        let jwks_uri =
            endpoints.jwks.ok_or_else(|| format!("{url}: its discovery document names no https jwks_uri"))?;
        Jwks::parse(&self.http.get(&jwks_uri, oidc::MAX_JWKS_BYTES).await?).map_err(|e| format!("{jwks_uri}: {e}"))
    }
}
