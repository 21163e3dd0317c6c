//! Issue-6 scenarios: the controller-managed webhook configuration follows the policies, and
//! the serving certificate rotates while requests flow without a single failure.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration,
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kube_stepup::controller::webhook_config::routed_resources;
use stepup_core::api::{Enforcement, Operation::*, StepUpPolicy};
use stepup_core::testing::policy;
use stepup_e2e::{World, eventually};

async fn routed(world: &World) -> std::collections::BTreeSet<String> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(world.admin.clone());
    routed_resources(&api.get("stepup.dev").await.expect("the controller registered the webhook"))
}

/// A newcomer's slip (issue 30): `resources: [configmap]` was accepted and shown Ready while it
/// matched nothing. The controller checks a policy against the API server's discovery: one
/// that names a resource nobody serves is not Ready, says which field, and what was meant.
#[tokio::test]
async fn a_policy_on_a_resource_nobody_serves_is_not_ready_and_says_what_was_meant() {
    let world = World::new().await;
    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    let p = policy("typo").rule(&[Delete], "", &["configmap"]).namespaces(&["prod"]).build();
    api.create(&Default::default(), &p).await.expect("the API server takes it: the schema cannot know");
    let message = eventually(Duration::from_secs(30), || async {
        let status = api.get("typo").await?.status.unwrap_or_default();
        match status.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "False" && c.reason == "NothingToMatch" => Ok(c.message.clone()),
            other => anyhow::bail!("Ready condition: {other:?}"),
        }
    })
    .await
    .expect("Ready=False, NothingToMatch");
    assert!(message.contains(r#"spec.match.rules[0].resources[0]: "configmap""#), "{message}");
    assert!(message.contains(r#"did you mean "configmaps"?"#), "{message}");
    world.wait_event("PolicyMatchesNothing", "configmap").await;
    api.delete("typo", &DeleteParams::default()).await.unwrap();
}

/// Issue 29 (read in the code): a policy on an API group an aggregated API server serves was
/// accepted and Ready, though kube-apiserver proxies those requests without admission.
#[tokio::test]
async fn a_policy_on_an_aggregated_api_is_not_ready_and_says_why() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let world = World::new().await;
    let gvk = GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService");
    let services: Api<DynamicObject> =
        Api::all_with(world.admin.clone(), &ApiResource::from_gvk_with_plural(&gvk, "apiservices"));
    let name = "v1beta1.metrics.k8s.io";
    // An extension server registered (not running: only its registration matters here).
    let service: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name},
        "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                 "versionPriority": 100, "insecureSkipTLSVerify": true,
                 "service": {"name": "metrics-server", "namespace": "kube-system"}}
    }))
    .unwrap();
    let _ = services.delete(name, &DeleteParams::default()).await;
    services.create(&Default::default(), &service).await.expect("APIService created");
    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    let p = policy("node-metrics").rule(&[Delete], "metrics.k8s.io", &["pods"]).namespaces(&["prod"]).build();
    api.create(&Default::default(), &p).await.expect("the API server takes it");
    // The controller's discovery may be up to 30 s old: then it says "not served" first.
    let message = eventually(Duration::from_secs(75), || async {
        let status = api.get("node-metrics").await?.status.unwrap_or_default();
        match status.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "False" && c.message.contains("aggregated API server") => Ok(c.message.clone()),
            other => anyhow::bail!("Ready condition: {other:?}"),
        }
    })
    .await
    .expect("Ready=False, naming the aggregated API server");
    // Cleaned up before asserting: an unavailable APIService makes discovery complain.
    api.delete("node-metrics", &DeleteParams::default()).await.unwrap();
    services.delete(name, &DeleteParams::default()).await.unwrap();
    assert!(message.starts_with(r#"spec.match.rules[0].apiGroups[0]: "metrics.k8s.io" is served by an aggregated API server (APIService v1beta1.metrics.k8s.io)"#), "{message}");
    // An Event per policy and reason (a first "not served" verdict, from discovery older than
    // the APIService, is folded into the same series).
    world.wait_event("PolicyMatchesNothing", "\"metrics.k8s.io\"").await;
}

#[tokio::test]
async fn the_managed_configuration_follows_policy_changes() {
    let world = World::new().await;
    eventually(Duration::from_secs(20), || async {
        if routed(&world).await.contains("serviceaccounts") {
            anyhow::bail!("still routed from an earlier run")
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    let p = policy("sa-changes").rule(&[Delete], "", &["serviceaccounts"]).namespaces(&["prod"]).build();
    world.apply_policies(std::slice::from_ref(&p)).await;
    assert!(routed(&world).await.contains("serviceaccounts"), "added policy's resource is now sent");
    // The controller reports the policy as enforced.
    let policies: Api<StepUpPolicy> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(20), || async {
        let status = policies.get("sa-changes").await?.status.unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        match ready {
            Some(c) if c.status == "True" && c.reason == "Compiled" && status.observed_generation.is_some() => Ok(()),
            other => anyhow::bail!("Ready condition: {other:?}"),
        }
    })
    .await
    .expect("Ready=True");

    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    api.delete("sa-changes", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(20), || async {
        if routed(&world).await.contains("serviceaccounts") { anyhow::bail!("still routed") } else { Ok(()) }
    })
    .await
    .expect("deleted policy's resource is no longer sent");
    // The stepup kinds always are.
    assert!(routed(&world).await.contains("stepupchallenges"));

    // Tampering with the configuration is repaired.
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(world.admin.clone());
    let broken = serde_json::json!({"webhooks": [{"name": "validate.stepup.dev", "timeoutSeconds": 30}]});
    let _ = configs.patch("stepup.dev", &PatchParams::default(), &Patch::Strategic(&broken)).await;
    eventually(Duration::from_secs(15), || async {
        let c = configs.get("stepup.dev").await?;
        if c.webhooks.unwrap()[0].timeout_seconds == Some(5) { Ok(()) } else { anyhow::bail!("not repaired yet") }
    })
    .await
    .expect("drift repaired within seconds");
}

fn bundle_size(config: &ValidatingWebhookConfiguration) -> usize {
    let bundle = config.webhooks.as_ref().unwrap()[0].client_config.ca_bundle.clone().unwrap_or_default();
    String::from_utf8_lossy(&bundle.0).matches("BEGIN CERTIFICATE").count()
}

#[tokio::test]
async fn certificates_rotate_while_requests_flow_without_a_failed_request() {
    let world = World::new().await;
    // Every configmap write in dev goes through the webhook (an Audit policy: allowed, recorded).
    world
        .apply_policies(&[policy("dev-configmaps-audit")
            .rule(&[Create, Delete], "", &["configmaps"])
            .namespaces(&["dev"])
            .enforcement(Enforcement::Audit)
            .build()])
        .await;
    let reviews_before = world.env.metric_sum("stepup_admission_reviews_total").await;
    let reloads_before = world.env.metric_sum("stepup_certificate_reloads_total").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let api: Api<ConfigMap> = Api::namespaced(world.env.client("alice").await, "dev");
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("rotation-{i}");
                let cm: ConfigMap = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}),
                )
                .unwrap();
                for result in [
                    api.create(&PostParams::default(), &cm).await.map(|_| ()),
                    api.delete(&name, &DeleteParams::default()).await.map(|_| ()),
                ] {
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("request failed during rotation: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                i += 1;
            }
        }
    });

    let configs: Api<ValidatingWebhookConfiguration> = Api::all(world.admin.clone());
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "stepup-system");
    let before = secrets.get("stepup-webhook-tls").await.unwrap();
    // Reviews flow for a while before, between and after the rotations: the load is what is
    // measured, so these waits are its duration, not a guess at when something is done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for rotate in ["leaf", "ca"] {
        let ask = serde_json::json!({"metadata": {"annotations": {"stepup.dev/rotate": rotate}}});
        secrets.patch("stepup-webhook-tls", &PatchParams::default(), &Patch::Merge(&ask)).await.unwrap();
        let leaf = eventually(Duration::from_secs(30), || async {
            let s = secrets.get("stepup-webhook-tls").await?;
            let done = s.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key("stepup.dev/rotate"));
            if !done {
                anyhow::bail!("rotation of {rotate} pending");
            }
            Ok(String::from_utf8(s.data.unwrap()["tls.crt"].0.clone())?)
        })
        .await
        .unwrap();
        let expiry = kube_stepup::pki::not_after(&leaf).unwrap().as_second();
        // The webhook serves the new leaf once its files change: no restart.
        eventually(Duration::from_secs(20), || async {
            let served = world.env.metric_sum("stepup_certificate_expiry_timestamp_seconds").await as i64;
            if served == expiry {
                Ok(())
            } else {
                anyhow::bail!("webhook serves a certificate expiring at {served}, not {expiry}")
            }
        })
        .await
        .unwrap_or_else(|e| panic!("after rotating the {rotate}: {e}"));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = secrets.get("stepup-webhook-tls").await.unwrap();
    assert_ne!(before.data.as_ref().unwrap()["ca.crt"], after.data.as_ref().unwrap()["ca.crt"], "the CA rotated");
    assert_eq!(after.data.as_ref().unwrap()["ca-previous.crt"], before.data.as_ref().unwrap()["ca.crt"]);
    assert_eq!(bundle_size(&configs.get("stepup.dev").await.unwrap()), 2, "old and new CA during the overlap");
    assert!(world.env.metric_sum("stepup_certificate_reloads_total").await >= reloads_before + 2.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests succeeded and {failed} failed during two rotations");
    assert_eq!(failed, 0, "no request failed during the rotations");
    assert!(ok > 20, "requests were flowing ({ok})");
    let reviewed = world.env.metric_sum("stepup_admission_reviews_total").await - reviews_before;
    assert!(reviewed >= ok as f64 / 2.0, "they went through the webhook ({reviewed} reviews)");
}

