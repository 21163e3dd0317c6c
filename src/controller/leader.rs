//! Leader election on a coordination.k8s.io Lease, with optimistic concurrency: only the
//! holder of the lease reconciles, a standby takes over when the holder stops renewing, and
//! a graceful shutdown releases the lease so the handover is immediate.
//!
//! Two leaders never overlap: a standby may take the lease a lease duration after its last
//! renewal, and the holder stops leading at its renew deadline ([`renew_deadline`], two thirds
//! of that) after the last renewal it *sent* that succeeded, even while a renewal is still
//! waiting for an answer (a stalled connection to the API server). The third in between
//! absorbs request latency and the replicas' clock difference, as client-go's defaults do.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid without renewal; a standby waits this long.
    pub lease_duration: Duration,
    /// How often the holder renews and a standby retries.
    pub retry_period: Duration,
}

/// How long after its last successful renewal was sent the holder may still act.
pub fn renew_deadline(config: &LeaseConfig) -> Duration {
    config.lease_duration * 2 / 3
}

/// Refuses timings with which the holder could not renew twice before its renew deadline (it
/// would step down and come back by turns).
pub fn check(config: &LeaseConfig) -> Result<(), String> {
    if config.retry_period.is_zero() || config.retry_period * 2 > renew_deadline(config) {
        return Err(format!(
            "--lease-retry ({:?}) must be at most a third of --lease-duration ({:?}): the leader renews at that interval and stops leading two thirds of a lease duration after its last renewal",
            config.retry_period, config.lease_duration
        ));
    }
    Ok(())
}

/// What one attempt on the lease concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Leader,
    Follower,
}

/// Decides, from the current lease, whether `identity` may hold it now. Pure.
pub fn may_hold(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = lease else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(MicroTime(renewed)) => now.as_second() > renewed.as_second() + duration,
        None => true,
    }
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config }
    }

    /// One acquire-or-renew attempt. Conflicts (another replica wrote first) count as
    /// not leading; the next attempt re-reads.
    pub async fn try_acquire(&self) -> Result<Standing, kube::Error> {
        let now = Timestamp::now();
        let current = match self.api.get_opt(&self.config.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Standing::Leader),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Standing::Follower),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        if !may_hold(Some(&spec), &self.config.identity, now) {
            return Ok(Standing::Follower);
        }
        let ours = spec.holder_identity.as_deref() == Some(self.config.identity.as_str());
        let acquired = if ours { spec.acquire_time.map(|t| t.0).unwrap_or(now) } else { now };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut next = current.clone();
        next.spec = Some(self.spec(acquired, now, transitions));
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
        match self.api.replace(&self.config.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(Standing::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Standing::Follower),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up, if we hold it, so a standby need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        if let Err(error) = self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            tracing::warn!(%error, "could not release the lease");
        }
    }

    /// Keeps trying until `stop`; publishes whether we lead. Leadership is dropped at the
    /// renew deadline after the last renewal sent that succeeded, whether the renewals since
    /// failed or are still waiting for an answer: after it, a standby may soon take over.
    pub async fn run(self, leading: watch::Sender<bool>, stop: CancellationToken) {
        let deadline = renew_deadline(&self.config);
        // When the last renewal that succeeded was sent (the lease's renewTime is about then).
        let mut renewed: Option<tokio::time::Instant> = None;
        loop {
            let sent = tokio::time::Instant::now();
            let attempt = self.try_acquire();
            let outcome = match renewed.filter(|_| *leading.borrow()) {
                // Leading: the answer must come before the deadline, or we stop leading.
                Some(at) => tokio::time::timeout_at(at + deadline, attempt).await.ok(),
                None => Some(attempt.await),
            };
            match outcome {
                Some(Ok(Standing::Leader)) => {
                    renewed = Some(sent);
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                    }
                    leading.send_replace(true);
                }
                Some(Ok(Standing::Follower)) => {
                    if *leading.borrow() {
                        tracing::warn!("lost the lease to another replica");
                    }
                    renewed = None;
                    leading.send_replace(false);
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "lease renewal failed");
                    if renewed.is_none_or(|t| t.elapsed() >= deadline) && *leading.borrow() {
                        tracing::error!(
                            ?deadline,
                            "could not renew the lease within the renew deadline; stepping down"
                        );
                        renewed = None;
                        leading.send_replace(false);
                    }
                }
                None => {
                    tracing::error!(
                        ?deadline,
                        "no answer to the lease renewal within the renew deadline; stepping down"
                    );
                    renewed = None;
                    leading.send_replace(false);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        if *leading.borrow() {
            self.release().await;
            leading.send_replace(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn the_holder_stops_leading_well_before_a_standby_may_take_over() {
        let config = |lease: u64, retry: u64| LeaseConfig {
            namespace: "stepup-system".into(),
            name: "stepup-controller".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(lease),
            retry_period: Duration::from_secs(retry),
        };
        // The defaults (15 s, 2 s) and the e2e's (4 s, 1 s).
        assert_eq!(renew_deadline(&config(15, 2)), Duration::from_secs(10));
        check(&config(15, 2)).unwrap();
        check(&config(4, 1)).unwrap();
        // A standby takes over after a whole lease duration (seconds, as the Lease stores
        // them): at least a third of it after the holder stopped.
        let renewed = 1_000;
        let stops = Duration::from_secs(renewed as u64) + renew_deadline(&config(15, 2));
        let first_takeover = (renewed..)
            .find(|s| may_hold(Some(&spec("a", renewed, 15)), "b", Timestamp::from_second(*s).unwrap()))
            .unwrap();
        assert!(Duration::from_secs(first_takeover as u64) >= stops + Duration::from_secs(5), "{first_takeover}");
        let err = check(&config(4, 2)).unwrap_err();
        assert!(err.contains("--lease-retry (2s) must be at most a third of --lease-duration (4s)"), "{err}");
        assert!(check(&config(15, 0)).is_err());
    }

    #[test]
    fn a_live_lease_of_another_replica_cannot_be_taken() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(!may_hold(Some(&spec("a", 990, 15)), "b", now));
        assert!(may_hold(Some(&spec("a", 980, 15)), "b", now), "expired");
        assert!(may_hold(Some(&spec("b", 990, 15)), "b", now), "our own");
        assert!(may_hold(Some(&spec("", 999, 15)), "b", now), "released");
        assert!(may_hold(None, "b", now), "no lease yet");
    }
}
