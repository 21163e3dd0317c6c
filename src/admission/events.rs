//! Kubernetes Events for notable decisions (denials, warnings, break-glass), rate-limited per
//! (outcome, policy, user) and published off the request path, so a flood of denials cannot
//! slow reviews down or flood the API server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::Semaphore;

use crate::{
    api::API_VERSION,
    decision::{Decision, Outcome},
    metrics::Metrics,
};

/// At most this many Events being published at once; beyond that they are dropped (and counted).
const MAX_IN_FLIGHT: usize = 16;
/// Forget rate-limit keys after this many distinct ones, so memory stays bounded.
const MAX_KEYS: usize = 10_000;

/// Last time an Event went out, per (outcome, policy, user).
type SentAt = HashMap<(Outcome, String, String), Instant>;

#[derive(Clone)]
pub struct EventReporter {
    recorder: Recorder,
    namespace: String,
    interval: Duration,
    last: Arc<Mutex<SentAt>>,
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
        let reporter = Reporter { controller: "stepup-webhook".into(), instance };
        Self {
            recorder: Recorder::new(client, reporter),
            namespace,
            interval,
            last: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        }
    }

    /// Publishes an Event about `decision` unless one with the same key went out recently.
    pub fn report(&self, decision: &Decision, user: &str, what: &str) {
        if !decision.is_eventful() {
            return;
        }
        let policy = decision.policies.first().cloned().unwrap_or_default();
        if !self.admit((decision.outcome, policy.clone(), user.to_owned())) {
            self.metrics.events.with_label_values(&["rate_limited"]).inc();
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
            _ => (EventType::Warning, "RequestRefused"),
        };
        let note = truncate(format!("{user}: {what}: {}", decision.outcome), 1000);
        let (kind, name) = if decision.policies.is_empty() {
            ("StepUpPolicy", "stepup-builtin")
        } else {
            ("StepUpPolicy", policy.as_str())
        };
        let reference = ObjectReference {
            api_version: Some(API_VERSION.into()),
            kind: Some(kind.into()),
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        };
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Admission".into(), secondary: None };
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(Duration::from_secs(5), recorder.publish(&event, &reference)).await {
                Ok(Ok(())) => metrics.events.with_label_values(&["published"]).inc(),
                Ok(Err(error)) => {
                    metrics.events.with_label_values(&["failed"]).inc();
                    tracing::warn!(%error, "could not publish event");
                }
                Err(_) => metrics.events.with_label_values(&["failed"]).inc(),
            }
        });
    }

    fn admit(&self, key: (Outcome, String, String)) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= MAX_KEYS {
            last.retain(|_, t| now.duration_since(*t) < self.interval);
        }
        match last.get(&key) {
            Some(t) if now.duration_since(*t) < self.interval => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
