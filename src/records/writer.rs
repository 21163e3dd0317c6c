//! The shell that writes records, off every request path: [`emit`] hands a record to a
//! bounded queue and returns at once; the audit thread appends each one to the current segment
//! and hands its JSON line to the printer thread, which writes it to stdout (the audit line a
//! SIEM ships); a task writes the segment to the API server as a `StepUpLog` every few seconds.
//! Does I/O. A record that does not fit in the queue, or that the API server cannot take for
//! too long, is dropped and counted: in `stepup_audit_records_dropped_total`, in the segment's
//! `dropped`, and in a log line. A slow stdout (a log pipeline that cannot keep up) costs only
//! printed lines, counted in `stepup_audit_lines_unprinted_total`: never a record of the trail.
//!
//! No lock here is ever held while another is taken, while logging, or across I/O other than
//! the one write it guards: the audit thread takes only the segment's lock, to append; the
//! printer only stdout's, to write; the segment task copies what it needs under the segment's
//! lock and logs, encodes and writes after releasing it. (Holding stdout while waiting for the
//! segment, and the segment while logging to stdout, once froze the webhook.)

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
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
use prometheus::IntCounter;

use crate::metrics::Metrics;
use stepup_core::api::StepUpLog;

/// Records queued for the writer thread before [`emit`] starts dropping them.
const QUEUE: usize = 16 * 1024;
/// Lines, and bytes of them, kept while the API server is out of reach or slower than the
/// records; newer ones are dropped (and counted) beyond this, so that nothing already in a
/// written segment is given up. Bounds the writer's memory.
const MAX_PENDING_LINES: usize = 50_000;
const MAX_PENDING_BYTES: usize = 32 * 1024 * 1024;
/// Refusals cost an attacker nothing (no grant, no RBAC), so they are what a flood is made of:
/// the trail keeps an hour's refusals from one writer up to a byte budget (their audit lines;
/// `--audit-refusal-budget-kib`), one user's up to a quarter of it, and counts the rest in
/// `records.dropped` records naming the users. What was allowed is always kept. The default
/// is far above what people's slips produce, and bounds what etcd holds (README).
pub const DEFAULT_REFUSAL_BUDGET_KIB: u32 = 128;
/// Users named in the counts of a segment; refusals of any further ones are counted together.
const NAMED_USERS: usize = 100;
/// Records the audit thread appends to the segment under one lock.
const BATCH: usize = 256;
/// Lines queued for the printer before new ones go unprinted (counted; the segment has them).
const PRINT_QUEUE: usize = 16 * 1024;
/// How long the last flush at shutdown may take: well inside the chart's margin between the
/// drain and the kubelet's kill (terminationGracePeriodSeconds).
pub const LAST_FLUSH: Duration = Duration::from_secs(5);

/// What the stdout thread receives: a record, or a request to say when everything queued
/// before it is in the segment. Records travel by value: boxing would allocate once per record.
#[allow(clippy::large_enum_variant)]
enum Item {
    Record(Record),
    HandedOver(tokio::sync::oneshot::Sender<()>),
}

struct Sink {
    tx: mpsc::SyncSender<Item>,
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

/// Records one fact, each field cut to its bound. Never blocks and never fails: without an
/// installed writer (tests, tools) the line goes straight to stdout.
pub fn emit(mut record: Record) {
    record.bound();
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
    if sink.tx.try_send(Item::Record(record)).is_err() {
        sink.dropped.fetch_add(1, Ordering::Relaxed);
        sink.metrics.audit_records_dropped.inc();
    }
}

/// The current segment: lines since the last roll, and what the API server holds of them.
/// Lines are shared, so that the segment task copies pointers, not text, under the lock.
#[derive(Default)]
struct Segment {
    /// Lines not yet in a finished segment, oldest first, with their record's time.
    lines: VecDeque<(Timestamp, Arc<str>)>,
    /// Their size in bytes.
    bytes: usize,
    /// Lines not yet written to the API server.
    dirty: bool,
    /// The object's name and resourceVersion once created.
    name: Option<String>,
    resource_version: Option<String>,
    /// The previous segment's name: the next one must differ even when its first record
    /// carries the same millisecond.
    previous: Option<String>,
    dropped: u64,
    /// The hour (of the records' time) the shares count, the bytes of refusals kept per user
    /// in it, and of all of them: a segment that rolls early (full) gives nobody a new share.
    share_hour: i64,
    shares: HashMap<String, usize>,
    shared: usize,
    /// The hour's budget for everyone's refusals, in bytes of lines.
    budget: usize,
    /// Refusals counted instead of kept, per user (at most [`NAMED_USERS`]) and for the rest,
    /// until a segment holding their counts is written.
    over_share: BTreeMap<String, u64>,
    over_share_others: u64,
}

impl Segment {
    /// Appends records: their time, user, whether the API server was told to refuse them,
    /// and their line.
    /// Returns how many were dropped (past the pending bounds; refusals past their share are
    /// counted, not dropped).
    fn extend(&mut self, batch: impl IntoIterator<Item = (Timestamp, String, bool, Arc<str>)>) -> u64 {
        let mut dropped = 0;
        for (time, user, refused, line) in batch {
            self.dirty = true;
            if self.lines.len() >= MAX_PENDING_LINES || self.bytes + line.len() > MAX_PENDING_BYTES {
                self.dropped += 1;
                dropped += 1;
                continue;
            }
            if refused && !self.share(time, user, line.len()) {
                continue;
            }
            self.bytes += line.len();
            self.lines.push_back((time, line));
        }
        dropped
    }

