//! The ValidatingWebhookConfiguration, managed by the controller: its rules are the union of
//! what the policies match (plus the stepup kinds), split between an entry that fails closed
//! and one that fails open ([`rules`]), so requests no policy cares about never leave the API
//! server; match conditions and a namespace selector keep control-plane
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

use stepup_core::{
    api::{
        ADVISORY_PATH, ADVISORY_WEBHOOK, ENFORCING_PATH, ENFORCING_WEBHOOK, Enforcement, GROUP, Operation,
        POD_NAME_EXTRA, POD_UID_EXTRA, StepUpPolicy,
    },
    policy::{CompiledPolicy, Masks, OperationSet},
};

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

/// One routed (group, version, resource, scope) and the operations sent for it: CREATE 1,
/// UPDATE 2, DELETE 4, CONNECT 8 ([`OperationSet::bits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    group: String,
    version: String,
    resource: String,
    scope: &'static str,
    bits: u8,
}

impl Route {
    /// Whether some request could match both: conservative (a `*` overlaps everything, and
    /// `x/*` overlaps `x`), so doubt sends a request to the entry that fails closed.
    fn overlaps(&self, other: &Route) -> bool {
        let names = |a: &str, b: &str| a == b || a == "*" || b == "*";
        let resources = |a: &str, b: &str| {
            let (main_a, sub_a) = a.split_once('/').map_or((a, None), |(m, s)| (m, Some(s)));
            let (main_b, sub_b) = b.split_once('/').map_or((b, None), |(m, s)| (m, Some(s)));
            names(main_a, main_b)
                && match (sub_a, sub_b) {
                    (None, None) => true,
                    (Some(x), Some(y)) => names(x, y),
                    (None, Some(s)) | (Some(s), None) => s == "*",
                }
        };
        self.bits & other.bits != 0
            && names(self.group.as_str(), other.group.as_str())
            && names(self.version.as_str(), other.version.as_str())
            && resources(&self.resource, &other.resource)
            && (self.scope == other.scope || self.scope == "*" || other.scope == "*")
    }
}

/// The routes of the policies' rules.
fn policy_routes<'p>(policies: impl IntoIterator<Item = &'p StepUpPolicy>) -> Vec<Route> {
    let mut routes = Vec::new();
    for p in policies {
        for rule in &p.spec.match_.rules {
            let bits = OperationSet::from_operations(&rule.operations).bits();
            // A rule of verbs only is the authorizer's: admission has nothing to route.
            if bits == 0 {
                continue;
            }
            for group in &rule.api_groups {
                for version in &rule.api_versions {
                    for resource in &rule.resources {
                        routes.push(Route {
                            group: group.clone(),
                            version: version.clone(),
                            resource: resource.clone(),
                            scope: "*",
                            bits,
                        });
                    }
                }
            }
        }
    }
    routes
}

