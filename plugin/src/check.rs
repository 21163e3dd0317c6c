//! `kubectl stepup check`: like `kubectl auth can-i`, for step-up. It evaluates the policies
//! and the user's grants with the webhook's own decision code, so its answer is the webhook's.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use serde::{Deserialize, Serialize};

use super::{
    cli::{CheckArgs, Output},
    cluster::{Identity, Session},
    error::{Error, Exit, Result},
    format,
    resources::{Catalog, ResourceInfo},
};
use stepup_core::{
    api::{self, Operation, StepUpGrant, StepUpPolicy},
    decision::{self, DecisionConfig, DecisionSettings, Grants, Inputs, Outcome, StepUpObjects},
    grant::{self, GrantRecord},
    policy::{Action, CompiledPolicy, Masks, NamespaceLabels, PolicyIndex, Request},
};

/// What a kubectl verb becomes at admission or authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    /// get, list, watch (and `describe`, `logs`): decided by stepup's authorizer, where the API
    /// server sends them (policies that name `verbs`).
    Read(api::Verb),
    Operations(Vec<Operation>),
    /// exec, attach, port-forward, proxy: CONNECT to a subresource (of pods by default).
    Connect(&'static str),
}

pub fn parse_verb(word: &str) -> Result<Verb> {
    use Operation::*;
    Ok(match word.to_ascii_lowercase().as_str() {
        "get" | "describe" | "logs" => Verb::Read(api::Verb::Get),
        "list" => Verb::Read(api::Verb::List),
        "watch" => Verb::Read(api::Verb::Watch),
        "create" => Verb::Operations(vec![Create]),
        "apply" => Verb::Operations(vec![Create, Update]),
        "update" | "patch" | "edit" | "replace" | "scale" | "label" | "annotate" | "set" | "rollout" => {
            Verb::Operations(vec![Update])
        }
        "delete" | "deletecollection" => Verb::Operations(vec![Delete]),
        "connect" => Verb::Operations(vec![Connect]),
        "exec" => Verb::Connect("exec"),
        "attach" => Verb::Connect("attach"),
        "port-forward" | "portforward" => Verb::Connect("portforward"),
        "proxy" => Verb::Connect("proxy"),
        other => {
            return Err(Error::usage(
                format!("{other:?} is not a verb kube-stepup knows"),
                "Use get, list, watch, create, update, patch, apply, delete, exec, attach, port-forward or proxy (see --help).",
            ));
        }
    })
}

/// One admission request to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub action: Action,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// Empty for cluster-scoped objects; a Namespace's own name for Namespace objects.
    pub namespace: String,
    pub name: String,
}

