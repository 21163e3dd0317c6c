//! Issue-32 slice 3, `OIDC`: a person steps up at the company's identity provider (the e2e
//! Keycloak, through its own login pages with password and OTP) for one challenge; the
//! controller verifies the ID token with the provider's published keys and issues a grant that
//! records the sign-in (acr, amr, auth_time), which the webhook judges by the policy's
//! assurance. Each refusal is the attack it names. The plugin's part (sealing the token for the
//! challenge it creates) is done here as the plugin does it.
//! Run with `make e2e` (Keycloak runs beside the API server; one test at a time).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use stepup_core::testing::policy;
use stepup_core::{
    api::{ChallengePhase, Method, Operation::Delete, StepUpChallenge, StepUpPolicy},
    verify::oidc::challenge_nonce,
};
use stepup_e2e::{
    Ended, Running, World, eventually,
    idp::{Idp, Level, Tokens},
    oidc_challenge, refusal, with_sealed_token,
};

/// Deleting prod secrets needs a fresh sign-in at the identity provider with OTP (acr 2).
fn oidc_secrets() -> StepUpPolicy {
    policy("prod-secrets-oidc")
        .rule(&[Delete], "", &["secrets"])
        .namespaces(&["prod"])
        .methods(&[Method::Oidc])
        .assurance(&["2"], &["otp"])
        .max_age("15m")
        .build()
}

/// Who is asking: a person signed in to kubectl with a password only (their everyday
/// credential), whose UID is the identity provider's `sub`.
struct Person {
    name: &'static str,
    everyday: Tokens,
}

impl Person {
    fn uid(&self) -> String {
        self.everyday.claims()["sub"].as_str().expect("sub").to_owned()
    }

    async fn challenges(&self, world: &World) -> Api<StepUpChallenge> {
        Api::all(world.env.client_with_token(&self.everyday.id_token).await)
    }

    async fn prod_secrets(&self, world: &World) -> Api<Secret> {
        Api::namespaced(world.env.client_with_token(&self.everyday.id_token).await, "prod")
    }
}

fn person(idp: &Idp, name: &'static str) -> Person {
    Person { name, everyday: idp.sign_in(name, Level::Password).expect("signs in with a password") }
}

/// Applies `policy` and waits until the controller has judged this generation of it (its
/// status says so): the challenge reconciler judges sign-ins with the same cache.
async fn apply_observed(world: &World, policy: StepUpPolicy) {
    let name = policy.metadata.name.clone().expect("named");
    world.apply_policies(&[policy]).await;
    let api: Api<StepUpPolicy> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(15), || async {
        let p = api.get(&name).await?;
        let observed = p.status.as_ref().and_then(|s| s.observed_generation);
        if observed.is_some() && observed == p.metadata.generation {
            Ok(())
        } else {
            anyhow::bail!("the controller has not judged generation {:?} of {name} yet", p.metadata.generation)
        }
    })
    .await
    .expect("the controller sees the policy");
}

/// Creates `c` as `who` and waits for the controller's verdict.
async fn verdict(world: &World, who: &Person, c: &StepUpChallenge) -> StepUpChallenge {
    who.challenges(world).await.create(&PostParams::default(), c).await.expect("challenge created");
    world.verdict(&c.name_any()).await
}

