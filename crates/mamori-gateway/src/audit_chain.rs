//! Tamper-evident audit log: every record the gateway writes carries a **forward-secure
//! sequential MAC** (Bellare & Yee, "Forward integrity for secure audit logs", 1997; Schneier &
//! Kelsey, "Secure audit logs to support computer forensics", ACM TISSEC 1999).
//!
//! Each gateway (a *writer*, named by a random id, so replicas sharing one PostgreSQL database
//! keep separate chains) numbers its records `0, 1, 2, …` and seals record `i` with
//! `HMAC-SHA256(Kᵢ, "mamori-audit-v1" ‖ writer ‖ i ‖ canonical(record))`, where
//! `Kᵢ₊₁ = SHA-256("mamori-audit-evolve-v1" ‖ Kᵢ)` and `K₀` is drawn at random when the writer is
//! created. The gateway keeps only the *current* key (`<home>/audit-chain/<writer>.state`), so
//! whoever takes the gateway host or its home directory at record `n` cannot forge or alter
//! records `< n` (the keys that sealed them are gone and SHA-256 cannot be inverted), and
//! whoever can write to the database but not read the home (a database administrator, an SQL
//! injection elsewhere) can forge nothing at all.
//!
//! `K₀` is written once to `<home>/audit-chain/<writer>.key0`: the **verification key**. For
//! forward security it must be moved off the gateway host (to the auditors) — while it stays
//! beside the gateway, the chain only protects against attackers of the database.
//! [`verify`] recomputes every seal from `K₀` and reports, per writer:
//!
//! - records whose seal does not match (altered after writing, or forged),
//! - missing sequence numbers (records deleted),
//! - a missing tail: the store ends before the last number the gateway sealed (read from its
//!   state file, or given by an external witness such as the `mamori_audit_chain_seq` metric
//!   scraped by Prometheus),
//! - duplicates (a batch written twice after a lost commit acknowledgement: same number, same
//!   valid seal — reported, not an alteration),
//! - and how many records carry no seal (written before the chain existed, or by an unsealed
//!   writer).
//!
//! Seals cover the record as the store gives it back: [`canonical`] is compact JSON with every
//! zero written `0` (PostgreSQL's `JSONB` has no negative zero) and integers normalised as the
//! databases keep them, so a record read from SQLite or PostgreSQL verifies exactly as it was
//! sealed.

use crate::audit::{AuditRecord, AuditStore};
use crate::error::GatewayError;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The seal of one audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The writer (gateway) that sealed it.
    pub writer: String,
    /// Its number in the writer's chain, from 0.
    pub seq: u64,
    /// `HMAC-SHA256` of the record under the writer's key of number `seq`, hex.
    pub mac: String,
}

const MAC_DOMAIN: &[u8] = b"mamori-audit-v1";
const EVOLVE_DOMAIN: &[u8] = b"mamori-audit-evolve-v1";
/// Records read per store query while verifying.
const PAGE: u64 = 4096;

/// Integers beyond ±2⁵³ are written as the float they round to: a database may hand an
/// integral float back as an integer (`JSONB` prints `1e19` as `10000000000000000000`).
const EXACT_INT: u64 = 1 << 53;

/// serde_json's compact output with the normalisations of [`canonical`].
struct Canonical;

impl serde_json::ser::Formatter for Canonical {
    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        if v == 0.0 {
            w.write_all(b"0")
        } else {
            serde_json::ser::CompactFormatter.write_f32(w, v)
        }
    }
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        if v == 0.0 {
            w.write_all(b"0")
        } else {
            serde_json::ser::CompactFormatter.write_f64(w, v)
        }
    }
    fn write_u64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: u64) -> std::io::Result<()> {
        if v > EXACT_INT {
            self.write_f64(w, v as f64)
        } else {
            serde_json::ser::CompactFormatter.write_u64(w, v)
        }
    }
    fn write_i64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: i64) -> std::io::Result<()> {
        if v.unsigned_abs() > EXACT_INT {
            self.write_f64(w, v as f64)
        } else {
            serde_json::ser::CompactFormatter.write_i64(w, v)
        }
    }
    fn write_u128<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        v: u128,
    ) -> std::io::Result<()> {
        self.write_u64(w, u64::try_from(v).unwrap_or(u64::MAX))
    }
    fn write_i128<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        v: i128,
    ) -> std::io::Result<()> {
        self.write_f64(w, v as f64)
    }
}