impl Target {
    fn new(action: impl Into<Action>, info: &ResourceInfo, subresource: &str, namespace: &str, name: &str) -> Self {
        let namespace = if info.group.is_empty() && info.resource == "namespaces" {
            name
        } else if info.namespaced {
            namespace
        } else {
            ""
        };
        Self {
            action: action.into(),
            group: info.group.clone(),
            version: info.version.clone(),
            resource: info.resource.clone(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

fn unknown_resource(name: &str) -> Error {
    Error::usage(
        format!("the server has no resource type {name:?}"),
        "`kubectl api-resources` lists them; qualify with the group if needed (deployments.apps).",
    )
}

/// `delete secret db`, `delete secrets/db`, `exec web`, `exec pod/web`, `create clusterrolebindings`.
pub fn targets_from_words(
    words: &[String],
    subresource: Option<&str>,
    namespace: &str,
    catalog: &Catalog,
) -> Result<Vec<Target>> {
    let Some((verb, rest)) = words.split_first() else {
        return Err(Error::usage(
            "check needs a verb and a resource, or -f FILE",
            "For example: check delete secret db -n prod",
        ));
    };
    let logs = verb.eq_ignore_ascii_case("logs");
    let verb = parse_verb(verb)?;
    let (actions, default_subresource, default_resource): (Vec<Action>, _, _) = match &verb {
        Verb::Read(_) if logs => (vec![Action::Authorization(api::Verb::Get)], "log", Some("pods")),
        Verb::Read(read) => (vec![Action::Authorization(*read)], "", None),
        Verb::Operations(ops) => (ops.iter().map(|op| Action::Admission(*op)).collect(), "", None),
        Verb::Connect(sub) => (vec![Action::Admission(Operation::Connect)], *sub, Some("pods")),
    };
    let (resource, name) = match (rest, default_resource) {
        ([], Some(_)) => return Err(Error::usage("name the pod", "For example: check exec web -n prod")),
        ([], None) => return Err(Error::usage("name a resource type", "For example: check delete secret db -n prod")),
        ([one], _) if one.contains('/') => {
            let (r, n) = one.split_once('/').unwrap_or((one, ""));
            (r.to_owned(), n.to_owned())
        }
        // `exec web`: kubectl's own form, a pod name.
        ([one], Some(pods)) if catalog.resolve(one).is_none() => (pods.to_owned(), one.clone()),
        ([one], _) => (one.clone(), String::new()),
        ([r, n], _) => (r.clone(), n.clone()),
        _ => return Err(Error::usage("too many words", "check VERB RESOURCE [NAME] [-n NAMESPACE]")),
    };
    let info = catalog.resolve(&resource).ok_or_else(|| unknown_resource(&resource))?;
    let subresource = subresource.unwrap_or(default_subresource);
    if !subresource.is_empty() && !info.subresources.is_empty() && !info.subresources.iter().any(|s| s == subresource) {
        return Err(Error::usage(
            format!("{} has no subresource {subresource:?}", info.qualified()),
            format!("It has: {}.", info.subresources.join(", ")),
        ));
    }
    // `get secrets` without a name is kubectl's list.
    let actions = actions.into_iter().map(|a| match a {
        Action::Authorization(api::Verb::Get) if name.is_empty() => Action::Authorization(api::Verb::List),
        other => other,
    });
    Ok(actions.map(|a| Target::new(a, info, subresource, namespace, &name)).collect())
}

/// An object of a manifest, as far as admission cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestObject {
    pub api_version: String,
    pub kind: String,
    /// Empty for objects with only a generateName.
    pub name: String,
    pub namespace: Option<String>,
}

/// Every object of a YAML or JSON stream (several documents, `kind: List` flattened).
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestObject>> {
    let invalid = |e: String| {
        Error::usage(
            format!("cannot read the manifest: {e}"),
            "Check it with `kubectl apply --dry-run=client -f FILE`.",
        )
    };
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| invalid(e.to_string()))?;
        collect_objects(value, &mut objects).map_err(invalid)?;
    }
    Ok(objects)
}

fn collect_objects(value: serde_yaml::Value, out: &mut Vec<ManifestObject>) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let text = |v: &serde_yaml::Value, key: &str| v.get(key).and_then(|s| s.as_str()).map(str::to_owned);
    let kind = text(&value, "kind").ok_or("an object has no kind")?;
    let api_version = text(&value, "apiVersion").ok_or_else(|| format!("a {kind} has no apiVersion"))?;
    if kind.ends_with("List")
        && let Some(items) = value.get("items").and_then(|i| i.as_sequence())
    {
        for item in items {
            collect_objects(item.clone(), out)?;
        }
        return Ok(());
    }
    let metadata = value.get("metadata").cloned().unwrap_or_default();
    let name = text(&metadata, "name").unwrap_or_default();
    if name.is_empty() && text(&metadata, "generateName").is_none() {
        return Err(format!("a {kind} has no metadata.name"));
    }
    out.push(ManifestObject { api_version, kind, name, namespace: text(&metadata, "namespace") });
    Ok(())
}

pub fn targets_from_manifest(
    objects: &[ManifestObject],
    operations: &[Operation],
    namespace: &str,
    catalog: &Catalog,
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for o in objects {
        let info = catalog.by_kind(&o.api_version, &o.kind).ok_or_else(|| {
            Error::usage(
                format!("the server does not serve {} {}", o.api_version, o.kind),
                "Is the CRD installed, and the apiVersion right? `kubectl api-resources` lists what is served.",
            )
        })?;
        let namespace = o.namespace.as_deref().unwrap_or(namespace);
        targets.extend(operations.iter().map(|op| Target::new(*op, info, "", namespace, &o.name)));
    }
    Ok(targets)
}

/// One policy's verdict for one request.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVerdict {
    pub name: String,
    pub enforcement: &'static str,
    pub max_age: String,
    pub reason_required: bool,
    pub satisfied: bool,
    /// The grant that satisfies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// How much longer that grant satisfies it (expiry or max age, whichever comes first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_for_seconds: Option<i64>,
    /// Why no grant does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The verdict for one request: what `check -o json` prints per object and operation.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetVerdict {
    pub operation: &'static str,
    pub group: String,
    pub version: String,
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub description: String,
    /// The webhook's decision, written as its word: `no-policy`, `exempt`, `granted`, `denied`,
    /// `warned`, `audited`.
    pub decision: Outcome,
    pub allowed: bool,
    pub policies: Vec<PolicyVerdict>,
    /// For a denial: the `[stepup-required: ...]` text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Set when the answer depends on what you may not read (the namespace's labels, which a
    /// policy's namespaceSelector looks at): why it is not certain. The answer given is the
    /// webhook's for an unknown namespace (selectors assumed to match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertain: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub user: String,
    pub allowed: bool,
    pub results: Vec<TargetVerdict>,
}

