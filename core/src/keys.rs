//! The controller's own keys. Pure (no I/O but reading the key file): everything derives from
//! one 32-byte master key that is mounted as a file (a KMS or secrets-store CSI volume in a
//! hardened install), never read from the Kubernetes API, so that a stolen API credential of
//! any rank can neither forge a grant, read a one-time code nor decrypt a factor seed.
//!
//! - grant signing (Ed25519): the controller signs every grant it issues; the webhook honours
//!   only grants whose signature verifies, so a grant written by anyone else is worthless;
//! - response sealing (X25519, libsodium sealed box): the plugin seals one-time codes and
//!   enrollment confirmations to the controller's public key, so watching challenges and
//!   enrollments reveals nothing usable;
//! - factor encryption (XSalsa20-Poly1305): factor Secrets hold seeds and replay/lockout state
//!   only encrypted and authenticated, bound to their user, so reading or editing the Secret
//!   yields nothing usable.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use crypto_secretbox::{KeyInit, XSalsa20Poly1305, aead::Aead};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::api::{GrantScope, StepUpGrant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "the key file {path} does not hold a key: expected 32 random bytes, raw or base64 (make one with `stepup keygen`)"
    )]
    Format { path: String },
    #[error("the public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("the sealed value is not base64")]
    BadEncoding,
    #[error("the sealed value cannot be opened with the controller's key (sealed to another key, or tampered with)")]
    CannotOpen,
    #[error("the sealed value does not hold a response: {0}")]
    BadResponse(String),
    #[error("sealing failed")]
    Seal,
}

/// The 32-byte master key every other key derives from.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A key file's contents: 32 raw bytes, or their base64 (surrounding whitespace ignored);
    /// `path` names the file in the error. Reading it is the shell's (`config::read_master_key`).
    pub fn from_file_contents(raw: &[u8], path: &str) -> Result<Self, KeyError> {
        Self::parse(raw).ok_or_else(|| KeyError::Format { path: path.to_owned() })
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        if let Ok(bytes) = <[u8; 32]>::try_from(raw) {
            return Some(Self::from_bytes(bytes));
        }
        let text = std::str::from_utf8(raw).ok()?.trim();
        let decoded = Zeroizing::new(STANDARD.decode(text).ok()?);
        <[u8; 32]>::try_from(decoded.as_slice()).ok().map(Self::from_bytes)
    }

    /// The key as base64, the form `stepup keygen` prints and key files hold.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }

    /// HKDF-SHA256 of the master key for one purpose; purposes never share key material.
    fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"kube-stepup"), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        hk.expand(purpose.as_bytes(), out.as_mut()).expect("32-byte HKDF output");
        out
    }

    pub fn grant_signer(&self) -> GrantSigner {
        GrantSigner(SigningKey::from_bytes(&self.derive("grant-signing/v1")))
    }

    pub fn grant_verifier(&self) -> GrantVerifier {
        self.grant_signer().verifier()
    }

    pub fn response_opener(&self) -> ResponseOpener {
        ResponseOpener(crypto_box::SecretKey::from_bytes(*self.derive("response-sealing/v1")))
    }

    pub fn factor_cipher(&self) -> FactorCipher {
        FactorCipher(self.derive("factor-encryption/v1"))
    }

    pub fn bootstrap_key(&self) -> BootstrapKey {
        BootstrapKey(self.derive("bootstrap-token/v1"))
    }
}

// ---------------------------------------------------------------- the bootstrap token

/// Makes the one-time bootstrap's token. The controller publishes the token in a Secret of its
/// namespace that only installers can read; an enrollment proves it was made by someone who read
/// it ([`bootstrap_proof`]), so a user who races the webhook's registration during installation
/// cannot take the bootstrap.
pub struct BootstrapKey(Zeroizing<[u8; 32]>);

/// The Secret (in stepup's namespace) the controller publishes the token in, while the
/// bootstrap is open; empty once it closes.
pub const BOOTSTRAP_TOKEN_SECRET: &str = "stepup-bootstrap-token";
/// Its one key.
pub const BOOTSTRAP_TOKEN_KEY: &str = "token";

impl BootstrapKey {
    /// The token of the bootstrap window opened at `opened_at` (base64url, no padding): derived,
    /// so the controller keeps no copy, and a new window has a new token.
    pub fn token(&self, opened_at: jiff::Timestamp) -> Zeroizing<String> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("HMAC takes any key length");
        mac.update(format!("stepup.dev/bootstrap/v1\n{}", opened_at.as_millisecond()).as_bytes());
        Zeroizing::new(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }
}

