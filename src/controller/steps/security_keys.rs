//! The next step of a `WebAuthn` enrollment: who may register which security key or passkey
//! to a person, decided from the enrollment, the stored factor, the bootstrap and the time.
//! Pure: the relying party judges the browser's answer with the clock handed in.
//!
//! The same allowances as TOTP's, and the same binding: the registration options (whose
//! challenge the answer must sign) are sealed to the enrollment key an admin approved by
//! fingerprint (or that self-service or the one-time bootstrap allows), so only the plugin
//! that holds that key can register a credential. The rules, each attempted as an attack in
//! the tests:
//! - options are sealed only to an allowed key, once per allowance, and any change of
//!   `spec.publicKey` voids them; they count within the approval window;
//! - a credential counts only for the very enrollment, key and ceremony it was made for, from
//!   this relying party's origin; a credential registered already is refused;
//! - each allowance adds one key and never removes one; the lockout is the person's, shared
//!   with every method.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    Record,
    bootstrap::Bootstrap,
    clock,
    enrollment::{
        BootstrapUse, CodeResult, Desired, EnrollmentSettings, Marks, Sealed, Step, current_phase, current_reason,
        reason_label, unlock, valid_approval,
    },
};
use crate::controller::{
    factor::{Allowance, Factor, FactorRead, PendingKey, RegisteredKey},
    webauthn::{PendingRegistration, RelyingParty, StoredCredential},
};
use stepup_core::{
    api::{self, EnrollmentPhase, Method, StepUpEnrollment},
    verify::{response::EnrollmentPurpose, response::Opened, seal::fingerprint},
};

/// Everything the decision reads.
pub struct Facts<'a> {
    pub enrollment: &'a StepUpEnrollment,
    pub factor: &'a FactorRead,
    /// `spec.confirmation`, opened and checked against this enrollment's bindings.
    pub confirmation: &'a Opened<EnrollmentPurpose>,
    pub bootstrap: &'a Bootstrap,
    /// A registration ceremony started for this step (options for the browser, the state),
    /// used if this step allows a key.
    pub fresh: &'a (String, PendingRegistration),
    /// The grant named by [`api::VOUCHING_GRANT_ANNOTATION`], as read and its signature checked
    /// (`Err`: why it cannot vouch, e.g. not found or not signed by the controller).
    pub voucher: Option<&'a Result<Voucher, String>>,
    /// The grant named by [`api::REMOVAL_GRANT_ANNOTATION`], read as `voucher` is.
    pub remover: Option<&'a Result<Voucher, String>>,
    pub now: Timestamp,
}

/// A grant offered to vouch for a new key, with a valid signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voucher {
    pub name: String,
    pub user: String,
    pub method: Method,
    pub issued_at: Timestamp,
    pub reason: Option<String>,
    pub scope: api::GrantScope,
    pub revoked: bool,
}

/// How long after its issue a grant vouches for a new key.
pub const VOUCH_MAX_AGE: SignedDuration = SignedDuration::from_mins(15);

/// What a grant offered as proof must have been requested for.
struct Purpose<'a> {
    /// The grant's one scope policy (one no policy is named).
    scope: &'a str,
    /// The signed reason, naming the one key it is for.
    reason: String,
    /// For messages: "register a security key".
    what: &'a str,
    /// For messages: "another enrollment key, not …".
    other: String,
    /// The factors whose grants count, and why others do not.
    methods: &'a [Method],
    only: &'a str,
}

/// Whether `offered` is a proof of `user`'s current factor asked for exactly `purpose`: their
/// own, unrevoked, from a factor enrolled here, fresh, with the purpose's scope and reason.
fn proven<'v>(
    offered: Option<&'v Result<Voucher, String>>,
    user: &str,
    purpose: &Purpose<'_>,
    now: Timestamp,
    skew: SignedDuration,
) -> Result<&'v Voucher, String> {
    let v = match offered {
        None => return Err("it could not be read".into()),
        Some(Err(why)) => return Err(why.clone()),
        Some(Ok(v)) => v,
    };
    if v.user != user {
        return Err(format!("it is {:?}'s grant, not {user:?}'s", v.user));
    }
    if v.revoked {
        return Err("it was revoked".into());
    }
    if !purpose.methods.contains(&v.method) {
        return Err(format!("a {} grant does not count: {}", v.method, purpose.only));
    }
    if v.scope.policies != [purpose.scope] || !v.scope.namespaces.is_empty() {
        return Err(format!("it was not requested to {} (a grant for other work never counts)", purpose.what));
    }
    if v.reason.as_deref() != Some(purpose.reason.as_str()) {
        return Err(format!("it was requested for {}", purpose.other));
    }
    let age = now.duration_since(v.issued_at);
    if age > VOUCH_MAX_AGE || -age > skew {
        return Err(format!(
            "it was issued {} ago; such a grant counts for {}",
            stepup_core::grant::human(age),
            stepup_core::grant::human(VOUCH_MAX_AGE)
        ));
    }
    Ok(v)
}

