//! StepUpChallenge: verify the code, record its use, issue the grant, report. Order matters:
//! the spent time step is persisted (with optimistic concurrency) before the grant exists, and
//! the grant's name derives from the challenge UID, so a crash at any point yields exactly one
//! grant and never lets a code count twice.

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{Context, Error, Result, Settings, condition, factor::Verdict, merge_condition};
use crate::{
    api::{
        self, ChallengePhase, ChallengeRef, EnrollmentPhase, GrantRef, Method, StepUpChallenge, StepUpChallengeStatus,
        StepUpEnrollment, StepUpGrant, StepUpGrantSpec,
    },
    audit,
    verify::Rejection,
};

/// The grant a verified challenge earns. Pure: name from the challenge UID, lifetime the
/// requested duration capped by the maximum.
pub fn grant_for(challenge: &StepUpChallenge, now: Timestamp, settings: &Settings) -> StepUpGrant {
    // The API server keeps timestamps to the second; the grant says exactly what it will hold.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let spec = &challenge.spec;
    let uid = challenge.metadata.uid.clone().unwrap_or_default();
    let requested = spec.duration.map(|d| d.as_signed()).unwrap_or(settings.default_grant_duration);
    let lifetime = requested.clamp(SignedDuration::from_secs(1), settings.max_grant_duration);
    StepUpGrant {
        metadata: ObjectMeta {
            name: Some(api::grant_name(&spec.user, &uid)),
            labels: Some(BTreeMap::from([
                (api::USER_LABEL.to_owned(), api::user_label_value(&spec.user)),
                (api::CHALLENGE_LABEL.to_owned(), challenge.name_any()),
            ])),
            ..Default::default()
        },
        spec: StepUpGrantSpec {
            user: spec.user.clone(),
            uid: spec.uid.clone().filter(|u| !u.is_empty()),
            method: spec.method,
            reason: spec.reason.clone().filter(|r| !r.trim().is_empty()),
            issued_at: Time(now),
            expires_at: Time(now + lifetime),
            scope: spec.scope.clone(),
            challenge_ref: Some(ChallengeRef { name: challenge.name_any(), uid }),
            signature: None,
        },
        status: None,
    }
}

fn phase(c: &StepUpChallenge) -> ChallengePhase {
    c.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn created(c: &StepUpChallenge) -> Timestamp {
    c.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now)
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = (at - now).try_into().unwrap_or(std::time::Duration::ZERO);
    Action::requeue(wait.max(std::time::Duration::from_secs(1)))
}

/// A sentence for the user about a refusal.
fn rejection_message(why: Rejection) -> &'static str {
    match why {
        Rejection::Malformed => "the code must be 6 digits",
        Rejection::Wrong => "wrong code: check the code and your device's clock, then try the next code",
        Rejection::Replayed => "this code was already used; wait for the next code",
    }
}

