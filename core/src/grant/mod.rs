//! Grants as the decision path sees them, the per-user index, and the one function that says
//! whether a grant satisfies a policy for a request at a given time. Pure: time is an argument.

use std::{fmt, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use rustc_hash::FxHashMap;

use crate::{
    api::{GrantScope, Method, StepUpGrant},
    policy::{CompiledPolicy, Request},
};

/// How often the webhook asks the API server for one user's grants when its cache holds none
/// that satisfies a request; a request within this interval of the last lookup for the same
/// user is decided from the cache alone (a storm of denials must not become a storm of LISTs).
/// `kubectl stepup --` spaces its retry by at least this much from the refusal, so that the
/// retry's lookup is never the one skipped and a grant issued a moment ago always counts.
pub const LOOKUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A StepUpGrant reduced to what decisions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub name: String,
    pub user: String,
    pub uid: Option<String>,
    pub method: Method,
    pub reason: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub scope: GrantScope,
    /// Being deleted (revoked); no longer usable even before it disappears.
    pub revoked: bool,
    /// The object's version this record was made from: how a caller tells whether a cache
    /// holds a change yet.
    pub resource_version: Option<String>,
    /// The refusal its step-up answered ([`crate::api::CORRELATION_ANNOTATION`]), for audit.
    pub correlation: Option<String>,
    /// For an identity-provider sign-in ([`Method::Session`], [`Method::Oidc`]): its `acr` and `amr`, which a
    /// policy's `assurance` judges.
    pub acr: Option<String>,
    pub amr: Vec<String>,
    /// For a security key ([`Method::WebAuthn`]): whether it verified the person (PIN,
    /// biometric), which a policy's `requireUserVerification` demands.
    pub user_verified: bool,
}

impl GrantRecord {
    /// `None` for an object without a name, which the API server never sends, and for one
    /// whose method no grant can have (a `Session` is the request's own evidence, never an
    /// object: one named so would pass for an identity-provider sign-in).
    pub fn from_grant(grant: &StepUpGrant) -> Option<Self> {
        let spec = &grant.spec;
        if !spec.method.is_grant() {
            return None;
        }
        Some(Self {
            name: grant.metadata.name.clone()?,
            user: spec.user.clone(),
            uid: spec.uid.clone().filter(|u| !u.is_empty()),
            method: spec.method,
            reason: spec.reason.clone().filter(|r| !r.trim().is_empty()),
            issued_at: spec.issued_at.0,
            expires_at: spec.expires_at.0,
            scope: spec.scope.clone(),
            revoked: grant.metadata.deletion_timestamp.is_some(),
            resource_version: grant.metadata.resource_version.clone(),
            correlation: crate::api::grant_correlation(grant).map(str::to_owned),
            acr: spec.acr.clone().filter(|_| spec.method == Method::Oidc),
            amr: if spec.method == Method::Oidc { spec.amr.clone() } else { Vec::new() },
            user_verified: spec.method == Method::WebAuthn && spec.user_verified,
        })
    }

    /// The sign-in a request carries, as a grant ([`Self::from_sign_in`]), when it is a
    /// person's: a mask's extras are whoever wears it, and workloads do not sign in.
    pub fn of_request(req: &Request<'_>) -> Option<Self> {
        let user = &req.user;
        user.sign_in
            .filter(|_| user.kind == crate::policy::Requester::Person && !user.is_mask())
            .map(|s| Self::from_sign_in(user, &s))
    }

    /// The request's own evidence of a sign-in at the identity provider, as a grant of method
    /// [`Method::Session`] issued at its `auth_time` to the requester, for every policy and
    /// namespace (each policy's maxAge and assurance then judge it like any grant). Named after
    /// the credential, so that the record says which token carried it.
    fn from_sign_in(user: &crate::policy::User<'_>, sign_in: &crate::policy::SignIn<'_>) -> Self {
        let credential = if sign_in.credential.is_empty() { "request" } else { sign_in.credential };
        Self {
            name: format!("session:{credential}"),
            user: user.username.to_owned(),
            uid: (!user.uid.is_empty()).then(|| user.uid.to_owned()),
            method: Method::Session,
            reason: None,
            issued_at: sign_in.auth_time,
            // maxAge (at most 24h) bounds it; nothing else expires a sign-in here.
            expires_at: sign_in.auth_time.saturating_add(SignedDuration::from_hours(25)).unwrap_or(sign_in.auth_time),
            scope: GrantScope::default(),
            revoked: false,
            resource_version: None,
            correlation: None,
            acr: Some(sign_in.acr.to_owned()),
            amr: sign_in.amr.to_vec(),
            user_verified: false,
        }
    }
}

/// The time a decision is made at, and how far a grant's `issuedAt` may lie ahead of it
/// (clock skew between the controller and the webhook; `--max-clock-skew`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub now: Timestamp,
    pub max_skew: SignedDuration,
}

