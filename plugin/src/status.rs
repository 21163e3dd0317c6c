//! `kubectl stepup status` and `kubectl stepup revoke`: the user's enrollment and grants.

use jiff::{Timestamp, tz::TimeZone};
use kube::{Api, ResourceExt, api::DeleteParams};
use serde::Serialize;

use super::{
    cli::{Output, RevokeArgs, StatusArgs},
    cluster::{Identity, Session},
    error::{Error, Result},
    format::{self, GrantView},
    terminal::CodeSource,
};
use stepup_core::api::{self, EnrollmentPhase, StepUpEnrollment, StepUpGrant};

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentView {
    pub name: String,
    pub method: String,
    /// `PendingApproval`, `AwaitingConfirmation`, `Active`, `Locked`, or `Unknown` before the
    /// controller has seen it.
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Fingerprint of the enrollment's key: what an admin approves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// When locked by the failure rate limit: when codes are checked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<Timestamp>,
    pub consecutive_failures: i32,
}

impl EnrollmentView {
    pub fn new(e: &StepUpEnrollment) -> Self {
        let status = e.status.clone().unwrap_or_default();
        Self {
            name: e.metadata.name.clone().unwrap_or_default(),
            method: e.spec.method.to_string(),
            phase: status.phase.map_or_else(|| "Unknown".to_owned(), phase_name),
            message: status.message,
            key_fingerprint: status.key_fingerprint,
            locked_until: status.locked_until.map(|t| t.0),
            consecutive_failures: status.consecutive_failures,
        }
    }
}

/// The `WebAuthn` enrollment and the keys it registered.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityKeysView {
    #[serde(flatten)]
    pub enrollment: EnrollmentView,
    pub keys: Vec<stepup_core::api::EnrolledCredential>,
}

impl SecurityKeysView {
    pub fn new(e: &StepUpEnrollment) -> Self {
        let keys = e.status.as_ref().map(|s| s.credentials.clone()).unwrap_or_default();
        Self { enrollment: EnrollmentView::new(e), keys }
    }

    fn text(&self, user: &str, now: Timestamp, tz: &TimeZone) -> String {
        let e = &self.enrollment;
        let advice = match e.phase.as_str() {
            "PendingApproval" => format!(
                " (waiting for an admin: `kubectl stepup approve {user} --method WebAuthn --key {}`)",
                e.key_fingerprint.as_deref().unwrap_or("<fingerprint>")
            ),
            "AwaitingConfirmation" => " (run `kubectl stepup enroll --method WebAuthn` to finish)".to_owned(),
            "Locked" => e.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default(),
            _ => String::new(),
        };
        let mut out = format!("Keys:        {} security key(s) registered, {}{advice}\n", self.keys.len(), e.phase);
        if !self.keys.is_empty() {
            let rows: Vec<Vec<String>> = self
                .keys
                .iter()
                .map(|k| {
                    vec![
                        k.id_hash.clone(),
                        format::local_time(k.registered_at.0, now, tz),
                        if k.user_verified { "yes".into() } else { "no".into() },
                        k.allowed.clone(),
                    ]
                })
                .collect();
            out.push_str(&format::table(&["KEY", "REGISTERED", "VERIFIED YOU", "ALLOWED"], &rows));
        }
        out
    }
}

/// What `status -o json` prints.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
    /// `null` when not enrolled.
    pub enrollment: Option<EnrollmentView>,
    /// The security keys and passkeys (`WebAuthn` enrollment), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_keys: Option<SecurityKeysView>,
    pub grants: Vec<GrantView>,
    /// Until when each policy in its scope accepts the newest active grant: a policy counts a
    /// grant only up to its maxAge after issue, often well before the grant expires.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_until: Vec<PolicyAcceptance>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAcceptance {
    pub policy: String,
    pub max_age: String,
    pub until: Timestamp,
}

/// For the newest active grant: until when each policy it may satisfy accepts it (the earlier
/// of issue + the policy's maxAge and the grant's expiry), soonest first.
pub fn acceptance(grant: Option<&GrantView>, policies: &[stepup_core::api::StepUpPolicy]) -> Vec<PolicyAcceptance> {
    let Some(g) = grant.filter(|g| g.is_active()) else { return Vec::new() };
    let mut out: Vec<PolicyAcceptance> = policies
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            if !g.scope.policies.is_empty() && !g.scope.policies.contains(&name) {
                return None;
            }
            let max_age = jiff::SignedDuration::try_from(p.spec.max_age.as_std()).ok()?;
            Some(PolicyAcceptance {
                policy: name,
                max_age: p.spec.max_age.to_string(),
                until: (g.issued_at + max_age).min(g.expires_at),
            })
        })
        .collect();
    out.sort_by(|a, b| a.until.cmp(&b.until).then_with(|| a.policy.cmp(&b.policy)));
    out
}

