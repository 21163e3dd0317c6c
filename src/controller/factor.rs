//! A user's second factor as the controller keeps it: the TOTP seed (and a pending one during
//! enrollment) plus the replay, failure and lockout state, all in one Secret in the
//! controller's namespace, so that one optimistic-concurrency write (resourceVersion) records
//! a code's use before anything is issued. The Secret holds a single value encrypted and
//! authenticated with the controller's factor key, bound to the user: reading it yields
//! nothing usable, and an edited or swapped copy is refused as corrupt, never read in the
//! clear. Pure: the shell reads and writes the Secret.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use stepup_core::{
    keys::FactorCipher,
    verify::{Rejection, Verifier},
};

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
    /// With `past_lock`, a lockout does not stop it (an admin approved this new seed, which
    /// replaces the factor the lockout protected); the failure rate limit still does.
    pub fn judge_confirmation(
        &self,
        verifier: &dyn Verifier,
        pending_seed: &[u8],
        response: &str,
        now: Timestamp,
        limits: Limits,
        past_lock: bool,
    ) -> (Verdict, FactorState) {
        let base = if past_lock { FactorState { locked_at: None, ..self.clone() } } else { self.clone() };
        let (verdict, mut next) = base.judge_against(verifier, pending_seed, response, "enrollment", None, now, limits);
        if !matches!(verdict, Verdict::Accepted { .. }) {
            // A refused confirmation leaves an existing lockout in place.
            next.locked_at = next.locked_at.or(self.locked_at);
        }
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
        if let Some(until) = next.rate_limited_until(now, limits) {
            let retry_after = until.duration_since(now);
            return (Verdict::RateLimited { retry_after: retry_after.max(SignedDuration::from_secs(1)) }, next);
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

    /// An admin unlock: clears the lockout and the failures that led to it, and nothing else.
    /// Replay state is kept: spent steps stay spent.
    pub fn unlocked(&self) -> FactorState {
        FactorState {
            last_step: self.last_step,
            last_used_by: self.last_used_by.clone(),
            recent_failures: Vec::new(),
            consecutive_failures: 0,
            locked_at: None,
        }
    }

    /// When the failure rate limit stops refusing unchecked, if it does at `now`.
    pub fn rate_limited_until(&self, now: Timestamp, limits: Limits) -> Option<Timestamp> {
        let horizon = (now - limits.window).as_second();
        let recent: Vec<i64> = self.recent_failures.iter().copied().filter(|t| *t > horizon).collect();
        if (recent.len() as u32) < limits.max_failures || limits.max_failures == 0 {
            return None;
        }
        // The window frees up when enough of the oldest failures have aged out of it.
        let mut sorted = recent;
        sorted.sort_unstable();
        let index = sorted.len() - limits.max_failures as usize;
        Timestamp::from_second(sorted[index] + limits.window.as_secs()).ok()
    }
}

/// What allowed a pending seed: recorded for the evidence and for the lockout rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "camelCase")]
pub enum Allowance {
    /// An admin approved this very key (a first enrollment, or a re-enrollment without the old
    /// device).
    Approval { by: String },
    /// A current code of the enrolled authenticator.
    OldFactor,
    /// Self-service enrollment is on.
    SelfService,
    /// The one-time bootstrap of the first admin.
    Bootstrap,
    /// A fresh grant of the person's own, from a factor they hold (a registered key, their
    /// authenticator app), requested for this very enrollment key.
    Grant { name: String, method: String },
}

impl Allowance {
    /// Whether an admin's act (rather than the user's old factor) allowed it.
    pub fn by_admin(&self) -> bool {
        matches!(self, Allowance::Approval { .. } | Allowance::Bootstrap)
    }

    pub fn describe(&self) -> String {
        match self {
            Allowance::Approval { by } => format!("approved by {by}"),
            Allowance::OldFactor => "allowed by a code of the enrolled authenticator".into(),
            Allowance::SelfService => "self-service".into(),
            Allowance::Bootstrap => "allowed by the one-time bootstrap".into(),
            Allowance::Grant { name, method } => format!("allowed by {method} grant {name}"),
        }
    }
}

/// A seed sealed to a new key, waiting for its first code.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    pub seed: Zeroizing<Vec<u8>>,
    /// The enrollment public key it was sealed to.
    pub key: String,
    pub allowed: Allowance,
    /// When it was sealed; it may be confirmed within the approval window after that.
    pub since: Timestamp,
}

