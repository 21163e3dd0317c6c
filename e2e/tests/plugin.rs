//! Issue-5 scenarios: the `kubectl stepup` binary, driven as alice against the real control
//! plane, the webhook and the controller. Interactive prompts run in a pseudo-terminal
//! (util-linux `script`), where the test plays the person and the authenticator app.
//! Run with `make e2e` (one test at a time: scenarios share the cluster).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use stepup_core::testing::policy;
use stepup_core::{
    api::Operation::Delete,
    verify::totp::{self, code_at},
};
use stepup_e2e::{Terminal, World, base32_decode, plugin, show, text};

/// The authenticator app: one code per 30-second step, never the same step twice (the
/// controller accepts a step once per user).
struct Authenticator {
    seed: Vec<u8>,
    last_step: Option<u64>,
}

impl Authenticator {
    async fn code(&mut self) -> String {
        loop {
            let now = Timestamp::now();
            let step = totp::step_of(now);
            if self.last_step.is_none_or(|last| step > last) {
                self.last_step = Some(step);
                return code_at(&self.seed, now);
            }
            // The next TOTP step comes only with time.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn wrong_code(&self) -> String {
        let now = Timestamp::now();
        // Not right for any time the controller compares (±10 min), or it would say "another time".
        let near = totp::NEAR_STEPS + 1;
        let window: Vec<String> =
            (-near..=near).map(|s| code_at(&self.seed, now + jiff::SignedDuration::from_secs(s * 30))).collect();
        (0..1000).map(|n| format!("{:06}", 314_159 + n)).find(|c| !window.contains(c)).expect("a wrong code")
    }
}

fn prod_secrets() -> stepup_core::api::StepUpPolicy {
    policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build()
}

/// `kubectl stepup enroll` as alice in a terminal, with the admin approving on the side;
/// returns the authenticator the test set up from the printed otpauth URI. With `typo`, the
/// first code typed is wrong (it counts against the rate limit, so only one scenario does it).
async fn enroll_alice(world: &World, typo: bool) -> Authenticator {
    world.unenroll("alice").await;
    world.admin_steps_up().await;
    let mut term = Terminal::spawn(&world.env, "alice", &["enroll"]);
    let at = term.expect("Your enrollment key fingerprint: ", 0, Duration::from_secs(30)).await;
    let fingerprint: String = term.screen()[at..].chars().take(29).collect();
    let at = term.expect("kubectl stepup approve alice --key", at, Duration::from_secs(30)).await;

    // The admin is shown the fingerprint and must name it: alice reads hers to them.
    let approved = plugin(&world.env, "admin", &["approve", "alice", "--key", &fingerprint], None).await;
    assert!(approved.status.success(), "{}", show(&approved));
    assert!(text(&approved.stdout).contains(&format!("asks to enroll key {fingerprint}")), "{}", show(&approved));
    assert!(text(&approved.stdout).contains("for alice's enrollment"), "{}", show(&approved));

    let at = term
        .expect("URI: otpauth://totp/kube-stepup%20%28stepup-e2e%29:alice?secret=", at, Duration::from_secs(30))
        .await;
    let screen = term.screen();
    let secret: String = screen[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    // Drawn in colours on a terminal (dark modules as blocks), plain otherwise (light ones).
    let blocks = screen[..at].chars().filter(|c| matches!(c, '█' | '▀' | '▄')).count();
    assert!(blocks > 200, "a QR code is drawn:\n{screen}");
    let mut auth = Authenticator { seed: base32_decode(&secret), last_step: None };
    assert_eq!(auth.seed.len(), 20, "160-bit seed");

    let mut at = term.expect("Enter the 6-digit code", at, Duration::from_secs(10)).await;
    let wrong = auth.wrong_code();
    if typo {
        term.type_line(&wrong).await;
        at = term.expect("That code was not accepted", at, Duration::from_secs(30)).await;
        at = term.expect("Enter the 6-digit code", at, Duration::from_secs(10)).await;
    }
    let right = auth.code().await;
    term.type_line(&right).await;
    term.expect("Enrolled:", at, Duration::from_secs(30)).await;
    let (code, screen) = term.exit_code().await;
    assert_eq!(code, 0, "{screen}");
    assert!(!screen.contains(&right) && !screen.contains(&wrong), "codes are typed without echo:\n{screen}");
    auth
}

#[tokio::test]
async fn alice_enrolls_in_a_terminal_with_the_admins_approval() {
    let world = World::new().await;
    enroll_alice(&world, true).await;

    let status = plugin(&world.env, "alice", &["status", "-o", "json"], None).await;
    assert!(status.status.success(), "{}", show(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["user"], "alice");
    assert_eq!(status["uid"], "uid-alice-1", "identity comes from the API server");
    assert_eq!(status["enrollment"]["phase"], "Active");

    let again = plugin(&world.env, "alice", &["enroll"], None).await;
    assert!(again.status.success(), "{}", show(&again));
    assert!(text(&again.stdout).contains("already enrolled"), "{}", show(&again));
}

#[tokio::test]
async fn request_status_check_and_revoke() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    let mut auth = enroll_alice(&world, false).await;

    let before = plugin(&world.env, "alice", &["check", "delete", "secret", "db", "-n", "prod"], None).await;
    assert_eq!(before.status.code(), Some(3), "{}", show(&before));
    assert!(text(&before.stdout).contains("step-up required"), "{}", show(&before));
    assert!(
        text(&before.stdout).contains("policy prod-secrets (Deny, max age 15m): you hold no grant"),
        "{}",
        show(&before)
    );

    let wrong =
        plugin(&world.env, "alice", &["request", "--code-stdin"], Some(&format!("{}\n", auth.wrong_code()))).await;
    assert_eq!(wrong.status.code(), Some(3), "{}", show(&wrong));
    let stderr = text(&wrong.stderr);
    assert!(stderr.starts_with("error: the code was not accepted: wrong code"), "{stderr}");
    assert!(stderr.contains("\nhint: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "one sentence and a hint: {stderr}");

    let code = auth.code().await;
    let args = ["request", "--code-stdin", "--reason", "INC-42", "--duration", "10m", "-o", "json"];
    let granted = plugin(&world.env, "alice", &args, Some(&format!("{code}\n"))).await;
    assert!(granted.status.success(), "{}", show(&granted));
    let grant: Value = serde_json::from_slice(&granted.stdout).expect("grant JSON");
    let name = grant["name"].as_str().expect("grant name").to_owned();
    assert_eq!(grant["user"], "alice");
    assert_eq!(grant["reason"], "INC-42");
    assert_eq!(grant["state"], "Active");
    let left = grant["expiresInSeconds"].as_i64().unwrap();
    assert!((500..=600).contains(&left), "10m requested: {left}s left");

    let replayed = plugin(&world.env, "alice", &["request", "--code-stdin"], Some(&format!("{code}\n"))).await;
    assert_eq!(replayed.status.code(), Some(3), "{}", show(&replayed));
    assert!(text(&replayed.stderr).contains("already used"), "{}", show(&replayed));

    let status = plugin(&world.env, "alice", &["status"], None).await;
    assert!(status.status.success(), "{}", show(&status));
    let shown = text(&status.stdout);
    assert!(shown.contains("Enrollment:  TOTP Active"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with(&name) && l.contains("Active") && l.contains("INC-42")), "{shown}");
    // The grant lasts longer than prod-secrets accepts it: status says until when it counts.
    assert!(shown.contains("The newest grant counts for:\n  prod-secrets (max age 15m) until "), "{shown}");

    let after =
        plugin(&world.env, "alice", &["check", "delete", "secret", "db", "-n", "prod", "-o", "json"], None).await;
    assert_eq!(after.status.code(), Some(0), "{}", show(&after));
    let report: Value = serde_json::from_slice(&after.stdout).expect("check JSON");
    assert_eq!(report["allowed"], true);
    assert_eq!(report["results"][0]["decision"], "granted");
    assert_eq!(report["results"][0]["policies"][0]["grant"], name.as_str());

    let revoked = plugin(&world.env, "alice", &["revoke"], None).await;
    assert!(revoked.status.success(), "{}", show(&revoked));
    assert!(text(&revoked.stdout).contains(&format!("Revoked {name}.")), "{}", show(&revoked));
    let gone = plugin(&world.env, "alice", &["check", "delete", "secret", "db", "-n", "prod"], None).await;
    assert_eq!(gone.status.code(), Some(3), "a revoked grant no longer counts: {}", show(&gone));
}

/// `check` decides with the settings the webhook runs with (published by the controller), not
/// a default install's: the e2e webhook makes `stepup:break-glass` a break-glass group, and
/// `policy-writer` exempt. A default install would answer "step-up required" to both.
#[tokio::test]
async fn check_decides_with_the_webhooks_own_settings() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.secret("prod", "db").await;
    let published = world.env.kubectl(
        "admin",
        &["-n", "stepup-system", "get", "configmap", "stepup-decision", "-o", "jsonpath={.data.decision\\.json}"],
    );
    assert!(published.status.success(), "{}", show(&published));
    let settings: Value = serde_json::from_slice(&published.stdout).expect("published settings");
    assert_eq!(settings["breakGlassGroups"], serde_json::json!(["stepup:break-glass"]), "{settings}");
    assert_eq!(settings["exemptUsers"], serde_json::json!(["system:serviceaccount:stepup-system:policy-writer"]));

    let carol = plugin(&world.env, "carol", &["check", "delete", "secret", "db", "-n", "prod"], None).await;
    assert_eq!(carol.status.code(), Some(0), "{}", show(&carol));
    assert!(text(&carol.stdout).contains("allowed by break-glass"), "{}", show(&carol));
    assert!(!text(&carol.stderr).contains("cannot read the webhook's settings"), "{}", show(&carol));
    // The webhook agrees: carol's delete passes, as break-glass.
    let out = world.env.kubectl("carol", &["-n", "prod", "delete", "secret", "db"]);
    assert!(out.status.success(), "{}", show(&out));

    // Users may read the publication, and nothing else in stepup's namespace.
    let others = world.env.kubectl("alice", &["-n", "stepup-system", "get", "configmaps"]);
    assert!(!others.status.success(), "{}", show(&others));
}

#[tokio::test]
async fn check_answers_like_auth_can_i() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["check", "delete", "secrets/db", "-n", "prod"],
            3,
            "delete secrets \"db\" in namespace \"prod\": step-up required",
        ),
        (&["check", "delete", "secret", "db", "-n", "dev"], 0, "allowed, no policy applies"),
        (&["check", "get", "secrets", "-n", "prod"], 0, "allowed, no policy applies"),
        (&["check", "delete", "stepuppolicies", "prod-secrets"], 3, "stepup-builtin-policy-changes"),
        (&["check", "frobnicate", "secrets"], 2, ""),
    ];
    for (args, code, expected) in cases {
        let out = plugin(&world.env, "alice", args, None).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", show(&out));
        assert!(text(&out.stdout).contains(expected), "{args:?}: {}", show(&out));
    }

