use std::sync::Arc;

use super::*;
use crate::api::Operation::{self, *};
use crate::testing::{policy, request};

fn index(policies: Vec<CompiledPolicy>) -> PolicyIndex {
    PolicyIndex::new(policies.into_iter().map(Arc::new))
}

fn matched_names(index: &PolicyIndex, req: &crate::testing::RequestBuilder) -> Vec<String> {
    index.matching(&req.view()).iter().map(|p| p.name.clone()).collect()
}

#[test]
fn rules_match_operations_groups_versions_and_resources_like_admission() {
    let p = |resources: &[&str], ops: &[Operation]| policy("p").rule(ops, "", resources).compiled();
    let cases: Vec<(&str, CompiledPolicy, crate::testing::RequestBuilder, bool)> = vec![
        ("exact resource", p(&["secrets"], &[Delete]), request(Delete, "secrets"), true),
        ("other operation", p(&["secrets"], &[Delete]), request(Update, "secrets"), false),
        ("star operation covers connect", p(&["pods/exec"], &[All]), request(Connect, "pods/exec"), true),
        ("main resource does not cover subresource", p(&["pods"], &[All]), request(Connect, "pods/exec"), false),
        ("resource/* covers main resource", p(&["pods/*"], &[All]), request(Delete, "pods"), true),
        ("resource/* covers subresources", p(&["pods/*"], &[Connect]), request(Connect, "pods/attach"), true),
        ("star covers resources", p(&["*"], &[Delete]), request(Delete, "configmaps"), true),
        ("star does not cover subresources", p(&["*"], &[Connect]), request(Connect, "pods/exec"), false),
        ("star/star covers everything", p(&["*/*"], &[Connect]), request(Connect, "pods/portforward"), true),
        ("star/sub covers that subresource", p(&["*/scale"], &[Update]), request(Update, "deployments/scale"), true),
        ("star/sub not other subresources", p(&["*/scale"], &[Update]), request(Update, "deployments/status"), false),
        ("other resource", p(&["secrets"], &[Delete]), request(Delete, "configmaps"), false),
        ("other group", p(&["secrets"], &[Delete]), request(Delete, "secrets").group("example.com", "v1"), false),
    ];
    for (name, compiled, req, expected) in cases {
        let idx = index(vec![compiled.clone()]);
        assert_eq!(!idx.matching(&req.view()).is_empty(), expected, "index: {name}");
        assert_eq!(compiled.matches(&req.view()), expected, "direct: {name}");
    }
}

#[test]
fn group_and_version_wildcards() {
    let rbac = policy("rbac").rule(&[All], "rbac.authorization.k8s.io", &["*"]).compiled();
    let any_group = policy("any").rule(&[Delete], "*", &["widgets"]).compiled();
    let v1_only = policy("v1").rule(&[Delete], "apps", &["deployments"]).versions(&["v1"]).compiled();
    let idx = index(vec![rbac, any_group, v1_only]);
    let cases = [
        (request(Create, "clusterrolebindings").group("rbac.authorization.k8s.io", "v1"), vec!["rbac"]),
        (request(Delete, "widgets").group("example.com", "v2"), vec!["any"]),
        (request(Delete, "deployments").group("apps", "v1").namespace("prod"), vec!["v1"]),
        (request(Delete, "deployments").group("apps", "v1beta2").namespace("prod"), vec![]),
    ];
    for (req, expected) in cases {
        assert_eq!(matched_names(&idx, &req), expected, "{req:?}");
    }
}

