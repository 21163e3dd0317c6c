//! Watches that feed the caches. Each runs its own list-then-watch loop (with bookmarks, and
//! a bound on silence); on any error or stall it marks its cache broken and starts over with a
//! fresh list, so the cache is known-good again exactly when the list completes. Does I/O.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::cache::{CacheKind, Caches, PolicyChange};
use crate::metrics::Metrics;
use stepup_core::{
    api::{StepUpGrant, StepUpPolicy},
    grant::GrantRecord,
    keys::GrantVerifier,
};

/// Starts the three watches. Grants enter the cache only when `verifier` accepts their
/// signature.
pub fn spawn_all(
    client: Client,
    caches: Arc<Caches>,
    metrics: Metrics,
    verifier: GrantVerifier,
    timing: WatchTiming,
    stop: CancellationToken,
) {
    spawn(
        Api::<StepUpPolicy>::all(client.clone()),
        CacheKind::Policies,
        caches.clone(),
        metrics.clone(),
        stop.clone(),
        timing,
        PolicyFeed,
    );
    spawn(
        Api::<StepUpGrant>::all(client.clone()),
        CacheKind::Grants,
        caches.clone(),
        metrics.clone(),
        stop.clone(),
        timing,
        GrantFeed { verifier, metrics: metrics.clone() },
    );
    spawn(Api::<Namespace>::all(client), CacheKind::Namespaces, caches, metrics, stop, timing, NamespaceFeed);
}

/// Most watch events applied together; a burst larger than this is applied in several.
const MAX_BATCH: usize = 1024;

/// One change a watch reports after its initial list.
enum Change<K> {
    Apply(K),
    Delete(K),
}

/// How one kind of object lands in the caches.
trait Feed<K>: Send + Sync + 'static {
    /// What the initial list keeps of each object until it is complete: only what the cache
    /// needs, so that listing 100,000 grants does not hold 100,000 full objects at once
    /// (the process would keep that peak as resident memory).
    type Staged: Send;
    fn stage(&self, object: K) -> Self::Staged;
    fn replace(&self, caches: &Caches, objects: Vec<Self::Staged>);
    /// Applies changes in order; they arrived together (see `run_once`).
    fn apply(&self, caches: &Caches, changes: Vec<Change<K>>);
}

struct PolicyFeed;

impl Feed<StepUpPolicy> for PolicyFeed {
    type Staged = StepUpPolicy;

    fn stage(&self, object: StepUpPolicy) -> StepUpPolicy {
        object
    }

    fn replace(&self, caches: &Caches, objects: Vec<StepUpPolicy>) {
        for (name, error) in caches.replace_policies(objects) {
            tracing::warn!(policy = %name, %error, "policy not enforced: it cannot be compiled");
        }
    }

    fn apply(&self, caches: &Caches, changes: Vec<Change<StepUpPolicy>>) {
        let batch = changes.iter().map(|c| match c {
            Change::Apply(p) => PolicyChange::Apply(p),
            Change::Delete(p) => PolicyChange::Delete(p.metadata.name.as_deref().unwrap_or_default()),
        });
        for (name, error) in caches.apply_policy_changes(batch) {
            tracing::warn!(policy = %name, %error, "policy not enforced: it cannot be compiled");
        }
    }
}

struct GrantFeed {
    verifier: GrantVerifier,
    metrics: Metrics,
}

/// The record of a grant the controller signed; `None` (loudly) for any other grant.
pub fn signed_record(grant: &StepUpGrant, verifier: &GrantVerifier, metrics: &Metrics) -> Option<GrantRecord> {
    if verifier.verifies(grant) {
        return GrantRecord::from_grant(grant);
    }
    // Only a cluster-admin (or a stolen controller credential) can write a grant at all; one
    // without the controller's signature permits nothing, and says so.
    metrics.forged_grants.inc();
    tracing::error!(
        grant = %grant.name_any(),
        user = %grant.spec.user,
        "grant ignored: it carries no valid signature of the stepup controller, so someone else wrote it"
    );
    None
}

