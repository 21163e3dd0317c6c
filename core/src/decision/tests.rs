use std::sync::Arc;

use super::*;
use crate::{
    api::{
        self, Enforcement, Operation::*, StepUpChallenge, StepUpChallengeSpec, StepUpEnrollment, StepUpEnrollmentSpec,
    },
    grant::GrantIndex,
    policy::PolicyIndex,
    testing::{RequestBuilder, grant, minutes, policy, request, t0},
};

const CONTROLLER: &str = "system:serviceaccount:stepup-system:stepup-controller";
const WEBHOOK: &str = "system:serviceaccount:stepup-system:stepup-webhook";

fn config() -> DecisionConfig {
    DecisionConfig {
        controller_users: vec![CONTROLLER.into()],
        webhook_users: vec![WEBHOOK.into()],
        admin_groups: vec!["stepup:admins".into()],
        break_glass_groups: vec!["stepup:break-glass".into()],
        exempt_users: vec!["flux".into(), "system:serviceaccount:gitops:deployer".into()],
        exempt_groups: vec!["gitops".into(), "system:serviceaccounts:argocd".into()],
        exempt_namespaces: vec!["kube-system".into(), "stepup-system".into()],
        grant_verifier: Some(signer().verifier()),
        max_clock_skew: jiff::SignedDuration::from_secs(10),
        ..Default::default()
    }
}

/// The controller's grant key in these tests.
fn signer() -> crate::keys::GrantSigner {
    crate::keys::MasterKey::from_bytes([7; 32]).grant_signer()
}

fn policies() -> PolicyIndex {
    PolicyIndex::new(
        [
            policy("prod-secrets")
                .rule(&[Delete, Update], "", &["secrets"])
                .namespaces(&["prod"])
                .message("See https://runbooks.example.com/secrets.")
                .compiled(),
            policy("prod-exec")
                .rule(&[Connect], "", &["pods/exec", "pods/attach"])
                .namespaces(&["prod"])
                .max_age("5m")
                .compiled(),
            policy("dev-secrets-warn")
                .rule(&[Delete], "", &["secrets"])
                .namespaces(&["dev"])
                .enforcement(Enforcement::Warn)
                .compiled(),
            policy("staging-audit")
                .rule(&[Delete], "", &["secrets"])
                .namespaces(&["staging"])
                .enforcement(Enforcement::Audit)
                .compiled(),
            policy("incident-only")
                .rule(&[Delete], "apps", &["deployments"])
                .namespaces(&["prod"])
                .require_reason()
                .compiled(),
            policy("policy-changes").rule(&[All], "stepup.dev", &["stepuppolicies"]).compiled(),
        ]
        .into_iter()
        .map(Arc::new),
    )
}

struct World {
    policies: PolicyIndex,
    grants: GrantIndex,
    config: DecisionConfig,
    now: jiff::Timestamp,
}

fn world(grants: Vec<crate::grant::GrantRecord>) -> World {
    World { policies: policies(), grants: GrantIndex::new(grants), config: config(), now: t0() + minutes(5) }
}

impl World {
    fn decide(&self, req: &RequestBuilder) -> Decision {
        self.decide_with(req, &StepUpObjects::None)
    }

    fn decide_with(&self, req: &RequestBuilder, objects: &StepUpObjects) -> Decision {
        let inputs = Inputs {
            policies: &self.policies,
            grants: Grants::Cached(&self.grants),
            config: &self.config,
            now: self.now,
        };
        decide(&req.view(), objects, &inputs)
    }
}

fn delete_prod_secret() -> RequestBuilder {
    request(Delete, "secrets").namespace("prod").name("db")
}

#[test]
fn outcomes_for_ordinary_requests() {
    let cases: Vec<(&str, RequestBuilder, Vec<crate::grant::GrantRecord>, Outcome)> = vec![
        ("denies delete of prod secret without grant", delete_prod_secret(), vec![], Outcome::Denied),
        (
            "allows delete of prod secret with fresh grant",
            delete_prod_secret(),
            vec![grant("g1", "alice").record()],
            Outcome::Granted,
        ),
        (
            "allows delete of dev secret: no enforcing policy",
            request(Delete, "secrets").namespace("test").name("db"),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "warns on dev secret deletion",
            request(Delete, "secrets").namespace("dev").name("db"),
            vec![],
            Outcome::Warned,
        ),
        (
            "audits staging secret deletion",
            request(Delete, "secrets").namespace("staging").name("db"),
            vec![],
            Outcome::Audited,
        ),
        (
            "a grant quiets a warn policy",
            request(Delete, "secrets").namespace("dev"),
            vec![grant("g1", "alice").record()],
            Outcome::Granted,
        ),
        (
            "denies exec into prod pod",
            request(Connect, "pods/exec").namespace("prod").name("web"),
            vec![],
            Outcome::Denied,
        ),
        (
            "denies exec with a grant older than that policy's maxAge",
            request(Connect, "pods/exec").namespace("prod").name("web"),
            vec![grant("g1", "alice").issued(t0() - minutes(1)).record()],
            Outcome::Denied,
        ),
        (
            "someone else's grant does not count",
            delete_prod_secret(),
            vec![grant("g1", "bob").record()],
            Outcome::Denied,
        ),
        ("exempt namespace kube-system", request(Delete, "secrets").namespace("kube-system"), vec![], Outcome::Exempt),
        ("exempt user", delete_prod_secret().by("flux", &[]), vec![], Outcome::Exempt),
        ("exempt group", delete_prod_secret().by("argo", &["gitops"]), vec![], Outcome::Exempt),
        ("controller is exempt", delete_prod_secret().by(CONTROLLER, &[]).pod_bound(), vec![], Outcome::Exempt),
        (
            "an exempt service account running in its pod passes (a workload: no policy names it)",
            delete_prod_secret().by("system:serviceaccount:gitops:deployer", &[]).pod_bound(),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "an exempt service account's name without its pod is a mask (--as, or a minted token)",
            delete_prod_secret().by("system:serviceaccount:gitops:deployer", &["system:serviceaccounts"]),
            vec![],
            Outcome::Denied,
        ),
        (
            "the groups that come with a service account's name exempt no mask either",
            delete_prod_secret()
                .by("system:serviceaccount:argocd:app", &["system:serviceaccounts", "system:serviceaccounts:argocd"]),
            vec![],
            Outcome::Denied,
        ),
        (
            "a mask holding the break-glass group does not break glass",
            delete_prod_secret().by("system:serviceaccount:prod:default", &["stepup:break-glass"]),
            vec![],
            Outcome::Denied,
        ),
        (
            "the controller's name without its pod is a mask",
            delete_prod_secret().by(CONTROLLER, &[]),
            vec![],
            Outcome::Denied,
        ),
        (
            "break-glass group passes loudly",
            delete_prod_secret().by("carol", &["stepup:break-glass"]),
            vec![],
            Outcome::BreakGlass,
        ),
        (
            "a service account running in a pod is a workload, not a person",
            delete_prod_secret().by("system:serviceaccount:ci:deploy", &[]).pod_bound(),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "a service account without a pod-bound credential is a person's mask",
            delete_prod_secret().by("system:serviceaccount:prod:default", &["system:serviceaccounts"]),
            vec![],
            Outcome::Denied,
        ),
        (
            "kube-system's service accounts stay control plane workloads",
            delete_prod_secret().by("system:serviceaccount:kube-system:namespace-controller", &[]),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "nodes are control plane",
            delete_prod_secret().by("system:node:n1", &["system:nodes"]),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "leases are never subject to policies",
            request(Delete, "leases").group("coordination.k8s.io", "v1").namespace("prod"),
            vec![],
            Outcome::Exempt,
        ),
        (
            "reason-requiring policy denies a grant without reason",
            request(Delete, "deployments").group("apps", "v1").namespace("prod"),
            vec![grant("g1", "alice").record()],
            Outcome::Denied,
        ),
        (
            "reason-requiring policy accepts a grant with reason",
            request(Delete, "deployments").group("apps", "v1").namespace("prod"),
            vec![grant("g1", "alice").reason("INC-42").record()],
            Outcome::Granted,
        ),
    ];
    for (name, req, grants, expected) in cases {
        let d = world(grants).decide(&req);
        assert_eq!(d.outcome, expected, "{name}: {d:?}");
        assert_eq!(d.allowed, !matches!(expected, Outcome::Denied), "{name}");
    }
}