/// What the decision reads besides the request.
pub struct Evaluation<'a> {
    pub me: &'a Identity,
    /// How the webhook classifies requesters.
    pub masks: &'a Masks,
    pub policies: &'a PolicyIndex,
    pub grants: &'a [GrantRecord],
    pub config: &'a DecisionConfig,
    pub now: Timestamp,
}

impl Evaluation<'_> {
    pub fn evaluate(&self, target: &Target, labels: NamespaceLabels<'_>) -> TargetVerdict {
        let req = Request {
            action: target.action,
            group: &target.group,
            version: &target.version,
            resource: &target.resource,
            subresource: &target.subresource,
            namespace: &target.namespace,
            name: &target.name,
            user: self.me.user_as_classified(self.masks, &self.config.sign_in_keys),
            namespace_labels: labels,
            previous_labels: None,
            dry_run: false,
        };
        let inputs = Inputs {
            policies: self.policies,
            grants: Grants::Fetched(self.grants),
            config: self.config,
            now: self.now,
        };
        let decision = decision::decide(&req, &StepUpObjects::None, &inputs);
        // The sign-in this credential carries counts like a grant where a policy accepts it.
        let session = GrantRecord::of_request(&req);
        let policies = decision
            .policies
            .iter()
            .filter_map(|n| self.policies.get(n))
            .map(|p| self.verdict(p, &req, session.as_ref()))
            .collect();
        TargetVerdict {
            operation: target.action.as_str(),
            group: target.group.clone(),
            version: target.version.clone(),
            resource: target.resource.clone(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            description: decision::describe(&req),
            decision: decision.outcome,
            allowed: decision.allowed,
            policies,
            requirement: decision.requirement.as_ref().map(|r| r.to_string()),
            command: decision.requirement.as_ref().and_then(|r| r.command()),
            uncertain: None,
        }
    }

    /// [`Self::evaluate`] for a namespace whose labels you may not read: the webhook's answer
    /// (selectors assumed to match), marked uncertain when a namespace without the selected
    /// labels would be answered otherwise.
    pub fn evaluate_unreadable_namespace(&self, target: &Target) -> TargetVerdict {
        let mut assumed = self.evaluate(target, NamespaceLabels::Unknown);
        let unlabelled = BTreeMap::new();
        let otherwise = self.evaluate(target, NamespaceLabels::Known(&unlabelled));
        if (otherwise.decision, otherwise.allowed) != (assumed.decision, assumed.allowed) {
            let selecting: Vec<&str> = assumed
                .policies
                .iter()
                .map(|p| p.name.as_str())
                .filter(|name| !otherwise.policies.iter().any(|o| o.name == *name))
                .collect();
            assumed.uncertain = Some(format!(
                "you may not read namespace {:?}, and {} {} only namespaces with certain labels: the answer assumes it has them (whoever may read the namespace gets a certain answer)",
                target.namespace,
                selecting.join(", "),
                if selecting.len() == 1 { "selects" } else { "select" }
            ));
        }
        assumed
    }

    fn verdict(&self, p: &CompiledPolicy, req: &Request<'_>, session: Option<&GrantRecord>) -> PolicyVerdict {
        let session = session.filter(|_| p.accepts_method(stepup_core::api::Method::Session));
        let candidates: Vec<&GrantRecord> = self.grants.iter().chain(session).collect();
        let satisfying = grant::satisfying(candidates.iter().copied(), &[p], req, grant::Clock::at(self.now));
        let why = match satisfying {
            Some(_) => None,
            None => Some(match grant::explain(candidates.iter().copied(), &[p], req, grant::Clock::at(self.now)) {
                Some((g, why)) if g.method == stepup_core::api::Method::Session => {
                    format!("your sign-in at the identity provider does not count: {why}")
                }
                Some((g, why)) => format!("your latest grant {} does not count: {why}", g.name),
                None => "you hold no grant".to_owned(),
            }),
        };
        let valid_for = satisfying.map(|g| {
            let until_expiry = g.expires_at.duration_since(self.now);
            let until_too_old = (g.issued_at + p.max_age).duration_since(self.now);
            until_expiry.min(until_too_old).as_secs().max(0)
        });
        PolicyVerdict {
            name: p.name.clone(),
            enforcement: p.enforcement.as_str(),
            max_age: p.max_age_text.to_string(),
            reason_required: p.require_reason,
            satisfied: satisfying.is_some(),
            grant: satisfying.map(|g| g.name.clone()),
            valid_for_seconds: valid_for,
            why,
        }
    }
}

fn headline(v: &TargetVerdict) -> &'static str {
    match v.decision {
        Outcome::NotMatched => "allowed, no policy applies",
        Outcome::Exempt => "allowed, exempt from step-up",
        Outcome::Granted => "allowed, your grant satisfies every policy",
        Outcome::Warned => "allowed with a warning",
        Outcome::Audited => "allowed and recorded",
        Outcome::BreakGlass => "allowed by break-glass",
        _ if v.allowed => "allowed",
        _ => "step-up required",
    }
}

