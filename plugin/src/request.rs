//! `kubectl stepup request`: exchange a one-time code for a grant. The wrapper uses the same path.
//! The code travels sealed to the controller's key and bound to the challenge this run creates;
//! when the plugin stops waiting it withdraws the challenge, so what it reports is the truth.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
};

use super::{
    cli::{EnrollArgs, Output, RequestArgs, RequestMethod},
    cluster::{Identity, Session},
    error::{Error, Result},
    format::{self, GrantView},
    terminal::{self, CodeSource, Progress},
    wait::{self, Step},
};
use stepup_core::{
    api::{
        self, ChallengePhase, Duration, Enforcement, EnrollmentPhase, GrantScope, Method, StepUpChallenge,
        StepUpChallengeSpec, StepUpEnrollment, StepUpGrant, StepUpPolicy,
    },
    policy::CompiledPolicy,
    verify::response,
};

/// What to ask the controller for.
#[derive(Clone, Debug, Default)]
pub struct GrantRequest {
    pub code: String,
    pub reason: Option<String>,
    pub duration: Option<Duration>,
    pub scope: GrantScope,
    /// The refusal this step-up answers (`prompt:<review uid>`), for the audit trail.
    pub correlation: Option<String>,
}

pub async fn run(session: &Session, args: &RequestArgs) -> Result<()> {
    let me = session.whoami().await?;
    let source = if args.code_stdin { CodeSource::Stdin } else { CodeSource::Terminal };
    let oidc = args.method == RequestMethod::Oidc;
    let key = args.method == RequestMethod::WebAuthn;
    let response_key = if oidc || key { String::new() } else { enrolled_or_enroll(session, &me, source).await? };
    let scope = GrantScope { policies: args.policies.clone(), namespaces: args.namespaces.clone() };
    let reason = match args.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(r.to_owned()),
        None => {
            let needing = policies_requiring_reason(session, &scope.policies).await;
            ask_reason(&needing, args.reason_required, source)?
        }
    };
    let grant = if key {
        let request = GrantRequest { code: String::new(), reason, duration: args.duration, scope, correlation: None };
        obtain_key_grant(session, &me, request, args.sign_in.browser(), args.sign_in.wait(), args.timeout).await?
    } else if oidc {
        let policies: Api<StepUpPolicy> = session.all();
        let listed = policies.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        let assurance = oidc_assurance(&listed, &scope.policies);
        let request = GrantRequest { code: String::new(), reason, duration: args.duration, scope, correlation: None };
        obtain_oidc_grant(session, &me, request, &assurance, args.sign_in.browser(), args.sign_in.wait(), args.timeout)
            .await?
    } else {
        let code = terminal::read_code("Code from your authenticator app: ", source)?;
        let request = GrantRequest { code, reason, duration: args.duration, scope, correlation: None };
        obtain_grant(session, &me, &response_key, request, args.timeout).await?
    };
    let now = Timestamp::now();
    let view = GrantView::new(&grant, now);
    match args.output {
        Output::Json => out!("{}", format::json(&view)),
        Output::Text => {
            let reason = view.reason.as_deref().map(|r| format!(", reason {r:?}")).unwrap_or_default();
            outln!("Granted {} ({}{reason}) for {}.", view.name, view.method, view.scope_text());
            outln!("It {}; each policy accepts it only up to its own max age.", view.expiry(now, &TimeZone::system()));
        }
    }
    if let Some(notice) = cap_notice(args.duration, &grant) {
        // With -o json, stdout stays one JSON document.
        match args.output {
            Output::Json => errln!("{notice}."),
            Output::Text => outln!("Note: {notice}."),
        }
    }
    Ok(())
}

/// One line when the grant the controller issued is shorter than the one asked for (it caps
/// every grant at its configured maximum); `None` when it gave what was asked, or nothing was.
pub fn cap_notice(requested: Option<Duration>, grant: &StepUpGrant) -> Option<String> {
    let requested = requested?;
    let issued = grant.spec.expires_at.0.duration_since(grant.spec.issued_at.0);
    // The API server keeps timestamps to the second: a 90.5s request comes back as 90s.
    if issued.as_secs() >= i64::try_from(requested.as_std().as_secs()).unwrap_or(i64::MAX) {
        return None;
    }
    let issued = Duration::from(std::time::Duration::try_from(issued).unwrap_or_default());
    Some(format!("the controller capped the grant at {issued} (its maximum); you asked for {requested}"))
}

