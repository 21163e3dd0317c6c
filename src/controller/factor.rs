//! A user's second factor as the controller keeps it: the TOTP seed (and a pending one during
//! enrollment) plus the replay, failure and lockout state, all in one Secret in the
//! controller's namespace, so that one optimistic-concurrency write (resourceVersion) records
//! a code's use before anything is issued. The judging is pure; the shell reads and writes.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::verify::{Rejection, Verifier};

/// Brute-force limits (NIST SP 800-63B allows at most 100 consecutive failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Failures tolerated within `window` before further attempts are refused unchecked.
    pub max_failures: u32,
    pub window: SignedDuration,
    /// Consecutive failures after which the user is locked until an admin resets them.
    pub lockout_after: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_failures: 5, window: SignedDuration::from_mins(5), lockout_after: 10 }
    }
}

/// Replay, failure and lockout state. Stored as JSON in the Secret (never a seed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FactorState {
    /// The last accepted TOTP time step; it and every earlier step are spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
    /// What spent `last_step` (a challenge UID, or `enrollment`), so that a retry of the same
    /// challenge after a crash is recognised rather than refused as a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_by: Option<String>,
    /// Unix seconds of failures inside the rate-limit window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_failures: Vec<i64>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<Timestamp>,
    /// An admin reset allows one re-enrollment without a code from the old device.
    #[serde(default)]
    pub reenroll_allowed: bool,
}

/// The outcome of judging one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Right code, first use: record the new state, then act.
    Accepted {
        step: u64,
    },
    /// This very attempt was accepted before (the controller restarted after recording it).
    AlreadyAccepted,
    Rejected {
        why: Rejection,
        locked_now: bool,
    },
    /// Too many recent failures: refused without looking at the code.
    RateLimited {
        retry_after: SignedDuration,
    },
    Locked,
}

impl Verdict {
    /// Low-cardinality result label for metrics and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Accepted { .. } | Verdict::AlreadyAccepted => "verified",
            Verdict::Rejected { why, .. } => why.as_str(),
            Verdict::RateLimited { .. } => "rate_limited",
            Verdict::Locked => "locked",
        }
    }
}

impl FactorState {
    /// Judges `response` for the attempt `attempt_id` and returns the state to record.
    /// The caller must persist the new state (with optimistic concurrency) before acting.
    pub fn judge(
        &self,
        verifier: &dyn Verifier,
        seed: &[u8],
        response: &str,
        attempt_id: &str,
        now: Timestamp,
        limits: Limits,
    ) -> (Verdict, FactorState) {
        if self.last_used_by.as_deref() == Some(attempt_id) {
            return (Verdict::AlreadyAccepted, self.clone());
        }
        self.judge_against(verifier, seed, response, attempt_id, self.last_step, now, limits)
    }

