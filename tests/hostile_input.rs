//! Hostile input, as property tests (cargo-fuzz needs a nightly toolchain this machine kind
//! does not have): AdmissionReview decoding and the decision, policy compilation and TOTP
//! verification never panic, whatever they are given, and answer well-formed input
//! consistently (the plugin's reading of trailers and codes: plugin/tests/hostile_input.rs). Seeds: the real reviews in
//! tests/data/reviews, mutated. `PROPTEST_CASES` sets the number of inputs per property (256 by
//! default, what CI runs; RELIABILITY.md reports a longer run).

use std::sync::{Arc, LazyLock};

use jiff::Timestamp;
use kube_stepup::admission::review::{self, Review};
use proptest::prelude::*;
use serde_json::Value;
use stepup_core::testing::{grant, policy, t0};
use stepup_core::{
    api::StepUpPolicy,
    decision::{self, DecisionConfig, Grants, Inputs},
    grant::GrantIndex,
    policy::{CompiledPolicy, Masks, NamespaceLabels, PolicyIndex},
    verify::{Verifier, totp::TotpVerifier},
};

static SEEDS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reviews");
    let mut seeds: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    seeds.sort_by_key(|v| v.to_string());
    assert!(seeds.len() >= 20, "the seed corpus is there");
    seeds
});

static POLICIES: LazyLock<PolicyIndex> = LazyLock::new(|| {
    use stepup_core::api::Operation::*;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/examples");
    let mut all: Vec<Arc<CompiledPolicy>> = std::fs::read_dir(examples)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .filter_map(|d| <StepUpPolicy as serde::Deserialize>::deserialize(d).ok())
                .collect::<Vec<_>>()
        })
        .filter_map(|p| CompiledPolicy::compile(&p).ok())
        .map(Arc::new)
        .collect();
    // And a policy that matches everything, in every mode.
    all.push(Arc::new(policy("everything").rule(&[All], "*", &["*/*"]).compiled()));
    PolicyIndex::new(all)
});

fn config() -> DecisionConfig {
    DecisionConfig {
        controller_users: vec!["system:serviceaccount:stepup-system:stepup-controller".into()],
        admin_groups: vec!["stepup:admins".into()],
        break_glass_groups: vec!["stepup:break-glass".into()],
        exempt_namespaces: vec!["kube-system".into()],
        ..DecisionConfig::default()
    }
}

/// Parses and decides `body` as the webhook would; checks the answer is a well-formed review.
fn review_and_decide(body: &[u8]) {
    let Ok(review) = Review::parse(body, &Default::default()) else { return };
    let objects = review.stepup_objects().unwrap_or_default();
    let labels = review.namespace_object_labels();
    let ns_labels = match &labels {
        Some(l) => NamespaceLabels::Known(l),
        None => NamespaceLabels::Unknown,
    };
    let previous_labels = review.namespace_object_previous_labels();
    let masks = Masks { enabled: true, trusted_namespaces: vec!["kube-system".into()] };
    let request = review.request(ns_labels, previous_labels.as_ref(), &masks);
    let grants = GrantIndex::new([grant("g", request.user.username).record()]);
    let config = config();
    let inputs = Inputs { policies: &POLICIES, grants: Grants::Cached(&grants), config: &config, now: t0() };
    let decision = decision::decide(&request, &objects, &inputs);
    let answer: Value = serde_json::from_slice(&review::response_body(review.uid(), &decision)).expect("JSON answer");
    assert_eq!(answer["response"]["uid"], review.uid());
    assert_eq!(answer["response"]["allowed"], decision.allowed);
}

