//! The PostgreSQL audit store: the same four event tables as the SQLite store, in a database
//! that every gateway replica writes to, so `mamori alerts`, `mamori audit export` and the
//! admin API of any replica see the events of all of them.
//!
//! Tables (created if missing): `mamori_requests`, `mamori_alerts`, `mamori_blocks`,
//! `mamori_ledger`; ids are `BIGSERIAL`, so "oldest first" is the commit order across replicas.
//! The request's input, output and scores are `JSONB` (queryable in SQL:
//! `scores->>'prada'`). One transaction per batch, like the SQLite store. A broken connection
//! (database restart, network) is reopened on the next write; the writer retries failed
//! batches ([`crate::audit::AuditWriter`]), so a database outage delays events instead of
//! losing them.
//!
//! **TLS.** Connections go through rustls: `sslmode=require` in the connection string makes
//! TLS mandatory, `sslmode=prefer` (the default) uses it when the server offers it, and
//! `sslmode=disable` never does. The server's certificate is always verified — against the
//! CA certificates of [`crate::config::AuditConfig::postgres_ca_file`] (PEM) when given, else
//! the public web PKI roots (`webpki-roots`) — and its name or IP address must match the host
//! connected to. With [`crate::config::AuditConfig::postgres_client_cert`] and `_key`, the
//! gateway also authenticates itself by certificate (PostgreSQL's `hostssl … cert`). A Unix socket (`host=/var/run/postgresql`) needs no TLS.

