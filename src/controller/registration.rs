//! Keeps the webhook registered: the serving certificate (made, renewed, rotated) and the
//! ValidatingWebhookConfiguration (rules from the policies, caBundle from the certificate).
//! A CA rotation publishes the new caBundle (holding old and new CA) before the new leaf is
//! written, so no request fails during the change.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;

use jiff::Timestamp;
use k8s_openapi::{
    api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Secret, rbac::v1::ClusterRole},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        events::EventType,
        reflector::{self, Store, reflector},
        watcher::{self, watcher},
    },
};
use tokio_util::sync::CancellationToken;

use super::{
    Context, Error, Result,
    certs::{self, CertSettings, Plan, TlsMaterial},
    protection,
    webhook_config::{self, ConfigSettings},
};
use crate::audit;
use stepup_core::api::StepUpPolicy;

#[derive(Clone, Debug)]
pub struct RegistrationSettings {
    pub config: ConfigSettings,
    /// `None` when cert-manager issues the certificate and injects the caBundle.
    pub certs: Option<CertSettings>,
    /// The chart's controller ClusterRole: owner of the configuration, so uninstalling the
    /// chart garbage-collects it.
    pub owner_cluster_role: Option<String>,
    /// The chart's ValidatingAdmissionPolicies (each with a binding of the same name), watched
    /// over with the CRDs and the configuration.
    pub admission_policies: Vec<String>,
}

