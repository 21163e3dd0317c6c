//! The one-time bootstrap of the first admin, as data. A team with one admin cannot get a
//! second admin's approval for its first enrollment; instead, within a window after
//! installation, the first enrollment that asks for the bootstrap (`spec.bootstrap`, which only
//! admin-group members may set) and proves its maker read the window's token (published in a
//! Secret only installers can read; the webhook may not be registered yet while the chart
//! installs, so its check alone is not enough) needs no approval. The record of it is kept encrypted and
//! authenticated like a factor, so it cannot be edited to reopen the window; it opens only when
//! the controller first starts with nobody enrolled, and says so loudly. Pure.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Record, clock};
use stepup_core::keys::{BOOTSTRAP_TOKEN_SECRET, BootstrapKey, FactorCipher, verify_bootstrap_proof};

/// The Secret (in the controller's namespace) that holds the record.
pub const SECRET_NAME: &str = "stepup-bootstrap";
/// The record is sealed under this name in place of a username (no username has a NUL byte).
const SUBJECT: &str = "\u{0}stepup-bootstrap";
/// The one key of the Secret's data.
pub const DATA_KEY: &str = "record";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRecord {
    pub opened_at: Timestamp,
    /// When the window closes, used or not; equal to `opened_at` when it never opened.
    pub closes_at: Timestamp,
    /// Why it never opened, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_opened: Option<String>,
    /// Whose seed was sealed through it, for which key fingerprint. Only they may use it again
    /// (e.g. after their plugin was interrupted), and only until it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_key: Option<String>,
    /// Confirmed: the bootstrap is over for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
}

/// Whether the bootstrap can be used now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    Closed {
        why: String,
    },
    /// `token` is what the controller publishes for installers, and what proofs are made with.
    Open {
        until: Timestamp,
        claimed_by: Option<String>,
        token: String,
    },
}

impl Bootstrap {
    /// Whether `user` may enroll through it at `now`.
    pub fn admits(&self, user: &str, now: Timestamp) -> bool {
        match self {
            Bootstrap::Open { until, claimed_by, .. } => {
                now < *until && claimed_by.as_deref().is_none_or(|c| c == user)
            }
            Bootstrap::Closed { .. } => false,
        }
    }

    /// Whether `proof` shows that whoever made `user`'s enrollment of `public_key` read the token.
    pub fn proven(&self, user: &str, public_key: &str, proof: Option<&str>) -> bool {
        match (self, proof) {
            (Bootstrap::Open { token, .. }, Some(proof)) => verify_bootstrap_proof(token, user, public_key, proof),
            _ => false,
        }
    }

    /// Why an enrollment without a valid proof is not let through an open bootstrap.
    pub fn unproven() -> String {
        format!(
            "the enrollment does not prove it was made by someone who can read the bootstrap token (Secret {BOOTSTRAP_TOKEN_SECRET} in stepup's namespace, readable only by installers): an installer runs `kubectl stepup enroll --bootstrap`"
        )
    }

    /// Why `user` may not use it at `now`, in words.
    pub fn refusal(&self, user: &str, now: Timestamp) -> String {
        match self {
            Bootstrap::Closed { why } => why.clone(),
            Bootstrap::Open { until, .. } if now >= *until => {
                format!("the bootstrap window closed at {}", clock(*until))
            }
            Bootstrap::Open { claimed_by: Some(by), .. } if by != user => format!("the bootstrap was used by {by}"),
            Bootstrap::Open { .. } => "the bootstrap is open".into(),
        }
    }
}

impl BootstrapRecord {
    /// The record the controller writes when it first starts: open for `window` when nobody is
    /// enrolled yet and the window is not zero, otherwise closed from the start.
    pub fn first(now: Timestamp, window: SignedDuration, enrolled: usize) -> (Self, Record) {
        let not_opened = if window.is_zero() {
            Some("the bootstrap is turned off (--bootstrap-window=0)".to_owned())
        } else if enrolled > 0 {
            Some(format!("{enrolled} user(s) were already enrolled when the controller first started"))
        } else {
            None
        };
        let closes_at = if not_opened.is_some() { now } else { now + window };
        let record = match &not_opened {
            None => Record::warning(
                "BootstrapOpened",
                "bootstrap.opened",
                "opened",
                format!(
                    "nobody is enrolled: until {} the first admin may enroll without a second admin (`kubectl stepup enroll --bootstrap`)",
                    clock(closes_at)
                ),
            ),
            Some(why) => Record::normal(
                "BootstrapClosed",
                "bootstrap.closed",
                "not_opened",
                format!("bootstrap not opened: {why}"),
            ),
        };
        (
            Self {
                opened_at: now,
                closes_at,
                not_opened,
                claimed_by: None,
                claimed_key: None,
                completed_by: None,
                completed_at: None,
            },
            record,
        )
    }

    /// The bootstrap as the record says it stands; an open one carries its token, derived from
    /// `key` and the time it opened.
    pub fn view(&self, key: &BootstrapKey) -> Bootstrap {
        if let Some(why) = &self.not_opened {
            return Bootstrap::Closed { why: format!("the bootstrap never opened: {why}") };
        }
        if let Some(by) = &self.completed_by {
            return Bootstrap::Closed { why: format!("the bootstrap was used by {by}") };
        }
        Bootstrap::Open {
            until: self.closes_at,
            claimed_by: self.claimed_by.clone(),
            token: key.token(self.opened_at).to_string(),
        }
    }

