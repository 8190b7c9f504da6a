//! The audit log: every request, alert, block and watermark mark, through a bounded, batched
//! asynchronous writer into an [`AuditStore`] (SQLite in WAL mode by default).
//!
//! The chain hands each event to [`AuditWriter::record`] (requests as a [`RequestDraft`] to
//! [`AuditWriter::record_request`]) before it answers the client; the writer thread drains the
//! bounded `tokio::sync::mpsc` queue in batches, one transaction per batch. The costly parts of a
//! request event (input SHA-256, the output's JSON, the raw input copy) are computed by the
//! writer thread, off the request path. [`AuditWriter::shutdown`] closes the queue and waits until every queued event is
//! written, so an acknowledged request is never lost on a graceful shutdown.

use crate::error::GatewayError;
use mamori_core::Tensor;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// One answered (or refused) request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// Time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Request id given by the client, if any.
    pub request_id: Option<String>,
    /// Client name (empty when authentication failed).
    pub client: String,
    /// Key id (empty when authentication failed).
    pub key_id: String,
    /// Model name as asked.
    pub model: String,
    /// Samples in the request.
    pub batch: u64,
    /// SHA-256 of the normalised input ([`mamori_core::hash::sha256_f32`]), when decoded.
    pub input_sha256: Option<String>,
    /// Raw normalised input, when configured.
    pub input: Option<Vec<f32>>,
    /// The answer as returned (probabilities as disclosed, labels).
    pub output: Option<serde_json::Value>,
    /// Detector scores by detector name.
    pub scores: serde_json::Map<String, serde_json::Value>,
    /// The chain's decision (`allow`, `alert`, ..., or the error kind).
    pub decision: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// Error message, if refused.
    pub error: Option<String>,
    /// Time spent in the chain, microseconds.
    pub latency_us: u64,
}

/// A request event as the request path hands it over: what [`RequestEvent`] holds, with the
/// input and the answer still as tensors. [`RequestDraft::into_event`] (run by the writer
/// thread) derives the input SHA-256, the raw input copy and the output's JSON from them.
#[derive(Clone, Debug)]
pub struct RequestDraft {
    /// Time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Request id given by the client, if any.
    pub request_id: Option<String>,
    /// Client name (empty when authentication failed).
    pub client: String,
    /// Key id (empty when authentication failed).
    pub key_id: String,
    /// Model name as asked.
    pub model: String,
    /// The normalised input batch, when decoded.
    pub input: Option<Arc<Tensor>>,
    /// Whether the raw input is stored too.
    pub store_raw_input: bool,
    /// The answer as returned, when the request succeeded.
    pub output: Option<OutputDraft>,
    /// Detector scores (`name` or `name@group`).
    pub scores: Vec<(String, f64)>,
    /// The chain's decision (`allow`, `alert`, ..., or the error kind).
    pub decision: &'static str,
    /// HTTP status of the answer.
    pub status: u16,
    /// Error message, if refused.
    pub error: Option<String>,
    /// Time spent in the chain, microseconds.
    pub latency_us: u64,
}

/// The answer of a request as returned to the client.
#[derive(Clone, Debug)]
pub struct OutputDraft {
    /// Probabilities as disclosed (`[n, classes]`); labels are their argmax.
    pub probabilities: Tensor,
    /// Whether the probabilities were returned (else only the labels).
    pub show_probabilities: bool,
}

impl RequestDraft {
    /// The event as stored.
    pub fn into_event(self) -> RequestEvent {
        let output = self.output.map(|o| {
            let mut m = serde_json::Map::new();
            if o.show_probabilities {
                m.insert(
                    "probabilities".into(),
                    serde_json::json!(o.probabilities.rows().collect::<Vec<_>>()),
                );
            }
            m.insert(
                "label".into(),
                serde_json::json!(o.probabilities.argmax_rows()),
            );
            serde_json::Value::Object(m)
        });
        let scores = self
            .scores
            .into_iter()
            .map(|(k, v)| (k, serde_json::json!(v)))
            .collect();
        RequestEvent {
            time_ms: self.time_ms,
            request_id: self.request_id,
            client: self.client,
            key_id: self.key_id,
            model: self.model,
            batch: self.input.as_ref().map_or(0, |t| t.batch_size() as u64),
            input_sha256: self.input.as_ref().map(|t| input_sha256(t.data())),
            input: if self.store_raw_input {
                self.input.as_ref().map(|t| t.data().to_vec())
            } else {
                None
            },
            output,
            scores,
            decision: self.decision.to_string(),
            status: self.status,
            error: self.error,
            latency_us: self.latency_us,
        }
    }
}

