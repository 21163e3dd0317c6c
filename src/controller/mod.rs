//! The companion controller: turns a verified second factor into a StepUpGrant and leaves the
//! evidence behind (Events, audit lines, metrics). One leader among replicas (Lease). Each
//! reconciler is a thin shell around pure pieces (`factor`, `issue`).

pub mod certs;
pub mod challenge;
pub mod enrollment;
pub mod factor;
pub mod grant;
pub mod leader;
pub mod policy_status;
pub mod protection;
pub mod registration;
pub mod run;
pub mod webhook_config;

use std::{collections::BTreeMap, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use self::factor::{CorruptFactor, Factor, Limits};
use crate::{api, evidence::Evidence, keys, metrics::Metrics, verify::Verifier};

/// What the controller needs to know beyond the objects it reconciles.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the factor Secrets and of the Events.
    pub namespace: String,
    /// First enrollments need no admin approval.
    pub self_service_enrollment: bool,
    pub default_grant_duration: SignedDuration,
    pub max_grant_duration: SignedDuration,
    /// Expired grants are kept this long as evidence, then deleted.
    pub grant_retention: SignedDuration,
    /// A challenge still pending after this long is expired.
    pub challenge_timeout: SignedDuration,
    /// Finished challenges are deleted after this long.
    pub challenge_ttl: SignedDuration,
    pub limits: Limits,
    /// Test hook: exit right after recording a code's use, before issuing the grant.
    pub crash_after_recording: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "stepup-system".into(),
            self_service_enrollment: false,
            default_grant_duration: SignedDuration::from_hours(1),
            max_grant_duration: SignedDuration::from_hours(8),
            grant_retention: SignedDuration::from_hours(30 * 24),
            challenge_timeout: SignedDuration::from_mins(5),
            challenge_ttl: SignedDuration::from_hours(1),
            limits: Limits::default(),
            crash_after_recording: false,
        }
    }
}

/// Shared by the reconcilers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub evidence: Evidence,
    pub verifier: Arc<dyn Verifier>,
    pub keys: Keys,
}

/// The controller's keys, derived from its master key file.
pub struct Keys {
    pub grant_signer: keys::GrantSigner,
    pub grant_verifier: keys::GrantVerifier,
    pub responses: keys::ResponseOpener,
    pub factors: keys::FactorCipher,
}

impl Keys {
    pub fn from_master(master: &keys::MasterKey) -> Self {
        Self {
            grant_signer: master.grant_signer(),
            grant_verifier: master.grant_verifier(),
            responses: master.response_opener(),
            factors: master.factor_cipher(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} changed concurrently; will retry")]
    Conflict(String),
    #[error(transparent)]
    Corrupt(#[from] CorruptFactor),
    #[error("cannot seal the seed: {0}")]
    Seal(#[from] crate::verify::seal::SealError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

impl Error {
    /// Low-cardinality label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict(_) => "conflict",
            Error::Corrupt(_) => "corrupt_factor",
            Error::Seal(_) => "seal",
            Error::Pki(_) => "pki",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Context {
    fn factors(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The user's factor Secret and its decoded contents, if enrolled at all.
    pub async fn load_factor(&self, user: &str) -> Result<Option<(Secret, Factor)>> {
        let Some(secret) = self.factors().get_opt(&api::factor_secret_name(user)).await? else {
            return Ok(None);
        };
        let factor = Factor::from_secret(&secret)?;
        Ok(Some((secret, factor)))
    }

    /// Writes the factor back. With `previous`, the write carries its resourceVersion, so a
    /// concurrent change (another replica, a retry) makes it fail instead of being overwritten.
    pub async fn store_factor(&self, user: &str, previous: Option<&Secret>, factor: &Factor) -> Result<()> {
        let name = api::factor_secret_name(user);
        let result = match previous {
            Some(prev) => {
                let mut next = prev.clone();
                next.data = Some(factor.to_data());
                next.string_data = None;
                self.factors().replace(&name, &PostParams::default(), &next).await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (api::USER_LABEL.to_owned(), api::user_label_value(user)),
                            ("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned()),
                        ])),
                        annotations: Some(BTreeMap::from([("stepup.dev/username".to_owned(), user.to_owned())])),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(factor.to_data()),
                    ..Default::default()
                };
                self.factors().create(&PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(format!("factor secret {name}"))),
            Err(e) => Err(e.into()),
        }
    }
}

/// A Kubernetes-style condition.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> api::Condition {
    api::Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
        observed_generation: generation,
    }
}

/// Keeps `lastTransitionTime` when a condition's status did not change.
pub fn merge_condition(existing: &[api::Condition], mut next: api::Condition) -> Vec<api::Condition> {
    if let Some(old) = existing.iter().find(|c| c.type_ == next.type_)
        && old.status == next.status
    {
        next.last_transition_time = old.last_transition_time.clone();
    }
    let mut out: Vec<api::Condition> = existing.iter().filter(|c| c.type_ != next.type_).cloned().collect();
    out.push(next);
    out
}
