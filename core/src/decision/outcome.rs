//! The decision value and the words it carries to users and auditors.

use std::fmt::{self, Write};

use jiff::SignedDuration;

use crate::{
    api::{Duration, Enforcement, Method, Operation},
    grant::{self, GrantRecord, Unsatisfied},
    policy::{Action, CompiledPolicy, Request},
};

/// What happened, as one stable word: the `decision` metric label and audit annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No policy matches: the common case.
    NotMatched,
    /// Exempt subject, namespace or resource.
    Exempt,
    /// Policies matched and a grant satisfies them.
    Granted,
    /// A `Deny` policy matched and no grant satisfies it.
    Denied,
    /// Allowed, with a warning from a `Warn` policy.
    Warned,
    /// Allowed; an `Audit` policy recorded it.
    Audited,
    /// Allowed because the requester is in a break-glass group.
    BreakGlass,
    /// Denied because the grant cache is out of touch with the API server.
    Unavailable,
    /// A change to a stepup kind that the built-in rules allow.
    BuiltinAllowed,
    /// A change to a stepup kind that the built-in rules refuse (spoofing, forging).
    BuiltinDenied,
    /// The object could not be read (e.g. an invalid StepUpPolicy).
    Invalid,
    /// A grant written without the controller's signature: refused, and loud.
    ForgedGrant,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::NotMatched => "no-policy",
            Outcome::Exempt => "exempt",
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Warned => "warned",
            Outcome::Audited => "audited",
            Outcome::BreakGlass => "break-glass",
            Outcome::Unavailable => "unavailable",
            Outcome::BuiltinAllowed => "builtin-allowed",
            Outcome::BuiltinDenied => "builtin-denied",
            Outcome::Invalid => "invalid",
            Outcome::ForgedGrant => "forged-grant",
        }
    }

    pub const ALL: [Outcome; 12] = [
        Outcome::NotMatched,
        Outcome::Exempt,
        Outcome::Granted,
        Outcome::Denied,
        Outcome::Warned,
        Outcome::Audited,
        Outcome::BreakGlass,
        Outcome::Unavailable,
        Outcome::BuiltinAllowed,
        Outcome::BuiltinDenied,
        Outcome::Invalid,
        Outcome::ForgedGrant,
    ];
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What would satisfy a denied request, in the spirit of RFC 9470: stable and machine-readable.
/// Serialized as its decision word (`denied`, `granted`, ...), as the audit trail and the
/// audit annotations write it.
impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub policies: Vec<String>,
    /// Methods every one of the policies accepts.
    pub methods: Vec<Method>,
    /// The smallest maxAge among the policies.
    pub max_age: Duration,
    pub reason_required: bool,
    /// For `Session`: the `acr` values every policy accepts (empty: any) and the `amr` they
    /// require, in RFC 9470's words (`acr_values`).
    pub acr_values: Vec<String>,
    pub amr: Vec<String>,
    /// A security key's grant must have verified the person (some policy requires it).
    pub user_verification: bool,
    /// The review this refusal answered (`ref=`), which the plugin hands back so that the
    /// audit trail ties its step-up to this refusal. Set by the webhook, not by decisions.
    pub reference: Option<String>,
}

impl Requirement {
    fn of(policies: &[&CompiledPolicy]) -> Self {
        let mut methods: Vec<Method> = policies.first().map(|p| p.methods.clone()).unwrap_or_default();
        methods.retain(|m| policies.iter().all(|p| p.accepts_method(*m)));
        // What a sign-in must carry for all of them: acr values each accepts, amr any requires.
        let assurances: Vec<&crate::api::Assurance> = policies.iter().filter_map(|p| p.assurance.as_ref()).collect();
        let mut acr_values: Vec<String> =
            assurances.iter().find(|a| !a.acr_values.is_empty()).map(|a| a.acr_values.clone()).unwrap_or_default();
        acr_values.retain(|v| assurances.iter().all(|a| a.acr_values.is_empty() || a.acr_values.contains(v)));
        let mut amr: Vec<String> = assurances.iter().flat_map(|a| a.amr.iter().cloned()).collect();
        amr.sort();
        amr.dedup();
        Self {
            policies: policies.iter().map(|p| p.name.clone()).collect(),
            methods,
            max_age: policies.iter().map(|p| p.max_age_text).min().unwrap_or_default(),
            reason_required: policies.iter().any(|p| p.require_reason),
            acr_values,
            amr,
            user_verification: policies.iter().any(|p| p.require_user_verification),
            reference: None,
        }
    }

