use super::*;
use crate::api::Operation::Delete;
use crate::testing::{grant, minutes, policy, request, t0};

fn prod_secrets() -> CompiledPolicy {
    policy("prod-secrets").rule(&[Delete], "", &["secrets"]).max_age("15m").compiled()
}

#[test]
fn a_grant_satisfies_a_policy_only_when_every_condition_holds() {
    let p = prod_secrets();
    let reasoned = policy("reasoned").rule(&[Delete], "", &["secrets"]).require_reason().compiled();
    let req = request(Delete, "secrets").namespace("prod").name("db");
    let with_uid = request(Delete, "secrets").namespace("prod").name("db").uid("uid-alice-1");
    let now = t0() + minutes(5);
    type Case<'a> =
        (&'a str, GrantRecord, &'a CompiledPolicy, &'a crate::testing::RequestBuilder, Result<(), Unsatisfied>);
    let cases: Vec<Case> = vec![
        ("fresh grant", grant("g", "alice").record(), &p, &req, Ok(())),
        ("issued exactly maxAge ago", grant("g", "alice").issued(now - minutes(15)).record(), &p, &req, Ok(())),
        (
            "issued longer ago than maxAge",
            grant("g", "alice").issued(now - minutes(16)).record(),
            &p,
            &req,
            Err(Unsatisfied::TooOld { age: minutes(16), max_age: minutes(15) }),
        ),
        ("expired", grant("g", "alice").expires(now).record(), &p, &req, Err(Unsatisfied::Expired)),
        ("revoked", grant("g", "alice").revoked().record(), &p, &req, Err(Unsatisfied::Revoked)),
        ("other user", grant("g", "bob").record(), &p, &req, Err(Unsatisfied::OtherAccount)),
        ("uid must match", grant("g", "alice").uid("uid-alice-1").record(), &p, &with_uid, Ok(())),
        (
            "re-created account (other uid)",
            grant("g", "alice").uid("uid-alice-0").record(),
            &p,
            &with_uid,
            Err(Unsatisfied::OtherAccount),
        ),
        (
            "grant with uid, request without",
            grant("g", "alice").uid("uid-alice-1").record(),
            &p,
            &req,
            Err(Unsatisfied::OtherAccount),
        ),
        ("scoped to this policy", grant("g", "alice").scope_policies(&["prod-secrets"]).record(), &p, &req, Ok(())),
        (
            "scoped to another policy",
            grant("g", "alice").scope_policies(&["rbac"]).record(),
            &p,
            &req,
            Err(Unsatisfied::PolicyOutOfScope),
        ),
        ("scoped to this namespace", grant("g", "alice").scope_namespaces(&["prod"]).record(), &p, &req, Ok(())),
        (
            "scoped to another namespace",
            grant("g", "alice").scope_namespaces(&["dev"]).record(),
            &p,
            &req,
            Err(Unsatisfied::NamespaceOutOfScope),
        ),
        (
            "reason required and missing",
            grant("g", "alice").record(),
            &reasoned,
            &req,
            Err(Unsatisfied::ReasonRequired),
        ),
        ("reason required and given", grant("g", "alice").reason("INC-42").record(), &reasoned, &req, Ok(())),
    ];
    for (name, g, p, req, expected) in cases {
        assert_eq!(check(&g, p, &req.view(), Clock::at(now)), expected, "{name}");
    }
}

#[test]
fn a_grant_issued_in_the_future_beyond_the_clock_skew_is_refused() {
    let p = prod_secrets();
    let req = request(Delete, "secrets").namespace("prod").name("db");
    let clock = Clock { now: t0(), max_skew: SignedDuration::from_secs(10) };
    let at = |offset: i64| grant("g", "alice").issued(t0() + SignedDuration::from_secs(offset)).record();
    let cases = [
        ("within the skew", at(10), Ok(())),
        ("just past now", at(1), Ok(())),
        (
            "beyond the skew",
            at(11),
            Err(Unsatisfied::IssuedInFuture {
                ahead: SignedDuration::from_secs(11),
                max_skew: SignedDuration::from_secs(10),
            }),
        ),
        (
            // Without the bound, this one would satisfy maxAge for five hours.
            "hours ahead",
            grant("g", "alice").issued(t0() + minutes(300)).expires(t0() + minutes(600)).record(),
            Err(Unsatisfied::IssuedInFuture { ahead: minutes(300), max_skew: SignedDuration::from_secs(10) }),
        ),
    ];
    for (name, g, expected) in cases {
        assert_eq!(check(&g, &p, &req.view(), clock), expected, "{name}");
    }
    let why = check(&at(3600), &p, &req.view(), clock).unwrap_err();
    assert_eq!(why.to_string(), "its issuedAt lies 1h in the future, beyond the 10s clock skew allowed");
}

#[test]
fn namespace_scoped_grants_never_satisfy_cluster_scoped_requests() {
    let p = policy("rbac").rule(&[Delete], "rbac.authorization.k8s.io", &["clusterroles"]).compiled();
    let req = request(Delete, "clusterroles").group("rbac.authorization.k8s.io", "v1").name("admin");
    let g = grant("g", "alice").scope_namespaces(&["prod"]).record();
    assert_eq!(check(&g, &p, &req.view(), Clock::at(t0())), Err(Unsatisfied::NamespaceOutOfScope));
}

#[test]
fn satisfying_picks_the_newest_grant_that_satisfies_every_policy() {
    let a = prod_secrets();
    let b = policy("exec").rule(&[Delete], "", &["secrets"]).max_age("5m").compiled();
    let now = Clock::at(t0() + minutes(10));
    let grants = [
        grant("old", "alice").issued(t0()).record(),
        grant("scoped", "alice").issued(t0() + minutes(8)).scope_policies(&["prod-secrets"]).record(),
        grant("new", "alice").issued(t0() + minutes(7)).record(),
    ];
    let req = request(Delete, "secrets").namespace("prod");
    let got = satisfying(grants.iter(), &[&a, &b], &req.view(), now).map(|g| g.name.as_str());
    assert_eq!(got, Some("new"));
    let got = satisfying(grants.iter(), &[&a], &req.view(), now).map(|g| g.name.as_str());
    assert_eq!(got, Some("scoped"));
    assert!(satisfying(grants[..1].iter(), &[&b], &req.view(), now).is_none());
}

#[test]
fn explain_reports_why_the_newest_grant_does_not_count() {
    let p = prod_secrets();
    let grants = [grant("g1", "alice").issued(t0()).record()];
    let req = request(Delete, "secrets").namespace("prod");
    let (g, why) = explain(grants.iter(), &[&p], &req.view(), Clock::at(t0() + minutes(40))).unwrap();
    assert_eq!(g.name, "g1");
    assert_eq!(why.to_string(), "it was issued 40m ago and the policy accepts at most 15m");
}

#[test]
fn index_tracks_upserts_and_removals_per_user() {
    let mut idx = GrantIndex::new([grant("a1", "alice").record(), grant("b1", "bob").record()]);
    assert_eq!(idx.len(), 2);
    idx.upsert(grant("a2", "alice").record());
    idx.upsert(grant("a1", "alice").revoked().record());
    assert_eq!(idx.len(), 3);
    assert_eq!(idx.for_user("alice").count(), 2);
    assert!(idx.for_user("alice").any(|g| g.name == "a1" && g.revoked));
    assert!(idx.remove("b1").is_some());
    assert!(idx.remove("b1").is_none());
    assert_eq!(idx.for_user("bob").count(), 0);
    assert_eq!(idx.active(t0()), 1);
}

#[test]
fn a_grant_moved_to_another_user_leaves_no_trace_under_the_first() {
    let mut idx = GrantIndex::new([grant("g", "alice").record()]);
    idx.upsert(grant("g", "bob").record());
    assert_eq!(idx.for_user("alice").count(), 0);
    assert_eq!(idx.for_user("bob").count(), 1);
}

/// Attack: a StepUpGrant whose method says `Session` (written by anyone who gets past the
/// schema, which lists only TOTP for grants) would pass for an identity-provider sign-in with
/// no acr or amr to judge. It is no grant at all.
#[test]
fn a_grant_object_of_method_session_is_no_grant() {
    let mut forged = grant("g-session", "alice").build();
    forged.spec.method = Method::Session;
    assert_eq!(GrantRecord::from_grant(&forged), None);
    let mut real = forged.clone();
    real.spec.method = Method::Totp;
    assert!(GrantRecord::from_grant(&real).is_some());
}

/// An OIDC grant is judged by the policy's assurance as the sign-in it records; a TOTP grant
/// is not (it has no acr), and an assurance on a grant object of method TOTP counts for nothing.
#[test]
fn an_oidc_grant_carries_its_sign_in_to_the_policy_assurance() {
    let sso = policy("sso")
        .rule(&[Delete], "", &["secrets"])
        .methods(&[Method::Oidc, Method::Totp])
        .assurance(&["2"], &["otp"])
        .compiled();
    let req = request(Delete, "secrets").namespace("prod");
    let clock = Clock::at(t0() + minutes(1));
    assert_eq!(check(&grant("g", "alice").oidc("2", &["pwd", "otp"]).record(), &sso, &req.view(), clock), Ok(()));
    assert_eq!(
        check(&grant("g", "alice").oidc("1", &["pwd"]).record(), &sso, &req.view(), clock),
        Err(Unsatisfied::AcrNotAccepted { acr: "1".into(), accepted: vec!["2".into()] })
    );
    assert_eq!(
        check(&grant("g", "alice").oidc("2", &["pwd"]).record(), &sso, &req.view(), clock),
        Err(Unsatisfied::AmrMissing { amr: vec!["pwd".into()], missing: "otp".into() })
    );
    assert_eq!(check(&grant("g", "alice").record(), &sso, &req.view(), clock), Ok(()), "TOTP is not judged by acr");
    let mut dressed = grant("g", "alice").build();
    dressed.spec.acr = Some("2".into());
    dressed.spec.amr = vec!["otp".into()];
    let record = GrantRecord::from_grant(&dressed).unwrap();
    assert_eq!((record.acr, record.amr.len()), (None, 0), "a TOTP grant's acr is not a sign-in");
    let totp_only = policy("totp").rule(&[Delete], "", &["secrets"]).compiled();
    assert_eq!(
        check(&grant("g", "alice").oidc("2", &["otp"]).record(), &totp_only, &req.view(), clock),
        Err(Unsatisfied::MethodNotAccepted(Method::Oidc))
    );
}