/// Whether `voucher` lets `user` register a key through enrollment key `fp`: a proof asked for
/// exactly this, not used before.
fn vouch(
    voucher: Option<&Result<Voucher, String>>,
    user: &str,
    fp: &str,
    factor: &Factor,
    now: Timestamp,
    skew: SignedDuration,
) -> Result<Allowance, String> {
    let purpose = Purpose {
        scope: api::VOUCH_SCOPE,
        reason: api::vouch_reason(fp),
        what: "register a security key",
        other: format!("another enrollment key, not {fp}"),
        // A key outlasts a code: a phished TOTP code must not become a key that then passes
        // the policies that demand one.
        methods: &[Method::WebAuthn],
        only: "only a registered security key vouches for another (or an admin's approval)",
    };
    let v = proven(voucher, user, &purpose, now, skew)?;
    let allowance = Allowance::Grant { name: v.name.clone(), method: v.method.to_string() };
    let used =
        factor.webauthn.keys.iter().map(|k| &k.allowed).chain(factor.webauthn.pending.iter().map(|p| &p.allowed));
    if used.into_iter().any(|a| matches!(a, Allowance::Grant { name, .. } if *name == v.name)) {
        return Err("it vouched for a key already: each grant vouches once".into());
    }
    Ok(allowance)
}

/// Who removes key `id` from `user`'s enrollment, from the marks beside the removal: an admin
/// in their own name (the webhook holds them to it, and to their step-up), or the person with
/// a proof of a current factor asked for removing exactly this key. `Err`: why nobody does.
fn remover(
    marks: &BTreeMap<String, String>,
    offered: Option<&Result<Voucher, String>>,
    user: &str,
    id: &str,
    now: Timestamp,
    skew: SignedDuration,
) -> Result<String, String> {
    if let Some(admin) = marks.get(api::REMOVED_BY_ANNOTATION) {
        return Ok(format!("admin {admin}"));
    }
    if !marks.contains_key(api::REMOVAL_GRANT_ANNOTATION) {
        return Err(format!(
            "removing a key needs a fresh grant of {user}'s asked for it (`kubectl stepup remove-key` obtains one with a registered key or the authenticator app) or an admin (`kubectl stepup remove-key KEY --user {user}`)"
        ));
    }
    let purpose = Purpose {
        scope: api::REMOVE_KEY_SCOPE,
        reason: api::removal_reason(id),
        what: "remove a security key",
        other: format!("another key, not {id}"),
        methods: &[Method::Totp, Method::WebAuthn],
        only: "it proves no factor enrolled here (TOTP or a security key)",
    };
    let v = proven(offered, user, &purpose, now, skew)?;
    Ok(format!("{user} ({} grant {})", v.method, v.name))
}

/// The stored credentials, as the relying party reads them.
pub fn credentials(factor: &Factor) -> Vec<StoredCredential> {
    factor.webauthn.keys.iter().filter_map(|k| StoredCredential::from_json(&k.credential).ok()).collect()
}

