//! How often PRADA's index search returns the exact minimum distance, and what it costs, as a
//! function of the IVF parameters — on the detection bench's MNIST stream.
//!
//! Every query of the stream (MNIST training images, then shifted and noised copies) is put in
//! its class's index, as PRADA's growing set does for novel queries (the worst case: every query
//! joins), with PRADA's default 32-d projection and 8-bit payloads, and class capacity 2¹⁵ (the
//! bench's). Every 97th query after the first 1,000 is also searched exactly (linear scan over
//! the class's payloads); the table gives, per `probe`, the fraction of those searches whose
//! `d_min` is exact, the mean relative excess of the others, and the search time.
//!
//! Run: `cargo run --release -p mamori-detect --example prada_recall -- [N] [probe,probe,…]
//! [fastscan_m] [candidates] [sq8]` (defaults: 100000, `4,8,16`, 0, PRADA's 8, PRADA's byte
//! levels: `1` on, `0` off).

use mamori_detect::ivf::{IvfIndex, IvfParams};
use mamori_detect::prada::PradaConfig;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(100_000, |s| s.parse().expect("N"));
    let probes: Vec<usize> = args.get(1).map_or(vec![4, 8, 16], |s| {
        s.split(',').map(|p| p.parse().expect("probe")).collect()
    });
    let fastscan_m: usize = args.get(2).map_or(0, |s| s.parse().expect("fastscan_m"));
    let mut cfg = PradaConfig::default();
    if let Some(c) = args.get(3) {
        cfg.candidates = c.parse().expect("candidates");
    }
    if let Some(b) = args.get(4) {
        cfg.ivf.sq8 = b.parse::<u8>().expect("sq8: 0 or 1") == 1;
    }
    let common::Stream { xs, ys, .. } = common::stream(n);
    let proj = projection(cfg.proj_dim, 784);
    let prep: Vec<(Vec<f32>, Vec<u8>)> = xs
        .iter()
        .map(|x| {
            let code = (0..cfg.proj_dim)
                .map(|r| {
                    proj[r * 784..(r + 1) * 784]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let bytes = x
                .iter()
                .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            (code, bytes)
        })
        .collect();
    println!(
        "N {n}, class capacity 2^15, candidates {}, fastscan_m {fastscan_m}, byte levels {}",
        cfg.candidates, cfg.ivf.sq8
    );
    println!("| probe | exact d_min | mean excess of the others | µs per search |");
    println!("|---|---|---|---|");
    for &probe in &probes {
        let params = IvfParams {
            probe,
            fastscan_m,
            fastscan_rerank: 2,
            ..cfg.ivf
        };
        let mut idx: Vec<IvfIndex> = (0..10)
            .map(|c| IvfIndex::new(cfg.proj_dim, params, 1 << 15, 0x5EED ^ c as u64))
            .collect();
        let (mut checked, mut exact, mut excess) = (0usize, 0usize, 0.0f64);
        let mut spent = 0.0f64;
        let mut searched = 0usize;
        for (i, (code, bytes)) in prep.iter().enumerate() {
            let c = ys[i];
            let t = Instant::now();
            let approx = idx[c].nearest_payload_dist2(code, bytes, cfg.candidates);
            if i >= n / 2 {
                spent += t.elapsed().as_secs_f64();
                searched += 1;
            }
            if i >= 1000 && i % 97 == 0 {
                if let (Some(a), Some(t)) = (approx, idx[c].exact_nearest_payload_dist2(bytes)) {
                    checked += 1;
                    if a == t {
                        exact += 1;
                    } else {
                        excess += (a as f64).sqrt() / (t as f64).sqrt().max(1e-9) - 1.0;
                    }
                }
            }
            idx[c].insert_with_payload(code, bytes);
        }
        let others = (checked - exact).max(1) as f64;
        println!(
            "| {probe} | {exact}/{checked} ({:.4}) | {:.3} | {:.2} (second half) |",
            exact as f64 / checked as f64,
            excess / others,
            spent * 1e6 / searched.max(1) as f64
        );
    }
}

/// A Rademacher ±1/√out projection (`out × dim`, row-major), as PRADA's.
fn projection(out: usize, dim: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9ada);
    let s = 1.0 / (out as f32).sqrt();
    (0..out * dim)
        .map(|_| if rng.gen::<bool>() { s } else { -s })
        .collect()
}
