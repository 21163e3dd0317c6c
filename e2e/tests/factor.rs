//! Issue-11 scenarios, and parts (6) and (8) of issue 10: a factor's whole life, attacked the
//! way issue 11 found it open, by someone holding alice's stolen token but not her device, by
//! another user watching everything they may read, and by a cluster-admin reading Secrets.
//! Each test runs the attack with the real plugin, kubectl or raw API calls and checks that
//! nothing happened. Run with `make e2e` (one test at a time: scenarios share the cluster).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use stepup_core::{
    api::{self, ChallengePhase, EnrollmentPhase, StepUpChallenge, StepUpEnrollment, StepUpPolicy},
    verify::{
        response::EnrollmentPurpose,
        seal::{EphemeralKey, fingerprint},
        totp,
    },
};
use stepup_e2e::{
    Authenticator, ControllerProcess, ScriptControllerPaused, Terminal, World, base32_decode, controller_metric_sum,
    eventually, plugin, refusal, sealed_challenge, sealed_confirmation, show, text,
};

const ALICE_UID: &str = "uid-alice-1";

fn phase_of(c: &StepUpChallenge) -> ChallengePhase {
    c.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn message_of(c: &StepUpChallenge) -> String {
    c.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

fn reason_of(c: &StepUpChallenge) -> String {
    c.status.as_ref().and_then(|s| s.conditions.first().map(|c| c.reason.clone())).unwrap_or_default()
}

async fn enrollment(world: &World, user: &str) -> StepUpEnrollment {
    let api: Api<StepUpEnrollment> = Api::all(world.admin.clone());
    api.get(&api::enrollment_name(user)).await.expect("enrollment")
}

/// `kubectl get stepupenrollments <user>`, the PHASE column, as an admin sees it.
fn phase_column(world: &World, user: &str) -> String {
    let out = world.env.kubectl("admin", &["get", "stepupenrollments", &api::enrollment_name(user), "--no-headers"]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).unwrap_or_default().to_owned()
}

/// Active grants of `user` (not being deleted, not expired).
async fn live_grants(world: &World, user: &str) -> Vec<String> {
    let now = jiff::Timestamp::now();
    world
        .grants_of(user)
        .await
        .into_iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none() && g.spec.expires_at.0 > now)
        .map(|g| g.name_any())
        .collect()
}

/// Watches for `duration` that nothing gets sealed to `attacker` and nothing is enrolled with it.
async fn nothing_sealed_to(world: &World, user: &str, attacker: &EphemeralKey, duration: Duration) {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let e = enrollment(world, user).await;
        let status = e.status.unwrap_or_default();
        if let Some(sealed) = status.sealed_secret.as_deref() {
            assert!(attacker.open(sealed).is_err(), "a seed was sealed to the attacker's key");
        }
        assert_ne!(
            status.enrolled_key_fingerprint.as_deref(),
            Some(fingerprint(&attacker.public_key_b64()).as_str()),
            "the attacker's key was enrolled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fails codes until the controller locks `user` (e2e: 3 failures per 20 s, locked after 5).
async fn lock_out(world: &World, who: &str, user: &str, uid: &str, auth: &Authenticator) {
    for _ in 0..3 {
        let c = world.challenge(who, user, uid, &auth.wrong_code(), None).await;
        assert_eq!(phase_of(&c), ChallengePhase::Denied);
    }
    // The e2e rate window is 20 s: only time ends it.
    tokio::time::sleep(Duration::from_secs(21)).await;
    for _ in 0..2 {
        world.challenge(who, user, uid, &auth.wrong_code(), None).await;
    }
    world.wait_enrollment(user, EnrollmentPhase::Locked).await;
}

/// The enrollment as the attacker (alice's token) makes it: `key` in, an optional code sealed for it.
async fn swap_key(world: &World, key: &EphemeralKey, code: Option<(&str, EnrollmentPurpose)>) -> i64 {
    let as_alice: Api<StepUpEnrollment> = Api::all(world.env.client("alice").await);
    let name = api::enrollment_name("alice");
    let mut wanted = as_alice.get(&name).await.unwrap();
    wanted.spec.public_key = key.public_key_b64();
    let response_key = world.response_key_for("alice").await;
    let confirmation = code.map(|(c, purpose)| sealed_confirmation(&wanted, c, purpose, &response_key));
    let patch = serde_json::json!({"spec": {"publicKey": key.public_key_b64(), "confirmation": confirmation}});
    let patched =
        as_alice.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("alice's token may");
    patched.metadata.generation.unwrap_or_default()
}

#[tokio::test]
async fn an_unlock_clears_the_lockout_and_opens_no_door_for_a_new_key() {
    // Issue 11, attack 1 ("reset means enroll anything, forever").
    let world = World::new().await;
    let auth = world.enroll("alice", "alice").await;
    lock_out(&world, "alice", "alice", ALICE_UID, &auth).await;
    assert_eq!(phase_column(&world, "alice"), "Locked", "kubectl shows the truth");

    // The old all-in-one reset annotation does nothing any more: it is refused.
    world.admin_steps_up().await;
    let as_admin: Api<StepUpEnrollment> = Api::all(world.admin.clone());
    let legacy = serde_json::json!({"metadata": {"annotations": {api::LEGACY_RESET_BY_ANNOTATION: "admin"}}});
    let status =
        refusal(as_admin.patch(&api::enrollment_name("alice"), &PatchParams::default(), &Patch::Merge(&legacy)).await);
    assert!(status.message.contains("no longer used"), "{}", status.message);

    let out = plugin(&world.env, "admin", &["unlock", "alice"], None).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("Unlocked alice's enrollment"), "{}", show(&out));
    world.wait_enrollment("alice", EnrollmentPhase::Active).await;
    world.wait_event("EnrollmentUnlocked", "unlocked by admin").await;

    // The attacker, with alice's token, puts their key in: right after the unlock, and later.
    let attacker = EphemeralKey::generate();
    swap_key(&world, &attacker, None).await;
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(5)).await;
    let e = enrollment(&world, "alice").await;
    let message = e.status.unwrap_or_default().message.unwrap_or_default();
    assert!(message.contains("kubectl stepup reset alice --key"), "{message}");
    // ... and with a guessed code of the old device: refused, nothing sealed.
    let generation = swap_key(&world, &attacker, Some(("123456", EnrollmentPurpose::Reenrollment))).await;
    let checked = eventually(Duration::from_secs(15), || async {
        kubectl_stepup::enroll::last_code(&enrollment(&world, "alice").await, generation)
            .ok_or_else(|| anyhow::anyhow!("not checked yet"))
    })
    .await
    .unwrap();
    assert!(!checked.0, "{checked:?}");
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(3)).await;

    // The unlock branch: alice's own device works again, and nothing else changed.
    let mut auth = auth;
    let c = world.challenge("alice", "alice", ALICE_UID, &auth.code().await, None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Verified, "{}", message_of(&c));
}