/// A JSON value changed at one place: a field replaced by another kind of value, removed, or
/// a string garbled.
fn mutate(value: &mut Value, path: &[usize], replacement: &Value) {
    let Some((&first, rest)) = path.split_first() else {
        *value = replacement.clone();
        return;
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(first % map.len()).unwrap().clone();
            if rest.is_empty() && first % 7 == 0 {
                map.remove(&key);
            } else {
                mutate(map.get_mut(&key).unwrap(), rest, replacement);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            mutate(&mut items[first % n], rest, replacement);
        }
        _ => *value = replacement.clone(),
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        ".{0,40}".prop_map(Value::String),
        Just(serde_json::json!({})),
        Just(serde_json::json!([])),
        Just(Value::String("stepup.dev".into())),
        Just(Value::String("DELETE".into())),
        Just(Value::String("system:serviceaccount:prod:default".into())),
        Just(serde_json::json!(["stepup:break-glass"])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_review_path(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        review_and_decide(&body);
        let _ = review::uid_of(&body);
    }

    #[test]
    fn mutated_real_reviews_are_answered_or_refused_never_panicked(
        seed in 0usize..1000,
        path in proptest::collection::vec(0usize..64, 0..8),
        replacement in json_leaf(),
    ) {
        let mut value = SEEDS[seed % SEEDS.len()].clone();
        mutate(&mut value, &path, &replacement);
        review_and_decide(value.to_string().as_bytes());
    }

    #[test]
    fn truncated_real_reviews_never_panic(seed in 0usize..1000, cut in 0usize..5000) {
        let body = SEEDS[seed % SEEDS.len()].to_string();
        let cut = cut.min(body.len());
        review_and_decide(&body.as_bytes()[..cut]);
    }

    #[test]
    fn arbitrary_policies_compile_or_name_a_field(spec in json_leaf(), path in proptest::collection::vec(0usize..16, 0..6)) {
        let mut p = serde_json::to_value(policy("p").rule(&[stepup_core::api::Operation::Delete], "", &["secrets"]).namespaces(&["prod-*"]).build()).unwrap();
        mutate(&mut p["spec"], &path, &spec);
        if let Ok(p) = serde_json::from_value::<StepUpPolicy>(p)
            && let Err(e) = CompiledPolicy::compile(&p)
        {
            prop_assert!(e.field.starts_with("spec.") || e.field == "metadata.name", "{e}");
        }
    }

    #[test]
    fn only_six_digits_verify(input in ".{0,20}") {
        let seed = [7u8; 20];
        if let Ok(step) = TotpVerifier.verify(&seed, &input, Timestamp::from_second(1_800_000_000).unwrap(), None) {
            prop_assert!(input.len() == 6 && step > 0);
        }
    }
}

#[test]
fn deeply_nested_json_neither_overflows_the_stack_nor_reaches_a_typed_object() {
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = |resource: &str| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"CREATE","resource":{{"group":"stepup.dev","version":"v1alpha1","resource":"{resource}"}},"userInfo":{{"username":"alice"}},"object":{nested}}}}}"#
        )
    };
    // Objects stay raw until a rule needs them: an ordinary kind is decided as it is.
    review_and_decide(body("widgets").as_bytes());
    // A stepup kind is read into its type, and serde_json's recursion limit refuses it.
    let text = body("stepupchallenges");
    let review = Review::parse(text.as_bytes(), &Default::default()).expect("the envelope is fine");
    let err = review.stepup_objects().map(|_| ()).expect_err("refused");
    assert!(err.to_string().starts_with("cannot read object as a StepUpChallenge"), "{err}");
    // Deep nesting where a namespace's labels are looked for is skipped within serde_json's
    // recursion limit; the review is still decided.
    let namespace = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"UPDATE","resource":{{"group":"","version":"v1","resource":"namespaces"}},"name":"prod","userInfo":{{"username":"alice"}},"object":{{"metadata":{{"name":"prod","x":{nested}}}}}}}}}"#
    );
    review_and_decide(namespace.as_bytes());
}

#[test]
fn an_object_near_the_api_servers_size_limit_is_decided() {
    let mut review = SEEDS.iter().find(|s| s["request"]["resource"]["resource"] == "secrets").unwrap().clone();
    let blob = "A".repeat(3 * 1024 * 1024);
    review["request"]["object"]["data"]["big"] = Value::String(blob);
    let body = review.to_string();
    assert!(body.len() > 3 * 1024 * 1024);
    review_and_decide(body.as_bytes());
}

