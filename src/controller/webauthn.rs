//! The relying party of `WebAuthn` step-up (security keys and passkeys), verified with
//! webauthn-rs-core: the registration and authentication ceremonies, with no I/O and the clock
//! handed in. Each ceremony starts here with a fresh random challenge; its state
//! ([`Pending`]) stays with the controller (never with the person), is used once (finishing
//! consumes it) and only for [`CEREMONY_TTL`]. What is kept of an authenticator is public: its
//! credential id, public key and signature counter ([`StoredCredential`]). No secret of this
//! method exists in the cluster.
//!
//! The rules, each attempted as an attack in the tests: the origin and rp id are this relying
//! party's; user presence always, user verification where the policy demands it; the assertion
//! answers this ceremony's challenge and is signed by a key registered to this person and still
//! registered; a signature counter that does not move forward marks a cloned authenticator.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;
use webauthn_rs_core::{
    WebauthnCore,
    error::WebauthnError,
    proto::{
        AuthenticationState, Credential, PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState,
        UserVerificationPolicy,
    },
};

/// How long a ceremony may take, from the options to the answer.
pub const CEREMONY_TTL: SignedDuration = SignedDuration::from_mins(5);

/// The largest answer from the browser looked at (a registration with attestation is a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a relying party cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WebAuthn relying party: {0}")]
pub struct ConfigError(String);

/// Why a ceremony's answer earns nothing. Each reads as a sentence for the person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the security key's answer is not a WebAuthn response ({0})")]
    Malformed(String),
    #[error("the security-key prompt was answered after {0}, later than the {CEREMONY_TTL} it is valid for: try again")]
    Expired(SignedDuration),
    #[error("this ceremony is {want:?}'s, and the answer came for {got:?}")]
    OtherUser { got: String, want: String },
    #[error("the answer was made for another website (origin or relying party id), not this cluster's step-up page")]
    WrongOrigin,
    #[error("the answer is for another challenge: a replayed or copied answer is refused")]
    OtherChallenge,
    #[error("the answer is signed by a security key that is not registered to you (or was removed)")]
    UnknownCredential,
    #[error(
        "the security key's signature counter went from {stored} to {presented}: it may be a clone of your key; it is refused, and your administrator is told"
    )]
    ClonedAuthenticator { stored: u32, presented: u32 },
    #[error("the policy needs user verification (your key's PIN or biometric), and the key did not verify you")]
    UserNotVerified,
    #[error("the security key did not report your presence (a touch): refused")]
    UserNotPresent,
    #[error("the security key's signature does not verify")]
    BadSignature,
    #[error("you have no security key registered: enroll one first (`kubectl stepup enroll --method WebAuthn`)")]
    NoCredential,
    #[error("this security key is already registered")]
    AlreadyRegistered,
    #[error("the WebAuthn ceremony failed: {0}")]
    Other(String),
}

impl Refusal {
    /// A low-cardinality label for metrics and audit lines.
    pub const fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Expired(_) => "expired",
            Refusal::OtherUser { .. } => "other_user",
            Refusal::WrongOrigin => "wrong_origin",
            Refusal::OtherChallenge => "other_challenge",
            Refusal::UnknownCredential => "unknown_credential",
            Refusal::ClonedAuthenticator { .. } => "cloned_authenticator",
            Refusal::UserNotVerified => "user_not_verified",
            Refusal::UserNotPresent => "user_not_present",
            Refusal::BadSignature => "bad_signature",
            Refusal::NoCredential => "no_credential",
            Refusal::AlreadyRegistered => "already_registered",
            Refusal::Other(_) => "other",
        }
    }

    fn from_library(e: WebauthnError) -> Self {
        match e {
            WebauthnError::InvalidRPOrigin | WebauthnError::InvalidRPIDHash => Refusal::WrongOrigin,
            WebauthnError::MismatchedChallenge => Refusal::OtherChallenge,
            WebauthnError::UserNotVerified => Refusal::UserNotVerified,
            WebauthnError::UserNotPresent => Refusal::UserNotPresent,
            WebauthnError::CredentialNotFound => Refusal::UnknownCredential,
            WebauthnError::AuthenticationFailure => Refusal::BadSignature,
            WebauthnError::ParseJSONFailure(e) => Refusal::Malformed(e.to_string()),
            other => Refusal::Other(other.to_string()),
        }
    }
}

/// A ceremony's state, kept by the controller between the options it sends and the answer:
/// for whom, when, and what webauthn-rs needs to judge the answer (the challenge).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending<S> {
    pub user: String,
    pub issued_at: Timestamp,
    /// The options demanded user verification (authentication for a policy that needs it).
    #[serde(default)]
    pub verify_user: bool,
    state: S,
}

pub type PendingRegistration = Pending<RegistrationState>;
pub type PendingAuthentication = Pending<AuthenticationState>;