impl StatusView {
    /// Newest grants first; only active ones unless `all`.
    pub fn new(
        me: &Identity,
        enrollment: Option<&StepUpEnrollment>,
        grants: &[StepUpGrant],
        all: bool,
        now: Timestamp,
    ) -> Self {
        let mut views: Vec<GrantView> =
            grants.iter().map(|g| GrantView::new(g, now)).filter(|g| all || g.is_active()).collect();
        views.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then_with(|| a.name.cmp(&b.name)));
        Self {
            user: me.username.clone(),
            uid: me.uid.clone(),
            groups: me.groups.clone(),
            enrollment: enrollment.map(EnrollmentView::new),
            security_keys: None,
            grants: views,
            accepted_until: Vec::new(),
        }
    }

    pub fn text(&self, now: Timestamp, tz: &TimeZone) -> String {
        let mut out = format!("User:        {}\n", self.user);
        let enrollment = match &self.enrollment {
            None if self.security_keys.is_some() => {
                "no authenticator app (`kubectl stepup enroll` adds one)".to_owned()
            }
            None => "not enrolled (run `kubectl stepup enroll`)".to_owned(),
            Some(e) => {
                let advice = match e.phase.as_str() {
                    "PendingApproval" => format!(
                        " (waiting for an admin: `kubectl stepup approve {} --key {}`)",
                        self.user,
                        e.key_fingerprint.as_deref().unwrap_or("<fingerprint>")
                    ),
                    "AwaitingConfirmation" => " (run `kubectl stepup enroll` to finish)".to_owned(),
                    "Locked" => match (&e.message, e.locked_until) {
                        (_, Some(until)) if until > now => {
                            format!(
                                " (too many failed codes: checked again in {})",
                                format::remaining(until.duration_since(now))
                            )
                        }
                        // The controller's sentence says what locked it and what lifts it.
                        (Some(m), _) => format!(" ({m})"),
                        (None, _) => format!(" (an admin must run `kubectl stepup unlock {}`)", self.user),
                    },
                    _ => String::new(),
                };
                let failures = if e.consecutive_failures > 0 {
                    format!(", {} failed attempt(s) since the last success", e.consecutive_failures)
                } else {
                    String::new()
                };
                format!("{} {}{advice}{failures}", e.method, e.phase)
            }
        };
        out.push_str(&format!("Enrollment:  {enrollment}\n"));
        if let Some(keys) = &self.security_keys {
            out.push_str(&keys.text(&self.user, now, tz));
        }
        if self.grants.is_empty() {
            out.push_str("Grants:      none active (get one with `kubectl stepup request`)\n");
            return out;
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .grants
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.state.to_owned(),
                    format::local_time(g.expires_at, now, tz),
                    if g.is_active() { format::remaining(g.expires_at.duration_since(now)) } else { "-".into() },
                    g.reason.clone().unwrap_or_else(|| "-".into()),
                    g.scope_text(),
                ]
            })
            .collect();
        out.push_str(&format::table(&["GRANT", "STATE", "EXPIRES", "REMAINING", "REASON", "SCOPE"], &rows));
        if !self.accepted_until.is_empty() {
            let each: Vec<String> = self
                .accepted_until
                .iter()
                .map(|a| {
                    let left = if a.until > now {
                        format!(
                            "until {} (in {})",
                            format::local_time(a.until, now, tz),
                            format::remaining(a.until.duration_since(now))
                        )
                    } else {
                        "no longer".to_owned()
                    };
                    format!("{} (max age {}) {left}", a.policy, a.max_age)
                })
                .collect();
            out.push_str(&format!(
                "\nA policy accepts a grant only up to its max age after issue. The newest grant counts for:\n  {}\n",
                each.join("\n  ")
            ));
        }
        out
    }
}

