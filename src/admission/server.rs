//! The HTTP side: `POST /validate` and `POST /advise` over TLS for the API server, and a
//! plain-HTTP admin port with `/healthz`, `/readyz`, `/metrics` and `/cache/<kind>/<name>`. Handlers are thin: parse,
//! call the decision, answer, record.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{Instrument, field::Empty};

use super::{
    access_review::{self, AccessReview},
    cache::{CacheKind, Caches},
    events::EventReporter,
    lookup::{GrantSource, LookupError},
    review::{self, Review, ReviewError},
};
use crate::{audit, metrics::Metrics};
use stepup_core::{
    api::Duration as ApiDuration,
    decision::{self, Decision, DecisionConfig, Grants, Inputs, Outcome, StepUpObjects},
    grant::GrantRecord,
    policy::{Action, Masks, NamespaceLabels, PolicyIndex, Request},
};

/// Tunables of the webhook server.
#[derive(Clone, Debug)]
pub struct Settings {
    pub decision: DecisionConfig,
    /// Largest AdmissionReview accepted. Objects are at most ~1.5 MiB in etcd, and a review
    /// can carry two of them.
    pub max_body_bytes: usize,
    /// Upper bound of a direct grant lookup.
    pub lookup_timeout: Duration,
    /// How long the grant watch may be out of touch before grant decisions fail closed.
    pub grant_staleness_bound: Duration,
    /// Used when the API server sends no `?timeout=`.
    pub default_review_timeout: Duration,
    /// How service accounts without a pod-bound credential are treated.
    pub masks: Masks,
    /// How long a client may take to send a review's body once its headers are in: the API
    /// server sends it at once, a slow-POST attacker trickles it.
    pub body_read_timeout: Duration,
    /// Bytes of review bodies held at once, across all connections: what keeps memory bounded
    /// when many clients send large bodies together. Beyond it, reviews get 503 at once.
    pub max_body_bytes_in_flight: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            decision: DecisionConfig::default(),
            max_body_bytes: 6 * 1024 * 1024,
            lookup_timeout: Duration::from_millis(1500),
            grant_staleness_bound: Duration::from_secs(60),
            default_review_timeout: Duration::from_secs(10),
            masks: Masks::default(),
            body_read_timeout: Duration::from_secs(5),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// The byte budget for review bodies being read or decided (see
/// [`Settings::max_body_bytes_in_flight`]).
#[derive(Clone, Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        Self { bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))) }
    }

    fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.bytes.clone().try_acquire_many_owned(bytes).ok()
    }
}

/// What the connection a review arrived on proves about its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A client certificate signed by `--client-ca-file` (the API server), with its subject.
    Verified(String),
    /// No client certificate was asked for: anyone who can reach the port could have sent it.
    Unauthenticated,
}

impl Peer {
    /// For audit lines: `client-certificate:<subject>` or `unauthenticated`.
    pub fn describe(&self) -> String {
        match self {
            Peer::Verified(subject) => format!("client-certificate:{subject}"),
            Peer::Unauthenticated => "unauthenticated".to_owned(),
        }
    }
}

/// Limits of the TLS listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether the process should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Shared by all handlers.
pub struct Webhook {
    pub caches: Arc<Caches>,
    pub settings: Settings,
    pub bodies: BodyBudget,
    pub metrics: Metrics,
    pub lookup: Option<Arc<dyn GrantSource>>,
    pub events: Option<EventReporter>,
    pub readiness: Arc<Readiness>,
}

pub type AppState = Arc<Webhook>;

