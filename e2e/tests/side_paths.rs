//! Issue-31 scenarios: the side paths to what a policy protects (README, "Side paths"), each run
//! the way an attacker with a developer's credential runs it, against the shipped examples.
//! alice is a developer with the built-in `edit` role in prod and dev.
//! Run with `make e2e` (one test at a time: scenarios share the cluster's policies).

use stepup_core::api::StepUpPolicy;
use stepup_e2e::{
    World,
    attack::{refused, text},
};

/// The policies of an example file (several YAML documents).
fn example(text: &str) -> Vec<StepUpPolicy> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <StepUpPolicy as serde::Deserialize>::deserialize(d).expect("example policy parses"))
        .collect()
}

fn workloads() -> Vec<StepUpPolicy> {
    example(include_str!("../../manifests/examples/prod-workloads.yaml"))
}

/// A pod that takes prod's `db` Secret (volume and env) and runs as another service account.
fn pod(namespace: &str, name: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "{namespace}"}},
  "spec": {{"serviceAccountName": "default",
    "containers": [{{"name": "c", "image": "busybox", "command": ["cat", "/s/password"],
      "envFrom": [{{"secretRef": {{"name": "db"}}}}], "volumeMounts": [{{"name": "s", "mountPath": "/s"}}]}}],
    "volumes": [{{"name": "s", "secret": {{"secretName": "db"}}}}]}}}}"#
    )
}

#[tokio::test]
async fn a_pod_that_mounts_a_prod_secret_or_a_changed_pod_template_needs_a_grant() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.secret("dev", "db").await;
    world.apply_policies(&workloads()).await;
    let name = format!("reader-{}", std::process::id());

    let out = world.env.kubectl_stdin("alice", &["create", "-f", "-"], &pod("prod", &name));
    let message = refused(&out);
    assert!(message.contains("denied the request: kube-stepup: create pods"), "{message}");
    assert!(message.contains("policy \"prod-workloads\""), "{message}");
    assert!(message.contains("routine deploys belong to the GitOps controller"), "{message}");
    // A Deployment (the same pod one step removed), and kubectl debug --copy-to's new pod.
    let out = world.env.kubectl(
        "alice",
        &["-n", "prod", "create", "deployment", &name, "--image=busybox", "--dry-run=server", "-o", "name"],
    );
    assert!(refused(&out).contains("policy \"prod-workloads\""), "{}", text(&out));
    // dev is not prod: the same pod goes through (server-side dry run: nothing is left behind).
    let out = world.env.kubectl_stdin("alice", &["create", "--dry-run=server", "-f", "-"], &pod("dev", &name));
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn minting_a_prod_service_account_token_needs_a_grant() {
    let world = World::new().await;
    world.apply_policies(&workloads()).await;
    let out = world.env.kubectl("alice", &["-n", "prod", "create", "token", "default"]);
    let message = refused(&out);
    assert!(message.contains("policy \"prod-workloads\""), "{message}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("eyJ"), "no token was printed");
    let out = world.env.kubectl("alice", &["-n", "dev", "create", "token", "default"]);
    assert!(out.status.success(), "dev tokens are not protected: {}", text(&out));
}

#[tokio::test]
async fn the_kubelet_api_through_nodes_proxy_needs_a_grant() {
    let world = World::new().await;
    world.apply_policies(&workloads()).await;
    // No kubelet runs here; the authorizer answers before the API server looks for the node.
    for who in [&["--as", "alice", "--as-group", "developers"][..], &["--as", "bob"][..]] {
        let args = [who, &["get", "--raw", "/api/v1/nodes/node-1/proxy/pods"][..]].concat();
        let out = world.env.kubectl("admin", &args);
        let message = refused(&out);
        assert!(
            message.contains("cannot get resource \"nodes/proxy\"") && message.contains("policy \"node-proxy\""),
            "{message}"
        );
        // Exec in a container through the kubelet's API: a POST to the node's proxy.
        let exec = "/api/v1/nodes/node-1/proxy/exec/prod/web/c?command=sh&input=1&output=1";
        let args = [who, &["create", "--raw", exec, "-f", "-"][..]].concat();
        let out = world.env.kubectl_stdin("admin", &args, "{}");
        let message = refused(&out);
        assert!(
            message.contains("cannot create resource \"nodes/proxy\"") && message.contains("policy \"node-proxy\""),
            "{message}"
        );
    }
}

#[tokio::test]
async fn every_way_into_a_prod_pod_needs_a_grant() {
    let world = World::new().await;
    world.apply_policies(&example(include_str!("../../manifests/examples/prod-exec.yaml"))).await;
    let name = format!("web-{}", std::process::id());
    let out = world.env.kubectl("admin", &["-n", "prod", "run", &name, "--image=busybox", "--restart=Never"]);
    assert!(out.status.success(), "{}", text(&out));
    // CONNECT is admitted before the pod is looked up (or found running): each is refused here.
    for path in [
        format!("/api/v1/namespaces/prod/pods/{name}/exec?command=sh&stdout=true"),
        format!("/api/v1/namespaces/prod/pods/{name}/attach?stdout=true"),
        format!("/api/v1/namespaces/prod/pods/{name}/portforward?ports=80"),
        format!("/api/v1/namespaces/prod/pods/{name}/proxy/"),
        "/api/v1/namespaces/prod/services/web/proxy/".to_owned(),
    ] {
        let out = world.env.kubectl("alice", &["get", "--raw", &path]);
        let message = refused(&out);
        assert!(
            message.contains("policy \"prod-exec\"") && message.contains("within the last 5m"),
            "{path}: {message}"
        );
    }
    // kubectl debug: an ephemeral container added to the pod. `edit` does not allow it; a team
    // that gives its developers the right (as here) meets the policy instead.
    let rbac = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: e2e-debug, namespace: prod}\n\
         rules: [{apiGroups: [''], resources: [pods/ephemeralcontainers], verbs: [get, patch, update]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: e2e-debug, namespace: prod}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: e2e-debug}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]\n";
    let out = world.env.kubectl_stdin("admin", &["apply", "-f", "-"], rbac);
    assert!(out.status.success(), "{}", text(&out));
    let out = world.env.kubectl("alice", &["-n", "prod", "debug", &name, "--image=busybox", "-c", "dbg"]);
    let _ = world.env.kubectl_stdin("admin", &["delete", "-f", "-", "--wait=false"], rbac);
    let message = refused(&out);
    assert!(message.contains("policy \"prod-exec\""), "{message}");
    let _ = world.env.kubectl("admin", &["-n", "prod", "delete", "pod", &name, "--wait=false"]);
}

