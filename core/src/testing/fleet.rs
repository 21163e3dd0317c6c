//! The benchmark fleet: a deterministic, realistic set of policies and grants for a large
//! multi-tenant cluster, shared by the criterion benchmarks (`benches/decision.rs`) and the
//! load generator that loads the same objects into a real API server (`stepup-load seed`).
//!
//! Policies: a few cluster-wide ones, then 20 per team (secrets, exec, deployments, RBAC,
//! config maps, ingresses, volumes, tokens, jobs, contractors; prod and staging variants)
//! using namespace globs, namespace selectors, resource names, subjects and exclusions, with
//! Deny, Warn and Audit enforcement. Grants: a history per user, as kept for evidence (most
//! expired, some scoped, half with a reason), the newest issued `newest_age` before `now`.

use std::collections::BTreeMap;

use super::{grant, policy};
use crate::api::{Enforcement, Operation::*, StepUpGrant, StepUpPolicy, Verb};
use jiff::{SignedDuration, Timestamp};

/// Policies per team.
pub const POLICIES_PER_TEAM: usize = 20;
/// Cluster-wide policies, created before the teams' ones.
pub const GLOBAL_POLICIES: usize = 6;
/// Users are spread over this many teams: user i is in team i mod TEAMS (10,000 policies
/// cover 500 teams).
pub const TEAMS: usize = 500;

pub fn team(k: usize) -> String {
    format!("team-{k}")
}

/// The i-th user: `user-<i>@example.com`, member of `team-<i mod TEAMS>`.
pub fn user(i: usize) -> String {
    format!("user-{i}@example.com")
}

pub fn user_uid(i: usize) -> String {
    format!("uid-user-{i}")
}

/// Groups the i-th user belongs to.
pub fn user_groups(i: usize) -> Vec<String> {
    vec![team(i % TEAMS), "developers".to_owned(), "system:authenticated".to_owned()]
}

/// Labels of a team's namespace, as `namespaceSelector`s expect them.
pub fn namespace_labels(k: usize, env: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("team".to_owned(), team(k)), ("env".to_owned(), env.to_owned())])
}

/// `n` policies: the cluster-wide ones first, then team after team.
pub fn policies(n: usize) -> Vec<StepUpPolicy> {
    let mut out = global_policies();
    let mut k = 0;
    while out.len() < n {
        for i in 0..POLICIES_PER_TEAM {
            if out.len() == n {
                break;
            }
            out.push(team_policy(k, i));
        }
        k += 1;
    }
    out.truncate(n);
    out
}

/// Cluster-wide policies. Cluster admins (`system:masters`, the e2e `admin`) are excluded,
/// as the scripts that set the control plane up act as them.
fn global_policies() -> Vec<StepUpPolicy> {
    let policies = vec![
        policy("global-prod-secrets")
            .rule(&[Delete], "", &["secrets"])
            .namespace_labels(&[("env", "prod")])
            .message("Production secrets: see https://runbooks.example.com/secrets"),
        policy("global-cluster-rbac")
            .rule(&[Create, Update, Delete], "rbac.authorization.k8s.io", &["clusterroles", "clusterrolebindings"])
            .require_reason(),
        policy("global-namespace-deletion").rule(&[Delete], "", &["namespaces"]),
        policy("global-vault-audit")
            .rule(&[Create, Update, Delete, Connect], "*", &["*/*"])
            .namespaces(&["vault", "vault-*"])
            .enforcement(Enforcement::Audit),
        policy("global-prod-secrets-audit")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["*-prod", "*-prod-*"])
            .enforcement(Enforcement::Audit),
        policy("global-crds")
            .rule(&[Create, Update, Delete], "apiextensions.k8s.io", &["customresourcedefinitions"])
            .max_age("1h"),
    ];
    policies.into_iter().map(|p| p.exclude_groups(&["system:masters"]).build()).collect()
}

