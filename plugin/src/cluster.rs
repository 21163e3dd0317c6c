//! The connection to the cluster, made like kubectl makes it, and who the API server says we are.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, Config, Resource,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

use super::{
    cli::ClusterArgs,
    error::{Error, Result},
};
use stepup_core::{
    api,
    policy::{CREDENTIAL_ID_EXTRA, Masks, SignIn, SignInKeys, User},
};

/// The authenticated user, as the API server reports it. The plugin never takes identity from
/// flags: the webhook binds every challenge and enrollment to this same identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    /// Empty when the authenticator supplies none.
    pub uid: String,
    pub groups: Vec<String>,
    /// Whether the credential is a service-account token bound to a pod (its `userInfo.extra`
    /// names the pod): the webhook treats other service-account credentials as masks.
    pub pod_bound: bool,
    /// The extras the API server reports (a sign-in's `acr`, `amr`, `auth-time` at the keys
    /// the webhook is configured with, the credential id, ...): read by the webhook's rule
    /// ([`SignIn::from_extras`]).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// This user as the webhook classifies it with `masks`, signed in as the extras at `keys` say.
    pub fn user_as_classified(&self, masks: &Masks, keys: &SignInKeys) -> User<'_> {
        User::reported(&self.username, &self.uid, &self.groups, self.pod_bound, masks).with_sign_in(self.sign_in(keys))
    }

    fn sign_in(&self, keys: &SignInKeys) -> Option<SignIn<'_>> {
        let values = |key: &str| self.extra.get(key).map_or(&[][..], Vec::as_slice);
        SignIn::from_extras(values(&keys.acr), values(&keys.amr), values(&keys.auth_time), values(CREDENTIAL_ID_EXTRA))
    }

    /// The `stepup.dev/user` label selector of this user's objects.
    pub fn selector(&self) -> String {
        format!("{}={}", api::USER_LABEL, api::user_label_value(&self.username))
    }
}

/// A client, the server it talks to (for messages), the context's default namespace and the
/// cluster's name as people know it.
pub struct Session {
    pub client: Client,
    pub server: String,
    pub namespace: String,
    /// The namespace stepup runs in (`--stepup-namespace`).
    pub stepup_namespace: String,
    /// See [`cluster_name`].
    pub cluster: String,
}

/// The name people know a cluster by, so that one authenticator can hold entries for several:
/// the cluster of the kubeconfig context in use (`--context`, else the current one), else
/// (in a pod, or a context without one) the API server's host.
pub fn cluster_name(kubeconfig: Option<&Kubeconfig>, context: Option<&str>, server_host: &str) -> String {
    let named = kubeconfig.and_then(|k| {
        let context = context.or(k.current_context.as_deref())?;
        let cluster = &k.contexts.iter().find(|c| c.name == context)?.context.as_ref()?.cluster;
        Some(cluster.trim().to_owned()).filter(|c| !c.is_empty())
    });
    named.unwrap_or_else(|| server_host.to_owned())
}

impl Session {
    /// Honours `--kubeconfig`, `--context` and `$KUBECONFIG` like kubectl; in a pod without a
    /// kubeconfig, the in-cluster service account.
    pub async fn connect(args: &ClusterArgs) -> Result<Self> {
        let options = KubeConfigOptions { context: args.context.clone(), ..KubeConfigOptions::default() };
        let kubeconfig_error = |e: kube::config::KubeconfigError| Error::Kubeconfig { detail: e.to_string() };
        let kubeconfig = match &args.kubeconfig {
            Some(path) => Some(Kubeconfig::read_from(path).map_err(kubeconfig_error)?),
            None => None,
        };
        let mut config = match &kubeconfig {
            Some(kubeconfig) => {
                Config::from_custom_kubeconfig(kubeconfig.clone(), &options).await.map_err(kubeconfig_error)?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options).await.map_err(kubeconfig_error)?,
            None => Config::infer().await.map_err(|e| Error::Kubeconfig { detail: e.to_string() })?,
        };
        // Without --kubeconfig, the file kube read ($KUBECONFIG or ~/.kube/config); none in a pod.
        let kubeconfig = kubeconfig.or_else(|| Kubeconfig::read().ok());
        let cluster =
            cluster_name(kubeconfig.as_ref(), args.context.as_deref(), config.cluster_url.host().unwrap_or_default());
        // Fail fast on an unreachable server; watches are not used, so reads may stay unbounded.
        config.connect_timeout = Some(Duration::from_secs(10));
        // A refusal by the per-user challenge limits (429) is said to the person at once,
        // with when to try again, rather than retried behind their back.
        config.default_retry = false;
        let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
        let namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| Error::from_kube(e, "connect", &server))?;
        Ok(Self { client, server, namespace, stepup_namespace: args.stepup_namespace.clone(), cluster })
    }

    pub fn kube_error(&self, action: &str) -> impl Fn(kube::Error) -> Error + '_ {
        let action = action.to_owned();
        move |e| Error::from_kube(e, &action, &self.server)
    }

    pub fn all<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope> + DeserializeOwned + Clone + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// Asks the API server who we are (SelfSubjectReview, Kubernetes 1.28+).
    pub async fn whoami(&self) -> Result<Identity> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(self.kube_error("find out who you are"))?;
        let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
        let username = info.username.filter(|u| !u.is_empty()).ok_or_else(|| {
            Error::other(
                "the API server did not say who you are",
                "Check that your credentials authenticate you (anonymous requests cannot step up).",
            )
        })?;
        let extra = info.extra.unwrap_or_default();
        let names = |key: &str| extra.get(key).is_some_and(|v| v.iter().any(|s| !s.is_empty()));
        let pod_bound = names(api::POD_NAME_EXTRA) && names(api::POD_UID_EXTRA);
        Ok(Identity {
            username,
            uid: info.uid.unwrap_or_default(),
            groups: info.groups.unwrap_or_default(),
            pod_bound,
            extra,
        })
    }

    /// `kind` objects labelled as belonging to `who`.
    pub async fn list_mine<K>(&self, who: &Identity, what: &str) -> Result<Vec<K>>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope> + DeserializeOwned + Clone + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.all();
        let list = api
            .list(&ListParams::default().labels(&who.selector()))
            .await
            .map_err(self.kube_error(&format!("list your {what}")))?;
        Ok(list.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "
apiVersion: v1
kind: Config
current-context: alice@prod
clusters:
- {name: prod-eu, cluster: {server: 'https://prod.example.com:6443'}}
- {name: staging, cluster: {server: 'https://10.0.0.1'}}
contexts:
- {name: alice@prod, context: {cluster: prod-eu, user: alice}}
- {name: alice@staging, context: {cluster: staging, user: alice}}
- {name: nameless, context: {cluster: '', user: alice}}
users:
- {name: alice, user: {token: t}}
";

    #[test]
    fn a_cluster_is_named_by_its_kubeconfig_cluster_or_else_its_host() {
        let kubeconfig = Kubeconfig::from_yaml(KUBECONFIG).unwrap();
        let cases = [
            (Some(&kubeconfig), None, "prod-eu"),
            (Some(&kubeconfig), Some("alice@staging"), "staging"),
            (Some(&kubeconfig), Some("nameless"), "api.example.com"),
            (Some(&kubeconfig), Some("missing"), "api.example.com"),
            (None, None, "api.example.com"),
        ];
        for (kubeconfig, context, name) in cases {
            assert_eq!(cluster_name(kubeconfig, context, "api.example.com"), name, "{context:?}");
        }
    }
}
