//! Usernames may hold characters that object names and label values cannot (`:`, `@`, `/`,
//! upper case), so objects carry a stable hash of the username and the username itself in spec.

use sha2::{Digest, Sha256};

/// Label carrying [`user_label_value`] on grants, challenges and enrollments, so one user's
/// objects can be listed with a label selector.
pub const USER_LABEL: &str = "stepup.dev/user";

/// Annotation an admin sets on an enrollment to approve an enrollment (a first one, or a
/// re-enrollment without the old device): the admin's username. Together with
/// [`APPROVED_KEY_ANNOTATION`] and [`APPROVED_AT_ANNOTATION`]; the controller consumes all three.
pub const APPROVED_BY_ANNOTATION: &str = "stepup.dev/approved-by";

/// The fingerprint of the one key an approval is for ([`crate::verify::seal::fingerprint`]).
pub const APPROVED_KEY_ANNOTATION: &str = "stepup.dev/approved-key";

/// When the admin approved (RFC 3339); the approval is void after the controller's window.
pub const APPROVED_AT_ANNOTATION: &str = "stepup.dev/approved-at";

/// Annotation an admin sets on an enrollment to clear a lockout, and nothing else.
pub const UNLOCK_BY_ANNOTATION: &str = "stepup.dev/unlock-by";

/// The annotation older plugins set to reset an enrollment; refused now (see
/// [`UNLOCK_BY_ANNOTATION`] and [`APPROVED_BY_ANNOTATION`]).
pub const LEGACY_RESET_BY_ANNOTATION: &str = "stepup.dev/reset-by";

/// Annotation a person sets on their `WebAuthn` enrollment to register one more key without an
/// admin: the name of a fresh grant of theirs from a registered key (never a TOTP code's: a key
/// outlasts a phished code, and passes the policies that demand one), requested for
/// [`VOUCH_SCOPE`] with [`vouch_reason`] of the new enrollment key. The controller checks the
/// grant (signature, owner, age, scope, reason, used once) and consumes the mark.
pub const VOUCHING_GRANT_ANNOTATION: &str = "stepup.dev/vouching-grant";

/// The policy scope of a grant that vouches for a new security key: no policy is named so, so
/// such a grant lets nothing else through, and no grant obtained for other work vouches.
pub const VOUCH_SCOPE: &str = "stepup.dev.register-security-key";

/// The reason a vouching grant carries: the new enrollment key's fingerprint, so that the
/// grant vouches for that one key and no other.
pub fn vouch_reason(key_fingerprint: &str) -> String {
    format!("register security key through enrollment key {key_fingerprint}")
}

/// Annotation on a `WebAuthn` enrollment that removes one registered key: its id hash (as
/// `status.credentials[].idHash` shows it). It counts only with either an admin's name in
/// [`REMOVED_BY_ANNOTATION`] or the person's fresh grant in [`REMOVAL_GRANT_ANNOTATION`]: a
/// stolen kubeconfig alone removes nothing. The controller removes the key, records who
/// removed it and consumes the marks.
pub const REMOVE_KEY_ANNOTATION: &str = "stepup.dev/remove-key";

/// Annotation an admin sets, with [`REMOVE_KEY_ANNOTATION`], to remove another person's key
/// (their own username; an admin act, so it takes the admin's step-up).
pub const REMOVED_BY_ANNOTATION: &str = "stepup.dev/remove-key-by";

/// Annotation a person sets, with [`REMOVE_KEY_ANNOTATION`], to remove one of their own keys:
/// the name of a fresh grant of theirs requested for [`REMOVE_KEY_SCOPE`] with
/// [`removal_reason`] of that key.
pub const REMOVAL_GRANT_ANNOTATION: &str = "stepup.dev/removal-grant";

/// The policy scope of a grant that allows removing a security key: no policy is named so.
pub const REMOVE_KEY_SCOPE: &str = "stepup.dev.remove-security-key";

/// The reason a removal grant carries: the id hash of the key it removes, and no other.
pub fn removal_reason(id_hash: &str) -> String {
    format!("remove security key {id_hash}")
}