/// What an enrollment carries to use the bootstrap: HMAC-SHA256 under the token of the user
/// and the public key it enrolls (base64url), so a proof seen in one enrollment proves nothing
/// for another user or key.
pub fn bootstrap_proof(token: &str, user: &str, public_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(bootstrap_mac(token, user, public_key).finalize().into_bytes())
}

/// Whether `proof` is [`bootstrap_proof`] of `token`, `user` and `public_key` (constant time).
pub fn verify_bootstrap_proof(token: &str, user: &str, public_key: &str, proof: &str) -> bool {
    URL_SAFE_NO_PAD.decode(proof).is_ok_and(|bytes| bootstrap_mac(token, user, public_key).verify_slice(&bytes).is_ok())
}

fn bootstrap_mac(token: &str, user: &str, public_key: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("stepup.dev/bootstrap-proof/v1\n{user}\n{public_key}").as_bytes());
    mac
}

// ---------------------------------------------------------------- grant signatures

/// What a grant's signature covers: every field that decides what the grant permits. Times
/// are Unix seconds, because the API server stores timestamps with second precision.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantClaims<'a> {
    pub name: &'a str,
    pub user: &'a str,
    pub uid: &'a str,
    pub method: &'a str,
    pub reason: &'a str,
    pub issued_at: i64,
    pub expires_at: i64,
    pub scope: &'a GrantScope,
    pub challenge_uid: &'a str,
    /// Absent for a grant without them, so that earlier grants' signatures still verify.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub acr: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub amr: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    pub credential_id_hash: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub user_verified: bool,
}

impl<'a> GrantClaims<'a> {
    pub fn of(grant: &'a StepUpGrant) -> Self {
        let spec = &grant.spec;
        Self {
            name: grant.metadata.name.as_deref().unwrap_or(""),
            user: &spec.user,
            uid: spec.uid.as_deref().unwrap_or(""),
            method: spec.method.as_str(),
            reason: spec.reason.as_deref().unwrap_or(""),
            issued_at: spec.issued_at.0.as_second(),
            expires_at: spec.expires_at.0.as_second(),
            scope: &spec.scope,
            challenge_uid: spec.challenge_ref.as_ref().map(|c| c.uid.as_str()).unwrap_or(""),
            acr: spec.acr.as_deref().unwrap_or(""),
            amr: &spec.amr,
            credential_id_hash: spec.credential_id_hash.as_deref().unwrap_or(""),
            user_verified: spec.user_verified,
        }
    }

    /// The signed bytes: a domain prefix, then the claims as JSON (fixed field order).
    fn message(&self) -> Vec<u8> {
        let mut out = b"stepup.dev/grant/v1\n".to_vec();
        // Serializing strings, integers and string lists cannot fail.
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out
    }
}

/// The controller's signing key for grants.
pub struct GrantSigner(SigningKey);

impl GrantSigner {
    /// The base64 signature to put in `spec.signature`.
    pub fn sign(&self, claims: &GrantClaims<'_>) -> String {
        STANDARD.encode(self.0.sign(&claims.message()).to_bytes())
    }

    /// Signs `grant` in place. Call after every field is final.
    pub fn sign_grant(&self, grant: &mut StepUpGrant) {
        let signature = self.sign(&GrantClaims::of(grant));
        grant.spec.signature = Some(signature);
    }

    pub fn verifier(&self) -> GrantVerifier {
        GrantVerifier(self.0.verifying_key())
    }
}

/// Checks grant signatures: what the webhook needs, and all it can derive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantVerifier(VerifyingKey);

impl GrantVerifier {
    pub fn from_public_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::BadPublicKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadPublicKey)?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| KeyError::BadPublicKey)
    }

    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// Whether `grant` carries a valid signature by the controller over its current fields.
    pub fn verifies(&self, grant: &StepUpGrant) -> bool {
        let Some(signature) = grant.spec.signature.as_deref() else { return false };
        let Ok(bytes) = STANDARD.decode(signature) else { return false };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else { return false };
        self.0.verify_strict(&GrantClaims::of(grant).message(), &signature).is_ok()
    }
}

// ---------------------------------------------------------------- sealed responses

/// What the plugin seals to the controller: the code, and a digest of what it is for (the
/// challenge or enrollment as the user's own plugin created it), so that a copied or
/// re-targeted response is refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SealedResponse {
    pub v: u8,
    pub code: String,
    /// [`binding`] of the object the response is for.
    pub binding: String,
}

