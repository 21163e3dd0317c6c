//! The identity providers the controller trusts for `OIDC` step-up: read from the API server's
//! own AuthenticationConfiguration, their keys fetched by OIDC discovery and cached. A token
//! signed by a key not in the cache fetches the keys again (a rotation at the identity
//! provider), at most once per [`REFETCH_INTERVAL`] per issuer, so forged `kid`s cannot make
//! the controller hammer the provider. I/O.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use stepup_core::verify::oidc::{self, CodeRedemption, Expect, Jwks, SignIn, TokenError, TrustedIssuer};

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
    #[error(
        "the plugin sent an authorization code, but this cluster's controller has no confidential client to redeem it with: update kubectl-stepup, or sign in again"
    )]
    NoConfidentialClient,
    #[error("the identity provider refused to redeem the sign-in's code ({0}): sign in again; nothing was issued")]
    CodeRefused(String),
    #[error(
        "the identity provider refused the cluster's client credentials ({0}): ask your platform team to check the confidential client's secret; nothing was issued"
    )]
    ClientRejected(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.label(),
            Refusal::Untrusted(_) => "untrusted_issuer",
            Refusal::Unavailable(_) => "idp_unavailable",
            Refusal::NotConfigured => "unsupported",
            Refusal::NoConfidentialClient => "bad_code",
            Refusal::CodeRefused(_) => "code_refused",
            Refusal::ClientRejected(_) => "client_rejected",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.reason(),
            Refusal::Untrusted(_) => "TokenIssuer",
            Refusal::Unavailable(_) => "IdentityProviderUnavailable",
            Refusal::NotConfigured => "UnsupportedMethod",
            Refusal::NoConfidentialClient => "SignInCodeMalformed",
            Refusal::CodeRefused(_) => "SignInCodeRefused",
            Refusal::ClientRejected(_) => "IdentityProviderClientRejected",
        }
    }
}

struct Provider {
    trusted: TrustedIssuer,
    http: stepup_http::Https,
    keys: tokio::sync::Mutex<Cache>,
    /// The last discovery document's endpoints (each key fetch discovers afresh), reused for
    /// [`KEYS_TTL`] by code redemptions.
    discovered: std::sync::Mutex<Option<(Instant, stepup_http::Endpoints)>>,
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
    confidential: Option<Confidential>,
}

/// A confidential client of one issuer: the plugin signs in with it and hands the code over;
/// the controller redeems the code with the secret, which never leaves the controller.
struct Confidential {
    /// Index into `providers`.
    provider: usize,
    client_id: String,
    secret: zeroize::Zeroizing<String>,
}

/// The confidential client as configured: its id (an audience of one issuer) and the file its
/// secret is mounted at (from a Secret).
#[derive(Clone, Debug)]
pub struct ConfidentialClient<'a> {
    pub client_id: &'a str,
    pub secret_file: &'a std::path::Path,
}

