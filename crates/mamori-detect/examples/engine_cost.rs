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
//! resident-memory growth is printed, a client's memory at that history; `--prada-probe`,
//! `--prada-candidates` and `--prada-fastscan m` change PRADA's index search).

use mamori_core::DetectorState;
use mamori_detect::{default_detectors, Engine, PolicyConfig};
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

use common::{fresh_query, obs, probs, shipped_capacity_config, stream, whole_history_config};

fn main() {
    let mut history = 100_000usize;
    let mut measure = 5_000usize;
    let mut only: Option<String> = None;
    let mut with: Option<Vec<String>> = None;
    let mut prada_fastscan: Option<usize> = None;
    let mut prada_probe: Option<usize> = None;
    let mut prada_candidates: Option<usize> = None;
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
            "--prada-probe" => {
                prada_probe = Some(value().parse().expect("--prada-probe takes a cell count"))
            }
            "--prada-candidates" => {
                prada_candidates = Some(value().parse().expect("--prada-candidates takes a count"))
            }
            "--with" => with = Some(value().split(',').map(str::to_string).collect()),
            other => panic!("unknown argument {other}"),
        }
    }
    let stream = stream(history + measure);
    let (xs, ys) = (&stream.xs, &stream.ys);
    let mut cfg = if shipped {
        shipped_capacity_config()
    } else {
        whole_history_config()
    };
    if let Some(m) = prada_fastscan {
        cfg.prada.ivf.fastscan_m = m;
        cfg.prada.ivf.fastscan_rerank = 2;
    }
    if let Some(p) = prada_probe {
        cfg.prada.ivf.probe = p;
    }
    if let Some(c) = prada_candidates {
        cfg.prada.candidates = c;
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
            let (x, i) = fresh_query(xs, history, j);
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
            let (x, i) = fresh_query(xs, history, j);
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