/// The API server-facing routes. Public so tests can drive them in-process or over TLS.
pub fn router(state: AppState) -> Router {
    // Bodies are read by `read_body`, under the byte budget and a deadline.
    // Both entries of the registration, served alike: they differ only in how the API server
    // fails when no answer comes (`/validate` closed, `/advise` open).
    Router::new()
        .route(stepup_core::api::ENFORCING_PATH, post(validate))
        .route(stepup_core::api::ADVISORY_PATH, post(validate))
        .route(stepup_core::api::AUTHORIZE_PATH, post(authorize))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The admin routes, served on a separate plain-HTTP port.
pub fn admin_router(state: AppState) -> Router {
    crate::process::admin_router(state.metrics.clone(), state.clone())
        .merge(Router::new().route("/cache/{kind}/{name}", get(cached_version)).with_state(state))
}

/// `GET /cache/policies/<name>` or `/cache/grants/<name>`: the resourceVersion of that object
/// this replica decides with (200, plain text), or 404 when it holds none. How a test, or an
/// operator after a change, tells without a sleep that this replica has caught up. Answers
/// about one named object only, never a listing.
async fn cached_version(State(webhook): State<AppState>, Path((kind, name)): Path<(String, String)>) -> Response {
    let version = match kind.as_str() {
        "policies" => webhook.caches.policy_version(&name),
        "grants" => webhook.caches.grant_version(&name),
        _ => return (StatusCode::NOT_FOUND, "kinds: policies, grants\n").into_response(),
    };
    match version {
        Some(version) => (StatusCode::OK, version).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no {kind} named {name:?} in this replica's cache\n")).into_response(),
    }
}

impl crate::process::Health for Webhook {
    fn problems(&self) -> Vec<String> {
        let r = &self.readiness;
        let mut problems = Vec::new();
        if !r.listening.load(Ordering::Acquire) {
            problems.push("listener not up".to_owned());
        }
        if r.draining.load(Ordering::Acquire) {
            problems.push("shutting down".to_owned());
        }
        for kind in CacheKind::ALL {
            if !self.caches.is_synced(kind) {
                problems.push(format!("{} not synced", kind.as_str()));
            }
        }
        // Out of touch past the bound, grant decisions fail closed: say so, so that a rollout
        // or the Service stops sending reviews here while another replica may still be in touch.
        if self.caches.is_synced(CacheKind::Grants)
            && let Some(stale) = self.caches.grants_stale_beyond(self.settings.grant_staleness_bound)
        {
            problems.push(format!("grants out of touch with the API server for {}s", stale.as_secs()));
        }
        problems
    }

    fn before_scrape(&self) {
        self.metrics.grants_active.set(self.caches.with_grants(|g| g.active(jiff::Timestamp::now())) as i64);
    }
}

/// A failure that is not an answer to a review: plain HTTP error with a JSON Status body,
/// which the API server logs and then applies the webhook's failurePolicy to.
fn http_error(code: StatusCode, message: String) -> Response {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code.as_u16(),
        "message": message,
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn review_response(uid: &str, decision: &Decision) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], review::response_body(uid, decision)).into_response()
}

async fn validate(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "review",
        uid = Empty,
        kind = Empty,
        namespace = Empty,
        operation = Empty,
        user = Empty,
        peer = Empty,
        decision = Empty
    );
    async move {
        match received(&state, request).await {
            Ok((peer, body)) => handle(&state, query.as_deref(), &body.bytes, &peer, started).await,
            Err(refusal) => refusal,
        }
    }
    .instrument(span)
    .await
}

/// Who sent a request (recorded on the span) and its body, read within the limits; or the
/// answer refusing the body.
async fn received(state: &Webhook, request: axum::extract::Request) -> Result<(Peer, Body), Response> {
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<Peer>().cloned().unwrap_or(Peer::Unauthenticated);
    tracing::Span::current().record("peer", peer.describe());
    match read_body(state, &parts.headers, body).await {
        Ok(body) => Ok((peer, body)),
        Err(refusal) => Err(refusal.answer(state)),
    }
}

/// A body and the share of the byte budget it holds until the answer is written.
struct Body {
    bytes: Bytes,
    _reserved: OwnedSemaphorePermit,
}

/// Why a body was not read.
enum BodyRefusal {
    TooLarge,
    Busy,
    Slow,
    Unreadable(String),
}

impl BodyRefusal {
    fn answer(self, state: &Webhook) -> Response {
        let max = state.settings.max_body_bytes;
        let (status, reason, message) = match self {
            BodyRefusal::TooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("AdmissionReview larger than {max} bytes refused"))
            }
            BodyRefusal::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "kube-stepup webhook is reading too many review bodies at once; retry".to_owned(),
            ),
            BodyRefusal::Slow => (
                StatusCode::REQUEST_TIMEOUT,
                "slow_body",
                format!(
                    "AdmissionReview body not received within {}",
                    stepup_core::grant::human(
                        jiff::SignedDuration::try_from(state.settings.body_read_timeout).unwrap_or_default()
                    )
                ),
            ),
            BodyRefusal::Unreadable(why) => {
                (StatusCode::BAD_REQUEST, "unreadable_body", format!("cannot read request body: {why}"))
            }
        };
        state.metrics.review_errors.with_label_values(&[reason]).inc();
        tracing::warn!(%status, reason, "admission request body refused");
        http_error(status, message)
    }
}

