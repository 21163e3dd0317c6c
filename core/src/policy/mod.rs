//! Compiled policies and the index that finds the policies a request matches. Pure: no I/O,
//! no clock. The webhook validates a StepUpPolicy with [`CompiledPolicy::compile`], the same
//! function the index uses, so it refuses exactly what the index could not read.

pub mod builtin;
mod glob;
mod index;
mod selector;
pub mod served;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

pub use glob::Glob;
pub use index::{Matches, PolicyIndex};
pub use selector::Selector;

use crate::api::{self, Enforcement, Method, Operation, StepUpPolicy, StepUpPolicySpec, Verb};

/// A policy that cannot be compiled, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Who is asking, as policies see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    /// A person, or a service account worn as a mask (impersonated, or a token not bound to a
    /// pod): policies without `subjects` apply.
    Person,
    /// A service account whose credential is bound to a pod (or of a trusted namespace):
    /// subject only to policies that name it.
    Workload,
    /// Other `system:` identities (nodes, control-plane components, anonymous).
    ControlPlane,
}

/// How service accounts without a pod-bound credential are treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masks {
    /// Treat them as people (the default): whoever may impersonate a service account or mint
    /// a token for it is a person wearing a mask.
    pub enabled: bool,
    /// Namespaces whose service accounts stay workloads without a pod binding: the control
    /// plane mints such tokens for its own controllers (kube-system).
    pub trusted_namespaces: Vec<String>,
}

impl Default for Masks {
    fn default() -> Self {
        Self { enabled: true, trusted_namespaces: vec!["kube-system".to_owned()] }
    }
}

impl Masks {
    /// The defaults, built once: classifying a requester must not allocate.
    pub fn defaults() -> &'static Masks {
        static DEFAULTS: std::sync::LazyLock<Masks> = std::sync::LazyLock::new(Masks::default);
        &DEFAULTS
    }
}

/// Classifies a requester from the username and whether `userInfo.extra` carries the pod
/// binding (`authentication.kubernetes.io/pod-name` and `pod-uid`).
pub fn classify(username: &str, pod_bound: bool, masks: &Masks) -> Requester {
    match api::parse_service_account(username) {
        Some((namespace, _)) => {
            if pod_bound || !masks.enabled || masks.trusted_namespaces.iter().any(|t| t == namespace) {
                Requester::Workload
            } else {
                Requester::Person
            }
        }
        None if username.starts_with("system:") => Requester::ControlPlane,
        None => Requester::Person,
    }
}

/// The authenticated requester, as the API server reports it in `request.userInfo`.
#[derive(Clone, Copy, Debug)]
pub struct User<'a> {
    pub username: &'a str,
    /// Empty when the authenticator supplies no UID.
    pub uid: &'a str,
    pub groups: &'a [String],
    /// Whether the credential is a service-account token bound to a pod.
    pub pod_bound: bool,
    pub kind: Requester,
    /// How and when the person signed in at the identity provider, when the API server says
    /// (see [`SignIn`]).
    pub sign_in: Option<SignIn<'a>>,
}

/// A person's sign-in at the identity provider, as the API server reports it on the request
/// (`userInfo.extra`, mapped from the ID token's `acr`, `amr` and `auth_time` by its
/// AuthenticationConfiguration): what a policy accepting `Session` judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignIn<'a> {
    /// The authentication context class reference; empty when the token had none.
    pub acr: &'a str,
    /// The authentication methods references (`pwd`, `otp`, `hwk`, ...).
    pub amr: &'a [String],
    pub auth_time: Timestamp,
    /// The credential's id as the API server names it (`JTI=<token id>`), for the record.
    pub credential: &'a str,
}

