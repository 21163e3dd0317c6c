//! The enrollment's next step: who may bind which key to a user's factor, decided from the
//! enrollment, the stored factor, the bootstrap and the time. Pure.
//!
//! The rules, each attempted as an attack in the tests:
//! - a seed is sealed only to a key that an admin approved by fingerprint (within the approval
//!   window, once), that a current code of the enrolled authenticator vouched for, or that the
//!   one-time bootstrap or self-service allows;
//! - any change of `spec.publicKey` voids an approval or a pending seed made for another key;
//! - a code counts only for the very enrollment and key the user's own plugin sealed it for;
//! - an unlock clears a lockout and nothing else;
//! - the status always tells the truth: `Locked` whatever locked it, with what lifts it.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use zeroize::Zeroizing;

use super::{Record, bootstrap::Bootstrap, clock};
use crate::controller::factor::{Allowance, Factor, FactorRead, Limits, Pending, Verdict};
use stepup_core::{
    api::{self, EnrollmentPhase, StepUpEnrollment},
    verify::{Verifier, response::EnrollmentPurpose, response::Opened, seal::fingerprint},
};

/// Everything the decision reads.
pub struct Facts<'a> {
    pub enrollment: &'a StepUpEnrollment,
    pub factor: &'a FactorRead,
    /// `spec.confirmation`, opened and checked against this enrollment's bindings.
    pub confirmation: &'a Opened<EnrollmentPurpose>,
    pub bootstrap: &'a Bootstrap,
    /// A seed from the CSPRNG, used if this step seals a new one.
    pub fresh_seed: &'a [u8],
    pub now: Timestamp,
}

pub struct EnrollmentSettings<'a> {
    pub self_service: bool,
    /// How long an admin's approval, and any sealed seed, stays usable.
    pub approval_window: SignedDuration,
    pub max_clock_skew: SignedDuration,
    pub limits: Limits,
    /// The controller's response key, published for the plugin.
    pub response_key: &'a str,
    pub verifier: &'a dyn Verifier,
}

/// What `status.sealedSecret` should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// Nothing: no seed waits for confirmation.
    Clear,
    /// The pending seed, sealed earlier; seal it again only if it is missing.
    Keep,
    /// The pending seed is new: seal it now.
    Fresh,
}

/// The outcome of the last code the controller checked (the `LastCode` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeResult {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The status the enrollment should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub phase: EnrollmentPhase,
    /// Reason of the `Ready` condition.
    pub reason: &'static str,
    pub message: String,
    pub key_fingerprint: String,
    pub enrolled_key_fingerprint: Option<String>,
    pub response_key: String,
    pub failures: u32,
    pub locked_at: Option<Timestamp>,
    pub locked_until: Option<Timestamp>,
    pub confirm_by: Option<Timestamp>,
    pub sealed: Sealed,
    /// `WebAuthn`: the registered keys, as the status shows them.
    pub credentials: Vec<api::EnrolledCredential>,
    /// `None` keeps the condition as it is.
    pub last_code: Option<CodeResult>,
}

/// A change to the bootstrap record, written before the factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapUse {
    Claim { fingerprint: String },
    Complete,
}

/// What the executor does, in this order: bootstrap record, factor, status, then the spec's
/// confirmation and the consumed annotations are removed, then the evidence is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub bootstrap: Option<BootstrapUse>,
    pub factor: Option<Factor>,
    pub status: Desired,
    pub scrub_confirmation: bool,
    pub unmark: Vec<&'static str>,
    pub records: Vec<Record>,
    /// Decide again at this time (an expiry, the end of a rate limit).
    pub recheck_at: Option<Timestamp>,
}

/// The admin marks on the enrollment.
pub(super) struct Marks<'a> {
    unlock_by: Option<&'a str>,
    approved_by: Option<&'a str>,
    approved_key: Option<&'a str>,
    approved_at: Option<&'a str>,
    legacy_reset: Option<&'a str>,
}

