//! The security-key enrollment decision as situations, each named after what must (not)
//! happen; the browser is webauthn-authenticator-rs's software authenticator.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use url::Url;
use webauthn_authenticator_rs::{WebauthnAuthenticator, softpasskey::SoftPasskey};
use webauthn_rs_core::proto::CreationChallengeResponse;
use zeroize::Zeroizing;

use super::*;
use crate::controller::factor::Limits;
use stepup_core::{
    api::StepUpEnrollmentSpec,
    testing::{minutes, t0},
    verify::totp::TotpVerifier,
};

const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
const KEY_C: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC=";
const PAGE: &str = "http://localhost:40111";

fn rp() -> RelyingParty {
    RelyingParty::new("localhost", &[Url::parse("http://localhost").unwrap()]).unwrap()
}

struct Case {
    enrollment: StepUpEnrollment,
    factor: FactorRead,
    confirmation: Opened<EnrollmentPurpose>,
    self_service: bool,
    fresh: (String, PendingRegistration),
    voucher: Option<Result<Voucher, String>>,
    remover: Option<Result<Voucher, String>>,
    now: Timestamp,
}

fn case(key: &str) -> Case {
    let e = StepUpEnrollment::new(
        &api::enrollment_name_for("alice", Method::WebAuthn),
        StepUpEnrollmentSpec {
            user: "alice".into(),
            method: Method::WebAuthn,
            public_key: key.into(),
            confirmation: None,
            bootstrap: false,
            bootstrap_proof: None,
        },
    );
    Case {
        enrollment: e,
        factor: FactorRead::Missing,
        confirmation: Opened::Missing,
        self_service: false,
        fresh: rp().start_registration("alice", b"alice-handle", &[], t0()).unwrap(),
        voucher: None,
        remover: None,
        now: t0(),
    }
}

impl Case {
    fn factor(mut self, f: Factor) -> Self {
        self.factor = FactorRead::Found(f);
        self
    }

    fn approval(mut self, by: &str, key: &str, at: Timestamp) -> Self {
        let a = self.enrollment.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(api::APPROVED_BY_ANNOTATION.into(), by.into());
        a.insert(api::APPROVED_KEY_ANNOTATION.into(), fingerprint(key));
        a.insert(api::APPROVED_AT_ANNOTATION.into(), at.to_string());
        self
    }

    fn answer(mut self, answer: &str, purpose: EnrollmentPurpose) -> Self {
        self.enrollment.spec.confirmation = Some("sealed".into());
        self.confirmation = Opened::Code(Zeroizing::new(answer.to_owned()), purpose);
        self
    }

    /// The person offers grant `name` (as the shell read it) to vouch for this enrollment key.
    fn vouched_by(mut self, name: &str, voucher: Result<Voucher, String>) -> Self {
        self.enrollment
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(api::VOUCHING_GRANT_ANNOTATION.into(), name.into());
        self.voucher = Some(voucher);
        self
    }

    /// Someone marks key `id` for removal, with `marks` beside it (an admin's name, a grant's).
    fn removal(mut self, id: &str, marks: &[(&str, &str)]) -> Self {
        let a = self.enrollment.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(api::REMOVE_KEY_ANNOTATION.into(), id.into());
        a.extend(marks.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// The person offers grant `name` (as the shell read it) to remove a key.
    fn removal_proven_by(mut self, id: &str, name: &str, grant: Result<Voucher, String>) -> Self {
        self.remover = Some(grant);
        self.removal(id, &[(api::REMOVAL_GRANT_ANNOTATION, name)])
    }

    fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }

    fn step(&self) -> Step {
        let settings = EnrollmentSettings {
            self_service: self.self_service,
            approval_window: minutes(15),
            max_clock_skew: SignedDuration::from_secs(10),
            limits: Limits::default(),
            response_key: "RESPONSE-KEY",
            verifier: &TotpVerifier,
        };
        let bootstrap = Bootstrap::Closed { why: "the bootstrap was used by root".into() };
        next_step(
            &Facts {
                enrollment: &self.enrollment,
                factor: &self.factor,
                confirmation: &self.confirmation,
                bootstrap: &bootstrap,
                fresh: &self.fresh,
                voucher: self.voucher.as_ref(),
                remover: self.remover.as_ref(),
                now: self.now,
            },
            &settings,
            &rp(),
        )
    }
}

fn reasons(step: &Step) -> Vec<&'static str> {
    step.records.iter().map(|r| r.reason).collect()
}