use crate::audit::{
    column_count, AlertEvent, AuditRecord, AuditStore, BlockEvent, LedgerEvent, RequestEvent,
    SharedState, ALERT_COLS, BLOCK_COLS, LEDGER_COLS, REQUEST_COLS,
};
use crate::audit_chain::Seal;
use crate::config::redact_password;
use crate::error::GatewayError;
use postgres::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_postgres_rustls::MakeRustlsConnect;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mamori_requests (
    id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, request_id TEXT,
    client TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
    batch BIGINT NOT NULL, input_sha256 TEXT, input JSONB, output JSONB,
    scores JSONB NOT NULL, decision TEXT NOT NULL, status INTEGER NOT NULL,
    error TEXT, latency_us BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS mamori_requests_client_time ON mamori_requests (client, time_ms);
CREATE TABLE IF NOT EXISTS mamori_alerts (
    id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, model TEXT NOT NULL,
    client TEXT NOT NULL, detector TEXT NOT NULL, score DOUBLE PRECISION NOT NULL,
    queries BIGINT NOT NULL, action TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mamori_blocks (
    id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, model TEXT NOT NULL,
    client TEXT NOT NULL, kind TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mamori_ledger (
    id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, model TEXT NOT NULL,
    client TEXT NOT NULL, watermark TEXT NOT NULL, input_sha256 TEXT NOT NULL,
    true_label BIGINT NOT NULL, given_label BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS mamori_ledger_model ON mamori_ledger (model);
ALTER TABLE mamori_requests ADD COLUMN IF NOT EXISTS writer TEXT,
    ADD COLUMN IF NOT EXISTS seq BIGINT, ADD COLUMN IF NOT EXISTS mac TEXT;
ALTER TABLE mamori_alerts ADD COLUMN IF NOT EXISTS writer TEXT,
    ADD COLUMN IF NOT EXISTS seq BIGINT, ADD COLUMN IF NOT EXISTS mac TEXT;
ALTER TABLE mamori_blocks ADD COLUMN IF NOT EXISTS writer TEXT,
    ADD COLUMN IF NOT EXISTS seq BIGINT, ADD COLUMN IF NOT EXISTS mac TEXT;
ALTER TABLE mamori_ledger ADD COLUMN IF NOT EXISTS writer TEXT,
    ADD COLUMN IF NOT EXISTS seq BIGINT, ADD COLUMN IF NOT EXISTS mac TEXT;
CREATE INDEX IF NOT EXISTS mamori_requests_chain ON mamori_requests (writer, seq);
ALTER TABLE mamori_requests ADD COLUMN IF NOT EXISTS peer TEXT;
CREATE INDEX IF NOT EXISTS mamori_alerts_chain ON mamori_alerts (writer, seq);
CREATE INDEX IF NOT EXISTS mamori_blocks_chain ON mamori_blocks (writer, seq);
CREATE INDEX IF NOT EXISTS mamori_ledger_chain ON mamori_ledger (writer, seq);
CREATE TABLE IF NOT EXISTS mamori_detector_states (
    model TEXT NOT NULL, subject TEXT NOT NULL, writer TEXT NOT NULL,
    time_ms BIGINT NOT NULL, queries BIGINT NOT NULL, snapshot BYTEA NOT NULL,
    PRIMARY KEY (model, subject));
";

/// The tables, each with the seal columns `writer`, `seq`, `mac`.
const TABLES: [&str; 4] = [
    "mamori_requests",
    "mamori_alerts",
    "mamori_blocks",
    "mamori_ledger",
];
fn request_row(r: &postgres::Row) -> Result<RequestEvent, postgres::Error> {
    let input: Option<serde_json::Value> = r.try_get(7)?;
    let scores: serde_json::Value = r.try_get(9)?;
    Ok(RequestEvent {
        time_ms: u64_of(r.try_get(0)?),
        request_id: r.try_get(1)?,
        client: r.try_get(2)?,
        key_id: r.try_get(3)?,
        model: r.try_get(4)?,
        batch: u64_of(r.try_get(5)?),
        input_sha256: r.try_get(6)?,
        input: input.and_then(|v| serde_json::from_value(v).ok()),
        output: r.try_get(8)?,
        scores: match scores {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
        decision: r.try_get(10)?,
        status: u16::try_from(r.try_get::<_, i32>(11)?).unwrap_or(0),
        error: r.try_get(12)?,
        latency_us: u64_of(r.try_get(13)?),
        peer: r.try_get(14)?,
    })
}

fn alert_row(r: &postgres::Row) -> Result<AlertEvent, postgres::Error> {
    Ok(AlertEvent {
        time_ms: u64_of(r.try_get(0)?),
        model: r.try_get(1)?,
        client: r.try_get(2)?,
        detector: r.try_get(3)?,
        score: r.try_get(4)?,
        queries: u64_of(r.try_get(5)?),
        action: r.try_get(6)?,
    })
}

fn block_row(r: &postgres::Row) -> Result<BlockEvent, postgres::Error> {
    Ok(BlockEvent {
        time_ms: u64_of(r.try_get(0)?),
        model: r.try_get(1)?,
        client: r.try_get(2)?,
        kind: r.try_get(3)?,
        by: r.try_get(4)?,
        reason: r.try_get(5)?,
    })
}

fn ledger_row(r: &postgres::Row) -> Result<LedgerEvent, postgres::Error> {
    Ok(LedgerEvent {
        time_ms: u64_of(r.try_get(0)?),
        model: r.try_get(1)?,
        client: r.try_get(2)?,
        watermark: r.try_get(3)?,
        input_sha256: r.try_get(4)?,
        true_label: u64_of(r.try_get(5)?),
        given_label: u64_of(r.try_get(6)?),
    })
}

/// The seal stored after `n` event columns.
fn seal_row(r: &postgres::Row, n: usize) -> Result<Seal, postgres::Error> {
    Ok(Seal {
        writer: r.try_get(n)?,
        seq: u64_of(r.try_get(n + 1)?),
        mac: r.try_get(n + 2)?,
    })
}

/// The PostgreSQL audit store (see the module documentation).
pub struct PostgresStore {
    url: String,
    tls: MakeRustlsConnect,
    /// `None` only while being dropped.
    conn: Mutex<Option<Conn>>,
}

/// One connection and the insert statements prepared on it.
struct Conn {
    client: Client,
    inserts: Option<Inserts>,
}

/// The prepared inserts: requests by column arrays (one statement per batch), the rarer
/// events one row at a time.
struct Inserts {
    requests: postgres::Statement,
    alert: postgres::Statement,
    block: postgres::Statement,
    ledger: postgres::Statement,
}

impl Inserts {
    fn prepare(c: &mut Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            // UNNEST keeps the arrays' order (WITH ORDINALITY, ORDER BY), so ids follow the
            // batch.
            requests: c.prepare(
                "INSERT INTO mamori_requests (time_ms, request_id, client, key_id, model, batch,
                 input_sha256, input, output, scores, decision, status, error, latency_us,
                 writer, seq, mac, peer)
                 SELECT t, rid, cl, k, m, b, h, i, o, s, d, st, er, l, w, q, mc, pe FROM UNNEST(
                   $1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
                   $7::TEXT[], $8::JSONB[], $9::JSONB[], $10::JSONB[], $11::TEXT[], $12::INT[],
                   $13::TEXT[], $14::BIGINT[], $15::TEXT[], $16::BIGINT[], $17::TEXT[],
                   $18::TEXT[])
                 WITH ORDINALITY AS u(t, rid, cl, k, m, b, h, i, o, s, d, st, er, l, w, q, mc, pe,
                                      n)
                 ORDER BY n",
            )?,
            alert: c.prepare(
                "INSERT INTO mamori_alerts (time_ms, model, client, detector, score, queries,
                 action, writer, seq, mac) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            )?,
            block: c.prepare(
                "INSERT INTO mamori_blocks (time_ms, model, client, kind, by, reason, writer,
                 seq, mac) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            )?,
            ledger: c.prepare(
                "INSERT INTO mamori_ledger (time_ms, model, client, watermark, input_sha256,
                 true_label, given_label, writer, seq, mac)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            )?,
        })
    }
}

