//! The ValidatingWebhookConfiguration, managed by the controller: its rules are the union of
//! what the policies match (plus the stepup kinds), so requests no policy cares about never
//! leave the API server; match conditions and a namespace selector keep control-plane
//! traffic, kube-system and stepup itself away from the webhook; the caBundle comes from the
//! certificates below (or from cert-manager's injector).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference},
};

use crate::{
    api::{GROUP, POD_NAME_EXTRA, POD_UID_EXTRA, StepUpPolicy},
    policy::{CompiledPolicy, Masks, OperationSet},
};

/// Name of the one webhook in the configuration; the API server prefixes audit annotation
/// keys with it (`validate.stepup.dev/decision`).
pub const WEBHOOK_NAME: &str = "validate.stepup.dev";

/// Where the API server sends reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The webhook Service in the stepup namespace, port 443.
    Service { name: String },
    /// A URL (for a webhook running outside the cluster, as in the e2e tests).
    Url(String),
}

#[derive(Clone, Debug)]
pub struct ConfigSettings {
    pub name: String,
    pub namespace: String,
    pub target: Target,
    pub timeout_seconds: i32,
    /// Usernames whose requests never go to the webhook (stepup's own service accounts) when
    /// they come with a pod-bound credential, except on stepup kinds.
    pub own_users: Vec<String>,
    /// Service accounts without a pod-bound credential are people (the webhook's `Masks`):
    /// their requests must reach the webhook.
    pub masks: Masks,
    /// With cert-manager, `<namespace>/<certificate>`: the injector fills the caBundle.
    pub inject_ca_from: Option<String>,
    pub owner: Option<OwnerReference>,
}

/// The admission rules covering every valid policy, merged: one rule per (group, version,
/// operations), listing its resources. Deterministic order.
pub fn policy_rules(policies: &[StepUpPolicy]) -> Vec<RuleWithOperations> {
    let mut by_target: BTreeMap<(String, String), BTreeMap<String, u8>> = BTreeMap::new();
    for p in policies.iter().filter(|p| CompiledPolicy::compile(p).is_ok()) {
        for rule in &p.spec.match_.rules {
            let bits = OperationSet::from_operations(&rule.operations).bits();
            for group in &rule.api_groups {
                for version in &rule.api_versions {
                    let resources = by_target.entry((group.clone(), version.clone())).or_default();
                    for r in &rule.resources {
                        *resources.entry(r.clone()).or_default() |= bits;
                    }
                }
            }
        }
    }
    let mut grouped: BTreeMap<(String, String, u8), Vec<String>> = BTreeMap::new();
    for ((group, version), resources) in by_target {
        for (resource, bits) in resources {
            grouped.entry((group.clone(), version.clone(), bits)).or_default().push(resource);
        }
    }
    grouped
        .into_iter()
        .map(|((group, version, bits), resources)| RuleWithOperations {
            api_groups: Some(vec![group]),
            api_versions: Some(vec![version]),
            operations: Some(OperationSet::from_bits(bits).admission_names().into_iter().map(String::from).collect()),
            resources: Some(normalize_resources(resources)),
            scope: Some("*".into()),
        })
        .collect()
}

