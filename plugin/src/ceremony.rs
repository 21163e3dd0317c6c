//! The security-key ceremony (`WebAuthn`) in the person's browser: the plugin serves one page on
//! `http://localhost:<port>` (a secure context, where the default relying party `localhost`
//! lets the browser talk to security keys and passkeys), hands it the controller's options,
//! receives the credential or assertion the browser made, and tells the page how the cluster
//! judged it. The page lives at a random path only this run knows, takes one answer, and only
//! from its own origin; nothing else is served. I/O.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::error::{Error, Result};

/// Which ceremony the page runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `navigator.credentials.create`: register a new key.
    Register,
    /// `navigator.credentials.get`: sign the controller's challenge.
    Authenticate,
}

/// What the page shows after the browser answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Outcome {
    /// Nothing to say yet: the person is at their key, or the answer is with the cluster.
    Waiting,
    Done {
        message: String,
    },
    Failed {
        message: String,
    },
}

/// The largest answer taken from the page (a registration with attestation is a few KiB).
const MAX_ANSWER: usize = 64 * 1024;

struct Shared {
    token: String,
    origin: String,
    kind: Kind,
    options: String,
    title: String,
    detail: String,
    answers: mpsc::Sender<String>,
    answered: Mutex<bool>,
    outcome: watch::Receiver<Outcome>,
    /// Whether the page has fetched the final outcome (so the plugin may stop serving it).
    seen_final: watch::Sender<bool>,
}

/// The served page of one ceremony.
pub struct Page {
    url: String,
    answers: mpsc::Receiver<String>,
    outcome: watch::Sender<Outcome>,
    seen_final: watch::Receiver<bool>,
    server: tokio::task::JoinHandle<()>,
}

fn random_token() -> String {
    let mut buf = [0u8; 24];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

impl Page {
    /// Serves the page for `options` (the controller's JSON) on a loopback port of the moment.
    /// `title` and `detail` say to the person what the key is for.
    pub async fn serve(kind: Kind, options: String, title: &str, detail: &str) -> Result<Page> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
            Error::other(format!("cannot listen on a loopback port for the security-key page: {e}"), "Try again.")
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let token = random_token();
        let origin = format!("http://localhost:{port}");
        let (answers_tx, answers) = mpsc::channel(1);
        let (outcome, outcome_rx) = watch::channel(Outcome::Waiting);
        let (seen_tx, seen_final) = watch::channel(false);
        let shared = Arc::new(Shared {
            token: token.clone(),
            origin: origin.clone(),
            kind,
            options,
            title: title.to_owned(),
            detail: detail.to_owned(),
            answers: answers_tx,
            answered: Mutex::new(false),
            outcome: outcome_rx,
            seen_final: seen_tx,
        });
        let app = Router::new()
            .route("/{token}", get(page))
            .route("/{token}/options", get(options_json))
            .route("/{token}/answer", post(answer))
            .route("/{token}/outcome", get(outcome_json))
            .with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Page { url: format!("{origin}/{token}"), answers, outcome, seen_final, server })
    }

    /// Where the page is.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The browser's answer (JSON), once the person used their key; at most `wait`.
    pub async fn answer(&mut self, wait: Duration) -> Result<String> {
        match tokio::time::timeout(wait, self.answers.recv()).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(Error::other("the security-key page stopped", "Run the command again.")),
            Err(_) => Err(Error::other(
                format!("no security key answered within {}s", wait.as_secs()),
                "Open the page above in a browser on this computer and use your key when it asks; then run the command again.",
            )),
        }
    }

    /// Tells the page how the cluster judged the answer (or that the command gave up, which
    /// also stops the browser's prompt), and serves it until the page has read that (at most a
    /// few seconds: a closed page does not hold the command up).
    /// The browser's answer within `wait` (Ctrl-C stops waiting). Without one, the page says
    /// why and is finished, and the error is returned.
    pub async fn answered(mut self, wait: Duration) -> Result<(Page, String)> {
        let answer = tokio::select! {
            answer = self.answer(wait) => answer,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        };
        match answer {
            Ok(answer) => Ok((self, answer)),
            Err(error) => {
                self.finish(Outcome::Failed { message: format!("kubectl stepup: {error}. Run the command again.") })
                    .await;
                Err(error)
            }
        }
    }

    pub async fn finish(mut self, outcome: Outcome) {
        let _ = self.outcome.send(outcome);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.seen_final.wait_for(|seen| *seen)).await;
        self.server.abort();
    }
}

fn headers(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h
}

