//! Sealed responses bound to the object they are for. The plugin seals a code to the
//! controller's response key together with a digest of the challenge or enrollment its own run
//! created; the controller opens it and refuses it unless the digest names the object it sits
//! in. Anyone may watch challenges and enrollments: what they see opens for nobody but the
//! controller, and a copy in another object is refused. Pure (sealing draws randomness).

use zeroize::Zeroizing;

use crate::{
    api::{StepUpChallenge, StepUpEnrollment},
    keys::{self, KeyError, ResponseOpener, SealedResponse},
};

/// What an enrollment's `spec.confirmation` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollmentPurpose {
    /// The first code of the seed sealed to `spec.publicKey`.
    Confirmation,
    /// A current code of the enrolled authenticator, allowing `spec.publicKey` as the new key.
    Reenrollment,
    /// `WebAuthn`: the credential the browser created for the registration options sealed to
    /// `spec.publicKey`.
    KeyRegistration,
}

impl EnrollmentPurpose {
    fn domain(self) -> &'static str {
        match self {
            EnrollmentPurpose::Confirmation => "stepup.dev/enrollment-confirmation/v1",
            EnrollmentPurpose::Reenrollment => "stepup.dev/reenrollment/v1",
            EnrollmentPurpose::KeyRegistration => "stepup.dev/webauthn-registration/v1",
        }
    }
}

/// The digest a challenge's sealed code must carry: everything that decides what the grant
/// permits, and when the plugin stops waiting.
pub fn challenge_binding(c: &StepUpChallenge) -> String {
    let spec = &c.spec;
    let name = c.metadata.name.as_deref().unwrap_or("");
    let duration = spec.duration.map(|d| d.as_signed().as_millis().to_string()).unwrap_or_default();
    // Serializing two string lists cannot fail.
    let scope = serde_json::to_string(&spec.scope).unwrap_or_default();
    let deadline = spec.deadline.as_ref().map(|t| t.0.as_second().to_string()).unwrap_or_default();
    keys::binding(&[
        "stepup.dev/challenge/v1",
        name,
        &spec.user,
        spec.uid.as_deref().unwrap_or(""),
        spec.method.as_str(),
        spec.reason.as_deref().unwrap_or(""),
        &duration,
        &scope,
        &deadline,
    ])
}

/// The digest an enrollment's sealed confirmation must carry: its name, user and public key.
pub fn enrollment_binding(e: &StepUpEnrollment, purpose: EnrollmentPurpose) -> String {
    let name = e.metadata.name.as_deref().unwrap_or("");
    keys::binding(&[purpose.domain(), name, &e.spec.user, &e.spec.public_key])
}

/// The plugin's side: `code` sealed to `response_key`, bound to `binding`.
pub fn seal_code(response_key: &str, code: &str, binding: String) -> Result<String, KeyError> {
    keys::seal_response(response_key, &SealedResponse { v: 1, code: code.to_owned(), binding })
}

/// What a sealed field turned out to hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<P> {
    Missing,
    /// Digits in the clear: an old plugin.
    Plain,
    /// Not sealed to this controller's key, or tampered with.
    Unreadable(KeyError),
    /// Opened, but made for another object: copied from another challenge or user, or the
    /// object changed (e.g. its key) after the code was sealed.
    Mismatch,
    /// A code for this very object, and what it is for.
    Code(Zeroizing<String>, P),
}

impl<P> Opened<P> {
    /// A low-cardinality label for metrics and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            Opened::Missing => "missing",
            Opened::Plain => "plain_code",
            Opened::Unreadable(_) => "unreadable",
            Opened::Mismatch => "binding_mismatch",
            Opened::Code(..) => "sealed",
        }
    }
}

/// Whether `text` is a code typed in the clear rather than a sealed value.
pub fn is_plain_code(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
}

/// What `text` is when it cannot be a sealed value (which is standard base64, [`seal_code`]):
/// a credential in the clear that everyone who may read the object would see. `None`: it has
/// the shape of a sealed value (whether it opens is the controller's to say).
pub fn unsealed(text: &str) -> Option<&'static str> {
    let trimmed = text.trim();
    if is_plain_code(trimmed) {
        return Some("a plain code");
    }
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') || c.is_ascii_whitespace();
    if trimmed.chars().all(base64) {
        return None;
    }
    Some(if trimmed.starts_with("eyJ") && trimmed.matches('.').count() >= 2 {
        "an ID token in the clear"
    } else if trimmed.starts_with('{') {
        "a sign-in's code in the clear"
    } else {
        "a value that is not sealed"
    })
}

