//! Small builders for policies, grants and requests, shared by unit tests, integration tests
//! and benchmarks. Not used by the binaries.

pub mod fleet;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde_json::{Value, json};

use crate::{
    api::{
        self, Enforcement, Exclusions, GrantScope, Method, Operation, PolicyMatch, ResourceRule, StepUpGrant,
        StepUpGrantSpec, StepUpPolicy, StepUpPolicySpec, Subjects, Verb,
    },
    grant::GrantRecord,
    policy::{Action, CompiledPolicy, NamespaceLabels, Request, User},
};

/// A fixed instant, so tests read the same every day.
pub fn t0() -> Timestamp {
    "2026-11-28T12:00:00Z".parse().expect("valid timestamp")
}

pub fn minutes(n: i64) -> SignedDuration {
    SignedDuration::from_mins(n)
}

/// Builds a StepUpPolicy.
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    name: String,
    spec: StepUpPolicySpec,
}

pub fn policy(name: &str) -> PolicyBuilder {
    PolicyBuilder {
        name: name.to_owned(),
        spec: StepUpPolicySpec {
            match_: PolicyMatch::default(),
            enforcement: Enforcement::Deny,
            max_age: api::Duration::from_secs(15 * 60),
            methods: vec![Method::Totp],
            assurance: None,
            message: None,
            require_reason: false,
            require_user_verification: false,
        },
    }
}

impl PolicyBuilder {
    /// Adds a rule in the core group when `group` is empty.
    pub fn rule(mut self, operations: &[Operation], group: &str, resources: &[&str]) -> Self {
        self.spec.match_.rules.push(ResourceRule {
            operations: operations.to_vec(),
            api_groups: vec![group.to_owned()],
            api_versions: vec!["*".to_owned()],
            resources: resources.iter().map(|r| r.to_string()).collect(),
            verbs: Vec::new(),
        });
        self
    }

    /// Adds a rule of authorization verbs (reads first) in the core group when `group` is empty.
    pub fn verbs(mut self, verbs: &[Verb], group: &str, resources: &[&str]) -> Self {
        self.spec.match_.rules.push(ResourceRule {
            operations: Vec::new(),
            api_groups: vec![group.to_owned()],
            api_versions: vec!["*".to_owned()],
            resources: resources.iter().map(|r| r.to_string()).collect(),
            verbs: verbs.to_vec(),
        });
        self
    }

    pub fn versions(mut self, versions: &[&str]) -> Self {
        if let Some(r) = self.spec.match_.rules.last_mut() {
            r.api_versions = versions.iter().map(|v| v.to_string()).collect();
        }
        self
    }

    pub fn namespaces(mut self, namespaces: &[&str]) -> Self {
        self.spec.match_.namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn namespace_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.spec.match_.namespace_selector = Some(LabelSelector {
            match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            match_expressions: None,
        });
        self
    }

