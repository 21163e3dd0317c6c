//! `kubectl stepup enroll`: bind an authenticator app to the user. The seed travels sealed to
//! a key that lives only in this process, so it is never readable in the cluster.

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
use crate::{
    api::{self, EnrollmentPhase, Method, StepUpEnrollment, StepUpEnrollmentSpec, StepUpEnrollmentStatus},
    verify::{
        seal::EphemeralKey,
        totp::{base32_encode, otpauth_uri},
    },
};

/// The issuer authenticator apps show next to the account name.
pub const ISSUER: &str = "kube-stepup";
const ATTEMPTS: usize = 3;

fn status_of(e: &StepUpEnrollment) -> StepUpEnrollmentStatus {
    e.status.clone().unwrap_or_default()
}

pub async fn run(session: &Session, args: &EnrollArgs) -> Result<()> {
    let me = session.whoami().await?;
    let api: Api<StepUpEnrollment> = session.all();
    let name = api::enrollment_name(&me.username);
    let key = EphemeralKey::generate();
    let existing = api.get_opt(&name).await.map_err(session.kube_error("read your enrollment"))?;

    // For a re-enrollment: the failure count before, to tell a refused old code.
    let mut reenrolling: Option<i32> = None;
    let generation = match &existing {
        None => {
            let mut enrollment = StepUpEnrollment::new(
                &name,
                StepUpEnrollmentSpec {
                    user: me.username.clone(),
                    method: Method::Totp,
                    public_key: key.public_key_b64(),
                    confirmation: None,
                },
            );
            enrollment.metadata.labels =
                Some(BTreeMap::from([(api::USER_LABEL.to_owned(), api::user_label_value(&me.username))]));
            let created = api
                .create(&PostParams::default(), &enrollment)
                .await
                .map_err(session.kube_error("create your enrollment"))?;
            created.metadata.generation.unwrap_or_default()
        }
        Some(e) => match status_of(e).phase {
            Some(EnrollmentPhase::Locked) => return Err(Error::Locked { user: me.username }),
            Some(EnrollmentPhase::Active) if !args.reenroll => {
                outln!(
                    "You are already enrolled ({}) as {}. To move to a new authenticator app, run `kubectl stepup enroll --reenroll`.",
                    e.spec.method,
                    me.username
                );
                return Ok(());
            }
            Some(EnrollmentPhase::Active) => {
                reenrolling = Some(status_of(e).consecutive_failures);
                // The old device proves the re-enrollment comes from the person who holds it;
                // after an admin reset the controller accepts the new key without it.
                let code = terminal::ask_hidden(
                    "Code from your CURRENT authenticator app (Enter if an admin reset your enrollment): ",
                )?;
                let confirmation = match code.trim() {
                    "" => None,
                    typed => Some(terminal::normalize_code(typed)?),
                };
                patch_spec(
                    session,
                    &api,
                    &name,
                    json!({"publicKey": key.public_key_b64(), "confirmation": confirmation}),
                )
                .await?
            }
            // Waiting for approval or confirmation: the secret was (or will be) sealed to a key an
            // earlier run held and lost; a new key makes the controller seal a new one.
            _ => {
                patch_spec(session, &api, &name, json!({"publicKey": key.public_key_b64(), "confirmation": null}))
                    .await?
            }
        },
    };

    let seed = receive_seed(session, &api, &me, &key, args, reenrolling, generation).await?;
    show_secret(&seed, &me.username);
    drop(seed);
    confirm(session, &api, &me, args).await?;
    outln!(
        "\nEnrolled: {ISSUER} now asks your authenticator app when a policy requires step-up.\n\
         When a command is refused, run `kubectl stepup request`, or prefix the command with `kubectl stepup --`."
    );
    Ok(())
}

/// Patches the spec; returns the new generation, which the controller reports in
/// `status.observedGeneration` once it has acted on the change.
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

/// Whether the controller has acted on the spec of `generation` (or a later one).
fn seen(e: &StepUpEnrollment, generation: i64) -> bool {
    e.status.as_ref().and_then(|s| s.observed_generation).is_some_and(|g| g >= generation)
}

