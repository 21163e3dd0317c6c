//! stepup-load: loads a large cluster's worth of policies and grants into the e2e control
//! plane, drives the real `stepup webhook` process over TLS at fixed request rates, and
//! measures a write's latency through the real kube-apiserver with and without admission.
//!
//! Open loop: each connection has a fixed timeline of send times, and latency is measured
//! from the scheduled send time, so a slow response delays the next sends and that delay is
//! counted (coordinated omission cannot hide server latency). Each connection runs on its own
//! thread so that sends start within tens of microseconds of their schedule (tokio's timer
//! has millisecond granularity); the client's own lateness is reported as "send lag".
//!
//! Subcommands: `seed`, `churn`, `run`, `e2e` (see `--help`). Reads the control plane's env
//! files like the e2e tests (`STEPUP_E2E_DIR`). The scripts are e2e/scripts/bench*.sh.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
    },
    core::v1::{ConfigMap, Namespace},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use rustls::{
    ClientConfig, RootCertStore, pki_types::CertificateDer, pki_types::ServerName, pki_types::pem::PemObject,
};
use serde_json::{Value, json};
use stepup_core::api::{Operation, StepUpGrant, StepUpPolicy};
use stepup_core::testing::{fleet, grant, policy};
use stepup_e2e::{Env, eventually, rss_mib};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(name = "stepup-load", about = "Load and latency benchmarks of kube-stepup against the e2e control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the benchmark fleet: namespaces, policies (as policy-writer) and grants (as the
    /// controller), then wait until the webhook's caches hold them.
    Seed(SeedArgs),
    /// Churn the fleet: update a fraction of policies and grants, delete and re-create
    /// another, so the counts end where they started.
    Churn(ChurnArgs),
    /// Wait until the webhook's caches hold at least this many policies and grants.
    Wait(WaitArgs),
    /// Drive the webhook with AdmissionReviews over TLS and report latency percentiles.
    Run(RunArgs),
    /// Latency of a ConfigMap update through kube-apiserver: no admission, kube-stepup, and
    /// a ValidatingAdmissionPolicy, interleaved in one run.
    E2e(E2eArgs),
    /// A steady rate of every body for a long time while unrelated policies and grants churn:
    /// per window, wrong answers, errors, latency percentiles and the webhook's RSS. Fails on
    /// any wrong answer or error.
    Soak(SoakArgs),
}

#[derive(Args)]
struct SoakArgs {
    #[arg(long, default_value = "10m")]
    duration: humantime_lite::Dur,
    /// Figures are reported per window of this length.
    #[arg(long, default_value = "1m")]
    window: humantime_lite::Dur,
    /// Reviews per second, over all connections.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Create this many fleet policies (and the namespaces) first; 0 when `seed` ran before.
    /// The bodies need at least 1,000 (teams 42 and 43).
    #[arg(long, default_value_t = 0)]
    seed_policies: usize,
    /// Of those, only the cluster-wide ones and these teams' (42 and 43 are the bodies'): a
    /// quick seed for a short run.
    #[arg(long, value_delimiter = ',')]
    seed_teams: Vec<usize>,
    /// Policies and grants created and deleted over and over while the load runs. They
    /// concern other namespaces and users, so the right answer to every body stays the same.
    #[arg(long, default_value_t = 50)]
    churn_policies: usize,
    #[arg(long, default_value_t = 500)]
    churn_grants: usize,
    /// Webhook process to read RSS from [default: from the pid file].
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append a JSON line per window and one for the whole run to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct SeedArgs {
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    #[arg(long, default_value_t = 100_000)]
    grants: usize,
    #[arg(long, default_value_t = 4_000)]
    users: usize,
    /// Requests in flight against the API server.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// What to create.
    #[arg(long, value_enum, default_value = "all")]
    only: SeedWhat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SeedWhat {
    All,
    Policies,
    Grants,
}

#[derive(Args)]
struct WaitArgs {
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    #[arg(long, default_value_t = 100_000)]
    grants: usize,
}

#[derive(Args)]
struct ChurnArgs {
    /// Share of policies and of grants touched: a third updated, two thirds deleted and
    /// re-created.
    #[arg(long, default_value_t = 0.3)]
    fraction: f64,
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    #[arg(long, default_value_t = 100_000)]
    grants: usize,
    #[arg(long, default_value_t = 4_000)]
    users: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Body {
    /// DELETE of a Secret in a prod namespace by a user holding a fresh grant: 3 policies
    /// match, allowed by the grant.
    SecretDelete,
    /// UPDATE of a Deployment (object and oldObject, ~10 KiB): 1 Warn policy, allowed by the grant.
    DeploymentUpdate,
    /// CONNECT pods/exec: 1 policy (namespace selector, maxAge 5m), allowed by the grant.
    Exec,
    /// UPDATE of a Secret in a dev namespace: no policy applies (2,000 candidates checked).
    SecretUpdateDev,
    /// DELETE of a prod Secret by a user whose grants are all too old: denied, after the
    /// direct grant lookup against the API server.
    SecretDenied,
    /// A SubjectAccessReview (`/authorize`): get of a prod Secret by the user holding a fresh
    /// grant; the team's policy names reads: NoOpinion (RBAC decides).
    SecretRead,
    /// A SubjectAccessReview: get of a Secret in a dev namespace; no policy applies: NoOpinion.
    SecretReadDev,
    /// A SubjectAccessReview: list of a prod namespace's Secrets by a user whose grants are all
    /// too old: Deny, after the direct grant lookup.
    SecretReadDenied,
}

/// Which review a body is, and so where it goes and what answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An AdmissionReview to the registration's path.
    Admission,
    /// A SubjectAccessReview to `/authorize`: "allowed" means NoOpinion, not allowed a Deny.
    Access,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Requests spread over `--connections` keep-alive HTTP/1.1 connections.
    KeepAlive,
    /// A new TCP + TLS connection (full handshake, no resumption) for every request.
    NewConnection,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Reviews per second, over all connections; 0 sends back to back (closed loop, for
    /// saturation).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Concurrent connections (in new-connection mode: concurrent senders).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value = "30s")]
    duration: humantime_lite::Dur,
    #[arg(long, default_value = "3s")]
    warmup: humantime_lite::Dur,
    /// Request bodies, used round-robin.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "secret-delete,deployment-update,exec")]
    body: Vec<Body>,
    #[arg(long, value_enum, default_value = "keep-alive")]
    mode: Mode,
    /// Webhook process to read CPU time from (/proc/PID/stat) [default: from the pid file].
    #[arg(long)]
    server_pid: Option<u32>,
    /// Append a JSON line with the results to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct E2eArgs {
    /// Measured writes per arm.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Minimal duration parsing for flags (`30s`, `500ms`, `2m`).
mod humantime_lite {
    use std::{str::FromStr, time::Duration};

    #[derive(Clone, Copy, Debug)]
    pub struct Dur(pub Duration);

    impl FromStr for Dur {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let d: stepup_core::api::Duration = s.parse().map_err(|e| format!("{e}"))?;
            Ok(Dur(d.as_std()))
        }
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Soak(args) => soak(args),
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async {
                match other {
                    Command::Seed(a) => seed(a).await,
                    Command::Churn(a) => churn(a).await,
                    Command::Wait(a) => wait_for_caches(&Env::load(), a.policies, a.grants).await,
                    Command::E2e(a) => e2e(a).await,
                    Command::Run(_) | Command::Soak(_) => unreachable!(),
                }
            })
        }
    }
}

// ------------------------------------------------------------------ seed and churn

/// The namespaces the load bodies and the e2e benchmark use.
fn bench_namespaces() -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for (k, env) in [(42, "prod"), (42, "dev"), (43, "prod")] {
        out.push((format!("{}-{env}", fleet::team(k)), fleet::namespace_labels(k, env)));
    }
    for arm in ["none", "stepup", "granted", "vap"] {
        out.push((format!("bench-{arm}"), BTreeMap::from([("stepup-bench".to_owned(), arm.to_owned())])));
    }
    out
}