impl<'a> SignIn<'a> {
    /// The sign-in that the values of its extras describe: exactly one `auth-time` in whole
    /// seconds since the epoch and at most one `acr`; anything else is no evidence at all. The
    /// webhook and `kubectl stepup check` read extras by this one rule.
    pub fn from_extras(
        acr: &'a [String],
        amr: &'a [String],
        auth_time: &[String],
        credential: &'a [String],
    ) -> Option<Self> {
        let [auth_time] = auth_time else { return None };
        let auth_time = Timestamp::from_second(auth_time.parse::<i64>().ok()?).ok()?;
        let acr = match acr {
            [] => "",
            [acr] => acr.as_str(),
            _ => return None,
        };
        Some(SignIn { acr, amr, auth_time, credential: credential.first().map_or("", String::as_str) })
    }
}

/// The default `userInfo.extra` keys the API server's AuthenticationConfiguration maps a
/// sign-in's claims to (README, "Step-up at sign-in"); [`SignInKeys`] names others.
pub const ACR_EXTRA: &str = "stepup.dev/acr";
pub const AMR_EXTRA: &str = "stepup.dev/amr";
pub const AUTH_TIME_EXTRA: &str = "stepup.dev/auth-time";
/// Set by the API server's JWT authenticator: `JTI=<the token's jti>`.
pub const CREDENTIAL_ID_EXTRA: &str = "authentication.kubernetes.io/credential-id";

/// Which `userInfo.extra` keys carry a sign-in's `acr`, `amr` and `auth_time`: the keys the
/// cluster's AuthenticationConfiguration maps those claims to. The webhook reads a sign-in
/// from them, and nobody may set them (or the credential id) by impersonation: the stepup
/// authorizer refuses `impersonate` on `userextras/<key>` for each.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInKeys {
    pub acr: String,
    pub amr: String,
    pub auth_time: String,
}

impl Default for SignInKeys {
    fn default() -> Self {
        Self { acr: ACR_EXTRA.to_owned(), amr: AMR_EXTRA.to_owned(), auth_time: AUTH_TIME_EXTRA.to_owned() }
    }
}

/// Why keys cannot carry a sign-in; the message names the key and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignInKeyError(pub String);

impl SignInKeys {
    /// Keys that can each carry one claim: every key as [`check_sign_in_key`] demands, and no
    /// two the same (one key holding two claims would read `amr` values as an `acr`).
    pub fn new(acr: &str, amr: &str, auth_time: &str) -> Result<Self, SignInKeyError> {
        for key in [acr, amr, auth_time] {
            check_sign_in_key(key)?;
        }
        if acr == amr || acr == auth_time || amr == auth_time {
            return Err(SignInKeyError(format!(
                "the acr, amr and auth-time extras need three different keys, not {acr:?}, {amr:?} and {auth_time:?}"
            )));
        }
        Ok(Self { acr: acr.to_owned(), amr: amr.to_owned(), auth_time: auth_time.to_owned() })
    }

    /// The extras nobody may set by impersonation: the three claims and the credential's id.
    pub fn forgeable(&self) -> [&str; 4] {
        [&self.acr, &self.amr, &self.auth_time, CREDENTIAL_ID_EXTRA]
    }
}

/// A key the API server can map a claim to, by the rules its AuthenticationConfiguration
/// enforces: a lowercase domain-prefixed path (`idp.example.com/acr`) outside the `kubernetes.io`
/// and `k8s.io` domains (the API server's own extras live there, and it refuses claims there).
/// Lowercase also because the API server lowercases an impersonated extra's key: a key with
/// capitals could never be matched by the rule that refuses impersonating it.
pub fn check_sign_in_key(key: &str) -> Result<(), SignInKeyError> {
    let refuse = |why: &str| Err(SignInKeyError(format!("{key:?} cannot carry a sign-in: {why}")));
    if key != key.to_ascii_lowercase() {
        return refuse("extra keys are lowercase");
    }
    let Some((domain, path)) = key.split_once('/') else {
        return refuse("it must be a domain-prefixed path, such as idp.example.com/acr");
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return refuse("the part before the first / must be a DNS domain, such as idp.example.com");
    }
    let reserved = |d: &str| domain == d || domain.ends_with(&format!(".{d}"));
    if reserved("kubernetes.io") || reserved("k8s.io") {
        return refuse("the kubernetes.io and k8s.io domains are Kubernetes' own");
    }
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
        return refuse("the path after the domain must be non-empty, without spaces or '='");
    }
    Ok(())
}

