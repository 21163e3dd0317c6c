//! Watches that feed the caches. Each runs its own list-then-watch loop on kube-runtime's
//! watcher; on any error it marks its cache broken and starts over with a fresh list, so the
//! cache is known-good again exactly when the list completes.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, Resource, ResourceExt, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::cache::{CacheKind, Caches};
use crate::{
    api::{StepUpGrant, StepUpPolicy},
    metrics::Metrics,
};

/// Starts the three watches.
pub fn spawn_all(client: Client, caches: Arc<Caches>, metrics: Metrics, stop: CancellationToken) {
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
        GrantFeed,
    );
    spawn(Api::<Namespace>::all(client), CacheKind::Namespaces, caches, metrics, stop, NamespaceFeed);
}

/// How one kind of object lands in the caches.
trait Feed<K>: Send + Sync + 'static {
    fn replace(&self, caches: &Caches, objects: Vec<K>);
    fn apply(&self, caches: &Caches, object: K);
    fn delete(&self, caches: &Caches, object: K);
}

struct PolicyFeed;

impl Feed<StepUpPolicy> for PolicyFeed {
    fn replace(&self, caches: &Caches, objects: Vec<StepUpPolicy>) {
        for (name, error) in caches.replace_policies(objects) {
            tracing::warn!(policy = %name, %error, "policy not enforced: it cannot be compiled");
        }
    }

    fn apply(&self, caches: &Caches, object: StepUpPolicy) {
        if let Err(error) = caches.apply_policy(&object) {
            tracing::warn!(policy = %object.name_any(), %error, "policy not enforced: it cannot be compiled");
        }
    }

    fn delete(&self, caches: &Caches, object: StepUpPolicy) {
        caches.delete_policy(&object.name_any());
    }
}

struct GrantFeed;

impl Feed<StepUpGrant> for GrantFeed {
    fn replace(&self, caches: &Caches, objects: Vec<StepUpGrant>) {
        caches.replace_grants(objects);
    }

    fn apply(&self, caches: &Caches, object: StepUpGrant) {
        caches.apply_grant(&object);
    }

    fn delete(&self, caches: &Caches, object: StepUpGrant) {
        caches.delete_grant(&object.name_any());
    }
}

struct NamespaceFeed;

fn labels_of(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

impl Feed<Namespace> for NamespaceFeed {
    fn replace(&self, caches: &Caches, objects: Vec<Namespace>) {
        caches.replace_namespaces(objects.iter().map(|n| (n.name_any(), labels_of(n))));
    }

    fn apply(&self, caches: &Caches, object: Namespace) {
        caches.apply_namespace(&object.name_any(), labels_of(&object));
    }

    fn delete(&self, caches: &Caches, object: Namespace) {
        caches.delete_namespace(&object.name_any());
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
    let mut buffer: Vec<K> = Vec::new();
    let mut completed = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return completed,
            event = stream.next() => event,
        };
        match event {
            None => return completed,
            Some(Ok(watcher::Event::Init)) => buffer.clear(),
            Some(Ok(watcher::Event::InitApply(o))) => buffer.push(o),
            Some(Ok(watcher::Event::InitDone)) => {
                let objects = std::mem::take(&mut buffer);
                let count = objects.len();
                feed.replace(caches, objects);
                caches.mark_synced(kind);
                completed = true;
                metrics.cache_synced.with_label_values(&[kind.as_str()]).set(1);
                tracing::info!(cache = kind.as_str(), objects = count, "cache synced");
            }
            Some(Ok(watcher::Event::Apply(o))) => feed.apply(caches, o),
            Some(Ok(watcher::Event::Delete(o))) => feed.delete(caches, o),
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