    let manifest = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: prod}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: prod}\n";
    let out = plugin(&world.env, "alice", &["check", "delete", "-f", "-", "-o", "json"], Some(manifest)).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    let decisions: Vec<&str> =
        report["results"].as_array().unwrap().iter().map(|r| r["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["denied", "no-policy"]);
    assert_eq!(
        report["results"][0]["requirement"],
        "policies=prod-secrets methods=TOTP max-age=15m reason-required=false"
    );

    // A policy that selects namespaces by label, and a namespace alice may not read: her answer
    // is the webhook's for an unknown namespace, and says it is not certain; the admin's is.
    let selecting =
        policy("env-secrets").rule(&[Delete], "", &["secrets"]).namespace_labels(&[("env", "prod")]).build();
    world.apply_policies(&[prod_secrets(), selecting]).await;
    let alices = plugin(&world.env, "alice", &["check", "delete", "secret", "x", "-n", "default"], None).await;
    assert_eq!(alices.status.code(), Some(3), "{}", show(&alices));
    assert!(
        text(&alices.stdout)
            .contains("probably step-up required\n  Not certain: you may not read namespace \"default\""),
        "{}",
        show(&alices)
    );
    let admins = plugin(&world.env, "admin", &["check", "delete", "secret", "x", "-n", "default"], None).await;
    assert_eq!(admins.status.code(), Some(0), "{}", show(&admins));
    assert!(!text(&admins.stdout).contains("Not certain"), "{}", show(&admins));
}

#[tokio::test]
async fn the_wrapper_asks_for_a_code_once_and_retries() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    let mut auth = enroll_alice(&world, false).await;
    world.secret("prod", "db").await;

    let mut term = Terminal::spawn(&world.env, "alice", &["--", "kubectl", "delete", "secret", "db", "-n", "prod"]);
    let at = term.expect("[stepup-required: policies=prod-secrets", 0, Duration::from_secs(30)).await;
    let at = term.expect("Code from your authenticator app:", at, Duration::from_secs(30)).await;
    let code = auth.code().await;
    term.type_line(&code).await;
    term.expect("secret \"db\" deleted", at, Duration::from_secs(30)).await;
    let (exit, screen) = term.exit_code().await;
    eprintln!("--- the wrapper, as alice saw it ---\n{screen}");
    assert_eq!(exit, 0, "{screen}");
    assert_eq!(screen.matches("Error from server (Forbidden)").count(), 1, "one refusal, one retry:\n{screen}");
    assert!(!screen.contains(&code), "the code is not echoed:\n{screen}");

    // Commands kube-stepup does not refuse pass through untouched: output and exit code.
    let direct = world.env.kubectl("alice", &["get", "secret", "nope", "-n", "dev"]);
    let wrapped = plugin(&world.env, "alice", &["--", "kubectl", "get", "secret", "nope", "-n", "dev"], None).await;
    assert_eq!(wrapped.status.code(), direct.status.code(), "{}", show(&wrapped));
    assert_eq!(text(&wrapped.stderr), text(&direct.stderr));
    assert_eq!(text(&wrapped.stdout), text(&direct.stdout));

    // The grant answered exactly the refusal: the policy it named.
    let grants = world.grants_of("alice").await;
    assert!(
        grants.iter().all(|g| g.spec.scope.policies == ["prod-secrets"]),
        "scoped to the refused policy: {:?}",
        grants.iter().map(|g| &g.spec.scope).collect::<Vec<_>>()
    );

    // One story in the audit trail (issue 30): the refusal's review, the step-up and the
    // retried delete carry the same correlation id, handed back through the trailer's `ref=`.
    let grant = grants.first().expect("a grant");
    let id = grant
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(stepup_core::api::CORRELATION_ANNOTATION))
        .cloned()
        .expect("the grant names the refusal it answered");
    let uid = id.strip_prefix("prompt:").expect("prompt:<review uid>");
    assert!(screen.contains(&format!("ref={uid}]")), "the refusal named its review:\n{screen}");
    let grant_name = grant.metadata.name.clone().unwrap();
    stepup_e2e::eventually(Duration::from_secs(15), || async {
        let webhook = stepup_e2e::audit_lines(world.env.var("STEPUP_WEBHOOK_LOG"));
        let controller = stepup_e2e::audit_lines(world.env.var("STEPUP_CONTROLLER_LOG"));
        let refusal = webhook
            .iter()
            .any(|l| l["review_uid"] == uid && l["decision"] == "denied" && l["correlation"] == id.as_str());
        let retried = webhook.iter().any(|l| {
            l["grant"] == grant_name.as_str() && l["decision"] == "granted" && l["correlation"] == id.as_str()
        });
        let issued = controller.iter().any(|l| {
            l["event"] == "grant.issued" && l["grant"] == grant_name.as_str() && l["correlation"] == id.as_str()
        });
        let verified = controller.iter().any(|l| {
            l["event"] == "challenge.verified" && l["grant"] == grant_name.as_str() && l["correlation"] == id.as_str()
        });
        if refusal && retried && issued && verified {
            Ok(())
        } else {
            anyhow::bail!("refusal {refusal}, retried {retried}, issued {issued}, verified {verified}")
        }
    })
    .await
    .expect("every record of the story carries the refusal's id");
}

