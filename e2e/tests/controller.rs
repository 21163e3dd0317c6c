//! Issue-4 scenarios: enrollment, challenges and grants with the real controller, and each
//! line of the security model attempted as an attack. Run with `make e2e`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use stepup_core::testing::policy;
use stepup_core::verify::response::EnrollmentPurpose;
use stepup_core::{
    api::{
        self, ChallengePhase, EnrollmentPhase, GrantPhase, Method, Operation::*, StepUpEnrollment, StepUpEnrollmentSpec,
    },
    verify::{seal::EphemeralKey, totp},
};
use stepup_e2e::{
    ControllerProcess, ScriptControllerPaused, World, audit_lines, eventually, refusal, sealed_confirmation,
};

const ALICE_UID: &str = "uid-alice-1";

fn prod_secrets() -> stepup_core::api::StepUpPolicy {
    policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build()
}

async fn delete_secret_as(world: &World, who: &str, name: &str) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(world.env.client(who).await, "prod");
    api.delete(name, &DeleteParams::default()).await.map(|_| ())
}

fn phase(c: &stepup_core::api::StepUpChallenge) -> ChallengePhase {
    c.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn message(c: &stepup_core::api::StepUpChallenge) -> String {
    c.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

#[tokio::test]
async fn alice_enrolls_steps_up_and_the_refused_delete_passes_with_evidence() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.secret("prod", "db").await;
    refusal(delete_secret_as(&world, "alice", "db").await);

    let mut auth = world.enroll("alice", "alice").await;
    let code = auth.code().await;
    let challenge = world.challenge("alice", "alice", ALICE_UID, &code, Some("INC-42")).await;
    assert_eq!(phase(&challenge), ChallengePhase::Verified, "{}", message(&challenge));
    // The sealed code is scrubbed by the reconcile after the verdict, so not always by the
    // time the verdict is read (CI saw it still there once): it goes within seconds.
    let challenges: Api<stepup_core::api::StepUpChallenge> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(10), || async {
        let c = challenges.get(&challenge.name_any()).await?;
        if c.spec.response.is_some() { anyhow::bail!("the sealed code is still on the challenge") } else { Ok(()) }
    })
    .await
    .expect("the controller scrubs the sealed code once it has judged it");
    let grant_name = challenge.status.as_ref().unwrap().grant_ref.as_ref().unwrap().name.clone();
    let grant = world.controller_grants().get(&grant_name).await.unwrap();
    assert_eq!(grant.spec.user, "alice");
    assert_eq!(grant.spec.uid.as_deref(), Some(ALICE_UID));
    assert_eq!(grant.spec.reason.as_deref(), Some("INC-42"));
    assert_eq!(grant.spec.method, Method::Totp);
    assert_eq!(grant.spec.challenge_ref.as_ref().unwrap().uid, challenge.metadata.uid.clone().unwrap());

    delete_secret_as(&world, "alice", "db").await.expect("the grant lets the delete through");
    // The reason reaches the API server's audit log with the decision, policy and grant.
    let annotations = world
        .env
        .audit_annotations(|e| {
            e["verb"] == "delete"
                && e["user"]["username"] == "alice"
                && e["objectRef"]["name"] == "db"
                && e["annotations"]["validate.stepup.dev/decision"] == "granted"
        })
        .await;
    assert_eq!(annotations["validate.stepup.dev/grant"], grant_name.as_str(), "{annotations}");
    assert_eq!(annotations["validate.stepup.dev/reason"], "INC-42", "{annotations}");
    assert_eq!(annotations["validate.stepup.dev/policy"], "prod-secrets", "{annotations}");

    // Evidence: an Event and an audit line naming alice, the reason and the method.
    let issued = eventually(Duration::from_secs(10), || async {
        world
            .events("GrantIssued")
            .await
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(grant_name.as_str()))
            .ok_or_else(|| anyhow::anyhow!("no GrantIssued event yet"))
    })
    .await
    .unwrap();
    let note = issued.note.unwrap_or_default();
    assert!(note.contains("alice") && note.contains("TOTP") && note.contains("INC-42"), "{note}");
    let lines = audit_lines(world.env.var("STEPUP_CONTROLLER_LOG"));
    assert!(
        lines.iter().any(|l| l["event"] == "grant.issued"
            && l["user"] == "alice"
            && l["reason"] == "INC-42"
            && l["method"] == "TOTP"),
        "no grant.issued audit line for alice"
    );
    let webhook_lines = audit_lines(world.env.var("STEPUP_WEBHOOK_LOG"));
    assert!(
        webhook_lines
            .iter()
            .any(|l| l["decision"] == "granted" && l["user"] == "alice" && l["grant"] == grant_name.as_str()),
        "no granted audit line from the webhook"
    );
}