#[tokio::test]
async fn approving_a_client_certificate_in_the_break_glass_group_needs_a_reasoned_grant() {
    let world = World::new().await;
    world.apply_policies(&example(include_str!("../../manifests/examples/csr-approval.yaml"))).await;
    let name = format!("mallory-{}", std::process::id());
    // A CSR asking for a client certificate in the break-glass group, which passes every policy
    // (Kubernetes itself refuses `system:masters` for this signer). Created by the admin: who
    // asks does not matter, who approves does.
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let csr = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-subj", "/O=stepup:break-glass/CN=mallory", "-keyout"])
        .arg(dir.join("key.pem"))
        .output()
        .expect("openssl runs");
    assert!(csr.status.success(), "{}", String::from_utf8_lossy(&csr.stderr));
    let request = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &csr.stdout);
    let manifest = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\n\
         spec: {{request: {request}, signerName: kubernetes.io/kube-apiserver-client, usages: [client auth]}}\n"
    );
    let out = world.env.kubectl_stdin("admin", &["create", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", text(&out));
    // alice may approve such requests (as a platform team might let a few people).
    let rbac = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-csr-approver}\n\
                rules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [get, list]}\n\
                - {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/approval], verbs: [update]}\n\
                - {apiGroups: [certificates.k8s.io], resources: [signers], resourceNames: [kubernetes.io/kube-apiserver-client], verbs: [approve]}\n\
                ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: e2e-csr-approver}\n\
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-csr-approver}\n\
                subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]\n";
    let out = world.env.kubectl_stdin("admin", &["apply", "-f", "-"], rbac);
    assert!(out.status.success(), "{}", text(&out));
    let out = world.env.kubectl("alice", &["certificate", "approve", &name]);
    let _ = world.env.kubectl_stdin("admin", &["delete", "-f", "-", "--wait=false"], rbac);
    let message = refused(&out);
    assert!(message.contains("policy \"csr-approval\"") && message.contains("reason-required=true"), "{message}");
    let out = world.env.kubectl("admin", &["get", "csr", &name, "-o", "jsonpath={.status.conditions}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "not approved: {}", text(&out));
    let _ = world.env.kubectl("admin", &["delete", "csr", &name, "--wait=false"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bind_and_escalate_give_nothing_without_a_reasoned_grant() {
    let world = World::new().await;
    // A team lead's rights in prod, as some platforms hand out: write roles and bindings, and
    // `bind` and `escalate`, which let one grant what one does not hold.
    let lead = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: e2e-lead, namespace: prod}\n\
                rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings, clusterroles], verbs: [create, get, bind, escalate]}]\n\
                ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: e2e-lead, namespace: prod}\n\
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: e2e-lead}\n\
                subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]\n";
    let out = world.env.kubectl_stdin("admin", &["apply", "-f", "-"], lead);
    assert!(out.status.success(), "{}", text(&out));
    // Given before the policy: changing RBAC afterwards is a step-up operation for the admin too.
    world.apply_policies(&example(include_str!("../../manifests/examples/rbac-changes.yaml"))).await;
    // bind: alice binds herself to cluster-admin in prod.
    let out = world.env.kubectl(
        "alice",
        &[
            "-n",
            "prod",
            "create",
            "rolebinding",
            "mine",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "--dry-run=server",
        ],
    );
    let bind = refused(&out);
    // escalate: a Role with rights alice lacks.
    let out = world.env.kubectl(
        "alice",
        &["-n", "prod", "create", "role", "everything", "--verb=*", "--resource=*.*", "--dry-run=server"],
    );
    let escalate = refused(&out);
    world.reset().await;
    let out = world.env.kubectl_stdin("admin", &["delete", "-f", "-", "--wait=false"], lead);
    assert!(out.status.success(), "the lead's rights are taken back: {}", text(&out));
    for message in [bind, escalate] {
        assert!(message.contains("policy \"rbac-changes\"") && message.contains("reason-required=true"), "{message}");
    }
}