/// Fails early, before a code is typed, when the enrollment cannot verify one. Returns the
/// controller's response key, which the enrollment's status publishes.
/// The response key of a usable enrollment; a person at a terminal who has never enrolled is
/// enrolled first, right here, instead of being sent to another command and back (the
/// refusal said `request`, `request` would say `enroll`). Scripts get the error and its hint.
pub async fn enrolled_or_enroll(session: &Session, me: &Identity, source: CodeSource) -> Result<String> {
    match ensure_enrolled(session, me).await {
        Err(Error::NotEnrolled { .. }) if source == CodeSource::Terminal && terminal::has_terminal() => {
            errln!("kube-stepup: {} has no authenticator enrolled yet; enrolling one now (once).", me.username);
            let args = EnrollArgs {
                reenroll: false,
                bootstrap: false,
                timeout: ENROLL_TIMEOUT,
                method: super::cli::EnrolledMethod::Totp,
                no_browser: false,
                approval: false,
            };
            super::enroll::run(session, &args).await?;
            errln!(
                "kube-stepup: now a code for this step-up. Each code is accepted once: wait until your app shows a new one."
            );
            ensure_enrolled(session, me).await
        }
        other => other,
    }
}

/// How long an enrollment started by `request` or the wrapper waits for an admin's approval,
/// as `kubectl stepup enroll` does by default.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn ensure_enrolled(session: &Session, me: &Identity) -> Result<String> {
    ensure_enrolled_for(session, me, Method::Totp).await
}

/// The response key of `me`'s enrollment of `method`, when it can verify an answer now.
pub async fn ensure_enrolled_for(session: &Session, me: &Identity, method: Method) -> Result<String> {
    let api: Api<StepUpEnrollment> = session.all();
    let enrollment = api
        .get_opt(&api::enrollment_name_for(&me.username, method))
        .await
        .map_err(session.kube_error("read your enrollment"))?;
    match usable(enrollment, me) {
        Err(Error::NotEnrolled { .. }) if method == Method::WebAuthn => Err(Error::usage(
            format!("{} has no security key enrolled", me.username),
            "Enroll one first: `kubectl stepup enroll --method WebAuthn` (an admin approves it).",
        )),
        other => other,
    }
}

/// The response key of an enrollment that can verify a code now, or why it cannot.
fn usable(enrollment: Option<StepUpEnrollment>, me: &Identity) -> Result<String> {
    let Some(enrollment) = enrollment else { return Err(Error::NotEnrolled { user: me.username.clone() }) };
    let status = enrollment.status.unwrap_or_default();
    match status.phase {
        Some(EnrollmentPhase::Locked) => {
            Err(Error::Locked { user: me.username.clone(), message: status.message.clone() })
        }
        Some(EnrollmentPhase::PendingApproval) => {
            Err(Error::PendingApproval { user: me.username.clone(), message: status.message })
        }
        Some(EnrollmentPhase::AwaitingConfirmation) => Err(Error::Unconfirmed),
        Some(EnrollmentPhase::Active) | None => status.response_key.ok_or_else(|| {
            Error::other(
                "the stepup controller has not published its key in your enrollment yet",
                "Is the stepup controller running, and is it up to date? Ask your platform team.",
            )
        }),
    }
}

/// Deny policies (within the requested policy scope) whose grants must carry a reason.
/// Best effort: without permission to list policies, nothing is known to need one.
pub async fn policies_requiring_reason(session: &Session, scope_policies: &[String]) -> Vec<String> {
    let api: Api<StepUpPolicy> = session.all();
    let Ok(list) = api.list(&Default::default()).await else { return Vec::new() };
    reason_requirers(&list.items, scope_policies)
}

fn reason_requirers(policies: &[StepUpPolicy], scope_policies: &[String]) -> Vec<String> {
    policies
        .iter()
        .filter_map(|p| CompiledPolicy::compile(p).ok())
        .filter(|p| p.require_reason && p.enforcement == Enforcement::Deny)
        .filter(|p| scope_policies.is_empty() || scope_policies.contains(&p.name))
        .map(|p| p.name)
        .collect()
}

