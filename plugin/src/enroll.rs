//! `kubectl stepup enroll`: bind an authenticator app to the user. The seed travels sealed to
//! a key that lives only in this process, so it is never readable in the cluster; the plugin
//! shows that key's fingerprint, which is what an admin approves, and every code it sends is
//! sealed to the controller and bound to this very key. If anyone changes the key meanwhile,
//! the plugin stops and says so.

use std::collections::BTreeMap;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use zeroize::Zeroizing;

use super::{
    cli::EnrollArgs,
    cluster::{Identity, Session},
    error::{Error, Result},
    terminal::{self, CodeSource, Progress},
    wait::{self, Step},
};
use stepup_core::{
    api::{self, EnrollmentPhase, Method, StepUpEnrollment, StepUpEnrollmentSpec, StepUpEnrollmentStatus},
    verify::{
        response::{self, EnrollmentPurpose},
        seal::{EphemeralKey, fingerprint},
        totp::{base32_encode, otpauth_uri},
    },
};

/// What authenticator apps show as the issuer, before the cluster's name.
pub const ISSUER: &str = "kube-stepup";

/// The issuer of one cluster's entry, `kube-stepup (prod-eu)`: a person enrolled in several
/// clusters tells their entries apart, and apps that key entries by issuer and account keep
/// them all.
pub fn issuer(cluster: &str) -> String {
    match cluster.trim() {
        "" => ISSUER.to_owned(),
        name => format!("{ISSUER} ({name})"),
    }
}

/// The `otpauth://` URI of the QR code: issuer with the cluster's name, the username as account.
pub fn enrollment_uri(seed: &[u8], cluster: &str, username: &str) -> Zeroizing<String> {
    Zeroizing::new(otpauth_uri(seed, &issuer(cluster), username))
}
const ATTEMPTS: usize = 3;

fn status_of(e: &StepUpEnrollment) -> StepUpEnrollmentStatus {
    e.status.clone().unwrap_or_default()
}

/// The `LastCode` condition, once the controller has checked the code sent with `generation`
/// (or a later spec): whether it was accepted, and the controller's sentence.
pub fn last_code(e: &StepUpEnrollment, generation: i64) -> Option<(bool, String)> {
    let status = e.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "LastCode")?;
    (c.observed_generation.unwrap_or_default() >= generation).then(|| (c.status == "True", c.message.clone()))
}

/// Refuses to go on once the enrollment carries a key other than this run's.
fn ensure_key(e: &StepUpEnrollment, key: &EphemeralKey) -> Result<()> {
    if e.spec.public_key != key.public_key_b64() {
        return Err(Error::KeyChanged { now: fingerprint(&e.spec.public_key) });
    }
    Ok(())
}

/// A code sealed to the controller's key for this enrollment and key.
fn seal_for(e: &StepUpEnrollment, code: &str, purpose: EnrollmentPurpose) -> Result<String> {
    let key = e.status.as_ref().and_then(|s| s.response_key.clone()).ok_or_else(|| {
        Error::other(
            "the stepup controller has not published its key in your enrollment yet",
            "Is the stepup controller running, and is it up to date? Ask your platform team.",
        )
    })?;
    response::seal_code(&key, code, response::enrollment_binding(e, purpose)).map_err(|e| {
        Error::other(format!("cannot seal the code to the controller's key: {e}"), "Ask your platform team.")
    })
}