    /// Like [`Self::judge`], for the first code of a freshly sealed seed: steps spent on the
    /// previous seed do not make it a replay (the same 30-second window may hold both codes).
    pub fn judge_confirmation(
        &self,
        verifier: &dyn Verifier,
        pending_seed: &[u8],
        response: &str,
        now: Timestamp,
        limits: Limits,
    ) -> (Verdict, FactorState) {
        let (verdict, mut next) = self.judge_against(verifier, pending_seed, response, "enrollment", None, now, limits);
        if let Verdict::Accepted { step } = verdict {
            // Whatever was spent stays spent; the confirmation code is spent too.
            next.last_step = Some(self.last_step.map_or(step, |last| last.max(step)));
        }
        (verdict, next)
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_against(
        &self,
        verifier: &dyn Verifier,
        seed: &[u8],
        response: &str,
        attempt_id: &str,
        last_step: Option<u64>,
        now: Timestamp,
        limits: Limits,
    ) -> (Verdict, FactorState) {
        if self.locked_at.is_some() {
            return (Verdict::Locked, self.clone());
        }
        let mut next = self.clone();
        let horizon = (now - limits.window).as_second();
        next.recent_failures.retain(|t| *t > horizon);
        if next.recent_failures.len() as u32 >= limits.max_failures {
            let oldest = next.recent_failures.iter().min().copied().unwrap_or(now.as_second());
            let retry_after = SignedDuration::from_secs(oldest + limits.window.as_secs() - now.as_second())
                .max(SignedDuration::from_secs(1));
            return (Verdict::RateLimited { retry_after }, next);
        }
        match verifier.verify(seed, response, now, last_step) {
            Ok(step) => {
                next.last_step = Some(step);
                next.last_used_by = Some(attempt_id.to_owned());
                next.consecutive_failures = 0;
                (Verdict::Accepted { step }, next)
            }
            Err(why) => {
                next.recent_failures.push(now.as_second());
                next.consecutive_failures = next.consecutive_failures.saturating_add(1);
                let locked_now = next.consecutive_failures >= limits.lockout_after;
                if locked_now {
                    next.locked_at = Some(now);
                }
                (Verdict::Rejected { why, locked_now }, next)
            }
        }
    }

    /// An admin reset: unlocks, forgets failures, allows one re-enrollment without the old
    /// device. Replay state is kept: spent steps stay spent.
    pub fn reset(&self) -> FactorState {
        FactorState {
            last_step: self.last_step,
            last_used_by: self.last_used_by.clone(),
            recent_failures: Vec::new(),
            consecutive_failures: 0,
            locked_at: None,
            reenroll_allowed: true,
        }
    }
}

/// The contents of a user's factor Secret.
#[derive(Clone, Default)]
pub struct Factor {
    /// The confirmed seed challenges are verified against.
    pub seed: Option<Zeroizing<Vec<u8>>>,
    /// The enrollment public key the confirmed seed was sealed to.
    pub seed_key: Option<String>,
    /// A seed sealed to a new key, waiting for its first code.
    pub pending_seed: Option<Zeroizing<Vec<u8>>>,
    pub pending_key: Option<String>,
    pub state: FactorState,
}

impl std::fmt::Debug for Factor {
    // Never print seeds, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factor")
            .field("seed", &self.seed.as_ref().map(|_| "<redacted>"))
            .field("seed_key", &self.seed_key)
            .field("pending_seed", &self.pending_seed.as_ref().map(|_| "<redacted>"))
            .field("pending_key", &self.pending_key)
            .field("state", &self.state)
            .finish()
    }
}

const SEED: &str = "seed";
const SEED_KEY: &str = "seedKey";
const PENDING_SEED: &str = "pendingSeed";
const PENDING_KEY: &str = "pendingKey";
const STATE: &str = "state";

#[derive(Debug, thiserror::Error)]
#[error("factor secret {name} is corrupt: {reason}")]
pub struct CorruptFactor {
    pub name: String,
    pub reason: String,
}