impl Feed<StepUpGrant> for GrantFeed {
    type Staged = Option<GrantRecord>;

    fn stage(&self, object: StepUpGrant) -> Option<GrantRecord> {
        signed_record(&object, &self.verifier, &self.metrics)
    }

    fn replace(&self, caches: &Caches, objects: Vec<Option<GrantRecord>>) {
        caches.replace_grant_records(objects.into_iter().flatten());
    }

    fn apply(&self, caches: &Caches, changes: Vec<Change<StepUpGrant>>) {
        for change in changes {
            match change {
                Change::Apply(g) => match signed_record(&g, &self.verifier, &self.metrics) {
                    Some(record) => caches.apply_grant_record(record),
                    None => caches.delete_grant(&g.name_any()),
                },
                Change::Delete(g) => caches.delete_grant(&g.name_any()),
            }
        }
    }
}

struct NamespaceFeed;

fn labels_of(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

impl Feed<Namespace> for NamespaceFeed {
    type Staged = (String, BTreeMap<String, String>);

    fn stage(&self, object: Namespace) -> Self::Staged {
        (object.name_any(), labels_of(&object))
    }

    fn replace(&self, caches: &Caches, objects: Vec<Self::Staged>) {
        caches.replace_namespaces(objects);
    }

    fn apply(&self, caches: &Caches, changes: Vec<Change<Namespace>>) {
        for change in changes {
            match change {
                Change::Apply(n) => caches.apply_namespace(&n.name_any(), labels_of(&n)),
                Change::Delete(n) => caches.delete_namespace(&n.name_any()),
            }
        }
    }
}

/// How long the API server keeps one watch request open (`timeoutSeconds`), and how long a
/// watch may go without an event, a bookmark or its regular end before it counts as stalled.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    pub watch_seconds: u32,
    pub idle: Duration,
}

impl WatchTiming {
    /// The server ends each watch after `watch_seconds` (sending a bookmark first), so a healthy
    /// watch shows life at least that often; one and a half times that, plus slack, is a stall.
    pub fn new(watch_seconds: u32) -> Self {
        let watch_seconds = watch_seconds.max(1);
        Self { watch_seconds, idle: Duration::from_secs(u64::from(watch_seconds)) * 3 / 2 + Duration::from_secs(5) }
    }
}

impl Default for WatchTiming {
    fn default() -> Self {
        Self::new(60)
    }
}

/// One watch feeding one cache.
struct WatchLoop<K: Resource, F> {
    api: Api<K>,
    kind: CacheKind,
    caches: Arc<Caches>,
    metrics: Metrics,
    stop: CancellationToken,
    timing: WatchTiming,
    feed: F,
}

fn spawn<K, F>(
    api: Api<K>,
    kind: CacheKind,
    caches: Arc<Caches>,
    metrics: Metrics,
    stop: CancellationToken,
    timing: WatchTiming,
    feed: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Feed<K>,
{
    let w = WatchLoop { api, kind, caches, metrics, stop, timing, feed };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let last_life = std::sync::Mutex::new(std::time::Instant::now());
            let completed = w.run_once(&last_life).await;
            if w.stop.is_cancelled() {
                return;
            }
            // Out of touch since the last sign of life, not since the stall was noticed.
            let since = *last_life.lock().unwrap_or_else(|e| e.into_inner());
            w.caches.mark_broken_at(w.kind, since);
            w.metrics.cache_synced.with_label_values(&[w.kind.as_str()]).set(0);
            backoff = if completed { Duration::from_millis(500) } else { (backoff * 2).min(Duration::from_secs(30)) };
            tokio::select! {
                _ = w.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    });
}

