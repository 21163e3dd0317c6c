//! The challenge decision as a table of situations, each named after what must (not) happen.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use zeroize::Zeroizing;

use super::*;
use crate::controller::factor::Factor;
use stepup_core::{
    api::{GrantScope, StepUpChallengeSpec, StepUpChallengeStatus},
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
    fresh_ceremony: Option<(String, PendingAuthentication)>,
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
        fresh_ceremony: None,
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
            relying_party: &rp(),
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
                fresh_ceremony: self.fresh_ceremony.as_ref(),
                now: self.now,
            },
            &settings,
        )
    }
}

/// The relying party of the plugin's loopback page.
fn rp() -> RelyingParty {
    RelyingParty::new("localhost", &[url::Url::parse("http://localhost").unwrap()]).unwrap()
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
        (Opened::Unreadable(stepup_core::keys::KeyError::CannotOpen), "Unsealed"),
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
    use stepup_core::verify::oidc::TokenError;
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
    use stepup_core::testing::policy;
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

/// `WebAuthn` challenges, answered by webauthn-authenticator-rs's software authenticator.
mod security_keys {
    use webauthn_authenticator_rs::{WebauthnAuthenticator, softpasskey::SoftPasskey};
    use webauthn_rs_core::proto::{CreationChallengeResponse, RequestChallengeResponse};

    use super::*;
    use crate::controller::{
        factor::{Allowance, RegisteredKey},
        webauthn::CEREMONY_TTL,
    };

    const PAGE: &str = "http://localhost:40123";

    /// Alice with `authenticator` registered.
    fn with_key(authenticator: &mut SoftPasskey) -> Factor {
        let rp = rp();
        let (options, pending) = rp.start_registration("alice", b"alice", &[], t0()).unwrap();
        let options: CreationChallengeResponse = serde_json::from_str(&options).unwrap();
        let answer = authenticator.do_registration(url::Url::parse(PAGE).unwrap(), options).unwrap();
        let answer = serde_json::to_string(&answer).unwrap();
        let credential = rp.finish_registration(&pending, "alice", &answer, &[], t0(), CEREMONY_TTL).unwrap();
        let mut f = Factor::default();
        f.webauthn.keys.push(RegisteredKey {
            id_hash: credential.id_hash(),
            registered_at: t0(),
            allowed: Allowance::SelfService,
            key: "k".into(),
            user_verified: false,
            credential: credential.to_json(),
        });
        f
    }

    fn key_case(uid: &str) -> Case {
        let mut c = case();
        c.challenge.spec.method = Method::WebAuthn;
        c.challenge.spec.response = None;
        c.challenge.metadata.uid = Some(uid.into());
        c.response = Opened::Missing;
        c
    }

    /// Offers a ceremony to challenge `uid`: the factor with it kept, and its options.
    fn offered(factor: Factor, uid: &str) -> (Factor, String) {
        let mut c = key_case(uid).with_factor(FactorRead::Found(factor.clone()));
        assert_eq!(c.step(), Step::Fetch(Need::Ceremony));
        let keys = crate::controller::steps::security_keys::credentials(&factor);
        c.fresh_ceremony = Some(rp().start_authentication("alice", &keys, false, c.now).unwrap());
        let Step::Offer { webauthn: Some(webauthn), options: Some(options), .. } = c.step() else { panic!("an offer") };
        assert!(webauthn.ceremonies.contains_key(uid));
        (Factor { webauthn: *webauthn, ..factor }, options)
    }

    fn sign(authenticator: &mut SoftPasskey, options: &str) -> String {
        let options: RequestChallengeResponse = serde_json::from_str(options).unwrap();
        serde_json::to_string(&authenticator.do_authentication(url::Url::parse(PAGE).unwrap(), options).unwrap())
            .unwrap()
    }

    fn answered(factor: Factor, uid: &str, answer: &str) -> Verdicts {
        let mut c = key_case(uid).with_factor(FactorRead::Found(factor));
        c.challenge.spec.response = Some("sealed".into());
        c.response = Opened::Code(Zeroizing::new(answer.to_owned()), ());
        verdict(c.step())
    }

    #[test]
    fn the_key_that_answers_the_offered_ceremony_earns_a_grant_naming_it() {
        let mut key = SoftPasskey::new(false);
        let factor = with_key(&mut key);
        assert_eq!(key_case("c-1").step(), Step::Fetch(Need::Factor));
        let (factor, options) = offered(factor, "c-1");
        assert!(options.contains("allowCredentials"), "{options}");

        // Offered once: the same challenge looked at again offers nothing new.
        let mut again = key_case("c-1").with_factor(FactorRead::Found(factor.clone()));
        again.challenge.status =
            Some(StepUpChallengeStatus { webauthn_options: Some(options.clone()), ..Default::default() });
        assert!(matches!(again.step(), Step::Offer { webauthn: None, options: None, .. }));

        let v = answered(factor.clone(), "c-1", &sign(&mut key, &options));
        assert_eq!((v.phase, v.issue), (ChallengePhase::Verified, true), "{}", v.message);
        let used = v.security_key.as_ref().unwrap();
        assert_eq!(used.id_hash, factor.webauthn.keys[0].id_hash);
        let after = v.webauthn.as_ref().unwrap();
        assert!(after.ceremonies.is_empty(), "the ceremony is spent");
        assert_ne!(after.keys[0].credential, factor.webauthn.keys[0].credential, "the new counter is stored");
    }

    #[test]
    fn an_answer_counts_once_and_only_in_its_own_challenge() {
        let mut key = SoftPasskey::new(false);
        let (factor, options) = offered(with_key(&mut key), "c-1");
        let answer = sign(&mut key, &options);
        let v = answered(factor.clone(), "c-1", &answer);
        let spent = Factor { webauthn: *v.webauthn.unwrap(), ..factor.clone() };

        // Attack: the same answer again, in the same challenge (re-created) ...
        let mut fresh = spent.clone();
        fresh.webauthn.last_verified = None;
        let v = answered(fresh, "c-1", &answer);
        assert_eq!(v.reason, "NoCeremony", "{}", v.message);
        // ... and replayed into another challenge with its own ceremony.
        let (other, _) = offered(spent, "c-2");
        let v = answered(other, "c-2", &answer);
        assert_eq!((v.phase, v.reason, v.result), (ChallengePhase::Denied, "OtherChallenge", "other_challenge"));
        assert_eq!(v.state.as_ref().unwrap().consecutive_failures, 1, "a refused answer counts as a failure");
        assert!(v.webauthn.as_ref().unwrap().ceremonies.is_empty(), "a wrong answer spends the ceremony too");
    }

    #[test]
    fn a_counter_behind_the_stored_one_is_a_cloned_key_and_said_so() {
        let mut key = SoftPasskey::new(false);
        let (mut factor, options) = offered(with_key(&mut key), "c-1");
        // The stored counter is ahead of what this authenticator signs: another copy of the
        // key has been used since.
        factor.webauthn.keys[0].credential["counter"] = serde_json::json!(1000);
        let v = answered(factor, "c-1", &sign(&mut key, &options));
        assert_eq!(v.reason, "ClonedAuthenticator", "{}", v.message);
        assert!(v.message.contains("may be a clone"), "{}", v.message);
        assert_eq!(v.records.iter().map(|r| r.reason).collect::<Vec<_>>(), ["ClonedAuthenticator"]);
        assert!(!v.issue);
    }

    #[test]
    fn a_key_removed_since_the_offer_counts_for_nothing() {
        let mut key = SoftPasskey::new(false);
        let (mut factor, options) = offered(with_key(&mut key), "c-1");
        let mut other = SoftPasskey::new(false);
        let replacement = with_key(&mut other);
        factor.webauthn.keys = replacement.webauthn.keys;
        let v = answered(factor, "c-1", &sign(&mut key, &options));
        assert_eq!(v.reason, "UnknownKey", "{}", v.message);
    }

    #[test]
    fn no_key_or_a_lockout_offers_nothing() {
        let v = verdict(key_case("c-1").with_factor(FactorRead::Found(Factor::default())).step());
        assert_eq!(v.reason, "NotEnrolled");
        assert!(v.message.contains("--method WebAuthn"), "{}", v.message);
        let v = verdict(key_case("c-1").with_factor(FactorRead::Missing).step());
        assert!(v.message.contains("kubectl stepup enroll --method WebAuthn"), "{}", v.message);
        let mut locked = with_key(&mut SoftPasskey::new(false));
        locked.state.locked_at = Some(t0());
        let v = verdict(key_case("c-1").with_factor(FactorRead::Found(locked)).step());
        assert_eq!(v.reason, "Locked");
    }

    #[test]
    fn a_retry_after_the_counter_was_stored_issues_the_same_grant() {
        let mut key = SoftPasskey::new(false);
        let (factor, options) = offered(with_key(&mut key), "c-1");
        let answer = sign(&mut key, &options);
        let v = answered(factor.clone(), "c-1", &answer);
        let stored = Factor { webauthn: *v.webauthn.unwrap(), ..factor };
        let retry = answered(stored, "c-1", &answer);
        assert_eq!((retry.phase, retry.issue), (ChallengePhase::Verified, true));
        assert_eq!(retry.security_key, v.security_key);
    }
}
