//! The audit log: every request, alert, block and watermark mark, through a bounded, batched
//! asynchronous writer into an [`AuditStore`] (SQLite in WAL mode by default).
//!
//! The chain hands each event to [`AuditWriter::record`] (requests as a [`RequestDraft`] to
//! [`AuditWriter::record_request`]) before it answers the client; the writer thread drains the
//! bounded `tokio::sync::mpsc` queue in batches, one transaction per batch. The costly parts of a
//! request event (input SHA-256, the output's JSON, the raw input copy) are computed by the
//! writer thread, off the request path. [`AuditWriter::shutdown`] closes the queue and waits until every queued event is
//! written, so an acknowledged request is never lost on a graceful shutdown.

use crate::audit_chain::{ChainWriter, Seal};
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
    /// The client's IP address as the gateway saw it (after trusted proxies), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
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
    /// The client's IP address, when known.
    pub peer: Option<std::net::IpAddr>,
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
            peer: self.peer.map(|ip| ip.to_string()),
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", content = "event", rename_all = "snake_case")]
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
    /// Writes a batch atomically, each record with its seal when `seals` is given (one per
    /// record, in order; see [`crate::audit_chain`]).
    fn write_sealed(
        &mut self,
        records: &[AuditRecord],
        seals: Option<&[Seal]>,
    ) -> Result<(), GatewayError>;
    /// Writes a batch atomically, without seals.
    fn write_batch(&mut self, records: &[AuditRecord]) -> Result<(), GatewayError> {
        self.write_sealed(records, None)
    }
    /// The last seal of every writer in the store (largest number per writer).
    fn chain_heads(&self) -> Result<Vec<Seal>, GatewayError>;
    /// The records `writer` sealed with numbers in `from..to`, by number (a number stored
    /// twice comes twice).
    fn sealed_range(
        &self,
        writer: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Seal, AuditRecord)>, GatewayError>;
    /// How many records carry no seal.
    fn unsealed_count(&self) -> Result<u64, GatewayError>;
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
    /// Block events whose row number is above `after` (`i64::MIN`: all), with their row
    /// numbers, in the store's order (oldest first). A replica reads them to apply what other
    /// replicas decided ([`crate::Chain::sync_blocks`]); the numbers tell which it has applied
    /// already, and `after` spares it re-reading the settled past. Default: the position in
    /// [`AuditStore::blocks`] (stores that only append).
    fn numbered_blocks(&self, after: i64) -> Result<Vec<(i64, BlockEvent)>, GatewayError> {
        Ok(self
            .blocks()?
            .into_iter()
            .enumerate()
            .map(|(i, b)| (i as i64, b))
            .filter(|(i, _)| *i > after)
            .collect())
    }
    /// Watermark ledger entries of `model`, oldest first.
    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError>;
    /// Whether the store keeps detector states for other replicas
    /// ([`AuditStore::put_states`]); the SQLite and PostgreSQL stores do, the in-memory one not.
    fn shares_states(&self) -> bool {
        false
    }
    /// Saves detector states of `model`'s subjects, written by `writer` at `time_ms`. A
    /// subject's saved state is replaced only by one that has seen at least as many queries
    /// (so a replica holding a shorter, stale history cannot overwrite the one that took the
    /// client over). Not part of the audit log: states are working memory, not records.
    fn put_states(
        &self,
        _model: &str,
        _writer: &str,
        _time_ms: u64,
        _states: &[SharedState],
    ) -> Result<(), GatewayError> {
        Err(GatewayError::Config(
            "this audit store does not keep detector states (use SQLite or PostgreSQL)".into(),
        ))
    }
    /// The saved detector state of `subject` on `model`, if any replica saved one.
    fn get_state(&self, _model: &str, _subject: &str) -> Result<Option<SharedState>, GatewayError> {
        Ok(None)
    }
}

/// One subject's detector states as a replica saved them in a shared store
/// ([`AuditStore::put_states`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SharedState {
    /// The client, group or network.
    pub subject: String,
    /// Queries the states have seen.
    pub queries: u64,
    /// The states ([`crate::Chain`]'s per-subject snapshot, encoded by [`crate::state_codec`]).
    pub snapshot: Vec<u8>,
}

