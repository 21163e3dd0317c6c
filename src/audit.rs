//! The audit trail: one JSON line per decision that involved a policy or a built-in rule, and
//! one per controller step, all on the `stepup::audit` target so a SIEM can pick them out.

use crate::decision::Decision;

pub const TARGET: &str = "stepup::audit";

/// What an auditor asks of an admission decision: who, what, which policy, which grant, result.
pub struct AdmissionRecord<'a> {
    pub uid: &'a str,
    pub user: &'a str,
    pub user_uid: &'a str,
    pub operation: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub dry_run: bool,
    /// What the connection proved about the sender: `client-certificate:<subject>` with mutual
    /// TLS, else `unauthenticated` (anyone who reached the port could have sent the review).
    pub peer: &'a str,
    pub decision: &'a Decision,
}

pub fn admission(r: &AdmissionRecord<'_>) {
    let d = r.decision;
    let requirement = d.requirement.as_ref().map(|x| x.to_string());
    tracing::info!(
        target: TARGET,
        event = "admission.decision",
        review_uid = r.uid,
        user = r.user,
        user_uid = r.user_uid,
        operation = r.operation,
        group = r.group,
        resource = r.resource,
        subresource = r.subresource,
        namespace = r.namespace,
        name = r.name,
        dry_run = r.dry_run,
        peer = r.peer,
        decision = d.outcome.as_str(),
        allowed = d.allowed,
        policies = d.policies.join(","),
        grant = d.grant.as_deref().unwrap_or(""),
        reason = d.grant_reason.as_deref().unwrap_or(""),
        requirement = requirement.as_deref().unwrap_or(""),
        "admission decision"
    );
}

/// One step of the controller: an enrollment, a verification, a grant issued, expired or
/// revoked, a lockout.
pub struct StepRecord<'a> {
    /// `challenge.verified`, `challenge.denied`, `grant.issued`, `grant.expired`, ...
    pub event: &'a str,
    pub user: &'a str,
    /// `StepUpChallenge/alice-x7k2p`
    pub object: &'a str,
    pub result: &'a str,
    pub method: &'a str,
    pub reason: &'a str,
    pub grant: &'a str,
    pub message: &'a str,
}

pub fn step(r: &StepRecord<'_>) {
    tracing::info!(
        target: TARGET,
        event = r.event,
        user = r.user,
        object = r.object,
        result = r.result,
        method = r.method,
        reason = r.reason,
        grant = r.grant,
        message = r.message,
        "controller step"
    );
}
