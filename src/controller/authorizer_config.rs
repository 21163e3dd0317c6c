//! The API server's `AuthorizationConfiguration` (`apiserver.config.k8s.io/v1`) that sends what
//! policies name with `verbs` (reads first) to the webhook's `/authorize`, before RBAC.
//!
//! Admission never sees a read, so a policy that names `get`, `list` or `watch` is enforced by
//! the API server's authorization webhook. Unlike the admission registration, that entry lives
//! in a file on each control-plane node: `stepup authorizer-config` renders it from the
//! policies, and the API server reloads the file when it changes. Pure: policies and settings
//! in, YAML out.
//!
//! What the entry does:
//! - `matchConditions` send only what some policy names (verb, group, resource and, where the
//!   policy lists plain namespace names, the namespace or a request spanning every namespace):
//!   every other request is authorized by RBAC alone and never leaves the API server. They
//!   over-match where CEL cannot say exactly what a policy means (namespace globs and
//!   selectors, resource names, subjects): the webhook decides exactly.
//! - `failurePolicy: Deny`: when the webhook cannot answer, what is sent is refused (fail
//!   closed for protected reads only).
//! - No caching of answers: a fresh grant works on the next request, and a revoked or expired
//!   one stops working as soon as the webhook's grant cache knows (the API server would
//!   otherwise keep a NoOpinion or a Deny for its TTL).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::webhook_config::cel_string;
use stepup_core::{
    api::{Method, POD_NAME_EXTRA, POD_UID_EXTRA, StepUpPolicy},
    policy::{Masks, SignInKeys},
};

pub const AUTHORIZER_NAME: &str = "stepup.dev";

/// How the entry reaches the webhook and whom it leaves alone.
#[derive(Clone, Debug)]
pub struct AuthorizerSettings {
    /// Absolute path, on the API server's host, of the kubeconfig that names the webhook's
    /// `/authorize` URL, its CA and the API server's client certificate.
    pub kubeconfig_file: String,
    /// 1s to 30s: how long the API server waits for an answer before the failure policy.
    pub timeout_seconds: u32,
    /// stepup's own service accounts: with a pod-bound credential, never sent.
    pub own_users: Vec<String>,
    pub masks: Masks,
    /// The extras a sign-in arrives in: impersonating them is sent to stepup, which refuses it.
    pub sign_in_keys: SignInKeys,
    /// Put the Node authorizer first (clusters with kubelets).
    pub node_authorizer: bool,
    /// The sha256 of the CA certificate that kubeconfig trusts, written into the file as an
    /// always-true match condition: the API server reads that kubeconfig (and builds a client
    /// with its CA) only when this configuration changes, so a new CA must change it. (A CA
    /// named by file path is re-read by the API server's client only every 5 minutes: give the
    /// kubeconfig `certificate-authority-data`.)
    pub ca_fingerprint: Option<String>,
}