impl Drop for SealedResponse {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.code.zeroize();
    }
}

/// The hex SHA-256 of `parts`, each length-prefixed: what a sealed response is bound to.
pub fn binding(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"stepup.dev/binding/v1");
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Seals `response` to the controller's response key (base64 X25519 public key): the plugin's side.
pub fn seal_response(public_key_b64: &str, response: &SealedResponse) -> Result<String, KeyError> {
    let bytes = STANDARD.decode(public_key_b64.trim()).map_err(|_| KeyError::BadPublicKey)?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadPublicKey)?;
    let plaintext = Zeroizing::new(serde_json::to_vec(response).map_err(|_| KeyError::Seal)?);
    let sealed = crypto_box::PublicKey::from(key).seal(&mut OsRng, &plaintext).map_err(|_| KeyError::Seal)?;
    Ok(STANDARD.encode(sealed))
}

/// The controller's side of sealed responses.
pub struct ResponseOpener(crypto_box::SecretKey);

impl ResponseOpener {
    /// The public key the controller publishes for the plugin (base64).
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.0.public_key().as_bytes())
    }

    pub fn open(&self, sealed_b64: &str) -> Result<SealedResponse, KeyError> {
        let sealed = STANDARD.decode(sealed_b64.trim()).map_err(|_| KeyError::BadEncoding)?;
        let plaintext = Zeroizing::new(self.0.unseal(&sealed).map_err(|_| KeyError::CannotOpen)?);
        let response: SealedResponse =
            serde_json::from_slice(&plaintext).map_err(|e| KeyError::BadResponse(e.to_string()))?;
        if response.v != 1 {
            return Err(KeyError::BadResponse(format!("unknown version {}", response.v)));
        }
        Ok(response)
    }
}

// ---------------------------------------------------------------- factor encryption

/// Encrypts and authenticates factor Secrets, bound to their user: each user's blobs are
/// sealed under a key derived for that user (secretbox has no associated data), so a blob
/// copied from one user's Secret into another's does not open.
pub struct FactorCipher(Zeroizing<[u8; 32]>);

const NONCE_BYTES: usize = 24;

