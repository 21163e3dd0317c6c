//! StepUpPolicy status: `Ready` says whether the webhook can enforce the policy, with the
//! compile error (naming the field) when it cannot. Same compile function as the webhook.
//! A policy that compiles but names a resource the API server does not serve (`configmap`,
//! a CRD not installed) is not Ready either: it would protect nothing; nor is one on an API
//! group an aggregated API server serves (admission never sees those requests).

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{Context, Result, condition, merge_condition};
use stepup_core::{
    api::StepUpPolicy,
    policy::{CompiledPolicy, served::Served},
};

pub async fn reconcile(policy: Arc<StepUpPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let unserved = match discover(&ctx).await {
        Ok(found) => {
            // An aggregated group is not served through discovery either when its server is
            // down: say the reason that holds whether it is up or not.
            let unadmitted = stepup_core::policy::served::unadmitted(&policy.spec, &found.aggregated);
            if unadmitted.is_empty() {
                stepup_core::policy::served::unserved(&policy.spec, &found.served)
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
        Ok(p) if p.accepts_method(stepup_core::api::Method::Oidc) && ctx.identity_providers.is_none() => (
            false,
            "IdentityProviderNotConfigured",
            format!(
                "the policy accepts OIDC, but the stepup controller trusts no identity provider (--oidc-authentication-config, \
                 the chart's oidc.authenticationConfig), so no OIDC step-up can satisfy it{}",
                match p
                    .methods
                    .iter()
                    .filter(|m| **m != stepup_core::api::Method::Oidc)
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                {
                    others if others.is_empty() => String::new(),
                    others => format!(" ({} still can)", others.join(", ")),
                }
            ),
        ),
        // Ready says the policy can be enforced; each webhook replica enforces it once its own
        // watch delivers it (README, "When a policy takes effect").
        Ok(_) => match unauthorized_probes(&ctx, &policy).await {
            Some(missing) if !missing.is_empty() => (
                false,
                "AuthorizerNotConfigured",
                format!(
                    "the API server does not send {} to stepup's authorizer, so RBAC alone decides them{}: render \
                     `stepup authorizer-config` again and put it where --authorization-config points (README, \
                     \"Reads: the authorizer\")",
                    missing.join(", "),
                    if missing.iter().any(|m| m.starts_with("impersonate userextras/")) {
                        " (whoever may impersonate could put a sign-in on a request)"
                    } else {
                        ""
                    }
                ),
            ),
            _ => (
                true,
                "Compiled",
                "valid; each webhook replica enforces it as soon as its watch delivers it".to_owned(),
            ),
        },
    };
    let next = if reason == "AuthorizerNotConfigured" {
        Action::requeue(AUTHORIZER_RECHECK)
    } else if !unserved.is_empty() || needs_authorizer(&policy) {
        // A CRD installed later makes the policy match after all; an authorizer file put back
        // to an older version stops sending its reads: look again.
        Action::requeue(RECHECK)
    } else {
        Action::await_change()
    };
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
        let event = match reason {
            "Invalid" => "PolicyInvalid",
            "AuthorizerNotConfigured" => "PolicyReadsNotEnforced",
            "IdentityProviderNotConfigured" => "PolicyMethodUnavailable",
            _ => "PolicyMatchesNothing",
        };
        ctx.evidence.event(policy.as_ref(), EventType::Warning, event, message, None).await;
    }
    Ok(next)
}

/// How long discovery is reused, and how soon a policy that matches nothing is looked at again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// How soon a policy whose reads the API server does not send to stepup is looked at again
/// (the operator is rendering the authorizer file).
const AUTHORIZER_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// A policy that names verbs (reads), or accepts a `Session`: the authorizer enforces the
/// first and refuses impersonating a sign-in into a request for the second.
fn needs_authorizer(policy: &StepUpPolicy) -> bool {
    policy.spec.match_.rules.iter().any(|r| !r.verbs.is_empty())
        || policy.spec.methods.contains(&stepup_core::api::Method::Session)
}

/// One request per rule of verbs: its first verb, group and resource, asked for the probe
/// identity in no namespace (which every namespace condition of the rendered file admits); and
/// for a policy accepting `Session`, impersonating each extra a sign-in's claims arrive in
/// (`keys`: a file rendered for other keys would let the configured ones be forged).
pub fn probes(policy: &StepUpPolicy, keys: &stepup_core::policy::SignInKeys) -> Vec<ResourceAttributes> {
    let concrete = |s: &str| if s == "*" { "stepup-probe".to_owned() } else { s.to_owned() };
    let session = policy.spec.methods.contains(&stepup_core::api::Method::Session);
    let sign_in =
        [&keys.acr, &keys.amr, &keys.auth_time].into_iter().filter(move |_| session).map(|key| ResourceAttributes {
            verb: Some("impersonate".to_owned()),
            group: Some("authentication.k8s.io".to_owned()),
            resource: Some("userextras".to_owned()),
            subresource: Some(key.clone()),
            ..ResourceAttributes::default()
        });
    policy
        .spec
        .match_
        .rules
        .iter()
        .filter(|r| !r.verbs.is_empty())
        .map(|r| {
            let resource = r.resources.first().map(String::as_str).unwrap_or("*");
            let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
            ResourceAttributes {
                verb: Some(r.verbs[0].as_str().to_owned()),
                group: Some(
                    r.api_groups.first().map_or(String::new(), |g| if g == "*" { String::new() } else { g.clone() }),
                ),
                resource: Some(concrete(resource)),
                subresource: (!subresource.is_empty()).then(|| concrete(subresource)),
                ..ResourceAttributes::default()
            }
        })
        .chain(sign_in)
        .collect()
}

/// The policy's probes the API server did not send to stepup's authorizer (`verb resource`),
/// or `None` when asking failed (that says nothing about the policy). An answer is reused for
/// [`AUTHORIZER_RECHECK`] by every policy that asks the same: hundreds of read policies of one
/// shape cost one SubjectAccessReview per recheck, not hundreds. A policy judged for the first
/// time (new, or changed since its Ready condition) asks afresh: an answer cached for another
/// policy a moment ago may be about an authorizer file that has changed since.
async fn unauthorized_probes(ctx: &Context, policy: &StepUpPolicy) -> Option<Vec<String>> {
    let judged = policy
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.observed_generation.is_some() && c.observed_generation == policy.metadata.generation);
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let mut missing = Vec::new();
    for attributes in probes(policy, &ctx.settings.sign_in_keys) {
        let what = format!(
            "{} {}{}",
            attributes.verb.as_deref().unwrap_or_default(),
            attributes.resource.as_deref().unwrap_or_default(),
            attributes.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default()
        );
        let key = format!("{} {what}", attributes.group.as_deref().unwrap_or_default());
        let known = ctx
            .probed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|(at, _)| judged && at.elapsed() < AUTHORIZER_RECHECK)
            .map(|(_, sent)| *sent);
        if let Some(sent) = known {
            if !sent {
                missing.push(what);
            }
            continue;
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(stepup_core::api::AUTHORIZER_PROBE_USER.to_owned()),
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        match api.create(&kube::api::PostParams::default(), &review).await {
            Ok(answer) => {
                let reason = answer.status.and_then(|s| s.reason).unwrap_or_default();
                let sent = reason.contains(stepup_core::api::AUTHORIZER_PROBE_REASON);
                ctx.probed.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (std::time::Instant::now(), sent));
                if !sent {
                    missing.push(what);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not ask the API server whether it sends reads to stepup's authorizer");
                return None;
            }
        }
    }
    Some(missing)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{
        api::{Operation::Delete, Verb::*},
        testing::policy,
    };

    #[test]
    fn one_probe_per_rule_of_verbs_with_a_concrete_resource() {
        let p = policy("p")
            .rule(&[Delete], "", &["secrets"])
            .verbs(&[List, Get], "", &["secrets"])
            .verbs(&[Get], "*", &["nodes/proxy", "pods/log"])
            .verbs(&[Watch], "apps", &["*"])
            .namespaces(&["prod"])
            .build();
        let asked: Vec<(String, String, String, Option<String>)> = probes(&p, &Default::default())
            .into_iter()
            .map(|a| (a.verb.unwrap(), a.group.unwrap(), a.resource.unwrap(), a.subresource))
            .collect();
        assert_eq!(
            asked,
            [
                ("list".into(), "".into(), "secrets".into(), None),
                ("get".into(), "".into(), "nodes".into(), Some("proxy".into())),
                ("watch".into(), "apps".into(), "stepup-probe".into(), None),
            ]
        );
        assert!(
            probes(&policy("w").rule(&[Delete], "", &["secrets"]).build(), &Default::default()).is_empty(),
            "writes need no probe"
        );
    }

    #[test]
    fn a_session_policy_probes_impersonating_each_configured_sign_in_key() {
        let keys =
            stepup_core::policy::SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/t")
                .unwrap();
        let p = policy("s").rule(&[Delete], "", &["secrets"]).methods(&[stepup_core::api::Method::Session]).build();
        let asked: Vec<(String, String, String, Option<String>)> = probes(&p, &keys)
            .into_iter()
            .map(|a| (a.verb.unwrap(), a.group.unwrap(), a.resource.unwrap(), a.subresource))
            .collect();
        let forging =
            |key: &str| ("impersonate".into(), "authentication.k8s.io".into(), "userextras".into(), Some(key.into()));
        assert_eq!(
            asked,
            [forging("sso.example.com/acr"), forging("sso.example.com/amr"), forging("sso.example.com/t")]
        );
    }
}
