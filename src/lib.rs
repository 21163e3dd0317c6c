//! kube-stepup: step-up authentication for Kubernetes.
//!
//! The decision core is its own crate, [`stepup_core`] (`core/`): API types, policies, grants,
//! decisions, verification and the audit record, without I/O. This crate holds the shells
//! around it: the webhook ([`admission`]) and the [`controller`], and the I/O they share (evidence, metrics, records' writer, PKI, telemetry). Shells name the core
//! by its crate path (`stepup_core::decision`), so where the pure code ends shows in every
//! `use` line.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod admission;
pub mod audit;
pub mod config;
pub mod controller;
pub mod error;
pub mod evidence;
pub mod metrics;
pub mod pki;
pub mod process;
pub mod records;
pub mod telemetry;
