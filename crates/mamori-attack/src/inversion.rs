//! Model inversion: MI-Face.
//!
//! Fredrikson, Jha, Ristenpart, "Model Inversion Attacks that Exploit Confidence Information
//! and Basic Countermeasures", CCS 2015, Algorithm 1. For a target class `c` the attacker
//! minimises `cost(x) = 1 − p_c(x)` by gradient descent from `x₀ = 0`, applying a `Process`
//! step after every update (here: clipping to the input range and, every few steps, a 3×3
//! median filter as the denoiser for image inputs), stopping after `α` iterations, when the
//! cost has not improved over the last `β` iterations, or when it falls to `γ`; the best
//! image seen is returned. White-box: the gradient comes from the victim itself
//! ([`GradTarget::Probability`]). Black-box: the same descent on a substitute stolen with an
//! extraction attack (see `mamori attack invert --steal`).

use crate::error::AttackError;
use mamori_core::{GradTarget, Model, Tensor};
use serde::Serialize;

/// MI-Face hyper-parameters (Algorithm 1's α, β, γ, λ).
#[derive(Clone, Debug, Serialize)]
pub struct MiFaceConfig {
    /// Maximum iterations α.
    pub max_iters: usize,
    /// Stop when the best cost has not improved for β iterations.
    pub patience: usize,
    /// Stop when the cost falls to γ.
    pub min_cost: f32,
    /// Gradient step λ.
    pub step: f32,
    /// Apply the median-filter denoiser every this many iterations (0 = never).
    pub denoise_every: usize,
    /// Valid input range (clipping).
    pub range: [f32; 2],
}

impl Default for MiFaceConfig {
    fn default() -> Self {
        Self {
            max_iters: 1000,
            patience: 100,
            min_cost: 0.001,
            step: 0.1,
            denoise_every: 50,
            range: [0.0, 1.0],
        }
    }
}

/// A reconstructed class prototype.
#[derive(Clone, Debug, Serialize)]
pub struct Inversion {
    /// Target class.
    pub class: usize,
    /// The best input found (flat, the model's sample shape).
    pub image: Vec<f32>,
    /// `1 − p_class` at that input, on the model that was inverted.
    pub cost: f32,
    /// Iterations run.
    pub iterations: usize,
}

/// Runs MI-Face for every class in `classes` at once (one batch row per class).
pub fn mi_face(
    model: &dyn Model,
    classes: &[usize],
    cfg: &MiFaceConfig,
) -> Result<Vec<Inversion>, AttackError> {
    let shape = model.card().input_shape.clone();
    let per: usize = shape.iter().product();
    let n = classes.len();
    let mut full = vec![n];
    full.extend_from_slice(&shape);
    let mut x = Tensor::zeros(full);
    x.data_mut()
        .iter_mut()
        .for_each(|v| *v = v.clamp(cfg.range[0], cfg.range[1]));
    let target = GradTarget::Probability(classes.to_vec());
    let mut best: Vec<(f32, Vec<f32>)> =
        (0..n).map(|i| (f32::INFINITY, x.row(i).to_vec())).collect();
    let mut since_best = vec![0usize; n];
    let mut done = vec![false; n];
    let mut iters = vec![0usize; n];
    let image_hw = match shape.as_slice() {
        [_, h, w] if *h >= 3 && *w >= 3 => Some((*h, *w)),
        _ => None,
    };
    for it in 0..cfg.max_iters {
        let p = model.predict(&x)?;
        for i in 0..n {
            if done[i] {
                continue;
            }
            let cost = 1.0 - p.row(i)[classes[i]];
            iters[i] = it + 1;
            if cost < best[i].0 {
                best[i] = (cost, x.row(i).to_vec());
                since_best[i] = 0;
            } else {
                since_best[i] += 1;
            }
            if cost <= cfg.min_cost || since_best[i] >= cfg.patience {
                done[i] = true;
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        // ∇ cost = −∇ p_c: step along +∇ p_c.
        let g = model.input_gradient(&x, &target)?;
        for (i, finished) in done.iter().enumerate() {
            if *finished {
                continue;
            }
            let gi = g.row(i).to_vec();
            let row = x.row_mut(i);
            for (v, gv) in row.iter_mut().zip(&gi) {
                *v = (*v + cfg.step * gv).clamp(cfg.range[0], cfg.range[1]);
            }
            if let Some((h, w)) = image_hw {
                if cfg.denoise_every > 0 && (it + 1) % cfg.denoise_every == 0 {
                    let ch = per / (h * w);
                    for c in 0..ch {
                        median3(&mut row[c * h * w..(c + 1) * h * w], h, w);
                    }
                }
            }
        }
    }
    Ok(best
        .into_iter()
        .zip(classes)
        .zip(iters)
        .map(|(((cost, image), &class), iterations)| Inversion {
            class,
            image,
            cost,
            iterations,
        })
        .collect())
}

/// In-place 3×3 median filter of one `h × w` channel (edges replicate).
pub fn median3(img: &mut [f32], h: usize, w: usize) {
    let src = img.to_vec();
    for y in 0..h {
        for x in 0..w {
            let mut win = [0.0f32; 9];
            let mut k = 0;
            for dy in [-1i64, 0, 1] {
                for dx in [-1i64, 0, 1] {
                    let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                    let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                    win[k] = src[yy * w + xx];
                    k += 1;
                }
            }
            win.sort_by(|a, b| a.total_cmp(b));
            img[y * w + x] = win[4];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_removes_salt() {
        let mut img = vec![0.0; 9];
        img[4] = 1.0;
        median3(&mut img, 3, 3);
        assert!(img.iter().all(|v| *v == 0.0));
    }
}