/// The detector-state table of the SQLite store (not sealed: working memory, not audit).
const SQLITE_STATES: &str = "CREATE TABLE IF NOT EXISTS detector_states (
    model TEXT NOT NULL, subject TEXT NOT NULL, writer TEXT NOT NULL,
    time_ms INTEGER NOT NULL, queries INTEGER NOT NULL, snapshot BLOB NOT NULL,
    PRIMARY KEY (model, subject));";

/// The SQLite tables, each with the seal columns `writer`, `seq`, `mac`.
const TABLES: [&str; 4] = ["requests", "alerts", "blocks", "ledger"];

/// The event columns each store reads, in the order its row readers expect (both stores).
pub(crate) const REQUEST_COLS: &str =
    "time_ms, request_id, client, key_id, model, batch, input_sha256, \
     input, output, scores, decision, status, error, latency_us, peer";
pub(crate) const ALERT_COLS: &str = "time_ms, model, client, detector, score, queries, action";
pub(crate) const BLOCK_COLS: &str = "time_ms, model, client, kind, by, reason";
/// How many columns one of the `*_COLS` lists names (where a query's seal columns start).
pub(crate) fn column_count(cols: &str) -> usize {
    cols.split(',').count()
}

pub(crate) const LEDGER_COLS: &str =
    "time_ms, model, client, watermark, input_sha256, true_label, given_label";

fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestEvent> {
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
        peer: r.get(14)?,
    })
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertEvent> {
    Ok(AlertEvent {
        time_ms: r.get::<_, i64>(0)? as u64,
        model: r.get(1)?,
        client: r.get(2)?,
        detector: r.get(3)?,
        score: r.get(4)?,
        queries: r.get::<_, i64>(5)? as u64,
        action: r.get(6)?,
    })
}

fn block_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlockEvent> {
    Ok(BlockEvent {
        time_ms: r.get::<_, i64>(0)? as u64,
        model: r.get(1)?,
        client: r.get(2)?,
        kind: r.get(3)?,
        by: r.get(4)?,
        reason: r.get(5)?,
    })
}

fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEvent> {
    Ok(LedgerEvent {
        time_ms: r.get::<_, i64>(0)? as u64,
        model: r.get(1)?,
        client: r.get(2)?,
        watermark: r.get(3)?,
        input_sha256: r.get(4)?,
        true_label: r.get::<_, i64>(5)? as u64,
        given_label: r.get::<_, i64>(6)? as u64,
    })
}

/// The seal stored after `n` event columns.
fn seal_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Seal> {
    Ok(Seal {
        writer: r.get(n)?,
        seq: r.get::<_, i64>(n + 1)? as u64,
        mac: r.get(n + 2)?,
    })
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
        conn.execute_batch(SQLITE_STATES).map_err(sq)?;
        for table in TABLES {
            let has_seq: bool = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'seq'"
                ))
                .and_then(|mut st| st.exists([]))
                .map_err(sq)?;
            if !has_seq {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN writer TEXT;
                     ALTER TABLE {table} ADD COLUMN seq INTEGER;
                     ALTER TABLE {table} ADD COLUMN mac TEXT;"
                ))
                .map_err(sq)?;
            }
            conn.execute_batch(&format!(
                "CREATE INDEX IF NOT EXISTS {table}_chain ON {table} (writer, seq);"
            ))
            .map_err(sq)?;
        }
        let has_peer: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('requests') WHERE name = 'peer'")
            .and_then(|mut st| st.exists([]))
            .map_err(sq)?;
        if !has_peer {
            conn.execute_batch("ALTER TABLE requests ADD COLUMN peer TEXT;")
                .map_err(sq)?;
        }
        Ok(Self { conn })
    }

    /// Opens `home/audit.db`.
    pub fn open_home(home: &Path) -> Result<Self, GatewayError> {
        Self::open(&home.join("audit.db"))
    }
}

