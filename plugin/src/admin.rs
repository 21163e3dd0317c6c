//! `kubectl stepup approve|reset|unlock <user>`: an admin's acts on another user's enrollment.
//! Approve (a first enrollment) and reset (a re-enrollment without the old device) approve one
//! key: the admin is shown its fingerprint and must confirm it, interactively or with `--key`,
//! and the approval names it, so a key swapped in meanwhile is refused. Unlock clears a lockout
//! and nothing else. The webhook checks the admin group, refuses self-approval and any name but
//! the admin's own; the controller acts on the marks once, within its approval window.

use jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    cli::AdminArgs,
    cluster::{Identity, Session},
    error::{Error, Result},
    request::{self, GrantRequest},
    status::phase_name,
    terminal::{self, CodeSource},
};
use stepup_core::{
    api::{self, EnrollmentPhase, StepUpEnrollment},
    verify::seal::{fingerprint, normalize_fingerprint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reset,
    Unlock,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reset => "reset",
            Action::Unlock => "unlock",
        }
    }
}

fn ready_reason(e: &StepUpEnrollment) -> Option<&str> {
    e.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.as_str())
}

/// Why `action` makes no sense for `e` right now (`Ok(None)`: it does; `Ok(Some)`: nothing to
/// do, said in a sentence; `Err`: the admin needs another command).
pub fn precondition(action: Action, e: &StepUpEnrollment) -> Result<Option<String>> {
    let user = &e.spec.user;
    let status = e.status.clone().unwrap_or_default();
    let phase = status.phase;
    let corrupt = ready_reason(e) == Some("FactorCorrupt");
    let enrolled = status.enrolled_key_fingerprint.clone();
    let current = fingerprint(&e.spec.public_key);
    match action {
        Action::Unlock => match phase {
            _ if corrupt => Err(Error::usage(
                format!("{user}'s stored factor failed its integrity check; unlocking cannot help"),
                format!(
                    "Have them run `kubectl stepup enroll --reenroll`, then approve the new key: `kubectl stepup reset {user} --key <fingerprint>`."
                ),
            )),
            Some(EnrollmentPhase::Locked) => Ok(None),
            _ if status.consecutive_failures > 0 => Ok(None),
            other => Ok(Some(format!(
                "{user}'s enrollment is not locked ({}); nothing to unlock",
                other.map_or_else(|| "Unknown".to_owned(), phase_name)
            ))),
        },
        Action::Approve => match phase {
            Some(EnrollmentPhase::PendingApproval) => Ok(None),
            // Each approval lets the person register one more security key.
            Some(EnrollmentPhase::Active) if e.spec.method == stepup_core::api::Method::WebAuthn => Ok(None),
            Some(EnrollmentPhase::AwaitingConfirmation) => {
                Ok(Some(format!("{user}'s enrollment is already approved and waits for their first code")))
            }
            _ if enrolled.is_some() || corrupt => Err(Error::usage(
                format!("{user} is already enrolled; approve is for a first enrollment"),
                format!("For a new device without the old one: `kubectl stepup reset {user} --key <fingerprint>`."),
            )),
            _ => Err(Error::usage(
                format!("{user}'s enrollment has not been seen by the stepup controller yet"),
                "Wait a moment and try again; is the stepup controller running?",
            )),
        },
        Action::Reset => {
            if enrolled.is_none() && !corrupt {
                return Err(Error::usage(
                    format!("{user} is not enrolled yet; reset is for a re-enrollment"),
                    format!("Approve a first enrollment with `kubectl stepup approve {user} --key <fingerprint>`."),
                ));
            }
            if phase == Some(EnrollmentPhase::AwaitingConfirmation) {
                return Ok(Some(format!("{user}'s re-enrollment is already allowed and waits for their first code")));
            }
            if enrolled.as_deref() == Some(current.as_str()) && !corrupt {
                return Err(Error::usage(
                    format!(
                        "{user}'s enrollment carries the key they are enrolled with ({current}): no re-enrollment was asked for"
                    ),
                    format!(
                        "Ask {user} to run `kubectl stepup enroll --reenroll` and read you the fingerprint it shows; then run this again with --key."
                    ),
                ));
            }
            Ok(None)
        }
    }
}

