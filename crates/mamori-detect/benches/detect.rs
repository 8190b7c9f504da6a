//! Per-query cost of the full detector set (engine + policy) with 1k, 10k and 100k queries of
//! one client's history already observed.
//!
//! The history stays at its nominal size: each size's state is built once, saved with the
//! engine's (detector's) own snapshot, and restored from that snapshot after every
//! [`RESTORE_EVERY`]-th of the size's measured queries (the restores are not timed), so a
//! measured query sees between `n` and `n + n/10` past queries — not the tens of thousands the
//! measurement itself would otherwise add (before 2026-11-21's fifth session the "1k" point
//! measured histories of 1k to ≈ 60k, and the "100k" one crossed the generation capacity).
//!
//! Run: `cargo bench -p mamori-detect --bench detect` (reads MNIST with `mamori_data::load`
//! from `mamori_data::resolve_data_dir(None)`; falls back to synthetic images otherwise).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

mod common;

use common::{fresh_query, obs, probs, shipped_capacity_config, stream, whole_history_config};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mamori_detect::{default_detectors, DetectorsConfig, Engine, PolicyConfig};
use std::time::{Duration, Instant};

/// Measured queries between two restores of the saved state, as a fraction of the history:
/// `n / RESTORE_EVERY` (at least 100).
const RESTORE_EVERY: usize = 10;

/// Queries measured on one restored state for history `n`.
fn run_length(n: usize) -> usize {
    (n / RESTORE_EVERY).max(100)
}

fn bench(c: &mut Criterion) {
    bench_engine(c, "engine_observe", &whole_history_config());
    bench_engine(
        c,
        "engine_observe_shipped_capacity",
        &shipped_capacity_config(),
    );
}

/// The full set (engine + policy) with `cfg`, as group `name`.
fn bench_engine(c: &mut Criterion, name: &str, cfg: &DetectorsConfig) {
    let sizes = [1_000usize, 10_000, 100_000];
    let common::Stream { xs, ys, .. } = stream(100_000 + 20_000);
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    for &n in &sizes {
        // Filled on first use, so a filtered run only builds the histories it measures.
        // One detector set (its projection matrices are built once), shared by every restore.
        let dets = default_detectors(cfg);
        let mut saved: Option<Vec<u8>> = None;
        let mut live: Option<(Engine, usize)> = None;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let saved = saved.get_or_insert_with(|| {
                let mut engine = Engine::new(dets.clone(), PolicyConfig::default());
                for i in 0..n {
                    let p = probs(ys[i]);
                    engine.observe("bench", None, &obs(&xs[i], &p, ys[i], i as u64 * 1000));
                }
                engine.snapshot()
            });
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (engine, j) = match live.take() {
                        Some((e, j)) if j < run_length(n) => (e, j),
                        _ => (restore(&dets, saved), 0),
                    };
                    let mut engine = engine;
                    let (x, i) = fresh_query(&xs, n, j);
                    let p = probs(ys[i]);
                    let t = (n + j) as u64 * 1000;
                    let start = Instant::now();
                    let d = engine.observe("bench", None, &obs(&x, &p, ys[i], t));
                    spent += start.elapsed();
                    criterion::black_box(d);
                    live = Some((engine, j + 1));
                }
                spent
            })
        });
    }
    group.finish();
}

fn restore(dets: &[std::sync::Arc<dyn mamori_core::Detector>], saved: &[u8]) -> Engine {
    Engine::restore(dets.to_vec(), PolicyConfig::default(), saved)
        .expect("the bench's own snapshot restores")
}

/// Each detector alone (its own state, no policy), same streams and sizes.
fn bench_each(c: &mut Criterion) {
    let sizes = [1_000usize, 10_000, 100_000];
    let common::Stream { xs, ys, .. } = stream(100_000 + 20_000);
    for det in default_detectors(&whole_history_config()) {
        let name = det.info().name;
        let mut group = c.benchmark_group(format!("detector_{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for &n in &sizes {
            let mut saved: Option<Vec<u8>> = None;
            let mut live = None;
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                let saved = saved.get_or_insert_with(|| {
                    let mut state = det.new_state();
                    for i in 0..n {
                        let p = probs(ys[i]);
                        state.observe(&obs(&xs[i], &p, ys[i], i as u64 * 1000));
                    }
                    state.snapshot()
                });
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let (mut state, j) = match live.take() {
                            Some((s, j)) if j < run_length(n) => (s, j),
                            _ => (
                                det.restore_state(saved)
                                    .expect("the bench's own snapshot restores"),
                                0,
                            ),
                        };
                        let (x, i) = fresh_query(&xs, n, j);
                        let p = probs(ys[i]);
                        let t = (n + j) as u64 * 1000;
                        let start = Instant::now();
                        let v = state.observe(&obs(&x, &p, ys[i], t));
                        spent += start.elapsed();
                        criterion::black_box(v);
                        live = Some((state, j + 1));
                    }
                    spent
                })
            });
        }
        group.finish();
    }
}

/// Baseline: exact nearest neighbour by a linear scan over the whole history (784-d L2).
fn bench_linear(c: &mut Criterion) {
    let sizes = [1_000usize, 10_000, 100_000];
    let xs = stream(100_000 + 20_000).xs;
    let mut group = c.benchmark_group("baseline_exact_linear_nn");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for &n in &sizes {
        let hist: Vec<f32> = xs[..n].concat();
        let mut next = n;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let q = &xs[next % xs.len()];
                next += 1;
                hist.chunks_exact(784)
                    .map(|h| h.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>())
                    .fold(f32::INFINITY, f32::min)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_each, bench_linear);
criterion_main!(benches);
