//! StepUpChallenge: the executor of [`steps::challenge::next_step`]. Order matters: the spent
//! time step is persisted (with optimistic concurrency) before the grant exists; the grant's
//! name derives from the challenge UID, so a crash at any point yields exactly one grant; the
//! Verified status is written only if the challenge is unchanged since it was read, so a
//! withdrawal that raced the issuing is noticed and the grant revoked. I/O.

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType, reflector::Store},
};
use serde_json::json;

use super::{
    Context, CrashPoint, Error, Result, Settings, condition,
    factor::FactorRead,
    merge_condition,
    oidc::Refusal,
    steps::{
        Record,
        challenge::{ChallengeSettings, Facts, Need, Step, Verdicts, may_issue, next_step},
    },
};
use crate::audit;
use stepup_core::{
    api::{
        self, ChallengePhase, ChallengeRef, GrantRef, StepUpChallenge, StepUpChallengeStatus, StepUpGrant,
        StepUpGrantSpec, StepUpPolicy,
    },
    limits,
    verify::{
        oidc::{self, SignIn, TokenError},
        response::{self, Opened},
    },
};

/// The challenge reconciler's context: the shared one, and the controller's cache of
/// challenges, from which the per-user limits are judged without an API call.
pub struct ChallengeContext {
    pub ctx: Arc<Context>,
    pub store: Store<StepUpChallenge>,
    /// The policies, for judging an identity-provider sign-in before a grant is issued for it.
    pub policies: Store<StepUpPolicy>,
}

/// The valid policies accepting `OIDC` that a grant for `c` would be for.
fn oidc_policies(c: &StepUpChallenge, policies: &Store<StepUpPolicy>) -> Vec<stepup_core::policy::CompiledPolicy> {
    if c.spec.method != api::Method::Oidc {
        return Vec::new();
    }
    let scope = &c.spec.scope.policies;
    policies
        .state()
        .iter()
        .filter_map(|p| stepup_core::policy::CompiledPolicy::compile(p).ok())
        .filter(|p| p.accepts_method(api::Method::Oidc) && (scope.is_empty() || scope.contains(&p.name)))
        .collect()
}

/// Whether a `WebAuthn` challenge's ceremony must demand user verification: some valid policy
/// its grant would be for (its scope's, or any) accepts keys only with it.
fn verify_user(c: &StepUpChallenge, policies: &Store<StepUpPolicy>) -> bool {
    let scope = &c.spec.scope.policies;
    policies.state().iter().filter_map(|p| stepup_core::policy::CompiledPolicy::compile(p).ok()).any(|p| {
        p.require_user_verification
            && p.accepts_method(api::Method::WebAuthn)
            && (scope.is_empty() || scope.contains(&p.name))
    })
}

/// The grant a verified challenge earns. Pure: name from the challenge UID, lifetime the
/// requested duration capped by the maximum.
/// The refusal the challenge answers, when the plugin named one in the only form recorded.
fn correlation(challenge: &StepUpChallenge) -> Option<&str> {
    challenge.spec.correlation.as_deref().filter(|id| api::is_correlation(id))
}