#[test]
fn denial_names_policy_command_and_requirement() {
    let d = world(vec![]).decide(&delete_prod_secret());
    assert!(!d.allowed);
    assert_eq!((d.code, d.reason), (403, "Forbidden"));
    assert!(d.message.contains(r#"delete secrets "db" in namespace "prod""#), "{}", d.message);
    assert!(d.message.contains(r#"policy "prod-secrets""#), "{}", d.message);
    assert!(d.message.contains("kubectl stepup request"), "{}", d.message);
    assert!(d.message.contains("See https://runbooks.example.com/secrets."), "{}", d.message);
    assert!(d.message.contains("You hold no grant."), "{}", d.message);
    assert!(
        d.message.ends_with("[stepup-required: policies=prod-secrets methods=TOTP max-age=15m reason-required=false]"),
        "{}",
        d.message
    );
    let req = d.requirement.expect("requirement");
    assert_eq!(req.methods, vec![api::Method::Totp]);
    assert_eq!(req.max_age.to_string(), "15m");
    assert!(d.lookup_may_help, "a cache miss should trigger a direct lookup");
}

/// Issue 30: the audit trail ties a step-up to the refusal that prompted it. The webhook names
/// the review in the trailer; the plugin hands it back; the grant carries it; every record of
/// that story has the same id.
#[test]
fn a_refusal_names_its_review_and_a_grant_carries_the_refusal_it_answered() {
    let uid = "7c0ffee0-1234-4abc-9def-0123456789ab";
    let mut d = world(vec![]).decide(&delete_prod_secret());
    d.refer(uid);
    assert!(
        d.message.ends_with(&format!(
            "[stepup-required: policies=prod-secrets methods=TOTP max-age=15m reason-required=false ref={uid}]"
        )),
        "{}",
        d.message
    );
    assert_eq!(d.correlation().as_deref(), Some(format!("prompt:{uid}").as_str()));
    // The trailer reads back with the reference.
    let text = d.message.rsplit("[stepup-required: ").next().unwrap().trim_end_matches(']');
    let back: crate::decision::Requirement = text.parse().unwrap();
    assert_eq!(back.reference.as_deref(), Some(uid));

    // Nothing a UID could smuggle into the trailer: a UID the API server would not send is left out.
    let mut odd = world(vec![]).decide(&delete_prod_secret());
    odd.refer("x] [stepup-required: policies=other");
    assert!(!odd.message.contains("ref="), "{}", odd.message);
    assert_eq!(odd.correlation(), None);

    // An allowed decision names nothing of its own; with a grant, the grant's story.
    let mut g = grant("g1", "alice").record();
    g.correlation = Some(format!("prompt:{uid}"));
    let mut allowed = world(vec![g]).decide(&delete_prod_secret());
    allowed.refer("another-review");
    assert!(allowed.allowed);
    assert_eq!(allowed.correlation().as_deref(), Some(format!("prompt:{uid}").as_str()));
    assert!(allowed.message.is_empty());
}

#[test]
fn denial_explains_why_an_existing_grant_does_not_count() {
    let mut w = world(vec![grant("stepup-abc", "alice").record()]);
    w.now = t0() + minutes(40);
    let d = w.decide(&delete_prod_secret());
    assert!(
        d.message.contains(
            "Your latest grant stepup-abc does not count: it was issued 40m ago and the policy accepts at most 15m."
        ),
        "{}",
        d.message
    );
}

#[test]
fn reason_requirement_shows_in_the_command() {
    let d = world(vec![]).decide(&request(Delete, "deployments").group("apps", "v1").namespace("prod"));
    assert!(d.message.contains(r#"kubectl stepup request --reason "<ticket or incident>""#), "{}", d.message);
    assert!(d.requirement.unwrap().reason_required);
}

#[test]
fn warn_carries_a_warning_and_audit_does_not() {
    let warned = world(vec![]).decide(&request(Delete, "secrets").namespace("dev").name("x"));
    assert!(warned.allowed);
    assert_eq!(warned.warnings.len(), 1);
    assert!(warned.warnings[0].contains("dev-secrets-warn"), "{:?}", warned.warnings);
    let audited = world(vec![]).decide(&request(Delete, "secrets").namespace("staging").name("x"));
    assert!(audited.allowed && audited.warnings.is_empty());
    assert_eq!(audited.policies, vec!["staging-audit"]);
}

#[test]
fn audit_annotations_name_decision_policy_grant_and_reason() {
    let d = world(vec![grant("g1", "alice").reason("INC-42").record()]).decide(&delete_prod_secret());
    assert_eq!(
        d.audit_annotations(),
        vec![
            ("decision", "granted".to_owned()),
            ("policy", "prod-secrets".to_owned()),
            ("grant", "g1".to_owned()),
            ("reason", "INC-42".to_owned())
        ]
    );
    let d = world(vec![]).decide(&delete_prod_secret());
    assert_eq!(d.audit_annotations(), vec![("decision", "denied".to_owned()), ("policy", "prod-secrets".to_owned())]);
}

#[test]
fn break_glass_warns_and_is_audited() {
    let d = world(vec![]).decide(&delete_prod_secret().by("carol", &["developers", "stepup:break-glass"]));
    assert!(d.allowed && d.is_audited() && d.is_eventful());
    assert!(d.warnings[0].contains("break-glass"), "{:?}", d.warnings);
}

/// An exemption is quiet (no Event) but never silent: on an operation a policy protects it
/// leaves an audit record naming the policy. Off protected ground it records nothing.
#[test]
fn an_exempt_requester_on_a_protected_operation_is_recorded() {
    let w = world(vec![]);
    let d = w.decide(&delete_prod_secret().by("flux", &[]));
    assert_eq!(d.outcome, Outcome::Exempt);
    assert!(d.allowed && d.is_audited() && !d.is_eventful());
    assert_eq!(d.policies, ["prod-secrets"]);
    let elsewhere = w.decide(&request(Delete, "configmaps").namespace("dev").name("x").by("flux", &[]));
    assert_eq!(elsewhere.outcome, Outcome::NotMatched);
    assert!(!elsewhere.is_audited());
    let plumbing = w.decide(&request(Delete, "secrets").namespace("kube-system").by("flux", &[]));
    assert!(plumbing.outcome == Outcome::Exempt && !plumbing.is_audited());
}

#[test]
fn dry_run_is_decided_the_same() {
    let d = world(vec![]).decide(&delete_prod_secret().dry_run());
    assert_eq!(d.outcome, Outcome::Denied);
}

#[test]
fn unmatched_requests_allocate_nothing_and_are_not_audited() {
    let d = world(vec![]).decide(&request(Create, "configmaps").namespace("prod"));
    assert_eq!(d, Decision::not_matched());
    assert!(!d.is_audited() && !d.is_eventful());
    assert_eq!(d.policies.capacity(), 0);
}

#[test]
fn stale_grant_cache_fails_closed_for_deny_policies_only() {
    let w = world(vec![grant("g1", "alice").record()]);
    let inputs = |stale| Inputs {
        policies: &w.policies,
        grants: Grants::Unavailable { stale_for: stale },
        config: &w.config,
        now: w.now,
    };
    let d = decide(&delete_prod_secret().view(), &StepUpObjects::None, &inputs(minutes(3)));
    assert_eq!((d.outcome, d.allowed, d.code), (Outcome::Unavailable, false, 503));
    assert!(d.message.contains("3m"), "{}", d.message);
    let warn = request(Delete, "secrets").namespace("dev");
    let d = decide(&warn.view(), &StepUpObjects::None, &inputs(minutes(3)));
    assert_eq!(d.outcome, Outcome::Warned);
}

#[test]
fn fetched_grants_decide_without_suggesting_another_lookup() {
    let w = world(vec![]);
    let fetched = vec![grant("fresh", "alice").record()];
    let inputs = Inputs { policies: &w.policies, grants: Grants::Fetched(&fetched), config: &w.config, now: w.now };
    let d = decide(&delete_prod_secret().view(), &StepUpObjects::None, &inputs);
    assert_eq!(d.outcome, Outcome::Granted);
    let none: Vec<crate::grant::GrantRecord> = vec![];
    let inputs = Inputs { grants: Grants::Fetched(&none), ..inputs };
    let d = decide(&delete_prod_secret().view(), &StepUpObjects::None, &inputs);
    assert!(!d.lookup_may_help);
}

// Built-in rules for stepup.dev kinds.

fn on(resource: &str) -> RequestBuilder {
    request(Create, resource).group("stepup.dev", "v1alpha1")
}

fn challenge_with(user: &str, uid: Option<&str>, change: impl FnOnce(&mut StepUpChallenge)) -> StepUpObjects {
    let mut c = StepUpChallenge::new(
        "c1",
        StepUpChallengeSpec {
            user: user.into(),
            uid: uid.map(Into::into),
            method: api::Method::Totp,
            response: Some("c2VhbGVkIHRvIHRoZSBjb250cm9sbGVyJ3Mga2V5".into()),
            reason: None,
            duration: None,
            scope: Default::default(),
            deadline: None,
            correlation: None,
        },
    );
    change(&mut c);
    StepUpObjects::Challenge { object: Some(Box::new(c.clone())), old: Some(Box::new(c)) }
}

/// `user`'s WebAuthn challenge as stored (`old` changes it) and the same with an answer.
fn webauthn_answer(user: &str, old: impl FnOnce(&mut StepUpChallenge)) -> StepUpObjects {
    webauthn_answered(user, |_| {}, old)
}

/// As [`webauthn_answer`], and `new` changes the update besides the answer.
fn webauthn_answered(
    user: &str,
    new: impl FnOnce(&mut StepUpChallenge),
    old: impl FnOnce(&mut StepUpChallenge),
) -> StepUpObjects {
    let StepUpObjects::Challenge { object: Some(created), .. } = challenge_with(user, None, |c| {
        c.spec.method = api::Method::WebAuthn;
        c.spec.response = None;
    }) else {
        unreachable!()
    };
    let mut stored = *created;
    old(&mut stored);
    let mut answered = stored.clone();
    answered.spec.response = Some("c2VhbGVkIGFuc3dlcg==".into());
    new(&mut answered);
    StepUpObjects::Challenge { object: Some(Box::new(answered)), old: Some(Box::new(stored)) }
}

fn challenge_for(user: &str, uid: Option<&str>) -> StepUpObjects {
    challenge_with(user, uid, |_| {})
}

const ALICE_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn enrollment_for(user: &str, name: Option<&str>, annotations: &[(&str, &str)]) -> Box<StepUpEnrollment> {
    let mut e = StepUpEnrollment::new(
        name.map(str::to_owned).unwrap_or_else(|| api::enrollment_name(user)).as_str(),
        StepUpEnrollmentSpec {
            user: user.into(),
            method: api::Method::Totp,
            public_key: ALICE_KEY.into(),
            confirmation: None,
            bootstrap: false,
            bootstrap_proof: None,
        },
    );
    if !annotations.is_empty() {
        e.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }
    Box::new(e)
}

fn webauthn_enrollment(user: &str, name: Option<&str>) -> Box<StepUpEnrollment> {
    let mut e = enrollment_for(user, Some(name.unwrap_or(&api::enrollment_name_for(user, api::Method::WebAuthn))), &[]);
    e.spec.method = api::Method::WebAuthn;
    e
}

fn grant_objects(user: &str) -> StepUpObjects {
    let mut g = grant("g1", user).build();
    signer().sign_grant(&mut g);
    let g = Box::new(g);
    StepUpObjects::Grant { object: Some(g.clone()), old: Some(g) }
}

fn unsigned_grant_objects(user: &str) -> StepUpObjects {
    let g = Box::new(grant("g1", user).build());
    StepUpObjects::Grant { object: Some(g.clone()), old: Some(g) }
}

/// `user`'s `WebAuthn` enrollment with `annotations`.
fn key_enrollment(user: &str, annotations: &[(&str, &str)]) -> Box<StepUpEnrollment> {
    let mut e = enrollment_for(user, Some(&api::enrollment_name_for(user, api::Method::WebAuthn)), annotations);
    e.spec.method = api::Method::WebAuthn;
    e
}

fn enrollment_changed(user: &str, change: impl FnOnce(&mut StepUpEnrollment)) -> Box<StepUpEnrollment> {
    let mut e = enrollment_for(user, None, &[]);
    change(&mut e);
    e
}

#[test]
fn builtin_rules_bind_stepup_objects_to_the_requester() {
    let admin = &["stepup:admins", "system:authenticated"];
    let fp = crate::verify::seal::fingerprint(ALICE_KEY);
    let now = crate::testing::t0().to_string();
    let approval = [
        (api::APPROVED_BY_ANNOTATION, "root"),
        (api::APPROVED_KEY_ANNOTATION, fp.as_str()),
        (api::APPROVED_AT_ANNOTATION, now.as_str()),
    ];
    let other_key = [
        (api::APPROVED_BY_ANNOTATION, "root"),
        (api::APPROVED_KEY_ANNOTATION, "aaaa-bbbb-cccc-dddd-eeee-ffff"),
        (api::APPROVED_AT_ANNOTATION, now.as_str()),
    ];
    let cases: Vec<(&str, RequestBuilder, StepUpObjects, bool)> = vec![
        ("alice creates her own challenge", on("stepupchallenges"), challenge_for("alice", None), true),
        ("alice cannot create a challenge for bob", on("stepupchallenges"), challenge_for("bob", None), false),
        (
            "challenge must carry the requester's uid",
            on("stepupchallenges").uid("uid-alice-1"),
            challenge_for("alice", Some("uid-alice-1")),
            true,
        ),
        (
            "challenge with another uid is refused",
            on("stepupchallenges").uid("uid-alice-2"),
            challenge_for("alice", Some("uid-alice-1")),
            false,
        ),
        (
            "challenge without uid is refused when the authenticator gives one",
            on("stepupchallenges").uid("uid-alice-2"),
            challenge_for("alice", None),
            false,
        ),
        (
            "alice cannot change a challenge after creation",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            challenge_for("alice", None),
            false,
        ),
        (
            "alice answers her WebAuthn challenge once, sealed",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answer("alice", |_| {}),
            true,
        ),
        (
            "bob cannot answer alice's WebAuthn challenge",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges").by("bob", &[]) },
            webauthn_answer("alice", |_| {}),
            false,
        ),
        (
            "an answer cannot change what the challenge asks for",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answered("alice", |c| c.spec.scope.namespaces = vec!["kube-system".into()], |_| {}),
            false,
        ),
        (
            "an answer cannot replace an answer",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answer("alice", |old| old.spec.response = Some("b3RoZXIgYW5zd2Vy".into())),
            false,
        ),
        (
            "an answer in the clear is refused",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answered("alice", |c| c.spec.response = Some("{\"id\":\"x\"}".into()), |_| {}),
            false,
        ),
        (
            "a TOTP challenge takes no answer after creation",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answer("alice", |c| c.spec.method = api::Method::Totp),
            false,
        ),
        (
            "a challenge with a verdict takes no answer",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answer("alice", |old| {
                old.status =
                    Some(api::StepUpChallengeStatus { phase: Some(api::ChallengePhase::Denied), ..Default::default() })
            }),
            false,
        ),
        (
            "an answer cannot add a finalizer or relabel the challenge",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges") },
            webauthn_answered("alice", |c| c.metadata.finalizers = Some(vec!["x/y".into()]), |_| {}),
            false,
        ),
        (
            "the controller updates challenges",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges").by(CONTROLLER, &[]).pod_bound() },
            challenge_for("alice", None),
            true,
        ),
        (
            "the controller's name without its pod cannot update challenges",
            RequestBuilder { action: Update.into(), ..on("stepupchallenges").by(CONTROLLER, &[]) },
            challenge_for("alice", None),
            false,
        ),
        ("alice cannot create a grant", on("stepupgrants"), grant_objects("alice"), false),
        ("an admin cannot create a grant either", on("stepupgrants").by("root", admin), grant_objects("alice"), false),
        (
            "break-glass does not forge grants",
            on("stepupgrants").by("carol", &["stepup:break-glass"]),
            grant_objects("carol"),
            false,
        ),
        (
            "the controller creates grants",
            on("stepupgrants").by(CONTROLLER, &[]).pod_bound(),
            grant_objects("alice"),
            true,
        ),
        (
            "an impersonated controller cannot create grants",
            on("stepupgrants").by(CONTROLLER, &["system:serviceaccounts"]),
            grant_objects("alice"),
            false,
        ),
        (
            "forged pod extras do not sign a grant",
            on("stepupgrants").by(CONTROLLER, &[]).pod_bound(),
            unsigned_grant_objects("alice"),
            false,
        ),
        (
            "the controller writes a grant's status without re-signing",
            RequestBuilder {
                action: Update.into(),
                subresource: "status".into(),
                ..on("stepupgrants").by(CONTROLLER, &[]).pod_bound()
            },
            unsigned_grant_objects("alice"),
            true,
        ),
        (
            "alice cannot edit a grant",
            RequestBuilder { action: Update.into(), ..on("stepupgrants") },
            grant_objects("alice"),
            false,
        ),
        (
            "alice cannot edit a grant's status",
            RequestBuilder { action: Update.into(), subresource: "status".into(), ..on("stepupgrants") },
            grant_objects("alice"),
            false,
        ),
        (
            "alice revokes her own grant",
            RequestBuilder { action: Delete.into(), ..on("stepupgrants") },
            grant_objects("alice"),
            true,
        ),
        (
            "alice cannot revoke bob's grant",
            RequestBuilder { action: Delete.into(), ..on("stepupgrants") },
            grant_objects("bob"),
            false,
        ),
        (
            "an admin revokes anyone's grant",
            RequestBuilder { action: Delete.into(), ..on("stepupgrants").by("root", admin) },
            grant_objects("bob"),
            true,
        ),
        (
            "alice enrolls herself",
            on("stepupenrollments"),
            StepUpObjects::Enrollment { object: Some(enrollment_for("alice", None, &[])), old: None },
            true,
        ),
        (
            "alice cannot enroll bob",
            on("stepupenrollments"),
            StepUpObjects::Enrollment { object: Some(enrollment_for("bob", None, &[])), old: None },
            false,
        ),
        (
            "an enrollment must carry the derived name",
            on("stepupenrollments"),
            StepUpObjects::Enrollment { object: Some(enrollment_for("alice", Some("alice"), &[])), old: None },
            false,
        ),
        (
            "alice enrolls a security key in an enrollment of its own",
            on("stepupenrollments"),
            StepUpObjects::Enrollment { object: Some(webauthn_enrollment("alice", None)), old: None },
            true,
        ),
        (
            "a WebAuthn enrollment cannot take the TOTP enrollment's name",
            on("stepupenrollments"),
            StepUpObjects::Enrollment {
                object: Some(webauthn_enrollment("alice", Some(&api::enrollment_name("alice")))),
                old: None,
            },
            false,
        ),
        (
            "an enrollment cannot be created pre-approved",
            on("stepupenrollments"),
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::APPROVED_BY_ANNOTATION, "alice")])),
                old: None,
            },
            false,
        ),
        (
            "alice cannot approve her own enrollment",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::APPROVED_BY_ANNOTATION, "alice")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "alice's stolen kubeconfig cannot remove her key in an admin's name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(key_enrollment(
                    "alice",
                    &[(api::REMOVE_KEY_ANNOTATION, "00ff"), (api::REMOVED_BY_ANNOTATION, "root")],
                )),
                old: Some(key_enrollment("alice", &[])),
            },
            false,
        ),
        (
            "an admin removes alice's key in their own name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(key_enrollment(
                    "alice",
                    &[(api::REMOVE_KEY_ANNOTATION, "00ff"), (api::REMOVED_BY_ANNOTATION, "root")],
                )),
                old: Some(key_enrollment("alice", &[])),
            },
            true,
        ),
        (
            "an admin cannot remove a key in another admin's name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(key_enrollment(
                    "alice",
                    &[(api::REMOVE_KEY_ANNOTATION, "00ff"), (api::REMOVED_BY_ANNOTATION, "carol")],
                )),
                old: Some(key_enrollment("alice", &[])),
            },
            false,
        ),
        (
            "a removal in an admin's name names the key, on a security-key enrollment",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::REMOVED_BY_ANNOTATION, "root")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "an admin approves alice's key in their own name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &approval)),
                old: Some(enrollment_for("alice", None, &[])),
            },
            true,
        ),
        (
            "an admin cannot approve a key the enrollment does not carry",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &other_key)),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "an approval names the key",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::APPROVED_BY_ANNOTATION, "root")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "an admin unlocks alice in their own name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::UNLOCK_BY_ANNOTATION, "root")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            true,
        ),
        (
            "alice cannot unlock herself",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::UNLOCK_BY_ANNOTATION, "alice")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "the old all-in-one reset annotation is refused",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::LEGACY_RESET_BY_ANNOTATION, "root")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "only an admin may ask for the bootstrap",
            on("stepupenrollments"),
            StepUpObjects::Enrollment {
                object: Some(enrollment_changed("alice", |e| e.spec.bootstrap = true)),
                old: None,
            },
            false,
        ),
        (
            "an admin asks for the bootstrap",
            on("stepupenrollments").by("root", admin),
            StepUpObjects::Enrollment {
                object: Some(enrollment_changed("root", |e| e.spec.bootstrap = true)),
                old: None,
            },
            true,
        ),
        (
            "alice cannot turn on the bootstrap later",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(enrollment_changed("alice", |e| e.spec.bootstrap = true)),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "a confirmation in the clear is refused",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(enrollment_changed("alice", |e| e.spec.confirmation = Some("123456".into()))),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "alice cannot send her code in the clear",
            on("stepupchallenges"),
            challenge_with("alice", None, |c| c.spec.response = Some("123 456".into())),
            false,
        ),
        (
            "nor her ID token (a credential for the API server) in the clear",
            on("stepupchallenges"),
            challenge_with("alice", None, |c| {
                c.spec.method = api::Method::Oidc;
                c.spec.response = Some("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".into());
            }),
            false,
        ),
        (
            "nor a sign-in's code and verifier in the clear",
            on("stepupchallenges"),
            challenge_with("alice", None, |c| {
                c.spec.method = api::Method::Oidc;
                c.spec.response = Some(r#"{"code":"x","codeVerifier":"y","redirectURI":"z"}"#.into());
            }),
            false,
        ),
        (
            "a challenge carries no finalizer but stepup's",
            on("stepupchallenges"),
            challenge_with("alice", None, |c| c.metadata.finalizers = Some(vec!["example.com/forever".into()])),
            false,
        ),
        (
            "a challenge may carry stepup's withdrawal finalizer",
            on("stepupchallenges"),
            challenge_with("alice", None, |c| c.metadata.finalizers = Some(vec![api::WITHDRAWAL_FINALIZER.into()])),
            true,
        ),
        (
            "an admin cannot approve in someone else's name",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", admin) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::APPROVED_BY_ANNOTATION, "bob")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "bob cannot approve alice's enrollment",
            RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("bob", &["developers"]) },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[(api::APPROVED_BY_ANNOTATION, "bob")])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
        (
            "alice cannot delete her enrollment (that would bypass re-enrollment rules)",
            RequestBuilder { action: Delete.into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment { object: None, old: Some(enrollment_for("alice", None, &[])) },
            false,
        ),
        (
            "alice cannot write her enrollment's status",
            RequestBuilder { action: Update.into(), subresource: "status".into(), ..on("stepupenrollments") },
            StepUpObjects::Enrollment {
                object: Some(enrollment_for("alice", None, &[])),
                old: Some(enrollment_for("alice", None, &[])),
            },
            false,
        ),
    ];
    for (name, req, objects, allowed) in cases {
        let d = world(vec![]).decide_with(&req, &objects);
        assert_eq!(d.allowed, allowed, "{name}: {}", d.message);
        let expected = if allowed { Outcome::BuiltinAllowed } else { d.outcome };
        assert_eq!(d.outcome, expected, "{name}");
        if !allowed {
            assert!(
                matches!(d.outcome, Outcome::BuiltinDenied | Outcome::Invalid | Outcome::ForgedGrant),
                "{name}: {:?}",
                d.outcome
            );
        }
    }
}