/// Whether the fingerprint the admin was given is the one the enrollment carries now.
pub fn check_key(given: &str, current: &str, user: &str) -> Result<()> {
    let Some(given) = normalize_fingerprint(given) else {
        return Err(Error::usage(
            format!("{given:?} is not a key fingerprint"),
            "A fingerprint is 24 hex digits, as `kubectl stepup enroll` shows it (e.g. 3f2a-91c0-77de-0b14-aa58-c3e9).",
        ));
    };
    if given != current {
        return Err(Error::other(
            format!("{user}'s enrollment carries key {current}, not {given}: do not approve it"),
            format!(
                "Someone else may have changed it. Ask {user} to run `kubectl stepup enroll` again and compare the fingerprint it shows."
            ),
        ));
    }
    Ok(())
}

pub async fn run(session: &Session, action: Action, args: &AdminArgs) -> Result<()> {
    let user = args.user.as_str();
    let me = session.whoami().await?;
    if me.username == user {
        return Err(Error::usage(
            format!("you cannot {} your own enrollment", action.verb()),
            "Ask another stepup admin: the point is that a second person agrees.",
        ));
    }
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name_for(user, args.method.method());
    let enrollment = api
        .get_opt(&name)
        .await
        .map_err(session.kube_error(&format!("read {user}'s enrollment")))?
        .ok_or_else(|| {
            Error::usage(
                format!("{user:?} has no {} enrollment", args.method.method()),
                "They run `kubectl stepup enroll` first; check the spelling (the exact username the API server authenticates).",
            )
        })?;
    if let Some(nothing) = precondition(action, &enrollment)? {
        outln!("{nothing}.");
        return Ok(());
    }
    let refused = |e| match Error::from_kube(e, &format!("{} {user}'s enrollment", action.verb()), &session.server) {
        Error::Refused { action, message } | Error::Forbidden { action, detail: message } => Error::other(
            format!("you may not {action}: {message}"),
            "Approving, resetting and unlocking need membership in stepup's admin group (default stepup:admins).",
        ),
        other => other,
    };
    let phase = enrollment.status.as_ref().and_then(|s| s.phase).map_or_else(|| "Unknown".to_owned(), phase_name);
    let current = fingerprint(&enrollment.spec.public_key);
    let marks = |at: String| match action {
        Action::Unlock => json!({"metadata": {"annotations": {api::UNLOCK_BY_ANNOTATION: me.username}}}),
        Action::Approve | Action::Reset => json!({"metadata": {"annotations": {
            api::APPROVED_BY_ANNOTATION: me.username,
            api::APPROVED_KEY_ANNOTATION: current,
            api::APPROVED_AT_ANNOTATION: at,
        }}}),
    };
    // Ask the webhook first (a dry run changes nothing): nobody is asked to confirm an act they
    // may not perform, and an admin without a fresh second factor steps up first.
    let dry = PatchParams::default().dry_run();
    match api.patch(&name, &dry, &Patch::Merge(marks(Timestamp::now().to_string()))).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if super::trailer::from_status(&status).is_some() => {
            step_up(session, &me, &format!("{} {user}'s enrollment", action.verb())).await?;
            api.patch(&name, &dry, &Patch::Merge(marks(Timestamp::now().to_string()))).await.map_err(refused)?;
        }
        Err(e) => return Err(refused(e)),
    }

    if matches!(action, Action::Approve | Action::Reset) {
        let enrolled = enrollment.status.as_ref().and_then(|s| s.enrolled_key_fingerprint.clone());
        outln!("{user}'s enrollment asks to enroll key {current}");
        if let Some(old) = &enrolled {
            outln!("  (enrolled now with key {old}; approving replaces that authenticator without a code from it)");
        }
        match &args.key {
            Some(given) => check_key(given, &current, user)?,
            None => {
                let answer = terminal::ask(&format!(
                    "Does {user}'s `kubectl stepup enroll` show exactly {current}? Type yes to approve this key: "
                ))
                .map_err(|_| {
                    Error::usage(
                        "there is no terminal to confirm the key fingerprint",
                        format!("Pass the fingerprint {user} reads to you: --key <fingerprint>."),
                    )
                })?;
                if !answer.eq_ignore_ascii_case("yes") {
                    return Err(Error::usage("not approved", "Nothing was changed."));
                }
            }
        }
    }
    api.patch(&name, &PatchParams::default(), &Patch::Merge(marks(Timestamp::now().to_string())))
        .await
        .map_err(refused)?;
    match action {
        Action::Unlock => outln!(
            "Unlocked {user}'s enrollment (was {phase}): failures are forgotten; their enrolled authenticator and key are unchanged."
        ),
        Action::Approve | Action::Reset => {
            let what = if action == Action::Approve { "enrollment" } else { "re-enrollment" };
            outln!(
                "Approved key {current} for {user}'s {what} (was {phase}): usable once, within the controller's approval window; their `kubectl stepup enroll` now receives the secret."
            )
        }
    }
    Ok(())
}

