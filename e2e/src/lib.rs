//! Harness for the end-to-end scenarios: the control plane and stepup processes started by
//! `e2e/scripts/cluster.sh` and `e2e/scripts/stepup.sh`, users that authenticate for real,
//! and small helpers to act as them and to read the evidence (metrics, audit log, Events).

use std::{collections::HashMap, path::PathBuf, process::Output, time::Duration};

use anyhow::{Context, Result, bail};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use kube_stepup::api::{StepUpGrant, StepUpPolicy};
use serde_json::Value;

/// Everything the scripts exported about the running control plane and stepup.
#[derive(Clone, Debug)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Reads `$STEPUP_E2E_DIR/env` and `stepup.env`. Fails loudly when the control plane is
    /// not up: an e2e test that silently passes without a cluster would prove nothing.
    pub fn load() -> Self {
        let dir = std::env::var("STEPUP_E2E_DIR").map(PathBuf::from).unwrap_or_else(|_| {
            let cache = std::env::var("STEPUP_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
                let base = std::env::var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
                base.join("kube-stepup")
            });
            cache.join("e2e-run")
        });
        let mut vars = HashMap::new();
        for file in ["env", "stepup.env"] {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "cannot read {}: {e}. The e2e tests need the control plane and stepup running: use `make e2e`",
                    path.display()
                )
            });
            for line in text.lines() {
                let line = line.trim().trim_start_matches("export ");
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.trim_matches('"').trim_matches('\'').to_owned());
                }
            }
        }
        Self { vars }
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).map(String::as_str).unwrap_or_else(|| panic!("{name} missing from the e2e env files"))
    }

    /// Kubeconfig of an identity: admin, alice, alice-recreated, bob, carol, stepup-webhook,
    /// stepup-controller, policy-writer.
    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        let var = format!("KUBECONFIG_{}", who.to_uppercase().replace('-', "_"));
        PathBuf::from(self.var(&var))
    }

    pub async fn client(&self, who: &str) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(who)).expect("readable kubeconfig");
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Runs the real kubectl as `who`.
    pub fn kubectl(&self, who: &str, args: &[&str]) -> Output {
        std::process::Command::new(self.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(who))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// The webhook's Prometheus metrics.
    pub async fn webhook_metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.var("STEPUP_WEBHOOK_ADMIN_URL"))).await.expect("metrics")
    }

    /// Sum of all samples of a counter family.
    pub async fn metric_sum(&self, family: &str) -> f64 {
        let text = self.webhook_metrics().await;
        text.lines()
            .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Audit events of the API server, parsed.
    pub fn audit_events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.var("KUBE_AUDIT_LOG")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// A minimal HTTP/1.0 GET for the webhook's plain-HTTP admin port.
pub async fn http_get(url: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let (head, body) = buf.split_once("\r\n\r\n").context("HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {url}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// Retries `check` until it returns `Ok` or `timeout` passes (then returns the last error).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The cluster as the scenarios use it.
pub struct World {
    pub env: Env,
    pub admin: Client,
    pub policy_writer: Client,
    pub controller: Client,
}

impl World {
    /// Connects and removes what earlier scenarios left behind (policies, grants), so each
    /// scenario starts from the same state.
    pub async fn new() -> Self {
        let env = Env::load();
        let world = Self {
            admin: env.client("admin").await,
            policy_writer: env.client("policy-writer").await,
            controller: env.client("stepup-controller").await,
            env,
        };
        world.reset().await;
        world
    }

    pub async fn reset(&self) {
        let policies: Api<StepUpPolicy> = Api::all(self.policy_writer.clone());
        let grants: Api<StepUpGrant> = Api::all(self.controller.clone());
        let _ = policies.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let _ = grants.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        eventually(Duration::from_secs(10), || async {
            let left = policies.list(&ListParams::default()).await?.items.len()
                + grants.list(&ListParams::default()).await?.items.len();
            if left == 0 { Ok(()) } else { bail!("{left} policies/grants left") }
        })
        .await
        .expect("clean slate");
    }

    /// Applies policies as the GitOps identity and waits until the webhook enforces them.
    pub async fn apply_policies(&self, policies: &[StepUpPolicy]) {
        let api: Api<StepUpPolicy> = Api::all(self.policy_writer.clone());
        for p in policies {
            let name = p.metadata.name.clone().expect("named policy");
            api.patch(&name, &PatchParams::apply("stepup-e2e").force(), &Patch::Apply(p))
                .await
                .expect("policy applied");
        }
        // The webhook's cache follows a watch; give it a moment (milliseconds in practice).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Creates a grant with the controller's identity, as the controller would.
    pub async fn issue_grant(&self, grant: &StepUpGrant) -> Result<StepUpGrant, kube::Error> {
        let api: Api<StepUpGrant> = Api::all(self.controller.clone());
        let created = api.create(&PostParams::default(), grant).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(created)
    }

    /// Grants, as the controller sees them.
    pub fn controller_grants(&self) -> Api<StepUpGrant> {
        Api::all(self.controller.clone())
    }

    /// A fresh Secret in `namespace`, (re)created by the exempt GitOps identity.
    pub async fn secret(&self, namespace: &str, name: &str) {
        let api: Api<Secret> = Api::namespaced(self.policy_writer.clone(), namespace);
        let _ = api.delete(name, &DeleteParams::default()).await;
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"password": "hunter2"}
        }))
        .unwrap();
        eventually(Duration::from_secs(5), || async { Ok(api.create(&PostParams::default(), &secret).await?) })
            .await
            .expect("secret created");
    }

    pub async fn namespace_labels(&self, namespace: &str) -> std::collections::BTreeMap<String, String> {
        let api: Api<Namespace> = Api::all(self.admin.clone());
        api.get(namespace).await.expect("namespace").metadata.labels.unwrap_or_default()
    }
}

/// A grant issued `age` ago that lasts `lifetime` from issuance.
pub fn grant_for(
    name: &str,
    user: &str,
    age: SignedDuration,
    lifetime: SignedDuration,
) -> kube_stepup::testing::GrantBuilder {
    let issued = Timestamp::now() - age;
    kube_stepup::testing::grant(name, user).issued(issued).expires(issued + lifetime)
}

/// The message of an API error, or a panic when the call succeeded.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}
