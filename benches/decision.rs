//! The decision path with a large cluster's worth of state: 10,000 policies and 100,000 grants
//! (4,000 users with 25 grants each, as kept for evidence), from `stepup_core::testing::fleet`.
//!
//! `cargo bench --bench decision` (BENCHMARKS.md has the figures and how to read them).

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use stepup_core::testing::{RequestBuilder, fleet, read, request, t0};
use stepup_core::{
    api::{Operation::*, Verb},
    decision::{self, DecisionConfig, Grants, Inputs, Outcome, StepUpObjects},
    grant::{GrantIndex, GrantRecord},
    policy::{Action, CompiledPolicy, PolicyIndex},
};

const POLICIES: usize = 10_000;
const GRANTS: usize = 100_000;
const USERS: usize = 4_000;

/// Even users stepped up two minutes ago; odd users' newest grant is two hours old.
fn newest_age(u: usize) -> SignedDuration {
    if u.is_multiple_of(2) { SignedDuration::from_mins(2) } else { SignedDuration::from_hours(2) }
}

fn config() -> DecisionConfig {
    DecisionConfig {
        controller_users: vec!["system:serviceaccount:stepup-system:stepup-controller".into()],
        admin_groups: vec!["stepup:admins".into()],
        break_glass_groups: vec!["stepup:break-glass".into()],
        exempt_namespaces: vec!["kube-system".into(), "stepup-system".into()],
        ..Default::default()
    }
}

/// `operation` on `resource` in `namespace` (labels as the namespace cache would know them)
/// by user u.
fn req(
    operation: impl Into<Action>,
    group: &str,
    resource: &str,
    namespace: &str,
    env: &str,
    name: &str,
    u: usize,
) -> RequestBuilder {
    let labels = fleet::namespace_labels(u % fleet::TEAMS, env);
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let groups = fleet::user_groups(u);
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let start = match operation.into() {
        Action::Admission(op) => request(op, resource),
        Action::Authorization(verb) => read(verb, resource),
    };
    start
        .group(group, "v1")
        .namespace(namespace)
        .labels(&labels)
        .name(name)
        .by(&fleet::user(u), &groups)
        .uid(&fleet::user_uid(u))
}

struct World {
    policies: PolicyIndex,
    grants: GrantIndex,
    config: DecisionConfig,
    now: Timestamp,
}

impl World {
    fn new() -> Self {
        let compiled: Vec<Arc<CompiledPolicy>> = fleet::policies(POLICIES)
            .iter()
            .map(|p| Arc::new(CompiledPolicy::compile(p).expect("fleet policies compile")))
            .collect();
        let records = fleet::grants(GRANTS, USERS, t0(), newest_age)
            .iter()
            .filter_map(GrantRecord::from_grant)
            .collect::<Vec<_>>();
        assert_eq!((compiled.len(), records.len()), (POLICIES, GRANTS));
        Self { policies: PolicyIndex::new(compiled), grants: GrantIndex::new(records), config: config(), now: t0() }
    }

    fn decide(&self, r: &RequestBuilder) -> decision::Decision {
        let inputs = Inputs {
            policies: &self.policies,
            grants: Grants::Cached(&self.grants),
            config: &self.config,
            now: self.now,
        };
        decision::decide(&r.view(), &StepUpObjects::None, &inputs)
    }
}