#[tokio::test]
async fn a_wrong_code_is_denied_with_a_clear_message_and_an_event() {
    let world = World::new().await;
    let auth = world.enroll("alice", "alice").await;
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
    assert_eq!(phase(&c), ChallengePhase::Denied);
    assert!(message(&c).starts_with("wrong code"), "{}", message(&c));
    assert!(world.grants_of("alice").await.is_empty());
    let name = c.name_any();
    eventually(Duration::from_secs(10), || async {
        let found = world.events("ChallengeFailed").await.into_iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                && e.note.as_deref().is_some_and(|n| n.contains("alice") && n.contains("wrong code"))
        });
        if found { Ok(()) } else { anyhow::bail!("no ChallengeFailed event") }
    })
    .await
    .unwrap();

    // A five-minute-old code is refused too, and says so (a newcomer's report, issue 30).
    let old =
        stepup_core::verify::totp::code_at(auth.seed(), jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5));
    let c = world.challenge("alice", "alice", ALICE_UID, &old, None).await;
    assert_eq!(phase(&c), ChallengePhase::Denied);
    assert!(message(&c).starts_with("that code is right for another time"), "{}", message(&c));
    assert!(world.grants_of("alice").await.is_empty());
}

#[tokio::test]
async fn the_same_right_code_used_twice_is_refused_the_second_time() {
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let code = auth.code().await;
    let first = world.challenge("alice", "alice", ALICE_UID, &code, None).await;
    assert_eq!(phase(&first), ChallengePhase::Verified, "{}", message(&first));
    let second = world.challenge("alice", "alice", ALICE_UID, &auth.last_code(), None).await;
    assert_eq!(phase(&second), ChallengePhase::Denied);
    assert!(message(&second).contains("already used"), "{}", message(&second));
    assert_eq!(world.grants_of("alice").await.len(), 1);
}

#[tokio::test]
async fn failures_are_rate_limited_then_lock_the_user_until_an_admin_resets() {
    // e2e controller: 3 failures per 20 s window, locked after 5 consecutive failures.
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    // Take the right code first: waiting for a fresh step could outlast the failure window.
    let right = auth.code().await;
    for _ in 0..3 {
        let c = world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
        assert_eq!(phase(&c), ChallengePhase::Denied);
    }
    let limited = world.challenge("alice", "alice", ALICE_UID, &right, None).await;
    assert!(message(&limited).starts_with("too many failed attempts; try again in"), "{}", message(&limited));

    // The e2e rate window is 20 s: only time ends it.
    tokio::time::sleep(Duration::from_secs(21)).await;
    for _ in 0..2 {
        world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
    }
    world.wait_enrollment("alice", EnrollmentPhase::Locked).await;
    let locked = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    assert_eq!(phase(&locked), ChallengePhase::Denied);
    assert!(message(&locked).contains("locked"), "even a right code is refused: {}", message(&locked));
    assert!(!world.events("UserLocked").await.is_empty());

    // Alice cannot unlock herself; the admin can.
    let as_alice: Api<StepUpEnrollment> = Api::all(world.env.client("alice").await);
    let unlock = serde_json::json!({"metadata": {"annotations": {api::UNLOCK_BY_ANNOTATION: "alice"}}});
    refusal(as_alice.patch(&api::enrollment_name("alice"), &PatchParams::default(), &Patch::Merge(&unlock)).await);
    world.unlock("alice").await;
    world.wait_enrollment("alice", EnrollmentPhase::Active).await;
    let ok = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    assert_eq!(phase(&ok), ChallengePhase::Verified, "{}", message(&ok));
}

