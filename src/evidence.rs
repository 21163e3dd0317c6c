//! Evidence as Kubernetes Events (events.k8s.io, via kube-runtime's recorder, which folds
//! repeats into series), for the webhook and the controller alike. Events about stepup's
//! cluster-scoped objects are published in stepup's own namespace, where
//! `kubectl get events -n <namespace>` finds the whole trail, and a per-key rate limit keeps a
//! flood of failures from flooding the API server.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::metrics::Metrics;

/// Forget rate-limit keys beyond this many, so memory stays bounded.
const MAX_KEYS: usize = 10_000;
/// Kubernetes caps an Event's note at 1 kB.
const MAX_NOTE: usize = 1000;

/// At most one admission per key per interval.
pub struct RateLimiter<K> {
    interval: Duration,
    last: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: Mutex::new(HashMap::new()) }
    }

    pub fn admit(&self, key: K) -> bool {
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

/// Cuts `note` to the size the API server accepts, on a character boundary.
pub fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

pub struct Evidence {
    recorder: Recorder,
    namespace: String,
    metrics: Metrics,
    limiter: RateLimiter<String>,
}

impl Evidence {
    /// `component` is the reporting controller (`stepup-webhook`, `stepup-controller`).
    pub fn new(
        client: Client,
        component: &str,
        namespace: String,
        instance: Option<String>,
        interval: Duration,
        metrics: Metrics,
    ) -> Self {
        let reporter = Reporter { controller: component.into(), instance };
        Self { recorder: Recorder::new(client, reporter), namespace, metrics, limiter: RateLimiter::new(interval) }
    }

    /// Publishes an Event about `object`. With `rate_key`, at most one per key per interval.
    pub async fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String, rate_key: Option<String>)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event_about(object.object_ref(&()), type_, reason, note, rate_key).await;
    }

    /// Publishes an Event about the object `reference` names.
    pub async fn event_about(
        &self,
        mut reference: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        rate_key: Option<String>,
    ) {
        if let Some(key) = rate_key
            && !self.limiter.admit(key)
        {
            self.metrics.events.with_label_values(&["rate_limited"]).inc();
            return;
        }
        reference.namespace = Some(self.namespace.clone());
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate_note(note)),
            action: reason.to_owned(),
            secondary: None,
        };
        match tokio::time::timeout(Duration::from_secs(5), self.recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => self.metrics.events.with_label_values(&["published"]).inc(),
            Ok(Err(error)) => {
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(%error, reason, "could not publish event");
            }
            Err(_) => self.metrics.events.with_label_values(&["failed"]).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_admission_per_key_per_interval() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        assert!(limiter.admit("a"));
        assert!(!limiter.admit("a"));
        assert!(limiter.admit("b"));
        let quick = RateLimiter::new(Duration::ZERO);
        assert!(quick.admit("a") && quick.admit("a"));
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        let note = truncate_note("é".repeat(600));
        assert!(note.len() <= 1000 && note.chars().all(|c| c == 'é'));
    }
}