    /// The exact command that obtains a satisfying grant; `None` when only a new sign-in at
    /// the identity provider helps.
    pub fn command(&self) -> Option<String> {
        if !self.methods.iter().any(|m| m.is_grant()) {
            return None;
        }
        let method = if self.methods.contains(&Method::Totp) {
            ""
        } else if self.methods.contains(&Method::WebAuthn) {
            " --method WebAuthn"
        } else {
            " --method OIDC"
        };
        Some(if self.reason_required {
            format!("kubectl stepup request{method} --reason \"<ticket or incident>\"")
        } else {
            format!("kubectl stepup request{method}")
        })
    }

    /// The sign-in a `Session` or an `OIDC` grant needs, in words: `at your identity provider (acr "2", with otp)`.
    fn sign_in_words(&self) -> String {
        let mut parts = Vec::new();
        if !self.acr_values.is_empty() {
            let values: Vec<String> = self.acr_values.iter().map(|v| format!("{v:?}")).collect();
            parts.push(format!("acr {}", values.join(" or ")));
        }
        if !self.amr.is_empty() {
            parts.push(format!("with {}", self.amr.join(" and ")));
        }
        if parts.is_empty() {
            "a sign-in at your identity provider".to_owned()
        } else {
            format!("a sign-in at your identity provider ({})", parts.join(", "))
        }
    }
}

impl fmt::Display for Requirement {
    /// `policies=a,b methods=TOTP max-age=15m reason-required=false`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        write!(
            f,
            "policies={} methods={} max-age={} reason-required={}",
            self.policies.join(","),
            methods.join(","),
            self.max_age,
            self.reason_required
        )?;
        if !self.acr_values.is_empty() {
            write!(f, " acr-values={}", self.acr_values.join(","))?;
        }
        if !self.amr.is_empty() {
            write!(f, " amr={}", self.amr.join(","))?;
        }
        if self.user_verification {
            f.write_str(" user-verification=required")?;
        }
        match &self.reference {
            Some(uid) => write!(f, " ref={uid}"),
            None => Ok(()),
        }
    }
}

/// A [`Requirement`] text that does not read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid step-up requirement {text:?}: {problem}")]
pub struct ParseRequirementError {
    pub text: String,
    pub problem: String,
}

impl std::str::FromStr for Requirement {
    type Err = ParseRequirementError;

    /// Reads back what `Display` writes. Unknown keys and methods are skipped, so an older
    /// plugin still reads a newer webhook's requirement.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| ParseRequirementError { text: text.to_owned(), problem };
        let (mut policies, mut methods, mut max_age, mut reason_required) = (None, Vec::new(), None, None);
        let (mut acr_values, mut amr, mut reference, mut user_verification) = (Vec::new(), Vec::new(), None, false);
        for field in text.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(|| fail(format!("{field:?} is not key=value")))?;
            let list = || value.split(',').filter(|v| !v.is_empty()).map(str::to_owned);
            match key {
                "policies" => policies = Some(list().collect::<Vec<_>>()),
                "methods" => {
                    methods = list().filter_map(|m| Method::ALL.into_iter().find(|k| k.as_str() == m)).collect()
                }
                "max-age" => max_age = Some(value.parse::<Duration>().map_err(|e| fail(e.to_string()))?),
                "reason-required" => {
                    reason_required = Some(value.parse::<bool>().map_err(|_| fail(format!("reason-required={value}")))?)
                }
                "acr-values" => acr_values = list().collect(),
                "amr" => amr = list().collect(),
                "user-verification" => user_verification = value == "required",
                // Read only when it can be handed back as a correlation id.
                "ref" if crate::api::is_review_ref(value) => reference = Some(value.to_owned()),
                _ => {}
            }
        }
        let policies = policies.filter(|p| !p.is_empty()).ok_or_else(|| fail("no policies".to_owned()))?;
        Ok(Self {
            policies,
            methods,
            max_age: max_age.ok_or_else(|| fail("no max-age".to_owned()))?,
            reason_required: reason_required.unwrap_or(false),
            acr_values,
            amr,
            user_verification,
            reference,
        })
    }
}