impl<'a> User<'a> {
    /// A requester without a pod-bound credential, classified with the default [`Masks`].
    pub fn new(username: &'a str, uid: &'a str, groups: &'a [String]) -> Self {
        Self {
            username,
            uid,
            groups,
            pod_bound: false,
            kind: classify(username, false, Masks::defaults()),
            sign_in: None,
        }
    }

    /// A requester as the API server reported it, classified once by `masks` (the webhook's
    /// path: no default classification to redo).
    pub fn reported(username: &'a str, uid: &'a str, groups: &'a [String], pod_bound: bool, masks: &Masks) -> Self {
        Self { username, uid, groups, pod_bound, kind: classify(username, pod_bound, masks), sign_in: None }
    }

    /// The same requester with the sign-in the API server reported.
    pub fn with_sign_in(self, sign_in: Option<SignIn<'a>>) -> Self {
        Self { sign_in, ..self }
    }

    /// The same requester with the credential the API server reported, classified by `masks`.
    pub fn with_credential(self, pod_bound: bool, masks: &Masks) -> Self {
        Self { pod_bound, kind: classify(self.username, pod_bound, masks), ..self }
    }

    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// A service account's name without its pod-bound credential: a person wearing it. Its
    /// name and groups (`system:serviceaccounts:<ns>` come with it) earn no exemption,
    /// exclusion or bypass.
    pub fn is_mask(&self) -> bool {
        self.kind == Requester::Person && api::parse_service_account(self.username).is_some()
    }

    /// `system:` identities (nodes, control-plane components, service accounts, anonymous).
    pub fn is_system(&self) -> bool {
        self.username.starts_with("system:")
    }
}

/// Labels of the namespace a request concerns, as far as the caller knows them.
#[derive(Clone, Copy, Debug)]
pub enum NamespaceLabels<'a> {
    /// Cluster-scoped object (other than a Namespace): selectors do not apply.
    NotApplicable,
    Known(&'a BTreeMap<String, String>),
    /// The namespace is not in the cache yet. Selectors are treated as matching, so a
    /// policy errs on the side of asking for step-up.
    Unknown,
}

/// What a request does, as the API server asks about it: an admission operation (writes and
/// connects), or an authorization verb (reads, and what admission never sees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Admission(Operation),
    Authorization(Verb),
}

impl Action {
    /// The admission operation; `None` for an authorization request.
    pub const fn operation(self) -> Option<Operation> {
        match self {
            Action::Admission(op) => Some(op),
            Action::Authorization(_) => None,
        }
    }

    /// As records and messages spell it: `DELETE`, `CONNECT`, `get`, `list`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Admission(op) => op.as_str(),
            Action::Authorization(verb) => verb.as_str(),
        }
    }
}

impl From<Operation> for Action {
    fn from(op: Operation) -> Self {
        Action::Admission(op)
    }
}

impl From<Verb> for Action {
    fn from(verb: Verb) -> Self {
        Action::Authorization(verb)
    }
}

/// One request, reduced to what policies and grants look at.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub action: Action,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    /// Empty for the main resource.
    pub subresource: &'a str,
    /// Empty for cluster-scoped objects; the namespace's own name for Namespace objects.
    pub namespace: &'a str,
    pub name: &'a str,
    pub user: User<'a>,
    pub namespace_labels: NamespaceLabels<'a>,
    /// For an UPDATE of a Namespace: its labels before the change (`namespace_labels` holds
    /// the new ones).
    pub previous_labels: Option<&'a BTreeMap<String, String>>,
    pub dry_run: bool,
}