impl<'a> Marks<'a> {
    pub(super) fn of(annotations: &'a BTreeMap<String, String>) -> Self {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        Self {
            unlock_by: get(api::UNLOCK_BY_ANNOTATION),
            approved_by: get(api::APPROVED_BY_ANNOTATION),
            approved_key: get(api::APPROVED_KEY_ANNOTATION),
            approved_at: get(api::APPROVED_AT_ANNOTATION),
            legacy_reset: get(api::LEGACY_RESET_BY_ANNOTATION),
        }
    }

    pub(super) fn approval_present(&self) -> bool {
        self.approved_by.is_some() || self.approved_key.is_some() || self.approved_at.is_some()
    }
}

/// An admin's unlock (and the retired reset mark): the lockout and the failures behind it,
/// nothing else. The same for every method: the lockout is the person's.
pub(super) fn unlock(
    marks: &Marks<'_>,
    corrupt: bool,
    state: &mut crate::controller::factor::FactorState,
    user: &str,
    records: &mut Vec<Record>,
    unmark: &mut Vec<&'static str>,
) {
    if let Some(admin) = marks.unlock_by {
        unmark.push(api::UNLOCK_BY_ANNOTATION);
        if corrupt {
            records.push(Record::warning(
                "EnrollmentUnlockRefused",
                "enrollment.unlock",
                "corrupt",
                format!("{admin} asked to unlock {user}, but the stored factor is corrupt: only a re-enrollment approved by key fingerprint helps"),
            ));
        } else if state.locked_at.is_some() || !state.recent_failures.is_empty() || state.consecutive_failures > 0 {
            *state = state.unlocked();
            records.push(Record::normal(
                "EnrollmentUnlocked",
                "enrollment.unlocked",
                "unlocked",
                format!(
                    "unlocked by {admin}: failures forgotten; the enrolled key and any re-enrollment are unchanged"
                ),
            ));
        } else {
            records.push(Record::normal(
                "EnrollmentUnlocked",
                "enrollment.unlocked",
                "not_locked",
                format!("{admin} asked to unlock {user}, who was not locked: nothing changed"),
            ));
        }
    }
    if let Some(admin) = marks.legacy_reset {
        unmark.push(api::LEGACY_RESET_BY_ANNOTATION);
        records.push(Record::warning(
            "EnrollmentResetIgnored",
            "enrollment.reset",
            "legacy",
            format!("{admin} set stepup.dev/reset-by, which no longer does anything: `kubectl stepup unlock` clears a lockout, `kubectl stepup reset --key` allows one re-enrollment"),
        ));
    }
}

/// The admin who approved `fp` at a moment still inside the window, or why the approval is void.
pub(super) fn valid_approval(
    marks: &Marks<'_>,
    fp: &str,
    now: Timestamp,
    s: &EnrollmentSettings<'_>,
) -> Result<String, String> {
    let (Some(by), Some(key), Some(at)) = (marks.approved_by, marks.approved_key, marks.approved_at) else {
        return Err(
            "the approval is incomplete (it needs the admin, the key fingerprint and the time: update kubectl-stepup)"
                .into(),
        );
    };
    let Some(key) = stepup_core::verify::seal::normalize_fingerprint(key) else {
        return Err(format!("the approved key {key:?} is not a fingerprint"));
    };
    if key != fp {
        return Err(format!(
            "{by} approved key {key}, but the enrollment now carries key {fp}: the key changed after the approval"
        ));
    }
    let Ok(at) = at.parse::<Timestamp>() else {
        return Err(format!("the approval time {at:?} is not an RFC 3339 time"));
    };
    if at > now + s.max_clock_skew {
        return Err(format!("the approval is dated in the future ({})", clock(at)));
    }
    if now >= at + s.approval_window {
        return Err(format!(
            "{by}'s approval of {} expired at {} (approvals last {})",
            clock(at),
            clock(at + s.approval_window),
            stepup_core::grant::human(s.approval_window)
        ));
    }
    Ok(by.to_owned())
}

fn refusal_words(verdict: &Verdict) -> (&'static str, String) {
    match verdict {
        Verdict::Rejected { why, .. } => (why.reason(), why.to_string()),
        Verdict::RateLimited { retry_after } => {
            ("RateLimited", format!("too many failed codes; try again in {}", stepup_core::grant::human(*retry_after)))
        }
        Verdict::Locked => ("Locked", "locked after too many failed codes; an admin must unlock it".into()),
        Verdict::Accepted { .. } | Verdict::AlreadyAccepted => ("Accepted", "accepted".into()),
    }
}