/// Drops resources a wildcard in the same rule already covers. kube-apiserver refuses a rule
/// that lists both (`*/*` with anything, `*` with plain resources, `x/*` with `x/y`, `*/y`
/// with `x/y`), and one refused rule would stop the whole configuration from updating.
pub fn normalize_resources(resources: Vec<String>) -> Vec<String> {
    let split = |r: &str| -> (String, Option<String>) {
        match r.split_once('/') {
            Some((res, sub)) => (res.to_owned(), Some(sub.to_owned())),
            None => (r.to_owned(), None),
        }
    };
    if resources.iter().any(|r| r == "*/*") {
        return vec!["*/*".to_owned()];
    }
    let all_main = resources.iter().any(|r| r == "*");
    let any_sub_of: BTreeSet<String> =
        resources.iter().filter_map(|r| r.strip_suffix("/*").map(str::to_owned)).collect();
    let sub_of_any: BTreeSet<String> =
        resources.iter().filter_map(|r| r.strip_prefix("*/").map(str::to_owned)).collect();
    let mut out: Vec<String> = resources
        .into_iter()
        .filter(|r| {
            let (res, sub) = split(r);
            match sub {
                // `x/*` covers `x` itself; `*` covers every main resource.
                None => r == "*" || !(all_main || any_sub_of.contains(&res)),
                Some(sub) if sub == "*" || res == "*" => true,
                Some(sub) => !(any_sub_of.contains(&res) || sub_of_any.contains(&sub)),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The stepup kinds always go to the webhook: the built-in identity rules live there.
fn stepup_rule() -> RuleWithOperations {
    let mut resources: Vec<String> = ["stepuppolicies", "stepupgrants", "stepupchallenges", "stepupenrollments"]
        .iter()
        .flat_map(|r| [r.to_string(), format!("{r}/status")])
        .filter(|r| r != "stepuppolicies/status")
        .collect();
    resources.push("stepuplogs".into());
    RuleWithOperations {
        api_groups: Some(vec![GROUP.into()]),
        api_versions: Some(vec!["*".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
        resources: Some(resources),
        scope: Some("Cluster".into()),
    }
}

/// Namespace UPDATE when a policy selects namespaces by label (a label change can take a
/// namespace out of it), and DELETE when a policy protects deleting something that lives in
/// namespaces (deleting the namespace deletes it all). Subresources too: labels travel with
/// any update of the object.
fn namespace_rule(policies: &[StepUpPolicy]) -> Option<RuleWithOperations> {
    let compiled: Vec<CompiledPolicy> = policies.iter().filter_map(|p| CompiledPolicy::compile(p).ok()).collect();
    let mut operations = Vec::new();
    if compiled.iter().any(CompiledPolicy::has_namespace_selector) {
        operations.push("UPDATE".to_owned());
    }
    if compiled.iter().any(CompiledPolicy::protects_namespaced_deletes) {
        operations.push("DELETE".to_owned());
    }
    (!operations.is_empty()).then(|| RuleWithOperations {
        api_groups: Some(vec![String::new()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(operations),
        resources: Some(vec!["namespaces".into(), "namespaces/status".into(), "namespaces/finalize".into()]),
        scope: Some("Cluster".into()),
    })
}

/// CEL: the request's credential is a service-account token bound to a pod.
fn pod_bound_cel() -> String {
    format!(
        "(has(request.userInfo.extra) && '{POD_NAME_EXTRA}' in request.userInfo.extra && '{POD_UID_EXTRA}' in request.userInfo.extra)"
    )
}

fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace(['\\', '\''], ""))
}

fn condition(name: &str, expression: String) -> MatchCondition {
    MatchCondition { name: name.into(), expression }
}

/// Whether any policy names subjects explicitly, which may include service accounts or
/// other `system:` identities; then those must reach the webhook too.
fn names_subjects(policies: &[StepUpPolicy]) -> bool {
    policies.iter().any(|p| p.spec.match_.subjects.is_some())
}

/// The configuration the controller keeps in place. Pure.
pub fn desired(
    policies: &[StepUpPolicy],
    s: &ConfigSettings,
    ca_bundle: Option<&[u8]>,
) -> ValidatingWebhookConfiguration {
    let mut rules = vec![stepup_rule()];
    rules.extend(policy_rules(policies));
    rules.extend(namespace_rule(policies));
    let own: Vec<String> = s.own_users.iter().map(|u| cel_string(u)).collect();
    let pod_bound = pod_bound_cel();
    let mut conditions = vec![
        // Only stepup's own pods skip review, and never on stepup kinds: wearing their names
        // (impersonation, a bare token) is a mask like any other.
        condition(
            "not-stepup-itself",
            format!(
                "request.resource.group == '{GROUP}' || !(request.userInfo.username in [{}] && {pod_bound})",
                own.join(", ")
            ),
        ),
        // Nodes skip review, but never on stepup kinds: a node's name is a mask too.
        condition(
            "not-nodes",
            format!("request.resource.group == '{GROUP}' || !request.userInfo.username.startsWith('system:node:')"),
        ),
        condition(
            "not-leases",
            "!(request.resource.group == 'coordination.k8s.io' && request.resource.resource == 'leases')".into(),
        ),
        condition("not-events", "request.resource.resource != 'events'".into()),
    ];
    if !names_subjects(policies) {
        // Policies without subjects apply to people only; control-plane identities and
        // workloads need not be asked about anything but the stepup kinds. A service account
        // without a pod-bound credential is a person's mask, unless its namespace is trusted.
        let person = if s.masks.enabled {
            let trusted: Vec<String> = s
                .masks
                .trusted_namespaces
                .iter()
                .map(|ns| {
                    format!(
                        " && !request.userInfo.username.startsWith({})",
                        cel_string(&format!("system:serviceaccount:{ns}:"))
                    )
                })
                .collect();
            format!(
                " || (request.userInfo.username.startsWith('system:serviceaccount:'){} && !{pod_bound})",
                trusted.concat()
            )
        } else {
            String::new()
        };
        conditions.push(condition(
            "people-only",
            format!("request.resource.group == '{GROUP}' || !request.userInfo.username.startsWith('system:'){person}"),
        ));
    }
    let client_config = match &s.target {
        Target::Service { name } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: s.namespace.clone(),
                name: name.clone(),
                path: Some("/validate".into()),
                port: Some(443),
            }),
            url: None,
            ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        },
        Target::Url(url) => WebhookClientConfig {
            service: None,
            url: Some(url.clone()),
            ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        },
    };
    let webhook = ValidatingWebhook {
        name: WEBHOOK_NAME.into(),
        admission_review_versions: vec!["v1".into()],
        client_config,
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        match_conditions: Some(conditions),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(vec!["kube-system".into(), s.namespace.clone()]),
            }]),
            match_labels: None,
        }),
        object_selector: None,
        rules: Some(rules),
        side_effects: "NoneOnDryRun".into(),
        timeout_seconds: Some(s.timeout_seconds),
    };
    let mut annotations = BTreeMap::new();
    if let Some(from) = &s.inject_ca_from {
        annotations.insert("cert-manager.io/inject-ca-from".to_owned(), from.clone());
    }
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "stepup-controller".to_owned())])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: s.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        webhooks: Some(vec![webhook]),
    }
}

