//! Issue-31 scenarios: reads (get, list, watch) that policies name, enforced by the API
//! server's authorization webhook (`stepup authorizer-config`), for real users with real RBAC.
//! Run with `make e2e` (one test at a time: scenarios share the cluster's policies).

use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams, WatchParams},
};
use stepup_core::api::{StepUpGrant, StepUpPolicy, Verb::*};
use stepup_core::testing::policy;
use stepup_e2e::{Terminal, World, audit_lines, eventually, grant_for, plugin, refusal, show, text};

fn prod_secret_reads() -> StepUpPolicy {
    policy("prod-secret-reads")
        .verbs(&[Get, List, Watch], "", &["secrets"])
        .namespaces(&["prod"])
        .message("Runbook: https://runbooks.example.com/secrets.")
        .build()
}

async fn secrets(world: &World, who: &str, namespace: &str) -> Api<Secret> {
    Api::namespaced(world.env.client(who).await, namespace)
}

/// What the API server answers alice's get of `prod/db`, as a refusal message (panics if allowed).
async fn refused_get(world: &World) -> String {
    let status = refusal(secrets(world, "alice", "prod").await.get("db").await);
    assert_eq!(status.code, 403, "{status:?}");
    status.message
}

#[tokio::test]
async fn alices_reads_of_prod_secrets_need_a_fresh_grant_and_nothing_else_changes() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.secret("dev", "db").await;
    world.apply_policies(&[prod_secret_reads()]).await;

    let message = refused_get(&world).await;
    assert!(
        message.starts_with(
            "secrets \"db\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"prod\": "
        ),
        "{message}"
    );
    assert!(message.contains("policy \"prod-secret-reads\""), "{message}");
    assert!(message.contains("Run `kubectl stepup request`"), "{message}");
    assert!(message.contains("Runbook: https://runbooks.example.com/secrets."), "{message}");
    let (_, trailer) = message.split_once("[stepup-required: ").expect("the machine-readable trailer");
    assert!(
        trailer.starts_with("policies=prod-secret-reads methods=TOTP max-age=15m reason-required=false ref="),
        "{trailer}"
    );

    let list = refusal(secrets(&world, "alice", "prod").await.list(&ListParams::default()).await);
    assert!(list.message.contains("cannot list resource \"secrets\""), "{}", list.message);
    assert!(list.message.contains("policy \"prod-secret-reads\""), "{}", list.message);
    let watch = refusal(
        secrets(&world, "alice", "prod").await.watch(&WatchParams::default().timeout(1), "0").await.map(|_| ()),
    );
    assert!(watch.message.contains("cannot watch resource \"secrets\""), "{}", watch.message);
    // Every namespace at once spans prod.
    let everywhere: Api<Secret> = Api::all(world.env.client("alice").await);
    let status = refusal(everywhere.list(&ListParams::default()).await);
    assert!(status.message.contains("policy \"prod-secret-reads\""), "{}", status.message);

    // What no policy names is RBAC's alone, as before.
    secrets(&world, "alice", "dev").await.get("db").await.expect("dev secrets are not protected");
    let configmaps: Api<ConfigMap> = Api::namespaced(world.env.client("alice").await, "prod");
    configmaps.list(&ListParams::default()).await.expect("prod configmaps are not protected");
    // RBAC still refuses what it refused: bob has no role in prod, and the answer is RBAC's.
    let bob = refusal(secrets(&world, "bob", "prod").await.get("db").await);
    assert_eq!(bob.code, 403);

    // A fresh grant lets the same reads through at once (the API server caches no answer).
    let grant = grant_for("alice-reads", "alice", SignedDuration::ZERO, SignedDuration::from_hours(1))
        .uid("uid-alice-1")
        .build();
    world.issue_grant(&grant).await.expect("controller creates grants");
    let db = secrets(&world, "alice", "prod").await.get("db").await.expect("a fresh grant lets alice read");
    assert_eq!(db.metadata.name.as_deref(), Some("db"));
    secrets(&world, "alice", "prod").await.list(&ListParams::default()).await.expect("and list");

    // Revoked: refused again as soon as the webhook's grant watch delivers the deletion (the
    // API server caches no answer). How soon is printed, polled every 100 ms (README's figure).
    let grants: Api<StepUpGrant> = Api::all(world.controller.clone());
    let revoked = std::time::Instant::now();
    grants.delete("alice-reads", &DeleteParams::default()).await.expect("grant deleted");
    let api = secrets(&world, "alice", "prod").await;
    eventually(Duration::from_secs(20), || async {
        match api.get("db").await {
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            other => anyhow::bail!("still read: {:?}", other.map(|s| s.metadata.name)),
        }
    })
    .await
    .expect("the revoked grant stops working");
    eprintln!("revoked grant: alice's reads refused again {:?} after the delete", revoked.elapsed());
    world.webhook_holds("grants", "alice-reads", None).await;
    let message = refused_get(&world).await;
    assert!(message.contains("policy \"prod-secret-reads\""), "{message}");
}