/// Only this run's path; only on `localhost` (the host the relying party expects).
fn allowed(shared: &Shared, token: &str, request: &HeaderMap) -> bool {
    let host = request.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let expected_host = shared.origin.trim_start_matches("http://");
    token.len() == shared.token.len() && subtle_eq(token.as_bytes(), shared.token.as_bytes()) && host == expected_host
}

/// Compares without returning early on the first difference.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, headers("text/plain; charset=utf-8"), "not found").into_response()
}

async fn page(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: HeaderMap) -> Response {
    if !allowed(&shared, &token, &request) {
        return not_found();
    }
    let setup = serde_json::json!({"kind": shared.kind, "title": shared.title, "detail": shared.detail});
    // `<` escaped: nothing in the texts can close the script element.
    let setup = setup.to_string().replace('<', "\\u003c");
    (StatusCode::OK, headers("text/html; charset=utf-8"), PAGE.replace("/*SETUP*/null", &setup)).into_response()
}

async fn options_json(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: HeaderMap) -> Response {
    if !allowed(&shared, &token, &request) {
        return not_found();
    }
    (StatusCode::OK, headers("application/json"), shared.options.clone()).into_response()
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    request: HeaderMap,
    body: Bytes,
) -> Response {
    if !allowed(&shared, &token, &request) {
        return not_found();
    }
    // A page of another origin cannot hand in an answer, even if it learnt the path.
    let origin = request.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if origin != Some(shared.origin.as_str()) {
        return (StatusCode::FORBIDDEN, headers("text/plain; charset=utf-8"), "wrong origin").into_response();
    }
    if body.len() > MAX_ANSWER || serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return (StatusCode::BAD_REQUEST, headers("text/plain; charset=utf-8"), "not a WebAuthn answer")
            .into_response();
    }
    {
        let mut answered = shared.answered.lock().unwrap_or_else(|e| e.into_inner());
        if *answered {
            return (StatusCode::CONFLICT, headers("text/plain; charset=utf-8"), "answered already").into_response();
        }
        *answered = true;
    }
    let _ = shared.answers.send(String::from_utf8_lossy(&body).into_owned()).await;
    (StatusCode::ACCEPTED, headers("application/json"), "{}").into_response()
}

async fn outcome_json(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: HeaderMap) -> Response {
    if !allowed(&shared, &token, &request) {
        return not_found();
    }
    let outcome = shared.outcome.borrow().clone();
    if outcome != Outcome::Waiting {
        let _ = shared.seen_final.send(true);
    }
    (StatusCode::OK, headers("application/json"), serde_json::to_string(&outcome).unwrap_or_default()).into_response()
}