fn written(step: &Step) -> &Factor {
    step.factor.as_ref().expect("a factor write")
}

/// What the person's browser answers to the options the plugin opened, at `origin`.
fn register(key: &mut SoftPasskey, options: &str, origin: &str) -> String {
    let options: CreationChallengeResponse = serde_json::from_str(options).unwrap();
    serde_json::to_string(&key.do_registration(Url::parse(origin).unwrap(), options).unwrap()).unwrap()
}

/// Alice's factor after root approved key A: the registration waits for its answer.
fn approved() -> (Factor, String) {
    let step = case(KEY_A).approval("root", KEY_A, t0()).step();
    assert_eq!(reasons(&step), ["EnrollmentApproved"]);
    assert_eq!(step.status.sealed, Sealed::Fresh);
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
    let factor = written(&step).clone();
    let options = factor.webauthn.pending.as_ref().unwrap().options.clone();
    (factor, options)
}

#[test]
fn a_first_key_waits_for_an_approval_of_the_enrollment_key() {
    let step = case(KEY_A).step();
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval);
    assert!(step.factor.is_none(), "nothing is written before an allowance");
    assert!(
        step.status
            .message
            .contains(&format!("kubectl stepup approve alice --method WebAuthn --key {}", fingerprint(KEY_A))),
        "{}",
        step.status.message
    );
    assert_eq!(reasons(&step), ["EnrollmentPendingApproval"]);
}

#[test]
fn an_approved_registration_registers_the_key_that_answered_it() {
    let (factor, options) = approved();
    let mut key = SoftPasskey::new(true);
    let answer = register(&mut key, &options, PAGE);
    let step = case(KEY_A).factor(factor).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(reasons(&step), ["EnrollmentConfirmed"], "{:?}", step.records);
    assert!(step.scrub_confirmation);
    assert_eq!(step.status.phase, EnrollmentPhase::Active);
    assert_eq!(step.status.sealed, Sealed::Clear);
    let f = written(&step);
    assert!(f.webauthn.pending.is_none());
    assert_eq!(f.webauthn.keys.len(), 1);
    assert_eq!(step.status.credentials.len(), 1);
    assert_eq!(step.status.credentials[0].allowed, "approved by root");
    assert_eq!(step.status.credentials[0].user_verified, f.webauthn.keys[0].user_verified);
    assert_eq!(step.status.credentials[0].id_hash, f.webauthn.keys[0].id_hash);
    // What is stored is public: no private key, no secret.
    let stored = serde_json::to_string(&f.webauthn.keys[0].credential).unwrap();
    assert!(stored.contains("\"cred_id\""), "{stored}");
}

#[test]
fn a_registration_for_options_the_answerer_could_not_read_is_refused() {
    // Attack: someone else with alice's kube credentials sees the enrollment but not the
    // sealed options; they answer options of their own making. The challenge gives them away.
    let (factor, _) = approved();
    let theirs = rp().start_registration("alice", b"alice-handle", &[], t0()).unwrap().0;
    let answer = register(&mut SoftPasskey::new(true), &theirs, PAGE);
    let step = case(KEY_A).factor(factor.clone()).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(reasons(&step), ["EnrollmentCodeRefused"]);
    assert_eq!(step.records[0].result, "other_challenge");
    let last = step.status.last_code.as_ref().unwrap();
    assert!(!last.accepted && last.message.contains("another challenge"), "{}", last.message);
    assert!(step.factor.is_none(), "the pending registration stays for the right answer");
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
}

