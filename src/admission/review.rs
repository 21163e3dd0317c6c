//! `admission.k8s.io/v1` AdmissionReview on the wire: parsed lazily (objects stay raw JSON
//! until a rule needs them) and answered with a response the API server accepts.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    api::{GROUP, Operation},
    decision::{Decision, StepUpObjects},
    policy::{NamespaceLabels, Request, User},
};

pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not a usable AdmissionReview. Every variant reads as a sentence for the
/// operator who finds it in the API server's log.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not a JSON AdmissionReview: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("unsupported review {api_version:?}/{kind:?}: only admission.k8s.io/v1 AdmissionReview is accepted")]
    WrongKind { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    MissingRequest,
    #[error("AdmissionReview request has an empty uid")]
    MissingUid,
    #[error("unsupported operation {0:?}")]
    UnknownOperation(String),
    #[error("cannot read {field} as a {kind}: {source}")]
    BadObject {
        field: &'static str,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl ReviewError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReviewError::NotJson(_) => "not_json",
            ReviewError::WrongKind { .. } => "wrong_kind",
            ReviewError::MissingRequest => "missing_request",
            ReviewError::MissingUid => "missing_uid",
            ReviewError::UnknownOperation(_) => "unknown_operation",
            ReviewError::BadObject { .. } => "bad_object",
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
    request: Option<RawRequest<'a>>,
}

#[derive(Deserialize, Default)]
struct GroupVersionResource<'a> {
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    version: Cow<'a, str>,
    #[serde(default, borrow)]
    resource: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct GroupVersionKind<'a> {
    #[serde(default, borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct UserInfo<'a> {
    #[serde(default, borrow)]
    username: Cow<'a, str>,
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest<'a> {
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    #[serde(default, borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(default, borrow)]
    resource: GroupVersionResource<'a>,
    #[serde(default, borrow)]
    sub_resource: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    operation: Cow<'a, str>,
    #[serde(default, borrow)]
    user_info: UserInfo<'a>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old_object: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: bool,
}

/// A parsed review, borrowing from the request body.
pub struct Review<'a> {
    raw: RawRequest<'a>,
    operation: Operation,
}

/// Only the uid of a review, for answering one whose request is otherwise unusable.
pub fn uid_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct UidOnly<'a> {
        #[serde(borrow)]
        request: Option<UidRequest<'a>>,
    }
    #[derive(Deserialize)]
    struct UidRequest<'a> {
        #[serde(borrow, default)]
        uid: Cow<'a, str>,
    }
    let parsed: UidOnly<'_> = serde_json::from_slice(body).ok()?;
    parsed.request.map(|r| r.uid.into_owned()).filter(|u| !u.is_empty())
}