impl Request<'_> {
    pub fn is_namespace_object(&self) -> bool {
        self.group.is_empty() && self.resource == "namespaces"
    }

    /// True when the object lives in a namespace, or is a Namespace: what `namespaces` and
    /// `namespaceSelector` constraints can talk about.
    pub fn has_namespace(&self) -> bool {
        !self.namespace.is_empty()
    }

    /// The admission operation, if this is an admission request.
    pub fn operation(&self) -> Option<Operation> {
        self.action.operation()
    }

    /// A list, watch or deletecollection without a namespace: it reaches every namespace, so
    /// every namespace constraint holds (some namespace it reads is one a policy names).
    pub fn spans_namespaces(&self) -> bool {
        !self.has_namespace() && matches!(self.action, Action::Authorization(v) if v.is_collection())
    }

    /// A list, watch or deletecollection without a name: it reaches every object, so every
    /// `resourceNames` constraint holds.
    pub fn spans_names(&self) -> bool {
        self.name.is_empty() && matches!(self.action, Action::Authorization(v) if v.is_collection())
    }
}

/// Authorization verbs as a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerbSet(u16);

impl VerbSet {
    pub fn from_verbs(verbs: &[Verb]) -> Self {
        Self(verbs.iter().fold(0, |acc, v| acc | (1 << *v as u16)))
    }

    pub const fn contains(self, verb: Verb) -> bool {
        self.0 & (1 << verb as u16) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Verb> {
        Verb::ALL.into_iter().filter(move |v| self.contains(*v))
    }
}

/// Operations as a bit set; `*` expands to all four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationSet(u8);

impl OperationSet {
    pub fn from_operations(ops: &[Operation]) -> Self {
        Self(ops.iter().fold(0, |acc, op| acc | Self::bit(*op)))
    }

    /// The raw bits: CREATE 1, UPDATE 2, DELETE 4, CONNECT 8.
    pub const fn bits(self) -> u8 {
        self.0
    }

    const fn bit(op: Operation) -> u8 {
        match op {
            Operation::Create => 1,
            Operation::Update => 2,
            Operation::Delete => 4,
            Operation::Connect => 8,
            Operation::All => 15,
        }
    }

    pub fn contains(self, op: Operation) -> bool {
        self.0 & Self::bit(op) == Self::bit(op)
    }

    /// The set [`OperationSet::bits`] returned.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::bit(Operation::All))
    }

    /// The operations as an admission rule lists them: `*` for all four.
    pub fn admission_names(self) -> Vec<&'static str> {
        if self.contains(Operation::All) {
            return vec![Operation::All.as_str()];
        }
        [Operation::Create, Operation::Update, Operation::Delete, Operation::Connect]
            .into_iter()
            .filter(|op| self.contains(*op))
            .map(Operation::as_str)
            .collect()
    }
}

/// A matcher for API groups or versions: `*` or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NameSet {
    Any,
    Listed(Box<[Box<str>]>),
}

impl NameSet {
    fn new(values: &[String]) -> Self {
        if values.iter().any(|v| v == "*") {
            NameSet::Any
        } else {
            NameSet::Listed(values.iter().map(|v| v.as_str().into()).collect())
        }
    }

    fn contains(&self, value: &str) -> bool {
        match self {
            NameSet::Any => true,
            NameSet::Listed(values) => values.iter().any(|v| **v == *value),
        }
    }
}

/// One admission-style rule, split for the index: (resource, subresource) patterns become keys,
/// operations, groups and versions are checked on the candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub operations: OperationSet,
    pub verbs: VerbSet,
    groups: NameSet,
    versions: NameSet,
    /// `(resource, subresource)` with `*` wildcards; subresource is empty for the main resource.
    pub resources: Vec<(String, String)>,
}

