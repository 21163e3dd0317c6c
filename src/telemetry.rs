//! Logging setup: JSON lines by default (for log pipelines and SIEMs), plain text for humans.
//!
//! Log lines reach stdout through a bounded queue and one thread, so a slow reader of stdout
//! never blocks a tokio worker, nor whoever logs while holding a lock. When the queue is full a
//! line is dropped and counted, and the thread says how many once it catches up.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
};

use tracing_subscriber::{
    EnvFilter,
    fmt::{self, MakeWriter, writer::BoxMakeWriter},
    prelude::*,
};

/// Log lines queued for the stdout thread before new ones are dropped.
const QUEUE: usize = 8 * 1024;
/// Lines written under one lock of stdout.
const BATCH: usize = 256;

static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Log lines dropped so far because stdout could not keep up.
pub fn log_lines_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    // rustls warns on every connection whose SNI is an IP address (the API server calling a
    // webhook registered by IP does that): noise at the rate of connections, nothing to act on.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn,rustls=error"));
    let registry = tracing_subscriber::registry().with(filter);
    let writer = queued_stdout(format);
    // A second call (e.g. in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(writer)).try_init(),
    };
}

/// A writer that queues each formatted event for the stdout thread; stdout itself if the
/// thread cannot start.
fn queued_stdout(format: LogFormat) -> BoxMakeWriter {
    let (tx, rx) = sync_channel(QUEUE);
    let since = log_lines_dropped();
    match std::thread::Builder::new()
        .name("stepup-log".into())
        .spawn(move || write_logs(&rx, &mut std::io::stdout(), format, since))
    {
        Ok(_) => BoxMakeWriter::new(Queued { tx }),
        Err(_) => BoxMakeWriter::new(std::io::stdout),
    }
}

struct Queued {
    tx: SyncSender<Vec<u8>>,
}

impl<'a> MakeWriter<'a> for Queued {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { tx: &self.tx }
    }
}

/// One event: the formatter writes it with a single `write_all`.
struct QueuedLine<'a> {
    tx: &'a SyncSender<Vec<u8>>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.tx.try_send(buf.to_vec()).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stdout thread: writes queued lines in batches until every sender is gone, and after a
/// batch says how many lines were dropped since it last said so (first: since `reported`).
fn write_logs(rx: &Receiver<Vec<u8>>, out: &mut impl Write, format: LogFormat, mut reported: u64) {
    while let Ok(first) = rx.recv() {
        let _ = out.write_all(&first);
        for line in rx.try_iter().take(BATCH) {
            let _ = out.write_all(&line);
        }
        let dropped = log_lines_dropped();
        if dropped > reported {
            let lost = dropped - reported;
            reported = dropped;
            let message = "log lines dropped: stdout was slower than the process";
            let _ = match format {
                LogFormat::Json => writeln!(
                    out,
                    r#"{{"timestamp":"{}","level":"WARN","message":"{message}","lost":{lost},"target":"stepup::telemetry"}}"#,
                    jiff::Timestamp::now()
                ),
                LogFormat::Text => {
                    writeln!(out, "{} WARN stepup::telemetry: {message} lost={lost}", jiff::Timestamp::now())
                }
            };
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue drops the line and counts it; it never waits for the reader.
    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, rx) = sync_channel(1);
        let queued = Queued { tx };
        let before = log_lines_dropped();
        queued.make_writer().write_all(b"first\n").unwrap();
        // Nobody reads: with a blocking writer this call would never return.
        queued.make_writer().write_all(b"second\n").unwrap();
        assert!(log_lines_dropped() > before, "the second line was counted as dropped");
        drop(queued);
        let mut out = Vec::new();
        write_logs(&rx, &mut out, LogFormat::Json, before);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("first\n"), "{text}");
        let report: serde_json::Value = serde_json::from_str(text.lines().nth(1).expect("a drop report")).unwrap();
        assert_eq!(report["level"], "WARN");
        assert!(report["lost"].as_u64().unwrap() >= 1, "{report}");
    }
}
