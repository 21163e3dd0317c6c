//! The enrollment decision as a table of situations, each named after what must (not) happen.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use zeroize::Zeroizing;

use super::*;
use crate::controller::factor::FactorState;
use stepup_core::{
    api::{Method, StepUpEnrollmentSpec},
    testing::{minutes, t0},
    verify::totp::{TotpVerifier, code_at},
};

const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
const KEY_C: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC=";
const OLD_SEED: [u8; 20] = [1; 20];
const FRESH_SEED: [u8; 20] = [9; 20];

fn limits() -> Limits {
    Limits { max_failures: 3, window: SignedDuration::from_mins(5), lockout_after: 5 }
}

/// One situation: the enrollment as the user left it, the stored factor, and the time.
struct Case {
    enrollment: StepUpEnrollment,
    factor: FactorRead,
    confirmation: Opened<EnrollmentPurpose>,
    bootstrap: Bootstrap,
    self_service: bool,
    now: Timestamp,
}

fn case(key: &str) -> Case {
    let e = StepUpEnrollment::new(
        "alice-0123456789ab",
        StepUpEnrollmentSpec {
            user: "alice".into(),
            method: Method::Totp,
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
        bootstrap: Bootstrap::Closed { why: "the bootstrap was used by root".into() },
        self_service: false,
        now: t0(),
    }
}

fn enrolled(key: &str) -> Factor {
    Factor { seed: Some(Zeroizing::new(OLD_SEED.to_vec())), seed_key: Some(key.into()), ..Default::default() }
}

fn pending(factor: Factor, key: &str, allowed: Allowance, since: Timestamp) -> Factor {
    Factor {
        pending: Some(Pending { seed: Zeroizing::new(FRESH_SEED.to_vec()), key: key.into(), allowed, since }),
        ..factor
    }
}

fn approved_by_root() -> Allowance {
    Allowance::Approval { by: "root".into() }
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

    fn unlock_by(mut self, by: &str) -> Self {
        self.enrollment
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(api::UNLOCK_BY_ANNOTATION.into(), by.into());
        self
    }

    fn code(mut self, opened: Opened<EnrollmentPurpose>) -> Self {
        self.enrollment.spec.confirmation = Some("sealed".into());
        self.confirmation = opened;
        self
    }

    /// Asks for the bootstrap (with the proof an installer's plugin makes) or not.
    fn bootstrap(mut self, asked: bool, b: Bootstrap) -> Self {
        self.enrollment.spec.bootstrap = asked;
        if let Bootstrap::Open { token, .. } = &b {
            let spec = &self.enrollment.spec;
            self.enrollment.spec.bootstrap_proof =
                asked.then(|| stepup_core::keys::bootstrap_proof(token, &spec.user, &spec.public_key));
        }
        self.bootstrap = b;
        self
    }

    fn proof(mut self, proof: Option<&str>) -> Self {
        self.enrollment.spec.bootstrap_proof = proof.map(str::to_owned);
        self
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
            limits: limits(),
            response_key: "RESPONSE-KEY",
            verifier: &TotpVerifier,
        };
        next_step(
            &Facts {
                enrollment: &self.enrollment,
                factor: &self.factor,
                confirmation: &self.confirmation,
                bootstrap: &self.bootstrap,
                fresh_seed: &FRESH_SEED,
                now: self.now,
            },
            &settings,
        )
    }
}

fn code(seed: &[u8], at: Timestamp, purpose: EnrollmentPurpose) -> Opened<EnrollmentPurpose> {
    Opened::Code(Zeroizing::new(code_at(seed, at)), purpose)
}

fn reasons(step: &Step) -> Vec<&'static str> {
    step.records.iter().map(|r| r.reason).collect()
}

fn written(step: &Step) -> &Factor {
    step.factor.as_ref().expect("a factor write")
}

#[test]
fn a_first_enrollment_waits_for_an_approval_of_its_key() {
    let step = case(KEY_A).step();
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval);
    assert!(step.status.message.contains(&format!("kubectl stepup approve alice --key {}", fingerprint(KEY_A))));
    assert_eq!(step.status.key_fingerprint, fingerprint(KEY_A));
    assert_eq!(step.status.response_key, "RESPONSE-KEY", "the plugin finds the key to seal codes to");
    assert_eq!(step.factor, None, "nothing sealed, nothing stored");
    assert_eq!(reasons(&step), ["EnrollmentPendingApproval"]);
}