async fn ensure_namespaces(admin: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(admin.clone());
    for (name, labels) in bench_namespaces() {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}
        }))?;
        api.patch(&name, &PatchParams::apply("stepup-load").force(), &Patch::Apply(&ns)).await?;
    }
    Ok(())
}

/// Creates every object, `concurrency` at a time; objects that already exist are fine.
async fn create_all<K>(api: Api<K>, objects: Vec<K>, concurrency: usize, what: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let total = objects.len();
    let started = Instant::now();
    let mut done = 0usize;
    let mut results = stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                match api.create(&PostParams::default(), &o).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = results.next().await {
        r.with_context(|| format!("creating {what}"))?;
        done += 1;
        if done.is_multiple_of(10_000) || done == total {
            let secs = started.elapsed().as_secs_f64();
            eprintln!("  {what}: {done}/{total} in {secs:.0}s ({:.0}/s)", done as f64 / secs);
        }
    }
    Ok(())
}

async fn cache_objects(env: &Env, cache: &str) -> f64 {
    let text = env.webhook_metrics().await;
    let prefix = format!("stepup_cache_objects{{cache=\"{cache}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
}

async fn wait_for_caches(env: &Env, policies: usize, grants: usize) -> Result<()> {
    let started = Instant::now();
    eventually(Duration::from_secs(1200), || async {
        let (p, g) = (cache_objects(env, "policies").await, cache_objects(env, "grants").await);
        // The policy cache also holds the built-in policy-changes rule.
        if p as usize >= policies && g as usize >= grants {
            Ok(())
        } else {
            bail!("webhook caches {p} policies, {g} grants")
        }
    })
    .await?;
    eprintln!("webhook caches hold the fleet ({:.1}s after the last write)", started.elapsed().as_secs_f64());
    Ok(())
}

async fn seed(args: SeedArgs) -> Result<()> {
    let env = Env::load();
    ensure_namespaces(&env.client("admin").await).await?;
    let started = Instant::now();
    let (mut want_policies, mut want_grants) = (0, 0);
    if args.only != SeedWhat::Grants {
        let policies = fleet::policies(args.policies);
        create_all(Api::all(env.client("policy-writer").await), policies, args.concurrency, "policies").await?;
        want_policies = args.policies;
    }
    if args.only != SeedWhat::Policies {
        // Seeded grants are two hours old (expired): `run` issues the fresh ones it needs.
        let grants =
            signed(&env, fleet::grants(args.grants, args.users, Timestamp::now(), |_| SignedDuration::from_hours(2)));
        create_all(Api::all(env.client("stepup-controller").await), grants, args.concurrency, "grants").await?;
        want_grants = args.grants;
    }
    eprintln!("seeded in {:.0}s", started.elapsed().as_secs_f64());
    wait_for_caches(&env, want_policies, want_grants).await
}

async fn churn(args: ChurnArgs) -> Result<()> {
    let env = Env::load();
    let writer: Api<StepUpPolicy> = Api::all(env.client("policy-writer").await);
    let controller: Api<StepUpGrant> = Api::all(env.client("stepup-controller").await);
    let started = Instant::now();
    let touched = |n: usize| ((n as f64 * args.fraction) as usize).min(n);

    // Policies: a third get a new message (an update event), the rest are deleted and
    // re-created (a delete and an add event). Every policy event rebuilds the index.
    let all = fleet::policies(args.policies);
    let n = touched(all.len());
    let (update, recreate) = all[..n].split_at(n / 3);
    let c = args.concurrency.max(1);
    let pp = PatchParams::default();
    stream::iter(update.iter().cloned())
        .map(|p| {
            let writer = writer.clone();
            let pp = pp.clone();
            async move {
                let name = p.metadata.name.clone().unwrap_or_default();
                let patch = json!({"spec": {"message": format!("churned at {}", Timestamp::now())}});
                writer.patch(&name, &pp, &Patch::Merge(&patch)).await
            }
        })
        .buffer_unordered(c)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("  policy update failed: {e}");
            }
        })
        .await;
    eprintln!("  updated {} policies ({:.0}s)", update.len(), started.elapsed().as_secs_f64());
    delete_all(&writer, recreate.iter().filter_map(|p| p.metadata.name.clone()).collect(), c).await;
    create_all(writer.clone(), recreate.to_vec(), c, "re-created policies").await?;

    // Grants: a third get a status update (the controller marking them Expired), the rest
    // are deleted and re-created.
    let all = signed(&env, fleet::grants(args.grants, args.users, Timestamp::now(), |_| SignedDuration::from_hours(2)));
    let n = touched(all.len());
    let (update, recreate) = all[..n].split_at(n / 3);
    stream::iter(update.iter().cloned())
        .map(|g| {
            let controller = controller.clone();
            let pp = pp.clone();
            async move {
                let name = g.metadata.name.clone().unwrap_or_default();
                let patch = json!({"status": {"phase": "Expired"}});
                controller.patch_status(&name, &pp, &Patch::Merge(&patch)).await
            }
        })
        .buffer_unordered(c)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("  grant status update failed: {e}");
            }
        })
        .await;
    eprintln!("  updated {} grant statuses ({:.0}s)", update.len(), started.elapsed().as_secs_f64());
    delete_all(&controller, recreate.iter().filter_map(|g| g.metadata.name.clone()).collect(), c).await;
    create_all(controller.clone(), recreate.to_vec(), c, "re-created grants").await?;
    eprintln!("churned in {:.0}s", started.elapsed().as_secs_f64());
    wait_for_caches(&env, args.policies, args.grants).await
}

