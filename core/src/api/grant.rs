//! `StepUpGrant`: evidence that a user verified a second factor, and the permission it carries.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, GrantScope, Method};

/// Annotation on a grant: the correlation id of the refusal its step-up answered
/// (`prompt:<review uid>`), which the webhook copies into the audit record of every operation
/// the grant lets through. Set by the controller from the challenge's `spec.correlation`.
pub const CORRELATION_ANNOTATION: &str = "stepup.dev/correlation";

/// Whether `id` is a correlation id a plugin may hand in: `prompt:` and a review UID (letters,
/// digits and `-`, at most 64). Anything else is ignored, never recorded.
pub fn is_correlation(id: &str) -> bool {
    id.strip_prefix("prompt:").is_some_and(is_review_ref)
}

/// Whether `uid` can name a review in a correlation id (what follows `prompt:`).
pub fn is_review_ref(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The correlation id a grant carries ([`CORRELATION_ANNOTATION`]), when it has a valid one.
pub fn grant_correlation(grant: &StepUpGrant) -> Option<&str> {
    grant.metadata.annotations.as_ref()?.get(CORRELATION_ANNOTATION).map(String::as_str).filter(|c| is_correlation(c))
}

/// A StepUpGrant records that a user proved a second factor at `issuedAt`. While it is fresh
/// enough for a policy (see the policy's `maxAge`) and not expired, it lets that user perform
/// the policy's operations. Grants are written only by the stepup controller; a user may delete
/// their own grants to revoke them. Expired grants are kept for a while as audit evidence.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpGrant",
    plural = "stepupgrants",
    shortname = "sug",
    category = "stepup",
    status = "StepUpGrantStatus",
    derive = "PartialEq",
    doc = "StepUpGrant records a verified second factor and lets its user pass step-up policies until it expires.",
    validation = Rule::new("self.spec == oldSelf.spec").message("a grant's spec is immutable"),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Expires", type_ = "string", format = "date-time", json_path = ".spec.expiresAt"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.expiresAt > self.issuedAt",
    "message": "expiresAt must be later than issuedAt",
    "fieldPath": ".expiresAt"
}]))]
pub struct StepUpGrantSpec {
    /// The username the grant belongs to, exactly as the API server authenticates it.
    #[schemars(length(min = 1, max = 1024))]
    pub user: String,

    /// The user's UID from the authenticator, when it supplies one. Only requests carrying the
    /// same UID may use the grant, so a deleted and re-created account does not inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub uid: Option<String>,

    /// How the second factor was verified.
    #[schemars(schema_with = "super::factor_method_schema")]
    pub method: Method,

    /// Why the user stepped up (an incident or ticket), as given in the challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub reason: Option<String>,

    /// When the second factor was verified: for `OIDC`, the sign-in's `auth_time` at the
    /// identity provider, which a policy's maxAge judges.
    pub issued_at: Time,

    /// When the grant stops being usable, whatever the policy's maxAge.
    pub expires_at: Time,

    /// What the grant is limited to. Empty means every policy and namespace.
    #[serde(default, skip_serializing_if = "GrantScope::is_unrestricted")]
    pub scope: GrantScope,

    /// For `OIDC`: the sign-in's authentication context class (`acr`, RFC 9470), which a
    /// policy's `assurance.acrValues` judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub acr: Option<String>,

    /// For `OIDC`: the sign-in's authentication methods (`amr`, RFC 8176), which a policy's
    /// `assurance.amr` judges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub amr: Vec<String>,

    /// For `WebAuthn`: the security key that signed (SHA-256 of its credential id, first 16
    /// bytes in hex, as its enrollment lists it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub credential_id_hash: Option<String>,

    /// For `WebAuthn`: whether the key verified the person (PIN, biometric), not only their
    /// presence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_verified: bool,

    /// The StepUpChallenge that produced this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_ref: Option<ChallengeRef>,

    /// The controller's Ed25519 signature over the fields above (base64). The webhook honours
    /// only grants whose signature verifies with the controller's key, which does not come from
    /// the Kubernetes API: a grant written by anyone else, whatever their rights, permits nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub signature: Option<String>,
}

/// Reference to the challenge a grant was issued for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ChallengeRef {
    pub name: String,
    pub uid: String,
}

/// Lifecycle of a grant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GrantPhase {
    /// Usable until `expiresAt`.
    #[default]
    Active,
    /// Past `expiresAt`; kept as evidence until the retention period ends.
    Expired,
    /// Not signed by the stepup controller: someone else wrote it. It permits nothing and is
    /// kept as evidence of the attempt.
    Forged,
}

/// Observed state of a StepUpGrant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepUpGrantStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GrantPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