fn message(c: &StepUpChallenge) -> String {
    c.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

/// alice signs in with password and OTP through Keycloak's own pages at `url` (where the
/// plugin said to), as her browser would; returns the page the plugin answered with.
async fn alice_signs_in_at(idp: &Idp, url: String) -> String {
    let browser = idp.clone();
    tokio::task::spawn_blocking(move || browser.complete_sign_in(&url, "alice", Level::PasswordAndOtp))
        .await
        .expect("joined")
        .expect("alice signs in at Keycloak")
}

/// The address of a sign-in the plugin printed.
fn sign_in_address(line: &str) -> Option<String> {
    line.starts_with("https://").then(|| line.to_owned())
}

#[tokio::test]
async fn a_fresh_sign_in_with_otp_for_this_challenge_earns_a_grant_the_policy_accepts() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[oidc_secrets()]).await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");

    // Her everyday sign-in (password only) is refused.
    let status = refusal(alice.prod_secrets(&world).await.delete("db", &DeleteParams::default()).await);
    assert_eq!(status.code, 403, "{status:?}");

    // She steps up for one challenge: the identity provider puts its nonce into the token.
    let c = oidc_challenge(alice.name, &alice.uid());
    let fresh = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let c = with_sealed_token(c, &fresh.id_token, &world.env.response_key());
    let done = verdict(&world, &alice, &c).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Verified), "{}", message(&done));
    let grant = world.controller_grants().get(&done.status.unwrap().grant_ref.unwrap().name).await.expect("grant");
    assert_eq!(grant.spec.method, Method::Oidc);
    assert_eq!(grant.spec.acr.as_deref(), Some("2"));
    assert!(grant.spec.amr.iter().any(|m| m == "otp"), "{:?}", grant.spec.amr);
    let auth_time = fresh.claims()["auth_time"].as_i64().expect("auth_time");
    assert_eq!(grant.spec.issued_at.0.as_second(), auth_time, "issued at the sign-in, which maxAge judges");
    let challenges: Api<StepUpChallenge> = Api::all(world.admin.clone());
    eventually(Duration::from_secs(10), || async {
        let c = challenges.get(&c.name_any()).await?;
        if c.spec.response.is_some() { anyhow::bail!("token not scrubbed yet") } else { Ok(()) }
    })
    .await
    .expect("the sealed token is scrubbed after use");

    // With the grant, her everyday credential deletes prod/db.
    world.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    alice.prod_secrets(&world).await.delete("db", &DeleteParams::default()).await.expect("deleted with the grant");
}