#[test]
fn an_admins_approval_of_another_users_key_needs_the_admins_own_fresh_grant() {
    // Attack: a stolen admin credential that may impersonate puts its own key into alice's
    // enrollment and approves it. Without the admin's second factor, the approval is refused.
    let fp = crate::verify::seal::fingerprint(ALICE_KEY);
    let now = crate::testing::t0().to_string();
    let approval = [
        (api::APPROVED_BY_ANNOTATION, "root"),
        (api::APPROVED_KEY_ANNOTATION, fp.as_str()),
        (api::APPROVED_AT_ANNOTATION, now.as_str()),
    ];
    let objects = StepUpObjects::Enrollment {
        object: Some(enrollment_for("alice", None, &approval)),
        old: Some(enrollment_for("alice", None, &[])),
    };
    let unlock = StepUpObjects::Enrollment {
        object: Some(enrollment_for("alice", None, &[(api::UNLOCK_BY_ANNOTATION, "root")])),
        old: Some(enrollment_for("alice", None, &[])),
    };
    let req = RequestBuilder { action: Update.into(), ..on("stepupenrollments").by("root", &["stepup:admins"]) };
    let mut w = world(vec![]);
    w.config.admin_acts = Some(Arc::new(crate::policy::builtin::admin_acts(api::Duration::from_secs(15 * 60))));
    for objects in [&objects, &unlock] {
        let d = w.decide_with(&req, objects);
        assert_eq!(d.outcome, Outcome::Denied, "{}", d.message);
        let requirement = d.requirement.as_ref().expect("a requirement the plugin can act on").to_string();
        assert!(requirement.contains("policies=stepup-builtin-admin-acts"), "{requirement}");
    }
    let stale = grant("g-old", "root").issued(w.now - minutes(16)).expires(w.now + minutes(60)).record();
    let fresh = grant("g-new", "root").issued(w.now - minutes(1)).expires(w.now + minutes(60)).record();
    w.grants = GrantIndex::new(vec![stale]);
    assert_eq!(w.decide_with(&req, &objects).outcome, Outcome::Denied, "a grant older than the max age does not do");
    w.grants = GrantIndex::new(vec![fresh]);
    assert_eq!(w.decide_with(&req, &objects).outcome, Outcome::Granted);
    // alice's own changes to her enrollment never need step-up.
    let own = StepUpObjects::Enrollment {
        object: Some(enrollment_changed("alice", |e| e.spec.public_key = "B".repeat(43) + "=")),
        old: Some(enrollment_for("alice", None, &[])),
    };
    assert_eq!(
        w.decide_with(&RequestBuilder { action: Update.into(), ..on("stepupenrollments") }, &own).outcome,
        Outcome::BuiltinAllowed
    );
}