impl CompiledRule {
    fn accepts(&self, req: &Request<'_>) -> bool {
        let acts = match req.action {
            Action::Admission(op) => self.operations.contains(op),
            Action::Authorization(verb) => self.verbs.contains(verb),
        };
        acts && self.groups.contains(req.group) && self.versions.contains(req.version)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceAccountMatcher {
    namespace: String,
    /// `None` for every service account of the namespace.
    name: Option<String>,
}

impl ServiceAccountMatcher {
    fn matches(&self, username: &str) -> bool {
        api::parse_service_account(username)
            .is_some_and(|(ns, name)| ns == self.namespace && self.name.as_deref().is_none_or(|n| n == name))
    }
}

/// Users, groups and service accounts named by a policy or an exclusion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Principals {
    users: Vec<Glob>,
    groups: Vec<String>,
    service_accounts: Vec<ServiceAccountMatcher>,
}

impl Principals {
    fn compile(users: &[String], groups: &[String], sas: &[api::ServiceAccountRef]) -> Self {
        Self {
            users: users.iter().map(|u| Glob::new(u)).collect(),
            groups: groups.to_vec(),
            service_accounts: sas
                .iter()
                .map(|sa| ServiceAccountMatcher {
                    namespace: sa.namespace.clone(),
                    name: (sa.name != "*").then(|| sa.name.clone()),
                })
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.service_accounts.is_empty()
    }

    fn matches(&self, user: &User<'_>) -> bool {
        glob::any_matches(&self.users, user.username)
            || user.in_any_group(&self.groups)
            || self.service_accounts.iter().any(|sa| sa.matches(user.username))
    }
}

/// The range a grant's maximum age may take, in policies and in the built-in ones alike
/// (the CRD's CEL rule on `maxAge` says the same).
pub const MAX_AGE_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(24 * 3600);

/// Whether `max_age` lies in [`MAX_AGE_RANGE`]; the sentence says why not.
pub fn check_max_age(max_age: api::Duration) -> Result<(), String> {
    if MAX_AGE_RANGE.contains(&max_age.as_std()) {
        Ok(())
    } else {
        Err(format!("{max_age} is outside the allowed range 1s..24h"))
    }
}

/// A StepUpPolicy in the form the decision path uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub name: String,
    pub enforcement: Enforcement,
    pub max_age: SignedDuration,
    pub max_age_text: api::Duration,
    pub methods: Vec<Method>,
    /// What a `Session` must carry (acr, amr); `None`: any sign-in within maxAge.
    pub assurance: Option<api::Assurance>,
    pub message: Option<String>,
    pub require_reason: bool,
    /// A `WebAuthn` grant counts only if the key verified the person.
    pub require_user_verification: bool,
    pub rules: Vec<CompiledRule>,
    namespaces: Vec<Glob>,
    namespace_selector: Option<Selector>,
    resource_names: Vec<String>,
    /// `None`: people only (the default).
    subjects: Option<Principals>,
    exclude: Principals,
    exclude_namespaces: Vec<Glob>,
}

impl CompiledPolicy {
    /// Validates a policy and compiles it. Every error names the offending field.
    pub fn compile(policy: &StepUpPolicy) -> Result<Self, PolicyError> {
        let name = policy.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(PolicyError::new("metadata.name", "a policy needs a name"));
        }
        Self::compile_spec(name, &policy.spec)
    }

