//! Kubernetes Events for notable decisions (denials, warnings, break-glass), rate-limited per
//! (outcome, policy, user) and published off the request path, so a flood of denials can
//! neither slow reviews down nor flood the API server.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{Client, runtime::events::EventType};
use tokio::sync::Semaphore;

use crate::{
    api::API_VERSION,
    decision::{Decision, Outcome},
    evidence::Evidence,
    metrics::Metrics,
};

/// At most this many Events being published at once; beyond that they are dropped (and counted).
const MAX_IN_FLIGHT: usize = 16;

#[derive(Clone)]
pub struct EventReporter {
    evidence: Arc<Evidence>,
    in_flight: Arc<Semaphore>,
    metrics: Metrics,
}

impl EventReporter {
    /// Events go to `namespace` (stepup's own), where auditors find the whole trail.
    pub fn new(
        client: Client,
        namespace: String,
        instance: Option<String>,
        interval: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            evidence: Arc::new(Evidence::new(client, "stepup-webhook", namespace, instance, interval, metrics.clone())),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        }
    }

    /// Publishes an Event about `decision`, unless one with the same key went out recently.
    pub fn report(&self, decision: &Decision, user: &str, what: &str) {
        if !decision.is_eventful() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.events.with_label_values(&["dropped"]).inc();
            return;
        };
        let (type_, reason) = match decision.outcome {
            Outcome::Denied => (EventType::Warning, "StepUpRequired"),
            Outcome::Warned => (EventType::Normal, "StepUpWarned"),
            Outcome::Audited => (EventType::Normal, "StepUpAudited"),
            Outcome::BreakGlass => (EventType::Warning, "BreakGlassUsed"),
            Outcome::Unavailable => (EventType::Warning, "GrantsUnavailable"),
            Outcome::ForgedGrant => (EventType::Warning, "GrantForged"),
            _ => (EventType::Warning, "RequestRefused"),
        };
        let policy = decision.policies.first().cloned().unwrap_or_else(|| "stepup-builtin".to_owned());
        let rate_key = format!("{}/{policy}/{user}", decision.outcome);
        let note = format!("{user}: {what}: {}", decision.outcome);
        let reference = ObjectReference {
            api_version: Some(API_VERSION.into()),
            kind: Some("StepUpPolicy".into()),
            name: Some(policy),
            ..Default::default()
        };
        let evidence = self.evidence.clone();
        tokio::spawn(async move {
            let _permit = permit;
            evidence.event_about(reference, type_, reason, note, Some(rate_key)).await;
        });
    }
}
