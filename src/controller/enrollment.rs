//! StepUpEnrollment: the executor of [`steps::enrollment::next_step`]. It fetches the facts
//! (the factor Secret, the opened confirmation, the bootstrap), asks the pure decision for the
//! step, and performs it in a safe order: the bootstrap claim and the factor are written before
//! anything that depends on them becomes visible. The seed only ever lives encrypted in the
//! factor Secret and, sealed to the plugin's key, in the enrollment's status until confirmed.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Map, Value, json};

use super::{
    Context, Result, bootstrap, condition,
    factor::{Factor, FactorRead},
    merge_condition,
    steps::{
        enrollment::{Desired, EnrollmentSettings, Facts, Sealed, Step, next_step},
        security_keys,
    },
};
use stepup_core::{
    api::{EnrollmentPhase, Method, StepUpEnrollment},
    verify::{
        response::{self, EnrollmentPurpose},
        seal, totp,
    },
};

pub async fn reconcile(enrollment: Arc<StepUpEnrollment>, ctx: Arc<Context>) -> Result<Action> {
    if enrollment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let e = enrollment.as_ref();
    let user = e.spec.user.as_str();
    let (secret, factor) = ctx.load_factor(user).await?;
    let purposes: &[EnrollmentPurpose] = match e.spec.method {
        Method::WebAuthn => &[EnrollmentPurpose::KeyRegistration],
        _ => &[EnrollmentPurpose::Confirmation, EnrollmentPurpose::Reenrollment],
    };
    let expected: Vec<_> = purposes.iter().map(|p| (*p, response::enrollment_binding(e, *p))).collect();
    let confirmation = response::open(&ctx.keys.responses, e.spec.confirmation.as_deref(), &expected);
    let bootstrap = bootstrap::view(&ctx);
    let fresh_seed = totp::generate_seed();
    let response_key = ctx.keys.responses.public_base64();
    let settings = EnrollmentSettings {
        self_service: ctx.settings.self_service_enrollment,
        approval_window: ctx.settings.approval_window,
        max_clock_skew: ctx.settings.max_clock_skew,
        limits: ctx.settings.limits,
        response_key: &response_key,
        verifier: ctx.verifier.as_ref(),
    };
    let now = Timestamp::now();
    let step = if e.spec.method == Method::WebAuthn {
        let existing = match &factor {
            FactorRead::Found(f) => security_keys::credentials(f),
            _ => Vec::new(),
        };
        // The user handle: opaque and stable, never the name.
        let handle = stepup_core::api::user_label_value(user);
        let fresh = ctx.relying_party.start_registration(user, handle.as_bytes(), &existing, now)?;
        let offered = |k: &str| e.metadata.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let voucher = match offered(stepup_core::api::VOUCHING_GRANT_ANNOTATION) {
            Some(name) => Some(read_voucher(&ctx, &name).await?),
            None => None,
        };
        let remover = match offered(stepup_core::api::REMOVAL_GRANT_ANNOTATION) {
            Some(name) => Some(read_voucher(&ctx, &name).await?),
            None => None,
        };
        let facts = security_keys::Facts {
            enrollment: e,
            factor: &factor,
            confirmation: &confirmation,
            bootstrap: &bootstrap,
            fresh: &fresh,
            voucher: voucher.as_ref(),
            remover: remover.as_ref(),
            now,
        };
        security_keys::next_step(&facts, &settings, &ctx.relying_party)
    } else {
        let facts = Facts {
            enrollment: e,
            factor: &factor,
            confirmation: &confirmation,
            bootstrap: &bootstrap,
            fresh_seed: &fresh_seed,
            now,
        };
        next_step(&facts, &settings)
    };
    let current = match &factor {
        FactorRead::Found(f) => Some(f),
        _ => None,
    };
    execute(&ctx, e, secret.as_ref(), current, step).await
}

/// A grant offered to vouch for a new security key or a removal, if it is one the controller signed.
async fn read_voucher(ctx: &Context, name: &str) -> Result<Result<security_keys::Voucher, String>> {
    let grants: Api<stepup_core::api::StepUpGrant> = Api::all(ctx.client.clone());
    let Some(grant) = grants.get_opt(name).await? else {
        return Ok(Err("there is no such grant".into()));
    };
    if !ctx.keys.grant_verifier.verifies(&grant) {
        return Ok(Err("it is not signed by the stepup controller".into()));
    }
    let spec = grant.spec;
    Ok(Ok(security_keys::Voucher {
        name: name.to_owned(),
        user: spec.user,
        method: spec.method,
        issued_at: spec.issued_at.0,
        reason: spec.reason,
        scope: spec.scope,
        revoked: grant.metadata.deletion_timestamp.is_some(),
    }))
}