    pub fn compile_spec(name: String, spec: &StepUpPolicySpec) -> Result<Self, PolicyError> {
        let m = &spec.match_;
        if m.rules.is_empty() {
            return Err(PolicyError::new("spec.match.rules", "at least one rule is required"));
        }
        let rules = m
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, &format!("spec.match.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, ns) in m.namespaces.iter().enumerate() {
            check_namespace_glob(ns, &format!("spec.match.namespaces[{i}]"))?;
        }
        let namespace_selector =
            m.namespace_selector.as_ref().map(|s| Selector::compile(s, "spec.match.namespaceSelector")).transpose()?;
        let subjects = match &m.subjects {
            None => None,
            Some(s) => {
                let principals = Principals::compile(&s.users, &s.groups, &s.service_accounts);
                if principals.is_empty() {
                    return Err(PolicyError::new(
                        "spec.match.subjects",
                        "must name at least one user, group or service account (omit it to apply to every person)",
                    ));
                }
                Some(principals)
            }
        };
        let (exclude, exclude_namespaces) = match &m.exclude {
            None => (Principals::default(), Vec::new()),
            Some(x) => {
                for (i, ns) in x.namespaces.iter().enumerate() {
                    check_namespace_glob(ns, &format!("spec.match.exclude.namespaces[{i}]"))?;
                }
                (
                    Principals::compile(&x.users, &x.groups, &x.service_accounts),
                    x.namespaces.iter().map(|n| Glob::new(n)).collect(),
                )
            }
        };
        let max_age = spec.max_age;
        check_max_age(max_age).map_err(|why| PolicyError::new("spec.maxAge", why))?;
        if spec.methods.is_empty() {
            return Err(PolicyError::new("spec.methods", "at least one method is required"));
        }
        let mut methods = spec.methods.clone();
        methods.sort();
        methods.dedup();
        let assurance = spec.assurance.clone().filter(|a| !a.acr_values.is_empty() || !a.amr.is_empty());
        if assurance.is_some() && !methods.iter().any(|m| matches!(m, Method::Session | Method::Oidc)) {
            return Err(PolicyError::new(
                "spec.assurance",
                "judges identity-provider sign-ins, but spec.methods accepts neither Session nor OIDC: add Session or OIDC to spec.methods or remove spec.assurance",
            ));
        }
        if spec.require_user_verification && !methods.contains(&Method::WebAuthn) {
            return Err(PolicyError::new(
                "spec.requireUserVerification",
                "judges security keys, but spec.methods does not accept WebAuthn: add WebAuthn to spec.methods or remove spec.requireUserVerification",
            ));
        }
        for (field, values) in assurance.iter().flat_map(|a| [("acrValues", &a.acr_values), ("amr", &a.amr)]) {
            if let Some(i) = values.iter().position(|v| v.trim().is_empty() || v.chars().any(char::is_whitespace)) {
                return Err(PolicyError::new(
                    format!("spec.assurance.{field}[{i}]"),
                    "must be a single word without spaces",
                ));
            }
        }
        Ok(Self {
            name,
            enforcement: spec.enforcement,
            max_age: max_age.as_signed(),
            max_age_text: max_age,
            methods,
            assurance,
            message: spec.message.clone().filter(|m| !m.trim().is_empty()),
            require_reason: spec.require_reason,
            require_user_verification: spec.require_user_verification,
            rules,
            namespaces: m.namespaces.iter().map(|n| Glob::new(n)).collect(),
            namespace_selector,
            resource_names: m.resource_names.clone(),
            subjects,
            exclude,
            exclude_namespaces,
        })
    }

    /// Whether the policy's non-rule constraints (namespace, name, subjects, exclusions) hold.
    /// The index has already established that one of its rules matches.
    pub fn applies_to(&self, req: &Request<'_>) -> bool {
        if !self.applies_to_user(&req.user) {
            return false;
        }
        if !self.resource_names.is_empty() && !req.spans_names() && !self.resource_names.iter().any(|n| n == req.name) {
            return false;
        }
        self.covers_namespace(req, req.namespace_labels)
    }

    /// Subjects and exclusions: a policy without subjects applies to people (masks included).
    /// An exclusion never lets a mask out: whoever wears an excluded service account's name
    /// (impersonating it, or with a token minted for it) is still a person.
    pub fn applies_to_user(&self, user: &User<'_>) -> bool {
        let subject = match &self.subjects {
            None => user.kind == Requester::Person,
            Some(p) => p.matches(user),
        };
        subject && (user.is_mask() || !self.exclude.matches(user))
    }