/// Reads a review body within the size limit, the byte budget and the read timeout. The
/// declared length is reserved before a byte is read, so a crowd of slow clients cannot
/// together hold more than the budget.
async fn read_body(
    state: &Webhook,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Body, BodyRefusal> {
    let max = state.settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(BodyRefusal::Unreadable("bad content-length".into()))
        })
        .transpose()?;
    if declared.is_some_and(|n| n > max) {
        return Err(BodyRefusal::TooLarge);
    }
    // Without a length (chunked), assume the largest body.
    let reserve = declared.unwrap_or(max).max(1);
    let reserved = state.bodies.reserve(reserve).ok_or(BodyRefusal::Busy)?;
    let limit = declared.unwrap_or(max);
    let read = async {
        let mut buf = Vec::with_capacity(limit.min(64 * 1024));
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyRefusal::Unreadable(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                return Err(if declared.is_some() {
                    BodyRefusal::Unreadable("body longer than its content-length".into())
                } else {
                    BodyRefusal::TooLarge
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(state.settings.body_read_timeout, read).await {
        Ok(Ok(bytes)) => Ok(Body { bytes, _reserved: reserved }),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(BodyRefusal::Slow),
    }
}

async fn handle(state: &Webhook, query: Option<&str>, body: &[u8], peer: &Peer, started: Instant) -> Response {
    let metrics = &state.metrics;
    if !state.caches.is_synced(CacheKind::Policies) {
        metrics.review_errors.with_label_values(&["not_ready"]).inc();
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "kube-stepup webhook is starting: policies are not loaded yet".into(),
        );
    }
    let deadline = started + review_timeout(query, state.settings.default_review_timeout);
    let review = match Review::parse(body, &state.settings.decision.sign_in_keys) {
        Ok(r) => r,
        Err(error) => return malformed(state, body, &error),
    };
    let span = tracing::Span::current();
    span.record("uid", review.uid());
    span.record("kind", review.kind());
    span.record("namespace", review.namespace());
    span.record("operation", review.operation().as_str());
    span.record("user", review.username());

    let objects = match review.stepup_objects() {
        Ok(o) => o,
        Err(error) => return malformed(state, body, &error),
    };
    let own_labels = review.is_namespace_object().then(|| review.namespace_object_labels()).flatten();
    let cached_labels = if own_labels.is_none() && !review.namespace().is_empty() {
        state.caches.namespace_labels(review.namespace())
    } else {
        None
    };
    let labels = match (&own_labels, &cached_labels) {
        (Some(l), _) => NamespaceLabels::Known(l),
        (None, Some(l)) => NamespaceLabels::Known(l),
        (None, None) if review.namespace().is_empty() && !review.is_namespace_object() => {
            NamespaceLabels::NotApplicable
        }
        (None, None) => NamespaceLabels::Unknown,
    };
    let previous_labels = review.namespace_object_previous_labels();
    let request = review.request(labels, previous_labels.as_ref(), &state.settings.masks);
    let mut decision = decide(state, &request, &objects, deadline).await;
    decision.refer(review.uid());
    record(state, review.uid(), &request, &decision, peer, started);
    tracing::debug!(allowed = decision.allowed, "review answered");
    review_response(review.uid(), &decision)
}

/// `POST /authorize`: a SubjectAccessReview from the API server's authorization webhook.
async fn authorize(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "access_review",
        namespace = Empty,
        verb = Empty,
        user = Empty,
        peer = Empty,
        decision = Empty
    );
    async move {
        match received(&state, request).await {
            Ok((peer, body)) => handle_access_review(&state, &body.bytes, &peer, started).await,
            Err(refusal) => refusal,
        }
    }
    .instrument(span)
    .await
}

/// Decides a SubjectAccessReview like an admission review, with no objects: the answer is a
/// Deny that says what to run, or NoOpinion. An error (starting, malformed) is an HTTP error,
/// to which the API server applies the authorizer's failurePolicy (Deny: fail closed for
/// what the matchConditions sent, which is only what policies name).
async fn handle_access_review(state: &Webhook, body: &[u8], peer: &Peer, started: Instant) -> Response {
    let metrics = &state.metrics;
    if !state.caches.is_synced(CacheKind::Policies) {
        metrics.review_errors.with_label_values(&["not_ready"]).inc();
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "kube-stepup webhook is starting: policies are not loaded yet".into(),
        );
    }
    let deadline = started + state.settings.default_review_timeout;
    let review = match AccessReview::parse(body, &state.settings.decision.sign_in_keys) {
        Ok(r) => r,
        Err(error) => {
            metrics.review_errors.with_label_values(&[error.label()]).inc();
            tracing::warn!(%error, "malformed SubjectAccessReview");
            return http_error(StatusCode::BAD_REQUEST, error.to_string());
        }
    };
    let span = tracing::Span::current();
    span.record("namespace", review.namespace());
    span.record("verb", review.verb());
    span.record("user", review.username());
    if review.username() == stepup_core::api::AUTHORIZER_PROBE_USER {
        // The controller asking whether the API server sends this policy's verbs here.
        return ([(header::CONTENT_TYPE, "application/json")], access_review::probe_answer()).into_response();
    }
    let cached_labels =
        (!review.namespace().is_empty()).then(|| state.caches.namespace_labels(review.namespace())).flatten();
    let labels = match &cached_labels {
        Some(l) => NamespaceLabels::Known(l),
        None if review.namespace().is_empty() => NamespaceLabels::NotApplicable,
        None => NamespaceLabels::Unknown,
    };
    let Some(request) = review.request(labels, &state.settings.masks) else {
        return access_review_response(None);
    };
    let mut decision = decide(state, &request, &StepUpObjects::None, deadline).await;
    // A SubjectAccessReview has no uid: this answer's own names the refusal (`ref=`) and its
    // audit record, so a grant can point back to what prompted it.
    let uid = access_review::fresh_uid();
    decision.refer(&uid);
    record(state, &uid, &request, &decision, peer, started);
    access_review_response(Some(&decision))
}

