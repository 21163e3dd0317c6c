//! The challenge's next step: whether a code earns a grant, decided from the challenge, the
//! user's other challenges, the stored factor and the time. Pure.
//!
//! The rules, each attempted as an attack in the tests:
//! - nothing is issued at or after the deadline less the allowed clock skew: a challenge the
//!   plugin gave up on never becomes a grant;
//! - a deleted (withdrawn) challenge never becomes a grant, and a grant issued for it in a race
//!   is revoked;
//! - a user over the limits is refused before anything is looked up;
//! - a code counts only in the challenge the user's own plugin sealed it for;
//! - an ID token counts only for a challenge that names its deadline (which, with the rest of
//!   the challenge, its nonce is bound to), and only as the identity provider's keys verify it.

use jiff::{SignedDuration, Timestamp};

use super::{Record, clock};
use crate::controller::{
    factor::{Factor, FactorRead, FactorState, KeyUse, Limits, Verdict, WebAuthnFactor},
    oidc::Refusal,
    webauthn::{PendingAuthentication, RelyingParty},
};
use stepup_core::{
    api::{self, ChallengePhase, Method, StepUpChallenge},
    grant::{Clock, sign_in_satisfies},
    limits::{ChallengeLimits, Load},
    policy::CompiledPolicy,
    verify::{Rejection, Verifier, oidc::SignIn, response::Opened},
};

/// Everything the decision reads; what is `None` has not been fetched yet.
pub struct Facts<'a> {
    pub challenge: &'a StepUpChallenge,
    /// `spec.response`, opened and checked against this challenge's binding.
    pub response: &'a Opened<()>,
    /// The same user's challenges created before this one, from the controller's cache.
    pub load: Load,
    pub factor: Option<&'a FactorRead>,
    /// For a withdrawn challenge: whether the grant named after it exists.
    pub grant_exists: Option<bool>,
    /// For an `OIDC` challenge: the ID token in its response, verified.
    pub sign_in: Option<&'a Result<SignIn, Refusal>>,
    /// The policies accepting `OIDC` that the challenge's grant would be for (its scope's, or
    /// all): a sign-in none of them accepts is refused, not made a useless grant.
    pub oidc_policies: &'a [CompiledPolicy],
    /// For a `WebAuthn` challenge: an authentication ceremony started for the person's keys,
    /// offered if none is yet.
    pub fresh_ceremony: Option<&'a (String, PendingAuthentication)>,
    pub now: Timestamp,
}

pub struct ChallengeSettings<'a> {
    /// No challenge waits longer than this, whatever deadline it names.
    pub timeout: SignedDuration,
    /// Finished challenges are deleted this long after creation.
    pub ttl: SignedDuration,
    pub max_clock_skew: SignedDuration,
    pub limits: Limits,
    pub load_limits: ChallengeLimits,
    pub verifier: &'a dyn Verifier,
    pub relying_party: &'a RelyingParty,
}

/// What to look up before deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Factor,
    Grant,
    /// The ID token verified with the identity provider's keys.
    SignIn,
    /// A fresh authentication ceremony for the person's security keys.
    Ceremony,
}

/// A verdict to record, in this order: the factor state (so a code is spent before anything is
/// issued), the grant if `issue`, the status, then the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    pub phase: ChallengePhase,
    pub reason: &'static str,
    pub message: String,
    /// The `result` label of `stepup_challenges_total` and the audit line.
    pub result: &'static str,
    pub state: Option<FactorState>,
    /// The person's security keys after this verdict (a ceremony spent, a counter moved).
    pub webauthn: Option<Box<WebAuthnFactor>>,
    /// For `WebAuthn`: the key that answered, recorded in the grant.
    pub security_key: Option<KeyUse>,
    pub issue: bool,
    /// The last moment a grant may be issued; the executor checks again right before issuing.
    pub issue_before: Timestamp,
    /// Further evidence (a lockout, a corrupt factor).
    pub records: Vec<Record>,
    /// The verified sign-in an `OIDC` grant records; spent before the grant is issued.
    pub sign_in: Option<Box<SignIn>>,
}