/// The answer for the API server and everything the shell needs to record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub allowed: bool,
    /// HTTP status code for a refusal (403, 400, 503); 200 when allowed.
    pub code: u16,
    /// Kubernetes `StatusReason` for a refusal: `Forbidden`, `Invalid`, `ServiceUnavailable`.
    pub reason: &'static str,
    pub message: String,
    pub warnings: Vec<String>,
    /// Names of the policies the request matched.
    pub policies: Vec<String>,
    /// The grant that let the request through.
    pub grant: Option<String>,
    /// The reason recorded in that grant.
    pub grant_reason: Option<String>,
    /// The refusal that grant's step-up answered, for the audit record.
    pub grant_correlation: Option<String>,
    /// For a denial: what would satisfy it.
    pub requirement: Option<Requirement>,
    /// Denied from the cache alone: a direct lookup of the user's grants may still find a
    /// grant issued a moment ago, so the shell asks the API server and decides again.
    pub lookup_may_help: bool,
    /// For a challenge refused by the per-user limits: which limit (`too_many_pending`,
    /// `creation_rate`), for the shell's metric.
    pub limit: Option<&'static str>,
}

impl Decision {
    /// Names the review a step-up refusal answered (`ref=<uid>` in its trailer), so that the
    /// plugin can hand it back and the audit trail tie the step-up to this refusal. A UID that
    /// cannot serve as a correlation id (not what the API server sends) is left out.
    pub fn refer(&mut self, uid: &str) {
        let Some(requirement) = self.requirement.as_mut().filter(|_| !self.allowed) else { return };
        if !crate::api::is_review_ref(uid) || !self.message.ends_with(']') {
            return;
        }
        requirement.reference = Some(uid.to_owned());
        self.message.insert_str(self.message.len() - 1, &format!(" ref={uid}"));
    }

    /// The correlation id of this decision's audit record: a step-up refusal's own
    /// (`prompt:<review uid>`), or that of the grant that let the request through.
    pub fn correlation(&self) -> Option<String> {
        match &self.requirement {
            Some(r) if !self.allowed => r.reference.as_ref().map(|uid| format!("prompt:{uid}")),
            _ => self.grant_correlation.clone(),
        }
    }

    fn allow(outcome: Outcome) -> Self {
        Self {
            outcome,
            allowed: true,
            code: 200,
            reason: "",
            message: String::new(),
            warnings: Vec::new(),
            policies: Vec::new(),
            grant: None,
            grant_reason: None,
            grant_correlation: None,
            requirement: None,
            lookup_may_help: false,
            limit: None,
        }
    }

    pub(crate) fn refuse(outcome: Outcome, code: u16, reason: &'static str, message: String) -> Self {
        Self { allowed: false, code, reason, message, ..Self::allow(outcome) }
    }

    pub fn not_matched() -> Self {
        Self::allow(Outcome::NotMatched)
    }

    pub fn exempt() -> Self {
        Self::allow(Outcome::Exempt)
    }

    /// An exempt requester on an operation `matched` protect: allowed, and recorded.
    pub(crate) fn exempt_from(matched: &[&CompiledPolicy]) -> Self {
        Self { policies: names(matched), ..Self::allow(Outcome::Exempt) }
    }

    pub(crate) fn builtin_allowed() -> Self {
        Self::allow(Outcome::BuiltinAllowed)
    }

    pub(crate) fn builtin_denied(message: String) -> Self {
        Self::refuse(Outcome::BuiltinDenied, 403, "Forbidden", format!("kube-stepup: {message}"))
    }

    pub(crate) fn forged_grant(message: String) -> Self {
        Self::refuse(Outcome::ForgedGrant, 403, "Forbidden", format!("kube-stepup: {message}"))
    }

