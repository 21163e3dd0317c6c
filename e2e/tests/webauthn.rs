//! Issue 33 (security keys and passkeys), the controller's half: registering keys through the
//! real webhook, controller and `kubectl stepup approve`, with webauthn-authenticator-rs's
//! software authenticator answering as the browser would (the browser itself comes with the
//! plugin's ceremony page). Attacked by someone holding alice's stolen token but not the key
//! her plugin sealed the options to. Run with `make e2e` (one test at a time).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kube_stepup::controller::webauthn::RelyingParty;
use stepup_core::{api::Operation::Delete, testing::policy};
use stepup_core::{
    api::{
        self, ChallengePhase, EnrollmentPhase, Method, StepUpChallenge, StepUpEnrollment, StepUpEnrollmentSpec,
        StepUpPolicy,
    },
    verify::{
        response::{self, EnrollmentPurpose},
        seal::{EphemeralKey, fingerprint},
    },
};
use stepup_e2e::{Running, World, browser::Browser, eventually, oidc_challenge, plugin, refusal, show};
use url::Url;
use webauthn_authenticator_rs::{WebauthnAuthenticator, softpasskey::SoftPasskey};
use webauthn_rs_core::proto::{CreationChallengeResponse, RequestChallengeResponse};

const ALICE_UID: &str = "uid-alice-1";

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

/// Alice enrolled afresh with one security key (self-registered through an approval).
async fn alice_with_a_key(w: &World) -> (SoftPasskey, String) {
    w.unenroll("alice").await;
    register_a_key(w).await
}

/// One more security key for alice (registered through an approval).
async fn register_a_key(w: &World) -> (SoftPasskey, String) {
    let key = EphemeralKey::generate();
    create(w, &key).await;
    wait(w, "pending approval", |e| phase(e) == Some(EnrollmentPhase::PendingApproval)).await;
    approve(w, &key).await;
    let options = options_for(w, &key).await;
    let mut authenticator = SoftPasskey::new(false);
    answer(w, &register(&mut authenticator, &options)).await;
    let e = wait(w, "one key", |e| e.status.as_ref().is_some_and(|s| s.credentials.len() == 1)).await;
    let id_hash = e.status.unwrap().credentials[0].id_hash.clone();
    (authenticator, id_hash)
}

/// Deleting prod secrets needs a security key.
fn key_secrets() -> StepUpPolicy {
    policy("prod-secrets-keys")
        .rule(&[Delete], "", &["secrets"])
        .namespaces(&["prod"])
        .methods(&[Method::WebAuthn])
        .build()
}

/// A WebAuthn challenge as the plugin creates it: named, with a deadline, no answer yet.
fn key_challenge() -> StepUpChallenge {
    let mut c = oidc_challenge("alice", ALICE_UID);
    c.spec.method = Method::WebAuthn;
    c
}

/// Creates `c` as alice and waits for the controller's options.
async fn offered(w: &World, c: &StepUpChallenge) -> String {
    let api: Api<StepUpChallenge> = Api::all(w.env.client("alice").await);
    api.create(&PostParams::default(), c).await.expect("challenge created");
    eventually(Duration::from_secs(20), || async {
        let c = api.get(&c.name_any()).await?;
        c.status.and_then(|s| s.webauthn_options).ok_or_else(|| anyhow::anyhow!("no options yet"))
    })
    .await
    .expect("the controller offers a ceremony")
}

/// Puts `assertion` into `c`, sealed for it, as `who`.
async fn answer_challenge(
    w: &World,
    who: &str,
    c: &StepUpChallenge,
    assertion: &str,
) -> Result<StepUpChallenge, kube::Error> {
    let sealed = response::seal_code(&w.env.response_key(), assertion, response::challenge_binding(c)).expect("sealed");
    let api: Api<StepUpChallenge> = Api::all(w.env.client(who).await);
    api.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"response": sealed}})))
        .await
}

fn sign(authenticator: &mut SoftPasskey, options: &str) -> String {
    let options: RequestChallengeResponse = serde_json::from_str(options).expect("request options");
    let assertion = authenticator.do_authentication(Url::parse(PAGE).unwrap(), options).expect("the key signs");
    serde_json::to_string(&assertion).unwrap()
}