impl AuditStore for SqliteStore {
    fn write_sealed(
        &mut self,
        records: &[AuditRecord],
        seals: Option<&[Seal]>,
    ) -> Result<(), GatewayError> {
        check_seals(records, seals)?;
        let tx = self.conn.transaction().map_err(sq)?;
        for (i, r) in records.iter().enumerate() {
            let seal = seals.map(|s| &s[i]);
            let (writer, seq, mac) = (
                seal.map(|s| s.writer.as_str()),
                seal.map(|s| s.seq as i64),
                seal.map(|s| s.mac.as_str()),
            );
            match r {
                AuditRecord::Request(e) => {
                    tx.prepare_cached(
                        "INSERT INTO requests (time_ms, request_id, client, key_id, model, batch,
                         input_sha256, input, output, scores, decision, status, error, latency_us,
                         writer, seq, mac, peer)
                         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
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
                        writer,
                        seq,
                        mac,
                        e.peer,
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Alert(a) => {
                    tx.prepare_cached(
                        "INSERT INTO alerts (time_ms, model, client, detector, score, queries,
                         action, writer, seq, mac) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        a.time_ms as i64,
                        a.model,
                        a.client,
                        a.detector,
                        a.score,
                        a.queries as i64,
                        a.action,
                        writer,
                        seq,
                        mac,
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Block(b) => {
                    tx.prepare_cached(
                        "INSERT INTO blocks (time_ms, model, client, kind, by, reason, writer,
                         seq, mac) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        b.time_ms as i64,
                        b.model,
                        b.client,
                        b.kind,
                        b.by,
                        b.reason,
                        writer,
                        seq,
                        mac,
                    ])
                    .map_err(sq)?;
                }
                AuditRecord::Ledger(l) => {
                    tx.prepare_cached(
                        "INSERT INTO ledger (time_ms, model, client, watermark, input_sha256,
                         true_label, given_label, writer, seq, mac)
                         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                    )
                    .map_err(sq)?
                    .execute(params![
                        l.time_ms as i64,
                        l.model,
                        l.client,
                        l.watermark,
                        l.input_sha256,
                        l.true_label as i64,
                        l.given_label as i64,
                        writer,
                        seq,
                        mac,
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
            .prepare(&format!(
                "SELECT {REQUEST_COLS} FROM requests
                 WHERE (?1 IS NULL OR client = ?1) AND time_ms >= ?2 ORDER BY id"
            ))
            .map_err(sq)?;
        let rows = st
            .query_map(params![client, since_ms as i64], request_row)
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {ALERT_COLS} FROM alerts ORDER BY id"))
            .map_err(sq)?;
        let rows = st.query_map([], alert_row).map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {BLOCK_COLS} FROM blocks ORDER BY id"))
            .map_err(sq)?;
        let rows = st.query_map([], block_row).map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn numbered_blocks(&self, after: i64) -> Result<Vec<(i64, BlockEvent)>, GatewayError> {
        // The row number after the event columns, so `block_row` reads the same positions.
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {BLOCK_COLS}, id FROM blocks WHERE id > ?1 ORDER BY id"
            ))
            .map_err(sq)?;
        let rows = st
            .query_map([after], |r| {
                Ok((r.get::<_, i64>(column_count(BLOCK_COLS))?, block_row(r)?))
            })
            .map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {LEDGER_COLS} FROM ledger WHERE (?1 IS NULL OR model = ?1) ORDER BY id"
            ))
            .map_err(sq)?;
        let rows = st.query_map(params![model], ledger_row).map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn shares_states(&self) -> bool {
        true
    }

    fn put_states(
        &self,
        model: &str,
        writer: &str,
        time_ms: u64,
        states: &[SharedState],
    ) -> Result<(), GatewayError> {
        let tx = self.conn.unchecked_transaction().map_err(sq)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO detector_states
                        (model, subject, writer, time_ms, queries, snapshot)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (model, subject) DO UPDATE SET
                        writer = excluded.writer, time_ms = excluded.time_ms,
                        queries = excluded.queries, snapshot = excluded.snapshot
                     WHERE excluded.queries >= detector_states.queries",
                )
                .map_err(sq)?;
            for s in states {
                st.execute(params![
                    model,
                    s.subject,
                    writer,
                    time_ms as i64,
                    s.queries as i64,
                    s.snapshot
                ])
                .map_err(sq)?;
            }
        }
        tx.commit().map_err(sq)
    }