    /// The object in the request cannot be read; names the problem.
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::refuse(Outcome::Invalid, 400, "BadRequest", format!("kube-stepup: {message}"))
    }

    pub(crate) fn sign_in_forgery(req: &Request<'_>) -> Self {
        let message = format!(
            "kube-stepup: {} {:?} is refused to everyone: a sign-in's evidence comes from the identity provider's token, never from impersonation",
            if req.subresource.is_empty() {
                "impersonating user extras".to_owned()
            } else {
                format!("impersonating the user extra {:?} as", req.subresource)
            },
            req.name
        );
        Self::refuse(Outcome::BuiltinDenied, 403, "Forbidden", message)
    }

    pub(crate) fn invalid_object(message: impl fmt::Display) -> Self {
        Self::refuse(Outcome::Invalid, 422, "Invalid", format!("kube-stepup: {message}"))
    }

    pub(crate) fn break_glass(req: &Request<'_>, matched: &[&CompiledPolicy]) -> Self {
        let names = names(matched);
        Self {
            warnings: vec![format!(
                "stepup: break-glass access bypassed {} for {}; this is recorded and reported",
                quoted_list("policy", "policies", &names),
                describe(req)
            )],
            policies: names,
            ..Self::allow(Outcome::BreakGlass)
        }
    }

    pub(crate) fn granted(matched: &[&CompiledPolicy], grant: &GrantRecord) -> Self {
        Self {
            policies: names(matched),
            grant: Some(grant.name.clone()),
            grant_reason: grant.reason.clone(),
            grant_correlation: grant.correlation.clone(),
            ..Self::allow(Outcome::Granted)
        }
    }

    pub(crate) fn grants_unavailable(
        req: &Request<'_>,
        matched: &[&CompiledPolicy],
        stale_for: SignedDuration,
    ) -> Self {
        let names = names(matched);
        let message = format!(
            "kube-stepup: cannot verify step-up grants for {} ({} required): the webhook has been out of touch with the API server for {}, so it fails closed. Retry in a moment; if this persists, ask an operator to check the stepup webhook.",
            describe(req),
            quoted_list("policy", "policies", &names),
            grant::human(stale_for)
        );
        Self { policies: names, ..Self::refuse(Outcome::Unavailable, 503, "ServiceUnavailable", message) }
    }

    pub(crate) fn denied(
        req: &Request<'_>,
        matched: &[&CompiledPolicy],
        enforcing: &[&CompiledPolicy],
        why: Option<(&GrantRecord, Unsatisfied)>,
        lookup_may_help: bool,
        note: Option<&str>,
    ) -> Self {
        let requirement = Requirement::of(enforcing);
        let mut message = format!(
            "kube-stepup: {} requires step-up ({}): ",
            describe(req),
            quoted_list("policy", "policies", &requirement.policies)
        );
        if let Some(note) = note {
            let _ = write!(message, "{note}: ");
        }
        if requirement.methods.is_empty() {
            message.push_str("the matching policies accept no common verification method, so no single grant can satisfy them; ask an operator to review them.");
        } else {
            let mut ways = Vec::new();
            let reason = if requirement.reason_required { ", requested with a reason" } else { "" };
            if requirement.methods.contains(&Method::Totp) {
                ways.push(format!("a TOTP grant issued within the last {}{reason}", requirement.max_age));
            }
            if requirement.methods.contains(&Method::WebAuthn) {
                let verified = if requirement.user_verification { " that verified you (PIN or biometric)" } else { "" };
                ways.push(format!(
                    "a security-key (WebAuthn) grant{verified} issued within the last {}{reason}",
                    requirement.max_age
                ));
            }
            if requirement.methods.contains(&Method::Oidc) {
                ways.push(format!(
                    "an OIDC grant for {} within the last {}{reason}",
                    requirement.sign_in_words(),
                    requirement.max_age
                ));
            }
            if requirement.methods.contains(&Method::Session) {
                ways.push(format!("{} within the last {}", requirement.sign_in_words(), requirement.max_age));
            }
            let _ = write!(message, "{}.", ways.join(", or "));
        }
        match why {
            Some((g, why)) if g.method == Method::Session => {
                let _ = write!(message, " Your sign-in at the identity provider does not count: {why}.");
            }
            Some((g, why)) => {
                let _ = write!(message, " Your latest grant {} does not count: {why}.", g.name);
            }
            None if requirement.methods.contains(&Method::Session) && req.user.sign_in.is_none() => {
                message.push_str(" You hold no grant, and this request carries no sign-in from the identity provider.")
            }
            None => message.push_str(" You hold no grant."),
        }
        for p in enforcing {
            if let Some(extra) = &p.message {
                let _ = write!(message, " {extra}");
            }
        }
        match requirement.command() {
            Some(command) => {
                let _ = write!(message, " Run `{command}` and retry, or prefix your command with `kubectl stepup --`");
                if requirement.methods.contains(&Method::Session) {
                    message.push_str(", or sign in again at your identity provider");
                }
                message.push('.');
            }
            None => message.push_str(
                " Sign in again at your identity provider with what it asks for (kubelogin: `kubectl oidc-login clean`, then retry).",
            ),
        }
        let _ = write!(message, " [stepup-required: {requirement}]");
        Self {
            policies: names(matched),
            requirement: Some(requirement),
            lookup_may_help,
            ..Self::refuse(Outcome::Denied, 403, "Forbidden", message)
        }
    }

    /// Allowed, with warnings for unsatisfied `Warn` policies and a record for `Audit` ones.
    pub(crate) fn allowed_with_advisories(
        req: &Request<'_>,
        matched: &[&CompiledPolicy],
        unsatisfied: &[&CompiledPolicy],
        grant: Option<&GrantRecord>,
    ) -> Self {
        let warnings: Vec<String> = unsatisfied
            .iter()
            .filter(|p| p.enforcement == Enforcement::Warn)
            .map(|p| {
                format!(
                    "stepup: policy \"{}\" asks for a second factor within {} for {}; run `kubectl stepup request`{}",
                    p.name,
                    p.max_age_text,
                    describe(req),
                    p.message.as_deref().map(|m| format!(". {m}")).unwrap_or_default()
                )
            })
            .collect();
        let outcome = if !warnings.is_empty() {
            Outcome::Warned
        } else if unsatisfied.iter().any(|p| p.enforcement == Enforcement::Audit) {
            Outcome::Audited
        } else {
            Outcome::Granted
        };
        Self {
            warnings,
            policies: names(matched),
            grant: grant.map(|g| g.name.clone()),
            grant_reason: grant.and_then(|g| g.reason.clone()),
            grant_correlation: grant.and_then(|g| g.correlation.clone()),
            ..Self::allow(outcome)
        }
    }

    /// Whether this decision goes into the audit trail: every decision that involved a policy
    /// or a built-in rule, an exemption from a policy included.
    pub fn is_audited(&self) -> bool {
        match self.outcome {
            Outcome::NotMatched => false,
            Outcome::Exempt => !self.policies.is_empty(),
            _ => true,
        }
    }

    /// Whether an Event is worth recording (before dry-run and rate limiting are considered).
    pub fn is_eventful(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Denied
                | Outcome::Warned
                | Outcome::Audited
                | Outcome::BreakGlass
                | Outcome::Unavailable
                | Outcome::BuiltinDenied
                | Outcome::ForgedGrant
        )
    }

    /// `auditAnnotations` for the API server's audit log. The API server prefixes each key
    /// with the webhook's name (e.g. `validate.stepup.dev/decision`).
    pub fn audit_annotations(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("decision", self.outcome.as_str().to_owned())];
        if !self.policies.is_empty() {
            out.push(("policy", self.policies.join(",")));
        }
        if let Some(g) = &self.grant {
            out.push(("grant", g.clone()));
        }
        if let Some(r) = &self.grant_reason {
            out.push(("reason", r.clone()));
        }
        out
    }
}

