//! `stepup controller`: admin endpoints, leader election, and the reconcilers that run only
//! while this replica leads.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use super::{
    Context, Error, Keys, Settings, USERNAME_ANNOTATION, bootstrap,
    certs::CertSettings,
    challenge::{self, ChallengeContext},
    enrollment,
    factor::Limits,
    grant,
    leader::{Elector, LeaseConfig},
    policy_status,
    registration::{self, RegistrationSettings},
    webhook_config::{ConfigSettings, Target},
};
use crate::{
    config::{CaBundleSource, ControllerArgs},
    error::RunError,
    evidence::Evidence,
    metrics::Metrics,
    process,
};
use stepup_core::{
    api::{self, StepUpChallenge, StepUpEnrollment, StepUpGrant, StepUpPolicy},
    verify::totp::TotpVerifier,
};

/// The controller's settings from its flags; the sign-in keys are the decision's (`decision`,
/// built from the same flags once).
pub fn settings(args: &ControllerArgs, decision: &stepup_core::decision::DecisionSettings) -> Settings {
    Settings {
        namespace: args.identity.namespace.clone(),
        self_service_enrollment: args.self_service_enrollment,
        default_grant_duration: args.default_grant_duration.as_signed(),
        max_grant_duration: args.max_grant_duration.as_signed(),
        grant_retention: args.grant_retention.as_signed(),
        challenge_timeout: args.challenge_timeout.as_signed(),
        challenge_ttl: args.challenge_ttl.as_signed(),
        limits: Limits {
            max_failures: args.max_failures,
            window: args.failure_window.as_signed(),
            lockout_after: args.lockout_threshold,
        },
        audit_retention: args.audit_retention.as_signed(),
        challenge_limits: args.challenge_limits.limits(),
        approval_window: args.approval_window.as_signed(),
        bootstrap_window: args.bootstrap_window.as_signed(),
        max_clock_skew: args.identity.max_clock_skew.as_signed(),
        crash_at: args.crash_at,
        panic_at: args.panic_at,
        pause_before_issuing: args.pause_before_issuing.map(|d| d.as_std()),
        sign_in_keys: decision.sign_in_keys.clone(),
    }
}

