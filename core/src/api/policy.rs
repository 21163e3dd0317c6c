//! `StepUpPolicy`: which operations need a fresh second factor, and how fresh.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Duration, Method};

/// A StepUpPolicy names sensitive operations (for example deleting Secrets in production
/// namespaces, or exec into production pods) that a person may only perform while holding a
/// recent StepUpGrant, obtained with `kubectl stepup request`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpPolicy",
    plural = "stepuppolicies",
    shortname = "sup",
    category = "stepup",
    status = "StepUpPolicyStatus",
    derive = "PartialEq",
    doc = "StepUpPolicy says which operations require a recent second factor (a StepUpGrant).",
    printcolumn(name = "Enforcement", type_ = "string", json_path = ".spec.enforcement"),
    printcolumn(name = "Max-Age", type_ = "string", json_path = ".spec.maxAge"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StepUpPolicySpec {
    /// Which requests the policy applies to. A request matches when one of the rules matches
    /// and every other constraint (namespaces, namespaceSelector, resourceNames, subjects) holds,
    /// and no exclusion applies.
    #[serde(rename = "match")]
    pub match_: PolicyMatch,

    /// What happens when a matching request comes without a satisfying grant: `Deny` refuses
    /// it, `Warn` lets it through with a warning shown by kubectl, `Audit` lets it through and
    /// only records it. Defaults to `Deny`.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// How recently the grant must have been issued, as a duration such as `15m` or `1h`
    /// (at least 1s, at most 24h). Defaults to `15m`.
    #[serde(default = "default_max_age")]
    #[schemars(schema_with = "max_age_schema")]
    pub max_age: Duration,

    /// Verification methods that satisfy this policy, any one of them: `TOTP` (a grant from
    /// `kubectl stepup request`), `Session` (the request's own evidence of a recent sign-in
    /// with a second factor at the identity provider), `OIDC` (a grant for a fresh ID token
    /// from the identity provider, which the controller verifies), `WebAuthn` (a grant for a
    /// registered security key's or passkey's answer to the controller's challenge). Defaults
    /// to `[TOTP]`.
    #[serde(default = "default_methods")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub methods: Vec<Method>,

    /// The assurance an identity-provider sign-in (`Session`, `OIDC`) must carry, in RFC 9470 terms.
    /// `maxAge` bounds its `auth_time`. TOTP grants are not judged by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assurance: Option<Assurance>,

    /// Text added to the denial message, for example a link to the runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,

    /// For `WebAuthn`: a security key's grant counts only if the key verified the person (PIN
    /// or biometric), not only their presence; the controller asks keys for it. Needs
    /// `WebAuthn` in `methods`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_user_verification: bool,

    /// When true, a grant only satisfies this policy if it was requested with a reason
    /// (e.g. an incident or ticket number); the reason travels into the grant and the audit trail.
    #[serde(default)]
    pub require_reason: bool,
}

/// What an identity provider's sign-in must say about how the person authenticated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assurance {
    /// Accepted authentication context class references (`acr`), any one of them (for
    /// example the level your identity provider gives a sign-in with a second factor).
    /// Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 128)))]
    pub acr_values: Vec<String>,

    /// Authentication methods references (`amr`, RFC 8176) the sign-in must include, every one
    /// of them (for example `otp`, `hwk`, `mfa`). Empty: none required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 64)))]
    pub amr: Vec<String>,
}

fn default_max_age() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_methods() -> Vec<Method> {
    vec![Method::Totp]
}

/// Which requests a policy applies to, in the vocabulary of admission webhook rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Operations (admission) and verbs (authorization) on resources. At least one rule.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<ResourceRule>,

    /// Namespace name globs (`*` and `?` wildcards, e.g. `prod-*`). When set, only namespaced
    /// requests in a matching namespace (or the Namespace object itself) match; cluster-scoped
    /// objects never do. Empty means any namespace and cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "namespace_globs")]
    pub namespaces: Vec<String>,

    /// Label selector on the request's namespace (e.g. `env: prod`). Like `namespaces`, when
    /// set it never matches cluster-scoped objects other than the Namespace object itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Names of the objects the policy applies to. Empty means any name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub resource_names: Vec<String>,

    /// Who the policy applies to. When omitted, it applies to people: every user except
    /// `system:` identities (nodes, controllers) and service accounts, which are only subject
    /// to a policy that names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Subjects>,

    /// Requests that never match, even when everything above does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Exclusions>,
}