    /// Whether this is a namespace the policy looks at (globs, exclusions, selector), judged
    /// with `labels`.
    fn covers_namespace(&self, req: &Request<'_>, labels: NamespaceLabels<'_>) -> bool {
        if req.spans_namespaces() {
            return true;
        }
        if !self.exclude_namespaces.is_empty()
            && req.has_namespace()
            && glob::any_matches(&self.exclude_namespaces, req.namespace)
        {
            return false;
        }
        let in_listed_namespace = req.has_namespace() && glob::any_matches(&self.namespaces, req.namespace);
        if !self.namespaces.is_empty() && !in_listed_namespace {
            return false;
        }
        if let Some(selector) = &self.namespace_selector {
            match labels {
                NamespaceLabels::NotApplicable => return false,
                NamespaceLabels::Unknown => {}
                NamespaceLabels::Known(labels) => {
                    if !selector.matches(labels) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Full match, rules included: for callers that do not go through the index (the plugin's
    /// `check`, tests).
    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.rules.iter().any(|r| {
            r.accepts(req)
                && r.resources
                    .iter()
                    .any(|(res, sub)| (res == "*" || res == req.resource) && (sub == "*" || sub == req.subresource))
        }) && self.applies_to(req)
    }

    pub fn accepts_method(&self, method: Method) -> bool {
        self.methods.contains(&method)
    }

    /// For an UPDATE of a Namespace: whether the change takes the namespace out of this
    /// policy's namespaceSelector (its old labels matched, its new ones do not) for a
    /// requester the policy applies to. Removing a label must not quietly remove protection.
    pub fn released_by_relabel(&self, req: &Request<'_>) -> bool {
        let (Some(selector), Some(old)) = (&self.namespace_selector, req.previous_labels) else {
            return false;
        };
        let still_selected = match req.namespace_labels {
            NamespaceLabels::Known(new) => selector.matches(new),
            NamespaceLabels::Unknown | NamespaceLabels::NotApplicable => true,
        };
        req.is_namespace_object()
            && selector.matches(old)
            && !still_selected
            && self.applies_to_user(&req.user)
            && self.covers_namespace(req, NamespaceLabels::Known(old))
    }

    /// For a DELETE of a Namespace: whether the policy protects deleting something that can
    /// live in it. Deleting the namespace deletes all of it (through the namespace
    /// controller, a control-plane identity), so it needs what the policy needs.
    pub fn protects_deletes_in(&self, req: &Request<'_>) -> bool {
        req.is_namespace_object()
            && req.operation() == Some(Operation::Delete)
            && self.protects_namespaced_deletes()
            && self.applies_to_user(&req.user)
            && self.covers_namespace(req, req.namespace_labels)
    }

    pub fn has_namespace_selector(&self) -> bool {
        self.namespace_selector.is_some()
    }

    /// Whether some rule protects DELETE of a resource that can live in a namespace.
    pub fn protects_namespaced_deletes(&self) -> bool {
        self.rules.iter().any(|r| {
            r.operations.contains(Operation::Delete)
                && r.resources.iter().any(|(res, _)| res == "*" || !is_cluster_scoped(res))
        })
    }
}

/// Built-in resources that never live in a namespace; anything else (custom resources
/// included) might, so a namespace delete is judged as if it did.
pub fn is_cluster_scoped(resource: &str) -> bool {
    matches!(
        resource,
        "namespaces"
            | "nodes"
            | "persistentvolumes"
            | "clusterroles"
            | "clusterrolebindings"
            | "customresourcedefinitions"
            | "apiservices"
            | "storageclasses"
            | "csidrivers"
            | "csinodes"
            | "volumeattachments"
            | "priorityclasses"
            | "runtimeclasses"
            | "ingressclasses"
            | "certificatesigningrequests"
            | "validatingwebhookconfigurations"
            | "mutatingwebhookconfigurations"
            | "validatingadmissionpolicies"
            | "validatingadmissionpolicybindings"
            | "mutatingadmissionpolicies"
            | "mutatingadmissionpolicybindings"
            | "flowschemas"
            | "prioritylevelconfigurations"
            | "componentstatuses"
            | "stepuppolicies"
            | "stepupgrants"
            | "stepupchallenges"
            | "stepupenrollments"
    )
}

fn compile_rule(rule: &api::ResourceRule, path: &str) -> Result<CompiledRule, PolicyError> {
    if rule.operations.is_empty() && rule.verbs.is_empty() {
        return Err(PolicyError::new(
            format!("{path}.operations"),
            "a rule needs at least one operation (CREATE, UPDATE, DELETE, CONNECT) or verb (get, list, watch, ...)",
        ));
    }
    if rule.api_groups.is_empty() {
        return Err(PolicyError::new(
            format!("{path}.apiGroups"),
            "at least one API group is required (\"\" is the core group)",
        ));
    }
    if rule.api_versions.is_empty() {
        return Err(PolicyError::new(
            format!("{path}.apiVersions"),
            "at least one API version is required (\"*\" for any)",
        ));
    }
    if rule.resources.is_empty() {
        return Err(PolicyError::new(format!("{path}.resources"), "at least one resource is required"));
    }
    let mut resources = Vec::with_capacity(rule.resources.len());
    for (i, r) in rule.resources.iter().enumerate() {
        let (res, sub) = r.split_once('/').unwrap_or((r.as_str(), ""));
        let valid_part = |s: &str| {
            s == "*"
                || (!s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
        };
        if !valid_part(res) || sub.contains('/') || (r.contains('/') && !valid_part(sub)) {
            return Err(PolicyError::new(
                format!("{path}.resources[{i}]"),
                format!("{r:?} is not a resource or resource/subresource (e.g. secrets, pods/exec, pods/*, */*)"),
            ));
        }
        resources.push((res.to_owned(), sub.to_owned()));
    }
    for (i, verb) in rule.verbs.iter().enumerate() {
        check_verb(*verb, &resources, &format!("{path}.verbs[{i}]"))?;
    }
    Ok(CompiledRule {
        operations: OperationSet::from_operations(&rule.operations),
        verbs: VerbSet::from_verbs(&rule.verbs),
        groups: NameSet::new(&rule.api_groups),
        versions: NameSet::new(&rule.api_versions),
        resources,
    })
}

/// A write verb belongs to admission, which sees the object; authorization takes it only on a
/// `proxy` subresource, whose requests (the kubelet's API behind `nodes/proxy`) admission
/// never sees.
fn check_verb(verb: Verb, resources: &[(String, String)], path: &str) -> Result<(), PolicyError> {
    if !verb.is_write() {
        return Ok(());
    }
    if let Some((res, sub)) = resources.iter().find(|(_, sub)| sub != "proxy") {
        let named = if sub.is_empty() { res.clone() } else { format!("{res}/{sub}") };
        let op = match verb {
            Verb::Create => "CREATE",
            Verb::Delete | Verb::Deletecollection => "DELETE",
            _ => "UPDATE",
        };
        return Err(PolicyError::new(
            path,
            format!(
                "{:?} on {named} is decided by admission, which sees the object: name it in operations ({op}) instead; verbs take reads (get, list, watch), impersonate, bind, escalate, approve, sign, and any verb on a proxy subresource such as nodes/proxy",
                verb.as_str()
            ),
        ));
    }
    Ok(())
}

fn check_namespace_glob(glob: &str, path: &str) -> Result<(), PolicyError> {
    let ok = !glob.is_empty()
        && glob.len() <= 63
        && glob.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            path,
            format!("{glob:?} is not a namespace name or glob (lower-case letters, digits, '-', '*', '?')"),
        ))
    }
}

#[cfg(test)]
mod tests;