/// What the controller registers: the configuration, and the certificate unless cert-manager
/// provides it.
pub fn registration_settings(args: &ControllerArgs) -> Option<RegistrationSettings> {
    if !args.manage_webhook_config {
        return None;
    }
    let ns = args.identity.namespace.clone();
    let webhook_user = args.identity.webhook_user();
    let target = match &args.webhook_url {
        Some(url) => Target::Url(url.clone()),
        None => Target::Service { name: args.webhook_service.clone() },
    };
    let svc = &args.webhook_service;
    let mut names =
        vec![svc.clone(), format!("{svc}.{ns}"), format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")];
    names.extend(args.webhook_dns_names.iter().cloned());
    let cert_manager = args.ca_bundle_source == CaBundleSource::CertManager;
    Some(RegistrationSettings {
        config: ConfigSettings {
            name: args.webhook_config_name.clone(),
            namespace: ns.clone(),
            target,
            timeout_seconds: args.webhook_timeout.as_std().as_secs().clamp(1, 30) as i32,
            own_users: vec![args.identity.controller_user(), webhook_user],
            masks: args.identity.masks(),
            inject_ca_from: cert_manager.then(|| format!("{ns}/{}", args.cert_manager_certificate)),
            owner: None,
        },
        certs: (!cert_manager).then(|| CertSettings {
            secret_name: args.tls_secret.clone(),
            names,
            ca_validity: args.ca_validity.as_signed(),
            leaf_validity: args.cert_validity.as_signed(),
        }),
        owner_cluster_role: args.owner_cluster_role.clone(),
        admission_policies: args.admission_policies.clone(),
    })
}

pub async fn run(args: ControllerArgs) -> Result<(), RunError> {
    let metrics = Metrics::controller();
    let master = crate::config::read_master_key(&args.identity.key_file)?;
    let client = Client::try_default().await?;
    let identity = process::instance(args.instance.as_deref());
    let stop_records = CancellationToken::new();
    let records = crate::records::writer::install(
        format!("stepup-controller/{identity}"),
        metrics.clone(),
        Some(client.clone()),
        args.audit_flush_interval.as_std(),
        args.audit_refusal_budget_kib,
        stop_records.clone(),
    );
    let identity_providers = match &args.oidc_authentication_config {
        Some(path) => {
            let confidential = args
                .oidc_client_id
                .as_deref()
                .zip(args.oidc_client_secret_file.as_deref())
                .map(|(client_id, secret_file)| super::oidc::ConfidentialClient { client_id, secret_file });
            let providers =
                super::oidc::IdentityProviders::from_file(path, args.oidc_device_client_id.as_deref(), confidential)
                    .map_err(|e| RunError::Config(format!("{e:#}")))?;
            tracing::info!(issuers = ?providers.issuers().collect::<Vec<_>>(), "trusting identity providers for OIDC step-up");
            Some(Arc::new(providers))
        }
        None => None,
    };
    let relying_party = super::webauthn::RelyingParty::new(&args.webauthn_rp_id, &args.webauthn_origin)
        .map_err(|e| RunError::Config(format!("--webauthn-rp-id/--webauthn-origin: {e}")))?;
    let decision = crate::config::decision_settings(&args.identity, &args.decision)?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: settings(&args, &decision),
        metrics: metrics.clone(),
        evidence: Evidence::new(
            client.clone(),
            "stepup-controller",
            args.identity.namespace.clone(),
            Some(identity.clone()),
            Duration::from_secs(10),
            metrics.clone(),
        ),
        verifier: Arc::new(TotpVerifier),
        keys: Keys::from_master(&master),
        factor_versions: Default::default(),
        bootstrap: Default::default(),
        served: Default::default(),
        probed: Default::default(),
        identity_providers,
        relying_party,
    });
    drop(master);

    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| RunError::Listen { addr: args.admin_listen, source })?;
    let stop = CancellationToken::new();
    let app = process::admin_router(metrics.clone(), Arc::new(process::AlwaysReady));
    let admin_task = process::spawn_admin(admin, app, stop.clone());

    let registration = registration_settings(&args);
    let lease = LeaseConfig {
        namespace: args.identity.namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: args.lease_duration.as_std(),
        retry_period: args.lease_retry.as_std(),
    };
    super::leader::check(&lease).map_err(RunError::Config)?;
    let elector = Elector::new(client, lease);
    let (leading_tx, mut leading) = watch::channel(false);
    let stop_election = CancellationToken::new();
    let election = tokio::spawn(elector.run(leading_tx, stop_election.clone()));
    tracing::info!(%identity, "controller started; waiting for the lease");

    let shutdown = process::shutdown_signal();
    tokio::pin!(shutdown);
    let mut failed = None;
    loop {
        // Standby until we lead.
        tokio::select! {
            _ = &mut shutdown => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        metrics.leader.set(1);
        let work = CancellationToken::new();
        let tasks = start(ctx.clone(), registration.clone(), decision.clone(), work.clone());
        let aborts: Vec<_> = tasks.iter().map(|(_, t)| t.abort_handle()).collect();
        let mut running: futures::stream::FuturesUnordered<_> =
            tasks.into_iter().map(|(name, task)| async move { (name, task.await) }).collect();
        let stopped = tokio::select! {
            _ = &mut shutdown => Stop::Shutdown,
            _ = leading.wait_for(|l| !*l) => Stop::Deposed,
            // Reconcilers run until `work` is cancelled: one that ends first panicked or
            // stopped, and a leader without it would leave its objects unanswered.
            Some((name, ended)) = running.next() => Stop::Failed(name, match ended {
                Err(e) if e.is_panic() => "panicked".to_owned(),
                Err(e) => e.to_string(),
                Ok(()) => "stopped".to_owned(),
            }),
        };
        if stopped != Stop::Shutdown {
            // Another replica may lead soon: stop at once, as a crash would (every write
            // sequence is safe to cut anywhere: the crash scenarios), instead of letting
            // reconciles blocked on a stalled connection finish later.
            metrics.leader.set(0);
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        work.cancel();
        while running.next().await.is_some() {}
        match stopped {
            Stop::Shutdown => break,
            Stop::Deposed => tracing::warn!("no longer leading; stopped the reconcilers"),
            Stop::Failed(name, why) => {
                tracing::error!(
                    task = name,
                    why,
                    "a reconciler ended while leading; the controller stops (to be restarted)"
                );
                failed = Some(RunError::Config(format!("the {name} reconciler {why} while leading")));
                break;
            }
        }
    }
    metrics.leader.set(0);
    stop_election.cancel();
    let _ = election.await;
    stop.cancel();
    let _ = admin_task.await;
    crate::records::writer::finish(&stop_records, records).await;
    tracing::info!("controller stopped");
    failed.map_or(Ok(()), Err)
}

/// Why the leader stopped its reconcilers.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Shutdown,
    Deposed,
    Failed(&'static str, String),
}

fn error_policy<K, C>(controller: &'static str, metrics: Metrics) -> impl Fn(Arc<K>, &Error, Arc<C>) -> Action {
    move |_, error, _| {
        metrics.reconcile_errors.with_label_values(&[controller, error.metric_label()]).inc();
        match error {
            // Another write won the race; re-read and decide again right away.
            Error::Conflict(_) => Action::requeue(Duration::from_millis(200)),
            _ => {
                tracing::warn!(controller, %error, "reconcile failed; retrying");
                Action::requeue(Duration::from_secs(5))
            }
        }
    }
}

/// A task the leader runs, by name.
type Task = (&'static str, tokio::task::JoinHandle<()>);

/// Starts the reconcilers; they stop when `work` is cancelled.
fn start(
    ctx: Arc<Context>,
    registration: Option<RegistrationSettings>,
    decision: stepup_core::decision::DecisionSettings,
    work: CancellationToken,
) -> Vec<Task> {
    let client = ctx.client.clone();
    let mut tasks = Vec::new();

    let metrics = ctx.metrics.clone();
    let policies = Controller::new(Api::<StepUpPolicy>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(work.clone().cancelled_owned());
    let policy_store = policies.store();
    let challenges = Controller::new(Api::<StepUpChallenge>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(work.clone().cancelled_owned());
    let store = challenges.store();
    let challenges = challenges
        .run(
            challenge::reconcile,
            error_policy("challenge", metrics.clone()),
            Arc::new(ChallengeContext { ctx: ctx.clone(), store, policies: policy_store }),
        )
        .for_each(|_| async {});
    tasks.push(("challenges", tokio::spawn(challenges)));

    // Enrollments follow their factor Secrets too: a lockout or a failure recorded by a
    // challenge shows in the enrollment's phase at once.
    let factor_secrets = Api::<Secret>::namespaced(client.clone(), &ctx.settings.namespace);
    let enrollments = Controller::new(Api::<StepUpEnrollment>::all(client.clone()), watcher::Config::default())
        .watches(
            factor_secrets,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=stepup"),
            |s: Secret| {
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(USERNAME_ANNOTATION))
                    .map(|user| api::Method::ENROLLED.map(|m| ObjectRef::new(&api::enrollment_name_for(user, m))))
                    .into_iter()
                    .flatten()
            },
        )
        .graceful_shutdown_on(work.clone().cancelled_owned())
        .run(enrollment::reconcile, error_policy("enrollment", metrics.clone()), ctx.clone())
        .for_each(|_| async {});
    tasks.push((
        "enrollments",
        tokio::spawn({
            let (ctx, work) = (ctx.clone(), work.clone());
            async move {
                // The bootstrap record is read (or first written) before any enrollment is decided.
                while let Err(error) = bootstrap::load(&ctx).await {
                    ctx.metrics.reconcile_errors.with_label_values(&["bootstrap", error.metric_label()]).inc();
                    tracing::warn!(%error, "cannot read the bootstrap record; retrying");
                    tokio::select! {
                        _ = work.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                enrollments.await
            }
        }),
    ));

    let grants = Controller::new(Api::<StepUpGrant>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(work.clone().cancelled_owned());
    let store = grants.store();
    tasks.push((
        "grants",
        tokio::spawn(
            grants.run(grant::reconcile, error_policy("grant", metrics.clone()), ctx.clone()).for_each(|_| async {}),
        ),
    ));
    tasks.push((
        "active-grants gauge",
        tokio::spawn({
            let (metrics, work) = (ctx.metrics.clone(), work.clone());
            async move {
                loop {
                    let now = Timestamp::now();
                    let active = store
                        .state()
                        .iter()
                        .filter(|g| g.metadata.deletion_timestamp.is_none() && now < g.spec.expires_at.0)
                        .count();
                    metrics.grants_active.set(active as i64);
                    tokio::select! {
                        _ = work.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                }
            }
        }),
    ));

    tasks.push((
        "policies",
        tokio::spawn(
            policies.run(policy_status::reconcile, error_policy("policy", metrics), ctx.clone()).for_each(|_| async {}),
        ),
    ));
    tasks.push(("audit records", tokio::spawn(super::records::run(ctx.clone(), work.clone()))));
    tasks.push(("discovery", tokio::spawn(super::publish::run(ctx.clone(), decision, work.clone()))));
    if let Some(settings) = registration {
        tasks.push(("registration", tokio::spawn(registration::run(ctx, settings, work))));
    }
    tasks
}