/// Writes the canonical form of `record` into `out`.
fn write_canonical<W: std::io::Write>(out: W, record: &AuditRecord) {
    let mut ser = serde_json::Serializer::with_formatter(out, Canonical);
    // Serialising our own types into a writer that cannot fail cannot fail.
    let _ = record.serialize(&mut ser);
}

/// The canonical byte form of a record that seals cover: its JSON, compact, with struct fields
/// in declaration order and maps by key (serde_json's map is ordered; no `preserve_order`),
/// every zero written `0` (PostgreSQL's `JSONB` has no negative zero) and integers beyond
/// ±2⁵³ written as floats — so the record as a store hands it back has the same form as when
/// it was sealed (both stores keep a `u64` column's 64 bits exactly).
pub fn canonical(record: &AuditRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(512);
    write_canonical(&mut v, record);
    v
}

/// An `io::Write` feeding a MAC.
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The next key of a chain: `SHA-256("mamori-audit-evolve-v1" ‖ key)`.
pub fn evolve(key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(EVOLVE_DOMAIN);
    h.update(key);
    h.finalize().into()
}

/// The seal's MAC of `record` as number `seq` of `writer` under `key` (that number's key).
pub fn mac(key: &[u8; 32], writer: &str, seq: u64, record: &AuditRecord) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(MAC_DOMAIN);
    m.update(&(writer.len() as u64).to_be_bytes());
    m.update(writer.as_bytes());
    m.update(&seq.to_be_bytes());
    write_canonical(MacWriter(&mut m), record);
    hex::encode(m.finalize().into_bytes())
}

/// What a gateway keeps on disk: its writer id, the next number and that number's key.
#[derive(Clone, Serialize, Deserialize)]
struct State {
    writer: String,
    next_seq: u64,
    key: String,
}

/// The verification key file (`<writer>.key0`).
#[derive(Clone, Serialize, Deserialize)]
pub struct VerifyKey {
    /// The writer it verifies.
    pub writer: String,
    /// `K₀`, hex.
    pub key0: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("writer", &self.writer)
            .field("key0", &"***")
            .finish()
    }
}

fn parse_key(hex_key: &str, origin: &Path) -> Result<[u8; 32], GatewayError> {
    let bytes = hex::decode(hex_key.trim())
        .map_err(|e| GatewayError::Config(format!("{}: key is not hex: {e}", origin.display())))?;
    bytes.try_into().map_err(|_| {
        GatewayError::Config(format!(
            "{}: key must be 32 bytes (64 hex digits)",
            origin.display()
        ))
    })
}

impl VerifyKey {
    /// Reads a `.key0` file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Self, GatewayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())))?;
        let k: Self = serde_json::from_str(&text).map_err(|e| {
            GatewayError::Config(format!(
                "{}: not an audit verification key: {e}",
                path.display()
            ))
        })?;
        parse_key(&k.key0, path)?;
        Ok(k)
    }

    /// Every `*.key0` in `dir`, sorted by writer.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, GatewayError> {
        let mut keys = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(GatewayError::Config(format!("{}: {e}", dir.display()))),
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "key0") {
                keys.push(Self::load(&e.path())?);
            }
        }
        keys.sort_by(|a, b| a.writer.cmp(&b.writer));
        Ok(keys)
    }

    fn key(&self) -> [u8; 32] {
        parse_key(&self.key0, Path::new("verification key")).unwrap_or([0; 32])
    }
}

/// The sealing side, owned by the audit writer thread.
pub struct ChainWriter {
    writer: String,
    next_seq: u64,
    key: [u8; 32],
    state_path: Option<PathBuf>,
}

impl std::fmt::Debug for ChainWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWriter")
            .field("writer", &self.writer)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Seals computed for a batch, applied by [`ChainWriter::commit`] once the batch is stored.
#[derive(Debug)]
pub struct Sealed {
    /// One seal per record, in order.
    pub seals: Vec<Seal>,
    next_seq: u64,
    key: [u8; 32],
}

