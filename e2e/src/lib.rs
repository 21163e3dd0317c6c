//! Harness for the end-to-end scenarios: the control plane and stepup processes started by
//! `e2e/scripts/cluster.sh` and `e2e/scripts/stepup.sh`, users that authenticate for real,
//! and small helpers to act as them and to read the evidence (metrics, audit log, Events).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;
use stepup_core::{
    api::{
        self as stepup_api, ChallengePhase, EnrollmentPhase, GrantScope, Method, StepUpChallenge, StepUpChallengeSpec,
        StepUpEnrollment, StepUpEnrollmentSpec, StepUpGrant, StepUpPolicy,
    },
    verify::{
        response::{self, EnrollmentPurpose},
        seal::{EphemeralKey, fingerprint},
        totp,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod attack;
pub mod browser;
pub mod faults;
pub mod idp;

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

    /// A client as `who` that does not retry 429 and 503 answers by itself: a script that
    /// hammers the API server as fast as it is answered.
    pub async fn client_without_retries(&self, who: &str) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(who)).expect("readable kubeconfig");
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
        config.default_retry = false;
        Client::try_from(config).expect("client")
    }

    /// Runs the real kubectl as `who`.
    /// The script-started webhook's pid (its pid file sits beside the logs directory).
    pub fn webhook_pid(&self) -> Option<u32> {
        let logs = PathBuf::from(self.vars.get("STEPUP_LOGS_DIR")?);
        std::fs::read_to_string(logs.parent()?.join("pids/stepup-webhook.pid")).ok()?.trim().parse().ok()
    }

    pub fn kubectl(&self, who: &str, args: &[&str]) -> Output {
        std::process::Command::new(self.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(who))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// The controller's grant signing key, from the key file the e2e processes share.
    pub fn grant_signer(&self) -> stepup_core::keys::GrantSigner {
        let path = PathBuf::from(self.var("STEPUP_KEY_FILE"));
        kube_stepup::config::read_master_key(&path).expect("the e2e master key").grant_signer()
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

    /// Waits (up to 10 s) for the newest ResponseComplete audit event that `wanted` accepts;
    /// returns its annotations (what the webhook entries told the API server).
    pub async fn audit_annotations(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(10), || async {
            self.audit_events()
                .into_iter()
                .rev()
                .find(|e| e["stage"] == "ResponseComplete" && wanted(e))
                .map(|e| e["annotations"].clone())
                .ok_or_else(|| anyhow::anyhow!("no audit event yet"))
        })
        .await
        .expect("the API server's audit event")
    }
}

/// The `n`th port for extra processes a scenario starts (controllers in the crash and leader
/// scenarios): `STEPUP_E2E_EXTRA_PORT_BASE` (default 18091) plus `n`, so that two control planes
/// can run scenarios side by side.
pub fn extra_port(n: u16) -> u16 {
    std::env::var("STEPUP_E2E_EXTRA_PORT_BASE").ok().and_then(|v| v.parse().ok()).unwrap_or(18091) + n
}

