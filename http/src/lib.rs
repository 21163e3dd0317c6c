//! An HTTPS client for talking to identity providers: the controller fetches discovery
//! documents and keys, the plugin discovery and the token endpoint. HTTPS only, bounded bodies,
//! a timeout per request, the CA given or the system's roots. I/O.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// How long one request may take, answer included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Https {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What came back: the status and the body (at most the limit asked for).
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

impl Https {
    /// A client trusting `ca_pem`, or the system's roots when there is none.
    pub fn new(ca_pem: Option<&str>) -> anyhow::Result<Self> {
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
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// GET `url`; anything but a 2xx is an error naming the status.
    pub async fn get(&self, url: &str, limit: usize) -> Result<Bytes, String> {
        let answer = self.send(hyper::Request::get(url), Bytes::new(), limit).await?;
        if !answer.status.is_success() {
            return Err(format!("{url}: HTTP {}", answer.status));
        }
        Ok(answer.body)
    }

    /// POST `form` (`application/x-www-form-urlencoded`) to `url`, whatever the status.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)], limit: usize) -> Result<Answer, String> {
        self.post_form_as(url, None, form, limit).await
    }

    /// [`Self::post_form`] authenticated as an OAuth client (`client_secret_basic`, RFC 6749
    /// 2.3.1: id and secret form-encoded, then Basic).
    pub async fn post_form_as(
        &self,
        url: &str,
        client: Option<(&str, &str)>,
        form: &[(&str, &str)],
        limit: usize,
    ) -> Result<Answer, String> {
        use base64::Engine;
        let body: String =
            form.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
        let mut request =
            hyper::Request::post(url).header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = client {
            let pair = zeroize::Zeroizing::new(format!("{}:{}", encode(id), encode(secret)));
            let basic = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            request = request.header(hyper::header::AUTHORIZATION, format!("Basic {}", basic.as_str()));
        }
        self.send(request, Bytes::from(body), limit).await
    }

    async fn send(&self, request: hyper::http::request::Builder, body: Bytes, limit: usize) -> Result<Answer, String> {
        let uri: hyper::Uri = request.uri_ref().cloned().unwrap_or_default();
        let request = request
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("{uri}: {e}"))?;
        let fetch = async {
            let response =
                self.client.request(request).await.map_err(|e| format!("{uri}: {}", stepup_core::error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("{uri}: {e}"))?;
            Ok(Answer { status, body })
        };
        tokio::time::timeout(TIMEOUT, fetch).await.map_err(|_| format!("{uri}: no answer within {TIMEOUT:?}"))?
    }
}

/// The largest discovery document read.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// An OpenID provider's endpoints, from its discovery document (each https, or absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: Option<String>,
    pub token: Option<String>,
    pub jwks: Option<String>,
    /// RFC 8628's device authorization endpoint.
    pub device_authorization: Option<String>,
}

/// Reads `issuer`'s discovery document (at `discovery_url`, or under the issuer), which must
/// name that very issuer (OpenID Connect Discovery 1.0, 4.3).
pub async fn discover(http: &Https, issuer: &str, discovery_url: Option<&str>) -> Result<Endpoints, String> {
    let url = discovery_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')));
    let doc: serde_json::Value = serde_json::from_slice(&http.get(&url, MAX_DISCOVERY_BYTES).await?)
        .map_err(|e| format!("{url}: not JSON: {e}"))?;
    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err(format!("{url} is the discovery document of another issuer"));
    }
    let https =
        |key: &str| doc.get(key).and_then(|v| v.as_str()).filter(|u| u.starts_with("https://")).map(str::to_owned);
    Ok(Endpoints {
        authorization: https("authorization_endpoint"),
        token: https("token_endpoint"),
        jwks: https("jwks_uri"),
        device_authorization: https("device_authorization_endpoint"),
    })
}

/// Percent-encodes `text` for a query string or form (RFC 3986 unreserved characters kept).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of `key` in a query string, percent-decoded.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k)? == key).then(|| decode(v)).flatten()
    })
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip_and_garbage_is_no_value() {
        let text = "a b&c=d/é?";
        let query = format!("x=1&state={}&code=abc", encode(text));
        assert_eq!(query_value(&query, "state").as_deref(), Some(text));
        assert_eq!(query_value(&query, "code").as_deref(), Some("abc"));
        assert_eq!(query_value(&query, "nope"), None);
        assert_eq!(query_value("state=%zz", "state"), None);
        assert_eq!(query_value("state=%f", "state"), None);
        assert_eq!(
            query_value("error=access_denied&error_description=a+b", "error_description").as_deref(),
            Some("a b")
        );
    }
}