#[tokio::test]
async fn nobody_creates_challenges_or_enrollments_for_someone_else() {
    let world = World::new().await;
    let status = refusal(world.create_challenge("alice", "bob", "uid-bob-1", "123456", None, None).await);
    assert!(status.message.contains("only be created for yourself"), "{}", status.message);
    // The account's UID is bound too: the re-created alice cannot pass as the old one.
    let status = refusal(world.create_challenge("alice-recreated", "alice", ALICE_UID, "123456", None, None).await);
    assert!(status.message.contains("UID"), "{}", status.message);

    let as_alice: Api<StepUpEnrollment> = Api::all(world.env.client("alice").await);
    let mut for_bob = StepUpEnrollment::new(
        &api::enrollment_name("bob"),
        StepUpEnrollmentSpec {
            user: "bob".into(),
            method: Method::Totp,
            public_key: EphemeralKey::generate().public_key_b64(),
            confirmation: None,
            bootstrap: false,
            bootstrap_proof: None,
        },
    );
    for_bob.metadata.labels = None;
    let status = refusal(as_alice.create(&PostParams::default(), &for_bob).await);
    assert!(status.message.contains("you can only enroll yourself"), "{}", status.message);
}

#[tokio::test]
async fn alice_revokes_her_grant_and_the_next_delete_is_refused_within_seconds() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    let mut auth = world.enroll("alice", "alice").await;
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    let grant = c.status.unwrap().grant_ref.unwrap().name;
    world.secret("prod", "db").await;
    delete_secret_as(&world, "alice", "db").await.expect("granted");

    let as_alice: Api<stepup_core::api::StepUpGrant> = Api::all(world.env.client("alice").await);
    as_alice.delete(&grant, &DeleteParams::default()).await.expect("alice revokes her own grant");
    world.secret("prod", "db").await;
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(5), || async {
        match delete_secret_as(&world, "alice", "db").await {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            other => anyhow::bail!("not refused yet: {other:?}"),
        }
    })
    .await
    .expect("refused after revocation");
    eprintln!("refused {:?} after revocation", started.elapsed());
    eventually(Duration::from_secs(10), || async {
        if world
            .events("GrantRevoked")
            .await
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(grant.as_str()))
        {
            Ok(())
        } else {
            anyhow::bail!("no GrantRevoked event")
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn first_enrollment_needs_an_admin_and_nobody_approves_themselves() {
    let world = World::new().await;
    world.unenroll("bob").await;
    let as_bob: Api<StepUpEnrollment> = Api::all(world.env.client("bob").await);
    let key = EphemeralKey::generate();
    let mut e = StepUpEnrollment::new(
        &api::enrollment_name("bob"),
        StepUpEnrollmentSpec {
            user: "bob".into(),
            method: Method::Totp,
            public_key: key.public_key_b64(),
            confirmation: None,
            bootstrap: false,
            bootstrap_proof: None,
        },
    );
    e.metadata.labels = None;
    as_bob.create(&PostParams::default(), &e).await.unwrap();
    let pending = world.wait_enrollment("bob", EnrollmentPhase::PendingApproval).await;
    assert!(pending.status.unwrap().sealed_secret.is_none(), "no seed before approval");
    let fp = stepup_core::verify::seal::fingerprint(&key.public_key_b64());
    for who in ["bob", "alice"] {
        let api: Api<StepUpEnrollment> = Api::all(world.env.client(who).await);
        let approve = serde_json::json!({"metadata": {"annotations": {
            api::APPROVED_BY_ANNOTATION: who,
            api::APPROVED_KEY_ANNOTATION: fp,
            api::APPROVED_AT_ANNOTATION: jiff::Timestamp::now().to_string(),
        }}});
        refusal(api.patch(&api::enrollment_name("bob"), &PatchParams::default(), &Patch::Merge(&approve)).await);
    }
    // Bob cannot remove his enrollment either (that would reopen first enrollment to whoever holds his credentials).
    refusal(as_bob.delete(&api::enrollment_name("bob"), &DeleteParams::default()).await);
    world.approve("bob").await;
    world.wait_enrollment("bob", EnrollmentPhase::AwaitingConfirmation).await;
    world.unenroll("bob").await;
}

/// The `LastCode` condition's message, once it reports on `generation` or later.
fn last_code(e: &StepUpEnrollment, generation: i64) -> Option<(bool, String)> {
    kubectl_stepup::enroll::last_code(e, generation)
}

#[tokio::test]
async fn reenrollment_needs_a_current_code_from_the_old_device_or_an_admin_approval() {
    let world = World::new().await;
    let mut old = world.enroll("alice", "alice").await;
    let as_alice: Api<StepUpEnrollment> = Api::all(world.env.client("alice").await);
    let name = api::enrollment_name("alice");
    let response_key = world.response_key_for("alice").await;

    // An attacker with alice's credentials but not her device tries to enroll their own key,
    // with a guessed code sealed exactly as the plugin would seal it.
    let attacker = EphemeralKey::generate();
    let mut wanted = as_alice.get(&name).await.unwrap();
    wanted.spec.public_key = attacker.public_key_b64();
    let guess = sealed_confirmation(&wanted, &old.wrong_code(), EnrollmentPurpose::Reenrollment, &response_key);
    let patch = serde_json::json!({"spec": {"publicKey": attacker.public_key_b64(), "confirmation": guess}});
    let patched = as_alice.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let generation = patched.metadata.generation.unwrap();
    let (accepted, message) = eventually(Duration::from_secs(15), || async {
        last_code(&as_alice.get(&name).await?, generation).ok_or_else(|| anyhow::anyhow!("not checked yet"))
    })
    .await
    .unwrap();
    assert!(!accepted && message.contains("re-enrollment code refused"), "{message}");
    let status = as_alice.get(&name).await.unwrap().status.unwrap_or_default();
    assert!(status.sealed_secret.is_none(), "no seed sealed to the attacker's key");

    // Alice, with her old device, re-enrolls.
    let new_key = EphemeralKey::generate();
    let mut wanted = as_alice.get(&name).await.unwrap();
    wanted.spec.public_key = new_key.public_key_b64();
    let proof = sealed_confirmation(&wanted, &old.code().await, EnrollmentPurpose::Reenrollment, &response_key);
    let patch = serde_json::json!({"spec": {"publicKey": new_key.public_key_b64(), "confirmation": proof}});
    as_alice.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let e = world.wait_enrollment("alice", EnrollmentPhase::AwaitingConfirmation).await;
    let seed = new_key.open(&e.status.unwrap().sealed_secret.unwrap()).unwrap();
    world.confirm("alice", "alice", &totp::code_at(&seed, jiff::Timestamp::now())).await;
    world.wait_enrollment("alice", EnrollmentPhase::Active).await;
    // The old device no longer works.
    let c = world.challenge("alice", "alice", ALICE_UID, &old.code().await, None).await;
    assert_eq!(phase(&c), ChallengePhase::Denied);
}

#[tokio::test]
async fn the_seed_never_appears_in_plain_text_anywhere() {
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, Some("seed-leak-check")).await;
    assert_eq!(phase(&c), ChallengePhase::Verified);
    let seed = auth.seed().to_vec();
    let forms =
        [totp::base32_encode(&seed), hex_lower(&seed), base64_std(&seed), String::from_utf8_lossy(&seed).into_owned()];
    let mut haystacks = Vec::new();
    for kind in ["stepupenrollments", "stepupchallenges", "stepupgrants", "stepuppolicies"] {
        let out = world.env.kubectl("admin", &["get", kind, "-o", "json"]);
        haystacks.push((kind.to_owned(), String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let out = world.env.kubectl("admin", &["get", "events", "-A", "-o", "json"]);
    haystacks.push(("events".into(), String::from_utf8_lossy(&out.stdout).into_owned()));
    for var in ["STEPUP_WEBHOOK_LOG", "STEPUP_CONTROLLER_LOG", "KUBE_AUDIT_LOG"] {
        haystacks.push((var.into(), std::fs::read_to_string(world.env.var(var)).unwrap_or_default()));
    }
    for (where_, text) in &haystacks {
        assert!(!text.is_empty() || where_ == "stepuppolicies", "{where_} was read");
        for form in &forms[..3] {
            assert!(!text.contains(form.as_str()), "the seed appears in {where_}");
        }
    }
    // Where it does live: the factor Secret in stepup's namespace, which alice cannot read.
    let secrets: Api<Secret> = Api::namespaced(world.env.client("alice").await, "stepup-system");
    refusal(secrets.get(&api::factor_secret_name("alice")).await);
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base64_std(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (u32::from(*x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn grants_expire_are_kept_as_evidence_then_collected_and_challenges_cleaned_up() {
    // e2e controller: grant retention 60 s, challenge TTL 30 s.
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let c = world.create_challenge("alice", "alice", ALICE_UID, &auth.code().await, None, Some("3s")).await.unwrap();
    let c = world.verdict(&c.name_any()).await;
    let grant = c.status.unwrap().grant_ref.unwrap().name;
    let g = eventually(Duration::from_secs(20), || async {
        let g = world.controller_grants().get(&grant).await?;
        if g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Expired) {
            Ok(g)
        } else {
            anyhow::bail!("not expired yet")
        }
    })
    .await
    .expect("grant marked Expired");
    assert!(g.metadata.deletion_timestamp.is_none(), "kept as evidence after expiry");
    eventually(Duration::from_secs(90), || async {
        if world.controller_grants().get_opt(&grant).await?.is_none() { Ok(()) } else { anyhow::bail!("still there") }
    })
    .await
    .expect("collected after retention");
    let challenges: Api<stepup_core::api::StepUpChallenge> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(60), || async {
        if challenges.get_opt(&c.metadata.name.clone().unwrap()).await?.is_none() {
            Ok(())
        } else {
            anyhow::bail!("challenge still there")
        }
    })
    .await
    .expect("challenge cleaned up after its TTL");
}

/// Starts a controller that stops itself at `point` and waits until it leads, so that it is
/// the one that answers the next challenge.
async fn crashing_controller(world: &World, point: &str) -> ControllerProcess {
    let crashing = ControllerProcess::spawn(
        &world.env,
        &format!("e2e-crash-{point}"),
        stepup_e2e::extra_port(0),
        &["--crash-at", point],
    );
    eventually(Duration::from_secs(30), || async {
        if crashing.is_leader().await { Ok(()) } else { anyhow::bail!("the crashing controller does not lead yet") }
    })
    .await
    .expect("the crashing controller leads");
    crashing
}

/// The grants named after challenge `c`.
/// Grants that stand for a challenge: one being deleted (revoked, its finalizer not yet
/// released) is refused by the webhook already (`GrantRecord::revoked`), so it does not count.
async fn grants_of_challenge(world: &World, c: &stepup_core::api::StepUpChallenge) -> usize {
    let uid = c.metadata.uid.clone().unwrap();
    world
        .grants_of("alice")
        .await
        .iter()
        .filter(|g| g.spec.challenge_ref.as_ref().is_some_and(|r| r.uid == uid))
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .count()
}

/// A reconciler that panics (a bug) must not leave a leader that answers nothing while holding
/// the lease: the controller stops, saying why, and another replica takes over and answers.
#[tokio::test]
async fn a_panicking_reconciler_stops_the_controller_and_another_answers() {
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let _paused = ScriptControllerPaused::new();
    let instance = "e2e-panic";
    let mut panicking =
        ControllerProcess::spawn(&world.env, instance, stepup_e2e::extra_port(0), &["--panic-at", "claimed"]);
    eventually(Duration::from_secs(30), || async {
        if panicking.is_leader().await { Ok(()) } else { anyhow::bail!("the panicking controller does not lead yet") }
    })
    .await
    .expect("the panicking controller leads");
    let code = auth.code().await;
    let key = world.response_key_for("alice").await;
    let mut challenge = stepup_e2e::sealed_challenge("alice", ALICE_UID, &code, None, None, &key);
    challenge.metadata.finalizers = None;
    let c = world.create_raw_challenge("alice", &challenge).await.unwrap();
    assert_eq!(panicking.wait_exit(Duration::from_secs(30)).await, Some(1), "the controller stops");
    let log = std::fs::read_to_string(format!("{}/stepup-controller-{instance}.log", world.env.var("STEPUP_LOGS_DIR")))
        .unwrap();
    assert!(log.contains("a reconciler ended while leading"), "{log}");
    assert!(log.contains("the challenges reconciler panicked while leading"), "{log}");
    let _fresh = ControllerProcess::spawn(&world.env, "e2e-after-panic", stepup_e2e::extra_port(1), &[]);
    let done = world.verdict(&c.name_any()).await;
    assert_eq!(phase(&done), ChallengePhase::Verified, "{}", message(&done));
}

#[tokio::test]
async fn a_crash_at_any_step_of_issuing_yields_one_grant_a_spent_step_and_a_true_verdict() {
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let paused = ScriptControllerPaused::new();
    let challenges: Api<stepup_core::api::StepUpChallenge> = Api::all(world.admin.clone());
    for point in ["claimed", "recorded", "issued", "answered", "scrubbed"] {
        let mut crashing = crashing_controller(&world, point).await;
        let code = auth.code().await;
        let key = world.response_key_for("alice").await;
        let mut challenge = stepup_e2e::sealed_challenge("alice", ALICE_UID, &code, None, None, &key);
        if point == "claimed" {
            // Without the plugin's finalizer the controller adds it first (a step of its own).
            challenge.metadata.finalizers = None;
        }
        let c = world.create_raw_challenge("alice", &challenge).await.unwrap();
        assert_eq!(crashing.wait_exit(Duration::from_secs(30)).await, Some(86), "{point}: stopped there");
        let early = matches!(point, "claimed" | "recorded");
        assert_eq!(grants_of_challenge(&world, &c).await, usize::from(!early), "{point}: grants before the handover");
        // A fresh controller takes over once the crashed one's lease runs out.
        let fresh = ControllerProcess::spawn(&world.env, &format!("e2e-after-{point}"), stepup_e2e::extra_port(1), &[]);
        let done = world.verdict(&c.name_any()).await;
        assert_eq!(phase(&done), ChallengePhase::Verified, "{point}: {}", message(&done));
        eventually(Duration::from_secs(15), || async {
            let now = challenges.get(&c.name_any()).await?;
            if now.spec.response.is_some() { anyhow::bail!("sealed code still there") } else { Ok(()) }
        })
        .await
        .unwrap_or_else(|e| panic!("{point}: the sealed code is scrubbed: {e}"));
        // A second grant would come from a later reconcile, and nothing marks its absence: give
        // one the time to appear before counting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(grants_of_challenge(&world, &c).await, 1, "{point}: exactly one grant");
        // The step is spent, whichever life recorded it: the same code again is a replay.
        let again = world.challenge("alice", "alice", ALICE_UID, &code, None).await;
        assert_eq!(phase(&again), ChallengePhase::Denied, "{point}: {}", message(&again));
        assert!(message(&again).contains("already used"), "{point}: {}", message(&again));
        assert_eq!(grants_of_challenge(&world, &again).await, 0, "{point}: the replay earns nothing");
        drop(fresh);
        drop(crashing);
    }

    // The worst moment: the grant exists, the verdict is not written, and the deadline passes
    // before another controller looks. The user was told nothing but "waiting", and then
    // gives up; the challenge must end Expired with no grant standing.
    let mut crashing = crashing_controller(&world, "issued").await;
    let code = auth.code().await;
    let key = world.response_key_for("alice").await;
    let mut late = stepup_e2e::sealed_challenge("alice", ALICE_UID, &code, None, None, &key);
    let deadline =
        jiff::Timestamp::from_second((jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20)).as_second())
            .unwrap();
    late.spec.deadline = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(deadline));
    late.spec.response = Some(
        stepup_core::verify::response::seal_code(&key, &code, stepup_core::verify::response::challenge_binding(&late))
            .unwrap(),
    );
    let late = world.create_raw_challenge("alice", &late).await.unwrap();
    assert_eq!(crashing.wait_exit(Duration::from_secs(30)).await, Some(86), "stopped after issuing");
    assert_eq!(grants_of_challenge(&world, &late).await, 1, "the grant was issued");
    // What is tested is the deadline passing while no controller runs: only time does that.
    let wait = deadline.duration_since(jiff::Timestamp::now()).as_secs_f64().max(0.0) + 1.0;
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let fresh = ControllerProcess::spawn(&world.env, "e2e-after-deadline", stepup_e2e::extra_port(1), &[]);
    let done = world.verdict(&late.name_any()).await;
    assert_eq!(phase(&done), ChallengePhase::Expired, "{}", message(&done));
    assert_eq!(grants_of_challenge(&world, &late).await, 0, "no grant stands when the verdict says none");
    // This challenge's Event: a kept control plane holds earlier runs' Events too.
    let note = world.wait_event("GrantWithdrawn", &late.name_any()).await;
    assert!(note.contains("expired before its verdict was written"), "{note}");
    drop(fresh);
    drop(paused);
}

#[tokio::test]
async fn only_the_leader_acts_and_killing_it_hands_over() {
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let paused = ScriptControllerPaused::new();
    let mut a = ControllerProcess::spawn(&world.env, "e2e-a", stepup_e2e::extra_port(2), &[]);
    let mut b = ControllerProcess::spawn(&world.env, "e2e-b", stepup_e2e::extra_port(3), &[]);
    let (leader, standby) = eventually(Duration::from_secs(30), || async {
        match (a.is_leader().await, b.is_leader().await) {
            (true, false) => Ok(("a", "b")),
            (false, true) => Ok(("b", "a")),
            other => anyhow::bail!("leaders: {other:?}"),
        }
    })
    .await
    .expect("exactly one leader");
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    assert_eq!(phase(&c), ChallengePhase::Verified);
    assert!(!(a.is_leader().await && b.is_leader().await), "never two leaders");

    if leader == "a" {
        a.kill()
    } else {
        b.kill()
    }
    let survivor = if standby == "a" { &a } else { &b };
    eventually(Duration::from_secs(20), || async {
        if survivor.is_leader().await { Ok(()) } else { anyhow::bail!("{standby} not leading yet") }
    })
    .await
    .expect("the standby took over");
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    assert_eq!(phase(&c), ChallengePhase::Verified, "the new leader verifies");
    drop(a);
    drop(b);
    drop(paused);
}