/// With `--bootstrap`: proof that this run can read the bootstrap token, which only installers
/// can. The controller honours the bootstrap only with it.
async fn bootstrap_proof(session: &Session, user: &str, key: &EphemeralKey) -> Result<String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(session.client.clone(), &session.stepup_namespace);
    let unreadable = |why: String| {
        Error::other(
            format!(
                "cannot use the bootstrap: {why} (Secret {} in namespace {:?}, which only whoever installed stepup can read)",
                stepup_core::keys::BOOTSTRAP_TOKEN_SECRET,
                session.stepup_namespace
            ),
            "Ask whoever installed stepup to enroll first with --bootstrap, then to approve you (`kubectl stepup enroll` without --bootstrap).",
        )
    };
    let secret = match secrets.get_opt(stepup_core::keys::BOOTSTRAP_TOKEN_SECRET).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(unreadable("the bootstrap is not open".into())),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Err(unreadable("you may not read its token".into()));
        }
        Err(e) => return Err(session.kube_error("read the bootstrap token")(e)),
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(stepup_core::keys::BOOTSTRAP_TOKEN_KEY))
        .and_then(|t| String::from_utf8(t.0.clone()).ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unreadable("the bootstrap is closed".into()))?;
    Ok(stepup_core::keys::bootstrap_proof(&token, user, &key.public_key_b64()))
}

pub async fn run(session: &Session, args: &EnrollArgs) -> Result<()> {
    if args.method == super::cli::EnrolledMethod::WebAuthn {
        return security_key(session, args).await;
    }
    let me = session.whoami().await?;
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name(&me.username);
    let key = EphemeralKey::generate();
    let fp = fingerprint(&key.public_key_b64());
    let proof = if args.bootstrap { Some(bootstrap_proof(session, &me.username, &key).await?) } else { None };
    let existing = api.get_opt(&name).await.map_err(session.kube_error("read your enrollment"))?;

    // For a re-enrollment with a code of the current device: the generation that carries it.
    let mut old_code_sent: Option<i64> = None;
    let reenrolling = existing
        .as_ref()
        .is_some_and(|e| matches!(status_of(e).phase, Some(EnrollmentPhase::Active | EnrollmentPhase::Locked)));
    match &existing {
        None => {
            let mut enrollment = StepUpEnrollment::new(
                &name,
                StepUpEnrollmentSpec {
                    user: me.username.clone(),
                    method: Method::Totp,
                    public_key: key.public_key_b64(),
                    confirmation: None,
                    bootstrap: args.bootstrap,
                    bootstrap_proof: proof.clone(),
                },
            );
            enrollment.metadata.labels =
                Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&me.username))]));
            api.create(&PostParams::default(), &enrollment)
                .await
                .map_err(session.kube_error("create your enrollment"))?;
        }
        Some(e) => match status_of(e).phase {
            Some(EnrollmentPhase::Locked) if !args.reenroll => {
                return Err(Error::Locked { user: me.username, message: status_of(e).message });
            }
            Some(EnrollmentPhase::Active) if !args.reenroll => {
                outln!(
                    "You are already enrolled ({}) as {}. To move to a new authenticator app, run `kubectl stepup enroll --reenroll`.",
                    e.spec.method,
                    me.username
                );
                return Ok(());
            }
            Some(EnrollmentPhase::Active) => {
                // The old device proves the re-enrollment comes from the person who holds it;
                // without it, an admin approves this run's key by fingerprint.
                let code = terminal::ask_hidden(
                    "Code from your CURRENT authenticator app (Enter if you lost it: an admin approves the new key instead): ",
                )?;
                let mut next = e.clone();
                next.spec.public_key = key.public_key_b64();
                let confirmation = match code.trim() {
                    "" => None,
                    typed => Some(seal_for(&next, &terminal::normalize_code(typed)?, EnrollmentPurpose::Reenrollment)?),
                };
                let generation = patch_spec(
                    session,
                    &api,
                    &name,
                    json!({"publicKey": key.public_key_b64(), "confirmation": confirmation}),
                )
                .await?;
                if confirmation.is_some() {
                    old_code_sent = Some(generation);
                }
            }
            // Waiting for approval or confirmation, or locked with a lost device: the secret
            // was (or will be) sealed to a key an earlier run held; this run's key replaces it.
            _ => {
                patch_spec(
                    session,
                    &api,
                    &name,
                    json!({
                        "publicKey": key.public_key_b64(),
                        "confirmation": null,
                        "bootstrap": args.bootstrap,
                        "bootstrapProof": proof,
                    }),
                )
                .await?;
            }
        },
    }
    outln!("Your enrollment key fingerprint: {fp}");
    outln!("(An admin who approves your enrollment is shown this fingerprint: compare it with theirs.)\n");

    let seed = receive_seed(session, &api, &me, &key, args, old_code_sent, reenrolling).await?;
    show_secret(&enrollment_uri(&seed, &session.cluster, &me.username), &issuer(&session.cluster), &seed);
    drop(seed);
    confirm(session, &api, &me, &key, args).await?;
    outln!(
        "\nEnrolled: {} now asks your authenticator app when a policy requires step-up.\n\
         When a command is refused, run `kubectl stepup request`, or prefix the command with `kubectl stepup --`.",
        issuer(&session.cluster)
    );
    Ok(())
}

