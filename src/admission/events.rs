//! Kubernetes Events for notable decisions (denials, warnings, break-glass), off the request
//! path. Each Event says who was refused what: repeats of the same user, decision, policy and
//! object fold into one Event's series; different ones never do (kube-runtime's recorder keys
//! only on the policy and reason, so bob's refusal used to land in alice's Event). A token
//! bucket bounds Events per second, so a denial storm from many users cannot flood the API
//! server; what it holds back is counted. The folding is pure ([`Series::observe`]); the
//! reporter does the I/O.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::{evidence::truncate_note, metrics::Metrics};
use stepup_core::{
    api::API_VERSION,
    decision::{Decision, Outcome},
};

/// At most this many Event writes in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Writes queued behind those; beyond this they are dropped (and counted).
const QUEUE: usize = 1024;
/// Series remembered; the oldest are forgotten beyond this (their next repeat starts anew).
const MAX_SERIES: usize = 10_000;

/// What folds together: the same decision for the same user on the same object and policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub outcome: Outcome,
    pub policy: String,
    pub user: String,
    /// `delete secrets "db" in namespace "prod"`.
    pub what: String,
}

impl Key {
    /// A stable Event name: the same series always writes the same object.
    pub fn event_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.outcome.as_str(), &self.policy, &self.user, &self.what] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        format!("stepup.{}", hex::encode(&h.finalize()[..10]))
    }
}

/// One series: how often it happened, and how much of that the API server has been told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub count: u32,
    pub published: u32,
    pub first: Timestamp,
    pub last: Timestamp,
    last_write: Option<Instant>,
}

/// What to write for an occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The first occurrence: a new Event.
    Create,
    /// A repeat, at most once per interval: the series count and last time.
    Update { count: u32 },
    /// A repeat within the interval: counted, written with the next update.
    Fold,
}

impl Series {
    fn new(now: Timestamp) -> Self {
        Self { count: 0, published: 0, first: now, last: now, last_write: None }
    }

    /// Records one occurrence at `now` and says what to write.
    pub fn observe(&mut self, now: Timestamp, at: Instant, interval: Duration) -> Write {
        self.count += 1;
        self.last = now;
        if self.published == 0 && self.last_write.is_none() {
            return Write::Create;
        }
        match self.last_write {
            Some(t) if at.duration_since(t) < interval => Write::Fold,
            _ => Write::Update { count: self.count },
        }
    }

    fn written(&mut self, count: u32, at: Instant) {
        self.published = self.published.max(count);
        self.last_write = Some(at);
    }
}

/// At most `rate` writes per second, bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self { tokens: burst, rate, burst, at: now }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct State {
    series: HashMap<Key, Series>,
    bucket: TokenBucket,
}

#[derive(Clone)]
pub struct EventReporter {
    api: Api<Event>,
    namespace: String,
    instance: String,
    interval: Duration,
    state: Arc<Mutex<State>>,
    queue: tokio::sync::mpsc::Sender<Pending>,
    metrics: Metrics,
}