#[test]
fn a_registration_made_on_another_site_is_refused() {
    let (factor, options) = approved();
    let answer = register(&mut SoftPasskey::new(true), &options, "https://login.localhost");
    let step = case(KEY_A).factor(factor).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(step.records[0].result, "wrong_origin", "{:?}", step.records);
}

#[test]
fn a_code_or_a_registration_sealed_for_another_purpose_or_key_counts_for_nothing() {
    let (factor, options) = approved();
    let answer = register(&mut SoftPasskey::new(true), &options, PAGE);
    let step = case(KEY_A).factor(factor.clone()).answer(&answer, EnrollmentPurpose::Confirmation).step();
    assert_eq!(step.records[0].result, "wrong_purpose");
    let mut copied = case(KEY_A).factor(factor);
    copied.enrollment.spec.confirmation = Some("sealed".into());
    copied.confirmation = Opened::Mismatch;
    assert_eq!(copied.step().records[0].result, "binding_mismatch");
}

#[test]
fn any_key_change_voids_the_pending_registration() {
    let (factor, options) = approved();
    let answer = register(&mut SoftPasskey::new(true), &options, PAGE);
    let step = case(KEY_B).factor(factor).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(reasons(&step), ["PendingConfirmationVoided", "EnrollmentCodeRefused", "EnrollmentPendingApproval"]);
    assert!(written(&step).webauthn.pending.is_none());
    assert!(written(&step).webauthn.keys.is_empty());
}

#[test]
fn a_registration_must_be_completed_within_the_approval_window() {
    let (factor, options) = approved();
    let answer = register(&mut SoftPasskey::new(true), &options, PAGE);
    let late = t0() + minutes(15);
    let step = case(KEY_A).factor(factor).answer(&answer, EnrollmentPurpose::KeyRegistration).at(late).step();
    assert_eq!(reasons(&step)[0], "PendingConfirmationExpired");
    assert!(written(&step).webauthn.keys.is_empty());
}

#[test]
fn each_further_key_needs_its_own_allowance_and_adds_to_the_others() {
    let (factor, options) = approved();
    let first = register(&mut SoftPasskey::new(true), &options, PAGE);
    let with_one =
        written(&case(KEY_A).factor(factor).answer(&first, EnrollmentPurpose::KeyRegistration).step()).clone();

    // A new enrollment key without an approval: the registered key keeps working, nothing is sealed.
    let step = case(KEY_B).factor(with_one.clone()).step();
    assert_eq!(step.status.phase, EnrollmentPhase::Active);
    assert!(step.factor.is_none());
    assert!(step.status.message.contains("needs an admin"), "{}", step.status.message);
    // A registration sent anyway is discarded unchecked.
    let stray = register(&mut SoftPasskey::new(true), &options, PAGE);
    let step = case(KEY_B).factor(with_one.clone()).answer(&stray, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(step.records[0].result, "not_expected");

    // Approved: a second registration, for fresh options, adds a second key.
    let mut second = case(KEY_B).factor(with_one).approval("root", KEY_B, t0());
    second.fresh = rp().start_registration("alice", b"alice-handle", &[], t0()).unwrap();
    let step = second.step();
    assert_eq!(reasons(&step), ["EnrollmentApproved"]);
    let f = written(&step).clone();
    let options = f.webauthn.pending.as_ref().unwrap().options.clone();
    let answer = register(&mut SoftPasskey::new(false), &options, PAGE);
    let step = case(KEY_B).factor(f).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(written(&step).webauthn.keys.len(), 2);
    assert_eq!(step.status.credentials.len(), 2);
    assert!(!step.status.credentials[1].user_verified);
    assert!(step.status.message.contains("2 security keys"), "{}", step.status.message);
}

#[test]
fn an_approval_of_a_key_already_used_registers_nothing_more() {
    let (factor, options) = approved();
    let first = register(&mut SoftPasskey::new(true), &options, PAGE);
    let with_one =
        written(&case(KEY_A).factor(factor).answer(&first, EnrollmentPurpose::KeyRegistration).step()).clone();
    let later = t0() + minutes(1);
    let step = case(KEY_A).factor(with_one).approval("root", KEY_A, later).at(later).step();
    assert_eq!(reasons(&step), ["ApprovalUnneeded"]);
    assert!(step.factor.is_none());
}

#[test]
fn a_corrupt_factor_registers_nothing_until_an_approval_replaces_it() {
    let mut c = case(KEY_A);
    c.factor = FactorRead::Corrupt("edited".into());
    let step = c.step();
    assert_eq!(step.status.phase, EnrollmentPhase::Locked);
    assert_eq!(step.status.reason, "FactorCorrupt");
    assert!(step.factor.is_none());
    let mut c = case(KEY_A).approval("root", KEY_A, t0());
    c.factor = FactorRead::Corrupt("edited".into());
    let step = c.step();
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
    assert!(written(&step).webauthn.pending.is_some());
}

#[test]
fn self_service_allows_a_first_key_only() {
    let mut c = case(KEY_A);
    c.self_service = true;
    let step = c.step();
    assert_eq!(reasons(&step), ["EnrollmentStarted"]);
    assert_eq!(written(&step).webauthn.pending.as_ref().unwrap().allowed, Allowance::SelfService);
}

#[test]
fn self_service_gives_no_first_key_to_someone_who_holds_an_authenticator_app() {
    // Attack: with self-service on, someone holding only alice's kubeconfig registers their own
    // key next to her authenticator app (and then passes the policies that demand a key).
    let f = Factor { seed: Some(Zeroizing::new(vec![7; 20])), seed_key: Some(KEY_B.into()), ..Factor::default() };
    let mut c = case(KEY_A).factor(f);
    c.self_service = true;
    let step = c.step();
    assert!(step.factor.is_none(), "nothing sealed: {:?}", step.records);
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval);
    assert!(step.status.message.contains("kubectl stepup approve alice --method WebAuthn"), "{}", step.status.message);
}