pub async fn status(session: &Session, args: &StatusArgs) -> Result<()> {
    let me = session.whoami().await?;
    let enrollments: Api<StepUpEnrollment> = session.all();
    let enrollment = enrollments
        .get_opt(&api::enrollment_name(&me.username))
        .await
        .map_err(session.kube_error("read your enrollment"))?;
    let grants: Vec<StepUpGrant> = session.list_mine(&me, "grants").await?;
    let now = Timestamp::now();
    let mut view = StatusView::new(&me, enrollment.as_ref(), &grants, args.all, now);
    let keys = enrollments
        .get_opt(&api::enrollment_name_for(&me.username, stepup_core::api::Method::WebAuthn))
        .await
        .map_err(session.kube_error("read your security keys"))?;
    view.security_keys = keys.as_ref().map(SecurityKeysView::new);
    // Who may not list policies still sees their grants.
    let policies: Api<stepup_core::api::StepUpPolicy> = session.all();
    if let Ok(list) = policies.list(&Default::default()).await {
        let newest = view.grants.iter().find(|g| g.is_active());
        view.accepted_until = acceptance(newest, &list.items);
    }
    match args.output {
        Output::Json => out!("{}", format::json(&view)),
        Output::Text => out!("{}", format::printable_lines(&view.text(now, &TimeZone::system()))),
    }
    Ok(())
}

/// The registered key `wanted` names: its full id, or a unique beginning of 8 or more characters.
pub fn key_named(wanted: &str, keys: &[stepup_core::api::EnrolledCredential]) -> Result<String> {
    let wanted = wanted.trim().to_ascii_lowercase();
    let matching: Vec<&str> = keys
        .iter()
        .map(|k| k.id_hash.as_str())
        .filter(|id| *id == wanted || (wanted.len() >= 8 && id.starts_with(&wanted)))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(Error::usage(
            format!("no registered security key {wanted:?}"),
            "`kubectl stepup status` lists the keys by id.",
        )),
        _ => Err(Error::usage(format!("{wanted:?} names {} keys", matching.len()), "Give more of the id.")),
    }
}