async fn delete_all<K>(api: &Api<K>, names: Vec<String>, concurrency: usize)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let count = names.len();
    let started = Instant::now();
    stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move { api.delete(&name, &Default::default()).await.map(|_| ()) }
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            match r {
                Ok(()) | Err(kube::Error::Api(_)) => {}
                Err(e) => eprintln!("  delete failed: {e}"),
            }
        })
        .await;
    eprintln!("  deleted {count} ({:.0}s)", started.elapsed().as_secs_f64());
}

/// Grants signed with the controller's key, as the controller writes them.
fn signed(env: &Env, mut grants: Vec<StepUpGrant>) -> Vec<StepUpGrant> {
    let signer = env.grant_signer();
    grants.iter_mut().for_each(|g| signer.sign_grant(g));
    grants
}

/// A grant for user u issued now, lasting an hour, as the controller would write it.
async fn issue_fresh_grant(env: &Env, name: &str, user: &str, uid: &str) -> Result<()> {
    let api: Api<StepUpGrant> = Api::all(env.client("stepup-controller").await);
    let now = Timestamp::now();
    let mut g =
        grant(name, user).uid(uid).reason("load test").issued(now).expires(now + SignedDuration::from_hours(1)).build();
    env.grant_signer().sign_grant(&mut g);
    let _ = api.delete(name, &Default::default()).await;
    eventually(Duration::from_secs(10), || async { Ok(api.create(&PostParams::default(), &g).await?) }).await?;
    // Let the webhook's grant watch deliver it, so reviews are answered from the cache.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

// ------------------------------------------------------------------ AdmissionReview bodies

fn managed_fields(manager: &str, operation: &str) -> Value {
    json!([{
        "manager": manager, "operation": operation, "apiVersion": "v1",
        "time": "2026-11-20T09:14:03Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:team": {}}, "f:annotations": {".": {}}}}
    }])
}

fn user_info(u: usize) -> Value {
    json!({
        "username": fleet::user(u),
        "uid": fleet::user_uid(u),
        "groups": fleet::user_groups(u),
        "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI=6f1c3c2e-{u:04}")]}
    })
}

fn secret(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name, "namespace": namespace, "uid": "0b9a3f6e-6c1d-4d8e-9a53-2f0c1e7b8a41",
            "resourceVersion": "48213377", "creationTimestamp": "2026-11-20T09:14:03Z",
            "labels": {"app": "db", "team": "team-42"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"annotations\":{},\"labels\":{\"app\":\"db\",\"team\":\"team-42\"},\"name\":\"db\",\"namespace\":\"team-42-prod\"},\"type\":\"Opaque\"}\n"},
            "managedFields": managed_fields("kubectl-client-side-apply", "Update")
        },
        "type": "Opaque",
        "data": {
            "username": "YXBwX3VzZXI=",
            "password": "czNjcjN0LXBhc3N3b3JkLWZvci1iZW5jaG1hcmtz",
            "url": "cG9zdGdyZXM6Ly9hcHBfdXNlckBkYi5pbnRlcm5hbDo1NDMyL2FwcA=="
        }
    })
}

fn deployment(namespace: &str, replicas: u32, image: &str) -> Value {
    let env: Vec<Value> =
        (0..12).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}")})).collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "web", "namespace": namespace, "uid": "5d0f7f1c-2b8e-4f3a-9c61-8e2a4b7d9f10",
            "resourceVersion": "48213391", "generation": 17, "creationTimestamp": "2026-10-02T11:40:00Z",
            "labels": {"app": "web", "team": "team-42", "app.kubernetes.io/version": "1.42.0"},
            "annotations": {"deployment.kubernetes.io/revision": "17"},
            "managedFields": managed_fields("argocd-controller", "Apply")
        },
        "spec": {
            "replicas": replicas, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web", "team": "team-42"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": "web", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {"runAsNonRoot": true},
                    "containers": [{
                        "name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "env": env,
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"
                    }]
                }
            }
        },
        "status": {
            "observedGeneration": 17, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [
                {"type": "Available", "status": "True", "lastUpdateTime": "2026-11-20T09:14:03Z", "lastTransitionTime": "2026-11-20T09:14:03Z", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "lastUpdateTime": "2026-11-20T09:14:03Z", "lastTransitionTime": "2026-10-02T11:40:00Z", "reason": "NewReplicaSetAvailable", "message": "ReplicaSet \"web-7d4b9c\" has successfully progressed."}
            ]
        }
    })
}

