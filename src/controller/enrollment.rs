//! StepUpEnrollment: approve (or self-service), generate the seed, seal it to the plugin's
//! ephemeral key, confirm the first code; re-enrollment needs a current code from the old
//! device or an admin reset. The seed only ever lives in the factor Secret and, sealed, in
//! the enrollment's status until confirmation.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::{Value, json};

use super::{
    Context, Result, condition,
    factor::{Factor, FactorState, Verdict},
    merge_condition,
};
use crate::{
    api::{self, EnrollmentPhase, StepUpEnrollment},
    audit,
    verify::{seal, totp},
};

/// A status change to write, as a merge patch.
#[derive(Default)]
struct StatusUpdate {
    phase: Option<EnrollmentPhase>,
    message: Option<String>,
    /// `Some(None)` removes the sealed secret.
    sealed: Option<Option<String>>,
    failures: Option<u32>,
    locked_at: Option<Option<Timestamp>>,
}

fn phase_of(e: &StepUpEnrollment) -> Option<EnrollmentPhase> {
    e.status.as_ref().and_then(|s| s.phase)
}

pub async fn reconcile(enrollment: Arc<StepUpEnrollment>, ctx: Arc<Context>) -> Result<Action> {
    if enrollment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let e = enrollment.as_ref();
    let user = e.spec.user.as_str();
    let now = Timestamp::now();
    let loaded = ctx.load_factor(user).await?;
    let (secret, mut factor) = match loaded {
        Some((s, f)) => (Some(s), f),
        None => (None, Factor::default()),
    };
    let limits = ctx.settings.limits;

    // An admin reset: unlock, forget failures, allow re-enrollment without the old device.
    if let Some(admin) = e.annotations().get(api::RESET_BY_ANNOTATION).cloned() {
        factor.state = factor.state.reset();
        ctx.store_factor(user, secret.as_ref(), &factor).await?;
        let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
        let unmark = json!({"metadata": {"annotations": {api::RESET_BY_ANNOTATION: null}}});
        api.patch(&e.name_any(), &PatchParams::default(), &Patch::Merge(&unmark)).await?;
        let phase = if factor.seed.is_some() { EnrollmentPhase::Active } else { EnrollmentPhase::PendingApproval };
        let message = format!("reset by {admin}: unlocked; the next enrollment needs no code from the old device");
        update(
            &ctx,
            e,
            StatusUpdate {
                phase: Some(phase),
                message: Some(message.clone()),
                failures: Some(0),
                locked_at: Some(None),
                ..Default::default()
            },
        )
        .await?;
        record(&ctx, e, EventType::Normal, "EnrollmentReset", "enrollment.reset", "reset", &message).await;
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }

    if factor.state.locked_at.is_some() {
        if phase_of(e) != Some(EnrollmentPhase::Locked) {
            update(
                &ctx,
                e,
                StatusUpdate {
                    phase: Some(EnrollmentPhase::Locked),
                    message: Some("locked after too many failed verifications; an admin must reset it".into()),
                    failures: Some(factor.state.consecutive_failures),
                    locked_at: Some(factor.state.locked_at),
                    ..Default::default()
                },
            )
            .await?;
        }
        return Ok(Action::await_change());
    }

    let key = e.spec.public_key.clone();
    // A seed is sealed to this key and waits for its first code.
    if factor.pending_key.as_deref() == Some(key.as_str()) && factor.pending_seed.is_some() {
        return confirm(&ctx, e, secret.as_ref(), factor, now).await;
    }
    // Enrolled with this key: steady state.
    if factor.seed.is_some() && factor.seed_key.as_deref() == Some(key.as_str()) {
        if phase_of(e) != Some(EnrollmentPhase::Active) || e.status.as_ref().is_some_and(|s| s.sealed_secret.is_some())
        {
            update(
                &ctx,
                e,
                StatusUpdate {
                    phase: Some(EnrollmentPhase::Active),
                    message: Some("enrolled".into()),
                    sealed: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        }
        if e.spec.confirmation.is_some() {
            scrub(&ctx, e).await?;
        }
        return Ok(Action::await_change());
    }

    // A new key: a first enrollment, or a re-enrollment.
    if factor.seed.is_some() {
        if !factor.state.reenroll_allowed {
            let Some(code) = e.spec.confirmation.clone() else {
                // Keep a refusal already reported (scrubbing the code brings us back here).
                let current = e.status.as_ref().and_then(|s| s.message.as_deref()).unwrap_or("");
                if !current.starts_with("re-enrollment") {
                    let message = "re-enrollment needs a current code from your existing authenticator in \
                                   spec.confirmation (kubectl stepup enroll asks for it), or an admin reset";
                    update(&ctx, e, StatusUpdate { message: Some(message.into()), ..Default::default() }).await?;
                }
                return Ok(Action::await_change());
            };
            let seed = factor.seed.as_ref().map(|s| s.to_vec()).unwrap_or_default();
            let attempt = format!("reenroll:{key}");
            let (verdict, next) = factor.state.judge(ctx.verifier.as_ref(), &seed, &code, &attempt, now, limits);
            let accepted = matches!(verdict, Verdict::Accepted { .. } | Verdict::AlreadyAccepted);
            if next != factor.state {
                factor.state = next;
                ctx.store_factor(user, secret.as_ref(), &factor).await?;
            }
            if !accepted {
                return refuse_code(&ctx, e, &verdict, &factor.state, "re-enrollment").await;
            }
        }
        factor.state.reenroll_allowed = false;
    } else {
        let approved_by = e.annotations().get(api::APPROVED_BY_ANNOTATION).cloned();
        if approved_by.is_none() && !ctx.settings.self_service_enrollment {
            if phase_of(e) != Some(EnrollmentPhase::PendingApproval) {
                let message = format!("waiting for an admin to approve: kubectl stepup approve {user}");
                update(
                    &ctx,
                    e,
                    StatusUpdate {
                        phase: Some(EnrollmentPhase::PendingApproval),
                        message: Some(message.clone()),
                        ..Default::default()
                    },
                )
                .await?;
                record(
                    &ctx,
                    e,
                    EventType::Normal,
                    "EnrollmentPendingApproval",
                    "enrollment.pending",
                    "pending",
                    &message,
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    }

    // Seal a fresh seed to the new key.
    let seed = totp::generate_seed();
    let sealed = seal::seal(&key, &seed)?;
    factor.pending_seed = Some(seed);
    factor.pending_key = Some(key);
    ctx.store_factor(user, secret.as_ref(), &factor).await?;
    if e.spec.confirmation.is_some() {
        scrub(&ctx, e).await?;
    }
    let approval = match e.annotations().get(api::APPROVED_BY_ANNOTATION) {
        Some(admin) if factor.seed.is_none() => format!(" (approved by {admin})"),
        _ => String::new(),
    };
    let message = format!("scan the QR code and confirm with the first code{approval}");
    update(
        &ctx,
        e,
        StatusUpdate {
            phase: Some(EnrollmentPhase::AwaitingConfirmation),
            message: Some(message.clone()),
            sealed: Some(Some(sealed)),
            ..Default::default()
        },
    )
    .await?;
    record(&ctx, e, EventType::Normal, "EnrollmentStarted", "enrollment.started", "sealed", &message).await;
    Ok(Action::await_change())
}

/// The first code of a sealed seed.
async fn confirm(
    ctx: &Context,
    e: &StepUpEnrollment,
    secret: Option<&Secret>,
    mut factor: Factor,
    now: Timestamp,
) -> Result<Action> {
    let user = e.spec.user.as_str();
    let Some(code) = e.spec.confirmation.clone() else {
        // Waiting for the user; make sure the sealed copy is visible (it is lost if the status
        // was ever cleared, so seal the pending seed again).
        let has_sealed = e.status.as_ref().is_some_and(|s| s.sealed_secret.is_some());
        if !has_sealed || phase_of(e) != Some(EnrollmentPhase::AwaitingConfirmation) {
            let pending = factor.pending_seed.as_ref().map(|s| s.to_vec()).unwrap_or_default();
            let sealed = seal::seal(&e.spec.public_key, &pending)?;
            update(
                ctx,
                e,
                StatusUpdate {
                    phase: Some(EnrollmentPhase::AwaitingConfirmation),
                    message: Some("scan the QR code and confirm with the first code".into()),
                    sealed: Some(Some(sealed)),
                    ..Default::default()
                },
            )
            .await?;
        }
        return Ok(Action::await_change());
    };
    let pending = factor.pending_seed.as_ref().map(|s| s.to_vec()).unwrap_or_default();
    let (verdict, next) =
        factor.state.judge_confirmation(ctx.verifier.as_ref(), &pending, &code, now, ctx.settings.limits);
    factor.state = next;
    if let Verdict::Accepted { .. } = verdict {
        factor.seed = factor.pending_seed.take();
        factor.seed_key = factor.pending_key.take();
        ctx.store_factor(user, secret, &factor).await?;
        scrub(ctx, e).await?;
        update(
            ctx,
            e,
            StatusUpdate {
                phase: Some(EnrollmentPhase::Active),
                message: Some("enrolled".into()),
                sealed: Some(None),
                failures: Some(0),
                ..Default::default()
            },
        )
        .await?;
        ctx.metrics.challenges.with_label_values(&[e.spec.method.as_str(), "enrolled"]).inc();
        record(ctx, e, EventType::Normal, "EnrollmentConfirmed", "enrollment.confirmed", "enrolled", "enrolled").await;
        return Ok(Action::await_change());
    }
    ctx.store_factor(user, secret, &factor).await?;
    refuse_code(ctx, e, &verdict, &factor.state, "confirmation").await
}

/// Reports a code that did not do, and locks when that was one failure too many.
async fn refuse_code(
    ctx: &Context,
    e: &StepUpEnrollment,
    verdict: &Verdict,
    state: &FactorState,
    what: &str,
) -> Result<Action> {
    scrub(ctx, e).await?;
    let (phase, message) = match verdict {
        Verdict::Rejected { why, locked_now: true } => {
            ctx.metrics.lockouts.inc();
            (
                Some(EnrollmentPhase::Locked),
                format!("{what} code refused ({why}); locked after too many failures, an admin must reset it"),
            )
        }
        Verdict::Rejected { why, .. } => (None, format!("{what} code refused: {why}")),
        Verdict::RateLimited { retry_after } => {
            (None, format!("too many failed attempts; try again in {}", crate::grant::human(*retry_after)))
        }
        Verdict::Locked => (Some(EnrollmentPhase::Locked), "locked; an admin must reset it".into()),
        Verdict::Accepted { .. } | Verdict::AlreadyAccepted => (None, String::new()),
    };
    update(
        ctx,
        e,
        StatusUpdate {
            phase,
            message: Some(message.clone()),
            failures: Some(state.consecutive_failures),
            locked_at: state.locked_at.map(Some),
            ..Default::default()
        },
    )
    .await?;
    let reason = if phase == Some(EnrollmentPhase::Locked) { "UserLocked" } else { "EnrollmentCodeRefused" };
    ctx.metrics.challenges.with_label_values(&[e.spec.method.as_str(), verdict.label()]).inc();
    record(ctx, e, EventType::Warning, reason, "enrollment.refused", verdict.label(), &message).await;
    Ok(Action::await_change())
}

async fn update(ctx: &Context, e: &StepUpEnrollment, u: StatusUpdate) -> Result<()> {
    let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    let mut status = serde_json::Map::new();
    let phase = u.phase.or_else(|| phase_of(e));
    if let Some(p) = u.phase {
        status.insert("phase".into(), json!(p));
    }
    if let Some(m) = &u.message {
        status.insert("message".into(), json!(m));
    }
    if let Some(sealed) = u.sealed {
        status.insert("sealedSecret".into(), sealed.map_or(Value::Null, Value::String));
    }
    if let Some(f) = u.failures {
        status.insert("consecutiveFailures".into(), json!(f));
    }
    if let Some(locked) = u.locked_at {
        status.insert("lockedAt".into(), locked.map_or(Value::Null, |t| json!(Time(t))));
    }
    let existing = e.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let ready = phase == Some(EnrollmentPhase::Active);
    let reason = match phase {
        Some(EnrollmentPhase::Active) => "Enrolled",
        Some(EnrollmentPhase::Locked) => "Locked",
        Some(EnrollmentPhase::AwaitingConfirmation) => "AwaitingConfirmation",
        _ => "PendingApproval",
    };
    let message = u.message.clone().unwrap_or_default();
    let cond = condition("Ready", ready, reason, &message, e.metadata.generation, Timestamp::now());
    status.insert("conditions".into(), json!(merge_condition(&existing, cond)));
    status.insert("observedGeneration".into(), json!(e.metadata.generation));
    api.patch_status(&e.name_any(), &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await?;
    Ok(())
}

/// Removes the confirmation code from the spec.
async fn scrub(ctx: &Context, e: &StepUpEnrollment) -> Result<()> {
    if e.spec.confirmation.is_none() {
        return Ok(());
    }
    let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"confirmation": null}});
    api.patch(&e.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn record(
    ctx: &Context,
    e: &StepUpEnrollment,
    type_: EventType,
    reason: &str,
    event: &str,
    result: &str,
    message: &str,
) {
    let user = e.spec.user.as_str();
    let rate_key = (type_ == EventType::Warning).then(|| format!("{reason}/{user}"));
    ctx.evidence.event(e, type_, reason, format!("{user}: {message}"), rate_key).await;
    audit::step(&audit::StepRecord {
        event,
        user,
        object: &format!("StepUpEnrollment/{}", e.name_any()),
        result,
        method: e.spec.method.as_str(),
        reason: "",
        grant: "",
        message,
    });
}
