//! The shell that writes records, off every request path: [`emit`] hands a record to a
//! bounded queue and returns at once; a thread writes each one as a JSON line to stdout (the
//! audit line a SIEM ships) and keeps it for the current segment; a task writes the segment
//! to the API server as a `StepUpLog` every few seconds. Does I/O. A record that does not fit
//! in the queue, or that the API server cannot take for too long, is dropped and counted:
//! in `stepup_audit_records_dropped_total`, in the segment's `dropped`, and in a log line.

use std::{
    io::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use jiff::Timestamp;
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio_util::sync::CancellationToken;

use super::{Record, segment};
use crate::{api::StepUpLog, metrics::Metrics};

/// Records queued for the writer thread before [`emit`] starts dropping them.
const QUEUE: usize = 16 * 1024;
/// Lines kept while the API server is out of reach; older ones are dropped beyond this.
const MAX_PENDING_LINES: usize = 50_000;

struct Sink {
    tx: mpsc::SyncSender<Record>,
    writer: String,
    dropped: Arc<AtomicU64>,
    metrics: Metrics,
}

static SINK: OnceLock<Sink> = OnceLock::new();

type Observer = Box<dyn Fn(&Record) + Send + Sync>;
static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Also hands every record to `f`, before it is written: for tests that run the webhook or
/// the controller in-process and read what they recorded. Only the first call counts.
pub fn observe(f: impl Fn(&Record) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(f));
}

/// Records one fact. Never blocks and never fails: without an installed writer (tests,
/// tools) the line goes straight to stdout.
pub fn emit(mut record: Record) {
    if let Some(observe) = OBSERVER.get() {
        observe(&record);
    }
    let Some(sink) = SINK.get() else {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", record.to_line());
        return;
    };
    if record.writer.is_empty() {
        record.writer.clone_from(&sink.writer);
    }
    if sink.tx.try_send(record).is_err() {
        sink.dropped.fetch_add(1, Ordering::Relaxed);
        sink.metrics.audit_records_dropped.inc();
    }
}

/// The current segment: lines since the last roll, and what the API server holds of them.
#[derive(Default)]
struct Segment {
    lines: Vec<String>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    /// Lines not yet written to the API server.
    dirty: bool,
    /// The object's name and resourceVersion once created.
    name: Option<String>,
    resource_version: Option<String>,
    dropped: u64,
}

impl Segment {
    fn push(&mut self, record: &Record, line: String) {
        self.from.get_or_insert(record.time);
        self.to = Some(record.time);
        self.lines.push(line);
        self.dirty = true;
        if self.lines.len() > MAX_PENDING_LINES {
            let excess = self.lines.len() - MAX_PENDING_LINES;
            self.lines.drain(..excess);
            self.dropped += excess as u64;
        }
    }
}

/// A handle on the running writer.
pub struct Writer {
    segment: Arc<Mutex<Segment>>,
    api: Option<Api<StepUpLog>>,
    writer: String,
    dropped: Arc<AtomicU64>,
}

/// Starts the writer for this process (`stepup-webhook/<pod>`): the stdout thread, and with
/// `client` the task that writes segments every `flush` until `stop`. Call once, early.
pub fn install(writer: String, metrics: Metrics, client: Option<Client>, flush: Duration, stop: CancellationToken) {
    let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let segment = Arc::new(Mutex::new(Segment::default()));
    let keep = client.is_some();
    {
        let segment = segment.clone();
        let spawned = std::thread::Builder::new().name("stepup-audit".into()).spawn(move || {
            let stdout = std::io::stdout();
            while let Ok(record) = rx.recv() {
                let mut out = stdout.lock();
                let mut write = |record: Record| {
                    let line = record.to_line();
                    let _ = writeln!(out, "{line}");
                    if keep {
                        lock(&segment).push(&record, line);
                    }
                };
                write(record);
                // Drain what is queued under one lock of stdout.
                while let Ok(record) = rx.try_recv() {
                    write(record);
                }
                let _ = out.flush();
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the audit writer thread; audit lines go out synchronously");
            return;
        }
    }
    let handle = Writer { segment, api: client.map(Api::all), writer: writer.clone(), dropped: dropped.clone() };
    if SINK.set(Sink { tx, writer, dropped, metrics: metrics.clone() }).is_err() {
        tracing::warn!("audit writer installed twice; keeping the first");
        return;
    }
    if handle.api.is_some() {
        tokio::spawn(handle.run(flush, metrics, stop));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    async fn run(self, flush: Duration, metrics: Metrics, stop: CancellationToken) {
        let mut tick = tokio::time::interval(flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            if stopping {
                // Give the stdout thread a moment to hand over what was queued last.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Err(error) = self.persist(&metrics).await {
                metrics.audit_segment_writes.with_label_values(&["failure"]).inc();
                tracing::warn!(%error, "audit segment not written; keeping its records and retrying");
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the current segment when it changed; starts a new one when it is full or the
    /// hour turned.
    async fn persist(&self, metrics: &Metrics) -> Result<(), kube::Error> {
        let Some(api) = &self.api else { return Ok(()) };
        let (object, existing) = {
            let mut s = lock(&self.segment);
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                s.dropped += lost;
                s.dirty = true;
                tracing::warn!(lost, "audit records dropped: the writer's queue was full");
            }
            let (Some(from), Some(to)) = (s.from, s.to) else { return Ok(()) };
            if !s.dirty {
                return Ok(());
            }
            let name = s.name.get_or_insert_with(|| segment::name(&self.writer, from)).clone();
            let mut object = segment::object(&name, &self.writer, from, to, &s.lines, s.dropped);
            object.metadata.resource_version = s.resource_version.clone();
            (object, s.resource_version.is_some())
        };
        let result = if existing {
            api.replace(&object.name_any(), &PostParams::default(), &object).await
        } else {
            api.create(&PostParams::default(), &object).await
        };
        let written = match result {
            Ok(w) => w,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                // Someone else deleted or changed this writer's segment: the audit trail was
                // tampered with. Say so, and write it again from what this process holds.
                tracing::error!(segment = %object.name_any(), code = e.code, "audit segment changed or deleted by someone else; writing it again");
                let current = api.get_opt(&object.name_any()).await?;
                lock(&self.segment).resource_version = current.and_then(|c| c.metadata.resource_version);
                return Err(kube::Error::Api(e));
            }
            Err(e) => return Err(e),
        };
        metrics.audit_segment_writes.with_label_values(&["success"]).inc();
        let mut s = lock(&self.segment);
        let written_lines = object.spec.records as usize;
        let full = object.spec.data.len() >= segment::MAX_ENCODED_BYTES;
        let hour_turned = s.from.map(hour) != Some(hour(Timestamp::now()));
        if full || hour_turned {
            // Start afresh, keeping what arrived while this one was being written.
            let keep_from = written_lines.min(s.lines.len());
            let rest: Vec<String> = s.lines.split_off(keep_from);
            let next_from = rest.first().map(|_| s.to.unwrap_or_else(Timestamp::now));
            *s = Segment { dirty: !rest.is_empty(), from: next_from, to: s.to, lines: rest, ..Segment::default() };
            if s.lines.is_empty() {
                s.to = None;
            }
        } else {
            s.resource_version = written.metadata.resource_version.clone();
            s.dirty = s.lines.len() != written_lines;
        }
        Ok(())
    }
}

fn hour(t: Timestamp) -> i64 {
    t.as_second().div_euclid(3600)
}