#[test]
fn a_lockout_of_the_person_shows_on_their_security_keys_too() {
    let (factor, options) = approved();
    let first = register(&mut SoftPasskey::new(true), &options, PAGE);
    let mut with_one =
        written(&case(KEY_A).factor(factor).answer(&first, EnrollmentPurpose::KeyRegistration).step()).clone();
    with_one.state.locked_at = Some(t0());
    with_one.state.consecutive_failures = 10;
    let step = case(KEY_A).factor(with_one).at(t0() + SignedDuration::from_secs(1)).step();
    assert_eq!(step.status.phase, EnrollmentPhase::Locked);
    assert_eq!(step.status.reason, "Locked");
}

/// A grant of alice's asked for registering a key through `key`, from her key, a minute old.
fn voucher_for(key: &str) -> Voucher {
    Voucher {
        name: "alice-g1".into(),
        user: "alice".into(),
        method: Method::WebAuthn,
        issued_at: t0() - minutes(1),
        reason: Some(api::vouch_reason(&fingerprint(key))),
        scope: api::GrantScope { policies: vec![api::VOUCH_SCOPE.into()], namespaces: vec![] },
        revoked: false,
    }
}

/// Alice with one key registered through key A.
fn with_one_key() -> Factor {
    let (factor, options) = approved();
    let first = register(&mut SoftPasskey::new(true), &options, PAGE);
    written(&case(KEY_A).factor(factor).answer(&first, EnrollmentPurpose::KeyRegistration).step()).clone()
}