impl FactorCipher {
    fn for_user(&self, user: &str) -> XSalsa20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(b"kube-stepup/factor"), self.0.as_ref());
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        hk.expand(user.as_bytes(), key.as_mut()).expect("32-byte HKDF output");
        XSalsa20Poly1305::new((&*key).into())
    }

    /// `nonce || ciphertext`.
    pub fn encrypt(&self, user: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        // XSalsa20-Poly1305 encryption of an in-memory buffer cannot fail.
        let ciphertext = self.for_user(user).encrypt((&nonce).into(), plaintext).expect("in-memory encryption");
        let mut out = nonce.to_vec();
        out.extend(ciphertext);
        out
    }

    /// `None` when the blob was not made by this key for this user, or was altered.
    pub fn decrypt(&self, user: &str, blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if blob.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_BYTES);
        let nonce: &[u8; NONCE_BYTES] = nonce.try_into().ok()?;
        self.for_user(user).decrypt(nonce.into(), ciphertext).ok().map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grant, t0};

    fn key(n: u8) -> MasterKey {
        MasterKey::from_bytes([n; 32])
    }

    #[test]
    fn key_files_hold_raw_or_base64_bytes_and_nothing_else() {
        let a = MasterKey::from_file_contents(&[7u8; 32], "raw").unwrap();
        let b = MasterKey::from_file_contents(format!("  {}\n", STANDARD.encode([7u8; 32])).as_bytes(), "b64").unwrap();
        assert_eq!(a.grant_verifier(), b.grant_verifier());
        assert!(matches!(MasterKey::from_file_contents(b"c2hvcnQ=", "short"), Err(KeyError::Format { .. })));
        assert!(!format!("{a:?}").contains('7'), "debug output never shows the key");
    }

    #[test]
    fn purposes_derive_different_keys() {
        let k = key(1);
        let signing = k.derive("grant-signing/v1");
        assert_ne!(*signing, *k.derive("response-sealing/v1"));
        assert_ne!(*signing, *k.derive("factor-encryption/v1"));
        assert_ne!(*signing, [1u8; 32]);
    }

    #[test]
    fn only_grants_signed_by_the_controllers_key_verify() {
        let (signer, verifier) = (key(1).grant_signer(), key(1).grant_verifier());
        let mut g = grant("g", "alice").issued(t0()).expires(t0() + crate::testing::minutes(60)).build();
        assert!(!verifier.verifies(&g), "unsigned");
        signer.sign_grant(&mut g);
        assert!(verifier.verifies(&g));
        assert!(!key(2).grant_verifier().verifies(&g), "another key");
        // Every field that matters is covered.
        let tamper: [fn(&mut StepUpGrant); 11] = [
            |g| g.spec.credential_id_hash = Some("another key".into()),
            |g| g.spec.credential_id_hash = None,
            |g| g.spec.user_verified = true,
            |g| g.spec.acr = Some("3".into()),
            |g| g.spec.amr.push("hwk".into()),
            |g| g.spec.user = "bob".into(),
            |g| g.spec.expires_at.0 += jiff::SignedDuration::from_hours(1),
            |g| g.spec.issued_at.0 += jiff::SignedDuration::from_secs(1),
            |g| g.spec.scope.namespaces.clear(),
            |g| g.spec.reason = Some("other".into()),
            |g| g.metadata.name = Some("renamed".into()),
        ];
        for (i, change) in tamper.iter().enumerate() {
            let mut copy = g.clone();
            copy.spec.scope.namespaces = vec!["prod".into()];
            copy.spec.acr = Some("1".into());
            copy.spec.amr = vec!["pwd".into()];
            copy.spec.credential_id_hash = Some("00ff".into());
            signer.sign_grant(&mut copy);
            change(&mut copy);
            assert!(!verifier.verifies(&copy), "change {i} keeps the signature valid");
        }
        let mut garbage = g.clone();
        garbage.spec.signature = Some("not base64!".into());
        assert!(!verifier.verifies(&garbage));
        assert_eq!(GrantVerifier::from_public_base64(&verifier.public_base64()).unwrap(), verifier);
    }

    /// Grants signed before acr and amr were covered still verify: absent fields add nothing
    /// to the signed bytes.
    #[test]
    fn a_grant_without_acr_or_amr_signs_the_bytes_it_always_did() {
        let g = grant("g", "alice").issued(t0()).build();
        let message = String::from_utf8(GrantClaims::of(&g).message()).unwrap();
        assert!(!message.contains("acr") && !message.contains("amr"), "{message}");
        assert!(message.ends_with(r#""challengeUid":""}"#), "{message}");
    }

    #[test]
    fn sub_second_times_do_not_change_the_signature() {
        let signer = key(1).grant_signer();
        let mut g = grant("g", "alice").issued(t0() + jiff::SignedDuration::from_millis(300)).build();
        signer.sign_grant(&mut g);
        // What the API server hands back: the same instant, truncated to the second.
        g.spec.issued_at.0 = t0();
        assert!(key(1).grant_verifier().verifies(&g));
    }

    #[test]
    fn responses_open_only_with_the_controllers_key() {
        let opener = key(1).response_opener();
        let response = SealedResponse { v: 1, code: "123456".into(), binding: binding(&["challenge", "c1"]) };
        let sealed = seal_response(&opener.public_base64(), &response).unwrap();
        assert!(!sealed.contains("123456"));
        assert_eq!(opener.open(&sealed).unwrap(), response);
        assert_eq!(key(2).response_opener().open(&sealed).unwrap_err(), KeyError::CannotOpen);
        assert_eq!(opener.open("%%").unwrap_err(), KeyError::BadEncoding);
        assert_eq!(seal_response("AAAA", &response).unwrap_err(), KeyError::BadPublicKey);
    }

    #[test]
    fn bindings_are_unambiguous() {
        assert_ne!(binding(&["ab", "c"]), binding(&["a", "bc"]));
        assert_eq!(binding(&["a"]), binding(&["a"]));
        assert_eq!(binding(&["a"]).len(), 64);
    }

    #[test]
    fn factor_blobs_open_only_for_their_user_and_key() {
        let cipher = key(1).factor_cipher();
        let blob = cipher.encrypt("alice", b"seed and state");
        assert!(!blob.windows(4).any(|w| w == b"seed"));
        assert_eq!(cipher.decrypt("alice", &blob).as_deref().map(|v| v.as_slice()), Some(&b"seed and state"[..]));
        assert!(cipher.decrypt("bob", &blob).is_none(), "bound to the user");
        assert!(key(2).factor_cipher().decrypt("alice", &blob).is_none(), "bound to the key");
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(cipher.decrypt("alice", &flipped).is_none(), "authenticated");
        assert!(cipher.decrypt("alice", &blob[..10]).is_none());
        assert_ne!(cipher.encrypt("alice", b"x"), cipher.encrypt("alice", b"x"), "fresh nonce each time");
    }
}