/// The review kube-apiserver would send, whether the webhook should allow it (for a
/// SubjectAccessReview: answer NoOpinion rather than Deny), and which kind it is.
fn review(body: Body, i: u64) -> (Value, bool, Kind) {
    let uid = format!("7c1e2d3a-0000-4000-8000-{i:012}");
    let (u, ns) = match body {
        Body::SecretDenied | Body::SecretReadDenied => (43, "team-43-prod"),
        Body::SecretUpdateDev | Body::SecretReadDev => (42, "team-42-dev"),
        _ => (42, "team-42-prod"),
    };
    if let Some((verb, name)) = match body {
        Body::SecretRead | Body::SecretReadDev => Some(("get", "db")),
        Body::SecretReadDenied => Some(("list", "")),
        _ => None,
    } {
        let info = user_info(u);
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "resourceAttributes": {"namespace": ns, "verb": verb, "version": "v1", "resource": "secrets", "name": name},
                "user": info["username"], "uid": info["uid"], "groups": info["groups"], "extra": info["extra"]
            },
            "status": {"allowed": false}
        });
        return (review, body != Body::SecretReadDenied, Kind::Access);
    }
    let gvk = |g: &str, v: &str, k: &str| json!({"group": g, "version": v, "kind": k});
    let gvr = |g: &str, v: &str, r: &str| json!({"group": g, "version": v, "resource": r});
    let mut request = match body {
        Body::SecretDelete | Body::SecretDenied => json!({
            "kind": gvk("", "v1", "Secret"), "resource": gvr("", "v1", "secrets"),
            "requestKind": gvk("", "v1", "Secret"), "requestResource": gvr("", "v1", "secrets"),
            "name": "db", "namespace": ns, "operation": "DELETE",
            "object": null, "oldObject": secret(ns, "db"),
            "options": {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "propagationPolicy": "Background"}
        }),
        Body::SecretUpdateDev => {
            let mut new = secret(ns, "cache");
            new["data"]["password"] = json!("bmV3LXBhc3N3b3JkLWFmdGVyLXJvdGF0aW9u");
            json!({
                "kind": gvk("", "v1", "Secret"), "resource": gvr("", "v1", "secrets"),
                "requestKind": gvk("", "v1", "Secret"), "requestResource": gvr("", "v1", "secrets"),
                "name": "cache", "namespace": ns, "operation": "UPDATE",
                "object": new, "oldObject": secret(ns, "cache"),
                "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-edit"}
            })
        }
        Body::DeploymentUpdate => json!({
            "kind": gvk("apps", "v1", "Deployment"), "resource": gvr("apps", "v1", "deployments"),
            "requestKind": gvk("apps", "v1", "Deployment"), "requestResource": gvr("apps", "v1", "deployments"),
            "name": "web", "namespace": ns, "operation": "UPDATE",
            "object": deployment(ns, 5, "registry.example.com/team-42/web:1.43.0"),
            "oldObject": deployment(ns, 3, "registry.example.com/team-42/web:1.42.0"),
            "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-client-side-apply"}
        }),
        Body::Exec => json!({
            "kind": gvk("", "v1", "PodExecOptions"), "resource": gvr("", "v1", "pods"), "subResource": "exec",
            "requestKind": gvk("", "v1", "PodExecOptions"), "requestResource": gvr("", "v1", "pods"), "requestSubResource": "exec",
            "name": "web-7d4b9c-x2x9k", "namespace": ns, "operation": "CONNECT",
            "object": {"kind": "PodExecOptions", "apiVersion": "v1", "stdin": true, "stdout": true, "tty": true, "container": "web", "command": ["/bin/sh"]},
            "oldObject": null, "options": null
        }),
        Body::SecretRead | Body::SecretReadDev | Body::SecretReadDenied => unreachable!("answered above"),
    };
    let r = request.as_object_mut().expect("object");
    r.insert("uid".into(), json!(uid));
    r.insert("userInfo".into(), user_info(u));
    r.insert("dryRun".into(), json!(false));
    let allowed = !matches!(body, Body::SecretDenied);
    (
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
        allowed,
        Kind::Admission,
    )
}

// ------------------------------------------------------------------ the load run

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    /// The authorizer's path (the API server's authorization webhook sends no timeout).
    authorize_path: &'static str,
    tls: Arc<ClientConfig>,
}

/// The CA the API server trusts for the webhook: the registration's caBundle.
async fn webhook_ca_bundle(env: &Env) -> Result<Vec<u8>> {
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(env.client("admin").await);
    let config = hooks.get("stepup.dev").await.context("the stepup.dev webhook registration")?;
    let hook = config.webhooks.into_iter().flatten().next().context("a webhook in stepup.dev")?;
    Ok(hook.client_config.ca_bundle.context("a caBundle in stepup.dev")?.0)
}