/// For an identity-provider sign-in, the grant is issued at its `auth_time` (when the person
/// proved the factor, which policies' maxAge judge) and records its acr and amr.
pub fn grant_for(
    challenge: &StepUpChallenge,
    now: Timestamp,
    settings: &Settings,
    sign_in: Option<&SignIn>,
    security_key: Option<&super::factor::KeyUse>,
) -> StepUpGrant {
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
            annotations: correlation(challenge)
                .map(|id| BTreeMap::from([(api::CORRELATION_ANNOTATION.to_owned(), id.to_owned())])),
            ..Default::default()
        },
        spec: StepUpGrantSpec {
            user: spec.user.clone(),
            uid: spec.uid.clone().filter(|u| !u.is_empty()),
            method: spec.method,
            reason: spec.reason.clone().filter(|r| !r.trim().is_empty()),
            issued_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                sign_in
                    .map_or(now, |s| Timestamp::from_second(s.auth_time.as_second()).unwrap_or(s.auth_time).min(now)),
            ),
            expires_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now + lifetime),
            acr: sign_in.and_then(|s| s.acr.clone()),
            amr: sign_in.map(|s| s.amr.clone()).unwrap_or_default(),
            credential_id_hash: security_key.map(|k| k.id_hash.clone()),
            user_verified: security_key.is_some_and(|k| k.user_verified),
            scope: spec.scope.clone(),
            challenge_ref: Some(ChallengeRef { name: challenge.name_any(), uid }),
            signature: None,
        },
        status: None,
    }
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = (at - now).try_into().unwrap_or(std::time::Duration::ZERO);
    Action::requeue(wait.max(std::time::Duration::from_secs(1)))
}

pub async fn reconcile(challenge: Arc<StepUpChallenge>, cc: Arc<ChallengeContext>) -> Result<Action> {
    let ctx = cc.ctx.as_ref();
    let c = challenge.as_ref();
    let settings = ChallengeSettings {
        timeout: ctx.settings.challenge_timeout,
        ttl: ctx.settings.challenge_ttl,
        max_clock_skew: ctx.settings.max_clock_skew,
        limits: ctx.settings.limits,
        load_limits: ctx.settings.challenge_limits,
        verifier: ctx.verifier.as_ref(),
        relying_party: &ctx.relying_party,
    };
    let opened =
        response::open(&ctx.keys.responses, c.spec.response.as_deref(), &[((), response::challenge_binding(c))]);
    let load = {
        let all = cc.store.state();
        limits::load_before(c, all.iter().map(|a| a.as_ref()), ctx.settings.challenge_limits.window)
    };
    let mut factor: Option<(Option<k8s_openapi::api::core::v1::Secret>, FactorRead)> = None;
    let mut grant_exists = None;
    let mut sign_in = None;
    let mut fresh_ceremony = None;
    let oidc_policies = oidc_policies(c, &cc.policies);
    loop {
        let facts = Facts {
            challenge: c,
            response: &opened,
            load,
            factor: factor.as_ref().map(|(_, f)| f),
            grant_exists,
            sign_in: sign_in.as_ref(),
            oidc_policies: &oidc_policies,
            fresh_ceremony: fresh_ceremony.as_ref(),
            now: Timestamp::now(),
        };
        match next_step(&facts, &settings) {
            Step::Fetch(Need::Factor) => factor = Some(ctx.load_factor(&c.spec.user).await?),
            Step::Fetch(Need::SignIn) => sign_in = Some(verify_sign_in(ctx, c, &opened).await),
            Step::Fetch(Need::Ceremony) => {
                let keys = match factor.as_ref() {
                    Some((_, FactorRead::Found(f))) => super::steps::security_keys::credentials(f),
                    _ => Vec::new(),
                };
                let demand = verify_user(c, &cc.policies);
                let started = ctx.relying_party.start_authentication(&c.spec.user, &keys, demand, Timestamp::now())?;
                fresh_ceremony = Some(started);
            }
            Step::Offer { webauthn, options, recheck_at } => {
                let (secret, read) = factor.unwrap_or((None, FactorRead::Missing));
                return offer(ctx, c, secret.as_ref(), read, webauthn, options, recheck_at).await;
            }
            Step::Fetch(Need::Grant) => {
                let grants: Api<StepUpGrant> = Api::all(ctx.client.clone());
                grant_exists = Some(grants.get_opt(&grant_name(c)).await?.is_some());
            }
            Step::Claim => return claim(ctx, c).await,
            Step::Withdrawn { revoke, record } => return withdrawn(ctx, c, revoke, record).await,
            Step::Retire { scrub, delete_at } => return retire(ctx, c, scrub, delete_at).await,
            Step::Idle => return Ok(Action::await_change()),
            Step::Verdict(v) => {
                let (secret, read) = factor.unwrap_or((None, FactorRead::Missing));
                let found = match read {
                    FactorRead::Found(f) => Some(f),
                    _ => None,
                };
                return verdict(ctx, c, secret.as_ref(), found, v).await;
            }
        }
    }
}