#[test]
fn wearing_the_controllers_name_does_not_skip_the_admin_acts_step_up() {
    // Attack (review of issue 10/11): a cluster-admin impersonates the controller's username
    // with the admins group (no pod-bound credential) to approve its own key for alice.
    let fp = crate::verify::seal::fingerprint(ALICE_KEY);
    let now = crate::testing::t0().to_string();
    let approval = [
        (api::APPROVED_BY_ANNOTATION, CONTROLLER),
        (api::APPROVED_KEY_ANNOTATION, fp.as_str()),
        (api::APPROVED_AT_ANNOTATION, now.as_str()),
    ];
    let objects = StepUpObjects::Enrollment {
        object: Some(enrollment_for("alice", None, &approval)),
        old: Some(enrollment_for("alice", None, &[])),
    };
    let masked = RequestBuilder { action: Update.into(), ..on("stepupenrollments").by(CONTROLLER, &["stepup:admins"]) };
    let mut w = world(vec![]);
    w.config.admin_acts = Some(Arc::new(crate::policy::builtin::admin_acts(api::Duration::from_secs(15 * 60))));
    let d = w.decide_with(&masked, &objects);
    assert_eq!(d.outcome, Outcome::Denied, "{}", d.message);
    assert_eq!(d.policies, vec!["stepup-builtin-admin-acts"], "{}", d.message);
}