impl Clock {
    /// The default of `--max-clock-skew`.
    pub const DEFAULT_MAX_SKEW: SignedDuration = SignedDuration::from_secs(10);

    pub fn at(now: Timestamp) -> Self {
        Self { now, max_skew: Self::DEFAULT_MAX_SKEW }
    }
}

/// Why a grant does not satisfy a policy: said to the user in the denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsatisfied {
    Revoked,
    Expired,
    /// Issued longer ago than the policy's maxAge.
    TooOld {
        age: SignedDuration,
        max_age: SignedDuration,
    },
    /// Issued further in the future than the allowed clock skew: a clock game, or a broken
    /// clock; either way it would stay "fresh" for longer than the policy allows.
    IssuedInFuture {
        ahead: SignedDuration,
        max_skew: SignedDuration,
    },
    MethodNotAccepted(Method),
    /// A sign-in whose `acr` is not among the policy's accepted values.
    AcrNotAccepted {
        acr: String,
        accepted: Vec<String>,
    },
    /// A sign-in whose `amr` lacks a method the policy requires.
    AmrMissing {
        amr: Vec<String>,
        missing: String,
    },
    /// Issued to an account with another UID (deleted and re-created).
    OtherAccount,
    PolicyOutOfScope,
    NamespaceOutOfScope,
    ReasonRequired,
    /// A security key that proved presence only, where the policy requires user verification.
    UserNotVerified,
}

impl fmt::Display for Unsatisfied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsatisfied::Revoked => f.write_str("it has been revoked"),
            Unsatisfied::Expired => f.write_str("it has expired"),
            Unsatisfied::TooOld { age, max_age } => {
                write!(f, "it was issued {} ago and the policy accepts at most {}", human(*age), human(*max_age))
            }
            Unsatisfied::IssuedInFuture { ahead, max_skew } => write!(
                f,
                "its issuedAt lies {} in the future, beyond the {} clock skew allowed",
                human(*ahead),
                human(*max_skew)
            ),
            Unsatisfied::MethodNotAccepted(m) => write!(f, "the policy does not accept method {m}"),
            Unsatisfied::AcrNotAccepted { acr, accepted } => write!(
                f,
                "the sign-in's assurance level (acr) is {} and the policy accepts {}",
                if acr.is_empty() { "none".to_owned() } else { format!("{acr:?}") },
                accepted.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" or ")
            ),
            Unsatisfied::AmrMissing { amr, missing } => write!(
                f,
                "the sign-in used {} and the policy requires {missing:?}",
                if amr.is_empty() { "no method it named".to_owned() } else { amr.join(", ") }
            ),
            Unsatisfied::OtherAccount => f.write_str("it was issued to an account with another UID"),
            Unsatisfied::PolicyOutOfScope => f.write_str("it is limited to other policies"),
            Unsatisfied::NamespaceOutOfScope => f.write_str("it is limited to other namespaces"),
            Unsatisfied::ReasonRequired => f.write_str("the policy requires a grant requested with a reason"),
            Unsatisfied::UserNotVerified => f.write_str(
                "the security key did not verify you (PIN or biometric), which the policy requires: use a key that does",
            ),
        }
    }
}

/// `1h5m`, `15m`, `40s`: durations for people.
pub fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0) as u64;
    crate::api::Duration::from_secs(secs).to_string()
}

/// Whether `grant` satisfies `policy` for `req` at `clock`. The single definition of an
/// acceptable grant: method, account, freshness (`now - maxAge <= issuedAt <= now + skew`),
/// expiry, scope.
pub fn check(grant: &GrantRecord, policy: &CompiledPolicy, req: &Request<'_>, clock: Clock) -> Result<(), Unsatisfied> {
    let now = clock.now;
    if grant.revoked {
        return Err(Unsatisfied::Revoked);
    }
    if grant.user != req.user.username {
        // The index is keyed by user; this guards direct callers.
        return Err(Unsatisfied::OtherAccount);
    }
    if grant.uid.as_deref().unwrap_or("") != req.user.uid {
        return Err(Unsatisfied::OtherAccount);
    }
    if now >= grant.expires_at {
        return Err(Unsatisfied::Expired);
    }
    let age = now.duration_since(grant.issued_at);
    if -age > clock.max_skew {
        return Err(Unsatisfied::IssuedInFuture { ahead: -age, max_skew: clock.max_skew });
    }
    if age > policy.max_age {
        return Err(Unsatisfied::TooOld { age, max_age: policy.max_age });
    }
    if !policy.accepts_method(grant.method) {
        return Err(Unsatisfied::MethodNotAccepted(grant.method));
    }
    if matches!(grant.method, Method::Session | Method::Oidc) {
        meets_assurance(policy, grant.acr.as_deref(), &grant.amr)?;
    }
    if grant.method == Method::WebAuthn && policy.require_user_verification && !grant.user_verified {
        return Err(Unsatisfied::UserNotVerified);
    }
    if policy.require_reason && grant.reason.is_none() {
        return Err(Unsatisfied::ReasonRequired);
    }
    if !grant.scope.allows_policy(&policy.name) {
        return Err(Unsatisfied::PolicyOutOfScope);
    }
    if !grant.scope.allows_namespace(req.namespace) {
        return Err(Unsatisfied::NamespaceOutOfScope);
    }
    Ok(())
}