/// Removes a registered security key: the person's own with a fresh grant asked for exactly
/// that removal (so a stolen kubeconfig removes nothing), an admin's for another person in
/// their own name after their step-up.
pub async fn remove_key(session: &Session, args: &super::cli::RemoveKeyArgs) -> Result<()> {
    let me = session.whoami().await?;
    let user = args.user.clone().unwrap_or_else(|| me.username.clone());
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name_for(&user, stepup_core::api::Method::WebAuthn);
    let e = api.get_opt(&name).await.map_err(session.kube_error("read the security keys"))?.ok_or_else(|| {
        Error::usage(format!("{user:?} has no security keys"), "`kubectl stepup status` shows what is enrolled.")
    })?;
    let keys = e.status.as_ref().map(|s| s.credentials.clone()).unwrap_or_default();
    let id = key_named(&args.key, &keys)?;
    let mut marks = serde_json::Map::new();
    marks.insert(api::REMOVE_KEY_ANNOTATION.into(), id.clone().into());
    // The grant that proves it is the person: it lets nothing else through, and is spent after.
    let mut proof: Option<String> = None;
    if user == me.username {
        let grant = removal_grant(session, &me, &id, args).await?;
        marks.insert(api::REMOVAL_GRANT_ANNOTATION.into(), grant.clone().into());
        proof = Some(grant);
    } else {
        marks.insert(api::REMOVED_BY_ANNOTATION.into(), me.username.clone().into());
    }
    let patch = serde_json::json!({"metadata": {"annotations": marks}});
    let action = format!("remove a key from {user}'s enrollment");
    if proof.is_none() {
        // An admin act: the webhook asks for the admin's fresh second factor first.
        let dry = kube::api::PatchParams::default().dry_run();
        match api.patch(&name, &dry, &kube::api::Patch::Merge(&patch)).await {
            Err(kube::Error::Api(status)) if super::trailer::from_status(&status).is_some() => {
                super::admin::step_up(session, &me, &format!("remove a key from {user}'s enrollment")).await?;
            }
            Ok(_) | Err(_) => {}
        }
    }
    let patched = api
        .patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(session.kube_error(&action));
    let left = match patched {
        Ok(_) => {
            super::wait::until(
                session,
                &api,
                &name,
                args.timeout,
                |e| {
                    let keys = e.status.as_ref().map(|s| s.credentials.clone()).unwrap_or_default();
                    let marked =
                        e.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(api::REMOVE_KEY_ANNOTATION));
                    if marked {
                        Ok(super::wait::Step::Wait)
                    } else if keys.iter().any(|k| k.id_hash == id) {
                        Err(Error::other(
                            format!("the controller kept security key {id}"),
                            "`kubectl describe stepupenrollment` shows its Event SecurityKeyRemovalRefused with the reason.",
                        ))
                    } else {
                        Ok(super::wait::Step::Done(keys.len()))
                    }
                },
                |_| Error::ControllerTimeout { what: "remove the key".into(), after: args.timeout },
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Some(grant) = proof {
        let grants: Api<StepUpGrant> = session.all();
        let _ = grants.delete(&grant, &Default::default()).await;
    }
    let left = left?;
    outln!("Removed security key {id} from {user}'s enrollment; {left} left.");
    if left == 0 {
        outln!("Without a key, a new one needs an admin's approval: `kubectl stepup enroll --method WebAuthn`.");
    }
    Ok(())
}

/// A fresh grant of the person's, asked for removing key `id` and nothing else, from a
/// registered key (in the browser) or the authenticator app.
async fn removal_grant(session: &Session, me: &Identity, id: &str, args: &super::cli::RemoveKeyArgs) -> Result<String> {
    let ask = super::request::GrantRequest {
        code: String::new(),
        reason: Some(api::removal_reason(id)),
        duration: Some(stepup_core::api::Duration::from_secs(60)),
        scope: stepup_core::api::GrantScope { policies: vec![api::REMOVE_KEY_SCOPE.to_owned()], namespaces: vec![] },
        correlation: None,
    };
    let grant = match args.method {
        super::cli::EnrolledMethod::WebAuthn => {
            errln!("Confirm with one of your registered security keys (the one you remove will do).");
            let browser = if args.no_browser { super::sign_in::Browser::Print } else { super::sign_in::Browser::Open };
            super::request::obtain_key_grant(session, me, ask, browser, args.timeout.as_std(), args.timeout).await?
        }
        super::cli::EnrolledMethod::Totp => {
            let response_key = super::request::ensure_enrolled(session, me).await?;
            let source = if args.code_stdin { CodeSource::Stdin } else { CodeSource::Terminal };
            let code = super::terminal::read_code("Code from your authenticator app: ", source)?;
            let ask = super::request::GrantRequest { code, ..ask };
            super::request::obtain_grant(session, me, &response_key, ask, stepup_core::api::Duration::from_secs(30))
                .await?
        }
    };
    Ok(grant.name_any())
}

/// Which grants `revoke` deletes: the named ones, all active ones, or the only active one.
pub fn to_revoke(args: &RevokeArgs, mine: &[GrantView]) -> Result<Vec<String>> {
    if !args.grants.is_empty() {
        return Ok(args.grants.clone());
    }
    let active: Vec<String> = mine.iter().filter(|g| g.is_active()).map(|g| g.name.clone()).collect();
    match active.len() {
        0 => Ok(Vec::new()),
        1 => Ok(active),
        _ if args.all => Ok(active),
        _ => Err(Error::usage(
            format!("you hold {} active grants ({})", active.len(), active.join(", ")),
            "Name the grant to revoke, or pass --all.",
        )),
    }
}

pub async fn revoke(session: &Session, args: &RevokeArgs) -> Result<()> {
    let me = session.whoami().await?;
    let grants: Vec<StepUpGrant> = session.list_mine(&me, "grants").await?;
    let now = Timestamp::now();
    let views: Vec<GrantView> = grants.iter().map(|g| GrantView::new(g, now)).collect();
    let names = to_revoke(args, &views)?;
    if names.is_empty() {
        outln!("You hold no active grant; nothing to revoke.");
        return Ok(());
    }
    let api: Api<StepUpGrant> = session.all();
    for name in names {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => outln!("Revoked {name}."),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Error::usage(
                    format!("there is no grant named {name}"),
                    "`kubectl stepup status` lists your grants.",
                ));
            }
            Err(e) => return Err(Error::from_kube(e, &format!("revoke {name}"), &session.server)),
        }
    }
    Ok(())
}