impl Drop for PostgresStore {
    /// The synchronous client owns a small tokio runtime, which must not be dropped on an
    /// async worker thread (the gateway drops its chain there at shutdown): drop it on a
    /// thread of its own.
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = conn {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(c)).join();
            }
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &redact_password(&self.url))
            .finish()
    }
}

impl PostgresStore {
    /// Connects to `url` and creates the tables if they are missing. Errors name the database
    /// with its password hidden.
    pub fn connect(url: &str) -> Result<Self, GatewayError> {
        Self::connect_with_ca(url, None)
    }

    /// Like [`PostgresStore::connect`], verifying the server's TLS certificate against the CA
    /// certificates in the PEM file `ca_file` instead of the public web PKI roots.
    pub fn connect_with_ca(url: &str, ca_file: Option<&Path>) -> Result<Self, GatewayError> {
        Self::connect_with_tls(
            url,
            &PostgresTls {
                ca_file: ca_file.map(Path::to_path_buf),
                ..Default::default()
            },
        )
    }

    /// Like [`PostgresStore::connect`], with the TLS files of `tls`: the CA to verify the
    /// server against and, for TLS client authentication, the gateway's certificate and key.
    pub fn connect_with_tls(url: &str, tls: &PostgresTls) -> Result<Self, GatewayError> {
        let tls = tls_connector(tls)?;
        let mut client = open(url, &tls)?;
        client
            .batch_execute(SCHEMA)
            .map_err(|e| pg(url, "creating the audit tables", e))?;
        Ok(Self {
            url: url.to_string(),
            tls,
            conn: Mutex::new(Some(Conn {
                client,
                inserts: None,
            })),
        })
    }