/// A user's security keys and passkeys (`WebAuthn`): public credentials, and at most one
/// registration ceremony waiting for the browser's answer. Kept with the TOTP seed so that one
/// write records everything about the person's factors, and the lockout covers every method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebAuthnFactor {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<RegisteredKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingKey>,
    /// Authentication ceremonies offered to challenges, by challenge UID: each answered once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ceremonies: BTreeMap<String, Ceremony>,
    /// The last challenge a key was verified for, so that a retry after a crash between this
    /// write and the grant issues the grant instead of refusing a spent ceremony.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<KeyUse>,
}

impl WebAuthnFactor {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.pending.is_none() && self.ceremonies.is_empty() && self.last_verified.is_none()
    }
}

/// An authentication ceremony offered to one challenge: the options shown in its status and
/// webauthn-rs's state (the challenge), kept here only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ceremony {
    pub options: String,
    pub since: Timestamp,
    pub state: serde_json::Value,
}

/// Which key answered which challenge, and whether it verified the person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUse {
    pub challenge_uid: String,
    pub id_hash: String,
    pub user_verified: bool,
}

/// A registered security key: the public credential (webauthn-rs's, as JSON) and the evidence
/// of how it came to be registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredKey {
    pub id_hash: String,
    pub registered_at: Timestamp,
    pub allowed: Allowance,
    /// The enrollment public key the registration's options were sealed to.
    pub key: String,
    pub user_verified: bool,
    pub credential: serde_json::Value,
}

/// A registration ceremony whose options were sealed to the enrollment key `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingKey {
    pub key: String,
    pub allowed: Allowance,
    /// When it was allowed; the browser's answer counts within the approval window after that.
    pub since: Timestamp,
    /// The options for the browser (JSON), sealed to `key` in the enrollment's status.
    pub options: String,
    /// webauthn-rs's ceremony state (the challenge), never shown to anyone.
    pub ceremony: serde_json::Value,
}

/// The contents of a user's factor Secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Factor {
    /// The confirmed seed challenges are verified against.
    pub seed: Option<Zeroizing<Vec<u8>>>,
    /// The enrollment public key the confirmed seed was sealed to.
    pub seed_key: Option<String>,
    pub pending: Option<Pending>,
    pub state: FactorState,
    pub webauthn: WebAuthnFactor,
    /// Incremented on every write: a copy older than one already seen is a rollback.
    pub version: u64,
}

impl Factor {
    /// Whether the person holds an authenticator of any method (a confirmed seed, a registered
    /// key): then no "first" allowance (self-service, the bootstrap) adds another, or whoever
    /// holds their kubeconfig could add theirs.
    pub fn holds_an_authenticator(&self) -> bool {
        self.seed.is_some() || !self.webauthn.keys.is_empty()
    }
}

impl std::fmt::Debug for Factor {
    // Never print seeds, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factor")
            .field("seed", &self.seed.as_ref().map(|_| "<redacted>"))
            .field("seed_key", &self.seed_key)
            .field("pending_key", &self.pending.as_ref().map(|p| &p.key))
            .field("pending_allowed", &self.pending.as_ref().map(|p| &p.allowed))
            .field("state", &self.state)
            .field("webauthn_keys", &self.webauthn.keys.iter().map(|k| &k.id_hash).collect::<Vec<_>>())
            .field("webauthn_pending", &self.webauthn.pending.as_ref().map(|p| &p.key))
            .field("version", &self.version)
            .finish()
    }
}

/// The one key of a factor Secret's data.
pub const DATA_KEY: &str = "factor";

/// What reading a factor Secret gave.
// One value per reconcile, never stored in bulk: boxing the common variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FactorRead {
    /// No Secret: never enrolled (or removed by an admin).
    Missing,
    /// The Secret does not hold a value this controller wrote for this user: edited, copied
    /// from another user, written with another key, rolled back, or from an older format.
    Corrupt(String),
    Found(Factor),
}