#[tokio::test]
async fn a_reset_allows_one_reenrollment_of_the_approved_key_and_refuses_any_other() {
    // Issue 11, attacks 1 and 2: alice lost her device; the admin allows a re-enrollment of the
    // key alice's plugin shows, and only that key.
    let world = World::new().await;
    let mut old = world.enroll("alice", "alice").await;
    let alices_new = EphemeralKey::generate();
    swap_key(&world, &alices_new, None).await;
    let fp = fingerprint(&alices_new.public_key_b64());
    world.admin_steps_up().await;

    // The admin is told another fingerprint (or the key changed since alice read it out).
    let wrong = fingerprint(&EphemeralKey::generate().public_key_b64());
    let out = plugin(&world.env, "admin", &["reset", "alice", "--key", &wrong], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("do not approve it"), "{}", show(&out));
    // The same approval written by hand is refused by the webhook.
    let status = refusal(world.approve_key("alice", &wrong).await);
    assert!(status.message.contains("not the approved"), "{}", status.message);
    assert!(enrollment(&world, "alice").await.status.unwrap_or_default().sealed_secret.is_none());

    // The right fingerprint: one seed, sealed to alice's new key.
    let out = plugin(&world.env, "admin", &["reset", "alice", "--key", &fp], None).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out.stdout).contains(&format!("asks to enroll key {fp}")),
        "the admin is shown the key: {}",
        show(&out)
    );
    world.wait_event("ReenrollmentApproved", &fp).await;
    let mut new = world.finish_enrollment("alice", "alice", &alices_new).await;
    let c = world.challenge("alice", "alice", ALICE_UID, &new.code().await, None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Verified, "{}", message_of(&c));
    let c = world.challenge("alice", "alice", ALICE_UID, &old.code().await, None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Denied, "the lost device no longer works");

    // The approval was used once: a key swapped in afterwards gets nothing.
    let attacker = EphemeralKey::generate();
    swap_key(&world, &attacker, None).await;
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_approval_binds_to_the_key_the_admin_was_shown_and_any_swap_voids_it() {
    // Issue 11, attack 2: the owner's token swaps spec.publicKey around the admin's approval.
    let world = World::new().await;
    world.unenroll("alice").await;
    let alices = EphemeralKey::generate();
    world.create_enrollment("alice", "alice", &alices).await;
    let fp = fingerprint(&alices.public_key_b64());
    let shown = enrollment(&world, "alice").await.status.unwrap_or_default().key_fingerprint;
    assert_eq!(shown.as_deref(), Some(fp.as_str()), "the fingerprint alice's plugin shows is the one admins see");

    // Swapped before the admin acts: the approval of what alice read out is refused.
    let attacker = EphemeralKey::generate();
    swap_key(&world, &attacker, None).await;
    let status = refusal(world.approve_key("alice", &fp).await);
    assert!(status.message.contains("not the approved"), "{}", status.message);
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(3)).await;

    // Alice's key back, approved; then swapped right after the approval.
    swap_key(&world, &alices, None).await;
    world.approve_key("alice", &fp).await.expect("approved");
    world.wait_enrollment("alice", EnrollmentPhase::AwaitingConfirmation).await;
    swap_key(&world, &attacker, None).await;
    let voided = world.wait_event("PendingConfirmationVoided", &fingerprint(&attacker.public_key_b64())).await;
    assert!(voided.contains(&fp), "{voided}");
    world.wait_enrollment("alice", EnrollmentPhase::PendingApproval).await;
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(3)).await;
    // Alice's key back once more: the approval was consumed, it does not come back.
    swap_key(&world, &alices, None).await;
    // That the approval does not come back is an absence: give the controller time to act.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = enrollment(&world, "alice").await;
    assert_eq!(e.status.as_ref().and_then(|s| s.phase), Some(EnrollmentPhase::PendingApproval));
    assert!(e.status.unwrap_or_default().sealed_secret.is_none(), "one approval, one use");
}