fn verdict_of(c: &StepUpChallenge) -> (Option<ChallengePhase>, String) {
    let s = c.status.clone().unwrap_or_default();
    (s.phase, s.message.unwrap_or_default())
}

#[tokio::test]
async fn a_security_key_answers_a_challenge_once_and_the_refused_delete_passes() {
    let w = World::new().await;
    w.secret("prod", "db").await;
    w.apply_policies(&[key_secrets()]).await;
    let (mut authenticator, id_hash) = alice_with_a_key(&w).await;
    let prod: Api<Secret> = Api::namespaced(w.env.client("alice").await, "prod");
    let status = refusal(prod.delete("db", &DeleteParams::default()).await);
    assert!(status.message.contains("kubectl stepup request --method WebAuthn"), "{}", status.message);

    let c = key_challenge();
    let options = offered(&w, &c).await;
    let assertion = sign(&mut authenticator, &options);

    // Attack: bob, who may watch alice's challenge, answers it with his own.
    let refused = refusal(answer_challenge(&w, "bob", &c, &assertion).await);
    assert!(refused.message.contains("only they answer it"), "{}", refused.message);

    answer_challenge(&w, "alice", &c, &assertion).await.expect("alice answers");
    let done = w.verdict(&c.name_any()).await;
    assert_eq!(verdict_of(&done).0, Some(ChallengePhase::Verified), "{}", verdict_of(&done).1);
    let grant_name = done.status.clone().unwrap().grant_ref.unwrap().name;
    let grant = w.controller_grants().get(&grant_name).await.expect("grant");
    assert_eq!(grant.spec.method, Method::WebAuthn);
    assert_eq!(grant.spec.credential_id_hash.as_deref(), Some(id_hash.as_str()));

    // Attack: the answer cannot be given again, nor replayed into another challenge.
    let again = refusal(answer_challenge(&w, "alice", &done, "YW5vdGhlcg==").await);
    assert!(again.message.contains("verdict") || again.message.contains("cannot be changed"), "{}", again.message);
    let other = key_challenge();
    offered(&w, &other).await;
    answer_challenge(&w, "alice", &other, &assertion).await.expect("the replay is stored, then judged");
    let replayed = w.verdict(&other.name_any()).await;
    assert_eq!(verdict_of(&replayed).0, Some(ChallengePhase::Denied));
    assert!(verdict_of(&replayed).1.contains("another challenge"), "{}", verdict_of(&replayed).1);

    // The auditor's report counts it under WebAuthn and under the key that answered.
    eventually(Duration::from_secs(30), || async {
        let out = plugin(&w.env, "auditor", &["report", "--since", "1h", "--user", "alice", "-o", "json"], None).await;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let key = &report["report"]["keys"][&id_hash];
        if key["grants"].as_u64() >= Some(1) && report["report"]["methods"]["WebAuthn"]["grants"].as_u64() >= Some(1) {
            assert_eq!(key["user"], "alice");
            Ok(())
        } else {
            anyhow::bail!("not reported yet: {}", show(&out))
        }
    })
    .await
    .expect("the report names the key");

    // With the grant, alice deletes prod/db.
    w.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    prod.delete("db", &DeleteParams::default()).await.expect("deleted with the security-key grant");

    // Attack: with alice's kubeconfig alone, her key is not removed (that would leave her
    // unable to step up): neither by the mark, nor in an admin's name.
    let mine = enrollments(&w, "alice").await;
    let mark = |marks: serde_json::Value| serde_json::json!({"metadata": {"annotations": marks}});
    mine.patch(
        &name(),
        &PatchParams::default(),
        &Patch::Merge(mark(serde_json::json!({api::REMOVE_KEY_ANNOTATION: id_hash}))),
    )
    .await
    .expect("the mark is stored, then judged");
    w.wait_event("SecurityKeyRemovalRefused", "needs a fresh grant").await;
    let kept = wait(&w, "the mark consumed", |e| {
        !e.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(api::REMOVE_KEY_ANNOTATION))
    })
    .await;
    assert_eq!(kept.status.unwrap().credentials.len(), 1, "the key stays");
    let in_admins_name =
        mark(serde_json::json!({api::REMOVE_KEY_ANNOTATION: id_hash, api::REMOVED_BY_ANNOTATION: "admin"}));
    let refused = refusal(mine.patch(&name(), &PatchParams::default(), &Patch::Merge(in_admins_name)).await);
    assert!(refused.message.contains("in an admin's name"), "{}", refused.message);

    // A key removed while a ceremony is open answers nothing (here her only key, lost: an
    // admin removes it), and the removal and its remover are recorded.
    let third = key_challenge();
    let options = offered(&w, &third).await;
    let assertion = sign(&mut authenticator, &options);
    w.admin_steps_up().await;
    let out = plugin(&w.env, "admin", &["remove-key", &id_hash[..10], "--user", "alice"], None).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains(&format!("Removed security key {id_hash} from alice's enrollment; 0 left.")),
        "{}",
        show(&out)
    );
    w.wait_event("SecurityKeyRemoved", "by admin admin").await;
    answer_challenge(&w, "alice", &third, &assertion).await.expect("the answer is stored, then judged");
    let removed = w.verdict(&third.name_any()).await;
    assert_eq!(verdict_of(&removed).0, Some(ChallengePhase::Denied));
    assert!(verdict_of(&removed).1.contains("alice has no security key registered"), "{}", verdict_of(&removed).1);
}

