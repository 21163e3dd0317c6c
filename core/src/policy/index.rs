//! The policy index: (resource, subresource) keys to candidate rules, then the request's
//! namespace narrows the candidates to the policies that could name it (by the literal prefix
//! of their namespace globs, or a label their namespace selector requires). A request that no
//! policy mentions is answered with a few hash lookups, whatever the number of policies, and
//! so is one in a namespace that thousands of per-team policies do not name.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{CompiledPolicy, NamespaceLabels, Request};

#[derive(Clone, Copy, Debug)]
struct Entry {
    policy: u32,
    rule: u32,
}

/// The entries of one (resource, subresource) pattern, split by what narrows them by
/// namespace. Only a filter: every candidate is still checked with `applies_to`.
#[derive(Clone, Debug, Default)]
struct Candidates {
    /// Policies with `namespaces` globs, by the literal prefix all of their globs share:
    /// a namespace one of the globs matches starts with it.
    by_prefix: FxHashMap<Box<[u8]>, Vec<Entry>>,
    /// Bit `n` set when some prefix is `n` bytes long (namespace globs are at most 63).
    prefix_lengths: u64,
    /// Policies narrowed only by a namespace selector, by label key and value of one label
    /// the selector requires (the rarest one among these policies).
    by_label: FxHashMap<Box<str>, FxHashMap<Box<str>, Vec<Entry>>>,
    /// Everything else: considered for every request.
    rest: Vec<Entry>,
}

/// What narrows a policy by namespace.
enum Narrowing<'a> {
    Prefix(&'a str),
    Labels(SmallVec<[(&'a str, &'a str); 2]>),
    Nothing,
}

fn narrowing(policy: &CompiledPolicy) -> Narrowing<'_> {
    let mut globs = policy.namespaces.iter().map(|g| g.literal_prefix());
    if let Some(first) = globs.next() {
        let prefix = globs.fold(first, |acc, p| &acc[..common_prefix_len(acc, p)]);
        if !prefix.is_empty() && prefix.len() <= 63 {
            return Narrowing::Prefix(prefix);
        }
    }
    if let Some(selector) = &policy.namespace_selector {
        let labels: SmallVec<[(&str, &str); 2]> = selector.required_labels().collect();
        if !labels.is_empty() {
            return Narrowing::Labels(labels);
        }
    }
    Narrowing::Nothing
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Globs are ASCII once validated; stay on a char boundary regardless.
    (0..=n).rev().find(|&i| a.is_char_boundary(i)).unwrap_or(0)
}

