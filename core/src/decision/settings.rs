//! The decision's configuration as data: what the webhook decides with, built from its flags,
//! and what the controller publishes (the same flags, the same function) so that
//! `kubectl stepup check` decides as the webhook does. Pure: no I/O.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::DecisionConfig;
use crate::{
    api::Duration,
    keys::GrantVerifier,
    limits::ChallengeView,
    policy::{CompiledPolicy, Masks, SignInKeys, builtin},
};

/// Name of the ConfigMap (in stepup's namespace) the controller publishes the settings in.
pub const PUBLISHED_CONFIGMAP: &str = "stepup-decision";
/// Its key holding [`DecisionSettings`] as JSON.
pub const PUBLISHED_KEY: &str = "decision.json";

/// Its key holding [`StepUpDiscovery`] as JSON.
pub const PUBLISHED_STEP_UP_KEY: &str = "step-up.json";

/// What the plugin needs to step up besides an enrollment: the key responses are sealed to, and
/// the identity providers trusted for `OIDC` step-up. Written by the controller only (the chart's
/// admission policy refuses every other writer of the ConfigMap), read by every user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepUpDiscovery {
    /// The controller's response key (X25519, base64), as enrollments publish it.
    pub response_key: String,
    #[serde(default)]
    pub identity_providers: Vec<PublishedIdentityProvider>,
}

/// An identity provider as the plugin signs in at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedIdentityProvider {
    pub issuer: String,
    /// The client the plugin signs in with: the first of the issuer's audiences (public), or
    /// the cluster's confidential client.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The client is confidential: the plugin hands the authorization code (with its PKCE
    /// verifier) to the controller, which redeems it with the client's secret, held only there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confidential: bool,
    /// The public client for terminals without a browser (the device authorization grant),
    /// configured at the provider to always demand the second factor; `None`: no such flow.
    #[serde(default, rename = "deviceClientID", skip_serializing_if = "Option::is_none")]
    pub device_client_id: Option<String>,
    /// PEM the provider's TLS certificate is verified with, when not the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
}

/// Everything the decision is configured with besides policies and grants. Serialised as the
/// published ConfigMap's content; a field added later must default, so that an older
/// controller's publication still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionSettings {
    /// Stepup's namespace.
    pub namespace: String,
    pub controller_users: Vec<String>,
    pub webhook_users: Vec<String>,
    pub admin_groups: Vec<String>,
    #[serde(default)]
    pub break_glass_groups: Vec<String>,
    #[serde(default)]
    pub exempt_users: Vec<String>,
    #[serde(default)]
    pub exempt_groups: Vec<String>,
    /// Every namespace no policy applies to: kube-system, stepup's own and the configured ones.
    pub exempt_namespaces: Vec<String>,
    /// Maximum grant age of the built-in policies on policy changes and admins' acts; `None`
    /// when they are turned off (`--protect-policies 0`).
    pub protect_policies: Option<Duration>,
    pub service_account_masks: bool,
    #[serde(default)]
    pub trusted_service_account_namespaces: Vec<String>,
    pub max_clock_skew: Duration,
    /// Where the API server puts a sign-in's claims (publications before this field: the defaults).
    #[serde(default)]
    pub sign_in_keys: SignInKeys,
}

impl DecisionSettings {
    /// What a default install decides with, in `namespace`.
    pub fn defaults(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            controller_users: vec![format!("system:serviceaccount:{namespace}:stepup-controller")],
            webhook_users: vec![format!("system:serviceaccount:{namespace}:stepup-webhook")],
            admin_groups: vec!["stepup:admins".to_owned()],
            break_glass_groups: Vec::new(),
            exempt_users: Vec::new(),
            exempt_groups: Vec::new(),
            exempt_namespaces: exempt_namespaces(namespace, &[]),
            protect_policies: Some(Duration::from_secs(15 * 60)),
            service_account_masks: true,
            trusted_service_account_namespaces: Masks::default().trusted_namespaces,
            max_clock_skew: Duration::from_secs(10),
            sign_in_keys: SignInKeys::default(),
        }
    }

    /// The decision's configuration. `verifier` and `challenges` are what only the webhook
    /// holds (the grant key, everyone's challenges); the plugin passes `None`.
    pub fn config(&self, verifier: Option<GrantVerifier>, challenges: Option<Arc<ChallengeView>>) -> DecisionConfig {
        DecisionConfig {
            controller_users: self.controller_users.clone(),
            webhook_users: self.webhook_users.clone(),
            admin_groups: self.admin_groups.clone(),
            break_glass_groups: self.break_glass_groups.clone(),
            exempt_users: self.exempt_users.clone(),
            exempt_groups: self.exempt_groups.clone(),
            exempt_namespaces: self.exempt_namespaces.clone(),
            challenges,
            admin_acts: self.protect_policies.map(|age| Arc::new(builtin::admin_acts(age))),
            grant_verifier: verifier,
            max_clock_skew: self.max_clock_skew.as_signed(),
            sign_in_keys: self.sign_in_keys.clone(),
        }
    }

    /// The built-in policies that join the cluster's own.
    pub fn builtin_policies(&self) -> Vec<CompiledPolicy> {
        self.protect_policies.map(builtin::policy_changes).into_iter().collect()
    }

    /// How requesters are classified.
    pub fn masks(&self) -> Masks {
        Masks {
            enabled: self.service_account_masks,
            trusted_namespaces: self.trusted_service_account_namespaces.clone(),
        }
    }
}

/// kube-system and stepup's own namespace first (a broken webhook must not lock the cluster or
/// itself out), then `extra`, without repeats.
pub fn exempt_namespaces(namespace: &str, extra: &[String]) -> Vec<String> {
    let mut out = vec!["kube-system".to_owned(), namespace.to_owned()];
    for n in extra {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_form_reads_back_the_same() {
        let mut s = DecisionSettings::defaults("stepup");
        s.exempt_users = vec!["system:serviceaccount:argocd:argocd-application-controller".into()];
        s.exempt_namespaces = exempt_namespaces("stepup", &["sandbox".into(), "stepup".into()]);
        s.protect_policies = None;
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"exemptNamespaces\":[\"kube-system\",\"stepup\",\"sandbox\"]"), "{json}");
        assert!(json.contains("\"protectPolicies\":null"), "{json}");
        assert_eq!(serde_json::from_str::<DecisionSettings>(&json).unwrap(), s);
    }

    #[test]
    fn protect_policies_turns_both_builtins_on_or_off() {
        let on = DecisionSettings::defaults("stepup-system");
        assert_eq!(on.builtin_policies().len(), 1);
        assert_eq!(on.builtin_policies()[0].name, builtin::POLICY_CHANGES);
        assert!(on.config(None, None).admin_acts.is_some());
        let off = DecisionSettings { protect_policies: None, ..on };
        assert!(off.builtin_policies().is_empty());
        assert!(off.config(None, None).admin_acts.is_none());
    }

    #[test]
    fn an_older_publication_without_optional_fields_still_reads() {
        let json = r#"{"namespace":"s","controllerUsers":["c"],"webhookUsers":["w"],"adminGroups":["a"],
            "exemptNamespaces":["kube-system","s"],"protectPolicies":"15m","serviceAccountMasks":true,
            "maxClockSkew":"10s"}"#;
        let s: DecisionSettings = serde_json::from_str(json).unwrap();
        assert!(s.exempt_users.is_empty() && s.break_glass_groups.is_empty());
        assert_eq!(s.protect_policies, Some(Duration::from_secs(900)));
    }
}