fn io(path: &Path, e: std::io::Error) -> GatewayError {
    GatewayError::Storage(format!("{}: {e}", path.display()))
}

/// Writes `text` to `path` through a temporary file and a rename, readable by the owner only.
fn write_private(path: &Path, text: &str, sync: bool) -> Result<(), GatewayError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
    if sync {
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

impl ChainWriter {
    /// A chain kept in memory only (tests, in-process evaluation): starts at number 0 with
    /// `key0`.
    pub fn in_memory(writer: &str, key0: [u8; 32]) -> Self {
        Self {
            writer: writer.to_string(),
            next_seq: 0,
            key: key0,
            state_path: None,
        }
    }

    /// Opens the chain of the gateway whose chain directory is `dir` (`<home>/audit-chain`),
    /// creating a new writer — a random id and `K₀`, written to `<writer>.key0` — when there
    /// is none, and reconciles it with what `store` holds:
    ///
    /// - the store is ahead of the state file (a crash after a commit, before the state was
    ///   saved): the key is evolved up to the store's last number;
    /// - the store is behind (records the gateway sealed are missing: deleted, or lost with
    ///   the database): logged as an error and continued after the last number sealed, so
    ///   [`verify`] reports the gap.
    pub fn open(dir: &Path, store: &dyn AuditStore) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut states = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
            if e.path().extension().is_some_and(|x| x == "state") {
                states.push(e.path());
            }
        }
        states.sort();
        let (path, state) = match states.as_slice() {
            [] => {
                let writer = format!("gw-{}", hex::encode(rand::random::<[u8; 8]>()));
                let key0: [u8; 32] = rand::random();
                let key_path = dir.join(format!("{writer}.key0"));
                let vk = VerifyKey {
                    writer: writer.clone(),
                    key0: hex::encode(key0),
                };
                write_private(
                    &key_path,
                    &serde_json::to_string_pretty(&vk).unwrap_or_default(),
                    true,
                )?;
                tracing::warn!(
                    "audit chain: new writer {writer}; its verification key is {} — move it off \
                     this host (keep it with the auditors) so that a compromise of the gateway \
                     cannot rewrite the past",
                    key_path.display()
                );
                let state = State {
                    writer: writer.clone(),
                    next_seq: 0,
                    key: hex::encode(key0),
                };
                let path = dir.join(format!("{writer}.state"));
                write_private(
                    &path,
                    &serde_json::to_string(&state).unwrap_or_default(),
                    true,
                )?;
                (path, state)
            }
            [one] => {
                let text = std::fs::read_to_string(one).map_err(|e| io(one, e))?;
                let state: State = serde_json::from_str(&text).map_err(|e| {
                    GatewayError::Config(format!(
                        "{}: not an audit chain state: {e} (move it away to start a new writer)",
                        one.display()
                    ))
                })?;
                (one.clone(), state)
            }
            many => {
                return Err(GatewayError::Config(format!(
                    "{}: {} audit chain states ({}); one gateway home seals one chain",
                    dir.display(),
                    many.len(),
                    many.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let mut key = parse_key(&state.key, &path)?;
        let mut next_seq = state.next_seq;
        let head = store
            .chain_heads()?
            .into_iter()
            .find(|s| s.writer == state.writer)
            .map(|s| s.seq + 1)
            .unwrap_or(0);
        if head > next_seq {
            for _ in next_seq..head {
                key = evolve(&key);
            }
            tracing::info!(
                "audit chain {}: state file behind the store ({} → {head}), key evolved",
                state.writer,
                next_seq
            );
            next_seq = head;
        } else if head < next_seq {
            tracing::error!(
                "audit chain {}: the store ends at number {} but this gateway sealed up to {}: \
                 records are missing (`mamori audit verify` lists them)",
                state.writer,
                head as i64 - 1,
                next_seq - 1
            );
        }
        let mut w = Self {
            writer: state.writer,
            next_seq,
            key,
            state_path: Some(path),
        };
        w.save()?;
        Ok(w)
    }

    /// The writer id.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The number the next record gets (= how many records this writer has sealed).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seals `records` as the next numbers, without advancing the chain.
    pub fn seal(&self, records: &[AuditRecord]) -> Sealed {
        let mut key = self.key;
        let mut seq = self.next_seq;
        let mut seals = Vec::with_capacity(records.len());
        for r in records {
            seals.push(Seal {
                writer: self.writer.clone(),
                seq,
                mac: mac(&key, &self.writer, seq, r),
            });
            key = evolve(&key);
            seq += 1;
        }
        Sealed {
            seals,
            next_seq: seq,
            key,
        }
    }

    /// Advances the chain past a batch the store accepted and saves the state (the old key is
    /// overwritten: forward security).
    pub fn commit(&mut self, sealed: Sealed) {
        self.next_seq = sealed.next_seq;
        self.key = sealed.key;
        if let Err(e) = self.save() {
            // The store is ahead of the file now; the next start evolves the key forward.
            tracing::error!("audit chain state: {e}");
        }
    }

    fn save(&mut self) -> Result<(), GatewayError> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let state = State {
            writer: self.writer.clone(),
            next_seq: self.next_seq,
            key: hex::encode(self.key),
        };
        // No fsync per batch: an older state file is harmless (the key evolves forward from
        // the store's head at the next start).
        write_private(
            path,
            &serde_json::to_string(&state).unwrap_or_default(),
            false,
        )
    }
}

/// The sealed-through number of the gateway whose chain directory is `dir`, per writer (from
/// its state file): what [`verify`] expects the store to reach.
pub fn sealed_through(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "state") {
                if let Some(s) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| serde_json::from_str::<State>(&t).ok())
                {
                    out.push((s.writer, s.next_seq));
                }
            }
        }
    }
    out
}