/// The next step for an enrollment.
pub fn next_step(f: &Facts<'_>, s: &EnrollmentSettings<'_>) -> Step {
    let e = f.enrollment;
    let user = e.spec.user.as_str();
    let key = e.spec.public_key.as_str();
    let fp = fingerprint(key);
    let now = f.now;
    let window = s.approval_window;
    let no_annotations = BTreeMap::new();
    let marks = Marks::of(e.metadata.annotations.as_ref().unwrap_or(&no_annotations));

    let mut records = Vec::new();
    let mut unmark = Vec::new();
    let mut sealed_fresh = false;
    let mut scrub = false;
    let mut last_code = None;
    let mut bootstrap = None;

    let (original, mut corrupt) = match f.factor {
        FactorRead::Missing => (None, None),
        FactorRead::Found(x) => (Some(x.clone()), None),
        FactorRead::Corrupt(why) => (None, Some(why.clone())),
    };
    let mut factor = original.clone().unwrap_or_default();
    let mut replaced_corrupt = false;
    let new_pending = |allowed: Allowance| Pending {
        seed: Zeroizing::new(f.fresh_seed.to_vec()),
        key: key.to_owned(),
        allowed,
        since: now,
    };

    // Any key change voids what was sealed to another key.
    if let Some(p) = factor.pending.as_ref().filter(|p| p.key != key) {
        records.push(Record::warning(
            "PendingConfirmationVoided",
            "enrollment.voided",
            "key_changed",
            format!(
                "the enrollment's key changed to {fp} while a seed sealed to {} ({}) awaited confirmation: that seed is void",
                fingerprint(&p.key),
                p.allowed.describe()
            ),
        ));
        factor.pending = None;
    }
    if let Some(p) = factor.pending.as_ref().filter(|p| now >= p.since + window) {
        records.push(Record::warning(
            "PendingConfirmationExpired",
            "enrollment.expired",
            "expired",
            format!(
                "the seed sealed to key {fp} at {} was not confirmed within {}: it is void; run `kubectl stepup enroll` again",
                clock(p.since),
                stepup_core::grant::human(window)
            ),
        ));
        factor.pending = None;
    }

    // Unlock: the lockout and the failures behind it, nothing else.
    unlock(&marks, corrupt.is_some(), &mut factor.state, user, &mut records, &mut unmark);

    // An admin's approval: one seed, sealed to the one key they saw, within the window.
    if marks.approval_present() {
        unmark.extend([api::APPROVED_BY_ANNOTATION, api::APPROVED_KEY_ANNOTATION, api::APPROVED_AT_ANNOTATION]);
        match valid_approval(&marks, &fp, now, s) {
            Err(why) => records.push(Record::warning("ApprovalVoided", "enrollment.approval", "void", why)),
            Ok(admin) => {
                let already_pending = factor.pending.as_ref().is_some_and(|p| p.key == key);
                let already_enrolled =
                    corrupt.is_none() && factor.seed.is_some() && factor.seed_key.as_deref() == Some(key);
                if already_enrolled {
                    records.push(Record::normal(
                        "ApprovalUnneeded",
                        "enrollment.approval",
                        "unneeded",
                        format!("{admin} approved key {fp}, which is already the enrolled key: nothing changed"),
                    ));
                } else if !already_pending {
                    let reenrollment = factor.seed.is_some() || corrupt.is_some();
                    if corrupt.take().is_some() {
                        // The corrupt copy is evidence of tampering, already reported; the approval replaces it.
                        factor = Factor::default();
                        replaced_corrupt = true;
                    }
                    factor.pending = Some(new_pending(Allowance::Approval { by: admin.clone() }));
                    sealed_fresh = true;
                    let (reason, what) = if reenrollment {
                        ("ReenrollmentApproved", "a re-enrollment without the old authenticator")
                    } else {
                        ("EnrollmentApproved", "the first enrollment")
                    };
                    records.push(Record::normal(
                        reason,
                        "enrollment.approved",
                        "approved",
                        format!(
                            "{admin} approved {what} of key {fp}; the seed is sealed to that key and must be confirmed by {}",
                            clock(now + window)
                        ),
                    ));
                }
            }
        }
    }

    // A code in spec.confirmation.
    if !matches!(f.confirmation, Opened::Missing) {
        scrub = true;
        let refuse = |reason: &'static str, message: String| {
            (
                Record::warning("EnrollmentCodeRefused", "enrollment.code", reason_label(reason), message.clone()),
                CodeResult { accepted: false, reason, message },
            )
        };
        let outcome: Option<(Record, CodeResult)> = match f.confirmation {
            Opened::Missing => None,
            Opened::Plain => Some(refuse(
                "PlainCode",
                "the code was sent in the clear, which is refused: update kubectl-stepup (that code is spent; use the next one)".into(),
            )),
            Opened::Unreadable(why) => {
                Some(refuse("Unreadable", format!("the sealed code cannot be opened ({why}): update kubectl-stepup")))
            }
            Opened::Mismatch => Some(refuse(
                "BindingMismatch",
                format!("the code was sealed for another key or enrollment (this one now carries key {fp}): it does not count"),
            )),
            Opened::Code(code, purpose) => {
                if let Some(why) = &corrupt {
                    Some(refuse("FactorCorrupt", format!("no code is checked: the stored factor is corrupt ({why})")))
                } else if let Some(p) = factor.pending.clone().filter(|p| p.key == key) {
                    if *purpose != EnrollmentPurpose::Confirmation {
                        Some(refuse("WrongPurpose", "that code was sealed to allow a re-enrollment, not to confirm the new seed".into()))
                    } else {
                        let by_admin = p.allowed.by_admin();
                        let (verdict, next) = factor.state.judge_confirmation(s.verifier, &p.seed, code, now, s.limits, by_admin);
                        factor.state = next;
                        match verdict {
                            Verdict::Accepted { .. } | Verdict::AlreadyAccepted => {
                                let replaced = factor.seed.is_some();
                                if by_admin {
                                    // The factor the lockout protected is gone; the new one starts clean.
                                    factor.state = factor.state.unlocked();
                                }
                                factor.seed = Some(p.seed.clone());
                                factor.seed_key = Some(p.key.clone());
                                factor.pending = None;
                                if p.allowed == Allowance::Bootstrap {
                                    bootstrap = Some(BootstrapUse::Complete);
                                }
                                let message = format!(
                                    "enrolled key {fp} ({}){}",
                                    p.allowed.describe(),
                                    if replaced { "; the previous authenticator no longer works" } else { "" }
                                );
                                Some((
                                    Record::normal("EnrollmentConfirmed", "enrollment.confirmed", "enrolled", message.clone()),
                                    CodeResult { accepted: true, reason: "Accepted", message },
                                ))
                            }
                            v => Some(code_refusal(&v, "confirmation", user)),
                        }
                    }
                } else if factor.seed.is_some() && factor.seed_key.as_deref() != Some(key) && factor.pending.is_none() {
                    if *purpose != EnrollmentPurpose::Reenrollment {
                        Some(refuse(
                            "WrongPurpose",
                            "no seed is sealed to this key yet: a re-enrollment needs a code of the enrolled authenticator sealed for it".into(),
                        ))
                    } else {
                        let seed = factor.seed.clone().unwrap_or_default();
                        let attempt = format!("reenroll:{key}");
                        let (verdict, next) = factor.state.judge(s.verifier, &seed, code, &attempt, now, s.limits);
                        factor.state = next;
                        match verdict {
                            Verdict::Accepted { .. } | Verdict::AlreadyAccepted => {
                                factor.pending = Some(new_pending(Allowance::OldFactor));
                                sealed_fresh = true;
                                let message = format!(
                                    "a current code of the enrolled authenticator allowed key {fp}; confirm the new seed by {}",
                                    clock(now + window)
                                );
                                Some((
                                    Record::normal("ReenrollmentStarted", "enrollment.reenrollment", "allowed", message.clone()),
                                    CodeResult { accepted: true, reason: "Accepted", message },
                                ))
                            }
                            v => Some(code_refusal(&v, "re-enrollment", user)),
                        }
                    }
                } else {
                    // Nothing waits for a code (already enrolled with this key, or waiting for
                    // an approval): the code is discarded unchecked.
                    Some(refuse("NotExpected", "no code was expected now; it was discarded unchecked".into()))
                }
            }
        };
        if let Some((record, result)) = outcome {
            records.push(record);
            last_code = Some(result);
        }
    }

    // A first authenticator that needs nobody's approval (none of any method held yet).
    if corrupt.is_none() && !factor.holds_an_authenticator() && factor.pending.is_none() {
        if s.self_service {
            factor.pending = Some(new_pending(Allowance::SelfService));
            sealed_fresh = true;
            records.push(Record::normal(
                "EnrollmentStarted",
                "enrollment.started",
                "self_service",
                format!(
                    "self-service enrollment: the seed is sealed to key {fp}, to be confirmed by {}",
                    clock(now + window)
                ),
            ));
        } else if e.spec.bootstrap
            && f.bootstrap.admits(user, now)
            && f.bootstrap.proven(user, &e.spec.public_key, e.spec.bootstrap_proof.as_deref())
        {
            factor.pending = Some(new_pending(Allowance::Bootstrap));
            sealed_fresh = true;
            bootstrap = Some(BootstrapUse::Claim { fingerprint: fp.clone() });
            records.push(Record::warning(
                "BootstrapUsed",
                "bootstrap.claimed",
                "claimed",
                format!(
                    "{user} enrolls through the one-time bootstrap, without a second admin: the seed is sealed to key {fp}, to be confirmed by {}",
                    clock(now + window)
                ),
            ));
        }
    }

    let (status, recheck_at) = desired(&factor, corrupt.as_deref(), f, s, &fp, sealed_fresh, last_code);
    if corrupt.is_some() && current_reason(e) != Some("FactorCorrupt") {
        records.push(Record::warning(
            "FactorCorrupt",
            "factor.corrupt",
            "corrupt",
            format!("{}: {}", api::factor_secret_name(user), corrupt.clone().unwrap_or_default()),
        ));
    }
    if status.phase == EnrollmentPhase::PendingApproval && current_phase(e) != Some(EnrollmentPhase::PendingApproval) {
        records.push(Record::normal(
            "EnrollmentPendingApproval",
            "enrollment.pending",
            "pending",
            status.message.clone(),
        ));
    }
    let changed = match &original {
        Some(o) => *o != factor,
        None => factor != Factor::default() || replaced_corrupt,
    };
    Step {
        bootstrap,
        factor: (changed && (corrupt.is_none())).then_some(factor),
        status,
        scrub_confirmation: scrub,
        unmark,
        records,
        recheck_at,
    }
}

