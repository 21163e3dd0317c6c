//! The challenge decision as a table of situations, each named after what must (not) happen.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zeroize::Zeroizing;

use super::*;
use crate::{
    api::{GrantScope, StepUpChallengeSpec, StepUpChallengeStatus},
    controller::factor::Factor,
    testing::{minutes, t0},
    verify::totp::{TotpVerifier, code_at},
};

const SEED: [u8; 20] = [4; 20];

struct Case {
    challenge: StepUpChallenge,
    response: Opened<()>,
    load: Load,
    factor: Option<FactorRead>,
    grant_exists: Option<bool>,
    sign_in: Option<Result<SignIn, Refusal>>,
    oidc_policies: Vec<CompiledPolicy>,
    now: Timestamp,
}

fn case() -> Case {
    let mut c = StepUpChallenge::new(
        "alice-k3x9q2",
        StepUpChallengeSpec {
            user: "alice".into(),
            uid: Some("uid-alice-1".into()),
            method: Method::Totp,
            response: Some("sealed".into()),
            reason: None,
            duration: None,
            scope: GrantScope::default(),
            deadline: Some(Time(t0() + SignedDuration::from_secs(30))),
            correlation: None,
        },
    );
    c.metadata.uid = Some("c-uid-1".into());
    c.metadata.creation_timestamp = Some(Time(t0()));
    c.metadata.finalizers = Some(vec![api::WITHDRAWAL_FINALIZER.into()]);
    Case {
        challenge: c,
        response: Opened::Code(Zeroizing::new(code_at(&SEED, t0())), ()),
        load: Load::default(),
        factor: None,
        grant_exists: None,
        sign_in: None,
        oidc_policies: Vec::new(),
        now: t0() + SignedDuration::from_secs(1),
    }
}

/// An OIDC challenge with a (sealed) ID token in it.
fn oidc_case() -> Case {
    let mut c = case();
    c.challenge.spec.method = Method::Oidc;
    c.response = Opened::Code(Zeroizing::new("header.claims.signature".into()), ());
    c
}

fn signed_in() -> SignIn {
    SignIn {
        issuer: "https://idp.example".into(),
        username: "alice".into(),
        uid: Some("uid-alice-1".into()),
        acr: Some("2".into()),
        amr: vec!["pwd".into(), "otp".into()],
        auth_time: t0() - SignedDuration::from_secs(20),
        expires_at: t0() + minutes(5),
        id: "jti-1".into(),
    }
}

fn enrolled() -> FactorRead {
    FactorRead::Found(Factor {
        seed: Some(Zeroizing::new(SEED.to_vec())),
        seed_key: Some("k".into()),
        ..Default::default()
    })
}

impl Case {
    fn with_factor(mut self, f: FactorRead) -> Self {
        self.factor = Some(f);
        self
    }

    fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }

    fn step(&self) -> Step {
        let settings = ChallengeSettings {
            timeout: minutes(2),
            ttl: minutes(30),
            max_clock_skew: SignedDuration::from_secs(10),
            limits: Limits { max_failures: 3, window: minutes(5), lockout_after: 5 },
            load_limits: ChallengeLimits { max_pending: 3, max_per_window: 10, window: minutes(1) },
            verifier: &TotpVerifier,
        };
        next_step(
            &Facts {
                challenge: &self.challenge,
                response: &self.response,
                load: self.load,
                factor: self.factor.as_ref(),
                grant_exists: self.grant_exists,
                sign_in: self.sign_in.as_ref(),
                oidc_policies: &self.oidc_policies,
                now: self.now,
            },
            &settings,
        )
    }
}

