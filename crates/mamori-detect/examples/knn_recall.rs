//! Recall@k of the k-NN detector's indexes against exact search on MNIST codes, and the error
//! of the detector's score (mean distance to the k nearest) they cause.
//!
//! Run: `cargo run --release -p mamori-detect --example knn_recall -- [N] [capacity] [max_lists]
//! [probe] [kmeans_iters] [fastscan_m] [fastscan_rerank] [hnsw]` (defaults: 100000, 131072, then the
//! k-NN detector's `IvfParams`: `KnnConfig::default().ivf`; `fastscan_m` 0 scans exactly; `hnsw` 0 skips the HNSW
//! comparison). The
//! stream is the detection bench's: MNIST training images, then shifted and noised copies; each
//! query is projected to
//! 24 dimensions (a Rademacher projection, as the detector does), scored and inserted
//! (`search_insert`). Every 97th query after the first 1,000 is also searched exactly (linear
//! scan over the same held codes) and recall@50 is the fraction of the approximate 50 within
//! the exact 50th distance. A first pass times each index alone on the same stream.

use mamori_detect::ann::{AnnIndex, HnswParams};
use mamori_detect::ivf::{IvfIndex, IvfParams};
use mamori_detect::knn::KnnConfig;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

fn score(d: &[f32]) -> f64 {
    d.iter().map(|&v| (v as f64).sqrt()).sum::<f64>() / d.len().max(1) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let n = arg(1, 100_000);
    let capacity = arg(2, 1 << 17);
    let defaults = KnnConfig::default().ivf;
    let params = IvfParams {
        max_lists: arg(3, defaults.max_lists),
        probe: arg(4, defaults.probe),
        kmeans_iters: arg(5, defaults.kmeans_iters),
        fastscan_m: arg(6, defaults.fastscan_m),
        fastscan_rerank: arg(7, defaults.fastscan_rerank),
        ..defaults
    };
    // 0: the HNSW comparison is skipped (its lines then repeat the IVF's figures).
    let with_hnsw = arg(8, 1) != 0;
    let cfg = KnnConfig::default();
    let (k, dim) = (cfg.k, cfg.proj_dim);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let s = 1.0 / (dim as f32).sqrt();
    let m: Vec<f32> = (0..dim * 784)
        .map(|_| if rng.gen::<bool>() { s } else { -s })
        .collect();
    let xs = common::stream(n).xs;
    let codes: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            m.chunks(784)
                .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect();
    drop(xs);
    println!(
        "n = {n}, capacity = {capacity}, k = {k}, dim = {dim}, ivf {params:?}, hnsw {:?}",
        cfg.hnsw
    );
    let hnsw_params: HnswParams = cfg.hnsw;
    // Timing pass: each index alone on the whole stream (no exact searches in between), the
    // mean cost of `search_insert` over the last tenth of the stream.
    let tail = n - n / 10;
    let mut ivf = IvfIndex::new(dim, params, capacity, 1);
    let t0 = Instant::now();
    let mut t_tail = t0;
    // The slowest single call (a re-clustering) and the query that paid it.
    let mut slowest = (0.0f64, 0usize);
    for (i, c) in codes.iter().enumerate() {
        if i == tail {
            t_tail = Instant::now();
        }
        let t = Instant::now();
        std::hint::black_box(ivf.search_insert(c, k));
        let dt = t.elapsed().as_secs_f64();
        if dt > slowest.0 {
            slowest = (dt, i + 1);
        }
    }
    let ivf_all = t0.elapsed().as_secs_f64();
    let ivf_tail = t_tail.elapsed().as_secs_f64();
    // Search only, on the final index: the exact scan and the fast scan over the same held
    // codes and cells (`set_fastscan` on clones), 2,000 perturbed stream codes as queries,
    // the variants alternated in each of 15 rounds; the least and the median round per variant
    // (the least is the figure least disturbed by other load on the machine).
    let mut qrng = rand::rngs::StdRng::seed_from_u64(11);
    let queries: Vec<Vec<f32>> = (0..2000)
        .map(|i| {
            codes[(i * 7919) % n]
                .iter()
                .map(|v| v + qrng.gen_range(-0.05..0.05))
                .collect()
        })
        .collect();
    let fs_m = if params.fastscan_m > 0 {
        params.fastscan_m
    } else {
        12
    };
    let mut variants: Vec<(String, IvfIndex)> = vec![("exact scan".into(), ivf.clone())];
    variants[0].1.set_fastscan(0, params.fastscan_rerank);
    let mut fast = ivf.clone();
    fast.set_fastscan(fs_m, params.fastscan_rerank);
    variants.push((
        format!(
            "fast scan m = {fs_m}, shortlist {}·k",
            params.fastscan_rerank
        ),
        fast,
    ));
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..15 {
        for (v, (_, idx)) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            for q in &queries {
                std::hint::black_box(idx.search(q, k));
            }
            rounds[v].push(t.elapsed().as_secs_f64() / queries.len() as f64 * 1e6);
        }
    }
    for ((name, _), r) in variants.iter().zip(&mut rounds) {
        r.sort_by(f64::total_cmp);
        println!(
            "search only ({name}): least round {:.2} µs per search, median {:.2} (history {})",
            r[0],
            r[r.len() / 2],
            ivf.len()
        );
    }
    let mut hnsw = AnnIndex::new(dim, hnsw_params, capacity, 1);
    let t0 = Instant::now();
    let mut t_tail = t0;
    for (i, c) in codes.iter().enumerate().filter(|_| with_hnsw) {
        if i == tail {
            t_tail = Instant::now();
        }
        std::hint::black_box(hnsw.search_insert(c, k));
    }
    let hnsw_all = t0.elapsed().as_secs_f64();
    let hnsw_tail = t_tail.elapsed().as_secs_f64();
    println!(
        "ivf alone: slowest search_insert {:.1} ms (query {}, a re-clustering)",
        slowest.0 * 1e3,
        slowest.1
    );
    for (name, all, tl) in [("ivf", ivf_all, ivf_tail), ("hnsw", hnsw_all, hnsw_tail)] {
        println!(
            "{name} alone: {:.2} µs per search_insert over the stream, {:.2} µs over its last tenth (history {tail}..{n})",
            all / n as f64 * 1e6,
            tl / (n - tail) as f64 * 1e6
        );
    }
    let mut ivf = IvfIndex::new(dim, params, capacity, 1);
    let mut hnsw = AnnIndex::new(dim, hnsw_params, capacity, 1);
    // (hits, total, score abs rel error sum, count) per index, per history decade.
    let mut stats = [[0.0f64; 4]; 2];
    let mut t = [0.0f64; 2];
    let mut by_size: Vec<(usize, [f64; 2], usize)> = Vec::new();
    for (i, c) in codes.iter().enumerate() {
        let probe = i >= 1000 && i % 97 == 0;
        let exact = probe.then(|| ivf.exact_search(c, k));
        let exact_h = if with_hnsw {
            probe.then(|| hnsw.exact_search(c, k))
        } else {
            exact.clone()
        };
        let t0 = Instant::now();
        let a = ivf.search_insert(c, k);
        let t1 = Instant::now();
        let b = if with_hnsw {
            hnsw.search_insert(c, k)
        } else {
            a.clone()
        };
        let t2 = Instant::now();
        t[0] += (t1 - t0).as_secs_f64();
        t[1] += (t2 - t1).as_secs_f64();
        if let (Some(e), Some(eh)) = (exact, exact_h) {
            for (st, (approx, ex)) in stats.iter_mut().zip([(&a, &e), (&b, &eh)]) {
                let kth = ex[k - 1];
                st[0] += approx.iter().filter(|&&d| d <= kth).count() as f64;
                st[1] += k as f64;
                st[2] += (score(approx) - score(ex)).abs() / score(ex);
                st[3] += 1.0;
            }
            let bucket = (i + 1).ilog10() as usize;
            if by_size.last().is_none_or(|b| b.0 != bucket) {
                by_size.push((bucket, [0.0; 2], 0));
            }
            let last = by_size.last_mut().expect("pushed");
            let kth = e[k - 1];
            last.1[0] += a.iter().filter(|&&d| d <= kth).count() as f64 / k as f64;
            let kth = eh[k - 1];
            last.1[1] += b.iter().filter(|&&d| d <= kth).count() as f64 / k as f64;
            last.2 += 1;
        }
    }
    for (name, st, tt) in [("ivf", stats[0], t[0]), ("hnsw", stats[1], t[1])] {
        println!(
            "{name}: recall@{k} = {:.4} over {} probes, mean |score error| = {:.5} (relative), {:.2} µs per search_insert (with exact searches in between)",
            st[0] / st[1],
            st[3],
            st[2] / st[3],
            tt / n as f64 * 1e6
        );
    }
    for (b, r, c) in by_size {
        println!(
            "history 10^{b}..10^{}: probes {c}, recall ivf {:.4}, hnsw {:.4}",
            b + 1,
            r[0] / c as f64,
            r[1] / c as f64
        );
    }
}