#[tokio::test]
async fn alice_removes_her_key_with_her_authenticator_app() {
    let w = World::new().await;
    let mut app = w.enroll("alice", "alice").await;
    let (_, id_hash) = register_a_key(&w).await;
    // A wrong code removes nothing.
    let out =
        plugin(&w.env, "alice", &["remove-key", &id_hash, "--method", "TOTP", "--code-stdin"], Some("000000\n")).await;
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(
        wait(&w, "the key", |e| e.status.as_ref().is_some_and(|s| !s.credentials.is_empty()))
            .await
            .status
            .unwrap()
            .credentials
            .len(),
        1
    );
    let code = app.code().await;
    let out = plugin(
        &w.env,
        "alice",
        &["remove-key", &id_hash, "--method", "TOTP", "--code-stdin"],
        Some(&format!("{code}\n")),
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains(&format!("Removed security key {id_hash} from alice's enrollment; 0 left.")),
        "{}",
        show(&out)
    );
    w.wait_event("SecurityKeyRemoved", "by alice (TOTP grant").await;
}

/// The address of the security-key page the plugin printed.
fn page_address(line: &str) -> Option<String> {
    line.starts_with("http://localhost:").then(|| line.to_owned())
}

/// Where the scenario leaves its screenshots, for a person to look at.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir.join(name)
}

