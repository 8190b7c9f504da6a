//! What the detection bench (`benches/detect.rs`) and the cost and recall examples
//! (`examples/engine_cost.rs`, `knn_recall.rs`, `prada_recall.rs`) share: the query stream,
//! the detector configurations measured, and one client's observations. Included by path
//! (`#[path = "../benches/common/mod.rs"] mod common;`), so each target uses a part of it.

#![allow(dead_code)]

use mamori_core::Observation;
use mamori_detect::DetectorsConfig;
use rand::{Rng, SeedableRng};

/// The bench's query stream: MNIST training images (read with `mamori_data::load` from
/// `mamori_data::resolve_data_dir(None)`; synthetic images when MNIST is not there), then
/// shifted and noised copies — all distinct.
pub struct Stream {
    /// Inputs, in `[0, 1]`.
    pub xs: Vec<Vec<f32>>,
    /// Their labels.
    pub ys: Vec<usize>,
    /// The source images, kept alive so that their memory is not handed to whatever is
    /// measured next (the examples read the process's resident size).
    _source: Vec<(Vec<f32>, usize)>,
}

/// The first `n` queries of the stream.
pub fn stream(n: usize) -> Stream {
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
    Stream {
        xs,
        ys,
        _source: base,
    }
}

/// The `j`-th measured query after a history of `n`: a fresh input (one pixel changed, so it
/// is never an exact repeat, which would skip the similarity detectors).
pub fn fresh_query(xs: &[Vec<f32>], n: usize, j: usize) -> (Vec<f32>, usize) {
    let next = n + j;
    let i = next % xs.len();
    let mut x = xs[i].clone();
    x[(next + 1) % 784] = ((next + 1) % 251) as f32 / 251.0;
    (x, i)
}

/// The bench's detector configuration: the indexes hold the whole history, to measure how
/// search cost grows with it.
pub fn whole_history_config() -> DetectorsConfig {
    let mut cfg = shipped_capacity_config();
    cfg.knn.capacity = 1 << 17;
    cfg.blacklight.capacity = 1 << 17;
    cfg.prada.class_capacity = 1 << 15;
    cfg
}

/// The same detectors with the shipped (default) index capacities: memory per client is
/// bounded by the documented generation eviction, so a long history keeps only its newest
/// `2 * capacity` codes per index.
pub fn shipped_capacity_config() -> DetectorsConfig {
    let mut cfg = DetectorsConfig::example_active();
    cfg.rate.max_total = 0;
    cfg.rate.max_per_window = u64::MAX / 2;
    // Every bench query in-distribution, so PRADA (which tests out-of-distribution queries in
    // its second pool) keeps them in its main one: the worst case for its cost.
    cfg.ood.radius = vec![100.0; 10];
    cfg
}

/// A confident answer for `label`.
pub fn probs(label: usize) -> Vec<f32> {
    let mut p = vec![0.001f32; 10];
    p[label] = 0.991;
    p
}

/// One benchmark client's observation of an MNIST-shaped query.
pub fn obs<'a>(input: &'a [f32], probs: &'a [f32], label: usize, time_ms: u64) -> Observation<'a> {
    Observation {
        client: "bench",
        input,
        input_shape: &[1, 28, 28],
        probs,
        label,
        time_ms,
    }
}