#[test]
fn namespace_globs_and_selectors_constrain_matches() {
    let by_glob =
        policy("glob").rule(&[Delete], "", &["secrets", "namespaces"]).namespaces(&["prod", "prod-*"]).compiled();
    let by_label =
        policy("label").rule(&[Delete], "", &["secrets", "namespaces"]).namespace_labels(&[("env", "prod")]).compiled();
    let cases = [
        ("glob matches exact", &by_glob, request(Delete, "secrets").namespace("prod"), true),
        ("glob matches pattern", &by_glob, request(Delete, "secrets").namespace("prod-eu"), true),
        ("glob refuses other", &by_glob, request(Delete, "secrets").namespace("dev"), false),
        ("glob never matches cluster-scoped", &by_glob, request(Delete, "secrets"), false),
        (
            "glob matches the Namespace object by name",
            &by_glob,
            request(Delete, "namespaces").name("prod").namespace("prod"),
            true,
        ),
        (
            "selector matches labels",
            &by_label,
            request(Delete, "secrets").namespace("a").labels(&[("env", "prod")]),
            true,
        ),
        (
            "selector refuses labels",
            &by_label,
            request(Delete, "secrets").namespace("a").labels(&[("env", "dev")]),
            false,
        ),
        ("selector errs to matching when labels unknown", &by_label, request(Delete, "secrets").namespace("new"), true),
        ("selector never matches cluster-scoped", &by_label, request(Delete, "secrets"), false),
        (
            "selector on the Namespace object uses its labels",
            &by_label,
            request(Delete, "namespaces").name("x").namespace("x").labels(&[("env", "prod")]),
            true,
        ),
    ];
    for (name, p, req, expected) in cases {
        assert_eq!(p.matches(&req.view()), expected, "{name}");
    }
}

#[test]
fn subjects_default_to_people_only() {
    let people = policy("people").rule(&[Delete], "", &["secrets"]).compiled();
    let named = policy("named")
        .rule(&[Delete], "", &["secrets"])
        .subjects(&["*@contractor.example.com"], &["oncall"], &[("ci", "deployer"), ("batch", "*")])
        .compiled();
    let cases = [
        ("a person", &people, "alice", vec!["developers"], true),
        ("a masked service account is a person", &people, "system:serviceaccount:ci:deployer", vec![], true),
        ("a node is not a person", &people, "system:node:worker-1", vec!["system:nodes"], false),
        ("user glob", &named, "bob@contractor.example.com", vec![], true),
        ("group", &named, "carol", vec!["oncall"], true),
        ("named service account", &named, "system:serviceaccount:ci:deployer", vec![], true),
        ("any service account of a namespace", &named, "system:serviceaccount:batch:nightly", vec![], true),
        ("other service account", &named, "system:serviceaccount:ci:builder", vec![], false),
        ("unnamed person", &named, "alice", vec!["developers"], false),
    ];
    for (name, p, user, groups, expected) in cases {
        let req = request(Delete, "secrets").namespace("prod").by(user, &groups);
        assert_eq!(p.matches(&req.view()), expected, "{name}");
    }
    let workload =
        request(Delete, "secrets").namespace("prod").by("system:serviceaccount:ci:deployer", &[]).pod_bound();
    assert!(!people.matches(&workload.view()), "a service account running in a pod is not a person");
    assert!(named.matches(&workload.view()), "a policy naming it still applies");
}

#[test]
fn service_accounts_are_people_unless_bound_to_a_pod_or_trusted() {
    use crate::policy::{Masks, Requester::*, classify};
    let masks = Masks::default();
    let off = Masks { enabled: false, ..Masks::default() };
    let cases = [
        ("impersonated or bare token", "system:serviceaccount:prod:default", false, &masks, Person),
        ("pod-bound token", "system:serviceaccount:prod:default", true, &masks, Workload),
        (
            "kube-system's controllers",
            "system:serviceaccount:kube-system:namespace-controller",
            false,
            &masks,
            Workload,
        ),
        ("masks turned off", "system:serviceaccount:prod:default", false, &off, Workload),
        ("a person", "alice", false, &masks, Person),
        ("pod extras on a person change nothing", "alice", true, &masks, Person),
        ("a node", "system:node:n1", false, &masks, ControlPlane),
        ("the scheduler", "system:kube-scheduler", false, &masks, ControlPlane),
        ("anonymous", "system:anonymous", false, &masks, ControlPlane),
        (
            "a malformed service-account name is control plane",
            "system:serviceaccount:prod",
            false,
            &masks,
            ControlPlane,
        ),
    ];
    for (name, user, pod_bound, masks, expected) in cases {
        assert_eq!(classify(user, pod_bound, masks), expected, "{name}");
    }
}