/// The page: one column of text, a state the person (and a test) can read in
/// `document.body.dataset.state`: `waiting`, `touch`, `checking`, `done`, `failed`.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kube-stepup: security key</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }
  main { max-width: 34rem; margin: 12vh auto; background: #fff; border: 1px solid #d0d7de; border-radius: 10px; padding: 2rem 2.2rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .4rem; }
  .detail { color: #57606a; margin: 0 0 1.4rem; }
  .state { font-size: 1.1rem; padding: .9rem 1rem; border-radius: 8px; background: #eef6ff; border: 1px solid #b6d4fe; }
  body[data-state=done] .state { background: #dafbe1; border-color: #8ddb9a; }
  body[data-state=failed] .state { background: #ffebe9; border-color: #ff8182; }
  button { margin-top: 1.2rem; font: inherit; padding: .5rem 1.1rem; border-radius: 6px; border: 1px solid #1f6feb; background: #1f6feb; color: #fff; cursor: pointer; }
  .foot { color: #6e7781; font-size: .85rem; margin-top: 1.6rem; }
</style>
</head>
<body data-state="waiting">
<main>
  <h1 id="title">kube-stepup</h1>
  <p class="detail" id="detail"></p>
  <div class="state" id="state" role="status" aria-live="polite">Preparing…</div>
  <button id="again" hidden>Try again</button>
  <p class="foot">Served by <code>kubectl stepup</code> on this computer for this one request. You can close it when it says so.</p>
</main>
<script>
"use strict";
const SETUP = /*SETUP*/null;
const base = location.pathname;
const $ = (id) => document.getElementById(id);
function show(state, text) {
  document.body.dataset.state = state;
  $("state").textContent = text;
  $("again").hidden = state !== "failed-retry";
  if (state === "failed-retry") document.body.dataset.state = "failed";
}
const pause = (ms) => new Promise((ok) => setTimeout(ok, ms));
async function final() {
  try {
    const o = await (await fetch(base + "/outcome", { cache: "no-store" })).json();
    return o.state === "done" || o.state === "failed" ? o : null;
  } catch (e) {
    return { state: "failed", message: "kubectl stepup stopped serving this page: run the command again." };
  }
}
async function outcome() {
  for (;;) {
    const o = await final();
    if (o) return show(o.state, o.message);
    await pause(300);
  }
}
let abort = null;
/* While the browser waits for a key, the command may give up (its timeout, Ctrl-C): then
   the prompt is stopped and the page says why. */
async function watchCommand(mine) {
  const waiting = () => abort === mine && (document.body.dataset.state === "touch" || !$("again").hidden);
  while (waiting()) {
    await pause(1000);
    const o = await final();
    if (o && waiting()) {
      mine.abort();
      return show(o.state, o.message);
    }
  }
}
async function ceremony() {
  $("again").hidden = true;
  const mine = abort = new AbortController();
  if (!window.PublicKeyCredential || !PublicKeyCredential.parseRequestOptionsFromJSON) {
    return show("failed", "This browser cannot use security keys from this page (it needs WebAuthn with JSON options: a current Chrome, Edge, Firefox or Safari).");
  }
  let options;
  try {
    options = (await (await fetch(base + "/options", { cache: "no-store" })).json()).publicKey;
  } catch (e) {
    return show("failed", "kubectl stepup is no longer serving this page: run the command again.");
  }
  show("touch", SETUP.kind === "register"
    ? "Insert or touch your security key (or choose a passkey) when your browser asks."
    : "Touch your security key (or use your passkey) when your browser asks.");
  watchCommand(mine);
  let credential;
  try {
    credential = SETUP.kind === "register"
      ? await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options), signal: mine.signal })
      : await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options), signal: mine.signal });
  } catch (e) {
    if (mine.signal.aborted) return;
    const why = e && e.name === "NotAllowedError"
      ? "The browser did not get an answer from a key (cancelled, timed out, or a key that cannot verify you where the policy requires it)."
      : "The browser refused: " + (e && e.message ? e.message : e);
    return show("failed-retry", why + " Try again, or run the command again.");
  }
  abort = null;
  show("checking", "Checking with the cluster…");
  const sent = await fetch(base + "/answer", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(credential.toJSON()),
  });
  if (!sent.ok) return show("failed", "kubectl stepup did not take the answer (" + sent.status + "): run the command again.");
  await outcome();
}
$("title").textContent = SETUP.title;
$("detail").textContent = SETUP.detail;
$("again").addEventListener("click", ceremony);
ceremony();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_its_texts_as_data_never_as_markup() {
        let setup = serde_json::json!({"kind": Kind::Register, "title": "</script><b>x", "detail": "d"})
            .to_string()
            .replace('<', "\\u003c");
        let html = PAGE.replace("/*SETUP*/null", &setup);
        assert!(!html.contains("</script><b>"), "a title cannot close the script");
        assert!(html.contains(r#""kind":"register""#));
    }

    #[tokio::test]
    async fn the_page_takes_one_answer_from_its_own_origin_at_its_own_path() {
        let mut page = Page::serve(Kind::Authenticate, r#"{"publicKey":{}}"#.into(), "t", "d").await.unwrap();
        let url = page.url().to_owned();
        let origin = url.rsplit_once('/').unwrap().0.to_owned();
        let port = origin.rsplit_once(':').unwrap().1;
        let client = |path: &str, method: &str, origin: Option<&str>, host: &str| {
            let (path, method, origin, host) =
                (path.to_owned(), method.to_owned(), origin.map(str::to_owned), host.to_owned());
            let port = port.to_owned();
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap();
                let body = "{\"id\":\"x\"}";
                let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
            }
        };
        let path = url.trim_start_matches(&origin).to_owned();
        let host = format!("localhost:{port}");
        assert_eq!(client(&path, "GET", None, &host).await, 200);
        assert_eq!(client("/guessed", "GET", None, &host).await, 404, "another path");
        assert_eq!(client(&path, "GET", None, &format!("127.0.0.1:{port}")).await, 404, "another host name");
        let answer = format!("{path}/answer");
        assert_eq!(client(&answer, "POST", Some("https://evil.example"), &host).await, 403, "another origin");
        assert_eq!(client(&answer, "POST", None, &host).await, 403, "no origin");
        assert_eq!(client(&answer, "POST", Some(&origin), &host).await, 202);
        assert_eq!(page.answer(Duration::from_secs(1)).await.unwrap(), "{\"id\":\"x\"}");
        assert_eq!(client(&answer, "POST", Some(&origin), &host).await, 409, "one answer");
    }
}