/// A sign-in that no policy it is for accepts is refused at the challenge with what the policy
/// asks: a password-only one (acr 1; amr without otp), and one older than the policy's maxAge.
/// No grant.
#[tokio::test]
async fn a_weak_or_old_sign_in_is_refused_with_what_the_policy_asks() {
    let world = World::new().await;
    apply_observed(&world, oidc_secrets()).await;
    let idp = Idp::new(&world.env);
    let bob = person(&idp, "bob");
    let key = world.env.response_key();
    let c = oidc_challenge(bob.name, &bob.uid());
    let weak = idp.sign_in_for("bob", Level::Password, &challenge_nonce(&c)).expect("signs in");
    let done = verdict(&world, &bob, &with_sealed_token(c, &weak.id_token, &key)).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    assert_eq!(
        message(&done),
        "the sign-in does not satisfy policy \"prod-secrets-oidc\": the sign-in's assurance level (acr) is \"1\" and the policy accepts \"2\"; sign in again as the policy asks"
    );

    // A policy that names the factor by amr only: a password-only sign-in lacks it.
    let mut by_amr = oidc_secrets();
    by_amr.spec.assurance = Some(stepup_core::api::Assurance { acr_values: vec![], amr: vec!["otp".into()] });
    apply_observed(&world, by_amr).await;
    let c = oidc_challenge(bob.name, &bob.uid());
    let weak = idp.sign_in_for("bob", Level::Password, &challenge_nonce(&c)).expect("signs in");
    let done = verdict(&world, &bob, &with_sealed_token(c, &weak.id_token, &key)).await;
    assert_eq!(
        message(&done),
        "the sign-in does not satisfy policy \"prod-secrets-oidc\": the sign-in used pwd and the policy requires \"otp\"; sign in again as the policy asks"
    );

    // A policy of 2 s; time passes until the sign-in is older than that (a clock, not a
    // system to wait for).
    let mut strict = oidc_secrets();
    strict.spec.max_age = "2s".parse().expect("duration");
    apply_observed(&world, strict).await;
    let c = oidc_challenge(bob.name, &bob.uid());
    let strong = idp.sign_in_for("bob", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let auth_time = strong.claims()["auth_time"].as_i64().expect("auth_time");
    while jiff::Timestamp::now().as_second() < auth_time + 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = verdict(&world, &bob, &with_sealed_token(c, &strong.id_token, &key)).await;
    let said = message(&done);
    assert!(
        said.starts_with("the sign-in does not satisfy policy \"prod-secrets-oidc\": you signed in ")
            && said.ends_with(" ago and the policy accepts at most 2s; sign in again as the policy asks"),
        "{said}"
    );
    assert!(world.grants_of("bob").await.iter().all(|g| g.spec.method != Method::Oidc), "no grant for bob");
}

#[tokio::test]
async fn a_token_for_another_challenge_or_another_person_is_refused_and_nothing_is_issued() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let key = world.env.response_key();

    // A token obtained for one challenge, sealed into another.
    let first = oidc_challenge(alice.name, &alice.uid());
    let token = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&first)).expect("steps up");
    let other = with_sealed_token(oidc_challenge(alice.name, &alice.uid()), &token.id_token, &key);
    let done = verdict(&world, &alice, &other).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    assert_eq!(
        message(&done),
        "the ID token was obtained for another challenge (its nonce differs): a copied or replayed token is refused"
    );

    // bob's fresh token (for this very challenge's nonce) in alice's challenge.
    let c = oidc_challenge(alice.name, &alice.uid());
    let bobs = idp.sign_in_for("bob", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("bob signs in");
    let done = verdict(&world, &alice, &with_sealed_token(c, &bobs.id_token, &key)).await;
    assert_eq!(message(&done), "the ID token is \"bob\"'s, and this challenge is \"alice\"'s");

    // A token whose signature was tampered with (one character in its middle).
    let c = oidc_challenge(alice.name, &alice.uid());
    let own = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let mut parts: Vec<String> = own.id_token.split('.').map(str::to_owned).collect();
    let flipped = if parts[2].as_bytes()[10] == b'A' { "B" } else { "A" };
    parts[2].replace_range(10..11, flipped);
    let done = verdict(&world, &alice, &with_sealed_token(c, &parts.join("."), &key)).await;
    assert_eq!(message(&done), "the ID token's signature does not verify");
    assert!(world.grants_of("alice").await.iter().all(|g| g.spec.method != Method::Oidc), "nothing issued");
}

/// Attack: someone holding alice's everyday credential watched her challenge (name, spec,
/// sealed token), deletes it after its verdict and creates the same object again: the same
/// nonce, the same token, within its deadline. The token was spent.
#[tokio::test]
async fn a_challenge_re_created_with_a_spent_token_is_refused() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let c = oidc_challenge(alice.name, &alice.uid());
    let token = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let c = with_sealed_token(c, &token.id_token, &world.env.response_key());
    let done = verdict(&world, &alice, &c).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Verified), "{}", message(&done));

    let api = alice.challenges(&world).await;
    api.delete(&c.name_any(), &DeleteParams::default()).await.expect("alice's credential deletes it");
    eventually(Duration::from_secs(15), || async {
        if api.get_opt(&c.name_any()).await?.is_some() { anyhow::bail!("still there") } else { Ok(()) }
    })
    .await
    .expect("the challenge is gone");
    let again = verdict(&world, &alice, &c).await;
    assert_eq!(again.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    let said = message(&again);
    assert!(said.starts_with("this ID token was already used (by challenge UID "), "{said}");
    assert!(said.contains(done.metadata.uid.as_deref().expect("uid")), "{said}");
}