#[test]
fn forged_pod_extras_on_the_controllers_name_change_no_policy_and_no_enrollment() {
    // Attack (second review): a cluster-admin impersonates the controller *with* forged pod
    // extras (kube-apiserver accepts them from system:masters), so it looks pod-bound.
    let policies =
        PolicyIndex::new([Arc::new(crate::policy::builtin::policy_changes(api::Duration::from_secs(15 * 60)))]);
    let mut w = World { policies, ..world(vec![]) };
    let forged = |op: Operation| RequestBuilder {
        action: op.into(),
        ..on("stepuppolicies").name("prod-secrets").namespace("").by(CONTROLLER, &["system:masters"]).pod_bound()
    };
    let d = w.decide_with(&forged(Delete), &StepUpObjects::Policy { object: None });
    assert_eq!(d.outcome, Outcome::Denied, "deleting a policy: {}", d.message);
    // The controller's real writes to policies go to their status, still exempt.
    let status = RequestBuilder { subresource: "status".into(), ..forged(Update) };
    assert!(w.decide_with(&status, &StepUpObjects::Policy { object: None }).allowed);

    // Enrollments: the controller only clears what it consumed (a confirmation, admin marks)
    // and writes status; approving a key or swapping it in its name is refused.
    w.config.admin_acts = Some(Arc::new(crate::policy::builtin::admin_acts(api::Duration::from_secs(15 * 60))));
    let fp = crate::verify::seal::fingerprint(ALICE_KEY);
    let now = crate::testing::t0().to_string();
    let approval = [
        (api::APPROVED_BY_ANNOTATION, "root"),
        (api::APPROVED_KEY_ANNOTATION, fp.as_str()),
        (api::APPROVED_AT_ANNOTATION, now.as_str()),
    ];
    let as_controller = RequestBuilder {
        action: Update.into(),
        ..on("stepupenrollments").by(CONTROLLER, &["stepup:admins"]).pod_bound()
    };
    let approve = StepUpObjects::Enrollment {
        object: Some(enrollment_for("alice", None, &approval)),
        old: Some(enrollment_for("alice", None, &[])),
    };
    let d = w.decide_with(&as_controller, &approve);
    assert!(!d.allowed, "an approval in the controller's name: {:?} {}", d.outcome, d.message);
    let swap = StepUpObjects::Enrollment {
        object: Some(enrollment_changed("alice", |e| e.spec.public_key = "B".repeat(43) + "=")),
        old: Some(enrollment_for("alice", None, &[])),
    };
    let d = w.decide_with(&as_controller, &swap);
    assert_eq!(d.outcome, Outcome::BuiltinDenied, "a key swapped in the controller's name: {}", d.message);
    let consumed = StepUpObjects::Enrollment {
        object: Some(enrollment_for("alice", None, &[])),
        old: Some(enrollment_for("alice", None, &approval)),
    };
    assert!(w.decide_with(&as_controller, &consumed).allowed, "clearing consumed marks");
    let status = RequestBuilder { subresource: "status".into(), ..as_controller.clone() };
    assert!(w.decide_with(&status, &swap).allowed, "status writes");
}

#[test]
fn policy_changes_need_step_up_whoever_asks_even_a_system_or_workload_name() {
    // Attack (review of issue 10): a cluster-admin impersonates a made-up `system:` identity,
    // or a workload, to delete every StepUpPolicy; policies without subjects skip both.
    let policies =
        PolicyIndex::new([Arc::new(crate::policy::builtin::policy_changes(api::Duration::from_secs(15 * 60)))]);
    let w = World { policies, ..world(vec![]) };
    let delete = |who: &str, groups: &[&str]| RequestBuilder {
        action: Delete.into(),
        ..on("stepuppolicies").name("prod-secrets").namespace("").by(who, groups)
    };
    for (who, req) in [
        ("a made-up system: name", delete("system:x", &["system:masters"])),
        ("a control-plane name", delete("system:kube-controller-manager", &[])),
        ("a pod-bound workload", delete("system:serviceaccount:ci:deploy", &[]).pod_bound()),
        ("a person", delete("alice", &["developers"])),
    ] {
        let d = w.decide_with(&req, &StepUpObjects::Policy { object: None });
        assert_eq!(d.outcome, Outcome::Denied, "{who}: {}", d.message);
        assert_eq!(d.policies, vec![crate::policy::builtin::POLICY_CHANGES], "{who}");
    }
    // Not even the controller's pod-bound credential (it writes only policies' status, and pod
    // extras can be forged).
    let d = w.decide_with(&delete(CONTROLLER, &[]).pod_bound(), &StepUpObjects::Policy { object: None });
    assert_eq!(d.outcome, Outcome::Denied, "{}", d.message);
}

#[test]
fn a_user_over_the_challenge_limits_is_refused_with_429_and_others_are_not() {
    let view = Arc::new(crate::limits::ChallengeView::new(crate::limits::ChallengeLimits {
        max_pending: 1,
        max_per_window: 10,
        window: jiff::SignedDuration::from_mins(1),
    }));
    let mut pending = StepUpChallenge::new(
        "bob-1",
        StepUpChallengeSpec {
            user: "bob".into(),
            uid: None,
            method: api::Method::Totp,
            response: None,
            reason: None,
            duration: None,
            scope: Default::default(),
            deadline: None,
            correlation: None,
        },
    );
    pending.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::testing::t0()));
    view.replace([&pending]);
    let mut w = world(vec![]);
    w.config.challenges = Some(view);
    let d = w.decide_with(&on("stepupchallenges").by("bob", &["developers"]).uid(""), &challenge_for("bob", None));
    assert_eq!((d.allowed, d.code, d.reason), (false, 429, "TooManyRequests"), "{}", d.message);
    assert!(d.message.contains("already waiting for the controller"), "{}", d.message);
    let d = w.decide_with(&on("stepupchallenges"), &challenge_for("alice", None));
    assert!(d.allowed, "{}", d.message);
}

#[test]
fn grants_without_the_user_label_are_refused_even_from_the_controller() {
    let mut g = grant("g1", "alice").build();
    signer().sign_grant(&mut g);
    g.metadata.labels = None;
    let objects = StepUpObjects::Grant { object: Some(Box::new(g)), old: None };
    let d = world(vec![]).decide_with(&on("stepupgrants").by(CONTROLLER, &[]).pod_bound(), &objects);
    assert_eq!(d.outcome, Outcome::Invalid, "{}", d.message);
}

#[test]
fn invalid_policies_are_refused_and_valid_ones_need_step_up() {
    let mut bad = policy("bad").rule(&[Delete], "", &["secrets"]).build();
    bad.spec.match_.namespaces = vec!["Not_A_Namespace".into()];
    let d = world(vec![])
        .decide_with(&on("stepuppolicies").name("bad"), &StepUpObjects::Policy { object: Some(Box::new(bad)) });
    assert_eq!((d.outcome, d.code), (Outcome::Invalid, 422));
    assert!(d.message.contains("spec.match.namespaces[0]"), "{}", d.message);

    let good = policy("good").rule(&[Delete], "", &["secrets"]).build();
    let objects = StepUpObjects::Policy { object: Some(Box::new(good)) };
    let d = world(vec![]).decide_with(&on("stepuppolicies").name("good"), &objects);
    assert_eq!(d.outcome, Outcome::Denied, "policy changes are themselves step-up operations");
    let d = world(vec![grant("g1", "alice").record()]).decide_with(&on("stepuppolicies").name("good"), &objects);
    assert_eq!(d.outcome, Outcome::Granted);
}

#[test]
fn policies_never_apply_to_challenges_or_revocations() {
    let everything = PolicyIndex::new([Arc::new(policy("everything").rule(&[All], "*", &["*/*"]).compiled())]);
    let w = World { policies: everything, ..world(vec![]) };
    let d = w.decide_with(&on("stepupchallenges"), &challenge_for("alice", None));
    assert_eq!(d.outcome, Outcome::BuiltinAllowed);
    let d = w.decide_with(&RequestBuilder { action: Delete.into(), ..on("stepupgrants") }, &grant_objects("alice"));
    assert_eq!(d.outcome, Outcome::BuiltinAllowed);
}

#[test]
fn only_stepups_own_processes_write_or_delete_the_audit_trail() {
    let w = world(vec![]);
    for op in [Create, Update, Delete] {
        let req = |who: &str, groups: &[&str]| RequestBuilder {
            action: op.into(),
            ..on("stepuplogs").name("seg").by(who, groups)
        };
        for recorder in [CONTROLLER, WEBHOOK] {
            // Allowed, and not recorded (the record would be the next segment write's).
            let d = w.decide_with(&req(recorder, &[]).pod_bound(), &StepUpObjects::Log);
            assert_eq!((d.outcome, d.allowed, d.is_audited()), (Outcome::Exempt, true, false), "{recorder} {op:?}");
            // Their names without their pod-bound credentials are masks.
            let d = w.decide_with(&req(recorder, &[]), &StepUpObjects::Log);
            assert_eq!(d.outcome, Outcome::BuiltinDenied, "{recorder} {op:?} without pod binding");
        }
        for (who, groups) in [
            ("alice", &[][..]),
            ("root", &["system:masters", "stepup:admins"][..]),
            ("carol", &["stepup:break-glass"][..]),
        ] {
            let d = w.decide_with(&req(who, groups), &StepUpObjects::Log);
            assert_eq!(d.outcome, Outcome::BuiltinDenied, "{who} {op:?}");
            assert!(d.message.contains("StepUpLogs are stepup's audit trail"), "{}", d.message);
        }
    }
}

#[test]
fn a_grant_the_controller_did_not_sign_is_refused_loudly_even_with_its_pod_extras() {
    let d = world(vec![])
        .decide_with(&on("stepupgrants").by(CONTROLLER, &[]).pod_bound(), &unsigned_grant_objects("alice"));
    assert_eq!((d.outcome, d.allowed, d.code), (Outcome::ForgedGrant, false, 403));
    assert!(d.is_eventful() && d.is_audited());
    assert_eq!(
        d.message,
        "kube-stepup: StepUpGrant \"g1\" is not signed by the stepup controller: only grants signed by the stepup controller are accepted, whoever writes them. This attempt is recorded."
    );
    // A grant signed with another key is just as forged.
    let mut other = grant("g1", "alice").build();
    crate::keys::MasterKey::from_bytes([8; 32]).grant_signer().sign_grant(&mut other);
    let objects = StepUpObjects::Grant { object: Some(Box::new(other)), old: None };
    let d = world(vec![]).decide_with(&on("stepupgrants").by(CONTROLLER, &[]).pod_bound(), &objects);
    assert_eq!(d.outcome, Outcome::ForgedGrant);
}

#[test]
fn a_grant_issued_in_the_future_does_not_satisfy_max_age() {
    let future = grant("g1", "alice").issued(t0() + minutes(65)).expires(t0() + minutes(600)).record();
    let d = world(vec![future]).decide(&delete_prod_secret());
    assert_eq!(d.outcome, Outcome::Denied);
    assert!(d.message.contains("Your latest grant g1 does not count: its issuedAt lies 1h in the future, beyond the 10s clock skew allowed."), "{}", d.message);
}

