//! StepUpGrant lifecycle: `Active` until `expiresAt`, then `Expired` and kept as evidence for
//! the retention period, then deleted. A finalizer lets the controller notice revocations
//! (a user deleting their grant) and record them; the webhook stops honouring a grant as soon
//! as its deletion starts.

use std::sync::Arc;

use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType, finalizer},
};
use serde_json::json;

use super::{Context, Error, Result, condition, merge_condition};
use crate::audit;
use stepup_core::api::{GrantPhase, StepUpGrant};

pub const FINALIZER: &str = "stepup.dev/evidence";

/// What should happen to a grant at `now`. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Mark it Active; look again at expiry.
    Active { until: Timestamp },
    /// Mark it Expired; delete it when the retention ends.
    Expired { delete_at: Timestamp },
    /// Retention is over.
    Delete,
}

pub fn lifecycle(grant: &StepUpGrant, now: Timestamp, retention: jiff::SignedDuration) -> Lifecycle {
    let expires = grant.spec.expires_at.0;
    let delete_at = expires + retention;
    if now >= delete_at {
        Lifecycle::Delete
    } else if now >= expires {
        Lifecycle::Expired { delete_at }
    } else {
        Lifecycle::Active { until: expires }
    }
}

pub async fn reconcile(grant: Arc<StepUpGrant>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<StepUpGrant> = Api::all(ctx.client.clone());
    finalizer::finalizer(&api, FINALIZER, grant, |event| async {
        match event {
            finalizer::Event::Apply(g) => apply(&g, &ctx).await,
            finalizer::Event::Cleanup(g) => cleanup(&g, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Conflict(other.to_string()),
    })
}

fn wait_until(at: Timestamp, now: Timestamp) -> Action {
    let wait: std::time::Duration = (at - now).try_into().unwrap_or_default();
    // Cap the wait so clock adjustments and long retentions are looked at again.
    Action::requeue(wait.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600)))
}

async fn apply(grant: &StepUpGrant, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let api: Api<StepUpGrant> = Api::all(ctx.client.clone());
    let phase = grant.status.as_ref().and_then(|s| s.phase);
    if !ctx.keys.grant_verifier.verifies(grant) {
        if phase != Some(GrantPhase::Forged) {
            let message = "not signed by the stepup controller: someone else wrote this grant; it permits nothing";
            set_phase(&api, grant, GrantPhase::Forged, "Forged", message).await?;
            ctx.metrics.forged_grants.inc();
            let note = format!("{}: forged grant {} (not signed by the controller)", grant.spec.user, grant.name_any());
            ctx.evidence.event(grant, EventType::Warning, "GrantForged", note, None).await;
            step(grant, "grant.forged", "forged", message);
        }
        // Kept as evidence for as long as a real grant would be, then collected.
        let delete_at = grant.spec.expires_at.0 + ctx.settings.grant_retention;
        if now >= delete_at {
            api.delete(&grant.name_any(), &DeleteParams::default()).await?;
            return Ok(Action::await_change());
        }
        return Ok(wait_until(delete_at, now));
    }
    match lifecycle(grant, now, ctx.settings.grant_retention) {
        Lifecycle::Active { until } => {
            if phase.is_none() {
                set_phase(&api, grant, GrantPhase::Active, "Issued", "usable until expiry").await?;
            }
            Ok(wait_until(until, now))
        }
        Lifecycle::Expired { delete_at } => {
            if phase != Some(GrantPhase::Expired) {
                let message = format!("expired at {}; kept as evidence until {delete_at}", grant.spec.expires_at.0);
                set_phase(&api, grant, GrantPhase::Expired, "Expired", &message).await?;
                let note = format!("{}: grant expired", grant.spec.user);
                ctx.evidence.event(grant, EventType::Normal, "GrantExpired", note, None).await;
                step(grant, "grant.expired", "expired", &message);
            }
            Ok(wait_until(delete_at, now))
        }
        Lifecycle::Delete => {
            api.delete(&grant.name_any(), &DeleteParams::default()).await?;
            Ok(Action::await_change())
        }
    }
}

async fn cleanup(grant: &StepUpGrant, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    if now < grant.spec.expires_at.0 {
        let message = format!("revoked before its expiry at {}", grant.spec.expires_at.0);
        let note = format!("{}: grant revoked", grant.spec.user);
        ctx.evidence.event(grant, EventType::Normal, "GrantRevoked", note, None).await;
        step(grant, "grant.revoked", "revoked", &message);
    } else {
        step(grant, "grant.removed", "removed", "retention period over");
    }
    Ok(Action::await_change())
}

async fn set_phase(
    api: &Api<StepUpGrant>,
    grant: &StepUpGrant,
    phase: GrantPhase,
    reason: &str,
    message: &str,
) -> Result<()> {
    let existing = grant.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let usable =
        condition("Usable", phase == GrantPhase::Active, reason, message, grant.metadata.generation, Timestamp::now());
    let patch = json!({"status": {"phase": phase, "conditions": merge_condition(&existing, usable)}});
    api.patch_status(&grant.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn step(grant: &StepUpGrant, event: &str, result: &str, message: &str) {
    audit::step(&audit::StepRecord {
        event,
        user: &grant.spec.user,
        object: &format!("StepUpGrant/{}", grant.name_any()),
        result,
        method: grant.spec.method.as_str(),
        reason: grant.spec.reason.as_deref().unwrap_or(""),
        grant: &grant.name_any(),
        message,
        correlation: stepup_core::api::grant_correlation(grant).unwrap_or_default(),
        credential: None,
    });
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use stepup_core::testing::{grant, minutes, t0};

    #[test]
    fn grants_expire_on_time_and_are_kept_for_the_retention() {
        let g = grant("g", "alice").expires(t0() + minutes(60)).build();
        let retention = SignedDuration::from_hours(24);
        assert_eq!(lifecycle(&g, t0(), retention), Lifecycle::Active { until: t0() + minutes(60) });
        assert_eq!(
            lifecycle(&g, t0() + minutes(60), retention),
            Lifecycle::Expired { delete_at: t0() + minutes(60) + retention }
        );
        assert_eq!(lifecycle(&g, t0() + minutes(60) + retention, retention), Lifecycle::Delete);
    }
}
