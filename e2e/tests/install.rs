//! Issue-6 scenario: the Helm chart (charts/stepup) against the real kube-apiserver.
//!
//! The chart is installed next to the stepup the other scenarios run, under names of its own:
//! release and namespace `stepup-chart-e2e`, fullnameOverride `stepup-chart-e2e` (so its
//! ClusterRoles, bindings and ValidatingAdmissionPolicies do not collide), webhook configuration
//! `stepup-chart-e2e.dev`, and user, admin and installer groups nobody else has. There is no
//! kubelet, scheduler or controller-manager here: no pod runs, so what is checked is that the
//! API server accepts every object (server-side validation, the restricted Pod Security
//! Standard), what the chart's RBAC allows (`kubectl auth can-i`), what its admission policies
//! refuse, and that uninstalling removes it all.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use anyhow::bail;
use stepup_e2e::{Env, World, eventually};

const RELEASE: &str = "stepup-chart-e2e";
const NAMESPACE: &str = "stepup-chart-e2e";
const WEBHOOK_CONFIG: &str = "stepup-chart-e2e.dev";
const USERS: &str = "stepup-chart-e2e:users";
const ADMINS: &str = "stepup-chart-e2e:admins";
const INSTALLERS: &str = "stepup-chart-e2e:installers";
const CONTROLLER_SA: &str = "system:serviceaccount:stepup-chart-e2e:stepup-chart-e2e-controller";
const WEBHOOK_SA: &str = "system:serviceaccount:stepup-chart-e2e:stepup-chart-e2e-webhook";

