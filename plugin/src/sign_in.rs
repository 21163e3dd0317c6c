//! Signing in at the identity provider for one challenge (`OIDC` step-up), as kubelogin does:
//! authorization code with PKCE (RFC 7636) on a loopback redirect (RFC 8252), the browser
//! opened on the provider's own login page, asking for the policy's assurance in RFC 9470 terms
//! (`acr_values`, `max_age`) and for the challenge's nonce. No client secret here: with a public
//! client the plugin redeems the code and seals the ID token into the challenge; with the
//! cluster's confidential client it seals the code and its PKCE verifier, and the controller
//! redeems them with the secret only it holds. Neither is ever printed. I/O.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::error::{Error, Result};
use stepup_core::{decision::PublishedIdentityProvider, verify::oidc::CodeRedemption};
use stepup_http::{self as http, Https, encode, query_value};

/// What the policy asks of the sign-in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assurance {
    /// Acceptable `acr` values, most preferred first.
    pub acr_values: Vec<String>,
    /// How recent the authentication must be (`max_age`, seconds).
    pub max_age: Option<Duration>,
}

/// How the person is sent to the login page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Browser {
    /// Open the system's browser (and print the address too).
    Open,
    /// Only print the address (a terminal without a browser, or a test that drives the pages).
    Print,
    /// The device authorization grant (RFC 8628): a code to enter on any device with a browser,
    /// at the client the cluster publishes for it (which always demands the second factor).
    Device,
}

fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn unavailable(idp: &PublishedIdentityProvider, why: String) -> Error {
    Error::other(
        format!("cannot reach the identity provider {}: {why}", idp.issuer),
        "Check your network and VPN; nothing was asked of the cluster. Try again when the identity provider answers.",
    )
}

/// What a sign-in yields for the challenge's sealed response.
pub enum Signed {
    /// The ID token, redeemed here (a public client).
    IdToken(zeroize::Zeroizing<String>),
    /// The code for the controller to redeem (the cluster's confidential client).
    Code(CodeRedemption),
}

impl Signed {
    /// The text sealed into the challenge.
    pub fn sealed_text(&self) -> zeroize::Zeroizing<String> {
        match self {
            Signed::IdToken(token) => token.clone(),
            Signed::Code(code) => zeroize::Zeroizing::new(code.encode()),
        }
    }
}

/// A sign-in at `idp` whose ID token will carry `nonce`, or why there is none. Waits at most
/// `wait` for the person to finish at the login page.
pub async fn sign_in(
    idp: &PublishedIdentityProvider,
    nonce: &str,
    assurance: &Assurance,
    browser: Browser,
    wait: Duration,
) -> Result<Signed> {
    let https = Https::new(idp.certificate_authority.as_deref()).map_err(|e| unavailable(idp, format!("{e:#}")))?;
    let endpoints = http::discover(&https, &idp.issuer, None).await.map_err(|e| unavailable(idp, e))?;
    if browser == Browser::Device {
        return by_device(idp, &https, &endpoints, nonce, wait).await.map(|t| Signed::IdToken(t.into()));
    }
    let (Some(authorize), Some(token_endpoint)) = (endpoints.authorization, endpoints.token) else {
        return Err(unavailable(idp, "its discovery document names no https authorization or token endpoint".into()));
    };
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Error::other(format!("cannot listen on a loopback port for the sign-in: {e}"), "Try again."))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let verifier = random(32);
    let state = random(16);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = format!(
        "{authorize}?response_type=code&client_id={}&redirect_uri={}&scope=openid&state={state}&nonce={}\
         &code_challenge={challenge}&code_challenge_method=S256",
        encode(&idp.client_id),
        encode(&redirect),
        encode(nonce),
    );
    if !assurance.acr_values.is_empty() {
        url.push_str(&format!("&acr_values={}", encode(&assurance.acr_values.join(" "))));
    }
    if let Some(max_age) = assurance.max_age {
        url.push_str(&format!("&max_age={}", max_age.as_secs()));
    }
    errln!("Sign in at your identity provider to step up:\n  {url}");
    if browser == Browser::Open {
        open_browser(&url);
    }
    let code = tokio::time::timeout(wait, callback(&listener, &state))
        .await
        .map_err(|_| {
            Error::other(
                format!("no sign-in came back within {}s", wait.as_secs()),
                "Finish the sign-in in the browser window that opened (or open the address above), then run the command again.",
            )
        })??;
    if idp.confidential {
        // Only the controller can redeem it: it holds the client's secret.
        return Ok(Signed::Code(CodeRedemption { code, code_verifier: verifier, redirect_uri: redirect }));
    }
    let answer = https
        .post_form(
            &token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect),
                ("client_id", &idp.client_id),
                ("code_verifier", &verifier),
            ],
            256 * 1024,
        )
        .await
        .map_err(|e| unavailable(idp, e))?;
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if !answer.status.is_success() {
        let said = body.get("error_description").or_else(|| body.get("error")).and_then(Value::as_str);
        return Err(Error::other(
            format!(
                "the identity provider refused to issue the token ({}): {}",
                answer.status,
                said.unwrap_or("no reason given")
            ),
            "Sign in again; if it keeps failing, the client may not allow this redirect: ask your platform team.",
        ));
    }
    body.get("id_token").and_then(Value::as_str).map(|t| Signed::IdToken(t.to_owned().into())).ok_or_else(|| {
        Error::other(
            "the identity provider answered without an ID token",
            "The client must have the openid scope; ask your platform team.",
        )
    })
}