/// One rule: operations (what admission sees) and verbs (what only authorization sees, reads
/// first) on resources in API groups and versions. At least one operation or verb.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.operations) && size(self.operations) > 0) || (has(self.verbs) && size(self.verbs) > 0)",
    "message": "a rule needs at least one operation (CREATE, UPDATE, DELETE, CONNECT) or verb (get, list, watch, ...)",
    "fieldPath": ".operations",
}]))]
pub struct ResourceRule {
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` (exec, attach, port-forward, proxy) or `*`:
    /// decided by the admission webhook.
    #[serde(default)]
    #[schemars(length(max = 5))]
    pub operations: Vec<Operation>,

    /// Verbs only authorization sees, decided by the stepup authorizer (the API server's
    /// authorization webhook): `get`, `list`, `watch` (reading), `impersonate`, `bind`,
    /// `escalate`, `approve`, `sign`; and any verb on a `proxy` subresource (`nodes/proxy`
    /// reaches the kubelet without admission). `*` is not accepted: name what you mean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 13), extend("x-kubernetes-list-type" = "set"))]
    pub verbs: Vec<Verb>,

    /// API groups; `""` is the core group, `*` any group.
    #[schemars(schema_with = "api_groups")]
    pub api_groups: Vec<String>,

    /// API versions; `*` any version. Defaults to `["*"]`.
    #[serde(default = "any")]
    #[schemars(schema_with = "api_versions")]
    pub api_versions: Vec<String>,

    /// Resources, with subresources after a slash: `secrets`, `pods/exec`, `pods/*` (pods and
    /// all their subresources), `*` (all resources, not subresources), `*/*` (everything).
    #[schemars(schema_with = "resources")]
    pub resources: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

// Field schemas whose checks are CEL rules with a sentence for a message, not `pattern`s:
// `kubectl apply` then says what is wrong in words instead of printing a regular expression.

/// A list of strings, each checked by `pattern` (a regex CEL accepts) with `message`.
fn checked_list(min: u32, max: u32, max_len: u32, pattern: &str, message: &str) -> schemars::Schema {
    let mut schema = schemars::json_schema!({
        "type": "array",
        "maxItems": max,
        "items": {
            "type": "string",
            "maxLength": max_len,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", pattern.replace('\\', "\\\\")),
                "message": message,
            }],
        },
    });
    if min > 0 {
        schema.insert("minItems".into(), min.into());
    }
    schema
}

fn namespace_globs(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    checked_list(
        0,
        256,
        63,
        r"^[a-z0-9*?][-a-z0-9*?]*$",
        "must be a namespace name or glob: lower-case letters, digits, '-', '*' and '?' (e.g. prod or prod-*)",
    )
}

fn api_groups(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    checked_list(
        1,
        64,
        253,
        r"^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        "must be an API group (\"\" for the core group, e.g. apps or rbac.authorization.k8s.io) or *",
    )
}

fn api_versions(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    checked_list(1, 64, 63, r"^(\*|[a-z0-9]+)$", "must be an API version such as v1 or v1beta1, or *")
}

fn resources(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    checked_list(
        1,
        64,
        317,
        r"^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)(/(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?))?$",
        "must be a resource, optionally with a subresource after one slash: secrets, pods/exec, pods/*, * or */*",
    )
}

fn max_age_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let format = super::duration::duration_rule();
    let pattern = super::duration::DURATION_PATTERN.replace('\\', "\\\\");
    schemars::json_schema!({
        "type": "string",
        "maxLength": 32,
        "x-kubernetes-validations": [
            format,
            {
                // CEL's `||` absorbs the error of a duration that does not parse: the rule above
                // reports that one, in words.
                "rule": format!("!self.matches('{pattern}') || (duration(self) >= duration('1s') && duration(self) <= duration('24h'))"),
                "message": "maxAge must be between 1s and 24h",
            },
        ],
    })
}

/// An admission operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Operation {
    #[serde(rename = "CREATE")]
    Create,
    #[serde(rename = "UPDATE")]
    Update,
    #[serde(rename = "DELETE")]
    Delete,
    #[serde(rename = "CONNECT")]
    Connect,
    #[serde(rename = "*")]
    All,
}

impl Operation {
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::All => "*",
        }
    }
}

/// A verb of the API server's authorization (lower case, as in RBAC).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    Deletecollection,
    Impersonate,
    Bind,
    Escalate,
    Approve,
    Sign,
}

impl Verb {
    pub const ALL: [Verb; 13] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::Deletecollection,
        Verb::Impersonate,
        Verb::Bind,
        Verb::Escalate,
        Verb::Approve,
        Verb::Sign,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Deletecollection => "deletecollection",
            Verb::Impersonate => "impersonate",
            Verb::Bind => "bind",
            Verb::Escalate => "escalate",
            Verb::Approve => "approve",
            Verb::Sign => "sign",
        }
    }

    /// The verb a SubjectAccessReview names, if policies can name it.
    pub fn parse(verb: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == verb)
    }

    /// Verbs that change objects: admission decides them, except on `proxy` subresources
    /// (the kubelet's API behind `nodes/proxy` never passes admission).
    pub const fn is_write(self) -> bool {
        matches!(self, Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::Deletecollection)
    }

    /// Verbs over a collection: an empty name means every object, an empty namespace every
    /// namespace.
    pub const fn is_collection(self) -> bool {
        matches!(self, Verb::List | Verb::Watch | Verb::Deletecollection)
    }
}

/// People, groups and service accounts a policy names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// Usernames (globs with `*` allowed, e.g. `*@contractor.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub users: Vec<String>,
    /// Group names, exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub groups: Vec<String>,
    /// Service accounts; `name: "*"` means every service account of the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<ServiceAccountRef>,
}

/// A service account, by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The service account's name, or `*` for all of the namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Requests a policy never applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exclusions {
    /// Usernames (globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub users: Vec<String>,
    /// Group names, exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub groups: Vec<String>,
    /// Service accounts; `name: "*"` means every service account of the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Namespace name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "namespace_globs")]
    pub namespaces: Vec<String>,
}

/// What a policy does with a matching request that has no satisfying grant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Enforcement {
    /// Refuse the request.
    #[default]
    Deny,
    /// Allow it, with a warning to the client.
    Warn,
    /// Allow it, and only record it.
    Audit,
}

impl Enforcement {
    pub const fn as_str(self) -> &'static str {
        match self {
            Enforcement::Deny => "Deny",
            Enforcement::Warn => "Warn",
            Enforcement::Audit => "Audit",
        }
    }
}

/// Observed state of a StepUpPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepUpPolicyStatus {
    /// `Ready` is `True` once the webhook enforces the policy; `False` with a reason when the
    /// policy cannot be compiled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
