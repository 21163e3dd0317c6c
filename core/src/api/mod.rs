//! The `stepup.dev/v1alpha1` API: custom resource types, their schemas, and the naming rules
//! that tie objects to users. No I/O here.

// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

mod challenge;
mod duration;
mod enrollment;
mod grant;
mod identity;
mod log;
mod policy;

pub use challenge::*;
pub use duration::{Duration, ParseDurationError};
pub use enrollment::*;
pub use grant::*;
pub use identity::*;
pub use log::*;
pub use policy::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub const GROUP: &str = "stepup.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "stepup.dev/v1alpha1";

/// The two entries of the webhook registration. The enforcing one fails closed and carries
/// the stepup kinds and every rule a `Deny` policy needs; the advisory one fails open and
/// carries what only `Audit` and `Warn` policies need. The API server prefixes audit
/// annotation keys with the entry's name (`validate.stepup.dev/decision`).
pub const ENFORCING_WEBHOOK: &str = "validate.stepup.dev";
pub const ADVISORY_WEBHOOK: &str = "advise.stepup.dev";
/// The webhook's paths for the two entries; it serves both alike.
pub const ENFORCING_PATH: &str = "/validate";
pub const ADVISORY_PATH: &str = "/advise";
/// The webhook's path for the API server's authorization webhook (SubjectAccessReviews of
/// what policies name with `verbs`: reads first).
pub const AUTHORIZE_PATH: &str = "/authorize";
/// The identity the controller asks the API server about (a SubjectAccessReview) to learn
/// whether a policy's verbs reach stepup's authorizer. The webhook refuses everything this
/// name asks, with [`AUTHORIZER_PROBE_REASON`]: nobody gains anything by wearing it.
pub const AUTHORIZER_PROBE_USER: &str = "stepup:authorizer-probe";
pub const AUTHORIZER_PROBE_REASON: &str = "kube-stepup: authorizer probe (this identity is refused everything)";

/// The verification methods a policy can accept and a grant can record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Method {
    /// A time-based one-time password (RFC 6238) from an authenticator app.
    #[serde(rename = "TOTP")]
    Totp,
    /// A recent sign-in with a second factor at the identity provider, as the API server
    /// reports it on the request itself (`userInfo.extra`: acr, amr, auth_time mapped from the
    /// ID token by its AuthenticationConfiguration). No grant object: the request carries it.
    Session,
    /// A fresh ID token from the identity provider, obtained for one challenge (its nonce) and
    /// verified by the controller, which issues a grant recording its acr, amr and auth_time.
    #[serde(rename = "OIDC")]
    Oidc,
    /// A security key or passkey (WebAuthn): the person's authenticator signs a fresh
    /// challenge of the controller for this cluster's relying party; the cluster keeps only
    /// public keys. Enrolled with a StepUpEnrollment of its own.
    #[serde(rename = "WebAuthn")]
    WebAuthn,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Totp => "TOTP",
            Method::Session => "Session",
            Method::Oidc => "OIDC",
            Method::WebAuthn => "WebAuthn",
        }
    }

    /// Every method, in their order.
    pub const ALL: [Method; 4] = [Method::Totp, Method::Session, Method::Oidc, Method::WebAuthn];

    /// The methods a challenge may ask the controller to verify, and a grant may record.
    pub const CHALLENGED: [Method; 3] = [Method::Totp, Method::Oidc, Method::WebAuthn];

    /// The methods enrolled in the cluster, each with its own StepUpEnrollment.
    pub const ENROLLED: [Method; 2] = [Method::Totp, Method::WebAuthn];

    /// Whether a grant of this method is a StepUpGrant the controller issues (a Session is
    /// the request's own evidence).
    pub const fn is_grant(self) -> bool {
        matches!(self, Method::Totp | Method::Oidc | Method::WebAuthn)
    }
}

/// The schema of a StepUpEnrollment's `method`: only what is enrolled in the cluster (a
/// sign-in at the identity provider needs no enrollment).
pub(crate) fn enrolled_method_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": Method::ENROLLED.map(Method::as_str),
    })
}

/// The schema of a StepUpGrant's or StepUpChallenge's `method`: only
/// methods that a second factor verified by the controller stands behind (never `Session`, the
/// request's own evidence: a grant named so would pass for an identity-provider sign-in).
pub(crate) fn factor_method_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let factors = Method::CHALLENGED.map(Method::as_str);
    schemars::json_schema!({
        "type": "string",
        "enum": factors,
    })
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits a grant (or a requested grant) to some policies and/or namespaces.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantScope {
    /// Names of the StepUpPolicies this grant may satisfy. Empty means every policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub policies: Vec<String>,
    /// Namespaces this grant is valid in. Empty means every namespace and cluster-scoped
    /// objects; when set, the grant never satisfies a policy for a cluster-scoped object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub namespaces: Vec<String>,
}

impl GrantScope {
    pub fn is_unrestricted(&self) -> bool {
        self.policies.is_empty() && self.namespaces.is_empty()
    }

    pub fn allows_policy(&self, policy: &str) -> bool {
        self.policies.is_empty() || self.policies.iter().any(|p| p == policy)
    }

    /// `namespace` is empty for cluster-scoped objects, which a namespace-limited scope never allows.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || (!namespace.is_empty() && self.namespaces.iter().any(|n| n == namespace))
    }
}

/// Every CRD of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [StepUpPolicy::crd(), StepUpGrant::crd(), StepUpChallenge::crd(), StepUpEnrollment::crd(), StepUpLog::crd()]
        .into_iter()
        .map(reflow_descriptions)
        .collect()
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` wraps text itself, so a line
/// break inside a paragraph would break its lines mid-sentence. Paragraphs stay apart.
fn reflow_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if k == "description" => *text = reflow(text),
                        _ => walk(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else { return crd };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Joins the lines of each paragraph with spaces; keeps blank-line paragraph breaks.
pub fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CRDs as one multi-document YAML stream: what `stepup crdgen` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from("# Generated by `stepup crdgen`. Do not edit: change core/src/api and regenerate.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptions_are_paragraphs_not_wrapped_lines() {
        assert_eq!(super::reflow("one\ntwo\n\nthree\n four"), "one two\n\nthree four");
        for crd in super::crds() {
            let yaml = serde_yaml::to_string(&crd).unwrap();
            let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            fn no_single_breaks(v: &serde_json::Value) {
                match v {
                    serde_json::Value::Object(m) => m.iter().for_each(|(k, c)| {
                        if let (true, Some(t)) = (k == "description", c.as_str()) {
                            assert!(!t.replace("\n\n", "").contains('\n'), "{t}");
                        }
                        no_single_breaks(c)
                    }),
                    serde_json::Value::Array(a) => a.iter().for_each(no_single_breaks),
                    _ => {}
                }
            }
            no_single_breaks(&value);
        }
    }
}
