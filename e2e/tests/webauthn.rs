//! Issue 33 (security keys and passkeys), the controller's half: registering keys through the
//! real webhook, controller and `kubectl stepup approve`, with webauthn-authenticator-rs's
//! software authenticator answering as the browser would (the browser itself comes with the
//! plugin's ceremony page). Attacked by someone holding alice's stolen token but not the key
//! her plugin sealed the options to. Run with `make e2e` (one test at a time).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kube_stepup::{
    api::{self, EnrollmentPhase, Method, StepUpEnrollment, StepUpEnrollmentSpec},
    controller::webauthn::RelyingParty,
    verify::{
        response::{self, EnrollmentPurpose},
        seal::{EphemeralKey, fingerprint},
    },
};
use stepup_e2e::{World, eventually, plugin, show};
use url::Url;
use webauthn_authenticator_rs::{WebauthnAuthenticator, softpasskey::SoftPasskey};
use webauthn_rs_core::proto::CreationChallengeResponse;

/// The plugin's page, as the default relying party (`localhost`) expects it.
const PAGE: &str = "http://localhost:38117";

fn name() -> String {
    api::enrollment_name_for("alice", Method::WebAuthn)
}

async fn enrollments(w: &World, who: &str) -> Api<StepUpEnrollment> {
    Api::all(w.env.client(who).await)
}

/// Alice's WebAuthn enrollment, created by her with `key`.
async fn create(w: &World, key: &EphemeralKey) {
    let mut e = StepUpEnrollment::new(
        &name(),
        StepUpEnrollmentSpec {
            user: "alice".into(),
            method: Method::WebAuthn,
            public_key: key.public_key_b64(),
            confirmation: None,
            bootstrap: false,
            bootstrap_proof: None,
        },
    );
    e.metadata.labels = Some([(api::USER_LABEL.to_owned(), api::user_label_value("alice"))].into());
    enrollments(w, "alice").await.create(&PostParams::default(), &e).await.expect("alice's WebAuthn enrollment");
}

/// Waits until alice's WebAuthn enrollment satisfies `test`.
async fn wait(w: &World, what: &str, test: impl Fn(&StepUpEnrollment) -> bool) -> StepUpEnrollment {
    let api = enrollments(w, "admin").await;
    eventually(Duration::from_secs(20), || async {
        let e = api.get(&name()).await?;
        if test(&e) { Ok(e) } else { anyhow::bail!("waiting for {what}: {:?}", e.status) }
    })
    .await
    .expect(what)
}

fn phase(e: &StepUpEnrollment) -> Option<EnrollmentPhase> {
    e.status.as_ref().and_then(|s| s.phase)
}

/// The admin approves `key` with the plugin, as README tells them to.
async fn approve(w: &World, key: &EphemeralKey) {
    w.admin_steps_up().await;
    let fp = fingerprint(&key.public_key_b64());
    let out = plugin(&w.env, "admin", &["approve", "alice", "--method", "WebAuthn", "--key", &fp], None).await;
    assert!(out.status.success(), "{}", show(&out));
}

/// Puts `answer` (a registration's JSON) into the enrollment, sealed as the plugin seals it.
async fn answer(w: &World, answer: &str) {
    let api = enrollments(w, "alice").await;
    let e = api.get(&name()).await.expect("enrollment");
    let response_key = e.status.as_ref().and_then(|s| s.response_key.clone()).expect("the controller's key");
    let binding = response::enrollment_binding(&e, EnrollmentPurpose::KeyRegistration);
    let sealed = response::seal_code(&response_key, answer, binding).expect("sealed");
    let patch = serde_json::json!({"spec": {"confirmation": sealed}});
    api.patch(&name(), &PatchParams::default(), &Patch::Merge(&patch)).await.expect("answer sent");
}

/// The browser's answer to `options` with `authenticator`, on the plugin's page.
fn register(authenticator: &mut SoftPasskey, options: &str) -> String {
    let options: CreationChallengeResponse = serde_json::from_str(options).expect("registration options");
    let credential = authenticator.do_registration(Url::parse(PAGE).unwrap(), options).expect("the key registers");
    serde_json::to_string(&credential).unwrap()
}