/// The chart as a platform team gets it: the package `make dist` builds, not the source tree.
fn chart(env: &Env) -> PathBuf {
    let dist = stepup_e2e::dist(env);
    std::fs::read_dir(&dist)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .expect("make dist packages the chart")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// helm as the cluster admin.
fn helm(env: &Env, args: &[&str]) -> Output {
    Command::new(env.var("HELM"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig("admin"))
        .args(args)
        .output()
        .expect("helm runs")
}

/// kubectl as the admin, with stdin.
fn kubectl_stdin(env: &Env, args: &[&str], stdin: &str) -> Output {
    env.kubectl_stdin("admin", args, stdin)
}

fn values() -> String {
    format!(
        r#"fullnameOverride: {RELEASE}
webhookConfigurationName: {WEBHOOK_CONFIG}
rbac:
  userGroups: ["{USERS}"]
  adminGroups: ["{ADMINS}"]
admissionPolicy:
  installerGroups: ["{INSTALLERS}"]
"#
    )
}

/// Uninstalls the release (and the probe webhook configuration) when the scenario ends, also
/// when it fails, so that a rerun starts clean and the other scenarios never meet the chart's
/// admission policies.
struct Installed<'a> {
    env: &'a Env,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let _ = helm(self.env, &["uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found"]);
        // The policy that protects the probe is gone; the API server notices within seconds.
        for _ in 0..50 {
            let out = self
                .env
                .kubectl("admin", &["delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "--ignore-not-found"]);
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One `kubectl auth can-i` question and the documented answer.
struct Ask {
    verb: String,
    resource: String,
    subresource: String,
    namespace: String,
    allowed: bool,
}

/// `verb` on `resource` (`plural.group`, `plural/name`, or `plural.group:subresource`), in
/// `namespace` ("" for cluster-wide).
fn ask(verb: &str, resource: &str, namespace: &str, allowed: bool) -> Ask {
    let (resource, subresource) = match resource.split_once(':') {
        Some((r, s)) => (r.to_owned(), s.to_owned()),
        None => (resource.to_owned(), String::new()),
    };
    Ask { verb: verb.to_owned(), resource, subresource, namespace: namespace.to_owned(), allowed }
}

/// Asks kubectl each question as `who` (`--as` / `--as-group` arguments), a few at a time;
/// returns the answers that differ from the documented ones, and a printable table.
fn can_i(env: &Env, who: &[&str], asks: &[Ask]) -> (Vec<String>, String) {
    let answer = |a: &Ask| {
        let mut args = vec!["auth", "can-i", a.verb.as_str(), a.resource.as_str()];
        if !a.subresource.is_empty() {
            args.extend(["--subresource", a.subresource.as_str()]);
        }
        if !a.namespace.is_empty() {
            args.extend(["-n", a.namespace.as_str()]);
        }
        args.extend(who);
        env.kubectl("admin", &args)
    };
    let outputs: Vec<Output> = asks
        .chunks(12)
        .flat_map(|chunk| {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk.iter().map(|a| s.spawn(move || answer(a))).collect();
                handles.into_iter().map(|h| h.join().expect("kubectl thread")).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut wrong = Vec::new();
    let mut table = String::new();
    for (a, out) in asks.iter().zip(&outputs) {
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let what = format!(
            "{} {}{}{}",
            a.verb,
            a.resource,
            if a.subresource.is_empty() { String::new() } else { format!(" (subresource {})", a.subresource) },
            if a.namespace.is_empty() { String::new() } else { format!(" -n {}", a.namespace) }
        );
        table.push_str(&format!("  {what:<72} {answer}\n"));
        if answer != "yes" && answer != "no" {
            wrong.push(format!("{what}: kubectl said {:?}", text(out)));
        } else if (answer == "yes") != a.allowed {
            wrong.push(format!("{what}: {answer}, documented {}", if a.allowed { "yes" } else { "no" }));
        }
    }
    (wrong, table)
}

const VERBS: [&str; 8] = ["create", "get", "list", "watch", "update", "patch", "delete", "deletecollection"];

/// Every verb on every stepup kind, allowed exactly for the `(kind, verbs)` listed.
fn stepup_matrix(allowed: &[(&str, &[&str])]) -> Vec<Ask> {
    let mut asks = Vec::new();
    for kind in ["stepuppolicies", "stepupgrants", "stepupchallenges", "stepupenrollments"] {
        let verbs = allowed.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v).unwrap_or(&[]);
        for verb in VERBS {
            asks.push(ask(verb, &format!("{kind}.stepup.dev"), "", verbs.contains(&verb)));
        }
    }
    asks
}

#[tokio::test]
async fn the_chart_installs_grants_the_documented_rights_and_uninstalls() {
    let world = World::new().await;
    let env = &world.env;

    // A leftover of an interrupted run would make `helm install` fail.
    let _ = helm(env, &["uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found"]);
    // The namespace enforces the restricted Pod Security Standard and warns about workloads
    // whose pods would violate it; nothing deletes namespaces here, so it is kept between runs.
    let out = kubectl_stdin(
        env,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n"
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    // What the serviceaccount controller would do: pods need their namespace's `default` account.
    let _ = env.kubectl("admin", &["create", "serviceaccount", "default", "-n", NAMESPACE]);

    // ---------------------------------------------------------------- install
    let values_file = PathBuf::from(env.var("STEPUP_E2E_DIR")).join("stepup-chart-e2e-values.yaml");
    std::fs::write(&values_file, values()).unwrap();
    let chart = chart(env);
    let out = helm(
        env,
        &[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "-f",
            values_file.to_str().unwrap(),
        ],
    );
    let installed = Installed { env };
    let output = text(&out);
    assert!(out.status.success(), "helm install failed: {output}");
    assert!(output.contains("STATUS: deployed"), "{output}");
    assert!(!output.contains("would violate PodSecurity"), "the pods must meet the restricted standard: {output}");
    assert!(output.contains("kubectl stepup enroll"), "NOTES tell the next steps: {output}");

    // Every object of the release exists (the API server validated and stored each one).
    let out = helm(env, &["get", "manifest", RELEASE, "-n", NAMESPACE]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = String::from_utf8_lossy(&out.stdout).into_owned();
    let kinds = manifest.lines().filter(|l| l.starts_with("kind: ")).count();
    assert!(kinds >= 25, "{kinds} objects rendered:\n{manifest}");
    let out = kubectl_stdin(env, &["get", "-f", "-", "-o", "name"], &manifest);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), kinds, "{}", text(&out));
    for expected in [
        format!("deployment.apps/{RELEASE}-webhook"),
        format!("deployment.apps/{RELEASE}-controller"),
        format!("service/{RELEASE}-webhook"),
        format!("poddisruptionbudget.policy/{RELEASE}-webhook"),
        format!("clusterrole.rbac.authorization.k8s.io/{RELEASE}-user"),
        format!("clusterrole.rbac.authorization.k8s.io/{RELEASE}-admin"),
        format!("clusterrole.rbac.authorization.k8s.io/{RELEASE}-view"),
        format!("validatingadmissionpolicy.admissionregistration.k8s.io/{RELEASE}-protect-webhook-configuration"),
        format!("validatingadmissionpolicy.admissionregistration.k8s.io/{RELEASE}-protect-crds"),
    ] {
        assert!(String::from_utf8_lossy(&out.stdout).contains(&expected), "{expected} missing: {}", text(&out));
    }
    // The chart never renders the webhook configuration: the controller owns it.
    assert!(!manifest.contains("kind: ValidatingWebhookConfiguration"), "{manifest}");

    // The `helm test` Pod is valid too (server-side dry run; it cannot run without a kubelet).
    let out = helm(env, &["get", "hooks", RELEASE, "-n", NAMESPACE]);
    assert!(out.status.success(), "{}", text(&out));
    let hooks = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(hooks.contains("helm.sh/hook: test"), "{hooks}");
    let out = kubectl_stdin(env, &["create", "--dry-run=server", "-f", "-"], &hooks);
    assert!(out.status.success(), "the test Pod is refused: {}", text(&out));

    // ---------------------------------------------------------------- RBAC
    let mut failures = Vec::new();
    let mut report = String::new();
    let mut check = |title: &str, who: &[&str], asks: Vec<Ask>| {
        let (wrong, table) = can_i(env, who, &asks);
        report.push_str(&format!("{title}\n{table}"));
        failures.extend(wrong.into_iter().map(|w| format!("{title}: {w}")));
    };

    // alice, a member of the chart's user group, gets exactly the documented rights.
    let mut asks = stepup_matrix(&[
        ("stepupchallenges", &["create", "get", "list", "watch", "patch", "delete"]),
        ("stepupenrollments", &["create", "get", "list", "watch", "update", "patch"]),
        ("stepuppolicies", &["get", "list", "watch"]),
        ("stepupgrants", &["get", "list", "watch", "delete"]),
    ]);
    asks.extend([
        ask("update", "stepupgrants.stepup.dev:status", "", false),
        ask("update", "stepupenrollments.stepup.dev:status", "", false),
        ask("get", "secrets", NAMESPACE, false),
        ask("list", "secrets", NAMESPACE, false),
        ask("watch", "secrets", NAMESPACE, false),
        ask("list", "events", NAMESPACE, false),
        ask("update", "leases", NAMESPACE, false),
        ask("delete", "validatingwebhookconfigurations", "", false),
    ]);
    check("alice (group stepup-chart-e2e:users)", &["--as", "alice", "--as-group", USERS], asks);

    // bob, a stepup admin: approvals, resets and revocations, stepup's Events; never grants.
    let mut asks = stepup_matrix(&[
        ("stepupchallenges", &["create", "get", "list", "watch", "delete", "deletecollection"]),
        ("stepupenrollments", &["create", "get", "list", "watch", "update", "patch", "delete", "deletecollection"]),
        ("stepuppolicies", &["get", "list", "watch"]),
        ("stepupgrants", &["get", "list", "watch", "delete", "deletecollection"]),
    ]);
    asks.extend([
        ask("list", "events", NAMESPACE, true),
        ask("list", "events.events.k8s.io", NAMESPACE, true),
        ask("list", "events", "default", false),
        ask("get", "secrets", NAMESPACE, false),
    ]);
    check("bob (group stepup-chart-e2e:admins)", &["--as", "bob", "--as-group", ADMINS], asks);

    // The controller: the only writer of grants; secrets and its lease in its namespace only;
    // its own webhook configuration and ClusterRole only.
    let controller_config = format!("validatingwebhookconfigurations/{WEBHOOK_CONFIG}");
    let own_role = format!("clusterroles/{RELEASE}-controller");
    let own_lease = format!("leases/{RELEASE}-controller");
    let mut asks = stepup_matrix(&[
        ("stepupchallenges", &VERBS),
        ("stepupenrollments", &VERBS),
        ("stepupgrants", &VERBS),
        ("stepuppolicies", &["get", "list", "watch"]),
    ]);
    asks.extend([
        ask("update", "stepuppolicies.stepup.dev:status", "", true),
        ask("patch", "stepupgrants.stepup.dev:status", "", true),
        ask("update", "stepupgrants.stepup.dev:finalizers", "", true),
        ask("create", "secrets", NAMESPACE, true),
        ask("delete", "secrets", NAMESPACE, true),
        ask("get", "secrets", "default", false),
        ask("get", "secrets", "stepup-system", false),
        ask("create", "leases", NAMESPACE, true),
        ask("update", &own_lease, NAMESPACE, true),
        ask("update", "leases/someone-elses", NAMESPACE, false),
        ask("create", "events.events.k8s.io", NAMESPACE, true),
        ask("create", "events.events.k8s.io", "default", false),
        ask("create", "validatingwebhookconfigurations", "", true),
        ask("watch", "validatingwebhookconfigurations", "", true),
        ask("update", &controller_config, "", true),
        ask("delete", &controller_config, "", true),
        ask("update", "validatingwebhookconfigurations/stepup.dev", "", false),
        ask("get", &own_role, "", true),
        ask("get", "clusterroles/cluster-admin", "", false),
        ask("list", "namespaces", "", false),
    ]);
    check("controller service account", &["--as", CONTROLLER_SA], asks);

    // The webhook only reads (challenges too, for the per-user limits), and publishes Events in its namespace.
    let mut asks = stepup_matrix(&[
        ("stepuppolicies", &["get", "list", "watch"]),
        ("stepupgrants", &["get", "list", "watch"]),
        ("stepupchallenges", &["get", "list", "watch"]),
    ]);
    asks.extend([
        ask("list", "namespaces", "", true),
        ask("watch", "namespaces", "", true),
        ask("create", "events.events.k8s.io", NAMESPACE, true),
        ask("patch", "events.events.k8s.io", NAMESPACE, true),
        ask("create", "events.events.k8s.io", "default", false),
        ask("get", "secrets", NAMESPACE, false),
    ]);
    check("webhook service account", &["--as", WEBHOOK_SA], asks);

    println!("kubectl auth can-i under the chart's roles:\n{report}");
    assert!(failures.is_empty(), "rights differ from the documented ones:\n{}", failures.join("\n"));

    // ---------------------------------------------------------------- example policies
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples");
    let out = env.kubectl("policy-writer", &["apply", "--dry-run=server", "-f", dir]);
    assert!(out.status.success(), "an example policy is refused: {}", text(&out));
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= files, "{}", text(&out));

    // ---------------------------------------------------------------- admission policies
    // A stand-in for the configuration the controller would create (no webhooks: it routes
    // nothing), created as an installer: the policy refuses even its creation to others.
    // The e2e suite's own copy of these policies guards the same cluster-wide CRDs: an
    // installer here belongs to both installer groups.
    let suite_installers = env.var("STEPUP_INSTALLER_GROUP");
    let installer =
        ["--as", "admin", "--as-group", "system:masters", "--as-group", INSTALLERS, "--as-group", suite_installers];
    let out = kubectl_stdin(
        env,
        &[&installer[..], &["apply", "-f", "-"]].concat(),
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: {WEBHOOK_CONFIG}\nwebhooks: []\n"
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let delete_config = ["delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "--dry-run=server"];
    let change_crd = [
        "patch",
        "crd",
        "stepupgrants.stepup.dev",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/names/categories/-","value":"stepup-chart-e2e-probe"}]"#,
        "--dry-run=server",
    ];
    // Even a cluster-admin is refused (the API server takes a moment to load new policies).
    for args in [&delete_config[..], &change_crd[..]] {
        let refused = eventually(Duration::from_secs(20), || async {
            let out = env.kubectl("admin", args);
            let said = text(&out);
            if !out.status.success() && said.contains("ValidatingAdmissionPolicy") && said.contains("kube-stepup") {
                Ok(said)
            } else {
                bail!("not refused yet: {said}")
            }
        })
        .await
        .expect("the chart's admission policy refuses a cluster-admin");
        // The release's policy or the suite's identical one, whichever the API server asks first.
        assert!(refused.contains("-protect-"), "{refused}");
    }
    // The controller's name alone is a mask (only its pod-bound credential writes the
    // configuration, and it never deletes it); the installer group may change both.
    let as_controller = [&delete_config[..], &["--as", CONTROLLER_SA]].concat();
    let out = env.kubectl("admin", &as_controller);
    assert!(!out.status.success(), "wearing the controller's name deletes nothing: {}", text(&out));
    for args in [&delete_config[..], &change_crd[..]] {
        let out = env.kubectl("admin", &[args, &installer[..]].concat());
        assert!(out.status.success(), "an installer may: {}", text(&out));
    }
    // Re-applying an unchanged CRD (GitOps, `kubectl apply --server-side` of the chart's crds/)
    // is no change and passes.
    let crds = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/stepup/crds/stepup.dev.yaml"));
    let out = env.kubectl(
        "admin",
        &[
            "apply",
            "--server-side",
            "--field-manager=stepup-chart-e2e",
            "--dry-run=server",
            "-f",
            crds.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "re-applying the same CRDs is allowed: {}", text(&out));

    // ---------------------------------------------------------------- uninstall
    // Removing the release removes what the admission policies guard: an installer's act.
    let out = helm(
        env,
        &[
            "uninstall",
            RELEASE,
            "-n",
            NAMESPACE,
            "--kube-as-user",
            "admin",
            "--kube-as-group",
            "system:masters",
            "--kube-as-group",
            INSTALLERS,
            "--kube-as-group",
            suite_installers,
        ],
    );
    assert!(out.status.success(), "helm uninstall failed: {}", text(&out));
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let out = env.kubectl(
        "admin",
        &[
            "get",
            "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-l",
            &selector,
            "-o",
            "name",
        ],
    );
    assert!(out.status.success() && out.stdout.is_empty(), "cluster-scoped leftovers: {}", text(&out));
    let out = env.kubectl(
        "admin",
        &[
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings,pdb",
            "-n",
            NAMESPACE,
            "-l",
            &selector,
            "-o",
            "name",
        ],
    );
    assert!(out.status.success() && out.stdout.is_empty(), "namespaced leftovers: {}", text(&out));
    // The CRDs stay (they hold the evidence), and the configuration is no longer protected.
    let out = env.kubectl("admin", &["get", "crd", "stepupgrants.stepup.dev", "-o", "name"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually(Duration::from_secs(20), || async {
        let out = env.kubectl("admin", &delete_config);
        if out.status.success() { Ok(()) } else { bail!("still refused: {}", text(&out)) }
    })
    .await
    .expect("without the chart, the configuration is not protected any more");
    drop(installed);
}