impl CheckReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for v in &self.results {
            let maybe = if v.uncertain.is_some() && !v.allowed { "probably " } else { "" };
            out.push_str(&format!("{}: {maybe}{}\n", v.description, headline(v)));
            if let Some(why) = &v.uncertain {
                out.push_str(&format!("  Not certain: {why}.\n"));
            }
            for p in &v.policies {
                let reason = if p.reason_required { ", reason required" } else { "" };
                let state = match (&p.grant, p.valid_for_seconds) {
                    (Some(g), Some(secs)) => {
                        format!(
                            "satisfied by grant {g} for another {}",
                            format::remaining(SignedDuration::from_secs(secs))
                        )
                    }
                    _ => p.why.clone().unwrap_or_default(),
                };
                out.push_str(&format!(
                    "  policy {} ({}, max age {}{reason}): {state}\n",
                    p.name, p.enforcement, p.max_age
                ));
            }
            if let Some(command) = &v.command {
                out.push_str(&format!("  Run `{command}` first, or prefix the command with `kubectl stepup --`.\n"));
            }
        }
        out
    }
}

/// Policies as the webhook sees them: the cluster's valid ones plus the built-in ones its
/// settings turn on.
pub fn policy_index(policies: &[StepUpPolicy], settings: &DecisionSettings) -> PolicyIndex {
    let compiled = policies.iter().filter_map(|p| CompiledPolicy::compile(p).ok());
    PolicyIndex::new(compiled.chain(settings.builtin_policies()).map(Arc::new))
}

/// What the webhook decides with, as the controller publishes it (the same flags, the same
/// function); when that cannot be read, the defaults, and a warning that says so.
async fn webhook_settings(session: &Session) -> DecisionSettings {
    let api: Api<ConfigMap> = Api::namespaced(session.client.clone(), &session.stepup_namespace);
    let published = match api.get_opt(decision::PUBLISHED_CONFIGMAP).await {
        Ok(Some(cm)) => cm
            .data
            .as_ref()
            .and_then(|d| d.get(decision::PUBLISHED_KEY))
            .ok_or_else(|| format!("it has no {}", decision::PUBLISHED_KEY))
            .and_then(|json| serde_json::from_str::<DecisionSettings>(json).map_err(|e| e.to_string())),
        Ok(None) => Err("it does not exist (is the stepup controller running?)".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    published.unwrap_or_else(|why| {
        errln!(
            "warning: cannot read the webhook's settings (configmap {}/{}: {why}); assuming a default install's.",
            session.stepup_namespace,
            decision::PUBLISHED_CONFIGMAP
        );
        DecisionSettings::defaults(&session.stepup_namespace)
    })
}

pub async fn run(session: &Session, args: &CheckArgs) -> Result<Exit> {
    let verb = args.words.first().map(|w| parse_verb(w)).transpose()?;
    let namespace = args.namespace.clone().unwrap_or_else(|| session.namespace.clone());
    let catalog = discover(session).await?;
    let targets = match &args.filename {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(path)
            }
            .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display()), "Check the path."))?;
            let operations = match verb {
                Some(Verb::Operations(ops)) => ops,
                None => vec![Operation::Create, Operation::Update],
                Some(_) => {
                    return Err(Error::usage("with -f, use create, apply, update or delete", "check delete -f FILE"));
                }
            };
            if args.words.len() > 1 {
                return Err(Error::usage("with -f, give only a verb", "check delete -f FILE"));
            }
            targets_from_manifest(&parse_manifest(&text)?, &operations, &namespace, &catalog)?
        }
        None => targets_from_words(&args.words, args.subresource.as_deref(), &namespace, &catalog)?,
    };

    let me = session.whoami().await?;
    let policies: Api<StepUpPolicy> = session.all();
    let policies = policies.list(&Default::default()).await.map_err(session.kube_error("list the step-up policies"))?;
    let settings = webhook_settings(session).await;
    let index = policy_index(&policies.items, &settings);
    let grants: Vec<StepUpGrant> = session.list_mine(&me, "grants").await?;
    let records: Vec<GrantRecord> = grants.iter().filter_map(GrantRecord::from_grant).collect();
    let labels = namespace_labels(session, &targets).await;
    let config = settings.config(None, None);
    let masks = settings.masks();
    let evaluation = Evaluation {
        me: &me,
        masks: &masks,
        policies: &index,
        grants: &records,
        config: &config,
        now: Timestamp::now(),
    };
    let results: Vec<TargetVerdict> = targets
        .iter()
        .map(|t| match (t.namespace.is_empty(), labels.get(&t.namespace)) {
            (true, _) => evaluation.evaluate(t, NamespaceLabels::NotApplicable),
            (false, Some(Some(l))) => evaluation.evaluate(t, NamespaceLabels::Known(l)),
            (false, _) => evaluation.evaluate_unreadable_namespace(t),
        })
        .collect();
    let report = CheckReport { user: me.username.clone(), allowed: results.iter().all(|r| r.allowed), results };
    match args.output {
        Output::Json => out!("{}", format::json(&report)),
        Output::Text => out!("{}", format::printable_lines(&report.text())),
    }
    Ok(if report.allowed { Exit::Ok } else { Exit::StepUp })
}