/// `kubectl stepup request --method OIDC` started as alice (her everyday kubectl sign-in):
/// reads where to sign in and what to seal to from the cluster, prints the login address,
/// receives the identity provider's redirect on its loopback port, seals the ID token into
/// the challenge it builds and reports the grant. The "browser" here is curl on Keycloak's
/// own pages, password and OTP.
#[tokio::test]
async fn the_plugin_steps_up_at_the_identity_provider_in_one_command() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[oidc_secrets()]).await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let kubeconfig = world.env.kubeconfig_with_token("alice-everyday", &alice.everyday.id_token);
    let mut run = Running::start(
        &world,
        &kubeconfig,
        &["request", "--method", "OIDC", "--no-browser", "--reason", "INC-7", "--sign-in-timeout", "1m"],
    );
    let url = run.until("a sign-in address", sign_in_address).await;
    assert!(
        url.contains("acr_values=2") && url.contains("max_age=900") && url.contains("code_challenge_method=S256"),
        "{url}"
    );
    let page = alice_signs_in_at(&idp, url).await;
    assert!(page.contains("You can close this tab and return to your terminal."), "{page}");
    let Ended { success, stdout, stderr } = run.finish().await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("Granted alice-") && stdout.contains("(OIDC, reason \"INC-7\")"), "{stdout}");
    assert!(!stdout.contains("eyJ") && !stderr.contains("eyJ"), "no token is printed");

    // The grant lets her everyday credential delete prod/db.
    let grant = world
        .grants_of("alice")
        .await
        .into_iter()
        .filter(|g| g.spec.method == Method::Oidc && g.spec.reason.as_deref() == Some("INC-7"))
        .max_by_key(|g| g.spec.issued_at.0)
        .expect("the OIDC grant");
    world.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    alice.prod_secrets(&world).await.delete("db", &DeleteParams::default()).await.expect("deleted with the grant");
}

/// `kubectl stepup -- kubectl delete ...` as alice (no authenticator enrolled): the refusal's
/// trailer says OIDC with acr 2 and otp, so the wrapper signs her in at the identity provider
/// for that (the "browser" drives Keycloak's pages), obtains the grant scoped to the refusing
/// policy and runs the command again, which succeeds.
#[tokio::test]
async fn the_wrapper_turns_a_refusal_into_a_sign_in_and_one_retry() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[oidc_secrets()]).await;
    // Other scenarios enroll an authenticator for the name "alice"; here she has none, so the
    // wrapper picks OIDC by itself.
    world.unenroll("alice").await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let kubeconfig = world.env.kubeconfig_with_token("alice-everyday", &alice.everyday.id_token);
    let mut run =
        Running::start(&world, &kubeconfig, &["--no-browser", "--", "kubectl", "-n", "prod", "delete", "secret", "db"]);
    let url = run.until("a sign-in address", sign_in_address).await;
    assert!(run.said.iter().any(|l| l.contains("requires step-up (policy \"prod-secrets-oidc\")")), "{:?}", run.said);
    assert!(url.contains("acr_values=2") && url.contains("max_age=900"), "{url}");
    alice_signs_in_at(&idp, url).await;
    let Ended { success, stdout, stderr } = run.finish().await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("secret \"db\" deleted"), "{stdout}");
    assert!(stderr.contains("kube-stepup: granted alice-") && stderr.contains("running the command again"), "{stderr}");
    let grants = world.grants_of("alice").await;
    let grant = grants.iter().find(|g| g.spec.method == Method::Oidc).expect("an OIDC grant");
    assert_eq!(grant.spec.scope.policies, ["prod-secrets-oidc"], "scoped to the refusing policy");
}