impl Factor {
    pub fn from_secret(secret: &Secret) -> Result<Self, CorruptFactor> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let bytes = |k: &str| data.get(k).map(|b| Zeroizing::new(b.0.clone()));
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
        let state = match data.get(STATE) {
            None => FactorState::default(),
            Some(b) => {
                serde_json::from_slice(&b.0).map_err(|e| CorruptFactor { name: name.clone(), reason: e.to_string() })?
            }
        };
        Ok(Self {
            seed: bytes(SEED),
            seed_key: text(SEED_KEY),
            pending_seed: bytes(PENDING_SEED),
            pending_key: text(PENDING_KEY),
            state,
        })
    }

    /// The Secret's `data` for these contents.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &[u8]| {
            data.insert(k.to_owned(), ByteString(v.to_vec()));
        };
        if let Some(s) = &self.seed {
            put(SEED, s);
        }
        if let Some(k) = &self.seed_key {
            put(SEED_KEY, k.as_bytes());
        }
        if let Some(s) = &self.pending_seed {
            put(PENDING_SEED, s);
        }
        if let Some(k) = &self.pending_key {
            put(PENDING_KEY, k.as_bytes());
        }
        // Serializing a struct of numbers and strings cannot fail.
        put(STATE, &serde_json::to_vec(&self.state).unwrap_or_default());
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::totp::{TotpVerifier, code_at, generate_seed};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn a_right_code_is_accepted_once() {
        let seed = generate_seed();
        let s0 = FactorState::default();
        let (v, s1) = s0.judge(&TotpVerifier, &seed, &code_at(&seed, at(0)), "c1", at(0), Limits::default());
        assert!(matches!(v, Verdict::Accepted { .. }));
        let (v, _) = s1.judge(&TotpVerifier, &seed, &code_at(&seed, at(0)), "c2", at(1), Limits::default());
        assert_eq!(v, Verdict::Rejected { why: Rejection::Replayed, locked_now: false });
    }

    #[test]
    fn the_same_attempt_after_a_crash_is_recognised_not_replayed() {
        let seed = generate_seed();
        let (_, recorded) =
            FactorState::default().judge(&TotpVerifier, &seed, &code_at(&seed, at(0)), "c1", at(0), Limits::default());
        let (v, again) = recorded.judge(&TotpVerifier, &seed, &code_at(&seed, at(0)), "c1", at(5), Limits::default());
        assert_eq!(v, Verdict::AlreadyAccepted);
        assert_eq!(again, recorded);
    }

    #[test]
    fn failures_are_rate_limited_within_the_window() {
        let seed = generate_seed();
        let limits = Limits { max_failures: 3, window: SignedDuration::from_mins(5), lockout_after: 100 };
        let mut s = FactorState::default();
        for i in 0..3 {
            let (v, next) = s.judge(&TotpVerifier, &seed, "abcdef", &format!("w{i}"), at(i), limits);
            assert!(matches!(v, Verdict::Rejected { .. }));
            s = next;
        }
        let right = code_at(&seed, at(10));
        let (v, _) = s.judge(&TotpVerifier, &seed, &right, "r", at(10), limits);
        assert!(
            matches!(v, Verdict::RateLimited { retry_after } if retry_after == SignedDuration::from_secs(290)),
            "{v:?}"
        );
        // Once the window has passed, the right code works again.
        let later = at(301);
        let (v, _) = s.judge(&TotpVerifier, &seed, &code_at(&seed, later), "r2", later, limits);
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
    }

    #[test]
    fn consecutive_failures_lock_until_reset() {
        let seed = generate_seed();
        let limits = Limits { max_failures: 100, window: SignedDuration::from_mins(5), lockout_after: 4 };
        let mut s = FactorState::default();
        let mut locked = false;
        for i in 0..4 {
            let (v, next) = s.judge(&TotpVerifier, &seed, "abc", &format!("w{i}"), at(i), limits);
            if let Verdict::Rejected { locked_now, .. } = v {
                locked = locked_now;
            }
            s = next;
        }
        assert!(locked && s.locked_at.is_some());
        let (v, _) = s.judge(&TotpVerifier, &seed, &code_at(&seed, at(10)), "right", at(10), limits);
        assert_eq!(v, Verdict::Locked, "even a right code is refused while locked");
        let s = s.reset();
        assert!(s.reenroll_allowed && s.locked_at.is_none() && s.consecutive_failures == 0);
        let (v, _) = s.judge(&TotpVerifier, &seed, &code_at(&seed, at(40)), "right", at(40), limits);
        assert!(matches!(v, Verdict::Accepted { .. }));
    }

    #[test]
    fn a_confirmation_in_the_same_window_as_the_last_code_is_not_a_replay() {
        let (old, new) = (generate_seed(), generate_seed());
        let (_, s) =
            FactorState::default().judge(&TotpVerifier, &old, &code_at(&old, at(0)), "c", at(0), Limits::default());
        let (v, s) = s.judge_confirmation(&TotpVerifier, &new, &code_at(&new, at(1)), at(1), Limits::default());
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
        // The confirmation code cannot then be used for a challenge.
        let (v, _) = s.judge(&TotpVerifier, &new, &code_at(&new, at(1)), "c2", at(2), Limits::default());
        assert_eq!(v, Verdict::Rejected { why: Rejection::Replayed, locked_now: false });
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let seed = generate_seed();
        let (_, s) = FactorState::default().judge(&TotpVerifier, &seed, "abcdef", "w", at(0), Limits::default());
        assert_eq!(s.consecutive_failures, 1);
        let (_, s) = s.judge(&TotpVerifier, &seed, &code_at(&seed, at(30)), "ok", at(30), Limits::default());
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn secret_round_trip_keeps_everything_and_debug_redacts_seeds() {
        let f = Factor {
            seed: Some(Zeroizing::new(vec![7; 20])),
            seed_key: Some("key".into()),
            pending_seed: None,
            pending_key: None,
            state: FactorState { last_step: Some(42), consecutive_failures: 2, ..Default::default() },
        };
        let secret = Secret { data: Some(f.to_data()), ..Default::default() };
        let back = Factor::from_secret(&secret).unwrap();
        assert_eq!(back.seed.as_deref().map(|s| s.as_slice()), Some(&[7u8; 20][..]));
        assert_eq!(back.state, f.state);
        let debug = format!("{back:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("[7, 7"), "{debug}");
    }
}