async fn execute(
    ctx: &Context,
    e: &StepUpEnrollment,
    secret: Option<&Secret>,
    current: Option<&Factor>,
    step: Step,
) -> Result<Action> {
    let user = e.spec.user.as_str();
    let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    let name = e.name_any();
    if let Some(change) = &step.bootstrap {
        bootstrap::apply(ctx, change, user).await?;
    }
    if let Some(factor) = &step.factor {
        ctx.store_factor(user, secret, factor).await?;
    }
    let factor = step.factor.as_ref().or(current);
    write_status(ctx, e, &step.status, factor).await?;
    if step.scrub_confirmation && e.spec.confirmation.is_some() {
        let patch = json!({"spec": {"confirmation": null}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if !step.unmark.is_empty() {
        let marks: Map<String, Value> = step.unmark.iter().map(|k| ((*k).to_owned(), Value::Null)).collect();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": marks}}))).await?;
    }
    for record in &step.records {
        ctx.record(e, user, e.spec.method.as_str(), record).await;
        if record.reason == "EnrollmentConfirmed" {
            ctx.metrics.challenges.with_label_values(&[e.spec.method.as_str(), "enrolled"]).inc();
        }
    }
    Ok(match step.recheck_at {
        Some(at) => {
            let wait: std::time::Duration = at.duration_since(Timestamp::now()).try_into().unwrap_or_default();
            Action::requeue(wait.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600)))
        }
        None => Action::await_change(),
    })
}

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(Time(t)))
}

/// Writes the desired status when it differs from the current one (a merge patch that also
/// removes what no longer applies).
async fn write_status(ctx: &Context, e: &StepUpEnrollment, d: &Desired, factor: Option<&Factor>) -> Result<()> {
    let current = e.status.clone().unwrap_or_default();
    let sealed = match d.sealed {
        Sealed::Clear => None,
        Sealed::Keep if current.sealed_secret.is_some() => current.sealed_secret.clone(),
        Sealed::Keep | Sealed::Fresh => {
            let pending = match e.spec.method {
                // The registration's options: their challenge is what only this key's holder may sign.
                Method::WebAuthn => factor
                    .and_then(|f| f.webauthn.pending.as_ref())
                    .map(|p| zeroize::Zeroizing::new(p.options.as_bytes().to_vec()))
                    .unwrap_or_default(),
                _ => factor.and_then(|f| f.pending.as_ref()).map(|p| p.seed.clone()).unwrap_or_default(),
            };
            Some(seal::seal(&e.spec.public_key, &pending)?)
        }
    };
    let now = Timestamp::now();
    let generation = e.metadata.generation;
    let ready = condition("Ready", d.phase == EnrollmentPhase::Active, d.reason, &d.message, generation, now);
    let mut conditions = merge_condition(&current.conditions, ready);
    if let Some(code) = &d.last_code {
        let last = condition("LastCode", code.accepted, code.reason, &code.message, generation, now);
        conditions = merge_condition(&conditions, last);
        // A new result always moves the time: the plugin tells one refusal from the next by it.
        if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "LastCode") {
            c.last_transition_time = Time(now);
            c.observed_generation = generation;
        }
    }
    let wanted = stepup_core::api::StepUpEnrollmentStatus {
        phase: Some(d.phase),
        sealed_secret: sealed.clone(),
        response_key: Some(d.response_key.clone()),
        key_fingerprint: Some(d.key_fingerprint.clone()),
        enrolled_key_fingerprint: d.enrolled_key_fingerprint.clone(),
        confirm_by: d.confirm_by.map(Time),
        consecutive_failures: d.failures as i32,
        locked_at: d.locked_at.map(Time),
        locked_until: d.locked_until.map(Time),
        credentials: d.credentials.clone(),
        message: Some(d.message.clone()),
        conditions,
        observed_generation: generation,
    };
    if wanted == current {
        return Ok(());
    }
    let status = json!({
        "phase": wanted.phase,
        "sealedSecret": sealed,
        "responseKey": wanted.response_key,
        "keyFingerprint": wanted.key_fingerprint,
        "enrolledKeyFingerprint": wanted.enrolled_key_fingerprint,
        "confirmBy": time(d.confirm_by),
        "consecutiveFailures": wanted.consecutive_failures,
        "lockedAt": time(d.locked_at),
        "lockedUntil": time(d.locked_until),
        "credentials": if wanted.credentials.is_empty() { Value::Null } else { json!(wanted.credentials) },
        "message": wanted.message,
        "conditions": wanted.conditions,
        "observedGeneration": wanted.observed_generation,
    });
    let api: Api<StepUpEnrollment> = Api::all(ctx.client.clone());
    api.patch_status(&e.name_any(), &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await?;
    Ok(())
}
