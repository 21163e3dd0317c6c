//! Process plumbing both long-running processes share (I/O: signals, a listener, the
//! environment): the shutdown signal, the instance name, the plain-HTTP admin server
//! (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the admin server asks a process about itself.
pub trait Health: Send + Sync + 'static {
    /// What keeps the process from being ready; empty when it is ready.
    fn problems(&self) -> Vec<String>;

    /// Runs before each scrape, for gauges computed on demand.
    fn before_scrape(&self) {}
}

/// A process that is ready once it runs (the controller: a standby is ready too).
pub struct AlwaysReady;

impl Health for AlwaysReady {
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    health: Arc<dyn Health>,
}

/// The admin routes: `/healthz` (alive), `/readyz` (what `health` says) and `/metrics`.
pub fn admin_router(metrics: Metrics, health: Arc<dyn Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(Admin { metrics, health })
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let problems = admin.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join(", ")).into_response()
    }
}

async fn scrape(State(admin): State<Admin>) -> Response {
    admin.health.before_scrape();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], admin.metrics.render()).into_response()
}

/// Serves `app` on `listener` until `stop`.
pub fn spawn_admin(listener: TcpListener, app: Router, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(%error, "admin server failed");
        }
    })
}

/// This replica's name in Events, Leases and the audit trail: `explicit`, else `$POD_NAME`,
/// else the hostname and process id.
pub fn instance(explicit: Option<&str>) -> String {
    explicit.map(str::to_owned).or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "stepup".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