/// Aggregated discovery of `/api` and `/apis`: two requests.
async fn discover(session: &Session) -> Result<Catalog> {
    let core =
        session.client.list_core_api_versions_aggregated().await.map_err(session.kube_error("discover the API"))?;
    let groups = session.client.list_api_groups_aggregated().await.map_err(session.kube_error("discover the API"))?;
    Ok(Catalog::from_discovery([core, groups]))
}

/// Labels of each namespace the targets live in; `None` where they cannot be read (the
/// decision then assumes selectors match, as the webhook does for an unknown namespace).
async fn namespace_labels(session: &Session, targets: &[Target]) -> HashMap<String, Option<BTreeMap<String, String>>> {
    let api: Api<Namespace> = Api::all(session.client.clone());
    let mut out = HashMap::new();
    for t in targets {
        if t.namespace.is_empty() || out.contains_key(&t.namespace) {
            continue;
        }
        let labels = match api.get_opt(&t.namespace).await {
            Ok(Some(ns)) => Some(ns.metadata.labels.unwrap_or_default()),
            _ => None,
        };
        out.insert(t.namespace.clone(), labels);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::catalog;
    use stepup_core::{
        api::{Enforcement, Operation::*},
        testing::{grant, minutes, policy, t0},
    };

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    fn target(op: impl Into<Action>, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Target {
        Target {
            action: op.into(),
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn verbs_become_admission_operations() {
        assert_eq!(parse_verb("delete").unwrap(), Verb::Operations(vec![Delete]));
        assert_eq!(parse_verb("apply").unwrap(), Verb::Operations(vec![Create, Update]));
        assert_eq!(parse_verb("patch").unwrap(), Verb::Operations(vec![Update]));
        assert_eq!(parse_verb("exec").unwrap(), Verb::Connect("exec"));
        assert_eq!(parse_verb("port-forward").unwrap(), Verb::Connect("portforward"));
        assert_eq!(parse_verb("get").unwrap(), Verb::Read(api::Verb::Get));
        assert_eq!(parse_verb("logs").unwrap(), Verb::Read(api::Verb::Get));
        assert_eq!(parse_verb("watch").unwrap(), Verb::Read(api::Verb::Watch));
        assert!(matches!(parse_verb("frobnicate"), Err(Error::Usage { .. })));
    }

    #[test]
    fn check_arguments_read_like_kubectl_auth_can_i() {
        let c = catalog();
        let cases = [
            ("delete secret db", None, vec![target(Delete, "", "secrets", "", "prod", "db")]),
            ("delete secrets/db", None, vec![target(Delete, "", "secrets", "", "prod", "db")]),
            ("delete secrets", None, vec![target(Delete, "", "secrets", "", "prod", "")]),
            (
                "get secret db",
                None,
                vec![target(Action::Authorization(api::Verb::Get), "", "secrets", "", "prod", "db")],
            ),
            ("get secrets", None, vec![target(Action::Authorization(api::Verb::List), "", "secrets", "", "prod", "")]),
            (
                "watch secrets",
                None,
                vec![target(Action::Authorization(api::Verb::Watch), "", "secrets", "", "prod", "")],
            ),
            ("logs web", None, vec![target(Action::Authorization(api::Verb::Get), "", "pods", "log", "prod", "web")]),
            ("create deploy", None, vec![target(Create, "apps", "deployments", "", "prod", "")]),
            ("exec web", None, vec![target(Connect, "", "pods", "exec", "prod", "web")]),
            ("exec pod/web", None, vec![target(Connect, "", "pods", "exec", "prod", "web")]),
            ("port-forward po web", None, vec![target(Connect, "", "pods", "portforward", "prod", "web")]),
            ("create pods web", Some("exec"), vec![target(Create, "", "pods", "exec", "prod", "web")]),
            (
                "create clusterrolebindings",
                None,
                vec![target(Create, "rbac.authorization.k8s.io", "clusterrolebindings", "", "", "")],
            ),
            ("delete ns prod-2", None, vec![target(Delete, "", "namespaces", "", "prod-2", "prod-2")]),
            (
                "apply cm x",
                None,
                vec![
                    target(Create, "", "configmaps", "", "prod", "x"),
                    target(Update, "", "configmaps", "", "prod", "x"),
                ],
            ),
        ];
        for (input, sub, expected) in cases {
            let got = targets_from_words(&words(input), sub, "prod", &c).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, expected, "{input}");
        }
        for bad in ["", "delete", "exec", "delete gadgets x", "create pods web extra", "frob secrets"] {
            assert!(matches!(targets_from_words(&words(bad), None, "prod", &c), Err(Error::Usage { .. })), "{bad:?}");
        }
        assert!(targets_from_words(&words("create pods web"), Some("nonsense"), "prod", &c).is_err());
    }

    const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
# a comment-only document
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: db}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: admins}
---
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}}
"#;

    #[test]
    fn manifests_yield_every_object() {
        let objects = parse_manifest(MANIFEST).unwrap();
        let summary: Vec<(&str, &str, Option<&str>)> =
            objects.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.namespace.as_deref())).collect();
        assert_eq!(
            summary,
            [
                ("Deployment", "web", Some("shop")),
                ("Secret", "db", None),
                ("ClusterRoleBinding", "admins", None),
                ("ConfigMap", "", None)
            ]
        );
        let targets = targets_from_manifest(&objects, &[Delete], "default", &catalog()).unwrap();
        assert_eq!(targets[0], target(Delete, "apps", "deployments", "", "shop", "web"));
        assert_eq!(targets[1], target(Delete, "", "secrets", "", "default", "db"));
        assert_eq!(targets[2], target(Delete, "rbac.authorization.k8s.io", "clusterrolebindings", "", "", "admins"));
    }

    #[test]
    fn bad_manifests_are_usage_errors() {
        for bad in [
            "kind: Secret\nmetadata: {name: x}",
            "apiVersion: v1\nmetadata: {name: x}",
            "apiVersion: v1\nkind: Secret",
            ": : :",
        ] {
            assert!(matches!(parse_manifest(bad), Err(Error::Usage { .. })), "{bad:?}");
        }
        let unknown = parse_manifest("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}").unwrap();
        assert!(targets_from_manifest(&unknown, &[Create], "default", &catalog()).is_err());
    }

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: "uid-alice-1".into(),
            groups: vec!["developers".into()],
            pod_bound: false,
            extra: Default::default(),
        }
    }

    fn prod_secrets() -> StepUpPolicy {
        policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).max_age("15m").build()
    }

    fn check(policies: &[StepUpPolicy], grants: &[GrantRecord], t: &Target) -> TargetVerdict {
        check_with(&DecisionSettings::defaults("stepup-system"), &alice(), policies, grants, t)
    }

    fn check_with(
        settings: &DecisionSettings,
        me: &Identity,
        policies: &[StepUpPolicy],
        grants: &[GrantRecord],
        t: &Target,
    ) -> TargetVerdict {
        let index = policy_index(policies, settings);
        let config = settings.config(None, None);
        let masks = settings.masks();
        let evaluation = Evaluation { me, masks: &masks, policies: &index, grants, config: &config, now: t0() };
        let labels = BTreeMap::new();
        evaluation.evaluate(
            t,
            if t.namespace.is_empty() { NamespaceLabels::NotApplicable } else { NamespaceLabels::Known(&labels) },
        )
    }

    /// A newcomer's report (issue 30): alice, who may not read namespace `default`, was told
    /// "step-up required" for a policy that selects `env=prod` namespaces, while the admin was
    /// told "allowed". The answer now says it is not certain, and why.
    #[test]
    fn an_unreadable_namespace_makes_a_selector_dependent_answer_uncertain() {
        let selecting =
            policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespace_labels(&[("env", "prod")]).build();
        let settings = DecisionSettings::defaults("stepup");
        let index = policy_index(std::slice::from_ref(&selecting), &settings);
        let config = settings.config(None, None);
        let masks = settings.masks();
        let me = alice();
        let evaluation =
            Evaluation { me: &me, masks: &masks, policies: &index, grants: &[], config: &config, now: t0() };
        let v = evaluation.evaluate_unreadable_namespace(&target(Delete, "", "secrets", "", "default", "x"));
        assert_eq!(v.decision, Outcome::Denied, "the webhook's answer for an unknown namespace");
        let why = v.uncertain.clone().expect("uncertain");
        assert!(why.contains("namespace \"default\"") && why.contains("prod-secrets selects"), "{why}");
        let report = CheckReport { user: "alice".into(), allowed: false, results: vec![v] };
        assert!(report.text().contains("probably step-up required\n  Not certain: "), "{}", report.text());

        // Listed namespaces need no labels: the answer is certain.
        let listed = policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build();
        let index = policy_index(&[listed], &settings);
        let evaluation =
            Evaluation { me: &me, masks: &masks, policies: &index, grants: &[], config: &config, now: t0() };
        assert_eq!(
            evaluation.evaluate_unreadable_namespace(&target(Delete, "", "secrets", "", "prod", "x")).uncertain,
            None
        );
    }

    /// `check` answers for the sign-in the credential carries, as the webhook would: a fresh
    /// one satisfies a policy that accepts `Session`, an old one is said to be old.
    #[test]
    fn a_sign_in_on_the_credential_counts_where_a_policy_accepts_it() {
        let sso = policy("prod-secrets-sso")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["prod"])
            .methods(&[stepup_core::api::Method::Session])
            .assurance(&["2"], &[])
            .build();
        let delete_db = target(Delete, "", "secrets", "", "prod", "db");
        let signed_in = |at: jiff::Timestamp| Identity {
            extra: [
                (stepup_core::policy::ACR_EXTRA, vec!["2".into()]),
                (stepup_core::policy::AMR_EXTRA, vec!["pwd".into(), "otp".into()]),
                (stepup_core::policy::AUTH_TIME_EXTRA, vec![at.as_second().to_string()]),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            ..alice()
        };
        let defaults = DecisionSettings::defaults("stepup");
        let fresh = check_with(&defaults, &signed_in(t0() - minutes(2)), std::slice::from_ref(&sso), &[], &delete_db);
        assert_eq!(fresh.decision, Outcome::Granted);
        assert!(fresh.policies[0].satisfied);
        let old = check_with(&defaults, &signed_in(t0() - minutes(20)), std::slice::from_ref(&sso), &[], &delete_db);
        assert_eq!(old.decision, Outcome::Denied);
        let why = old.policies[0].why.clone().unwrap_or_default();
        assert!(
            why.starts_with("your sign-in at the identity provider does not count: it was issued 20m ago"),
            "{why}"
        );
        assert_eq!(
            check(std::slice::from_ref(&sso), &[], &delete_db).decision,
            Outcome::Denied,
            "no sign-in, no grant"
        );
        // The webhook reads other keys: the sign-in at the defaults is no sign-in, and the one
        // at the published keys counts.
        let keys =
            stepup_core::policy::SignInKeys::new("sso.example.com/acr", "sso.example.com/amr", "sso.example.com/t")
                .unwrap();
        let elsewhere = DecisionSettings { sign_in_keys: keys, ..defaults.clone() };
        let at_defaults =
            check_with(&elsewhere, &signed_in(t0() - minutes(2)), std::slice::from_ref(&sso), &[], &delete_db);
        assert_eq!(at_defaults.decision, Outcome::Denied);
        let mut moved = signed_in(t0() - minutes(2));
        for (from, to) in [
            (stepup_core::policy::ACR_EXTRA, "sso.example.com/acr"),
            (stepup_core::policy::AMR_EXTRA, "sso.example.com/amr"),
            (stepup_core::policy::AUTH_TIME_EXTRA, "sso.example.com/t"),
        ] {
            let values = moved.extra.remove(from).unwrap();
            moved.extra.insert(to.to_owned(), values);
        }
        assert_eq!(check_with(&elsewhere, &moved, &[sso], &[], &delete_db).decision, Outcome::Granted);
    }

    /// `check` answers with the webhook's settings, not the defaults: each non-default setting
    /// below turns the default install's "step-up required" into what the webhook would say.
    #[test]
    fn the_published_settings_decide_as_the_webhook_does() {
        let defaults = DecisionSettings::defaults("stepup");
        let delete_db = target(Delete, "", "secrets", "", "prod", "db");
        assert_eq!(check_with(&defaults, &alice(), &[prod_secrets()], &[], &delete_db).decision, Outcome::Denied);

        let exempt_user = DecisionSettings { exempt_users: vec!["alice".into()], ..defaults.clone() };
        assert_eq!(check_with(&exempt_user, &alice(), &[prod_secrets()], &[], &delete_db).decision, Outcome::Exempt);

        let exempt_ns = DecisionSettings {
            exempt_namespaces: decision::exempt_namespaces("stepup", &["prod".into()]),
            ..defaults.clone()
        };
        assert!(check_with(&exempt_ns, &alice(), &[prod_secrets()], &[], &delete_db).allowed);

        let glass = DecisionSettings { break_glass_groups: vec!["developers".into()], ..defaults.clone() };
        assert_eq!(check_with(&glass, &alice(), &[prod_secrets()], &[], &delete_db).decision, Outcome::BreakGlass);

        let policy_delete = target(Delete, "stepup.dev", "stepuppolicies", "", "", "prod-secrets");
        assert!(!check_with(&defaults, &alice(), &[], &[], &policy_delete).allowed);
        let unprotected = DecisionSettings { protect_policies: None, ..defaults.clone() };
        assert!(check_with(&unprotected, &alice(), &[], &[], &policy_delete).allowed);

        // A token minted for a service account is a mask by default; without masks it is a
        // workload, which a policy without subjects leaves alone.
        let sa = Identity { username: "system:serviceaccount:prod:default".into(), ..alice() };
        assert!(!check_with(&defaults, &sa, &[prod_secrets()], &[], &delete_db).allowed);
        let no_masks = DecisionSettings { service_account_masks: false, ..defaults.clone() };
        assert!(check_with(&no_masks, &sa, &[prod_secrets()], &[], &delete_db).allowed);
        let bound = Identity { pod_bound: true, ..sa };
        assert!(check_with(&defaults, &bound, &[prod_secrets()], &[], &delete_db).allowed);
    }

    #[test]
    fn a_prod_secret_delete_needs_a_grant_and_says_which_command_gets_one() {
        let v = check(&[prod_secrets()], &[], &target(Delete, "", "secrets", "", "prod", "db"));
        assert!(!v.allowed);
        assert_eq!(v.decision, Outcome::Denied);
        assert_eq!(
            v.requirement.as_deref(),
            Some("policies=prod-secrets methods=TOTP max-age=15m reason-required=false")
        );
        assert_eq!(v.policies[0].why.as_deref(), Some("you hold no grant"));
        let text = CheckReport { user: "alice".into(), allowed: false, results: vec![v] }.text();
        assert_eq!(
            text,
            "delete secrets \"db\" in namespace \"prod\": step-up required\n\
             \x20 policy prod-secrets (Deny, max age 15m): you hold no grant\n\
             \x20 Run `kubectl stepup request` first, or prefix the command with `kubectl stepup --`.\n"
        );
    }

    #[test]
    fn a_fresh_grant_satisfies_until_it_is_too_old() {
        let now = t0();
        let fresh =
            grant("alice-1", "alice").uid("uid-alice-1").issued(now - minutes(5)).expires(now + minutes(55)).record();
        let v = check(&[prod_secrets()], &[fresh], &target(Delete, "", "secrets", "", "prod", "db"));
        assert!(v.allowed);
        assert_eq!(v.decision, Outcome::Granted);
        assert_eq!(v.policies[0].grant.as_deref(), Some("alice-1"));
        assert_eq!(v.policies[0].valid_for_seconds, Some(600), "max age, not expiry, ends it first");

        let old =
            grant("alice-0", "alice").uid("uid-alice-1").issued(now - minutes(20)).expires(now + minutes(40)).record();
        let v = check(&[prod_secrets()], &[old], &target(Delete, "", "secrets", "", "prod", "db"));
        assert!(!v.allowed);
        assert_eq!(
            v.policies[0].why.as_deref(),
            Some("your latest grant alice-0 does not count: it was issued 20m ago and the policy accepts at most 15m")
        );
    }

    #[test]
    fn unprotected_exempt_and_warn_only_operations_are_allowed() {
        let warn = policy("dev-warn")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["dev"])
            .enforcement(Enforcement::Warn)
            .build();
        let policies = [prod_secrets(), warn];
        let cases = [
            (target(Delete, "", "secrets", "", "staging", "db"), Outcome::NotMatched),
            (target(Delete, "", "secrets", "", "kube-system", "db"), Outcome::Exempt),
            (target(Delete, "", "secrets", "", "dev", "db"), Outcome::Warned),
        ];
        for (t, decision) in cases {
            let v = check(&policies, &[], &t);
            assert!(v.allowed, "{t:?}");
            assert_eq!(v.decision, decision, "{t:?}");
        }
    }

    #[test]
    fn changing_step_up_policies_is_itself_a_step_up_operation() {
        let t = target(Delete, "stepup.dev", "stepuppolicies", "", "", "prod-secrets");
        let v = check(&[], &[], &Target { version: "v1alpha1".into(), ..t });
        assert!(!v.allowed);
        assert_eq!(v.policies[0].name, stepup_core::policy::builtin::POLICY_CHANGES);
    }

    #[test]
    fn check_json_is_stable_for_scripts() {
        let v = check(&[prod_secrets()], &[], &target(Delete, "", "secrets", "", "prod", "db"));
        let value =
            serde_json::to_value(CheckReport { user: "alice".into(), allowed: false, results: vec![v] }).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "user": "alice", "allowed": false,
                "results": [{
                    "operation": "DELETE", "group": "", "version": "v1", "resource": "secrets",
                    "namespace": "prod", "name": "db",
                    "description": "delete secrets \"db\" in namespace \"prod\"",
                    "decision": "denied", "allowed": false,
                    "policies": [{
                        "name": "prod-secrets", "enforcement": "Deny", "maxAge": "15m", "reasonRequired": false,
                        "satisfied": false, "why": "you hold no grant"
                    }],
                    "requirement": "policies=prod-secrets methods=TOTP max-age=15m reason-required=false",
                    "command": "kubectl stepup request"
                }]
            })
        );
    }
}