/// The next step for a `WebAuthn` enrollment.
pub fn next_step(f: &Facts<'_>, s: &EnrollmentSettings<'_>, rp: &RelyingParty) -> Step {
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
    let new_pending = |allowed: Allowance| PendingKey {
        key: key.to_owned(),
        allowed,
        since: now,
        options: f.fresh.0.clone(),
        ceremony: f.fresh.1.to_json(),
    };

    // Any key change voids the options sealed to another key.
    if let Some(p) = factor.webauthn.pending.as_ref().filter(|p| p.key != key) {
        records.push(Record::warning(
            "PendingConfirmationVoided",
            "enrollment.voided",
            "key_changed",
            format!(
                "the enrollment's key changed to {fp} while a security-key registration sealed to {} ({}) was pending: it is void",
                fingerprint(&p.key),
                p.allowed.describe()
            ),
        ));
        factor.webauthn.pending = None;
    }
    if let Some(p) = factor.webauthn.pending.as_ref().filter(|p| now >= p.since + window) {
        records.push(Record::warning(
            "PendingConfirmationExpired",
            "enrollment.expired",
            "expired",
            format!(
                "the security-key registration allowed for key {fp} at {} was not completed within {}: it is void; run `kubectl stepup enroll --method WebAuthn` again",
                clock(p.since),
                stepup_core::grant::human(window)
            ),
        ));
        factor.webauthn.pending = None;
    }

    unlock(&marks, corrupt.is_some(), &mut factor.state, user, &mut records, &mut unmark);

    // An admin's approval: one registration, through the one key they saw, within the window.
    if marks.approval_present() {
        unmark.extend([api::APPROVED_BY_ANNOTATION, api::APPROVED_KEY_ANNOTATION, api::APPROVED_AT_ANNOTATION]);
        match valid_approval(&marks, &fp, now, s) {
            Err(why) => records.push(Record::warning("ApprovalVoided", "enrollment.approval", "void", why)),
            Ok(admin) => {
                let already_pending = factor.webauthn.pending.as_ref().is_some_and(|p| p.key == key);
                let already_used = corrupt.is_none() && factor.webauthn.keys.iter().any(|k| k.key == key);
                if already_used {
                    records.push(Record::normal(
                        "ApprovalUnneeded",
                        "enrollment.approval",
                        "unneeded",
                        format!("{admin} approved key {fp}, through which a security key is already registered: nothing changed (each new key is enrolled with a new `kubectl stepup enroll --method WebAuthn`)"),
                    ));
                } else if !already_pending {
                    if corrupt.take().is_some() {
                        // The corrupt copy is evidence of tampering, already reported; the approval replaces it.
                        factor = Factor::default();
                        replaced_corrupt = true;
                    }
                    let another = !factor.webauthn.keys.is_empty();
                    factor.webauthn.pending = Some(new_pending(Allowance::Approval { by: admin.clone() }));
                    sealed_fresh = true;
                    records.push(Record::normal(
                        "EnrollmentApproved",
                        "enrollment.approved",
                        "approved",
                        format!(
                            "{admin} approved registering {} security key through key {fp}; the registration is sealed to that key and must be completed by {}",
                            if another { "another" } else { "a first" },
                            clock(now + window)
                        ),
                    ));
                }
            }
        }
    }

    // A key removed: it answers nothing from now on (an open ceremony included: answers are
    // judged against the keys registered when they arrive).
    let annotations = e.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    if let Some(wanted) = annotations.get(api::REMOVE_KEY_ANNOTATION) {
        unmark.push(api::REMOVE_KEY_ANNOTATION);
        unmark.extend(
            [api::REMOVAL_GRANT_ANNOTATION, api::REMOVED_BY_ANNOTATION]
                .into_iter()
                .filter(|k| annotations.contains_key(*k)),
        );
        let wanted = wanted.trim().to_ascii_lowercase();
        let found = factor.webauthn.keys.iter().position(|k| k.id_hash == wanted).filter(|_| corrupt.is_none());
        match (found, remover(annotations, f.remover, user, &wanted, now, s.max_clock_skew)) {
            (None, _) => records.push(Record::normal(
                "SecurityKeyRemoved",
                "enrollment.key_removed",
                "not_found",
                format!("no registered security key {wanted:?} to remove from {user}'s enrollment: nothing changed"),
            )),
            (Some(_), Err(why)) => records.push(Record::warning(
                "SecurityKeyRemovalRefused",
                "enrollment.key_removal_refused",
                "refused",
                format!("security key {wanted} stays registered to {user}: {why}"),
            )),
            (Some(i), Ok(by)) => {
                let removed = factor.webauthn.keys.remove(i);
                // Normal, not a warning: only the person's fresh factor or an admin removes a
                // key, so removals cannot flood, and each Event is published (warnings are
                // rate-limited per person).
                records.push(Record::normal(
                    "SecurityKeyRemoved",
                    "enrollment.key_removed",
                    "removed",
                    format!(
                        "security key {} ({}, registered {}) removed from {user}'s enrollment by {by}; {} left",
                        removed.id_hash,
                        removed.allowed.describe(),
                        clock(removed.registered_at),
                        keys_registered(factor.webauthn.keys.len())
                    ),
                ));
            }
        }
    }

    // A current factor of the person's vouching, through a fresh grant asked for this key.
    if let Some(name) = e.metadata.annotations.as_ref().and_then(|a| a.get(api::VOUCHING_GRANT_ANNOTATION)) {
        unmark.push(api::VOUCHING_GRANT_ANNOTATION);
        let already_pending = factor.webauthn.pending.as_ref().is_some_and(|p| p.key == key);
        match (corrupt.as_ref(), already_pending) {
            (Some(why), _) => records.push(Record::warning(
                "VouchRefused",
                "enrollment.vouch",
                "corrupt",
                format!("grant {name} cannot vouch: the stored factor is corrupt ({why}); an admin must approve"),
            )),
            (None, true) => {}
            (None, false) => match vouch(f.voucher, user, &fp, &factor, now, s.max_clock_skew) {
                Err(why) => records.push(Record::warning(
                    "VouchRefused",
                    "enrollment.vouch",
                    "refused",
                    format!("grant {name} does not allow a security key through key {fp}: {why}"),
                )),
                Ok(allowance) => {
                    let what = allowance.describe();
                    factor.webauthn.pending = Some(new_pending(allowance));
                    sealed_fresh = true;
                    records.push(Record::normal(
                        "EnrollmentVouched",
                        "enrollment.vouched",
                        "grant",
                        format!(
                            "registering a security key through key {fp} is {what} (a current factor); complete it by {}",
                            clock(now + window)
                        ),
                    ));
                }
            },
        }
    }

    // A credential in spec.confirmation.
    if !matches!(f.confirmation, Opened::Missing) {
        scrub = true;
        let refuse = |reason: &'static str, result: &'static str, message: String| {
            (
                Record::warning("EnrollmentCodeRefused", "enrollment.code", result, message.clone()),
                CodeResult { accepted: false, reason, message },
            )
        };
        let outcome = match f.confirmation {
            Opened::Missing => None,
            Opened::Plain => Some(refuse(
                "PlainCode",
                reason_label("PlainCode"),
                "a plain code was sent to a security-key enrollment: update kubectl-stepup".into(),
            )),
            Opened::Unreadable(why) => Some(refuse(
                "Unreadable",
                reason_label("Unreadable"),
                format!("the sealed credential cannot be opened ({why}): update kubectl-stepup"),
            )),
            Opened::Mismatch => Some(refuse(
                "BindingMismatch",
                reason_label("BindingMismatch"),
                format!(
                    "the credential was sealed for another key or enrollment (this one now carries key {fp}): it does not count"
                ),
            )),
            Opened::Code(answer, purpose) => {
                if let Some(why) = &corrupt {
                    Some(refuse(
                        "FactorCorrupt",
                        "corrupt",
                        format!("no credential is registered: the stored factor is corrupt ({why})"),
                    ))
                } else if *purpose != EnrollmentPurpose::KeyRegistration {
                    Some(refuse(
                        "WrongPurpose",
                        "wrong_purpose",
                        "that was sealed as a code, not as a security key's registration".into(),
                    ))
                } else if let Some(p) = factor.webauthn.pending.clone().filter(|p| p.key == key) {
                    let existing = credentials(&factor);
                    let judged = PendingRegistration::from_json(&p.ceremony)
                        .and_then(|ceremony| rp.finish_registration(&ceremony, user, answer, &existing, now, window));
                    match judged {
                        Ok(credential) => {
                            let registered = RegisteredKey {
                                id_hash: credential.id_hash(),
                                registered_at: now,
                                allowed: p.allowed.clone(),
                                key: p.key.clone(),
                                user_verified: credential.user_verified_at_registration(),
                                credential: credential.to_json(),
                            };
                            if p.allowed.by_admin() && factor.webauthn.keys.is_empty() {
                                factor.state = factor.state.unlocked();
                            }
                            factor.webauthn.keys.push(registered);
                            factor.webauthn.pending = None;
                            if p.allowed == Allowance::Bootstrap {
                                bootstrap = Some(BootstrapUse::Complete);
                            }
                            let message = format!(
                                "registered security key {} through key {fp} ({}); {} registered",
                                credential.id_hash(),
                                p.allowed.describe(),
                                keys_registered(factor.webauthn.keys.len())
                            );
                            Some((
                                Record::normal(
                                    "EnrollmentConfirmed",
                                    "enrollment.confirmed",
                                    "enrolled",
                                    message.clone(),
                                ),
                                CodeResult { accepted: true, reason: "Accepted", message },
                            ))
                        }
                        Err(refusal) => Some(refuse(
                            "KeyRefused",
                            refusal.label(),
                            format!("the security key's registration was refused: {refusal}"),
                        )),
                    }
                } else {
                    Some(refuse(
                        "NotExpected",
                        reason_label("NotExpected"),
                        "no security-key registration was expected now; it was discarded unchecked".into(),
                    ))
                }
            }
        };
        if let Some((record, result)) = outcome {
            records.push(record);
            last_code = Some(result);
        }
    }

    // A first authenticator that needs nobody's approval (none of any method held yet).
    if corrupt.is_none() && !factor.holds_an_authenticator() && factor.webauthn.pending.is_none() {
        if s.self_service {
            factor.webauthn.pending = Some(new_pending(Allowance::SelfService));
            sealed_fresh = true;
            records.push(Record::normal(
                "EnrollmentStarted",
                "enrollment.started",
                "self_service",
                format!(
                    "self-service enrollment: a security-key registration is sealed to key {fp}, to be completed by {}",
                    clock(now + window)
                ),
            ));
        } else if e.spec.bootstrap
            && f.bootstrap.admits(user, now)
            && f.bootstrap.proven(user, &e.spec.public_key, e.spec.bootstrap_proof.as_deref())
        {
            factor.webauthn.pending = Some(new_pending(Allowance::Bootstrap));
            sealed_fresh = true;
            bootstrap = Some(BootstrapUse::Claim { fingerprint: fp.clone() });
            records.push(Record::warning(
                "BootstrapUsed",
                "bootstrap.claimed",
                "claimed",
                format!(
                    "{user} enrolls a security key through the one-time bootstrap, without a second admin: the registration is sealed to key {fp}, to be completed by {}",
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
        factor: (changed && corrupt.is_none()).then_some(factor),
        status,
        scrub_confirmation: scrub,
        unmark,
        records,
        recheck_at,
    }
}

fn keys_registered(n: usize) -> String {
    if n == 1 { "1 security key".into() } else { format!("{n} security keys") }
}

/// The truth about the person's security keys, for the status; and when it changes by itself.
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
    let method = Method::WebAuthn;
    let mut d = Desired {
        phase: EnrollmentPhase::PendingApproval,
        reason: "PendingApproval",
        message: String::new(),
        key_fingerprint: fp.to_owned(),
        enrolled_key_fingerprint: None,
        response_key: s.response_key.to_owned(),
        failures: state.consecutive_failures,
        locked_at: state.locked_at,
        locked_until: None,
        confirm_by: None,
        sealed: Sealed::Clear,
        credentials: factor
            .webauthn
            .keys
            .iter()
            .map(|k| api::EnrolledCredential {
                id_hash: k.id_hash.clone(),
                aaguid: None,
                registered_at: Time(k.registered_at),
                allowed: k.allowed.describe(),
                user_verified: k.user_verified,
            })
            .collect(),
        last_code,
    };
    let approve = format!("`kubectl stepup approve {user} --method {method} --key {fp}`");
    if let Some(why) = corrupt {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "FactorCorrupt";
        d.message = format!(
            "nothing is verified: the stored factor failed its integrity check ({why}); an admin can allow a new registration: {approve}"
        );
        d.credentials.clear();
        d.failures = 0;
        d.locked_at = None;
        return (d, None);
    }
    if let Some(p) = factor.webauthn.pending.as_ref().filter(|p| p.key == key) {
        let by = p.since + s.approval_window;
        d.phase = EnrollmentPhase::AwaitingConfirmation;
        d.reason = "AwaitingConfirmation";
        d.confirm_by = Some(by);
        d.sealed = if sealed_fresh { Sealed::Fresh } else { Sealed::Keep };
        d.message = format!(
            "touch your security key on the page `kubectl stepup enroll --method WebAuthn` opens, by {} (key {fp}, {})",
            clock(by),
            p.allowed.describe()
        );
        return (d, Some(by));
    }
    if let Some(at) = state.locked_at {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "Locked";
        d.message = format!(
            "locked since {} after {} consecutive failed attempts: nothing is verified until an admin unlocks it (`kubectl stepup unlock {user}`)",
            clock(at),
            state.consecutive_failures
        );
        return (d, None);
    }
    if let Some(until) = state.rate_limited_until(now, s.limits) {
        d.phase = EnrollmentPhase::Locked;
        d.reason = "RateLimited";
        d.locked_until = Some(until);
        d.message = format!(
            "too many failed attempts within {}: nothing is verified until {}, then it unlocks by itself",
            stepup_core::grant::human(s.limits.window),
            clock(until)
        );
        return (d, Some(until));
    }
    if !factor.webauthn.keys.is_empty() {
        d.phase = EnrollmentPhase::Active;
        d.reason = "Enrolled";
        let through_this = factor.webauthn.keys.iter().any(|k| k.key == key);
        d.message = if through_this {
            format!("enrolled: {} registered", keys_registered(factor.webauthn.keys.len()))
        } else {
            format!(
                "enrolled: {} registered; registering another through key {fp} needs an admin: {approve}",
                keys_registered(factor.webauthn.keys.len())
            )
        };
        return (d, None);
    }
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