    /// A segment whose writer keeps `budget_kib` KiB of refusals an hour.
    fn new(budget_kib: u32) -> Self {
        Segment { budget: budget_kib as usize * 1024, ..Segment::default() }
    }

    /// Whether a refusal of `user` at `time`, `bytes` long, is kept; if not, it is counted.
    fn share(&mut self, time: Timestamp, user: String, bytes: usize) -> bool {
        if hour(time) > self.share_hour {
            self.share_hour = hour(time);
            self.shares.clear();
            self.shared = 0;
        }
        let kept = self.shares.get(&user).copied().unwrap_or(0);
        if kept + bytes <= self.budget / 4 && self.shared + bytes <= self.budget {
            // At most one entry per kept refusal: bounded by the budget.
            *self.shares.entry(user).or_default() += bytes;
            self.shared += bytes;
            return true;
        }
        let named = self.over_share.len();
        match self.over_share.get_mut(&user) {
            Some(n) => *n += 1,
            None if named < NAMED_USERS => {
                self.over_share.insert(user, 1);
            }
            None => self.over_share_others += 1,
        }
        false
    }

    /// Refusals counted instead of kept, not yet in a written segment.
    fn counted(&self) -> u64 {
        self.over_share.values().sum::<u64>() + self.over_share_others
    }

    /// The one record of a segment whose every record was dropped.
    fn loss_record(&self, writer: &str, now: Timestamp) -> Record {
        Record {
            writer: writer.to_owned(),
            result: "writer".to_owned(),
            message: format!(
                "{} records were dropped: the writer's queue was full, or the API server out of reach too long",
                self.dropped
            ),
            ..Record::new("records.dropped", now)
        }
    }

    /// One record per user past their share (and one for the unnamed rest): how many of
    /// theirs were counted, not kept.
    fn share_records(&self, writer: &str, now: Timestamp) -> Vec<(Timestamp, Arc<str>)> {
        let why = format!(
            "the trail keeps {} KiB of refusals an hour from this writer, a quarter of it for one user",
            self.budget / 1024
        );
        let named = self
            .over_share
            .iter()
            .map(|(user, n)| (user.clone(), format!("{n} more refusals of this user were counted, not kept: {why}")));
        let others = (self.over_share_others > 0).then(|| {
            (
                String::new(),
                format!(
                    "{} more refusals of users beyond the {NAMED_USERS} named were counted, not kept: {why}",
                    self.over_share_others
                ),
            )
        });
        named
            .chain(others)
            .map(|(user, message)| {
                let record = Record {
                    writer: writer.to_owned(),
                    user,
                    result: "user_share".to_owned(),
                    message,
                    ..Record::new("records.dropped", now)
                };
                (now, Arc::from(record.to_line()))
            })
            .collect()
    }