/// `kubectl stepup enroll --method WebAuthn`: registers one more security key or passkey. The
/// registration's options come sealed to this run's key (which an admin approves by
/// fingerprint, as for TOTP): only this run can answer them. The browser makes the credential
/// on the page this run serves; the plugin seals it to the controller, bound to this key.
async fn security_key(session: &Session, args: &EnrollArgs) -> Result<()> {
    let me = session.whoami().await?;
    let user = me.username.clone();
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name_for(&user, Method::WebAuthn);
    let key = EphemeralKey::generate();
    let fp = fingerprint(&key.public_key_b64());
    let proof = if args.bootstrap { Some(bootstrap_proof(session, &user, &key).await?) } else { None };
    // The grant a registered key vouched with: spent once the new key is registered.
    let mut voucher: Option<String> = None;
    match api.get_opt(&name).await.map_err(session.kube_error("read your enrollment"))? {
        None => {
            let mut enrollment = StepUpEnrollment::new(
                &name,
                StepUpEnrollmentSpec {
                    user: user.clone(),
                    method: Method::WebAuthn,
                    public_key: key.public_key_b64(),
                    confirmation: None,
                    bootstrap: args.bootstrap,
                    bootstrap_proof: proof.clone(),
                },
            );
            enrollment.metadata.labels =
                Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&user))]));
            api.create(&PostParams::default(), &enrollment)
                .await
                .map_err(session.kube_error("create your enrollment"))?;
        }
        Some(e) if status_of(&e).phase == Some(EnrollmentPhase::Locked) => {
            return Err(Error::Locked { user, message: status_of(&e).message });
        }
        Some(e) => {
            let spec = json!({"publicKey": key.public_key_b64(), "confirmation": null, "bootstrap": args.bootstrap, "bootstrapProof": proof});
            let keys = status_of(&e).credentials.len();
            let mut patch = json!({ "spec": spec });
            if keys > 0 && !args.approval && status_of(&e).phase == Some(EnrollmentPhase::Active) {
                // A registered key vouches for the new one: a grant asked for this very key.
                errln!(
                    "You have {keys} security key(s) registered: use one of them to allow the new one (or run with --approval to ask an admin instead)."
                );
                let ask = super::request::GrantRequest {
                    code: String::new(),
                    reason: Some(api::vouch_reason(&fp)),
                    duration: Some(stepup_core::api::Duration::from_secs(60)),
                    scope: stepup_core::api::GrantScope {
                        policies: vec![api::VOUCH_SCOPE.to_owned()],
                        namespaces: vec![],
                    },
                    correlation: None,
                };
                let browser =
                    if args.no_browser { super::sign_in::Browser::Print } else { super::sign_in::Browser::Open };
                let grant =
                    super::request::obtain_key_grant(session, &me, ask, browser, args.timeout.as_std(), args.timeout)
                        .await?;
                voucher = grant.metadata.name.clone();
                patch["metadata"] = json!({"annotations": {api::VOUCHING_GRANT_ANNOTATION: grant.metadata.name}});
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(session.kube_error("update your enrollment"))?;
        }
    }
    outln!("Your enrollment key fingerprint: {fp}");
    outln!("(An admin who approves your security key is shown this fingerprint: compare it with theirs.)\n");

    let progress = Progress::start("Waiting for the stepup controller to prepare the registration");
    let options = wait::until(
        session,
        &api,
        &name,
        args.timeout,
        |e| {
            ensure_key(e, &key)?;
            let status = status_of(e);
            if status.phase == Some(EnrollmentPhase::AwaitingConfirmation)
                && let Some(Ok(options)) = status.sealed_secret.as_deref().map(|s| key.open(s))
            {
                return Ok(Step::Done(String::from_utf8_lossy(&options).into_owned()));
            }
            if matches!(status.phase, Some(EnrollmentPhase::PendingApproval | EnrollmentPhase::Active)) {
                progress.set(&format!(
                    "Waiting for a stepup admin: ask them to run `kubectl stepup approve {user} --method WebAuthn --key {fp}` (Ctrl-C to stop)"
                ));
            }
            Ok(Step::Wait)
        },
        |last| match last.and_then(|e| status_of(e).phase) {
            Some(EnrollmentPhase::PendingApproval | EnrollmentPhase::Active) => {
                Error::PendingApproval { user: user.clone(), message: last.and_then(|e| status_of(e).message) }
            }
            _ => Error::ControllerTimeout { what: "prepare the registration".into(), after: args.timeout },
        },
    )
    .await;
    progress.finish();
    let options = options?;

    let detail = format!(
        "{user} registers a security key or passkey for step-up on {}. Fingerprint of this request: {fp}.",
        if session.cluster.is_empty() { "this cluster" } else { session.cluster.as_str() }
    );
    let page =
        super::ceremony::Page::serve(super::ceremony::Kind::Register, options, "Register your security key", &detail)
            .await?;
    errln!("Register your security key or passkey on this page:\n  {}", page.url());
    if !args.no_browser {
        super::sign_in::open_browser(page.url());
    }
    let (page, answer) = page.answered(args.timeout.as_std()).await?;
    let current = api.get(&name).await.map_err(session.kube_error("read your enrollment"))?;
    ensure_key(&current, &key)?;
    let sealed = seal_for(&current, &answer, EnrollmentPurpose::KeyRegistration)?;
    let generation = patch_spec(session, &api, &name, json!({ "confirmation": sealed })).await?;
    let progress = Progress::start("Checking the registration");
    let verdict = wait::until(
        session,
        &api,
        &name,
        args.timeout,
        |e| {
            ensure_key(e, &key)?;
            match last_code(e, generation) {
                Some((true, message)) => Ok(Step::Done(Ok(message))),
                Some((false, message)) => Ok(Step::Done(Err(message))),
                None => Ok(Step::Wait),
            }
        },
        |_| Error::ControllerTimeout { what: "check the registration".into(), after: args.timeout },
    )
    .await;
    progress.finish();
    let outcome = match &verdict {
        Ok(Ok(message)) => {
            super::ceremony::Outcome::Done { message: format!("{}. You can close this page.", sentence(message)) }
        }
        Ok(Err(message)) => super::ceremony::Outcome::Failed { message: format!("Refused: {message}") },
        Err(error) => super::ceremony::Outcome::Failed { message: error.to_string() },
    };
    page.finish(outcome).await;
    if let Some(grant) = voucher {
        // It lets nothing else through, and has done its one job: gone from `status`.
        let grants: Api<stepup_core::api::StepUpGrant> = session.all();
        let _ = grants.delete(&grant, &Default::default()).await;
    }
    match verdict? {
        Ok(message) => {
            outln!(
                "\nEnrolled: {message}.\nWhen a policy asks for a security key, run `kubectl stepup request --method WebAuthn`, or prefix the command with `kubectl stepup --`."
            );
            Ok(())
        }
        Err(message) => Err(Error::KeyRefused { message }),
    }
}