    pub fn resource_names(mut self, names: &[&str]) -> Self {
        self.spec.match_.resource_names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn subjects(mut self, users: &[&str], groups: &[&str], service_accounts: &[(&str, &str)]) -> Self {
        self.spec.match_.subjects = Some(Subjects {
            users: users.iter().map(|u| u.to_string()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            service_accounts: service_accounts
                .iter()
                .map(|(ns, name)| api::ServiceAccountRef { namespace: ns.to_string(), name: name.to_string() })
                .collect(),
        });
        self
    }

    pub fn exclude_users(mut self, users: &[&str]) -> Self {
        self.spec.match_.exclude.get_or_insert_with(Exclusions::default).users =
            users.iter().map(|u| u.to_string()).collect();
        self
    }

    pub fn exclude_groups(mut self, groups: &[&str]) -> Self {
        self.spec.match_.exclude.get_or_insert_with(Exclusions::default).groups =
            groups.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn exclude_namespaces(mut self, namespaces: &[&str]) -> Self {
        self.spec.match_.exclude.get_or_insert_with(Exclusions::default).namespaces =
            namespaces.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn enforcement(mut self, enforcement: Enforcement) -> Self {
        self.spec.enforcement = enforcement;
        self
    }

    pub fn max_age(mut self, max_age: &str) -> Self {
        self.spec.max_age = max_age.parse().expect("valid duration");
        self
    }

    pub fn message(mut self, message: &str) -> Self {
        self.spec.message = Some(message.to_owned());
        self
    }

    pub fn require_user_verification(mut self) -> Self {
        self.spec.require_user_verification = true;
        self
    }

    pub fn require_reason(mut self) -> Self {
        self.spec.require_reason = true;
        self
    }

    pub fn methods(mut self, methods: &[Method]) -> Self {
        self.spec.methods = methods.to_vec();
        self
    }

    /// Accepted `acr` values and required `amr` of a Session.
    pub fn assurance(mut self, acr_values: &[&str], amr: &[&str]) -> Self {
        self.spec.assurance = Some(crate::api::Assurance {
            acr_values: acr_values.iter().map(|s| s.to_string()).collect(),
            amr: amr.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    pub fn build(self) -> StepUpPolicy {
        StepUpPolicy::new(&self.name, self.spec)
    }

    pub fn compiled(self) -> CompiledPolicy {
        CompiledPolicy::compile(&self.build()).expect("test policy compiles")
    }
}

/// Builds a StepUpGrant, issued at `t0()` for one hour, unless told otherwise.
#[derive(Clone, Debug)]
pub struct GrantBuilder {
    name: String,
    spec: StepUpGrantSpec,
    deleting: bool,
}

pub fn grant(name: &str, user: &str) -> GrantBuilder {
    GrantBuilder {
        name: name.to_owned(),
        spec: StepUpGrantSpec {
            user: user.to_owned(),
            uid: None,
            method: Method::Totp,
            reason: None,
            issued_at: Time(t0()),
            expires_at: Time(t0() + SignedDuration::from_hours(1)),
            scope: GrantScope::default(),
            acr: None,
            amr: Vec::new(),
            credential_id_hash: None,
            user_verified: false,
            challenge_ref: None,
            signature: None,
        },
        deleting: false,
    }
}

impl GrantBuilder {
    pub fn uid(mut self, uid: &str) -> Self {
        self.spec.uid = Some(uid.to_owned());
        self
    }

    pub fn issued(mut self, at: Timestamp) -> Self {
        self.spec.issued_at = Time(at);
        self
    }

    pub fn expires(mut self, at: Timestamp) -> Self {
        self.spec.expires_at = Time(at);
        self
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.spec.reason = Some(reason.to_owned());
        self
    }

    pub fn scope_policies(mut self, policies: &[&str]) -> Self {
        self.spec.scope.policies = policies.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn scope_namespaces(mut self, namespaces: &[&str]) -> Self {
        self.spec.scope.namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        self
    }

    /// An `OIDC` grant for a sign-in with `acr` and `amr`.
    pub fn oidc(mut self, acr: &str, amr: &[&str]) -> Self {
        self.spec.method = Method::Oidc;
        self.spec.acr = Some(acr.to_owned());
        self.spec.amr = amr.iter().map(|m| m.to_string()).collect();
        self
    }

    /// A `WebAuthn` grant: the security key `id_hash` signed, verifying its user or not.
    pub fn security_key(mut self, id_hash: &str, user_verified: bool) -> Self {
        self.spec.method = Method::WebAuthn;
        self.spec.credential_id_hash = Some(id_hash.to_owned());
        self.spec.user_verified = user_verified;
        self
    }

    pub fn revoked(mut self) -> Self {
        self.deleting = true;
        self
    }

    pub fn build(self) -> StepUpGrant {
        let mut g = StepUpGrant::new(&self.name, self.spec);
        g.metadata.labels = Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&g.spec.user))]));
        if self.deleting {
            g.metadata.deletion_timestamp = Some(Time(t0()));
        }
        g
    }

    pub fn record(self) -> GrantRecord {
        GrantRecord::from_grant(&self.build()).expect("named grant")
    }
}

/// An owned request, viewed as a [`Request`] by the decision.
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    pub action: Action,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// For a Namespace UPDATE: the labels before the change.
    pub previous_labels: Option<BTreeMap<String, String>>,
    /// Whether the requester's credential is a pod-bound service-account token.
    pub pod_bound: bool,
    pub dry_run: bool,
    /// A sign-in at the identity provider the API server reports: acr, amr, auth_time, and
    /// the credential id.
    pub sign_in: Option<(String, Vec<String>, Timestamp, String)>,
}

/// `operation` on `resource` (`secrets`, `pods/exec`) in the core group, version v1, by alice.
pub fn request(operation: Operation, resource: &str) -> RequestBuilder {
    action(Action::Admission(operation), resource)
}

/// An authorization request: `verb` on `resource`, in the core group, version v1, by alice.
pub fn read(verb: Verb, resource: &str) -> RequestBuilder {
    action(Action::Authorization(verb), resource)
}

fn action(action: Action, resource: &str) -> RequestBuilder {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    RequestBuilder {
        action,
        group: String::new(),
        version: "v1".to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        namespace: String::new(),
        name: String::new(),
        username: "alice".to_owned(),
        uid: String::new(),
        groups: vec!["developers".to_owned(), "system:authenticated".to_owned()],
        labels: None,
        previous_labels: None,
        pod_bound: false,
        dry_run: false,
        sign_in: None,
    }
}

impl RequestBuilder {
    pub fn group(mut self, group: &str, version: &str) -> Self {
        self.group = group.to_owned();
        self.version = version.to_owned();
        self
    }

    /// In `namespace`, whose labels are unknown unless given with [`Self::labels`].
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        self
    }

    /// A Namespace UPDATE's labels before the change.
    pub fn previous_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.previous_labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        self
    }

