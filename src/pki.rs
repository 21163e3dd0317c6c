//! A small certificate authority for webhook serving certificates: used by the controller's
//! certificate management, the e2e harness and the tests.

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use rustls_pki_types::{CertificateDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A CA certificate and its key, both PEM.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A leaf certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct ServingCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, now: Timestamp, lifetime: SignedDuration) {
    // Backdate a little: clocks of the API server and the webhook are never quite equal.
    let from = now - SignedDuration::from_mins(5);
    let to = now + lifetime;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_offset(from);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_offset(to);
}

fn time_offset(t: Timestamp) -> std::time::Duration {
    std::time::Duration::from_secs(t.as_second().max(0) as u64)
}

impl CertificateAuthority {
    pub fn generate(common_name: &str, now: Timestamp, lifetime: SignedDuration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, now, lifetime);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn issue(
        &self,
        names: &[String],
        now: Timestamp,
        lifetime: SignedDuration,
    ) -> Result<ServingCertificate, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("stepup-webhook"));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, now, lifetime);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ServingCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

impl CertificateAuthority {
    /// A client certificate for `common_name` (the API server's, for mutual TLS with the webhook).
    pub fn issue_client(
        &self,
        common_name: &str,
        now: Timestamp,
        lifetime: SignedDuration,
    ) -> Result<ServingCertificate, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, now, lifetime);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ServingCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Not-after of the first certificate in a PEM string.
pub fn not_after(pem: &str) -> Option<Timestamp> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}

/// DNS and IP names of the first certificate in a PEM string.
pub fn names(pem: &str) -> Vec<String> {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else { return vec![] };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return vec![] };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                16 => <[u8; 16]>::try_from(*ip).ok().map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