/// Waits for the seed sealed to this run's key. `reenrolling` carries the failure count seen
/// before an active enrollment was asked to take the new key.
async fn receive_seed(
    session: &Session,
    api: &Api<StepUpEnrollment>,
    me: &Identity,
    key: &EphemeralKey,
    args: &EnrollArgs,
    reenrolling: Option<i32>,
    generation: i64,
) -> Result<Zeroizing<Vec<u8>>> {
    let user = me.username.clone();
    let progress = Progress::start("Waiting for the stepup controller to prepare your secret");
    let result = wait::until(
        session,
        api,
        &api::enrollment_name(&me.username),
        args.timeout,
        |e| {
            let status = status_of(e);
            match status.phase {
                Some(EnrollmentPhase::Locked) => Err(Error::Locked { user: user.clone() }),
                Some(EnrollmentPhase::AwaitingConfirmation) => {
                    // A secret this key cannot open was sealed for an earlier run: keep waiting.
                    match status.sealed_secret.as_deref().map(|s| key.open(s)) {
                        Some(Ok(seed)) => Ok(Step::Done(seed)),
                        _ => Ok(Step::Wait),
                    }
                }
                Some(EnrollmentPhase::PendingApproval) => {
                    progress.set(&format!(
                        "Waiting for a stepup admin to approve your enrollment: ask them to run `kubectl stepup approve {user}` (Ctrl-C to stop)"
                    ));
                    Ok(Step::Wait)
                }
                // The controller has seen the new key and kept the old enrollment: the code from
                // the current device was wrong or missing.
                Some(EnrollmentPhase::Active) if seen(e, generation) => match reenrolling {
                    Some(before) if status.consecutive_failures > before => Err(Error::CodeRefused {
                        message: "the code from your current authenticator app is wrong".into(),
                    }),
                    Some(_) => Err(Error::CodeRefused {
                        message: status.message.unwrap_or_else(|| "a code from your current authenticator app is needed".into()),
                    }),
                    None => Ok(Step::Wait),
                },
                _ => Ok(Step::Wait),
            }
        },
        |last| match last.and_then(|e| status_of(e).phase) {
            Some(EnrollmentPhase::PendingApproval) => {
                Error::PendingApproval { user: me.username.clone(), message: last.and_then(|e| status_of(e).message) }
            }
            _ => Error::ControllerTimeout { what: "send your secret".into(), after: args.timeout },
        },
    )
    .await;
    progress.finish();
    result
}

fn show_secret(seed: &[u8], username: &str) {
    let uri = Zeroizing::new(otpauth_uri(seed, ISSUER, username));
    let key = Zeroizing::new(base32_encode(seed));
    let grouped: Vec<&str> = key.as_bytes().chunks(4).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    outln!("Scan this QR code with your authenticator app (any TOTP app: Google Authenticator, 1Password, ...):\n");
    if let Some(qr) = terminal::qr_code(&uri) {
        outln!("{qr}");
    }
    outln!("Or add it by hand: key {} (time-based, 6 digits, 30 s).", grouped.join(" "));
    outln!("URI: {}\n", uri.as_str());
}

/// Asks for the first code until the controller accepts one, locks the enrollment, or the
/// attempts run out.
async fn confirm(session: &Session, api: &Api<StepUpEnrollment>, me: &Identity, args: &EnrollArgs) -> Result<()> {
    let name = api::enrollment_name(&me.username);
    let mut previous: Option<String> = None;
    for attempt in 1..=ATTEMPTS {
        let code = terminal::read_code("Enter the 6-digit code the app shows now: ", CodeSource::Terminal)?;
        if previous.as_deref() == Some(code.as_str()) {
            errln!("That is the code you just tried; wait for the next one.");
            continue;
        }
        let generation = patch_spec(session, api, &name, json!({ "confirmation": code })).await?;
        previous = Some(code);
        let progress = Progress::start("Checking the code");
        let user = me.username.clone();
        let verdict = wait::until(
            session,
            api,
            &name,
            args.timeout,
            |e| {
                let status = status_of(e);
                match status.phase {
                    Some(EnrollmentPhase::Active) => Ok(Step::Done(Ok(()))),
                    Some(EnrollmentPhase::Locked) => Err(Error::Locked { user: user.clone() }),
                    _ if seen(e, generation) => {
                        Ok(Step::Done(Err(status.message.unwrap_or_else(|| "the code is wrong".into()))))
                    }
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
