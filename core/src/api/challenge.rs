//! `StepUpChallenge`: a user's request for a grant, carrying the one-time code sealed to the
//! controller's key. No I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Duration, GrantScope, Method};

/// A StepUpChallenge asks the stepup controller for a grant. The user creates it (usually with
/// `kubectl stepup request`) with a one-time code sealed to the controller's key and bound to
/// this very challenge; the controller verifies the code before the deadline, issues a
/// StepUpGrant, scrubs the sealed code and reports the outcome in `status`. Deleting a pending
/// challenge withdraws it: no grant is issued for it afterwards.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpChallenge",
    plural = "stepupchallenges",
    shortname = "suc",
    category = "stepup",
    status = "StepUpChallengeStatus",
    derive = "PartialEq",
    doc = "StepUpChallenge asks the stepup controller to verify a second factor and issue a StepUpGrant.",
    validation = Rule::new("self.spec.user == oldSelf.spec.user").message("spec.user is immutable"),
    validation = Rule::new("!has(oldSelf.spec.response) || !has(self.spec.response) || self.spec.response == oldSelf.spec.response").message(
        "spec.response cannot be changed once given"
    ),
    validation = Rule::new("!has(self.spec.response) || !self.spec.response.matches('^[0-9 -]*$')").message(
        "spec.response must be the code sealed to the controller's key, not the plain code: update kubectl-stepup"
    ),
    validation = Rule::new("!has(self.spec.response) || self.spec.response.matches('^[A-Za-z0-9+/=]*$')").message(
        "spec.response must be sealed to the controller's key (base64), never a token or code in the clear: update kubectl-stepup"
    ),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Grant", type_ = "string", json_path = ".status.grantRef.name"),
    printcolumn(name = "Deadline", type_ = "date", json_path = ".spec.deadline"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StepUpChallengeSpec {
    /// The requesting username. Must be the user creating the challenge.
    #[schemars(length(min = 1, max = 1024))]
    pub user: String,

    /// The requesting user's UID, when the authenticator supplies one. Must match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub uid: Option<String>,

    /// The verification method the response is for. Defaults to `TOTP`.
    #[serde(default = "default_method")]
    #[schemars(schema_with = "super::factor_method_schema")]
    pub method: Method,

    /// The one-time code (`TOTP`), the ID token (`OIDC`) or the security key's answer to
    /// `status.webauthnOptions` (`WebAuthn`, given once after creation), sealed (libsodium sealed box,
    /// base64) to the controller's response key (`status.responseKey` of the user's
    /// StepUpEnrollment, or `step-up.json` of ConfigMap `stepup-decision`) together with a digest
    /// of this challenge's name, user, uid, method, reason, duration, scope and deadline: a copy
    /// in another challenge is refused. Removed by the controller once it has been checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 24576))]
    pub response: Option<String>,

    /// Why the user steps up (incident or ticket). Some policies require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub reason: Option<String>,

    /// Requested lifetime of the grant (e.g. `30m`); capped by the controller's maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 32))]
    pub duration: Option<Duration>,

    /// Limits the requested grant to some policies and/or namespaces.
    #[serde(default, skip_serializing_if = "GrantScope::is_unrestricted")]
    pub scope: GrantScope,

    /// When the requesting plugin stops waiting. The controller issues no grant after this
    /// instant less the allowed clock skew, nor after its own challenge timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,

    /// The refusal this step-up answers (`prompt:<review uid>`, from the `ref=` of the denial's
    /// trailer), carried into the audit records of the challenge, the grant and what the grant
    /// lets through. Only for the audit report; decides nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub correlation: Option<String>,
}

fn default_method() -> Method {
    Method::Totp
}

/// Lifecycle of a challenge.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ChallengePhase {
    /// Waiting for the controller.
    #[default]
    Pending,
    /// The code was right; `grantRef` names the grant.
    Verified,
    /// The code was wrong, reused, rate-limited or the user is locked; `message` says which.
    Denied,
    /// Not verified before its deadline.
    Expired,
}

/// Reference to the grant a challenge produced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GrantRef {
    pub name: String,
}

/// Observed state of a StepUpChallenge.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepUpChallengeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ChallengePhase>,
    /// The grant issued for this challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_ref: Option<GrantRef>,
    /// A sentence for the user: why the challenge was denied, or when the grant expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `WebAuthn`: the options of the authentication ceremony (JSON, for the browser): a fresh
    /// challenge of the controller and the person's registered keys. Answered in `spec.response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub webauthn_options: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