/// Attack: a token the realm issued to another of its clients (another application's login)
/// is not a sign-in for step-up: the audience must be the one the cluster trusts.
#[tokio::test]
async fn a_token_issued_to_another_client_is_refused_for_its_audience() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    idp.ensure_client("e2e-other-app").expect("another client in the realm");
    let alice = person(&idp, "alice");
    let c = oidc_challenge(alice.name, &alice.uid());
    let token = idp
        .sign_in_at_client("e2e-other-app", "alice", Level::PasswordAndOtp, &challenge_nonce(&c))
        .expect("alice signs in to the other application");
    let done = verdict(&world, &alice, &with_sealed_token(c, &token.id_token, &world.env.response_key())).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    assert_eq!(
        message(&done),
        "the ID token is for the audience [\"e2e-other-app\"], none of the clients trusted for step-up [\"kubectl-stepup\", \"kubectl-stepup-device\", \"kubectl-stepup-confidential\"]"
    );
}

/// Attack: a token whose header names a key the provider does not publish. The controller
/// fetches the provider's keys again (a rotation would look like this), finds no such key, and
/// refuses.
#[tokio::test]
async fn a_token_naming_a_key_the_provider_does_not_publish_is_refused() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let c = oidc_challenge(alice.name, &alice.uid());
    let token = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let mut parts: Vec<String> = token.id_token.split('.').map(str::to_owned).collect();
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).expect("base64url")).expect("JSON header");
    header["kid"] = "e2e-unknown-key".into();
    parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
    let done = verdict(&world, &alice, &with_sealed_token(c, &parts.join("."), &world.env.response_key())).await;
    assert_eq!(
        message(&done),
        "the ID token was signed by a key the identity provider does not publish (kid \"e2e-unknown-key\")"
    );
}

/// Removes the key a scenario added to the realm, however the scenario ends.
struct AddedKey<'a> {
    idp: &'a Idp,
    component: String,
}

impl Drop for AddedKey<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.idp.remove_key(&self.component) {
            eprintln!("could not remove the rotated key {}: {e:#}", self.component);
        }
    }
}

/// The identity provider rotates its signing key: tokens signed with the new one are
/// verified (the controller fetches the keys again for the new `kid`).
#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_trusted() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let before = alice.everyday.id_token.split('.').next().expect("header").to_owned();
    let _key = AddedKey { idp: &idp, component: idp.rotate_key().expect("a new signing key") };
    let c = oidc_challenge(alice.name, &alice.uid());
    let token = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    assert_ne!(token.id_token.split('.').next(), Some(before.as_str()), "signed with the new key");
    let done = verdict(&world, &alice, &with_sealed_token(c, &token.id_token, &world.env.response_key())).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Verified), "{}", message(&done));
}

/// Stops the identity provider's process (SIGSTOP: it keeps its state and port, answers
/// nothing) until dropped.
struct Paused(String);

