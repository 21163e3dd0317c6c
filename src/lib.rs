//! kube-stepup: step-up authentication for Kubernetes.
//!
//! The decision (`policy`, `grant`) is pure Rust without I/O or a clock; `admission` and the
//! binaries are thin shells that fetch, call it and act.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod admission;
pub mod api;
pub mod audit;
pub mod config;
pub mod controller;
pub mod decision;
pub mod error;
pub mod evidence;
pub mod grant;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pki;
pub mod plugin;
pub mod policy;
pub mod records;
pub mod telemetry;
pub mod testing;
pub mod verify;