#[test]
fn an_approval_of_the_current_key_seals_one_seed_to_that_key() {
    let step = case(KEY_A).approval("root", KEY_A, t0()).step();
    let f = written(&step);
    let p = f.pending.as_ref().expect("a pending seed");
    assert_eq!((p.key.as_str(), p.seed.as_slice(), &p.allowed), (KEY_A, &FRESH_SEED[..], &approved_by_root()));
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
    assert_eq!(step.status.sealed, Sealed::Fresh);
    assert_eq!(step.status.confirm_by, Some(t0() + minutes(15)));
    assert_eq!(step.unmark.len(), 3, "the approval is consumed: one use");
    assert_eq!(reasons(&step), ["EnrollmentApproved"]);
}

#[test]
fn an_approval_not_bound_to_the_current_key_seals_nothing() {
    // Attack: the owner's stolen token swapped the key before (or while) the admin approved.
    let cases = [
        ("another key", case(KEY_B).approval("root", KEY_A, t0())),
        ("expired", case(KEY_A).approval("root", KEY_A, t0() - minutes(16))),
        ("dated in the future", case(KEY_A).approval("root", KEY_A, t0() + minutes(5))),
    ];
    for (what, c) in cases {
        let step = c.step();
        assert_eq!(step.factor, None, "{what}: nothing sealed");
        assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval, "{what}");
        assert_eq!(reasons(&step)[0], "ApprovalVoided", "{what}");
        assert_eq!(step.unmark.len(), 3, "{what}: a void approval is removed, not kept for later");
    }
}

#[test]
fn any_key_change_voids_a_pending_seed() {
    // Attack: after the admin approved alice's key, her stolen token swaps in the attacker's.
    let c = case(KEY_B).factor(pending(Factor::default(), KEY_A, approved_by_root(), t0()));
    let step = c.step();
    assert!(written(&step).pending.is_none(), "the seed sealed to the approved key is void");
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval, "the new key needs its own approval");
    assert_eq!(step.status.sealed, Sealed::Clear);
    assert_eq!(reasons(&step), ["PendingConfirmationVoided", "EnrollmentPendingApproval"]);
}

#[test]
fn a_valid_code_confirms_only_the_key_it_was_sealed_for() {
    let approved = pending(Factor::default(), KEY_A, approved_by_root(), t0());
    let ok = case(KEY_A).factor(approved.clone()).code(code(&FRESH_SEED, t0(), EnrollmentPurpose::Confirmation)).step();
    let f = written(&ok);
    assert_eq!((f.seed.as_deref().map(|s| s.as_slice()), f.seed_key.as_deref()), (Some(&FRESH_SEED[..]), Some(KEY_A)));
    assert!(f.pending.is_none());
    assert_eq!(ok.status.phase, EnrollmentPhase::Active);
    assert!(ok.status.last_code.as_ref().is_some_and(|c| c.accepted));
    assert!(ok.scrub_confirmation);

    // Attack: alice typed a valid code; a watcher with her token swaps the key right after.
    // The sealed code names key A; the enrollment now says B.
    let swapped = case(KEY_B).factor(approved).code(Opened::Mismatch).step();
    let f = written(&swapped);
    assert!(f.seed.is_none() && f.pending.is_none(), "nothing is enrolled, the seed for A is void");
    assert_eq!(swapped.status.phase, EnrollmentPhase::PendingApproval);
    let last = swapped.status.last_code.as_ref().unwrap();
    assert_eq!((last.accepted, last.reason), (false, "BindingMismatch"));
}

