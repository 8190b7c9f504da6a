//! Watermark-removal attacks a thief may try on a stolen model, to measure how far
//! verification survives them: fine-tuning on clean data and magnitude pruning.

use crate::error::DefenseError;
use mamori_core::Tensor;
use mamori_ml::{train, Network, Targets, TrainConfig, TrainReport};

/// Zeroes the `fraction` smallest-magnitude weights of every layer that has weights (dense
/// and convolution; biases are kept), layer by layer, as in magnitude-pruning removal attacks
/// (e.g. Uchida et al. 2017; Szyller et al. 2021 §6). Returns how many weights were zeroed.
pub fn prune_smallest(net: &mut Network, fraction: f32) -> Result<usize, DefenseError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(DefenseError::spec(
            "prune",
            format!("fraction must lie in [0, 1], got {fraction}"),
        ));
    }
    let mut zeroed = 0;
    for p in net.params.iter_mut() {
        let n = p.weight.len();
        let k = ((n as f64) * fraction as f64).round() as usize;
        if k == 0 {
            continue;
        }
        let mut mags: Vec<f32> = p.weight.iter().map(|w| w.abs()).collect();
        mags.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let threshold = mags[k - 1];
        // Zero exactly k weights: those strictly below the threshold, then ties in order.
        let mut left = k;
        for w in p.weight.iter_mut() {
            if w.abs() < threshold && left > 0 {
                *w = 0.0;
                left -= 1;
            }
        }
        for w in p.weight.iter_mut() {
            if left == 0 {
                break;
            }
            if w.abs() == threshold && *w != 0.0 || (threshold == 0.0 && *w == 0.0) {
                *w = 0.0;
                left -= 1;
            }
        }
        zeroed += k - left;
    }
    Ok(zeroed)
}

/// Fine-tunes `net` in place on clean labelled data `(x, labels)` — the thief's attempt to
/// wash the watermark out with data of its own.
pub fn fine_tune(
    net: &mut Network,
    x: &Tensor,
    labels: &[usize],
    cfg: &TrainConfig,
) -> Result<TrainReport, DefenseError> {
    Ok(train(net, x, &Targets::Labels(labels.to_vec()), cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mamori_ml::Arch;

    #[test]
    fn prunes_exactly_half_of_each_layer() {
        let mut net = Network::new(&Arch::Mlp { hidden: vec![8] }, &[6], 3, 1);
        let before = net.clone();
        let n = prune_smallest(&mut net, 0.5).unwrap();
        let total: usize = net.params.iter().map(|p| p.weight.len()).sum();
        assert_eq!(n, total / 2);
        for (a, b) in net.params.iter().zip(&before.params) {
            let zeros = a.weight.iter().filter(|w| **w == 0.0).count();
            assert_eq!(zeros, a.weight.len() / 2);
            assert_eq!(a.bias, b.bias);
            // Every kept weight is at least as large as every pruned one.
            let kept_min = a
                .weight
                .iter()
                .filter(|w| **w != 0.0)
                .map(|w| w.abs())
                .fold(f32::MAX, f32::min);
            let pruned_max = a
                .weight
                .iter()
                .zip(&b.weight)
                .filter(|(x, _)| **x == 0.0)
                .map(|(_, w)| w.abs())
                .fold(0.0, f32::max);
            assert!(pruned_max <= kept_min);
        }
        let e = prune_smallest(&mut net, 1.5).unwrap_err().to_string();
        assert!(e.contains("prune") && e.contains("fraction"), "{e}");
    }

    #[test]
    fn fine_tuning_changes_the_weights() {
        let mut net = Network::new(&Arch::Softmax, &[4], 2, 1);
        let before = net.clone();
        let x = Tensor::new(vec![4, 4], (0..16).map(|i| (i % 5) as f32 / 5.0).collect()).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 2,
            ..Default::default()
        };
        fine_tune(&mut net, &x, &[0, 1, 0, 1], &cfg).unwrap();
        assert_ne!(net, before);
        assert!(fine_tune(&mut net, &x, &[0, 1], &cfg).is_err());
    }
}