#[tokio::test]
async fn a_valid_code_never_confirms_a_key_swapped_in_after_it_was_typed() {
    // Issue 11, attack 2: during alice's re-enrollment a watcher swaps the key after she typed
    // a valid first code.
    let world = World::new().await;
    let mut old = world.enroll("alice", "alice").await;
    let alices_new = EphemeralKey::generate();
    swap_key(&world, &alices_new, Some((&old.code().await, EnrollmentPurpose::Reenrollment))).await;
    let e = world.wait_enrollment("alice", EnrollmentPhase::AwaitingConfirmation).await;
    let seed = alices_new.open(&e.status.unwrap().sealed_secret.unwrap()).unwrap();
    let valid = sealed_confirmation(
        &enrollment(&world, "alice").await,
        &totp::code_at(&seed, jiff::Timestamp::now()),
        EnrollmentPurpose::Confirmation,
        &world.response_key_for("alice").await,
    );
    // The attacker copies alice's sealed code and swaps in their key, in one write.
    let attacker = EphemeralKey::generate();
    let as_alice: Api<StepUpEnrollment> = Api::all(world.env.client("alice").await);
    let patch = serde_json::json!({"spec": {"publicKey": attacker.public_key_b64(), "confirmation": valid}});
    as_alice.patch(&api::enrollment_name("alice"), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    nothing_sealed_to(&world, "alice", &attacker, Duration::from_secs(4)).await;
    let e = enrollment(&world, "alice").await;
    let status = e.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(EnrollmentPhase::Active), "still the old factor");
    assert_ne!(status.enrolled_key_fingerprint, Some(fingerprint(&alices_new.public_key_b64())));
    let last = e.status.unwrap().conditions.into_iter().find(|c| c.type_ == "LastCode").unwrap();
    assert_eq!(last.reason, "BindingMismatch", "{}", last.message);
    // The old device still works, and is still alice's only factor.
    let c = world.challenge("alice", "alice", ALICE_UID, &old.code().await, None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Verified, "{}", message_of(&c));
}

/// `kubectl stepup request --code-stdin` as alice.
async fn request(world: &World, code: &str, timeout: &str) -> std::process::Output {
    plugin(&world.env, "alice", &["request", "--code-stdin", "--timeout", timeout], Some(&format!("{code}\n"))).await
}

/// Alice's challenges as the controller sees them, but those named in `before` (left by
/// earlier scenarios until their TTL).
async fn alices_challenges(world: &World, before: &[String]) -> Vec<StepUpChallenge> {
    let api: Api<StepUpChallenge> = Api::all(world.admin.clone());
    let selector = format!("{}={}", api::USER_LABEL, api::user_label_value("alice"));
    let all = api.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    all.into_iter().filter(|c| !before.contains(&c.name_any())).collect()
}

/// The names of alice's challenges now.
async fn existing(world: &World) -> Vec<String> {
    alices_challenges(world, &[]).await.iter().map(|c| c.name_any()).collect()
}

#[tokio::test]
async fn a_request_that_failed_while_the_controller_was_down_never_grants_later() {
    // Issue 11, attack 3: exit 7 with the controller down, then the grant appeared anyway.
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let before = existing(&world).await;
    let paused = ScriptControllerPaused::new();
    let out = request(&world, &auth.code().await, "5s").await;
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the challenge was withdrawn, so no grant will be issued for it"), "{stderr}");
    // The withdrawn challenge waits, visibly deleted, for the controller.
    let waiting = alices_challenges(&world, &before).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(waiting[0].metadata.deletion_timestamp.is_some(), "withdrawn: {waiting:?}");
    drop(paused);
    eventually(Duration::from_secs(30), || async {
        if alices_challenges(&world, &before).await.is_empty() { Ok(()) } else { anyhow::bail!("still there") }
    })
    .await
    .expect("the controller finishes the withdrawal");
    // "No grant, ever" is an absence: give a late grant the time to appear.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(world.grants_of("alice").await.is_empty(), "no grant, ever");
    world.wait_event("ChallengeWithdrawn", "no grant was issued").await;
}

