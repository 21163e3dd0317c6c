//! Usernames may hold characters that object names and label values cannot (`:`, `@`, `/`,
//! upper case), so objects carry a stable hash of the username and the username itself in spec.

use sha2::{Digest, Sha256};

/// Label carrying [`user_label_value`] on grants, challenges and enrollments, so one user's
/// objects can be listed with a label selector.
pub const USER_LABEL: &str = "stepup.dev/user";

/// Annotation an admin sets on an enrollment to approve a first enrollment.
pub const APPROVED_BY_ANNOTATION: &str = "stepup.dev/approved-by";

/// Annotation an admin sets on an enrollment to reset a lockout or allow re-enrollment.
pub const RESET_BY_ANNOTATION: &str = "stepup.dev/reset-by";

/// Prefix of every service account username.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Stable, label-safe identifier of a username: 40 hex characters of its SHA-256.
pub fn user_label_value(username: &str) -> String {
    let digest = Sha256::digest(username.as_bytes());
    hex::encode(&digest[..20])
}

/// The one name a user's StepUpEnrollment may have: a readable prefix plus a hash, so two
/// usernames that sanitize alike (`Alice` and `alice`) still get different objects.
pub fn enrollment_name(username: &str) -> String {
    let mut prefix: String = username
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(40)
        .collect();
    prefix = prefix.trim_matches('-').to_owned();
    let hash = &user_label_value(username)[..12];
    if prefix.is_empty() { format!("user-{hash}") } else { format!("{prefix}-{hash}") }
}

/// `system:serviceaccount:<namespace>:<name>` split into its parts.
pub fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_value_is_stable_and_label_safe() {
        let v = user_label_value("alice@example.com");
        assert_eq!(v, user_label_value("alice@example.com"));
        assert_eq!(v.len(), 40);
        assert!(v.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(v, user_label_value("Alice@example.com"));
    }

    #[test]
    fn enrollment_names_are_valid_dns_names_and_distinct() {
        for user in ["alice", "Alice", "oidc:alice@example.com", "system:serviceaccount:ci:deployer", "::::", "ünïcode"]
        {
            let name = enrollment_name(user);
            assert!(name.len() <= 63, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert_ne!(enrollment_name("alice"), enrollment_name("Alice"));
        assert!(enrollment_name("alice").starts_with("alice-"));
    }

    #[test]
    fn parses_service_account_usernames() {
        assert_eq!(parse_service_account("system:serviceaccount:ci:deployer"), Some(("ci", "deployer")));
        assert_eq!(parse_service_account("system:serviceaccount:ci"), None);
        assert_eq!(parse_service_account("alice"), None);
        assert_eq!(parse_service_account("system:serviceaccount::x"), None);
    }
}