impl<S> Pending<S> {
    fn fresh(&self, user: &str, now: Timestamp, valid_for: SignedDuration) -> Result<(), Refusal> {
        if self.user != user {
            return Err(Refusal::OtherUser { got: user.to_owned(), want: self.user.clone() });
        }
        let age = now.duration_since(self.issued_at);
        if age > valid_for || age < -CEREMONY_TTL {
            return Err(Refusal::Expired(age));
        }
        Ok(())
    }
}

impl<S: Serialize + serde::de::DeserializeOwned> Pending<S> {
    /// The state as the controller stores it (in the person's factor Secret).
    pub fn to_json(&self) -> serde_json::Value {
        // Byte strings, strings and numbers: serializing cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Self, Refusal> {
        serde_json::from_value(value.clone())
            .map_err(|e| Refusal::Other(format!("the stored ceremony is unreadable: {e}")))
    }
}

/// A registered authenticator: its credential id, public key, signature counter and what it
/// said at registration. Public data; stored as such.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredCredential(Credential);

impl StoredCredential {
    /// The credential id's digest (hex, 16 bytes): how evidence names the key without
    /// publishing the id itself.
    pub fn id_hash(&self) -> String {
        id_hash(self.0.cred_id.as_ref())
    }

    /// The signature counter last seen (0: the authenticator keeps none).
    pub fn counter(&self) -> u32 {
        self.0.counter
    }

    /// Whether the authenticator verified the user (PIN, biometric) at registration.
    pub fn user_verified_at_registration(&self) -> bool {
        self.0.user_verified
    }

    /// The credential as the controller stores it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Self, Refusal> {
        serde_json::from_value(value.clone())
            .map(Self)
            .map_err(|e| Refusal::Other(format!("a stored credential is unreadable: {e}")))
    }
}

fn id_hash(id: &[u8]) -> String {
    hex::encode(&Sha256::digest(id)[..16])
}

/// A verified authentication: which key, whether the person was verified, and the credential
/// with its new counter (to be stored before the grant is issued).
#[derive(Clone, Debug)]
pub struct Verified {
    pub credential_id_hash: String,
    pub user_verified: bool,
    pub counter: u32,
    pub updated: StoredCredential,
}

/// The relying party: its id (a domain) and the origins its ceremony pages are served from.
pub struct RelyingParty {
    core: WebauthnCore,
}

impl RelyingParty {
    /// `rp_id` is the domain credentials are bound to; `origins` are where the ceremony page
    /// runs: the plugin's own loopback page (`http://localhost`, any port) or an https origin
    /// of the organisation whose host is `rp_id` or below it.
    pub fn new(rp_id: &str, origins: &[Url]) -> Result<Self, ConfigError> {
        if rp_id.is_empty() || rp_id.contains(['/', ':']) {
            return Err(ConfigError(format!("the rp id {rp_id:?} must be a domain name, such as stepup.example.com")));
        }
        if origins.is_empty() {
            return Err(ConfigError("at least one origin is needed".into()));
        }
        let mut loopback = false;
        for origin in origins {
            let host = origin.host_str().unwrap_or_default();
            let http_localhost = origin.scheme() == "http" && host == "localhost";
            loopback |= http_localhost;
            if !(http_localhost || origin.scheme() == "https") {
                return Err(ConfigError(format!(
                    "the origin {origin} is neither https nor http://localhost: browsers refuse WebAuthn there"
                )));
            }
            if !(host == rp_id || host.ends_with(&format!(".{rp_id}"))) {
                return Err(ConfigError(format!("the origin {origin} is not within the rp id {rp_id:?}")));
            }
        }
        let core = WebauthnCore::new_unsafe_experts_only(
            "kube-stepup",
            rp_id,
            origins.to_vec(),
            std::time::Duration::from_secs(CEREMONY_TTL.as_secs() as u64),
            Some(false),
            // The plugin's page listens on a port of the moment.
            Some(loopback),
        );
        Ok(Self { core })
    }

    /// Options for registering a new authenticator of `user` (`handle`: a stable opaque id of
    /// the person, never the name), excluding the ones already registered; and the state to
    /// keep.
    pub fn start_registration(
        &self,
        user: &str,
        handle: &[u8],
        existing: &[StoredCredential],
        now: Timestamp,
    ) -> Result<(String, PendingRegistration), Refusal> {
        let exclude = existing.iter().map(|c| c.0.cred_id.clone()).collect();
        let builder = self
            .core
            .new_challenge_register_builder(handle, user, user)
            .map_err(Refusal::from_library)?
            .user_verification_policy(UserVerificationPolicy::Preferred)
            .exclude_credentials(Some(exclude));
        let (options, state) = self.core.generate_challenge_register(builder).map_err(Refusal::from_library)?;
        started(&options, Pending { user: user.to_owned(), issued_at: now, verify_user: false, state })
    }