/// `message` with a capital first letter, as the start of a sentence.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Patches the spec; returns the new generation, which the controller reports in
/// `status.observedGeneration` (and the `LastCode` condition) once it has acted on it.
async fn patch_spec(
    session: &Session,
    api: &Api<StepUpEnrollment>,
    name: &str,
    spec: serde_json::Value,
) -> Result<i64> {
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .map_err(session.kube_error("update your enrollment"))?;
    Ok(patched.metadata.generation.unwrap_or_default())
}

/// Waits for the seed sealed to this run's key.
async fn receive_seed(
    session: &Session,
    api: &Api<StepUpEnrollment>,
    me: &Identity,
    key: &EphemeralKey,
    args: &EnrollArgs,
    old_code_sent: Option<i64>,
    reenrolling: bool,
) -> Result<Zeroizing<Vec<u8>>> {
    let user = me.username.clone();
    let fp = fingerprint(&key.public_key_b64());
    let progress = Progress::start("Waiting for the stepup controller to prepare your secret");
    let result = wait::until(
        session,
        api,
        &api::enrollment_name(&me.username),
        args.timeout,
        |e| {
            ensure_key(e, key)?;
            let status = status_of(e);
            if let Some(g) = old_code_sent
                && let Some((false, message)) = last_code(e, g)
            {
                return Err(Error::CodeRefused { message });
            }
            match status.phase {
                Some(EnrollmentPhase::AwaitingConfirmation) => {
                    // A secret this key cannot open was sealed for an earlier run: keep waiting.
                    match status.sealed_secret.as_deref().map(|s| key.open(s)) {
                        Some(Ok(seed)) => Ok(Step::Done(seed)),
                        _ => Ok(Step::Wait),
                    }
                }
                Some(EnrollmentPhase::PendingApproval) => {
                    progress.set(&format!(
                        "Waiting for a stepup admin: ask them to run `kubectl stepup approve {user} --key {fp}` (Ctrl-C to stop)"
                    ));
                    Ok(Step::Wait)
                }
                Some(EnrollmentPhase::Locked | EnrollmentPhase::Active) if old_code_sent.is_none() && reenrolling => {
                    progress.set(&format!(
                        "Waiting for a stepup admin: ask them to run `kubectl stepup reset {user} --key {fp}` (Ctrl-C to stop)"
                    ));
                    Ok(Step::Wait)
                }
                _ => Ok(Step::Wait),
            }
        },
        |last| match last.and_then(|e| status_of(e).phase) {
            Some(EnrollmentPhase::PendingApproval) => {
                Error::PendingApproval { user: me.username.clone(), message: last.and_then(|e| status_of(e).message) }
            }
            Some(EnrollmentPhase::Locked) => {
                Error::Locked { user: me.username.clone(), message: last.and_then(|e| status_of(e).message) }
            }
            _ => Error::ControllerTimeout { what: "send your secret".into(), after: args.timeout },
        },
    )
    .await;
    progress.finish();
    result
}