impl Target {
    fn new(env: &Env, mode: Mode, ca_bundle: &[u8]) -> Result<Self> {
        let url = env.var("STEPUP_WEBHOOK_URL");
        let rest = url.strip_prefix("https://").context("https webhook URL")?;
        let (host, path) = rest.split_once('/').context("URL with a path")?;
        let addr: SocketAddr = host.parse().context("webhook URL with an IP:port")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_bundle) {
            roots.add(cert?)?;
        }
        // The webhook asks for the API server's client certificate (mutual TLS): present the
        // one the e2e control plane gives kube-apiserver for admission.
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let mut config =
            match (env.var_opt("KUBE_ADMISSION_CLIENT_CERT_FILE"), env.var_opt("KUBE_ADMISSION_CLIENT_KEY_FILE")) {
                (Some(cert), Some(key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .with_context(|| format!("reading {cert}"))?
                        .collect::<Result<Vec<_>, _>>()?;
                    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                        .with_context(|| format!("reading {key}"))?;
                    builder.with_client_auth_cert(chain, key)?
                }
                _ => builder.with_no_client_auth(),
            };
        // kube-apiserver speaks HTTP/1.1 to webhooks and Go's TLS client caches no sessions.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if mode == Mode::NewConnection {
            config.resumption = rustls::client::Resumption::disabled();
        }
        // The API server appends the webhook's timeoutSeconds.
        Ok(Self {
            addr,
            host: addr.ip().to_string(),
            path: format!("/{path}?timeout=5s"),
            authorize_path: "/authorize",
            tls: Arc::new(config),
        })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = TlsConnector::from(self.tls.clone()).connect(name, tcp).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn post(
        &self,
        sender: &mut http1::SendRequest<Full<Bytes>>,
        body: Bytes,
        expect_allowed: bool,
        kind: Kind,
    ) -> Result<()> {
        sender.ready().await?;
        let path = match kind {
            Kind::Admission => self.path.as_str(),
            Kind::Access => self.authorize_path,
        };
        let req = Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        // The answer, parsed: an AdmissionReview whose response says what it should.
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let as_expected = match kind {
            Kind::Admission => answer["kind"] == "AdmissionReview" && answer["response"]["allowed"] == expect_allowed,
            // Never an Allow; a Deny exactly when not expected to pass.
            Kind::Access => {
                answer["kind"] == "SubjectAccessReview"
                    && answer["status"]["allowed"] == false
                    && answer["status"]["denied"].as_bool().unwrap_or(false) != expect_allowed
            }
        };
        if !as_expected {
            bail!("{WRONG_ANSWER}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

/// How an answer that says the wrong thing is told from a failed request.
const WRONG_ANSWER: &str = "unexpected answer";

struct ThreadResult {
    latency: Histogram<u64>,
    /// Answers that said the wrong thing (also counted in `errors`).
    wrong: u64,
    lag: Histogram<u64>,
    ok: u64,
    errors: u64,
    unsent: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs .. 100 s, 3 significant figures.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid bounds")
}

/// One connection's timeline, on its own thread with a current-thread runtime: sleeps are
/// `thread::sleep` (tens of µs late at most), the runtime only drives the requests.
fn drive(
    k: usize,
    args: &RunArgs,
    target: &Target,
    bodies: &[(Bytes, bool, Kind)],
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ThreadResult {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut out = ThreadResult {
        latency: histogram(),
        wrong: 0,
        lag: histogram(),
        ok: 0,
        errors: 0,
        unsent: 0,
        first_error: None,
        last_done: None,
    };
    let c = args.connections as f64;
    let open_loop = args.rate > 0.0;
    let period = if open_loop { Duration::from_secs_f64(c / args.rate) } else { Duration::ZERO };
    let offset = if open_loop { Duration::from_secs_f64(k as f64 / args.rate) } else { Duration::ZERO };
    // Give up on sends scheduled in time when the client is this far behind: they are
    // counted as unsent, never silently dropped.
    let hard_stop = end + Duration::from_secs(10);
    let mut sender = None;
    let mut i: u64 = 0;
    loop {
        let now = Instant::now();
        let scheduled = if open_loop { start + offset + period * i as u32 } else { now };
        if scheduled >= end {
            break;
        }
        if now >= hard_stop {
            out.unsent += ((end - scheduled).as_secs_f64() / period.as_secs_f64()).ceil() as u64;
            break;
        }
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let sent = Instant::now();
        let (body, allowed, kind) = &bodies[(i as usize * args.connections + k) % bodies.len()];
        let result = rt.block_on(async {
            if args.mode == Mode::NewConnection || sender.is_none() {
                sender = Some(target.connect().await?);
            }
            let s = sender.as_mut().expect("connected");
            let r = target.post(s, body.clone(), *allowed, *kind).await;
            if args.mode == Mode::NewConnection {
                sender = None;
            }
            r
        });
        let done = Instant::now();
        if result.is_err() {
            sender = None;
        }
        if scheduled >= measure_from {
            match result {
                Ok(()) => {
                    out.ok += 1;
                    let _ = out.latency.record((done - scheduled).as_nanos() as u64);
                    let _ = out.lag.record((sent.saturating_duration_since(scheduled)).as_nanos().max(1_000) as u64);
                    out.last_done = Some(done);
                }
                Err(e) => {
                    out.errors += 1;
                    if e.to_string().starts_with(WRONG_ANSWER) {
                        out.wrong += 1;
                    }
                    out.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        i += 1;
    }
    out
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the name, the state is field 3 (index 0).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn run(args: RunArgs) -> Result<()> {
    let env = Env::load();
    let setup = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let target = Target::new(&env, args.mode, &setup.block_on(webhook_ca_bundle(&env))?)?;
    let server_pid = args.server_pid.or_else(|| env.webhook_pid());
    setup.block_on(async {
        // user-42's fresh grant: what lets the allowed bodies through.
        let name = format!("g-load-fresh-{}", Timestamp::now().as_second());
        issue_fresh_grant(&env, &name, &fleet::user(42), &fleet::user_uid(42)).await
    })?;
    let bodies: Vec<(Bytes, bool, Kind)> = args
        .body
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (v, allowed, kind) = review(*b, i as u64);
            (Bytes::from(serde_json::to_vec(&v).expect("JSON")), allowed, kind)
        })
        .collect();
    // Each body once, synchronously, so a wrong setup fails before the run.
    setup.block_on(async {
        let mut s = target.connect().await?;
        for (b, allowed, kind) in &bodies {
            target.post(&mut s, b.clone(), *allowed, *kind).await?;
        }
        anyhow::Ok(())
    })?;

    let warmup = args.warmup.0;
    let duration = args.duration.0;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let cpu_before = std::thread::scope(|scope| {
        // Sample the CPU counters when the measured window opens.
        let sampler = scope.spawn(|| {
            std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
            (server_pid.and_then(cpu_seconds), cpu_seconds(std::process::id()), Instant::now())
        });
        let handles: Vec<_> = (0..args.connections)
            .map(|k| {
                let (args, target, bodies) = (&args, &target, &bodies);
                scope.spawn(move || drive(k, args, target, bodies, start, measure_from, end))
            })
            .collect();
        let before = sampler.join().expect("sampler");
        let results: Vec<ThreadResult> = handles.into_iter().map(|h| h.join().expect("driver thread")).collect();
        (before, results)
    });
    let ((server_cpu0, client_cpu0, t0), results) = cpu_before;
    let t1 = Instant::now();
    let server_cpu = server_pid.and_then(cpu_seconds).zip(server_cpu0).map(|(b, a)| b - a);
    let client_cpu = cpu_seconds(std::process::id()).zip(client_cpu0).map(|(b, a)| b - a);

    let mut latency = histogram();
    let mut lag = histogram();
    let (mut ok, mut errors, mut unsent) = (0, 0, 0);
    let mut first_error = None;
    let mut last_done = measure_from;
    for r in results {
        latency.add(&r.latency).expect("same bounds");
        lag.add(&r.lag).expect("same bounds");
        ok += r.ok;
        errors += r.errors;
        unsent += r.unsent;
        first_error = first_error.or(r.first_error);
        if let Some(d) = r.last_done {
            last_done = last_done.max(d);
        }
    }
    let elapsed = last_done.saturating_duration_since(measure_from).max(duration).as_secs_f64();
    let throughput = ok as f64 / elapsed;
    let ms = |ns: u64| ns as f64 / 1e6;
    let bodies: Vec<String> =
        args.body.iter().map(|b| b.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()).collect();
    let body_bytes: Vec<usize> =
        args.body.iter().map(|b| serde_json::to_vec(&review(*b, 0).0).map(|v| v.len()).unwrap_or(0)).collect();
    let window = t1.saturating_duration_since(t0).as_secs_f64();
    let per_review_us = |cpu: Option<f64>| cpu.map(|c| c / ok.max(1) as f64 * 1e6);
    let mode = format!("{:?}", args.mode);
    let rate = if args.rate > 0.0 { format!("{:.0}/s", args.rate) } else { "closed loop".to_owned() };
    let mut line = String::new();
    let _ = write!(
        line,
        "{:<28} {mode:<13} conns={:<3} rate={rate:<11} ok={ok} err={errors} unsent={unsent} throughput={throughput:.0}/s  \
         latency ms p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}  send-lag p99={:.3}",
        bodies.join(","),
        args.connections,
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.9)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
        ms(latency.max()),
        ms(lag.value_at_quantile(0.99)),
    );
    if let Some(us) = per_review_us(server_cpu) {
        let _ = write!(line, "  server CPU {us:.1} µs/review");
    }
    if let Some(us) = per_review_us(client_cpu) {
        let _ = write!(line, ", client CPU {us:.1} µs/review");
    }
    println!("{line}");
    if let Some(e) = &first_error {
        eprintln!("  first error: {e}");
    }
    if let Some(path) = &args.json {
        let record = json!({
            "label": args.label, "date": Timestamp::now().to_string(), "loadavg": loadavg(),
            "bodies": bodies, "body_bytes": body_bytes, "mode": mode, "connections": args.connections,
            "rate": args.rate, "duration_s": duration.as_secs_f64(), "warmup_s": warmup.as_secs_f64(),
            "ok": ok, "errors": errors, "unsent": unsent, "throughput": throughput,
            "latency_ms": {
                "p50": ms(latency.value_at_quantile(0.5)), "p90": ms(latency.value_at_quantile(0.9)),
                "p99": ms(latency.value_at_quantile(0.99)), "p999": ms(latency.value_at_quantile(0.999)),
                "max": ms(latency.max()), "mean": latency.mean() / 1e6,
            },
            "send_lag_ms": {"p50": ms(lag.value_at_quantile(0.5)), "p99": ms(lag.value_at_quantile(0.99)), "max": ms(lag.max())},
            "server_cpu_s": server_cpu, "client_cpu_s": client_cpu, "window_s": window,
            "server_cpu_us_per_review": per_review_us(server_cpu), "client_cpu_us_per_review": per_review_us(client_cpu),
            "first_error": first_error,
        });
        append_json(path, &record)?;
    }
    if ok == 0 {
        bail!("no successful review");
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn append_json(path: &std::path::Path, record: &Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{record}")?;
    Ok(())
}

// ------------------------------------------------------------------ end to end

const ARMS: [&str; 4] = ["none", "stepup", "granted", "vap"];

/// Registers what the arms need: the stepup webhook skips the `none` and `vap` namespaces,
/// a ValidatingAdmissionPolicy covers `vap`, a StepUpPolicy covers `granted` (and alice
/// holds a fresh grant), and each namespace holds the ConfigMap the writes update.
async fn e2e_setup(env: &Env) -> Result<()> {
    let admin = env.client("admin").await;
    ensure_namespaces(&admin).await?;

    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let mut config = hooks.get("stepup.dev").await.context("stepup.sh registers stepup.dev")?;
    for hook in config.webhooks.iter_mut().flatten() {
        let selector = hook.namespace_selector.get_or_insert_with(Default::default);
        let exprs = selector.match_expressions.get_or_insert_with(Vec::new);
        if !exprs.iter().any(|e| e.key == "stepup-bench") {
            exprs.push(serde_json::from_value(
                json!({"key": "stepup-bench", "operator": "NotIn", "values": ["none", "vap"]}),
            )?);
        }
    }
    hooks.replace("stepup.dev", &PostParams::default(), &config).await?;

    // In-tree CEL doing a comparable check: who is asking, for which object, in which
    // namespace; it allows these writes as kube-stepup does.
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "stepup-bench"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
                "resources": ["secrets", "configmaps"]
            }]},
            "matchConditions": [{"name": "skip-system-identities", "expression": "!request.userInfo.username.startsWith('system:')"}],
            "validations": [{
                "expression": "!(has(object.metadata.labels) && 'stepup.dev/protected' in object.metadata.labels) || request.userInfo.groups.exists(g, g == 'stepup:granted')",
                "message": "protected objects need a step-up grant"
            }]
        }
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "stepup-bench"},
        "spec": {
            "policyName": "stepup-bench", "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"stepup-bench": "vap"}}}
        }
    }))?;
    let pp = PatchParams::apply("stepup-load").force();
    Api::<ValidatingAdmissionPolicy>::all(admin.clone()).patch("stepup-bench", &pp, &Patch::Apply(&vap)).await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
        .patch("stepup-bench", &pp, &Patch::Apply(&binding))
        .await?;