/// One record that failed verification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BadRecord {
    /// Its number.
    pub seq: u64,
    /// Its kind (`request`, `alert`, `block`, `ledger`).
    pub kind: String,
    /// Its time (ms since the epoch) as stored.
    pub time_ms: u64,
}

/// The verification of one writer's chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriterReport {
    /// The writer.
    pub writer: String,
    /// Records found with this writer's seal.
    pub records: u64,
    /// Records whose seal verified.
    pub verified: u64,
    /// Records whose seal does not match: altered or forged.
    pub altered: Vec<BadRecord>,
    /// Missing numbers, as `[first, last]` ranges: deleted records.
    pub missing: Vec<[u64; 2]>,
    /// The number the store should reach (the gateway's state file or `--expect`), if known.
    pub expected_next: Option<u64>,
    /// Records numbered past the last one in the store that the gateway sealed: a deleted tail.
    pub missing_tail: Option<[u64; 2]>,
    /// Records stored twice with the same valid seal (a retried batch; not an alteration).
    pub duplicates: u64,
    /// Whether this chain is intact.
    pub intact: bool,
}

/// The verification of a whole audit store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainReport {
    /// One report per writer with a verification key.
    pub writers: Vec<WriterReport>,
    /// Writers found in the store without a verification key (not verified).
    pub unverified_writers: Vec<String>,
    /// Records without a seal (written before the chain existed, or unsealed).
    pub unsealed: u64,
    /// Whether every verified chain is intact.
    pub intact: bool,
}

fn kind(r: &AuditRecord) -> &'static str {
    match r {
        AuditRecord::Request(_) => "request",
        AuditRecord::Alert(_) => "alert",
        AuditRecord::Block(_) => "block",
        AuditRecord::Ledger(_) => "ledger",
    }
}

fn time_of(r: &AuditRecord) -> u64 {
    match r {
        AuditRecord::Request(e) => e.time_ms,
        AuditRecord::Alert(e) => e.time_ms,
        AuditRecord::Block(e) => e.time_ms,
        AuditRecord::Ledger(e) => e.time_ms,
    }
}

/// Verifies every chain of `store` that a key of `keys` opens; `expected` gives, per writer,
/// the number the store should reach (see [`WriterReport::missing_tail`]).
pub fn verify(
    store: &dyn AuditStore,
    keys: &[VerifyKey],
    expected: &[(String, u64)],
) -> Result<ChainReport, GatewayError> {
    let heads = store.chain_heads()?;
    let mut writers = Vec::new();
    for k in keys {
        let head = heads
            .iter()
            .find(|h| h.writer == k.writer)
            .map(|h| h.seq + 1)
            .unwrap_or(0);
        let expected_next = expected
            .iter()
            .filter(|(w, _)| *w == k.writer)
            .map(|(_, n)| *n)
            .max();
        writers.push(verify_writer(store, k, head, expected_next)?);
    }
    let unverified_writers: Vec<String> = heads
        .iter()
        .filter(|h| !keys.iter().any(|k| k.writer == h.writer))
        .map(|h| h.writer.clone())
        .collect();
    let intact = writers.iter().all(|w| w.intact);
    Ok(ChainReport {
        writers,
        unverified_writers,
        unsealed: store.unsealed_count()?,
        intact,
    })
}