#[test]
fn an_unlock_clears_the_lockout_and_nothing_else() {
    // Attack: "reset forever". alice is locked; after the admin's unlock, her stolen token
    // puts the attacker's key in: nothing is sealed to it.
    let locked = Factor {
        state: FactorState {
            consecutive_failures: 5,
            locked_at: Some(t0() - minutes(1)),
            last_step: Some(7),
            ..Default::default()
        },
        ..enrolled(KEY_A)
    };
    let step = case(KEY_A).factor(locked.clone()).unlock_by("root").step();
    let f = written(&step);
    assert!(f.state.locked_at.is_none() && f.state.consecutive_failures == 0);
    assert_eq!(f.state.last_step, Some(7), "spent codes stay spent");
    assert_eq!(
        (f.seed.clone(), f.seed_key.clone(), f.pending.is_none()),
        (locked.seed.clone(), locked.seed_key.clone(), true)
    );
    assert_eq!(step.status.phase, EnrollmentPhase::Active);
    assert_eq!(reasons(&step), ["EnrollmentUnlocked"]);

    let unlocked = f.clone();
    for later in [t0(), t0() + SignedDuration::from_hours(24 * 30)] {
        let step = case(KEY_C).factor(unlocked.clone()).at(later).step();
        assert!(step.factor.as_ref().is_none_or(|f| f.pending.is_none()), "no seed for the attacker's key");
        assert_eq!(step.status.sealed, Sealed::Clear);
        assert_eq!(step.status.reason, "ReenrollmentRequested");
        assert!(step.status.message.contains("kubectl stepup reset alice --key"), "{}", step.status.message);
    }
}

#[test]
fn a_reset_allows_one_reenrollment_of_the_approved_key_only() {
    let locked = Factor {
        state: FactorState { consecutive_failures: 5, locked_at: Some(t0() - minutes(1)), ..Default::default() },
        ..enrolled(KEY_A)
    };
    // The approved key: a seed is sealed to it, and confirming it past the lockout enrolls it.
    let step = case(KEY_B).factor(locked.clone()).approval("root", KEY_B, t0()).step();
    let f = written(&step).clone();
    assert_eq!(f.pending.as_ref().map(|p| p.key.as_str()), Some(KEY_B));
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
    assert_eq!(reasons(&step), ["ReenrollmentApproved"]);
    let confirmed = case(KEY_B).factor(f).code(code(&FRESH_SEED, t0(), EnrollmentPurpose::Confirmation)).step();
    let f = written(&confirmed);
    assert_eq!(f.seed_key.as_deref(), Some(KEY_B));
    assert!(f.state.locked_at.is_none(), "the new factor starts unlocked");
    assert_eq!(confirmed.status.phase, EnrollmentPhase::Active);
    assert!(confirmed.records[0].message.contains("the previous authenticator no longer works"));

    // A different key than the approved one: refused, nothing sealed, still locked.
    let step = case(KEY_C).factor(locked).approval("root", KEY_B, t0()).step();
    assert_eq!(step.factor, None);
    assert_eq!(step.status.phase, EnrollmentPhase::Locked);
    assert_eq!(reasons(&step), ["ApprovalVoided"]);
}

#[test]
fn a_reenrollment_needs_a_code_of_the_enrolled_authenticator_sealed_for_the_new_key() {
    let now = t0();
    let ok = case(KEY_B).factor(enrolled(KEY_A)).code(code(&OLD_SEED, now, EnrollmentPurpose::Reenrollment)).step();
    let f = written(&ok);
    let p = f.pending.as_ref().unwrap();
    assert_eq!((p.key.as_str(), &p.allowed), (KEY_B, &Allowance::OldFactor));
    assert_eq!(f.seed_key.as_deref(), Some(KEY_A), "the old factor works until the new one is confirmed");
    assert_eq!(ok.status.phase, EnrollmentPhase::AwaitingConfirmation);

    let refused = [
        ("a wrong code", Opened::Code(Zeroizing::new("000000".into()), EnrollmentPurpose::Reenrollment), "WrongCode"),
        ("a code for the first-code step", code(&OLD_SEED, now, EnrollmentPurpose::Confirmation), "WrongPurpose"),
        ("a code sealed for another key", Opened::Mismatch, "BindingMismatch"),
        ("a code in the clear", Opened::Plain, "PlainCode"),
    ];
    for (what, opened, reason) in refused {
        let step = case(KEY_B).factor(enrolled(KEY_A)).code(opened).step();
        assert!(step.factor.as_ref().is_none_or(|f| f.pending.is_none()), "{what}: no seed for the new key");
        assert_eq!(step.status.last_code.as_ref().map(|c| c.reason), Some(reason), "{what}");
        assert!(step.scrub_confirmation, "{what}: the code is removed");
    }
}