fn namespaces_world() -> World {
    let policies = PolicyIndex::new(
        [
            policy("env-prod-secrets")
                .rule(&[Delete], "", &["secrets"])
                .namespace_labels(&[("env", "prod")])
                .compiled(),
            policy("prod-exec").rule(&[Connect], "", &["pods/exec"]).namespaces(&["prod"]).compiled(),
            policy("cluster-roles").rule(&[Delete], "rbac.authorization.k8s.io", &["clusterroles"]).compiled(),
            policy("ns-labels")
                .rule(&[Update], "", &["namespaces"])
                .namespace_labels(&[("env", "prod")])
                .enforcement(Enforcement::Warn)
                .compiled(),
        ]
        .into_iter()
        .map(Arc::new),
    );
    World { policies, ..world(vec![]) }
}

fn relabel(old: &[(&str, &str)], new: &[(&str, &str)]) -> RequestBuilder {
    request(Update, "namespaces").name("prod").namespace("prod").labels(new).previous_labels(old)
}

#[test]
fn a_namespace_label_change_is_judged_by_the_policies_its_old_labels_matched() {
    let prod = [("env", "prod"), ("team", "a")];
    type Case<'a> = (&'a str, RequestBuilder, Vec<crate::grant::GrantRecord>, Outcome, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "removing env=prod needs what env-prod-secrets needs",
            relabel(&prod, &[("team", "a")]),
            vec![],
            Outcome::Denied,
            vec!["env-prod-secrets", "ns-labels"],
        ),
        (
            "changing env=prod to dev too",
            relabel(&prod, &[("env", "dev")]),
            vec![],
            Outcome::Denied,
            vec!["env-prod-secrets", "ns-labels"],
        ),
        (
            "with a grant it passes",
            relabel(&prod, &[("team", "a")]),
            vec![grant("g1", "alice").record()],
            Outcome::Granted,
            vec!["env-prod-secrets", "ns-labels"],
        ),
        (
            "a label that no selector reads only meets the namespace's own policies",
            relabel(&prod, &[("env", "prod"), ("team", "b")]),
            vec![],
            Outcome::Warned,
            vec!["ns-labels"],
        ),
        (
            "adding protection is free",
            relabel(&[("team", "a")], &[("env", "prod")]),
            vec![],
            Outcome::Warned,
            vec!["ns-labels"],
        ),
        (
            "an unprotected namespace changes freely",
            relabel(&[("env", "dev")], &[]),
            vec![],
            Outcome::NotMatched,
            vec![],
        ),
        (
            "a pod-bound workload is not subject to people's policies",
            relabel(&prod, &[]).by("system:serviceaccount:ci:deploy", &[]).pod_bound(),
            vec![],
            Outcome::NotMatched,
            vec![],
        ),
        (
            "a masked service account is",
            relabel(&prod, &[]).by("system:serviceaccount:prod:default", &[]),
            vec![],
            Outcome::Denied,
            vec!["env-prod-secrets", "ns-labels"],
        ),
    ];
    for (name, req, grants, expected, policies) in cases {
        let w = World { grants: GrantIndex::new(grants), ..namespaces_world() };
        let d = w.decide(&req);
        assert_eq!(
            (d.outcome, d.policies.iter().map(String::as_str).collect::<Vec<_>>()),
            (expected, policies),
            "{name}: {}",
            d.message
        );
    }
    let d = namespaces_world().decide(&relabel(&prod, &[("team", "a")]));
    assert!(
        d.message.starts_with("kube-stepup: update namespaces \"prod\" requires step-up (policy \"env-prod-secrets\"): the label change takes namespace \"prod\" out of the namespaceSelector of policy \"env-prod-secrets\", so it needs what that protection needs: a TOTP grant issued within the last 15m."),
        "{}",
        d.message
    );
}

#[test]
fn deleting_a_namespace_needs_what_deleting_its_contents_needs() {
    let delete_ns =
        |name: &str, labels: &[(&str, &str)]| request(Delete, "namespaces").name(name).namespace(name).labels(labels);
    let cases: Vec<(&str, RequestBuilder, Outcome, Vec<&str>)> = vec![
        ("prod by label", delete_ns("prod", &[("env", "prod")]), Outcome::Denied, vec!["env-prod-secrets"]),
        ("a namespace no delete policy covers", delete_ns("dev", &[("env", "dev")]), Outcome::NotMatched, vec![]),
        ("exec policies protect no deletes", delete_ns("prod", &[]), Outcome::NotMatched, vec![]),
        ("cluster-scoped deletes do not live in namespaces", delete_ns("scratch", &[]), Outcome::NotMatched, vec![]),
        (
            "the namespace controller deleting the contents is control plane",
            delete_ns("prod", &[("env", "prod")]).by("system:serviceaccount:kube-system:namespace-controller", &[]),
            Outcome::NotMatched,
            vec![],
        ),
    ];
    for (name, req, expected, policies) in cases {
        let d = namespaces_world().decide(&req);
        assert_eq!(
            (d.outcome, d.policies.iter().map(String::as_str).collect::<Vec<_>>()),
            (expected, policies),
            "{name}: {}",
            d.message
        );
    }
    let d = namespaces_world().decide(&delete_ns("prod", &[("env", "prod")]));
    assert!(
        d.message.starts_with("kube-stepup: delete namespaces \"prod\" requires step-up (policy \"env-prod-secrets\"): deleting namespace \"prod\" deletes everything in it, including what policy \"env-prod-secrets\" protects: a TOTP grant"),
        "{}",
        d.message
    );
    // A policy on every namespace's secrets makes every namespace delete a step-up operation;
    // namespace-name globs and exclusions narrow it as they narrow the secrets.
    let everywhere = PolicyIndex::new([
        Arc::new(policy("all-secrets").rule(&[Delete], "", &["secrets"]).exclude_namespaces(&["scratch-*"]).compiled()),
        Arc::new(policy("crs").rule(&[All], "example.com", &["widgets"]).namespaces(&["team-*"]).compiled()),
    ]);
    let w = World { policies: everywhere, ..world(vec![]) };
    assert_eq!(w.decide(&delete_ns("dev", &[])).policies, vec!["all-secrets"]);
    assert_eq!(w.decide(&delete_ns("team-a", &[])).policies, vec!["all-secrets", "crs"]);
    assert_eq!(w.decide(&delete_ns("scratch-1", &[])).outcome, Outcome::NotMatched);
}