impl Verdicts {
    /// A verdict that issues nothing and records nothing beyond itself; callers add the rest.
    pub fn new(
        phase: ChallengePhase,
        reason: &'static str,
        message: String,
        result: &'static str,
        issue_before: Timestamp,
    ) -> Self {
        Self {
            phase,
            reason,
            message,
            result,
            state: None,
            webauthn: None,
            security_key: None,
            issue: false,
            issue_before,
            records: vec![],
            sign_in: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Look this up, then decide again.
    Fetch(Need),
    /// Add the withdrawal finalizer before anything else, so a deletion waits for the controller.
    Claim,
    /// `WebAuthn`: keep the ceremony (if new) in the person's factor, show its options (if not
    /// shown), and wait for the answer until `recheck_at`.
    Offer {
        webauthn: Option<Box<WebAuthnFactor>>,
        options: Option<String>,
        recheck_at: Timestamp,
    },
    Verdict(Verdicts),
    /// Deleted before a verdict: revoke the grant a race may have issued, record, let it go.
    Withdrawn {
        revoke: bool,
        record: Option<Record>,
    },
    /// Finished: scrub what is left; delete it once `delete_at` has passed.
    Retire {
        scrub: bool,
        delete_at: Timestamp,
    },
    /// Nothing to do.
    Idle,
}

fn phase(c: &StepUpChallenge) -> ChallengePhase {
    c.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn created(c: &StepUpChallenge, now: Timestamp) -> Timestamp {
    c.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now)
}

/// The challenge's own deadline, never later than the controller's timeout.
pub fn deadline(c: &StepUpChallenge, timeout: SignedDuration, now: Timestamp) -> Timestamp {
    let latest = created(c, now) + timeout;
    c.spec.deadline.as_ref().map_or(latest, |d| d.0.min(latest))
}

/// Whether a grant may still be issued at `now`: the plugin could have given up at the
/// deadline by a clock running `skew` ahead of ours.
pub fn may_issue(issue_before: Timestamp, skew: SignedDuration, now: Timestamp) -> bool {
    now + skew < issue_before
}

fn has_finalizer(c: &StepUpChallenge) -> bool {
    c.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == api::WITHDRAWAL_FINALIZER))
}

fn rejection_message(why: Rejection) -> &'static str {
    match why {
        Rejection::Malformed => "the code must be 6 digits",
        Rejection::Wrong => "wrong code: check the code and your device's clock, then try the next code",
        Rejection::Replayed => "this code was already used; wait for the next code",
        Rejection::OutOfWindow => {
            "that code is right for another time within 10 minutes, not now: type the code your app shows now; if you did, your device's clock is off"
        }
    }
}

/// Why a sign-in does not satisfy a policy, in a sign-in's words.
fn sign_in_why(e: &stepup_core::grant::Unsatisfied) -> String {
    use stepup_core::grant::{Unsatisfied, human};
    match e {
        Unsatisfied::TooOld { age, max_age } => {
            format!("you signed in {} ago and the policy accepts at most {}", human(*age), human(*max_age))
        }
        other => other.to_string(),
    }
}

/// A verified sign-in: a grant recording it, spent first.
fn verified(sign_in: &SignIn, issue_before: Timestamp) -> Step {
    Step::Verdict(Verdicts {
        issue: true,
        sign_in: Some(Box::new(sign_in.clone())),
        ..Verdicts::new(ChallengePhase::Verified, "Verified", String::new(), "verified", issue_before)
    })
}

/// The person's stored factor, or the step that fetches it or refuses for its want.
fn stored_factor<'a>(f: &Facts<'a>, user: &str, issue_before: Timestamp) -> Result<&'a Factor, Box<Step>> {
    let denied =
        |reason, message: String, result| Verdicts::new(ChallengePhase::Denied, reason, message, result, issue_before);
    match f.factor {
        None => Err(Box::new(Step::Fetch(Need::Factor))),
        Some(FactorRead::Missing) => Err(Box::new(Step::Verdict(denied(
            "NotEnrolled",
            format!(
                "{user} is not enrolled: run `kubectl stepup enroll{}` first",
                if f.challenge.spec.method == Method::WebAuthn { " --method WebAuthn" } else { "" }
            ),
            "not_enrolled",
        )))),
        Some(FactorRead::Corrupt(why)) => {
            let mut step = denied(
                "FactorCorrupt",
                format!(
                    "no code is checked: {user}'s stored factor failed its integrity check; an admin must allow a re-enrollment"
                ),
                "corrupt",
            );
            step.records.push(Record::warning(
                "FactorCorrupt",
                "factor.corrupt",
                "corrupt",
                format!("{}: {why}", api::factor_secret_name(user)),
            ));
            Err(Box::new(Step::Verdict(step)))
        }
        Some(FactorRead::Found(factor)) => Ok(factor),
    }
}