/// The admission rules of one entry, merged: one rule per (group, version, scope,
/// operations), listing its resources. Deterministic order.
fn merged_rules(routes: &[Route]) -> Vec<RuleWithOperations> {
    let mut by_target: BTreeMap<(String, String, &'static str), BTreeMap<String, u8>> = BTreeMap::new();
    for r in routes {
        *by_target
            .entry((r.group.clone(), r.version.clone(), r.scope))
            .or_default()
            .entry(r.resource.clone())
            .or_default() |= r.bits;
    }
    let mut grouped: BTreeMap<(String, String, &'static str, u8), Vec<String>> = BTreeMap::new();
    for ((group, version, scope), resources) in by_target {
        for (resource, bits) in resources {
            grouped.entry((group.clone(), version.clone(), scope, bits)).or_default().push(resource);
        }
    }
    grouped
        .into_iter()
        .map(|((group, version, scope, bits), resources)| RuleWithOperations {
            api_groups: Some(vec![group]),
            api_versions: Some(vec![version]),
            operations: Some(OperationSet::from_bits(bits).admission_names().into_iter().map(String::from).collect()),
            resources: Some(normalize_resources(resources)),
            scope: Some(scope.into()),
        })
        .collect()
}

/// The rules of the two webhook entries. `enforcing` fails closed: the stepup kinds and
/// everything a `Deny` policy needs. `advisory` fails open: what only `Audit` and `Warn`
/// policies need. No request can match both (an advisory rule that overlaps an enforcing one
/// is enforcing), so every request is reviewed once, by one entry, with every policy: the
/// webhook serves both paths alike, and a policy that just became `Deny` is enforced on either.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub enforcing: Vec<RuleWithOperations>,
    pub advisory: Vec<RuleWithOperations>,
}

/// Splits the valid policies' rules between the two entries.
pub fn rules(policies: &[StepUpPolicy]) -> Rules {
    let valid: Vec<(&StepUpPolicy, CompiledPolicy)> =
        policies.iter().filter_map(|p| CompiledPolicy::compile(p).ok().map(|c| (p, c))).collect();
    let (deny, advise): (Vec<_>, Vec<_>) = valid.iter().partition(|(_, c)| c.enforcement == Enforcement::Deny);
    let mut closed = policy_routes(deny.iter().map(|(p, _)| *p));
    closed.extend(namespace_routes(deny.iter().map(|(_, c)| c)));
    // The advisory entry never sees the stepup kinds (a match condition says so), which are
    // the enforcing entry's whatever a policy says.
    let mut open = policy_routes(advise.iter().map(|(p, _)| *p));
    open.retain(|r| r.group != GROUP);
    open.extend(namespace_routes(advise.iter().map(|(_, c)| c)));
    // Until no advisory route overlaps an enforcing one, the overlapping operations of each
    // move over (what moved may overlap further advisory routes).
    loop {
        let mut moved = false;
        for route in &mut open {
            let overlapping = closed.iter().filter(|c| route.overlaps(c)).fold(0, |acc, c| acc | c.bits) & route.bits;
            if overlapping != 0 {
                closed.push(Route { bits: overlapping, ..route.clone() });
                route.bits &= !overlapping;
                moved = true;
            }
        }
        open.retain(|r| r.bits != 0);
        if !moved {
            break;
        }
    }
    closed.extend(stepup_routes());
    Rules { enforcing: merged_rules(&closed), advisory: merged_rules(&open) }
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

/// The stepup kinds always go to the webhook, failing closed: the built-in identity rules
/// live there.
fn stepup_routes() -> Vec<Route> {
    let mut resources: Vec<String> = ["stepuppolicies", "stepupgrants", "stepupchallenges", "stepupenrollments"]
        .iter()
        .flat_map(|r| [r.to_string(), format!("{r}/status")])
        .filter(|r| r != "stepuppolicies/status")
        .collect();
    resources.push("stepuplogs".into());
    let bits = OperationSet::from_operations(&[Operation::Create, Operation::Update, Operation::Delete]).bits();
    resources
        .into_iter()
        .map(|resource| Route { group: GROUP.into(), version: "*".into(), resource, scope: "Cluster", bits })
        .collect()
}

/// Namespace UPDATE when a policy selects namespaces by label (a label change can take a
/// namespace out of it), and DELETE when a policy protects deleting something that lives in
/// namespaces (deleting the namespace deletes it all). Subresources too: labels travel with
/// any update of the object.
fn namespace_routes<'p>(policies: impl IntoIterator<Item = &'p CompiledPolicy>) -> Vec<Route> {
    let mut bits = 0;
    for p in policies {
        if p.has_namespace_selector() {
            bits |= OperationSet::from_operations(&[Operation::Update]).bits();
        }
        if p.protects_namespaced_deletes() {
            bits |= OperationSet::from_operations(&[Operation::Delete]).bits();
        }
    }
    if bits == 0 {
        return Vec::new();
    }
    ["namespaces", "namespaces/status", "namespaces/finalize"]
        .into_iter()
        .map(|r| Route { group: String::new(), version: "v1".into(), resource: r.into(), scope: "Cluster", bits })
        .collect()
}

/// CEL: the request's credential is a service-account token bound to a pod.
fn pod_bound_cel() -> String {
    format!(
        "(has(request.userInfo.extra) && '{POD_NAME_EXTRA}' in request.userInfo.extra && '{POD_UID_EXTRA}' in request.userInfo.extra)"
    )
}

/// A CEL string literal. Kubernetes names, groups and resources never hold quotes,
/// backslashes or line breaks; should a policy or a flag carry one, it is dropped rather than
/// let change the expression.
pub(super) fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace(['\\', '\'', '\n', '\r'], ""))
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
    let Rules { enforcing, advisory } = rules(policies);
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
        // Kubernetes' own Events only: a CRD whose plural is `events` in another group is
        // reviewed like anything else.
        condition(
            "not-events",
            "!(request.resource.resource == 'events' && request.resource.group in ['', 'events.k8s.io'])".into(),
        ),
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
    let client_config = |path: &str| match &s.target {
        Target::Service { name } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: s.namespace.clone(),
                name: name.clone(),
                path: Some(path.into()),
                port: Some(443),
            }),
            url: None,
            ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        },
        Target::Url(url) => WebhookClientConfig {
            service: None,
            url: Some(url_for(url, path)),
            ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        },
    };
    let entry = |name: &str, path: &str, failure_policy: &str, rules: Vec<RuleWithOperations>| ValidatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(path),
        failure_policy: Some(failure_policy.into()),
        match_policy: Some("Equivalent".into()),
        match_conditions: Some(conditions.clone()),
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
    let mut webhooks = vec![entry(ENFORCING_WEBHOOK, ENFORCING_PATH, "Fail", enforcing)];
    if !advisory.is_empty() {
        let mut advise = entry(ADVISORY_WEBHOOK, ADVISORY_PATH, "Ignore", advisory);
        advise
            .match_conditions
            .get_or_insert_default()
            .push(condition("not-stepup-kinds", format!("request.resource.group != '{GROUP}'")));
        webhooks.push(advise);
    }
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
        webhooks: Some(webhooks),
    }
}