/// Re-applies the configuration at least this often, repairing manual drift.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the objects stepup relies on are looked up.
const PROTECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(ctx: Arc<Context>, settings: RegistrationSettings, work: CancellationToken) {
    let mut state = State::default();
    let (policies, writer) = reflector::store::<StepUpPolicy>();
    let synced = Arc::new(AtomicBool::new(false));
    let api: Api<StepUpPolicy> = Api::all(ctx.client.clone());
    let feed = reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).for_each({
        let synced = synced.clone();
        move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                synced.store(true, Ordering::Release);
            }
            futures::future::ready(())
        }
    });
    let feed = tokio::spawn(feed);
    let guarded = protection::guarded(&settings.config.name, &settings.admission_policies);
    let mut seen = BTreeMap::new();
    let mut checked_at: Option<std::time::Instant> = None;
    let mut tried = false;
    loop {
        // Reconcile with a complete policy cache, or a restart would briefly drop rules;
        // without the policy CRD there are no policies, and the stepup kinds must still be
        // routed (the policy watch never syncs then).
        let snapshot = if synced.load(Ordering::Acquire) {
            Some(sorted(&policies))
        } else {
            match policy_crd_exists(&ctx).await {
                Ok(false) => Some(Vec::new()),
                Ok(true) | Err(_) => None,
            }
        };
        let pause = match snapshot {
            None => std::time::Duration::from_millis(200),
            Some(snapshot) => {
                tried = true;
                if let Err(error) = tick(&ctx, &settings, &snapshot, &mut state).await {
                    ctx.metrics.reconcile_errors.with_label_values(&["registration", error.metric_label()]).inc();
                    tracing::warn!(%error, "webhook registration not reconciled; retrying");
                }
                std::time::Duration::from_secs(2)
            }
        };
        // After the first apply: the configuration a fresh start creates is no news.
        if tried && checked_at.is_none_or(|t| t.elapsed() >= PROTECTION_CHECK) {
            protection::check(&ctx, &guarded, &mut seen).await;
            checked_at = Some(std::time::Instant::now());
        }
        tokio::select! {
            _ = work.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    feed.abort();
}

fn sorted(policies: &Store<StepUpPolicy>) -> Vec<StepUpPolicy> {
    let mut snapshot: Vec<StepUpPolicy> = policies.state().iter().map(|p| (**p).clone()).collect();
    snapshot.sort_by_key(|p| p.name_any());
    snapshot
}

async fn policy_crd_exists(ctx: &Context) -> Result<bool> {
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    Ok(crds.get_metadata_opt(protection::CRDS[0]).await?.is_some())
}

#[derive(Default)]
struct State {
    last_applied: Option<String>,
    applied_at: Option<std::time::Instant>,
    /// The configuration's generation after our last apply.
    generation: Option<i64>,
    owner: Option<OwnerReference>,
}

async fn tick(ctx: &Context, s: &RegistrationSettings, snapshot: &[StepUpPolicy], state: &mut State) -> Result<()> {
    if state.owner.is_none()
        && let Some(role) = &s.owner_cluster_role
    {
        let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
        state.owner = roles.get_opt(role).await?.and_then(|r| {
            Some(OwnerReference {
                api_version: "rbac.authorization.k8s.io/v1".into(),
                kind: "ClusterRole".into(),
                name: r.name_any(),
                uid: r.meta().uid.clone()?,
                ..Default::default()
            })
        });
    }
    let mut config = s.config.clone();
    config.owner = state.owner.clone();

    let Some(cert_settings) = &s.certs else {
        return apply(ctx, &config, snapshot, None, state).await;
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let current = secrets.get_opt(&cert_settings.secret_name).await?;
    let material = current.as_ref().map(TlsMaterial::from_secret);
    let requested = current.as_ref().and_then(|c| c.annotations().get(certs::ROTATE_ANNOTATION).cloned());
    let now = Timestamp::now();
    let plan = certs::plan(material.as_ref(), requested.as_deref(), now, cert_settings);
    if plan == Plan::Keep {
        let bundle = material.as_ref().map(|m| m.ca_bundle());
        return apply(ctx, &config, snapshot, bundle.as_deref(), state).await;
    }
    let next = certs::execute(plan, material.as_ref(), now, cert_settings)?;
    // Trust first, then serve: the caBundle with the new CA goes out before the new leaf.
    apply(ctx, &config, snapshot, Some(&next.ca_bundle()), state).await?;
    let mut secret = current.clone().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(cert_settings.secret_name.clone()),
            namespace: Some(ctx.settings.namespace.clone()),
            labels: Some([("app.kubernetes.io/managed-by".to_owned(), "stepup-controller".to_owned())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    });
    secret.data = Some(next.to_data());
    if let Some(a) = secret.metadata.annotations.as_mut() {
        a.remove(certs::ROTATE_ANNOTATION);
    }
    let written = match current {
        Some(_) => secrets.replace(&cert_settings.secret_name, &PostParams::default(), &secret).await,
        None => secrets.create(&PostParams::default(), &secret).await,
    };
    let written = match written {
        Ok(w) => w,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Err(Error::Conflict(format!("secret {}", cert_settings.secret_name)));
        }
        Err(e) => return Err(e.into()),
    };
    let what = match plan {
        Plan::Create => "created the webhook's CA and serving certificate",
        Plan::RenewLeaf => "renewed the webhook's serving certificate",
        Plan::RotateCa => "rotated the webhook's CA; the previous CA stays in the caBundle until it expires",
        Plan::Keep => "",
    };
    let expiry = certs::not_after(&next.cert).map(|t| t.to_string()).unwrap_or_default();
    let note = format!("{what}; serving certificate valid until {expiry}");
    tracing::info!(secret = %cert_settings.secret_name, "{note}");
    ctx.evidence.event(&written, EventType::Normal, "CertificateIssued", note.clone(), None).await;
    audit::step(&audit::StepRecord {
        event: "certificate.issued",
        user: "",
        object: &format!("Secret/{}", cert_settings.secret_name),
        result: "issued",
        method: "",
        reason: "",
        grant: "",
        message: &note,
        correlation: "",
        credential: None,
    });
    Ok(())
}

/// Server-side applies the desired configuration when it changed (or for a periodic resync).
async fn apply(
    ctx: &Context,
    config: &ConfigSettings,
    policies: &[StepUpPolicy],
    bundle: Option<&[u8]>,
    state: &mut State,
) -> Result<()> {
    let desired = webhook_config::desired(policies, config, bundle);
    let serialized = serde_json::to_string(&desired).unwrap_or_default();
    let api: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let fresh = state.applied_at.is_some_and(|t| t.elapsed() < RESYNC);
    if fresh && state.last_applied.as_deref() == Some(serialized.as_str()) {
        // Someone else changed the configuration's spec (its generation moved): repair it now
        // rather than at the next resync.
        let live = api.get_opt(&config.name).await?;
        let generation = live.as_ref().and_then(|c| c.metadata.generation);
        if live.is_some() && generation == state.generation {
            return Ok(());
        }
        tracing::warn!(config = %config.name, "webhook configuration changed or removed by someone else; restoring it");
    }
    let applied =
        api.patch(&config.name, &PatchParams::apply("stepup-controller").force(), &Patch::Apply(&desired)).await?;
    if state.last_applied.as_deref() != Some(serialized.as_str()) {
        let rules = webhook_config::routed_resources(&desired);
        tracing::info!(config = %config.name, resources = rules.len(), "webhook configuration updated");
    }
    state.last_applied = Some(serialized);
    state.applied_at = Some(std::time::Instant::now());
    state.generation = applied.metadata.generation;
    Ok(())
}
