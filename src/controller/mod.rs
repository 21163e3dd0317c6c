//! The companion controller: turns a verified second factor into a StepUpGrant and leaves the
//! evidence behind (Events, audit lines, metrics). One leader among replicas (Lease). Each
//! reconciler is a thin executor of a pure decision (`steps`, `factor`).

pub mod authorizer_config;
pub mod bootstrap;
pub mod certs;
pub mod challenge;
pub mod enrollment;
pub mod factor;
pub mod grant;
pub mod leader;
pub mod oidc;
pub mod policy_status;
pub mod protection;
pub mod publish;
pub mod records;
pub mod registration;
pub mod run;
pub mod steps;
pub mod webauthn;
pub mod webhook_config;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use self::{
    factor::{Factor, FactorRead, Limits},
    steps::{Record, bootstrap::BootstrapRecord},
};
use crate::{audit, evidence::Evidence, metrics::Metrics};
use stepup_core::{api, keys, limits::ChallengeLimits, verify::Verifier};

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
    /// Durable audit segments (StepUpLog) are deleted this long after their day.
    pub audit_retention: SignedDuration,
    /// Per-user limits on pending challenges and on their creation rate.
    pub challenge_limits: ChallengeLimits,
    /// How long an admin's approval of a key, and any seed sealed to a key, stays usable.
    pub approval_window: SignedDuration,
    /// How long after the controller first starts with nobody enrolled the first admin may
    /// enroll without a second admin; zero turns the bootstrap off.
    pub bootstrap_window: SignedDuration,
    /// The clock difference tolerated between the plugin, the controller and the webhook:
    /// deadlines are enforced this much early.
    pub max_clock_skew: SignedDuration,
    /// Test hook: exit right after this step of answering a challenge that earns a grant.
    pub crash_at: Option<CrashPoint>,
    /// Test hook: panic (in the reconciler) at this step of answering a challenge.
    pub panic_at: Option<CrashPoint>,
    /// Test hook: wait this long between the last deadline check and issuing the grant.
    pub pause_before_issuing: Option<std::time::Duration>,
    /// Where the API server puts a sign-in: the authorizer must refuse impersonating these.
    pub sign_in_keys: stepup_core::policy::SignInKeys,
}

pub use crate::config::CrashPoint;

impl Settings {
    /// The test hook: exits if the controller was told to stop at `point`. Compiled out of
    /// release builds.
    pub(crate) fn crash_point(&self, point: CrashPoint, challenge: &str) {
        if cfg!(debug_assertions) && self.crash_at == Some(point) {
            tracing::error!(challenge, ?point, "test hook: exiting");
            std::process::exit(86);
        }
        if cfg!(debug_assertions) && self.panic_at == Some(point) {
            panic!("test hook: panicking at {point:?} of {challenge}");
        }
    }
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
            audit_retention: SignedDuration::from_hours(90 * 24),
            challenge_limits: ChallengeLimits::default(),
            approval_window: SignedDuration::from_mins(15),
            bootstrap_window: SignedDuration::from_hours(1),
            max_clock_skew: SignedDuration::from_secs(10),
            crash_at: None,
            panic_at: None,
            pause_before_issuing: None,
            sign_in_keys: Default::default(),
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
    /// The highest factor version seen per user, with the UID of the Secret it was seen in:
    /// an older copy in the same Secret is a rollback, refused.
    pub factor_versions: Mutex<HashMap<String, (String, u64)>>,
    /// The bootstrap record and the Secret it was read from (for its resourceVersion).
    pub bootstrap: Mutex<Option<(Secret, BootstrapRecord)>>,
    /// What the API server served at the last discovery, and when: policies are checked
    /// against it (a policy on a resource nobody serves never matches).
    pub served: Mutex<Option<(std::time::Instant, Arc<policy_status::Discovery>)>>,
    /// The authorizer probes asked lately (`verb group resource/subresource`), when, and
    /// whether the API server sent them to stepup: policies of the same shape share one
    /// SubjectAccessReview per recheck.
    pub probed: Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
    /// The identity providers trusted for `OIDC` step-up, if any.
    pub identity_providers: Option<Arc<oidc::IdentityProviders>>,
    /// The relying party of `WebAuthn` (security keys and passkeys).
    pub relying_party: webauthn::RelyingParty,
}

/// The controller's keys, derived from its master key file.
pub struct Keys {
    pub grant_signer: keys::GrantSigner,
    pub grant_verifier: keys::GrantVerifier,
    pub responses: keys::ResponseOpener,
    pub factors: keys::FactorCipher,
    pub bootstrap: keys::BootstrapKey,
}