    pub fn claimed(&self, user: &str, fingerprint: &str) -> Self {
        Self { claimed_by: Some(user.to_owned()), claimed_key: Some(fingerprint.to_owned()), ..self.clone() }
    }

    pub fn completed(&self, user: &str, now: Timestamp) -> Self {
        Self { completed_by: Some(user.to_owned()), completed_at: Some(now), ..self.clone() }
    }

    pub fn seal(&self, cipher: &FactorCipher) -> Vec<u8> {
        // Serializing strings and timestamps cannot fail.
        cipher.encrypt(SUBJECT, &serde_json::to_vec(self).unwrap_or_default())
    }

    /// `Err` when the blob was not written by this controller's key, or was altered.
    pub fn open(blob: &[u8], cipher: &FactorCipher) -> Result<Self, String> {
        let plain =
            cipher.decrypt(SUBJECT, blob).ok_or_else(|| "it does not decrypt with the controller's key".to_owned())?;
        serde_json::from_slice(&plain).map_err(|e| format!("unreadable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::testing::{minutes, t0};

    fn key() -> BootstrapKey {
        stepup_core::keys::MasterKey::from_bytes([5; 32]).bootstrap_key()
    }

    #[test]
    fn the_bootstrap_opens_only_when_nobody_is_enrolled_and_ends_by_itself() {
        let (open, record) = BootstrapRecord::first(t0(), minutes(60), 0);
        assert_eq!(record.reason, "BootstrapOpened");
        assert!(record.warning, "opening the bootstrap is loud");
        let view = open.view(&key());
        assert!(view.admits("root", t0() + minutes(59)));
        assert!(!view.admits("root", t0() + minutes(60)), "it ends by itself");

        let (closed, record) = BootstrapRecord::first(t0(), minutes(60), 2);
        assert_eq!(record.reason, "BootstrapClosed");
        assert!(!closed.view(&key()).admits("root", t0()));
        assert!(closed.view(&key()).refusal("root", t0()).contains("2 user(s) were already enrolled"));
        let (off, _) = BootstrapRecord::first(t0(), SignedDuration::ZERO, 0);
        assert!(!off.view(&key()).admits("root", t0()));
    }

    #[test]
    fn once_claimed_only_the_claimant_may_retry_and_once_completed_nobody() {
        let (open, _) = BootstrapRecord::first(t0(), minutes(60), 0);
        let claimed = open.claimed("root", "aaaa-bbbb-cccc-dddd-eeee-ffff");
        assert!(claimed.view(&key()).admits("root", t0()));
        assert!(!claimed.view(&key()).admits("mallory", t0()));
        assert_eq!(claimed.view(&key()).refusal("mallory", t0()), "the bootstrap was used by root");
        let done = claimed.completed("root", t0());
        assert!(!done.view(&key()).admits("root", t0()));
    }

    /// Attack (third round): alice raced the webhook's registration during installation and
    /// asked for the bootstrap first. Without the token only installers can read, nothing she
    /// writes proves anything; a proof for one user or key proves nothing for another.
    #[test]
    fn only_a_proof_made_with_the_windows_token_counts() {
        let (open, _) = BootstrapRecord::first(t0(), minutes(60), 0);
        let view = open.view(&key());
        let Bootstrap::Open { token, .. } = &view else { panic!("open") };
        let proof = stepup_core::keys::bootstrap_proof(token, "root", "KEY-A");
        assert!(view.proven("root", "KEY-A", Some(&proof)));
        assert!(!view.proven("root", "KEY-A", None), "no proof");
        assert!(!view.proven("alice", "KEY-A", Some(&proof)), "another user");
        assert!(!view.proven("root", "KEY-B", Some(&proof)), "another key");
        assert!(!view.proven("root", "KEY-A", Some("bm90IGEgcHJvb2Y")), "made up");
        let guessed = stepup_core::keys::bootstrap_proof("", "root", "KEY-A");
        assert!(!view.proven("root", "KEY-A", Some(&guessed)), "an empty token");
        // Another window (a reinstall) has another token.
        let (later, _) = BootstrapRecord::first(t0() + minutes(1), minutes(60), 0);
        assert!(!later.view(&key()).proven("root", "KEY-A", Some(&proof)));
        let other_key = stepup_core::keys::MasterKey::from_bytes([6; 32]).bootstrap_key();
        assert!(!open.view(&other_key).proven("root", "KEY-A", Some(&proof)), "another installation's key");
        assert!(!Bootstrap::Closed { why: "x".into() }.proven("root", "KEY-A", Some(&proof)));
    }

    #[test]
    fn the_record_cannot_be_edited_to_reopen_the_window() {
        let cipher = stepup_core::keys::MasterKey::from_bytes([5; 32]).factor_cipher();
        let (open, _) = BootstrapRecord::first(t0(), minutes(60), 0);
        let done = open.completed("root", t0());
        let blob = done.seal(&cipher);
        assert_eq!(BootstrapRecord::open(&blob, &cipher).unwrap(), done);
        let mut edited = blob.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        assert!(BootstrapRecord::open(&edited, &cipher).is_err());
        // A factor blob cannot pose as the record either.
        assert!(BootstrapRecord::open(&cipher.encrypt("root", b"{}"), &cipher).is_err());
    }
}