/// The i-th policy (0..20) of team k: ten shapes, each for prod (i < 10) and staging.
fn team_policy(k: usize, i: usize) -> StepUpPolicy {
    let t = team(k);
    let (env, enforcement, age) =
        if i < 10 { ("prod", Enforcement::Deny, "15m") } else { ("staging", Enforcement::Warn, "1h") };
    let ns = format!("{t}-{env}");
    let ns_glob = format!("{t}-{env}-*");
    let name = |what: &str| format!("{t}-{env}-{what}");
    let p = match i % 10 {
        0 if env == "prod" => policy(&name("secrets"))
            .rule(&[Update, Delete], "", &["secrets"])
            .verbs(&[Verb::Get, Verb::List, Verb::Watch], "", &["secrets"])
            .namespaces(&[&ns, &ns_glob])
            .message("See https://runbooks.example.com/team-secrets"),
        0 => policy(&name("secrets"))
            .rule(&[Update, Delete], "", &["secrets"])
            .namespaces(&[&ns, &ns_glob])
            .message("See https://runbooks.example.com/team-secrets"),
        1 => policy(&name("exec"))
            .rule(&[Connect], "", &["pods/exec", "pods/attach", "pods/portforward"])
            .namespace_labels(&[("team", &t), ("env", env)])
            .max_age("5m"),
        2 => policy(&name("workloads"))
            .rule(&[Update, Delete], "apps", &["deployments", "statefulsets", "daemonsets"])
            .namespaces(&[&ns, &ns_glob])
            .subjects(&[], &[&t], &[])
            .enforcement(Enforcement::Warn)
            .max_age("1h"),
        3 => policy(&name("rbac"))
            .rule(&[Create, Update, Delete], "rbac.authorization.k8s.io", &["roles", "rolebindings"])
            .namespaces(&[&format!("{t}-*")])
            .require_reason(),
        4 => policy(&name("config"))
            .rule(&[Update, Delete], "", &["configmaps"])
            .namespaces(&[&ns])
            .resource_names(&["app-config", "feature-flags"])
            .exclude_groups(&[&format!("{t}-oncall")])
            .enforcement(Enforcement::Audit),
        5 => policy(&name("ingress"))
            .rule(&[Create, Update, Delete], "networking.k8s.io", &["ingresses", "networkpolicies"])
            .namespaces(&[&ns_glob, &ns]),
        6 => policy(&name("volumes"))
            .rule(&[Delete], "", &["persistentvolumeclaims"])
            .namespace_labels(&[("team", &t), ("env", env)]),
        7 => policy(&name("tokens")).rule(&[Create], "", &["serviceaccounts/token"]).namespaces(&[&ns]).subjects(
            &[],
            &[],
            &[(&format!("{t}-ci"), "deployer"), (&ns, "*")],
        ),
        8 => policy(&name("jobs"))
            .rule(&[Delete], "batch", &["cronjobs", "jobs"])
            .namespaces(&[&ns])
            .exclude_users(&["*@automation.example.com"]),
        _ => policy(&name("contractors"))
            .rule(&[Create, Update, Delete], "", &["secrets", "configmaps"])
            .namespaces(&[&format!("{t}-*")])
            .subjects(&["*@contractor.example.com"], &[], &[])
            .enforcement(Enforcement::Audit),
    };
    // Shapes 2 and 9 carry their own enforcement; the rest follow the environment.
    let p = if matches!(i % 10, 2 | 4 | 9) { p } else { p.enforcement(enforcement) };
    if matches!(i % 10, 0 | 3 | 5 | 6 | 8) { p.max_age(age) } else { p }.build()
}

/// Grants of users `0..users`, `n / users` each (rounded up; the last users get fewer),
/// named `g-<user>-<j>`. The j-th grant of user u was issued `newest_age(u) + j × 7h` before
/// `now` and lasted one hour: only `j = 0` can still be fresh.
pub fn grants(
    n: usize,
    users: usize,
    now: Timestamp,
    newest_age: impl Fn(usize) -> SignedDuration,
) -> Vec<StepUpGrant> {
    let per_user = n.div_ceil(users.max(1));
    let mut out = Vec::with_capacity(n);
    'users: for u in 0..users {
        for j in 0..per_user {
            if out.len() == n {
                break 'users;
            }
            out.push(grant_of(u, j, now - newest_age(u)));
        }
    }
    out
}

/// The j-th grant of user u, when u's newest grant was issued at `newest`.
pub fn grant_of(u: usize, j: usize, newest: Timestamp) -> StepUpGrant {
    let issued = newest - SignedDuration::from_hours(7 * j as i64);
    let mut b = grant(&grant_name(u, j), &user(u))
        .uid(&user_uid(u))
        .issued(issued)
        .expires(issued + SignedDuration::from_hours(1));
    if (u + j).is_multiple_of(2) {
        b = b.reason(&format!("INC-{}", 1000 + (u * 7 + j) % 9000));
    }
    match (u + j) % 20 {
        0 => b = b.scope_namespaces(&[&format!("{}-prod", team(u % TEAMS))]),
        1 => b = b.scope_policies(&[&format!("{}-prod-secrets", team(u % TEAMS))]),
        _ => {}
    }
    b.build()
}

pub fn grant_name(u: usize, j: usize) -> String {
    format!("g-{u:06}-{j:03}")
}