    // alice writes as a developer with `edit` in the benchmark namespaces.
    for arm in ARMS {
        let namespace = format!("bench-{arm}");
        let binding: RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "developers-edit", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "developers"}]
        }))?;
        Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
            .patch("developers-edit", &pp, &Patch::Apply(&binding))
            .await?;
    }

    let writer = env.client("policy-writer").await;
    let bench_policy = policy("bench-granted-configmaps")
        .rule(&[Operation::Create, Operation::Update, Operation::Delete], "", &["configmaps"])
        .namespaces(&["bench-granted"])
        .max_age("1h")
        .build();
    Api::<StepUpPolicy>::all(writer.clone())
        .patch("bench-granted-configmaps", &pp, &Patch::Apply(&bench_policy))
        .await?;
    issue_fresh_grant(env, &format!("g-load-alice-{}", Timestamp::now().as_second()), "alice", "uid-alice-1").await?;

    for arm in ARMS {
        let api: Api<ConfigMap> = Api::namespaced(writer.clone(), &format!("bench-{arm}"));
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bench", "labels": {"app": "bench"}}, "data": {"n": "0"}
        }))?;
        api.patch("bench", &pp, &Patch::Apply(&cm)).await?;
    }
    // Registrations take effect within a second or so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

async fn e2e(args: E2eArgs) -> Result<()> {
    let env = Env::load();
    e2e_setup(&env).await?;
    let alice = env.client("alice").await;
    let apis: Vec<Api<ConfigMap>> =
        ARMS.iter().map(|a| Api::namespaced(alice.clone(), &format!("bench-{a}"))).collect();
    let reviews_before = env.metric_sum("stepup_admission_reviews_total").await;
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(args.iterations); ARMS.len()];
    let pp = PatchParams::default();
    let total = args.warmup + args.iterations;
    for i in 0..total {
        // Rotate which arm goes first, so no arm always follows the same one.
        for j in 0..ARMS.len() {
            let a = (i + j) % ARMS.len();
            let patch = json!({"data": {"n": i.to_string()}});
            let started = Instant::now();
            apis[a]
                .patch("bench", &pp, &Patch::Merge(&patch))
                .await
                .with_context(|| format!("update in bench-{}", ARMS[a]))?;
            let took = started.elapsed().as_nanos() as u64;
            if i >= args.warmup {
                samples[a].push(took);
            }
        }
    }
    let reviews = env.metric_sum("stepup_admission_reviews_total").await - reviews_before;
    let decisions = env.webhook_metrics().await;
    let percentile = |v: &mut Vec<u64>, q: f64| {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e6
    };
    let mut stats = Vec::new();
    for (a, s) in ARMS.iter().zip(samples.iter_mut()) {
        let mean = s.iter().sum::<u64>() as f64 / s.len() as f64 / 1e6;
        stats.push((*a, percentile(s, 0.5), percentile(s, 0.9), percentile(s, 0.99), mean));
    }
    let base = stats[0].1;
    println!(
        "ConfigMap update (PATCH) as alice through kube-apiserver, {} writes per arm, interleaved:",
        args.iterations
    );
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>9} {:>14} {:>16}",
        "arm", "p50 ms", "p90 ms", "p99 ms", "mean ms", "p50 / none", "p50 - none (ms)"
    );
    for (a, p50, p90, p99, mean) in &stats {
        println!("{a:<9} {p50:>9.3} {p90:>9.3} {p99:>9.3} {mean:>9.3} {:>14.2} {:>16.3}", p50 / base, p50 - base);
    }
    println!("webhook reviews during the run: {reviews:.0} (expected {} = 2 arms × (warm-up + measured))", 2 * total);
    for line in decisions.lines().filter(|l| l.starts_with("stepup_admission_reviews_total{")) {
        println!("  {line}");
    }
    if let Some(path) = &args.json {
        let arms: Vec<Value> = stats
            .iter()
            .map(|(a, p50, p90, p99, mean)| json!({"arm": a, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "p50_ratio": p50 / base, "p50_added_ms": p50 - base}))
            .collect();
        append_json(
            path,
            &json!({"label": "e2e", "date": Timestamp::now().to_string(), "loadavg": loadavg(), "iterations": args.iterations, "arms": arms, "webhook_reviews": reviews}),
        )?;
    }
    Ok(())
}

