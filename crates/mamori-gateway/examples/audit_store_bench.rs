//! Audit store benchmark: how many events per second the audit writer sustains into SQLite
//! (the default, `<home>/audit.db`, WAL) and into PostgreSQL (the shared store of gateway
//! replicas), at 1, 32 and 512 events per transaction (512 is the default `audit.batch`), and
//! the latency of one `write_batch`; at 32 and 512, with and without the tamper-evident chain
//! (`audit_chain`: one HMAC-SHA-256 and one SHA-256 per event, and three more columns), the
//! baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p mamori-gateway --example audit_store_bench -- [--events 20000] [--postgres-url URL]
//! ```
//!
//! Without `--postgres-url`, a throwaway PostgreSQL is started (`TempPostgres`, the `pgserver`
//! wheel or `MAMORI_PG_BINDIR`) with `fsync = on` and the default `synchronous_commit = on`:
//! each commit waits for its WAL flush. SQLite runs as the gateway runs it (WAL,
//! `synchronous = NORMAL`: commits wait for no flush; the WAL is synced at checkpoints), so
//! PostgreSQL does more per commit here. The events are the gateway's request events with a
//! 10-class output and seven detector scores. Results: a Markdown table on stdout.

use mamori_core::testing::TempPostgres;
use mamori_gateway::audit::{AuditRecord, AuditStore, AuditWriter, RequestEvent, WriterOptions};
use mamori_gateway::audit_chain::ChainWriter;
use mamori_gateway::{PostgresStore, SqliteStore};
use std::time::Instant;

/// Opens a fresh store (the argument names an SQLite file; PostgreSQL ignores it).
type OpenStore<'a> = dyn Fn(&str) -> Box<dyn AuditStore> + 'a;

fn event(i: u64) -> AuditRecord {
    let mut scores = serde_json::Map::new();
    for (k, d) in [
        "prada",
        "knn",
        "blacklight",
        "ood",
        "hoda",
        "rate",
        "synthetic",
    ]
    .iter()
    .enumerate()
    {
        scores.insert(
            (*d).into(),
            serde_json::json!(((i * 31 + k as u64) % 1000) as f64 / 997.0),
        );
    }
    let probs: Vec<f64> = (0..10).map(|c| ((i + c) % 10) as f64 / 45.0).collect();
    AuditRecord::Request(RequestEvent {
        time_ms: 1_700_000_000_000 + i,
        request_id: Some(format!("req-{i}")),
        client: format!("client-{}", i % 50),
        key_id: format!("key-{}", i % 50),
        model: "fashion-mnist-cnn".into(),
        batch: 1,
        input_sha256: Some(format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        input: None,
        output: Some(serde_json::json!({"label": [i % 10], "probabilities": [probs]})),
        scores,
        decision: "pass".into(),
        status: 200,
        error: None,
        latency_us: 900 + i % 200,
        peer: Some("198.51.100.7".into()),
    })
}

/// Events per second through the writer, one producer, `n` events, `batch` per transaction,
/// sealed into a chain when `sealed`.
fn throughput(store: Box<dyn AuditStore>, n: u64, batch: usize, sealed: bool) -> f64 {
    let w = AuditWriter::start_with(
        store,
        WriterOptions {
            capacity: 10_000,
            batch,
            linger_ms: 0,
            spill: None,
            health: Default::default(),
            chain: sealed.then(|| ChainWriter::in_memory("bench", [5; 32])),
        },
    );
    let t = Instant::now();
    for i in 0..n {
        w.record(event(i)).expect("record");
    }
    w.flush();
    let s = t.elapsed().as_secs_f64();
    w.shutdown();
    n as f64 / s
}

/// p50 and p99 (ms) of writing `batch` events, `reps` times (sealing included when `sealed`).
fn batch_latency(
    store: &mut dyn AuditStore,
    batch: usize,
    reps: usize,
    sealed: bool,
) -> (f64, f64) {
    let mut chain = ChainWriter::in_memory("bench-latency", [6; 32]);
    let mut ms: Vec<f64> = (0..reps)
        .map(|r| {
            let recs: Vec<AuditRecord> = (0..batch as u64)
                .map(|i| event(1_000_000 + (r * batch) as u64 + i))
                .collect();
            let t = Instant::now();
            if sealed {
                let s = chain.seal(&recs);
                store
                    .write_sealed(&recs, Some(&s.seals))
                    .expect("write_sealed");
                chain.commit(s);
            } else {
                store.write_batch(&recs).expect("write_batch");
            }
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let n: u64 = arg("--events").map_or(20_000, |v| v.parse().expect("--events N"));
    let (_pg, url) = match arg("--postgres-url") {
        Some(u) => (None, u),
        None => {
            let bindir = mamori_core::testing::postgres_bindir()
                .expect("no PostgreSQL: pip install pgserver, or pass --postgres-url");
            let pg = TempPostgres::start_with(&bindir, true).expect("starting PostgreSQL");
            let url = pg.url();
            (Some(pg), url)
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = |name: &str| -> Box<dyn AuditStore> {
        Box::new(SqliteStore::open(&dir.path().join(name)).expect("sqlite"))
    };
    let postgres =
        || -> Box<dyn AuditStore> { Box::new(PostgresStore::connect(&url).expect("postgres")) };
    println!("{n} request events per run; one producer thread; writer thread as in the gateway\n");
    let recs: Vec<AuditRecord> = (0..n).map(event).collect();
    let chain = ChainWriter::in_memory("bench-seal", [4; 32]);
    let t = Instant::now();
    let sealed = chain.seal(&recs);
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "sealing alone (canonical JSON, HMAC-SHA-256, key evolution): {per:.2} µs per event ({} seals)\n",
        sealed.seals.len()
    );
    println!("| store | events / transaction | sealed | events/s | write p50 / p99 (ms) |");
    println!("|---|---|---|---|---|");
    for batch in [1usize, 32, 512] {
        let runs = if batch == 1 { n / 10 } else { n };
        let stores: [(&str, &OpenStore); 2] = [
            ("SQLite (WAL, NORMAL)", &sqlite),
            ("PostgreSQL (fsync on)", &|_| postgres()),
        ];
        for (name, open) in stores {
            for sealed in [false, true] {
                if sealed && batch == 1 {
                    continue;
                }
                let tag = if sealed { "s" } else { "u" };
                let rate = throughput(open(&format!("t{batch}{tag}.db")), runs, batch, sealed);
                let mut s = open(&format!("l{batch}{tag}.db"));
                let reps = if batch == 512 { 40 } else { 200 };
                let (p50, p99) = batch_latency(s.as_mut(), batch, reps, sealed);
                let yes = if sealed { "yes" } else { "no" };
                println!("| {name} | {batch} | {yes} | {rate:.0} | {p50:.2} / {p99:.2} |");
            }
        }
    }
}