/// The sha256 (hex) of the CA the kubeconfig's cluster names (`certificate-authority-data`,
/// or the `certificate-authority` file, relative to the kubeconfig), or why it cannot be read.
pub fn ca_fingerprint(kubeconfig: &std::path::Path) -> Result<String, String> {
    use base64::Engine;
    use sha2::Digest;
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let config: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{} is not YAML: {e}", kubeconfig.display()))?;
    let cluster = &config["clusters"][0]["cluster"];
    let pem = if let Some(data) = cluster["certificate-authority-data"].as_str() {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("certificate-authority-data: {e}"))?
    } else if let Some(path) = cluster["certificate-authority"].as_str() {
        let path = kubeconfig.parent().unwrap_or(std::path::Path::new("/")).join(path);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    } else {
        return Err(format!("{} names no certificate authority for its first cluster", kubeconfig.display()));
    };
    Ok(hex::encode(sha2::Sha256::digest(&pem)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationConfiguration {
    api_version: &'static str,
    kind: &'static str,
    authorizers: Vec<Authorizer>,
}

#[derive(Serialize)]
struct Authorizer {
    #[serde(rename = "type")]
    type_: &'static str,
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookEntry {
    timeout: String,
    subject_access_review_version: &'static str,
    match_condition_subject_access_review_version: &'static str,
    failure_policy: &'static str,
    // Required by validation even when caching is off.
    #[serde(rename = "authorizedTTL")]
    authorized_ttl: &'static str,
    cache_authorized_requests: bool,
    #[serde(rename = "unauthorizedTTL")]
    unauthorized_ttl: &'static str,
    cache_unauthorized_requests: bool,
    connection_info: ConnectionInfo,
    match_conditions: Vec<Condition>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionInfo {
    #[serde(rename = "type")]
    type_: &'static str,
    kube_config_file: String,
}

#[derive(Serialize)]
struct Condition {
    expression: String,
}

/// The configuration file for `--authorization-config`. The webhook's entry is there even
/// when no policy names a verb (its conditions then match nothing, and nothing is sent): the
/// file's shape does not change with the policies, only what it sends.
pub fn render(policies: &[StepUpPolicy], s: &AuthorizerSettings) -> String {
    let mut authorizers = Vec::new();
    if s.node_authorizer {
        authorizers.push(Authorizer { type_: "Node", name: "node", webhook: None });
    }
    let named = named_by_policies(policies).unwrap_or_else(|| "false".into());
    authorizers.push(Authorizer {
        type_: "Webhook",
        name: AUTHORIZER_NAME,
        webhook: Some(WebhookEntry {
            timeout: format!("{}s", s.timeout_seconds.clamp(1, 30)),
            subject_access_review_version: "v1",
            match_condition_subject_access_review_version: "v1",
            failure_policy: "Deny",
            authorized_ttl: "1s",
            cache_authorized_requests: false,
            unauthorized_ttl: "1s",
            cache_unauthorized_requests: false,
            connection_info: ConnectionInfo { type_: "KubeConfigFile", kube_config_file: s.kubeconfig_file.clone() },
            match_conditions: conditions(named, policies, s),
        }),
    });
    authorizers.push(Authorizer { type_: "RBAC", name: "rbac", webhook: None });
    let config = AuthorizationConfiguration {
        api_version: "apiserver.config.k8s.io/v1",
        kind: "AuthorizationConfiguration",
        authorizers,
    };
    let mut header = "# Rendered by `stepup authorizer-config` from the StepUpPolicies that name verbs.\n\
                      # The API server reloads this file when it changes; render it again after a policy changes\n\
                      # and after the webhook's CA does.\n"
        .to_owned();
    if let Some(fingerprint) = &s.ca_fingerprint {
        header.push_str(&format!(
            "# The last match condition names the webhook's CA (sha256 {fingerprint}) and is always true:\n\
             # the API server builds a new client for the webhook only when this configuration changes.\n"
        ));
    }
    // Plain structs of strings, booleans and lists always serialize.
    format!("{header}{}", serde_yaml::to_string(&config).unwrap_or_default())
}

/// The conditions, all of which must hold for a request to be sent. Where a policy accepts
/// `Session`, impersonating a sign-in's extras is sent whoever asks (the webhook refuses it).
fn conditions(named: String, policies: &[StepUpPolicy], s: &AuthorizerSettings) -> Vec<Condition> {
    let mut out = person_conditions(named, policies, s);
    let ca = s
        .ca_fingerprint
        .as_ref()
        .map(|fingerprint| Condition { expression: format!("'ca-sha256:{fingerprint}' != ''") });
    if policies.iter().any(|p| p.spec.methods.contains(&Method::Session)) {
        let forgery = format!(
            "({} == 'impersonate' && {} == 'authentication.k8s.io' && {} == 'userextras' && {})",
            attribute("verb"),
            attribute("group"),
            attribute("resource"),
            in_list("subresource", s.sign_in_keys.forgeable().into_iter())
        );
        for c in out.iter_mut().skip(1) {
            c.expression = format!("{forgery} || ({})", c.expression);
        }
    }
    out.extend(ca);
    out
}

/// The conditions for what policies name with verbs: people's requests.
fn person_conditions(named: String, policies: &[StepUpPolicy], s: &AuthorizerSettings) -> Vec<Condition> {
    let pod_bound = format!("('{POD_NAME_EXTRA}' in request.extra && '{POD_UID_EXTRA}' in request.extra)");
    let own: Vec<String> = s.own_users.iter().map(|u| cel_string(u)).collect();
    let mut out = vec![
        // Non-resource requests (`/healthz`, `/api`) are never named by a policy.
        Condition { expression: "has(request.resourceAttributes)".into() },
        Condition { expression: named },
        // stepup's own pods read what they need without asking themselves; their names worn
        // by anyone else (impersonation, a bare token) are masks.
        Condition { expression: format!("!(request.user in [{}] && {pod_bound})", own.join(", ")) },
        Condition { expression: "!request.user.startsWith('system:node:')".into() },
    ];
    if !policies.iter().any(|p| p.spec.match_.subjects.is_some()) {
        // Policies without subjects apply to people only (see the admission registration).
        let person = if s.masks.enabled {
            let trusted: String = s
                .masks
                .trusted_namespaces
                .iter()
                .map(|ns| {
                    format!(" && !request.user.startsWith({})", cel_string(&format!("system:serviceaccount:{ns}:")))
                })
                .collect();
            format!(" || (request.user.startsWith('system:serviceaccount:'){trusted} && !{pod_bound})")
        } else {
            String::new()
        };
        out.push(Condition { expression: format!("!request.user.startsWith('system:'){person}") });
    }
    out
}

/// One CEL expression true for every request some policy names with a verb; `None` when no
/// policy names one.
fn named_by_policies(policies: &[StepUpPolicy]) -> Option<String> {
    let mut alternatives = BTreeSet::new();
    for p in policies {
        let namespaces = namespace_condition(&p.spec.match_.namespaces, p.spec.match_.namespace_selector.is_some());
        for rule in &p.spec.match_.rules {
            if rule.verbs.is_empty() {
                continue;
            }
            let mut parts = vec![in_list("verb", rule.verbs.iter().map(|v| v.as_str()))];
            if !rule.api_groups.iter().any(|g| g == "*") {
                parts.push(in_list("group", rule.api_groups.iter().map(String::as_str)));
            }
            if let Some(resources) = resources_condition(&rule.resources) {
                parts.push(resources);
            }
            if let Some(ns) = &namespaces {
                parts.push(ns.clone());
            }
            alternatives.insert(format!("({})", parts.join(" && ")));
        }
    }
    (!alternatives.is_empty()).then(|| alternatives.into_iter().collect::<Vec<_>>().join(" || "))
}

fn attribute(name: &str) -> String {
    format!("request.resourceAttributes.{name}")
}

fn in_list<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> String {
    let values: BTreeSet<String> = values.map(cel_string).collect();
    format!("{} in [{}]", attribute(name), values.into_iter().collect::<Vec<_>>().join(", "))
}

/// Which resources (and subresources) a rule names; `None` when it names every one.
fn resources_condition(resources: &[String]) -> Option<String> {
    let mut any = Vec::new();
    for r in resources {
        let (res, sub) = r.split_once('/').map_or((r.as_str(), None), |(a, b)| (a, Some(b)));
        let res_part = (res != "*").then(|| format!("{} == {}", attribute("resource"), cel_string(res)));
        let sub_part = match sub {
            None => Some(format!("{} == ''", attribute("subresource"))),
            Some("*") => None,
            Some(sub) => Some(format!("{} == {}", attribute("subresource"), cel_string(sub))),
        };
        match (res_part, sub_part) {
            (None, None) => return None,
            (Some(a), None) | (None, Some(a)) => any.push(a),
            (Some(a), Some(b)) => any.push(format!("{a} && {b}")),
        }
    }
    Some(format!("({})", any.iter().map(|a| format!("({a})")).collect::<Vec<_>>().join(" || ")))
}

/// Plain namespace names: those namespaces, or a request with no namespace (a list or watch
/// across every namespace, or a cluster-scoped object). Globs and selectors: any namespace
/// (the webhook decides).
fn namespace_condition(namespaces: &[String], selector: bool) -> Option<String> {
    if namespaces.is_empty() || selector || namespaces.iter().any(|n| n.contains(['*', '?'])) {
        return None;
    }
    let mut names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    names.push("");
    Some(in_list("namespace", names.into_iter()))
}

/// `stepup authorizer-config`: the policies from files or the cluster, the file rendered, and
/// written (atomically, only when it changed) or printed.
pub async fn command(args: &crate::config::AuthorizerConfigArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if !args.webhook_kubeconfig.starts_with('/') {
        anyhow::bail!(
            "--webhook-kubeconfig must be an absolute path (the API server refuses a relative one): {:?}",
            args.webhook_kubeconfig
        );
    }
    let policies = if args.filenames.is_empty() {
        let client = kube::Client::try_default().await.context("connecting to the cluster to list StepUpPolicies")?;
        kube::Api::<StepUpPolicy>::all(client).list(&Default::default()).await.context("listing StepUpPolicies")?.items
    } else {
        let mut all = Vec::new();
        for path in &args.filenames {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading policies from standard input")?
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            };
            all.extend(policies_in(&text).with_context(|| format!("in {}", path.display()))?);
        }
        all
    };
    let settings = AuthorizerSettings {
        kubeconfig_file: args.webhook_kubeconfig.clone(),
        timeout_seconds: args.timeout_seconds,
        own_users: vec![args.identity.controller_user(), args.identity.webhook_user()],
        masks: args.identity.masks(),
        sign_in_keys: args.identity.sign_in_keys()?,
        node_authorizer: args.node_authorizer,
        ca_fingerprint: match ca_fingerprint(std::path::Path::new(&args.webhook_kubeconfig)) {
            Ok(fingerprint) => Some(fingerprint),
            Err(why) => {
                eprintln!(
                    "warning: {why}; the rendered file will not change when the webhook's CA does (render it on the API server's host, or touch the file after a CA rotation)"
                );
                None
            }
        },
    };
    let rendered = render(&policies, &settings);
    let Some(output) = &args.output else {
        print!("{rendered}");
        return Ok(());
    };
    if std::fs::read(output).ok().as_deref() == Some(rendered.as_bytes()) {
        eprintln!("{} is up to date", output.display());
        return Ok(());
    }
    // The API server watches the file: it must never see half of it.
    let partial = output.with_extension("partial");
    std::fs::write(&partial, &rendered).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, output).with_context(|| format!("replacing {}", output.display()))?;
    eprintln!("{} written", output.display());
    Ok(())
}

/// The StepUpPolicies among the YAML documents of `text` (other kinds are skipped).
fn policies_in(text: &str) -> anyhow::Result<Vec<StepUpPolicy>> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("StepUpPolicy") {
            continue;
        }
        out.push(serde_yaml::from_value(value).map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{api::Verb::*, testing::policy};

    fn settings() -> AuthorizerSettings {
        AuthorizerSettings {
            kubeconfig_file: "/etc/kubernetes/stepup-authorizer.kubeconfig".into(),
            timeout_seconds: 3,
            own_users: vec!["system:serviceaccount:stepup-system:stepup-controller".into()],
            masks: Masks { enabled: true, trusted_namespaces: vec!["kube-system".into()] },
            sign_in_keys: SignInKeys::default(),
            node_authorizer: false,
            ca_fingerprint: Some("ab12".into()),
        }
    }

    /// The match conditions' expressions of the rendered stepup entry.
    fn expressions(config: &serde_yaml::Value) -> Vec<&str> {
        config["authorizers"][0]["webhook"]["matchConditions"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["expression"].as_str().unwrap())
            .collect()
    }

    fn parsed(policies: &[StepUpPolicy]) -> serde_yaml::Value {
        serde_yaml::from_str(&render(policies, &settings())).expect("YAML")
    }

    #[test]
    fn without_a_policy_naming_a_verb_nothing_leaves_the_api_server() {
        let writes = policy("prod-secrets").rule(&[stepup_core::api::Operation::Delete], "", &["secrets"]).build();
        let config = parsed(&[writes]);
        let types: Vec<&str> =
            config["authorizers"].as_sequence().unwrap().iter().map(|a| a["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Webhook", "RBAC"]);
        assert_eq!(config["authorizers"][0]["webhook"]["matchConditions"][1]["expression"], "false");
    }

    #[test]
    fn the_webhook_comes_before_rbac_fails_closed_and_caches_nothing() {
        let reads =
            policy("prod-secret-reads").verbs(&[Get, List, Watch], "", &["secrets"]).namespaces(&["prod"]).build();
        let mut s = settings();
        s.node_authorizer = true;
        let config: serde_yaml::Value = serde_yaml::from_str(&render(&[reads], &s)).unwrap();
        assert_eq!(config["apiVersion"], "apiserver.config.k8s.io/v1");
        let types: Vec<&str> =
            config["authorizers"].as_sequence().unwrap().iter().map(|a| a["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Node", "Webhook", "RBAC"]);
        let w = &config["authorizers"][1]["webhook"];
        assert_eq!(w["failurePolicy"], "Deny");
        assert_eq!(
            (w["cacheAuthorizedRequests"].as_bool(), w["cacheUnauthorizedRequests"].as_bool()),
            (Some(false), Some(false))
        );
        assert_eq!(w["connectionInfo"]["kubeConfigFile"], "/etc/kubernetes/stepup-authorizer.kubeconfig");
        assert_eq!(w["timeout"], "3s");
        let named = w["matchConditions"][1]["expression"].as_str().unwrap();
        assert_eq!(
            named,
            "(request.resourceAttributes.verb in ['get', 'list', 'watch'] && request.resourceAttributes.group in [''] \
             && ((request.resourceAttributes.resource == 'secrets' && request.resourceAttributes.subresource == '')) \
             && request.resourceAttributes.namespace in ['', 'prod'])"
        );
    }

    #[test]
    fn globs_selectors_and_wildcards_over_match_and_the_webhook_decides() {
        let globbed = policy("g").verbs(&[Get], "*", &["*"]).namespaces(&["prod-*"]).build();
        let named = named_by_policies(&[globbed]).unwrap();
        // `*` is every main resource (subresources are named with a slash), in any group and
        // namespace (a glob): the webhook decides which namespaces.
        assert_eq!(
            named,
            "(request.resourceAttributes.verb in ['get'] && ((request.resourceAttributes.subresource == '')))"
        );
        let proxy = policy("p").verbs(&[Get, Create], "", &["nodes/proxy", "pods/*", "*/log"]).build();
        let named = named_by_policies(&[proxy]).unwrap();
        assert!(
            named.contains(
                "(request.resourceAttributes.resource == 'nodes' && request.resourceAttributes.subresource == 'proxy')"
            ),
            "{named}"
        );
        assert!(named.contains("(request.resourceAttributes.resource == 'pods')"), "{named}");
        assert!(named.contains("(request.resourceAttributes.subresource == 'log')"), "{named}");
    }

    #[test]
    fn people_only_unless_a_policy_names_subjects_and_stepup_itself_only_with_its_pod() {
        let reads = policy("r").verbs(&[Get], "", &["secrets"]).build();
        let config = parsed(&[reads]);
        let conditions = expressions(&config);
        assert_eq!(conditions[0], "has(request.resourceAttributes)");
        assert!(
            conditions[2]
                .starts_with("!(request.user in ['system:serviceaccount:stepup-system:stepup-controller'] && ("),
            "{}",
            conditions[2]
        );
        assert!(
            conditions[4].contains("!request.user.startsWith('system:serviceaccount:kube-system:')"),
            "a service account's name without its pod is a person: {}",
            conditions[4]
        );
    }

    #[test]
    fn where_a_policy_accepts_session_impersonating_a_sign_in_is_sent_whoever_asks() {
        let reads = policy("reads").verbs(&[Get], "", &["secrets"]).build();
        let config = parsed(std::slice::from_ref(&reads));
        assert!(!serde_yaml::to_string(&config).unwrap().contains("userextras"), "no Session policy, no clause");
        let sso = policy("sso")
            .rule(&[stepup_core::api::Operation::Delete], "", &["secrets"])
            .methods(&[Method::Session])
            .build();
        let config = parsed(&[reads, sso]);
        let conditions = expressions(&config);
        assert_eq!(conditions[0], "has(request.resourceAttributes)");
        assert_eq!(conditions.last(), Some(&"'ca-sha256:ab12' != ''"), "the CA's, always true, last");
        for c in &conditions[1..conditions.len() - 1] {
            assert!(
                c.starts_with("(request.resourceAttributes.verb == 'impersonate' && request.resourceAttributes.group == 'authentication.k8s.io' && request.resourceAttributes.resource == 'userextras' && request.resourceAttributes.subresource in ['authentication.kubernetes.io/credential-id', 'stepup.dev/acr', 'stepup.dev/amr', 'stepup.dev/auth-time']) || ("),
                "{c}"
            );
        }
        // Other keys configured: those are what nobody may impersonate.
        let keys = SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/at").unwrap();
        let sso = policy("sso")
            .rule(&[stepup_core::api::Operation::Delete], "", &["secrets"])
            .methods(&[Method::Session])
            .build();
        let config: serde_yaml::Value =
            serde_yaml::from_str(&render(&[sso], &AuthorizerSettings { sign_in_keys: keys, ..settings() })).unwrap();
        let conditions = expressions(&config);
        assert!(
            conditions[1].contains("request.resourceAttributes.subresource in ['authentication.kubernetes.io/credential-id', 'sso.example.com/acr', 'sso.example.com/amr', 'sso.example.com/at'])"),
            "{}",
            conditions[1]
        );
    }

    /// The API server reads the webhook's kubeconfig (and the CA file it names) only when it
    /// reloads this file: after the webhook's CA rotated, the authorizer kept the old one and
    /// every protected read failed (seen in the full e2e run), until the file changed.
    #[test]
    fn a_new_webhook_ca_changes_the_rendered_file() {
        use base64::Engine;
        let dir = std::env::temp_dir().join(format!("stepup-authz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("authorizer.kubeconfig");
        let by_path =
            "clusters:\n- name: stepup\n  cluster: {server: 'https://x/authorize', certificate-authority: ca.crt}\n";
        std::fs::write(&kubeconfig, by_path).unwrap();
        assert!(ca_fingerprint(&kubeconfig).unwrap_err().contains("ca.crt"), "a missing CA file is said");
        std::fs::write(dir.join("ca.crt"), "first CA").unwrap();
        let first = ca_fingerprint(&kubeconfig).unwrap();
        std::fs::write(dir.join("ca.crt"), "second CA").unwrap();
        let second = ca_fingerprint(&kubeconfig).unwrap();
        assert_ne!(first, second);
        let data = base64::engine::general_purpose::STANDARD.encode("second CA");
        std::fs::write(&kubeconfig, format!("clusters:\n- cluster: {{certificate-authority-data: {data}}}\n")).unwrap();
        assert_eq!(ca_fingerprint(&kubeconfig).unwrap(), second, "inline data and a file alike");
        let render_with = |fingerprint: &str| {
            let rendered = render(&[], &AuthorizerSettings { ca_fingerprint: Some(fingerprint.into()), ..settings() });
            serde_yaml::from_str::<serde_yaml::Value>(&rendered).unwrap()
        };
        // Not in a comment: the API server compares what the file says, not its bytes.
        assert_ne!(render_with(&first), render_with(&second));
        let config = render_with(&first);
        assert_eq!(expressions(&config).last().copied(), Some(format!("'ca-sha256:{first}' != ''").as_str()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policies_are_read_from_yaml_documents_and_other_kinds_skipped() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n\
                    apiVersion: stepup.dev/v1alpha1\nkind: StepUpPolicy\nmetadata: {name: reads}\n\
                    spec:\n  match:\n    rules:\n    - {verbs: [get], apiGroups: [''], resources: [secrets]}\n";
        let policies = policies_in(text).unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].spec.match_.rules[0].verbs, [Get]);
        let err = policies_in("kind: StepUpPolicy\nspec: 3\n").unwrap_err().to_string();
        assert!(err.contains("document 1"), "{err}");
    }

    #[test]
    fn hostile_strings_cannot_change_the_expression() {
        assert_eq!(cel_string("a' || true || '\nb"), "'a || true || b'");
    }
}