/// Acts on others' enrollments are step-up operations themselves: ask for the admin's code and
/// get a grant, as `kubectl stepup request` would. `act`: "unlock alice's enrollment".
pub async fn step_up(session: &Session, me: &Identity, act: &str) -> Result<()> {
    errln!("kube-stepup: to {act} you need a fresh second factor yourself.");
    let response_key = request::ensure_enrolled(session, me).await?;
    let code = terminal::read_code("Code from your authenticator app: ", CodeSource::Terminal).map_err(|_| {
        Error::usage(
            format!("to {act} you need a fresh grant, and there is no terminal to ask for a code"),
            "Run `kubectl stepup request` first.",
        )
    })?;
    let ask = GrantRequest { code, reason: Some(act.to_owned()), ..GrantRequest::default() };
    request::obtain_grant(session, me, &response_key, ask, stepup_core::api::Duration::from_secs(30)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{
        api::{Method, StepUpEnrollmentSpec, StepUpEnrollmentStatus},
        verify::seal::EphemeralKey,
    };

    fn enrollment(phase: Option<EnrollmentPhase>, enrolled_with: Option<&str>) -> StepUpEnrollment {
        let key = EphemeralKey::generate().public_key_b64();
        let mut e = StepUpEnrollment::new(
            "alice-1",
            StepUpEnrollmentSpec {
                user: "alice".into(),
                method: Method::Totp,
                public_key: key,
                confirmation: None,
                bootstrap: false,
                bootstrap_proof: None,
            },
        );
        e.status = Some(StepUpEnrollmentStatus {
            phase,
            enrolled_key_fingerprint: enrolled_with.map(str::to_owned),
            ..Default::default()
        });
        e
    }

    #[test]
    fn each_admin_act_fits_one_situation() {
        let pending = enrollment(Some(EnrollmentPhase::PendingApproval), None);
        assert!(matches!(precondition(Action::Approve, &pending), Ok(None)));
        assert!(precondition(Action::Reset, &pending).is_err(), "reset is for the enrolled");
        assert!(matches!(precondition(Action::Unlock, &pending), Ok(Some(_))), "nothing to unlock");

        let active_same_key = {
            let mut e = enrollment(Some(EnrollmentPhase::Active), None);
            let fp = fingerprint(&e.spec.public_key);
            e.status.as_mut().unwrap().enrolled_key_fingerprint = Some(fp);
            e
        };
        assert!(precondition(Action::Approve, &active_same_key).is_err());
        assert!(precondition(Action::Reset, &active_same_key).is_err(), "no re-enrollment was asked for");

        let reenrolling = enrollment(Some(EnrollmentPhase::Active), Some("aaaa-bbbb-cccc-dddd-eeee-ffff"));
        assert!(matches!(precondition(Action::Reset, &reenrolling), Ok(None)));

        let locked = enrollment(Some(EnrollmentPhase::Locked), Some("aaaa-bbbb-cccc-dddd-eeee-ffff"));
        assert!(matches!(precondition(Action::Unlock, &locked), Ok(None)));
        assert!(matches!(precondition(Action::Reset, &locked), Ok(None)), "a locked user who lost the device");
    }

    #[test]
    fn the_admin_must_name_the_key_the_enrollment_carries() {
        let current = fingerprint(&EphemeralKey::generate().public_key_b64());
        assert!(check_key(&current.to_uppercase(), &current, "alice").is_ok());
        assert!(check_key(&current.replace('-', ""), &current, "alice").is_ok());
        let other = fingerprint(&EphemeralKey::generate().public_key_b64());
        let err = check_key(&other, &current, "alice").unwrap_err();
        assert!(err.to_string().contains("do not approve it"), "{err}");
        assert!(matches!(check_key("nonsense", &current, "alice"), Err(Error::Usage { .. })));
    }
}