/// RFC 8628: asks for a user code, prints where to enter it, and polls the token endpoint until
/// the person has signed in (or declined, or the code expired).
async fn by_device(
    idp: &PublishedIdentityProvider,
    https: &Https,
    endpoints: &http::Endpoints,
    nonce: &str,
    wait: Duration,
) -> Result<String> {
    let Some(client_id) = idp.device_client_id.as_deref() else {
        return Err(Error::usage(
            format!("the cluster publishes no device-grant client for {}", idp.issuer),
            "Leave out --device (a browser on this machine), or ask your platform team for a device client (README, OIDC).",
        ));
    };
    let (Some(device_endpoint), Some(token_endpoint)) = (&endpoints.device_authorization, &endpoints.token) else {
        return Err(unavailable(idp, "its discovery document names no device authorization endpoint".into()));
    };
    let answer = https
        .post_form(device_endpoint, &[("client_id", client_id), ("scope", "openid"), ("nonce", nonce)], 64 * 1024)
        .await
        .map_err(|e| unavailable(idp, e))?;
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(device_code), Some(user_code), Some(uri)) =
        (text("device_code"), text("user_code"), text("verification_uri"))
    else {
        let said = text("error_description").or_else(|| text("error")).unwrap_or_else(|| answer.status.to_string());
        return Err(Error::other(
            format!("the identity provider refused the device sign-in: {said}"),
            "Ask your platform team to enable the device grant for the published device client.",
        ));
    };
    errln!(
        "Sign in at your identity provider to step up: on any device with a browser, open\n  {uri}\nand enter the code {user_code}"
    );
    if let Some(complete) = text("verification_uri_complete") {
        errln!("(or open {complete})");
    }
    let expires = body.get("expires_in").and_then(Value::as_u64).map(Duration::from_secs).unwrap_or(wait);
    let mut interval = Duration::from_secs(body.get("interval").and_then(Value::as_u64).unwrap_or(5).clamp(1, 60));
    let until = tokio::time::Instant::now() + wait.min(expires);
    loop {
        if tokio::time::Instant::now() + interval > until {
            return Err(Error::other(
                format!("no sign-in with code {user_code} within {}s", wait.min(expires).as_secs()),
                "Run the command again and enter the new code promptly.",
            ));
        }
        tokio::time::sleep(interval).await;
        let answer = https
            .post_form(
                token_endpoint,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &device_code),
                    ("client_id", client_id),
                ],
                256 * 1024,
            )
            .await
            .map_err(|e| unavailable(idp, e))?;
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if let Some(token) = body.get("id_token").and_then(Value::as_str) {
            return Ok(token.to_owned());
        }
        match body.get("error").and_then(Value::as_str) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            other => {
                let said = body.get("error_description").and_then(Value::as_str).or(other).unwrap_or("no reason given");
                return Err(Error::other(
                    format!("the identity provider did not sign you in: {said}"),
                    "Run the command again and complete the sign-in (your second factor included).",
                ));
            }
        }
    }
}