#[tokio::test]
async fn a_slow_controller_never_leaves_a_grant_the_plugin_gave_up_on() {
    // Issue 11, attack 3, with a controller caught between its deadline check and issuing
    // (test hook), and one stopped outright (SIGSTOP) until after the plugin gave up.
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let paused = ScriptControllerPaused::new();
    {
        let slow = ControllerProcess::spawn(
            &world.env,
            "e2e-slow",
            stepup_e2e::extra_port(4),
            &["--pause-before-issuing", "20s"],
        );
        eventually(Duration::from_secs(30), || async {
            if slow.is_leader().await { Ok(()) } else { anyhow::bail!("not leading yet") }
        })
        .await
        .expect("the slow controller leads");
        // 15 s: the controller (10 s of allowed skew) may issue within the first 5 s, checks in
        // time, and then dawdles 20 s before issuing.
        let started = Instant::now();
        let out = request(&world, &auth.code().await, "15s").await;
        assert_eq!(out.status.code(), Some(7), "{}", show(&out));
        assert!(text(&out.stderr).contains("withdrawn"), "{}", show(&out));
        // The slow controller issues after its pause, notices the withdrawal, and revokes.
        let revoked = world.wait_event("GrantWithdrawn", "was withdrawn before the verdict").await;
        eprintln!("slow controller: plugin gave up after {:?}; {revoked}", started.elapsed());
        // An absence again: no later reconcile may bring a usable grant back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(live_grants(&world, "alice").await.is_empty(), "no usable grant is left");
    }
    {
        let stopped = ControllerProcess::spawn(&world.env, "e2e-stopped", stepup_e2e::extra_port(5), &[]);
        eventually(Duration::from_secs(30), || async {
            if stopped.is_leader().await { Ok(()) } else { anyhow::bail!("not leading yet") }
        })
        .await
        .expect("the controller leads");
        let before = existing(&world).await;
        stopped.signal("STOP");
        let out = request(&world, &auth.code().await, "5s").await;
        assert_eq!(out.status.code(), Some(7), "{}", show(&out));
        stopped.signal("CONT");
        eventually(Duration::from_secs(30), || async {
            if alices_challenges(&world, &before).await.is_empty() { Ok(()) } else { anyhow::bail!("still there") }
        })
        .await
        .expect("the resumed controller finishes the withdrawal");
        assert!(live_grants(&world, "alice").await.is_empty(), "no grant after the resume");
    }
    drop(paused);
}

#[tokio::test]
async fn a_plugin_killed_mid_wait_leaves_a_challenge_that_expires_at_its_deadline() {
    // Issue 11, attack 3: the plugin is killed (SIGKILL) and cannot withdraw; its deadline
    // still holds when the controller comes back.
    let world = World::new().await;
    let mut auth = world.enroll("alice", "alice").await;
    let before = existing(&world).await;
    let paused = ScriptControllerPaused::new();
    let mut child = tokio::process::Command::new(world.env.var("KUBECTL_STEPUP_BIN"))
        .arg("--kubeconfig")
        .arg(world.env.kubeconfig("alice"))
        .args(["request", "--code-stdin", "--timeout", "6s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{}\n", auth.code().await).as_bytes()).await.unwrap();
    }
    let pending = eventually(Duration::from_secs(20), || async {
        alices_challenges(&world, &before).await.into_iter().next().ok_or_else(|| anyhow::anyhow!("no challenge yet"))
    })
    .await
    .unwrap();
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let deadline = pending.spec.deadline.clone().expect("a deadline").0;
    eprintln!("plugin killed; challenge {} has deadline {deadline}", pending.name_any());
    // The deadline must pass while the controller is paused: only time does that.
    tokio::time::sleep(Duration::from_secs(7)).await;
    drop(paused);
    let done = world.verdict(&pending.name_any()).await;
    assert_eq!(phase_of(&done), ChallengePhase::Expired, "{}", message_of(&done));
    assert!(message_of(&done).contains("deadline"), "{}", message_of(&done));
    assert!(world.grants_of("alice").await.is_empty());
}