#[test]
fn exclusions_and_resource_names_win() {
    let p = policy("p")
        .rule(&[Delete], "", &["secrets"])
        .resource_names(&["db", "api-key"])
        .exclude_users(&["bob"])
        .exclude_groups(&["sre"])
        .exclude_namespaces(&["prod-sandbox*"])
        .compiled();
    let cases = [
        ("named object", request(Delete, "secrets").namespace("prod").name("db"), true),
        ("other object", request(Delete, "secrets").namespace("prod").name("cache"), false),
        ("excluded user", request(Delete, "secrets").namespace("prod").name("db").by("bob", &["developers"]), false),
        ("excluded group", request(Delete, "secrets").namespace("prod").name("db").by("carol", &["sre"]), false),
        ("excluded namespace", request(Delete, "secrets").namespace("prod-sandbox-1").name("db"), false),
    ];
    for (name, req, expected) in cases {
        assert_eq!(p.matches(&req.view()), expected, "{name}");
    }
}

/// An exclusion names a workload; whoever wears its name without its pod-bound credential
/// (impersonating it, or with a token minted for it) is a person, and the policy applies.
#[test]
fn exclusions_never_let_a_mask_out() {
    let p = policy("p")
        .rule(&[Delete], "", &["secrets"])
        .subjects(&["alice"], &[], &[("gitops", "*"), ("argocd", "*")])
        .exclude_users(&["system:serviceaccount:gitops:deployer"])
        .exclude_groups(&["system:serviceaccounts:argocd"])
        .compiled();
    let sa = |name: &str, ns: &str| {
        let groups = ["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{ns}")];
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        request(Delete, "secrets")
            .namespace("prod")
            .name("db")
            .by(&format!("system:serviceaccount:{ns}:{name}"), &groups)
    };
    let cases = [
        ("excluded service account in its pod", sa("deployer", "gitops").pod_bound(), false),
        ("its name worn as a mask", sa("deployer", "gitops"), true),
        ("excluded service-account group in its pod", sa("app", "argocd").pod_bound(), false),
        ("that group worn with a mask", sa("app", "argocd"), true),
    ];
    for (name, req, expected) in cases {
        assert_eq!(p.matches(&req.view()), expected, "{name}");
    }
}

#[test]
fn request_matching_no_policy_finds_none_among_many() {
    let policies: Vec<CompiledPolicy> = (0..500)
        .map(|i| policy(&format!("p{i:03}")).rule(&[Delete], "", &[&format!("things{i}")]).compiled())
        .collect();
    let idx = index(policies);
    assert!(idx.matching(&request(Delete, "secrets").namespace("prod").view()).is_empty());
    assert_eq!(matched_names(&idx, &request(Delete, "things42").namespace("prod")), vec!["p042"]);
}

#[test]
fn a_policy_matching_through_several_rules_is_reported_once() {
    let p = policy("twice").rule(&[Delete], "", &["secrets"]).rule(&[All], "*", &["*"]).compiled();
    let idx = index(vec![p]);
    assert_eq!(matched_names(&idx, &request(Delete, "secrets").namespace("prod")), vec!["twice"]);
}

#[test]
fn matches_come_out_in_name_order() {
    let idx = index(vec![
        policy("zeta").rule(&[Delete], "", &["secrets"]).compiled(),
        policy("alpha").rule(&[Delete], "*", &["*"]).compiled(),
    ]);
    assert_eq!(matched_names(&idx, &request(Delete, "secrets").namespace("x")), vec!["alpha", "zeta"]);
    assert_eq!(idx.get("zeta").map(|p| p.name.as_str()), Some("zeta"));
}