impl<K, F> WatchLoop<K, F>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Feed<K>,
{
    /// One list-then-watch run; returns whether it got as far as a complete list. The watch
    /// is ours rather than kube-runtime's watcher, which consumes bookmarks: seeing them is what
    /// lets a watch that stalls without an error (no events, no bookmarks, no end) be told from
    /// a quiet one, and relisted.
    async fn run_once(&self, last_life: &std::sync::Mutex<std::time::Instant>) -> bool {
        let WatchLoop { api, kind, caches, metrics, stop, timing, feed } = self;
        let (kind, timing) = (*kind, *timing);
        let alive = || *last_life.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        // The list, a page at a time, each object staged to what the cache keeps.
        let mut staged: Vec<F::Staged> = Vec::new();
        let mut params = ListParams::default().limit(500);
        let mut version = loop {
            let page = tokio::select! {
                _ = stop.cancelled() => return false,
                page = tokio::time::timeout(timing.idle, api.list(&params)) => page,
            };
            let page = match page {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    tracing::warn!(cache = kind.as_str(), %error, "list failed; retrying");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(cache = kind.as_str(), "list stalled; retrying");
                    return false;
                }
            };
            staged.extend(page.items.into_iter().map(|o| feed.stage(o)));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        alive();
        let count = staged.len();
        feed.replace(caches, staged);
        caches.mark_synced(kind);
        metrics.cache_synced.with_label_values(&[kind.as_str()]).set(1);
        record_sizes(caches, metrics);
        tracing::info!(cache = kind.as_str(), objects = count, "cache synced");

        // Bookmarks are on by default: they are the sign of life a quiet watch gives.
        let params = WatchParams::default().timeout(timing.watch_seconds);
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return true,
                stream = tokio::time::timeout(timing.idle, api.watch(&params, &version)) => stream,
            };
            let mut stream = match stream {
                Ok(Ok(s)) => {
                    alive();
                    s.boxed()
                }
                Ok(Err(error)) => {
                    tracing::warn!(cache = kind.as_str(), %error, "watch failed; relisting");
                    return true;
                }
                Err(_) => {
                    tracing::warn!(cache = kind.as_str(), "watch request stalled; relisting");
                    return true;
                }
            };
            loop {
                let item = tokio::select! {
                    _ = stop.cancelled() => return true,
                    _ = tokio::time::sleep(timing.idle) => {
                        metrics.watch_stalls.with_label_values(&[kind.as_str()]).inc();
                        tracing::warn!(
                            cache = kind.as_str(),
                            idle_seconds = timing.idle.as_secs(),
                            "watch stalled: no event, bookmark or end from the API server; relisting"
                        );
                        return true;
                    }
                    item = stream.next() => item,
                };
                let Some(item) = item else { break };
                alive();
                let mut changes = Vec::new();
                let mut pending = Some(item);
                // `item` and the events already delivered after it: a burst (a GitOps sync of many
                // policies) is applied at once, and the policy index rebuilt once for it.
                while let Some(item) = pending.take() {
                    match item {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                            version = o.resource_version().unwrap_or(version);
                            changes.push(Change::Apply(o));
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            version = o.resource_version().unwrap_or(version);
                            changes.push(Change::Delete(o));
                        }
                        Ok(WatchEvent::Bookmark(b)) => version = b.metadata.resource_version,
                        Ok(WatchEvent::Error(status)) => {
                            if !changes.is_empty() {
                                feed.apply(caches, std::mem::take(&mut changes));
                            }
                            // 410 Gone: the version is too old to resume from.
                            tracing::info!(cache = kind.as_str(), code = status.code, message = %status.message, "watch ended by the API server; relisting");
                            return true;
                        }
                        Err(error) => {
                            if !changes.is_empty() {
                                feed.apply(caches, std::mem::take(&mut changes));
                            }
                            tracing::warn!(cache = kind.as_str(), %error, "watch failed; relisting");
                            return true;
                        }
                    }
                    if changes.len() < MAX_BATCH {
                        pending = stream.next().now_or_never().flatten();
                    }
                }
                if !changes.is_empty() {
                    feed.apply(caches, changes);
                    record_sizes(caches, metrics);
                }
            }
            // The server ended the watch after its timeout: watch on from where it ended.
        }
    }
}

fn record_sizes(caches: &Caches, metrics: &Metrics) {
    for (k, n) in caches.sizes() {
        metrics.cache_objects.with_label_values(&[k.as_str()]).set(n as i64);
    }
}
