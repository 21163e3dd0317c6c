//! RFC 6238 TOTP with the authenticator-app defaults: HMAC-SHA-1, 6 digits, 30-second steps,
//! one step of clock skew either way, constant-time comparison (totp-rs), 160-bit seeds from
//! the OS CSPRNG.

use jiff::Timestamp;
use rand_core::{OsRng, RngCore};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use super::{Rejection, Verifier};
use crate::api::Method;

pub const DIGITS: u8 = 6;
pub const STEP_SECONDS: u64 = 30;
pub const SKEW_STEPS: u16 = 1;
/// How far (in steps, either way) a refused code is compared to tell "right for another time"
/// from wrong: 10 minutes. It never accepts anything; it only picks the message.
pub const NEAR_STEPS: i64 = 20;
/// 160 bits, as RFC 4226 recommends and authenticator apps expect.
pub const SEED_BYTES: usize = 20;

/// A fresh seed from the operating system's CSPRNG, wiped from memory when dropped.
pub fn generate_seed() -> Zeroizing<Vec<u8>> {
    let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
    OsRng.fill_bytes(&mut seed);
    seed
}

fn totp(seed: &[u8], skew: u16) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(skew)
        .with_step_duration(STEP_SECONDS)
        .with_secret(seed.to_vec())
        .build()
        .ok()
}

fn unix_seconds(t: Timestamp) -> u64 {
    t.as_second().max(0) as u64
}

/// The code an authenticator app shows at `at` (tests and the e2e "authenticator" use it).
pub fn code_at(seed: &[u8], at: Timestamp) -> String {
    totp(seed, 0).map(|t| t.generate(unix_seconds(at)).to_string()).unwrap_or_default()
}

/// The time step a timestamp falls in.
pub fn step_of(at: Timestamp) -> u64 {
    unix_seconds(at) / STEP_SECONDS
}

/// `otpauth://totp/...` for the QR code. Labels may not contain ':', which usernames can.
pub fn otpauth_uri(seed: &[u8], issuer: &str, account: &str) -> String {
    let secret = base32_encode(seed);
    let enc = |s: &str| -> String {
        s.replace(':', "_")
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// RFC 4648 base32 without padding, the form authenticator apps read.
pub fn base32_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The TOTP verifier.
#[derive(Clone, Copy, Debug, Default)]
pub struct TotpVerifier;

impl Verifier for TotpVerifier {
    fn method(&self) -> Method {
        Method::Totp
    }

    fn verify(&self, seed: &[u8], response: &str, now: Timestamp, last_step: Option<u64>) -> Result<u64, Rejection> {
        if response.len() != DIGITS as usize || !response.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::Malformed);
        }
        let totp = totp(seed, SKEW_STEPS).ok_or(Rejection::Wrong)?;
        let step = totp.check(response, unix_seconds(now)).ok_or_else(|| near_miss(seed, response, now))?;
        // Strictly later than the last accepted step: a code is good once, and an older code
        // seen after a newer one is a replay too.
        match last_step {
            Some(last) if step <= last => Err(Rejection::Replayed),
            _ => Ok(step),
        }
    }
}

/// Why a code outside the accepted window was refused: right for a time near now, or wrong.
/// Every step is compared (no early exit on a match), in constant time.
fn near_miss(seed: &[u8], response: &str, now: Timestamp) -> Rejection {
    let mut near = false;
    for steps in (-NEAR_STEPS..=NEAR_STEPS).filter(|s| s.unsigned_abs() > u64::from(SKEW_STEPS)) {
        let Ok(at) = now.checked_add(jiff::SignedDuration::from_secs(steps * STEP_SECONDS as i64)) else { continue };
        let code = code_at(seed, at);
        near |= constant_time_eq(code.as_bytes(), response.as_bytes());
    }
    if near { Rejection::OutOfWindow } else { Rejection::Wrong }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 seed "12345678901234567890", truncated to 6 digits.
    #[test]
    fn matches_the_rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (unix, code) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(code_at(seed, Timestamp::from_second(unix).unwrap()), code, "t={unix}");
        }
    }

    #[test]
    fn accepts_one_step_of_skew_either_way_and_no_more() {
        let seed = generate_seed();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let v = TotpVerifier;
        for (offset, ok) in [(-60, false), (-30, true), (0, true), (30, true), (60, false)] {
            let code = code_at(&seed, now + jiff::SignedDuration::from_secs(offset));
            assert_eq!(v.verify(&seed, &code, now, None).is_ok(), ok, "offset {offset}s");
        }
    }

    /// A newcomer's report (issue 30): a five-minute-old code and a wrong one got the same
    /// answer. Both are refused; only the reason differs. Fixed seed and time: deterministic.
    #[test]
    fn a_code_right_for_another_time_is_refused_as_out_of_window() {
        let seed = b"12345678901234567890";
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let v = TotpVerifier;
        for offset in [-600, -300, -90, 90, 300, 600] {
            let code = code_at(seed, now + jiff::SignedDuration::from_secs(offset));
            assert_eq!(v.verify(seed, &code, now, None), Err(Rejection::OutOfWindow), "offset {offset}s");
        }
        for offset in [-3600, -660, 660, 3600] {
            let code = code_at(seed, now + jiff::SignedDuration::from_secs(offset));
            assert_eq!(v.verify(seed, &code, now, None), Err(Rejection::Wrong), "offset {offset}s");
        }
    }

    #[test]
    fn refuses_a_code_whose_step_was_already_used() {
        let seed = generate_seed();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let code = code_at(&seed, now);
        let step = TotpVerifier.verify(&seed, &code, now, None).unwrap();
        assert_eq!(step, step_of(now));
        assert_eq!(TotpVerifier.verify(&seed, &code, now, Some(step)), Err(Rejection::Replayed));
        // The previous step's code is still inside the skew window, but older than the last use.
        let older = code_at(&seed, now - jiff::SignedDuration::from_secs(30));
        assert_eq!(TotpVerifier.verify(&seed, &older, now, Some(step)), Err(Rejection::Replayed));
        let next = code_at(&seed, now + jiff::SignedDuration::from_secs(30));
        assert_eq!(TotpVerifier.verify(&seed, &next, now, Some(step)), Ok(step + 1));
    }

    #[test]
    fn rejects_malformed_and_wrong_codes() {
        let seed = generate_seed();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        for bad in ["", "12345", "1234567", "12a456", " 123456", "١٢٣٤٥٦"] {
            assert_eq!(TotpVerifier.verify(&seed, bad, now, None), Err(Rejection::Malformed), "{bad:?}");
        }
        let right = code_at(&seed, now);
        let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(TotpVerifier.verify(&seed, &wrong, now, None), Err(Rejection::Wrong));
        assert_eq!(
            TotpVerifier.verify(&[1, 2, 3], &right, now, None),
            Err(Rejection::Wrong),
            "short seeds are refused"
        );
    }

    #[test]
    fn seeds_are_160_bits_and_differ() {
        let (a, b) = (generate_seed(), generate_seed());
        assert_eq!(a.len(), 20);
        assert_ne!(*a, *b);
    }

    #[test]
    fn otpauth_uri_is_what_authenticator_apps_read() {
        let uri = otpauth_uri(b"12345678901234567890", "kube-stepup prod", "oidc:alice@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/kube-stepup%20prod:oidc_alice@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=kube-stepup%20prod&algorithm=SHA1&digits=6&period=30"
        );
    }
}