/// Asks for a reason when one is required (`required`) or some policy wants one (`needing`).
pub fn ask_reason(needing: &[String], required: bool, source: CodeSource) -> Result<Option<String>> {
    if !required && needing.is_empty() {
        return Ok(None);
    }
    let who = if needing.is_empty() { String::new() } else { format!(" (policy {} requires one)", needing.join(", ")) };
    let missing = || Error::usage(format!("a reason is required{who}"), "Pass --reason \"<ticket or incident>\".");
    if source == CodeSource::Stdin {
        // Automation: never block on a question.
        if required {
            return Err(missing());
        }
        errln!("warning: no --reason given; the grant will not satisfy {}.", needing.join(", "));
        return Ok(None);
    }
    let answer = terminal::ask(&format!("Reason for stepping up (ticket or incident){who}: "))?;
    if !answer.is_empty() {
        return Ok(Some(answer));
    }
    if required {
        return Err(missing());
    }
    errln!("warning: without a reason, the grant will not satisfy {}.", needing.join(", "));
    Ok(None)
}

/// `alice@example.com` → `alice-example-com-`: a readable prefix for challenge names.
pub fn challenge_prefix(username: &str) -> String {
    let prefix = api::name_prefix(username, 40);
    if prefix.is_empty() { "user-".to_owned() } else { format!("{prefix}-") }
}

/// A name no one else can guess ahead: the sealed code is bound to it, so the plugin picks it
/// itself instead of leaving it to `generateName`.
pub fn challenge_name(username: &str) -> String {
    use rand_core::{OsRng, RngCore};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    let suffix: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("{}{suffix}", challenge_prefix(username))
}

/// The challenge a user creates: for themselves, labelled as theirs, with the code sealed to
/// the controller's key and bound to this very challenge (name, scope, deadline and all).
pub fn challenge_for(
    me: &Identity,
    request: GrantRequest,
    name: &str,
    deadline: Timestamp,
    response_key: &str,
) -> Result<StepUpChallenge> {
    let code = request.code.clone();
    let mut challenge = unsealed_challenge(me, request, Method::Totp, name, deadline);
    seal_into(&mut challenge, &code, response_key)?;
    Ok(challenge)
}

/// `response` (a code, an ID token) sealed to the controller's key, bound to `challenge` as it
/// stands.
pub fn seal_into(challenge: &mut StepUpChallenge, response: &str, response_key: &str) -> Result<()> {
    challenge.spec.response = None;
    let binding = response::challenge_binding(challenge);
    let sealed = response::seal_code(response_key, response, binding).map_err(|e| {
        Error::other(
            format!("cannot seal the response to the controller's key: {e}"),
            "The key the cluster publishes is unusable; ask your platform team.",
        )
    })?;
    challenge.spec.response = Some(sealed);
    Ok(())
}

/// The challenge before anything is sealed into it: what an ID token's nonce is computed from.
pub fn unsealed_challenge(
    me: &Identity,
    request: GrantRequest,
    method: Method,
    name: &str,
    deadline: Timestamp,
) -> StepUpChallenge {
    StepUpChallenge {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&me.username))])),
            // A withdrawal waits for the controller, which makes sure no grant outlives it.
            finalizers: Some(vec![api::WITHDRAWAL_FINALIZER.to_owned()]),
            ..ObjectMeta::default()
        },
        spec: StepUpChallengeSpec {
            user: me.username.clone(),
            uid: Some(me.uid.clone()).filter(|u| !u.is_empty()),
            method,
            response: None,
            reason: request.reason,
            duration: request.duration,
            scope: request.scope,
            deadline: Some(Time(Timestamp::from_second(deadline.as_second()).unwrap_or(deadline))),
            correlation: request.correlation,
        },
        status: None,
    }
}

/// What became of a challenge the plugin stopped waiting for.
enum Withdrawal {
    /// A verdict was recorded before the withdrawal: it stands.
    Verified(String),
    /// Withdrawn before a verdict; `revoked` when a grant issued in the race was revoked.
    Withdrawn { revoked: bool },
}

/// Deletes the challenge. The deletion carries the challenge's state at that moment: a
/// Verified verdict written before it stands; otherwise the controller will not issue for it,
/// and a grant already issued in a race is revoked here and by the controller.
async fn withdraw(session: &Session, api: &Api<StepUpChallenge>, created: &StepUpChallenge) -> Result<Withdrawal> {
    let name = created.name_any();
    let last = match api.delete(&name, &DeleteParams::default()).await {
        Ok(either) => either.left(),
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(Error::from_kube(e, "withdraw the challenge", &session.server)),
    };
    if let Some(status) = last.as_ref().and_then(|c| c.status.as_ref())
        && status.phase == Some(ChallengePhase::Verified)
        && let Some(grant) = &status.grant_ref
    {
        return Ok(Withdrawal::Verified(grant.name.clone()));
    }
    let grant = api::grant_name(&created.spec.user, created.metadata.uid.as_deref().unwrap_or(""));
    let grants: Api<StepUpGrant> = session.all();
    let revoked = match grants.delete(&grant, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => return Err(Error::from_kube(e, &format!("revoke grant {grant}"), &session.server)),
    };
    Ok(Withdrawal::Withdrawn { revoked })
}

