//! `kubectl stepup request`: exchange a one-time code for a grant. The wrapper uses the same path.

use std::collections::BTreeMap;

use jiff::{Timestamp, tz::TimeZone};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, PostParams},
};

use super::{
    cli::{Output, RequestArgs},
    cluster::{Identity, Session},
    error::{Error, Result},
    format::{self, GrantView},
    terminal::{self, CodeSource, Progress},
    wait::{self, Step},
};
use crate::{
    api::{
        self, ChallengePhase, Duration, Enforcement, EnrollmentPhase, GrantScope, Method, StepUpChallenge,
        StepUpChallengeSpec, StepUpEnrollment, StepUpGrant, StepUpPolicy,
    },
    policy::CompiledPolicy,
};

/// What to ask the controller for.
#[derive(Clone, Debug, Default)]
pub struct GrantRequest {
    pub code: String,
    pub reason: Option<String>,
    pub duration: Option<Duration>,
    pub scope: GrantScope,
}

pub async fn run(session: &Session, args: &RequestArgs) -> Result<()> {
    let me = session.whoami().await?;
    ensure_enrolled(session, &me).await?;
    let scope = GrantScope { policies: args.policies.clone(), namespaces: args.namespaces.clone() };
    let source = if args.code_stdin { CodeSource::Stdin } else { CodeSource::Terminal };
    let reason = match args.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(r.to_owned()),
        None => {
            let needing = policies_requiring_reason(session, &scope.policies).await;
            ask_reason(&needing, args.reason_required, source)?
        }
    };
    let code = terminal::read_code("Code from your authenticator app: ", source)?;
    let grant =
        obtain_grant(session, &me, GrantRequest { code, reason, duration: args.duration, scope }, args.timeout).await?;
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
    Ok(())
}

/// Fails early, before a code is typed, when the enrollment cannot verify one.
pub async fn ensure_enrolled(session: &Session, me: &Identity) -> Result<()> {
    let api: Api<StepUpEnrollment> = session.all();
    let enrollment = match api.get_opt(&api::enrollment_name(&me.username)).await {
        Ok(e) => e,
        // Without permission to read it, let the controller's verdict speak.
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(e) => return Err(Error::from_kube(e, "read your enrollment", &session.server)),
    };
    let Some(enrollment) = enrollment else { return Err(Error::NotEnrolled) };
    let status = enrollment.status.unwrap_or_default();
    match status.phase {
        Some(EnrollmentPhase::Locked) => Err(Error::Locked { user: me.username.clone() }),
        Some(EnrollmentPhase::PendingApproval) => {
            Err(Error::PendingApproval { user: me.username.clone(), message: status.message })
        }
        Some(EnrollmentPhase::AwaitingConfirmation) => Err(Error::Unconfirmed),
        Some(EnrollmentPhase::Active) | None => Ok(()),
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

/// `alice@example.com` → `alice-example-com-`: a readable generateName for challenges.
pub fn challenge_prefix(username: &str) -> String {
    let prefix = api::name_prefix(username, 40);
    if prefix.is_empty() { "user-".to_owned() } else { format!("{prefix}-") }
}

/// The challenge a user creates: for themselves, labelled as theirs, with the code.
pub fn challenge_for(me: &Identity, request: GrantRequest) -> StepUpChallenge {
    StepUpChallenge {
        metadata: ObjectMeta {
            generate_name: Some(challenge_prefix(&me.username)),
            labels: Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&me.username))])),
            ..ObjectMeta::default()
        },
        spec: StepUpChallengeSpec {
            user: me.username.clone(),
            uid: Some(me.uid.clone()).filter(|u| !u.is_empty()),
            method: Method::Totp,
            response: Some(request.code),
            reason: request.reason,
            duration: request.duration,
            scope: request.scope,
        },
        status: None,
    }
}

/// Creates the challenge, waits for the controller's verdict and returns the grant.
pub async fn obtain_grant(
    session: &Session,
    me: &Identity,
    request: GrantRequest,
    timeout: Duration,
) -> Result<StepUpGrant> {
    let challenges: Api<StepUpChallenge> = session.all();
    let created = challenges
        .create(&PostParams::default(), &challenge_for(me, request))
        .await
        .map_err(session.kube_error("create the challenge"))?;
    let name = created.name_any();
    let progress = Progress::start("Verifying the code");
    let verdict = wait::until(
        session,
        &challenges,
        &name,
        timeout,
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
    )
    .await;
    progress.finish();
    match verdict? {
        Ok(grant) => {
            let grants: Api<StepUpGrant> = session.all();
            grants.get(&grant).await.map_err(session.kube_error(&format!("read grant {grant}")))
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
    use crate::testing::policy;

    #[test]
    fn challenges_are_for_the_authenticated_user_only() {
        let me = Identity { username: "oidc:Alice@example.com".into(), uid: "u-1".into(), groups: vec![] };
        let request = GrantRequest {
            code: "123456".into(),
            reason: Some("INC-42".into()),
            duration: Some("30m".parse().unwrap()),
            scope: GrantScope { policies: vec![], namespaces: vec!["prod".into()] },
        };
        let c = challenge_for(&me, request);
        assert_eq!(c.metadata.generate_name.as_deref(), Some("oidc-alice-example-com-"));
        assert_eq!(c.labels()[api::USER_LABEL], api::user_label_value("oidc:Alice@example.com"));
        let spec = serde_json::to_value(&c.spec).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({
                "user": "oidc:Alice@example.com", "uid": "u-1", "method": "TOTP", "response": "123456",
                "reason": "INC-42", "duration": "30m", "scope": {"namespaces": ["prod"]}
            })
        );
        let anonymous_uid = Identity { uid: String::new(), ..me };
        assert_eq!(challenge_for(&anonymous_uid, GrantRequest::default()).spec.uid, None);
    }

    #[test]
    fn generate_names_are_valid_prefixes() {
        assert_eq!(challenge_prefix("alice"), "alice-");
        assert_eq!(challenge_prefix("::"), "user-");
        assert_eq!(challenge_prefix(&"x".repeat(300)).len(), 41);
    }

    #[test]
    fn only_enforcing_policies_in_scope_ask_for_a_reason() {
        let policies = [
            policy("a").rule(&[crate::api::Operation::Delete], "", &["secrets"]).require_reason().build(),
            policy("b").rule(&[crate::api::Operation::Delete], "", &["secrets"]).build(),
            policy("c")
                .rule(&[crate::api::Operation::Delete], "", &["secrets"])
                .require_reason()
                .enforcement(Enforcement::Warn)
                .build(),
        ];
        assert_eq!(reason_requirers(&policies, &[]), ["a"]);
        assert_eq!(reason_requirers(&policies, &["b".into()]), Vec::<String>::new());
    }

    #[test]
    fn automation_never_waits_for_a_reason() {
        assert_eq!(ask_reason(&[], false, CodeSource::Stdin).unwrap(), None);
        assert_eq!(ask_reason(&["a".into()], false, CodeSource::Stdin).unwrap(), None);
        assert!(matches!(ask_reason(&[], true, CodeSource::Stdin), Err(Error::Usage { .. })));
    }
}