fn verify_writer(
    store: &dyn AuditStore,
    k: &VerifyKey,
    head: u64,
    expected_next: Option<u64>,
) -> Result<WriterReport, GatewayError> {
    let mut rep = WriterReport {
        writer: k.writer.clone(),
        records: 0,
        verified: 0,
        altered: Vec::new(),
        missing: Vec::new(),
        expected_next,
        missing_tail: None,
        duplicates: 0,
        intact: true,
    };
    let mut key = k.key();
    let mut key_seq = 0u64;
    // The next number not yet seen.
    let mut next = 0u64;
    let mut from = 0u64;
    while from < head {
        let to = from.saturating_add(PAGE).min(head);
        let page = store.sealed_range(&k.writer, from, to)?;
        for (seal, rec) in page {
            rep.records += 1;
            if seal.seq < next {
                // A second copy of a number already seen (pages come sorted by number, so it
                // follows the first copy and the current key is its key).
                let key_of = if seal.seq == key_seq {
                    key
                } else {
                    key_at(&k.key(), seal.seq)
                };
                if mac(&key_of, &k.writer, seal.seq, &rec) == seal.mac {
                    rep.duplicates += 1;
                } else {
                    rep.altered.push(BadRecord {
                        seq: seal.seq,
                        kind: kind(&rec).into(),
                        time_ms: time_of(&rec),
                    });
                }
                continue;
            }
            if seal.seq > next {
                rep.missing.push([next, seal.seq - 1]);
            }
            while key_seq < seal.seq {
                key = evolve(&key);
                key_seq += 1;
            }
            if mac(&key, &k.writer, seal.seq, &rec) == seal.mac {
                rep.verified += 1;
            } else {
                rep.altered.push(BadRecord {
                    seq: seal.seq,
                    kind: kind(&rec).into(),
                    time_ms: time_of(&rec),
                });
            }
            next = seal.seq + 1;
        }
        from = to;
    }
    if let Some(e) = expected_next {
        if e > next {
            rep.missing_tail = Some([next, e - 1]);
        }
    }
    rep.intact = rep.altered.is_empty() && rep.missing.is_empty() && rep.missing_tail.is_none();
    Ok(rep)
}