#[test]
fn a_fresh_grant_of_a_current_factor_asked_for_this_key_allows_another_key() {
    let step = case(KEY_B).factor(with_one_key()).vouched_by("alice-g1", Ok(voucher_for(KEY_B))).step();
    assert_eq!(reasons(&step), ["EnrollmentVouched"], "{:?}", step.records);
    assert_eq!(step.unmark, [api::VOUCHING_GRANT_ANNOTATION]);
    let pending = written(&step).webauthn.pending.clone().unwrap();
    assert_eq!(pending.allowed, Allowance::Grant { name: "alice-g1".into(), method: "WebAuthn".into() });
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
    // The registration completes as an approved one would, and says what allowed it.
    let f = written(&step).clone();
    let answer = register(&mut SoftPasskey::new(true), &pending.options, PAGE);
    let done = case(KEY_B).factor(f).answer(&answer, EnrollmentPurpose::KeyRegistration).step();
    assert_eq!(written(&done).webauthn.keys.len(), 2);
    assert_eq!(done.status.credentials[1].allowed, "allowed by WebAuthn grant alice-g1");
    // Used once: the same grant offered again vouches for nothing more.
    let again = case(KEY_B).factor(written(&done).clone()).vouched_by("alice-g1", Ok(voucher_for(KEY_B))).step();
    assert!(
        again.records.iter().any(|r| r.reason == "VouchRefused" && r.message.contains("vouched for a key already"))
    );
}

#[test]
fn no_other_grant_vouches() {
    // Attack: someone with alice's kubeconfig but not her key offers grants they can see.
    let cases: Vec<(&str, Result<Voucher, String>, &str)> = vec![
        (
            "a grant alice got for other work",
            Ok(Voucher { scope: Default::default(), ..voucher_for(KEY_B) }),
            "other work",
        ),
        ("alice's vouching grant for another key", Ok(voucher_for(KEY_C)), "another enrollment key"),
        ("bob's grant", Ok(Voucher { user: "bob".into(), ..voucher_for(KEY_B) }), "\"bob\"'s grant"),
        (
            "an identity-provider sign-in",
            Ok(Voucher { method: Method::Oidc, ..voucher_for(KEY_B) }),
            "only a registered security key vouches",
        ),
        (
            "a grant from a phished TOTP code (a key would outlast the code, and pass policies that demand a key)",
            Ok(Voucher { method: Method::Totp, ..voucher_for(KEY_B) }),
            "only a registered security key vouches",
        ),
        ("an old grant", Ok(Voucher { issued_at: t0() - minutes(16), ..voucher_for(KEY_B) }), "counts for 15m"),
        ("a revoked grant", Ok(Voucher { revoked: true, ..voucher_for(KEY_B) }), "revoked"),
        ("a grant the controller did not sign", Err("it is not signed by the stepup controller".into()), "not signed"),
    ];
    for (what, voucher, why) in cases {
        let step = case(KEY_B).factor(with_one_key()).vouched_by("g", voucher).step();
        assert!(step.factor.is_none(), "{what}: nothing is written");
        let refused = step
            .records
            .iter()
            .find(|r| r.reason == "VouchRefused")
            .unwrap_or_else(|| panic!("{what}: {:?}", step.records));
        assert!(refused.message.contains(why), "{what}: {}", refused.message);
        assert_eq!(step.unmark, [api::VOUCHING_GRANT_ANNOTATION], "{what}: the mark is consumed");
        assert_eq!(step.status.phase, EnrollmentPhase::Active, "{what}");
    }
}

/// A grant of alice's asked for removing key `id`, from her key, a minute old.
fn removal_grant(id: &str) -> Voucher {
    Voucher {
        name: "alice-g2".into(),
        reason: Some(api::removal_reason(id)),
        scope: api::GrantScope { policies: vec![api::REMOVE_KEY_SCOPE.into()], namespaces: vec![] },
        ..voucher_for(KEY_A)
    }
}

