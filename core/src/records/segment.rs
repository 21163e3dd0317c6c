//! A segment of the durable trail: records as gzip-compressed JSON lines, and the
//! `StepUpLog` object that carries them. Pure.

use std::io::{Read, Write};

use base64::{Engine, engine::general_purpose::STANDARD};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Record;
use crate::api::{StepUpLog, StepUpLogSpec};

pub const ENCODING: &str = "gzip+jsonl";
/// Largest encoded segment (base64) a writer lets grow before starting a new one: well under
/// etcd's 1.5 MiB object limit, and a size the API server rewrites cheaply.
pub const MAX_ENCODED_BYTES: usize = 512 * 1024;
/// Label with the UTC day of a segment's first record (`20261201`), so a report lists only
/// the days it covers and the controller finds what the retention has passed.
pub const DAY_LABEL: &str = "stepup.dev/day";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("segment {name}: encoding {encoding:?} is not {ENCODING}")]
    Encoding { name: String, encoding: String },
    #[error("segment {name}: data is not base64 gzip: {message}")]
    Data { name: String, message: String },
}

/// Gzip-compressed JSON lines, base64.
pub fn encode(lines: &[String]) -> String {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for line in lines {
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(line.as_bytes());
        let _ = gz.write_all(b"\n");
    }
    STANDARD.encode(gz.finish().unwrap_or_default())
}

/// What a segment holds: its records, and the lines that were not records (counted, so a
/// report can say the trail was damaged instead of skipping silently).
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub records: Vec<Record>,
    pub unreadable: usize,
}

/// Reads a segment. Decompression is bounded: a segment cannot expand past 64 MiB.
pub fn decode(log: &StepUpLog) -> Result<Decoded, SegmentError> {
    let name = log.metadata.name.clone().unwrap_or_default();
    if log.spec.encoding != ENCODING {
        return Err(SegmentError::Encoding { name, encoding: log.spec.encoding.clone() });
    }
    let fail = |message: String| SegmentError::Data { name: name.clone(), message };
    let compressed = STANDARD.decode(log.spec.data.trim()).map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    GzDecoder::new(compressed.as_slice())
        .take(64 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    let mut out = Decoded::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.records.push(r),
            Err(_) => out.unreadable += 1,
        }
    }
    Ok(out)
}

/// `20261201`: the value of [`DAY_LABEL`] for a time.
pub fn day(t: Timestamp) -> String {
    t.strftime("%Y%m%d").to_string()
}

/// The segment object for `lines`, whose first and last records are at `from` and `to`.
pub fn object(name: &str, writer: &str, from: Timestamp, to: Timestamp, lines: &[String], dropped: u64) -> StepUpLog {
    let mut log = StepUpLog::new(
        name,
        StepUpLogSpec {
            writer: writer.to_owned(),
            from: Time(from),
            to: Time(to),
            records: lines.len() as i64,
            dropped: dropped as i64,
            encoding: ENCODING.to_owned(),
            data: encode(lines),
        },
    );
    log.metadata.labels = Some(
        [(DAY_LABEL.to_owned(), day(from)), ("app.kubernetes.io/managed-by".to_owned(), "stepup".to_owned())].into(),
    );
    log
}

/// A name for a writer's segment starting at `from`: DNS-safe, unique per writer and start.
pub fn name(writer: &str, from: Timestamp) -> String {
    let prefix = crate::api::name_prefix(writer, 40);
    format!("{prefix}-{}", from.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_segment_reads_back_its_records_and_counts_damage() {
        let records: Vec<Record> = (0..3)
            .map(|i| Record { user: format!("user-{i}"), ..Record::new("grant.issued", at("2026-12-01T10:00:00Z")) })
            .collect();
        let mut lines: Vec<String> = records.iter().map(Record::to_line).collect();
        lines.push("not json".into());
        let log = object(
            &name("stepup-webhook/web-1", at("2026-12-01T10:00:00Z")),
            "stepup-webhook/web-1",
            at("2026-12-01T10:00:00Z"),
            at("2026-12-01T10:05:00Z"),
            &lines,
            2,
        );
        assert_eq!(log.metadata.name.as_deref(), Some("stepup-webhook-web-1-1796119200000"));
        assert_eq!(log.metadata.labels.as_ref().unwrap()[DAY_LABEL], "20261201");
        assert_eq!((log.spec.records, log.spec.dropped), (4, 2));
        let decoded = decode(&log).unwrap();
        assert_eq!(decoded.records, records);
        assert_eq!(decoded.unreadable, 1);
    }

    #[test]
    fn damaged_segments_are_named_errors() {
        let mut log = object("s", "w", at("2026-12-01T10:00:00Z"), at("2026-12-01T10:00:00Z"), &[], 0);
        log.spec.data = "%%%".into();
        assert!(matches!(decode(&log), Err(SegmentError::Data { .. })));
        log.spec.encoding = "zstd".into();
        assert!(matches!(decode(&log), Err(SegmentError::Encoding { .. })));
    }

    #[test]
    fn a_thousand_records_compress_to_a_small_object() {
        let lines: Vec<String> = (0..1000)
            .map(|i| {
                Record {
                    user: format!("user-{}", i % 50),
                    decision: "denied".into(),
                    policies: "prod-secrets".into(),
                    operation: "DELETE".into(),
                    resource: "secrets".into(),
                    namespace: "prod".into(),
                    name: format!("db-{i}"),
                    ..Record::new("admission.decision", at("2026-12-01T10:00:00Z"))
                }
                .to_line()
            })
            .collect();
        let encoded = encode(&lines);
        assert!(encoded.len() < 40 * 1024, "1000 records took {} bytes", encoded.len());
    }
}