#[tokio::test]
async fn masks_get_nothing_here_either() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[prod_secret_reads()]).await;
    // alice (edit in prod) wearing a prod service account's name: a person's mask.
    let out = world.env.kubectl(
        "alice",
        &["-n", "prod", "get", "secret", "db", "--as", "system:serviceaccount:prod:default", "-o", "name"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // `edit` may impersonate the namespace's service accounts; the name without its pod is a
    // person's mask, refused by stepup before RBAC is asked.
    assert!(stderr.contains("policy \"prod-secret-reads\""), "{stderr}");
    // The same mask with forged pod extras: impersonating extras is a right `edit` lacks.
    let out = world.env.kubectl(
        "alice",
        &[
            "-n",
            "prod",
            "get",
            "secret",
            "db",
            "--as",
            "system:serviceaccount:prod:default",
            "--as-user-extra",
            "authentication.kubernetes.io/pod-name=web-0",
            "--as-user-extra",
            "authentication.kubernetes.io/pod-uid=0f0f0f0f-0000-4000-8000-000000000000",
            "-o",
            "name",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot impersonate resource \"userextras/"), "{stderr}");
    // A cluster-admin impersonating alice is alice.
    let out = world.env.kubectl("admin", &["-n", "prod", "get", "secret", "db", "--as", "alice", "-o", "name"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("policy \"prod-secret-reads\""), "{stderr}");
}

#[tokio::test]
async fn the_wrapper_reads_a_prod_secret_in_one_go() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[prod_secret_reads()]).await;
    let mut auth = world.enroll("alice", "alice").await;

    let mut term =
        Terminal::spawn(&world.env, "alice", &["--", "kubectl", "get", "secret", "db", "-n", "prod", "-o", "yaml"]);
    let at = term.expect("[stepup-required: policies=prod-secret-reads", 0, Duration::from_secs(30)).await;
    let at = term.expect("Code from your authenticator app:", at, Duration::from_secs(30)).await;
    let code = auth.code().await;
    term.type_line(&code).await;
    term.expect("password: aHVudGVyMg==", at, Duration::from_secs(30)).await;
    let (exit, screen) = term.exit_code().await;
    eprintln!("--- the wrapper, as alice saw it ---\n{screen}");
    assert_eq!(exit, 0, "{screen}");
    assert_eq!(screen.matches("Error from server (Forbidden)").count(), 1, "one refusal, one retry:\n{screen}");
    let grants = world.grants_of("alice").await;
    assert!(
        !grants.is_empty() && grants.iter().all(|g| g.spec.scope.policies == ["prod-secret-reads"]),
        "scoped to the refused policy: {:?}",
        grants.iter().map(|g| &g.spec.scope).collect::<Vec<_>>()
    );
    // The read it let through is in the trail, with the grant that allowed it.
    let grant = grants[0].metadata.name.clone().expect("named");
    eventually(Duration::from_secs(15), || async {
        let lines = audit_lines(world.env.var("STEPUP_WEBHOOK_LOG"));
        let read = lines.iter().any(|l| {
            l["event"] == "authorization.decision"
                && l["decision"] == "granted"
                && l["grant"] == grant.as_str()
                && l["operation"] == "get"
                && l["name"] == "db"
        });
        if read { Ok(()) } else { anyhow::bail!("no granted read of prod/db with {grant} in the trail yet") }
    })
    .await
    .expect("the allowed read is recorded");
    // And in the durable trail the auditor reports from: this scenario's refused read and the
    // one its grant let through, naming that grant. The condition waited for is the whole claim:
    // earlier scenarios left refused and granted reads of alice's in the trail, which must not
    // satisfy it before this scenario's segment is written (the webhook writes one a second here).
    // (Less two seconds, in case a record's time is kept to the second.)
    let started = world.started - SignedDuration::from_secs(2);
    eventually(Duration::from_secs(30), || async {
        let out =
            plugin(&world.env, "auditor", &["report", "-o", "json", "--since", "1h", "--user", "alice"], None).await;
        anyhow::ensure!(out.status.success(), "{}", show(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let trail: Vec<serde_json::Value> = report["report"]["trail"].as_array().cloned().unwrap_or_default();
        let recent = |t: &&serde_json::Value| {
            t["time"].as_str().and_then(|at| at.parse::<jiff::Timestamp>().ok()).is_some_and(|at| at >= started)
        };
        let granted = trail.iter().filter(recent).any(|t| {
            t["event"] == "authorization.granted"
                && t["grant"] == grant.as_str()
                && t["what"].as_str().is_some_and(|w| w.starts_with("get secrets"))
        });
        let refused = trail.iter().filter(recent).any(|t| {
            t["event"] == "authorization.denied" && t["what"].as_str().is_some_and(|w| w.starts_with("get secrets"))
        });
        if granted && refused { Ok(()) } else { anyhow::bail!("not in the report yet: {trail:?}") }
    })
    .await
    .expect("the report shows this scenario's refused read and the read its grant let through");
}

#[tokio::test]
async fn a_read_policy_is_ready_only_once_the_api_server_sends_its_reads_to_stepup() {
    let world = World::new().await;
    // Applied without rendering the authorizer file: the API server sends its reads nowhere.
    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    api.create(&PostParams::default(), &prod_secret_reads()).await.expect("policy created");
    let ready = |wanted: &'static str| {
        let api = api.clone();
        async move {
            eventually(Duration::from_secs(30), || async {
                let status = api.get("prod-secret-reads").await?.status.unwrap_or_default();
                match status.conditions.iter().find(|c| c.type_ == "Ready") {
                    Some(c) if c.reason == wanted => Ok(c.clone()),
                    other => anyhow::bail!("Ready condition: {other:?}"),
                }
            })
            .await
            .unwrap_or_else(|e| panic!("Ready becomes {wanted}: {e}"))
        }
    };
    let not_sent = ready("AuthorizerNotConfigured").await;
    assert_eq!(not_sent.status, "False");
    assert!(
        not_sent.message.starts_with("the API server does not send get secrets to stepup's authorizer"),
        "{}",
        not_sent.message
    );
    assert!(not_sent.message.contains("`stepup authorizer-config`"), "{}", not_sent.message);
    world.wait_event("PolicyReadsNotEnforced", "get secrets").await;
    // alice reads meanwhile: RBAC's alone, as the condition says.
    world.secret("prod", "db").await;
    secrets(&world, "alice", "prod").await.get("db").await.expect("not sent to stepup yet");

    world.sync_authorizer().await;
    let compiled = ready("Compiled").await;
    assert_eq!(compiled.status, "True");
    refused_get(&world).await;
}

#[tokio::test]
async fn the_shipped_example_protects_prod_secret_reads_and_leaves_dev_alone() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.secret("dev", "db").await;
    let example: StepUpPolicy =
        serde_yaml::from_str(include_str!("../../manifests/examples/prod-secret-reads.yaml")).expect("example parses");
    world.apply_policies(&[example]).await;
    let message = refused_get(&world).await;
    assert!(message.contains("policy \"prod-secret-reads\""), "{message}");
    assert!(message.contains("Reading production secrets needs a fresh second factor"), "{message}");
    secrets(&world, "alice", "dev").await.get("db").await.expect("dev (no env=prod label) is not protected");
    // stepup's own controller reads its Secrets in its namespace as before.
    let own: Api<Secret> = Api::namespaced(world.controller.clone(), "stepup-system");
    own.list(&ListParams::default()).await.expect("the controller reads its own secrets");
}

