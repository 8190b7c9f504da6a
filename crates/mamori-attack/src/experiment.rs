//! Helpers for attack experiments: victims trained here, class subsets, probability
//! distances. Used by the tests, the `reproduce` example and the CLI.

use crate::error::AttackError;
use crate::extract::substitute_card;
use mamori_core::{DatasetRef, Model, Tensor};
use mamori_data::Dataset;
use mamori_ml::{Arch, NativeModel, Network, Targets, TrainConfig};

/// The samples of classes `a` and `b`, relabelled 0 and 1 (e.g. MNIST 0-vs-1).
pub fn binary_subset(ds: &Dataset, a: usize, b: usize) -> Dataset {
    let idx: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.y[i] == a || ds.y[i] == b)
        .collect();
    let mut out = ds.select(&idx);
    out.y = out.y.iter().map(|&y| usize::from(y == b)).collect();
    out.num_classes = 2;
    out.class_names = vec![
        ds.class_names
            .get(a)
            .cloned()
            .unwrap_or_else(|| a.to_string()),
        ds.class_names
            .get(b)
            .cloned()
            .unwrap_or_else(|| b.to_string()),
    ];
    out.name = format!("{}[{a}-vs-{b}]", ds.name);
    out
}

/// Trains a victim of `arch` on `train`, records its test accuracy on `test` in the card.
pub fn train_victim(
    arch: &Arch,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    name: &str,
) -> Result<NativeModel, AttackError> {
    let shape = train.x.sample_shape().to_vec();
    let mut net = Network::new(arch, &shape, train.num_classes, cfg.seed);
    let rep = mamori_ml::train(&mut net, &train.x, &Targets::Labels(train.y.clone()), cfg)?;
    let mut card = substitute_card(arch, &shape, train.num_classes, "victim", cfg.seed);
    card.name = name.into();
    card.class_names = train.class_names.clone();
    card.dataset = DatasetRef {
        name: train.name.clone(),
        files: train.files.clone(),
    };
    card.normalisation = train.normalisation.clone();
    card.extra.remove("extracted_by");
    card.training_time_s = Some(rep.seconds);
    let mut m = NativeModel { network: net, card };
    m.card.test_accuracy = Some(mamori_ml::accuracy(&m, &test.x, &test.y)?);
    Ok(m)
}

/// Largest absolute difference between two models' probabilities on `x` (the
/// "probability distance" of Tramèr et al. is its total-variation form; we report the max).
pub fn max_prob_distance(a: &dyn Model, b: &dyn Model, x: &Tensor) -> Result<f64, AttackError> {
    let mut worst = 0.0f64;
    let n = x.batch_size();
    let mut s = 0;
    while s < n {
        let e = (s + 1024).min(n);
        let xa = x.slice_rows(s, e);
        let pa = a.predict(&xa)?;
        let pb = b.predict(&xa)?;
        for (p, q) in pa.data().iter().zip(pb.data()) {
            worst = worst.max((*p as f64 - *q as f64).abs());
        }
        s = e;
    }
    Ok(worst)
}

/// Total-variation distance `½ Σ_k |p_k − q_k|` between two models' answers, averaged over
/// `x` (the "probability distance" of Tramèr et al. 2016) and its maximum.
pub fn tv_distance(a: &dyn Model, b: &dyn Model, x: &Tensor) -> Result<(f64, f64), AttackError> {
    let (mut sum, mut worst) = (0.0f64, 0.0f64);
    let n = x.batch_size();
    let mut s = 0;
    while s < n {
        let e = (s + 1024).min(n);
        let xa = x.slice_rows(s, e);
        let pa = a.predict(&xa)?;
        let pb = b.predict(&xa)?;
        for (ra, rb) in pa.rows().zip(pb.rows()) {
            let tv: f64 = 0.5
                * ra.iter()
                    .zip(rb)
                    .map(|(p, q)| (*p as f64 - *q as f64).abs())
                    .sum::<f64>();
            sum += tv;
            worst = worst.max(tv);
        }
        s = e;
    }
    Ok((sum / n.max(1) as f64, worst))
}
