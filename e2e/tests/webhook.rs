//! Issue-3 scenarios: the webhook, called by a real kube-apiserver, for real users.
//! Run with `make e2e` (one test at a time: scenarios share the cluster's policies).

use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use stepup_core::api::{Enforcement, Operation::*, StepUpGrant, StepUpPolicy};
use stepup_core::testing::policy;
use stepup_e2e::{World, eventually, grant_for, refusal};

fn prod_secrets() -> StepUpPolicy {
    policy("prod-secrets")
        .rule(&[Delete], "", &["secrets"])
        .namespaces(&["prod"])
        .exclude_users(&["bob"])
        .message("Runbook: https://runbooks.example.com/secrets.")
        .build()
}

async fn delete_secret_as(world: &World, who: &str, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(world.env.client(who).await, namespace);
    api.delete(name, &DeleteParams::default()).await.map(|_| ())
}

#[tokio::test]
async fn alice_is_refused_deleting_a_prod_secret_and_allowed_in_dev() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.secret("prod", "db").await;
    world.secret("dev", "db").await;

    let status = refusal(delete_secret_as(&world, "alice", "prod", "db").await);
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains("admission webhook \"validate.stepup.dev\" denied the request"),
        "{}",
        status.message
    );
    assert!(status.message.contains("policy \"prod-secrets\""), "{}", status.message);
    assert!(status.message.contains("Run `kubectl stepup request`"), "{}", status.message);
    assert!(status.message.contains("Runbook: https://runbooks.example.com/secrets."), "{}", status.message);
    // The machine-readable requirement reaches the client unchanged.
    let causes = status.details.expect("details").causes;
    assert_eq!(causes[0].reason, "StepUpRequired");
    // (and names the review it refused, for the plugin to hand back)
    let (requirement, reference) = causes[0].message.split_once(" ref=").expect("the review is named");
    assert_eq!(requirement, "policies=prod-secrets methods=TOTP max-age=15m reason-required=false");
    assert!(stepup_core::api::is_review_ref(reference), "{reference}");

    delete_secret_as(&world, "alice", "dev", "db").await.expect("dev is not protected");
}

#[tokio::test]
async fn a_user_excluded_by_the_policy_passes() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.secret("prod", "db").await;
    delete_secret_as(&world, "bob", "prod", "db").await.expect("bob is excluded");
}

#[tokio::test]
async fn warn_policies_show_a_warning_in_kubectl() {
    let world = World::new().await;
    world
        .apply_policies(&[policy("dev-secrets-warn")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["dev"])
            .enforcement(Enforcement::Warn)
            .build()])
        .await;
    world.secret("dev", "cache").await;
    let out = world.env.kubectl("alice", &["-n", "dev", "delete", "secret", "cache"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Warning: stepup: policy \"dev-secrets-warn\""), "{stderr}");
}

#[tokio::test]
async fn audit_policies_pass_and_leave_an_audit_annotation() {
    let world = World::new().await;
    world
        .apply_policies(&[policy("dev-secrets-audit")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["dev"])
            .enforcement(Enforcement::Audit)
            .build()])
        .await;
    let name = format!("audited-{}", std::process::id());
    world.secret("dev", &name).await;
    delete_secret_as(&world, "alice", "dev", &name).await.expect("audit mode allows");
    let annotations = world
        .env
        .audit_annotations(|e| {
            e["verb"] == "delete" && e["user"]["username"] == "alice" && e["objectRef"]["name"] == name.as_str()
        })
        .await;
    // Reviewed by the entry that fails closed (other scenarios' Deny policies route secret
    // deletes there) or by the one that fails open: exactly one of them.
    let entries: Vec<&str> = ["validate.stepup.dev", "advise.stepup.dev"]
        .into_iter()
        .filter(|e| annotations.get(format!("{e}/decision")).is_some())
        .collect();
    assert_eq!(entries.len(), 1, "{annotations}");
    assert_eq!(annotations[format!("{}/decision", entries[0])], "audited", "{annotations}");
    assert_eq!(annotations[format!("{}/policy", entries[0])], "dev-secrets-audit", "{annotations}");
}

#[tokio::test]
async fn the_break_glass_group_passes_and_is_recorded() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;
    world.secret("prod", "db").await;
    let before = world.env.metric_sum("stepup_break_glass_total").await;
    let out = world.env.kubectl("carol", &["-n", "prod", "delete", "secret", "db"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("break-glass access bypassed policy \"prod-secrets\""), "{stderr}");
    assert_eq!(world.env.metric_sum("stepup_break_glass_total").await, before + 1.0);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(world.admin.clone(), "stepup-system");
    eventually(Duration::from_secs(10), || async {
        let list = events.list(&Default::default()).await?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("BreakGlassUsed")
                    && e.note.as_deref().is_some_and(|n| n.starts_with("carol:"))
            })
            .map(|_| ())
            .ok_or_else(|| anyhow::anyhow!("no BreakGlassUsed event yet"))
    })
    .await
    .expect("break-glass Event");
}

