//! Verification methods behind one trait. TOTP first; approvals and hardware keys later.
//! Also the sealing of enrollment secrets to the plugin's ephemeral key, and of responses to
//! the controller's key. Pure.

pub mod oidc;
pub mod response;
pub mod seal;
pub mod totp;

use jiff::Timestamp;

use crate::api::Method;

/// Why a response was not accepted. Said to the user in the challenge's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the code must be 6 digits")]
    Malformed,
    #[error("the code is wrong or outside the accepted time window")]
    Wrong,
    #[error("this code (or an earlier one) was already used; wait for the next code")]
    Replayed,
    /// Right for a time within `totp::NEAR_STEPS` steps of now, not for now: an old code
    /// (read off a note, a screenshot) or a device whose clock is off. Counts as a failure.
    #[error("the code is right for another time, not now")]
    OutOfWindow,
}

impl Rejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Wrong => "wrong",
            Rejection::Replayed => "replayed",
            Rejection::OutOfWindow => "out_of_window",
        }
    }

    /// The condition reason written on the challenge or enrollment.
    pub const fn reason(self) -> &'static str {
        match self {
            Rejection::Malformed => "Malformed",
            Rejection::Wrong => "WrongCode",
            Rejection::Replayed => "Replayed",
            Rejection::OutOfWindow => "CodeOutOfWindow",
        }
    }
}

/// A verification method.
pub trait Verifier: Send + Sync {
    fn method(&self) -> Method;

    /// Checks `response` against the user's enrolled `secret` at `now`. `last_step` is the
    /// last time step this user had accepted; a response for it or an earlier one is a
    /// replay. Returns the accepted step, to be recorded before anything is issued.
    fn verify(&self, secret: &[u8], response: &str, now: Timestamp, last_step: Option<u64>) -> Result<u64, Rejection>;
}