pub(super) fn reason_label(reason: &'static str) -> &'static str {
    match reason {
        "PlainCode" => "plain_code",
        "Unreadable" => "unreadable",
        "BindingMismatch" => "binding_mismatch",
        "FactorCorrupt" => "corrupt",
        "WrongPurpose" => "wrong_purpose",
        "NotExpected" => "not_expected",
        "WrongCode" => "wrong",
        "Replayed" => "replayed",
        "CodeOutOfWindow" => "out_of_window",
        "Malformed" => "malformed",
        "RateLimited" => "rate_limited",
        "Locked" => "locked",
        _ => "refused",
    }
}

/// The record and result of a code the factor refused.
fn code_refusal(verdict: &Verdict, what: &str, user: &str) -> (Record, CodeResult) {
    let (reason, words) = refusal_words(verdict);
    match verdict {
        Verdict::Rejected { locked_now: true, .. } => {
            let message = format!(
                "{what} code refused ({words}); locked after too many failed codes: an admin must unlock it (`kubectl stepup unlock {user}`)"
            );
            (
                Record::warning("UserLocked", "enrollment.locked", "locked", message.clone()),
                CodeResult { accepted: false, reason, message },
            )
        }
        _ => {
            let message = format!("{what} code refused: {words}");
            (
                Record::warning("EnrollmentCodeRefused", "enrollment.code", reason_label(reason), message.clone()),
                CodeResult { accepted: false, reason, message },
            )
        }
    }
}

pub(super) fn current_phase(e: &StepUpEnrollment) -> Option<EnrollmentPhase> {
    e.status.as_ref().and_then(|s| s.phase)
}

pub(super) fn current_reason(e: &StepUpEnrollment) -> Option<&str> {
    e.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.as_str())
}