    /// The requester's credential is a service-account token bound to a pod.
    pub fn pod_bound(mut self) -> Self {
        self.pod_bound = true;
        self
    }

    pub fn by(mut self, username: &str, groups: &[&str]) -> Self {
        self.username = username.to_owned();
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.to_owned();
        self
    }

    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// The requester signed in at the identity provider at `at`, with `acr` and `amr`, and the
    /// API server says so in `userInfo.extra`.
    pub fn signed_in(mut self, acr: &str, amr: &[&str], at: Timestamp) -> Self {
        self.sign_in = Some((acr.to_owned(), amr.iter().map(|s| s.to_string()).collect(), at, "JTI=t-1".to_owned()));
        self
    }

    /// The `userInfo.extra` entries of the sign-in, as the API server maps them.
    fn sign_in_extras(&self) -> Option<Value> {
        let (acr, amr, at, credential) = self.sign_in.as_ref()?;
        Some(json!({
            crate::policy::ACR_EXTRA: [acr],
            crate::policy::AMR_EXTRA: amr,
            crate::policy::AUTH_TIME_EXTRA: [at.as_second().to_string()],
            crate::policy::CREDENTIAL_ID_EXTRA: [credential],
        }))
    }

    pub fn view(&self) -> Request<'_> {
        let namespace_labels = match (&self.labels, self.namespace.is_empty()) {
            (Some(labels), _) => NamespaceLabels::Known(labels),
            (None, true) => NamespaceLabels::NotApplicable,
            (None, false) => NamespaceLabels::Unknown,
        };
        Request {
            action: self.action,
            group: &self.group,
            version: &self.version,
            resource: &self.resource,
            subresource: &self.subresource,
            namespace: &self.namespace,
            name: &self.name,
            user: User::new(&self.username, &self.uid, &self.groups)
                .with_credential(self.pod_bound, crate::policy::Masks::defaults())
                .with_sign_in(self.sign_in.as_ref().map(|(acr, amr, at, credential)| crate::policy::SignIn {
                    acr,
                    amr,
                    auth_time: *at,
                    credential,
                })),
            namespace_labels,
            previous_labels: self.previous_labels.as_ref(),
            dry_run: self.dry_run,
        }
    }

    /// The same request as an `admission.k8s.io/v1` AdmissionReview body, with `object` and
    /// `oldObject` as given.
    pub fn review(&self, uid: &str, object: Option<Value>, old_object: Option<Value>) -> Value {
        let mut request = json!({
            "uid": uid,
            "kind": {"group": self.group, "version": self.version, "kind": kind_of(&self.resource)},
            "resource": {"group": self.group, "version": self.version, "resource": self.resource},
            "operation": self.action.as_str(),
            "userInfo": {"username": self.username, "groups": self.groups},
            "dryRun": self.dry_run,
        });
        let r = request.as_object_mut().expect("object");
        if self.pod_bound {
            r["userInfo"]["extra"] = json!({
                "authentication.kubernetes.io/pod-name": ["web-0"],
                "authentication.kubernetes.io/pod-uid": ["0b6b3c8e-0000-4000-8000-000000000002"],
            });
        }
        if let Some(extras) = self.sign_in_extras() {
            r["userInfo"]["extra"] = extras;
        }
        if !self.uid.is_empty() {
            r["userInfo"]["uid"] = json!(self.uid);
        }
        if !self.subresource.is_empty() {
            r.insert("subResource".into(), json!(self.subresource));
        }
        if !self.name.is_empty() {
            r.insert("name".into(), json!(self.name));
        }
        if !self.namespace.is_empty() {
            r.insert("namespace".into(), json!(self.namespace));
        }
        if let Some(o) = object {
            r.insert("object".into(), o);
        }
        if let Some(o) = old_object {
            r.insert("oldObject".into(), o);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }
}

