//! The policy index: (resource, subresource) keys to candidate rules, so a request that no
//! policy mentions is answered with one or two hash lookups, whatever the number of policies.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{CompiledPolicy, Request};

#[derive(Clone, Copy, Debug)]
struct Entry {
    policy: u32,
    rule: u32,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Keyed by subresource pattern: `""` (main resource), `"*"` or a name such as `exec`.
    by_subresource: FxHashMap<Box<str>, Vec<Entry>>,
}

impl Bucket {
    fn push(&mut self, subresource: &str, entry: Entry) {
        self.by_subresource.entry(subresource.into()).or_default().push(entry);
    }
}

/// Policies compiled and indexed for the decision path.
#[derive(Clone, Debug, Default)]
pub struct PolicyIndex {
    /// Sorted by name, so that results come out in a stable order.
    policies: Vec<Arc<CompiledPolicy>>,
    by_resource: FxHashMap<Box<str>, Bucket>,
    /// Rules whose resource is `*`.
    any_resource: Option<Bucket>,
}

/// Policies a request matches; rarely more than a few.
pub type Matches<'a> = SmallVec<[&'a CompiledPolicy; 4]>;

impl PolicyIndex {
    pub fn new(policies: impl IntoIterator<Item = Arc<CompiledPolicy>>) -> Self {
        let mut policies: Vec<_> = policies.into_iter().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        policies.dedup_by(|a, b| a.name == b.name);
        let mut by_resource: FxHashMap<Box<str>, Bucket> = FxHashMap::default();
        let mut any_resource: Option<Bucket> = None;
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                let entry = Entry { policy: p as u32, rule: r as u32 };
                for (resource, subresource) in &rule.resources {
                    let bucket = if resource == "*" {
                        any_resource.get_or_insert_with(Bucket::default)
                    } else {
                        by_resource.entry(resource.as_str().into()).or_default()
                    };
                    bucket.push(subresource, entry);
                }
            }
        }
        Self { policies, by_resource, any_resource }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies.iter().map(|p| p.as_ref())
    }

    pub fn get(&self, name: &str) -> Option<&CompiledPolicy> {
        self.policies.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| self.policies[i].as_ref())
    }

    /// The policies that apply to a request, in name order.
    pub fn matching(&self, req: &Request<'_>) -> Matches<'_> {
        let mut matched: SmallVec<[u32; 4]> = SmallVec::new();
        let mut rejected: SmallVec<[u32; 4]> = SmallVec::new();
        let buckets = [self.by_resource.get(req.resource), self.any_resource.as_ref()];
        for bucket in buckets.into_iter().flatten() {
            for subresource in [req.subresource, "*"] {
                let Some(entries) = bucket.by_subresource.get(subresource) else { continue };
                for entry in entries {
                    if matched.contains(&entry.policy) || rejected.contains(&entry.policy) {
                        continue;
                    }
                    let policy = &self.policies[entry.policy as usize];
                    if !policy.rules[entry.rule as usize].accepts(req) {
                        continue;
                    }
                    if policy.applies_to(req) {
                        matched.push(entry.policy);
                    } else {
                        rejected.push(entry.policy);
                    }
                }
            }
        }
        matched.sort_unstable();
        matched.into_iter().map(|i| self.policies[i as usize].as_ref()).collect()
    }
}
