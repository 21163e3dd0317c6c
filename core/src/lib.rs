//! kube-stepup's decision core: what the webhook, the controller and the plugin agree on,
//! with no I/O of its own. No async runtime, HTTP stack, TLS or Kubernetes client is a
//! dependency (`make lint` checks the tree), so the compiler keeps this boundary.
//!
//! - [`api`]: the custom resources, their schemas and CRDs.
//! - [`policy`], [`grant`]: compiled policies and grant indexes.
//! - [`decision`]: one admission request in, one decision out.
//! - [`verify`]: checking codes and sealed responses.
//! - [`keys`]: the master key and what is derived from it (reads only the key file it is given).
//! - [`limits`]: per-user challenge limits, in memory.
//! - [`records`]: the audit record, its schema, segments and the report over them.
#![forbid(unsafe_code)]
#![deny(warnings)]

// kube-derive's `KubeSchema` (behind `#[kube(validation = ...)]`) names `::kube::core` whatever
// `crates(...)` says; without the `kube` facade (and its client), it finds kube-core here.
extern crate self as kube;
#[doc(hidden)]
pub mod core {
    pub use kube_core::*;
}

pub mod api;
pub mod decision;
pub mod grant;
pub mod keys;
pub mod limits;
pub mod policy;
pub mod records;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;

/// An error with its causes, as one line (`a: b: c`); a cause whose text the line already holds
/// is not repeated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