fn names(policies: &[&CompiledPolicy]) -> Vec<String> {
    policies.iter().map(|p| p.name.clone()).collect()
}

pub(super) fn quoted_list(singular: &str, plural: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let noun = if names.len() == 1 { singular } else { plural };
    format!("{noun} {}", quoted.join(", "))
}

/// `delete secrets "db" in namespace "prod"`, `connect to pods/exec "web" in namespace "prod"`,
/// `list secrets in every namespace`.
pub fn describe(req: &Request<'_>) -> String {
    let verb = match req.action {
        Action::Admission(Operation::Create) => "create",
        Action::Admission(Operation::Update) => "update",
        Action::Admission(Operation::Delete) => "delete",
        Action::Admission(Operation::Connect) => "connect to",
        Action::Admission(Operation::All) => "access",
        Action::Authorization(verb) => verb.as_str(),
    };
    let mut out = format!("{verb} {}", req.resource);
    if !req.subresource.is_empty() {
        let _ = write!(out, "/{}", req.subresource);
    }
    if !req.name.is_empty() {
        let _ = write!(out, " \"{}\"", req.name);
    }
    if req.has_namespace() && !req.is_namespace_object() {
        let _ = write!(out, " in namespace \"{}\"", req.namespace);
    } else if req.spans_namespaces() {
        out.push_str(" in every namespace");
    }
    out
}