/// The phase as the API spells it (`PendingApproval`, ...).
pub fn phase_name(phase: EnrollmentPhase) -> String {
    serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{
        api::{StepUpEnrollmentSpec, StepUpEnrollmentStatus},
        testing::{grant, minutes, policy, t0},
    };

    /// A newcomer's report (issue 30): status showed "59m 53s remaining" for a grant
    /// prod-secrets accepts for 15 minutes only. It now says until when each policy counts it.
    #[test]
    fn status_says_until_when_each_policy_accepts_the_grant() {
        use stepup_core::api::Operation::Delete;
        let now = t0() + minutes(2);
        let g = grant("g-1", "alice").issued(t0()).expires(t0() + minutes(60)).build();
        let policies = [
            policy("prod-secrets").rule(&[Delete], "", &["secrets"]).max_age("15m").build(),
            policy("prod-exec").rule(&[Delete], "", &["pods"]).max_age("1m").build(),
            policy("long").rule(&[Delete], "", &["configmaps"]).max_age("2h").build(),
        ];
        let mut view = StatusView::new(&alice(), None, std::slice::from_ref(&g), false, now);
        view.accepted_until = acceptance(view.grants.first(), &policies);
        let until: Vec<(&str, Timestamp)> = view.accepted_until.iter().map(|a| (a.policy.as_str(), a.until)).collect();
        assert_eq!(
            until,
            [("prod-exec", t0() + minutes(1)), ("prod-secrets", t0() + minutes(15)), ("long", t0() + minutes(60))]
        );
        let text = view.text(now, &TimeZone::UTC);
        assert!(text.contains("prod-secrets (max age 15m) until 12:15:00 UTC (in 13m)"), "{text}");
        assert!(text.contains("prod-exec (max age 1m) no longer"), "{text}");

        let scoped = grant("g-2", "alice").issued(t0()).expires(t0() + minutes(60)).scope_policies(&["long"]).build();
        let view = StatusView::new(&alice(), None, &[scoped], false, now);
        let only: Vec<String> = acceptance(view.grants.first(), &policies).into_iter().map(|a| a.policy).collect();
        assert_eq!(only, ["long"], "a scoped grant counts only for its policies");
    }

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: "uid-alice-1".into(),
            groups: vec!["developers".into()],
            pod_bound: false,
            extra: Default::default(),
        }
    }

    #[test]
    fn security_keys_are_listed_with_what_registered_them() {
        let now = stepup_core::testing::t0();
        let mut keys = enrollment(EnrollmentPhase::Active, 0);
        keys.spec.method = stepup_core::api::Method::WebAuthn;
        keys.status.as_mut().unwrap().credentials = vec![stepup_core::api::EnrolledCredential {
            id_hash: "3aab35e8c53f55b02cf433bc125c8dca".into(),
            aaguid: None,
            registered_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            allowed: "approved by root".into(),
            user_verified: true,
        }];
        let mut view = StatusView::new(&alice(), None, &[], false, now);
        view.security_keys = Some(SecurityKeysView::new(&keys));
        let text = view.text(now, &TimeZone::UTC);
        assert!(text.contains("Keys:        1 security key(s) registered, Active\n"), "{text}");
        assert!(text.contains("Enrollment:  no authenticator app"), "{text}");
        assert!(text.contains("3aab35e8c53f55b02cf433bc125c8dca"), "{text}");
        assert!(text.contains("approved by root"), "{text}");
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["securityKeys"]["method"], "WebAuthn");
        assert_eq!(json["securityKeys"]["keys"][0]["userVerified"], true);

        keys.status.as_mut().unwrap().phase = Some(EnrollmentPhase::PendingApproval);
        keys.status.as_mut().unwrap().key_fingerprint = Some("aaaa-bbbb".into());
        view.security_keys = Some(SecurityKeysView::new(&keys));
        let text = view.text(now, &TimeZone::UTC);
        assert!(text.contains("`kubectl stepup approve alice --method WebAuthn --key aaaa-bbbb`"), "{text}");
    }

    fn enrollment(phase: EnrollmentPhase, failures: i32) -> StepUpEnrollment {
        let mut e = StepUpEnrollment::new(
            &api::enrollment_name("alice"),
            StepUpEnrollmentSpec {
                user: "alice".into(),
                method: stepup_core::api::Method::Totp,
                public_key: String::new(),
                confirmation: None,
                bootstrap: false,
                bootstrap_proof: None,
            },
        );
        e.status =
            Some(StepUpEnrollmentStatus { phase: Some(phase), consecutive_failures: failures, ..Default::default() });
        e
    }

    #[test]
    fn status_lists_active_grants_newest_first() {
        let now = t0();
        let grants = [
            grant("old", "alice").issued(now - minutes(20)).expires(now + minutes(10)).build(),
            grant("new", "alice").issued(now - minutes(1)).expires(now + minutes(29)).reason("INC-42").build(),
            grant("gone", "alice").issued(now - minutes(90)).expires(now - minutes(30)).build(),
        ];
        let view = StatusView::new(&alice(), Some(&enrollment(EnrollmentPhase::Active, 0)), &grants, false, now);
        let names: Vec<&str> = view.grants.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["new", "old"]);
        let text = view.text(now, &TimeZone::UTC);
        assert!(text.contains("Enrollment:  TOTP Active\n"), "{text}");
        assert!(
            text.contains("new     Active   12:29:00 UTC   29m         INC-42   all policies and namespaces"),
            "{text}"
        );

        let all = StatusView::new(&alice(), None, &grants, true, now);
        assert_eq!(all.grants.len(), 3);
        assert!(all.text(now, &TimeZone::UTC).contains("not enrolled (run `kubectl stepup enroll`)"));
    }

    #[test]
    fn status_explains_what_blocks_the_user() {
        let now = t0();
        for (phase, failures, expected) in [
            (
                EnrollmentPhase::PendingApproval,
                0,
                "TOTP PendingApproval (waiting for an admin: `kubectl stepup approve alice --key <fingerprint>`)",
            ),
            (
                EnrollmentPhase::Locked,
                10,
                "TOTP Locked (an admin must run `kubectl stepup unlock alice`), 10 failed attempt(s)",
            ),
        ] {
            let text = StatusView::new(&alice(), Some(&enrollment(phase, failures)), &[], false, now)
                .text(now, &TimeZone::UTC);
            assert!(text.contains(expected), "{text}");
            assert!(text.contains("none active"), "{text}");
        }
        // Locked by the rate limit: how long is left.
        let mut limited = enrollment(EnrollmentPhase::Locked, 3);
        limited.status.as_mut().unwrap().locked_until =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now + minutes(3)));
        let text = StatusView::new(&alice(), Some(&limited), &[], false, now).text(now, &TimeZone::UTC);
        assert!(text.contains("too many failed codes: checked again in 3m"), "{text}");
    }

    #[test]
    fn status_json_is_stable_for_scripts() {
        let now = t0();
        let grants = [grant("g", "alice").issued(now).expires(now + minutes(15)).build()];
        let view = StatusView::new(&alice(), Some(&enrollment(EnrollmentPhase::Active, 0)), &grants, false, now);
        let value = serde_json::to_value(&view).unwrap();
        assert_eq!(value["user"], "alice");
        assert_eq!(value["uid"], "uid-alice-1");
        assert_eq!(value["enrollment"]["phase"], "Active");
        assert_eq!(value["enrollment"]["consecutiveFailures"], 0);
        assert_eq!(value["grants"][0]["expiresInSeconds"], 900);
        let not_enrolled = serde_json::to_value(StatusView::new(&alice(), None, &[], false, now)).unwrap();
        assert_eq!(not_enrolled["enrollment"], serde_json::Value::Null);
        assert_eq!(phase_name(EnrollmentPhase::AwaitingConfirmation), "AwaitingConfirmation");
    }

    #[test]
    fn revoke_picks_the_only_active_grant_or_asks() {
        let now = t0();
        let view = |name: &str, expires: i64| {
            GrantView::new(&grant(name, "alice").issued(now - minutes(1)).expires(now + minutes(expires)).build(), now)
        };
        let args =
            |grants: &[&str], all: bool| RevokeArgs { grants: grants.iter().map(|g| g.to_string()).collect(), all };
        let one = [view("a", 10), view("old", -1)];
        assert_eq!(to_revoke(&args(&[], false), &one).unwrap(), ["a"]);
        let two = [view("a", 10), view("b", 10)];
        assert!(matches!(to_revoke(&args(&[], false), &two), Err(Error::Usage { .. })));
        assert_eq!(to_revoke(&args(&[], true), &two).unwrap(), ["a", "b"]);
        assert_eq!(to_revoke(&args(&["b"], false), &two).unwrap(), ["b"]);
        assert!(to_revoke(&args(&[], false), &[]).unwrap().is_empty());
    }
}
