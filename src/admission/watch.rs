//! Watches that feed the caches. Each runs its own list-then-watch loop on kube-runtime's
//! watcher; on any error it marks its cache broken and starts over with a fresh list, so the
//! cache is known-good again exactly when the list completes.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, Resource, ResourceExt, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::cache::{CacheKind, Caches, PolicyChange};
use crate::{
    api::{StepUpGrant, StepUpPolicy},
    grant::GrantRecord,
    keys::GrantVerifier,
    metrics::Metrics,
};

/// Starts the three watches. Grants enter the cache only when `verifier` accepts their
/// signature.
pub fn spawn_all(
    client: Client,
    caches: Arc<Caches>,
    metrics: Metrics,
    verifier: GrantVerifier,
    stop: CancellationToken,
) {
    spawn(
        Api::<StepUpPolicy>::all(client.clone()),
        CacheKind::Policies,
        caches.clone(),
        metrics.clone(),
        stop.clone(),
        PolicyFeed,
    );
    spawn(
        Api::<StepUpGrant>::all(client.clone()),
        CacheKind::Grants,
        caches.clone(),
        metrics.clone(),
        stop.clone(),
        GrantFeed { verifier, metrics: metrics.clone() },
    );
    spawn(Api::<Namespace>::all(client), CacheKind::Namespaces, caches, metrics, stop, NamespaceFeed);
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

fn spawn<K, F>(api: Api<K>, kind: CacheKind, caches: Arc<Caches>, metrics: Metrics, stop: CancellationToken, feed: F)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Feed<K>,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let completed = run_once(&api, kind, &caches, &metrics, &stop, &feed).await;
            if stop.is_cancelled() {
                return;
            }
            caches.mark_broken(kind);
            metrics.cache_synced.with_label_values(&[kind.as_str()]).set(0);
            backoff = if completed { Duration::from_millis(500) } else { (backoff * 2).min(Duration::from_secs(30)) };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    });
}

/// One list-then-watch run; returns whether it got as far as a complete list.
async fn run_once<K, F>(
    api: &Api<K>,
    kind: CacheKind,
    caches: &Caches,
    metrics: &Metrics,
    stop: &CancellationToken,
    feed: &F,
) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Feed<K>,
{
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut buffer: Vec<F::Staged> = Vec::new();
    let mut completed = false;
    // An event read while gathering a batch of changes that is not a change itself.
    let mut lookahead = None;
    loop {
        let event = match lookahead.take() {
            Some(event) => event,
            None => tokio::select! {
                _ = stop.cancelled() => return completed,
                event = stream.next() => event,
            },
        };
        match event {
            None => return completed,
            Some(Ok(watcher::Event::Init)) => buffer.clear(),
            Some(Ok(watcher::Event::InitApply(o))) => buffer.push(feed.stage(o)),
            Some(Ok(watcher::Event::InitDone)) => {
                let objects = std::mem::take(&mut buffer);
                let count = objects.len();
                feed.replace(caches, objects);
                caches.mark_synced(kind);
                completed = true;
                metrics.cache_synced.with_label_values(&[kind.as_str()]).set(1);
                tracing::info!(cache = kind.as_str(), objects = count, "cache synced");
            }
            Some(Ok(watcher::Event::Apply(o))) => {
                feed.apply(caches, gather(Change::Apply(o), &mut stream, &mut lookahead))
            }
            Some(Ok(watcher::Event::Delete(o))) => {
                feed.apply(caches, gather(Change::Delete(o), &mut stream, &mut lookahead))
            }
            Some(Err(error)) => {
                tracing::warn!(cache = kind.as_str(), %error, "watch failed; relisting");
                return completed;
            }
        }
        for (k, n) in caches.sizes() {
            metrics.cache_objects.with_label_values(&[k.as_str()]).set(n as i64);
        }
    }
}

type Event<K> = Option<Result<watcher::Event<K>, watcher::Error>>;

/// `first` and the changes already delivered after it, without waiting for more: a burst of
/// events (a GitOps sync of many policies) is applied at once, and the policy index rebuilt
/// once for it rather than once per policy. The first other event is left in `lookahead`.
fn gather<K, S>(first: Change<K>, stream: &mut S, lookahead: &mut Option<Event<K>>) -> Vec<Change<K>>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    let mut changes = vec![first];
    while changes.len() < MAX_BATCH {
        match stream.next().now_or_never() {
            Some(Some(Ok(watcher::Event::Apply(o)))) => changes.push(Change::Apply(o)),
            Some(Some(Ok(watcher::Event::Delete(o)))) => changes.push(Change::Delete(o)),
            Some(other) => {
                *lookahead = Some(other);
                break;
            }
            None => break,
        }
    }
    changes
}