/// A detector alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Model name.
    pub model: String,
    /// Client (or `group:<name>`) the alarm is about.
    pub client: String,
    /// Detector name.
    pub detector: String,
    /// Detector score.
    pub score: f64,
    /// Queries the detector had seen from this client at the alarm.
    pub queries: u64,
    /// Action decided.
    pub action: String,
}

/// A block or unblock of a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockEvent {
    /// Time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Model name (`*` for every model).
    pub model: String,
    /// Client.
    pub client: String,
    /// `block` or `unblock`.
    pub kind: String,
    /// Who decided: `policy` or `admin`.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// A watermark ledger entry (an answer changed by the watermark).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// Time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Model name.
    pub model: String,
    /// Client.
    pub client: String,
    /// Watermark name.
    pub watermark: String,
    /// SHA-256 of the input.
    pub input_sha256: String,
    /// The model's label.
    pub true_label: u64,
    /// The label returned.
    pub given_label: u64,
}

/// Anything the audit log stores.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditRecord {
    /// A request.
    Request(RequestEvent),
    /// An alert.
    Alert(AlertEvent),
    /// A block or unblock.
    Block(BlockEvent),
    /// A watermark ledger entry.
    Ledger(LedgerEvent),
}

/// Storage backend of the audit log (SQLite here; a Postgres backend implements the same).
pub trait AuditStore: Send {
    /// Writes a batch atomically.
    fn write_batch(&mut self, records: &[AuditRecord]) -> Result<(), GatewayError>;
    /// Requests of `client` (every client when `None`) at or after `since_ms`, oldest first.
    fn requests(
        &self,
        client: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<RequestEvent>, GatewayError>;
    /// Alerts, oldest first.
    fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError>;
    /// Block events, oldest first.
    fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError>;
    /// Watermark ledger entries of `model`, oldest first.
    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError>;
}

/// SQLite audit store (WAL journal, one transaction per batch).
pub struct SqliteStore {
    conn: Connection,
}

fn sq(e: rusqlite::Error) -> GatewayError {
    GatewayError::Storage(format!("audit database: {e}"))
}

fn js<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl SqliteStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, GatewayError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| GatewayError::Storage(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| GatewayError::Storage(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sq)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sq)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS requests (
                id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, request_id TEXT,
                client TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
                batch INTEGER NOT NULL, input_sha256 TEXT, input TEXT, output TEXT,
                scores TEXT NOT NULL, decision TEXT NOT NULL, status INTEGER NOT NULL,
                error TEXT, latency_us INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS requests_client_time ON requests(client, time_ms);
             CREATE TABLE IF NOT EXISTS alerts (
                id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, model TEXT NOT NULL,
                client TEXT NOT NULL, detector TEXT NOT NULL, score REAL NOT NULL,
                queries INTEGER NOT NULL, action TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS blocks (
                id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, model TEXT NOT NULL,
                client TEXT NOT NULL, kind TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS ledger (
                id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, model TEXT NOT NULL,
                client TEXT NOT NULL, watermark TEXT NOT NULL, input_sha256 TEXT NOT NULL,
                true_label INTEGER NOT NULL, given_label INTEGER NOT NULL);",
        )
        .map_err(sq)?;
        Ok(Self { conn })
    }

    /// Opens `home/audit.db`.
    pub fn open_home(home: &Path) -> Result<Self, GatewayError> {
        Self::open(&home.join("audit.db"))
    }
}

impl AuditStore for SqliteStore {
    fn write_batch(&mut self, records: &[AuditRecord]) -> Result<(), GatewayError> {
        let tx = self.conn.transaction().map_err(sq)?;
        for r in records {
            match r {
                AuditRecord::Request(e) => {
                    tx.prepare_cached(
                        "INSERT INTO requests (time_ms, request_id, client, key_id, model, batch,
                         input_sha256, input, output, scores, decision, status, error, latency_us)
                         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        e.time_ms as i64,
                        e.request_id,
                        e.client,
                        e.key_id,
                        e.model,
                        e.batch as i64,
                        e.input_sha256,
                        e.input.as_ref().map(js),
                        e.output.as_ref().map(js),
                        js(&e.scores),
                        e.decision,
                        e.status,
                        e.error,
                        e.latency_us as i64,
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Alert(a) => {
                    tx.prepare_cached(
                        "INSERT INTO alerts (time_ms, model, client, detector, score, queries, action)
                         VALUES (?1,?2,?3,?4,?5,?6,?7)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        a.time_ms as i64,
                        a.model,
                        a.client,
                        a.detector,
                        a.score,
                        a.queries as i64,
                        a.action
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Block(b) => {
                    tx.prepare_cached(
                        "INSERT INTO blocks (time_ms, model, client, kind, by, reason)
                         VALUES (?1,?2,?3,?4,?5,?6)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        b.time_ms as i64,
                        b.model,
                        b.client,
                        b.kind,
                        b.by,
                        b.reason
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Ledger(l) => {
                    tx.prepare_cached(
                        "INSERT INTO ledger (time_ms, model, client, watermark, input_sha256,
                         true_label, given_label) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        l.time_ms as i64,
                        l.model,
                        l.client,
                        l.watermark,
                        l.input_sha256,
                        l.true_label as i64,
                        l.given_label as i64
                    ])
                    .map_err(sq)?;
                }
            }
        }
        tx.commit().map_err(sq)
    }

    fn requests(
        &self,
        client: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<RequestEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT time_ms, request_id, client, key_id, model, batch, input_sha256, input,
                 output, scores, decision, status, error, latency_us FROM requests
                 WHERE (?1 IS NULL OR client = ?1) AND time_ms >= ?2 ORDER BY id",
            )
            .map_err(sq)?;
        let rows = st
            .query_map(params![client, since_ms as i64], |r| {
                let input: Option<String> = r.get(7)?;
                let output: Option<String> = r.get(8)?;
                let scores: String = r.get(9)?;
                Ok(RequestEvent {
                    time_ms: r.get::<_, i64>(0)? as u64,
                    request_id: r.get(1)?,
                    client: r.get(2)?,
                    key_id: r.get(3)?,
                    model: r.get(4)?,
                    batch: r.get::<_, i64>(5)? as u64,
                    input_sha256: r.get(6)?,
                    input: input.and_then(|s| serde_json::from_str(&s).ok()),
                    output: output.and_then(|s| serde_json::from_str(&s).ok()),
                    scores: serde_json::from_str(&scores).unwrap_or_default(),
                    decision: r.get(10)?,
                    status: r.get(11)?,
                    error: r.get(12)?,
                    latency_us: r.get::<_, i64>(13)? as u64,
                })
            })
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT time_ms, model, client, detector, score, queries, action FROM alerts ORDER BY id",
            )
            .map_err(sq)?;
        let rows = st
            .query_map([], |r| {
                Ok(AlertEvent {
                    time_ms: r.get::<_, i64>(0)? as u64,
                    model: r.get(1)?,
                    client: r.get(2)?,
                    detector: r.get(3)?,
                    score: r.get(4)?,
                    queries: r.get::<_, i64>(5)? as u64,
                    action: r.get(6)?,
                })
            })
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare("SELECT time_ms, model, client, kind, by, reason FROM blocks ORDER BY id")
            .map_err(sq)?;
        let rows = st
            .query_map([], |r| {
                Ok(BlockEvent {
                    time_ms: r.get::<_, i64>(0)? as u64,
                    model: r.get(1)?,
                    client: r.get(2)?,
                    kind: r.get(3)?,
                    by: r.get(4)?,
                    reason: r.get(5)?,
                })
            })
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT time_ms, model, client, watermark, input_sha256, true_label, given_label
                 FROM ledger WHERE (?1 IS NULL OR model = ?1) ORDER BY id",
            )
            .map_err(sq)?;
        let rows = st
            .query_map(params![model], |r| {
                Ok(LedgerEvent {
                    time_ms: r.get::<_, i64>(0)? as u64,
                    model: r.get(1)?,
                    client: r.get(2)?,
                    watermark: r.get(3)?,
                    input_sha256: r.get(4)?,
                    true_label: r.get::<_, i64>(5)? as u64,
                    given_label: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }
}

/// An in-memory store (tests and in-process evaluation without a home directory).
#[derive(Clone, Default)]
pub struct MemoryStore {
    /// Everything written, in order.
    pub records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl MemoryStore {
    /// The records `pick` selects, in write order.
    fn collect<T>(&self, pick: impl Fn(&AuditRecord) -> Option<T>) -> Vec<T> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(pick)
            .collect()
    }
}

impl AuditStore for MemoryStore {
    fn write_batch(&mut self, records: &[AuditRecord]) -> Result<(), GatewayError> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(records);
        Ok(())
    }
    fn requests(
        &self,
        client: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<RequestEvent>, GatewayError> {
        Ok(self.collect(|r| match r {
            AuditRecord::Request(e)
                if client.is_none_or(|c| c == e.client) && e.time_ms >= since_ms =>
            {
                Some(e.clone())
            }
            _ => None,
        }))
    }
    fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError> {
        Ok(self.collect(|r| match r {
            AuditRecord::Alert(a) => Some(a.clone()),
            _ => None,
        }))
    }
    fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError> {
        Ok(self.collect(|r| match r {
            AuditRecord::Block(b) => Some(b.clone()),
            _ => None,
        }))
    }
    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError> {
        Ok(self.collect(|r| match r {
            AuditRecord::Ledger(l) if model.is_none_or(|m| m == l.model) => Some(l.clone()),
            _ => None,
        }))
    }
}

enum Msg {
    Record(Box<AuditRecord>),
    Draft(Box<RequestDraft>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Bounded, batched asynchronous writer in front of an [`AuditStore`].
pub struct AuditWriter {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    store: Arc<Mutex<Box<dyn AuditStore>>>,
}

impl AuditWriter {
    /// Starts the writer thread with a queue of `capacity` events, writing up to `batch` per
    /// transaction.
    pub fn start(store: Box<dyn AuditStore>, capacity: usize, batch: usize) -> Self {
        Self::start_with_linger(store, capacity, batch, 0)
    }

    /// Like [`AuditWriter::start`], pausing `linger_ms` after each transaction so that the
    /// next one carries more events.
    pub fn start_with_linger(
        store: Box<dyn AuditStore>,
        capacity: usize,
        batch: usize,
        linger_ms: u64,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(capacity.max(1));
        let store = Arc::new(Mutex::new(store));
        let st = store.clone();
        let batch = batch.max(1);
        let thread = std::thread::Builder::new()
            .name("mamori-audit".into())
            .spawn(move || {
                let mut buf: Vec<AuditRecord> = Vec::with_capacity(batch);
                let mut waiters: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    let mut push = |m: Msg, buf: &mut Vec<AuditRecord>| match m {
                        Msg::Record(r) => buf.push(*r),
                        Msg::Draft(d) => buf.push(AuditRecord::Request(d.into_event())),
                        Msg::Flush(w) => waiters.push(w),
                    };
                    push(first, &mut buf);
                    while buf.len() < batch {
                        match rx.try_recv() {
                            Ok(m) => push(m, &mut buf),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = s.write_batch(&buf) {
                            tracing::error!("audit write of {} events failed: {e}", buf.len());
                        }
                        buf.clear();
                    }
                    let flushed = !waiters.is_empty();
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                    // Let events accumulate for a moment: requests then enqueue without waking
                    // this thread, and the next transaction carries a larger batch. A flush
                    // request or a closed queue skips the pause.
                    if linger_ms > 0 && !flushed && !rx.is_closed() {
                        std::thread::sleep(std::time::Duration::from_millis(linger_ms));
                    }
                }
            })
            .expect("spawning the audit writer thread");
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            store,
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a record; waits while the queue is full (back-pressure). Never panics, whatever
    /// the calling context (plain thread, blocking pool or async task).
    pub fn record(&self, r: AuditRecord) -> Result<(), GatewayError> {
        let tx = self
            .sender()
            .ok_or_else(|| GatewayError::Storage("audit writer is shut down".into()))?;
        send_waiting(&tx, Msg::Record(Box::new(r)))
    }

    /// Queues a request event; the writer thread completes it ([`RequestDraft::into_event`]).
    /// Waits while the queue is full, like [`AuditWriter::record`].
    pub fn record_request(&self, d: RequestDraft) -> Result<(), GatewayError> {
        let tx = self
            .sender()
            .ok_or_else(|| GatewayError::Storage("audit writer is shut down".into()))?;
        send_waiting(&tx, Msg::Draft(Box::new(d)))
    }

    /// Waits until everything queued so far is written.
    pub fn flush(&self) {
        if let Some(tx) = self.sender() {
            let (w, r) = std::sync::mpsc::channel();
            if send_waiting(&tx, Msg::Flush(w)).is_ok() {
                let _ = r.recv();
            }
        }
    }

    /// Closes the queue and waits until every queued record is written.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Reads through the store (after [`AuditWriter::flush`] for a consistent view).
    pub fn with_store<R>(&self, f: impl FnOnce(&dyn AuditStore) -> R) -> R {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(s.as_ref())
    }
}

fn send_waiting(tx: &mpsc::Sender<Msg>, mut m: Msg) -> Result<(), GatewayError> {
    loop {
        match tx.try_send(m) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(back)) => {
                m = back;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(GatewayError::Storage("audit writer is shut down".into()))
            }
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Writes the requests of `client` (all when `None`) at or after `since_ms` as JSON Lines;
/// returns how many were written.
pub fn export_jsonl(
    store: &dyn AuditStore,
    client: Option<&str>,
    since_ms: u64,
    out: &mut dyn std::io::Write,
) -> Result<usize, GatewayError> {
    let events = store.requests(client, since_ms)?;
    for e in &events {
        let line = serde_json::to_string(e).map_err(|e| GatewayError::Storage(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| GatewayError::Storage(format!("export: {e}")))?;
    }
    Ok(events.len())
}

/// Parses a `--since` value into ms since the epoch: an RFC 3339 UTC time
/// (`2026-11-21T01:00:00Z`, fractional seconds allowed), a date (`2026-11-21`), a duration ago
/// (`90s`, `30m`, `2h`, `7d`), or ms since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, GatewayError> {
    let bad = || {
        GatewayError::BadRequest(format!(
            "invalid time {s:?}: use 2026-11-21T01:00:00Z, 2026-11-21, 30m/2h/7d ago, or ms since the epoch"
        ))
    };
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            let mult = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                _ => 86_400_000,
            };
            return Ok(now_ms.saturating_sub(n.saturating_mul(mult)));
        }
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let dp: Vec<&str> = date.split('-').collect();
    if dp.len() != 3 {
        return Err(bad());
    }
    let y: i64 = dp[0].parse().map_err(|_| bad())?;
    let m: u32 = dp[1].parse().map_err(|_| bad())?;
    let d: u32 = dp[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms_of_day = 0u64;
    if let Some(t) = time {
        let t = t.strip_suffix('Z').ok_or_else(bad)?;
        let tp: Vec<&str> = t.split(':').collect();
        if tp.len() != 3 {
            return Err(bad());
        }
        let h: u64 = tp[0].parse().map_err(|_| bad())?;
        let mi: u64 = tp[1].parse().map_err(|_| bad())?;
        let sec: f64 = tp[2].parse().map_err(|_| bad())?;
        if h > 23 || mi > 59 || !(0.0..61.0).contains(&sec) {
            return Err(bad());
        }
        ms_of_day = (h * 3600 + mi * 60) * 1000 + (sec * 1000.0).round() as u64;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if days < 0 {
        return Err(bad());
    }
    Ok(days as u64 * 86_400_000 + ms_of_day)
}

/// SHA-256 of an `f32` slice in little-endian byte order: the same digest as
/// [`mamori_core::hash::sha256_f32`], hashed in blocks rather than value by value.
pub fn input_sha256(values: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = [0u8; 1024];
    for chunk in values.chunks(256) {
        for (i, v) in chunk.iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    hex::encode(h.finalize())
}

/// Looks up the time of the newest request in a store (helper for exports).
pub fn last_request_time(conn_path: &Path) -> Result<Option<u64>, GatewayError> {
    let conn = Connection::open(conn_path).map_err(sq)?;
    conn.query_row("SELECT MAX(time_ms) FROM requests", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|o| o.flatten().map(|v| v as u64))
    .map_err(sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64, client: &str) -> RequestEvent {
        RequestEvent {
            time_ms: i,
            request_id: Some(format!("r{i}")),
            client: client.into(),
            key_id: "k".into(),
            model: "m".into(),
            batch: 1,
            input_sha256: Some("ab".into()),
            input: None,
            output: Some(serde_json::json!({"label": [1]})),
            scores: Default::default(),
            decision: "allow".into(),
            status: 200,
            error: None,
            latency_us: 5,
        }
    }

    #[test]
    fn input_hash_matches_core() {
        for n in [0usize, 1, 255, 256, 257, 784, 3000] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 5.0).collect();
            assert_eq!(
                input_sha256(&v),
                mamori_core::hash::sha256_f32(&v),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_draft_becomes_the_event_the_chain_used_to_build() {
        let x = Tensor::new(vec![2, 3], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
        let p = Tensor::new(vec![2, 2], vec![0.25, 0.75, 0.9, 0.1]).unwrap();
        let draft = RequestDraft {
            time_ms: 5,
            request_id: Some("r".into()),
            client: "c".into(),
            key_id: "k".into(),
            model: "m".into(),
            input: Some(Arc::new(x.clone())),
            store_raw_input: true,
            output: Some(OutputDraft {
                probabilities: p.clone(),
                show_probabilities: true,
            }),
            scores: vec![("volume".into(), 0.5), ("volume@group".into(), 0.25)],
            decision: "allow",
            status: 200,
            error: None,
            latency_us: 9,
        };
        let mut scores = serde_json::Map::new();
        scores.insert("volume".into(), serde_json::json!(0.5f64));
        scores.insert("volume@group".into(), serde_json::json!(0.25f64));
        let want = RequestEvent {
            time_ms: 5,
            request_id: Some("r".into()),
            client: "c".into(),
            key_id: "k".into(),
            model: "m".into(),
            batch: 2,
            input_sha256: Some(mamori_core::hash::sha256_f32(x.data())),
            input: Some(x.data().to_vec()),
            output: Some(serde_json::json!({
                "probabilities": [[0.25f32, 0.75f32], [0.9f32, 0.1f32]],
                "label": [1, 0],
            })),
            scores,
            decision: "allow".into(),
            status: 200,
            error: None,
            latency_us: 9,
        };
        assert_eq!(draft.clone().into_event(), want);
        // Label-only answers and no raw input.
        let mut d = draft;
        d.store_raw_input = false;
        d.output.as_mut().unwrap().show_probabilities = false;
        let e = d.into_event();
        assert_eq!(e.input, None);
        assert_eq!(e.output, Some(serde_json::json!({"label": [1, 0]})));
    }

    #[test]
    fn since_formats() {
        assert_eq!(parse_since("1700000000000", 0).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", 0).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z", 0).unwrap(),
            1_700_000_000_500
        );
        assert_eq!(
            parse_since("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        for bad in [
            "yesterday",
            "2023-13-01",
            "2023-11-14T22:13",
            "2023-11-14T25:00:00Z",
        ] {
            assert!(parse_since(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn writer_persists_everything_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let w = AuditWriter::start(Box::new(SqliteStore::open(&path).unwrap()), 8, 3);
        for i in 0..100 {
            w.record(AuditRecord::Request(ev(
                i,
                if i % 2 == 0 { "a" } else { "b" },
            )))
            .unwrap();
        }
        w.shutdown();
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.requests(None, 0).unwrap().len(), 100);
        let a = s.requests(Some("a"), 50).unwrap();
        assert_eq!(a.len(), 25);
        assert_eq!(a[0], ev(50, "a"));
        assert_eq!(last_request_time(&path).unwrap(), Some(99));
        let mut out = Vec::new();
        assert_eq!(export_jsonl(&s, Some("b"), 90, &mut out).unwrap(), 5);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5);
        let first: RequestEvent = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first, ev(91, "b"));
    }
}
