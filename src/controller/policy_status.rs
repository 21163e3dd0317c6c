//! StepUpPolicy status: `Ready` says whether the webhook can enforce the policy, with the
//! compile error (naming the field) when it cannot. Same compile function as the webhook.
//! A policy that compiles but names a resource the API server does not serve (`configmap`,
//! a CRD not installed) is not Ready either: it would protect nothing; nor is one on an API
//! group an aggregated API server serves (admission never sees those requests).

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{Context, Result, condition, merge_condition};
use crate::{
    api::StepUpPolicy,
    policy::{CompiledPolicy, served::Served},
};

pub async fn reconcile(policy: Arc<StepUpPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let unserved = match discover(&ctx).await {
        Ok(found) => {
            // An aggregated group is not served through discovery either when its server is
            // down: say the reason that holds whether it is up or not.
            let unadmitted = crate::policy::served::unadmitted(&policy.spec, &found.aggregated);
            if unadmitted.is_empty() {
                crate::policy::served::unserved(&policy.spec, &found.served)
            } else {
                unadmitted
            }
        }
        Err(error) => {
            // Discovery failing says nothing about the policy: judge it without, look again soon.
            tracing::warn!(%error, "API discovery failed; policies are not checked against served resources");
            Vec::new()
        }
    };
    let (ok, reason, message) = match CompiledPolicy::compile(&policy) {
        Err(e) => (false, "Invalid", e.to_string()),
        Ok(_) if !unserved.is_empty() => (false, "NothingToMatch", unserved.join("; ")),
        // Ready says the policy can be enforced; each webhook replica enforces it once its own
        // watch delivers it (README, "When a policy takes effect").
        Ok(_) => {
            (true, "Compiled", "valid; each webhook replica enforces it as soon as its watch delivers it".to_owned())
        }
    };
    // A CRD installed later makes the policy match after all: look again.
    let next = if unserved.is_empty() { Action::await_change() } else { Action::requeue(RECHECK) };
    let generation = policy.metadata.generation;
    let status = policy.status.clone().unwrap_or_default();
    let current = status.conditions.iter().find(|c| c.type_ == "Ready");
    let unchanged = current
        .is_some_and(|c| c.status == if ok { "True" } else { "False" } && c.reason == reason && c.message == message)
        && status.observed_generation == generation;
    if unchanged {
        return Ok(next);
    }
    let ready = condition("Ready", ok, reason, &message, generation, Timestamp::now());
    let patch =
        json!({"status": {"conditions": merge_condition(&status.conditions, ready), "observedGeneration": generation}});
    let api: Api<StepUpPolicy> = Api::all(ctx.client.clone());
    api.patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if !ok {
        let event = if reason == "Invalid" { "PolicyInvalid" } else { "PolicyMatchesNothing" };
        ctx.evidence.event(policy.as_ref(), EventType::Warning, event, message, None).await;
    }
    Ok(next)
}

/// How long discovery is reused, and how soon a policy that matches nothing is looked at again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// How long one group's discovery may take before the group counts as serving nothing.
const GROUP_DISCOVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What discovery found: the resources the API server serves, and the API groups that
/// aggregated API servers serve (group → APIService name), whose requests admission never sees.
pub struct Discovery {
    pub served: Served,
    pub aggregated: BTreeMap<String, String>,
}

/// What the API server serves, from discovery at most [`RECHECK`] old. A group whose discovery
/// fails (an aggregated API server that is down) counts as serving nothing.
async fn discover(ctx: &Context) -> std::result::Result<Arc<Discovery>, kube::Error> {
    if let Some((at, found)) = ctx.served.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && at.elapsed() < RECHECK
    {
        return Ok(found.clone());
    }
    let client = &ctx.client;
    let aggregated = aggregated(client).await;
    let mut served = Served::new();
    for r in client.list_core_api_resources("v1").await?.resources {
        served.insert((String::new(), r.name));
    }
    // Aggregated groups are not asked: their policies are judged by `unadmitted`, and an
    // extension server that is down answers 503, which the client retries for a minute.
    for group in client.list_api_groups().await?.groups.into_iter().filter(|g| !aggregated.contains_key(&g.name)) {
        for version in &group.versions {
            let asked = tokio::time::timeout(GROUP_DISCOVERY, client.list_api_group_resources(&version.group_version));
            if let Ok(Ok(list)) = asked.await {
                served.extend(list.resources.into_iter().map(|r| (group.name.clone(), r.name)));
            }
        }
    }
    let found = Arc::new(Discovery { served, aggregated });
    *ctx.served.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), found.clone()));
    Ok(found)
}

/// API groups served by an aggregated API server: an APIService with a backing service.
/// Without permission to list APIServices (an older chart's role), none are known.
async fn aggregated(client: &kube::Client) -> BTreeMap<String, String> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
        "apiservices",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.list(&Default::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|s| !s.data["spec"]["service"].is_null())
            .filter_map(|s| Some((s.data["spec"]["group"].as_str()?.to_owned(), s.name_any())))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot list APIServices; policies on aggregated APIs are not recognised");
            BTreeMap::new()
        }
    }
}