/// Creates the challenge, waits for the controller's verdict until the challenge's deadline,
/// and returns the grant; withdraws the challenge when the wait ends without one.
pub async fn obtain_grant(
    session: &Session,
    me: &Identity,
    response_key: &str,
    request: GrantRequest,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let deadline = Timestamp::now() + timeout.as_signed();
    let wanted = challenge_for(me, request, &challenge_name(&me.username), deadline, response_key)?;
    submit(session, me, wanted, deadline, timeout).await
}

/// What `kubectl stepup` seals to and signs in at, as the controller publishes it.
pub async fn step_up_discovery(session: &Session) -> Result<stepup_core::decision::StepUpDiscovery> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(session.client.clone(), &session.stepup_namespace);
    let where_ = format!("configmap {}/{}", session.stepup_namespace, stepup_core::decision::PUBLISHED_CONFIGMAP);
    let cm = api
        .get_opt(stepup_core::decision::PUBLISHED_CONFIGMAP)
        .await
        .map_err(session.kube_error(&format!("read {where_}")))?;
    cm.and_then(|cm| cm.data?.remove(stepup_core::decision::PUBLISHED_STEP_UP_KEY))
        .and_then(|json| serde_json::from_str(&json).ok())
        .ok_or_else(|| {
            Error::other(
                format!(
                    "the cluster publishes no step-up settings ({where_} has no {})",
                    stepup_core::decision::PUBLISHED_STEP_UP_KEY
                ),
                "Is the stepup controller running and up to date? Ask your platform team.",
            )
        })
}

/// The assurance the policies in scope (every enforcing one accepting OIDC, when none is
/// named) ask of a sign-in: the acr values all of them accept, and the shortest maxAge.
pub fn oidc_assurance(policies: &[StepUpPolicy], scope_policies: &[String]) -> super::sign_in::Assurance {
    let mut acr_values: Option<Vec<String>> = None;
    let mut max_age: Option<std::time::Duration> = None;
    for p in policies.iter().filter(|p| {
        p.spec.methods.contains(&Method::Oidc)
            && p.spec.enforcement == Enforcement::Deny
            && (scope_policies.is_empty() || scope_policies.iter().any(|s| Some(s) == p.metadata.name.as_ref()))
    }) {
        let age = std::time::Duration::try_from(p.spec.max_age.as_signed()).unwrap_or_default();
        max_age = Some(max_age.map_or(age, |m| m.min(age)));
        if let Some(values) = p.spec.assurance.as_ref().map(|a| &a.acr_values).filter(|v| !v.is_empty()) {
            acr_values = Some(match acr_values {
                None => values.clone(),
                Some(have) => have.into_iter().filter(|v| values.contains(v)).collect(),
            });
        }
    }
    super::sign_in::Assurance { acr_values: acr_values.unwrap_or_default(), max_age }
}

/// Signs in at the identity provider for a new `OIDC` challenge (its nonce), seals the ID token
/// into it, creates it and waits for the grant. `sign_in_wait` bounds the time at the login
/// page; `timeout` the controller's verdict after it.
pub async fn obtain_oidc_grant(
    session: &Session,
    me: &Identity,
    request: GrantRequest,
    assurance: &super::sign_in::Assurance,
    browser: super::sign_in::Browser,
    sign_in_wait: std::time::Duration,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let discovery = step_up_discovery(session).await?;
    let Some(idp) = discovery.identity_providers.first() else {
        return Err(Error::other(
            "this cluster trusts no identity provider for step-up",
            "Use `kubectl stepup request` with your authenticator app (TOTP), or ask your platform team to configure OIDC.",
        ));
    };
    let wait = SignedDuration::try_from(sign_in_wait).unwrap_or(SignedDuration::from_mins(5));
    let deadline = Timestamp::now() + wait + timeout.as_signed();
    let mut wanted = unsealed_challenge(me, request, Method::Oidc, &challenge_name(&me.username), deadline);
    let nonce = stepup_core::verify::oidc::challenge_nonce(&wanted);
    let signed = super::sign_in::sign_in(idp, &nonce, assurance, browser, sign_in_wait).await?;
    seal_into(&mut wanted, &signed.sealed_text(), &discovery.response_key)?;
    submit(session, me, wanted, deadline, timeout).await
}