impl IdentityProviders {
    /// From the AuthenticationConfiguration file the API server is started with, and the
    /// client for terminals without a browser, which must be one of an issuer's audiences.
    pub fn from_file(
        path: &std::path::Path,
        device_client_id: Option<&str>,
        confidential: Option<ConfidentialClient<'_>>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the authentication configuration {}: {e}", path.display()))?;
        let issuers = oidc::issuers_from_config(&text)
            .map_err(|e| anyhow::anyhow!("authentication configuration {}: {e}", path.display()))?;
        let providers = issuers
            .into_iter()
            .map(|trusted| {
                let http = stepup_http::Https::new(trusted.certificate_authority.as_deref())
                    .map_err(|e| anyhow::anyhow!("issuer {}: {e}", trusted.issuer.url))?;
                Ok(Provider { trusted, http, keys: Default::default(), discovered: Default::default() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // A client people sign in with must be an audience the API server (and stepup) trusts.
        let issuer_of = |flag: &str, client: &str| {
            providers.iter().position(|p| p.trusted.issuer.audiences.iter().any(|a| a == client)).ok_or_else(|| {
                anyhow::anyhow!(
                    "{flag} {client:?} is not an audience of any issuer in {}: the API server and stepup would refuse its tokens",
                    path.display()
                )
            })
        };
        if let Some(device) = device_client_id {
            issuer_of("--oidc-device-client-id", device)?;
        }
        let confidential = match confidential {
            None => None,
            Some(c) => {
                let provider = issuer_of("--oidc-client-id", c.client_id)?;
                let secret = zeroize::Zeroizing::new(
                    std::fs::read_to_string(c.secret_file)
                        .map_err(|e| anyhow::anyhow!("reading the client secret {}: {e}", c.secret_file.display()))?,
                );
                let secret = zeroize::Zeroizing::new(secret.trim().to_owned());
                if secret.is_empty() {
                    anyhow::bail!("the client secret file {} is empty", c.secret_file.display());
                }
                Some(Confidential { provider, client_id: c.client_id.to_owned(), secret })
            }
        };
        Ok(Self { providers, device_client_id: device_client_id.map(str::to_owned), confidential })
    }

    /// The issuers as the plugin signs in at them: the first audience is its client.
    pub fn published(&self) -> Vec<stepup_core::decision::PublishedIdentityProvider> {
        self.providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let confidential = self.confidential.as_ref().filter(|c| c.provider == i);
                stepup_core::decision::PublishedIdentityProvider {
                    issuer: p.trusted.issuer.url.clone(),
                    client_id: confidential.map_or_else(
                        || p.trusted.issuer.audiences.first().cloned().unwrap_or_default(),
                        |c| c.client_id.clone(),
                    ),
                    confidential: confidential.is_some(),
                    device_client_id: self.device_client_id.clone().filter(|d| p.trusted.issuer.audiences.contains(d)),
                    certificate_authority: p.trusted.certificate_authority.clone(),
                }
            })
            .collect()
    }

    /// The trusted issuers' URLs.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.trusted.issuer.url.as_str())
    }

    /// Redeems an authorization code the plugin obtained with the confidential client (PKCE
    /// verifier and redirect as it sent them) at the issuer's token endpoint; returns the ID
    /// token, which [`Self::verify`] then judges like any other. A code redeems once: a second
    /// try (a replayed challenge) is refused by the identity provider.
    pub async fn redeem(&self, code: &CodeRedemption) -> Result<zeroize::Zeroizing<String>, Refusal> {
        let client = self.confidential.as_ref().ok_or(Refusal::NoConfidentialClient)?;
        let provider = &self.providers[client.provider];
        let url = &provider.trusted.issuer.url;
        let endpoints = provider.endpoints().await.map_err(Refusal::Unavailable)?;
        let token_endpoint =
            endpoints.token.ok_or_else(|| Refusal::Unavailable(format!("{url}: no https token_endpoint")))?;
        let answer = provider
            .http
            .post_form_as(
                &token_endpoint,
                Some((client.client_id.as_str(), client.secret.as_str())),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code.code),
                    ("redirect_uri", &code.redirect_uri),
                    ("code_verifier", &code.code_verifier),
                ],
                256 * 1024,
            )
            .await
            .map_err(Refusal::Unavailable)?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if let Some(refusal) = redemption_refused(answer.status, &body) {
            return Err(refusal);
        }
        let token = body.get("id_token").and_then(serde_json::Value::as_str).ok_or_else(|| {
            Refusal::CodeRefused("it answered without an ID token; the client needs the openid scope".into())
        })?;
        Ok(zeroize::Zeroizing::new(token.to_owned()))
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

    /// The issuer's endpoints: discovered within [`KEYS_TTL`], or now.
    async fn endpoints(&self) -> Result<stepup_http::Endpoints, String> {
        let cached = self.discovered.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match cached {
            Some((at, endpoints)) if at.elapsed() < KEYS_TTL => Ok(endpoints),
            _ => self.discover().await,
        }
    }

    async fn discover(&self) -> Result<stepup_http::Endpoints, String> {
        let endpoints =
            stepup_http::discover(&self.http, &self.trusted.issuer.url, self.trusted.discovery_url.as_deref()).await?;
        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }

    async fn fetch(&self) -> Result<Jwks, String> {
        let url = &self.trusted.issuer.url;
        let endpoints = self.discover().await?;
        let jwks_uri =
            endpoints.jwks.ok_or_else(|| format!("{url}: its discovery document names no https jwks_uri"))?;
        Jwks::parse(&self.http.get(&jwks_uri, oidc::MAX_JWKS_BYTES).await?).map_err(|e| format!("{jwks_uri}: {e}"))
    }
}

/// What a token endpoint's error answer means for a redemption (RFC 6749 5.2): the provider
/// down, the cluster's client refused (a wrong secret: the operator's to fix), or this code.
fn redemption_refused(status: hyper::StatusCode, body: &serde_json::Value) -> Option<Refusal> {
    if status.is_success() {
        return None;
    }
    if status.is_server_error() {
        return Some(Refusal::Unavailable(format!("HTTP {status}")));
    }
    let error = body.get("error").and_then(serde_json::Value::as_str);
    // By the error code: some providers answer a bad code with 401 too.
    Some(match error {
        Some("invalid_client" | "unauthorized_client") => Refusal::ClientRejected(said(body, status)),
        None if status == hyper::StatusCode::UNAUTHORIZED => Refusal::ClientRejected(said(body, status)),
        _ => Refusal::CodeRefused(said(body, status)),
    })
}