/// A write waiting for its turn.
struct Pending {
    key: Key,
    series: Series,
    write: Write,
    note: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventReporter {
    /// Events go to `namespace` (stepup's own), where auditors find the whole trail. At most
    /// `rate` Event writes per second (bursts of 4 × rate), each series at most once per
    /// `interval`.
    pub fn new(
        client: Client,
        namespace: String,
        instance: Option<String>,
        interval: Duration,
        rate: f64,
        metrics: Metrics,
    ) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::channel::<Pending>(QUEUE);
        let this = Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            instance: instance.unwrap_or_else(|| format!("pid-{}", std::process::id())),
            interval,
            state: Arc::new(Mutex::new(State {
                series: HashMap::new(),
                bucket: TokenBucket::new(rate, (rate * 4.0).max(1.0), Instant::now()),
            })),
            queue,
            metrics,
        };
        let writer = this.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            while let Some(p) = pending.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let writer = writer.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    writer.write(&p.key, &p.series, p.write, p.note).await;
                });
            }
        });
        this
    }

    /// Records an occurrence of `decision` for `user` on `what`; writes an Event when due.
    pub fn report(&self, decision: &Decision, user: &str, what: &str) {
        if !decision.is_eventful() {
            return;
        }
        let key = Key {
            outcome: decision.outcome,
            policy: decision.policies.first().cloned().unwrap_or_else(|| "stepup-builtin".to_owned()),
            user: user.to_owned(),
            what: what.to_owned(),
        };
        let (now, at) = (Timestamp::now(), Instant::now());
        let (write, series) = {
            let mut state = lock(&self.state);
            if state.series.len() >= MAX_SERIES && !state.series.contains_key(&key) {
                // Forget the series that has been quiet longest.
                if let Some(oldest) = state.series.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                    state.series.remove(&oldest);
                }
            }
            let series = state.series.entry(key.clone()).or_insert_with(|| Series::new(now));
            let write = series.observe(now, at, self.interval);
            if write == Write::Fold {
                drop(state);
                self.metrics.events.with_label_values(&["folded"]).inc();
                return;
            }
            let series = series.clone();
            if !state.bucket.take(at) {
                drop(state);
                self.metrics.events.with_label_values(&["rate_limited"]).inc();
                return;
            }
            // Claimed now, so a burst of repeats does not write the same update twice.
            if let Some(s) = state.series.get_mut(&key) {
                s.written(series.count, at);
            }
            (write, series)
        };
        let note = truncate_note(format!("{user}: {what}: {}", decision.outcome));
        if self.queue.try_send(Pending { key, series, write, note }).is_err() {
            self.metrics.events.with_label_values(&["dropped"]).inc();
        }
    }

    fn event(&self, key: &Key, series: &Series, note: String) -> Event {
        let (type_, reason) = reason_of(key.outcome);
        Event {
            metadata: ObjectMeta {
                name: Some(key.event_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some([("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned())].into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(series.first)),
            type_: Some(type_.to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(reason.to_owned()),
            note: Some(note),
            reporting_controller: Some("stepup.dev/webhook".to_owned()),
            reporting_instance: Some(self.instance.chars().take(128).collect()),
            regarding: Some(ObjectReference {
                api_version: Some(API_VERSION.into()),
                kind: Some("StepUpPolicy".into()),
                name: Some(key.policy.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn write(&self, key: &Key, series: &Series, write: Write, note: String) {
        let result = match write {
            Write::Create | Write::Fold => self.create(key, series, note).await,
            Write::Update { count } => {
                let patch = serde_json::json!({
                    "series": {"count": count.max(2), "lastObservedTime": MicroTime(series.last)},
                });
                match self.api.patch(&key.event_name(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    // The API server dropped it (Events live an hour): start the series anew.
                    Err(kube::Error::Api(e)) if e.code == 404 => self.create(key, series, note).await,
                    other => other.map(|_| ()),
                }
            }
        };
        match result {
            Ok(()) => self.metrics.events.with_label_values(&["published"]).inc(),
            Err(error) => {
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(%error, "could not publish event");
            }
        }
    }

    async fn create(&self, key: &Key, series: &Series, note: String) -> Result<(), kube::Error> {
        let mut event = self.event(key, series, note);
        if series.count >= 2 {
            event.series = Some(k8s_openapi::api::events::v1::EventSeries {
                count: series.count as i32,
                last_observed_time: MicroTime(series.last),
            });
        }
        match self.api.create(&PostParams::default(), &event).await {
            // Another replica (or an earlier life of this one) started the series.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

fn reason_of(outcome: Outcome) -> (&'static str, &'static str) {
    match outcome {
        Outcome::Denied => ("Warning", "StepUpRequired"),
        Outcome::Warned => ("Normal", "StepUpWarned"),
        Outcome::Audited => ("Normal", "StepUpAudited"),
        Outcome::BreakGlass => ("Warning", "BreakGlassUsed"),
        Outcome::Unavailable => ("Warning", "GrantsUnavailable"),
        Outcome::ForgedGrant => ("Warning", "GrantForged"),
        _ => ("Warning", "RequestRefused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str, what: &str) -> Key {
        Key { outcome: Outcome::Denied, policy: "prod-secrets".into(), user: user.into(), what: what.into() }
    }

    #[test]
    fn different_users_and_objects_are_different_events() {
        let names = [
            key("alice", "delete secrets \"db\""),
            key("bob", "delete secrets \"db\""),
            key("alice", "delete secrets \"cache\""),
            Key { policy: "other".into(), ..key("alice", "delete secrets \"db\"") },
            Key { outcome: Outcome::BreakGlass, ..key("alice", "delete secrets \"db\"") },
        ]
        .map(|k| k.event_name());
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= 63 && a.starts_with("stepup."), "{a}");
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key("alice", "x").event_name(), key("alice", "x").event_name(), "stable");
        // Field boundaries are unambiguous.
        assert_ne!(key("ab", "c").event_name(), key("a", "bc").event_name());
    }

    #[test]
    fn repeats_fold_and_update_at_most_once_per_interval() {
        let (t, at) = (Timestamp::UNIX_EPOCH, Instant::now());
        let interval = Duration::from_secs(60);
        let mut s = Series::new(t);
        assert_eq!(s.observe(t, at, interval), Write::Create);
        s.written(1, at);
        assert_eq!(s.observe(t, at + Duration::from_secs(1), interval), Write::Fold);
        assert_eq!(s.observe(t, at + Duration::from_secs(30), interval), Write::Fold);
        let later = at + Duration::from_secs(61);
        assert_eq!(s.observe(t, later, interval), Write::Update { count: 4 });
        s.written(4, later);
        assert_eq!(s.observe(t, later + Duration::from_secs(1), interval), Write::Fold);
    }

    #[test]
    fn the_bucket_bounds_writes_per_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 20.0, start);
        let burst = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 20, "a burst takes what the bucket holds");
        let after = (0..100).filter(|_| bucket.take(start + Duration::from_secs(2))).count();
        assert_eq!(after, 10, "then the rate: 5 per second");
    }
}