pub(super) fn open_browser(url: &str) {
    let program = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| if cfg!(target_os = "macos") { "open".into() } else { "xdg-open".into() });
    let started = std::process::Command::new(&program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if started.is_err() {
        errln!("(could not start {program}: open the address above in a browser)");
    }
}

/// Waits for the provider's redirect to the loopback address; answers the browser with a page
/// that says what happened. Requests for anything else (a favicon) get a 404 and are ignored.
async fn callback(listener: &TcpListener, state: &str) -> Result<String> {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let Some(target) = request_target(&mut stream).await else { continue };
        let Some(query) = target.strip_prefix("/callback?") else {
            respond(&mut stream, "404 Not Found", "Not found", "This address only receives the sign-in.").await;
            continue;
        };
        if query_value(query, "state").as_deref() != Some(state) {
            // Another page's redirect, or a forged one: not this sign-in.
            respond(
                &mut stream,
                "400 Bad Request",
                "Not this sign-in",
                "This answer is for another sign-in; it was ignored.",
            )
            .await;
            continue;
        }
        if let Some(error) = query_value(query, "error") {
            let said = query_value(query, "error_description").unwrap_or_else(|| error.clone());
            respond(
                &mut stream,
                "200 OK",
                "Sign-in failed",
                &format!("The identity provider said: {said}. Return to your terminal."),
            )
            .await;
            return Err(Error::other(
                format!("the identity provider did not sign you in: {said}"),
                "Run the command again and complete the sign-in (your second factor included).",
            ));
        }
        let Some(code) = query_value(query, "code") else {
            respond(&mut stream, "400 Bad Request", "No code", "The identity provider sent no code.").await;
            continue;
        };
        respond(
            &mut stream,
            "200 OK",
            "Signed in",
            "kubectl stepup is asking the cluster for your grant. You can close this tab and return to your terminal.",
        )
        .await;
        return Ok(code);
    }
}

/// The request target of an HTTP/1 GET (`/callback?...`), read within a bound.
async fn request_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 || head.len() + n > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = std::str::from_utf8(&head).ok()?.lines().next()?.to_owned();
    let mut words = line.split(' ');
    match (words.next(), words.next()) {
        (Some("GET"), Some(target)) => Some(target.to_owned()),
        _ => None,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, title: &str, text: &str) {
    let body = page(title, text);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The page the browser shows after the redirect. Escaped: the provider's error text is input.
pub fn page(title: &str, text: &str) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kubectl stepup: {t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#1f2328}}\
         h1{{font-size:1.4em}}p{{line-height:1.5}}</style></head>\
         <body><h1>kubectl stepup: {t}</h1><p>{x}</p></body></html>",
        t = esc(title),
        x = esc(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_the_provider_said() {
        let html = page("Sign-in failed", "The identity provider said: <script>alert(1)</script> & more.");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more."), "{html}");
    }

    /// Attack: a page open in the same browser redirects to the loopback port with its own code
    /// (login CSRF). Without this sign-in's state it is ignored; the real answer still counts.
    #[tokio::test]
    async fn only_the_redirect_with_this_sign_ins_state_counts() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let get = |target: String| async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let waiting = tokio::spawn(async move { callback(&listener, "the-state").await });
        assert!(get("/favicon.ico".into()).await.starts_with("HTTP/1.1 404"));
        assert!(get("/callback?state=other&code=attacker".into()).await.starts_with("HTTP/1.1 400"));
        let ok = get("/callback?state=the-state&code=the-code".into()).await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("return to your terminal"), "{ok}");
        assert_eq!(waiting.await.unwrap().unwrap(), "the-code");
    }

    #[tokio::test]
    async fn a_refusal_at_the_provider_is_said_in_its_words() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let waiting = tokio::spawn(async move { callback(&listener, "s").await });
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /callback?state=s&error=access_denied&error_description=User+cancelled HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let e = waiting.await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "the identity provider did not sign you in: User cancelled");
    }
}
