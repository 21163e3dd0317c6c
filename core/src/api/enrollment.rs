//! `StepUpEnrollment`: one per user, binding them to a second factor. No I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Method};

/// A StepUpEnrollment binds a user to a second factor. The user creates it (with
/// `kubectl stepup enroll`) carrying an ephemeral public key; once an admin approved that very
/// key (or the user proved the old factor), the controller generates the TOTP seed, keeps it
/// encrypted in a Secret in its own namespace and returns it sealed to that key, and the user
/// confirms with a first code. Its name is derived from the username, one per user.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpEnrollment",
    plural = "stepupenrollments",
    shortname = "sue",
    category = "stepup",
    status = "StepUpEnrollmentStatus",
    derive = "PartialEq",
    doc = "StepUpEnrollment binds a user to a second factor (a TOTP authenticator, or security keys and passkeys).",
    validation = Rule::new("self.spec.user == oldSelf.spec.user").message("spec.user is immutable"),
    validation = Rule::new("self.spec.method == oldSelf.spec.method").message("spec.method is immutable: each method has its own enrollment"),
    validation = Rule::new("!has(self.spec.confirmation) || !self.spec.confirmation.matches('^[0-9 -]*$')").message(
        "spec.confirmation must be the code sealed to the controller's key, not the plain code: update kubectl-stepup"
    ),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.keyFingerprint"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StepUpEnrollmentSpec {
    /// The enrolling username. Must be the user creating the enrollment.
    #[schemars(length(min = 1, max = 1024))]
    pub user: String,

    /// The second factor to enroll: `TOTP`, or `WebAuthn` (security keys and passkeys, in an
    /// enrollment of its own, named with the suffix `-webauthn`). Defaults to `TOTP`.
    #[serde(default = "default_method")]
    #[schemars(schema_with = "super::enrolled_method_schema")]
    pub method: Method,

    /// The plugin's ephemeral X25519 public key (32 bytes, base64), to which the controller
    /// seals the new seed. A new key starts a re-enrollment and voids any approval or pending
    /// confirmation made for another key; `status.keyFingerprint` is what admins approve.
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{43}=$"))]
    pub public_key: String,

    /// A code sealed (base64) to the controller's response key (`status.responseKey`) and bound
    /// to this enrollment's name, user and public key: the first code of the new seed, or, to
    /// re-enroll without an admin, a current code of the enrolled authenticator; for `WebAuthn`,
    /// the new credential the browser created for the sealed options. Removed by the
    /// controller once checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 24576))]
    pub confirmation: Option<String>,

    /// Ask for the one-time bootstrap: the first enrollment of an admin needs no second admin
    /// while the bootstrap window after installation is open and nobody has used it. Only
    /// members of stepup's admin groups may set it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap: bool,

    /// With `bootstrap`: proof that whoever made this enrollment can read the bootstrap token
    /// (Secret `stepup-bootstrap-token` in stepup's namespace, which only installers can read):
    /// HMAC-SHA256 under the token of the user and `publicKey`, base64url. `kubectl stepup
    /// enroll --bootstrap` fills it in. Without it the bootstrap is refused, whatever order the
    /// installation's objects appeared in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub bootstrap_proof: Option<String>,
}

fn default_method() -> Method {
    Method::Totp
}

/// Lifecycle of an enrollment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EnrollmentPhase {
    /// Waiting for an admin to approve a first enrollment.
    #[default]
    PendingApproval,
    /// The sealed seed is in `status.sealedSecret`; waiting for the first code (until `confirmBy`).
    AwaitingConfirmation,
    /// Confirmed; challenges can be verified.
    Active,
    /// No code is checked: too many consecutive failures (an admin must unlock), too many
    /// recent failures (until `lockedUntil`), or a factor that failed its integrity check.
    /// `message` says which and what to do.
    Locked,
}

/// Observed state of a StepUpEnrollment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepUpEnrollmentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EnrollmentPhase>,
    /// The TOTP seed (for `WebAuthn`: the options of the registration ceremony, whose challenge
    /// only the enrolling plugin may know) sealed to `spec.publicKey` (base64), present only
    /// until confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secret: Option<String>,
    /// The controller's X25519 public key (base64) to which the plugin seals codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_key: Option<String>,
    /// Fingerprint of `spec.publicKey`: what the user's plugin shows and an admin approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Fingerprint of the key the active factor was enrolled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_key_fingerprint: Option<String>,
    /// Until when the sealed seed may be confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_by: Option<Time>,
    /// Failed verifications since the last success.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub consecutive_failures: i32,
    /// When the user was locked out after consecutive failures, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<Time>,
    /// When locked by the failure rate limit: when codes are checked again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<Time>,
    /// `WebAuthn`: the registered security keys and passkeys (public facts only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub credentials: Vec<EnrolledCredential>,
    /// A sentence for the user about the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A registered security key or passkey, as the enrollment shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrolledCredential {
    /// SHA-256 of the credential id, first 16 bytes in hex: how grants and audit lines name it.
    pub id_hash: String,
    /// The authenticator model's AAGUID, where the key attested it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aaguid: Option<String>,
    /// When it was registered.
    pub registered_at: Time,
    /// Who or what allowed it (`approved by <admin>`, `self-service`, ...).
    pub allowed: String,
    /// Whether the key verified the person (PIN, biometric) when it was registered.
    pub user_verified: bool,
}