fn access_review_response(decision: Option<&Decision>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], access_review::response_body(decision)).into_response()
}

/// Decides from the caches; when a grant not yet in the cache could change the answer, asks
/// the API server once (bounded by `deadline`) and decides again with what it found.
/// [`decision::decide`] decides reads (Authorization actions) as [`decision::authorize`] does.
async fn decide(state: &Webhook, request: &Request<'_>, objects: &StepUpObjects, deadline: Instant) -> Decision {
    let policies = state.caches.policy_index();
    let decision = decide_cached(state, request, objects, &policies);
    if !decision.lookup_may_help {
        return decision;
    }
    let Some(fetched) = lookup(state, request.user.username, deadline).await else {
        return decision;
    };
    let inputs = Inputs {
        policies: &policies,
        grants: Grants::Fetched(&fetched),
        config: &state.settings.decision,
        now: jiff::Timestamp::now(),
    };
    decision::decide(request, objects, &inputs)
}

/// Decides from the caches, or with grants unavailable when the grant watch has been out of
/// touch for longer than the bound (decisions that need a grant then fail closed).
fn decide_cached(state: &Webhook, request: &Request<'_>, objects: &StepUpObjects, policies: &PolicyIndex) -> Decision {
    let now = jiff::Timestamp::now();
    let config = &state.settings.decision;
    match state.caches.grants_stale_beyond(state.settings.grant_staleness_bound) {
        Some(stale_for) => {
            let stale_for = jiff::SignedDuration::try_from(stale_for).unwrap_or_default();
            let grants = Grants::Unavailable { stale_for };
            decision::decide(request, objects, &Inputs { policies, grants, config, now })
        }
        None => state.caches.with_grants(|index| {
            decision::decide(request, objects, &Inputs { policies, grants: Grants::Cached(index), config, now })
        }),
    }
}

/// Everything one answered review leaves behind: metrics, the audit record, the Event.
fn record(state: &Webhook, uid: &str, request: &Request<'_>, decision: &Decision, peer: &Peer, started: Instant) {
    let metrics = &state.metrics;
    tracing::Span::current().record("decision", decision.outcome.as_str());
    let policy_label = decision.policies.first().map(String::as_str).unwrap_or("none");
    let reviews = match request.action {
        Action::Admission(_) => &metrics.reviews,
        Action::Authorization(_) => &metrics.authorizations,
    };
    reviews.with_label_values(&[decision.outcome.as_str(), policy_label]).inc();
    metrics.review_duration.with_label_values(&[decision.outcome.as_str()]).observe(started.elapsed().as_secs_f64());
    if let Some(limit) = decision.limit {
        metrics.challenge_limit_refusals.with_label_values(&[limit]).inc();
    }
    if decision.outcome == Outcome::ForgedGrant {
        metrics.forged_grants.inc();
        tracing::warn!(user = request.user.username, name = request.name, "forged grant refused at admission");
    }
    if decision.outcome == Outcome::BreakGlass {
        metrics.break_glass.inc();
        tracing::warn!(user = request.user.username, policies = %decision.policies.join(","), "break-glass access used");
    }
    if decision.is_audited() {
        audit::admission(&audit::AdmissionRecord { uid, request, peer: &peer.describe(), decision });
    }
    if let Some(events) = &state.events
        && !request.dry_run
    {
        let mut what = decision::describe(request);
        if *peer == Peer::Unauthenticated {
            // Anyone who can reach the port could have sent this review: say so.
            what.push_str(" (review from an unauthenticated connection: mutual TLS is off)");
        }
        events.report(decision, request.user.username, &what);
    }
}