/// The release as `make dist` builds it (`hack/dist.sh`, debug binaries), made once per e2e
/// run into `$STEPUP_E2E_DIR/dist` (run-e2e.sh removes it first, so it matches this checkout).
pub fn dist(env: &Env) -> PathBuf {
    static DIST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = DIST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env.var("STEPUP_E2E_DIR")).join("dist");
    if !dir.join("SHA256SUMS").exists() {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/dist.sh"))
            .args(["--profile", "dev", "--out"])
            .arg(&dir)
            .env("HELM", env.var("HELM"))
            .output()
            .expect("hack/dist.sh runs");
        assert!(out.status.success(), "make dist failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

/// A minimal HTTP/1.0 GET for the webhook's plain-HTTP admin port; fails unless the answer is 200.
pub async fn http_get(url: &str) -> Result<String> {
    match http_get_status(url).await? {
        (200, body) => Ok(body),
        (code, body) => bail!("GET {url}: {code} {}", body.trim()),
    }
}

/// A minimal HTTP/1.0 GET: the status code and the body.
/// SHA-256 of `data` in lowercase hex (`sha256sum`: the API server's config hash is of the same bytes).
fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().expect("stdin").write_all(data).expect("sha256sum reads");
    let out = child.wait_with_output().expect("sha256sum answers");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

pub async fn http_get_status(url: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let (head, body) = buf.split_once("\r\n\r\n").context("HTTP response")?;
    let code = head
        .lines()
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("HTTP status line")?;
    Ok((code, body.to_owned()))
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
    /// When this scenario began: a kept control plane holds earlier scenarios' (and earlier
    /// runs') Events, which `events` leaves out.
    pub started: Timestamp,
}

impl World {
    /// Connects and removes what earlier scenarios left behind (policies, grants), so each
    /// scenario starts from the same state.
    pub async fn new() -> Self {
        let env = Env::load();
        // Whole seconds: an Event's older timestamps are kept to the second.
        let started = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
        let world = Self {
            started,
            admin: env.client("admin").await,
            policy_writer: env.client("policy-writer").await,
            controller: env.client("stepup-controller").await,
            env,
        };
        world.reset().await;
        // Admins step up for their acts: have one enrolled before any scenario needs it.
        world.admin_authenticator().await;
        world
    }

    pub async fn reset(&self) {
        let policies: Api<StepUpPolicy> = Api::all(self.policy_writer.clone());
        let grants: Api<StepUpGrant> = Api::all(self.controller.clone());
        // What the webhook must forget before the next scenario starts.
        let had_policies: Vec<String> = policies
            .list(&ListParams::default())
            .await
            .map(|l| l.iter().map(|p| p.name_any()).collect())
            .unwrap_or_default();
        let had_grants: Vec<String> = grants
            .list(&ListParams::default())
            .await
            .map(|l| l.iter().map(|g| g.name_any()).collect())
            .unwrap_or_default();
        let _ = policies.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let _ = grants.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        eventually(Duration::from_secs(10), || async {
            let left = policies.list(&ListParams::default()).await?.items.len()
                + grants.list(&ListParams::default()).await?.items.len();
            if left == 0 { Ok(()) } else { bail!("{left} policies/grants left") }
        })
        .await
        .expect("clean slate");
        for name in &had_policies {
            self.webhook_holds("policies", name, None).await;
        }
        for name in &had_grants {
            self.webhook_holds("grants", name, None).await;
        }
        self.sync_authorizer().await;
    }

    /// Waits until the webhook decides with `version` of the policy or grant `name` (`kind`:
    /// `policies` or `grants`) or a later one, or, with `None`, with no object of that name: the condition
    /// that proves a change reached its cache (its admin port says what it holds).
    pub async fn webhook_holds(&self, kind: &str, name: &str, version: Option<&str>) {
        let url = format!("{}/cache/{kind}/{name}", self.env.var("STEPUP_WEBHOOK_ADMIN_URL"));
        eventually(Duration::from_secs(20), || async {
            let held = match http_get_status(&url).await? {
                (200, body) => Some(body),
                (404, _) => None,
                (code, body) => bail!("GET {url}: {code} {body}"),
            };
            // The controller may have written the object since (a policy's status): a later
            // version holds the change too. resourceVersions are comparable integers (KEP-5504).
            let caught_up = match (held.as_deref(), version) {
                (None, None) => true,
                (Some(held), Some(wanted)) => match (held.parse::<u64>(), wanted.parse::<u64>()) {
                    (Ok(held), Ok(wanted)) => held >= wanted,
                    _ => held == wanted,
                },
                _ => false,
            };
            if caught_up { Ok(()) } else { bail!("the webhook holds {kind}/{name} at {held:?}, not {version:?}") }
        })
        .await
        .expect("the webhook's cache catches up");
    }

    /// Applies policies as the GitOps identity and waits until the webhook enforces them: the
    /// registration routes their resources, and the webhook's cache holds the applied versions.
    pub async fn apply_policies(&self, policies: &[StepUpPolicy]) {
        let api: Api<StepUpPolicy> = Api::all(self.policy_writer.clone());
        let mut applied = Vec::new();
        for p in policies {
            let name = p.metadata.name.clone().expect("named policy");
            let written = api
                .patch(&name, &PatchParams::apply("stepup-e2e").force(), &Patch::Apply(p))
                .await
                .expect("policy applied");
            applied.push((name, written.resource_version().expect("a written object has a version")));
        }
        self.wait_routed(policies).await;
        for (name, version) in &applied {
            self.webhook_holds("policies", name, Some(version)).await;
        }
        self.sync_authorizer().await;
    }

    /// Renders the API server's authorization configuration from the policies in the cluster
    /// (`stepup authorizer-config`, as an operator's sync would) and waits until the API
    /// server has loaded that file: its `last_config_info` metric names the file's hash.
    pub async fn sync_authorizer(&self) {
        self.render_authorizer(&self.env.sign_in_env()).await
    }

    /// [`Self::sync_authorizer`] with `env` for `stepup authorizer-config` (the sign-in keys it
    /// is told; an operator may forget them).
    pub async fn render_authorizer(&self, env: &[(&str, &str)]) {
        let path = self.env.var("KUBE_AUTHORIZATION_CONFIG").to_owned();
        let rendered = tokio::process::Command::new(self.env.var("STEPUP_BIN"))
            .args(["authorizer-config", "--webhook-kubeconfig", self.env.var("STEPUP_AUTHORIZER_KUBECONFIG")])
            .args(["--node-authorizer=false", "--namespace", "stepup-system", "--output", &path])
            .env("KUBECONFIG", self.env.kubeconfig("admin"))
            .envs(env.iter().copied())
            .output()
            .await
            .expect("stepup authorizer-config runs");
        assert!(rendered.status.success(), "stepup authorizer-config: {}", String::from_utf8_lossy(&rendered.stderr));
        let hash = format!("sha256:{}", sha256_hex(&std::fs::read(&path).expect("the rendered file")));
        eventually(Duration::from_secs(90), || async {
            let metrics = self.admin.request_text(hyper::Request::get("/metrics").body(Vec::new())?).await?;
            let loaded = metrics
                .lines()
                .find(|l| l.starts_with("apiserver_authorization_config_controller_last_config_info{"))
                .unwrap_or("none");
            if loaded.contains(&hash) {
                Ok(())
            } else {
                bail!("the API server's authorization config is {loaded}, not {hash}")
            }
        })
        .await
        .expect("the API server loads the rendered authorization configuration");
    }

    /// Waits until the controller has added the policies' resources to the webhook's rules:
    /// a `Deny` policy's to the entry that fails closed, the others' to either.
    ///
    /// What this cannot see is the API server's own informer of the registration, which picks
    /// the stored object up a moment later (milliseconds on one local API server): Kubernetes
    /// exposes no condition or metric for the version that informer holds, and a dry-run probe
    /// needs a valid object of each resource (invalid ones fail before validating admission).
    /// So this is the one wait in the harness not proven by a condition; the webhook-cache wait
    /// that follows it in `apply_policies` gives the informer that moment. No full run has
    /// failed on it; if one does, the probe is a per-resource dry run of a valid object.
    pub async fn wait_routed(&self, policies: &[StepUpPolicy]) {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        use kube_stepup::controller::webhook_config::routed_resources;
        use stepup_core::api::Enforcement;
        let wanted = |deny: bool| -> Vec<String> {
            policies
                .iter()
                .filter(|p| !deny || p.spec.enforcement == Enforcement::Deny)
                // Rules of verbs alone are the authorizer's: admission is not asked about them.
                .flat_map(|p| p.spec.match_.rules.iter().filter(|r| !r.operations.is_empty()))
                .flat_map(|r| r.resources.clone())
                .collect()
        };
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.admin.clone());
        eventually(Duration::from_secs(20), || async {
            let config = api.get("stepup.dev").await?;
            let routed = routed_resources(&config);
            let mut failing_closed = config.clone();
            failing_closed.webhooks.get_or_insert_default().retain(|w| w.failure_policy.as_deref() == Some("Fail"));
            let closed = routed_resources(&failing_closed);
            let missing: Vec<String> = wanted(false).into_iter().filter(|r| !routed.contains(r)).collect();
            let open: Vec<String> = wanted(true).into_iter().filter(|r| !closed.contains(r)).collect();
            if missing.is_empty() && open.is_empty() {
                Ok(())
            } else {
                bail!("not routed yet: {missing:?}; Deny rules not failing closed yet: {open:?}")
            }
        })
        .await
        .expect("the controller routes the policies' resources to the webhook");
    }

    /// Creates a grant as the controller would: signed with the controller's key (the test
    /// reads the same key file the controller process does) and written with its identity.
    pub async fn issue_grant(&self, grant: &StepUpGrant) -> Result<StepUpGrant, kube::Error> {
        let mut grant = grant.clone();
        self.env.grant_signer().sign_grant(&mut grant);
        let api: Api<StepUpGrant> = Api::all(self.controller.clone());
        let created = api.create(&PostParams::default(), &grant).await?;
        self.webhook_holds("grants", &created.name_any(), created.resource_version().as_deref()).await;
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
) -> stepup_core::testing::GrantBuilder {
    let issued = Timestamp::now() - age;
    stepup_core::testing::grant(name, user).issued(issued).expires(issued + lifetime)
}

/// The message of an API error, or a panic when the call succeeded.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

// ---------------------------------------------------------------- second factor

/// The test's authenticator app: holds the seed it unsealed and hands out codes, one per
/// 30-second step (a step's code is accepted only once).
pub struct Authenticator {
    seed: Vec<u8>,
    last_step: Option<u64>,
}

impl Authenticator {
    pub fn new(seed: Vec<u8>) -> Self {
        Self { seed, last_step: None }
    }

    /// A code for a step not handed out before: the current step, or the next one (the
    /// verifier accepts one step of skew either way), waiting only when both are used up.
    pub async fn code(&mut self) -> String {
        loop {
            let current = totp::step_of(Timestamp::now());
            let step = self.last_step.map_or(current, |last| current.max(last + 1));
            if step <= current + 1 {
                self.last_step = Some(step);
                return totp::code_at(&self.seed, Timestamp::from_second((step * totp::STEP_SECONDS) as i64).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The code of the step last handed out (to replay it).
    pub fn last_code(&self) -> String {
        let step = self.last_step.expect("a code was handed out");
        totp::code_at(&self.seed, Timestamp::from_second((step * totp::STEP_SECONDS) as i64).unwrap())
    }

    /// A code that is certainly wrong now.
    pub fn wrong_code(&self) -> String {
        let now = Timestamp::now();
        // Not right for any time the controller compares (±10 min), or it would say "another time".
        let near = totp::NEAR_STEPS + 1;
        let window: Vec<String> =
            (-near..=near).map(|s| totp::code_at(&self.seed, now + SignedDuration::from_secs(s * 30))).collect();
        (0..1000).map(|n| format!("{:06}", 271_828 + n)).find(|c| !window.contains(c)).unwrap()
    }

    pub fn seed(&self) -> &[u8] {
        &self.seed
    }
}

/// How long a challenge the harness creates may wait for its verdict.
pub const CHALLENGE_DEADLINE: SignedDuration = SignedDuration::from_secs(60);

/// A challenge as `kubectl stepup request` builds it: named by the plugin, with a deadline and
/// the withdrawal finalizer, the code sealed to `response_key` for exactly this challenge.
pub fn sealed_challenge(
    user: &str,
    uid: &str,
    code: &str,
    reason: Option<&str>,
    duration: Option<&str>,
    response_key: &str,
) -> StepUpChallenge {
    let mut c = StepUpChallenge::new(
        &kubectl_stepup::request::challenge_name(user),
        StepUpChallengeSpec {
            user: user.into(),
            uid: (!uid.is_empty()).then(|| uid.to_owned()),
            method: Method::Totp,
            response: None,
            reason: reason.map(Into::into),
            duration: duration.map(|d| d.parse().expect("duration")),
            scope: GrantScope::default(),
            deadline: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second((Timestamp::now() + CHALLENGE_DEADLINE).as_second()).unwrap(),
            )),
            correlation: None,
        },
    );
    c.metadata.labels =
        Some([(stepup_api::USER_LABEL.to_owned(), stepup_api::user_label_value(user))].into_iter().collect());
    c.metadata.finalizers = Some(vec![stepup_api::WITHDRAWAL_FINALIZER.to_owned()]);
    let sealed = response::seal_code(response_key, code, response::challenge_binding(&c)).expect("sealed");
    c.spec.response = Some(sealed);
    c
}

/// An `OIDC` challenge as the plugin builds it before the sign-in (named, with a deadline,
/// nothing sealed yet): its nonce ([`stepup_core::verify::oidc::challenge_nonce`]) is what the
/// identity provider is asked to put in the ID token.
pub fn oidc_challenge(user: &str, uid: &str) -> StepUpChallenge {
    let mut c = sealed_challenge(user, uid, "", None, None, &Env::unused_key());
    c.spec.method = Method::Oidc;
    c.spec.response = None;
    c
}

/// `c` with `token` sealed into it for exactly this challenge, as the plugin seals it.
pub fn with_sealed_token(mut c: StepUpChallenge, token: &str, response_key: &str) -> StepUpChallenge {
    c.spec.response = None;
    c.spec.response = Some(response::seal_code(response_key, token, response::challenge_binding(&c)).expect("sealed"));
    c
}

/// A code sealed for `e` as it stands (name, user, key), as the plugin seals it.
pub fn sealed_confirmation(e: &StepUpEnrollment, code: &str, purpose: EnrollmentPurpose, response_key: &str) -> String {
    response::seal_code(response_key, code, response::enrollment_binding(e, purpose)).expect("sealed")
}

impl Env {
    /// A well-formed response key nobody opens with (for a challenge sealed again later).
    fn unused_key() -> String {
        stepup_core::keys::MasterKey::from_bytes([7; 32]).response_opener().public_base64()
    }

    /// The controller's response key, derived from the key file the e2e processes share (for
    /// challenges of users who have no enrollment to publish it).
    pub fn response_key(&self) -> String {
        let path = PathBuf::from(self.var("STEPUP_KEY_FILE"));
        kube_stepup::config::read_master_key(&path).expect("the e2e master key").response_opener().public_base64()
    }
}

impl World {
    /// Removes a user's enrollment and factor (as admin), so a scenario can enroll afresh.
    pub async fn unenroll(&self, user: &str) {
        let enrollments: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        for method in Method::ENROLLED {
            let _ = enrollments.delete(&stepup_api::enrollment_name_for(user, method), &DeleteParams::default()).await;
        }
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), "stepup-system");
        let _ = secrets.delete(&stepup_api::factor_secret_name(user), &DeleteParams::default()).await;
        eventually(Duration::from_secs(10), || async {
            let mut left = secrets.get_opt(&stepup_api::factor_secret_name(user)).await?.is_some();
            for method in Method::ENROLLED {
                left |= enrollments.get_opt(&stepup_api::enrollment_name_for(user, method)).await?.is_some();
            }
            if left { bail!("{user} still enrolled") } else { Ok(()) }
        })
        .await
        .expect("unenrolled");
    }

    /// Creates `user`'s enrollment as `who` with `key`, and waits until the controller has seen it.
    pub async fn create_enrollment(&self, who: &str, user: &str, key: &EphemeralKey) -> StepUpEnrollment {
        let as_user: Api<StepUpEnrollment> = Api::all(self.env.client(who).await);
        let enrollment = enrollment_of(user, key, None);
        as_user.create(&PostParams::default(), &enrollment).await.expect("enrollment created");
        self.wait_enrollment(user, EnrollmentPhase::PendingApproval).await
    }

    /// Enrolls `who` (username `user`) from scratch: the user creates the enrollment, the admin
    /// approves its key, the test unseals the seed like the plugin would and confirms a first code.
    pub async fn enroll(&self, who: &str, user: &str) -> Authenticator {
        self.unenroll(user).await;
        let key = EphemeralKey::generate();
        self.create_enrollment(who, user, &key).await;
        self.approve(user).await;
        self.finish_enrollment(who, user, &key).await
    }

    /// Waits for the seed sealed to `key`, unseals it and confirms its first code (sealed).
    pub async fn finish_enrollment(&self, who: &str, user: &str, key: &EphemeralKey) -> Authenticator {
        let as_user: Api<StepUpEnrollment> = Api::all(self.env.client(who).await);
        let name = stepup_api::enrollment_name(user);
        let sealed = eventually(Duration::from_secs(20), || async {
            let e = as_user.get(&name).await?;
            e.status.and_then(|s| s.sealed_secret).ok_or_else(|| anyhow::anyhow!("not sealed yet"))
        })
        .await
        .expect("sealed seed");
        let seed = key.open(&sealed).expect("the seed opens with the ephemeral key").to_vec();
        let mut auth = Authenticator::new(seed);
        let code = auth.code().await;
        self.confirm(who, user, &code).await;
        self.wait_enrollment(user, EnrollmentPhase::Active).await;
        auth
    }

    /// Puts `code` in the enrollment's `spec.confirmation`, sealed for its current key.
    pub async fn confirm(&self, who: &str, user: &str, code: &str) {
        let as_user: Api<StepUpEnrollment> = Api::all(self.env.client(who).await);
        let name = stepup_api::enrollment_name(user);
        let e = as_user.get(&name).await.expect("enrollment");
        let key = e.status.as_ref().and_then(|s| s.response_key.clone()).expect("the controller publishes its key");
        let sealed = sealed_confirmation(&e, code, EnrollmentPurpose::Confirmation, &key);
        let patch = serde_json::json!({"spec": {"confirmation": sealed}});
        as_user.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("confirmation");
    }

    /// The admin's authenticator. Admins need a fresh grant of their own to approve, reset or
    /// unlock others, so the admin is enrolled once per control plane through the bootstrap, as
    /// README and NOTES tell a one-admin team, and the seed is remembered in the e2e directory.
    pub async fn admin_authenticator(&self) -> Authenticator {
        let file = PathBuf::from(self.env.var("STEPUP_E2E_DIR")).join("admin-authenticator");
        let enrollments: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let enrolled = enrollments
            .get_opt(&stepup_api::enrollment_name("admin"))
            .await
            .ok()
            .flatten()
            .filter(|e| e.status.as_ref().and_then(|s| s.phase) == Some(EnrollmentPhase::Active))
            .and_then(|e| e.status.and_then(|s| s.enrolled_key_fingerprint));
        if let (Ok(text), Some(fp)) = (std::fs::read_to_string(&file), enrolled) {
            let fields: Vec<&str> = text.split_whitespace().collect();
            if let [seed, key, step] = fields[..]
                && key == fp
            {
                let seed =
                    (0..seed.len()).step_by(2).filter_map(|i| u8::from_str_radix(&seed[i..i + 2], 16).ok()).collect();
                return Authenticator { seed, last_step: step.parse().ok() };
            }
        }
        let (auth, fp) = self.bootstrap_admin().await;
        self.remember_admin(&auth, &fp);
        auth
    }

    /// Saves the admin's authenticator (seed, enrolled key fingerprint, last step) for later scenarios.
    pub fn remember_admin(&self, auth: &Authenticator, fp: &str) {
        let file = PathBuf::from(self.env.var("STEPUP_E2E_DIR")).join("admin-authenticator");
        let seed: String = auth.seed.iter().map(|b| format!("{b:02x}")).collect();
        let step = auth.last_step.map(|s| s.to_string()).unwrap_or_else(|| "0".into());
        std::fs::write(file, format!("{seed} {fp} {step}\n")).expect("admin authenticator saved");
    }

    /// Starts over as a fresh installation: nobody enrolled, no bootstrap record, the controller
    /// restarted (it opens the bootstrap window), then the admin enrolls through the bootstrap.
    pub async fn bootstrap_admin(&self) -> (Authenticator, String) {
        {
            let _paused = ScriptControllerPaused::new();
            self.forget_everyone().await;
        }
        let key = EphemeralKey::generate();
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        // An installer may read the window's token; the enrollment proves it did.
        let token = self.bootstrap_token().await;
        let e = bootstrap_enrollment("admin", &key, &token);
        eventually(Duration::from_secs(30), || async { Ok(api.create(&PostParams::default(), &e).await?) })
            .await
            .expect("the admin's enrollment");
        let auth = self.finish_enrollment("admin", "admin", &key).await;
        (auth, fingerprint(&key.public_key_b64()))
    }

    /// The open bootstrap window's token, once the controller has published it (as an installer
    /// reads it).
    pub async fn bootstrap_token(&self) -> String {
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), "stepup-system");
        eventually(Duration::from_secs(30), || async {
            let secret = secrets.get(stepup_core::keys::BOOTSTRAP_TOKEN_SECRET).await?;
            let token = secret
                .data
                .and_then(|d| {
                    d.get(stepup_core::keys::BOOTSTRAP_TOKEN_KEY).map(|t| String::from_utf8_lossy(&t.0).into_owned())
                })
                .unwrap_or_default();
            if token.is_empty() { bail!("the bootstrap token is not published") } else { Ok(token) }
        })
        .await
        .expect("the controller publishes the bootstrap token")
    }

    /// Removes every enrollment, factor and the bootstrap record (while the controller is stopped).
    pub async fn forget_everyone(&self) {
        let enrollments: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let _ = enrollments.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), "stepup-system");
        let managed = ListParams::default().labels("app.kubernetes.io/managed-by=stepup");
        let _ = secrets.delete_collection(&DeleteParams::default(), &managed).await;
        let _ = secrets.delete("stepup-bootstrap", &DeleteParams::default()).await;
        eventually(Duration::from_secs(20), || async {
            let left =
                enrollments.list(&ListParams::default()).await?.items.len() + secrets.list(&managed).await?.items.len();
            if left == 0 { Ok(()) } else { bail!("{left} enrollments and factors left") }
        })
        .await
        .expect("everyone forgotten");
    }

    /// Makes sure the admin holds a grant fresh enough for admin acts (the built-in policy
    /// accepts grants up to 15 minutes old; this renews them after 10).
    pub async fn admin_steps_up(&self) {
        let fresh = self.grants_of("admin").await.into_iter().any(|g| {
            g.metadata.deletion_timestamp.is_none()
                && g.spec.issued_at.0 > Timestamp::now() - SignedDuration::from_mins(10)
                && g.spec.expires_at.0 > Timestamp::now() + SignedDuration::from_mins(1)
        });
        if fresh {
            return;
        }
        let mut auth = self.admin_authenticator().await;
        for _ in 0..3 {
            let code = auth.code().await;
            let c = self.challenge("admin", "admin", "uid-admin", &code, Some("e2e admin act")).await;
            let fp = Api::<StepUpEnrollment>::all(self.admin.clone())
                .get(&stepup_api::enrollment_name("admin"))
                .await
                .ok()
                .and_then(|e| e.status.and_then(|s| s.enrolled_key_fingerprint))
                .unwrap_or_default();
            self.remember_admin(&auth, &fp);
            if c.status.as_ref().and_then(|s| s.phase) == Some(ChallengePhase::Verified) {
                return;
            }
        }
        panic!("the admin could not step up");
    }

    /// The admin approves the key the enrollment carries now, as `kubectl stepup approve --key` does.
    pub async fn approve(&self, user: &str) {
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let e = api.get(&stepup_api::enrollment_name(user)).await.expect("enrollment");
        self.approve_key(user, &fingerprint(&e.spec.public_key)).await.expect("approved");
    }

    /// The admin approves `fingerprint` for `user`'s enrollment (the API server may refuse).
    pub async fn approve_key(&self, user: &str, fingerprint: &str) -> Result<StepUpEnrollment, kube::Error> {
        self.admin_steps_up().await;
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let patch = serde_json::json!({"metadata": {"annotations": {
            stepup_api::APPROVED_BY_ANNOTATION: "admin",
            stepup_api::APPROVED_KEY_ANNOTATION: fingerprint,
            stepup_api::APPROVED_AT_ANNOTATION: Timestamp::now().to_string(),
        }}});
        api.patch(&stepup_api::enrollment_name(user), &PatchParams::default(), &Patch::Merge(&patch)).await
    }

    /// The admin unlocks `user`, as `kubectl stepup unlock` does.
    pub async fn unlock(&self, user: &str) {
        self.admin_steps_up().await;
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let patch = serde_json::json!({"metadata": {"annotations": {stepup_api::UNLOCK_BY_ANNOTATION: "admin"}}});
        api.patch(&stepup_api::enrollment_name(user), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("unlocked");
    }

    pub async fn wait_enrollment(&self, user: &str, phase: EnrollmentPhase) -> StepUpEnrollment {
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        eventually(Duration::from_secs(20), || async {
            let e = api.get(&stepup_api::enrollment_name(user)).await?;
            let now = e.status.as_ref().and_then(|s| s.phase);
            if now == Some(phase) { Ok(e) } else { bail!("enrollment of {user} is {now:?}, waiting for {phase:?}") }
        })
        .await
        .expect("enrollment phase")
    }

    /// The response key `user`'s enrollment publishes, or the one derived from the key file.
    pub async fn response_key_for(&self, user: &str) -> String {
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        match api.get_opt(&stepup_api::enrollment_name(user)).await.ok().flatten() {
            Some(e) => e.status.and_then(|s| s.response_key).unwrap_or_else(|| self.env.response_key()),
            None => self.env.response_key(),
        }
    }

    /// Creates a challenge as `who` and waits for the controller's verdict.
    pub async fn challenge(
        &self,
        who: &str,
        user: &str,
        uid: &str,
        code: &str,
        reason: Option<&str>,
    ) -> StepUpChallenge {
        let created = self.create_challenge(who, user, uid, code, reason, None).await.expect("challenge created");
        self.verdict(&created.name_any()).await
    }

    /// Creates a challenge as `who`, the code sealed as the plugin seals it.
    pub async fn create_challenge(
        &self,
        who: &str,
        user: &str,
        uid: &str,
        code: &str,
        reason: Option<&str>,
        duration: Option<&str>,
    ) -> Result<StepUpChallenge, kube::Error> {
        let key = self.response_key_for(user).await;
        self.create_raw_challenge(who, &sealed_challenge(user, uid, code, reason, duration, &key)).await
    }

    /// Creates `challenge` as `who`, exactly as given.
    pub async fn create_raw_challenge(
        &self,
        who: &str,
        challenge: &StepUpChallenge,
    ) -> Result<StepUpChallenge, kube::Error> {
        let api: Api<StepUpChallenge> = Api::all(self.env.client(who).await);
        api.create(&PostParams::default(), challenge).await
    }

    /// Waits until the challenge is no longer Pending.
    pub async fn verdict(&self, name: &str) -> StepUpChallenge {
        let api: Api<StepUpChallenge> = Api::all(self.admin.clone());
        eventually(Duration::from_secs(30), || async {
            let c = api.get(name).await?;
            match c.status.as_ref().and_then(|s| s.phase) {
                Some(ChallengePhase::Pending) | None => bail!("challenge {name} still pending"),
                Some(_) => Ok(c),
            }
        })
        .await
        .expect("challenge verdict")
    }

    /// Grants of a user, as the controller sees them.
    pub async fn grants_of(&self, user: &str) -> Vec<StepUpGrant> {
        let selector = format!("{}={}", stepup_api::USER_LABEL, stepup_api::user_label_value(user));
        self.controller_grants().list(&ListParams::default().labels(&selector)).await.expect("grants").items
    }

    /// Events in stepup's namespace with `reason`, last seen since this scenario began.
    pub async fn events(&self, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.admin.clone(), "stepup-system");
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| last_seen(e).is_some_and(|at| at >= self.started))
            .collect()
    }

    /// Waits for an Event with `reason` whose note contains `needle`; returns the note.
    pub async fn wait_event(&self, reason: &str, needle: &str) -> String {
        eventually(Duration::from_secs(15), || async {
            self.events(reason)
                .await
                .into_iter()
                .filter_map(|e| e.note)
                .find(|n| n.contains(needle))
                .ok_or_else(|| anyhow::anyhow!("no {reason} event mentioning {needle:?}"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// When an Event (or the last repeat folded into it) happened.
fn last_seen(e: &k8s_openapi::api::events::v1::Event) -> Option<Timestamp> {
    [
        e.series.as_ref().map(|s| s.last_observed_time.0),
        e.event_time.as_ref().map(|t| t.0),
        e.deprecated_last_timestamp.as_ref().map(|t| t.0),
        e.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The controller's metrics (the process stepup.sh runs).
pub async fn controller_metric_sum(env: &Env, family: &str) -> f64 {
    let text = http_get(&format!("{}/metrics", env.var("STEPUP_CONTROLLER_ADMIN_URL"))).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// JSON lines of a stepup process's log on the audit target.
pub fn audit_lines(log: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "stepup::audit")
        .collect()
}

// ---------------------------------------------------------------- controller processes

/// A `stepup controller` process started by a scenario (crash and leader tests), killed on drop.
pub struct ControllerProcess {
    child: std::process::Child,
    pub admin_url: String,
}

impl ControllerProcess {
    pub fn spawn(env: &Env, instance: &str, admin_port: u16, extra: &[&str]) -> Self {
        Self::spawn_with(env, instance, admin_port, &env.kubeconfig("stepup-controller"), extra)
    }

    /// A controller that reaches the API server through `link` (which the test may stall).
    pub fn spawn_via(env: &Env, instance: &str, admin_port: u16, link: &faults::FaultyLink, extra: &[&str]) -> Self {
        let kubeconfig = faults::kubeconfig_via(env, "stepup-controller", link, instance);
        Self::spawn_with(env, instance, admin_port, &kubeconfig, extra)
    }

    fn spawn_with(env: &Env, instance: &str, admin_port: u16, kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let log =
            std::fs::File::create(format!("{}/stepup-controller-{instance}.log", env.var("STEPUP_LOGS_DIR"))).unwrap();
        let mut cmd = std::process::Command::new(env.var("STEPUP_BIN"));
        cmd.arg("controller")
            .args(env.var("STEPUP_CONTROLLER_FLAGS").split_whitespace())
            .args(["--instance", instance, "--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // As stepup.sh runs its controller: what scenarios read in the log is written.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.sign_in_env())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Self { child: cmd.spawn().expect("controller starts"), admin_url: format!("http://127.0.0.1:{admin_port}") }
    }

    /// Whether this replica holds the lease (its `stepup_leader` gauge).
    pub async fn is_leader(&self) -> bool {
        http_get(&format!("{}/metrics", self.admin_url)).await.is_ok_and(|m| m.lines().any(|l| l == "stepup_leader 1"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`STOP`, `CONT`) to the process: a stopped controller is a slow one.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        // A stopped process ignores SIGTERM but not SIGKILL; continue it anyway for a clean exit.
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .stderr(std::process::Stdio::null())
            .status();
        self.kill();
    }
}

/// `user`'s enrollment of `key` asking for the bootstrap, with the proof made with `token`
/// (the window's, as an installer reads it; anything else, as an attacker guesses it).
pub fn bootstrap_enrollment(user: &str, key: &EphemeralKey, token: &str) -> StepUpEnrollment {
    enrollment_of(user, key, Some(stepup_core::keys::bootstrap_proof(token, user, &key.public_key_b64())))
}

/// `user`'s enrollment of `key`, as the plugin writes it; with `bootstrap_proof`, one asking
/// for the bootstrap.
fn enrollment_of(user: &str, key: &EphemeralKey, bootstrap_proof: Option<String>) -> StepUpEnrollment {
    let mut e = StepUpEnrollment::new(
        &stepup_api::enrollment_name(user),
        StepUpEnrollmentSpec {
            user: user.into(),
            method: Method::Totp,
            public_key: key.public_key_b64(),
            confirmation: None,
            bootstrap: bootstrap_proof.is_some(),
            bootstrap_proof,
        },
    );
    e.metadata.labels = Some([(stepup_api::USER_LABEL.to_owned(), stepup_api::user_label_value(user))].into());
    e
}

/// A process stepup.sh runs (`controller`, `webhook`), stopped for the duration of a scenario
/// and started again afterwards (stepup.sh waits until it is ready), even when the scenario
/// panics.
struct ScriptStopped {
    script: PathBuf,
    process: &'static str,
}

impl ScriptStopped {
    fn new(process: &'static str) -> Self {
        let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stepup.sh"));
        let out = std::process::Command::new(&script).arg(format!("{process}-stop")).output().expect("stepup.sh runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self { script, process }
    }
}

impl Drop for ScriptStopped {
    fn drop(&mut self) {
        let out = std::process::Command::new(&self.script).arg(format!("{}-start", self.process)).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not restart the stepup {}", self.process);
        }
    }
}

/// The controller stepup.sh runs, stopped until this is dropped.
pub struct ScriptControllerPaused(#[allow(dead_code)] ScriptStopped);

impl ScriptControllerPaused {
    pub fn new() -> Self {
        Self(ScriptStopped::new("controller"))
    }
}

impl Default for ScriptControllerPaused {
    fn default() -> Self {
        Self::new()
    }
}

/// The webhook stepup.sh runs, stopped until this is dropped.
pub struct ScriptWebhookStopped(#[allow(dead_code)] ScriptStopped);

impl ScriptWebhookStopped {
    pub fn new() -> Self {
        Self(ScriptStopped::new("webhook"))
    }
}

impl Default for ScriptWebhookStopped {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- the plugin, as a person runs it

/// `kubectl stepup` running in the background with a kubeconfig's credentials, its standard
/// error read line by line (where it says where to sign in).
pub struct Running {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// What it wrote to standard error so far.
    pub said: Vec<String>,
}

/// How a background run of the plugin ended.
pub struct Ended {
    pub success: bool,
    pub stdout: String,
    /// Everything it wrote to standard error, from the start.
    pub stderr: String,
}

impl Running {
    pub fn start(world: &World, kubeconfig: &std::path::Path, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(world.env.var("KUBECTL_STEPUP_BIN"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("KUBECTL", world.env.var("KUBECTL"))
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl-stepup runs");
        let stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        Self { child, stderr, said: Vec::new() }
    }

    /// Reads standard error until a line gives what `find` looks for.
    pub async fn until<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let wait = async {
            while let Some(line) = self.stderr.next_line().await.expect("stderr line") {
                self.said.push(line.clone());
                if let Some(found) = find(line.trim()) {
                    return found;
                }
            }
            panic!("the plugin never printed {what}: {:?}", self.said)
        };
        tokio::time::timeout(Duration::from_secs(60), wait).await.unwrap_or_else(|_| panic!("no {what} within 60 s"))
    }

    /// Waits for the plugin to exit.
    pub async fn finish(mut self) -> Ended {
        while let Ok(Some(line)) = self.stderr.next_line().await {
            self.said.push(line);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("kubectl-stepup finishes")
            .expect("output");
        Ended {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: self.said.join("\n"),
        }
    }
}

/// Runs `kubectl stepup` as `who`, with `stdin` as standard input (none when `None`).
pub async fn plugin(env: &Env, who: &str, args: &[&str], stdin: Option<&str>) -> Output {
    plugin_with(env, &env.kubeconfig(who), args, stdin).await
}

/// `kubectl stepup` with the credentials of a kubeconfig file.
pub async fn plugin_with(env: &Env, kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env.var("KUBECTL_STEPUP_BIN"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("KUBECTL", env.var("KUBECTL"))
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl-stepup runs");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.expect("stdin");
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("kubectl-stepup finishes")
        .expect("output")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn show(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// RFC 4648 base32 (no padding), as in the otpauth URI.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c).expect("base32 character") as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `kubectl stepup` in a pseudo-terminal, as a person would run it.
pub struct Terminal {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    screen: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr to the screen; they end at end of file.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Terminal {
    pub fn spawn(env: &Env, who: &str, args: &[&str]) -> Self {
        let kubeconfig = env.kubeconfig(who).display().to_string();
        let command: Vec<String> = [env.var("KUBECTL_STEPUP_BIN"), "--kubeconfig", &kubeconfig]
            .into_iter()
            .chain(args.iter().copied())
            .map(shell_quote)
            .collect();
        let mut child = tokio::process::Command::new("script")
            .args(["-qefc", &command.join(" "), "/dev/null"])
            .env("KUBECTL", env.var("KUBECTL"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("script(1) from util-linux runs");
        let input = child.stdin.take().expect("stdin");
        let screen = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let screen = screen.clone();
            readers.push(tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    screen.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }));
        }
        Self { child, input, screen, readers }
    }

    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until the screen shows `needle` after position `from`; returns the position after it.
    pub async fn expect(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(from..).and_then(|s| s.find(needle)) {
                return from + at + needle.len();
            }
            assert!(tokio::time::Instant::now() < deadline, "waited for {needle:?}; the terminal shows:\n{screen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_line(&mut self, line: &str) {
        self.input.write_all(format!("{line}\n").as_bytes()).await.expect("typing");
        self.input.flush().await.expect("typing");
    }

    pub async fn exit_code(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the plugin exits")
            .expect("exit status");
        // Everything the plugin printed is on the screen once both pipes reach end of file.
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
        (status.code().unwrap_or(-1), self.screen())
    }
}

/// Resident memory (VmRSS) of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}
