//! Gateway benchmark: throughput and p50/p99 latency of
//! (a) bare in-process inference of the model,
//! (b) the gateway over loopback HTTP with the protection chain disabled,
//! (c) the gateway over loopback HTTP with the full chain,
//! (d) with `--detectors`: (c) plus mamori-detect's default detector set,
//! at batch 1 and 32, with a built-in closed-loop load generator.
//!
//! ```text
//! cargo run --release -p mamori-gateway --example gateway_bench -- [--seconds 5] [--clients 4] [--rounds 3] [--detectors] [--model PATH] [--chain-cpu] [--no-http] [--linger-ms N]
//! ```
//!
//! `--chain-cpu` adds a second table: the cost of `Chain::handle` itself, in process, without
//! HTTP, on the same JSON request body, full chain against disabled chain: CPU time per request
//! of the calling thread (the request path) and of the whole process (the audit writer's work
//! included); read from `/proc/.../schedstat`, Linux only. `--no-http` skips the HTTP table.
//!
//! Without `--model`, the model is a fixed dense MLP 784-256-10 (ReLU) on 1×28×28 inputs,
//! defined below (about 0.2 M multiply-adds per sample), so the benchmark runs before a trained
//! model exists. Results go to stdout as a Markdown table.

use mamori_core::{DatasetRef, Model, ModelCard, ModelError, Normalisation, OutputKind, Tensor};
use mamori_gateway::{
    BlockingServer, ChainBuilder, ChainMode, GatewayConfig, KeyStore, ModelSpec, SqliteStore,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fixed dense MLP 784-256-10 (ReLU).
struct Mlp {
    card: ModelCard,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

const IN: usize = 784;
const HID: usize = 256;
const OUT: usize = 10;

impl Mlp {
    fn new() -> Self {
        // Deterministic pseudo-random weights (xorshift), scaled like Glorot.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        };
        let w1 = (0..IN * HID)
            .map(|_| next() * (6.0 / (IN + HID) as f32).sqrt())
            .collect();
        let w2 = (0..HID * OUT)
            .map(|_| next() * (6.0 / (HID + OUT) as f32).sqrt())
            .collect();
        Self {
            card: ModelCard {
                name: "bench-mlp".into(),
                architecture: "mlp".into(),
                architecture_detail: serde_json::json!("784-256-10 relu"),
                input_shape: vec![1, 28, 28],
                input_dtype: "FP32".into(),
                input_range: [0.0, 1.0],
                normalisation: Normalisation::default(),
                class_names: (0..OUT).map(|i| i.to_string()).collect(),
                output_kind: OutputKind::Logits,
                dataset: DatasetRef::default(),
                test_accuracy: None,
                training_time_s: None,
                seed: Some(0),
                extra: Default::default(),
            },
            w1,
            b1: vec![0.01; HID],
            w2,
            b2: vec![0.0; OUT],
        }
    }
}

impl Model for Mlp {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut out = Vec::with_capacity(x.batch_size() * OUT);
        let mut h = vec![0f32; HID];
        for r in x.rows() {
            h.copy_from_slice(&self.b1);
            for (i, xi) in r.iter().enumerate() {
                if *xi == 0.0 {
                    continue;
                }
                let w = &self.w1[i * HID..(i + 1) * HID];
                for (hj, wj) in h.iter_mut().zip(w) {
                    *hj += xi * wj;
                }
            }
            let mut o = self.b2.clone();
            for (j, hj) in h.iter().enumerate() {
                let hj = hj.max(0.0);
                let w = &self.w2[j * OUT..(j + 1) * OUT];
                for (ok, wk) in o.iter_mut().zip(w) {
                    *ok += hj * wk;
                }
            }
            out.extend_from_slice(&o);
        }
        Ok(Tensor::new(vec![x.batch_size(), OUT], out)?)
    }
}

struct Stats {
    samples_per_s: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn summarise(mut lat_us: Vec<f64>, batch: usize, elapsed: f64, errors: u64) -> Stats {
    lat_us.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if lat_us.is_empty() {
            f64::NAN
        } else {
            lat_us[((lat_us.len() - 1) as f64 * p).round() as usize]
        }
    };
    Stats {
        samples_per_s: lat_us.len() as f64 * batch as f64 / elapsed,
        requests_per_s: lat_us.len() as f64 / elapsed,
        p50_us: q(0.50),
        p99_us: q(0.99),
        errors,
    }
}

/// Per-field median over rounds.
fn median(v: &[Stats]) -> Stats {
    let m = |f: &dyn Fn(&Stats) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    Stats {
        samples_per_s: m(&|s| s.samples_per_s),
        requests_per_s: m(&|s| s.requests_per_s),
        p50_us: m(&|s| s.p50_us),
        p99_us: m(&|s| s.p99_us),
        errors: v.iter().map(|s| s.errors).sum(),
    }
}

fn input_batch(batch: usize, card: &ModelCard) -> Tensor {
    let per = card.input_len();
    let data = (0..batch * per)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let mut shape = vec![batch];
    shape.extend_from_slice(&card.input_shape);
    Tensor::new(shape, data).expect("shape")
}

/// (a) bare in-process inference with `clients` threads.
fn bench_bare(model: Arc<dyn Model>, batch: usize, clients: usize, secs: f64) -> Stats {
    let x = Arc::new(input_batch(batch, model.card()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (m, x, stop) = (model.clone(), x.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let p = m.predict(&x).expect("predict");
                    std::hint::black_box(p);
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("thread"));
    }
    summarise(all, batch, start.elapsed().as_secs_f64(), 0)
}

/// (b)/(c) closed-loop HTTP load: `clients` concurrent connections for `secs` seconds.
fn bench_http(
    url: String,
    key: Option<String>,
    body: Vec<u8>,
    batch: usize,
    clients: usize,
    secs: f64,
) -> Stats {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .expect("client");
        // Warm-up.
        for _ in 0..20 {
            let mut r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(k) = &key {
                r = r.bearer_auth(k);
            }
            let _ = r.send().await.and_then(|r| r.error_for_status());
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if let Some(k) = &key {
                        r = r.bearer_auth(k);
                    }
                    match r.send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let b = resp.bytes().await;
                            if b.is_ok() {
                                lat.push(t.elapsed().as_secs_f64() * 1e6);
                            } else {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("task");
            all.extend(l);
            errors += e;
        }
        summarise(all, batch, start.elapsed().as_secs_f64(), errors)
    })
}

/// CPU time of one task from its `schedstat` (first field: ns on a CPU), seconds.
fn schedstat_s(path: &std::path::Path) -> Option<f64> {
    let t = std::fs::read_to_string(path).ok()?;
    Some(t.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// CPU time of the calling thread and of the whole process (every live thread), seconds;
/// `None` where `/proc` is absent.
fn cpu_s() -> Option<(f64, f64)> {
    let own = schedstat_s(std::path::Path::new("/proc/thread-self/schedstat"))?;
    let mut all = 0.0;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        all += schedstat_s(&t.ok()?.path().join("schedstat")).unwrap_or(0.0);
    }
    Some((own, all))
}

/// In-process `Chain::handle` on `body` for `secs` seconds from one thread: CPU µs per
/// request of (the calling thread, the whole process).
fn bench_chain(
    chain: &Arc<mamori_gateway::Chain>,
    model: &str,
    key: Option<&str>,
    body: &[u8],
    secs: f64,
) -> (f64, f64) {
    let req = || mamori_gateway::InferRequest {
        credential: key.map(str::to_string),
        model: model.to_string(),
        version: None,
        payload: mamori_gateway::Payload::Oip {
            body: body.to_vec(),
            binary_header_len: None,
        },
        peer: None,
    };
    for _ in 0..200 {
        chain.handle(req()).expect("warm-up request");
    }
    chain.flush_audit();
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..100 {
            std::hint::black_box(chain.handle(req()).expect("request"));
        }
        n += 100;
    }
    // The writer's work for these requests counts too.
    chain.flush_audit();
    match (cpu0, cpu_s()) {
        (Some(a), Some(b)) => ((b.0 - a.0) / n as f64 * 1e6, (b.1 - a.1) / n as f64 * 1e6),
        _ => (f64::NAN, f64::NAN),
    }
}

fn request_body(x: &Tensor) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": x.shape(), "datatype": "FP32", "data": x.data()}]
    }))
    .expect("json")
}

