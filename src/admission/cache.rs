//! In-memory views of policies, grants and namespace labels, fed by watches, read by every
//! review. Policies are rebuilt into a fresh index and swapped in atomically; grants and
//! namespaces are updated in place under a short write lock.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use stepup_core::{
    api::{StepUpGrant, StepUpPolicy},
    grant::{GrantIndex, GrantRecord},
    policy::{CompiledPolicy, PolicyError, PolicyIndex},
};

pub type Labels = BTreeMap<String, String>;

/// Compiled policies by name, each with the resourceVersion it was compiled from.
type Compiled = BTreeMap<String, (Option<String>, Arc<CompiledPolicy>)>;

/// One change to the policies, as a watch reports it.
#[derive(Clone, Copy, Debug)]
pub enum PolicyChange<'a> {
    Apply(&'a StepUpPolicy),
    Delete(&'a str),
}

pub use crate::metrics::CacheKind;

/// A cache's slot in the per-cache tables.
const fn slot(kind: CacheKind) -> usize {
    kind as usize
}

/// Whether a watch has delivered a full list, and since when it has been out of touch.
#[derive(Debug)]
struct Health {
    synced: AtomicBool,
    broken_since: Mutex<Option<Instant>>,
}

impl Health {
    fn new() -> Self {
        Self { synced: AtomicBool::new(false), broken_since: Mutex::new(None) }
    }
}

#[derive(Debug)]
pub struct Caches {
    started: Instant,
    policies: ArcSwap<PolicyIndex>,
    /// Compiled policies by name, with the resourceVersion each was compiled from; the index
    /// is rebuilt from them on change.
    compiled: Mutex<Compiled>,
    /// Built-in policies the chart enables (e.g. step-up for policy changes).
    builtin: Vec<Arc<CompiledPolicy>>,
    grants: RwLock<GrantIndex>,
    namespaces: RwLock<FxHashMap<String, Arc<Labels>>>,
    health: [Health; 3],
}

impl Caches {
    pub fn new(builtin: Vec<CompiledPolicy>) -> Arc<Self> {
        let builtin: Vec<Arc<CompiledPolicy>> = builtin.into_iter().map(Arc::new).collect();
        Arc::new(Self {
            started: Instant::now(),
            policies: ArcSwap::from_pointee(PolicyIndex::new(builtin.iter().cloned())),
            compiled: Mutex::new(BTreeMap::new()),
            builtin,
            grants: RwLock::new(GrantIndex::default()),
            namespaces: RwLock::new(FxHashMap::default()),
            health: [Health::new(), Health::new(), Health::new()],
        })
    }

    // --- policies

    pub fn policy_index(&self) -> Arc<PolicyIndex> {
        self.policies.load_full()
    }

    /// Replaces every policy; returns the ones that could not be compiled.
    pub fn replace_policies(&self, policies: impl IntoIterator<Item = StepUpPolicy>) -> Vec<(String, PolicyError)> {
        let mut compiled = BTreeMap::new();
        let mut errors = Vec::new();
        for p in policies {
            let name = p.metadata.name.clone().unwrap_or_default();
            match CompiledPolicy::compile(&p) {
                Ok(c) => {
                    compiled.insert(name, (p.metadata.resource_version.clone(), Arc::new(c)));
                }
                Err(e) => errors.push((name, e)),
            }
        }
        let mut guard = lock(&self.compiled);
        *guard = compiled;
        self.rebuild(&guard);
        errors
    }

    /// Adds or replaces one policy. An invalid policy is removed from enforcement (the
    /// webhook refuses such changes, so this only happens for objects older than it).
    pub fn apply_policy(&self, policy: &StepUpPolicy) -> Result<(), PolicyError> {
        match self.apply_policy_changes([PolicyChange::Apply(policy)]).pop() {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    pub fn delete_policy(&self, name: &str) {
        self.apply_policy_changes([PolicyChange::Delete(name)]);
    }

    /// Applies changes in order, then rebuilds the index once: a burst of watch events (a
    /// GitOps sync of thousands of policies) costs one rebuild, not one per policy. Returns
    /// the policies that could not be compiled; like [`Self::apply_policy`], it removes them.
    pub fn apply_policy_changes<'p>(
        &self,
        changes: impl IntoIterator<Item = PolicyChange<'p>>,
    ) -> Vec<(String, PolicyError)> {
        let mut guard = lock(&self.compiled);
        let mut errors = Vec::new();
        let mut changed = false;
        for change in changes {
            match change {
                PolicyChange::Apply(policy) => {
                    let name = policy.metadata.name.clone().unwrap_or_default();
                    match CompiledPolicy::compile(policy) {
                        Ok(c) => {
                            guard.insert(name, (policy.metadata.resource_version.clone(), Arc::new(c)));
                        }
                        Err(error) => {
                            guard.remove(&name);
                            errors.push((name, error));
                        }
                    }
                    changed = true;
                }
                PolicyChange::Delete(name) => changed |= guard.remove(name).is_some(),
            }
        }
        if changed {
            self.rebuild(&guard);
        }
        errors
    }

    fn rebuild(&self, compiled: &Compiled) {
        let all = self.builtin.iter().cloned().chain(compiled.values().map(|(_, c)| c.clone()));
        self.policies.store(Arc::new(PolicyIndex::new(all)));
    }

    /// The resourceVersion of the policy named `name` that this cache enforces; `None` when
    /// it enforces no policy of that name (never seen, deleted, or invalid).
    pub fn policy_version(&self, name: &str) -> Option<String> {
        lock(&self.compiled).get(name).map(|(version, _)| version.clone().unwrap_or_default())
    }

    // --- grants

    pub fn replace_grants(&self, grants: impl IntoIterator<Item = StepUpGrant>) {
        self.replace_grant_records(grants.into_iter().filter_map(|g| GrantRecord::from_grant(&g)));
    }

    pub fn replace_grant_records(&self, records: impl IntoIterator<Item = GrantRecord>) {
        let index = GrantIndex::new(records);
        *write(&self.grants) = index;
    }

    pub fn apply_grant(&self, grant: &StepUpGrant) {
        if let Some(record) = GrantRecord::from_grant(grant) {
            self.apply_grant_record(record);
        }
    }

    pub fn apply_grant_record(&self, record: GrantRecord) {
        write(&self.grants).upsert(record);
    }

    pub fn delete_grant(&self, name: &str) {
        write(&self.grants).remove(name);
    }

    /// The resourceVersion of the grant named `name` in this cache; `None` when absent.
    pub fn grant_version(&self, name: &str) -> Option<String> {
        self.with_grants(|g| g.get(name).map(|r| r.resource_version.clone().unwrap_or_default()))
    }

    /// Runs `f` with the grant index under a read lock. Keep `f` short and synchronous.
    pub fn with_grants<T>(&self, f: impl FnOnce(&GrantIndex) -> T) -> T {
        f(&read(&self.grants))
    }

    // --- namespaces

    pub fn replace_namespaces(&self, namespaces: impl IntoIterator<Item = (String, Labels)>) {
        let map = namespaces.into_iter().map(|(n, l)| (n, Arc::new(l))).collect();
        *write(&self.namespaces) = map;
    }

    pub fn apply_namespace(&self, name: &str, labels: Labels) {
        write(&self.namespaces).insert(name.to_owned(), Arc::new(labels));
    }

    pub fn delete_namespace(&self, name: &str) {
        write(&self.namespaces).remove(name);
    }

    pub fn namespace_labels(&self, name: &str) -> Option<Arc<Labels>> {
        read(&self.namespaces).get(name).cloned()
    }

    // --- health

    pub fn mark_synced(&self, kind: CacheKind) {
        let h = &self.health[slot(kind)];
        h.synced.store(true, Ordering::Release);
        *lock(&h.broken_since) = None;
    }

    /// Records that a watch lost touch; keeps the earliest time of a run of failures.
    pub fn mark_broken(&self, kind: CacheKind) {
        self.mark_broken_at(kind, Instant::now());
    }

    /// Records that a watch has been out of touch since `since` (its last sign of life).
    pub fn mark_broken_at(&self, kind: CacheKind, since: Instant) {
        let h = &self.health[slot(kind)];
        let mut broken = lock(&h.broken_since);
        *broken = Some(broken.map_or(since, |b| b.min(since)));
    }

    pub fn is_synced(&self, kind: CacheKind) -> bool {
        self.health[slot(kind)].synced.load(Ordering::Acquire)
    }

    /// How long the grant cache has been out of touch, if it has been for longer than
    /// `bound` (or has never synced): then grant decisions must fail closed.
    pub fn grants_stale_beyond(&self, bound: Duration) -> Option<Duration> {
        let h = &self.health[slot(CacheKind::Grants)];
        if !h.synced.load(Ordering::Acquire) {
            return Some(self.started.elapsed());
        }
        let since = (*lock(&h.broken_since))?;
        let stale = since.elapsed();
        (stale > bound).then_some(stale)
    }

    pub fn sizes(&self) -> [(CacheKind, usize); 3] {
        [
            (CacheKind::Policies, self.policies.load().len()),
            (CacheKind::Grants, read(&self.grants).len()),
            (CacheKind::Namespaces, read(&self.namespaces).len()),
        ]
    }
}

// A panic while holding one of these locks would leave plain data behind, never a broken
// invariant across fields, so poisoned locks are simply used.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepup_core::{
        api::Operation::Delete,
        testing::{grant, policy, request},
    };

    #[test]
    fn policies_are_indexed_and_invalid_ones_dropped() {
        let caches = Caches::new(vec![]);
        let mut bad = policy("bad").rule(&[Delete], "", &["secrets"]).build();
        bad.spec.match_.rules.clear();
        let errors = caches.replace_policies([policy("good").rule(&[Delete], "", &["secrets"]).build(), bad.clone()]);
        assert_eq!(errors.len(), 1);
        assert_eq!(caches.policy_index().len(), 1);
        assert!(caches.apply_policy(&bad).is_err());
        caches.delete_policy("good");
        assert!(caches.policy_index().matching(&request(Delete, "secrets").namespace("x").view()).is_empty());
    }

    #[test]
    fn a_burst_of_policy_changes_is_applied_in_order() {
        let caches = Caches::new(vec![]);
        let secrets = policy("secrets").rule(&[Delete], "", &["secrets"]).build();
        let gone = policy("gone").rule(&[Delete], "", &["configmaps"]).build();
        let mut bad = policy("bad").rule(&[Delete], "", &["pods"]).build();
        caches.apply_policy(&bad).unwrap();
        bad.spec.match_.rules.clear();
        let errors = caches.apply_policy_changes([
            PolicyChange::Apply(&secrets),
            PolicyChange::Apply(&gone),
            PolicyChange::Delete("gone"),
            PolicyChange::Apply(&bad),
        ]);
        assert_eq!(
            errors.iter().map(|(n, e)| (n.as_str(), e.field.as_str())).collect::<Vec<_>>(),
            [("bad", "spec.match.rules")]
        );
        let names: Vec<String> = caches.policy_index().policies().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["secrets"], "invalid policies leave enforcement, deleted ones are gone");
    }

    #[test]
    fn builtin_policies_survive_replacement() {
        let caches = Caches::new(vec![policy("builtin").rule(&[Delete], "", &["secrets"]).compiled()]);
        caches.replace_policies([]);
        assert!(caches.policy_index().get("builtin").is_some());
    }

    #[test]
    fn grant_staleness_is_reported_only_past_the_bound() {
        let caches = Caches::new(vec![]);
        assert!(caches.grants_stale_beyond(Duration::from_secs(3600)).is_some(), "never synced means stale");
        caches.mark_synced(CacheKind::Grants);
        assert_eq!(caches.grants_stale_beyond(Duration::ZERO), None);
        caches.mark_broken(CacheKind::Grants);
        assert!(caches.grants_stale_beyond(Duration::ZERO).is_some());
        assert_eq!(caches.grants_stale_beyond(Duration::from_secs(3600)), None);
        caches.mark_synced(CacheKind::Grants);
        assert_eq!(caches.grants_stale_beyond(Duration::ZERO), None);
    }

    #[test]
    fn grants_are_updated_in_place() {
        let caches = Caches::new(vec![]);
        caches.replace_grants([grant("g1", "alice").build()]);
        caches.apply_grant(&grant("g2", "alice").build());
        caches.delete_grant("g1");
        assert_eq!(caches.with_grants(|g| g.for_user("alice").map(|g| g.name.clone()).collect::<Vec<_>>()), vec!["g2"]);
    }
}