#[tokio::test]
async fn check_answers_for_reads_as_the_authorizer_decides() {
    let world = World::new().await;
    world.apply_policies(&[prod_secret_reads()]).await;
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["check", "get", "secret", "db", "-n", "prod"],
            3,
            "get secrets \"db\" in namespace \"prod\": step-up required",
        ),
        (&["check", "get", "secrets", "-n", "prod"], 3, "list secrets in namespace \"prod\": step-up required"),
        (&["check", "watch", "secrets", "-n", "dev"], 0, "allowed, no policy applies"),
        (&["check", "delete", "secret", "db", "-n", "prod"], 0, "allowed, no policy applies"),
    ];
    for (args, code, expected) in cases {
        let out = plugin(&world.env, "alice", args, None).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", show(&out));
        assert!(text(&out.stdout).contains(expected), "{args:?}: {}", show(&out));
    }
}

#[tokio::test]
async fn with_the_webhook_down_protected_reads_fail_closed_and_nothing_else_does() {
    use k8s_openapi::api::coordination::v1::Lease;
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.secret("dev", "db").await;
    world.apply_policies(&[prod_secret_reads()]).await;
    {
        let _down = stepup_e2e::ScriptWebhookStopped::new();
        // The API server cannot ask stepup: failurePolicy Deny makes it an error, not the secret.
        let status = refusal(secrets(&world, "alice", "prod").await.get("db").await);
        assert_eq!(status.code, 500, "{status:?}");
        assert!(status.message.contains("/authorize"), "the error names the authorizer's URL: {}", status.message);
        let listed = secrets(&world, "alice", "prod").await.list(&ListParams::default()).await;
        assert!(listed.is_err(), "nor a list: {listed:?}");
        // What no policy names never leaves the API server.
        secrets(&world, "alice", "dev").await.get("db").await.expect("dev secrets");
        let configmaps: Api<ConfigMap> = Api::namespaced(world.env.client("alice").await, "prod");
        configmaps.list(&ListParams::default()).await.expect("prod configmaps");
        let kube_system: Api<ConfigMap> = Api::namespaced(world.controller.clone(), "kube-system");
        let _ = kube_system.list(&ListParams::default()).await.map_err(|e| {
            // RBAC's answer, whatever it is, not the authorizer's error.
            assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e:?}");
        });
        let leases: Api<Lease> = Api::namespaced(world.controller.clone(), "stepup-system");
        leases.list(&ListParams::default()).await.expect("the controller's leases");
    }
    // Back up: refused with what to run, as before.
    let message = refused_get(&world).await;
    assert!(message.contains("policy \"prod-secret-reads\""), "{message}");
}