impl Paused {
    fn keycloak(world: &World) -> Self {
        let pidfile = std::path::Path::new(world.env.var("STEPUP_E2E_DIR")).join("idp/keycloak.pid");
        let shell = std::fs::read_to_string(pidfile).expect("Keycloak's pid file");
        let out = std::process::Command::new("pgrep").args(["-P", shell.trim()]).output().expect("pgrep runs");
        let java = String::from_utf8_lossy(&out.stdout).lines().next().expect("Keycloak's java process").to_owned();
        let stopped = std::process::Command::new("kill").args(["-STOP", &java]).status().expect("kill runs");
        assert!(stopped.success(), "stopping Keycloak");
        Self(java)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// Keycloak does not answer: the plugin says it cannot reach the identity provider, and the
/// cluster is asked for nothing (no challenge is created).
#[tokio::test]
async fn when_the_identity_provider_does_not_answer_the_plugin_says_so_and_asks_nothing() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let kubeconfig = world.env.kubeconfig_with_token("alice-everyday", &alice.everyday.id_token);
    let challenges: Api<StepUpChallenge> = Api::all(world.admin.clone());
    let names = || async {
        let listed = challenges.list(&Default::default()).await.expect("challenges").items;
        listed.into_iter().map(|c| c.name_any()).collect::<std::collections::BTreeSet<_>>()
    };
    let before = names().await;
    let paused = Paused::keycloak(&world);
    let out = stepup_e2e::plugin_with(
        &world.env,
        &kubeconfig,
        &["request", "--method", "OIDC", "--no-browser", "--sign-in-timeout", "1m"],
        None,
    )
    .await;
    drop(paused);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the identity provider {}: ", idp.issuer))
            && stderr.contains("no answer within 10s"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was asked of the cluster"), "{stderr}");
    let created: Vec<String> = names().await.difference(&before).cloned().collect();
    assert!(created.is_empty(), "no challenge was created: {created:?}");
}

/// A terminal without a browser: `kubectl stepup request --method OIDC --device` prints a code
/// to enter on any device (the device authorization grant, RFC 8628), at the client the
/// cluster publishes for it, which demands password and OTP on every sign-in. Keycloak 26.7
/// ignores acr_values in this grant and reports acr "1" for such a sign-in, so a policy that
/// accepts it names the factor it needs by amr (README, OIDC).
#[tokio::test]
async fn a_terminal_without_a_browser_signs_in_on_another_device() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    let mut by_amr = oidc_secrets();
    by_amr.spec.assurance = Some(stepup_core::api::Assurance { acr_values: vec![], amr: vec!["otp".into()] });
    apply_observed(&world, by_amr).await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let kubeconfig = world.env.kubeconfig_with_token("alice-everyday", &alice.everyday.id_token);
    let mut run =
        Running::start(&world, &kubeconfig, &["request", "--method", "OIDC", "--device", "--sign-in-timeout", "1m"]);
    let url = run
        .until("a verification address", |line| {
            line.strip_prefix("(or open ").map(|u| u.trim_end_matches(')').to_owned())
        })
        .await;
    assert!(run.said.iter().any(|l| l.contains("and enter the code ")), "{:?}", run.said);
    let browser = idp.clone();
    let page = tokio::task::spawn_blocking(move || browser.complete_device_sign_in(&url, "alice"))
        .await
        .expect("joined")
        .expect("alice signs in on the other device");
    assert!(page.contains("Device Login Successful"), "{page:.400}");
    let Ended { success, stdout, stderr } = run.finish().await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("Granted alice-") && stdout.contains("(OIDC)"), "{stdout}");
    let grant = world.grants_of("alice").await.into_iter().find(|g| g.spec.method == Method::Oidc).expect("the grant");
    assert!(grant.spec.amr.iter().any(|m| m == "otp"), "{:?}", grant.spec.amr);
    // What the README says of this grant: Keycloak calls a sign-in of a flow without level
    // conditions acr "1", whatever factors it demanded.
    assert_eq!(grant.spec.acr.as_deref(), Some("1"));
    world.webhook_holds("grants", &grant.name_any(), grant.resource_version().as_deref()).await;
    alice.prod_secrets(&world).await.delete("db", &DeleteParams::default()).await.expect("deleted with the grant");
}

/// Gives the kubectl-stepup client its usual token lifespan back, however the scenario ends.
struct ShortLived<'a>(&'a Idp);

impl Drop for ShortLived<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.set_token_lifespan("kubectl-stepup", None) {
            eprintln!("could not restore the token lifespan: {e:#}");
        }
    }
}

/// An ID token past its `exp` (and the clock skew allowed) is refused, however fresh the
/// sign-in was. The realm's client issues 1-second tokens for this scenario.
#[tokio::test]
async fn an_expired_id_token_is_refused() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    idp.set_token_lifespan("kubectl-stepup", Some(1)).expect("short-lived tokens");
    let _restore = ShortLived(&idp);
    let c = oidc_challenge(alice.name, &alice.uid());
    let token = idp.sign_in_for("alice", Level::PasswordAndOtp, &challenge_nonce(&c)).expect("steps up");
    let exp = token.claims()["exp"].as_i64().expect("exp");
    assert!(exp - token.claims()["iat"].as_i64().expect("iat") <= 1, "a 1-second token");
    // Past exp and the controller's allowed clock skew (a clock, not a system to wait for).
    let skew = stepup_core::grant::Clock::DEFAULT_MAX_SKEW.as_secs();
    while jiff::Timestamp::now().as_second() <= exp + skew {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let done = verdict(&world, &alice, &with_sealed_token(c, &token.id_token, &world.env.response_key())).await;
    let said = message(&done);
    assert!(said.starts_with("the ID token expired at ") && said.ends_with(": sign in again"), "{said}");
}

