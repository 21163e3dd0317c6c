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

pub mod attack;

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

    /// The controller's grant signing key, from the key file the e2e processes share.
    pub fn grant_signer(&self) -> kube_stepup::keys::GrantSigner {
        let path = PathBuf::from(self.var("STEPUP_KEY_FILE"));
        kube_stepup::keys::MasterKey::from_file(&path).expect("the e2e master key").grant_signer()
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

/// The `n`th port for extra processes a scenario starts (controllers in the crash and leader
/// scenarios): `STEPUP_E2E_EXTRA_PORT_BASE` (default 18091) plus `n`, so that two control planes
/// can run scenarios side by side.
pub fn extra_port(n: u16) -> u16 {
    std::env::var("STEPUP_E2E_EXTRA_PORT_BASE").ok().and_then(|v| v.parse().ok()).unwrap_or(18091) + n
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
        self.wait_routed(policies).await;
        // The webhook's cache follows a watch too; give it a moment (milliseconds in practice).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Waits until the controller has added the policies' resources to the webhook's rules.
    pub async fn wait_routed(&self, policies: &[StepUpPolicy]) {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let wanted: Vec<String> =
            policies.iter().flat_map(|p| p.spec.match_.rules.iter().flat_map(|r| r.resources.clone())).collect();
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.admin.clone());
        eventually(Duration::from_secs(20), || async {
            let config = api.get("stepup.dev").await?;
            let routed = kube_stepup::controller::webhook_config::routed_resources(&config);
            let missing: Vec<&String> = wanted.iter().filter(|r| !routed.contains(*r)).collect();
            if missing.is_empty() { Ok(()) } else { bail!("not routed yet: {missing:?}") }
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

// ---------------------------------------------------------------- second factor

use kube::ResourceExt;
use kube_stepup::{
    api::{
        self as stepup_api, ChallengePhase, EnrollmentPhase, GrantScope, Method, StepUpChallenge, StepUpChallengeSpec,
        StepUpEnrollment, StepUpEnrollmentSpec,
    },
    verify::{seal::EphemeralKey, totp},
};

/// The test's authenticator app: holds the seed it unsealed and hands out codes, one per
/// 30-second step (a step's code is accepted only once).
pub struct Authenticator {
    seed: Vec<u8>,
    last_step: Option<u64>,
}

impl Authenticator {
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
        let window: Vec<String> =
            [-30i64, 0, 30].iter().map(|o| totp::code_at(&self.seed, now + SignedDuration::from_secs(*o))).collect();
        (0..1000).map(|n| format!("{:06}", 271_828 + n)).find(|c| !window.contains(c)).unwrap()
    }

    pub fn seed(&self) -> &[u8] {
        &self.seed
    }
}

impl World {
    /// Removes a user's enrollment and factor (as admin), so a scenario can enroll afresh.
    pub async fn unenroll(&self, user: &str) {
        let enrollments: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let _ = enrollments.delete(&stepup_api::enrollment_name(user), &DeleteParams::default()).await;
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), "stepup-system");
        let _ = secrets.delete(&stepup_api::factor_secret_name(user), &DeleteParams::default()).await;
        eventually(Duration::from_secs(10), || async {
            let left = enrollments.get_opt(&stepup_api::enrollment_name(user)).await?.is_some()
                || secrets.get_opt(&stepup_api::factor_secret_name(user)).await?.is_some();
            if left { bail!("{user} still enrolled") } else { Ok(()) }
        })
        .await
        .expect("unenrolled");
    }

    /// Enrolls `who` (username `user`) from scratch: the user creates the enrollment, the admin
    /// approves, the test unseals the seed like the plugin would and confirms a first code.
    pub async fn enroll(&self, who: &str, user: &str) -> Authenticator {
        self.unenroll(user).await;
        let key = EphemeralKey::generate();
        let as_user: Api<StepUpEnrollment> = Api::all(self.env.client(who).await);
        let name = stepup_api::enrollment_name(user);
        let mut enrollment = StepUpEnrollment::new(
            &name,
            StepUpEnrollmentSpec {
                user: user.into(),
                method: Method::Totp,
                public_key: key.public_key_b64(),
                confirmation: None,
            },
        );
        enrollment.metadata.labels =
            Some([(stepup_api::USER_LABEL.to_owned(), stepup_api::user_label_value(user))].into_iter().collect());
        as_user.create(&PostParams::default(), &enrollment).await.expect("enrollment created");
        self.wait_enrollment(user, EnrollmentPhase::PendingApproval).await;
        self.approve(user).await;
        let sealed = eventually(Duration::from_secs(20), || async {
            let e = as_user.get(&name).await?;
            e.status.and_then(|s| s.sealed_secret).ok_or_else(|| anyhow::anyhow!("not sealed yet"))
        })
        .await
        .expect("sealed seed");
        let seed = key.open(&sealed).expect("the seed opens with the ephemeral key").to_vec();
        let mut auth = Authenticator { seed, last_step: None };
        let code = auth.code().await;
        let patch = serde_json::json!({"spec": {"confirmation": code}});
        as_user.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("confirmation");
        self.wait_enrollment(user, EnrollmentPhase::Active).await;
        auth
    }

    /// Annotates the enrollment as approved, as the admin.
    pub async fn approve(&self, user: &str) {
        let api: Api<StepUpEnrollment> = Api::all(self.admin.clone());
        let patch = serde_json::json!({"metadata": {"annotations": {stepup_api::APPROVED_BY_ANNOTATION: "admin"}}});
        api.patch(&stepup_api::enrollment_name(user), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("approved");
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

    pub async fn create_challenge(
        &self,
        who: &str,
        user: &str,
        uid: &str,
        code: &str,
        reason: Option<&str>,
        duration: Option<&str>,
    ) -> Result<StepUpChallenge, kube::Error> {
        let api: Api<StepUpChallenge> = Api::all(self.env.client(who).await);
        let mut c = StepUpChallenge::new(
            "",
            StepUpChallengeSpec {
                user: user.into(),
                uid: (!uid.is_empty()).then(|| uid.to_owned()),
                method: Method::Totp,
                response: Some(code.into()),
                reason: reason.map(Into::into),
                duration: duration.map(|d| d.parse().expect("duration")),
                scope: GrantScope::default(),
            },
        );
        c.metadata.name = None;
        c.metadata.generate_name = Some(format!("{}-", stepup_api::name_prefix(user, 40)));
        c.metadata.labels =
            Some([(stepup_api::USER_LABEL.to_owned(), stepup_api::user_label_value(user))].into_iter().collect());
        api.create(&PostParams::default(), &c).await
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

    /// Events in stepup's namespace with `reason`.
    pub async fn events(&self, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.admin.clone(), "stepup-system");
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
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
        let log =
            std::fs::File::create(format!("{}/stepup-controller-{instance}.log", env.var("STEPUP_LOGS_DIR"))).unwrap();
        let mut cmd = std::process::Command::new(env.var("STEPUP_BIN"));
        cmd.arg("controller")
            .args(env.var("STEPUP_CONTROLLER_FLAGS").split_whitespace())
            .args(["--instance", instance, "--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .env("KUBECONFIG", env.kubeconfig("stepup-controller"))
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
        self.kill();
    }
}

/// Stops the controller that stepup.sh runs for the duration of a scenario and starts it
/// again afterwards, even when the scenario panics.
pub struct ScriptControllerPaused {
    script: PathBuf,
}

impl ScriptControllerPaused {
    pub fn new() -> Self {
        let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stepup.sh"));
        let out = std::process::Command::new(&script).arg("controller-stop").output().expect("stepup.sh runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self { script }
    }
}

impl Default for ScriptControllerPaused {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScriptControllerPaused {
    fn drop(&mut self) {
        let out = std::process::Command::new(&self.script).arg("controller-start").output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not restart the stepup controller");
        }
    }
}