    /// Forgets the first `n` lines: they are in a finished segment.
    fn finish(&mut self, n: usize) {
        for (_, line) in self.lines.drain(..n.min(self.lines.len())) {
            self.bytes -= line.len();
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

/// Starts the writer for this process (`stepup-webhook/<pod>`): the audit and printer threads,
/// and with `client` the task that writes segments every `flush` until `stop`, keeping
/// `refusal_budget_kib` KiB of refusals an hour. Call once, early. Await
/// the returned task (bounded by [`LAST_FLUSH`], see [`finish`]) after cancelling `stop`.
pub fn install(
    writer: String,
    metrics: Metrics,
    client: Option<Client>,
    flush: Duration,
    refusal_budget_kib: u32,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::sync_channel::<Item>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let segment = Arc::new(Mutex::new(Segment::new(refusal_budget_kib)));
    let keep = client.is_some();
    {
        let segment = segment.clone();
        let (print_tx, print_rx) = mpsc::sync_channel::<Arc<str>>(PRINT_QUEUE);
        let printer = Printer {
            tx: print_tx,
            unprinted: metrics.audit_lines_unprinted.clone(),
            dropped: metrics.audit_records_dropped.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("stepup-audit-print".into())
            .spawn(move || print_lines(&print_rx, &mut std::io::stdout()))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("stepup-audit".into())
                    .spawn(move || write_lines(&rx, &printer, keep.then_some(&*segment)))
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the audit writer threads; audit lines go out synchronously");
            return None;
        }
    }
    let handle = Writer { segment, api: client.map(Api::all), writer: writer.clone(), dropped: dropped.clone() };
    if SINK.set(Sink { tx, writer, dropped, metrics: metrics.clone() }).is_err() {
        tracing::warn!("audit writer installed twice; keeping the first");
        return None;
    }
    handle.api.is_some().then(|| tokio::spawn(handle.run(flush, metrics, stop)))
}

/// Where the audit thread sends lines to be printed, and what counts those it cannot.
struct Printer {
    tx: mpsc::SyncSender<Arc<str>>,
    unprinted: IntCounter,
    /// Records the segment had no room for (counted in it too).
    dropped: IntCounter,
}

/// The audit thread: appends each record to `segment` (memory, under its lock only), then
/// offers its line to the printer, until every sender is gone. It never waits for stdout: a
/// line the printer has no room for is counted and not printed; the segment has it.
fn write_lines(rx: &mpsc::Receiver<Item>, printer: &Printer, segment: Option<&Mutex<Segment>>) {
    let mut batch: Vec<(Timestamp, String, bool, Arc<str>)> = Vec::with_capacity(BATCH);
    let mut lines: Vec<Arc<str>> = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    let mut unsaid = 0u64;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(item) = next.take().or_else(|| if taken < BATCH { rx.try_recv().ok() } else { None }) {
            match item {
                Item::Record(record) => {
                    let line: Arc<str> = Arc::from(record.to_line());
                    if segment.is_some() {
                        batch.push((record.time, record.user, record.allowed == Some(false), line.clone()));
                    }
                    lines.push(line);
                    taken += 1;
                }
                Item::HandedOver(done) => waiting.push(done),
            }
        }
        if let Some(segment) = segment {
            let dropped = lock(segment).extend(batch.drain(..));
            printer.dropped.inc_by(dropped);
        }
        let mut full = false;
        for line in lines.drain(..) {
            if let Err(mpsc::TrySendError::Full(_)) = printer.tx.try_send(line) {
                printer.unprinted.inc();
                unsaid += 1;
                full = true;
            }
        }
        if unsaid > 0 && !full {
            // Through the log's own queue, which never blocks either.
            tracing::warn!(
                unprinted = unsaid,
                "audit lines were not printed: stdout could not keep up; the durable audit segments hold their records"
            );
            unsaid = 0;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The printer thread: writes lines to `out`, flushing whenever the queue is empty, until the
/// audit thread is gone. Holds `out`'s lock for one line at a time.
fn print_lines(rx: &mpsc::Receiver<Arc<str>>, out: &mut impl Write) {
    while let Ok(first) = rx.recv() {
        let _ = writeln!(out, "{first}");
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// Stops the writer: cancels `stop`, then waits (at most [`LAST_FLUSH`]) until what was
/// recorded before is written to the API server.
pub async fn finish(stop: &CancellationToken, task: Option<tokio::task::JoinHandle<()>>) {
    stop.cancel();
    let Some(task) = task else { return };
    if tokio::time::timeout(LAST_FLUSH, task).await.is_err() {
        tracing::warn!(bound = ?LAST_FLUSH, "the audit trail's last write did not finish in time; its records are only in the audit lines");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the audit thread has appended everything queued so far to the segment. The
/// queue may be full, so the request waits for room on a blocking thread.
async fn handed_over() {
    let Some(sink) = SINK.get() else { return };
    let (done, handed) = tokio::sync::oneshot::channel();
    let tx = sink.tx.clone();
    let queued = tokio::task::spawn_blocking(move || tx.send(Item::HandedOver(done)).is_ok()).await;
    if matches!(queued, Ok(true)) {
        let _ = handed.await;
    }
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
                handed_over().await;
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

    /// Writes the current segment when it changed: as many of its lines as fit in one object.
    /// Starts a new one when that object is full (lines were left over) or the hour turned.
    async fn persist(&self, metrics: &Metrics) -> Result<(), kube::Error> {
        let Some(api) = &self.api else { return Ok(()) };
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        // Copy what the object needs under the lock; log and encode after releasing it.
        let snapshot = {
            let mut s = lock(&self.segment);
            s.dropped += lost;
            s.dirty |= lost > 0;
            let now = Timestamp::now();
            // A segment of nothing but counts (every record of it dropped, or past a share)
            // is written too: a loss is never silent.
            let from = s.lines.front().map(|&(t, _)| t).or_else(|| (s.dropped > 0 || s.counted() > 0).then_some(now));
            match from {
                Some(from) if s.dirty => {
                    let mut name = segment::name(&self.writer, from);
                    if s.previous.as_ref() == Some(&name) {
                        name = segment::name(&self.writer, from + jiff::SignedDuration::from_millis(1));
                    }
                    let name = s.name.get_or_insert(name).clone();
                    let mut lines: Vec<(Timestamp, Arc<str>)> = s.lines.iter().cloned().collect();
                    let real = lines.len();
                    lines.extend(s.share_records(&self.writer, now));
                    if lines.is_empty() {
                        lines.push((now, Arc::from(s.loss_record(&self.writer, now).to_line())));
                    }
                    let counted = s.counted();
                    Some((name, lines, real, s.dropped, counted, s.resource_version.clone()))
                }
                _ => None,
            }
        };
        if lost > 0 {
            tracing::warn!(lost, "audit records dropped: the writer's queue was full");
        }
        let Some((name, lines, real, dropped, counted, resource_version)) = snapshot else { return Ok(()) };
        let existing = resource_version.is_some();
        let writer = self.writer.clone();
        let pending = lines.len();
        // Compressing a large segment is CPU work: off the runtime's workers.
        let built =
            tokio::task::spawn_blocking(move || segment::object_within(&name, &writer, &lines, dropped + counted))
                .await
                .map_err(|e| kube::Error::Service(e.into()))?;
        let Some(mut object) = built else { return Ok(()) };
        object.metadata.resource_version = resource_version;
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
                let current = api.get_opt(&object.name_any()).await?;
                lock(&self.segment).resource_version = current.and_then(|c| c.metadata.resource_version);
                tracing::error!(segment = %object.name_any(), code = e.code, "audit segment changed or deleted by someone else; writing it again");
                return Err(kube::Error::Api(e));
            }
            Err(e) => return Err(e),
        };
        metrics.audit_segment_writes.with_label_values(&["success"]).inc();
        let written_lines = object.spec.records as usize;
        let full = written_lines < pending;
        let hour_turned = hour(object.spec.from.0) != hour(Timestamp::now());
        let mut s = lock(&self.segment);
        // Lines only ever leave from the front, here: the first `written_lines` are the ones
        // written (the share records come after them, and are made again until written).
        let real_written = written_lines.min(real);
        let shares_written = written_lines == pending;
        if full || hour_turned {
            // Start afresh with what this object did not hold.
            s.finish(real_written);
            s.previous = s.name.take();
            s.resource_version = None;
            s.dropped -= dropped.min(s.dropped);
            if shares_written {
                s.over_share.clear();
                s.over_share_others = 0;
            }
            s.dirty = !s.lines.is_empty() || s.dropped > 0 || s.counted() > 0;
        } else {
            s.resource_version = written.metadata.resource_version.clone();
            s.dirty = s.lines.len() != real_written || s.dropped != dropped || s.counted() != counted;
        }
        Ok(())
    }
}

fn hour(t: Timestamp) -> i64 {
    t.as_second().div_euclid(3600)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    fn record(n: u64) -> Record {
        let mut r = Record::new("admission.decision", Timestamp::from_second(1_800_000_000 + n as i64).unwrap());
        r.user = format!("user-{n}");
        r
    }

    fn printer(capacity: usize) -> (Printer, mpsc::Receiver<Arc<str>>) {
        let (tx, rx) = sync_channel(capacity);
        let counter = |name| IntCounter::new(name, "test").unwrap();
        (Printer { tx, unprinted: counter("unprinted"), dropped: counter("dropped") }, rx)
    }

    /// The freeze found under load: the stdout thread held stdout's lock while it waited for
    /// the segment, and the segment task held the segment while it logged to stdout. Now the
    /// audit thread never touches stdout: with the segment held (the task, busy) stdout stays
    /// free for everyone else, again and again, until the segment is let go.
    #[test]
    fn stdout_is_never_held_while_waiting_for_the_segment() {
        let (tx, rx) = sync_channel(0);
        let segment = Arc::new(Mutex::new(Segment::default()));
        let busy = segment.lock().unwrap();
        let (printer, printed) = printer(16);
        let printing = std::thread::spawn(move || print_lines(&printed, &mut std::io::stdout()));
        let thread = {
            let segment = segment.clone();
            std::thread::spawn(move || write_lines(&rx, &printer, Some(&segment)))
        };
        // A rendezvous: once `send` returns, the thread holds the record and is writing it.
        tx.send(Item::Record(record(1))).unwrap();
        for _ in 0..50 {
            let (took, got) = sync_channel(1);
            std::thread::spawn(move || {
                drop(std::io::stdout().lock());
                let _ = took.send(());
            });
            got.recv_timeout(Duration::from_secs(10)).expect("stdout is free while the segment is busy");
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(busy);
        drop(tx);
        thread.join().unwrap();
        printing.join().unwrap();
        let s = segment.lock().unwrap();
        assert_eq!(s.lines.len(), 1);
        assert!(s.dirty);
    }

    /// A stdout that takes nothing (a stalled log pipeline) never keeps a record from the
    /// segment: the lines it cannot take are counted, and every record is in the trail.
    #[test]
    fn a_stalled_stdout_costs_printed_lines_never_records() {
        let (tx, rx) = sync_channel(1_000);
        let segment = Arc::new(Mutex::new(Segment::default()));
        // Nobody reads the printer's queue: stdout is stuck.
        let (printer, _stuck) = printer(10);
        for n in 0..1_000 {
            tx.send(Item::Record(record(n))).unwrap();
        }
        drop(tx);
        // A writer that waited for stdout would never return: fail instead of hanging.
        let (done, finished) = sync_channel(1);
        let unprinted = printer.unprinted.clone();
        {
            let segment = segment.clone();
            std::thread::spawn(move || {
                write_lines(&rx, &printer, Some(&segment));
                let _ = done.send(());
            });
        }
        finished.recv_timeout(Duration::from_secs(10)).expect("the audit thread never waits for stdout");
        assert_eq!(segment.lock().unwrap().lines.len(), 1_000, "every record in the segment");
        assert_eq!(unprinted.get(), 990, "what stdout could not take is counted");
    }

    /// A request to hand over is answered only after every record queued before it is in the
    /// segment: the last flush at shutdown waits for exactly that.
    #[test]
    fn handing_over_follows_every_record_queued_before_it() {
        let (tx, rx) = sync_channel(16);
        let segment = Arc::new(Mutex::new(Segment::default()));
        for n in 0..5 {
            tx.send(Item::Record(record(n))).unwrap();
        }
        let (done, mut handed) = tokio::sync::oneshot::channel();
        tx.send(Item::HandedOver(done)).unwrap();
        drop(tx);
        write_lines(&rx, &printer(16).0, Some(&segment));
        handed.try_recv().expect("handed over");
        assert_eq!(segment.lock().unwrap().lines.len(), 5);
    }

    /// Beyond the pending bounds new lines are dropped and counted; what is held (and may be
    /// in a written segment already) stays.
    #[test]
    fn a_segment_past_its_bounds_drops_new_lines_and_counts_them() {
        let mut s = Segment::default();
        let dropped = s.extend(
            (0..MAX_PENDING_LINES as u64 + 3)
                .map(|n| (record(n).time, format!("u{}", n % 100), false, Arc::from(format!("{n}")))),
        );
        assert_eq!(s.lines.len(), MAX_PENDING_LINES);
        assert_eq!((s.dropped, dropped), (3, 3), "counted in the segment and for the metric");
        assert_eq!(&*s.lines[0].1, "0");

        let mut s = Segment::default();
        let big: Arc<str> = Arc::from("x".repeat(1024 * 1024));
        s.extend((0..40).map(|n| (record(n).time, format!("u{n}"), false, big.clone())));
        assert!(s.bytes <= MAX_PENDING_BYTES);
        assert_eq!(s.dropped, 40 - (MAX_PENDING_BYTES / big.len()) as u64);
        s.finish(5);
        assert_eq!(s.bytes, (MAX_PENDING_BYTES / big.len() - 5) * big.len());
    }

    /// Attack (third round): bob's 13,830 refused challenge creations in 30 s went into the
    /// trail one by one. A user's refusals beyond their share of the hour's budget are counted
    /// in one record that names them; everyone else's, and whatever was allowed, are kept.
    #[test]
    fn one_users_flood_is_counted_not_kept() {
        let mut s = Segment::new(DEFAULT_REFUSAL_BUDGET_KIB);
        let line = |_| Arc::from("x".repeat(100));
        let share = DEFAULT_REFUSAL_BUDGET_KIB as usize * 1024 / 4 / 100;
        s.extend((0..share as u64 + 500).map(|n| (record(0).time, "bob".to_owned(), true, line(n))));
        s.extend((0..10).map(|n| (record(0).time, "alice".to_owned(), true, line(n))));
        // What was allowed is never counted against anyone: it is kept, however much.
        s.extend((0..100).map(|n| (record(0).time, "bob".to_owned(), false, line(n))));
        assert_eq!(s.lines.len(), share + 10 + 100);
        assert_eq!(s.over_share.get("bob"), Some(&500));
        assert!(!s.over_share.contains_key("alice"));
        let counts = s.share_records("stepup-webhook/w", record(0).time);
        assert_eq!(counts.len(), 1);
        let counted: Record = serde_json::from_str(&counts[0].1).unwrap();
        assert_eq!((counted.event.as_str(), counted.user.as_str()), ("records.dropped", "bob"));
        assert!(counted.message.starts_with("500 more refusals"), "{}", counted.message);
    }

    /// Attack (issue 29, "many users at once"): refusals as 1,000 different identities (an
    /// admin impersonating, a pile of tokens) each stay under a user's share; together they are
    /// bounded by the hour's budget, and the counts name at most 100 users. A segment that
    /// rolled early (full) gives nobody a new share; the next hour does.
    #[test]
    fn many_identities_flooding_at_once_are_bounded_together() {
        let mut s = Segment::new(DEFAULT_REFUSAL_BUDGET_KIB);
        let line = |_| Arc::from("x".repeat(100));
        let at = record(0).time;
        for user in 0..1_000 {
            s.extend((0..30).map(|n| (at, format!("mask-{user}"), true, line(n))));
        }
        let kept = DEFAULT_REFUSAL_BUDGET_KIB as usize * 1024 / 100;
        assert_eq!(s.lines.len(), kept);
        assert_eq!(s.counted(), 30_000 - kept as u64);
        assert_eq!(s.over_share.len(), NAMED_USERS);
        let counts = s.share_records("stepup-webhook/w", at);
        assert_eq!(counts.len(), NAMED_USERS + 1);
        let others: Record = serde_json::from_str(&counts[NAMED_USERS].1).unwrap();
        assert!(others.message.contains("users beyond the 100 named"), "{}", others.message);
        // Allowed operations are still kept.
        s.extend([(at, "alice".to_owned(), false, line(1))]);
        assert_eq!(s.lines.len(), kept + 1);

        // The segment rolled (written, full): the hour's shares stand.
        s.finish(s.lines.len());
        s.extend([(at, "mask-1".to_owned(), true, line(1))]);
        assert!(s.lines.is_empty(), "still counted, not kept");
        // The next hour brings new shares.
        let later = at + jiff::SignedDuration::from_hours(1);
        s.extend([(later, "mask-1".to_owned(), true, line(1))]);
        assert_eq!(s.lines.len(), 1);
    }
}