// ------------------------------------------------------------------ the soak

/// Creates the objects (8 at a time), then deletes them; returns (writes, failed writes).
/// Failures are counted, not fatal: the soak judges the webhook's answers, not the churn.
async fn create_then_delete<K>(api: &Api<K>, objects: Vec<K>) -> (u64, u64)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let names: Vec<String> = objects.iter().filter_map(|o| o.meta().name.clone()).collect();
    let created: Vec<bool> = stream::iter(objects)
        .map(|o| async move { api.create(&PostParams::default(), &o).await.is_ok() })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut deleted = Vec::with_capacity(names.len());
    for name in &names {
        deleted.push(api.delete(name, &Default::default()).await.is_ok());
    }
    let writes = (created.len() + deleted.len()) as u64;
    (writes, created.iter().chain(&deleted).filter(|ok| !**ok).count() as u64)
}

/// Creates and deletes the churn objects until `stop`: policies on ConfigMaps in a namespace
/// no body touches, grants of users no body is. Returns (writes, failed writes).
async fn churn_loop(env: &Env, policies: usize, grants: usize, stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    let writer: Api<StepUpPolicy> = Api::all(env.client("policy-writer").await);
    let controller: Api<StepUpGrant> = Api::all(env.client("stepup-controller").await);
    let (mut writes, mut failed) = (0u64, 0u64);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let ps: Vec<StepUpPolicy> = (0..policies)
            .map(|k| {
                policy(&format!("soak-churn-{k}"))
                    .rule(&[Operation::Delete], "", &["configmaps"])
                    .namespaces(&[&format!("soak-churn-{k}")])
                    .message(&format!("round {round}"))
                    .build()
            })
            .collect();
        let now = Timestamp::now();
        let gs = signed(
            env,
            (0..grants)
                .map(|k| {
                    grant(&format!("g-soak-churn-{k}"), &format!("soak-user-{}", k % 97))
                        .issued(now)
                        .expires(now + SignedDuration::from_mins(10))
                        .build()
                })
                .collect(),
        );
        for (w, f) in [create_then_delete(&writer, ps).await, create_then_delete(&controller, gs).await] {
            writes += w;
            failed += f;
        }
    }
    (writes, failed)
}

