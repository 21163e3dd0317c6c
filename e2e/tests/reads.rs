//! Issue-31 scenarios: reads (get, list, watch) that policies name, enforced by the API
//! server's authorization webhook (`stepup authorizer-config`), for real users with real RBAC.
//! Run with `make e2e` (one test at a time: scenarios share the cluster's policies).

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, WatchParams},
};
use kube_stepup::api::{StepUpGrant, StepUpPolicy, Verb::*};
use stepup_core::testing::policy;
use stepup_e2e::{World, grant_for, refusal};

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

    // Revoked: refused again as soon as the webhook's cache has let it go.
    let grants: Api<StepUpGrant> = Api::all(world.controller.clone());
    grants.delete("alice-reads", &DeleteParams::default()).await.expect("grant deleted");
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
    // A cluster-admin impersonating alice is alice.
    let out = world.env.kubectl("admin", &["-n", "prod", "get", "secret", "db", "--as", "alice", "-o", "name"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("policy \"prod-secret-reads\""), "{stderr}");
}