impl Candidates {
    /// `narrowings[i]` is the narrowing of policy i.
    fn new(entries: Vec<Entry>, narrowings: &[Narrowing<'_>]) -> Self {
        let mut label_use: FxHashMap<(&str, &str), usize> = FxHashMap::default();
        for e in &entries {
            if let Narrowing::Labels(labels) = &narrowings[e.policy as usize] {
                for l in labels {
                    *label_use.entry(*l).or_default() += 1;
                }
            }
        }
        // Grouped under borrowed keys first: one allocation per distinct key, not per entry.
        let mut by_prefix: FxHashMap<&[u8], Vec<Entry>> = FxHashMap::default();
        let mut by_label: FxHashMap<&str, FxHashMap<&str, Vec<Entry>>> = FxHashMap::default();
        let mut out = Self::default();
        for e in entries {
            match &narrowings[e.policy as usize] {
                Narrowing::Prefix(prefix) => {
                    out.prefix_lengths |= 1 << prefix.len();
                    by_prefix.entry(prefix.as_bytes()).or_default().push(e);
                }
                Narrowing::Labels(labels) => {
                    let (key, value) =
                        labels.iter().min_by_key(|l| label_use.get(*l).copied().unwrap_or(0)).expect("non-empty");
                    by_label.entry(key).or_default().entry(value).or_default().push(e);
                }
                Narrowing::Nothing => out.rest.push(e),
            }
        }
        out.by_prefix = by_prefix.into_iter().map(|(k, v)| (k.into(), v)).collect();
        out.by_label = by_label
            .into_iter()
            .map(|(k, values)| (k.into(), values.into_iter().map(|(v, e)| (v.into(), e)).collect()))
            .collect();
        out
    }

    /// Calls `f` with every group of entries that may apply to `req`.
    fn visit(&self, req: &Request<'_>, mut f: impl FnMut(&[Entry])) {
        if !self.rest.is_empty() {
            f(&self.rest);
        }
        // A list or watch across all namespaces reads every namespace a policy names.
        if req.spans_namespaces() {
            self.by_prefix.values().for_each(|e| f(e));
            self.by_label.values().flat_map(|m| m.values()).for_each(|e| f(e));
            return;
        }
        // Namespace globs never match cluster-scoped requests.
        if self.prefix_lengths != 0 && req.has_namespace() {
            let namespace = req.namespace.as_bytes();
            let within = if namespace.len() >= 63 { u64::MAX } else { (1u64 << (namespace.len() + 1)) - 1 };
            let mut lengths = self.prefix_lengths & within;
            while lengths != 0 {
                let n = lengths.trailing_zeros() as usize;
                lengths &= lengths - 1;
                if let Some(entries) = self.by_prefix.get(&namespace[..n]) {
                    f(entries);
                }
            }
        }
        if !self.by_label.is_empty() {
            match req.namespace_labels {
                NamespaceLabels::NotApplicable => {}
                // Selectors count as matching while the namespace is not in the cache.
                NamespaceLabels::Unknown => self.by_label.values().flat_map(|m| m.values()).for_each(|e| f(e)),
                NamespaceLabels::Known(labels) => {
                    for (key, by_value) in &self.by_label {
                        if let Some(entries) = labels.get(&**key).and_then(|v| by_value.get(v.as_str())) {
                            f(entries);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Keyed by subresource pattern: `""` (main resource), `"*"` or a name such as `exec`.
    by_subresource: FxHashMap<Box<str>, Candidates>,
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

type Lists = FxHashMap<Box<str>, Vec<Entry>>;

impl PolicyIndex {
    pub fn new(policies: impl IntoIterator<Item = Arc<CompiledPolicy>>) -> Self {
        let mut policies: Vec<_> = policies.into_iter().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        policies.dedup_by(|a, b| a.name == b.name);
        let mut by_resource: FxHashMap<Box<str>, Lists> = FxHashMap::default();
        let mut any_resource: Option<Lists> = None;
        for (p, policy) in policies.iter().enumerate() {
            for (r, rule) in policy.rules.iter().enumerate() {
                let entry = Entry { policy: p as u32, rule: r as u32 };
                for (resource, subresource) in &rule.resources {
                    let lists = if resource == "*" {
                        any_resource.get_or_insert_with(Lists::default)
                    } else {
                        by_resource.entry(resource.as_str().into()).or_default()
                    };
                    lists.entry(subresource.as_str().into()).or_default().push(entry);
                }
            }
        }
        let narrowings: Vec<Narrowing<'_>> = policies.iter().map(|p| narrowing(p)).collect();
        let bucket = |lists: Lists| Bucket {
            by_subresource: lists
                .into_iter()
                .map(|(sub, entries)| (sub, Candidates::new(entries, &narrowings)))
                .collect(),
        };
        let by_resource = by_resource.into_iter().map(|(res, lists)| (res, bucket(lists))).collect();
        let any_resource = any_resource.map(bucket);
        drop(narrowings);
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
        // A policy met again through another rule or list is only checked again when it did
        // not apply: `applies_to` gives the same answer, so that is a cost, never a change.
        let mut consider = |entries: &[Entry]| {
            for entry in entries {
                if matched.contains(&entry.policy) {
                    continue;
                }
                let policy = &self.policies[entry.policy as usize];
                if policy.rules[entry.rule as usize].accepts(req) && policy.applies_to(req) {
                    matched.push(entry.policy);
                }
            }
        };
        let buckets = [self.by_resource.get(req.resource), self.any_resource.as_ref()];
        for bucket in buckets.into_iter().flatten() {
            for subresource in [req.subresource, "*"] {
                if let Some(candidates) = bucket.by_subresource.get(subresource) {
                    candidates.visit(req, &mut consider);
                }
            }
        }
        matched.sort_unstable();
        matched.into_iter().map(|i| self.policies[i as usize].as_ref()).collect()
    }
}