#[test]
fn locked_is_shown_whatever_locked_it_with_what_lifts_it() {
    let by_lockout = Factor {
        state: FactorState { consecutive_failures: 5, locked_at: Some(t0() - minutes(3)), ..Default::default() },
        ..enrolled(KEY_A)
    };
    let step = case(KEY_A).factor(by_lockout).step();
    assert_eq!((step.status.phase, step.status.reason), (EnrollmentPhase::Locked, "Locked"));
    assert!(step.status.message.contains("kubectl stepup unlock alice"), "{}", step.status.message);

    let failures =
        vec![(t0() - minutes(4)).as_second(), (t0() - minutes(2)).as_second(), (t0() - minutes(1)).as_second()];
    let by_rate = Factor {
        state: FactorState { consecutive_failures: 3, recent_failures: failures, ..Default::default() },
        ..enrolled(KEY_A)
    };
    let step = case(KEY_A).factor(by_rate.clone()).step();
    assert_eq!((step.status.phase, step.status.reason), (EnrollmentPhase::Locked, "RateLimited"));
    assert_eq!(step.status.locked_until, Some(t0() + minutes(1)));
    assert_eq!(step.recheck_at, Some(t0() + minutes(1)), "it looks again when the limit lifts");
    assert!(step.status.message.contains("until 2026-11-28 12:01:00 UTC"), "{}", step.status.message);
    let a_second_later = case(KEY_A).factor(by_rate.clone()).at(t0() + SignedDuration::from_secs(1)).step();
    assert_eq!(a_second_later.status, step.status, "the same words a second later: no status churn");
    let later = case(KEY_A).factor(by_rate).at(t0() + minutes(1)).step();
    assert_eq!(later.status.phase, EnrollmentPhase::Active);

    let corrupt = case(KEY_A);
    let corrupt = Case { factor: FactorRead::Corrupt("edited".into()), ..corrupt };
    let step = corrupt.step();
    assert_eq!((step.status.phase, step.status.reason), (EnrollmentPhase::Locked, "FactorCorrupt"));
    assert_eq!(step.factor, None, "the corrupt copy is left as evidence");
    assert_eq!(reasons(&step), ["FactorCorrupt"]);
}

#[test]
fn an_approval_replaces_a_corrupt_factor_and_nothing_else_does() {
    let corrupt = |c: Case| Case { factor: FactorRead::Corrupt("edited".into()), ..c };
    let step = corrupt(case(KEY_B).code(code(&OLD_SEED, t0(), EnrollmentPurpose::Reenrollment))).step();
    assert_eq!(step.factor, None);
    assert_eq!(step.status.last_code.as_ref().map(|c| c.reason), Some("FactorCorrupt"));
    let step = corrupt(case(KEY_B).unlock_by("root")).step();
    assert_eq!(step.factor, None);
    let step = corrupt(case(KEY_B).approval("root", KEY_B, t0())).step();
    let f = written(&step);
    assert!(f.seed.is_none() && f.pending.as_ref().is_some_and(|p| p.key == KEY_B));
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
}

#[test]
fn a_pending_seed_must_be_confirmed_within_the_window() {
    let stale = pending(Factor::default(), KEY_A, approved_by_root(), t0() - minutes(15));
    let step = case(KEY_A).factor(stale).code(code(&FRESH_SEED, t0(), EnrollmentPurpose::Confirmation)).step();
    let f = written(&step);
    assert!(f.seed.is_none() && f.pending.is_none(), "too late: nothing is enrolled");
    assert_eq!(reasons(&step)[0], "PendingConfirmationExpired");
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval);
}