/// Resources the configuration sends to the webhook (for tests and the plugin's `check`).
pub fn routed_resources(config: &ValidatingWebhookConfiguration) -> BTreeSet<String> {
    config
        .webhooks
        .iter()
        .flatten()
        .flat_map(|w| w.rules.iter().flatten())
        .flat_map(|r| r.resources.iter().flatten().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{Enforcement, Operation::*},
        testing::policy,
    };

    fn settings() -> ConfigSettings {
        ConfigSettings {
            name: "stepup.dev".into(),
            namespace: "stepup-system".into(),
            target: Target::Service { name: "stepup-webhook".into() },
            timeout_seconds: 5,
            own_users: vec!["system:serviceaccount:stepup-system:stepup-controller".into()],
            masks: Masks::default(),
            inject_ca_from: None,
            owner: None,
        }
    }

    #[test]
    fn rules_are_the_union_of_policies_merged_by_target() {
        let policies = vec![
            policy("a").rule(&[Delete], "", &["secrets"]).build(),
            policy("b").rule(&[Update], "", &["secrets", "configmaps"]).enforcement(Enforcement::Warn).build(),
            policy("c").rule(&[Connect], "", &["pods/exec"]).build(),
            policy("d").rule(&[All], "rbac.authorization.k8s.io", &["*"]).build(),
        ];
        let rules = policy_rules(&policies);
        let find = |res: &str| {
            rules.iter().find(|r| r.resources.as_ref().unwrap().contains(&res.to_owned())).cloned().unwrap()
        };
        assert_eq!(find("secrets").operations.unwrap(), vec!["UPDATE", "DELETE"]);
        assert_eq!(find("configmaps").operations.unwrap(), vec!["UPDATE"]);
        assert_eq!(find("pods/exec").operations.unwrap(), vec!["CONNECT"]);
        assert_eq!(find("*").operations.unwrap(), vec!["*"]);
        assert_eq!(find("*").api_groups.unwrap(), vec!["rbac.authorization.k8s.io"]);
    }

    #[test]
    fn wildcards_swallow_what_they_cover_as_the_api_server_requires() {
        let norm = |rs: &[&str]| normalize_resources(rs.iter().map(|r| r.to_string()).collect());
        assert_eq!(norm(&["*", "*/*", "secrets"]), vec!["*/*"]);
        assert_eq!(norm(&["*", "secrets", "pods/exec"]), vec!["*", "pods/exec"]);
        assert_eq!(norm(&["pods/*", "pods", "pods/exec", "secrets"]), vec!["pods/*", "secrets"]);
        assert_eq!(norm(&["*/scale", "deployments/scale", "deployments"]), vec!["*/scale", "deployments"]);
        assert_eq!(norm(&["secrets", "configmaps"]), vec!["configmaps", "secrets"]);
        // Two policies that together would produce a refused rule.
        let policies = vec![
            policy("all").rule(&[Delete], "", &["*"]).build(),
            policy("everything").rule(&[Delete], "", &["*/*"]).build(),
            policy("one").rule(&[Delete], "", &["secrets"]).build(),
        ];
        let rules = policy_rules(&policies);
        let core_delete = rules.iter().find(|r| r.api_groups.as_deref() == Some(&["".to_owned()][..])).unwrap();
        assert_eq!(core_delete.resources.as_deref(), Some(&["*/*".to_owned()][..]));
    }

    #[test]
    fn invalid_policies_route_nothing_and_no_policy_routes_only_stepup_kinds() {
        let mut bad = policy("bad").rule(&[Delete], "", &["secrets"]).build();
        bad.spec.match_.namespaces = vec!["Not Valid".into()];
        let config = desired(&[bad], &settings(), None);
        let routed = routed_resources(&config);
        assert!(!routed.contains("secrets"));
        assert!(routed.contains("stepupchallenges") && routed.contains("stepupgrants/status"));
    }

    #[test]
    fn system_identities_are_skipped_unless_a_policy_names_subjects() {
        let people = desired(&[policy("p").rule(&[Delete], "", &["secrets"]).build()], &settings(), None);
        let names = |c: &ValidatingWebhookConfiguration| -> Vec<String> {
            c.webhooks.as_ref().unwrap()[0].match_conditions.as_ref().unwrap().iter().map(|m| m.name.clone()).collect()
        };
        assert!(names(&people).contains(&"people-only".to_owned()));
        let ci = policy("ci").rule(&[Delete], "", &["secrets"]).subjects(&[], &[], &[("ci", "deployer")]).build();
        let with_sa = desired(&[ci], &settings(), None);
        assert!(!names(&with_sa).contains(&"people-only".to_owned()));
        assert!(
            names(&with_sa).contains(&"not-leases".to_owned())
                && names(&with_sa).contains(&"not-stepup-itself".to_owned())
        );
    }

    #[test]
    fn the_configuration_is_safe_by_construction() {
        let mut s = settings();
        s.inject_ca_from = Some("stepup-system/stepup-webhook".into());
        let c = desired(&[], &s, Some(b"PEM"));
        let w = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.side_effects, "NoneOnDryRun");
        assert_eq!(w.timeout_seconds, Some(5));
        let excluded =
            w.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap()[0].values.clone().unwrap();
        assert_eq!(excluded, vec!["kube-system", "stepup-system"]);
        assert_eq!(w.client_config.service.as_ref().unwrap().path.as_deref(), Some("/validate"));
        assert_eq!(c.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"], "stepup-system/stepup-webhook");
    }

    fn expression(c: &ValidatingWebhookConfiguration, name: &str) -> String {
        let w = &c.webhooks.as_ref().unwrap()[0];
        w.match_conditions.as_ref().unwrap().iter().find(|m| m.name == name).map(|m| m.expression.clone()).unwrap()
    }

    #[test]
    fn masked_service_accounts_reach_the_webhook_and_stepups_own_pods_only_skip_it_elsewhere() {
        let c = desired(&[policy("p").rule(&[Delete], "", &["secrets"]).build()], &settings(), None);
        let bound = "(has(request.userInfo.extra) && 'authentication.kubernetes.io/pod-name' in request.userInfo.extra && 'authentication.kubernetes.io/pod-uid' in request.userInfo.extra)";
        assert_eq!(
            expression(&c, "people-only"),
            format!(
                "request.resource.group == 'stepup.dev' || !request.userInfo.username.startsWith('system:') || (request.userInfo.username.startsWith('system:serviceaccount:') && !request.userInfo.username.startsWith('system:serviceaccount:kube-system:') && !{bound})"
            )
        );
        assert_eq!(
            expression(&c, "not-stepup-itself"),
            format!(
                "request.resource.group == 'stepup.dev' || !(request.userInfo.username in ['system:serviceaccount:stepup-system:stepup-controller'] && {bound})"
            )
        );
        let mut off = settings();
        off.masks.enabled = false;
        let c = desired(&[policy("p").rule(&[Delete], "", &["secrets"]).build()], &off, None);
        assert_eq!(
            expression(&c, "people-only"),
            "request.resource.group == 'stepup.dev' || !request.userInfo.username.startsWith('system:')"
        );
        // Quotes cannot break out of a CEL string.
        let mut odd = settings();
        odd.masks.trusted_namespaces = vec!["x') || true || ('".into()];
        let c = desired(&[policy("p").rule(&[Delete], "", &["secrets"]).build()], &odd, None);
        assert!(expression(&c, "people-only").contains("startsWith('system:serviceaccount:x) || true || (:')"));
    }

    #[test]
    fn namespaces_are_routed_when_a_label_change_or_a_delete_could_remove_protection() {
        let namespace_rule = |policies: &[StepUpPolicy]| {
            let c = desired(policies, &settings(), None);
            c.webhooks.unwrap()[0]
                .rules
                .clone()
                .unwrap()
                .into_iter()
                .find(|r| r.resources.as_deref().is_some_and(|rs| rs.contains(&"namespaces/status".to_owned())))
                .map(|r| r.operations.unwrap())
        };
        let exec = policy("exec").rule(&[Connect], "", &["pods/exec"]).namespaces(&["prod"]).build();
        assert_eq!(namespace_rule(std::slice::from_ref(&exec)), None);
        let by_label = policy("l").rule(&[Connect], "", &["pods/exec"]).namespace_labels(&[("env", "prod")]).build();
        assert_eq!(namespace_rule(&[exec.clone(), by_label]), Some(vec!["UPDATE".to_owned()]));
        let deletes = policy("d").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build();
        assert_eq!(namespace_rule(&[exec.clone(), deletes.clone()]), Some(vec!["DELETE".to_owned()]));
        let cluster_only = policy("c").rule(&[Delete], "rbac.authorization.k8s.io", &["clusterroles"]).build();
        assert_eq!(namespace_rule(&[cluster_only]), None);
        let both = policy("b").rule(&[Delete], "", &["secrets"]).namespace_labels(&[("env", "prod")]).build();
        assert_eq!(namespace_rule(&[both]), Some(vec!["UPDATE".to_owned(), "DELETE".to_owned()]));
    }
}
