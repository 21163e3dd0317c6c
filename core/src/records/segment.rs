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
pub fn encode<L: AsRef<str>>(lines: &[L]) -> String {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for line in lines {
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(line.as_ref().as_bytes());
        let _ = gz.write_all(b"\n");
    }
    STANDARD.encode(gz.finish().unwrap_or_default())
}

/// Encodes lines from the first while the result stays within `max` bytes; returns it and how
/// many lines it holds. The deflate stream is flushed every [`FLUSH_EVERY`] bytes of input, so
/// its size is known exactly there, and a line is added only when even an incompressible rest
/// would still fit. Some lines fit in any `max` above 64 KiB, since a record is at most a few
/// kilobytes ([`Record::bound`]).
pub fn encode_within<L: AsRef<str>>(lines: &[L], max: usize) -> (String, usize) {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut unflushed = 0;
    let mut taken = 0;
    for line in lines {
        let line = line.as_ref().as_bytes();
        // Worst case: what is flushed, what is not yet, this line uncompressed, the gzip
        // trailer and deflate's per-block overhead; then base64's 4/3.
        let worst = gz.get_ref().len() + unflushed + line.len() + 1 + 64;
        if taken > 0 && worst.div_ceil(3) * 4 > max {
            break;
        }
        let _ = gz.write_all(line);
        let _ = gz.write_all(b"\n");
        taken += 1;
        unflushed += line.len() + 1;
        if unflushed >= FLUSH_EVERY {
            let _ = gz.flush();
            unflushed = 0;
        }
    }
    (STANDARD.encode(gz.finish().unwrap_or_default()), taken)
}

/// Input bytes between deflate flushes in [`encode_within`]: a flush costs a few bytes of
/// compression, and bounds how far the estimate can run ahead of the output.
const FLUSH_EVERY: usize = 32 * 1024;

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
pub fn object<L: AsRef<str>>(
    name: &str,
    writer: &str,
    from: Timestamp,
    to: Timestamp,
    lines: &[L],
    dropped: u64,
) -> StepUpLog {
    build(name, writer, (from, to), lines.len(), dropped, encode(lines))
}

/// The segment object for as many of `lines` (oldest first, each with its record's time) as
/// encode within [`MAX_ENCODED_BYTES`]; its `records` says how many that is. `None` for no lines.
pub fn object_within<L: AsRef<str>>(
    name: &str,
    writer: &str,
    lines: &[(Timestamp, L)],
    dropped: u64,
) -> Option<StepUpLog> {
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_ref()).collect();
    let (data, taken) = encode_within(&texts, MAX_ENCODED_BYTES);
    let (from, to) = (lines.first()?.0, lines.get(taken.checked_sub(1)?)?.0);
    Some(build(name, writer, (from, to), taken, dropped, data))
}

fn build(
    name: &str,
    writer: &str,
    (from, to): (Timestamp, Timestamp),
    records: usize,
    dropped: u64,
    data: String,
) -> StepUpLog {
    let mut log = StepUpLog::new(
        name,
        StepUpLogSpec {
            writer: writer.to_owned(),
            from: Time(from),
            to: Time(to),
            records: records as i64,
            dropped: dropped as i64,
            encoding: ENCODING.to_owned(),
            data,
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
        let mut log = object::<String>("s", "w", at("2026-12-01T10:00:00Z"), at("2026-12-01T10:00:00Z"), &[], 0);
        log.spec.data = "%%%".into();
        assert!(matches!(decode(&log), Err(SegmentError::Data { .. })));
        log.spec.encoding = "zstd".into();
        assert!(matches!(decode(&log), Err(SegmentError::Encoding { .. })));
    }

    /// Lines that do not compress (random names, as an attacker sends) stop at the bound; the
    /// rest is left for the next segment, and what was taken reads back whole.
    #[test]
    fn a_segment_never_encodes_past_its_bound() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect()
        };
        let t = at("2026-12-01T10:00:00Z");
        let lines: Vec<(Timestamp, String)> = (0..2000)
            .map(|i| {
                let mut r =
                    Record { user: format!("user-{i}"), name: noise(400), ..Record::new("admission.decision", t) };
                r.message = noise(2000);
                r.bound();
                (t + jiff::SignedDuration::from_millis(i), r.to_line())
            })
            .collect();
        let log = object_within("s", "w", &lines, 0).expect("some lines");
        let taken = log.spec.records as usize;
        assert!(log.spec.data.len() <= MAX_ENCODED_BYTES, "{} bytes", log.spec.data.len());
        assert!(taken > 100 && taken < lines.len(), "took {taken} of {}", lines.len());
        assert!(
            log.spec.data.len() > MAX_ENCODED_BYTES * 3 / 4,
            "the bound is used, not wasted: {}",
            log.spec.data.len()
        );
        assert_eq!(log.spec.to.0, lines[taken - 1].0);
        assert_eq!(decode(&log).unwrap().records.len(), taken);
        assert!(object_within::<String>("s", "w", &[], 0).is_none());
    }

    /// A deterministic scramble, for values that compress like random ones.
    fn mix(i: u64) -> u64 {
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
        x ^= x >> 31;
        x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 8
    }

    #[test]
    fn a_thousand_records_compress_to_a_small_object() {
        let lines: Vec<String> = (0..1000u64)
            .map(|i| {
                Record {
                    user: format!("user-{}", i % 50),
                    decision: "denied".into(),
                    policies: "prod-secrets".into(),
                    operation: "DELETE".into(),
                    resource: "secrets".into(),
                    namespace: "prod".into(),
                    name: format!("db-{i}"),
                    // As written: a random review uid, the requirement, the writer, the time.
                    review_uid: format!(
                        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                        mix(i),
                        mix(i + 1) & 0xffff,
                        mix(i + 2) & 0xfff,
                        mix(i + 3) & 0xfff,
                        mix(i + 4) & 0xffff_ffff_ffff
                    ),
                    requirement: "policies=prod-secrets methods=TOTP max-age=15m reason-required=false".into(),
                    writer: "stepup-webhook/stepup-webhook-7d9f8b6c5-x2k4p".into(),
                    peer: "client-certificate:CN=kube-apiserver-admission".into(),
                    allowed: Some(false),
                    ..Record::new(
                        "admission.decision",
                        at("2026-12-01T10:00:00Z") + jiff::SignedDuration::from_millis(mix(i) as i64 % 3_600_000),
                    )
                }
                .to_line()
            })
            .collect();
        let encoded = encode(&lines);
        // README's etcd cost comes from this figure: `cargo test -p stepup-core thousand -- --nocapture`.
        eprintln!("1000 typical admission records: {} bytes encoded", encoded.len());
        assert!(encoded.len() < 64 * 1024, "1000 records took {} bytes", encoded.len());
    }
}
