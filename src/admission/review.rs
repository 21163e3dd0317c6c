//! `admission.k8s.io/v1` AdmissionReview on the wire: parsed lazily (objects stay raw JSON
//! until a rule needs them) and answered with a response the API server accepts.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use stepup_core::{
    api::{GROUP, Operation, POD_NAME_EXTRA, POD_UID_EXTRA},
    decision::{Decision, StepUpObjects},
    policy::{CREDENTIAL_ID_EXTRA, Masks, NamespaceLabels, Request, SignIn, SignInKeys, User},
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
    /// Read by [`Extras::read`] once the keys it looks for are known.
    #[serde(default, borrow)]
    extra: Option<&'a RawValue>,
}

/// What `userInfo.extra` says that decisions read: whether the credential is bound to a pod
/// (`authentication.kubernetes.io/pod-name` and `pod-uid`, non-empty) and the person's sign-in
/// at the identity provider (the `acr`, `amr` and `auth-time` extras the API server maps from
/// an ID token, at the configured [`SignInKeys`], with the credential's id). Other keys and
/// their values are skipped without allocating.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub(super) struct Extras {
    pod_name: bool,
    pod_uid: bool,
    acr: Vec<String>,
    amr: Vec<String>,
    auth_time: Vec<String>,
    credential: Vec<String>,
    /// A sign-in extra held more than a few short values: no evidence, whatever else it says.
    oversized: bool,
}

impl Extras {
    pub(super) fn is_bound(&self) -> bool {
        self.pod_name && self.pod_uid
    }

    /// The sign-in, when the extras describe exactly one: one `auth-time` in whole seconds
    /// since the epoch, at most one `acr`. Anything else is no evidence at all.
    pub(super) fn sign_in(&self) -> Option<SignIn<'_>> {
        if self.oversized {
            return None;
        }
        SignIn::from_extras(&self.acr, &self.amr, &self.auth_time, &self.credential)
    }
}

impl Extras {
    fn take(&mut self, field: impl FnOnce(&mut Self) -> &mut Vec<String>, values: Strings) {
        match values.0 {
            Some(values) => field(self).extend(values),
            None => self.oversized = true,
        }
    }
}

impl Extras {
    /// The extras of a review's user (`None`: it had none), with the sign-in read from `keys`.
    /// Anything but a map of string lists (or null) is an error.
    pub(super) fn read(raw: Option<&RawValue>, keys: &SignInKeys) -> Result<Self, serde_json::Error> {
        use serde::de::DeserializeSeed;
        let Some(raw) = raw else { return Ok(Self::default()) };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let extras = Map { keys }.deserialize(&mut de)?;
        de.end()?;
        Ok(extras)
    }
}

/// Reads a `userInfo.extra` map, looking for the sign-in at `keys`.
struct Map<'k> {
    keys: &'k SignInKeys,
}

impl<'de> serde::de::DeserializeSeed<'de> for Map<'_> {
    type Value = Extras;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Extras, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Map<'_> {
    type Value = Extras;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of string lists")
    }
    fn visit_unit<E>(self) -> Result<Extras, E> {
        Ok(Extras::default())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Extras, A::Error> {
        let mut found = Extras::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match ExtraKey::of(&key, self.keys) {
                ExtraKey::PodName => found.pod_name |= map.next_value::<NonEmpty>()?.0,
                ExtraKey::PodUid => found.pod_uid |= map.next_value::<NonEmpty>()?.0,
                // A key seen twice (JSON allows it) adds to the list: two auth-times
                // or two acrs are no evidence.
                ExtraKey::Acr => found.take(|e| &mut e.acr, map.next_value::<Strings>()?),
                ExtraKey::Amr => found.take(|e| &mut e.amr, map.next_value::<Strings>()?),
                ExtraKey::AuthTime => found.take(|e| &mut e.auth_time, map.next_value::<Strings>()?),
                ExtraKey::CredentialId => found.take(|e| &mut e.credential, map.next_value::<Strings>()?),
                ExtraKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

enum ExtraKey {
    PodName,
    PodUid,
    Acr,
    Amr,
    AuthTime,
    CredentialId,
    Other,
}

impl ExtraKey {
    /// What an extra's (unescaped) key names. The sign-in keys cannot be one of the API
    /// server's own ([`stepup_core::policy::check_sign_in_key`]), so the order here hides nothing.
    fn of(key: &str, keys: &SignInKeys) -> Self {
        match key {
            POD_NAME_EXTRA => ExtraKey::PodName,
            POD_UID_EXTRA => ExtraKey::PodUid,
            CREDENTIAL_ID_EXTRA => ExtraKey::CredentialId,
            _ if key == keys.acr => ExtraKey::Acr,
            _ if key == keys.amr => ExtraKey::Amr,
            _ if key == keys.auth_time => ExtraKey::AuthTime,
            _ => ExtraKey::Other,
        }
    }
}

/// A list of strings (null: none); `None` when it holds more than a sign-in's few short words
/// (kept from memory: such a list is read value by value and dropped).
struct Strings(Option<Vec<String>>);

const MAX_SIGN_IN_VALUES: usize = 16;
const MAX_SIGN_IN_VALUE_BYTES: usize = 256;

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Values;
        impl<'de> serde::de::Visitor<'de> for Values {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_unit<E>(self) -> Result<Strings, E> {
                Ok(Strings(Some(Vec::new())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut values = Some(Vec::new());
                while let Some(value) = seq.next_element::<Cow<'de, str>>()? {
                    if let Some(kept) = &mut values {
                        if kept.len() == MAX_SIGN_IN_VALUES || value.len() > MAX_SIGN_IN_VALUE_BYTES {
                            values = None;
                        } else {
                            kept.push(value.into_owned());
                        }
                    }
                }
                Ok(Strings(values))
            }
        }
        deserializer.deserialize_any(Values)
    }
}

/// Whether a list of strings holds a non-empty one.
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Values;
        impl<'de> serde::de::Visitor<'de> for Values {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_unit<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while let Some(value) = seq.next_element::<Cow<'de, str>>()? {
                    any |= !value.is_empty();
                }
                Ok(NonEmpty(any))
            }
        }
        deserializer.deserialize_any(Values)
    }
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
    /// The object's real name: `request.name`, or for a collection delete (empty name) the old
    /// object's, for a `generateName` create the object's.
    name: Cow<'a, str>,
    extras: Extras,
}