#[tokio::test]
async fn exec_into_a_prod_pod_is_refused_by_the_webhook() {
    let world = World::new().await;
    world
        .apply_policies(&[policy("prod-exec")
            .rule(&[Connect], "", &["pods/exec", "pods/attach"])
            .namespaces(&["prod"])
            .build()])
        .await;
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
    });
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(world.admin.clone(), "prod");
    let _ = pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await;
    let out = world.env.kubectl("alice", &["-n", "prod", "exec", "web", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("policy \"prod-exec\""), "refused by the webhook, before any kubelet: {stderr}");
    assert!(stderr.contains("connect to pods/exec \"web\""), "{stderr}");
}

#[tokio::test]
async fn a_controller_issued_grant_lets_the_delete_through_but_not_expired_or_out_of_scope_ones() {
    let world = World::new().await;
    world.apply_policies(&[prod_secrets()]).await;

    world.secret("prod", "db").await;
    // Expired seconds ago, so still kept as evidence (the e2e controller retains a minute).
    let expired = grant_for("expired", "alice", SignedDuration::from_secs(3605), SignedDuration::from_hours(1))
        .uid("uid-alice-1")
        .build();
    world.issue_grant(&expired).await.expect("controller creates grants");
    let status = refusal(delete_secret_as(&world, "alice", "prod", "db").await);
    assert!(status.message.contains("Your latest grant expired does not count: it has expired"), "{}", status.message);

    let elsewhere = grant_for("dev-only", "alice", SignedDuration::from_mins(1), SignedDuration::from_hours(1))
        .scope_namespaces(&["dev"])
        .uid("uid-alice-1")
        .build();
    world.issue_grant(&elsewhere).await.unwrap();
    let status = refusal(delete_secret_as(&world, "alice", "prod", "db").await);
    assert!(status.message.contains("it is limited to other namespaces"), "{}", status.message);

    let good =
        grant_for("fresh", "alice", SignedDuration::ZERO, SignedDuration::from_hours(1)).uid("uid-alice-1").build();
    world.issue_grant(&good).await.unwrap();
    delete_secret_as(&world, "alice", "prod", "db").await.expect("a fresh grant satisfies the policy");

    // The same grant is useless to the re-created account that reuses the name alice.
    world.secret("prod", "db").await;
    let status = refusal(delete_secret_as(&world, "alice-recreated", "prod", "db").await);
    assert!(status.message.contains("account with another UID"), "{}", status.message);
}

#[tokio::test]
async fn nobody_but_the_controller_creates_or_edits_grants() {
    let world = World::new().await;
    let forged = grant_for("forged", "alice", SignedDuration::ZERO, SignedDuration::from_hours(1)).build();
    // RBAC stops alice first.
    let grants_as_alice: Api<StepUpGrant> = Api::all(world.env.client("alice").await);
    let status = refusal(grants_as_alice.create(&PostParams::default(), &forged).await);
    assert_eq!(status.code, 403);
    // The chart's admission policy (and behind it the webhook) stops anyone RBAC lets through,
    // even cluster-admins and break-glass.
    for who in ["admin", "carol"] {
        let mut g = forged.clone();
        g.metadata.name = Some(format!("forged-by-{who}"));
        let api: Api<StepUpGrant> = Api::all(world.env.client(who).await);
        let status = refusal(api.create(&PostParams::default(), &g).await);
        if who == "admin" {
            assert!(
                status.message.contains("only the stepup controller (its pod-bound credential) writes StepUpGrants"),
                "{}",
                status.message
            );
        }
    }
    // Editing an issued grant: RBAC for alice, the webhook (and the immutable spec) for admin.
    let issued = world
        .issue_grant(&grant_for("real", "alice", SignedDuration::ZERO, SignedDuration::from_hours(1)).build())
        .await
        .unwrap();
    let stretch = serde_json::json!({"metadata": {"labels": {"tampered": "yes"}}});
    refusal(grants_as_alice.patch("real", &PatchParams::default(), &Patch::Merge(&stretch)).await);
    let as_admin: Api<StepUpGrant> = Api::all(world.admin.clone());
    let status = refusal(as_admin.patch("real", &PatchParams::default(), &Patch::Merge(&stretch)).await);
    assert!(status.message.contains("only the stepup controller"), "{}", status.message);
    let extend = serde_json::json!({"spec": {"expiresAt": "2099-01-01T00:00:00Z"}});
    let status =
        refusal(world.controller_grants().patch("real", &PatchParams::default(), &Patch::Merge(&extend)).await);
    assert!(
        status.message.contains("a grant's spec is immutable"),
        "even the controller cannot stretch a grant: {}",
        status.message
    );
    assert_eq!(issued.spec.expires_at, as_admin.get("real").await.unwrap().spec.expires_at);
}