/// How long one step-up of alice takes, from creating the challenge to its verdict.
async fn step_up_latency(world: &World, auth: &mut Authenticator) -> Duration {
    let key = world.response_key_for("alice").await;
    let challenge = sealed_challenge("alice", ALICE_UID, &auth.code().await, None, None, &key);
    let api: Api<StepUpChallenge> = Api::all(world.admin.clone());
    let started = Instant::now();
    world.create_raw_challenge("alice", &challenge).await.expect("alice's challenge is admitted");
    loop {
        let c = api.get(&challenge.name_any()).await.unwrap();
        if phase_of(&c) != ChallengePhase::Pending {
            assert_eq!(phase_of(&c), ChallengePhase::Verified, "{}", message_of(&c));
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flood_of_challenges_is_refused_early_and_barely_delays_another_user() {
    // Issue 11, attack 4: one user's script queues everyone else's step-ups.
    let world = World::new().await;
    let mut alice = world.enroll("alice", "alice").await;
    world.enroll("bob", "bob").await;
    let mut baseline = Vec::new();
    for _ in 0..2 {
        baseline.push(step_up_latency(&world, &mut alice).await);
    }

    let bob_key = world.response_key_for("bob").await;
    let refusals_before = world.env.metric_sum("stepup_challenge_limit_refusals_total").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    let flood_started = Instant::now();
    for _ in 0..8 {
        let (stop, key, env) = (stop.clone(), bob_key.clone(), world.env.clone());
        flooders.push(tokio::spawn(async move {
            let api: Api<StepUpChallenge> = Api::all(env.client_without_retries("bob").await);
            let (mut admitted, mut refused, mut failed) = (0u32, 0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = sealed_challenge("bob", "uid-bob-1", "000000", None, None, &key);
                match api.create(&PostParams::default(), &c).await {
                    Ok(_) => admitted += 1,
                    Err(kube::Error::Api(s)) if s.code == 429 => refused += 1,
                    Err(_) => failed += 1,
                }
            }
            (admitted, refused, failed)
        }));
    }
    // The load runs for a while before it is measured: a duration, not a guess.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut during = Vec::new();
    for _ in 0..2 {
        during.push(step_up_latency(&world, &mut alice).await);
    }
    // What bob's script is told, while it floods: asked without retries (kubectl retries a 429
    // after its Retry-After, and once won a fresh window's slot from the flooders: CI saw it),
    // until one of his requests is refused, as nearly all of them are.
    let as_bob: Api<StepUpChallenge> = Api::all(world.env.client_without_retries("bob").await);
    let said = eventually(Duration::from_secs(30), || async {
        let probe = sealed_challenge("bob", "uid-bob-1", "000000", None, None, &bob_key);
        match as_bob.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(s)) if s.code == 429 => Ok(s.message),
            other => anyhow::bail!("not refused: {:?}", other.map(|c| c.name_any())),
        }
    })
    .await
    .expect("bob's script is refused while it floods");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut admitted, mut refused_429, mut failed) = (0, 0, 0);
    for f in flooders {
        let (a, r, e) = f.await.unwrap();
        admitted += a;
        refused_429 += r;
        failed += e;
    }
    let flooded = flood_started.elapsed();
    let refused = world.env.metric_sum("stepup_challenge_limit_refusals_total").await - refusals_before;
    assert!(refused >= f64::from(refused_429), "the webhook counts every refusal it makes");
    let checked = {
        let api: Api<StepUpChallenge> = Api::all(world.admin.clone());
        let selector = format!("{}={}", api::USER_LABEL, api::user_label_value("bob"));
        let all = api.list(&ListParams::default().labels(&selector)).await.unwrap().items;
        all.iter().filter(|c| ["TooManyPending", "CreationRateLimited"].contains(&reason_of(c).as_str())).count()
    };
    println!(
        "flood: {:.1}s by 8 clients of bob: {admitted} challenges admitted, {refused_429} refused with 429 ({:.0}/s), \
         {failed} other errors, {checked} of the stored ones refused by the controller from its cache; \
         alice's step-up (create to verdict) without the flood {baseline:?}, during it {during:?}",
        flooded.as_secs_f64(),
        f64::from(refused_429) / flooded.as_secs_f64()
    );
    assert!(said.contains("challenges within") && said.contains("try again in"), "{said}");
    assert!(refused >= 1.0, "the webhook refuses the flood");
    // At most 10 per 20 s window, plus the few that raced the webhook's watch-fed view.
    let allowed = 10.0 * (flooded.as_secs_f64() / 20.0 + 1.0) + 8.0;
    assert!(f64::from(admitted) <= allowed, "admitted {admitted} in {flooded:?}, at most {allowed}");
}

#[tokio::test]
async fn the_enrollment_shows_locked_whatever_locked_it_and_what_lifts_it() {
    // Issue 11, attack 5: locked by challenges, yet `kubectl get stepupenrollments` said Active.
    let world = World::new().await;
    let auth = world.enroll("alice", "alice").await;
    for _ in 0..3 {
        world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
    }
    let e = world.wait_enrollment("alice", EnrollmentPhase::Locked).await;
    assert_eq!(phase_column(&world, "alice"), "Locked");
    let status = e.status.unwrap();
    assert!(status.locked_until.is_some(), "the rate limit says until when");
    assert!(status.message.unwrap_or_default().contains("then it unlocks by itself"));
    // It lifts by itself at the end of the window...
    world.wait_enrollment("alice", EnrollmentPhase::Active).await;
    // ... while a lockout needs an admin, and says so.
    for _ in 0..2 {
        world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
    }
    let e = world.wait_enrollment("alice", EnrollmentPhase::Locked).await;
    let status = e.status.unwrap();
    assert!(status.locked_at.is_some());
    assert!(status.message.unwrap_or_default().contains("kubectl stepup unlock alice"));
    let out = plugin(&world.env, "alice", &["status"], None).await;
    assert!(text(&out.stdout).contains("Locked"), "{}", show(&out));
    let out = plugin(&world.env, "alice", &["request", "--code-stdin"], Some("123456\n")).await;
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    assert!(text(&out.stderr).contains("kubectl stepup unlock alice"), "{}", show(&out));
}