/// Issue 33, in a real browser: `kubectl stepup enroll --method WebAuthn` serves its page, the
/// admin approves the fingerprint, Chromium's virtual authenticator registers on that page;
/// then `kubectl stepup request --method WebAuthn` and the same key earn a grant, and the
/// refused delete passes.
#[tokio::test]
async fn the_plugin_registers_a_key_in_a_real_browser_and_steps_up_with_it() {
    let w = World::new().await;
    w.unenroll("alice").await;
    w.secret("prod", "db").await;
    w.apply_policies(&[key_secrets()]).await;
    let browser = Browser::start().await.expect("headless Chromium with chromedriver");
    let key = browser.add_key(true).await.expect("a virtual security key");
    let alice = w.env.kubeconfig("alice");

    enroll_in_browser(&w, &browser, &alice, "webauthn-register-done.png").await;
    assert_eq!(browser.credentials(&key).await.expect("credentials").len(), 1, "the key holds the new credential");

    let prod: Api<Secret> = Api::namespaced(w.env.client("alice").await, "prod");
    refusal(prod.delete("db", &DeleteParams::default()).await);
    let mut request =
        Running::start(&w, &alice, &["request", "--method", "WebAuthn", "--no-browser", "--reason", "INC-33"]);
    let url = request.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    browser.screenshot(&screenshot_path("webauthn-request-done.png")).await.expect("screenshot");
    assert_eq!(state, "done", "{text}");
    let ended = request.finish().await;
    assert!(ended.success, "{}\n{}", ended.stdout, ended.stderr);
    assert!(ended.stdout.contains("(WebAuthn, reason \"INC-33\")"), "{}", ended.stdout);
    let grants = w.grants_of("alice").await;
    let grant = grants.iter().find(|g| g.spec.method == Method::WebAuthn).expect("a WebAuthn grant");
    assert!(grant.spec.user_verified, "the virtual key verified alice");
    w.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    prod.delete("db", &DeleteParams::default()).await.expect("deleted with the security-key grant");

    // The wrapper: the refusal names WebAuthn, so the key answers on the page, and the command
    // runs again.
    let out = plugin(&w.env, "alice", &["revoke", "--all"], None).await;
    assert!(out.status.success(), "{}", show(&out));
    w.secret("prod", "db").await;
    let mut wrapped =
        Running::start(&w, &alice, &["--no-browser", "--", "kubectl", "-n", "prod", "delete", "secret", "db"]);
    let url = wrapped.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    assert_eq!(state, "done", "{text}");
    let ended = wrapped.finish().await;
    assert!(ended.success, "{}\n{}", ended.stdout, ended.stderr);
    assert!(ended.stdout.contains("secret \"db\" deleted"), "{}", ended.stdout);

    // Nobody touches the key: the plugin gives up at its timeout, stops the browser's prompt,
    // says so on the page and withdraws the challenge, so no grant can come of it.
    // (What the key holds, for the clone below.)
    let held = browser.credentials(&key).await.expect("credentials");
    browser.remove_key(&key).await.expect("unplugged");
    let idle = browser.add_key_with(true, false).await.expect("a key nobody touches");
    let mut declined = Running::start(
        &w,
        &alice,
        &["request", "--method", "WebAuthn", "--no-browser", "--reason", "INC-33", "--sign-in-timeout", "10s"],
    );
    let url = declined.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (_, asking) = browser.wait_state(&["touch"], Duration::from_secs(10)).await.expect("the page asks for the key");
    browser.screenshot(&screenshot_path("webauthn-request-touch.png")).await.expect("screenshot");
    assert!(asking.contains("Touch your security key"), "{asking}");
    let (state, text) = browser.wait_state(&["failed"], Duration::from_secs(30)).await.expect("the page fails");
    browser.screenshot(&screenshot_path("webauthn-request-failed.png")).await.expect("screenshot");
    assert!(text.contains("no security key answered within 10s"), "{state}: {text}");
    let ended = declined.finish().await;
    assert!(!ended.success);
    assert!(ended.stderr.contains("no security key answered within 10s"), "{}", ended.stderr);
    let webauthn_grants = w.grants_of("alice").await.into_iter().filter(|g| g.spec.method == Method::WebAuthn).count();
    assert_eq!(webauthn_grants, 1, "no grant besides the first");

    // A clone: alice's credential copied, private key and all, into another authenticator
    // whose signature counter lags behind the real key's. Its answer is refused, and said so.
    let counter = held[0]["signCount"].as_u64().expect("a signature counter");
    assert!(counter >= 2, "the key counts its signatures: {counter}");
    browser.remove_key(&idle).await.expect("unplugged");
    let clone = browser.add_key(true).await.expect("the clone's authenticator");
    browser.copy_credential(&clone, &held[0], 1).await.expect("the credential copied");
    let mut cloned =
        Running::start(&w, &alice, &["request", "--method", "WebAuthn", "--no-browser", "--reason", "INC-33"]);
    let url = cloned.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    browser.screenshot(&screenshot_path("webauthn-request-cloned.png")).await.expect("screenshot");
    assert_eq!(state, "failed", "{text}");
    assert!(text.contains("it may be a clone of your key"), "{text}");
    let ended = cloned.finish().await;
    assert!(!ended.success);
    assert!(ended.stderr.contains("it may be a clone of your key"), "{}", ended.stderr);
    w.wait_event("ClonedAuthenticator", "it may be a clone").await;
}