pub async fn reconcile(challenge: Arc<StepUpChallenge>, ctx: Arc<Context>) -> Result<Action> {
    let now = Timestamp::now();
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    let name = challenge.name_any();
    if challenge.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if phase(&challenge) != ChallengePhase::Pending {
        if challenge.spec.response.is_some() {
            scrub(&api, &name).await?;
        }
        let remove_at = created(&challenge) + ctx.settings.challenge_ttl;
        if now >= remove_at {
            api.delete(&name, &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)?;
            return Ok(Action::await_change());
        }
        return Ok(requeue_at(remove_at, now));
    }
    if now >= created(&challenge) + ctx.settings.challenge_timeout {
        let message = format!("not verified within {}", crate::grant::human(ctx.settings.challenge_timeout));
        finish(&ctx, &challenge, ChallengePhase::Expired, "Expired", &message, None, "expired").await?;
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    let spec = &challenge.spec;
    let Some(response) = spec.response.clone() else {
        finish(&ctx, &challenge, ChallengePhase::Denied, "NoCode", "no code was given", None, "malformed").await?;
        return Ok(Action::await_change());
    };
    if spec.method != Method::Totp || ctx.verifier.method() != spec.method {
        let message = format!("method {} is not supported", spec.method);
        finish(&ctx, &challenge, ChallengePhase::Denied, "UnsupportedMethod", &message, None, "unsupported").await?;
        return Ok(Action::await_change());
    }

    let enrollments: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    let enrollment = enrollments.get_opt(&api::enrollment_name(&spec.user)).await?;
    let enrolled_phase = enrollment.as_ref().and_then(|e| e.status.as_ref()).and_then(|s| s.phase);
    let factor = ctx.load_factor(&spec.user).await?;
    let (secret, factor) = match (enrolled_phase, factor) {
        (
            Some(EnrollmentPhase::Active | EnrollmentPhase::Locked | EnrollmentPhase::AwaitingConfirmation),
            Some((s, f)),
        ) if f.seed.is_some() => (s, f),
        (Some(EnrollmentPhase::PendingApproval), _) => {
            let message = format!("{} is waiting for an admin to approve the enrollment", spec.user);
            finish(&ctx, &challenge, ChallengePhase::Denied, "NotEnrolled", &message, None, "not_enrolled").await?;
            return Ok(Action::await_change());
        }
        _ => {
            let message = format!("{} is not enrolled: run `kubectl stepup enroll` first", spec.user);
            finish(&ctx, &challenge, ChallengePhase::Denied, "NotEnrolled", &message, None, "not_enrolled").await?;
            return Ok(Action::await_change());
        }
    };
    let seed = factor.seed.as_ref().map(|s| s.to_vec()).unwrap_or_default();
    let attempt = challenge.metadata.uid.clone().unwrap_or_else(|| name.clone());
    let (verdict, next_state) =
        factor.state.judge(ctx.verifier.as_ref(), &seed, &response, &attempt, now, ctx.settings.limits);

    // Record first: the step is spent (or the failure counted) before anything else happens.
    if next_state != factor.state {
        let mut next = factor.clone();
        next.state = next_state.clone();
        ctx.store_factor(&spec.user, Some(&secret), &next).await?;
        if ctx.settings.crash_after_recording && matches!(verdict, Verdict::Accepted { .. }) {
            tracing::error!(challenge = %name, "test hook: exiting after recording the code's use");
            std::process::exit(86);
        }
    }

    match verdict {
        Verdict::Accepted { .. } | Verdict::AlreadyAccepted => {
            let grant = issue(&ctx, &challenge, now).await?;
            let until = grant.spec.expires_at.0;
            let message = format!("verified; grant {} is valid until {until}", grant.name_any());
            ctx.metrics.challenges.with_label_values(&[spec.method.as_str(), "verified"]).inc();
            finish(
                &ctx,
                &challenge,
                ChallengePhase::Verified,
                "Verified",
                &message,
                Some(grant.name_any()),
                "verified",
            )
            .await?;
        }
        Verdict::Rejected { why, locked_now } => {
            ctx.metrics.challenges.with_label_values(&[spec.method.as_str(), why.as_str()]).inc();
            let mut message = rejection_message(why).to_owned();
            if locked_now {
                message = format!(
                    "{message}. Too many failed attempts in a row: verification is now locked; ask an admin to run `kubectl stepup reset {}`",
                    spec.user
                );
                lock(&ctx, enrollment.as_ref(), &spec.user, next_state.consecutive_failures).await?;
            }
            let reason = match why {
                Rejection::Malformed => "Malformed",
                Rejection::Wrong => "WrongCode",
                Rejection::Replayed => "Replayed",
            };
            finish(&ctx, &challenge, ChallengePhase::Denied, reason, &message, None, why.as_str()).await?;
        }
        Verdict::RateLimited { retry_after } => {
            ctx.metrics.challenges.with_label_values(&[spec.method.as_str(), "rate_limited"]).inc();
            let message = format!("too many failed attempts; try again in {}", crate::grant::human(retry_after));
            finish(&ctx, &challenge, ChallengePhase::Denied, "RateLimited", &message, None, "rate_limited").await?;
        }
        Verdict::Locked => {
            ctx.metrics.challenges.with_label_values(&[spec.method.as_str(), "locked"]).inc();
            let message = format!(
                "verification for {} is locked after too many failed attempts; ask an admin to run `kubectl stepup reset {}`",
                spec.user, spec.user
            );
            finish(&ctx, &challenge, ChallengePhase::Denied, "Locked", &message, None, "locked").await?;
        }
    }
    Ok(Action::requeue(std::time::Duration::from_secs(1)))
}

/// Creates the grant, or finds it already there (a retry after a crash).
async fn issue(ctx: &Context, challenge: &StepUpChallenge, now: Timestamp) -> Result<StepUpGrant> {
    let grants: Api<StepUpGrant> = Api::all(ctx.client.clone());
    let mut wanted = grant_for(challenge, now, &ctx.settings);
    ctx.keys.grant_signer.sign_grant(&mut wanted);
    let name = wanted.name_any();
    match grants.create(&PostParams::default(), &wanted).await {
        Ok(created) => {
            ctx.metrics.grants_issued.with_label_values(&[created.spec.method.as_str()]).inc();
            let reason = created.spec.reason.clone().unwrap_or_default();
            let note = format!(
                "issued to {} ({}) until {}{}",
                created.spec.user,
                created.spec.method,
                created.spec.expires_at.0,
                if reason.is_empty() { String::new() } else { format!(", reason: {reason}") }
            );
            ctx.evidence.event(&created, EventType::Normal, "GrantIssued", note.clone(), None).await;
            audit::step(&audit::StepRecord {
                event: "grant.issued",
                user: &created.spec.user,
                object: &format!("StepUpGrant/{name}"),
                result: "issued",
                method: created.spec.method.as_str(),
                reason: &reason,
                grant: &name,
                message: &note,
            });
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(grants.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Marks the user's enrollment Locked and leaves the evidence.
async fn lock(ctx: &Context, enrollment: Option<&StepUpEnrollment>, user: &str, failures: u32) -> Result<()> {
    ctx.metrics.lockouts.inc();
    let Some(enrollment) = enrollment else { return Ok(()) };
    let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    let message = format!("locked after {failures} consecutive failed verifications; an admin must reset it");
    let patch = json!({"status": {
        "phase": EnrollmentPhase::Locked,
        "consecutiveFailures": failures,
        "lockedAt": Time(Timestamp::now()),
        "message": message,
    }});
    api.patch_status(&enrollment.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.evidence.event(enrollment, EventType::Warning, "UserLocked", format!("{user}: {message}"), None).await;
    audit::step(&audit::StepRecord {
        event: "enrollment.locked",
        user,
        object: &format!("StepUpEnrollment/{}", enrollment.name_any()),
        result: "locked",
        method: enrollment.spec.method.as_str(),
        reason: "",
        grant: "",
        message: &message,
    });
    Ok(())
}

/// Writes the final status, scrubs the code, and records the step.
async fn finish(
    ctx: &Context,
    challenge: &StepUpChallenge,
    phase: ChallengePhase,
    reason: &str,
    message: &str,
    grant: Option<String>,
    result: &str,
) -> Result<()> {
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    let name = challenge.name_any();
    let now = Timestamp::now();
    let existing = challenge.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let verified =
        condition("Verified", phase == ChallengePhase::Verified, reason, message, challenge.metadata.generation, now);
    let status = StepUpChallengeStatus {
        phase: Some(phase),
        grant_ref: grant.clone().map(|name| GrantRef { name }),
        message: Some(message.to_owned()),
        conditions: merge_condition(&existing, verified),
        observed_generation: challenge.metadata.generation,
    };
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await?;
    if challenge.spec.response.is_some() {
        scrub(&api, &name).await?;
    }
    let spec = &challenge.spec;
    let (event_type, event_reason) = match phase {
        ChallengePhase::Verified => (EventType::Normal, "ChallengeVerified"),
        ChallengePhase::Expired => (EventType::Normal, "ChallengeExpired"),
        _ => (EventType::Warning, "ChallengeFailed"),
    };
    let why = spec.reason.as_deref().unwrap_or("");
    let note =
        format!("{}: {message}{}", spec.user, if why.is_empty() { String::new() } else { format!(" (reason: {why})") });
    // Failures are rate-limited per user; successes always recorded.
    let rate_key = (phase != ChallengePhase::Verified).then(|| format!("{event_reason}/{}", spec.user));
    ctx.evidence.event(challenge, event_type, event_reason, note, rate_key).await;
    audit::step(&audit::StepRecord {
        event: match phase {
            ChallengePhase::Verified => "challenge.verified",
            ChallengePhase::Expired => "challenge.expired",
            _ => "challenge.denied",
        },
        user: &spec.user,
        object: &format!("StepUpChallenge/{name}"),
        result,
        method: spec.method.as_str(),
        reason: why,
        grant: grant.as_deref().unwrap_or(""),
        message,
    });
    Ok(())
}

/// Removes the one-time code from the challenge.
async fn scrub(api: &Api<StepUpChallenge>, name: &str) -> Result<()> {
    let patch = json!({"spec": {"response": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ()).or_else(ignore_not_found)
}

pub(crate) fn ignore_not_found(e: kube::Error) -> Result<()> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(Error::Kube(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GrantScope, StepUpChallengeSpec};

    fn challenge(duration: Option<&str>) -> StepUpChallenge {
        let mut c = StepUpChallenge::new(
            "alice-x1",
            StepUpChallengeSpec {
                user: "alice".into(),
                uid: Some("uid-alice-1".into()),
                method: Method::Totp,
                response: Some("123456".into()),
                reason: Some("INC-42".into()),
                duration: duration.map(|d| d.parse().unwrap()),
                scope: GrantScope { policies: vec![], namespaces: vec!["prod".into()] },
            },
        );
        c.metadata.uid = Some("0c9a8d74-9cb7-44dd-b98e-09fd62def2f4".into());
        c
    }

    #[test]
    fn the_grant_carries_the_challenge_and_a_capped_lifetime() {
        let now = crate::testing::t0();
        let settings = Settings::default();
        let g = grant_for(&challenge(Some("30m")), now, &settings);
        assert_eq!(g.name_any(), "alice-0c9a8d74-9cb7-44dd-b98e-09fd62def2f4");
        assert_eq!(g.spec.expires_at.0, now + SignedDuration::from_mins(30));
        assert_eq!(g.spec.uid.as_deref(), Some("uid-alice-1"));
        assert_eq!(g.spec.reason.as_deref(), Some("INC-42"));
        assert_eq!(g.spec.scope.namespaces, vec!["prod"]);
        assert_eq!(g.spec.challenge_ref.as_ref().unwrap().name, "alice-x1");
        assert_eq!(g.labels().get(api::USER_LABEL), Some(&api::user_label_value("alice")));

        let capped = grant_for(&challenge(Some("72h")), now, &settings);
        assert_eq!(capped.spec.expires_at.0, now + settings.max_grant_duration);
        let default = grant_for(&challenge(None), now, &settings);
        assert_eq!(default.spec.expires_at.0, now + settings.default_grant_duration);
        // The webhook accepts exactly this grant from the controller.
        assert_eq!(grant_for(&challenge(None), now, &settings).name_any(), g.name_any(), "idempotent name");
    }
}