/// Answers a body that is not a usable review: as an AdmissionReview denial when its uid can
/// be recovered (the API server then shows the message), as an HTTP 400 otherwise.
fn malformed(state: &Webhook, body: &[u8], error: &ReviewError) -> Response {
    state.metrics.review_errors.with_label_values(&[error.label()]).inc();
    tracing::warn!(%error, "malformed admission review");
    match review::uid_of(body) {
        Some(uid) => review_response(&uid, &Decision::invalid(error)),
        None => http_error(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// One bounded lookup; `None` when there is no source, or it failed or ran out of time
/// (the cache-based denial then stands: fail closed).
async fn lookup(state: &Webhook, user: &str, deadline: Instant) -> Option<Vec<GrantRecord>> {
    let source = state.lookup.as_ref()?;
    let budget = deadline.saturating_duration_since(Instant::now()).min(state.settings.lookup_timeout);
    if budget.is_zero() {
        state.metrics.grant_lookups.with_label_values(&["no_time"]).inc();
        return None;
    }
    match tokio::time::timeout(budget, source.grants_of(user)).await {
        Ok(Ok(grants)) => {
            let label = if grants.is_empty() { "none" } else { "found" };
            state.metrics.grant_lookups.with_label_values(&[label]).inc();
            Some(grants)
        }
        Ok(Err(LookupError::Shed(why))) => {
            state.metrics.grant_lookups.with_label_values(&["shed"]).inc();
            tracing::debug!(why, "direct grant lookup skipped; denying from the cache");
            None
        }
        Ok(Err(error)) => {
            state.metrics.grant_lookups.with_label_values(&["error"]).inc();
            tracing::warn!(%error, "direct grant lookup failed; denying from the cache");
            None
        }
        Err(_) => {
            state.metrics.grant_lookups.with_label_values(&["timeout"]).inc();
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "direct grant lookup timed out; denying from the cache"
            );
            None
        }
    }
}

/// The API server appends `?timeout=10s`; answer well within it.
fn review_timeout(query: Option<&str>, default: Duration) -> Duration {
    let given = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| v.parse::<ApiDuration>().ok())
        .map(ApiDuration::as_std)
        .unwrap_or(default);
    // Leave room for the response to travel back.
    given.saturating_sub(Duration::from_millis(250)).max(Duration::from_millis(100))
}

/// Serves `app` over TLS on `listener` until `stop` fires, then lets open connections finish
/// (bounded by `grace`). With a client-verifying `tls` config, each request carries the
/// [`Peer`] its connection proved.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stop: CancellationToken,
    grace: Duration,
    limits: ConnectionLimits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Bound the time a client may take to send headers (slowloris); keep-alive stays on.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(64 * 1024);
    // Small HTTP/2 windows and few streams: what a connection can make us buffer stays small.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(16)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024)
        .max_header_list_size(64 * 1024);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // At the limit, stop accepting: clients wait in the kernel's backlog, costing nothing.
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => Peer::Verified(subject_of(cert)),
                None => Peer::Unauthenticated,
            };
            let app = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(client.clone());
                req
            });
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// The subject of a (verified) client certificate, for evidence.
fn subject_of(cert: &rustls_pki_types::CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert).map(|(_, c)| c.subject().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_the_api_servers_timeout_parameter() {
        let d = Duration::from_secs(10);
        assert_eq!(review_timeout(Some("timeout=5s"), d), Duration::from_millis(4750));
        assert_eq!(review_timeout(Some("x=1&timeout=2s"), d), Duration::from_millis(1750));
        assert_eq!(review_timeout(None, d), Duration::from_millis(9750));
        assert_eq!(review_timeout(Some("timeout=garbage"), d), Duration::from_millis(9750));
        assert_eq!(review_timeout(Some("timeout=1ms"), d), Duration::from_millis(100));
    }
}