    fn get_state(&self, model: &str, subject: &str) -> Result<Option<SharedState>, GatewayError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT queries, snapshot FROM detector_states WHERE model = ?1 AND subject = ?2",
            )
            .map_err(sq)?;
        let mut rows = st
            .query_map(params![model, subject], |r| {
                Ok(SharedState {
                    subject: subject.to_string(),
                    queries: r.get::<_, i64>(0)?.max(0) as u64,
                    snapshot: r.get(1)?,
                })
            })
            .map_err(sq)?;
        rows.next().transpose().map_err(sq)
    }

    fn chain_heads(&self) -> Result<Vec<Seal>, GatewayError> {
        let union = TABLES
            .iter()
            .map(|t| format!("SELECT writer, seq, mac FROM {t} WHERE writer IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        // SQLite's bare columns: with MAX(), `mac` comes from the row holding the maximum.
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT writer, MAX(seq), mac FROM ({union}) GROUP BY writer ORDER BY writer"
            ))
            .map_err(sq)?;
        let rows = st.query_map([], |r| seal_row(r, 0)).map_err(sq)?;
        rows.collect::<Result<_, _>>().map_err(sq)
    }

    fn sealed_range(
        &self,
        writer: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Seal, AuditRecord)>, GatewayError> {
        type Read = fn(&rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord>;
        // Each table, its columns, and its rows as records.
        let tables: [(&str, &str, Read); 4] = [
            ("requests", REQUEST_COLS, |r| {
                request_row(r).map(AuditRecord::Request)
            }),
            ("alerts", ALERT_COLS, |r| {
                alert_row(r).map(AuditRecord::Alert)
            }),
            ("blocks", BLOCK_COLS, |r| {
                block_row(r).map(AuditRecord::Block)
            }),
            ("ledger", LEDGER_COLS, |r| {
                ledger_row(r).map(AuditRecord::Ledger)
            }),
        ];
        let range = params![writer, from as i64, to.min(i64::MAX as u64) as i64];
        let mut out = Vec::new();
        for (table, cols, read) in tables {
            let n = column_count(cols);
            let mut st = self
                .conn
                .prepare(&format!(
                    "SELECT {cols}, writer, seq, mac FROM {table}
                     WHERE writer = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq, id"
                ))
                .map_err(sq)?;
            for row in st
                .query_map(range, |r| Ok((seal_row(r, n)?, read(r)?)))
                .map_err(sq)?
            {
                out.push(row.map_err(sq)?);
            }
        }
        out.sort_by_key(|(s, _)| s.seq);
        Ok(out)
    }

    fn unsealed_count(&self) -> Result<u64, GatewayError> {
        let sum = TABLES
            .iter()
            .map(|t| format!("(SELECT COUNT(*) FROM {t} WHERE seq IS NULL)"))
            .collect::<Vec<_>>()
            .join(" + ");
        self.conn
            .query_row(&format!("SELECT {sum}"), [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sq)
    }
}

/// Checks that `seals`, when given, has one seal per record.
fn check_seals(records: &[AuditRecord], seals: Option<&[Seal]>) -> Result<(), GatewayError> {
    match seals {
        Some(s) if s.len() != records.len() => Err(GatewayError::Storage(format!(
            "{} seals for {} audit records",
            s.len(),
            records.len()
        ))),
        _ => Ok(()),
    }
}

/// An in-memory store (tests and in-process evaluation without a home directory).
#[derive(Clone, Default)]
pub struct MemoryStore {
    /// Everything written, in order.
    pub records: Arc<Mutex<Vec<AuditRecord>>>,
    /// The seals written, with the index of their record in `records`.
    seals: Arc<Mutex<Vec<(usize, Seal)>>>,
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
    fn write_sealed(
        &mut self,
        records: &[AuditRecord],
        seals: Option<&[Seal]>,
    ) -> Result<(), GatewayError> {
        check_seals(records, seals)?;
        let mut all = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let start = all.len();
        all.extend_from_slice(records);
        if let Some(seals) = seals {
            self.seals.lock().unwrap_or_else(|e| e.into_inner()).extend(
                seals
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, s)| (start + i, s)),
            );
        }
        Ok(())
    }
    fn chain_heads(&self) -> Result<Vec<Seal>, GatewayError> {
        let mut heads: std::collections::BTreeMap<String, Seal> = Default::default();
        for (_, s) in self.seals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let h = heads.entry(s.writer.clone()).or_insert_with(|| s.clone());
            if s.seq > h.seq {
                *h = s.clone();
            }
        }
        Ok(heads.into_values().collect())
    }
    fn sealed_range(
        &self,
        writer: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Seal, AuditRecord)>, GatewayError> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(Seal, AuditRecord)> = self
            .seals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(i, s)| {
                s.writer == writer && s.seq >= from && s.seq < to && *i < records.len()
            })
            .map(|(i, s)| (s.clone(), records[*i].clone()))
            .collect();
        out.sort_by_key(|(s, _)| s.seq);
        Ok(out)
    }
    fn unsealed_count(&self) -> Result<u64, GatewayError> {
        let n = self.records.lock().unwrap_or_else(|e| e.into_inner()).len();
        let sealed = self.seals.lock().unwrap_or_else(|e| e.into_inner()).len();
        Ok(n.saturating_sub(sealed) as u64)
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

/// Settings of an [`AuditWriter`].
#[derive(Debug)]
pub struct WriterOptions {
    /// Capacity of the bounded queue (producers wait when it is full).
    pub capacity: usize,
    /// Largest number of events per transaction.
    pub batch: usize,
    /// Pause after each transaction (ms) so that the next one carries more events.
    pub linger_ms: u64,
    /// A local JSON Lines file for batches the store refuses (database down, disk full): a
    /// batch that still fails after [`QUICK_RETRIES`] quick retries is appended there (and
    /// `fsync`ed) instead of holding up the gateway, and replayed into the store, oldest
    /// first, as soon as a write succeeds again or when the next writer starts. Without a
    /// spill file the writer retries until the store answers (producers wait once the queue
    /// is full), and at shutdown gives up after [`SHUTDOWN_RETRIES`].
    pub spill: Option<std::path::PathBuf>,
    /// Counters and gauge the writer keeps up to date (the gateway's `/metrics`).
    pub health: crate::metrics::AuditHealth,
    /// The tamper-evident chain sealing every record written (see [`crate::audit_chain`]);
    /// `None` writes records unsealed.
    pub chain: Option<ChainWriter>,
}

/// Quick retries of a failed batch before it goes to the spill file.
pub const QUICK_RETRIES: u32 = 3;
/// Retries of a failed batch during shutdown when there is no spill file.
pub const SHUTDOWN_RETRIES: u32 = 10;

/// Writes `buf`, retrying with exponential backoff (20 ms doubling to 1 s). Returns `false`
/// when it gives up: after [`QUICK_RETRIES`] when a spill file can take the batch, after
/// [`SHUTDOWN_RETRIES`] once `closing()` says the queue is closed, and never otherwise.
fn write_with_retry(
    st: &Mutex<Box<dyn AuditStore>>,
    buf: &[AuditRecord],
    seals: Option<&[Seal]>,
    can_spill: bool,
    closing: impl Fn() -> bool,
    health: &crate::metrics::AuditHealth,
) -> bool {
    let mut delay = std::time::Duration::from_millis(20);
    let mut failures = 0u32;
    loop {
        let result = st
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_sealed(buf, seals);
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!("audit store answers again after {failures} failed writes");
                }
                return true;
            }
            Err(e) => {
                failures += 1;
                health.write_failures.inc();
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(
                        "audit write of {} events failed (attempt {failures}): {e}",
                        buf.len()
                    );
                }
                if (can_spill && failures > QUICK_RETRIES)
                    || (closing() && failures > SHUTDOWN_RETRIES)
                {
                    return false;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Advances `chain` past a stored batch's seals.
fn commit_seals(
    chain: &mut Option<ChainWriter>,
    sealed: Option<crate::audit_chain::Sealed>,
    health: &crate::metrics::AuditHealth,
) {
    if let (Some(c), Some(s)) = (chain.as_mut(), sealed) {
        c.commit(s);
        health
            .chain_sealed
            .set(i64::try_from(c.next_seq()).unwrap_or(i64::MAX));
    }
}

/// The writer's spill file (see [`WriterOptions::spill`]).
struct Spill {
    path: std::path::PathBuf,
    /// Whether the file may hold records not yet in the store.
    pending: bool,
    health: crate::metrics::AuditHealth,
}

impl Spill {
    fn new(path: std::path::PathBuf, health: crate::metrics::AuditHealth) -> Self {
        let pending = path.is_file();
        health.spill_pending.set(i64::from(pending));
        Self {
            path,
            pending,
            health,
        }
    }

    /// Appends `records` as JSON Lines and syncs the file.
    fn append(&mut self, records: &[AuditRecord]) {
        use std::io::Write;
        let mut text = String::new();
        for r in records {
            match serde_json::to_string(r) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => tracing::error!("audit event not serialisable, lost: {e}"),
            }
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            });
        match written {
            Ok(()) => {
                self.pending = true;
                self.health.spilled_events.inc_by(records.len() as u64);
                self.health.spill_pending.set(1);
                tracing::warn!(
                    "audit store unavailable: {} events kept in {} until it answers",
                    records.len(),
                    self.path.display()
                );
            }
            Err(e) => tracing::error!(
                "audit store unavailable and spill file {} failed ({e}): {} events lost",
                self.path.display(),
                records.len()
            ),
        }
    }

    /// Writes the spilled records into the store in batches of `batch`; what the store still
    /// refuses stays in the file (rewritten atomically), so nothing is written twice.
    fn replay(
        &mut self,
        st: &Mutex<Box<dyn AuditStore>>,
        batch: usize,
        chain: &mut Option<ChainWriter>,
    ) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.pending = false;
                self.health.spill_pending.set(0);
                return;
            }
            Err(e) => {
                tracing::error!("audit spill file {}: {e}", self.path.display());
                return;
            }
        };
        let mut records = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<AuditRecord>(line) {
                Ok(r) => records.push(r),
                // A torn last line (crash while appending) is the only way to get here.
                Err(e) => tracing::error!(
                    "audit spill file {} line {}: {e} (skipped)",
                    self.path.display(),
                    i + 1
                ),
            }
        }
        let mut done = 0;
        for chunk in records.chunks(batch.max(1)) {
            let sealed = chain.as_ref().map(|c| c.seal(chunk));
            let ok = st
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_sealed(chunk, sealed.as_ref().map(|s| s.seals.as_slice()))
                .is_ok();
            if !ok {
                self.health.write_failures.inc();
                break;
            }
            commit_seals(chain, sealed, &self.health);
            done += chunk.len();
            self.health.replayed_events.inc_by(chunk.len() as u64);
        }
        if done == records.len() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {
                    self.pending = false;
                    self.health.spill_pending.set(0);
                    if done > 0 {
                        tracing::warn!(
                            "audit: {done} spilled events from {} written to the store",
                            self.path.display()
                        );
                    }
                }
                Err(e) => tracing::error!("audit spill file {}: {e}", self.path.display()),
            }
            return;
        }
        if done > 0 {
            let rest: String = records[done..]
                .iter()
                .filter_map(|r| serde_json::to_string(r).ok())
                .map(|l| l + "\n")
                .collect();
            let tmp = self.path.with_extension("jsonl.tmp");
            let rewritten = std::fs::write(&tmp, rest)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &self.path));
            if let Err(e) = rewritten {
                tracing::error!(
                    "audit spill file {}: {e}; {done} of its events are already in the store",
                    self.path.display()
                );
            }
        }
    }
}