    /// Whether the current connection is encrypted (PostgreSQL's `pg_stat_ssl`).
    pub fn uses_tls(&self) -> Result<bool, GatewayError> {
        let row = self
            .conn()?
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| pg(&self.url, "reading pg_stat_ssl", e))?;
        row.try_get(0)
            .map_err(|e| pg(&self.url, "reading pg_stat_ssl", e))
    }

    /// The connection, reopened first if it was closed (database restart, network).
    fn conn(&self) -> Result<ConnGuard<'_>, GatewayError> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.as_ref().is_none_or(|c| c.client.is_closed()) {
            *c = Some(Conn {
                client: open(&self.url, &self.tls)?,
                inserts: None,
            });
        }
        Ok(ConnGuard(c))
    }
}

/// A locked, open connection.
struct ConnGuard<'a>(std::sync::MutexGuard<'a, Option<Conn>>);

impl std::ops::Deref for ConnGuard<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.conn_ref().client
    }
}

impl std::ops::DerefMut for ConnGuard<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.conn_mut().client
    }
}

impl ConnGuard<'_> {
    fn conn_ref(&self) -> &Conn {
        self.0.as_ref().expect("ConnGuard holds an open connection")
    }
    fn conn_mut(&mut self) -> &mut Conn {
        self.0.as_mut().expect("ConnGuard holds an open connection")
    }
}

fn open(url: &str, tls: &MakeRustlsConnect) -> Result<Client, GatewayError> {
    Client::connect(url, tls.clone()).map_err(|e| pg(url, "connecting", e))
}

/// The TLS files of a PostgreSQL connection (all PEM).
#[derive(Clone, Debug, Default)]
pub struct PostgresTls {
    /// CA certificates the server's certificate is verified against (default: the web PKI
    /// roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// The gateway's client certificate (chain), for servers that authenticate clients by
    /// certificate.
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<std::path::PathBuf>,
}

impl PostgresTls {
    /// The TLS files an audit configuration names.
    pub fn of(cfg: &crate::config::AuditConfig) -> Self {
        Self {
            ca_file: cfg.postgres_ca_file.clone(),
            client_cert: cfg.postgres_client_cert.clone(),
            client_key: cfg.postgres_client_key.clone(),
        }
    }
}

/// The client certificate chain and key, or the configuration error naming the file.
fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    GatewayError,
> {
    let bad = |what: &str, p: &Path, m: String| {
        GatewayError::Config(format!("audit.postgres_client_{what} {}: {m}", p.display()))
    };
    let certs = crate::tls::read_certs("audit.postgres_client_cert", cert)?;
    let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("key", key, format!("no PEM private key ({e})")))?;
    Ok((certs, key_der))
}