fn verdict(step: Step) -> Verdicts {
    match step {
        Step::Verdict(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

#[test]
fn a_right_code_before_the_deadline_earns_a_grant_and_spends_the_step() {
    let c = case();
    assert_eq!(c.step(), Step::Fetch(Need::Factor), "the factor is read only when everything else allows it");
    let v = verdict(c.with_factor(enrolled()).step());
    assert_eq!((v.phase, v.issue), (ChallengePhase::Verified, true));
    assert!(v.state.as_ref().is_some_and(|s| s.last_step.is_some() && s.last_used_by.as_deref() == Some("c-uid-1")));
    assert_eq!(v.issue_before, t0() + SignedDuration::from_secs(30));
}

#[test]
fn nothing_is_issued_once_the_plugin_could_have_given_up() {
    // Attack: "a failed request still grants". The plugin stopped at its deadline; a controller
    // that comes back later (or a clock 10 s ahead) must not issue.
    for now in [t0() + SignedDuration::from_secs(20), t0() + SignedDuration::from_secs(25), t0() + minutes(60)] {
        let v = verdict(case().with_factor(enrolled()).at(now).step());
        assert_eq!((v.phase, v.issue, v.state.is_none()), (ChallengePhase::Expired, false, true), "at {now}");
    }
    assert!(may_issue(
        t0() + SignedDuration::from_secs(30),
        SignedDuration::from_secs(10),
        t0() + SignedDuration::from_secs(19)
    ));
    assert!(!may_issue(
        t0() + SignedDuration::from_secs(30),
        SignedDuration::from_secs(10),
        t0() + SignedDuration::from_secs(20)
    ));
}

#[test]
fn a_deadline_beyond_the_controllers_timeout_is_cut_to_it() {
    let mut c = case();
    c.challenge.spec.deadline = Some(Time(t0() + SignedDuration::from_hours(10)));
    let v = verdict(c.with_factor(enrolled()).at(t0() + minutes(2)).step());
    assert_eq!(v.phase, ChallengePhase::Expired);
    let mut c = case();
    c.challenge.spec.deadline = None;
    assert_eq!(deadline(&c.challenge, minutes(2), t0()), t0() + minutes(2), "no deadline: the timeout");
}

#[test]
fn a_withdrawn_challenge_never_becomes_a_grant() {
    let mut c = case();
    c.challenge.metadata.deletion_timestamp = Some(Time(t0()));
    assert_eq!(c.step(), Step::Fetch(Need::Grant));
    c.grant_exists = Some(true);
    match c.step() {
        Step::Withdrawn { revoke: true, record: Some(r) } => assert_eq!(r.reason, "ChallengeWithdrawn"),
        other => panic!("{other:?}"),
    }
    c.grant_exists = Some(false);
    assert!(matches!(c.step(), Step::Withdrawn { revoke: false, record: Some(_) }));
    // A verdict written before the deletion stands (it was written only onto the unchanged object).
    c.challenge.status = Some(StepUpChallengeStatus { phase: Some(ChallengePhase::Verified), ..Default::default() });
    assert_eq!(c.step(), Step::Withdrawn { revoke: false, record: None });
    c.challenge.metadata.finalizers = None;
    assert_eq!(c.step(), Step::Idle);
}

#[test]
fn a_challenge_is_claimed_before_anything_else() {
    let mut c = case();
    c.challenge.metadata.finalizers = None;
    assert_eq!(c.with_factor(enrolled()).step(), Step::Claim);
}

#[test]
fn a_user_over_the_limits_is_refused_before_anything_is_looked_up() {
    // Attack: unlimited challenges queue everyone else's step-ups.
    for (load, reason) in [
        (Load { pending: 3, recent: 3, frees_at: None }, "TooManyPending"),
        (Load { pending: 0, recent: 10, frees_at: Some(t0() + SignedDuration::from_secs(40)) }, "CreationRateLimited"),
    ] {
        let c = Case { load, ..case() };
        let v = verdict(c.step());
        assert_eq!((v.phase, v.reason, v.state.is_none()), (ChallengePhase::Denied, reason, true));
    }
}

#[test]
fn only_a_code_sealed_for_this_very_challenge_counts() {
    for (opened, reason) in [
        (Opened::Plain, "PlainCode"),
        (Opened::Mismatch, "BindingMismatch"),
        (Opened::Unreadable(crate::keys::KeyError::CannotOpen), "Unsealed"),
        (Opened::Missing, "NoCode"),
    ] {
        let c = Case { response: opened, ..case() }.with_factor(enrolled());
        let v = verdict(c.step());
        assert_eq!((v.phase, v.reason, v.state.is_none()), (ChallengePhase::Denied, reason, true), "{reason}");
        if reason == "PlainCode" {
            assert!(v.message.contains("update kubectl-stepup"), "{}", v.message);
        }
    }
}

#[test]
fn wrong_codes_are_counted_and_lock_at_the_threshold() {
    let c = Case { response: Opened::Code(Zeroizing::new("000000".into()), ()), ..case() };
    let v = verdict(c.with_factor(enrolled()).step());
    assert_eq!((v.phase, v.reason), (ChallengePhase::Denied, "WrongCode"));
    assert_eq!(v.state.as_ref().map(|s| s.consecutive_failures), Some(1));

    let mut near = Factor { seed: Some(Zeroizing::new(SEED.to_vec())), ..Default::default() };
    near.state.consecutive_failures = 4;
    let c = Case { response: Opened::Code(Zeroizing::new("000000".into()), ()), ..case() };
    let v = verdict(c.with_factor(FactorRead::Found(near)).step());
    assert!(v.message.contains("kubectl stepup unlock alice"), "{}", v.message);
    assert_eq!(v.records.iter().map(|r| r.reason).collect::<Vec<_>>(), ["UserLocked"]);
}

#[test]
fn a_corrupt_or_missing_factor_checks_no_code() {
    let v = verdict(case().with_factor(FactorRead::Corrupt("edited".into())).step());
    assert_eq!((v.reason, v.state.is_none()), ("FactorCorrupt", true));
    assert_eq!(v.records[0].reason, "FactorCorrupt");
    let v = verdict(case().with_factor(FactorRead::Missing).step());
    assert_eq!(v.reason, "NotEnrolled");
    let unconfirmed = FactorRead::Found(Factor::default());
    assert_eq!(verdict(case().with_factor(unconfirmed).step()).reason, "NotEnrolled");
}

#[test]
fn finished_challenges_are_scrubbed_and_removed_after_their_ttl() {
    let mut c = case();
    c.challenge.status = Some(StepUpChallengeStatus { phase: Some(ChallengePhase::Denied), ..Default::default() });
    assert_eq!(c.step(), Step::Retire { scrub: true, delete_at: t0() + minutes(30) });
}

#[test]
fn a_verified_id_token_earns_a_grant_recording_the_sign_in() {
    let c = oidc_case();
    assert_eq!(c.step(), Step::Fetch(Need::SignIn), "no factor is read for an identity-provider sign-in");
    let v = verdict(Case { sign_in: Some(Ok(signed_in())), ..oidc_case() }.step());
    assert_eq!((v.phase, v.issue, v.state), (ChallengePhase::Verified, true, None));
    assert_eq!(
        v.sign_in,
        Some(Box::new(signed_in())),
        "the grant records acr, amr and auth_time; the token is spent first"
    );
}

#[test]
fn a_refused_id_token_is_said_as_the_verifier_says_it_and_issues_nothing() {
    use crate::verify::oidc::TokenError;
    for refusal in [
        Refusal::Token(TokenError::Nonce),
        Refusal::Token(TokenError::OtherUser { got: "bob".into(), want: "alice".into() }),
        Refusal::Unavailable("connection refused".into()),
        Refusal::NotConfigured,
    ] {
        let v = verdict(Case { sign_in: Some(Err(refusal.clone())), ..oidc_case() }.step());
        assert_eq!((v.phase, v.issue, v.sign_in), (ChallengePhase::Denied, false, None), "{refusal}");
        assert_eq!((v.reason, v.message.as_str()), (refusal.reason(), refusal.to_string().as_str()));
    }
}

/// Attack: an OIDC challenge without a deadline could be re-created (same name, same token)
/// whenever the spent-token record is forgotten. It is refused before the token is looked at.
#[test]
fn an_oidc_challenge_without_a_deadline_is_refused_before_its_token_is_verified() {
    let mut c = Case { sign_in: Some(Ok(signed_in())), ..oidc_case() };
    c.challenge.spec.deadline = None;
    let v = verdict(c.step());
    assert_eq!((v.phase, v.reason, v.issue), (ChallengePhase::Denied, "NoDeadline", false));
}

#[test]
fn an_id_token_after_the_deadline_or_over_the_limits_is_never_verified() {
    let late = oidc_case().at(t0() + SignedDuration::from_secs(25));
    assert_eq!(verdict(late.step()).phase, ChallengePhase::Expired);
    let missing = Case { response: Opened::Missing, ..oidc_case() };
    assert_eq!(verdict(missing.step()).reason, "NoCode");
}

/// A sign-in that no policy it is for would accept is refused with what the policy asks,
/// instead of becoming a grant that lets nothing through; one policy accepting it is enough.
#[test]
fn a_sign_in_no_policy_accepts_is_refused_with_what_the_policy_asks() {
    use crate::testing::policy;
    let otp = || {
        policy("prod-secrets-oidc")
            .rule(&[api::Operation::Delete], "", &["secrets"])
            .methods(&[Method::Oidc])
            .assurance(&["2"], &["otp"])
            .max_age("15m")
            .compiled()
    };
    let weak = SignIn { acr: Some("1".into()), amr: vec!["pwd".into()], ..signed_in() };
    let refused = verdict(Case { sign_in: Some(Ok(weak.clone())), oidc_policies: vec![otp()], ..oidc_case() }.step());
    assert_eq!((refused.phase, refused.reason, refused.issue), (ChallengePhase::Denied, "AssuranceNotMet", false));
    assert_eq!(
        refused.message,
        "the sign-in does not satisfy policy \"prod-secrets-oidc\": the sign-in's assurance level (acr) is \"1\" and the policy accepts \"2\"; sign in again as the policy asks"
    );
    let old = SignIn { auth_time: t0() - minutes(20), ..signed_in() };
    let refused = verdict(Case { sign_in: Some(Ok(old)), oidc_policies: vec![otp()], ..oidc_case() }.step());
    assert!(
        refused.message.contains("you signed in 20m1s ago and the policy accepts at most 15m"),
        "{}",
        refused.message
    );
    let lenient =
        policy("staging").rule(&[api::Operation::Delete], "", &["secrets"]).methods(&[Method::Oidc]).compiled();
    let either = verdict(Case { sign_in: Some(Ok(weak)), oidc_policies: vec![otp(), lenient], ..oidc_case() }.step());
    assert_eq!((either.phase, either.issue), (ChallengePhase::Verified, true));
}
