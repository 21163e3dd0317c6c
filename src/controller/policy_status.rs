//! StepUpPolicy status: `Ready` says whether the webhook can enforce the policy, with the
//! compile error (naming the field) when it cannot. Same compile function as the webhook.

use std::sync::Arc;

use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{Context, Result, condition, merge_condition};
use crate::{api::StepUpPolicy, policy::CompiledPolicy};

pub async fn reconcile(policy: Arc<StepUpPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let (ok, reason, message) = match CompiledPolicy::compile(&policy) {
        // Ready says the policy can be enforced; each webhook replica enforces it once its own
        // watch delivers it (README, "When a policy takes effect").
        Ok(_) => {
            (true, "Compiled", "valid; each webhook replica enforces it as soon as its watch delivers it".to_owned())
        }
        Err(e) => (false, "Invalid", e.to_string()),
    };
    let generation = policy.metadata.generation;
    let status = policy.status.clone().unwrap_or_default();
    let current = status.conditions.iter().find(|c| c.type_ == "Ready");
    let unchanged = current
        .is_some_and(|c| c.status == if ok { "True" } else { "False" } && c.reason == reason && c.message == message)
        && status.observed_generation == generation;
    if unchanged {
        return Ok(Action::await_change());
    }
    let ready = condition("Ready", ok, reason, &message, generation, Timestamp::now());
    let patch =
        json!({"status": {"conditions": merge_condition(&status.conditions, ready), "observedGeneration": generation}});
    let api: Api<StepUpPolicy> = Api::all(ctx.client.clone());
    api.patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if !ok {
        ctx.evidence.event(policy.as_ref(), EventType::Warning, "PolicyInvalid", message, None).await;
    }
    Ok(Action::await_change())
}