/// `metadata.name` of an object, borrowed when it needs no unescaping.
fn object_name(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        metadata: Meta<'a>,
    }
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default)]
        name: Cow<'a, str>,
    }
    let raw = raw?;
    serde_json::from_str::<Object<'_>>(raw.get()).ok().map(|o| o.metadata.name).filter(|n| !n.is_empty())
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
    /// Parses a review; the requester's sign-in is read from the extras at `keys`.
    pub fn parse(body: &'a [u8], keys: &SignInKeys) -> Result<Self, ReviewError> {
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
        // Only when the name is empty, so the common case pays nothing.
        let name = match operation {
            _ if !raw.name.is_empty() => raw.name.clone(),
            Operation::Delete => object_name(raw.old_object).unwrap_or_default(),
            Operation::Create => object_name(raw.object).unwrap_or_default(),
            _ => Cow::Borrowed(""),
        };
        let extras = Extras::read(raw.user_info.extra, keys).map_err(ReviewError::NotJson)?;
        Ok(Self { raw, operation, name, extras })
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
        &self.name
    }

    /// Whether the requester's credential is a service-account token bound to a pod.
    pub fn pod_bound(&self) -> bool {
        self.extras.is_bound()
    }

    pub fn operation(&self) -> Operation {
        self.operation
    }

    pub fn username(&self) -> &str {
        &self.raw.user_info.username
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

    /// For an UPDATE of a Namespace, its labels before the change.
    pub fn namespace_object_previous_labels(&self) -> Option<BTreeMap<String, String>> {
        if !self.is_namespace_object() || self.operation != Operation::Update {
            return None;
        }
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
        let raw = self.raw.old_object?;
        serde_json::from_str::<Meta>(raw.get()).ok().map(|m| m.metadata.labels)
    }

    /// The request as the decision sees it. For a Namespace object, `namespace` is its name.
    /// The requester is classified by `masks`.
    pub fn request<'r>(
        &'r self,
        namespace_labels: NamespaceLabels<'r>,
        previous_labels: Option<&'r BTreeMap<String, String>>,
        masks: &Masks,
    ) -> Request<'r> {
        let namespace: &str =
            if self.is_namespace_object() && self.raw.namespace.is_empty() { &self.name } else { &self.raw.namespace };
        Request {
            action: self.operation.into(),
            group: &self.raw.resource.group,
            version: &self.raw.resource.version,
            resource: &self.raw.resource.resource,
            subresource: &self.raw.sub_resource,
            namespace,
            name: &self.name,
            user: User::reported(
                &self.raw.user_info.username,
                &self.raw.user_info.uid,
                &self.raw.user_info.groups,
                self.pod_bound(),
                masks,
            )
            .with_sign_in(self.extras.sign_in()),
            namespace_labels,
            previous_labels,
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
    use stepup_core::{
        api::Operation::*,
        policy::{ACR_EXTRA, AMR_EXTRA, AUTH_TIME_EXTRA},
        testing::request,
    };

    #[test]
    fn parses_a_realistic_review_without_copying_objects() {
        let body = request(Delete, "secrets")
            .namespace("prod")
            .name("db")
            .uid("uid-alice-1")
            .review("r-1", None, Some(stepup_core::testing::secret_object("prod", "db")))
            .to_string();
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        assert_eq!(review.uid(), "r-1");
        assert_eq!(review.kind(), "Secret");
        let req = review.request(NamespaceLabels::Unknown, None, &Masks::default());
        assert_eq!((req.operation(), req.resource, req.namespace, req.name), (Some(Delete), "secrets", "prod", "db"));
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
            let err = Review::parse(body.as_bytes(), &SignInKeys::default())
                .err()
                .unwrap_or_else(|| panic!("{body} should fail"));
            assert_eq!(err.label(), label, "{body}: {err}");
        }
    }

    #[test]
    fn a_stepup_object_that_is_not_one_is_a_bad_object() {
        let body = request(Create, "stepupchallenges")
            .group("stepup.dev", "v1alpha1")
            .review("r-2", Some(serde_json::json!({"spec": {"user": 42}})), None)
            .to_string();
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
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
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        let labels = review.namespace_object_labels().unwrap();
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(review.request(NamespaceLabels::Known(&labels), None, &Masks::default()).namespace, "prod");
    }

    fn with_extra(extra: serde_json::Value) -> String {
        let mut review = request(Delete, "secrets").namespace("prod").name("db").review("r-4", None, None);
        review["request"]["userInfo"]["username"] = serde_json::json!("system:serviceaccount:prod:default");
        review["request"]["userInfo"]["extra"] = extra;
        review.to_string()
    }

    #[test]
    fn a_service_account_is_a_workload_only_with_both_pod_binding_extras() {
        use stepup_core::policy::Requester::*;
        let cases = [
            ("no extra", serde_json::json!(null), Person),
            (
                "unrelated extras",
                serde_json::json!({"scopes": ["a"], "authentication.kubernetes.io/credential-id": ["JTI=x"]}),
                Person,
            ),
            ("pod name only", serde_json::json!({POD_NAME_EXTRA: ["web-0"]}), Person),
            ("empty values", serde_json::json!({POD_NAME_EXTRA: [""], POD_UID_EXTRA: []}), Person),
            (
                "pod-bound token",
                serde_json::json!({POD_NAME_EXTRA: ["web-0"], POD_UID_EXTRA: ["u-1"], "authentication.kubernetes.io/node-name": ["n1"]}),
                Workload,
            ),
            // JSON escapes do not hide a key: it is the same extra.
            (
                "escaped key",
                serde_json::json!({"authentication.kubernetes.io\\u002fpod-name": ["web-0"], POD_UID_EXTRA: ["u-1"]}),
                Workload,
            ),
        ];
        for (what, extra, expected) in cases {
            let body = with_extra(extra).replace("\\\\u002f", "\\u002f");
            let review =
                Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
            let req = review.request(NamespaceLabels::Unknown, None, &Masks::default());
            assert_eq!(req.user.kind, expected, "{what}");
        }
    }

    #[test]
    fn a_sign_in_is_read_from_exactly_one_auth_time_and_at_most_one_acr() {
        let review_with = |extra: serde_json::Value| {
            let mut review = request(Delete, "secrets").namespace("prod").name("db").review("r-5", None, None);
            review["request"]["userInfo"]["extra"] = extra;
            review.to_string()
        };
        let body = review_with(serde_json::json!({
            ACR_EXTRA: ["2"], AMR_EXTRA: ["pwd", "otp"], AUTH_TIME_EXTRA: ["1796665229"],
            CREDENTIAL_ID_EXTRA: ["JTI=abc"], "scopes": ["x"],
        }));
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        let req = review.request(NamespaceLabels::Unknown, None, &Masks::default());
        let sign_in = req.user.sign_in.expect("a sign-in");
        assert_eq!(
            (sign_in.acr, sign_in.amr, sign_in.credential),
            ("2", &["pwd".to_owned(), "otp".to_owned()][..], "JTI=abc")
        );
        assert_eq!(sign_in.auth_time.as_second(), 1_796_665_229);
        let many: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
        for (what, extra) in [
            ("no auth-time", serde_json::json!({ACR_EXTRA: ["2"], AMR_EXTRA: ["otp"]})),
            ("two auth-times", serde_json::json!({AUTH_TIME_EXTRA: ["1796665229", "1796665230"]})),
            ("auth-time not a number", serde_json::json!({AUTH_TIME_EXTRA: ["1.796665229e9"]})),
            ("auth-time out of range", serde_json::json!({AUTH_TIME_EXTRA: ["99999999999999999"]})),
            ("two acrs", serde_json::json!({ACR_EXTRA: ["1", "2"], AUTH_TIME_EXTRA: ["1796665229"]})),
            ("too many amrs", serde_json::json!({AMR_EXTRA: many, AUTH_TIME_EXTRA: ["1796665229"]})),
        ] {
            let body = review_with(extra);
            let review =
                Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
            let req = review.request(NamespaceLabels::Unknown, None, &Masks::default());
            assert_eq!(req.user.sign_in, None, "{what}");
        }
    }

    #[test]
    fn a_sign_in_is_read_only_from_the_configured_keys() {
        let keys = SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/auth-time").unwrap();
        let review_with = |extra: serde_json::Value| {
            let mut review = request(Delete, "secrets").namespace("prod").name("db").review("r-6", None, None);
            review["request"]["userInfo"]["extra"] = extra;
            review.to_string()
        };
        let sign_in_of = |body: &str, keys: &SignInKeys| {
            let review = Review::parse(body.as_bytes(), keys).unwrap();
            review.request(NamespaceLabels::Unknown, None, &Masks::default()).user.sign_in.map(|s| s.acr.to_owned())
        };
        let configured = review_with(serde_json::json!({
            "sso.example.com/acr": ["2"], "sso.example.com/amr": ["otp"], "sso.example.com/auth-time": ["1796665229"],
        }));
        assert_eq!(sign_in_of(&configured, &keys).as_deref(), Some("2"));
        assert_eq!(sign_in_of(&configured, &SignInKeys::default()), None, "the default keys see nothing there");
        // Once other keys are configured, the defaults are just extras: whoever can put them
        // on a request (another authenticator, impersonation RBAC allows) proves nothing.
        let defaults = review_with(serde_json::json!({
            ACR_EXTRA: ["2"], AMR_EXTRA: ["otp"], AUTH_TIME_EXTRA: ["1796665229"],
        }));
        assert_eq!(sign_in_of(&defaults, &keys), None);
        assert_eq!(sign_in_of(&defaults, &SignInKeys::default()).as_deref(), Some("2"));
        // A configured key seen twice adds up to two acrs: no evidence.
        let twice = review_with(serde_json::json!({"sso.example.com/auth-time": ["1796665229"]})).replace(
            r#""sso.example.com/auth-time""#,
            r#""sso.example.com/acr":["1"],"sso.example.com/acr":["2"],"sso.example.com/auth-time""#,
        );
        assert!(twice.contains(r#""sso.example.com/acr":["1"],"sso.example.com/acr":["2"]"#), "{twice}");
        assert_eq!(sign_in_of(&twice, &keys), None);
    }

    #[test]
    fn malformed_extras_are_a_named_error_not_a_panic() {
        for extra in [
            serde_json::json!({POD_NAME_EXTRA: "web-0"}),
            serde_json::json!([1]),
            serde_json::json!({POD_NAME_EXTRA: [7]}),
        ] {
            let body = with_extra(extra.clone());
            assert_eq!(
                Review::parse(body.as_bytes(), &SignInKeys::default()).err().map(|e| e.label()),
                Some("not_json"),
                "{extra}"
            );
        }
    }

    #[test]
    fn collection_deletes_and_generate_name_creates_use_the_objects_real_name() {
        // deletecollection: the API server reviews each object with an empty name.
        let body = request(Delete, "secrets")
            .namespace("prod")
            .review("r-5", None, Some(stepup_core::testing::secret_object("prod", "db")))
            .to_string();
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        assert_eq!(review.request(NamespaceLabels::Unknown, None, &Masks::default()).name, "db");
        // generateName: the name is generated before validating admission.
        let object = serde_json::json!({"metadata": {"generateName": "db-", "name": "db-x7k2p"}});
        let body = request(Create, "secrets").namespace("prod").review("r-6", Some(object), None).to_string();
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        assert_eq!(review.name(), "db-x7k2p");
        // A given name is never replaced by the object's.
        let body = request(Delete, "secrets")
            .namespace("prod")
            .name("db")
            .review("r-7", None, Some(stepup_core::testing::secret_object("prod", "other")))
            .to_string();
        assert_eq!(Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap().name(), "db");
    }

    #[test]
    fn a_namespace_update_carries_its_labels_before_and_after() {
        let new = serde_json::json!({"metadata": {"name": "prod", "labels": {"team": "a"}}});
        let old = serde_json::json!({"metadata": {"name": "prod", "labels": {"env": "prod", "team": "a"}}});
        let body = request(Update, "namespaces").name("prod").review("r-8", Some(new), Some(old)).to_string();
        let review = Review::parse(body.as_bytes(), &SignInKeys::default()).unwrap();
        assert_eq!(review.namespace_object_labels().unwrap().get("env"), None);
        assert_eq!(review.namespace_object_previous_labels().unwrap().get("env").map(String::as_str), Some("prod"));
    }
}