/// The annotations only an admin may set on another user's enrollment.
pub const ADMIN_ANNOTATIONS: [&str; 6] = [
    APPROVED_BY_ANNOTATION,
    APPROVED_KEY_ANNOTATION,
    APPROVED_AT_ANNOTATION,
    UNLOCK_BY_ANNOTATION,
    LEGACY_RESET_BY_ANNOTATION,
    REMOVED_BY_ANNOTATION,
];

/// Finalizer on challenges: a deleted (withdrawn) challenge stays visible until the controller
/// has made sure no grant was issued for it.
pub const WITHDRAWAL_FINALIZER: &str = "stepup.dev/withdrawal";

/// Prefix of every service account username.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Stable, label-safe identifier of a username: 40 hex characters of its SHA-256.
pub fn user_label_value(username: &str) -> String {
    let digest = Sha256::digest(username.as_bytes());
    hex::encode(&digest[..20])
}

/// Label on a grant naming the challenge it was issued for.
pub const CHALLENGE_LABEL: &str = "stepup.dev/challenge";

/// A readable, name-safe prefix of a username (`oidc:Alice@x` -> `oidc-alice-x`), at most
/// `max` characters; empty when nothing usable remains.
pub fn name_prefix(username: &str, max: usize) -> String {
    let prefix: String = username
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(max)
        .collect();
    prefix.trim_matches('-').to_owned()
}

/// The name of the grant issued for a challenge: derived from the challenge's UID, so that
/// issuing twice (a retry after a crash) finds the grant already there instead of making two.
pub fn grant_name(username: &str, challenge_uid: &str) -> String {
    let prefix = name_prefix(username, 20);
    let uid: String = challenge_uid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    if prefix.is_empty() { format!("grant-{uid}") } else { format!("{prefix}-{uid}") }
}

/// The Secret (in the controller's namespace) that holds a user's TOTP seed and their replay,
/// failure and lockout state.
pub fn factor_secret_name(username: &str) -> String {
    format!("stepup-totp-{}", user_label_value(username))
}

/// The one name a user's StepUpEnrollment may have: a readable prefix plus a hash, so two
/// usernames that sanitize alike (`Alice` and `alice`) still get different objects.
pub fn enrollment_name(username: &str) -> String {
    let prefix = name_prefix(username, 40);
    let hash = &user_label_value(username)[..12];
    if prefix.is_empty() { format!("user-{hash}") } else { format!("{prefix}-{hash}") }
}

/// The one name a user's StepUpEnrollment of `method` may have: [`enrollment_name`] for TOTP
/// (the first method, whose objects keep their names), with the method's suffix for the others.
pub fn enrollment_name_for(username: &str, method: crate::api::Method) -> String {
    match method {
        crate::api::Method::WebAuthn => format!("{}-webauthn", enrollment_name(username)),
        _ => enrollment_name(username),
    }
}

/// `system:serviceaccount:<namespace>:<name>` split into its parts.
/// The `userInfo.extra` keys kube-apiserver sets for a service-account token bound to a pod.
/// A cluster-admin can impersonate them; they tell a workload from a mask, not a pod from a
/// forger.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

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
        for user in ["alice", "system:serviceaccount:a-very-long-namespace-name:a-very-long-service-account-name"] {
            let name = enrollment_name_for(user, crate::api::Method::WebAuthn);
            assert!(name.len() <= 63 && name.ends_with("-webauthn"), "{name}");
            assert_eq!(enrollment_name_for(user, crate::api::Method::Totp), enrollment_name(user));
        }
        assert!(enrollment_name("alice").starts_with("alice-"));
    }

    #[test]
    fn grant_names_derive_from_the_challenge_uid() {
        let uid = "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4";
        assert_eq!(grant_name("alice", uid), format!("alice-{uid}"));
        assert_eq!(grant_name("alice", uid), grant_name("alice", uid));
        assert_eq!(grant_name("::", uid), format!("grant-{uid}"));
        assert!(grant_name("oidc:a-very-long-user-name@example.com", uid).len() <= 63);
        assert!(factor_secret_name("alice").len() <= 63);
    }

    #[test]
    fn parses_service_account_usernames() {
        assert_eq!(parse_service_account("system:serviceaccount:ci:deployer"), Some(("ci", "deployer")));
        assert_eq!(parse_service_account("system:serviceaccount:ci"), None);
        assert_eq!(parse_service_account("alice"), None);
        assert_eq!(parse_service_account("system:serviceaccount::x"), None);
    }
}