/// Attack (third round): between `helm install` creating the CRDs and the user role and the
/// controller registering the webhook, alice asked for the bootstrap, and the controller, once
/// started, enrolled her through it. Whatever order the chart's objects appear in, only someone
/// who can read the window's token (an installer) takes the bootstrap.
#[tokio::test]
async fn a_user_racing_the_installation_cannot_take_the_bootstrap() {
    let world = World::new().await;
    let env = &world.env;
    let as_alice: Api<StepUpEnrollment> = Api::all(env.client("alice").await);
    let alices = EphemeralKey::generate();
    {
        let _paused = ScriptControllerPaused::new();
        world.forget_everyone().await;
        // As during installation: no webhook registered yet, nothing refuses her spec.bootstrap.
        let mut flags = stepup_e2e::attack::installer_flags(env);
        flags.extend(["delete", "validatingwebhookconfiguration", "stepup.dev"].map(String::from));
        let out = env.kubectl("admin", &flags.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", show(&out));
        // A guess is all she has: the token is not even published yet.
        let e = stepup_e2e::bootstrap_enrollment("alice", &alices, "guess");
        as_alice.create(&PostParams::default(), &e).await.expect("nothing refuses it before the webhook is registered");
    }
    // The controller starts, registers the webhook, opens the bootstrap and reads hers.
    world.wait_event("BootstrapOpened", "nobody is enrolled").await;
    let e = world.wait_enrollment("alice", EnrollmentPhase::PendingApproval).await;
    let message = e.status.unwrap_or_default().message.unwrap_or_default();
    assert!(message.contains("does not prove it was made by someone who can read the bootstrap token"), "{message}");
    assert!(world.events_with("BootstrapUsed", "alice").await.is_empty(), "alice did not take the bootstrap");
    // Nor can she read the token to try again.
    let out = plugin(env, "alice", &["enroll", "--bootstrap"], None).await;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(text(&out.stderr).contains("you may not read its token"), "{}", show(&out));
    assert!(world.events_with("BootstrapUsed", "alice").await.is_empty());

    // The installer still can, in the same window.
    let key = EphemeralKey::generate();
    let token = world.bootstrap_token().await;
    let mine = stepup_e2e::bootstrap_enrollment("admin", &key, &token);
    Api::<StepUpEnrollment>::all(world.admin.clone()).create(&PostParams::default(), &mine).await.unwrap();
    let admin = world.finish_enrollment("admin", "admin", &key).await;
    let fp = fingerprint(&key.public_key_b64());
    world.remember_admin(&admin, &fp);
    world.wait_event("BootstrapUsed", &fp).await;
    world.unenroll("alice").await;
}

#[tokio::test]
async fn one_admin_installs_enrolls_and_changes_policies_by_following_the_notes() {
    // Issue 11, attack 6: a lone cluster-admin following README and NOTES could not apply the
    // first policy. This follows NOTES as rendered by the chart, on a fresh installation.
    let world = World::new().await;
    let env = &world.env;
    let out = std::process::Command::new(env.var("HELM"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig("admin"))
        .args([
            "install",
            "stepup-notes",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/stepup"),
            "-n",
            "stepup-notes",
            "--dry-run=client",
        ])
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&out.stdout).into_owned();
    let notes = notes.split("NOTES:").nth(1).unwrap_or_else(|| panic!("no NOTES: {}", show(&out))).to_owned();
    let example = "manifests/examples/prod-secrets.yaml";
    for words in [
        "kubectl stepup enroll --bootstrap",
        &format!("kubectl stepup -- kubectl apply -f {example}"),
        "kubectl stepup approve <username> --key <fingerprint>",
    ] {
        assert!(notes.contains(words), "NOTES tell a one-admin team {words:?}:\n{notes}");
    }

    // A fresh installation: nobody enrolled; the controller starts and opens the bootstrap.
    {
        let _paused = ScriptControllerPaused::new();
        world.forget_everyone().await;
    }
    world.wait_event("BootstrapOpened", "nobody is enrolled").await;

    // 1. kubectl stepup enroll --bootstrap
    let mut term = Terminal::spawn(env, "admin", &["enroll", "--bootstrap"]);
    let at = term.expect("Your enrollment key fingerprint: ", 0, Duration::from_secs(30)).await;
    let fp: String = term.screen()[at..].chars().take(29).collect();
    let at = term
        .expect("URI: otpauth://totp/kube-stepup%20%28stepup-e2e%29:admin?secret=", at, Duration::from_secs(30))
        .await;
    let secret: String = term.screen()[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let mut admin = Authenticator::new(base32_decode(&secret));
    let at = term.expect("Enter the 6-digit code", at, Duration::from_secs(10)).await;
    term.type_line(&admin.code().await).await;
    term.expect("Enrolled:", at, Duration::from_secs(30)).await;
    let (code, screen) = term.exit_code().await;
    assert_eq!(code, 0, "{screen}");
    world.wait_event("BootstrapUsed", &fp).await;

    // 2. kubectl stepup -- kubectl apply -f manifests/examples/prod-secrets.yaml
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples/prod-secrets.yaml");
    let mut term = Terminal::spawn(env, "admin", &["--", "kubectl", "apply", "-f", manifest]);
    let at = term.expect("Code from your authenticator app:", 0, Duration::from_secs(30)).await;
    term.type_line(&admin.code().await).await;
    term.expect("stepuppolicy.stepup.dev/prod-secrets created", at, Duration::from_secs(30)).await;
    let (code, screen) = term.exit_code().await;
    assert_eq!(code, 0, "{screen}");
    world.remember_admin(&admin, &fp);
    // ... and change it: the grant is fresh, so the wrapper applies at once.
    let changed = std::env::temp_dir().join(format!("prod-secrets-{}.yaml", std::process::id()));
    std::fs::write(&changed, std::fs::read_to_string(manifest).unwrap().replace("maxAge: 15m", "maxAge: 10m")).unwrap();
    let out = plugin(env, "admin", &["--", "kubectl", "apply", "-f", changed.to_str().unwrap()], None).await;
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("prod-secrets configured"), "{}", show(&out));
    let policies: Api<StepUpPolicy> = Api::all(world.admin.clone());
    assert_eq!(policies.get("prod-secrets").await.unwrap().spec.max_age.to_string(), "10m");

    // Protection was never switched off: without a fresh grant the admin is refused again.
    let grants = world.controller_grants();
    let _ = grants.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    let dry_run = DeleteParams { dry_run: true, ..DeleteParams::default() };
    let refused = eventually(Duration::from_secs(10), || async {
        match policies.delete("prod-secrets", &dry_run).await {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(s.message),
            other => anyhow::bail!("not refused yet: {other:?}"),
        }
    })
    .await
    .expect("policy changes still need step-up");
    assert!(refused.contains("stepup-builtin-policy-changes"), "{refused}");

    // The bootstrap ended by itself: another admin cannot use it.
    let other = EphemeralKey::generate();
    let manifest = serde_json::json!({
        "apiVersion": "stepup.dev/v1alpha1", "kind": "StepUpEnrollment",
        "metadata": {"name": api::enrollment_name("admin2")},
        "spec": {"user": "admin2", "publicKey": other.public_key_b64(), "bootstrap": true}
    });
    let path = std::env::temp_dir().join(format!("admin2-{}.json", std::process::id()));
    std::fs::write(&path, manifest.to_string()).unwrap();
    let out = env
        .kubectl("admin", &["create", "-f", path.to_str().unwrap(), "--as", "admin2", "--as-group", "system:masters"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = world.wait_enrollment("admin2", EnrollmentPhase::PendingApproval).await;
    let message = e.status.unwrap_or_default().message.unwrap_or_default();
    assert!(message.contains("the bootstrap was used by admin"), "{message}");
    world.unenroll("admin2").await;
    let _ = std::fs::remove_file(changed);
}

#[tokio::test]
async fn bob_watching_challenges_learns_no_code_and_a_copied_code_is_refused() {
    // Issue 10, part 6: every user may watch challenges; bob saw alice's code and spent it.
    let world = World::new().await;
    let mut alice = world.enroll("alice", "alice").await;
    world.enroll("bob", "bob").await;
    let paused = ScriptControllerPaused::new();
    let code = alice.code().await;
    let key = world.response_key_for("alice").await;
    let hers = world
        .create_raw_challenge("alice", &sealed_challenge("alice", ALICE_UID, &code, Some("INC-7"), None, &key))
        .await
        .unwrap();

    // What bob reads while it is pending.
    let as_bob: Api<StepUpChallenge> = Api::all(world.env.client("bob").await);
    let seen = as_bob.get(&hers.name_any()).await.expect("bob may read challenges");
    let sealed = seen.spec.response.clone().expect("the sealed code is there");
    assert!(!serde_json::to_string(&seen).unwrap().contains(&code), "no code in what bob reads");

    // Bob copies it into his own challenge, and alice's stolen token into a wider one.
    let mut bobs = sealed_challenge("bob", "uid-bob-1", "000000", None, None, &key);
    bobs.spec.response = Some(sealed.clone());
    let bobs = world.create_raw_challenge("bob", &bobs).await.unwrap();
    let mut wider = sealed_challenge("alice", ALICE_UID, "000000", Some("INC-7"), Some("8h"), &key);
    wider.spec.response = Some(sealed);
    let wider = world.create_raw_challenge("alice", &wider).await.unwrap();
    // An old plugin's plain code is refused before it is stored.
    let mut plain = sealed_challenge("alice", ALICE_UID, "000000", None, None, &key);
    plain.spec.response = Some(code.clone());
    let status = refusal(world.create_raw_challenge("alice", &plain).await);
    assert!(status.message.contains("update kubectl-stepup"), "{}", status.message);
    drop(paused);

    for copy in [&bobs, &wider] {
        let c = world.verdict(&copy.name_any()).await;
        assert_eq!(
            (phase_of(&c), reason_of(&c).as_str()),
            (ChallengePhase::Denied, "BindingMismatch"),
            "{}",
            message_of(&c)
        );
    }
    let c = world.verdict(&hers.name_any()).await;
    assert_eq!(phase_of(&c), ChallengePhase::Verified, "alice's own code still works: {}", message_of(&c));
    assert!(world.grants_of("bob").await.is_empty());
    assert_eq!(world.grants_of("alice").await.len(), 1);
    // Nor does the code reach the API server's audit log (here at Metadata level) or stepup's logs.
    for var in ["KUBE_AUDIT_LOG", "STEPUP_WEBHOOK_LOG", "STEPUP_CONTROLLER_LOG"] {
        let log = std::fs::read_to_string(world.env.var(var)).unwrap_or_default();
        assert!(!log.contains(&format!("\"{code}\"")), "the code appears in {var}");
    }
}

#[tokio::test]
async fn a_cluster_admin_reading_or_editing_the_factor_secret_gets_no_usable_code() {
    // Issue 10, part 8: seeds readable by whoever reads Secrets in stepup's namespace.
    let world = World::new().await;
    let mut alice = world.enroll("alice", "alice").await;
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "stepup-system");
    let name = api::factor_secret_name("alice");
    let secret = secrets.get(&name).await.expect("a cluster-admin reads it");
    let data = secret.data.clone().unwrap_or_default();
    assert_eq!(data.keys().map(String::as_str).collect::<Vec<_>>(), ["factor"], "one encrypted value");

    // Every byte string in it, and every seed-sized window of them, as a candidate seed.
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for value in data.values() {
        candidates.push(value.0.clone());
        for window in value.0.windows(20) {
            candidates.push(window.to_vec());
        }
    }
    assert!(!candidates.iter().any(|c| c.as_slice() == alice.seed()), "the seed is not in the Secret");
    let now = jiff::Timestamp::now();
    let codes: std::collections::BTreeSet<String> = candidates.iter().map(|c| totp::code_at(c, now)).collect();
    // Try the codes of the whole values (the likeliest) impersonating alice, as kubectl --as would.
    let key = world.response_key_for("alice").await;
    for value in data.values().take(2) {
        let code = totp::code_at(&value.0, now);
        let challenge = sealed_challenge("alice", ALICE_UID, &code, None, None, &key);
        let path = std::env::temp_dir().join(format!("{}.json", challenge.name_any()));
        std::fs::write(&path, serde_json::to_string(&challenge).unwrap()).unwrap();
        let out = world.env.kubectl(
            "admin",
            &[
                "create",
                "-f",
                path.to_str().unwrap(),
                "--as",
                "alice",
                "--as-uid",
                ALICE_UID,
                "--as-group",
                "developers",
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let c = world.verdict(&challenge.name_any()).await;
        assert_eq!(phase_of(&c), ChallengePhase::Denied, "{}", message_of(&c));
    }
    assert!(world.grants_of("alice").await.is_empty(), "no grant from anything in the Secret");
    eprintln!(
        "{} candidate seeds and {} distinct codes derived from the Secret; none is alice's",
        candidates.len(),
        codes.len()
    );

    // Editing it (here: restoring the copy read before failures were counted) is refused loudly.
    let c = world.challenge("alice", "alice", ALICE_UID, &alice.wrong_code(), None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Denied);
    let mut rolled_back = secrets.get(&name).await.unwrap();
    rolled_back.data = secret.data.clone();
    secrets.replace(&name, &PostParams::default(), &rolled_back).await.expect("a cluster-admin may write it");
    let c = world.challenge("alice", "alice", ALICE_UID, &alice.code().await, None).await;
    assert_eq!((phase_of(&c), reason_of(&c).as_str()), (ChallengePhase::Denied, "FactorCorrupt"), "{}", message_of(&c));
    let e = world.wait_enrollment("alice", EnrollmentPhase::Locked).await;
    assert!(e.status.unwrap().message.unwrap_or_default().contains("integrity check"));
    world.wait_event("FactorCorrupt", "rolled back").await;

    // A flipped byte is no better.
    let mut flipped = secrets.get(&name).await.unwrap();
    if let Some(v) = flipped.data.as_mut().and_then(|d| d.get_mut("factor")) {
        let last = v.0.len() - 1;
        v.0[last] ^= 1;
    }
    secrets.replace(&name, &PostParams::default(), &flipped).await.unwrap();
    let c = world.challenge("alice", "alice", ALICE_UID, &alice.code().await, None).await;
    assert_eq!(reason_of(&c), "FactorCorrupt", "{}", message_of(&c));
    assert!(world.grants_of("alice").await.is_empty());
    assert!(controller_metric_sum(&world.env, "stepup_factor_steps_total").await > 0.0);

    // Recovery is an admin's re-enrollment approval for alice's new key.
    let fresh = EphemeralKey::generate();
    swap_key(&world, &fresh, None).await;
    world.approve_key("alice", &fingerprint(&fresh.public_key_b64())).await.expect("approved");
    let mut again = world.finish_enrollment("alice", "alice", &fresh).await;
    let c = world.challenge("alice", "alice", ALICE_UID, &again.code().await, None).await;
    assert_eq!(phase_of(&c), ChallengePhase::Verified, "{}", message_of(&c));
}
