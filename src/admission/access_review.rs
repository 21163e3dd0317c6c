//! `authorization.k8s.io/v1` SubjectAccessReview on the wire: what the API server's
//! authorization webhook sends for a request its matchConditions let through (a verb some
//! policy names), and the answer. The answer is a Deny that says what to run, or NoOpinion so
//! that RBAC decides: never an Allow, so stepup can only take away what RBAC gives.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::review::Extras;
use stepup_core::{
    api::Verb,
    decision::Decision,
    policy::{Action, Masks, NamespaceLabels, Request, SignInKeys, User},
};

pub const AUTHORIZATION_API_VERSION: &str = "authorization.k8s.io/v1";

/// Why a body is not a usable SubjectAccessReview; a sentence for the API server's log. The
/// API server then applies the authorizer's failurePolicy (Deny).
#[derive(Debug, thiserror::Error)]
pub enum AccessReviewError {
    #[error("request body is not a JSON SubjectAccessReview: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error(
        "unsupported review {api_version:?}/{kind:?}: only authorization.k8s.io/v1 SubjectAccessReview is accepted"
    )]
    WrongKind { api_version: String, kind: String },
    #[error("SubjectAccessReview has no spec")]
    MissingSpec,
}

impl AccessReviewError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AccessReviewError::NotJson(_) => "not_json",
            AccessReviewError::WrongKind { .. } => "wrong_kind",
            AccessReviewError::MissingSpec => "missing_request",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default, borrow)]
    api_version: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    spec: Option<Spec<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(default, borrow)]
    resource_attributes: Option<ResourceAttributes<'a>>,
    #[serde(default, borrow)]
    user: Cow<'a, str>,
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default, borrow)]
    extra: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize, Default)]
struct ResourceAttributes<'a> {
    #[serde(default, borrow)]
    namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    verb: Cow<'a, str>,
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    version: Cow<'a, str>,
    #[serde(default, borrow)]
    resource: Cow<'a, str>,
    #[serde(default, borrow)]
    subresource: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
}

/// A parsed SubjectAccessReview, borrowing from the body.
pub struct AccessReview<'a> {
    spec: Spec<'a>,
    extras: Extras,
}

impl<'a> AccessReview<'a> {
    /// Parses a review; the requester's sign-in is read from the extras at `keys`.
    pub fn parse(body: &'a [u8], keys: &SignInKeys) -> Result<Self, AccessReviewError> {
        let envelope: Envelope<'a> = serde_json::from_slice(body).map_err(AccessReviewError::NotJson)?;
        if envelope.api_version != AUTHORIZATION_API_VERSION || envelope.kind != "SubjectAccessReview" {
            return Err(AccessReviewError::WrongKind {
                api_version: envelope.api_version.into_owned(),
                kind: envelope.kind.into_owned(),
            });
        }
        let spec = envelope.spec.ok_or(AccessReviewError::MissingSpec)?;
        let extras = Extras::read(spec.extra, keys).map_err(AccessReviewError::NotJson)?;
        Ok(Self { spec, extras })
    }

    pub fn username(&self) -> &str {
        &self.spec.user
    }

    pub fn namespace(&self) -> &str {
        self.spec.resource_attributes.as_ref().map_or("", |a| &a.namespace)
    }

    /// `get`, `list`, ... as sent; empty for a non-resource request.
    pub fn verb(&self) -> &str {
        self.spec.resource_attributes.as_ref().map_or("", |a| &a.verb)
    }

    /// The request as the decision sees it; `None` when no policy can name it (a non-resource
    /// request such as `/healthz`, or a verb policies have no word for): NoOpinion.
    pub fn request<'r>(&'r self, namespace_labels: NamespaceLabels<'r>, masks: &Masks) -> Option<Request<'r>> {
        let a = self.spec.resource_attributes.as_ref()?;
        let verb = Verb::parse(&a.verb)?;
        Some(Request {
            action: Action::Authorization(verb),
            group: &a.group,
            version: &a.version,
            resource: &a.resource,
            subresource: &a.subresource,
            namespace: &a.namespace,
            name: &a.name,
            user: User::reported(&self.spec.user, &self.spec.uid, &self.spec.groups, self.extras.is_bound(), masks)
                .with_sign_in(self.extras.sign_in()),
            namespace_labels,
            previous_labels: None,
            dry_run: false,
        })
    }
}

/// A fresh id in the form of a review UID (random, UUID-shaped), for the `ref=` of a refusal
/// and its audit record.
pub fn fresh_uid() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseEnvelope<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: Status<'a>,
}

#[derive(Serialize)]
struct Status<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    denied: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

/// The answer to a SubjectAccessReview: Deny with the decision's message when it refuses,
/// else NoOpinion (`allowed: false` without `denied`), whatever the decision.
pub fn response_body(decision: Option<&Decision>) -> Vec<u8> {
    answer(decision.filter(|d| !d.allowed).map(|d| d.message.as_str()))
}

