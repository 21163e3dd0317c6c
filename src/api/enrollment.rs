//! `StepUpEnrollment`: one per user, binding them to a second factor.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Method};

/// A StepUpEnrollment binds a user to a second factor. The user creates it (with
/// `kubectl stepup enroll`) carrying an ephemeral public key; the controller generates the TOTP
/// seed, keeps it in a Secret in its own namespace and returns it sealed to that key, and the
/// user confirms with a first code. Its name is derived from the username, one per user.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpEnrollment",
    plural = "stepupenrollments",
    shortname = "sue",
    category = "stepup",
    status = "StepUpEnrollmentStatus",
    derive = "PartialEq",
    doc = "StepUpEnrollment binds a user to a second factor (a TOTP authenticator).",
    validation = Rule::new("self.spec.user == oldSelf.spec.user").message("spec.user is immutable"),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StepUpEnrollmentSpec {
    /// The enrolling username. Must be the user creating the enrollment.
    #[schemars(length(min = 1, max = 1024))]
    pub user: String,

    /// The second factor to enroll. Defaults to `TOTP`.
    #[serde(default = "default_method")]
    pub method: Method,

    /// The plugin's ephemeral X25519 public key (32 bytes, base64), to which the controller
    /// seals the new seed. A new key starts a re-enrollment.
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{43}=$"))]
    pub public_key: String,

    /// The first code from the authenticator, confirming the user holds the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{6}$"))]
    pub confirmation: Option<String>,
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
    /// The sealed seed is in `status.sealedSecret`; waiting for the first code.
    AwaitingConfirmation,
    /// Confirmed; challenges can be verified.
    Active,
    /// Too many consecutive failures; an admin must reset it.
    Locked,
}

/// Observed state of a StepUpEnrollment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepUpEnrollmentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EnrollmentPhase>,
    /// The TOTP seed sealed to `spec.publicKey` (base64), present only until confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secret: Option<String>,
    /// Failed verifications since the last success.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub consecutive_failures: i32,
    /// When the user was locked out, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<Time>,
    /// A sentence for the user about the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