/// Opens the audit store the configuration names: `<home>/audit.db` (SQLite) or the
/// PostgreSQL database of `audit.postgres_url`.
pub fn open_store(
    cfg: &crate::config::AuditConfig,
    home: &Path,
) -> Result<Box<dyn AuditStore>, GatewayError> {
    match cfg.store {
        crate::config::AuditBackend::Sqlite => Ok(Box::new(SqliteStore::open_home(home)?)),
        crate::config::AuditBackend::Postgres => {
            let url = cfg.require_postgres_url()?;
            let store = crate::audit_postgres::PostgresStore::connect_with_tls(
                &url.0,
                &crate::audit_postgres::PostgresTls::of(cfg),
            )?;
            match store.uses_tls() {
                Ok(true) => tracing::info!(
                    "audit store: PostgreSQL {} (TLS)",
                    crate::config::redact_password(&url.0)
                ),
                Ok(false) if url.0.contains("host=/") || url.0.contains("%2F") => {
                    tracing::info!("audit store: PostgreSQL over a Unix socket")
                }
                Ok(false) => tracing::warn!(
                    "audit store: PostgreSQL {} without TLS (sslmode=require to insist on it)",
                    crate::config::redact_password(&url.0)
                ),
                Err(e) => tracing::warn!("audit store: {e}"),
            }
            Ok(Box::new(store))
        }
    }
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
        Self::start_with(
            store,
            WriterOptions {
                capacity,
                batch,
                linger_ms,
                spill: None,
                health: Default::default(),
                chain: None,
            },
        )
    }

    /// Starts the writer thread with every option. With a spill file, the thread first
    /// replays what an earlier run left there (see [`WriterOptions::spill`]).
    pub fn start_with(store: Box<dyn AuditStore>, opts: WriterOptions) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(opts.capacity.max(1));
        let store = Arc::new(Mutex::new(store));
        let st = store.clone();
        let batch = opts.batch.max(1);
        let linger_ms = opts.linger_ms;
        let thread = std::thread::Builder::new()
            .name("mamori-audit".into())
            .spawn(move || {
                let health = opts.health;
                let mut chain = opts.chain;
                if let Some(c) = &chain {
                    health
                        .chain_sealed
                        .set(i64::try_from(c.next_seq()).unwrap_or(i64::MAX));
                }
                let mut spill = opts.spill.map(|p| Spill::new(p, health.clone()));
                if let Some(sp) = spill.as_mut() {
                    sp.replay(&st, batch, &mut chain);
                }
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
                        let sealed = chain.as_ref().map(|c| c.seal(&buf));
                        let written = write_with_retry(
                            &st,
                            &buf,
                            sealed.as_ref().map(|s| s.seals.as_slice()),
                            spill.is_some(),
                            || rx.is_closed(),
                            &health,
                        );
                        if written {
                            commit_seals(&mut chain, sealed, &health);
                        }
                        match (written, spill.as_mut()) {
                            (true, Some(sp)) if sp.pending => sp.replay(&st, batch, &mut chain),
                            (false, Some(sp)) => sp.append(&buf),
                            (false, None) => tracing::error!(
                                "audit store unavailable at shutdown: {} events lost",
                                buf.len()
                            ),
                            _ => {}
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

    /// A memory store that refuses every write while `down` is set.
    #[derive(Clone, Default)]
    struct FlakyStore {
        inner: MemoryStore,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl AuditStore for FlakyStore {
        fn write_sealed(
            &mut self,
            records: &[AuditRecord],
            seals: Option<&[Seal]>,
        ) -> Result<(), GatewayError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(GatewayError::Storage("database down".into()));
            }
            self.inner.write_sealed(records, seals)
        }
        fn chain_heads(&self) -> Result<Vec<Seal>, GatewayError> {
            self.inner.chain_heads()
        }
        fn sealed_range(
            &self,
            w: &str,
            a: u64,
            b: u64,
        ) -> Result<Vec<(Seal, AuditRecord)>, GatewayError> {
            self.inner.sealed_range(w, a, b)
        }
        fn unsealed_count(&self) -> Result<u64, GatewayError> {
            self.inner.unsealed_count()
        }
        fn requests(&self, c: Option<&str>, s: u64) -> Result<Vec<RequestEvent>, GatewayError> {
            self.inner.requests(c, s)
        }
        fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError> {
            self.inner.alerts()
        }
        fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError> {
            self.inner.blocks()
        }
        fn ledger(&self, m: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError> {
            self.inner.ledger(m)
        }
    }

    fn writer(
        store: &FlakyStore,
        spill: &Path,
        health: &crate::metrics::AuditHealth,
    ) -> AuditWriter {
        AuditWriter::start_with(
            Box::new(store.clone()),
            WriterOptions {
                capacity: 64,
                batch: 2,
                linger_ms: 0,
                spill: Some(spill.to_path_buf()),
                health: health.clone(),
                chain: None,
            },
        )
    }

    fn ids(store: &FlakyStore) -> Vec<u64> {
        let mut v: Vec<u64> = store
            .requests(None, 0)
            .unwrap()
            .iter()
            .map(|e| e.time_ms)
            .collect();
        v.sort();
        v
    }

    /// The seal columns start where the row readers stop reading.
    #[test]
    fn column_counts_match_the_row_readers() {
        assert_eq!(column_count(REQUEST_COLS), 15);
        assert_eq!(column_count(ALERT_COLS), 7);
        assert_eq!(column_count(BLOCK_COLS), 6);
        assert_eq!(column_count(LEDGER_COLS), 7);
    }

    #[test]
    fn refused_batches_are_spilled_then_replayed_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill.jsonl");
        let store = FlakyStore::default();
        let metrics = crate::metrics::Metrics::new();
        let health = metrics.audit_health();
        let w = writer(&store, &spill, &health);
        w.record(AuditRecord::Request(ev(0, "a"))).unwrap();
        w.flush();
        assert_eq!(health.write_failures.get(), 0);
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for i in 1..6 {
            w.record(AuditRecord::Request(ev(i, "a"))).unwrap();
        }
        w.record(AuditRecord::Alert(AlertEvent {
            time_ms: 9,
            model: "m".into(),
            client: "a".into(),
            detector: "prada".into(),
            score: 0.5,
            queries: 6,
            action: "alert".into(),
        }))
        .unwrap();
        w.flush();
        assert_eq!(ids(&store), vec![0]);
        let text = std::fs::read_to_string(&spill).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert_eq!(health.spilled_events.get(), 6);
        assert_eq!(health.spill_pending.get(), 1);
        // Every refused batch was tried 1 + QUICK_RETRIES times.
        let failures = health.write_failures.get();
        assert!(
            failures >= u64::from(QUICK_RETRIES + 1) && failures.is_multiple_of(4),
            "{failures}"
        );
        let exposed = metrics.encode();
        assert!(
            exposed.contains("mamori_audit_spill_pending 1"),
            "{exposed}"
        );
        assert!(
            exposed.contains("mamori_audit_spilled_events_total 6"),
            "{exposed}"
        );
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        w.record(AuditRecord::Request(ev(6, "a"))).unwrap();
        w.flush();
        assert!(!spill.exists());
        assert_eq!(health.replayed_events.get(), 6);
        assert_eq!(health.spill_pending.get(), 0);
        assert_eq!(health.write_failures.get(), failures);
        assert_eq!(ids(&store), (0..7).collect::<Vec<_>>());
        assert_eq!(store.alerts().unwrap().len(), 1);
        w.shutdown();
    }

    #[test]
    fn a_spill_left_at_shutdown_is_replayed_by_the_next_writer_skipping_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill.jsonl");
        let store = FlakyStore::default();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let w = writer(&store, &spill, &Default::default());
        for i in 0..3 {
            w.record(AuditRecord::Request(ev(i, "a"))).unwrap();
        }
        w.shutdown();
        assert_eq!(std::fs::read_to_string(&spill).unwrap().lines().count(), 3);
        // A crash while appending leaves a torn last line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&spill)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"record\":\"request\",\"ev").unwrap();
        drop(f);
        // Still down when the next writer starts: the file stays as it is.
        let w = writer(&store, &spill, &Default::default());
        w.flush();
        assert!(spill.exists() && ids(&store).is_empty());
        w.shutdown();
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let w = writer(&store, &spill, &Default::default());
        w.flush();
        assert!(!spill.exists());
        assert_eq!(ids(&store), vec![0, 1, 2]);
        w.shutdown();
    }

    #[test]
    fn without_a_spill_file_the_writer_waits_for_the_store() {
        let store = FlakyStore::default();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let w = Arc::new(AuditWriter::start(Box::new(store.clone()), 8, 4));
        w.record(AuditRecord::Request(ev(0, "a"))).unwrap();
        let up = store.down.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            up.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        w.flush();
        t.join().unwrap();
        assert_eq!(ids(&store), vec![0]);
    }

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
            peer: None,
        }
    }

    #[test]
    fn records_written_through_an_outage_are_sealed_once_in_order() {
        use crate::audit_chain::{verify, VerifyKey};
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill.jsonl");
        let store = FlakyStore::default();
        let metrics = crate::metrics::Metrics::new();
        let health = metrics.audit_health();
        let w = AuditWriter::start_with(
            Box::new(store.clone()),
            WriterOptions {
                capacity: 64,
                batch: 2,
                linger_ms: 0,
                spill: Some(spill.clone()),
                health: health.clone(),
                chain: Some(ChainWriter::in_memory("w", [3u8; 32])),
            },
        );
        for i in 0..3 {
            w.record(AuditRecord::Request(ev(i, "a"))).unwrap();
        }
        w.flush();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for i in 3..8 {
            w.record(AuditRecord::Request(ev(i, "a"))).unwrap();
        }
        w.flush();
        assert!(spill.is_file());
        assert_eq!(health.chain_sealed.get(), 3);
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        for i in 8..10 {
            w.record(AuditRecord::Request(ev(i, "a"))).unwrap();
        }
        w.shutdown();
        assert!(!spill.exists());
        assert_eq!(health.chain_sealed.get(), 10);
        assert!(metrics.encode().contains("mamori_audit_chain_sealed 10"));
        let key = VerifyKey {
            writer: "w".into(),
            key0: hex::encode([3u8; 32]),
        };
        let rep = verify(&store, &[key], &[("w".into(), 10)]).unwrap();
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.writers[0].verified, 10);
        assert_eq!(rep.unsealed, 0);
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
            peer: None,
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
            peer: None,
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
