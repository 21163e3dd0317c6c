//! The decision: given a request, the policies, the grants and the time, allow or deny, and
//! say why in a form the API server, the user, the plugin and the auditor can each read.
//! Pure: no I/O, no clock; the admission server is a shell around [`decide`].

mod outcome;
mod own_kinds;
mod settings;

use jiff::{SignedDuration, Timestamp};
use smallvec::SmallVec;

pub use outcome::{Decision, Outcome, ParseRequirementError, Requirement, describe};
pub use own_kinds::StepUpObjects;
pub use settings::{
    DecisionSettings, PUBLISHED_CONFIGMAP, PUBLISHED_KEY, PUBLISHED_STEP_UP_KEY, PublishedIdentityProvider,
    StepUpDiscovery, exempt_namespaces,
};

use crate::{
    api::{Enforcement, GROUP, Method, Operation},
    grant::{self, Clock, GrantIndex, GrantRecord},
    keys::GrantVerifier,
    policy::{Action, CompiledPolicy, PolicyIndex, Request},
};

/// Who is who, from the webhook's configuration.
#[derive(Clone, Debug, Default)]
pub struct DecisionConfig {
    /// Usernames of the stepup controller: the only writers of grants.
    pub controller_users: Vec<String>,
    /// Usernames of the webhook: with the controller, the only writers of the audit trail.
    pub webhook_users: Vec<String>,
    /// Groups whose members may approve enrollments, reset lockouts and revoke any grant.
    pub admin_groups: Vec<String>,
    /// Groups that bypass policies, loudly (warning, Event, metric, audit line).
    pub break_glass_groups: Vec<String>,
    /// Users and groups no policy applies to (e.g. a GitOps controller): allowed without an
    /// Event, but recorded in the trail when a policy matched. A service account's name counts
    /// only with its pod-bound credential.
    pub exempt_users: Vec<String>,
    pub exempt_groups: Vec<String>,
    /// Namespaces whose objects no policy applies to (kube-system and stepup's own), so that
    /// a broken webhook cannot lock the cluster or itself out.
    pub exempt_namespaces: Vec<String>,
    /// Everyone's challenges, for the per-user limits on creating more (`None`: not enforced
    /// here; the controller still enforces them).
    pub challenges: Option<std::sync::Arc<crate::limits::ChallengeView>>,
    /// The built-in policy an admin's acts on another user's enrollment must satisfy
    /// ([`crate::policy::builtin::admin_acts`]); `None` turns it off.
    pub admin_acts: Option<std::sync::Arc<CompiledPolicy>>,
    /// The controller's public grant key: a grant is admitted only with its valid signature.
    /// `None` only in tests that do not exercise grant writes.
    pub grant_verifier: Option<GrantVerifier>,
    /// How far in the future a grant's `issuedAt` may lie (clock skew between processes).
    pub max_clock_skew: SignedDuration,
    /// The extras a sign-in arrives in: impersonating them is refused to everyone.
    pub sign_in_keys: crate::policy::SignInKeys,
}

/// What the decision knows about grants.
#[derive(Clone, Copy, Debug)]
pub enum Grants<'a> {
    /// The watch-fed cache.
    Cached(&'a GrantIndex),
    /// The user's grants, fetched from the API server just now.
    Fetched(&'a [GrantRecord]),
    /// The cache has been out of touch with the API server for longer than allowed: grant
    /// decisions fail closed.
    Unavailable { stale_for: SignedDuration },
}

impl<'a> Grants<'a> {
    /// The user's grants, gathered once per decision (rarely more than a handful).
    fn of_user(self, user: &str) -> SmallVec<[&'a GrantRecord; 8]> {
        match self {
            Grants::Cached(index) => index.for_user(user).collect(),
            Grants::Fetched(records) => records.iter().filter(|g| g.user == user).collect(),
            Grants::Unavailable { .. } => SmallVec::new(),
        }
    }
}

/// Everything a decision reads besides the request.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub policies: &'a PolicyIndex,
    pub grants: Grants<'a>,
    pub config: &'a DecisionConfig,
    pub now: Timestamp,
}