#[test]
fn the_bootstrap_lets_the_first_admin_enroll_once_without_a_second_admin() {
    let open = Bootstrap::Open { until: t0() + minutes(30), claimed_by: None, token: "t0ken".into() };
    let step = case(KEY_A).bootstrap(true, open.clone()).step();
    let p = written(&step).pending.clone().unwrap();
    assert_eq!((p.key.as_str(), &p.allowed), (KEY_A, &Allowance::Bootstrap));
    assert_eq!(step.bootstrap, Some(BootstrapUse::Claim { fingerprint: fingerprint(KEY_A) }));
    assert_eq!(reasons(&step), ["BootstrapUsed"]);
    assert!(step.records[0].warning, "using the bootstrap is loud");

    let confirm = case(KEY_A)
        .bootstrap(true, open.clone())
        .factor(Factor { pending: Some(p), ..Default::default() })
        .code(code(&FRESH_SEED, t0(), EnrollmentPurpose::Confirmation))
        .step();
    assert_eq!(confirm.bootstrap, Some(BootstrapUse::Complete), "confirmed: the bootstrap is over for good");
    assert_eq!(confirm.status.phase, EnrollmentPhase::Active);

    let closed = [
        ("not asked for", case(KEY_A).bootstrap(false, open.clone())),
        ("window over", case(KEY_A).bootstrap(true, open.clone()).at(t0() + minutes(30))),
        (
            "claimed by another",
            case(KEY_A).bootstrap(
                true,
                Bootstrap::Open { until: t0() + minutes(30), claimed_by: Some("root".into()), token: "t0ken".into() },
            ),
        ),
        (
            "asked without a proof (the webhook was not there yet)",
            case(KEY_A).bootstrap(true, open.clone()).proof(None),
        ),
        (
            "asked with a proof made without the token",
            case(KEY_A)
                .bootstrap(true, open.clone())
                .proof(Some(&stepup_core::keys::bootstrap_proof("guess", "root", KEY_A))),
        ),
        ("closed", case(KEY_A).bootstrap(true, Bootstrap::Closed { why: "used".into() })),
    ];
    for (what, c) in closed {
        let step = c.step();
        assert_eq!(step.factor, None, "{what}");
        assert!(!reasons(&step).contains(&"BootstrapUsed"), "{what}");
        assert_eq!(step.bootstrap, None, "{what}");
        assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval, "{what}");
    }
}

#[test]
fn self_service_seals_a_first_enrollment_without_approval() {
    let mut c = case(KEY_A);
    c.self_service = true;
    let step = c.step();
    assert_eq!(written(&step).pending.as_ref().map(|p| &p.allowed), Some(&Allowance::SelfService));
    assert_eq!(step.status.phase, EnrollmentPhase::AwaitingConfirmation);
}

#[test]
fn self_service_gives_no_authenticator_app_to_someone_who_holds_a_security_key() {
    // Attack: with self-service on, someone holding only alice's kubeconfig enrolls their own
    // authenticator app next to her security key (and then passes every policy taking TOTP).
    let mut f = Factor::default();
    f.webauthn.keys.push(crate::controller::factor::RegisteredKey {
        id_hash: "00ff".into(),
        registered_at: t0() - minutes(60),
        allowed: Allowance::Approval { by: "root".into() },
        key: KEY_B.into(),
        user_verified: true,
        credential: serde_json::Value::Null,
    });
    let mut c = case(KEY_A).factor(f);
    c.self_service = true;
    let step = c.step();
    assert_eq!(step.factor, None, "nothing sealed: {:?}", step.records);
    assert_eq!(step.status.phase, EnrollmentPhase::PendingApproval);
    assert!(step.status.message.contains("kubectl stepup approve alice"), "{}", step.status.message);
}

#[test]
fn wrong_first_codes_count_and_lock_like_any_other() {
    let mut f = pending(Factor::default(), KEY_A, Allowance::SelfService, t0());
    f.state.consecutive_failures = 4;
    let step = case(KEY_A)
        .factor(f)
        .code(Opened::Code(Zeroizing::new("000000".into()), EnrollmentPurpose::Confirmation))
        .step();
    assert!(written(&step).state.locked_at.is_some());
    assert_eq!(reasons(&step), ["UserLocked"]);
    let last = step.status.last_code.as_ref().unwrap();
    assert!(!last.accepted && last.message.contains("kubectl stepup unlock alice"), "{last:?}");
}

#[test]
fn a_steady_enrollment_needs_nothing() {
    let step = case(KEY_A).factor(enrolled(KEY_A)).step();
    assert_eq!(step.factor, None);
    assert!(step.records.is_empty() && step.unmark.is_empty() && !step.scrub_confirmation);
    assert_eq!((step.status.phase, step.status.reason), (EnrollmentPhase::Active, "Enrolled"));
    assert_eq!(step.status.enrolled_key_fingerprint, Some(fingerprint(KEY_A)));
}