/// An OAuth error answer in a few words (`invalid_grant: Code not valid`), bounded: it is
/// the identity provider's text, shown to the person and written on the challenge.
fn said(body: &serde_json::Value, status: hyper::StatusCode) -> String {
    let text = |k: &str| body.get(k).and_then(serde_json::Value::as_str);
    let words = match (text("error"), text("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_owned(),
        _ => format!("HTTP {status}"),
    };
    words.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://idp.example/realms/stepup
    audiences: [kubectl-stepup, kubectl-stepup-confidential]
  claimMappings:
    username: {claim: preferred_username, prefix: ""}
"#;

    fn files(secret: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("stepup-oidc-{}-{}", std::process::id(), secret.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("authn.yaml"), CONFIG).unwrap();
        std::fs::write(dir.join("secret"), secret).unwrap();
        (dir.join("authn.yaml"), dir.join("secret"))
    }

    #[test]
    fn a_confidential_client_is_published_without_its_secret_and_must_be_trusted() {
        let (config, secret) = files("s3cret-value\n");
        let client = |id| Some(ConfidentialClient { client_id: id, secret_file: &secret });
        let providers = IdentityProviders::from_file(&config, None, client("kubectl-stepup-confidential")).unwrap();
        let published = providers.published();
        assert_eq!((published[0].client_id.as_str(), published[0].confidential), ("kubectl-stepup-confidential", true));
        assert!(!serde_json::to_string(&published).unwrap().contains("s3cret"), "never published");
        let public = IdentityProviders::from_file(&config, None, None).unwrap().published();
        assert_eq!((public[0].client_id.as_str(), public[0].confidential), ("kubectl-stepup", false));
        // A client the API server does not trust would sign people in with tokens nobody accepts.
        let err = IdentityProviders::from_file(&config, None, client("elsewhere")).err().unwrap().to_string();
        assert!(err.contains("--oidc-client-id \"elsewhere\" is not an audience"), "{err}");
        let (config, empty) = files("  \n");
        let err = IdentityProviders::from_file(
            &config,
            None,
            Some(ConfidentialClient { client_id: "kubectl-stepup-confidential", secret_file: &empty }),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn a_refused_redemption_says_whose_to_fix() {
        use hyper::StatusCode;
        let json = |e: &str| serde_json::json!({"error": e, "error_description": "why"});
        assert!(matches!(
            redemption_refused(StatusCode::BAD_REQUEST, &json("invalid_grant")),
            Some(Refusal::CodeRefused(w)) if w == "invalid_grant: why"
        ));
        assert!(matches!(
            redemption_refused(StatusCode::UNAUTHORIZED, &json("invalid_grant")),
            Some(Refusal::CodeRefused(_))
        ));
        assert!(matches!(
            redemption_refused(StatusCode::UNAUTHORIZED, &serde_json::Value::Null),
            Some(Refusal::ClientRejected(_))
        ));
        for (status, error) in
            [(StatusCode::UNAUTHORIZED, "invalid_client"), (StatusCode::BAD_REQUEST, "unauthorized_client")]
        {
            let refused = redemption_refused(status, &json(error)).unwrap();
            assert!(matches!(refused, Refusal::ClientRejected(_)), "{refused:?}");
            assert!(refused.to_string().contains("check the confidential client's secret"), "{refused}");
        }
        assert!(matches!(redemption_refused(StatusCode::BAD_GATEWAY, &json("x")), Some(Refusal::Unavailable(_))));
        assert!(redemption_refused(StatusCode::OK, &serde_json::Value::Null).is_none());
    }

    #[test]
    fn the_providers_refusal_is_said_in_a_few_words() {
        let body = serde_json::json!({"error": "invalid_grant", "error_description": "Code not valid\n\u{1b}[31m"});
        assert_eq!(said(&body, hyper::StatusCode::BAD_REQUEST), "invalid_grant: Code not valid[31m");
        let long = serde_json::json!({"error": "x".repeat(5000)});
        assert_eq!(said(&long, hyper::StatusCode::BAD_REQUEST).len(), 200);
        assert_eq!(said(&serde_json::Value::Null, hyper::StatusCode::UNAUTHORIZED), "HTTP 401 Unauthorized");
    }
}