impl<'a> Review<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        let envelope: Envelope<'a> = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
        if envelope.api_version != ADMISSION_API_VERSION || envelope.kind != "AdmissionReview" {
            return Err(ReviewError::WrongKind {
                api_version: envelope.api_version.into_owned(),
                kind: envelope.kind.into_owned(),
            });
        }
        let raw = envelope.request.ok_or(ReviewError::MissingRequest)?;
        if raw.uid.is_empty() {
            return Err(ReviewError::MissingUid);
        }
        let operation = match raw.operation.as_ref() {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            other => return Err(ReviewError::UnknownOperation(other.to_owned())),
        };
        Ok(Self { raw, operation })
    }

    pub fn uid(&self) -> &str {
        &self.raw.uid
    }

    pub fn kind(&self) -> &str {
        &self.raw.kind.kind
    }

    pub fn namespace(&self) -> &str {
        &self.raw.namespace
    }

    pub fn name(&self) -> &str {
        &self.raw.name
    }

    pub fn operation(&self) -> Operation {
        self.operation
    }

    pub fn username(&self) -> &str {
        &self.raw.user_info.username
    }

    pub fn dry_run(&self) -> bool {
        self.raw.dry_run
    }

    pub fn group(&self) -> &str {
        &self.raw.resource.group
    }

    pub fn resource(&self) -> &str {
        &self.raw.resource.resource
    }

    pub fn subresource(&self) -> &str {
        &self.raw.sub_resource
    }

    pub fn is_namespace_object(&self) -> bool {
        self.raw.resource.group.is_empty() && self.raw.resource.resource == "namespaces"
    }

    /// For Namespace objects, the namespace is the object itself; its labels come from the
    /// object (or, on delete, the old object).
    pub fn namespace_object_labels(&self) -> Option<BTreeMap<String, String>> {
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            metadata: Labels,
        }
        #[derive(Deserialize, Default)]
        struct Labels {
            #[serde(default)]
            labels: BTreeMap<String, String>,
        }
        let raw = self.raw.object.or(self.raw.old_object)?;
        serde_json::from_str::<Meta>(raw.get()).ok().map(|m| m.metadata.labels)
    }

    /// The request as the decision sees it. For a Namespace object, `namespace` is its name.
    pub fn request<'r>(&'r self, namespace_labels: NamespaceLabels<'r>) -> Request<'r> {
        let namespace: &str = if self.is_namespace_object() && self.raw.namespace.is_empty() {
            &self.raw.name
        } else {
            &self.raw.namespace
        };
        Request {
            operation: self.operation,
            group: &self.raw.resource.group,
            version: &self.raw.resource.version,
            resource: &self.raw.resource.resource,
            subresource: &self.raw.sub_resource,
            namespace,
            name: &self.raw.name,
            user: User {
                username: &self.raw.user_info.username,
                uid: &self.raw.user_info.uid,
                groups: &self.raw.user_info.groups,
            },
            namespace_labels,
            dry_run: self.raw.dry_run,
        }
    }

    /// Typed objects for `stepup.dev` kinds; [`StepUpObjects::None`] for everything else.
    pub fn stepup_objects(&self) -> Result<StepUpObjects, ReviewError> {
        if self.raw.resource.group != GROUP {
            return Ok(StepUpObjects::None);
        }
        let object = self.raw.object;
        let old = self.raw.old_object;
        Ok(match self.raw.resource.resource.as_ref() {
            "stepuppolicies" => StepUpObjects::Policy { object: typed(object, "object", "StepUpPolicy")? },
            "stepupgrants" => StepUpObjects::Grant {
                object: typed(object, "object", "StepUpGrant")?,
                old: typed(old, "oldObject", "StepUpGrant")?,
            },
            "stepupchallenges" => StepUpObjects::Challenge {
                object: typed(object, "object", "StepUpChallenge")?,
                old: typed(old, "oldObject", "StepUpChallenge")?,
            },
            "stepupenrollments" => StepUpObjects::Enrollment {
                object: typed(object, "object", "StepUpEnrollment")?,
                old: typed(old, "oldObject", "StepUpEnrollment")?,
            },
            "stepuplogs" => StepUpObjects::Log,
            _ => StepUpObjects::None,
        })
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    field: &'static str,
    kind: &'static str,
) -> Result<Option<Box<T>>, ReviewError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str(r.get()).map(|v| Some(Box::new(v))).map_err(|source| ReviewError::BadObject {
            field,
            kind,
            source,
        }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseEnvelope<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    status: &'static str,
    code: u16,
    reason: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// One `metav1.StatusCause`: the machine-readable part of a denial, which the API server
/// passes through to the client unchanged.
#[derive(Serialize)]
struct Cause {
    reason: &'static str,
    message: String,
    field: &'static str,
}

/// The AdmissionReview answering `uid` with `decision`.
pub fn response_body(uid: &str, decision: &Decision) -> Vec<u8> {
    let status = (!decision.allowed).then(|| Status {
        status: "Failure",
        code: decision.code,
        reason: decision.reason,
        message: &decision.message,
        details: decision.requirement.as_ref().map(|r| Details {
            causes: vec![Cause { reason: "StepUpRequired", message: r.to_string(), field: "stepup.dev/requirement" }],
        }),
    });
    let body = ResponseEnvelope {
        api_version: ADMISSION_API_VERSION,
        kind: "AdmissionReview",
        response: Response {
            uid,
            allowed: decision.allowed,
            status,
            warnings: &decision.warnings,
            audit_annotations: decision.audit_annotations().into_iter().collect(),
        },
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Operation::*, testing::request};

    #[test]
    fn parses_a_realistic_review_without_copying_objects() {
        let body = request(Delete, "secrets")
            .namespace("prod")
            .name("db")
            .uid("uid-alice-1")
            .review("r-1", None, Some(crate::testing::secret_object("prod", "db")))
            .to_string();
        let review = Review::parse(body.as_bytes()).unwrap();
        assert_eq!(review.uid(), "r-1");
        assert_eq!(review.kind(), "Secret");
        let req = review.request(NamespaceLabels::Unknown);
        assert_eq!((req.operation, req.resource, req.namespace, req.name), (Delete, "secrets", "prod", "db"));
        assert_eq!((req.user.username, req.user.uid), ("alice", "uid-alice-1"));
        assert!(matches!(review.stepup_objects().unwrap(), StepUpObjects::None));
    }

    #[test]
    fn malformed_reviews_are_named_errors() {
        let cases: [(&str, &str); 7] = [
            ("not json at all", "not_json"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
                "wrong_kind",
            ),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "missing_request"),
            (r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#, "missing_uid"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","operation":"EXPLODE"}}"#,
                "unknown_operation",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","userInfo":7}}"#,
                "not_json",
            ),
            ("[1,2,3]", "not_json"),
        ];
        for (body, label) in cases {
            let err = Review::parse(body.as_bytes()).err().unwrap_or_else(|| panic!("{body} should fail"));
            assert_eq!(err.label(), label, "{body}: {err}");
        }
    }

    #[test]
    fn a_stepup_object_that_is_not_one_is_a_bad_object() {
        let body = request(Create, "stepupchallenges")
            .group("stepup.dev", "v1alpha1")
            .review("r-2", Some(serde_json::json!({"spec": {"user": 42}})), None)
            .to_string();
        let review = Review::parse(body.as_bytes()).unwrap();
        let err = review.stepup_objects().unwrap_err();
        assert_eq!(err.label(), "bad_object");
        assert!(err.to_string().starts_with("cannot read object as a StepUpChallenge"), "{err}");
    }

    #[test]
    fn uid_is_recovered_for_answering_bad_reviews() {
        assert_eq!(uid_of(br#"{"request":{"uid":"abc","operation":"NOPE"}}"#).as_deref(), Some("abc"));
        assert_eq!(uid_of(b"garbage"), None);
    }

    #[test]
    fn namespace_objects_use_their_own_name_and_labels() {
        let object = serde_json::json!({"metadata": {"name": "prod", "labels": {"env": "prod"}}});
        let body = request(Delete, "namespaces").name("prod").review("r-3", None, Some(object)).to_string();
        let review = Review::parse(body.as_bytes()).unwrap();
        let labels = review.namespace_object_labels().unwrap();
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(review.request(NamespaceLabels::Known(&labels)).namespace, "prod");
    }
}