#[test]
fn invalid_policies_are_rejected_naming_the_field() {
    let base = || policy("bad").rule(&[Delete], "", &["secrets"]);
    let mut no_rules = base().build();
    no_rules.spec.match_.rules.clear();
    let mut bad_resource = base().build();
    bad_resource.spec.match_.rules[0].resources = vec!["secrets".into(), "pods/exec/extra".into()];
    let mut no_operations = base().build();
    no_operations.spec.match_.rules[0].operations.clear();
    let mut bad_namespace = base().build();
    bad_namespace.spec.match_.namespaces = vec!["Prod".into()];
    let mut empty_subjects = base().build();
    empty_subjects.spec.match_.subjects = Some(Default::default());
    let mut too_long = base().build();
    too_long.spec.max_age = "48h".parse().unwrap();
    let mut too_short = base().build();
    too_short.spec.max_age = "500ms".parse().unwrap();
    let mut bad_selector = base().namespace_labels(&[("env", "prod")]).build();
    bad_selector.spec.match_.namespace_selector.as_mut().unwrap().match_expressions =
        Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Near".into(),
            values: None,
        }]);
    let mut no_methods = base().build();
    no_methods.spec.methods.clear();
    let mut unnamed = base().build();
    unnamed.metadata.name = None;

    let cases = [
        (no_rules, "spec.match.rules"),
        (bad_resource, "spec.match.rules[0].resources[1]"),
        (no_operations, "spec.match.rules[0].operations"),
        (bad_namespace, "spec.match.namespaces[0]"),
        (empty_subjects, "spec.match.subjects"),
        (too_long, "spec.maxAge"),
        (too_short, "spec.maxAge"),
        (bad_selector, "spec.match.namespaceSelector.matchExpressions[0].operator"),
        (no_methods, "spec.methods"),
        (unnamed, "metadata.name"),
    ];
    for (p, field) in cases {
        let err = CompiledPolicy::compile(&p).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
}

#[test]
fn unknown_operations_in_yaml_are_rejected_by_the_parser() {
    let yaml = r#"
apiVersion: stepup.dev/v1alpha1
kind: StepUpPolicy
metadata: {name: p}
spec:
  match:
    rules:
    - {operations: [DESTROY], apiGroups: [""], resources: [secrets]}
"#;
    let err = serde_yaml::from_str::<crate::api::StepUpPolicy>(yaml).unwrap_err().to_string();
    assert!(err.contains("DESTROY"), "{err}");
}

#[test]
fn defaults_fill_in_from_a_minimal_policy() {
    let yaml = r#"
apiVersion: stepup.dev/v1alpha1
kind: StepUpPolicy
metadata: {name: prod-secrets}
spec:
  match:
    rules:
    - {operations: [DELETE], apiGroups: [""], resources: [secrets]}
"#;
    let p: crate::api::StepUpPolicy = serde_yaml::from_str(yaml).unwrap();
    let c = CompiledPolicy::compile(&p).unwrap();
    assert_eq!(c.enforcement, crate::api::Enforcement::Deny);
    assert_eq!(c.max_age_text.to_string(), "15m");
    assert_eq!(c.methods, vec![crate::api::Method::Totp]);
    assert!(c.matches(&request(Delete, "secrets").namespace("x").view()));
}