/// The registration options sealed to `key`, once the controller has sealed them.
async fn options_for(w: &World, key: &EphemeralKey) -> String {
    let e = wait(w, "the options sealed", |e| {
        phase(e) == Some(EnrollmentPhase::AwaitingConfirmation)
            && e.status.as_ref().is_some_and(|s| s.sealed_secret.is_some())
    })
    .await;
    let sealed = e.status.and_then(|s| s.sealed_secret).unwrap();
    String::from_utf8(key.open(&sealed).expect("the options open with the enrollment key").to_vec()).unwrap()
}

#[tokio::test]
async fn security_keys_are_registered_only_through_the_approved_enrollment_key() {
    let w = World::new().await;
    w.unenroll("alice").await;
    let key = EphemeralKey::generate();
    create(&w, &key).await;
    let e = wait(&w, "pending approval", |e| phase(e) == Some(EnrollmentPhase::PendingApproval)).await;
    let message = e.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("--method WebAuthn --key"), "{message}");

    approve(&w, &key).await;
    let options = options_for(&w, &key).await;
    assert!(options.contains("\"challenge\""), "{options}");

    // Attack: with alice's stolen token but not her plugin's key, the options cannot be read;
    // a registration for options of the attacker's own making names another challenge.
    let rp = RelyingParty::new("localhost", &[Url::parse("http://localhost").unwrap()]).unwrap();
    let (theirs, _) = rp.start_registration("alice", b"mallory", &[], jiff::Timestamp::now()).unwrap();
    answer(&w, &register(&mut SoftPasskey::new(true), &theirs)).await;
    let note = w.wait_event("EnrollmentCodeRefused", "another challenge").await;
    assert!(note.contains("registration was refused"), "{note}");
    let e = wait(&w, "the refusal in LastCode", |e| {
        e.spec.confirmation.is_none()
            && e.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "LastCode"))
    })
    .await;
    assert_eq!(phase(&e), Some(EnrollmentPhase::AwaitingConfirmation), "the real registration still waits");
    assert!(e.status.as_ref().unwrap().credentials.is_empty());

    // Alice's own answer registers her key.
    let mut first = SoftPasskey::new(true);
    answer(&w, &register(&mut first, &options)).await;
    let e = wait(&w, "active with one key", |e| {
        phase(e) == Some(EnrollmentPhase::Active) && e.status.as_ref().is_some_and(|s| s.credentials.len() == 1)
    })
    .await;
    let status = e.status.unwrap();
    assert_eq!(status.credentials[0].allowed, "approved by admin");
    assert_eq!(status.sealed_secret, None, "nothing stays sealed once registered");
    w.wait_event("EnrollmentConfirmed", &status.credentials[0].id_hash).await;

    // What the cluster keeps is one encrypted value: no credential in the clear, no secret.
    let secrets: Api<Secret> = Api::namespaced(w.admin.clone(), "stepup-system");
    let factor = secrets.get(&api::factor_secret_name("alice")).await.expect("the factor Secret");
    let data = factor.data.unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["factor"]);
    assert!(!String::from_utf8_lossy(&data["factor"].0).contains("cred_id"));

    // A second key (a backup): a new enrollment key, which registers nothing until approved.
    let backup_key = EphemeralKey::generate();
    let patch = serde_json::json!({"spec": {"publicKey": backup_key.public_key_b64()}});
    enrollments(&w, "alice").await.patch(&name(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let e = wait(&w, "the new key waiting for an admin", |e| {
        e.status.as_ref().and_then(|s| s.message.as_deref()).is_some_and(|m| m.contains("needs an admin"))
    })
    .await;
    assert_eq!(phase(&e), Some(EnrollmentPhase::Active), "the first key keeps working");
    approve(&w, &backup_key).await;
    let options = options_for(&w, &backup_key).await;
    answer(&w, &register(&mut SoftPasskey::new(false), &options)).await;
    let e = wait(&w, "two keys", |e| e.status.as_ref().is_some_and(|s| s.credentials.len() == 2)).await;
    let status = e.status.unwrap();
    assert_ne!(status.credentials[0].id_hash, status.credentials[1].id_hash);
    assert_eq!(phase_name(&status), "Active");
}

fn phase_name(s: &api::StepUpEnrollmentStatus) -> String {
    format!("{:?}", s.phase.unwrap_or_default())
}