#[tokio::test]
async fn requests_in_kube_system_and_on_leases_never_reach_the_webhook() {
    let world = World::new().await;
    // The lease rule routes leases to the webhook, so only the match condition keeps them away.
    let leases_too = policy("all-leases").rule(&[Create, Update, Delete], "coordination.k8s.io", &["leases"]).build();
    world.apply_policies(&[prod_secrets(), leases_too]).await;
    // Whether a request reached the webhook is asked of the API server's audit log, one request
    // at a time: every review the webhook answers carries a `decision` annotation. (A global
    // review counter also counts what the controller does meanwhile, such as removing an
    // earlier scenario's expired grants.) Names are this run's own: the log outlives runs.
    let run = std::process::id();
    let reviewed = |verb: &'static str, resource: &'static str, name: String| {
        let env = &world.env;
        async move {
            let annotations = env
                .audit_annotations(|e| {
                    e["verb"] == verb
                        && e["objectRef"]["resource"] == resource
                        && e["objectRef"]["name"] == name.as_str()
                })
                .await;
            let keys: Vec<&String> = annotations.as_object().map(|a| a.keys().collect()).unwrap_or_default();
            keys.iter().any(|k| k.ends_with(".stepup.dev/decision"))
        }
    };

    let kube_system = format!("not-for-stepup-{run}");
    world.secret("kube-system", &kube_system).await;
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), "kube-system");
    secrets.delete(&kube_system, &DeleteParams::default()).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(world.env.client("alice").await, "dev");
    let lease_name = format!("e2e-lease-{run}");
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name, "namespace": "dev"},
        "spec": {"holderIdentity": "alice"}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.expect("lease created");
    leases.delete(&lease_name, &DeleteParams::default()).await.expect("lease deleted");

    assert!(!reviewed("create", "secrets", kube_system.clone()).await, "a kube-system create was reviewed");
    assert!(!reviewed("delete", "secrets", kube_system).await, "a kube-system delete was reviewed");
    assert!(!reviewed("create", "leases", lease_name.clone()).await, "a lease create was reviewed");
    assert!(!reviewed("delete", "leases", lease_name).await, "a lease delete was reviewed");
    // While a secret outside kube-system does reach it: the same question answers yes.
    let probe = format!("probe-{run}");
    world.secret("dev", &probe).await;
    delete_secret_as(&world, "alice", "dev", &probe).await.unwrap();
    assert!(reviewed("delete", "secrets", probe).await, "a dev secret's delete was reviewed");
}

