//! Publishes what the webhook decides with (the decision settings both processes build from the
//! same flags) as a ConfigMap in stepup's namespace, for `kubectl stepup check`. I/O: writes
//! that one ConfigMap while leading, and again every 30 s in case someone edited or deleted it.
//!
//! The webhook never reads it: an edit can mislead `check`, never change a decision.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
};
use tokio_util::sync::CancellationToken;

use super::{Context, Result};
use stepup_core::decision::{
    DecisionSettings, PUBLISHED_CONFIGMAP, PUBLISHED_KEY, PUBLISHED_STEP_UP_KEY, StepUpDiscovery,
};

/// An unchanged apply is a no-op for the API server (nothing written to etcd), so this can be
/// short: a deleted or edited publication is back within it.
const REASSERT_EVERY: Duration = Duration::from_secs(30);

/// The ConfigMap for `settings` and `discovery`.
pub fn configmap(settings: &DecisionSettings, discovery: &StepUpDiscovery) -> ConfigMap {
    let json = serde_json::to_string_pretty(settings).expect("decision settings serialise");
    let discovery = serde_json::to_string_pretty(discovery).expect("discovery serialises");
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(PUBLISHED_CONFIGMAP.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "decision-settings".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                "stepup.dev/description".to_owned(),
                "What the stepup webhook decides with, for `kubectl stepup check`, and what `kubectl stepup` \
                 seals responses to and signs in at. Written by the stepup controller; the webhook does not read it."
                    .to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(PUBLISHED_KEY.to_owned(), json), (PUBLISHED_STEP_UP_KEY.to_owned(), discovery)])),
        ..Default::default()
    }
}

/// What the plugin seals to and signs in at, from the controller's keys and trusted issuers.
pub fn discovery(ctx: &Context) -> StepUpDiscovery {
    StepUpDiscovery {
        response_key: ctx.keys.responses.public_base64(),
        identity_providers: ctx.identity_providers.as_ref().map(|p| p.published()).unwrap_or_default(),
    }
}

async fn apply(ctx: &Context, settings: &DecisionSettings) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &settings.namespace);
    api.patch(
        PUBLISHED_CONFIGMAP,
        &PatchParams::apply("stepup-controller").force(),
        &Patch::Apply(&configmap(settings, &discovery(ctx))),
    )
    .await?;
    Ok(())
}

/// Runs while leading: publish now, then re-assert; a failure is counted and retried.
pub async fn run(ctx: std::sync::Arc<Context>, settings: DecisionSettings, work: CancellationToken) {
    loop {
        let wait = match apply(&ctx, &settings).await {
            Ok(()) => REASSERT_EVERY,
            Err(error) => {
                ctx.metrics.reconcile_errors.with_label_values(&["publish", error.metric_label()]).inc();
                tracing::warn!(%error, "cannot publish the decision settings for `kubectl stepup check`; retrying");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            _ = work.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_holds_the_settings_as_the_plugin_reads_them() {
        let mut settings = DecisionSettings::defaults("stepup");
        settings.exempt_groups = vec!["robots".into()];
        let discovery = StepUpDiscovery {
            response_key: "KEY".into(),
            identity_providers: vec![stepup_core::decision::PublishedIdentityProvider {
                issuer: "https://idp.example/realms/x".into(),
                client_id: "kubectl-stepup".into(),
                confidential: false,
                device_client_id: None,
                certificate_authority: None,
            }],
        };
        let cm = configmap(&settings, &discovery);
        assert_eq!(cm.metadata.name.as_deref(), Some(PUBLISHED_CONFIGMAP));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("stepup"));
        let data = cm.data.unwrap();
        let read: DecisionSettings = serde_json::from_str(&data[PUBLISHED_KEY]).unwrap();
        assert_eq!(read, settings);
        let read: StepUpDiscovery = serde_json::from_str(&data[PUBLISHED_STEP_UP_KEY]).unwrap();
        assert_eq!(read, discovery);
        assert!(data[PUBLISHED_STEP_UP_KEY].contains(r#""clientID": "kubectl-stepup""#));
        assert!(!data[PUBLISHED_STEP_UP_KEY].contains("confidential"), "a public client says nothing more");
    }
}