/// The rustls connector: the CA certificates of `tls.ca_file` (PEM), else the web PKI roots;
/// the client certificate and key when given.
fn tls_connector(tls: &PostgresTls) -> Result<MakeRustlsConnect, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.ca_file.as_deref() {
        Some(p) => {
            for c in crate::tls::read_certs("audit.postgres_ca_file", p)? {
                roots.add(c).map_err(|e| {
                    GatewayError::Config(format!("audit.postgres_ca_file {}: {e}", p.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GatewayError::Config(format!("TLS to the audit database: {e}")))?
    .with_root_certificates(roots);
    let config = match (tls.client_cert.as_deref(), tls.client_key.as_deref()) {
        (None, None) => config.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let (certs, key_der) = client_identity(cert, key)?;
            config.with_client_auth_cert(certs, key_der).map_err(|e| {
                GatewayError::Config(format!(
                    "audit.postgres_client_cert {} and audit.postgres_client_key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        _ => {
            return Err(GatewayError::Config(
                "audit.postgres_client_cert and audit.postgres_client_key go together".into(),
            ))
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn pg(url: &str, what: &str, e: postgres::Error) -> GatewayError {
    let cause = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    GatewayError::Storage(format!(
        "audit database {}: {what}: {e}{cause}",
        redact_password(url)
    ))
}

/// A `u64` in a `BIGINT` column: the same 64 bits (as the SQLite store keeps them), so every
/// value comes back exactly through [`u64_of`] and a sealed record verifies.
fn i64_of(v: u64) -> i64 {
    v as i64
}

/// The `u64` that [`i64_of`] stored.
fn u64_of(v: i64) -> u64 {
    v as u64
}

/// A `u64` bound in a query, saturated (a bound past `i64::MAX` means "no bound").
fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_of<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl AuditStore for PostgresStore {
    fn write_sealed(
        &mut self,
        records: &[AuditRecord],
        seals: Option<&[Seal]>,
    ) -> Result<(), GatewayError> {
        if let Some(s) = seals {
            if s.len() != records.len() {
                return Err(GatewayError::Storage(format!(
                    "{} seals for {} audit records",
                    s.len(),
                    records.len()
                )));
            }
        }
        let seal_at = |i: usize| seals.map(|s| &s[i]);
        let seal_cols = |i: usize| {
            let s = seal_at(i);
            (
                s.map(|s| s.writer.as_str()),
                s.map(|s| i64_of(s.seq)),
                s.map(|s| s.mac.as_str()),
            )
        };
        let url = self.url.as_str();
        let e = |what: &'static str| move |err: postgres::Error| pg(url, what, err);
        let mut guard = self.conn()?;
        let conn = guard.conn_mut();
        if conn.inserts.is_none() {
            conn.inserts = Some(Inserts::prepare(&mut conn.client).map_err(e("preparing"))?);
        }
        let Conn { client, inserts } = conn;
        let ins = inserts.as_ref().expect("prepared above");
        let mut tx = client.transaction().map_err(e("beginning a transaction"))?;
        let (reqs, req_seals): (Vec<&RequestEvent>, Vec<_>) = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                AuditRecord::Request(q) => Some((q, seal_cols(i))),
                _ => None,
            })
            .unzip();
        if !reqs.is_empty() {
            let col = |f: &dyn Fn(&RequestEvent) -> i64| reqs.iter().map(|q| f(q)).collect();
            let time: Vec<i64> = col(&|q| i64_of(q.time_ms));
            let batch: Vec<i64> = col(&|q| i64_of(q.batch));
            let latency: Vec<i64> = col(&|q| i64_of(q.latency_us));
            let text = |f: &dyn Fn(&RequestEvent) -> &str| -> Vec<&str> {
                reqs.iter().map(|q| f(q)).collect()
            };
            let opt = |f: &dyn Fn(&RequestEvent) -> Option<&str>| -> Vec<Option<&str>> {
                reqs.iter().map(|q| f(q)).collect()
            };
            let input: Vec<Option<serde_json::Value>> =
                reqs.iter().map(|q| q.input.as_ref().map(json_of)).collect();
            let output: Vec<Option<&serde_json::Value>> =
                reqs.iter().map(|q| q.output.as_ref()).collect();
            let scores: Vec<serde_json::Value> = reqs
                .iter()
                .map(|q| serde_json::Value::Object(q.scores.clone()))
                .collect();
            let status: Vec<i32> = reqs.iter().map(|q| i32::from(q.status)).collect();
            let writer: Vec<Option<&str>> = req_seals.iter().map(|s| s.0).collect();
            let seq: Vec<Option<i64>> = req_seals.iter().map(|s| s.1).collect();
            let mac: Vec<Option<&str>> = req_seals.iter().map(|s| s.2).collect();
            tx.execute(
                &ins.requests,
                &[
                    &time,
                    &opt(&|q| q.request_id.as_deref()),
                    &text(&|q| &q.client),
                    &text(&|q| &q.key_id),
                    &text(&|q| &q.model),
                    &batch,
                    &opt(&|q| q.input_sha256.as_deref()),
                    &input,
                    &output,
                    &scores,
                    &text(&|q| &q.decision),
                    &status,
                    &opt(&|q| q.error.as_deref()),
                    &latency,
                    &writer,
                    &seq,
                    &mac,
                    &opt(&|q| q.peer.as_deref()),
                ],
            )
            .map_err(e("writing requests"))?;
        }
        for (i, r) in records.iter().enumerate() {
            let (writer, seq, mac) = seal_cols(i);
            match r {
                AuditRecord::Request(_) => {}
                AuditRecord::Alert(a) => {
                    tx.execute(
                        &ins.alert,
                        &[
                            &i64_of(a.time_ms),
                            &a.model,
                            &a.client,
                            &a.detector,
                            &a.score,
                            &i64_of(a.queries),
                            &a.action,
                            &writer,
                            &seq,
                            &mac,
                        ],
                    )
                    .map_err(e("writing an alert"))?;
                }
                AuditRecord::Block(b) => {
                    tx.execute(
                        &ins.block,
                        &[
                            &i64_of(b.time_ms),
                            &b.model,
                            &b.client,
                            &b.kind,
                            &b.by,
                            &b.reason,
                            &writer,
                            &seq,
                            &mac,
                        ],
                    )
                    .map_err(e("writing a block"))?;
                }
                AuditRecord::Ledger(l) => {
                    tx.execute(
                        &ins.ledger,
                        &[
                            &i64_of(l.time_ms),
                            &l.model,
                            &l.client,
                            &l.watermark,
                            &l.input_sha256,
                            &i64_of(l.true_label),
                            &i64_of(l.given_label),
                            &writer,
                            &seq,
                            &mac,
                        ],
                    )
                    .map_err(e("writing a ledger entry"))?;
                }
            }
        }
        tx.commit().map_err(e("committing"))
    }

    fn requests(
        &self,
        client: Option<&str>,
        since_ms: u64,
    ) -> Result<Vec<RequestEvent>, GatewayError> {
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {REQUEST_COLS} FROM mamori_requests
                     WHERE ($1::TEXT IS NULL OR client = $1) AND time_ms >= $2 ORDER BY id"
                ),
                &[&client, &bound(since_ms)],
            )
            .map_err(|e| pg(&self.url, "reading requests", e))?;
        rows.iter()
            .map(request_row)
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading requests", e))
    }

    fn alerts(&self) -> Result<Vec<AlertEvent>, GatewayError> {
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {ALERT_COLS} FROM mamori_alerts ORDER BY id"),
                &[],
            )
            .map_err(|e| pg(&self.url, "reading alerts", e))?;
        rows.iter()
            .map(alert_row)
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading alerts", e))
    }

    fn blocks(&self) -> Result<Vec<BlockEvent>, GatewayError> {
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {BLOCK_COLS} FROM mamori_blocks ORDER BY id"),
                &[],
            )
            .map_err(|e| pg(&self.url, "reading blocks", e))?;
        rows.iter()
            .map(block_row)
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading blocks", e))
    }

    fn numbered_blocks(&self, after: i64) -> Result<Vec<(i64, BlockEvent)>, GatewayError> {
        // The row number after the event columns, so `block_row` reads the same positions.
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {BLOCK_COLS}, id FROM mamori_blocks WHERE id > $1 ORDER BY id"),
                &[&after],
            )
            .map_err(|e| pg(&self.url, "reading blocks", e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, i64>(column_count(BLOCK_COLS))?,
                    block_row(r)?,
                ))
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading blocks", e))
    }

    fn ledger(&self, model: Option<&str>) -> Result<Vec<LedgerEvent>, GatewayError> {
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {LEDGER_COLS} FROM mamori_ledger
                     WHERE ($1::TEXT IS NULL OR model = $1) ORDER BY id"
                ),
                &[&model],
            )
            .map_err(|e| pg(&self.url, "reading the ledger", e))?;
        rows.iter()
            .map(ledger_row)
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading the ledger", e))
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
        let e = |err| pg(&self.url, "saving detector states", err);
        let mut guard = self.conn()?;
        let mut tx = guard.transaction().map_err(e)?;
        let st = tx
            .prepare(
                "INSERT INTO mamori_detector_states
                    (model, subject, writer, time_ms, queries, snapshot)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (model, subject) DO UPDATE SET
                    writer = EXCLUDED.writer, time_ms = EXCLUDED.time_ms,
                    queries = EXCLUDED.queries, snapshot = EXCLUDED.snapshot
                 WHERE EXCLUDED.queries >= mamori_detector_states.queries",
            )
            .map_err(e)?;
        for s in states {
            tx.execute(
                &st,
                &[
                    &model,
                    &s.subject,
                    &writer,
                    &(time_ms as i64),
                    &(s.queries as i64),
                    &s.snapshot,
                ],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    fn get_state(&self, model: &str, subject: &str) -> Result<Option<SharedState>, GatewayError> {
        let rows = self
            .conn()?
            .query(
                "SELECT queries, snapshot FROM mamori_detector_states
                 WHERE model = $1 AND subject = $2",
                &[&model, &subject],
            )
            .map_err(|e| pg(&self.url, "reading detector states", e))?;
        rows.first()
            .map(|r| {
                Ok(SharedState {
                    subject: subject.to_string(),
                    queries: u64_of(r.try_get(0)?),
                    snapshot: r.try_get(1)?,
                })
            })
            .transpose()
            .map_err(|e: postgres::Error| pg(&self.url, "reading detector states", e))
    }

    fn chain_heads(&self) -> Result<Vec<Seal>, GatewayError> {
        let union = TABLES
            .iter()
            .map(|t| format!("SELECT writer, seq, mac FROM {t} WHERE writer IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT DISTINCT ON (writer) writer, seq, mac FROM ({union}) AS c
                     ORDER BY writer, seq DESC"
                ),
                &[],
            )
            .map_err(|e| pg(&self.url, "reading the audit chain heads", e))?;
        rows.iter()
            .map(|r| seal_row(r, 0))
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| pg(&self.url, "reading the audit chain heads", e))
    }

    fn sealed_range(
        &self,
        writer: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Seal, AuditRecord)>, GatewayError> {
        let e = |err| pg(&self.url, "reading the audit chain", err);
        type Read = fn(&postgres::Row) -> Result<AuditRecord, postgres::Error>;
        // Each table, its columns, and its rows as records.
        let tables: [(&str, &str, Read); 4] = [
            ("mamori_requests", REQUEST_COLS, |r| {
                request_row(r).map(AuditRecord::Request)
            }),
            ("mamori_alerts", ALERT_COLS, |r| {
                alert_row(r).map(AuditRecord::Alert)
            }),
            ("mamori_blocks", BLOCK_COLS, |r| {
                block_row(r).map(AuditRecord::Block)
            }),
            ("mamori_ledger", LEDGER_COLS, |r| {
                ledger_row(r).map(AuditRecord::Ledger)
            }),
        ];
        let args: [&(dyn postgres::types::ToSql + Sync); 3] = [&writer, &bound(from), &bound(to)];
        let mut c = self.conn()?;
        let mut out = Vec::new();
        for (table, cols, read) in tables {
            let n = column_count(cols);
            let sql = format!(
                "SELECT {cols}, writer, seq, mac FROM {table}
                 WHERE writer = $1 AND seq >= $2 AND seq < $3 ORDER BY seq, id"
            );
            for r in c.query(&sql, &args).map_err(e)? {
                out.push((seal_row(&r, n).map_err(e)?, read(&r).map_err(e)?));
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
        let row = self
            .conn()?
            .query_one(&format!("SELECT ({sum})::BIGINT"), &[])
            .map_err(|e| pg(&self.url, "counting unsealed audit records", e))?;
        row.try_get::<_, i64>(0)
            .map(u64_of)
            .map_err(|e| pg(&self.url, "counting unsealed audit records", e))
    }
}
