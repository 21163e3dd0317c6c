//! `StepUpLog`: one segment of stepup's durable audit trail, written by its own processes.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A StepUpLog holds a segment of stepup's audit records (prompts, challenges, grants and their
/// uses, lockouts, resets, approvals, break-glass uses) as gzip-compressed JSON lines, one
/// record per line in the documented `stepup.dev/audit/v1` schema. The webhook and the
/// controller each write their own segments, at most one per hour and writer unless a segment
/// grows past its size limit; the controller deletes segments older than the retention period.
/// `kubectl stepup report` reads them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    group = "stepup.dev",
    version = "v1alpha1",
    kind = "StepUpLog",
    plural = "stepuplogs",
    shortname = "sul",
    category = "stepup",
    derive = "PartialEq",
    doc = "StepUpLog is one segment of stepup's durable audit trail (gzip-compressed JSON lines).",
    printcolumn(name = "Writer", type_ = "string", json_path = ".spec.writer"),
    printcolumn(name = "From", type_ = "string", format = "date-time", json_path = ".spec.from"),
    printcolumn(name = "To", type_ = "string", format = "date-time", json_path = ".spec.to"),
    printcolumn(name = "Records", type_ = "integer", json_path = ".spec.records"),
    printcolumn(name = "Dropped", type_ = "integer", json_path = ".spec.dropped")
)]
#[serde(rename_all = "camelCase")]
pub struct StepUpLogSpec {
    /// The process that wrote the segment: `stepup-webhook/<pod>` or `stepup-controller/<pod>`.
    #[schemars(length(min = 1, max = 253))]
    pub writer: String,
    /// Time of the first record.
    pub from: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Time of the last record.
    pub to: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Records in `data`.
    #[schemars(range(min = 0))]
    pub records: i64,
    /// Records this writer could not keep (its buffer was full while the API server was out of
    /// reach). Never silent: the count is here, in a metric and in the writer's log.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub dropped: i64,
    /// Always `gzip+jsonl`.
    pub encoding: String,
    /// The records: gzip-compressed JSON lines, base64.
    #[schemars(length(max = 1_048_576))]
    pub data: String,
}