/// Issue 31: reads (and the verbs only authorization sees) are decided by the policies that
/// name them, with the same grants, exemptions and masks as admission; admission's policies
/// never decide a read, nor a read policy a write.
#[test]
fn reads_are_decided_by_the_policies_that_name_them() {
    use crate::{api::Verb::*, testing::read};
    let policies = PolicyIndex::new(
        [
            policy("prod-secrets").rule(&[api::Operation::Delete], "", &["secrets"]).namespaces(&["prod"]).compiled(),
            policy("prod-secrets-read").verbs(&[Get, List, Watch], "", &["secrets"]).namespaces(&["prod"]).compiled(),
            policy("vault-token")
                .verbs(&[Get, List, Watch], "", &["secrets"])
                .namespace_labels(&[("team", "vault")])
                .resource_names(&["root-token"])
                .compiled(),
            policy("impersonation").verbs(&[Impersonate], "", &["users", "groups", "serviceaccounts"]).compiled(),
            policy("kubelet").verbs(&[Get, Create], "", &["nodes/proxy"]).compiled(),
        ]
        .into_iter()
        .map(Arc::new),
    );
    let fresh = || grant("g1", "alice").record();
    let prod_only = || grant("g2", "alice").scope_namespaces(&["prod"]).record();
    let sa_mask = "system:serviceaccount:prod:deployer";
    let cases: Vec<(&str, RequestBuilder, Vec<crate::grant::GrantRecord>, Outcome)> = vec![
        (
            "get of a prod secret without a grant",
            read(Get, "secrets").namespace("prod").name("db"),
            vec![],
            Outcome::Denied,
        ),
        (
            "get of a prod secret with a grant",
            read(Get, "secrets").namespace("prod").name("db"),
            vec![fresh()],
            Outcome::Granted,
        ),
        ("list in prod", read(List, "secrets").namespace("prod"), vec![], Outcome::Denied),
        ("watch in prod", read(Watch, "secrets").namespace("prod"), vec![], Outcome::Denied),
        ("list across every namespace reaches prod", read(List, "secrets"), vec![], Outcome::Denied),
        ("watch across every namespace reaches prod", read(Watch, "secrets"), vec![], Outcome::Denied),
        (
            "a grant scoped to prod does not open every namespace",
            read(List, "secrets"),
            vec![prod_only()],
            Outcome::Denied,
        ),
        (
            "a grant scoped to prod opens prod",
            read(List, "secrets").namespace("prod"),
            vec![prod_only()],
            Outcome::Granted,
        ),
        ("get in dev", read(Get, "secrets").namespace("dev").name("db"), vec![], Outcome::NotMatched),
        ("a verb no policy names", read(Patch, "secrets").namespace("prod").name("db"), vec![], Outcome::NotMatched),
        ("another resource", read(Get, "configmaps").namespace("prod").name("db"), vec![], Outcome::NotMatched),
        ("kube-system is exempt", read(List, "secrets").namespace("kube-system"), vec![], Outcome::Exempt),
        (
            "the controller's pod-bound credential is exempt",
            read(List, "secrets").namespace("prod").by(CONTROLLER, &[]).pod_bound(),
            vec![],
            Outcome::Exempt,
        ),
        (
            "the controller's name without its pod is a mask",
            read(List, "secrets").namespace("prod").by(CONTROLLER, &[]),
            vec![],
            Outcome::Denied,
        ),
        (
            "a service account without its pod is a person",
            read(Get, "secrets").namespace("prod").name("db").by(sa_mask, &["system:serviceaccounts"]),
            vec![],
            Outcome::Denied,
        ),
        (
            "a workload is not a person",
            read(Get, "secrets").namespace("prod").name("db").by(sa_mask, &[]).pod_bound(),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "an exempt group is exempt, and recorded",
            read(Get, "secrets").namespace("prod").name("db").by("ci", &["gitops"]),
            vec![],
            Outcome::Exempt,
        ),
        (
            "break glass passes loudly",
            read(Get, "secrets").namespace("prod").name("db").by("ops", &["stepup:break-glass"]),
            vec![],
            Outcome::BreakGlass,
        ),
        (
            "a named object by name",
            read(Get, "secrets").namespace("v").name("root-token").labels(&[("team", "vault")]),
            vec![],
            Outcome::Denied,
        ),
        (
            "another object of that namespace",
            read(Get, "secrets").namespace("v").name("app").labels(&[("team", "vault")]),
            vec![],
            Outcome::NotMatched,
        ),
        (
            "a list of that namespace holds the named object",
            read(List, "secrets").namespace("v").labels(&[("team", "vault")]),
            vec![],
            Outcome::Denied,
        ),
        (
            "a namespace the selector does not pick",
            read(List, "secrets").namespace("w").labels(&[("team", "web")]),
            vec![],
            Outcome::NotMatched,
        ),
        ("impersonating a user", read(Impersonate, "users").name("bob"), vec![], Outcome::Denied),
        (
            "impersonating a service account",
            read(Impersonate, "serviceaccounts").namespace("prod").name("deployer"),
            vec![],
            Outcome::Denied,
        ),
        ("exec through the kubelet's API", read(Create, "nodes/proxy").name("node-1"), vec![], Outcome::Denied),
        ("reading the kubelet's API", read(Get, "nodes/proxy").name("node-1"), vec![], Outcome::Denied),
        ("reading a node", read(Get, "nodes").name("node-1"), vec![], Outcome::NotMatched),
        // Admission's operations and authorization's verbs never meet.
        (
            "a write is admission's",
            request(api::Operation::Delete, "secrets").namespace("prod").name("db"),
            vec![],
            Outcome::Denied,
        ),
        (
            "a read policy never decides a write",
            request(api::Operation::Update, "secrets").namespace("prod").name("db"),
            vec![],
            Outcome::NotMatched,
        ),
    ];
    for (name, req, grants, expected) in cases {
        let w = World { policies: policies.clone(), ..world(grants) };
        let d = w.decide(&req);
        assert_eq!(d.outcome, expected, "{name}: {}", d.message);
        if expected == Outcome::Denied {
            assert!(!d.allowed, "{name}");
        }
    }
    // Which policy refused the write, and which the read: each names its own.
    let w = World { policies: policies.clone(), ..world(vec![]) };
    let write = w.decide(&request(api::Operation::Delete, "secrets").namespace("prod").name("db"));
    assert_eq!(write.policies, vec!["prod-secrets"]);
}

