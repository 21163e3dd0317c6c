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
    fn public_keys_match_the_crd_pattern() {
        let k = EphemeralKey::generate().public_key_b64();
        assert_eq!(k.len(), 44);
        assert!(k.ends_with('=') && !k.ends_with("=="));
    }
}
