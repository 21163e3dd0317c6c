//! `kubectl stepup approve|reset <user>`: an admin marks another user's enrollment with their
//! own name. The webhook checks the admin group, refuses self-approval and any name but the
//! admin's own; the controller acts on the mark.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    cluster::Session,
    error::{Error, Result},
    status::phase_name,
};
use crate::api::{self, EnrollmentPhase, StepUpEnrollment};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reset,
}

impl Action {
    fn annotation(self) -> &'static str {
        match self {
            Action::Approve => api::APPROVED_BY_ANNOTATION,
            Action::Reset => api::RESET_BY_ANNOTATION,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reset => "reset",
        }
    }
}

/// Why an action makes no sense for an enrollment in `phase`; `None` when it does.
pub fn pointless(action: Action, phase: Option<EnrollmentPhase>) -> Option<&'static str> {
    match (action, phase) {
        (Action::Approve, Some(EnrollmentPhase::Active)) => Some("is already active; nothing to approve"),
        (Action::Approve, Some(EnrollmentPhase::AwaitingConfirmation)) => {
            Some("is already approved and waits for the user's first code")
        }
        _ => None,
    }
}

pub async fn run(session: &Session, action: Action, user: &str) -> Result<()> {
    let me = session.whoami().await?;
    if me.username == user {
        return Err(Error::usage(
            format!("you cannot {} your own enrollment", action.verb()),
            "Ask another stepup admin: the point is that a second person agrees.",
        ));
    }
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name(user);
    let enrollment = api
        .get_opt(&name)
        .await
        .map_err(session.kube_error(&format!("read {user}'s enrollment")))?
        .ok_or_else(|| {
            Error::usage(
                format!("{user:?} has no enrollment"),
                "They run `kubectl stepup enroll` first; check the spelling (the exact username the API server authenticates).",
            )
        })?;
    let phase = enrollment.status.as_ref().and_then(|s| s.phase);
    if let Some(why) = pointless(action, phase) {
        outln!("{user}'s enrollment {why}.");
        return Ok(());
    }
    if action == Action::Approve && phase == Some(EnrollmentPhase::Locked) {
        return Err(Error::usage(
            format!("{user}'s enrollment is locked, not waiting for approval"),
            format!("`kubectl stepup reset {user}` clears the lockout."),
        ));
    }
    let key = action.annotation();
    let refused = |e| match Error::from_kube(e, &format!("{} {user}'s enrollment", action.verb()), &session.server) {
        Error::Refused { action, message } | Error::Forbidden { action, detail: message } => Error::other(
            format!("you may not {action}: {message}"),
            "Approving and resetting need membership in stepup's admin group (default stepup:admins).",
        ),
        other => other,
    };
    // A mark the controller has not cleared yet would make the same patch a no-op: remove it
    // first so that the controller sees a change.
    if enrollment.annotations().get(key).is_some_and(|v| *v == me.username) {
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {key: null}}})))
            .await
            .map_err(refused)?;
    }
    api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {key: me.username}}})))
        .await
        .map_err(refused)?;
    let phase = phase.map_or_else(|| "Unknown".to_owned(), phase_name);
    match action {
        Action::Approve => {
            outln!("Approved {user}'s enrollment (was {phase}); their `kubectl stepup enroll` now receives the secret.")
        }
        Action::Reset => outln!(
            "Reset {user}'s enrollment (was {phase}): unlocked, and a new device may be enrolled without the old one (`kubectl stepup enroll --reenroll`)."
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approving_an_enrollment_that_needs_no_approval_changes_nothing() {
        assert!(pointless(Action::Approve, Some(EnrollmentPhase::Active)).is_some());
        assert!(pointless(Action::Approve, Some(EnrollmentPhase::AwaitingConfirmation)).is_some());
        assert!(pointless(Action::Approve, Some(EnrollmentPhase::PendingApproval)).is_none());
        assert!(pointless(Action::Approve, None).is_none());
        for phase in [EnrollmentPhase::Active, EnrollmentPhase::Locked, EnrollmentPhase::PendingApproval] {
            assert!(pointless(Action::Reset, Some(phase)).is_none(), "{phase:?}");
        }
    }
}
