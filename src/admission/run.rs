//! `stepup webhook`: wires the caches, watches, servers and shutdown together.

use std::{sync::Arc, time::Duration};

use kube::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    BodyBudget, Caches, ConnectionLimits, Readiness, Settings, Webhook, admin_router, challenges,
    events::EventReporter,
    lookup::{ApiGrantSource, Bounded},
    router, serve_tls,
    tls::{self, ReloadingCertificate},
    watch,
};
use crate::{
    config::{self, WebhookArgs},
    error::RunError,
    metrics::Metrics,
    process,
};
use stepup_core::{decision::DecisionSettings, keys::GrantVerifier, limits::ChallengeView};

fn settings(args: &WebhookArgs, decision: &DecisionSettings, verifier: Option<GrantVerifier>) -> Settings {
    Settings {
        decision: decision.config(verifier, None),
        masks: decision.masks(),
        max_body_bytes: args.max_body_bytes,
        body_read_timeout: args.body_read_timeout.as_std(),
        max_body_bytes_in_flight: args.max_body_bytes_in_flight,
        lookup_timeout: args.lookup_timeout.as_std(),
        grant_staleness_bound: args.grant_staleness_bound.as_std(),
        default_review_timeout: Duration::from_secs(10),
    }
}

pub async fn run(args: WebhookArgs) -> Result<(), RunError> {
    let metrics = Metrics::webhook();
    // Only the public half is kept: the webhook verifies grants, it never signs them.
    let verifier = crate::config::read_master_key(&args.identity.key_file)?.grant_verifier();
    let certificate = ReloadingCertificate::load(&args.tls_cert_file, &args.tls_key_file)?;
    let client = Client::try_default().await?;
    let decision = config::decision_settings(&args.identity, &args.decision)?;
    let builtin = decision.builtin_policies();
    let stop_records = CancellationToken::new();
    let instance = process::instance(None);
    let records = crate::records::writer::install(
        format!("stepup-webhook/{instance}"),
        metrics.clone(),
        Some(client.clone()),
        args.audit_flush_interval.as_std(),
        args.audit_refusal_budget_kib,
        stop_records.clone(),
    );
    let caches = Caches::new(builtin);
    let stop_watches = CancellationToken::new();
    let timing = watch::WatchTiming::new(args.watch_timeout.as_std().as_secs().clamp(1, 3600) as u32);
    watch::spawn_all(client.clone(), caches.clone(), metrics.clone(), verifier.clone(), timing, stop_watches.clone());
    let challenge_view = Arc::new(ChallengeView::new(args.challenge_limits.limits()));
    challenges::spawn(client.clone(), challenge_view.clone(), stop_watches.clone());

    let readiness = Arc::new(Readiness::default());
    let tls_config = match &args.client_ca_file {
        Some(path) => tls::mutual_server_config(certificate.clone(), &tls::read_client_ca(path)?, path)?,
        None => {
            tracing::warn!(
                "no --client-ca-file: the webhook answers any client that reaches its port; reviews are recorded as unauthenticated"
            );
            tls::server_config(certificate.clone())
        }
    };
    let mut settings = settings(&args, &decision, Some(verifier.clone()));
    settings.decision.challenges = Some(challenge_view);
    let state = Arc::new(Webhook {
        caches,
        bodies: BodyBudget::new(settings.max_body_bytes_in_flight),
        settings,
        metrics: metrics.clone(),
        lookup: Some(Arc::new(Bounded::new(
            ApiGrantSource::new(client.clone(), verifier, metrics.clone()),
            args.max_lookups_in_flight,
            stepup_core::grant::LOOKUP_INTERVAL,
        ))),
        events: Some(EventReporter::new(
            client,
            args.identity.namespace.clone(),
            Some(instance.clone()),
            args.event_interval.as_std(),
            args.event_rate,
            metrics.clone(),
        )),
        readiness: readiness.clone(),
    });

    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| RunError::Listen { addr: args.listen, source })?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| RunError::Listen { addr: args.admin_listen, source })?;
    let stop_serving = CancellationToken::new();
    certificate.clone().watch(args.cert_reload_interval.as_std(), metrics.clone(), stop_serving.clone());

    let admin_task = process::spawn_admin(admin, admin_router(state.clone()), stop_serving.clone());
    let tls_task = tokio::spawn(serve_tls(
        listener,
        tls_config,
        router(state),
        stop_serving.clone(),
        args.shutdown_grace.as_std(),
        ConnectionLimits { max_connections: args.max_connections, ..ConnectionLimits::default() },
    ));
    readiness.set_listening();
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "webhook serving");

    process::shutdown_signal().await;
    readiness.set_draining();
    tracing::info!(drain = %args.drain_period, "shutdown requested; draining");
    tokio::time::sleep(args.drain_period.as_std()).await;
    stop_serving.cancel();
    let _ = tls_task.await;
    let _ = admin_task.await;
    stop_watches.cancel();
    crate::records::writer::finish(&stop_records, records).await;
    tracing::info!("webhook stopped");
    Ok(())
}