/// The controller's side: opens `sealed` and accepts it for the purpose whose binding it carries.
pub fn open<P: Copy>(opener: &ResponseOpener, sealed: Option<&str>, expected: &[(P, String)]) -> Opened<P> {
    let Some(sealed) = sealed else { return Opened::Missing };
    if is_plain_code(sealed) {
        return Opened::Plain;
    }
    match opener.open(sealed) {
        Err(e) => Opened::Unreadable(e),
        Ok(response) => match expected.iter().find(|(_, b)| *b == response.binding) {
            Some((purpose, _)) => Opened::Code(Zeroizing::new(response.code.clone()), *purpose),
            None => Opened::Mismatch,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{GrantScope, Method, StepUpChallengeSpec, StepUpEnrollmentSpec},
        keys::MasterKey,
    };

    #[test]
    fn only_the_shape_of_a_sealed_value_passes_for_one() {
        let opener = MasterKey::from_bytes([3; 32]).response_opener();
        let sealed = seal_code(&opener.public_base64(), "123456", "b".into()).unwrap();
        assert_eq!(unsealed(&sealed), None);
        assert_eq!(unsealed(&format!("{sealed}\n")), None);
        for (text, what) in [
            ("123 456", "a plain code"),
            ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln", "an ID token in the clear"),
            (r#"{"code":"x"}"#, "a sign-in's code in the clear"),
            ("hunter2!", "a value that is not sealed"),
            ("a_b-c", "a value that is not sealed"),
        ] {
            assert_eq!(unsealed(text), Some(what), "{text}");
        }
    }

    fn challenge(name: &str, user: &str) -> StepUpChallenge {
        StepUpChallenge::new(
            name,
            StepUpChallengeSpec {
                user: user.into(),
                uid: Some(format!("uid-{user}")),
                method: Method::Totp,
                response: None,
                reason: Some("INC-1".into()),
                duration: Some("30m".parse().unwrap()),
                scope: GrantScope { policies: vec![], namespaces: vec!["prod".into()] },
                deadline: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::testing::t0())),
                correlation: None,
            },
        )
    }

    #[test]
    fn a_sealed_code_opens_only_in_the_challenge_it_was_made_for() {
        let opener = MasterKey::from_bytes([3; 32]).response_opener();
        let mine = challenge("alice-k3x9", "alice");
        let sealed = seal_code(&opener.public_base64(), "123456", challenge_binding(&mine)).unwrap();
        assert!(!sealed.contains("123456"));
        let expect = |c: &StepUpChallenge| [((), challenge_binding(c))];
        assert_eq!(open(&opener, Some(&sealed), &expect(&mine)), Opened::Code(Zeroizing::new("123456".into()), ()));

        // Every field a thief would change to profit from a copied code breaks the binding.
        let changes: [fn(&mut StepUpChallenge); 8] = [
            |c| c.metadata.name = Some("alice-other".into()),
            |c| c.spec.user = "bob".into(),
            |c| c.spec.uid = Some("uid-alice-2".into()),
            |c| c.spec.reason = None,
            |c| c.spec.duration = Some("8h".parse().unwrap()),
            |c| c.spec.scope.namespaces.clear(),
            |c| c.spec.deadline.as_mut().unwrap().0 += jiff::SignedDuration::from_hours(1),
            |c| c.spec.deadline = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut copy = mine.clone();
            change(&mut copy);
            assert_eq!(open(&opener, Some(&sealed), &expect(&copy)), Opened::Mismatch, "change {i}");
        }
        assert_eq!(open::<()>(&opener, None, &[]), Opened::Missing);
        assert_eq!(open(&opener, Some("123456"), &expect(&mine)), Opened::Plain);
        assert_eq!(open(&opener, Some(" 123 456 "), &expect(&mine)), Opened::Plain);
        let other = MasterKey::from_bytes([4; 32]).response_opener();
        assert_eq!(open(&other, Some(&sealed), &expect(&mine)), Opened::Unreadable(KeyError::CannotOpen));
    }

    #[test]
    fn an_enrollment_code_names_its_key_and_purpose() {
        let opener = MasterKey::from_bytes([3; 32]).response_opener();
        let e = StepUpEnrollment::new(
            "alice-1234",
            StepUpEnrollmentSpec {
                user: "alice".into(),
                method: Method::Totp,
                public_key: "A".repeat(43) + "=",
                confirmation: None,
                bootstrap: false,
                bootstrap_proof: None,
            },
        );
        let both = |e: &StepUpEnrollment| {
            [
                (EnrollmentPurpose::Confirmation, enrollment_binding(e, EnrollmentPurpose::Confirmation)),
                (EnrollmentPurpose::Reenrollment, enrollment_binding(e, EnrollmentPurpose::Reenrollment)),
            ]
        };
        let sealed =
            seal_code(&opener.public_base64(), "654321", enrollment_binding(&e, EnrollmentPurpose::Reenrollment))
                .unwrap();
        assert_eq!(
            open(&opener, Some(&sealed), &both(&e)),
            Opened::Code(Zeroizing::new("654321".into()), EnrollmentPurpose::Reenrollment)
        );
        let mut swapped = e.clone();
        swapped.spec.public_key = "B".repeat(43) + "=";
        assert_eq!(open(&opener, Some(&sealed), &both(&swapped)), Opened::Mismatch, "the key changed after sealing");
    }
}