/// The answer to the controller's probe identity: Deny with [`stepup_core::api::AUTHORIZER_PROBE_REASON`],
/// which the API server passes back in the probe's SubjectAccessReview status. A Deny (not a
/// NoOpinion) so that whoever wears the name gains nothing.
pub fn probe_answer() -> Vec<u8> {
    answer(Some(stepup_core::api::AUTHORIZER_PROBE_REASON))
}

/// Deny with `reason`, or NoOpinion; never an Allow.
fn answer(denied: Option<&str>) -> Vec<u8> {
    let body = ResponseEnvelope {
        api_version: AUTHORIZATION_API_VERSION,
        kind: "SubjectAccessReview",
        status: Status { allowed: false, denied: denied.is_some(), reason: denied.unwrap_or_default() },
    };
    // Plain structs of strings and booleans always serialize.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{api::Verb::*, testing::read};

    #[test]
    fn fresh_uids_name_a_review_and_differ() {
        let (a, b) = (fresh_uid(), fresh_uid());
        assert!(stepup_core::api::is_review_ref(&a) && a.len() == 36, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn parses_what_the_api_server_sends() {
        let body = read(Get, "secrets").namespace("prod").name("db").uid("u-1").pod_bound().subject_access_review();
        let body = body.to_string();
        let review = AccessReview::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        let req = review.request(NamespaceLabels::Unknown, &Masks::default()).expect("a resource request");
        assert_eq!(req.action, Action::Authorization(Get));
        assert_eq!((req.resource, req.namespace, req.name, req.user.username), ("secrets", "prod", "db", "alice"));
        assert!(req.user.pod_bound);
    }

    #[test]
    fn a_read_carries_the_sign_in_at_the_configured_keys() {
        let keys = SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/t").unwrap();
        let mut body = read(Get, "secrets").namespace("prod").name("db").subject_access_review();
        body["spec"]["extra"] = serde_json::json!({
            "sso.example.com/acr": ["2"], "sso.example.com/t": ["1796665229"],
            stepup_core::policy::ACR_EXTRA: ["3"], stepup_core::policy::AUTH_TIME_EXTRA: ["1796665000"],
        });
        let body = body.to_string();
        let acr = |keys: &SignInKeys| {
            let review = AccessReview::parse(body.as_bytes(), keys).unwrap();
            review.request(NamespaceLabels::Unknown, &Masks::default()).unwrap().user.sign_in.map(|s| s.acr.to_owned())
        };
        assert_eq!(acr(&keys).as_deref(), Some("2"));
        assert_eq!(acr(&SignInKeys::default()).as_deref(), Some("3"));
        let bad = body.replace(r#"["1796665229"]"#, "7");
        assert!(AccessReview::parse(bad.as_bytes(), &keys).is_err(), "{bad}");
    }

    #[test]
    fn what_no_policy_can_name_has_no_request() {
        let non_resource = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}, "user": "alice"}
        })
        .to_string();
        let review = AccessReview::parse(non_resource.as_bytes(), &SignInKeys::default()).unwrap();
        assert!(review.request(NamespaceLabels::Unknown, &Masks::default()).is_none());
        let mut proxy = read(Get, "services/proxy").subject_access_review();
        proxy["spec"]["resourceAttributes"]["verb"] = "use".into();
        let proxy = proxy.to_string();
        let review = AccessReview::parse(proxy.as_bytes(), &SignInKeys::default()).unwrap();
        assert!(review.request(NamespaceLabels::Unknown, &Masks::default()).is_none());
    }

    #[test]
    fn malformed_reviews_are_errors_with_a_sentence() {
        let cases: [(&[u8], &str); 4] = [
            (b"not json", "not a JSON SubjectAccessReview"),
            (br#"{"apiVersion":"authorization.k8s.io/v1beta1","kind":"SubjectAccessReview","spec":{}}"#, "v1beta1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#, "AdmissionReview"),
            (br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview"}"#, "no spec"),
        ];
        for (body, needle) in cases {
            let err = AccessReview::parse(body, &SignInKeys::default()).err().expect("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn answers_deny_or_no_opinion_never_allow() {
        let refused = Decision::invalid("refused for the test");
        let body: serde_json::Value = serde_json::from_slice(&response_body(Some(&refused))).unwrap();
        assert_eq!(body["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(body["status"], serde_json::json!({"allowed": false, "denied": true, "reason": refused.message}));
        for no_opinion in [None, Some(&Decision::not_matched()), Some(&Decision::exempt())] {
            let body: serde_json::Value = serde_json::from_slice(&response_body(no_opinion)).unwrap();
            assert_eq!(body["status"], serde_json::json!({"allowed": false}), "{no_opinion:?}");
        }
    }
}