/// Steps up with a security key: creates a `WebAuthn` challenge, runs the controller's ceremony
/// on a page served on this computer's loopback, seals the browser's answer into the challenge
/// and waits for the grant. `ceremony_wait` bounds the time at the page; `timeout` the
/// controller's verdict after it.
pub async fn obtain_key_grant(
    session: &Session,
    me: &Identity,
    request: GrantRequest,
    browser: super::sign_in::Browser,
    ceremony_wait: std::time::Duration,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let response_key = ensure_enrolled_for(session, me, Method::WebAuthn).await?;
    let wait = SignedDuration::try_from(ceremony_wait).unwrap_or(SignedDuration::from_mins(5));
    let deadline = Timestamp::now() + wait + timeout.as_signed();
    let wanted = unsealed_challenge(me, request, Method::WebAuthn, &challenge_name(&me.username), deadline);
    let challenges: Api<StepUpChallenge> = session.all();
    let created =
        challenges.create(&PostParams::default(), &wanted).await.map_err(session.kube_error("create the challenge"))?;
    let name = created.name_any();
    let offered = wait::until(
        session,
        &challenges,
        &name,
        timeout,
        |c| {
            let status = c.status.clone().unwrap_or_default();
            match (status.phase, status.webauthn_options) {
                (Some(ChallengePhase::Denied), _) => Ok(Step::Done(Err(status.message.unwrap_or_default()))),
                (Some(ChallengePhase::Expired), _) => Err(Error::ChallengeExpired),
                (_, Some(options)) => Ok(Step::Done(Ok(options))),
                _ => Ok(Step::Wait),
            }
        },
        |_| Error::ControllerTimeout { what: "offer a security-key prompt".into(), after: timeout },
    )
    .await;
    let options = match offered {
        Ok(Ok(options)) => options,
        Ok(Err(message)) => {
            ensure_enrolled_for(session, me, Method::WebAuthn).await?;
            return Err(Error::KeyRefused { message: message.trim_end_matches('.').to_owned() });
        }
        Err(error) => {
            withdraw(session, &challenges, &created).await?;
            return Err(error);
        }
    };
    let detail = format!(
        "{} steps up on {}{}.",
        me.username,
        if session.cluster.is_empty() { "this cluster" } else { session.cluster.as_str() },
        created.spec.reason.as_deref().map(|r| format!(" (reason: {r})")).unwrap_or_default()
    );
    let page = super::ceremony::Page::serve(
        super::ceremony::Kind::Authenticate,
        options,
        "Step up with your security key",
        &detail,
    )
    .await?;
    errln!("Use your security key or passkey on this page:\n  {}", page.url());
    if browser == super::sign_in::Browser::Open {
        super::sign_in::open_browser(page.url());
    }
    let (page, answer) = match page.answered(ceremony_wait).await {
        Ok(answered) => answered,
        Err(error) => {
            withdraw(session, &challenges, &created).await?;
            return Err(error);
        }
    };
    let mut answered = created.clone();
    seal_into(&mut answered, &answer, &response_key)?;
    let patch = serde_json::json!({"spec": {"response": answered.spec.response}});
    challenges
        .patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(session.kube_error("answer the challenge"))?;
    let result = await_grant(session, me, &challenges, created, deadline, timeout).await;
    let outcome = match &result {
        Ok(grant) => super::ceremony::Outcome::Done {
            message: format!("Verified: grant {} is yours. You can close this page.", grant.name_any()),
        },
        // The cluster's own sentence, without the terminal's preamble.
        Err(Error::KeyRefused { message }) => {
            super::ceremony::Outcome::Failed { message: format!("Refused: {message}.") }
        }
        Err(error) => super::ceremony::Outcome::Failed { message: format!("Refused: {error}") },
    };
    page.finish(outcome).await;
    result
}