#[test]
fn look_alike_and_control_character_usernames_are_other_users() {
    use stepup_core::api::Operation::Delete;
    use stepup_core::testing::request;
    let alice = GrantIndex::new([grant("g", "alice").record()]);
    let config = config();
    let prod =
        PolicyIndex::new([Arc::new(policy("prod").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).compiled())]);
    let inputs = Inputs { policies: &prod, grants: Grants::Cached(&alice), config: &config, now: t0() };
    let ok =
        decision::decide(&request(Delete, "secrets").namespace("prod").name("db").view(), &Default::default(), &inputs);
    assert!(ok.allowed, "alice's own grant works");
    for impostor in ["\u{430}lice", "Alice", "alice\u{0}", "alice\n", "alice ", " alice", "al\u{200b}ice", "alice:x"] {
        let req = request(Delete, "secrets").namespace("prod").name("db").by(impostor, &[]);
        let d = decision::decide(&req.view(), &Default::default(), &inputs);
        assert!(!d.allowed, "{impostor:?} used alice's grant");
        let names = [
            stepup_core::api::enrollment_name(impostor),
            stepup_core::api::grant_name(impostor, "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4"),
            stepup_core::api::factor_secret_name(impostor),
        ];
        for name in names {
            assert!(
                name.len() <= 63 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name:?}"
            );
            assert_ne!(name, stepup_core::api::enrollment_name("alice"));
        }
        assert_ne!(stepup_core::api::user_label_value(impostor), stepup_core::api::user_label_value("alice"));
    }
}

#[test]
fn grants_from_the_far_future_or_past_do_not_satisfy() {
    use jiff::SignedDuration;
    use stepup_core::api::Operation::Delete;
    use stepup_core::testing::request;
    let config = config();
    let prod =
        PolicyIndex::new([Arc::new(policy("prod").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).compiled())]);
    let req = request(Delete, "secrets").namespace("prod").name("db");
    for (issued, expires) in [
        (t0() - SignedDuration::from_hours(24 * 365 * 30), t0() + SignedDuration::from_hours(1)),
        (t0() - SignedDuration::from_hours(2), t0() - SignedDuration::from_hours(1)),
        (Timestamp::MIN, Timestamp::MAX),
    ] {
        let grants = GrantIndex::new([grant("g", "alice").issued(issued).expires(expires).record()]);
        let inputs = Inputs { policies: &prod, grants: Grants::Cached(&grants), config: &config, now: t0() };
        let d = decision::decide(&req.view(), &Default::default(), &inputs);
        assert!(!d.allowed, "issued {issued}, expires {expires}");
    }
}

#[test]
fn conflicting_modes_on_one_request_deny_until_a_grant_satisfies_the_deny_policy() {
    use stepup_core::api::{Enforcement, Operation::Delete};
    use stepup_core::testing::request;
    let config = config();
    let same_rule = |name: &str, mode| {
        Arc::new(policy(name).rule(&[Delete], "", &["secrets"]).enforcement(mode).max_age("5m").compiled())
    };
    // The same request under Deny, Warn and Audit at once, the Deny one the strictest.
    let modes = PolicyIndex::new([
        same_rule("audit", Enforcement::Audit),
        same_rule("warn", Enforcement::Warn),
        Arc::new(policy("deny").rule(&[Delete], "", &["secrets"]).max_age("1m").compiled()),
    ]);
    let req = request(Delete, "secrets").namespace("prod").name("db");
    let none = GrantIndex::new([]);
    let inputs = Inputs { policies: &modes, grants: Grants::Cached(&none), config: &config, now: t0() };
    let d = decision::decide(&req.view(), &Default::default(), &inputs);
    assert!(!d.allowed, "Deny wins over Warn and Audit: {d:?}");
    // A grant fresh enough for Warn and Audit (3 minutes) but not for Deny (1 minute) is not enough.
    let stale = GrantIndex::new([grant("g", "alice").issued(t0() - jiff::SignedDuration::from_mins(3)).record()]);
    let inputs = Inputs { grants: Grants::Cached(&stale), ..inputs };
    assert!(!decision::decide(&req.view(), &Default::default(), &inputs).allowed);
    // A fresh one satisfies all three: allowed, and nothing to warn about.
    let fresh = GrantIndex::new([grant("g", "alice").issued(t0()).record()]);
    let inputs = Inputs { grants: Grants::Cached(&fresh), ..inputs };
    let d = decision::decide(&req.view(), &Default::default(), &inputs);
    assert!(d.allowed && d.warnings.is_empty(), "{d:?}");
}