#[tokio::test]
async fn invalid_policies_are_rejected_at_apply_naming_the_field() {
    let world = World::new().await;
    let cases = [
        (
            r#"{"operations":["DESTROY"],"apiGroups":[""],"resources":["secrets"]}"#,
            "",
            "spec.match.rules[0].operations[0]: Unsupported value: \"DESTROY\"",
        ),
        (
            r#"{"operations":["DELETE"],"apiGroups":[""],"resources":["pods/exec/x"]}"#,
            "",
            "spec.match.rules[0].resources[0]",
        ),
        (
            r#"{"operations":["DELETE"],"apiGroups":[""],"resources":["secrets"]}"#,
            "maxAge: 48h",
            "maxAge must be between 1s and 24h",
        ),
        (r#"{"operations":["DELETE"],"apiGroups":[""],"resources":["secrets"]}"#, "maxAge: soon", "spec.maxAge"),
        (
            r#"{"operations":["DELETE"],"apiGroups":[""],"resources":["secrets"]}"#,
            "maxAge: 5 minutes",
            "spec.maxAge: Invalid value: \"5 minutes\": must be a duration such as 15m, 90s or 1h30m",
        ),
        (
            r#"{"operations":["DELETE"],"apiGroups":["Apps"],"resources":["secrets"]}"#,
            "",
            "spec.match.rules[0].apiGroups[0]: Invalid value: \"Apps\": must be an API group",
        ),
        // Issue 31: verbs are authorization's; a rule needs an operation or a verb, a verb is
        // lower case, and a write verb on a resource admission sees goes to operations.
        (
            r#"{"apiGroups":[""],"resources":["secrets"]}"#,
            "",
            "spec.match.rules[0].operations: Invalid value: a rule needs at least one operation",
        ),
        (
            r#"{"verbs":["GET"],"apiGroups":[""],"resources":["secrets"]}"#,
            "",
            "spec.match.rules[0].verbs[0]: Unsupported value: \"GET\"",
        ),
        (
            r#"{"verbs":["get","delete"],"apiGroups":[""],"resources":["secrets"]}"#,
            "",
            "spec.match.rules[0].verbs[1]: \"delete\" on secrets is decided by admission, which sees the object: name it in operations (DELETE) instead",
        ),
    ];
    for (i, (rule, extra, expected)) in cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: stepup.dev/v1alpha1\nkind: StepUpPolicy\nmetadata: {{name: invalid-{i}}}\nspec:\n  {extra}\n  match:\n    rules: [{rule}]\n"
        );
        let path = std::env::temp_dir().join(format!("stepup-invalid-{i}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        let out = world.env.kubectl("policy-writer", &["apply", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
        // Sentences, not the schema's internals.
        assert!(!stderr.contains("should match") && !stderr.contains("google.protobuf"), "case {i}: {stderr}");
    }
    // Empty rule list.
    let path = std::env::temp_dir().join("stepup-invalid-empty.yaml");
    std::fs::write(&path, "apiVersion: stepup.dev/v1alpha1\nkind: StepUpPolicy\nmetadata: {name: empty}\nspec:\n  match:\n    rules: []\n").unwrap();
    let out = world.env.kubectl("policy-writer", &["apply", "-f", path.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.match.rules"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the schema cannot express, the webhook's own compile step refuses, naming the field.
    let path = std::env::temp_dir().join("stepup-invalid-selector.yaml");
    std::fs::write(
        &path,
        "apiVersion: stepup.dev/v1alpha1\nkind: StepUpPolicy\nmetadata: {name: bad-selector}\nspec:\n  match:\n    rules: [{operations: [DELETE], apiGroups: [\"\"], resources: [secrets]}]\n    namespaceSelector:\n      matchExpressions: [{key: env, operator: Near}]\n",
    )
    .unwrap();
    let out = world.env.kubectl("policy-writer", &["apply", "-f", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.match.namespaceSelector.matchExpressions[0].operator"), "{stderr}");
}

#[tokio::test]
async fn changing_policies_is_itself_a_step_up_operation_for_people() {
    let world = World::new().await;
    let api: Api<StepUpPolicy> = Api::all(world.admin.clone());
    let p = policy("admin-made").rule(&[Delete], "", &["configmaps"]).build();
    let status = refusal(api.create(&PostParams::default(), &p).await);
    assert!(status.message.contains("stepup-builtin-policy-changes"), "{}", status.message);
    world
        .issue_grant(
            &grant_for("admin-grant", "admin", SignedDuration::ZERO, SignedDuration::from_hours(1))
                .uid("uid-admin")
                .build(),
        )
        .await
        .unwrap();
    api.create(&PostParams::default(), &p).await.expect("with a grant the admin may change policies");
}

#[tokio::test]
async fn every_example_policy_is_accepted_by_the_api_server_and_the_webhook() {
    let world = World::new().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples");
    let out = world.env.kubectl("policy-writer", &["apply", "--dry-run=server", "-f", dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = std::fs::read_dir(dir).unwrap().count();
    assert!(stdout.lines().count() >= files, "every example was applied: {stdout}");
}

#[tokio::test]
async fn granting_impersonation_is_a_step_up_operation_and_impersonators_borrow_grants() {
    let world = World::new().await;
    let rbac: StepUpPolicy = serde_yaml_policy(include_str!("../../manifests/examples/rbac-changes.yaml"));
    world.apply_policies(&[rbac, prod_secrets()]).await;
    // Handing out the impersonate verb is an RBAC change: refused without a reasoned grant.
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "e2e-impersonator"},
        "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]
    });
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(world.admin.clone());
    let _ = roles.delete("e2e-impersonator", &DeleteParams::default()).await;
    let status = refusal(roles.create(&PostParams::default(), &serde_json::from_value(role.clone()).unwrap()).await);
    assert!(
        status.message.contains("policy \"rbac-changes\"") && status.message.contains("reason-required=true"),
        "{}",
        status.message
    );

    // Admission sees the impersonated user: an admin impersonating alice uses alice's grant.
    world.secret("prod", "db").await;
    let alice_grant =
        grant_for("alice-now", "alice", SignedDuration::ZERO, SignedDuration::from_hours(1)).uid("uid-alice-1").build();
    world.issue_grant(&alice_grant).await.unwrap();
    let out = world.env.kubectl(
        "admin",
        &[
            "--as",
            "alice",
            "--as-uid",
            "uid-alice-1",
            "--as-group",
            "developers",
            "-n",
            "prod",
            "delete",
            "secret",
            "db",
        ],
    );
    assert!(out.status.success(), "the impersonator borrowed alice's grant: {}", String::from_utf8_lossy(&out.stderr));
}

fn serde_yaml_policy(text: &str) -> StepUpPolicy {
    serde_yaml::from_str(text).expect("example policy parses")
}