fn soak(args: SoakArgs) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::load();
    let setup = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if args.seed_policies > 0 {
        setup.block_on(async {
            ensure_namespaces(&env.client("admin").await).await?;
            let mut policies = fleet::policies(args.seed_policies);
            if !args.seed_teams.is_empty() {
                let prefixes: Vec<String> = args.seed_teams.iter().map(|t| format!("{}-", fleet::team(*t))).collect();
                policies.retain(|p| {
                    let name = p.metadata.name.as_deref().unwrap_or_default();
                    name.starts_with("global-") || prefixes.iter().any(|t| name.starts_with(t.as_str()))
                });
            }
            let n = policies.len();
            create_all(Api::all(env.client("policy-writer").await), policies, 16, "policies").await?;
            wait_for_caches(&env, n, 0).await
        })?;
    }
    let target = Target::new(&env, Mode::KeepAlive, &setup.block_on(webhook_ca_bundle(&env))?)?;
    let server_pid = args.server_pid.or_else(|| env.webhook_pid());
    // user-42's grant lets the allowed bodies through; the strictest policy they meet
    // (exec) accepts grants up to 5 minutes old, so a new one (a new name: the old one stays
    // until it is replaced, no gap) is issued every 2 minutes, as a user would step up again.
    let refresh = |n: u32| {
        setup.block_on(async {
            let name = format!("g-soak-fresh-{}-{n}", Timestamp::now().as_second());
            issue_fresh_grant(&env, &name, &fleet::user(42), &fleet::user_uid(42)).await
        })
    };
    refresh(0)?;
    // Each denial asks the API server for the user's grants first: one body in 21 is one,
    // as in a cluster where most protected writes come with a grant.
    let allowed = [Body::SecretDelete, Body::DeploymentUpdate, Body::Exec, Body::SecretUpdateDev];
    let kinds: Vec<Body> = (0..5).flat_map(|_| allowed).chain([Body::SecretDenied]).collect();
    let bodies: Vec<(Bytes, bool, Kind)> = kinds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (v, allowed, kind) = review(*b, i as u64);
            (Bytes::from(serde_json::to_vec(&v).expect("JSON")), allowed, kind)
        })
        .collect();
    setup.block_on(async {
        let mut s = target.connect().await?;
        for (b, allowed, kind) in &bodies {
            target.post(&mut s, b.clone(), *allowed, *kind).await.context("a body before the soak")?;
        }
        anyhow::Ok(())
    })?;

    let stop = AtomicBool::new(false);
    let windows = (args.duration.0.as_secs_f64() / args.window.0.as_secs_f64()).ceil().max(1.0) as usize;
    let run_args = RunArgs {
        rate: args.rate,
        connections: args.connections,
        duration: args.window,
        warmup: humantime_lite::Dur(Duration::ZERO),
        body: kinds.clone(),
        mode: Mode::KeepAlive,
        server_pid,
        json: None,
        label: String::new(),
    };
    let rss_start = server_pid.and_then(rss_mib);
    println!(
        "soak: {windows} × {:?} at {:.0}/s over {} connections, every body kind (1 in 21 denied), churning {} policies and {} grants; webhook RSS at start {}",
        args.window.0,
        args.rate,
        args.connections,
        args.churn_policies,
        args.churn_grants,
        rss_start.map_or("unknown".into(), |r| format!("{r:.1} MiB")),
    );
    let (rows, churned) = std::thread::scope(|scope| {
        let churner = scope.spawn(|| setup.block_on(churn_loop(&env, args.churn_policies, args.churn_grants, &stop)));
        let mut rows = Vec::new();
        let mut issued = Instant::now();
        let mut refreshes = 0;
        for w in 0..windows {
            let start = Instant::now() + Duration::from_millis(20);
            let end = start + args.window.0;
            let results: Vec<ThreadResult> = std::thread::scope(|inner| {
                let handles: Vec<_> = (0..args.connections)
                    .map(|k| {
                        let (a, t, b) = (&run_args, &target, &bodies);
                        inner.spawn(move || drive(k, a, t, b, start, start, end))
                    })
                    .collect();
                // Re-issue while the load runs, whenever the grant turns 2 minutes old.
                while Instant::now() < end {
                    if issued.elapsed() >= Duration::from_secs(120) {
                        refreshes += 1;
                        if let Err(e) = refresh(refreshes) {
                            eprintln!("  could not re-issue the grant: {e:#}");
                        }
                        issued = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())));
                }
                handles.into_iter().map(|h| h.join().expect("driver thread")).collect()
            });
            let mut latency = histogram();
            let (mut ok, mut errors, mut wrong, mut unsent) = (0, 0, 0, 0);
            let mut first_error = None;
            for r in results {
                latency.add(&r.latency).expect("same bounds");
                ok += r.ok;
                errors += r.errors;
                wrong += r.wrong;
                unsent += r.unsent;
                first_error = first_error.or(r.first_error);
            }
            let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e6;
            let rss = server_pid.and_then(rss_mib);
            println!(
                "window {:>2}/{windows}: ok={ok} wrong={wrong} errors={errors} unsent={unsent} latency ms p50={:.3} p99={:.3} p99.9={:.3} max={:.3} webhook RSS {}",
                w + 1,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                latency.max() as f64 / 1e6,
                rss.map_or("unknown".into(), |r| format!("{r:.1} MiB")),
            );
            if let Some(e) = &first_error {
                println!("  first error: {e}");
            }
            rows.push(json!({
                "window": w + 1, "ok": ok, "wrong": wrong, "errors": errors, "unsent": unsent,
                "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": latency.max() as f64 / 1e6},
                "rss_mib": rss, "first_error": first_error,
            }));
        }
        stop.store(true, Ordering::Relaxed);
        (rows, churner.join().expect("churn thread"))
    });
    let total = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    let (ok, wrong, errors) = (total("ok"), total("wrong"), total("errors"));
    let rss_end = server_pid.and_then(rss_mib);
    let p99 = |r: &Value| r["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
    println!(
        "soak done: {ok} answered, {wrong} wrong, {errors} errors; churn {} writes ({} failed); webhook RSS {} → {} MiB; p99 first window {:.3} ms, last {:.3} ms",
        churned.0,
        churned.1,
        rss_start.map_or("?".into(), |r| format!("{r:.1}")),
        rss_end.map_or("?".into(), |r| format!("{r:.1}")),
        rows.first().map(p99).unwrap_or(0.0),
        rows.last().map(p99).unwrap_or(0.0),
    );
    if let Some(path) = &args.json {
        for r in &rows {
            append_json(path, r)?;
        }
        append_json(
            path,
            &json!({
                "summary": true, "date": Timestamp::now().to_string(), "loadavg": loadavg(),
                "duration_s": args.duration.0.as_secs_f64(), "rate": args.rate, "ok": ok, "wrong": wrong,
                "errors": errors, "churn_writes": churned.0, "churn_failed": churned.1,
                "rss_start_mib": rss_start, "rss_end_mib": rss_end,
            }),
        )?;
    }
    // Leave nothing behind.
    setup.block_on(async {
        let writer: Api<StepUpPolicy> = Api::all(env.client("policy-writer").await);
        for k in 0..args.churn_policies {
            let _ = writer.delete(&format!("soak-churn-{k}"), &Default::default()).await;
        }
    });
    if wrong > 0 || errors > 0 || ok == 0 {
        bail!("the soak saw {wrong} wrong answers and {errors} errors in {ok} answers");
    }
    Ok(())
}
