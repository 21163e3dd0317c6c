//! The webhook's serving certificate, made and rotated by the controller: a CA and a leaf in
//! one Secret. The leaf is renewed well before expiry; when the CA itself is rotated, the old
//! CA stays in the caBundle next to the new one until it expires, so API servers that still
//! hold the old bundle and webhook pods that still serve the old leaf keep trusting each other.

use std::collections::BTreeMap;

use crate::pki::{CertificateAuthority, PkiError};
pub use crate::pki::{names, not_after};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{ByteString, api::core::v1::Secret};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// Annotation on the Secret asking for an immediate rotation: `leaf` or `ca`.
pub const ROTATE_ANNOTATION: &str = "stepup.dev/rotate";

#[derive(Clone, Debug)]
pub struct CertSettings {
    pub secret_name: String,
    /// DNS names (and IP addresses) the leaf is valid for.
    pub names: Vec<String>,
    pub ca_validity: SignedDuration,
    pub leaf_validity: SignedDuration,
}

/// Everything in the TLS Secret, PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_cert: String,
    pub ca_key: String,
    pub previous_ca_cert: Option<String>,
    pub cert: String,
    pub key: String,
}

/// What the certificates need now. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// New leaf from the same CA.
    RenewLeaf,
    /// New CA (the old one kept in the bundle) and a new leaf from it.
    RotateCa,
    /// Nothing usable: start over.
    Create,
}

/// Renew when less than a third of the lifetime is left.
fn due(expiry: Option<Timestamp>, validity: SignedDuration, now: Timestamp) -> bool {
    match expiry {
        None => true,
        Some(at) => at.duration_since(now) < validity / 3,
    }
}

pub fn plan(current: Option<&TlsMaterial>, requested: Option<&str>, now: Timestamp, s: &CertSettings) -> Plan {
    let Some(m) = current else { return Plan::Create };
    if m.ca_cert.is_empty() || m.ca_key.is_empty() || not_after(&m.ca_cert).is_none() {
        return Plan::Create;
    }
    if requested == Some("ca") || due(not_after(&m.ca_cert), s.ca_validity, now) {
        return Plan::RotateCa;
    }
    let mut wanted = s.names.clone();
    wanted.sort();
    let mut have = names(&m.cert);
    have.sort();
    if requested == Some("leaf") || m.key.is_empty() || have != wanted || due(not_after(&m.cert), s.leaf_validity, now)
    {
        return Plan::RenewLeaf;
    }
    Plan::Keep
}

/// Carries out a plan. Pure apart from key generation.
pub fn execute(
    plan: Plan,
    current: Option<&TlsMaterial>,
    now: Timestamp,
    s: &CertSettings,
) -> Result<TlsMaterial, PkiError> {
    let (ca, previous) = match (plan, current) {
        (Plan::Keep, Some(m)) => return Ok(m.clone()),
        (Plan::RenewLeaf, Some(m)) => (
            CertificateAuthority { cert_pem: m.ca_cert.clone(), key_pem: m.ca_key.clone() },
            m.previous_ca_cert.clone(),
        ),
        (Plan::RotateCa, Some(m)) => {
            (CertificateAuthority::generate("stepup-webhook-ca", now, s.ca_validity)?, Some(m.ca_cert.clone()))
        }
        _ => (CertificateAuthority::generate("stepup-webhook-ca", now, s.ca_validity)?, None),
    };
    let leaf = ca.issue(&s.names, now, s.leaf_validity)?;
    // An old CA leaves the bundle once it has expired.
    let previous = previous.filter(|p| not_after(p).is_some_and(|t| t > now));
    Ok(TlsMaterial {
        ca_cert: ca.cert_pem,
        ca_key: ca.key_pem,
        previous_ca_cert: previous,
        cert: leaf.cert_pem,
        key: leaf.key_pem,
    })
}

impl TlsMaterial {
    pub fn from_secret(secret: &Secret) -> Self {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok()).unwrap_or_default();
        Self {
            ca_cert: text(CA_CERT),
            ca_key: text(CA_KEY),
            previous_ca_cert: Some(text(PREVIOUS_CA_CERT)).filter(|p| !p.is_empty()),
            cert: text(TLS_CERT),
            key: text(TLS_KEY),
        }
    }

    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        for (k, v) in [(CA_CERT, &self.ca_cert), (CA_KEY, &self.ca_key), (TLS_CERT, &self.cert), (TLS_KEY, &self.key)] {
            data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        }
        if let Some(p) = &self.previous_ca_cert {
            data.insert(PREVIOUS_CA_CERT.to_owned(), ByteString(p.as_bytes().to_vec()));
        }
        data
    }

    /// The caBundle: the current CA, then the previous one during an overlap.
    pub fn ca_bundle(&self) -> Vec<u8> {
        let mut bundle = self.ca_cert.trim_end().to_owned();
        bundle.push('\n');
        if let Some(p) = &self.previous_ca_cert {
            bundle.push_str(p.trim_end());
            bundle.push('\n');
        }
        bundle.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CertSettings {
        CertSettings {
            secret_name: "stepup-webhook-tls".into(),
            names: vec!["stepup-webhook.stepup-system.svc".into(), "127.0.0.1".into()],
            ca_validity: SignedDuration::from_hours(24 * 365),
            leaf_validity: SignedDuration::from_hours(24 * 90),
        }
    }

    #[test]
    fn creates_then_keeps_then_renews_the_leaf_before_expiry() {
        let s = settings();
        let now = Timestamp::now();
        assert_eq!(plan(None, None, now, &s), Plan::Create);
        let m = execute(Plan::Create, None, now, &s).unwrap();
        assert_eq!(names(&m.cert).len(), 2);
        assert!(names(&m.cert).contains(&"127.0.0.1".to_owned()));
        assert_eq!(plan(Some(&m), None, now, &s), Plan::Keep);
        assert_eq!(plan(Some(&m), None, now + SignedDuration::from_hours(24 * 61), &s), Plan::RenewLeaf);
        assert_eq!(plan(Some(&m), Some("leaf"), now, &s), Plan::RenewLeaf);
        let renewed = execute(Plan::RenewLeaf, Some(&m), now, &s).unwrap();
        assert_eq!(renewed.ca_cert, m.ca_cert, "same CA");
        assert_ne!(renewed.cert, m.cert);
        let mut other = settings();
        other.names.push("extra.example".into());
        assert_eq!(plan(Some(&m), None, now, &other), Plan::RenewLeaf, "names changed");
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_in_the_bundle() {
        let s = settings();
        let now = Timestamp::now();
        let m = execute(Plan::Create, None, now, &s).unwrap();
        assert_eq!(plan(Some(&m), None, now + SignedDuration::from_hours(24 * 250), &s), Plan::RotateCa);
        let rotated = execute(Plan::RotateCa, Some(&m), now, &s).unwrap();
        assert_ne!(rotated.ca_cert, m.ca_cert);
        assert_eq!(rotated.previous_ca_cert.as_deref(), Some(m.ca_cert.as_str()));
        let bundle = String::from_utf8(rotated.ca_bundle()).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        // Round trip through the Secret.
        let secret = Secret { data: Some(rotated.to_data()), ..Default::default() };
        assert_eq!(TlsMaterial::from_secret(&secret), rotated);
    }

    #[test]
    fn garbage_in_the_secret_means_start_over() {
        let junk = TlsMaterial { ca_cert: "junk".into(), ..Default::default() };
        assert_eq!(plan(Some(&junk), None, Timestamp::now(), &settings()), Plan::Create);
    }
}