/// Attack (third round): a wrapped command that prints a refusal's trailer itself (a script, or
/// a container's stderr through `kubectl exec`) got a prompt, an unscoped one-hour grant, and
/// was run twice. Only the API server's refusal of a failed kubectl command is answered.
#[tokio::test]
async fn the_wrapper_trusts_no_trailer_but_the_api_servers_refusal() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    enroll_alice(&world, false).await;
    let dir = std::env::temp_dir().join(format!("wrapped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = dir.join("runs");
    let trailer = "[stepup-required: policies=prod-secrets methods=TOTP max-age=15m reason-required=false]";
    let denial = format!(
        "Error from server (Forbidden): admission webhook \\\"validate.stepup.dev\\\" denied the request: {trailer}"
    );
    for (exit, line) in [(0, trailer.to_owned()), (1, trailer.to_owned()), (1, denial)] {
        let _ = std::fs::remove_file(&runs);
        let script = format!("echo ran >> {}; echo \"{line}\" >&2; exit {exit}", runs.display());
        // No terminal and no stdin: a prompt would fail the command with another exit code.
        let out = plugin(&world.env, "alice", &["--", "sh", "-c", &script], None).await;
        assert_eq!(out.status.code(), Some(exit), "the command's own exit code: {}", show(&out));
        assert!(!text(&out.stderr).contains("needs a fresh second factor"), "no prompt: {}", show(&out));
        assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1, "run once: {}", show(&out));
    }
    assert!(world.grants_of("alice").await.is_empty(), "no grant was minted");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn failures_are_one_sentence_a_hint_and_an_exit_code() {
    let world = World::new().await;
    world.unenroll("bob").await;

    let not_enrolled = plugin(&world.env, "bob", &["request", "--code-stdin"], Some("123456\n")).await;
    assert_eq!(not_enrolled.status.code(), Some(4), "{}", show(&not_enrolled));
    assert_eq!(
        text(&not_enrolled.stderr),
        "error: you are not enrolled for step-up authentication.\n\
         hint: Run `kubectl stepup enroll` once to set up your authenticator app; an admin may need to approve it (they run `kubectl stepup approve bob`). Then run this command again.\n"
    );

    let pending = plugin(&world.env, "bob", &["enroll", "--timeout", "3s"], None).await;
    assert_eq!(pending.status.code(), Some(4), "{}", show(&pending));
    let stderr = text(&pending.stderr);
    assert!(stderr.contains("error: your enrollment is waiting for an admin's approval"), "{stderr}");
    assert!(stderr.contains("hint: Ask a stepup admin to run `kubectl stepup approve bob`"), "{stderr}");

    let self_approval = plugin(&world.env, "bob", &["approve", "bob"], None).await;
    assert_eq!(self_approval.status.code(), Some(2), "{}", show(&self_approval));
    let not_admin = plugin(&world.env, "alice", &["approve", "bob"], None).await;
    assert_eq!(not_admin.status.code(), Some(1), "{}", show(&not_admin));
    assert!(text(&not_admin.stderr).contains("admin group"), "{}", show(&not_admin));

    // An API server that is not there.
    let kubeconfig = std::fs::read_to_string(world.env.kubeconfig("alice")).unwrap();
    let server = world.env.var("KUBE_APISERVER_URL");
    let dead = std::env::temp_dir().join(format!("stepup-dead-{}.yaml", std::process::id()));
    std::fs::write(&dead, kubeconfig.replace(server, "https://127.0.0.1:9")).unwrap();
    let out = tokio::process::Command::new(world.env.var("KUBECTL_STEPUP_BIN"))
        .arg("--kubeconfig")
        .arg(&dead)
        .arg("status")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&dead);
    assert_eq!(out.status.code(), Some(6), "{}", show(&out));
    assert!(
        text(&out.stderr).starts_with("error: the API server at https://127.0.0.1:9 cannot be reached.\nhint: "),
        "{}",
        show(&out)
    );
}