/// The URL of an entry for a webhook registered by URL: the given one is the enforcing
/// entry's (`…/validate`); the advisory entry's is its sibling (`…/advise`).
fn url_for(url: &str, path: &str) -> String {
    if path == ENFORCING_PATH {
        return url.to_owned();
    }
    let base = url.strip_suffix(ENFORCING_PATH).unwrap_or(url.trim_end_matches('/'));
    format!("{base}{path}")
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
    use stepup_core::{
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

    fn enforcing(policies: &[StepUpPolicy]) -> Vec<RuleWithOperations> {
        rules(policies).enforcing.into_iter().filter(|r| r.api_groups.as_deref() != Some(&[GROUP.to_owned()])).collect()
    }

    #[test]
    fn rules_are_the_union_of_policies_merged_by_target() {
        let policies = vec![
            policy("a").rule(&[Delete], "", &["secrets"]).build(),
            policy("b").rule(&[Update], "", &["secrets", "configmaps"]).build(),
            policy("c").rule(&[Connect], "", &["pods/exec"]).build(),
            policy("d").rule(&[All], "rbac.authorization.k8s.io", &["*"]).build(),
        ];
        let rules = enforcing(&policies);
        let find = |res: &str| {
            rules.iter().find(|r| r.resources.as_ref().unwrap().contains(&res.to_owned())).cloned().unwrap()
        };
        assert_eq!(find("secrets").operations.unwrap(), vec!["UPDATE", "DELETE"]);
        assert_eq!(find("configmaps").operations.unwrap(), vec!["UPDATE"]);
        assert_eq!(find("pods/exec").operations.unwrap(), vec!["CONNECT"]);
        assert_eq!(find("*").operations.unwrap(), vec!["*"]);
        assert_eq!(find("*").api_groups.unwrap(), vec!["rbac.authorization.k8s.io"]);
    }

    /// Reads are the authorizer's: a rule of verbs routes nothing to admission, and a rule
    /// with both routes its operations only.
    #[test]
    fn rules_of_verbs_route_nothing_to_admission() {
        use stepup_core::api::Verb;
        let reads = [Verb::Get, Verb::List, Verb::Watch];
        let only_reads = vec![policy("r").verbs(&reads, "", &["secrets"]).build()];
        assert!(enforcing(&only_reads).is_empty(), "{:?}", enforcing(&only_reads));
        let both = vec![policy("b").rule(&[Delete], "", &["secrets"]).verbs(&reads, "", &["configmaps"]).build()];
        let rules = enforcing(&both);
        let secrets = rules.iter().find(|r| r.resources.as_deref() == Some(&["secrets".to_owned()][..]));
        assert_eq!(secrets.and_then(|r| r.operations.clone()), Some(vec!["DELETE".to_owned()]), "{rules:?}");
        let routed = |res: &str| rules.iter().any(|r| r.resources.iter().flatten().any(|x| x == res));
        assert!(!routed("configmaps"), "{rules:?}");
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
        let rules = enforcing(&policies);
        let core_delete = rules.iter().find(|r| r.api_groups.as_deref() == Some(&["".to_owned()][..])).unwrap();
        assert_eq!(core_delete.resources.as_deref(), Some(&["*/*".to_owned()][..]));
    }

    fn entries(c: &ValidatingWebhookConfiguration) -> Vec<(String, String, String)> {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| {
                let path = w.client_config.service.as_ref().and_then(|s| s.path.clone());
                (w.name.clone(), w.failure_policy.clone().unwrap(), path.or(w.client_config.url.clone()).unwrap())
            })
            .collect()
    }

    fn routed_by(c: &ValidatingWebhookConfiguration, entry: &str) -> BTreeSet<String> {
        c.webhooks
            .iter()
            .flatten()
            .filter(|w| w.name == entry)
            .flat_map(|w| w.rules.iter().flatten())
            .flat_map(|r| r.resources.iter().flatten().cloned())
            .collect()
    }

    #[test]
    fn deny_rules_fail_closed_and_rules_only_audit_or_warn_need_fail_open() {
        let deny = policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build();
        let audit = policy("cm-audit").rule(&[Delete], "", &["configmaps"]).enforcement(Enforcement::Audit).build();
        let warn = policy("exec-warn").rule(&[Connect], "", &["pods/exec"]).enforcement(Enforcement::Warn).build();
        let c = desired(&[deny.clone(), audit.clone(), warn], &settings(), None);
        assert_eq!(
            entries(&c),
            vec![
                ("validate.stepup.dev".into(), "Fail".into(), "/validate".into()),
                ("advise.stepup.dev".into(), "Ignore".into(), "/advise".into()),
            ]
        );
        assert!(routed_by(&c, "validate.stepup.dev").contains("secrets"));
        assert!(routed_by(&c, "validate.stepup.dev").contains("stepupgrants"));
        assert_eq!(routed_by(&c, "advise.stepup.dev"), BTreeSet::from(["configmaps".into(), "pods/exec".into()]));
        // Only Deny policies: no entry that fails open at all.
        let c = desired(std::slice::from_ref(&deny), &settings(), None);
        assert_eq!(entries(&c).len(), 1);
        // The split follows the mode: the same policy switched to Deny fails closed.
        let mut now_deny = audit.clone();
        now_deny.spec.enforcement = Enforcement::Deny;
        let c = desired(&[deny, now_deny], &settings(), None);
        assert_eq!(entries(&c).len(), 1);
        assert!(routed_by(&c, "validate.stepup.dev").contains("configmaps"));
        // By URL, the advisory entry is the sibling path.
        let mut by_url = settings();
        by_url.target = Target::Url("https://10.0.0.1:8443/validate".into());
        let c = desired(&[audit], &by_url, None);
        assert_eq!(
            entries(&c).into_iter().map(|(_, _, u)| u).collect::<Vec<_>>(),
            vec!["https://10.0.0.1:8443/validate", "https://10.0.0.1:8443/advise"]
        );
    }

    #[test]
    fn an_advisory_rule_that_overlaps_a_deny_rule_fails_closed_not_the_other_way() {
        // The attack: an Audit policy over everything must not carry Deny-protected requests
        // into the entry that fails open (the API server calls every matching entry, and an
        // unreachable webhook on the Ignore entry would be shrugged off, but the Fail entry
        // still has to answer).
        let deny = policy("prod-secrets").rule(&[Delete], "", &["secrets"]).build();
        let audit_all = policy("audit-all").rule(&[All], "*", &["*/*"]).enforcement(Enforcement::Audit).build();
        let Rules { enforcing, advisory } = rules(&[deny, audit_all]);
        let ops = |rs: &[RuleWithOperations]| -> Vec<(Vec<String>, Vec<String>)> {
            rs.iter()
                .filter(|r| r.api_groups.as_deref() != Some(&[GROUP.to_owned()]))
                .map(|r| (r.operations.clone().unwrap(), r.resources.clone().unwrap()))
                .collect()
        };
        // DELETE of anything overlaps the Deny rule: it fails closed; the other operations
        // of the Audit policy fail open.
        assert!(ops(&enforcing).contains(&(vec!["DELETE".into()], vec!["*/*".into()])), "{:?}", ops(&enforcing));
        assert_eq!(
            ops(&advisory),
            vec![(vec!["CREATE".into(), "UPDATE".into(), "CONNECT".into()], vec!["*/*".into()])]
        );
        // The stepup kinds never fail open, whatever an advisory policy says about them.
        let audit_stepup = policy("audit-stepup").rule(&[All], GROUP, &["*"]).enforcement(Enforcement::Warn).build();
        let c = desired(&[audit_stepup], &settings(), None);
        let advise = c.webhooks.as_ref().unwrap().iter().find(|w| w.name == "advise.stepup.dev");
        assert!(
            advise
                .iter()
                .flat_map(|w| w.rules.iter().flatten())
                .all(|r| r.api_groups.as_deref() != Some(&[GROUP.to_owned()])),
            "{advise:?}"
        );
        let audit_all = policy("audit-all").rule(&[All], "*", &["*"]).enforcement(Enforcement::Audit).build();
        let c = desired(&[audit_all], &settings(), None);
        let advise = c.webhooks.as_ref().unwrap().iter().find(|w| w.name == "advise.stepup.dev").unwrap();
        assert!(
            advise.match_conditions.iter().flatten().any(|m| m.expression == "request.resource.group != 'stepup.dev'"),
            "{advise:?}"
        );
    }

    /// The API server's own matching of a rule (apiserver's `rules.Matcher`): `x/*` matches
    /// `x` and its subresources, `*` only main resources, `*/y` every `y` subresource.
    fn rule_matches(r: &RuleWithOperations, (group, version, resource, sub, op, cluster): &Probe) -> bool {
        let listed = |l: &Option<Vec<String>>, v: &str| l.iter().flatten().any(|x| x == "*" || x == v);
        let ops = r.operations.iter().flatten().any(|o| o == "*" || o == op.as_str());
        let resources = r.resources.iter().flatten().any(|rr| {
            let (res, rsub) = rr.split_once('/').unwrap_or((rr, ""));
            (res == "*" || res == *resource) && (rsub == "*" || rsub == *sub)
        });
        let scope = match r.scope.as_deref() {
            Some("Cluster") => *cluster,
            Some("Namespaced") => !*cluster,
            _ => true,
        };
        listed(&r.api_groups, group) && listed(&r.api_versions, version) && ops && resources && scope
    }

    type Probe = (&'static str, &'static str, &'static str, &'static str, stepup_core::api::Operation, bool);

    use proptest::prelude::*;

    const GROUPS: &[&str] = &["", "apps", "*", "stepup.dev"];
    const RESOURCES: &[&str] =
        &["secrets", "configmaps", "pods/exec", "pods/*", "pods", "*", "*/*", "*/scale", "deployments", "namespaces"];
    const OPS: &[stepup_core::api::Operation] = &[Create, Update, Delete, Connect, All];

    fn arb_policy() -> impl Strategy<Value = StepUpPolicy> {
        (
            prop::sample::select(GROUPS),
            prop::sample::subsequence(RESOURCES, 1..3),
            prop::sample::subsequence(OPS, 1..3),
            prop::sample::select(&[Enforcement::Deny, Enforcement::Warn, Enforcement::Audit][..]),
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(|(group, resources, ops, enforcement, by_label, n)| {
                let p = policy(&format!("p{n}")).rule(&ops, group, &resources).enforcement(enforcement);
                if by_label { p.namespace_labels(&[("env", "prod")]) } else { p.namespaces(&["prod"]) }.build()
            })
    }

    fn arb_probe() -> impl Strategy<Value = Probe> {
        (
            prop::sample::select(&["", "apps", "stepup.dev"][..]),
            prop::sample::select(&["v1", "v1alpha1"][..]),
            prop::sample::select(
                &["secrets", "configmaps", "pods", "deployments", "namespaces", "stepupgrants", "stepuppolicies"][..],
            ),
            prop::sample::select(&["", "exec", "scale", "status", "finalize"][..]),
            prop::sample::select(&[Create, Update, Delete, Connect][..]),
            any::<bool>(),
        )
    }

    proptest! {
        /// Whatever the policies, no request is reviewed by both entries, and every request a
        /// Deny policy's rules (or the stepup kinds, or a namespace relabel or delete that
        /// could weaken a Deny policy) route is sent to the entry that fails closed.
        #[test]
        fn no_request_is_in_both_entries_and_deny_traffic_always_fails_closed(
            policies in prop::collection::vec(arb_policy(), 0..6),
            probes in prop::collection::vec(arb_probe(), 1..40),
        ) {
            let Rules { enforcing, advisory } = rules(&policies);
            let closed = desired(&policies.iter().filter(|p| p.spec.enforcement == Enforcement::Deny).cloned().collect::<Vec<_>>(), &settings(), None);
            for probe in &probes {
                let in_closed = enforcing.iter().any(|r| rule_matches(r, probe));
                // The advisory entry's match condition keeps the stepup kinds out.
                let in_open = probe.0 != GROUP && advisory.iter().any(|r| rule_matches(r, probe));
                prop_assert!(!(in_closed && in_open), "{probe:?} in both: {enforcing:?} / {advisory:?}");
                // What the Deny policies alone would route is still routed, failing closed.
                let deny_routes = closed.webhooks.iter().flatten().flat_map(|w| w.rules.iter().flatten()).any(|r| rule_matches(r, probe));
                prop_assert!(!deny_routes || in_closed, "{probe:?} routed by Deny rules but not failing closed");
                // And nothing any policy routes is lost.
                let any_route = policy_routes(policies.iter()).iter().any(|route| {
                    let rule = merged_rules(std::slice::from_ref(route));
                    rule.iter().any(|r| rule_matches(r, probe))
                });
                // (The stepup group holds only stepup's kinds, which are the enforcing entry's.)
                prop_assert!(!any_route || in_closed || in_open || probe.0 == GROUP, "{probe:?} lost");
                let stepup_kind = probe.0 == GROUP && probe.2.starts_with("stepup") && probe.5 && matches!(probe.3, "" | "status") && (probe.2, probe.3) != ("stepuppolicies", "status") && matches!(probe.4, Create | Update | Delete);
                prop_assert!(!stepup_kind || in_closed, "{probe:?}: a stepup kind not failing closed");
            }
        }
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
            c.webhooks
                .unwrap()
                .into_iter()
                .find(|w| w.name == ENFORCING_WEBHOOK)
                .unwrap()
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
