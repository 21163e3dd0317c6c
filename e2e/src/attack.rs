//! Helpers for the side-door scenarios (issue 10), which attack stepup the way an attacker
//! would: the real kubectl with impersonation flags, raw API calls with `Impersonate-*`
//! headers, tokens minted with `kubectl create token`, and the installer identity that may
//! change what the chart's admission policies protect.

use std::{path::PathBuf, process::Output, time::Duration};

use anyhow::{Context, bail};
use k8s_openapi::api::{
    core::v1::{Pod, ServiceAccount},
    events::v1::Event,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

use crate::{Env, World, eventually, http_get};

/// stdout and stderr of a command, for messages and comparisons (trailers without their
/// ` ref=<uid>`, see [`refused`]).
pub fn text(out: &Output) -> String {
    without_ref(&format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The error kubectl printed for a request that must have been refused, without the review's
/// UID a trailer names (` ref=<uid>`: new with every request), so it compares exactly.
pub fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected kubectl to be refused, it succeeded: {}", text(out));
    without_ref(String::from_utf8_lossy(&out.stderr).trim())
}

/// `text` with each trailer's ` ref=<uid>` left out.
pub fn without_ref(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" ref=") {
        let after = &rest[at + 5..];
        let uid_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(after.len());
        out.push_str(&rest[..at]);
        if after[uid_len..].starts_with(']') {
            rest = &after[uid_len..];
        } else {
            out.push_str(" ref=");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// kubectl's line for a denial by the stepup webhook.
pub fn webhook_denial(message: &str) -> String {
    format!("Error from server (Forbidden): admission webhook \"validate.stepup.dev\" denied the request: {message}")
}

/// The webhook's message for a request that needs a TOTP grant from the last 15 minutes and
/// for which the requester holds none (`what` as `describe` writes it).
pub fn step_up_required(what: &str, policies: &[&str]) -> String {
    let quoted: Vec<String> = policies.iter().map(|p| format!("\"{p}\"")).collect();
    let noun = if policies.len() == 1 { "policy" } else { "policies" };
    format!(
        "kube-stepup: {what} requires step-up ({noun} {}): a TOTP grant issued within the last 15m. You hold no grant. Run `kubectl stepup request` and retry, or prefix your command with `kubectl stepup --`. [stepup-required: policies={} methods=TOTP max-age=15m reason-required=false]",
        quoted.join(", "),
        policies.join(",")
    )
}

/// The groups that make the admin an installer in the eyes of the chart's admission policies.
pub fn installer_flags(env: &Env) -> Vec<String> {
    ["--as", "admin", "--as-group", "system:masters", "--as-group", env.var("STEPUP_INSTALLER_GROUP")]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Env {
    /// A variable of the e2e env files, if set.
    pub fn var_opt(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The extras the e2e API server maps a sign-in's claims to (cluster.sh; not stepup's
    /// defaults), as the environment each stepup process started here is given, so that it
    /// reads them as the ones stepup.sh starts do. Empty without the identity provider.
    pub fn sign_in_env(&self) -> Vec<(&'static str, &str)> {
        ["STEPUP_SIGN_IN_ACR_EXTRA", "STEPUP_SIGN_IN_AMR_EXTRA", "STEPUP_SIGN_IN_AUTH_TIME_EXTRA"]
            .into_iter()
            .filter_map(|k| self.var_opt(k).map(|v| (k, v)))
            .collect()
    }

    /// Those extras' keys (the identity provider must be running).
    pub fn sign_in_keys(&self) -> stepup_core::policy::SignInKeys {
        stepup_core::policy::SignInKeys::new(
            self.var("STEPUP_SIGN_IN_ACR_EXTRA"),
            self.var("STEPUP_SIGN_IN_AMR_EXTRA"),
            self.var("STEPUP_SIGN_IN_AUTH_TIME_EXTRA"),
        )
        .expect("cluster.sh writes valid sign-in keys")
    }

    /// The bearer token of an identity's kubeconfig.
    pub fn token(&self, who: &str) -> String {
        let text = std::fs::read_to_string(self.kubeconfig(who)).expect("readable kubeconfig");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
        doc["users"][0]["user"]["token"].as_str().unwrap_or_else(|| panic!("no token in {who}'s kubeconfig")).to_owned()
    }

    /// kubectl as `who`, with `stdin`.
    pub fn kubectl_stdin(&self, who: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = std::process::Command::new(self.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(who))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl as the admin acting as an installer.
    pub fn kubectl_installer(&self, args: &[&str]) -> Output {
        let flags = installer_flags(self);
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(args);
        self.kubectl("admin", &all)
    }

    /// The admin acting as an installer, as a client.
    pub async fn installer_client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig("admin")).expect("readable kubeconfig");
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
        config.auth_info.impersonate = Some("admin".into());
        config.auth_info.impersonate_groups =
            Some(vec!["system:masters".into(), self.var("STEPUP_INSTALLER_GROUP").into()]);
        Client::try_from(config).expect("client")
    }

    /// A raw API call with `token` and extra headers (curl, as an attacker scripting it would):
    /// the HTTP status and the body.
    pub fn raw(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert", self.var("KUBE_CA_FILE")])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .args(["-H", "Content-Type: application/json"]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(body) = body {
            cmd.args(["--data-binary", body]);
        }
        cmd.arg(format!("{}{path}", self.var("KUBE_APISERVER_URL")));
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Sum of a metric family's samples with `labels` (e.g. `{object="..."}`) at `admin_url`.
    pub async fn metric_at(&self, admin_url: &str, family: &str) -> Option<f64> {
        let text = http_get(&format!("{admin_url}/metrics")).await.ok()?;
        text.lines()
            .find(|l| l.starts_with(family) && l[family.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    }

    /// JSON lines on the audit target of a log file.
    pub fn audit_of(&self, log: &str) -> Vec<Value> {
        crate::audit_lines(log)
    }

    pub fn logs_dir(&self) -> PathBuf {
        PathBuf::from(self.var("STEPUP_LOGS_DIR"))
    }
}

impl World {
    /// Waits until the registration sends service accounts' requests to the webhook: the
    /// controller drops its `people-only` match condition once a policy names a subject.
    pub async fn wait_service_accounts_routed(&self) {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let configs: Api<ValidatingWebhookConfiguration> = Api::all(self.admin.clone());
        eventually(Duration::from_secs(20), || async {
            let config = configs.get("stepup.dev").await?;
            let people_only = config
                .webhooks
                .iter()
                .flatten()
                .any(|w| w.match_conditions.iter().flatten().any(|c| c.name == "people-only"));
            if people_only { bail!("still people-only") } else { Ok(()) }
        })
        .await
        .expect("the configuration routes service accounts");
    }

    /// Lets service account `namespace:name` edit its namespace (as many an application's
    /// account may): the rights a namespace editor borrows by wearing it.
    pub async fn service_account_may_edit(&self, namespace: &str, name: &str) {
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{name}-edit"), "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        }))
        .unwrap();
        let api: Api<RoleBinding> = Api::namespaced(self.admin.clone(), namespace);
        match api.create(&PostParams::default(), &binding).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("rolebinding: {e}"),
        }
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        assert!(sas.get_opt(name).await.expect("service account").is_some(), "{namespace}:{name} exists");
    }

    /// A Pod object running as `service_account` (Pending: there is no kubelet), created by
    /// `who`; returns its UID, for binding tokens to it.
    pub async fn pending_pod(&self, who: &str, namespace: &str, name: &str, service_account: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.env.client(who).await, namespace);
        let _ = pods.delete(name, &Default::default()).await;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serviceAccountName": service_account, "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": "busybox:1.37"}]
            }
        }))
        .unwrap();
        let created =
            eventually(Duration::from_secs(10), || async { Ok(pods.create(&PostParams::default(), &pod).await?) })
                .await
                .expect("pod created");
        created.metadata.uid.expect("pod uid")
    }

    /// Events in stepup's namespace with `reason` whose note contains `needle`.
    pub async fn events_with(&self, reason: &str, needle: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.admin.clone(), "stepup-system");
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason) && e.note.as_deref().unwrap_or("").contains(needle))
            .collect()
    }

    /// Waits for an Event with `reason` whose note contains `needle`.
    pub async fn wait_event_within(&self, reason: &str, needle: &str, timeout: Duration) -> Event {
        eventually(timeout, || async {
            match self.events_with(reason, needle).await.into_iter().next() {
                Some(e) => Ok(e),
                None => bail!("no {reason} event mentioning {needle:?} yet"),
            }
        })
        .await
        .expect("event")
    }

    /// Waits until the webhook reports ready (all caches synced).
    pub async fn wait_webhook_ready(&self, timeout: Duration) {
        let url = format!("{}/readyz", self.env.var("STEPUP_WEBHOOK_ADMIN_URL"));
        eventually(timeout, || async { http_get(&url).await.context("webhook readyz") }).await.expect("webhook ready");
    }
}