/// Creates the challenge, waits for the controller's verdict until the challenge's deadline,
/// and returns the grant; withdraws the challenge when the wait ends without one.
async fn submit(
    session: &Session,
    me: &Identity,
    wanted: StepUpChallenge,
    deadline: Timestamp,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let challenges: Api<StepUpChallenge> = session.all();
    let created =
        challenges.create(&PostParams::default(), &wanted).await.map_err(session.kube_error("create the challenge"))?;
    await_grant(session, me, &challenges, created, deadline, timeout).await
}

/// Waits for the controller's verdict on `created` until its deadline and returns the grant;
/// withdraws the challenge when the wait ends without one.
async fn await_grant(
    session: &Session,
    me: &Identity,
    challenges: &Api<StepUpChallenge>,
    created: StepUpChallenge,
    deadline: Timestamp,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let method = created.spec.method;
    let name = created.name_any();
    let progress = Progress::start(match method {
        Method::Oidc => "Verifying the sign-in",
        Method::WebAuthn => "Verifying the security key's answer",
        _ => "Verifying the code",
    });
    let left = deadline.duration_since(Timestamp::now()).max(SignedDuration::ZERO);
    let wait = wait::until(
        session,
        challenges,
        &name,
        Duration::from(std::time::Duration::try_from(left).unwrap_or_default()),
        |c| {
            let status = c.status.clone().unwrap_or_default();
            match status.phase {
                Some(ChallengePhase::Verified) => match status.grant_ref {
                    Some(grant) => Ok(Step::Done(Ok(grant.name))),
                    None => Ok(Step::Wait),
                },
                Some(ChallengePhase::Denied) => {
                    Ok(Step::Done(Err(status.message.unwrap_or_else(|| "the code was refused".into()))))
                }
                Some(ChallengePhase::Expired) => Err(Error::ChallengeExpired),
                Some(ChallengePhase::Pending) | None => Ok(Step::Wait),
            }
        },
        |_| Error::ControllerTimeout { what: "verify the code".into(), after: timeout },
    );
    let verdict = tokio::select! {
        verdict = wait => verdict,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
    };
    progress.finish();
    let verdict = match verdict {
        Err(error @ (Error::ControllerTimeout { .. } | Error::Interrupted | Error::ChallengeExpired)) => {
            match withdraw(session, challenges, &created).await? {
                Withdrawal::Verified(grant) => Ok(grant),
                Withdrawal::Withdrawn { revoked } => {
                    return Err(match error {
                        Error::ControllerTimeout { what, after } => Error::Withdrawn { what, after, revoked },
                        other => other,
                    });
                }
            }
        }
        Err(error) => return Err(error),
        Ok(verdict) => verdict,
    };
    match verdict {
        Ok(grant) => {
            let grants: Api<StepUpGrant> = session.all();
            grants.get(&grant).await.map_err(session.kube_error(&format!("read grant {grant}")))
        }
        Err(message) if method == Method::Oidc => {
            Err(Error::SignInRefused { message: message.trim_end_matches('.').to_owned() })
        }
        Err(message) if method == Method::WebAuthn => {
            ensure_enrolled_for(session, me, Method::WebAuthn).await?;
            Err(Error::KeyRefused { message: message.trim_end_matches('.').to_owned() })
        }
        Err(message) => {
            // Locked or not enrolled have their own exit codes and hints.
            ensure_enrolled(session, me).await?;
            Err(Error::CodeRefused { message: message.trim_end_matches('.').to_owned() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exit, Report};
    use stepup_core::testing::{grant, policy};

    #[test]
    fn challenges_are_for_the_authenticated_user_only() {
        let me = Identity { username: "oidc:Alice@example.com".into(), uid: "u-1".into(), ..Identity::default() };
        let request = GrantRequest {
            code: "123456".into(),
            reason: Some("INC-42".into()),
            duration: Some("30m".parse().unwrap()),
            scope: GrantScope { policies: vec![], namespaces: vec!["prod".into()] },
            correlation: None,
        };
        let opener = stepup_core::keys::MasterKey::from_bytes([9; 32]).response_opener();
        let deadline = stepup_core::testing::t0();
        let c = challenge_for(&me, request, "oidc-alice-example-com-abc", deadline, &opener.public_base64()).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("oidc-alice-example-com-abc"));
        assert_eq!(c.labels()[api::USER_LABEL], api::user_label_value("oidc:Alice@example.com"));
        assert_eq!(c.metadata.finalizers.as_deref(), Some(&[api::WITHDRAWAL_FINALIZER.to_owned()][..]));
        let mut spec = serde_json::to_value(&c.spec).unwrap();
        let sealed = spec["response"].take();
        assert!(!sealed.as_str().unwrap().contains("123456"), "the code never travels in the clear");
        assert_eq!(
            spec,
            serde_json::json!({
                "user": "oidc:Alice@example.com", "uid": "u-1", "method": "TOTP", "response": null,
                "reason": "INC-42", "duration": "30m", "scope": {"namespaces": ["prod"]},
                "deadline": "2026-11-28T12:00:00Z"
            })
        );
        let binding = [((), response::challenge_binding(&c))];
        assert_eq!(
            response::open(&opener, c.spec.response.as_deref(), &binding),
            response::Opened::Code(zeroize::Zeroizing::new("123456".into()), ()),
            "the controller opens it for exactly this challenge"
        );
        let anonymous_uid = Identity { uid: String::new(), ..me };
        let c = challenge_for(&anonymous_uid, GrantRequest::default(), "x", deadline, &opener.public_base64()).unwrap();
        assert_eq!(c.spec.uid, None);
    }

    #[test]
    fn challenge_names_are_valid_and_unguessable() {
        assert_eq!(challenge_prefix("alice"), "alice-");
        assert_eq!(challenge_prefix("::"), "user-");
        assert_eq!(challenge_prefix(&"x".repeat(300)).len(), 41);
        let (a, b) = (challenge_name("alice"), challenge_name("alice"));
        assert_ne!(a, b);
        assert!(a.starts_with("alice-") && a.len() == 18, "{a}");
        assert!(challenge_name(&"x".repeat(300)).len() <= 63);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn only_enforcing_policies_in_scope_ask_for_a_reason() {
        let policies = [
            policy("a").rule(&[stepup_core::api::Operation::Delete], "", &["secrets"]).require_reason().build(),
            policy("b").rule(&[stepup_core::api::Operation::Delete], "", &["secrets"]).build(),
            policy("c")
                .rule(&[stepup_core::api::Operation::Delete], "", &["secrets"])
                .require_reason()
                .enforcement(Enforcement::Warn)
                .build(),
        ];
        assert_eq!(reason_requirers(&policies, &[]), ["a"]);
        assert_eq!(reason_requirers(&policies, &["b".into()]), Vec::<String>::new());
    }

    #[test]
    fn a_grant_shorter_than_requested_is_said_in_one_line() {
        let now = stepup_core::testing::t0();
        let issued_for =
            |lifetime: SignedDuration| grant("alice-1", "alice").issued(now).expires(now + lifetime).build();
        let hours = SignedDuration::from_hours;
        let cases = [
            (Some("1000h"), hours(8), Some("the controller capped the grant at 8h (its maximum); you asked for 1000h")),
            (
                Some("30m"),
                stepup_core::testing::minutes(20),
                Some("the controller capped the grant at 20m (its maximum); you asked for 30m"),
            ),
            (Some("2h"), hours(2), None),
            (Some("1m30.5s"), SignedDuration::from_secs(90), None),
            (None, hours(1), None),
        ];
        for (requested, lifetime, notice) in cases {
            let requested = requested.map(|r| r.parse::<Duration>().unwrap());
            assert_eq!(cap_notice(requested, &issued_for(lifetime)).as_deref(), notice, "{requested:?} {lifetime}");
        }
    }

    #[test]
    fn an_unenrolled_user_is_told_what_to_run_and_that_an_admin_may_approve() {
        let me = Identity { username: "oidc:bob@example.com".into(), ..Identity::default() };
        let error = usable(None, &me).unwrap_err();
        assert_eq!(error.exit(), Exit::NotEnrolled);
        assert_eq!(
            Report { error: &error, verbose: false }.to_string(),
            "error: you are not enrolled for step-up authentication.\n\
             hint: Run `kubectl stepup enroll` once to set up your authenticator app; an admin may need to approve it (they run `kubectl stepup approve oidc:bob@example.com`). Then run this command again.\n"
        );
    }

    #[test]
    fn automation_never_waits_for_a_reason() {
        assert_eq!(ask_reason(&[], false, CodeSource::Stdin).unwrap(), None);
        assert_eq!(ask_reason(&["a".into()], false, CodeSource::Stdin).unwrap(), None);
        assert!(matches!(ask_reason(&[], true, CodeSource::Stdin), Err(Error::Usage { .. })));
    }
}
