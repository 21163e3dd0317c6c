//! The next step of a `WebAuthn` challenge: offer the person's registered keys a fresh
//! ceremony, then judge the one answer. Pure: the relying party judges with the clock handed in.
//!
//! The rules, each attempted as an attack in the tests:
//! - a ceremony is offered once per challenge (its state stays in the person's factor, never
//!   in the challenge) and answered once: any answer, right or wrong, spends it;
//! - the answer counts only for this challenge's ceremony (a replay into another is refused),
//!   from this relying party's origin, signed by a key registered to this person now;
//! - a signature counter that does not move forward is a cloned key: refused, and the Event,
//!   audit line and metric say so;
//! - refusals count towards the person's rate limit and lockout, shared with every method;
//! - the key's new counter is stored before the grant is issued, with which key answered.

use jiff::Timestamp;

use super::{
    Record,
    challenge::{Facts, Need, Step, Verdicts},
    clock,
};
use crate::controller::{
    factor::{Ceremony, Factor, KeyUse},
    webauthn::{CEREMONY_TTL, PendingAuthentication, Refusal, RelyingParty},
};
use stepup_core::api::{ChallengePhase, StepUpChallenge};

/// What a challenge's uid is within the factor: the key of its ceremony.
fn attempt(c: &StepUpChallenge) -> String {
    c.metadata.uid.clone().unwrap_or_else(|| c.metadata.name.clone().unwrap_or_default())
}

/// Before an answer: the ceremony's options in the status, offered once.
pub fn offer(f: &Facts<'_>, factor: &Factor, issue_before: Timestamp) -> Step {
    let c = f.challenge;
    let uid = attempt(c);
    let shown = c.status.as_ref().and_then(|s| s.webauthn_options.as_deref());
    if let Some(ceremony) = factor.webauthn.ceremonies.get(&uid) {
        // Offered already: wait for the answer (or the deadline); show the options if a crash
        // came between keeping the ceremony and showing it.
        return Step::Offer {
            webauthn: None,
            options: (shown != Some(ceremony.options.as_str())).then(|| ceremony.options.clone()),
            recheck_at: issue_before,
        };
    }
    if factor.webauthn.last_verified.as_ref().is_some_and(|u| u.challenge_uid == uid) {
        // Answered and verified already; the verdict write did not happen yet.
        return Step::Offer { webauthn: None, options: None, recheck_at: issue_before };
    }
    let Some((options, pending)) = f.fresh_ceremony else { return Step::Fetch(Need::Ceremony) };
    let mut webauthn = factor.webauthn.clone();
    // Ceremonies nobody answered in time are forgotten as others are offered.
    webauthn.ceremonies.retain(|_, c| f.now < c.since + CEREMONY_TTL);
    webauthn.ceremonies.insert(uid, Ceremony { options: options.clone(), since: f.now, state: pending.to_json() });
    Step::Offer { webauthn: Some(Box::new(webauthn)), options: Some(options.clone()), recheck_at: issue_before }
}

/// The answer (the assertion's JSON, opened from its seal for this challenge), judged.
pub fn judge(
    f: &Facts<'_>,
    factor: &Factor,
    answer: &str,
    rp: &RelyingParty,
    limits: crate::controller::factor::Limits,
    issue_before: Timestamp,
) -> Step {
    let c = f.challenge;
    let user = c.spec.user.as_str();
    let uid = attempt(c);
    let now = f.now;
    let denied = |reason, message: String, result| {
        Step::Verdict(Verdicts::new(ChallengePhase::Denied, reason, message, result, issue_before))
    };
    if let Some(used) = factor.webauthn.last_verified.as_ref().filter(|u| u.challenge_uid == uid) {
        // The key's counter is stored; issue as then (a retry after a crash).
        let mut v = Verdicts::new(ChallengePhase::Verified, "Verified", String::new(), "verified", issue_before);
        v.issue = true;
        v.security_key = Some(used.clone());
        return Step::Verdict(v);
    }
    let Some(ceremony) = factor.webauthn.ceremonies.get(&uid) else {
        return denied(
            "NoCeremony",
            "no security-key prompt is open for this challenge (answered already, or offered too long ago): run `kubectl stepup request --method WebAuthn` again".into(),
            "no_ceremony",
        );
    };
    let mut webauthn = factor.webauthn.clone();
    webauthn.ceremonies.remove(&uid);
    let keys = super::security_keys::credentials(factor);
    let judged = PendingAuthentication::from_json(&ceremony.state)
        .and_then(|pending| rp.finish_authentication(pending, user, answer, &keys, now));
    match judged {
        Ok(verified) => {
            for k in webauthn.keys.iter_mut().filter(|k| k.id_hash == verified.credential_id_hash) {
                k.credential = verified.updated.to_json();
            }
            let used = KeyUse {
                challenge_uid: uid,
                id_hash: verified.credential_id_hash.clone(),
                user_verified: verified.user_verified,
            };
            webauthn.last_verified = Some(used.clone());
            let mut state = factor.state.clone();
            state.consecutive_failures = 0;
            let mut v = Verdicts::new(ChallengePhase::Verified, "Verified", String::new(), "verified", issue_before);
            v.state = (state != factor.state).then_some(state);
            v.webauthn = Some(Box::new(webauthn));
            v.security_key = Some(used);
            v.issue = true;
            Step::Verdict(v)
        }
        Err(refusal) => {
            let mut state = factor.state.clone();
            state.recent_failures.push(now.as_second());
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let locked_now = state.consecutive_failures >= limits.lockout_after && state.locked_at.is_none();
            if locked_now {
                state.locked_at = Some(now);
            }
            let mut v = Verdicts::new(
                ChallengePhase::Denied,
                refusal_reason(&refusal),
                refusal.to_string(),
                refusal.label(),
                issue_before,
            );
            if let Refusal::ClonedAuthenticator { stored, presented } = refusal {
                v.records.push(Record::warning(
                    "ClonedAuthenticator",
                    "factor.cloned",
                    "cloned_authenticator",
                    format!(
                        "{user}'s security key answered with signature counter {presented}, not above the {stored} stored: it may be a clone; the answer is refused. Remove that key from {user}'s enrollment if {user} did not make this request"
                    ),
                ));
            }
            if locked_now {
                v.message = format!(
                    "{}. Too many failed attempts in a row: verification is now locked; ask an admin to run `kubectl stepup unlock {user}`",
                    v.message
                );
                v.records.push(Record::warning(
                    "UserLocked",
                    "enrollment.locked",
                    "locked",
                    format!(
                        "locked after {} consecutive failed attempts (at {}); an admin must unlock it",
                        state.consecutive_failures,
                        clock(now)
                    ),
                ));
            }
            v.state = Some(state);
            v.webauthn = Some(Box::new(webauthn));
            Step::Verdict(v)
        }
    }
}

/// The `Verified` condition's reason for a refused answer.
fn refusal_reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::Malformed(_) => "Malformed",
        Refusal::Expired(_) => "CeremonyExpired",
        Refusal::OtherUser { .. } => "OtherUser",
        Refusal::WrongOrigin => "WrongOrigin",
        Refusal::OtherChallenge => "OtherChallenge",
        Refusal::UnknownCredential => "UnknownKey",
        Refusal::ClonedAuthenticator { .. } => "ClonedAuthenticator",
        Refusal::UserNotVerified => "UserNotVerified",
        Refusal::UserNotPresent => "UserNotPresent",
        Refusal::BadSignature => "BadSignature",
        Refusal::NoCredential => "NotEnrolled",
        Refusal::AlreadyRegistered => "AlreadyRegistered",
        Refusal::Other(_) => "Refused",
    }
}
