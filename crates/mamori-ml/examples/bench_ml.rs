//! Engine benchmark: train-epoch time and inference throughput of the MLP 784-256-10 and the
//! zoo CNN on random 28×28 images (as in `shared/guide/STACK.md`), against a naive
//! direct-convolution forward pass of the same CNN measured in the same run.
//!
//! `cargo run --release -p mamori-ml --example bench_ml [-- N_TRAIN [cnn]]` (default 60,000;
//! `cnn` skips the MLP and the baseline, for profiling).

use mamori_core::Tensor;
use mamori_ml::{train, Arch, LayerSpec, Network, Targets, TrainConfig};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn random_images(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.gen::<f32>()).collect();
    let y: Vec<usize> = (0..n).map(|_| rng.gen_range(0..10)).collect();
    (Tensor::new(vec![n, 1, 28, 28], x).unwrap(), y)
}

/// Inference images per second at batch 256 over `x`.
fn throughput(net: &Network, x: &Tensor) -> f64 {
    let n = x.batch_size();
    let _ = net.forward(&x.slice_rows(0, 256.min(n))).unwrap(); // warm the workspace
    let t = Instant::now();
    let mut s = 0;
    while s < n {
        let e = (s + 256).min(n);
        std::hint::black_box(net.forward(&x.slice_rows(s, e)).unwrap());
        s = e;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Direct (seven nested loops) convolution forward, the textbook baseline.
fn naive_forward(net: &Network, img: &[f32]) -> Vec<f32> {
    let mut cur = img.to_vec();
    let mut shape = net.input_shape.clone();
    for (layer, p) in net.layers.iter().zip(&net.params) {
        match *layer {
            LayerSpec::Conv2d {
                in_channels: c,
                out_channels: oc,
                kernel: k,
                ..
            } => {
                let (h, w) = (shape[1], shape[2]);
                let (oh, ow) = (h - k + 1, w - k + 1);
                let mut out = vec![0.0; oc * oh * ow];
                for o in 0..oc {
                    for y in 0..oh {
                        for x in 0..ow {
                            let mut s = p.bias[o];
                            for ci in 0..c {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        s += p.weight[((o * c + ci) * k + ky) * k + kx]
                                            * cur[(ci * h + y + ky) * w + x + kx];
                                    }
                                }
                            }
                            out[(o * oh + y) * ow + x] = s;
                        }
                    }
                }
                cur = out;
                shape = vec![oc, oh, ow];
            }
            LayerSpec::Relu => cur.iter_mut().for_each(|v| *v = v.max(0.0)),
            LayerSpec::MaxPool2d {
                kernel: k,
                stride: s,
            } => {
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
                let mut out = vec![f32::NEG_INFINITY; c * oh * ow];
                for ch in 0..c {
                    for y in 0..oh {
                        for x in 0..ow {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let v = cur[(ch * h + y * s + ky) * w + x * s + kx];
                                    let o = &mut out[(ch * oh + y) * ow + x];
                                    *o = o.max(v);
                                }
                            }
                        }
                    }
                }
                cur = out;
                shape = vec![c, oh, ow];
            }
            LayerSpec::Flatten => shape = vec![cur.len()],
            LayerSpec::Dense { inputs, outputs } => {
                let out: Vec<f32> = (0..outputs)
                    .map(|o| {
                        p.bias[o]
                            + (0..inputs)
                                .map(|i| p.weight[o * inputs + i] * cur[i])
                                .sum::<f32>()
                    })
                    .collect();
                cur = out;
                shape = vec![outputs];
            }
            LayerSpec::BinaryHead => cur = vec![0.0, cur[0]],
        }
    }
    cur
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60_000);
    let only_cnn = std::env::args().nth(2).as_deref() == Some("cnn");
    let threads = rayon::current_num_threads();
    let (x, y) = random_images(n, 1);
    let (xi, _) = random_images(10_240.min(n.max(256)), 2);
    let y = Targets::Labels(y);
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 128,
        ..TrainConfig::default()
    };
    println!("mamori-ml engine bench: {n} random 28x28 images, batch 128 (train) / 256 (inference), {threads} rayon threads");
    println!("| model | train s/epoch (60k-equivalent) | inference img/s |");
    println!("|---|---:|---:|");
    let scale = 60_000.0 / n as f64;
    for (name, arch) in [
        ("MLP 784-256-10", Arch::Mlp { hidden: vec![256] }),
        ("CNN (zoo)", Arch::Cnn),
    ] {
        if only_cnn && !matches!(arch, Arch::Cnn) {
            continue;
        }
        let mut net = Network::new(&arch, &[1, 28, 28], 10, 0);
        let t = Instant::now();
        train(&mut net, &x, &y, &cfg).unwrap();
        let secs = t.elapsed().as_secs_f64() * scale;
        let ips = throughput(&net, &xi);
        println!("| {name} | {secs:.2} | {ips:.0} |");
        if matches!(arch, Arch::Cnn) && !only_cnn {
            // Baseline: the same CNN evaluated by direct convolution, one image at a time, on
            // the same two cores (rayon over images), checked against the engine's output.
            let m = 2_048.min(xi.batch_size());
            let imgs = xi.slice_rows(0, m);
            let t = Instant::now();
            use rayon::prelude::*;
            let out: Vec<Vec<f32>> = imgs
                .data()
                .par_chunks(784)
                .map(|img| naive_forward(&net, img))
                .collect();
            let naive_ips = m as f64 / t.elapsed().as_secs_f64();
            let fast = net.forward(&imgs).unwrap();
            let max_diff = out
                .iter()
                .flatten()
                .zip(fast.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!(
                "| CNN baseline: direct convolution (same run) | – | {naive_ips:.0} (max |Δlogit| vs engine {max_diff:.1e}) |"
            );
        }
    }
}