/// The key of number `seq`, from `key0`.
fn key_at(key0: &[u8; 32], seq: u64) -> [u8; 32] {
    let mut k = *key0;
    for _ in 0..seq {
        k = evolve(&k);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AlertEvent, LedgerEvent, RequestEvent, SqliteStore};

    fn req(i: u64) -> AuditRecord {
        let mut scores = serde_json::Map::new();
        scores.insert("prada".into(), serde_json::json!(0.25 + i as f64));
        scores.insert("knn".into(), serde_json::json!(1e-7));
        AuditRecord::Request(RequestEvent {
            time_ms: 1_000 + i,
            request_id: Some(format!("r{i}")),
            client: "alice".into(),
            key_id: "k1".into(),
            model: "m".into(),
            batch: 1,
            input_sha256: Some("ab".repeat(32)),
            // A negative zero, a tiny and an inexact value: the canonical form must survive
            // the stores' number handling.
            input: Some(vec![-0.0, 1e-7, 0.1, i as f32]),
            output: Some(
                serde_json::json!([{"probabilities": [0.1f32 as f64, 0.9, -0.0]},
                                             {"big": 1e19}]),
            ),
            scores,
            decision: "allow".into(),
            status: 200,
            error: None,
            latency_us: if i == 2 { u64::MAX } else { 120 },
            peer: None,
        })
    }

    fn records(n: u64) -> Vec<AuditRecord> {
        (0..n)
            .map(|i| match i % 5 {
                3 => AuditRecord::Alert(AlertEvent {
                    time_ms: 1_000 + i,
                    model: "m".into(),
                    client: "alice".into(),
                    detector: "prada".into(),
                    score: 0.93,
                    queries: i,
                    action: "alert".into(),
                }),
                4 => AuditRecord::Ledger(LedgerEvent {
                    time_ms: 1_000 + i,
                    model: "m".into(),
                    client: "alice".into(),
                    watermark: "dawn".into(),
                    input_sha256: "cd".repeat(32),
                    true_label: 1,
                    given_label: 7,
                }),
                _ => req(i),
            })
            .collect()
    }

    fn key(writer: &str, k0: [u8; 32]) -> VerifyKey {
        VerifyKey {
            writer: writer.into(),
            key0: hex::encode(k0),
        }
    }

    /// A SQLite store holding `n` records sealed by writer `w` in batches of 7.
    fn sealed_sqlite(dir: &Path, n: u64) -> (SqliteStore, [u8; 32]) {
        let mut store = SqliteStore::open(&dir.join("audit.db")).unwrap();
        let k0 = [7u8; 32];
        let mut chain = ChainWriter::in_memory("w", k0);
        let recs = records(n);
        for chunk in recs.chunks(7) {
            let sealed = chain.seal(chunk);
            store.write_sealed(chunk, Some(&sealed.seals)).unwrap();
            chain.commit(sealed);
        }
        assert_eq!(chain.next_seq(), n);
        (store, k0)
    }

    fn sql(dir: &Path, stmt: &str) {
        let c = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
        assert!(c.execute(stmt, []).unwrap() >= 1, "{stmt} changed nothing");
    }

    #[test]
    fn an_untouched_log_verifies_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let (store, k0) = sealed_sqlite(dir.path(), 40);
        let rep = verify(&store, &[key("w", k0)], &[("w".into(), 40)]).unwrap();
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.writers[0].records, 40);
        assert_eq!(rep.writers[0].verified, 40);
        assert_eq!(rep.unsealed, 0);
        // The wrong key verifies nothing.
        let rep = verify(&store, &[key("w", [8u8; 32])], &[]).unwrap();
        assert!(!rep.intact);
        assert_eq!(rep.writers[0].altered.len(), 40);
    }

    #[test]
    fn every_kind_of_tampering_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, k0) = sealed_sqlite(dir.path(), 40);
        let d = dir.path();
        // Altered: a request's decision, an alert's score, a ledger entry's label.
        sql(d, "UPDATE requests SET decision = 'block' WHERE seq = 1");
        sql(d, "UPDATE alerts SET score = 0.1 WHERE seq = 8");
        sql(d, "UPDATE ledger SET given_label = 1 WHERE seq = 14");
        // Reordered: two requests swap numbers (and seals stay with them).
        sql(
            d,
            "UPDATE requests SET seq = CASE seq WHEN 5 THEN 6 ELSE 5 END WHERE seq IN (5, 6)",
        );
        // Deleted: one alert and a run of requests.
        sql(d, "DELETE FROM alerts WHERE seq = 18");
        sql(d, "DELETE FROM requests WHERE seq IN (20, 21, 22)");
        // Forged: a row claiming the writer with a made-up seal.
        sql(
            d,
            "INSERT INTO blocks (time_ms, model, client, kind, by, reason, writer, seq, mac)
             VALUES (5, 'm', 'mallory', 'unblock', 'admin', 'x', 'w', 23, '00')",
        );
        // Truncated: the last five records.
        sql(d, "DELETE FROM requests WHERE seq >= 35");
        sql(d, "DELETE FROM alerts WHERE seq >= 35");
        sql(d, "DELETE FROM ledger WHERE seq >= 35");
        let rep = verify(&store, &[key("w", k0)], &[("w".into(), 40)]).unwrap();
        let w = &rep.writers[0];
        assert!(!rep.intact && !w.intact);
        let altered: Vec<u64> = w.altered.iter().map(|b| b.seq).collect();
        assert_eq!(altered, vec![1, 5, 6, 8, 14, 23], "{w:?}");
        assert_eq!(w.missing, vec![[18, 18], [20, 22]]);
        assert_eq!(w.missing_tail, Some([35, 39]));
        // Without an outside count, a deleted tail is invisible to the chain alone.
        let rep = verify(&store, &[key("w", k0)], &[]).unwrap();
        assert_eq!(rep.writers[0].missing_tail, None);
    }

    #[test]
    fn a_batch_stored_twice_is_a_duplicate_not_an_alteration() {
        let dir = tempfile::tempdir().unwrap();
        let (store, k0) = sealed_sqlite(dir.path(), 10);
        sql(
            dir.path(),
            "INSERT INTO requests (time_ms, request_id, client, key_id, model, batch, input_sha256,
             input, output, scores, decision, status, error, latency_us, writer, seq, mac)
             SELECT time_ms, request_id, client, key_id, model, batch, input_sha256, input, output,
             scores, decision, status, error, latency_us, writer, seq, mac FROM requests
             WHERE seq = 2",
        );
        let rep = verify(&store, &[key("w", k0)], &[]).unwrap();
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.writers[0].duplicates, 1);
        // A second copy with different content is not a duplicate.
        sql(
            dir.path(),
            "UPDATE requests SET client = 'bob' WHERE id = (SELECT MAX(id) FROM requests)",
        );
        let rep = verify(&store, &[key("w", k0)], &[]).unwrap();
        assert!(!rep.intact);
        assert_eq!(rep.writers[0].altered[0].seq, 2);
    }

    #[test]
    fn unsealed_rows_and_unknown_writers_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, k0) = sealed_sqlite(dir.path(), 5);
        store.write_batch(&records(3)).unwrap();
        let mut other = ChainWriter::in_memory("other", [9u8; 32]);
        let s = other.seal(&records(2));
        store.write_sealed(&records(2), Some(&s.seals)).unwrap();
        other.commit(s);
        let rep = verify(&store, &[key("w", k0)], &[]).unwrap();
        assert!(rep.intact);
        assert_eq!(rep.unsealed, 3);
        assert_eq!(rep.unverified_writers, vec!["other".to_string()]);
    }

    #[test]
    fn the_gateway_keeps_only_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let chain_dir = dir.path().join("audit-chain");
        let mut store = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
        let mut chain = ChainWriter::open(&chain_dir, &store).unwrap();
        let writer = chain.writer().to_string();
        let k0 = VerifyKey::load(&chain_dir.join(format!("{writer}.key0"))).unwrap();
        let recs = records(12);
        let sealed = chain.seal(&recs);
        store.write_sealed(&recs, Some(&sealed.seals)).unwrap();
        chain.commit(sealed);
        let state: State = serde_json::from_str(
            &std::fs::read_to_string(chain_dir.join(format!("{writer}.state"))).unwrap(),
        )
        .unwrap();
        assert_eq!(state.next_seq, 12);
        assert_ne!(state.key, k0.key0);
        // The key on disk cannot re-seal any record it has already passed.
        let current = parse_key(&state.key, Path::new("state")).unwrap();
        for (seal, rec) in store.sealed_range(&writer, 0, 12).unwrap() {
            assert_ne!(mac(&current, &writer, seal.seq, &rec), seal.mac);
        }
        assert_eq!(key_at(&k0.key(), 12), current);
        // State files and keys are private to the owner.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in std::fs::read_dir(&chain_dir).unwrap().flatten() {
                let mode = f.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.path().display());
            }
        }
        let rep = verify(&store, &[k0], &sealed_through(&chain_dir)).unwrap();
        assert!(rep.intact, "{rep:?}");
    }

    #[test]
    fn reopening_reconciles_the_state_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let chain_dir = dir.path().join("audit-chain");
        let db = dir.path().join("audit.db");
        let mut store = SqliteStore::open(&db).unwrap();
        let mut chain = ChainWriter::open(&chain_dir, &store).unwrap();
        let writer = chain.writer().to_string();
        let state_path = chain_dir.join(format!("{writer}.state"));
        let first = records(6);
        let s = chain.seal(&first);
        store.write_sealed(&first, Some(&s.seals)).unwrap();
        chain.commit(s);
        // A crash after the commit, before the state was saved: the file is one batch behind.
        let old_state = std::fs::read_to_string(&state_path).unwrap();
        let second = records(4);
        let s = chain.seal(&second);
        store.write_sealed(&second, Some(&s.seals)).unwrap();
        chain.commit(s);
        std::fs::write(&state_path, old_state).unwrap();
        let mut chain = ChainWriter::open(&chain_dir, &store).unwrap();
        assert_eq!(chain.writer(), writer);
        assert_eq!(chain.next_seq(), 10);
        let third = records(3);
        let s = chain.seal(&third);
        store.write_sealed(&third, Some(&s.seals)).unwrap();
        chain.commit(s);
        let keys = VerifyKey::load_dir(&chain_dir).unwrap();
        let rep = verify(&store, &keys, &sealed_through(&chain_dir)).unwrap();
        assert!(rep.intact, "{rep:?}");
        assert_eq!(rep.writers[0].verified, 13);
        // The store loses its last records: the reopened chain keeps counting, and the
        // verification names the hole.
        drop(store);
        sql(dir.path(), "DELETE FROM requests WHERE seq >= 11");
        let mut store = SqliteStore::open(&db).unwrap();
        let mut chain = ChainWriter::open(&chain_dir, &store).unwrap();
        assert_eq!(chain.next_seq(), 13);
        let s = chain.seal(&records(1));
        store.write_sealed(&records(1), Some(&s.seals)).unwrap();
        chain.commit(s);
        let rep = verify(&store, &keys, &sealed_through(&chain_dir)).unwrap();
        assert_eq!(rep.writers[0].missing, vec![[11, 12]]);
        assert!(!rep.intact);
    }

    #[test]
    fn bad_key_and_state_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.key0");
        std::fs::write(&p, "not json").unwrap();
        let e = VerifyKey::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("w.key0") && e.contains("not an audit verification key"),
            "{e}"
        );
        std::fs::write(&p, r#"{"writer":"w","key0":"abcd"}"#).unwrap();
        let e = VerifyKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        std::fs::write(&p, r#"{"writer":"w","key0":"zz"}"#).unwrap();
        let e = VerifyKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
        let e = VerifyKey::load(&dir.path().join("missing.key0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key0"), "{e}");

        let chain_dir = dir.path().join("chain");
        std::fs::create_dir_all(&chain_dir).unwrap();
        std::fs::write(chain_dir.join("gw-1.state"), "{").unwrap();
        let store = crate::audit::MemoryStore::default();
        let e = ChainWriter::open(&chain_dir, &store)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gw-1.state") && e.contains("not an audit chain state"),
            "{e}"
        );
        std::fs::write(chain_dir.join("gw-2.state"), "{").unwrap();
        let e = ChainWriter::open(&chain_dir, &store)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 audit chain states"), "{e}");
    }

    #[test]
    fn the_canonical_form_ignores_what_the_stores_cannot_keep() {
        let a = req(1);
        let mut b = a.clone();
        if let AuditRecord::Request(e) = &mut b {
            e.input = Some(vec![0.0, 1e-7, 0.1, 1.0]);
            // JSONB's order of keys and its positive zero.
            e.output = Some(
                serde_json::json!([{"probabilities": [0.1f32 as f64, 0.9, 0.0]},
                                               {"big": 1e19}]),
            );
        }
        assert_eq!(canonical(&a), canonical(&b));
        if let AuditRecord::Request(e) = &mut b {
            e.input = Some(vec![0.0, 1e-7, 0.1, 1.5]);
        }
        assert_ne!(canonical(&a), canonical(&b));
        // An integral float a database hands back as an integer.
        let (mut c, mut d) = (a.clone(), a.clone());
        if let (AuditRecord::Request(x), AuditRecord::Request(y)) = (&mut c, &mut d) {
            x.output = Some(serde_json::json!({"v": 1e19, "w": 5}));
            y.output = Some(serde_json::json!({"v": 10_000_000_000_000_000_000u64, "w": 5}));
        }
        assert_eq!(canonical(&c), canonical(&d));
        // The MAC covers exactly the canonical form.
        assert_eq!(mac(&[1; 32], "w", 3, &c), mac(&[1; 32], "w", 3, &d));
        assert_ne!(mac(&[1; 32], "w", 3, &c), mac(&[1; 32], "w", 4, &c));
        assert_ne!(mac(&[1; 32], "w", 3, &c), mac(&[1; 32], "v", 3, &c));
    }
}
