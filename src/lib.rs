//! kube-stepup: step-up authentication for Kubernetes.
//!
//! The decision core is its own crate, [`stepup_core`] (`core/`): API types, policies, grants,
//! decisions, verification and the audit record, without I/O. This crate holds the shells
//! around it: the webhook ([`admission`]), the [`controller`], the kubectl [`plugin`], and the
//! I/O they share (evidence, metrics, records' writer, PKI, telemetry). Its modules re-export
//! the core's under their old paths (`kube_stepup::api`, ...).
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod admission;
pub mod audit;
pub mod config;
pub mod controller;
pub mod error;
pub mod evidence;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod plugin;
pub mod process;
pub mod records;
pub mod telemetry;

#[cfg(test)]
pub use stepup_core::testing;
pub use stepup_core::{api, decision, grant, keys, limits, policy, verify};
