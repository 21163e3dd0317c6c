//! The audit trail: one record per decision that involved a policy or a built-in rule, and
//! one per controller step, in the `stepup.dev/audit/v1` schema ([`crate::records`]). Each
//! goes out as a JSON line on stdout (target `stepup::audit`, for a SIEM) and into the durable
//! StepUpLog segments, off the request path.

use jiff::Timestamp;

use crate::records::{Record, writer};
use stepup_core::{
    decision::Decision,
    policy::{Action, Request},
};

pub use crate::records::TARGET;

/// What an auditor asks of an admission decision: who, what, which policy, which grant, result.
pub struct AdmissionRecord<'a> {
    /// The review's UID.
    pub uid: &'a str,
    /// The request as the decision saw it.
    pub request: &'a Request<'a>,
    /// What the connection proved about the sender: `client-certificate:<subject>` with mutual
    /// TLS, else `unauthenticated` (anyone who reached the port could have sent the review).
    pub peer: &'a str,
    pub decision: &'a Decision,
}

impl AdmissionRecord<'_> {
    pub fn to_record(&self, time: Timestamp) -> Record {
        let (d, r) = (self.decision, self.request);
        Record {
            review_uid: self.uid.to_owned(),
            user: r.user.username.to_owned(),
            user_uid: r.user.uid.to_owned(),
            operation: r.action.as_str().to_owned(),
            group: r.group.to_owned(),
            resource: r.resource.to_owned(),
            subresource: r.subresource.to_owned(),
            namespace: r.namespace.to_owned(),
            name: r.name.to_owned(),
            dry_run: r.dry_run,
            peer: self.peer.to_owned(),
            decision: d.outcome.as_str().to_owned(),
            allowed: Some(d.allowed),
            policies: d.policies.join(","),
            grant: d.grant.clone().unwrap_or_default(),
            reason: d.grant_reason.clone().unwrap_or_default(),
            requirement: d.requirement.as_ref().map(|x| x.to_string()).unwrap_or_default(),
            correlation: d.correlation().unwrap_or_default(),
            ..Record::new(
                match r.action {
                    Action::Admission(_) => "admission.decision",
                    Action::Authorization(_) => "authorization.decision",
                },
                time,
            )
        }
    }
}

pub fn admission(r: &AdmissionRecord<'_>) {
    writer::emit(r.to_record(Timestamp::now()));
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
    /// The refusal this step answers (`prompt:<review uid>`), or empty.
    pub correlation: &'a str,
    /// The security key that answered, and whether it verified its person (`WebAuthn` grants).
    pub credential: Option<(&'a str, bool)>,
}

impl StepRecord<'_> {
    pub fn to_record(&self, time: Timestamp) -> Record {
        Record {
            user: self.user.to_owned(),
            object: self.object.to_owned(),
            result: self.result.to_owned(),
            method: self.method.to_owned(),
            reason: self.reason.to_owned(),
            grant: self.grant.to_owned(),
            message: self.message.to_owned(),
            correlation: self.correlation.to_owned(),
            credential: self.credential.map(|(id, _)| id.to_owned()).unwrap_or_default(),
            user_verified: self.credential.map(|(_, uv)| uv),
            ..Record::new(self.event, time)
        }
    }
}

pub fn step(r: &StepRecord<'_>) {
    writer::emit(r.to_record(Timestamp::now()));
}