fn benches(c: &mut Criterion) {
    let world = World::new();
    // user 42 (team-42) holds a fresh grant; user 43 (team-43) only old ones.
    let cases: [(&str, RequestBuilder, Outcome, usize); 13] = [
        (
            "unmatched/no-candidates (update services)",
            req(Update, "", "services", "team-42-prod", "prod", "web", 42),
            Outcome::NotMatched,
            0,
        ),
        (
            "unmatched/2000-candidates (update secret in a dev namespace)",
            req(Update, "", "secrets", "team-42-dev", "dev", "cache", 42),
            Outcome::NotMatched,
            0,
        ),
        (
            "granted/3-policies (delete prod secret)",
            req(Delete, "", "secrets", "team-42-prod", "prod", "db", 42),
            Outcome::Granted,
            3,
        ),
        (
            "granted/1-policy (update deployment, Warn)",
            req(Update, "apps", "deployments", "team-42-prod", "prod", "web", 42),
            Outcome::Granted,
            1,
        ),
        (
            "granted/1-policy (pods/exec CONNECT)",
            req(Connect, "", "pods/exec", "team-42-prod", "prod", "web-7d4b9c-x2x9k", 42),
            Outcome::Granted,
            1,
        ),
        (
            "denied/3-policies (delete prod secret, grant too old)",
            req(Delete, "", "secrets", "team-43-prod", "prod", "db", 43),
            Outcome::Denied,
            3,
        ),
        (
            "warned/1-policy (update deployment, grant too old)",
            req(Update, "apps", "deployments", "team-43-prod", "prod", "web", 43),
            Outcome::Warned,
            1,
        ),
        // Authorization (issue 31): reads, which the API server only sends when a policy
        // names their verb and resource (matchConditions), so these are the webhook's cost.
        (
            "authorize/unmatched/no-candidates (get service)",
            req(Verb::Get, "", "services", "team-42-prod", "prod", "web", 42),
            Outcome::NotMatched,
            0,
        ),
        (
            "authorize/unmatched/write-candidates (get configmap)",
            req(Verb::Get, "", "configmaps", "team-42-prod", "prod", "app-config", 42),
            Outcome::NotMatched,
            0,
        ),
        (
            "authorize/unmatched/candidates (get secret in a dev namespace)",
            req(Verb::Get, "", "secrets", "team-42-dev", "dev", "cache", 42),
            Outcome::NotMatched,
            0,
        ),
        (
            "authorize/granted/1-policy (get prod secret)",
            req(Verb::Get, "", "secrets", "team-42-prod", "prod", "db", 42),
            Outcome::Granted,
            1,
        ),
        (
            "authorize/denied/1-policy (watch prod secrets, grant too old)",
            req(Verb::Watch, "", "secrets", "team-43-prod", "prod", "", 43),
            Outcome::Denied,
            1,
        ),
        (
            "authorize/denied/500-policies (list secrets in every namespace)",
            req(Verb::List, "", "secrets", "", "prod", "", 43),
            Outcome::Denied,
            500,
        ),
    ];

    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for (name, r, outcome, matched) in &cases {
        let d = world.decide(r);
        assert_eq!((d.outcome, d.policies.len()), (*outcome, *matched), "{name}: {d:?}");
        group.bench_function(*name, |b| b.iter(|| world.decide(black_box(r))));
    }
    group.finish();

    let mut group = c.benchmark_group("policy-index");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for (name, r, _, matched) in &cases[..3] {
        assert_eq!(world.policies.matching(&r.view()).len(), *matched);
        group.bench_function(format!("matching/{name}"), |b| {
            b.iter(|| world.policies.matching(black_box(&r.view())).len())
        });
    }
    group.finish();

    // Off the request path, but on the policy-change path: every policy event rebuilds the
    // index (admission::Caches::apply_policy), and each grant event upserts one record.
    let mut group = c.benchmark_group("index-build");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let compiled: Vec<Arc<CompiledPolicy>> = world.policies.policies().map(|p| Arc::new(p.clone())).collect();
    group.bench_function("PolicyIndex::new/10000", |b| b.iter(|| PolicyIndex::new(compiled.iter().cloned()).len()));
    let one = fleet::grant_of(1234, 3, t0());
    let record = GrantRecord::from_grant(&one).expect("named");
    let mut grants = world.grants.clone();
    group.bench_function("GrantIndex::upsert/100000", |b| b.iter(|| grants.upsert(black_box(record.clone()))));
    group.finish();
}

criterion_group!(decision_benches, benches);
criterion_main!(decision_benches);