/// Decides one admission request. `objects` carries the parsed objects for `stepup.dev` kinds.
/// An authorization request is decided as [`authorize`] does.
pub fn decide(req: &Request<'_>, objects: &StepUpObjects, inputs: &Inputs<'_>) -> Decision {
    let Action::Admission(op) = req.action else {
        return authorize(req, inputs);
    };
    if req.group == GROUP
        && let Some(decision) = own_kinds::decide(req, op, objects, inputs.config, inputs.now)
    {
        // An allowed admin act still needs the admin's own fresh second factor.
        if decision.allowed
            && let Some(policy) = &inputs.config.admin_acts
            && own_kinds::is_admin_act(req, op, objects, inputs.config)
        {
            let matched = [policy.as_ref()];
            if is_break_glass(req, inputs.config) {
                return Decision::break_glass(req, &matched);
            }
            return evaluate(req, &matched, inputs, None);
        }
        return decision;
    }
    by_policies(req, inputs)
}

/// Decides one authorization request (a SubjectAccessReview for a read, or a verb admission
/// never sees) by the same policies, grants and exemptions as admission. The stepup kinds'
/// own rules are about writes; reading them is RBAC's business. A `Decision` that is not
/// allowed is the authorizer's Deny; an allowed one is its NoOpinion, never an Allow: RBAC
/// still decides whether the request may happen at all.
pub fn authorize(req: &Request<'_>, inputs: &Inputs<'_>) -> Decision {
    if is_sign_in_forgery(req, &inputs.config.sign_in_keys) {
        return Decision::sign_in_forgery(req);
    }
    by_policies(req, inputs)
}

/// Impersonation that would put a sign-in's evidence on a request (`--as-user-extra
/// stepup.dev/acr=2`): refused to everyone the API server asks about, whatever RBAC allows. A
/// sign-in comes from the identity provider's token, never from whoever impersonates.
fn is_sign_in_forgery(req: &Request<'_>, keys: &crate::policy::SignInKeys) -> bool {
    req.action == Action::Authorization(crate::api::Verb::Impersonate)
        && req.group == "authentication.k8s.io"
        && req.resource == "userextras"
        && keys.forgeable().contains(&req.subresource)
}

fn by_policies(req: &Request<'_>, inputs: &Inputs<'_>) -> Decision {
    if is_exempt(req, inputs.config) {
        return Decision::exempt();
    }
    let mut matched = inputs.policies.matching(req);
    // Namespaces are rare and special: a label change or a delete can remove what other
    // policies protect, so those policies come along.
    let mut note = None;
    if req.is_namespace_object() {
        note = namespace_side_effects(req, inputs.policies, &mut matched);
    }
    if matched.is_empty() {
        return Decision::not_matched();
    }
    if is_configured_exempt(req, inputs.config) {
        return Decision::exempt_from(&matched);
    }
    if is_break_glass(req, inputs.config) {
        return Decision::break_glass(req, &matched);
    }
    evaluate(req, &matched, inputs, note.as_deref())
}

