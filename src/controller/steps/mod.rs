//! What the enrollment and challenge reconcilers do next, decided without I/O: each is a
//! `next_step(facts, settings) -> Step` over the object, the factor state and the time, tested
//! as a table; the reconcilers are thin executors that fetch the facts and perform the step.
//! The vocabulary here (records, approvals, the bootstrap) is the same for every method.

pub mod assertion;
pub mod bootstrap;
pub mod challenge;
pub mod enrollment;
pub mod security_keys;

/// One piece of evidence: the executor turns it into an Event, an audit line and a metric
/// sample together, so no step can leave one without the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub warning: bool,
    /// Event reason, e.g. `EnrollmentApproved`.
    pub reason: &'static str,
    /// Audit event and the metric's `step` label, e.g. `enrollment.approved`.
    pub event: &'static str,
    /// Audit result and the metric's `result` label, e.g. `approved`.
    pub result: &'static str,
    pub message: String,
}

impl Record {
    pub fn normal(reason: &'static str, event: &'static str, result: &'static str, message: impl Into<String>) -> Self {
        Self { warning: false, reason, event, result, message: message.into() }
    }

    pub fn warning(
        reason: &'static str,
        event: &'static str,
        result: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self { warning: true, reason, event, result, message: message.into() }
    }
}

/// A moment as people read it in a status message: `14:05:09 UTC`.
pub(crate) fn clock(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}