#[tokio::test]
async fn a_down_webhook_fails_closed_but_cannot_lock_out_the_cluster_or_stepup() {
    let world = World::new().await;
    world
        .apply_policies(&[
            policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build(),
            // Rolling out in Audit or Warn first must not put the cluster at the webhook's mercy.
            policy("claims-audit")
                .rule(&[Create], "", &["persistentvolumeclaims"])
                .namespaces(&["dev"])
                .enforcement(Enforcement::Audit)
                .build(),
            policy("claims-warn")
                .rule(&[Delete], "", &["persistentvolumeclaims"])
                .namespaces(&["dev"])
                .enforcement(Enforcement::Warn)
                .build(),
        ])
        .await;
    world.secret("prod", "db").await;
    // Their rules are the entry's that fails open; the Deny rule stays with the one that fails
    // closed.
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(20), || async {
        let config = configs.get("stepup.dev").await?;
        let entry = |name: &str| config.webhooks.iter().flatten().find(|w| w.name == name).cloned();
        let routes = |w: &Option<k8s_openapi::api::admissionregistration::v1::ValidatingWebhook>, r: &str| {
            w.iter().flat_map(|w| w.rules.iter().flatten()).any(|rule| rule.resources.iter().flatten().any(|x| x == r))
        };
        let (closed, open) = (entry("validate.stepup.dev"), entry("advise.stepup.dev"));
        anyhow::ensure!(
            open.as_ref().and_then(|w| w.failure_policy.as_deref()) == Some("Ignore")
                && routes(&open, "persistentvolumeclaims")
                && !routes(&closed, "persistentvolumeclaims"),
            "claims not yet with the entry that fails open: {:?}",
            config.webhooks
        );
        anyhow::ensure!(
            closed.as_ref().and_then(|w| w.failure_policy.as_deref()) == Some("Fail") && routes(&closed, "secrets"),
            "secrets not with the entry that fails closed"
        );
        Ok(())
    })
    .await
    .unwrap();
    let claim = |name: &str| -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
        }))
        .unwrap()
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(world.env.client("alice").await, "dev");
    // Up: the entry that fails open reviews and records them.
    let probe = format!("audited-claim-{}", std::process::id());
    let _ = claims.delete(&probe, &DeleteParams::default()).await;
    claims.create(&PostParams::default(), &claim(&probe)).await.expect("Audit allows");
    let annotations =
        world.env.audit_annotations(|e| e["verb"] == "create" && e["objectRef"]["name"] == probe.as_str()).await;
    assert_eq!(annotations["advise.stepup.dev/decision"], "audited", "{annotations}");
    assert!(annotations.get("validate.stepup.dev/decision").is_none(), "reviewed once: {annotations}");
    claims.delete(&probe, &DeleteParams::default()).await.expect("Warn allows");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stepup.sh");
    let run = |arg: &str| {
        let out = std::process::Command::new(script).arg(arg).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run("webhook-stop");
    let outcome = async {
        // Protected operations fail closed...
        let alice: Api<Secret> = Api::namespaced(world.env.client("alice").await, "prod");
        let err = alice.delete("db", &DeleteParams::default()).await.expect_err("fails closed");
        let message = format!("{err}");
        assert!(message.contains("failed calling webhook"), "{message}");
        // ...while writes only Audit and Warn policies cover pass, unreviewed.
        let during = format!("outage-claim-{}", std::process::id());
        let _ = claims.delete(&during, &DeleteParams::default()).await;
        claims.create(&PostParams::default(), &claim(&during)).await.expect("Audit-only write fails open");
        claims.delete(&during, &DeleteParams::default()).await.expect("Warn-only write fails open");
        // ...while kube-system, stepup's own namespace and leases carry on.
        for ns in ["kube-system", "stepup-system"] {
            let admin: Api<ConfigMap> = Api::namespaced(world.admin.clone(), ns);
            let cm: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "outage-probe"}})).unwrap();
            let _ = admin.delete("outage-probe", &DeleteParams::default()).await;
            admin.create(&PostParams::default(), &cm).await.unwrap_or_else(|e| panic!("{ns} is locked out: {e}"));
            admin.delete("outage-probe", &DeleteParams::default()).await.unwrap();
        }
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(world.controller.clone(), "stepup-system");
        leases.get("stepup-controller").await.expect("the controller's lease is readable and renewable");
        // Writes no policy routes to the webhook are untouched.
        let alice_dev: Api<ConfigMap> = Api::namespaced(world.env.client("alice").await, "dev");
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "outage-dev"}})).unwrap();
        let _ = alice_dev.delete("outage-dev", &DeleteParams::default()).await;
        alice_dev.create(&PostParams::default(), &cm).await.expect("unrouted write");
        alice_dev.delete("outage-dev", &DeleteParams::default()).await.expect("unrouted delete");
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    run("webhook-start");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn overlapping_wildcards_are_merged_into_rules_the_api_server_accepts() {
    let world = World::new().await;
    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    for (name, resources) in
        [("wild-main", vec!["*"]), ("wild-all", vec!["*/*"]), ("wild-one", vec!["configmaps", "pods/*", "pods/log"])]
    {
        let p = policy(name)
            .rule(&[Delete], "", &resources)
            .namespaces(&["nowhere-e2e"])
            .enforcement(Enforcement::Audit)
            .build();
        api.patch(name, &PatchParams::apply("stepup-e2e").force(), &Patch::Apply(&p)).await.unwrap();
    }
    eventually(Duration::from_secs(20), || async {
        if routed(&world).await.contains("*/*") { Ok(()) } else { anyhow::bail!("*/* not routed yet") }
    })
    .await
    .expect("the merged rule was accepted by kube-apiserver");
    // And the configuration keeps following policies afterwards.
    world.apply_policies(&[policy("after-wildcards").rule(&[Update], "apps", &["deployments/scale"]).build()]).await;
}