impl RequestBuilder {
    /// The same request as an `authorization.k8s.io/v1` SubjectAccessReview, as the API server's
    /// authorization webhook sends it.
    pub fn subject_access_review(&self) -> Value {
        let mut attributes = json!({
            "verb": self.action.as_str(),
            "group": self.group,
            "version": self.version,
            "resource": self.resource,
        });
        let a = attributes.as_object_mut().expect("object");
        for (key, value) in [("subresource", &self.subresource), ("namespace", &self.namespace), ("name", &self.name)] {
            if !value.is_empty() {
                a.insert(key.into(), json!(value));
            }
        }
        let mut spec = json!({"resourceAttributes": attributes, "user": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            spec["uid"] = json!(self.uid);
        }
        if let Some(extras) = self.sign_in_extras() {
            spec["extra"] = extras;
        }
        if self.pod_bound {
            spec["extra"] = json!({
                "authentication.kubernetes.io/pod-name": ["web-0"],
                "authentication.kubernetes.io/pod-uid": ["0b6b3c8e-0000-4000-8000-000000000002"],
            });
        }
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "secrets" => "Secret",
        "pods" => "Pod",
        "deployments" => "Deployment",
        "namespaces" => "Namespace",
        "stepuppolicies" => "StepUpPolicy",
        "stepupgrants" => "StepUpGrant",
        "stepupchallenges" => "StepUpChallenge",
        "stepupenrollments" => "StepUpEnrollment",
        _ => "Object",
    }
}

/// A Secret object as the API server would send it.
pub fn secret_object(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "uid": "6a3c2b1e-0000-4000-8000-000000000001", "resourceVersion": "4711"},
        "type": "Opaque",
        "data": {"password": "aHVudGVyMg=="}
    })
}

/// Metadata with a name, for building typed objects.
pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_owned()), ..Default::default() }
}
