//! Evidence of each step: Kubernetes Events (via kube-runtime's recorder, which aggregates
//! repeats into series) published in stepup's namespace where auditors look for them, plus a
//! per-key rate limit so a flood of failures cannot flood the API server.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::metrics::Metrics;

const MAX_KEYS: usize = 10_000;

pub struct Evidence {
    recorder: Recorder,
    namespace: String,
    metrics: Metrics,
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Evidence {
    pub fn new(client: Client, namespace: String, instance: Option<String>, metrics: Metrics) -> Self {
        let reporter = Reporter { controller: "stepup-controller".into(), instance };
        Self {
            recorder: Recorder::new(client, reporter),
            namespace,
            metrics,
            interval: Duration::from_secs(10),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `object`. With `rate_key`, at most one per key per interval.
    pub async fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String, rate_key: Option<String>)
    where
        K: Resource<DynamicType = ()>,
    {
        if let Some(key) = rate_key
            && !self.admit(key)
        {
            self.metrics.events.with_label_values(&["rate_limited"]).inc();
            return;
        }
        let mut reference = object.object_ref(&());
        // The objects are cluster-scoped; their Events go to stepup's namespace, where
        // `kubectl get events -n <namespace>` finds the whole trail.
        reference.namespace = Some(self.namespace.clone());
        let mut note = note;
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event =
            Event { type_, reason: reason.to_owned(), note: Some(note), action: reason.to_owned(), secondary: None };
        match tokio::time::timeout(Duration::from_secs(5), self.recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => self.metrics.events.with_label_values(&["published"]).inc(),
            Ok(Err(error)) => {
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(%error, reason, "could not publish event");
            }
            Err(_) => self.metrics.events.with_label_values(&["failed"]).inc(),
        }
    }

    fn admit(&self, key: String) -> bool {
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