#[test]
fn a_stolen_kubeconfig_removes_no_key() {
    // Attack: someone with alice's kubeconfig but neither her key nor her authenticator app
    // removes her keys (her step-up then fails, or waits for an admin).
    let factor = with_one_key();
    let id = factor.webauthn.keys[0].id_hash.clone();
    let cases: Vec<(&str, Case, &str)> = vec![
        ("the mark alone", case(KEY_A).factor(factor.clone()).removal(&id, &[]), "needs a fresh grant"),
        (
            "a grant alice got for other work",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Ok(Voucher { scope: Default::default(), ..removal_grant(&id) }),
            ),
            "not requested to remove a security key",
        ),
        (
            "her grant vouching for a new key",
            case(KEY_A).factor(factor.clone()).removal_proven_by(&id, "g", Ok(voucher_for(KEY_A))),
            "not requested to remove a security key",
        ),
        (
            "her removal grant for another key",
            case(KEY_A).factor(factor.clone()).removal_proven_by(&id, "g", Ok(removal_grant("00ff"))),
            "another key",
        ),
        (
            "bob's removal grant",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Ok(Voucher { user: "bob".into(), ..removal_grant(&id) }),
            ),
            "\"bob\"'s grant",
        ),
        (
            "an identity-provider sign-in",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Ok(Voucher { method: Method::Oidc, ..removal_grant(&id) }),
            ),
            "proves no factor",
        ),
        (
            "an old grant",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Ok(Voucher { issued_at: t0() - minutes(16), ..removal_grant(&id) }),
            ),
            "counts for 15m",
        ),
        (
            "a revoked grant",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Ok(Voucher { revoked: true, ..removal_grant(&id) }),
            ),
            "revoked",
        ),
        (
            "a grant the controller did not sign",
            case(KEY_A).factor(factor.clone()).removal_proven_by(
                &id,
                "g",
                Err("it is not signed by the stepup controller".into()),
            ),
            "not signed",
        ),
    ];
    for (what, c, why) in cases {
        let step = c.step();
        assert!(step.factor.is_none(), "{what}: nothing is written");
        let refused = step
            .records
            .iter()
            .find(|r| r.reason == "SecurityKeyRemovalRefused")
            .unwrap_or_else(|| panic!("{what}: {:?}", step.records));
        assert!(refused.warning && refused.message.contains(why), "{what}: {}", refused.message);
        assert!(step.unmark.contains(&api::REMOVE_KEY_ANNOTATION), "{what}: the mark is consumed");
        assert_eq!(step.status.credentials.len(), 1, "{what}: the key stays");
    }
}

#[test]
fn a_removed_key_is_gone_and_who_removed_it_recorded() {
    let factor = with_one_key();
    let id = factor.webauthn.keys[0].id_hash.clone();
    // The person, with a fresh grant asked for removing exactly this key.
    let step = case(KEY_A)
        .factor(factor.clone())
        .removal_proven_by(&id.to_uppercase(), "alice-g2", Ok(removal_grant(&id)))
        .step();
    assert_eq!(step.unmark, [api::REMOVE_KEY_ANNOTATION, api::REMOVAL_GRANT_ANNOTATION]);
    let removal = step.records.iter().find(|r| r.reason == "SecurityKeyRemoved").expect("recorded");
    assert!(
        !removal.warning
            && removal.message.contains(&id)
            && removal.message.contains("by alice (WebAuthn grant alice-g2)")
            && removal.message.contains("0 security keys left"),
        "{}",
        removal.message
    );
    assert!(written(&step).webauthn.keys.is_empty());
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval, "no key left: a new one needs an approval");

    // An admin, in their own name (the webhook holds them to it and to their step-up).
    let step = case(KEY_A).factor(factor.clone()).removal(&id, &[(api::REMOVED_BY_ANNOTATION, "root")]).step();
    assert_eq!(step.unmark, [api::REMOVE_KEY_ANNOTATION, api::REMOVED_BY_ANNOTATION]);
    let removal = step.records.iter().find(|r| r.reason == "SecurityKeyRemoved").expect("recorded");
    assert!(removal.message.contains("by admin root"), "{}", removal.message);
    assert!(written(&step).webauthn.keys.is_empty());

    // A key that is not there: nothing changes, and that is said.
    let step = case(KEY_A).factor(factor).removal("00ff", &[(api::REMOVED_BY_ANNOTATION, "root")]).step();
    assert!(step.factor.is_none());
    assert_eq!(step.records[0].result, "not_found");
}