/// A person who never enrolled, refused and prompted, is enrolled right there by the wrapper
/// (issue: the refusal sent them to `request`, which sent them to `enroll`: two hops).
#[tokio::test]
async fn the_wrapper_enrolls_a_newcomer_on_the_way_to_the_grant() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.unenroll("alice").await;
    world.admin_steps_up().await;
    world.secret("prod", "db").await;

    let mut term = Terminal::spawn(&world.env, "alice", &["--", "kubectl", "delete", "secret", "db", "-n", "prod"]);
    let at = term.expect("[stepup-required: policies=prod-secrets", 0, Duration::from_secs(30)).await;
    let at =
        term.expect("alice has no authenticator enrolled yet; enrolling one now", at, Duration::from_secs(30)).await;
    let at = term.expect("Your enrollment key fingerprint: ", at, Duration::from_secs(30)).await;
    let fingerprint: String = term.screen()[at..].chars().take(29).collect();
    let at = term.expect("kubectl stepup approve alice --key", at, Duration::from_secs(30)).await;
    let approved = plugin(&world.env, "admin", &["approve", "alice", "--key", &fingerprint], None).await;
    assert!(approved.status.success(), "{}", show(&approved));
    let at = term
        .expect("URI: otpauth://totp/kube-stepup%20%28stepup-e2e%29:alice?secret=", at, Duration::from_secs(30))
        .await;
    let secret: String = term.screen()[at..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let mut auth = Authenticator { seed: base32_decode(&secret), last_step: None };
    let at = term.expect("Enter the 6-digit code", at, Duration::from_secs(10)).await;
    term.type_line(&auth.code().await).await;
    let at = term.expect("Enrolled:", at, Duration::from_secs(30)).await;
    let at = term.expect("Code from your authenticator app:", at, Duration::from_secs(30)).await;
    // The enrollment's code is spent: the next one the app shows.
    term.type_line(&auth.code().await).await;
    term.expect("secret \"db\" deleted", at, Duration::from_secs(60)).await;
    let (exit, screen) = term.exit_code().await;
    eprintln!("--- the wrapper, as a newcomer saw it ---\n{screen}");
    assert_eq!(exit, 0, "{screen}");
    assert_eq!(screen.matches("Error from server (Forbidden)").count(), 1, "one refusal, one retry:\n{screen}");
    assert!(!screen.contains("kubectl stepup enroll` once"), "not sent elsewhere:\n{screen}");
}