/// The plaintext inside the encrypted value.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    v: u8,
    /// Checked on reading, besides the per-user key: the blob names whose it is...
    user: String,
    /// ... and the one Secret object (by UID) it was written into, so that a copy put into a
    /// deleted and re-created Secret is refused rather than read as a rollback-free original.
    secret_uid: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<StoredPending>,
    state: FactorState,
    #[serde(default, skip_serializing_if = "WebAuthnFactor::is_empty")]
    webauthn: WebAuthnFactor,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPending {
    seed: String,
    key: String,
    allowed: Allowance,
    since: Timestamp,
}

impl Drop for Stored {
    fn drop(&mut self) {
        if let Some(s) = self.seed.as_mut() {
            s.zeroize();
        }
        if let Some(p) = self.pending.as_mut() {
            p.seed.zeroize();
        }
    }
}

fn decode_seed(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    STANDARD.decode(text).map(Zeroizing::new).map_err(|_| "a seed is not base64".to_owned())
}

/// Annotation of a factor Secret created empty, to be filled once its UID is known.
pub const CREATING_ANNOTATION: &str = "stepup.dev/factor-creating";

impl Factor {
    /// Encrypts the contents for `user`'s Secret with UID `secret_uid`.
    pub fn seal(&self, cipher: &FactorCipher, user: &str, secret_uid: &str) -> Vec<u8> {
        let stored = Stored {
            v: 1,
            user: user.to_owned(),
            secret_uid: secret_uid.to_owned(),
            version: self.version,
            seed: self.seed.as_ref().map(|s| STANDARD.encode(s.as_slice())),
            seed_key: self.seed_key.clone(),
            pending: self.pending.as_ref().map(|p| StoredPending {
                seed: STANDARD.encode(p.seed.as_slice()),
                key: p.key.clone(),
                allowed: p.allowed.clone(),
                since: p.since,
            }),
            state: self.state.clone(),
            webauthn: self.webauthn.clone(),
        };
        // Serializing strings, numbers and timestamps cannot fail.
        let plaintext = Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default());
        cipher.encrypt(user, &plaintext)
    }

    /// Decrypts and checks a value [`Factor::seal`] made for `user` and the Secret `secret_uid`.
    pub fn open(blob: &[u8], cipher: &FactorCipher, user: &str, secret_uid: &str) -> Result<Self, String> {
        let plaintext = cipher.decrypt(user, blob).ok_or_else(|| {
            "it does not decrypt with the controller's factor key for this user (edited, copied from another \
             user's Secret, or written with another key)"
                .to_owned()
        })?;
        let stored: Stored = serde_json::from_slice(&plaintext).map_err(|e| format!("unreadable contents: {e}"))?;
        if stored.v != 1 {
            return Err(format!("unknown format version {}", stored.v));
        }
        if stored.user != user {
            return Err(format!("it belongs to {:?}", stored.user));
        }
        if stored.secret_uid != secret_uid {
            return Err("it was written into another Secret (deleted and re-created since, or copied)".into());
        }
        let pending = match &stored.pending {
            None => None,
            Some(p) => Some(Pending {
                seed: decode_seed(&p.seed)?,
                key: p.key.clone(),
                allowed: p.allowed.clone(),
                since: p.since,
            }),
        };
        Ok(Self {
            seed: stored.seed.as_deref().map(decode_seed).transpose()?,
            seed_key: stored.seed_key.clone(),
            pending,
            state: stored.state.clone(),
            webauthn: stored.webauthn.clone(),
            version: stored.version,
        })
    }

    /// Reads a factor Secret: exactly one encrypted value, nothing in the clear.
    pub fn from_secret(secret: &Secret, cipher: &FactorCipher, user: &str) -> FactorRead {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let creating = secret.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CREATING_ANNOTATION));
        if creating && data.is_empty() {
            // Created, not filled yet (a crash in between): nothing stored, like no Secret.
            return FactorRead::Missing;
        }
        if let Some(extra) = data.keys().find(|k| k.as_str() != DATA_KEY) {
            return FactorRead::Corrupt(format!(
                "it holds a field {extra:?} besides the encrypted value (edited, or written by an older version)"
            ));
        }
        if secret.string_data.as_ref().is_some_and(|d| !d.is_empty()) {
            return FactorRead::Corrupt("it carries stringData".into());
        }
        match data.get(DATA_KEY) {
            None => FactorRead::Corrupt("it holds no encrypted value".into()),
            Some(blob) => match Self::open(&blob.0, cipher, user, secret.metadata.uid.as_deref().unwrap_or("")) {
                Ok(f) => FactorRead::Found(f),
                Err(why) => FactorRead::Corrupt(why),
            },
        }
    }

    /// The `data` of the Secret with UID `secret_uid` for these contents.
    pub fn to_data(&self, cipher: &FactorCipher, user: &str, secret_uid: &str) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(DATA_KEY.to_owned(), ByteString(self.seal(cipher, user, secret_uid)))])
    }

    /// Whether a confirmed seed exists.
    pub fn is_enrolled(&self) -> bool {
        self.seed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::verify::totp::{TotpVerifier, code_at, generate_seed};

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
        let unlocked = s.unlocked();
        assert!(
            unlocked.locked_at.is_none() && unlocked.consecutive_failures == 0 && unlocked.recent_failures.is_empty()
        );
        assert_eq!(unlocked.last_step, s.last_step, "an unlock keeps spent steps spent");
        let (v, _) = unlocked.judge(&TotpVerifier, &seed, &code_at(&seed, at(40)), "right", at(40), limits);
        assert!(matches!(v, Verdict::Accepted { .. }));
    }

    #[test]
    fn an_admin_approved_seed_is_confirmed_past_a_lockout_but_not_past_the_rate_limit() {
        let (old, new) = (generate_seed(), generate_seed());
        let limits = Limits { max_failures: 2, window: SignedDuration::from_mins(5), lockout_after: 2 };
        let mut s = FactorState::default();
        for i in 0..2 {
            s = s.judge(&TotpVerifier, &old, "000000", &format!("w{i}"), at(i), limits).1;
        }
        assert!(s.locked_at.is_some());
        let code = code_at(&new, at(400));
        let (v, _) = s.judge_confirmation(&TotpVerifier, &new, &code, at(400), limits, false);
        assert_eq!(v, Verdict::Locked, "without an admin's approval the lockout holds");
        let (v, next) = s.judge_confirmation(&TotpVerifier, &new, &code, at(400), limits, true);
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
        assert!(next.locked_at.is_none());
        let (v, next) = s.judge_confirmation(&TotpVerifier, &new, "111111", at(400), limits, true);
        assert!(matches!(v, Verdict::Rejected { .. }));
        assert!(next.locked_at.is_some(), "a wrong confirmation leaves the lockout");
        // Inside the rate-limit window nothing is checked, approved or not.
        let (v, _) = s.judge_confirmation(&TotpVerifier, &new, &code_at(&new, at(10)), at(10), limits, true);
        assert!(matches!(v, Verdict::RateLimited { .. }), "{v:?}");
    }

    #[test]
    fn the_rate_limit_lifts_when_enough_failures_age_out() {
        let limits = Limits { max_failures: 3, window: SignedDuration::from_secs(100), lockout_after: 100 };
        let s = FactorState {
            recent_failures: vec![at(0).as_second(), at(10).as_second(), at(50).as_second()],
            ..Default::default()
        };
        assert_eq!(s.rate_limited_until(at(60), limits), Some(at(100)));
        assert_eq!(s.rate_limited_until(at(100), limits), None);
        let fewer = FactorState { recent_failures: vec![at(0).as_second()], ..Default::default() };
        assert_eq!(fewer.rate_limited_until(at(60), limits), None);
    }

    #[test]
    fn a_confirmation_in_the_same_window_as_the_last_code_is_not_a_replay() {
        let (old, new) = (generate_seed(), generate_seed());
        let (_, s) =
            FactorState::default().judge(&TotpVerifier, &old, &code_at(&old, at(0)), "c", at(0), Limits::default());
        let (v, s) = s.judge_confirmation(&TotpVerifier, &new, &code_at(&new, at(1)), at(1), Limits::default(), false);
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

    fn cipher(n: u8) -> FactorCipher {
        stepup_core::keys::MasterKey::from_bytes([n; 32]).factor_cipher()
    }

    fn sample() -> Factor {
        Factor {
            seed: Some(Zeroizing::new(vec![7; 20])),
            seed_key: Some("key".into()),
            pending: Some(Pending {
                seed: Zeroizing::new(vec![9; 20]),
                key: "new-key".into(),
                allowed: Allowance::Approval { by: "root".into() },
                since: at(0),
            }),
            state: FactorState { last_step: Some(42), consecutive_failures: 2, ..Default::default() },
            webauthn: WebAuthnFactor {
                keys: vec![RegisteredKey {
                    id_hash: "00ff".into(),
                    registered_at: at(1),
                    allowed: Allowance::SelfService,
                    key: "key".into(),
                    user_verified: true,
                    credential: serde_json::json!({"cred_id": "AAEC", "counter": 3}),
                }],
                pending: None,
                ceremonies: BTreeMap::new(),
                last_verified: None,
            },
            version: 7,
        }
    }

    fn secret_of(data: BTreeMap<String, ByteString>) -> Secret {
        let mut secret = Secret { data: Some(data), ..Default::default() };
        secret.metadata.uid = Some("uid-1".into());
        secret
    }

    #[test]
    fn the_secret_holds_one_encrypted_value_that_round_trips() {
        let f = sample();
        let data = f.to_data(&cipher(1), "alice", "uid-1");
        assert_eq!(data.keys().collect::<Vec<_>>(), [DATA_KEY]);
        let blob = &data[DATA_KEY].0;
        assert!(!blob.windows(20).any(|w| w == [7u8; 20] || w == [9u8; 20]), "no seed in the clear");
        assert!(!String::from_utf8_lossy(blob).contains("key"), "no field names in the clear");
        assert_eq!(Factor::from_secret(&secret_of(data), &cipher(1), "alice"), FactorRead::Found(f));
        let debug = format!("{:?}", sample());
        assert!(debug.contains("<redacted>") && !debug.contains("[7, 7"), "{debug}");
    }

    #[test]
    fn an_edited_copied_or_plaintext_secret_is_corrupt_never_read() {
        let data = sample().to_data(&cipher(1), "alice", "uid-1");
        let mut recreated = secret_of(data.clone());
        recreated.metadata.uid = Some("uid-2".into());
        let mut flipped = data.clone();
        let bytes = &mut flipped.get_mut(DATA_KEY).unwrap().0;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut extra = data.clone();
        extra.insert("seed".into(), ByteString(vec![7; 20]));
        let plaintext_era = BTreeMap::from([
            ("seed".to_owned(), ByteString(vec![7; 20])),
            ("state".to_owned(), ByteString(b"{}".to_vec())),
        ]);
        let cases = [
            ("a flipped bit", secret_of(flipped), cipher(1), "alice"),
            ("another user's copy", secret_of(data.clone()), cipher(1), "bob"),
            ("another controller key", secret_of(data.clone()), cipher(2), "alice"),
            ("a field added in the clear", secret_of(extra), cipher(1), "alice"),
            ("the old plaintext format", secret_of(plaintext_era), cipher(1), "alice"),
            ("no value at all", secret_of(BTreeMap::new()), cipher(1), "alice"),
            ("a copy in a re-created Secret", recreated, cipher(1), "alice"),
        ];
        for (what, secret, cipher, user) in cases {
            assert!(matches!(Factor::from_secret(&secret, &cipher, user), FactorRead::Corrupt(_)), "{what}");
        }
        assert_eq!(Factor::from_secret(&secret_of(data), &cipher(1), "alice"), FactorRead::Found(sample()));
        // A Secret created empty and not filled yet (a crash in between) holds nothing.
        let mut creating = secret_of(BTreeMap::new());
        creating.metadata.annotations = Some(BTreeMap::from([(CREATING_ANNOTATION.to_owned(), "true".to_owned())]));
        assert_eq!(Factor::from_secret(&creating, &cipher(1), "alice"), FactorRead::Missing);
    }
}