/// The truth about the factor, for the status; and when it changes by itself.
fn desired(
    factor: &Factor,
    corrupt: Option<&str>,
    f: &Facts<'_>,
    s: &EnrollmentSettings<'_>,
    fp: &str,
    sealed_fresh: bool,
    last_code: Option<CodeResult>,
) -> (Desired, Option<Timestamp>) {
    let e = f.enrollment;
    let user = e.spec.user.as_str();
    let key = e.spec.public_key.as_str();
    let now = f.now;
    let state = &factor.state;
    let mut d = Desired {
        phase: EnrollmentPhase::PendingApproval,
        reason: "PendingApproval",
        message: String::new(),
        key_fingerprint: fp.to_owned(),
        enrolled_key_fingerprint: factor.seed_key.as_deref().filter(|_| factor.seed.is_some()).map(fingerprint),
        response_key: s.response_key.to_owned(),
        failures: state.consecutive_failures,
        locked_at: state.locked_at,
        locked_until: None,
        confirm_by: None,
        sealed: Sealed::Clear,
        credentials: Vec::new(),
        last_code,
    };
    let reset_hint =
        format!("an admin can allow a re-enrollment of this key: `kubectl stepup reset {user} --key {fp}`");
    if let Some(why) = corrupt {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "FactorCorrupt";
        d.message = format!("no code is checked: the stored factor failed its integrity check ({why}); {reset_hint}");
        d.enrolled_key_fingerprint = None;
        d.failures = 0;
        d.locked_at = None;
        return (d, None);
    }
    let rate_limited = state.rate_limited_until(now, s.limits);
    if let Some(p) = factor.pending.as_ref().filter(|p| p.key == key) {
        let by = p.since + s.approval_window;
        d.phase = EnrollmentPhase::AwaitingConfirmation;
        d.reason = "AwaitingConfirmation";
        d.confirm_by = Some(by);
        d.sealed = if sealed_fresh { Sealed::Fresh } else { Sealed::Keep };
        d.message = format!(
            "scan the QR code and confirm with the first code by {} (key {fp}, {})",
            clock(by),
            p.allowed.describe()
        );
        if let Some(until) = rate_limited {
            d.locked_until = Some(until);
            d.message.push_str(&format!("; too many failed codes: codes are checked again at {}", clock(until)));
            return (d, Some(until.min(by)));
        }
        return (d, Some(by));
    }
    if let Some(at) = state.locked_at {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "Locked";
        d.message = format!(
            "locked since {} after {} consecutive failed codes: no code is checked until an admin unlocks it (`kubectl stepup unlock {user}`)",
            clock(at),
            state.consecutive_failures
        );
        return (d, None);
    }
    if let Some(until) = rate_limited {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "RateLimited";
        d.locked_until = Some(until);
        // An absolute time only: the status is rewritten whenever its words change.
        d.message = format!(
            "too many failed codes within {}: no code is checked until {}, then it unlocks by itself",
            stepup_core::grant::human(s.limits.window),
            clock(until)
        );
        return (d, Some(until));
    }
    if factor.seed.is_some() {
        d.phase = EnrollmentPhase::Active;
        if factor.seed_key.as_deref() == Some(key) {
            d.reason = "Enrolled";
            d.message = format!("enrolled (key {fp})");
        } else {
            d.reason = "ReenrollmentRequested";
            d.message = format!(
                "the enrolled authenticator keeps working; the new key {fp} needs a current code of it \
                 (`kubectl stepup enroll --reenroll`), or {reset_hint}"
            );
        }
        return (d, None);
    }
    let approve = format!("`kubectl stepup approve {user} --key {fp}`");
    d.message = if e.spec.bootstrap && !s.self_service {
        let why = if f.bootstrap.admits(user, now) { Bootstrap::unproven() } else { f.bootstrap.refusal(user, now) };
        format!("waiting for an admin to approve key {fp} ({approve}): {why}")
    } else {
        format!("waiting for an admin to approve key {fp}: {approve}")
    };
    (d, None)
}

#[cfg(test)]
mod tests;
