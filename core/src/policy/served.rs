//! Whether a policy names resources the API server serves. A rule on a resource nobody serves
//! (`configmap` for `configmaps`, a typo, a CRD not installed yet) can never match, and a
//! policy that can never match must not look like protection. Pure: the caller brings the
//! API server's discovery.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::StepUpPolicySpec;

/// What discovery says the API server serves: `(group, name)` where name is `resource` or
/// `resource/subresource`, the core group being `""`.
pub type Served = BTreeSet<(String, String)>;

/// Each resource of `spec` no served group holds, as a sentence naming the field, with the
/// served name it was probably meant to be. Wildcards match whatever is served.
pub fn unserved(spec: &StepUpPolicySpec, served: &Served) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, rule) in spec.match_.rules.iter().enumerate() {
        for (j, resource) in rule.resources.iter().enumerate() {
            if resource.contains('*') {
                continue;
            }
            let any_group = rule.api_groups.iter().any(|g| g == "*");
            let is_served = served
                .iter()
                .any(|(g, r)| r == resource && (any_group || rule.api_groups.iter().any(|wanted| wanted == g)));
            if is_served {
                continue;
            }
            let groups = if any_group {
                "any API group".to_owned()
            } else {
                let names: Vec<String> = rule.api_groups.iter().map(|g| format!("{g:?}")).collect();
                format!("API group {}", names.join(", "))
            };
            let hint = suggestion(resource, served).map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default();
            problems.push(format!(
                "spec.match.rules[{i}].resources[{j}]: {resource:?} is not a resource the API server serves in {groups}{hint}, so this rule never matches"
            ));
        }
    }
    problems
}

/// Each rule of `spec` whose API group an aggregated API server serves (an APIService with a
/// backing service, e.g. `metrics.k8s.io`), as a sentence naming the field: kube-apiserver
/// proxies those requests to the extension server without calling admission webhooks, so such
/// a rule never matches. `aggregated` maps each such group to its APIService's name.
pub fn unadmitted(spec: &StepUpPolicySpec, aggregated: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    // Authorization sees those requests (before the proxying): a rule of verbs only is fine.
    for (i, rule) in spec.match_.rules.iter().enumerate().filter(|(_, r)| !r.operations.is_empty()) {
        for (j, group) in rule.api_groups.iter().enumerate() {
            if let Some(service) = aggregated.get(group) {
                problems.push(format!(
                    "spec.match.rules[{i}].apiGroups[{j}]: {group:?} is served by an aggregated API server (APIService {service}), whose requests never reach admission webhooks, so this rule never matches"
                ));
            }
        }
    }
    problems
}

/// A served name close to `wanted`: its plural, or the same name in another case.
fn suggestion<'s>(wanted: &str, served: &'s Served) -> Option<&'s str> {
    let plural = format!("{wanted}s");
    served.iter().map(|(_, r)| r.as_str()).find(|r| {
        *r == plural
            || r.eq_ignore_ascii_case(wanted)
            || (wanted.ends_with('y') && *r == format!("{}ies", &wanted[..wanted.len() - 1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Operation::*, testing::policy};

    fn served() -> Served {
        [
            ("", "configmaps"),
            ("", "secrets"),
            ("", "pods"),
            ("", "pods/exec"),
            ("apps", "deployments"),
            ("networking.k8s.io", "networkpolicies"),
        ]
        .into_iter()
        .map(|(g, r)| (g.to_owned(), r.to_owned()))
        .collect()
    }

    /// Attack on the newcomer (issue 30): `resources: [configmap]` was accepted and shown Ready,
    /// protecting nothing.
    #[test]
    fn a_resource_nobody_serves_is_named_with_what_was_meant() {
        let p = policy("p").rule(&[Delete], "", &["configmap", "secrets"]).build();
        assert_eq!(
            unserved(&p.spec, &served()),
            [
                r#"spec.match.rules[0].resources[0]: "configmap" is not a resource the API server serves in API group "" (did you mean "configmaps"?), so this rule never matches"#
            ]
        );
        let p = policy("p").rule(&[Delete], "networking.k8s.io", &["networkpolicy"]).build();
        assert!(unserved(&p.spec, &served())[0].contains(r#"did you mean "networkpolicies"?"#));
        // The right name in the wrong group never matches either.
        let p = policy("p").rule(&[Delete], "apps", &["secrets"]).build();
        assert!(unserved(&p.spec, &served())[0].contains(r#"in API group "apps""#));
    }

    /// Issue 29 (read in the code): a policy on a resource of an aggregated API server was
    /// accepted, though admission never sees those requests.
    #[test]
    fn a_rule_on_an_aggregated_api_group_is_named() {
        let aggregated: BTreeMap<String, String> =
            [("metrics.k8s.io".to_owned(), "v1beta1.metrics.k8s.io".to_owned())].into();
        let p = policy("p").rule(&[Delete], "metrics.k8s.io", &["pods"]).build();
        assert_eq!(
            unadmitted(&p.spec, &aggregated),
            [
                r#"spec.match.rules[0].apiGroups[0]: "metrics.k8s.io" is served by an aggregated API server (APIService v1beta1.metrics.k8s.io), whose requests never reach admission webhooks, so this rule never matches"#
            ]
        );
        for fine in [
            policy("p").rule(&[Delete], "", &["pods"]).build(),
            policy("p").rule(&[Delete], "*", &["pods"]).build(),
            policy("p").rule(&[Delete], "apps", &["deployments"]).build(),
        ] {
            assert!(unadmitted(&fine.spec, &aggregated).is_empty(), "{:?}", fine.spec.match_.rules);
        }
    }

    #[test]
    fn served_names_subresources_and_wildcards_are_fine() {
        for p in [
            policy("p").rule(&[Delete, Update], "", &["secrets", "configmaps"]).build(),
            policy("p").rule(&[Connect], "", &["pods/exec"]).build(),
            policy("p").rule(&[Delete], "*", &["deployments"]).build(),
            policy("p").rule(&[Delete], "", &["*"]).build(),
            policy("p").rule(&[Connect], "", &["pods/*"]).build(),
        ] {
            assert!(unserved(&p.spec, &served()).is_empty(), "{:?}", p.spec.match_.rules);
        }
    }
}