impl Keys {
    pub fn from_master(master: &keys::MasterKey) -> Self {
        Self {
            grant_signer: master.grant_signer(),
            grant_verifier: master.grant_verifier(),
            responses: master.response_opener(),
            factors: master.factor_cipher(),
            bootstrap: master.bootstrap_key(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} changed concurrently; will retry")]
    Conflict(String),
    #[error("{0}")]
    Bootstrap(String),
    #[error("cannot seal the seed: {0}")]
    Seal(#[from] stepup_core::verify::seal::SealError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("cannot start a WebAuthn registration: {0}")]
    WebAuthn(#[from] webauthn::Refusal),
}

impl Error {
    /// Low-cardinality label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict(_) => "conflict",
            Error::Bootstrap(_) => "bootstrap",
            Error::Seal(_) => "seal",
            Error::Pki(_) => "pki",
            Error::WebAuthn(_) => "webauthn",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Context {
    fn factors(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The user's factor Secret (for its resourceVersion) and what it holds. A copy older than
    /// one this process has already seen in the same Secret is reported as corrupt: someone
    /// rolled it back (to forget failures, or to unspend a code).
    pub async fn load_factor(&self, user: &str) -> Result<(Option<Secret>, FactorRead)> {
        let Some(secret) = self.factors().get_opt(&api::factor_secret_name(user)).await? else {
            return Ok((None, FactorRead::Missing));
        };
        let uid = secret.metadata.uid.clone().unwrap_or_default();
        let read = match Factor::from_secret(&secret, &self.keys.factors, user) {
            FactorRead::Found(f) => {
                let mut seen = lock(&self.factor_versions);
                match seen.get(user) {
                    // The blob is bound to its Secret's UID: a new UID is a Secret the
                    // controller itself re-created (after an unenrollment), not a rollback.
                    Some((same, version)) if *same == uid && f.version < *version => FactorRead::Corrupt(format!(
                        "it was rolled back to an older copy (version {} after version {version} was written)",
                        f.version
                    )),
                    _ => {
                        seen.insert(user.to_owned(), (uid, f.version));
                        FactorRead::Found(f)
                    }
                }
            }
            other => other,
        };
        Ok((Some(secret), read))
    }

    /// Writes the factor back, encrypted and bound to its Secret. With `previous`, the write
    /// carries its resourceVersion, so a concurrent change (another replica, a retry) makes it
    /// fail instead of being overwritten. A new Secret is created empty first, so that the value
    /// can name its UID.
    pub async fn store_factor(&self, user: &str, previous: Option<&Secret>, factor: &Factor) -> Result<()> {
        let name = api::factor_secret_name(user);
        let conflict = |e: kube::Error| match e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict(format!("factor secret {name}")),
            e => Error::Kube(e),
        };
        let target = match previous {
            Some(prev) => prev.clone(),
            None => {
                let empty = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (api::USER_LABEL.to_owned(), api::user_label_value(user)),
                            ("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned()),
                        ])),
                        annotations: Some(BTreeMap::from([
                            (USERNAME_ANNOTATION.to_owned(), user.to_owned()),
                            (factor::CREATING_ANNOTATION.to_owned(), "true".to_owned()),
                        ])),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    ..Default::default()
                };
                self.factors().create(&PostParams::default(), &empty).await.map_err(conflict)?
            }
        };
        let uid = target.metadata.uid.clone().unwrap_or_default();
        let mut factor = factor.clone();
        let seen = lock(&self.factor_versions).get(user).filter(|(u, _)| *u == uid).map_or(0, |(_, v)| *v);
        factor.version = factor.version.max(seen) + 1;
        let mut next = target;
        next.data = Some(factor.to_data(&self.keys.factors, user, &uid));
        next.string_data = None;
        if let Some(a) = next.metadata.annotations.as_mut() {
            a.remove(factor::CREATING_ANNOTATION);
        }
        self.factors().replace(&name, &PostParams::default(), &next).await.map_err(conflict)?;
        lock(&self.factor_versions).insert(user.to_owned(), (uid, factor.version));
        Ok(())
    }

    /// Writes one piece of evidence: an Event, an audit line and a metric sample.
    pub async fn record<K>(&self, object: &K, user: &str, method: &str, record: &Record)
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let rate_key = record.warning.then(|| format!("{}/{user}", record.reason));
        let type_ = if record.warning {
            kube::runtime::events::EventType::Warning
        } else {
            kube::runtime::events::EventType::Normal
        };
        let note = if user.is_empty() { record.message.clone() } else { format!("{user}: {}", record.message) };
        self.evidence.event(object, type_, record.reason, note, rate_key).await;
        let kind = K::kind(&());
        let name = object.meta().name.clone().unwrap_or_default();
        audit::step(&audit::StepRecord {
            event: record.event,
            user,
            object: &format!("{kind}/{name}"),
            result: record.result,
            method,
            reason: "",
            grant: "",
            message: &record.message,
            correlation: "",
            credential: None,
        });
        self.metrics.factor_steps.with_label_values(&[record.event, record.result]).inc();
        if record.reason == "UserLocked" {
            self.metrics.lockouts.inc();
        }
    }
}

/// Annotation of a factor Secret naming its user (labels can hold only a hash).
pub const USERNAME_ANNOTATION: &str = "stepup.dev/username";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