/// A lockout or the failure rate limit, which stop every method alike: reason, message, result.
fn held_back(
    state: &FactorState,
    user: &str,
    limits: Limits,
    now: Timestamp,
) -> Option<(&'static str, String, &'static str)> {
    if state.locked_at.is_some() {
        return Some((
            "Locked",
            format!(
                "verification for {user} is locked after too many failed attempts; ask an admin to run `kubectl stepup unlock {user}`"
            ),
            "locked",
        ));
    }
    state.rate_limited_until(now, limits).map(|until| {
        (
            "RateLimited",
            format!("too many failed attempts; try again in {}", stepup_core::grant::human(until.duration_since(now))),
            "rate_limited",
        )
    })
}

/// The next step for a challenge.
pub fn next_step(f: &Facts<'_>, s: &ChallengeSettings<'_>) -> Step {
    let c = f.challenge;
    let user = c.spec.user.as_str();
    let now = f.now;
    if c.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(c) {
            return Step::Idle;
        }
        if phase(c) != ChallengePhase::Pending {
            // A verdict was recorded before the deletion (its status write was conditional on
            // the challenge being unchanged): it stands, and the plugin saw or can see it.
            return Step::Withdrawn { revoke: false, record: None };
        }
        return match f.grant_exists {
            None => Step::Fetch(Need::Grant),
            Some(revoke) => Step::Withdrawn {
                revoke,
                record: Some(Record::normal(
                    "ChallengeWithdrawn",
                    "challenge.withdrawn",
                    "withdrawn",
                    if revoke {
                        format!(
                            "{user} withdrew the challenge before its verdict; the grant issued for it meanwhile is revoked"
                        )
                    } else {
                        format!("{user} withdrew the challenge before its verdict; no grant was issued for it")
                    },
                )),
            },
        };
    }
    if phase(c) != ChallengePhase::Pending {
        return Step::Retire { scrub: c.spec.response.is_some(), delete_at: created(c, now) + s.ttl };
    }
    if !has_finalizer(c) {
        return Step::Claim;
    }
    let issue_before = deadline(c, s.timeout, now);
    let verdict = |phase, reason, message: String, result| {
        Step::Verdict(Verdicts::new(phase, reason, message, result, issue_before))
    };
    let denied = |reason, message: String, result| verdict(ChallengePhase::Denied, reason, message, result);
    if !may_issue(issue_before, s.max_clock_skew, now) {
        return verdict(
            ChallengePhase::Expired,
            "Expired",
            format!(
                "not verified before its deadline ({}): the plugin stopped waiting, so no grant is issued",
                clock(issue_before)
            ),
            "expired",
        );
    }
    if let Err(refusal) = s.load_limits.check(&f.load, now) {
        return denied(refusal.reason(), refusal.to_string(), refusal.label());
    }
    if c.spec.method == Method::WebAuthn {
        let factor = match stored_factor(f, user, issue_before) {
            Ok(factor) => factor,
            Err(step) => return *step,
        };
        if factor.webauthn.keys.is_empty() {
            return denied(
                "NotEnrolled",
                format!("{user} has no security key registered: run `kubectl stepup enroll --method WebAuthn` first"),
                "not_enrolled",
            );
        }
        if let Some(refused) = held_back(&factor.state, user, s.limits, now) {
            return denied(refused.0, refused.1, refused.2);
        }
        if matches!(f.response, Opened::Missing) {
            return super::assertion::offer(f, factor, issue_before);
        }
    }
    let code = match f.response {
        Opened::Missing => return denied("NoCode", "no code was given".into(), "malformed"),
        Opened::Plain => {
            return denied(
                "PlainCode",
                "the code was sent in the clear, which is refused: update kubectl-stepup (that code is spent; use the next one)".into(),
                "plain_code",
            );
        }
        Opened::Unreadable(why) => {
            return denied(
                "Unsealed",
                format!("the sealed code cannot be opened ({why}): update kubectl-stepup"),
                "unreadable",
            );
        }
        Opened::Mismatch => {
            return denied(
                "BindingMismatch",
                "the sealed code was made for another challenge: a copied code is refused".into(),
                "binding_mismatch",
            );
        }
        Opened::Code(code, ()) => code,
    };
    if c.spec.method == Method::Oidc {
        if c.spec.deadline.is_none() {
            return denied(
                "NoDeadline",
                "an OIDC challenge must name its deadline (its ID token's nonce is bound to it): update kubectl-stepup"
                    .into(),
                "malformed",
            );
        }
        return match f.sign_in {
            None => Step::Fetch(Need::SignIn),
            Some(Err(refusal)) => denied(refusal.reason(), refusal.to_string(), refusal.label()),
            Some(Ok(sign_in)) if !f.oidc_policies.is_empty() => {
                let clock = Clock { now, max_skew: s.max_clock_skew };
                let judged: Vec<(&str, Result<(), stepup_core::grant::Unsatisfied>)> = f
                    .oidc_policies
                    .iter()
                    .map(|p| {
                        let verdict =
                            sign_in_satisfies(p, sign_in.acr.as_deref(), &sign_in.amr, sign_in.auth_time, clock);
                        (p.name.as_str(), verdict)
                    })
                    .collect();
                if judged.iter().any(|(_, v)| v.is_ok()) {
                    verified(sign_in, issue_before)
                } else {
                    let why: Vec<String> = judged
                        .iter()
                        .take(3)
                        .filter_map(|(name, v)| {
                            v.as_ref().err().map(|e| format!("policy {name:?}: {}", sign_in_why(e)))
                        })
                        .collect();
                    let message = match why.as_slice() {
                        [one] => format!("the sign-in does not satisfy {one}; sign in again as the policy asks"),
                        _ => format!(
                            "the sign-in satisfies none of the policies it is for ({}); sign in again as they ask",
                            why.join("; ")
                        ),
                    };
                    denied("AssuranceNotMet", message, "assurance")
                }
            }
            Some(Ok(sign_in)) => verified(sign_in, issue_before),
        };
    }
    if c.spec.method == Method::WebAuthn {
        return match stored_factor(f, user, issue_before) {
            Ok(factor) => super::assertion::judge(f, factor, code, s.relying_party, s.limits, issue_before),
            Err(step) => *step,
        };
    }
    if c.spec.method != Method::Totp || s.verifier.method() != c.spec.method {
        return denied("UnsupportedMethod", format!("method {} is not supported", c.spec.method), "unsupported");
    }
    let factor = match stored_factor(f, user, issue_before) {
        Ok(factor) => factor,
        Err(step) => return *step,
    };
    let Some(seed) = factor.seed.as_ref() else {
        return denied(
            "NotEnrolled",
            format!("{user}'s enrollment is not confirmed yet: finish `kubectl stepup enroll` first"),
            "not_enrolled",
        );
    };
    let attempt = c.metadata.uid.clone().unwrap_or_else(|| c.metadata.name.clone().unwrap_or_default());
    let (verdict, next) = factor.state.judge(s.verifier, seed, code, &attempt, now, s.limits);
    let state = (next != factor.state).then_some(next.clone());
    let mut out = Verdicts {
        phase: ChallengePhase::Denied,
        reason: "",
        message: String::new(),
        result: verdict.label(),
        state,
        webauthn: None,
        security_key: None,
        issue: false,
        issue_before,
        records: vec![],
        sign_in: None,
    };
    match verdict {
        Verdict::Accepted { .. } | Verdict::AlreadyAccepted => {
            out.phase = ChallengePhase::Verified;
            out.reason = "Verified";
            out.issue = true;
        }
        Verdict::Rejected { why, locked_now } => {
            out.reason = why.reason();
            out.message = rejection_message(why).to_owned();
            if locked_now {
                out.message = format!(
                    "{}. Too many failed attempts in a row: verification is now locked; ask an admin to run `kubectl stepup unlock {user}`",
                    out.message
                );
                out.records.push(Record::warning(
                    "UserLocked",
                    "enrollment.locked",
                    "locked",
                    format!(
                        "locked after {} consecutive failed codes; an admin must unlock it",
                        next.consecutive_failures
                    ),
                ));
            }
        }
        Verdict::RateLimited { retry_after } => {
            out.reason = "RateLimited";
            out.message = format!("too many failed attempts; try again in {}", stepup_core::grant::human(retry_after));
        }
        Verdict::Locked => {
            out.reason = "Locked";
            out.message = format!(
                "verification for {user} is locked after too many failed attempts; ask an admin to run `kubectl stepup unlock {user}`"
            );
        }
    }
    Step::Verdict(out)
}

#[cfg(test)]
mod tests;