/// The index is only a shortcut: for every request it must find exactly the policies that
/// match when each is checked directly.
#[test]
fn index_agrees_with_checking_every_policy_directly() {
    let policies = vec![
        policy("glob-pair").rule(&[Delete, Update], "", &["secrets"]).namespaces(&["prod", "prod-*"]).compiled(),
        policy("glob-suffix").rule(&[Delete], "", &["secrets"]).namespaces(&["*-prod"]).compiled(),
        policy("glob-mixed").rule(&[Delete], "", &["secrets"]).namespaces(&["team-a-*", "team-b"]).compiled(),
        policy("glob-question").rule(&[Delete], "", &["secrets", "pods/*"]).namespaces(&["p?od"]).compiled(),
        policy("selector")
            .rule(&[Delete, Connect], "", &["secrets", "pods/exec"])
            .namespace_labels(&[("env", "prod")])
            .compiled(),
        policy("selector-pair")
            .rule(&[Connect], "", &["pods/exec"])
            .namespace_labels(&[("team", "a"), ("env", "prod")])
            .compiled(),
        policy("glob-and-selector")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["prod-*"])
            .namespace_labels(&[("team", "a")])
            .compiled(),
        policy("anywhere").rule(&[Delete], "", &["secrets", "namespaces"]).compiled(),
        policy("namespace-objects").rule(&[Delete], "", &["namespaces"]).namespaces(&["prod*"]).compiled(),
        policy("wildcard").rule(&[All], "*", &["*", "*/*"]).namespaces(&["vault-*"]).compiled(),
        policy("wildcard-selector").rule(&[Delete], "*", &["*"]).namespace_labels(&[("env", "prod")]).compiled(),
        policy("two-rules")
            .rule(&[Delete], "", &["secrets"])
            .rule(&[Update], "", &["secrets"])
            .namespaces(&["prod"])
            .compiled(),
    ];
    let idx = index(policies.clone());
    let namespaces =
        ["", "prod", "prod-eu", "eu-prod", "team-a-x", "team-b", "team-bb", "pxod", "vault-1", "dev", "prød"];
    let labels: [Option<&[(&str, &str)]>; 4] =
        [None, Some(&[]), Some(&[("env", "prod")]), Some(&[("env", "prod"), ("team", "a")])];
    let mut checked = 0;
    for resource in ["secrets", "namespaces", "pods/exec", "pods/log", "configmaps"] {
        for op in [Delete, Update, Connect] {
            for ns in namespaces {
                for l in labels {
                    let mut r = request(op, resource).namespace(ns).name(ns);
                    if let Some(l) = l {
                        r = r.labels(l);
                    }
                    let direct: Vec<&str> =
                        policies.iter().filter(|p| p.matches(&r.view())).map(|p| p.name.as_str()).collect();
                    let mut direct = direct;
                    direct.sort_unstable();
                    assert_eq!(matched_names(&idx, &r), direct, "{r:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 3 * namespaces.len() * labels.len());
}

/// Issue 31: a rule of verbs is the authorizer's. A write verb belongs to admission (which
/// sees the object) except on a proxy subresource, whose kubelet requests admission never
/// sees; the error names the verb's field and says where the write goes instead.
#[test]
fn verbs_take_reads_and_what_admission_never_sees() {
    use crate::api::Verb;
    let yaml = r#"
apiVersion: stepup.dev/v1alpha1
kind: StepUpPolicy
metadata: {name: prod-secrets-read}
spec:
  match:
    namespaces: [prod]
    rules:
    - {verbs: [get, list, watch], apiGroups: [""], resources: [secrets]}
    - {verbs: [get, create], apiGroups: [""], resources: [nodes/proxy]}
"#;
    let p: crate::api::StepUpPolicy = serde_yaml::from_str(yaml).unwrap();
    let c = CompiledPolicy::compile(&p).unwrap();
    assert!(c.rules[0].operations.bits() == 0 && c.rules[0].verbs.contains(Verb::Watch));
    assert!(c.matches(&crate::testing::read(Verb::Get, "secrets").namespace("prod").name("db").view()));
    assert!(!c.matches(&request(Delete, "secrets").namespace("prod").name("db").view()));

    let wrong_case = yaml.replace("get, list, watch", "GET");
    let err = serde_yaml::from_str::<crate::api::StepUpPolicy>(&wrong_case).unwrap_err().to_string();
    assert!(err.contains("GET"), "{err}");

    let write = policy("w").verbs(&[Verb::Get, Verb::Delete], "", &["secrets"]).build();
    let err = CompiledPolicy::compile(&write).unwrap_err();
    assert_eq!(err.field, "spec.match.rules[0].verbs[1]", "{err}");
    assert!(err.message.contains("\"delete\" on secrets is decided by admission"), "{err}");
    assert!(err.message.contains("name it in operations (DELETE)"), "{err}");
    let mixed = policy("m").verbs(&[Verb::Create], "", &["nodes/proxy", "pods/exec"]).build();
    let err = CompiledPolicy::compile(&mixed).unwrap_err();
    assert!(err.message.contains("on pods/exec"), "{err}");

    let mut neither = policy("n").verbs(&[Verb::Get], "", &["secrets"]).build();
    neither.spec.match_.rules[0].verbs.clear();
    let err = CompiledPolicy::compile(&neither).unwrap_err();
    assert_eq!(err.field, "spec.match.rules[0].operations", "{err}");
    assert!(err.message.contains("operation") && err.message.contains("verb"), "{err}");
}

/// The index is a shortcut for reads too: a list or watch across every namespace visits the
/// policies narrowed by namespace prefix or label, and a list without a name meets
/// `resourceNames`.
#[test]
fn index_agrees_with_checking_every_policy_directly_for_reads() {
    use crate::api::Verb::{self, *};
    let reads: &[Verb] = &[Get, List, Watch];
    let policies = vec![
        policy("glob").verbs(reads, "", &["secrets"]).namespaces(&["prod", "prod-*"]).compiled(),
        policy("selector").verbs(reads, "", &["secrets", "pods/log"]).namespace_labels(&[("env", "prod")]).compiled(),
        policy("named").verbs(&[Get, List], "", &["secrets"]).resource_names(&["db"]).compiled(),
        policy("anywhere").verbs(&[Watch], "", &["configmaps"]).compiled(),
        policy("writes").rule(&[Operation::Delete], "", &["secrets"]).namespaces(&["prod"]).compiled(),
        policy("both").rule(&[Operation::Delete], "", &["configmaps"]).verbs(&[Get], "", &["configmaps"]).compiled(),
    ];
    let idx = index(policies.clone());
    let labels: [Option<&[(&str, &str)]>; 3] = [None, Some(&[]), Some(&[("env", "prod")])];
    let mut checked = 0;
    for resource in ["secrets", "pods/log", "configmaps"] {
        for verb in [Get, List, Watch, Patch] {
            for ns in ["", "prod", "prod-eu", "dev"] {
                for name in ["", "db", "other"] {
                    for l in labels {
                        let mut r = crate::testing::read(verb, resource).namespace(ns).name(name);
                        if let Some(l) = l {
                            r = r.labels(l);
                        }
                        let mut direct: Vec<&str> =
                            policies.iter().filter(|p| p.matches(&r.view())).map(|p| p.name.as_str()).collect();
                        direct.sort_unstable();
                        assert_eq!(matched_names(&idx, &r), direct, "{r:?}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 4 * 4 * 3 * labels.len());
    // Across every namespace, each read policy on secrets is met.
    let all = crate::testing::read(List, "secrets");
    assert_eq!(matched_names(&idx, &all), vec!["glob", "named", "selector"]);
}

#[test]
fn sign_in_keys_are_what_the_api_server_can_map_a_claim_to() {
    let keys = SignInKeys::new("idp.example.com/acr", "idp.example.com/amr", "idp.example.com/auth_time").unwrap();
    assert_eq!(
        keys.forgeable(),
        ["idp.example.com/acr", "idp.example.com/amr", "idp.example.com/auth_time", CREDENTIAL_ID_EXTRA]
    );
    assert_eq!(SignInKeys::default().forgeable()[..3], [ACR_EXTRA, AMR_EXTRA, AUTH_TIME_EXTRA]);
    // What an attacker (or a typo) would want accepted, each refused with why.
    for (key, why) in [
        ("", "domain-prefixed path"),
        ("acr", "domain-prefixed path"),
        ("IdP.example.com/acr", "lowercase"),
        ("idp.example.com/ACR", "lowercase"),
        ("/acr", "DNS domain"),
        ("idp..example.com/acr", "DNS domain"),
        ("-idp.example.com/acr", "DNS domain"),
        ("idp_example.com/acr", "DNS domain"),
        ("idp.example.com/", "non-empty"),
        ("idp.example.com/a r", "without spaces"),
        ("idp.example.com/acr=2", "'='"),
        ("authentication.kubernetes.io/credential-id", "Kubernetes' own"),
        ("kubernetes.io/acr", "Kubernetes' own"),
        ("k8s.io/acr", "Kubernetes' own"),
        ("sso.k8s.io/acr", "Kubernetes' own"),
    ] {
        let err = check_sign_in_key(key).expect_err(key).to_string();
        assert!(err.contains(why) && err.contains(&format!("{key:?}")), "{key}: {err}");
    }
    // A domain that merely ends like a reserved one is not reserved.
    check_sign_in_key("notk8s.io/acr").unwrap();
    // One key for two claims would read amr values as an acr.
    let err = SignInKeys::new("idp.example.com/x", "idp.example.com/x", "idp.example.com/t").unwrap_err();
    assert!(err.to_string().contains("three different keys"), "{err}");
    let err = SignInKeys::new("idp.example.com/a", "idp.example.com/m", "idp.example.com/a").unwrap_err();
    assert!(err.to_string().contains("three different keys"), "{err}");
}
