//! Sealing the enrollment seed to the plugin's ephemeral X25519 key (libsodium's
//! `crypto_box_seal`: X25519 + XSalsa20-Poly1305, RustCrypto's crypto_box). Only the holder of
//! the ephemeral secret key can open it; the sealed copy can sit in the enrollment's status.

use base64::{Engine, engine::general_purpose::STANDARD};
use crypto_box::{PublicKey, SecretKey};
use rand_core::OsRng;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("the sealed secret is not base64")]
    BadEncoding,
    #[error("the sealed secret cannot be opened with this key (tampered with, or sealed to another key)")]
    CannotOpen,
    #[error("sealing failed")]
    Seal,
}

/// Seals `plaintext` to a base64 X25519 public key; returns base64.
pub fn seal(public_key_b64: &str, plaintext: &[u8]) -> Result<String, SealError> {
    let bytes = STANDARD.decode(public_key_b64).map_err(|_| SealError::BadPublicKey)?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadPublicKey)?;
    let sealed = PublicKey::from(key).seal(&mut OsRng, plaintext).map_err(|_| SealError::Seal)?;
    Ok(STANDARD.encode(sealed))
}

/// The fingerprint of a base64 public key, as the plugin shows it and an admin approves it:
/// 96 bits of its SHA-256 in six groups of four hex digits (`3f2a-91c0-77de-0b14-aa58-c3e9`).
/// Finding another key with the same fingerprint takes about 2^96 work, far beyond an
/// approval's window. What is hashed is the text of `spec.publicKey` as stored.
pub fn fingerprint(public_key_b64: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(public_key_b64.trim().as_bytes());
    let hex = hex::encode(&digest[..12]);
    hex.as_bytes().chunks(4).filter_map(|c| std::str::from_utf8(c).ok()).collect::<Vec<_>>().join("-")
}

/// A fingerprint as a person types it (any case, with or without dashes or spaces), in the
/// canonical form of [`fingerprint`]; `None` when it is not 24 hex digits.
pub fn normalize_fingerprint(typed: &str) -> Option<String> {
    let digits: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (digits.len() == 24 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digits.as_bytes().chunks(4).filter_map(|c| std::str::from_utf8(c).ok()).collect::<Vec<_>>().join("-"))
}

/// The plugin's side: a key pair that lives only for one enrollment.
pub struct EphemeralKey {
    secret: SecretKey,
}

impl EphemeralKey {
    pub fn generate() -> Self {
        Self { secret: SecretKey::generate(&mut OsRng) }
    }

    pub fn public_key_b64(&self) -> String {
        STANDARD.encode(self.secret.public_key().as_bytes())
    }

    pub fn open(&self, sealed_b64: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let sealed = STANDARD.decode(sealed_b64.trim()).map_err(|_| SealError::BadEncoding)?;
        self.secret.unseal(&sealed).map(Zeroizing::new).map_err(|_| SealError::CannotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ephemeral_key_opens_what_was_sealed_to_it() {
        let key = EphemeralKey::generate();
        let sealed = seal(&key.public_key_b64(), b"seed material").unwrap();
        assert!(!sealed.contains("seed"));
        assert_eq!(&**key.open(&sealed).unwrap(), b"seed material");
        assert_eq!(EphemeralKey::generate().open(&sealed).unwrap_err(), SealError::CannotOpen);
    }

    #[test]
    fn tampered_ciphertexts_do_not_open() {
        let key = EphemeralKey::generate();
        let sealed = seal(&key.public_key_b64(), b"seed material").unwrap();
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(key.open(&STANDARD.encode(bytes)).unwrap_err(), SealError::CannotOpen);
        assert_eq!(key.open("not base64!").unwrap_err(), SealError::BadEncoding);
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert_eq!(seal("AAAA", b"x").unwrap_err(), SealError::BadPublicKey);
        assert_eq!(seal("%%%", b"x").unwrap_err(), SealError::BadPublicKey);
    }

    #[test]
    fn fingerprints_are_short_stable_and_typeable() {
        let key = EphemeralKey::generate().public_key_b64();
        let fp = fingerprint(&key);
        assert_eq!(fp, fingerprint(&key));
        assert_eq!(fp.len(), 29, "{fp}");
        assert_ne!(fp, fingerprint(&EphemeralKey::generate().public_key_b64()));
        assert_eq!(normalize_fingerprint(&fp.to_uppercase().replace('-', " ")), Some(fp.clone()));
        assert_eq!(normalize_fingerprint(&fp.replace('-', "")), Some(fp.clone()));
        assert_eq!(normalize_fingerprint("3f2a-91c0"), None);
        assert_eq!(normalize_fingerprint("zzzz-91c0-77de-0b14-aa58-c3e9"), None);
    }

    #[test]
    fn public_keys_match_the_crd_pattern() {
        let k = EphemeralKey::generate().public_key_b64();
        assert_eq!(k.len(), 44);
        assert!(k.ends_with('=') && !k.ends_with("=="));
    }
}
