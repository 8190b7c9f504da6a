//! Per-query cost of the full detector set and of each detector alone, in one process, with no
//! snapshot or restore in the loop — a profiling companion to the criterion bench
//! (`benches/detect.rs`), whose configuration and query stream it shares.
//!
//! Builds one client's history of `--history` MNIST-shaped queries (default 100,000), then
//! times `--measure` further queries (default 5,000) through the engine, and the same queries
//! through each detector's own state built on the same history. Prints a table in µs/query.
//!
//! Run: `cargo run --release -p mamori-detect --example engine_cost -- --history 100000`
//! (`--only engine` skips the per-detector states, e.g. under `perf record`; `--with a,b` keeps
//! only the named detectors, in the engine too; `--shipped` keeps the default index capacities,
//! which bound a client's memory, instead of the bench's whole-history ones; the engine's
//! resident-memory growth is printed, a client's memory at that history).

use mamori_core::{DetectorState, Observation};
use mamori_detect::{default_detectors, DetectorsConfig, Engine, PolicyConfig};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let mut history = 100_000usize;
    let mut measure = 5_000usize;
    let mut only: Option<String> = None;
    let mut with: Option<Vec<String>> = None;
    let mut prada_fastscan: Option<usize> = None;
    let mut shipped = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{a} needs a value"))
                .clone()
        };
        match a.as_str() {
            "--history" => history = value().parse().expect("--history takes a count"),
            "--measure" => measure = value().parse().expect("--measure takes a count"),
            "--only" => only = Some(value()),
            "--shipped" => shipped = true,
            "--prada-fastscan" => {
                prada_fastscan = Some(value().parse().expect("--prada-fastscan takes m"))
            }
            "--with" => with = Some(value().split(',').map(str::to_string).collect()),
            other => panic!("unknown argument {other}"),
        }
    }
    let (xs, ys, _base) = images(history + measure);
    let mut cfg = config();
    if shipped {
        let d = mamori_detect::DetectorsConfig::default();
        cfg.knn.capacity = d.knn.capacity;
        cfg.blacklight.capacity = d.blacklight.capacity;
        cfg.prada.class_capacity = d.prada.class_capacity;
    }
    if let Some(m) = prada_fastscan {
        cfg.prada.ivf.fastscan_m = m;
        cfg.prada.ivf.fastscan_rerank = 2;
    }
    let all = default_detectors(&cfg);
    let dets: Vec<_> = all
        .into_iter()
        .filter(|d| {
            with.as_ref()
                .is_none_or(|w| w.iter().any(|n| *n == d.info().name))
        })
        .collect();
    let mut rows: Vec<(String, f64)> = Vec::new();

    if only.as_deref().is_none_or(|o| o == "engine") {
        let before = rss_kib();
        let mut engine = Engine::new(dets.clone(), PolicyConfig::default());
        for i in 0..history {
            let p = probs(ys[i]);
            engine.observe("bench", None, &obs(&xs[i], &p, ys[i], i as u64 * 1000));
        }
        if let (Some(a), Some(b)) = (before, rss_kib()) {
            println!(
                "resident memory {:.0} MiB before the history, {:.0} MiB after",
                a as f64 / 1024.0,
                b as f64 / 1024.0
            );
        }
        let start = Instant::now();
        for j in 0..measure {
            let (x, i) = fresh_query(&xs, history, j);
            let p = probs(ys[i]);
            let t = (history + j) as u64 * 1000;
            std::hint::black_box(engine.observe("bench", None, &obs(&x, &p, ys[i], t)));
        }
        rows.push((
            "full set (engine + policy)".into(),
            start.elapsed().as_secs_f64() * 1e6 / measure as f64,
        ));
    }
    let mut sum = 0.0;
    for det in &dets {
        let name = det.info().name;
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut state: Box<dyn DetectorState> = det.new_state();
        for i in 0..history {
            let p = probs(ys[i]);
            state.observe(&obs(&xs[i], &p, ys[i], i as u64 * 1000));
        }
        let start = Instant::now();
        for j in 0..measure {
            let (x, i) = fresh_query(&xs, history, j);
            let p = probs(ys[i]);
            let t = (history + j) as u64 * 1000;
            std::hint::black_box(state.observe(&obs(&x, &p, ys[i], t)));
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / measure as f64;
        sum += us;
        rows.push((format!("{name} alone"), us));
    }
    if rows.len() > 2 {
        rows.push(("sum of the detectors alone".into(), sum));
    }
    println!("history {history}, {measure} measured queries");
    println!("| | µs/query |\n|---|---|");
    for (name, us) in rows {
        println!("| {name} | {us:.1} |");
    }
}

/// This process's resident set (Linux `/proc/self/status`), in KiB.
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `j`-th measured query after a history of `n` (one pixel changed: never an exact repeat).
fn fresh_query(xs: &[Vec<f32>], n: usize, j: usize) -> (Vec<f32>, usize) {
    let next = n + j;
    let i = next % xs.len();
    let mut x = xs[i].clone();
    x[(next + 1) % 784] = ((next + 1) % 251) as f32 / 251.0;
    (x, i)
}

/// MNIST training images, then shifted and noised copies (all distinct), as in the bench.
/// (The source images are returned too, so that their memory stays out of the allocator's free
/// lists while the detectors' resident size is measured.)
#[allow(clippy::type_complexity)]
fn images(n: usize) -> (Vec<Vec<f32>>, Vec<usize>, Vec<(Vec<f32>, usize)>) {
    let dir = mamori_data::resolve_data_dir(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let base: Vec<(Vec<f32>, usize)> = match mamori_data::load("mnist", &dir) {
        Ok(s) => (0..s.train.len())
            .map(|i| (s.train.x.row(i).to_vec(), s.train.y[i]))
            .collect(),
        Err(e) => {
            eprintln!("MNIST not found ({e}); using synthetic images");
            (0..10_000)
                .map(|i| ((0..784).map(|_| rng.gen::<f32>()).collect(), i % 10))
                .collect()
        }
    };
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = &base[i % base.len()];
        if i < base.len() {
            xs.push(x.clone());
        } else {
            let shift = 1 + (i / base.len()) % 3;
            let mut z = vec![0.0f32; 784];
            z[shift..].copy_from_slice(&x[..784 - shift]);
            for v in z.iter_mut() {
                *v = (*v + rng.gen_range(-0.02..0.02)).clamp(0.0, 1.0);
            }
            xs.push(z);
        }
        ys.push(*y);
    }
    (xs, ys, base)
}

/// The bench's configuration: the indexes hold the whole history.
fn config() -> DetectorsConfig {
    let mut cfg = DetectorsConfig::example_active();
    cfg.rate.max_total = 0;
    cfg.rate.max_per_window = u64::MAX / 2;
    cfg.ood.radius = vec![100.0; 10];
    cfg.knn.capacity = 1 << 17;
    cfg.blacklight.capacity = 1 << 17;
    cfg.prada.class_capacity = 1 << 15;
    cfg
}

fn probs(label: usize) -> Vec<f32> {
    let mut p = vec![0.001f32; 10];
    p[label] = 0.991;
    p
}

fn obs<'a>(input: &'a [f32], probs: &'a [f32], label: usize, time_ms: u64) -> Observation<'a> {
    Observation {
        client: "bench",
        input,
        input_shape: &[1, 28, 28],
        probs,
        label,
        time_ms,
    }
}
