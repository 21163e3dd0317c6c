//! Verification methods behind one trait. TOTP first; approvals and hardware keys later.
//! Also the sealing of enrollment secrets to the plugin's ephemeral key, and of responses to
//! the controller's key. Pure.

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
}

impl Rejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Wrong => "wrong",
            Rejection::Replayed => "replayed",
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