fn main() {
    let mut secs = 5.0;
    let mut clients = 4usize;
    let mut rounds = 3usize;
    let mut detectors = false;
    let mut chain_cpu = false;
    let mut linger_ms: Option<u64> = None;
    let mut http = true;
    let mut model_path: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds N")
            }
            "--clients" => {
                clients = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--clients N")
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--detectors" => detectors = true,
            "--chain-cpu" => chain_cpu = true,
            "--no-http" => http = false,
            "--model" => model_path = args.next().map(Into::into),
            "--linger-ms" => {
                linger_ms = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .map(Some)
                    .expect("--linger-ms N")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let model: Arc<dyn Model> = match &model_path {
        Some(p) => Arc::from(mamori_ml::load_model(p).expect("load model")),
        None => Arc::new(Mlp::new()),
    };
    let name = model.card().name.clone();
    let home = tempfile::tempdir().expect("tempdir");
    let mut cfg = GatewayConfig::default();
    if let Some(ms) = linger_ms {
        cfg.audit.linger_ms = ms;
    }
    cfg.server.max_batch = 64;
    cfg.server.max_body_bytes = 64 << 20;
    let t = cfg.tiers.get_mut("standard").expect("standard tier");
    t.rate_per_s = 1e9;
    t.burst = 1_000_000_000;
    t.daily_quota = u64::MAX / 2;

    let keys = Arc::new(KeyStore::open(home.path()).expect("keys"));
    let (_, key) = keys.create("bench", None, "standard", &[]).expect("key");
    let full = Arc::new(
        ChainBuilder::new(cfg.clone())
            .keys(keys)
            .audit_store(Box::new(SqliteStore::open_home(home.path()).expect("db")))
            .model(ModelSpec::new(model.clone(), "bench"))
            .build()
            .expect("chain"),
    );
    let bare_chain = Arc::new(
        ChainBuilder::new(cfg.clone())
            .mode(ChainMode::Disabled)
            .model(ModelSpec::new(model.clone(), "bench"))
            .build()
            .expect("chain"),
    );
    // (d): the full chain plus mamori-detect's default detector set (uncalibrated thresholds),
    // per client state, with the default alert-on-alarm policy and the exact-repeat rule, as
    // `mamori serve` runs them.
    let keys_d = Arc::new(KeyStore::in_memory());
    let (_, key_d) = keys_d.create("bench", None, "standard", &[]).expect("key");
    let mut spec_d = ModelSpec::new(model.clone(), "bench");
    spec_d.detectors = mamori_detect::default_detectors(&mamori_detect::DetectorsConfig::default());
    spec_d.skip_exact_repeats = true;
    let detected = Arc::new(
        ChainBuilder::new(cfg.clone())
            .keys(keys_d)
            .audit_store(Box::new(
                SqliteStore::open(&home.path().join("audit-d.db")).expect("db"),
            ))
            .model(spec_d)
            .build()
            .expect("chain"),
    );
    let srv_det = BlockingServer::start(detected, "127.0.0.1:0").expect("server");
    let srv_full = BlockingServer::start(full.clone(), "127.0.0.1:0").expect("server");
    let srv_bare = BlockingServer::start(bare_chain.clone(), "127.0.0.1:0").expect("server");

    println!(
        "model {name}; {clients} concurrent clients; {secs} s per cell, median of {rounds} interleaved rounds; cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if chain_cpu {
        println!();
        println!("In-process `Chain::handle` (no HTTP), one calling thread, JSON body; median of {rounds} interleaved rounds of {secs} s:");
        println!();
        println!("| batch | chain | request-thread CPU µs/request | process CPU µs/request |");
        println!("|---:|---|---:|---:|");
        for batch in [1usize, 32] {
            let body = request_body(&input_batch(batch, model.card()));
            let (mut fw, mut fc, mut bw, mut bc) = (vec![], vec![], vec![], vec![]);
            for _ in 0..rounds {
                let (w, c) = bench_chain(&bare_chain, &name, None, &body, secs);
                bw.push(w);
                bc.push(c);
                let (w, c) = bench_chain(&full, &name, Some(&key), &body, secs);
                fw.push(w);
                fc.push(c);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let (fw, fc, bw, bc) = (med(&mut fw), med(&mut fc), med(&mut bw), med(&mut bc));
            println!("| {batch} | disabled | {bw:.1} | {bc:.1} |");
            println!("| {batch} | full | {fw:.1} | {fc:.1} |");
            println!(
                "| {batch} | full − disabled | {:+.1} | {:+.1} |",
                fw - bw,
                fc - bc
            );
        }
    }
    println!();
    if !http {
        srv_full.shutdown().expect("shutdown");
        srv_det.shutdown().expect("shutdown");
        srv_bare.shutdown().expect("shutdown");
        return;
    }
    println!("| batch | configuration | samples/s | requests/s | p50 (ms) | p99 (ms) | errors |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for batch in [1usize, 32] {
        let x = input_batch(batch, model.card());
        let body = request_body(&x);
        // Rounds interleave the three configurations so that background load hits all alike;
        // each cell reports the median over rounds.
        let mut cells: Vec<Vec<Stats>> = vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            cells[0].push(bench_bare(model.clone(), batch, clients, secs));
            cells[1].push(bench_http(
                format!("{}/v2/models/{name}/infer", srv_bare.url()),
                None,
                body.clone(),
                batch,
                clients,
                secs,
            ));
            cells[2].push(bench_http(
                format!("{}/v2/models/{name}/infer", srv_full.url()),
                Some(key.clone()),
                body.clone(),
                batch,
                clients,
                secs,
            ));
            if detectors {
                cells[3].push(bench_http(
                    format!("{}/v2/models/{name}/infer", srv_det.url()),
                    Some(key_d.clone()),
                    body.clone(),
                    batch,
                    clients,
                    secs,
                ));
            }
        }
        let labels = [
            "(a) bare in-process",
            "(b) gateway, chain disabled",
            "(c) gateway, full chain",
            "(d) full chain + mamori-detect detectors",
        ];
        let med: Vec<Stats> = cells
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| median(c))
            .collect();
        for (label, s) in labels.iter().zip(&med) {
            println!(
                "| {batch} | {label} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
                s.samples_per_s,
                s.requests_per_s,
                s.p50_us / 1000.0,
                s.p99_us / 1000.0,
                s.errors
            );
        }
        let (b, c) = (&med[1], &med[2]);
        println!(
            "| {batch} | chain overhead (c vs b) | {:+.1}% | | {:+.3} | {:+.3} | |",
            (c.samples_per_s / b.samples_per_s - 1.0) * 100.0,
            (c.p50_us - b.p50_us) / 1000.0,
            (c.p99_us - b.p99_us) / 1000.0
        );
    }
    srv_full.shutdown().expect("shutdown");
    srv_det.shutdown().expect("shutdown");
    srv_bare.shutdown().expect("shutdown");
    let n = full
        .shared()
        .audit
        .with_store(|s| s.requests(None, 0).map(|r| r.len()).unwrap_or(0));
    println!();
    println!("audit events written by the full chain: {n}");
}