    /// Judges the browser's answer to a registration (`response`, the credential's JSON) for
    /// `user`, within `valid_for` of the options; the new credential, unless it is one of
    /// `existing`. (A registration's options are sealed to the enrolling plugin, which may
    /// come back for them within the approval window; an authentication's are not.)
    pub fn finish_registration(
        &self,
        pending: &PendingRegistration,
        user: &str,
        response: &str,
        existing: &[StoredCredential],
        now: Timestamp,
        valid_for: SignedDuration,
    ) -> Result<StoredCredential, Refusal> {
        pending.fresh(user, now, valid_for)?;
        let answer: RegisterPublicKeyCredential = parse(response)?;
        let credential = self.core.register_credential(&answer, &pending.state, None).map_err(Refusal::from_library)?;
        if existing.iter().any(|c| c.0.cred_id == credential.cred_id) {
            return Err(Refusal::AlreadyRegistered);
        }
        Ok(StoredCredential(credential))
    }

    /// Options for proving possession of one of `credentials` (the person's registered keys),
    /// demanding user verification when `verify_user`; and the state to keep.
    pub fn start_authentication(
        &self,
        user: &str,
        credentials: &[StoredCredential],
        verify_user: bool,
        now: Timestamp,
    ) -> Result<(String, PendingAuthentication), Refusal> {
        if credentials.is_empty() {
            return Err(Refusal::NoCredential);
        }
        let policy = if verify_user { UserVerificationPolicy::Required } else { UserVerificationPolicy::Preferred };
        let creds: Vec<Credential> = credentials.iter().map(|c| c.0.clone()).collect();
        let builder =
            self.core.new_challenge_authenticate_builder(creds, Some(policy)).map_err(Refusal::from_library)?;
        let (options, state) = self.core.generate_challenge_authenticate(builder).map_err(Refusal::from_library)?;
        started(&options, Pending { user: user.to_owned(), issued_at: now, verify_user, state })
    }

    /// Judges the browser's answer to an authentication for `user`, against the person's keys
    /// as registered now (`credentials`: one removed since the options were sent counts for
    /// nothing, and the counter is compared with the newest one stored).
    pub fn finish_authentication(
        &self,
        pending: PendingAuthentication,
        user: &str,
        response: &str,
        credentials: &[StoredCredential],
        now: Timestamp,
    ) -> Result<Verified, Refusal> {
        pending.fresh(user, now, CEREMONY_TTL)?;
        let answer: PublicKeyCredential = parse(response)?;
        let result = self.core.authenticate_credential(&answer, &pending.state).map_err(|e| match e {
            // The state's copy of the counter: the same judgement as against the stored one
            // below, said with the figures.
            WebauthnError::CredentialPossibleCompromise => Refusal::ClonedAuthenticator {
                stored: credentials.iter().find(|c| c.0.cred_id == answer.raw_id).map_or(0, |c| c.0.counter),
                presented: presented_counter(&answer).unwrap_or_default(),
            },
            other => Refusal::from_library(other),
        })?;
        let Some(stored) = credentials.iter().find(|c| &c.0.cred_id == result.cred_id()) else {
            return Err(Refusal::UnknownCredential);
        };
        let presented = result.counter();
        if (presented > 0 || stored.0.counter > 0) && presented <= stored.0.counter {
            return Err(Refusal::ClonedAuthenticator { stored: stored.0.counter, presented });
        }
        if pending.verify_user && !result.user_verified() {
            return Err(Refusal::UserNotVerified);
        }
        let mut updated = stored.clone();
        updated.0.counter = presented;
        Ok(Verified {
            credential_id_hash: stored.id_hash(),
            user_verified: result.user_verified(),
            counter: presented,
            updated,
        })
    }
}

/// A started ceremony: the options for the browser (JSON) and the state the controller keeps.
fn started<S>(options: &impl Serialize, pending: Pending<S>) -> Result<(String, Pending<S>), Refusal> {
    let json = serde_json::to_string(options).map_err(|e| Refusal::Other(e.to_string()))?;
    Ok((json, pending))
}

fn parse<T: serde::de::DeserializeOwned>(response: &str) -> Result<T, Refusal> {
    if response.len() > MAX_RESPONSE_BYTES {
        return Err(Refusal::Malformed(format!("{} bytes, more than {MAX_RESPONSE_BYTES}", response.len())));
    }
    serde_json::from_str(response).map_err(|e| Refusal::Malformed(e.to_string()))
}

/// The signature counter in an assertion's authenticator data (bytes 33..37, big-endian).
fn presented_counter(answer: &PublicKeyCredential) -> Option<u32> {
    let data: &[u8] = answer.response.authenticator_data.as_ref();
    Some(u32::from_be_bytes(data.get(33..37)?.try_into().ok()?))
}

#[cfg(test)]
mod tests;