/// Whether a sign-in's `acr` and `amr` carry what `policy`'s assurance asks.
pub fn meets_assurance(policy: &CompiledPolicy, acr: Option<&str>, amr: &[String]) -> Result<(), Unsatisfied> {
    let Some(assurance) = &policy.assurance else { return Ok(()) };
    let acr = acr.unwrap_or("");
    if !assurance.acr_values.is_empty() && !assurance.acr_values.iter().any(|a| a == acr) {
        return Err(Unsatisfied::AcrNotAccepted { acr: acr.to_owned(), accepted: assurance.acr_values.clone() });
    }
    if let Some(missing) = assurance.amr.iter().find(|m| !amr.contains(m)) {
        return Err(Unsatisfied::AmrMissing { amr: amr.to_vec(), missing: missing.clone() });
    }
    Ok(())
}

/// Whether a sign-in at `auth_time` with `acr` and `amr` can satisfy `policy` at `clock`: its
/// assurance, and an age within its maxAge (the controller refuses a sign-in no policy it is
/// for would accept, instead of issuing a grant that lets nothing through).
pub fn sign_in_satisfies(
    policy: &CompiledPolicy,
    acr: Option<&str>,
    amr: &[String],
    auth_time: Timestamp,
    clock: Clock,
) -> Result<(), Unsatisfied> {
    let age = clock.now.duration_since(auth_time);
    if -age > clock.max_skew {
        return Err(Unsatisfied::IssuedInFuture { ahead: -age, max_skew: clock.max_skew });
    }
    if age > policy.max_age {
        return Err(Unsatisfied::TooOld { age, max_age: policy.max_age });
    }
    meets_assurance(policy, acr, amr)
}

/// The most recently issued grant that satisfies every one of `policies`.
pub fn satisfying<'g>(
    grants: impl IntoIterator<Item = &'g GrantRecord>,
    policies: &[&CompiledPolicy],
    req: &Request<'_>,
    now: Clock,
) -> Option<&'g GrantRecord> {
    grants
        .into_iter()
        .filter(|g| policies.iter().all(|p| check(g, p, req, now).is_ok()))
        .max_by_key(|g| (g.issued_at, g.name.as_str()))
}

/// Why the user's most recent grant does not do: the first policy it fails and the reason.
pub fn explain<'g>(
    grants: impl IntoIterator<Item = &'g GrantRecord>,
    policies: &[&CompiledPolicy],
    req: &Request<'_>,
    now: Clock,
) -> Option<(&'g GrantRecord, Unsatisfied)> {
    let newest = grants.into_iter().filter(|g| !g.revoked).max_by_key(|g| (g.issued_at, g.name.as_str()))?;
    policies.iter().find_map(|p| check(newest, p, req, now).err()).map(|why| (newest, why))
}

/// All known grants, by user.
#[derive(Clone, Debug, Default)]
pub struct GrantIndex {
    by_user: FxHashMap<String, Vec<Arc<GrantRecord>>>,
    user_of: FxHashMap<String, String>,
}

impl GrantIndex {
    pub fn new(records: impl IntoIterator<Item = GrantRecord>) -> Self {
        let mut index = Self::default();
        for r in records {
            index.upsert(r);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.user_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user_of.is_empty()
    }

    pub fn upsert(&mut self, record: GrantRecord) {
        self.remove(&record.name);
        self.user_of.insert(record.name.clone(), record.user.clone());
        self.by_user.entry(record.user.clone()).or_default().push(Arc::new(record));
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<GrantRecord>> {
        let user = self.user_of.remove(name)?;
        let grants = self.by_user.get_mut(&user)?;
        let pos = grants.iter().position(|g| g.name == name)?;
        let removed = grants.swap_remove(pos);
        if grants.is_empty() {
            self.by_user.remove(&user);
        }
        Some(removed)
    }

    /// The grant named `name`.
    pub fn get(&self, name: &str) -> Option<&GrantRecord> {
        let user = self.user_of.get(name)?;
        self.by_user.get(user)?.iter().find(|g| g.name == name).map(|g| g.as_ref())
    }

    pub fn for_user(&self, user: &str) -> impl Iterator<Item = &GrantRecord> {
        self.by_user.get(user).into_iter().flatten().map(|g| g.as_ref())
    }

    /// Grants that are usable at `now` (not revoked, not expired), across users.
    pub fn active(&self, now: Timestamp) -> usize {
        self.by_user.values().flatten().filter(|g| !g.revoked && now < g.expires_at).count()
    }
}

#[cfg(test)]
mod tests;