/// Keeps a new ceremony in the person's factor (before anyone can answer it), then shows its
/// options in the challenge's status; waits for the answer until the deadline.
async fn offer(
    ctx: &Context,
    c: &StepUpChallenge,
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
    read: FactorRead,
    webauthn: Option<Box<super::factor::WebAuthnFactor>>,
    options: Option<String>,
    recheck_at: Timestamp,
) -> Result<Action> {
    if let (Some(webauthn), FactorRead::Found(mut factor)) = (webauthn, read) {
        factor.webauthn = *webauthn;
        ctx.store_factor(&c.spec.user, secret, &factor).await?;
    }
    if let Some(options) = options {
        let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
        let patch = json!({"status": {"phase": ChallengePhase::Pending, "webauthnOptions": options}});
        match api.patch_status(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(requeue_at(recheck_at, Timestamp::now()))
}

/// The ID token in the challenge's response, verified for this challenge and its requester.
async fn verify_sign_in(ctx: &Context, c: &StepUpChallenge, opened: &Opened<()>) -> Result<SignIn, Refusal> {
    let Some(providers) = &ctx.identity_providers else { return Err(Refusal::NotConfigured) };
    let Opened::Code(response, ()) = opened else { return Err(TokenError::Malformed.into()) };
    let redeemed;
    let token = match oidc::sign_in_response(response)? {
        oidc::SignInResponse::IdToken(token) => token,
        oidc::SignInResponse::Code(code) => {
            redeemed = providers.redeem(&code).await?;
            redeemed.as_str()
        }
    };
    let nonce = oidc::challenge_nonce(c);
    let expect = oidc::Expect {
        user: &c.spec.user,
        uid: c.spec.uid.as_deref(),
        nonce: &nonce,
        now: Timestamp::now(),
        skew: ctx.settings.max_clock_skew,
    };
    providers.verify(token, &expect).await
}

/// Label of the spent-token records (Secrets without data in the controller's namespace).
const SPENT_LABEL: &str = "stepup.dev/spent-id-token";
const SPENT_BY: &str = "stepup.dev/challenge-uid";
const FORGET_AFTER: &str = "stepup.dev/forget-after";

/// Records `sign_in`'s token as spent by this challenge before any grant exists for it: the
/// record's name is the token's, so a second challenge presenting the same token (a copy of
/// this one re-created under its name, within its deadline) finds it taken. `Ok(None)`: spent
/// now or by this very challenge earlier (a retry); `Ok(Some(uid))`: another challenge's.
async fn spend(ctx: &Context, c: &StepUpChallenge, sign_in: &SignIn) -> Result<Option<String>> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let name = format!("stepup-idtoken-{}", oidc::spent_id(sign_in));
    let uid = c.metadata.uid.clone().unwrap_or_default();
    // Only useful until the challenge's deadline (after it, no copy of the challenge issues) or
    // the token's expiry (after it, the token is refused), whichever comes first.
    let until = c.spec.deadline.as_ref().map_or(sign_in.expires_at, |d| d.0.min(sign_in.expires_at));
    let forget_after = until + ctx.settings.max_clock_skew;
    let record = k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(SPENT_LABEL.to_owned(), "true".to_owned())])),
            annotations: Some(BTreeMap::from([
                (SPENT_BY.to_owned(), uid.clone()),
                (FORGET_AFTER.to_owned(), forget_after.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("stepup.dev/spent-id-token".into()),
        ..Default::default()
    };
    let spent_by = match secrets.create(&PostParams::default(), &record).await {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = secrets.get(&name).await?;
            existing.annotations().get(SPENT_BY).filter(|by| **by != uid).cloned()
        }
        Err(e) => return Err(e.into()),
    };
    forget_spent(&secrets).await;
    Ok(spent_by)
}

/// Deletes spent-token records past their use; a failure is only logged (the next spend
/// tries again).
async fn forget_spent(secrets: &Api<k8s_openapi::api::core::v1::Secret>) {
    let now = Timestamp::now();
    let listed =
        match secrets.list_metadata(&kube::api::ListParams::default().labels(&format!("{SPENT_LABEL}=true"))).await {
            Ok(l) => l,
            Err(e) => return tracing::warn!(error = %e, "cannot list spent ID-token records"),
        };
    for record in listed.items {
        let past =
            record.annotations().get(FORGET_AFTER).and_then(|t| t.parse::<Timestamp>().ok()).is_none_or(|t| t < now);
        if past
            && let Err(e) =
                secrets.delete(&record.name_any(), &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)
        {
            tracing::warn!(error = %e, record = %record.name_any(), "cannot delete a spent ID-token record");
        }
    }
}

fn grant_name(c: &StepUpChallenge) -> String {
    api::grant_name(&c.spec.user, c.metadata.uid.as_deref().unwrap_or(""))
}

/// Adds the withdrawal finalizer, on the challenge as it was read.
async fn claim(ctx: &Context, c: &StepUpChallenge) -> Result<Action> {
    let mut finalizers = c.metadata.finalizers.clone().unwrap_or_default();
    finalizers.push(api::WITHDRAWAL_FINALIZER.to_owned());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": c.metadata.resource_version}});
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    match api.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            if c.spec.response.is_some() {
                ctx.settings.crash_point(CrashPoint::Claimed, &c.name_any());
            }
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(format!("challenge {}", c.name_any()))),
        Err(e) => Err(e.into()),
    }
}