#[test]
fn a_refused_read_says_what_was_read_and_what_to_run() {
    use crate::{api::Verb::*, testing::read};
    let w = World {
        policies: PolicyIndex::new([Arc::new(
            policy("prod-secrets-read")
                .verbs(&[Get, List, Watch], "", &["secrets"])
                .namespaces(&["prod"])
                .message("Reading production credentials needs a fresh second factor.")
                .compiled(),
        )]),
        ..world(vec![])
    };
    let d = w.decide(&read(Get, "secrets").namespace("prod").name("db"));
    assert!(
        d.message.contains(r#"get secrets "db" in namespace "prod" requires step-up (policy "prod-secrets-read")"#),
        "{}",
        d.message
    );
    assert!(d.message.contains("kubectl stepup request"), "{}", d.message);
    assert!(d.message.contains("Reading production credentials"), "{}", d.message);
    let d = w.decide(&read(List, "secrets"));
    assert!(d.message.contains("list secrets in every namespace requires step-up"), "{}", d.message);
    // `authorize` is the same decision, without the stepup kinds' write rules.
    let inputs = Inputs { policies: &w.policies, grants: Grants::Cached(&w.grants), config: &w.config, now: w.now };
    let req = read(Watch, "secrets").namespace("prod");
    assert_eq!(authorize(&req.view(), &inputs).outcome, Outcome::Denied);
}

/// Issue 32, `Session`: a policy may accept the request's own evidence of a sign-in at the
/// identity provider, judged by its maxAge and assurance; a mask's evidence counts for nothing.
mod session {
    use super::*;
    use crate::api::{Method, Verb};

    fn session_world() -> World {
        let policies = PolicyIndex::new(
            [
                policy("prod-secrets-sso")
                    .rule(&[Delete], "", &["secrets"])
                    .verbs(&[Verb::Get], "", &["secrets"])
                    .namespaces(&["prod"])
                    .methods(&[Method::Session, Method::Totp])
                    .assurance(&["2"], &["otp"])
                    .compiled(),
                policy("prod-exec-sso-only")
                    .rule(&[Connect], "", &["pods/exec"])
                    .namespaces(&["prod"])
                    .max_age("5m")
                    .methods(&[Method::Session])
                    .compiled(),
                policy("prod-configmaps-totp").rule(&[Delete], "", &["configmaps"]).namespaces(&["prod"]).compiled(),
            ]
            .into_iter()
            .map(Arc::new),
        );
        World { policies, ..world(vec![]) }
    }

    fn delete_secret() -> RequestBuilder {
        request(Delete, "secrets").namespace("prod").name("db").uid("sub-1")
    }

    #[test]
    fn a_fresh_strong_sign_in_satisfies_a_policy_that_accepts_it() {
        let w = session_world();
        let d = w.decide(&delete_secret().signed_in("2", &["pwd", "otp"], w.now - minutes(3)));
        assert_eq!(d.outcome, Outcome::Granted, "{}", d.message);
        assert_eq!(d.grant.as_deref(), Some("session:JTI=t-1"), "the record names the token");
        // Reads too, through the authorizer.
        let read = crate::testing::read(Verb::Get, "secrets").namespace("prod").name("db").signed_in(
            "2",
            &["pwd", "otp"],
            w.now,
        );
        assert_eq!(w.decide(&read).outcome, Outcome::Granted);
    }

    #[test]
    fn a_sign_in_that_is_too_old_weak_or_without_the_method_is_refused_with_why() {
        let w = session_world();
        let cases = [
            (
                delete_secret().signed_in("2", &["pwd", "otp"], w.now - minutes(16)),
                "Your sign-in at the identity provider does not count: it was issued 16m ago and the policy accepts at most 15m.",
            ),
            (
                delete_secret().signed_in("1", &["pwd"], w.now),
                "Your sign-in at the identity provider does not count: the sign-in's assurance level (acr) is \"1\" and the policy accepts \"2\".",
            ),
            (
                delete_secret().signed_in("2", &["pwd"], w.now),
                "Your sign-in at the identity provider does not count: the sign-in used pwd and the policy requires \"otp\".",
            ),
            (delete_secret(), "You hold no grant, and this request carries no sign-in from the identity provider."),
        ];
        for (req, why) in cases {
            let d = w.decide(&req);
            assert_eq!(d.outcome, Outcome::Denied);
            assert!(
                d.message.contains(
                    "requires step-up (policy \"prod-secrets-sso\"): a TOTP grant issued within the last 15m, or a sign-in at your identity provider (acr \"2\", with otp) within the last 15m."
                ),
                "{}",
                d.message
            );
            assert!(d.message.contains(why), "{why}\n{}", d.message);
            assert!(
                d.message.contains(
                    "Run `kubectl stepup request` and retry, or prefix your command with `kubectl stepup --`, or sign in again at your identity provider."
                ),
                "{}",
                d.message
            );
            assert!(
                d.message.ends_with(
                    "[stepup-required: policies=prod-secrets-sso methods=TOTP,Session max-age=15m reason-required=false acr-values=2 amr=otp]"
                ),
                "{}",
                d.message
            );
            let requirement: Requirement =
                d.message.rsplit_once("[stepup-required: ").unwrap().1.trim_end_matches(']').parse().unwrap();
            assert_eq!((requirement.acr_values, requirement.amr), (vec!["2".to_owned()], vec!["otp".to_owned()]));
        }
        // A sign-in from the future by more than the skew is no fresher sign-in.
        let d = w.decide(&delete_secret().signed_in("2", &["pwd", "otp"], w.now + minutes(5)));
        assert_eq!(d.outcome, Outcome::Denied, "{}", d.message);
    }

    #[test]
    fn only_a_sign_in_helps_where_a_policy_accepts_nothing_else() {
        let w = session_world();
        let exec = request(Connect, "pods/exec").namespace("prod").name("web");
        let d = w.decide(&exec.clone().signed_in("1", &["pwd"], w.now - minutes(6)));
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(d.message.contains("a sign-in at your identity provider within the last 5m."), "{}", d.message);
        assert!(d.message.contains("Sign in again at your identity provider"), "{}", d.message);
        assert!(!d.message.contains("kubectl stepup request"), "a TOTP grant would not help: {}", d.message);
        // Without assurance, any sign-in within maxAge does; a TOTP grant does not.
        assert_eq!(w.decide(&exec.clone().signed_in("1", &["pwd"], w.now - minutes(4))).outcome, Outcome::Granted);
        let with_grant =
            World { grants: GrantIndex::new(vec![grant("g1", "alice").issued(w.now).record()]), ..session_world() };
        assert_eq!(with_grant.decide(&exec).outcome, Outcome::Denied);
    }

    #[test]
    fn a_sign_in_counts_only_where_a_policy_accepts_it_and_only_for_a_person() {
        let w = session_world();
        // A TOTP-only policy: the sign-in is no grant.
        let configmap = request(Delete, "configmaps").namespace("prod").name("c").signed_in("2", &["otp"], w.now);
        assert_eq!(w.decide(&configmap).outcome, Outcome::Denied);
        // A service account's name without its pod: a mask; whatever extras it carries are
        // whoever wears it.
        let masked = delete_secret().by("system:serviceaccount:prod:deployer", &["system:serviceaccounts"]).signed_in(
            "2",
            &["pwd", "otp"],
            w.now,
        );
        let policies = PolicyIndex::new(
            [policy("all-sa")
                .rule(&[Delete], "", &["secrets"])
                .subjects(&[], &[], &[("prod", "deployer")])
                .methods(&[Method::Session])
                .compiled()]
            .into_iter()
            .map(Arc::new),
        );
        let d = World { policies, ..session_world() }.decide(&masked);
        assert_eq!(d.outcome, Outcome::Denied, "{}", d.message);
    }

    #[test]
    fn nobody_impersonates_a_sign_in_into_a_request() {
        let w = session_world();
        for who in [("admin", vec!["system:authenticated"]), ("carol", vec!["stepup:break-glass"])] {
            for key in crate::policy::SignInKeys::default().forgeable() {
                let forged = crate::testing::read(Verb::Impersonate, &format!("userextras/{key}"))
                    .group("authentication.k8s.io", "v1")
                    .name("2")
                    .by(who.0, &who.1);
                let d = w.decide(&forged);
                assert_eq!(d.outcome, Outcome::BuiltinDenied, "{key} by {}", who.0);
                assert!(d.message.contains("is refused to everyone"), "{}", d.message);
            }
        }
        // Other extras are RBAC's business, as before.
        let scopes = crate::testing::read(Verb::Impersonate, "userextras/scopes").group("authentication.k8s.io", "v1");
        assert!(w.decide(&scopes).allowed);
    }

    #[test]
    fn the_configured_sign_in_keys_are_the_ones_nobody_impersonates() {
        let keys =
            crate::policy::SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/at").unwrap();
        let mut w = session_world();
        w.config.sign_in_keys = keys.clone();
        let impersonating = |key: &str| {
            crate::testing::read(Verb::Impersonate, &format!("userextras/{key}"))
                .group("authentication.k8s.io", "v1")
                .name("2")
                .by("admin", &["system:authenticated"])
        };
        for key in keys.forgeable() {
            let d = w.decide(&impersonating(key));
            assert_eq!(d.outcome, Outcome::BuiltinDenied, "{key}");
        }
        // The defaults carry nothing the webhook reads once other keys are configured.
        assert!(w.decide(&impersonating(crate::policy::ACR_EXTRA)).allowed);
    }

    #[test]
    fn validation_names_assurance_without_session() {
        let err =
            CompiledPolicy::compile(&policy("p").rule(&[Delete], "", &["secrets"]).assurance(&["2"], &[]).build())
                .unwrap_err();
        assert_eq!(err.field, "spec.assurance");
        assert!(err.message.contains("add Session or OIDC to spec.methods"), "{}", err.message);
        let err = CompiledPolicy::compile(
            &policy("p")
                .rule(&[Delete], "", &["secrets"])
                .methods(&[Method::Session])
                .assurance(&["2"], &["o t p"])
                .build(),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.assurance.amr[0]");
    }
}

mod oidc {
    use super::*;
    use crate::api::Method;

    fn oidc_world(grants: Vec<crate::grant::GrantRecord>) -> World {
        let policies = PolicyIndex::new(
            [policy("prod-secrets-oidc")
                .rule(&[Delete], "", &["secrets"])
                .namespaces(&["prod"])
                .methods(&[Method::Oidc])
                .assurance(&["2"], &["otp"])
                .compiled()]
            .into_iter()
            .map(Arc::new),
        );
        World { policies, ..world(grants) }
    }

    fn delete_secret() -> RequestBuilder {
        request(Delete, "secrets").namespace("prod").name("db")
    }

    /// The denial of an OIDC-only policy names the sign-in it needs and the command that gets
    /// it; the trailer carries the assurance in RFC 9470's words.
    #[test]
    fn an_oidc_only_policy_says_which_sign_in_and_which_command() {
        let d = oidc_world(vec![]).decide(&delete_secret());
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(
            d.message.contains(
                "an OIDC grant for a sign-in at your identity provider (acr \"2\", with otp) within the last 15m. You hold no grant."
            ),
            "{}",
            d.message
        );
        assert!(d.message.contains("Run `kubectl stepup request --method OIDC` and retry"), "{}", d.message);
        assert!(d.message.contains("[stepup-required: policies=prod-secrets-oidc methods=OIDC max-age=15m reason-required=false acr-values=2 amr=otp]"), "{}", d.message);
    }

    #[test]
    fn an_oidc_grant_is_judged_by_the_assurance_it_records() {
        let strong = grant("g-strong", "alice").issued(t0() + minutes(1)).oidc("2", &["pwd", "otp"]).record();
        assert_eq!(oidc_world(vec![strong]).decide(&delete_secret()).outcome, Outcome::Granted);
        let weak = grant("g-weak", "alice").issued(t0() + minutes(1)).oidc("1", &["pwd"]).record();
        let d = oidc_world(vec![weak]).decide(&delete_secret());
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(
            d.message.contains("Your latest grant g-weak does not count: the sign-in's assurance level (acr) is \"1\" and the policy accepts \"2\"."),
            "{}",
            d.message
        );
        // A TOTP grant does not pass for an OIDC one.
        let totp = grant("g-totp", "alice").issued(t0() + minutes(1)).record();
        assert_eq!(oidc_world(vec![totp]).decide(&delete_secret()).outcome, Outcome::Denied);
    }
}

mod security_keys {
    use super::*;
    use crate::api::Method;

    fn keys_world(grants: Vec<crate::grant::GrantRecord>) -> World {
        let policies = PolicyIndex::new(
            [policy("prod-secrets-keys")
                .rule(&[Delete], "", &["secrets"])
                .namespaces(&["prod"])
                .methods(&[Method::WebAuthn])
                .compiled()]
            .into_iter()
            .map(Arc::new),
        );
        World { policies, ..world(grants) }
    }

    fn delete_secret() -> RequestBuilder {
        request(Delete, "secrets").namespace("prod").name("db")
    }

    /// A policy that accepts only security keys says so, and the command asks for one.
    #[test]
    fn a_security_key_policy_asks_for_a_security_key() {
        let d = keys_world(vec![]).decide(&delete_secret());
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(d.message.contains("a security-key (WebAuthn) grant issued within the last 15m"), "{}", d.message);
        assert!(d.message.contains("Run `kubectl stepup request --method WebAuthn` and retry"), "{}", d.message);
        assert!(d.message.contains("methods=WebAuthn"), "{}", d.message);
    }

    /// A policy that demands user verification takes only a key's grant that verified the
    /// person, and says so; it cannot be written for a policy that accepts no key.
    #[test]
    fn user_verification_is_required_where_the_policy_says_so() {
        let policies = PolicyIndex::new(
            [policy("prod-secrets-keys-uv")
                .rule(&[Delete], "", &["secrets"])
                .namespaces(&["prod"])
                .methods(&[Method::WebAuthn])
                .require_user_verification()
                .compiled()]
            .into_iter()
            .map(Arc::new),
        );
        let touch = grant("g-touch", "alice").issued(t0() + minutes(1)).security_key("00ff", false).record();
        let d = World { policies: policies.clone(), ..world(vec![touch]) }.decide(&delete_secret());
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(
            d.message.contains("a security-key (WebAuthn) grant that verified you (PIN or biometric)"),
            "{}",
            d.message
        );
        assert!(d.message.contains("did not verify you"), "{}", d.message);
        assert!(d.message.contains("user-verification=required"), "{}", d.message);
        let pin = grant("g-pin", "alice").issued(t0() + minutes(1)).security_key("00ff", true).record();
        assert_eq!(World { policies, ..world(vec![pin]) }.decide(&delete_secret()).outcome, Outcome::Granted);

        let err =
            CompiledPolicy::compile(&policy("p").rule(&[Delete], "", &["secrets"]).require_user_verification().build())
                .unwrap_err();
        assert_eq!(err.field, "spec.requireUserVerification");
        // A TOTP grant carrying the flag cannot pass for a verified key either: only keys verify.
        let mut forged = grant("g-totp", "alice").issued(t0() + minutes(1)).build();
        forged.spec.user_verified = true;
        assert!(!crate::grant::GrantRecord::from_grant(&forged).unwrap().user_verified);
    }

    #[test]
    fn only_a_security_key_grant_satisfies_it() {
        let totp = grant("g-totp", "alice").issued(t0() + minutes(1)).record();
        assert_eq!(keys_world(vec![totp]).decide(&delete_secret()).outcome, Outcome::Denied);
        let key = grant("g-key", "alice").issued(t0() + minutes(1)).security_key("00ff", false).record();
        assert_eq!(keys_world(vec![key]).decide(&delete_secret()).outcome, Outcome::Granted);
    }
}