fn show_secret(uri: &str, issuer: &str, seed: &[u8]) {
    let key = Zeroizing::new(base32_encode(seed));
    let grouped: Vec<&str> = key.as_bytes().chunks(4).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    outln!("Scan this QR code with your authenticator app (any TOTP app: Google Authenticator, 1Password, ...):\n");
    if let Some(qr) = terminal::qr_code(uri, terminal::QrStyle::for_stdout()) {
        outln!("{qr}");
    }
    outln!("Or add it by hand as {issuer:?}: key {} (time-based, 6 digits, 30 s).", grouped.join(" "));
    outln!("URI: {uri}\n");
}

/// Asks for the first code until the controller accepts one, locks the enrollment, or the
/// attempts run out.
async fn confirm(
    session: &Session,
    api: &Api<StepUpEnrollment>,
    me: &Identity,
    key: &EphemeralKey,
    args: &EnrollArgs,
) -> Result<()> {
    let name = api::enrollment_name(&me.username);
    let mut previous: Option<String> = None;
    for attempt in 1..=ATTEMPTS {
        let code = terminal::read_code("Enter the 6-digit code the app shows now: ", CodeSource::Terminal)?;
        if previous.as_deref() == Some(code.as_str()) {
            errln!("That is the code you just tried; wait for the next one.");
            continue;
        }
        let current = api.get(&name).await.map_err(session.kube_error("read your enrollment"))?;
        ensure_key(&current, key)?;
        let sealed = seal_for(&current, &code, EnrollmentPurpose::Confirmation)?;
        let generation = patch_spec(session, api, &name, json!({ "confirmation": sealed })).await?;
        previous = Some(code);
        let progress = Progress::start("Checking the code");
        let user = me.username.clone();
        let verdict = wait::until(
            session,
            api,
            &name,
            args.timeout,
            |e| {
                ensure_key(e, key)?;
                let status = status_of(e);
                match (status.phase, last_code(e, generation)) {
                    (Some(EnrollmentPhase::Active), Some((true, _))) => Ok(Step::Done(Ok(()))),
                    (Some(EnrollmentPhase::Locked), Some((false, _))) => {
                        Err(Error::Locked { user: user.clone(), message: status.message.clone() })
                    }
                    (_, Some((false, message))) => Ok(Step::Done(Err(message))),
                    _ => Ok(Step::Wait),
                }
            },
            |_| Error::ControllerTimeout { what: "check your first code".into(), after: args.timeout },
        )
        .await;
        progress.finish();
        match verdict? {
            Ok(()) => return Ok(()),
            Err(message) if attempt == ATTEMPTS => return Err(Error::CodeRefused { message }),
            Err(message) => errln!("That code was not accepted ({message}). Try the next one."),
        }
    }
    Err(Error::CodeRefused { message: "no code was accepted".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `%28` → `(`; panics on anything an otpauth URI may not carry unencoded.
    fn decoded(text: &str) -> String {
        let mut bytes = Vec::new();
        let mut rest = text.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                let hex = std::str::from_utf8(&tail[..2]).unwrap();
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            } else {
                assert!(b.is_ascii_alphanumeric() || b"-._~@".contains(&b), "{:?} unencoded in {text}", b as char);
                bytes.push(b);
                rest = tail;
            }
        }
        String::from_utf8(bytes).unwrap()
    }

    /// The label's issuer and account, and the `issuer` parameter, as an authenticator app reads them.
    fn entry(uri: &str) -> (String, String, String) {
        let rest = uri.strip_prefix("otpauth://totp/").unwrap();
        let (label, query) = rest.split_once('?').unwrap();
        let (label_issuer, account) = label.split_once(':').unwrap();
        let issuer = query.split('&').find_map(|p| p.strip_prefix("issuer=")).unwrap();
        (decoded(label_issuer), decoded(account), decoded(issuer))
    }

    #[test]
    fn each_cluster_gets_its_own_authenticator_entry_in_a_valid_uri() {
        let seed = b"12345678901234567890";
        let cases = [
            ("prod-eu", "alice", "kube-stepup (prod-eu)", "alice"),
            ("staging", "alice", "kube-stepup (staging)", "alice"),
            ("api.example.com", "oidc:alice@example.com", "kube-stepup (api.example.com)", "oidc_alice@example.com"),
            ("Prod EU: München/1", "alice", "kube-stepup (Prod EU_ München/1)", "alice"),
            ("", "alice", "kube-stepup", "alice"),
        ];
        for (cluster, username, shown_issuer, shown_account) in cases {
            let uri = enrollment_uri(seed, cluster, username);
            let uri = uri.as_str();
            let (label_issuer, account, issuer_parameter) = entry(uri);
            assert_eq!(label_issuer, shown_issuer, "{uri:?}");
            assert_eq!(issuer_parameter, shown_issuer, "the label and the parameter agree: {uri:?}");
            assert_eq!(account, shown_account, "{uri:?}");
            assert!(uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&"), "{uri:?}");
        }
    }
}