async fn release(ctx: &Context, c: &StepUpChallenge) -> Result<()> {
    let finalizers: Vec<String> = c
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != api::WITHDRAWAL_FINALIZER)
        .collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": c.metadata.resource_version}});
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    match api.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(format!("challenge {}", c.name_any()))),
        Err(e) => Err(e.into()),
    }
}

/// Why a grant named after a challenge must not stand.
#[derive(Clone, Copy)]
enum Leftover {
    /// The user withdrew the challenge while the grant was being issued.
    Withdrawn,
    /// An earlier life of the controller issued it and stopped before writing the verdict;
    /// the deadline has passed since, so the user is told no grant.
    Expired,
}

/// Revokes the grant a raced (or interrupted) issuing left, so that what the challenge says
/// is true; `false` if there was none.
async fn revoke_grant(ctx: &Context, c: &StepUpChallenge, why: Leftover) -> Result<bool> {
    let grants: Api<StepUpGrant> = Api::all(ctx.client.clone());
    match grants.delete(&grant_name(c), &DeleteParams::default()).await {
        Ok(_) => {
            let why = match why {
                Leftover::Withdrawn => "was withdrawn before the verdict reached it",
                Leftover::Expired => {
                    "expired before its verdict was written (an earlier controller issued the grant and stopped), so the user is told no grant"
                }
            };
            let record = Record::warning(
                "GrantWithdrawn",
                "grant.withdrawn",
                "revoked",
                format!("grant {} revoked: its challenge {} {why}", grant_name(c), c.name_any()),
            );
            ctx.record(c, &c.spec.user, c.spec.method.as_str(), &record).await;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn withdrawn(ctx: &Context, c: &StepUpChallenge, revoke: bool, record: Option<Record>) -> Result<Action> {
    if revoke {
        revoke_grant(ctx, c, Leftover::Withdrawn).await?;
    }
    if let Some(record) = record {
        ctx.metrics.challenges.with_label_values(&[c.spec.method.as_str(), "withdrawn"]).inc();
        ctx.record(c, &c.spec.user, c.spec.method.as_str(), &record).await;
    }
    release(ctx, c).await?;
    Ok(Action::await_change())
}

async fn retire(ctx: &Context, c: &StepUpChallenge, scrub_response: bool, delete_at: Timestamp) -> Result<Action> {
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    let name = c.name_any();
    if scrub_response {
        scrub(&api, &name).await?;
    }
    let now = Timestamp::now();
    if now >= delete_at {
        api.delete(&name, &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)?;
        return Ok(Action::await_change());
    }
    Ok(requeue_at(delete_at, now))
}

async fn verdict(
    ctx: &Context,
    c: &StepUpChallenge,
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
    factor: Option<super::factor::Factor>,
    mut v: Verdicts,
) -> Result<Action> {
    let user = c.spec.user.as_str();
    let name = c.name_any();
    // Record first: the step is spent (or the failure counted) before anything else happens.
    if (v.state.is_some() || v.webauthn.is_some())
        && let Some(mut next) = factor
    {
        if let Some(state) = v.state.take() {
            next.state = state;
        }
        if let Some(webauthn) = v.webauthn.take() {
            next.webauthn = *webauthn;
        }
        ctx.store_factor(user, secret, &next).await?;
        if v.issue {
            ctx.settings.crash_point(CrashPoint::Recorded, &name);
        }
    }
    let mut grant = None;
    if v.issue {
        if !may_issue(v.issue_before, ctx.settings.max_clock_skew, Timestamp::now()) {
            v.phase = ChallengePhase::Expired;
            v.reason = "Expired";
            v.result = "expired";
            v.message = "the code was right, but the deadline passed before the grant could be issued: no grant (that code is spent)".into();
            v.issue = false;
        } else {
            if let Some(pause) = ctx.settings.pause_before_issuing.filter(|_| cfg!(debug_assertions)) {
                // The window a slow (or stopped) controller can fall into: checked, not yet issued.
                tracing::warn!(challenge = %name, ?pause, "test hook: pausing between the deadline check and issuing");
                tokio::time::sleep(pause).await;
            }
            let spent_by = match &v.sign_in {
                Some(sign_in) => spend(ctx, c, sign_in).await?,
                None => None,
            };
            if let Some(other) = spent_by {
                v.phase = ChallengePhase::Denied;
                v.reason = "TokenReplayed";
                v.result = "replayed";
                v.message = format!(
                    "this ID token was already used (by challenge UID {other}): a token counts once; sign in again"
                );
                v.issue = false;
            } else {
                grant = Some(issue(ctx, c, Timestamp::now(), v.sign_in.as_deref(), v.security_key.as_ref()).await?);
                ctx.settings.crash_point(CrashPoint::Issued, &name);
            }
        }
    }
    if v.phase == ChallengePhase::Expired {
        // An earlier life may have issued the grant and stopped before saying so: the user
        // must not be told "no grant" while one stands. Revoked before the verdict is written,
        // so a crash in between only repeats this.
        revoke_grant(ctx, c, Leftover::Expired).await?;
    }
    if v.phase == ChallengePhase::Verified {
        let g = grant.as_ref().map(|g| g.name_any()).unwrap_or_default();
        let until = grant.as_ref().map(|g| g.spec.expires_at.0.to_string()).unwrap_or_default();
        v.message = format!("verified; grant {g} is valid until {until}");
    }
    match write_status(ctx, c, &v, grant.as_ref().map(|g| g.name_any())).await {
        Ok(()) => {}
        Err(Error::Conflict(_)) if grant.is_some() => {
            // Changed since we read it: if the user withdrew it, the grant must not stand.
            let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
            let now = api.get_opt(&name).await?;
            if now.as_ref().is_none_or(|n| n.metadata.deletion_timestamp.is_some()) {
                revoke_grant(ctx, c, Leftover::Withdrawn).await?;
                // Look again soon: the withdrawal itself is then recorded and released.
                return Ok(Action::requeue(std::time::Duration::from_secs(1)));
            }
            return Err(Error::Conflict(format!("challenge {name}")));
        }
        Err(e) => return Err(e),
    }
    if grant.is_some() {
        ctx.settings.crash_point(CrashPoint::Answered, &name);
    }
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    if c.spec.response.is_some() {
        scrub(&api, &name).await?;
    }
    if grant.is_some() {
        ctx.settings.crash_point(CrashPoint::Scrubbed, &name);
    }
    ctx.metrics.challenges.with_label_values(&[c.spec.method.as_str(), v.result]).inc();
    report(c, &v, grant.as_ref());
    let note = {
        let why = c.spec.reason.as_deref().unwrap_or("");
        format!("{user}: {}{}", v.message, if why.is_empty() { String::new() } else { format!(" (reason: {why})") })
    };
    let (event_type, event_reason) = match v.phase {
        ChallengePhase::Verified => (EventType::Normal, "ChallengeVerified"),
        ChallengePhase::Expired => (EventType::Normal, "ChallengeExpired"),
        _ => (EventType::Warning, "ChallengeFailed"),
    };
    // Failures are rate-limited per user; successes always recorded.
    let rate_key = (v.phase != ChallengePhase::Verified).then(|| format!("{event_reason}/{user}"));
    ctx.evidence.event(c, event_type, event_reason, note, rate_key).await;
    for record in &v.records {
        ctx.record(c, user, c.spec.method.as_str(), record).await;
    }
    Ok(Action::requeue(std::time::Duration::from_secs(1)))
}

fn report(c: &StepUpChallenge, v: &Verdicts, grant: Option<&StepUpGrant>) {
    audit::step(&audit::StepRecord {
        event: match v.phase {
            ChallengePhase::Verified => "challenge.verified",
            ChallengePhase::Expired => "challenge.expired",
            _ => "challenge.denied",
        },
        user: &c.spec.user,
        object: &format!("StepUpChallenge/{}", c.name_any()),
        result: v.result,
        method: c.spec.method.as_str(),
        reason: c.spec.reason.as_deref().unwrap_or(""),
        grant: &grant.map(|g| g.name_any()).unwrap_or_default(),
        message: &v.message,
        correlation: correlation(c).unwrap_or_default(),
        credential: None,
    });
}

/// The verdict, written only onto the challenge as it was read: a deletion in between makes
/// this fail with a conflict.
async fn write_status(ctx: &Context, c: &StepUpChallenge, v: &Verdicts, grant: Option<String>) -> Result<()> {
    let api: Api<StepUpChallenge> = Api::all(ctx.client.clone());
    let existing = c.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let verified = condition(
        "Verified",
        v.phase == ChallengePhase::Verified,
        v.reason,
        &v.message,
        c.metadata.generation,
        Timestamp::now(),
    );
    let status = StepUpChallengeStatus {
        phase: Some(v.phase),
        grant_ref: grant.map(|name| GrantRef { name }),
        message: Some(v.message.clone()),
        webauthn_options: None,
        conditions: merge_condition(&existing, verified),
        observed_generation: c.metadata.generation,
    };
    let patch = json!({ "metadata": {"resourceVersion": c.metadata.resource_version}, "status": status });
    match api.patch_status(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            Err(Error::Conflict(format!("challenge {}", c.name_any())))
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the grant, or finds it already there (a retry after a crash).
async fn issue(
    ctx: &Context,
    challenge: &StepUpChallenge,
    now: Timestamp,
    sign_in: Option<&SignIn>,
    security_key: Option<&super::factor::KeyUse>,
) -> Result<StepUpGrant> {
    let grants: Api<StepUpGrant> = Api::all(ctx.client.clone());
    let mut wanted = grant_for(challenge, now, &ctx.settings, sign_in, security_key);
    ctx.keys.grant_signer.sign_grant(&mut wanted);
    let name = wanted.name_any();
    match grants.create(&PostParams::default(), &wanted).await {
        Ok(created) => {
            ctx.metrics.grants_issued.with_label_values(&[created.spec.method.as_str()]).inc();
            let reason = created.spec.reason.clone().unwrap_or_default();
            let key = match created.spec.credential_id_hash.as_deref() {
                Some(id) if created.spec.user_verified => format!(", security key {id}, user verified"),
                Some(id) => format!(", security key {id}"),
                None => String::new(),
            };
            let note = format!(
                "issued to {} ({}{key}) until {}{}",
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
                correlation: correlation(challenge).unwrap_or_default(),
                credential: created.spec.credential_id_hash.as_deref().map(|id| (id, created.spec.user_verified)),
            });
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(grants.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Removes the sealed code from the challenge.
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
    use stepup_core::api::{GrantScope, Method, StepUpChallengeSpec};

    fn challenge(duration: Option<&str>) -> StepUpChallenge {
        let mut c = StepUpChallenge::new(
            "alice-x1",
            StepUpChallengeSpec {
                user: "alice".into(),
                uid: Some("uid-alice-1".into()),
                method: Method::Totp,
                response: Some("sealed".into()),
                reason: Some("INC-42".into()),
                duration: duration.map(|d| d.parse().unwrap()),
                scope: GrantScope { policies: vec![], namespaces: vec!["prod".into()] },
                deadline: None,
                correlation: None,
            },
        );
        c.metadata.uid = Some("0c9a8d74-9cb7-44dd-b98e-09fd62def2f4".into());
        c
    }

    #[test]
    fn the_grant_carries_the_challenge_and_a_capped_lifetime() {
        let now = stepup_core::testing::t0();
        let settings = Settings::default();
        let g = grant_for(&challenge(Some("30m")), now, &settings, None, None);
        assert_eq!(g.name_any(), "alice-0c9a8d74-9cb7-44dd-b98e-09fd62def2f4");
        assert_eq!(g.spec.expires_at.0, now + SignedDuration::from_mins(30));
        assert_eq!(g.spec.uid.as_deref(), Some("uid-alice-1"));
        assert_eq!(g.spec.reason.as_deref(), Some("INC-42"));
        assert_eq!(g.spec.scope.namespaces, vec!["prod"]);
        assert_eq!(g.spec.challenge_ref.as_ref().unwrap().name, "alice-x1");
        assert_eq!(g.labels().get(api::USER_LABEL), Some(&api::user_label_value("alice")));

        let capped = grant_for(&challenge(Some("72h")), now, &settings, None, None);
        assert_eq!(capped.spec.expires_at.0, now + settings.max_grant_duration);
        let default = grant_for(&challenge(None), now, &settings, None, None);
        assert_eq!(default.spec.expires_at.0, now + settings.default_grant_duration);
        // The webhook accepts exactly this grant from the controller.
        assert_eq!(grant_for(&challenge(None), now, &settings, None, None).name_any(), g.name_any(), "idempotent name");
    }

    /// `spec.correlation` is the requester's input: the grant carries it only in the one form
    /// the audit trail records (what a user writes there cannot reach an annotation otherwise).
    #[test]
    fn the_grant_carries_only_a_well_formed_correlation_id() {
        let now = stepup_core::testing::t0();
        let with = |id: &str| {
            let mut c = challenge(None);
            c.spec.correlation = Some(id.to_owned());
            stepup_core::api::grant_correlation(&grant_for(&c, now, &Settings::default(), None, None))
                .map(str::to_owned)
        };
        let id = "prompt:7c0ffee0-1234-4abc-9def-0123456789ab";
        assert_eq!(with(id).as_deref(), Some(id));
        for hostile in ["7c0ffee0", "prompt:", "prompt:a b", "prompt:\u{1b}[2J", &format!("prompt:{}", "a".repeat(65))]
        {
            assert_eq!(with(hostile), None, "{hostile:?}");
        }
        assert_eq!(
            stepup_core::api::grant_correlation(&grant_for(&challenge(None), now, &Settings::default(), None, None)),
            None
        );
    }
}