/// Adds the policies a Namespace UPDATE or DELETE would weaken: for an UPDATE, those its old
/// labels matched (as the request itself, or by a selector the new labels no longer meet);
/// for a DELETE, every policy that protects deleting something in it. Returns the sentence
/// that tells the user why.
fn namespace_side_effects<'p>(
    req: &Request<'_>,
    policies: &'p PolicyIndex,
    matched: &mut crate::policy::Matches<'p>,
) -> Option<String> {
    let add = |p: &'p CompiledPolicy, matched: &mut crate::policy::Matches<'p>| {
        if !matched.iter().any(|m| m.name == p.name) {
            matched.push(p);
        }
    };
    let mut extra: Vec<&str> = Vec::new();
    match req.operation()? {
        Operation::Update => {
            let old = req.previous_labels?;
            let before = Request { namespace_labels: crate::policy::NamespaceLabels::Known(old), ..*req };
            for p in policies.matching(&before) {
                add(p, matched);
            }
            for p in policies.policies().filter(|p| p.released_by_relabel(req)) {
                if p.enforcement == Enforcement::Deny {
                    extra.push(&p.name);
                }
                add(p, matched);
            }
            matched.sort_by(|a, b| a.name.cmp(&b.name));
            (!extra.is_empty()).then(|| {
                format!(
                    "the label change takes namespace \"{}\" out of the namespaceSelector of {}, so it needs what that protection needs",
                    req.namespace,
                    outcome::quoted_list("policy", "policies", &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                )
            })
        }
        Operation::Delete => {
            for p in policies.policies().filter(|p| p.protects_deletes_in(req)) {
                extra.push(&p.name);
                add(p, matched);
            }
            matched.sort_by(|a, b| a.name.cmp(&b.name));
            (!extra.is_empty()).then(|| {
                format!(
                    "deleting namespace \"{}\" deletes everything in it, including what {} {}",
                    req.namespace,
                    outcome::quoted_list(
                        "policy",
                        "policies",
                        &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                    ),
                    if extra.len() == 1 { "protects" } else { "protect" }
                )
            })
        }
        _ => None,
    }
}

/// Requests no policy may touch: control-plane plumbing, stepup's own namespace and kinds,
/// the controller.
fn is_exempt(req: &Request<'_>, config: &DecisionConfig) -> bool {
    let user = &req.user;
    let plumbing = matches!(
        (req.group, req.resource),
        ("coordination.k8s.io", "leases") | ("", "events") | ("events.k8s.io", "events")
    ) || matches!(req.group, "authentication.k8s.io" | "authorization.k8s.io");
    // Policies never apply to challenges, enrollments or grants: stepping up must always be
    // possible, and so must revoking.
    let stepup_kind = req.group == GROUP && req.resource != "stepuppolicies";
    let exempt_namespace = !req.is_namespace_object() && config.exempt_namespaces.iter().any(|n| n == req.namespace);
    plumbing
        || stepup_kind
        || exempt_namespace
        // Only the controller's own pod-bound credential; wearing its name is a mask. Never
        // for the policies themselves: the controller writes only their status, and pod extras
        // can be forged by whoever may impersonate.
        || (user.pod_bound
            && config.controller_users.iter().any(|u| u == user.username)
            && !(req.group == GROUP && req.resource == "stepuppolicies" && req.subresource.is_empty()))
}

/// The operator's exemptions. Masks are people: a service account's name or groups count
/// only with its pod-bound credential.
fn is_configured_exempt(req: &Request<'_>, config: &DecisionConfig) -> bool {
    let user = &req.user;
    !user.is_mask()
        && (config.exempt_users.iter().any(|u| u == user.username) || user.in_any_group(&config.exempt_groups))
}

/// Members of a break-glass group pass, loudly; not a mask holding the group.
fn is_break_glass(req: &Request<'_>, config: &DecisionConfig) -> bool {
    !req.user.is_mask() && req.user.in_any_group(&config.break_glass_groups)
}

fn evaluate(req: &Request<'_>, matched: &[&CompiledPolicy], inputs: &Inputs<'_>, note: Option<&str>) -> Decision {
    let now = Clock { now: inputs.now, max_skew: inputs.config.max_clock_skew };
    // The request's own sign-in counts as a grant where a policy accepts Session: a person's
    // (a mask's extras are whoever wears it), judged by each policy's maxAge and assurance.
    let session = if req.user.sign_in.is_some() && matched.iter().any(|p| p.accepts_method(Method::Session)) {
        GrantRecord::of_request(req)
    } else {
        None
    };
    let mut mine = inputs.grants.of_user(req.user.username);
    if let Some(session) = &session {
        mine.push(session);
    }
    let enforcing: Vec<&CompiledPolicy> =
        matched.iter().copied().filter(|p| p.enforcement == Enforcement::Deny).collect();

    if let Grants::Unavailable { stale_for } = inputs.grants
        && !enforcing.is_empty()
    {
        return Decision::grants_unavailable(req, matched, stale_for);
    }

    if let Some(g) = grant::satisfying(mine.iter().copied(), matched, req, now) {
        return Decision::granted(matched, g);
    }
    if !enforcing.is_empty() {
        match grant::satisfying(mine.iter().copied(), &enforcing, req, now) {
            None => {
                let why = grant::explain(mine.iter().copied(), &enforcing, req, now);
                let lookup_may_help = matches!(inputs.grants, Grants::Cached(_));
                return Decision::denied(req, matched, &enforcing, why, lookup_may_help, note);
            }
            Some(g) => {
                let unsatisfied = unsatisfied_by(matched, g, req, now);
                return Decision::allowed_with_advisories(req, matched, &unsatisfied, Some(g));
            }
        }
    }
    // Only Warn and Audit policies: allowed; each one some grant satisfies stays quiet.
    let unsatisfied: Vec<&CompiledPolicy> =
        matched.iter().copied().filter(|p| grant::satisfying(mine.iter().copied(), &[p], req, now).is_none()).collect();
    Decision::allowed_with_advisories(req, matched, &unsatisfied, None)
}

fn unsatisfied_by<'p>(
    policies: &[&'p CompiledPolicy],
    g: &GrantRecord,
    req: &Request<'_>,
    now: Clock,
) -> Vec<&'p CompiledPolicy> {
    policies.iter().copied().filter(|p| grant::check(g, p, req, now).is_err()).collect()
}

#[cfg(test)]
mod tests;