/// `kubectl stepup enroll --method WebAuthn` as alice, approved by the admin, answered by the
/// browser's key on the plugin's page (a screenshot of the end saved as `shot`).
async fn enroll_in_browser(w: &World, browser: &Browser, alice: &std::path::Path, shot: &str) {
    // With a key registered already, the admin approves anyway (--approval): the key that
    // could vouch may be away (vouching has its own scenario).
    let mut enroll =
        Running::start(w, alice, &["enroll", "--method", "WebAuthn", "--no-browser", "--timeout", "2m", "--approval"]);
    let e = wait(w, "alice's enrollment waiting for approval", |e| {
        phase(e) == Some(EnrollmentPhase::PendingApproval)
            || e.status.as_ref().and_then(|s| s.message.as_deref()).is_some_and(|m| m.contains("needs an admin"))
    })
    .await;
    let fp = fingerprint(&e.spec.public_key);
    w.admin_steps_up().await;
    let out = plugin(&w.env, "admin", &["approve", "alice", "--method", "WebAuthn", "--key", &fp], None).await;
    assert!(out.status.success(), "{}", show(&out));
    let url = enroll.until("the registration page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    browser.screenshot(&screenshot_path(shot)).await.expect("screenshot");
    assert_eq!(state, "done", "{text}");
    assert!(text.starts_with("Registered security key "), "{text}");
    let ended = enroll.finish().await;
    assert!(ended.success, "{}\n{}", ended.stdout, ended.stderr);
    assert!(ended.stdout.contains(&format!("Your enrollment key fingerprint: {fp}")), "{}", ended.stdout);
    assert!(ended.stdout.contains("Enrolled: registered security key"), "{}", ended.stdout);
}

/// A policy that requires user verification: a key that only proves presence cannot answer
/// the ceremony the controller then offers (the browser refuses, and the page says why), so no
/// grant; a key that verifies its person (PIN) can.
#[tokio::test]
async fn a_policy_requiring_user_verification_takes_only_a_key_that_verifies_the_person() {
    let w = World::new().await;
    w.unenroll("alice").await;
    w.secret("prod", "db").await;
    let mut strict = key_secrets();
    strict.spec.require_user_verification = true;
    w.apply_policies(&[strict]).await;
    let browser = Browser::start().await.expect("headless Chromium with chromedriver");
    let alice = w.env.kubeconfig("alice");

    let touch_only = browser.add_key(false).await.expect("a key without a PIN");
    enroll_in_browser(&w, &browser, &alice, "webauthn-register-touch-only.png").await;
    let mut request = Running::start(
        &w,
        &alice,
        &["request", "--method", "WebAuthn", "--no-browser", "--reason", "INC-33", "--sign-in-timeout", "10s"],
    );
    let url = request.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (_, text) = browser.wait_state(&["failed"], Duration::from_secs(30)).await.expect("the browser refuses");
    browser.screenshot(&screenshot_path("webauthn-request-needs-verification.png")).await.expect("screenshot");
    assert!(text.contains("cannot verify you where the policy requires it"), "{text}");
    let ended = request.finish().await;
    assert!(!ended.success, "{}", ended.stdout);
    assert!(w.grants_of("alice").await.iter().all(|g| g.spec.method != Method::WebAuthn), "no grant");
    // The page then says the command gave up, and offers no retry into a withdrawn challenge.
    eventually(Duration::from_secs(10), || async {
        let text = browser.script("return document.getElementById('state').textContent").await?;
        let again = browser.script("return document.getElementById('again').hidden").await?;
        let said = text.as_str().unwrap_or_default().contains("no security key answered within 10s");
        if said && again == serde_json::json!(true) { Ok(()) } else { anyhow::bail!("page says {text}") }
    })
    .await
    .expect("the page follows the command");

    // A second key, with a PIN: registered through another approval, it answers.
    browser.remove_key(&touch_only).await.expect("unplugged");
    browser.add_key(true).await.expect("a key with a PIN");
    enroll_in_browser(&w, &browser, &alice, "webauthn-register-second.png").await;
    let e = wait(&w, "two keys", |e| e.status.as_ref().is_some_and(|s| s.credentials.len() == 2)).await;
    assert_eq!(e.status.unwrap().credentials.len(), 2);
    let mut request =
        Running::start(&w, &alice, &["request", "--method", "WebAuthn", "--no-browser", "--reason", "INC-33"]);
    let url = request.until("the security-key page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    assert_eq!(state, "done", "{text}");
    assert!(request.finish().await.success);
    let grants = w.grants_of("alice").await;
    let grant = grants.iter().find(|g| g.spec.method == Method::WebAuthn).expect("a WebAuthn grant");
    assert!(grant.spec.user_verified);
    w.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    let prod: Api<Secret> = Api::namespaced(w.env.client("alice").await, "prod");
    prod.delete("db", &DeleteParams::default()).await.expect("deleted with a verified key's grant");
}

/// A second key without an admin: alice's registered key answers a challenge asked for the new
/// enrollment key, and that grant vouches for the registration; `kubectl stepup status` then
/// lists both keys and what allowed each.
#[tokio::test]
async fn a_registered_key_vouches_for_the_next_one_without_an_admin() {
    let w = World::new().await;
    w.unenroll("alice").await;
    let browser = Browser::start().await.expect("headless Chromium with chromedriver");
    let alice = w.env.kubeconfig("alice");
    let first = browser.add_key(true).await.expect("a security key");
    enroll_in_browser(&w, &browser, &alice, "webauthn-register-first.png").await;

    let mut enroll = Running::start(&w, &alice, &["enroll", "--method", "WebAuthn", "--no-browser", "--timeout", "2m"]);
    let url = enroll.until("the page where the registered key vouches", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    assert_eq!(state, "done", "{text}");
    // The backup key is another device: the first one is put away.
    browser.remove_key(&first).await.expect("unplugged");
    browser.add_key(true).await.expect("the backup key");
    let url = enroll.until("the registration page", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    browser.screenshot(&screenshot_path("webauthn-register-vouched.png")).await.expect("screenshot");
    assert_eq!(state, "done", "{text}");
    assert!(text.contains("allowed by WebAuthn grant"), "{text}");
    let ended = enroll.finish().await;
    assert!(ended.success, "{}\n{}", ended.stdout, ended.stderr);
    w.wait_event("EnrollmentVouched", "a current factor").await;

    let out = plugin(&w.env, "alice", &["status"], None).await;
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Keys:        2 security key(s) registered, Active"), "{text}");
    assert!(text.contains("approved by admin") && text.contains("allowed by WebAuthn grant"), "{text}");

    // The first key is lost: alice removes it herself, the backup confirming on the page (a
    // grant asked for exactly that removal, spent after).
    let e = wait(&w, "two keys", |e| e.status.as_ref().is_some_and(|s| s.credentials.len() == 2)).await;
    let lost = e.status.unwrap().credentials.into_iter().find(|k| k.allowed.contains("approved by admin")).unwrap();
    let mut removal = Running::start(&w, &alice, &["remove-key", &lost.id_hash[..12], "--no-browser"]);
    let url = removal.until("the page where a key confirms the removal", page_address).await;
    browser.goto(&url).await.expect("the page opens");
    let (state, text) =
        browser.wait_state(&["done", "failed"], Duration::from_secs(30)).await.expect("the page finishes");
    assert_eq!(state, "done", "{text}");
    let ended = removal.finish().await;
    assert!(ended.success, "{}\n{}", ended.stdout, ended.stderr);
    assert!(
        ended.stdout.contains(&format!("Removed security key {} from alice's enrollment; 1 left.", lost.id_hash)),
        "{}",
        ended.stdout
    );
    w.wait_event("SecurityKeyRemoved", "by alice (WebAuthn grant").await;
    let spent = w.grants_of("alice").await.into_iter().filter(|g| g.metadata.deletion_timestamp.is_none());
    assert!(spent.into_iter().all(|g| g.spec.scope.policies != [api::REMOVE_KEY_SCOPE]), "the removal grant is spent");
}