/// The e2e realm's confidential client and its secret (a fixture of `e2e/idp/stepup-realm.json`).
const CONFIDENTIAL: &str = "kubectl-stepup-confidential";
const CONFIDENTIAL_SECRET: &str = "e2e-only-confidential-client-secret-7d1f";

/// The identity providers the controller publishes for the plugin (`step-up.json`).
async fn published(world: &World) -> (String, Vec<stepup_core::decision::PublishedIdentityProvider>) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(world.admin.clone(), "stepup-system");
    let text = api
        .get_opt(stepup_core::decision::PUBLISHED_CONFIGMAP)
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(stepup_core::decision::PUBLISHED_STEP_UP_KEY).cloned())
        .unwrap_or_default();
    let read: Option<stepup_core::decision::StepUpDiscovery> = serde_json::from_str(&text).ok();
    (text, read.map(|d| d.identity_providers).unwrap_or_default())
}

/// For identity providers that insist on a client secret: people sign in with the cluster's
/// confidential client, the plugin hands the code (and its PKCE verifier) to the controller,
/// and only the controller, which holds the secret, redeems it. Attacks: the same code again
/// (another challenge), and a code without its verifier (intercepted from the browser).
#[tokio::test]
async fn with_a_confidential_client_only_the_controller_redeems_the_code() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    apply_observed(&world, oidc_secrets()).await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");

    // The secret reaches the controller as a file (in a cluster: a Secret mounted into it).
    let secret_file = std::path::Path::new(world.env.var("STEPUP_E2E_DIR")).join("oidc-client-secret");
    std::fs::write(&secret_file, format!("{CONFIDENTIAL_SECRET}\n")).expect("secret file written");
    let paused = stepup_e2e::ScriptControllerPaused::new();
    let secret_arg = secret_file.to_string_lossy().into_owned();
    let mut controller = stepup_e2e::ControllerProcess::spawn(
        &world.env,
        "e2e-confidential",
        stepup_e2e::extra_port(3),
        &["--oidc-client-id", CONFIDENTIAL, "--oidc-client-secret-file", &secret_arg],
    );
    let text = eventually(Duration::from_secs(30), || async {
        match published(&world).await {
            (text, idps) if idps.first().is_some_and(|i| i.confidential && i.client_id == CONFIDENTIAL) => Ok(text),
            (text, _) => anyhow::bail!("published: {text}"),
        }
    })
    .await
    .expect("the controller publishes its confidential client");
    assert!(!text.contains(CONFIDENTIAL_SECRET), "the publication names the client, never its secret: {text}");

    // alice steps up through the plugin: Keycloak's pages for the confidential client, the code
    // back to the plugin's loopback address, sealed for the controller.
    let kubeconfig = world.env.kubeconfig_with_token("alice-everyday", &alice.everyday.id_token);
    let mut run = Running::start(
        &world,
        &kubeconfig,
        &["request", "--method", "OIDC", "--no-browser", "--reason", "INC-9", "--sign-in-timeout", "1m"],
    );
    let url = run.until("a sign-in address", sign_in_address).await;
    assert!(url.contains(&format!("client_id={CONFIDENTIAL}")) && url.contains("acr_values=2"), "{url}");
    alice_signs_in_at(&idp, url).await;
    let Ended { success, stdout, stderr } = run.finish().await;
    assert!(success, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("(OIDC, reason \"INC-9\")"), "{stdout}");
    let grant = world
        .grants_of("alice")
        .await
        .into_iter()
        .find(|g| g.spec.reason.as_deref() == Some("INC-9"))
        .expect("the OIDC grant");
    assert_eq!((grant.spec.method, grant.spec.acr.as_deref()), (Method::Oidc, Some("2")));

    // Attack: the same code again, sealed into another challenge. The identity provider redeems
    // a code once.
    let first = oidc_challenge(alice.name, &alice.uid());
    let code = idp.code_at_client(CONFIDENTIAL, "alice", Level::PasswordAndOtp, &challenge_nonce(&first)).unwrap();
    let sealed = with_sealed_token(first, &code.encode(), &world.env.response_key());
    let done = verdict(&world, &alice, &sealed).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Verified), "{}", message(&done));
    let again = oidc_challenge(alice.name, &alice.uid());
    let again = with_sealed_token(again, &code.encode(), &world.env.response_key());
    let done = verdict(&world, &alice, &again).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    assert!(
        message(&done).starts_with("the identity provider refused to redeem the sign-in's code (invalid_grant"),
        "{}",
        message(&done)
    );

    // Attack: a code seen in the browser's address bar, without the plugin's PKCE verifier.
    let stolen = oidc_challenge(alice.name, &alice.uid());
    let mut code = idp.code_at_client(CONFIDENTIAL, "alice", Level::PasswordAndOtp, &challenge_nonce(&stolen)).unwrap();
    code.code_verifier = "b".repeat(64);
    let stolen = with_sealed_token(stolen, &code.encode(), &world.env.response_key());
    let done = verdict(&world, &alice, &stolen).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(ChallengePhase::Denied));
    assert!(message(&done).contains("refused to redeem the sign-in's code (invalid_grant"), "{}", message(&done));

    let log =
        std::fs::read_to_string(format!("{}/stepup-controller-e2e-confidential.log", world.env.var("STEPUP_LOGS_DIR")))
            .unwrap_or_default();
    assert!(log.contains("trusting identity providers for OIDC step-up"), "the log is written at info: {log}");
    assert!(!log.contains(CONFIDENTIAL_SECRET), "the secret is never logged");

    // Back to the controller stepup.sh runs, publishing the public client again before the next
    // scenario signs in.
    controller.kill();
    drop(paused);
    eventually(Duration::from_secs(30), || async {
        match published(&world).await {
            (_, idps) if idps.first().is_some_and(|i| !i.confidential) => Ok(()),
            (text, _) => anyhow::bail!("published: {text}"),
        }
    })
    .await
    .expect("the public client is published again");
}

/// Attack on the careless: an ID token (a credential for the API server) pasted into a
/// challenge unsealed would be readable by everyone who may watch challenges. The CRD's own rule
/// refuses it before it is stored, webhook or not (the webhook refuses it too: unit test
/// `nor her ID token (a credential for the API server) in the clear`).
#[tokio::test]
async fn a_token_in_the_clear_is_refused_before_it_is_stored() {
    let world = World::new().await;
    let idp = Idp::new(&world.env);
    let alice = person(&idp, "alice");
    let mut c = oidc_challenge(alice.name, &alice.uid());
    c.spec.response = Some(alice.everyday.id_token.clone());
    let status = refusal(alice.challenges(&world).await.create(&PostParams::default(), &c).await);
    assert!(
        status.message.contains(
            "spec.response must be sealed to the controller's key (base64), never a token or code in the clear"
        ),
        "{}",
        status.message
    );
    assert!(!status.message.contains(&alice.everyday.id_token), "the refusal does not echo the token");
    let challenges: Api<StepUpChallenge> = Api::all(world.admin.clone());
    assert!(challenges.get_opt(&c.name_any()).await.unwrap().is_none(), "nothing was stored");
}
