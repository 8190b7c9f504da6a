//! Prediction poisoning (Orekondy, Schiele & Fritz, "Prediction Poisoning: Towards Defenses
//! Against DNN Model Stealing Attacks", ICLR 2020) — the MAD (maximising angular deviation)
//! defense, restricted to the attacker's final dense layer.

use crate::error::DefenseError;
use crate::key::SecretKey;
use crate::simplex::{argmax, normalise};
use mamori_core::{PostContext, Postprocessor, Tensor};
use mamori_ml::{LayerSpec, Network};
use rand_distr::{Distribution, Normal};
use std::sync::Arc;

/// MAD: perturb the answer `y` into `ỹ` (with `‖ỹ − y‖₁ ≤ ε`) so that the gradient a thief
/// computes when training on `ỹ` points as far as possible from the gradient `y` would give.
///
/// **Objective.** The thief's model `F(x; w)` trained with cross-entropy on target `v` moves
/// along `−Gᵀv` where `G` stacks `∇_w log F_k(x; w)`. MAD maximises
/// `‖Gᵀỹ/‖Gᵀỹ‖ − Gᵀy/‖Gᵀy‖‖²` over the simplex. We restrict `w` to the final dense layer
/// `z = W·h + b` on top of penultimate features `h`: then `∇_W log F_k = (e_k − p) hᵀ` (and
/// `(e_k − p)` for `b`), so `Gᵀv = (v − p) ⊗ [h; 1]` for any distribution `v`, where
/// `p = softmax(W·h + b)` is the thief model's current prediction. The outer product with the
/// fixed `[h; 1]` scales every inner product by `‖[h; 1]‖²`, so the angle between `Gᵀỹ` and
/// `Gᵀy` equals the angle between `ỹ − p` and `y − p`.
///
/// **Surrogate.** As in the paper the defender does not know the thief's weights and uses a
/// surrogate: the served network's own feature extractor (all layers but the last) gives `h`,
/// and a keyed random head `W` (Glorot-scaled Gaussian, `b = 0`, fixed at construction) stands
/// for an untrained thief head, giving `p`. (Using the victim's own head would make `p = y` and
/// `Gᵀy = 0`.)
///
/// **Cheaper approximation** for models without a native network (ONNX): no features, so the
/// surrogate prediction is taken as uniform, `p = 1/c` (an uninformed thief head); the angle is
/// then between `ỹ − u` and `y − u`.
///
/// **Optimisation** (the paper's heuristic): the objective is convex in `ỹ`, so its maximum over
/// the simplex is at a vertex `e_k`; for every `k` we move from `y` towards `e_k` as far as the
/// budget allows, `ỹ = (1 − α)y + α e_k` with `α = min(1, ε / (2(1 − y_k)))` (the exact L1
/// distance is `2α(1 − y_k)`), and keep the candidate with the largest angular deviation. With
/// `keep_top1` (the paper's MAD-argmax variant) `α` is further capped so that the predicted
/// class stays strictly on top. Every candidate is a convex combination of distributions, so
/// the answer is a distribution.
pub struct PredictionPoisoning {
    epsilon: f32,
    keep_top1: bool,
    surrogate: Option<Surrogate>,
}

/// Feature extractor + random head standing for the thief's model.
struct Surrogate {
    features: Network,
    head: Vec<f32>,
    classes: usize,
    dim: usize,
}

impl std::fmt::Debug for PredictionPoisoning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionPoisoning")
            .field("epsilon", &self.epsilon)
            .field("keep_top1", &self.keep_top1)
            .field("native_surrogate", &self.surrogate.is_some())
            .finish()
    }
}

impl PredictionPoisoning {
    /// MAD with L1 budget `epsilon` (in `(0, 2]`). With `network` (the served native model),
    /// the surrogate uses its penultimate features and a random head drawn from `key`; without
    /// it, the uniform approximation.
    pub fn new(
        epsilon: f32,
        keep_top1: bool,
        network: Option<Arc<Network>>,
        key: &SecretKey,
    ) -> Result<Self, DefenseError> {
        if !(epsilon > 0.0 && epsilon <= 2.0) {
            return Err(DefenseError::spec(
                "prediction_poisoning",
                format!("epsilon (L1 budget) must lie in (0, 2], got {epsilon}"),
            ));
        }
        let surrogate = match network {
            Some(net) => Some(Surrogate::new(&net, key)?),
            None => None,
        };
        Ok(PredictionPoisoning {
            epsilon,
            keep_top1,
            surrogate,
        })
    }

    /// The surrogate prediction `p` for one input (uniform without a native network or when
    /// the features cannot be computed).
    fn surrogate_prediction(&self, input: &[f32], c: usize) -> Vec<f64> {
        if let Some(s) = &self.surrogate {
            if s.classes == c {
                match s.predict(input) {
                    Ok(p) => return p,
                    Err(e) => tracing::warn!(
                        error = %e,
                        "prediction_poisoning: surrogate features failed; using the uniform approximation"
                    ),
                }
            }
        }
        vec![1.0 / c as f64; c]
    }
}

impl Surrogate {
    fn new(net: &Network, key: &SecretKey) -> Result<Self, DefenseError> {
        let err = |m: String| DefenseError::spec("prediction_poisoning", m);
        let last = net
            .layers
            .len()
            .checked_sub(1)
            .ok_or_else(|| err("the network has no layers".into()))?;
        let (dim, classes) = match &net.layers[last] {
            LayerSpec::Dense { inputs, outputs } => (*inputs, *outputs),
            other => {
                return Err(err(format!(
                    "the network's last layer must be dense, found {other:?}"
                )))
            }
        };
        if net.params.len() != net.layers.len() {
            return Err(err("the network's params do not match its layers".into()));
        }
        let features = Network {
            input_shape: net.input_shape.clone(),
            layers: net.layers[..last].to_vec(),
            params: net.params[..last].to_vec(),
        };
        let std = (2.0 / (dim + classes) as f64).sqrt();
        let normal = Normal::new(0.0, std).map_err(|e| err(e.to_string()))?;
        let mut rng = key.derive("prediction_poisoning/head").rng_for(&[]);
        let head = (0..dim * classes)
            .map(|_| normal.sample(&mut rng) as f32)
            .collect();
        Ok(Surrogate {
            features,
            head,
            classes,
            dim,
        })
    }

    fn predict(&self, input: &[f32]) -> Result<Vec<f64>, DefenseError> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.features.input_shape);
        let x = Tensor::new(shape, input.to_vec()).map_err(mamori_core::ModelError::from)?;
        let h = if self.features.layers.is_empty() {
            x
        } else {
            self.features.forward(&x)?
        };
        let h = h.data();
        if h.len() != self.dim {
            return Err(DefenseError::spec(
                "prediction_poisoning",
                format!(
                    "penultimate features have {} values, expected {}",
                    h.len(),
                    self.dim
                ),
            ));
        }
        let mut z: Vec<f64> = (0..self.classes)
            .map(|k| {
                self.head[k * self.dim..(k + 1) * self.dim]
                    .iter()
                    .zip(h)
                    .map(|(w, v)| *w as f64 * *v as f64)
                    .sum()
            })
            .collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        z.iter_mut().for_each(|v| *v = (*v - m).exp());
        let s: f64 = z.iter().sum();
        z.iter_mut().for_each(|v| *v /= s);
        Ok(z)
    }
}

/// Cosine of the angle between `a − p` and `b − p` (1 when either is zero).
fn cosine_about(a: &[f64], b: &[f64], p: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..p.len() {
        let (x, y) = (a[i] - p[i], b[i] - p[i]);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 1e-30 || bb <= 1e-30 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// The MAD perturbation of `y` given the surrogate prediction `p` (both distributions of the
/// same length), L1 budget `epsilon` and the MAD-argmax constraint. Returns `ỹ`.
pub fn mad_perturb(y: &[f64], p: &[f64], epsilon: f64, keep_top1: bool) -> Vec<f64> {
    let c = y.len();
    let top = {
        let mut t = 0;
        for i in 0..c {
            if y[i] > y[t] {
                t = i;
            }
        }
        t
    };
    let mut best = y.to_vec();
    let mut best_cos = 1.0;
    for k in 0..c {
        if y[k] >= 1.0 {
            continue;
        }
        let mut alpha = (epsilon / (2.0 * (1.0 - y[k]))).min(1.0);
        if keep_top1 && k != top {
            // (1 − α) y_top > (1 − α) y_k + α  ⇔  α < (y_top − y_k) / (1 + y_top − y_k).
            let gap = y[top] - y[k];
            alpha = alpha.min(gap / (1.0 + gap) * (1.0 - 1e-3));
        }
        if alpha <= 0.0 {
            continue;
        }
        let cand: Vec<f64> = (0..c)
            .map(|i| (1.0 - alpha) * y[i] + if i == k { alpha } else { 0.0 })
            .collect();
        let cos = cosine_about(&cand, y, p);
        if cos < best_cos {
            best_cos = cos;
            best = cand;
        }
    }
    best
}

impl Postprocessor for PredictionPoisoning {
    fn name(&self) -> String {
        "prediction_poisoning".into()
    }
    fn keeps_top1(&self) -> bool {
        self.keep_top1
    }
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]) {
        let c = probs.len();
        if c < 2 {
            return;
        }
        normalise(probs);
        let y: Vec<f64> = probs.iter().map(|&v| v as f64).collect();
        let p = self.surrogate_prediction(ctx.input, c);
        let top = argmax(probs);
        let out = mad_perturb(&y, &p, self.epsilon as f64, self.keep_top1);
        for (d, s) in probs.iter_mut().zip(&out) {
            *d = *s as f32;
        }
        normalise(probs);
        if self.keep_top1 && argmax(probs) != top {
            // f32 rounding closed a tiny gap: fall back to the unperturbed answer.
            for (d, s) in probs.iter_mut().zip(&y) {
                *d = *s as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;
    use crate::simplex::is_distribution;

    fn l1(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
    }

    #[test]
    fn respects_the_budget_and_deviates() {
        let y = [0.7, 0.2, 0.1];
        let p = [1.0 / 3.0; 3];
        let out = mad_perturb(&y, &p, 0.5, false);
        assert!(l1(&out, &y) <= 0.5 + 1e-9, "{out:?}");
        assert!(cosine_about(&out, &y, &p) < 0.8, "{out:?}");
        assert!(
            cosine_about(&out, &y, &p) < cosine_about(&mad_perturb(&y, &p, 0.1, false), &y, &p)
        );
        // With a large budget it reaches the vertex that maximises the angle.
        let out = mad_perturb(&y, &p, 2.0, false);
        assert!(out.iter().any(|&v| (v - 1.0).abs() < 1e-9), "{out:?}");
        assert!(out[0] < 0.5);
    }

    #[test]
    fn argmax_variant_keeps_the_label() {
        let y = [0.5, 0.45, 0.05];
        let p = [0.1, 0.1, 0.8];
        let out = mad_perturb(&y, &p, 1.0, true);
        assert!(out[0] > out[1] && out[0] > out[2], "{out:?}");
        assert!(cosine_about(&out, &y, &p) < 1.0);
    }

    #[test]
    fn uniform_approximation_gives_a_distribution() {
        let k = SecretKey::from_bytes([5; 32]);
        let mad = PredictionPoisoning::new(0.8, false, None, &k).unwrap();
        let mut v = [0.05f32, 0.9, 0.05];
        mad.apply(&ctx(&[0.0; 4]), &mut v);
        assert!(is_distribution(&v, 1e-5));
        let l1: f32 = v
            .iter()
            .zip([0.05f32, 0.9, 0.05])
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(l1 > 0.1 && l1 <= 0.8 + 1e-4, "{v:?}");
    }

    #[test]
    fn native_surrogate_uses_the_penultimate_features() {
        let k = SecretKey::from_bytes([5; 32]);
        let net = Arc::new(Network::new(
            &mamori_ml::Arch::Mlp { hidden: vec![16] },
            &[6],
            4,
            3,
        ));
        let mad = PredictionPoisoning::new(0.6, false, Some(net.clone()), &k).unwrap();
        let s = mad.surrogate.as_ref().unwrap();
        let x1 = [0.1f32, 0.9, 0.3, 0.0, 0.5, 0.2];
        let x2 = [0.9f32, 0.1, 0.0, 0.7, 0.5, 0.8];
        let (p1, p2) = (s.predict(&x1).unwrap(), s.predict(&x2).unwrap());
        assert!((p1.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_ne!(p1, p2);
        let base = [0.1f32, 0.6, 0.2, 0.1];
        let mut v = base;
        mad.apply(&ctx(&x1), &mut v);
        assert!(is_distribution(&v, 1e-5));
        let l1: f32 = v.iter().zip(base).map(|(a, b)| (a - b).abs()).sum();
        assert!(l1 > 0.05 && l1 <= 0.6 + 1e-4, "{v:?}");
        // The chosen perturbation maximises the deviation about this input's surrogate p.
        let y: Vec<f64> = base.iter().map(|&x| x as f64).collect();
        let expect = mad_perturb(&y, &p1, 0.6, false);
        for (a, b) in v.iter().zip(&expect) {
            assert!((*a as f64 - b).abs() < 1e-5);
        }
        // A wrong-length input falls back to the uniform approximation instead of panicking.
        let mut w = base;
        mad.apply(&ctx(&[0.0; 3]), &mut w);
        assert!(is_distribution(&w, 1e-5));
    }

    #[test]
    fn bad_budget_and_network_are_rejected() {
        let k = SecretKey::from_bytes([5; 32]);
        let e = PredictionPoisoning::new(0.0, false, None, &k)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prediction_poisoning") && e.contains("epsilon"),
            "{e}"
        );
        let net = Network {
            input_shape: vec![4],
            layers: vec![LayerSpec::Relu],
            params: vec![Default::default()],
        };
        let e = PredictionPoisoning::new(0.5, false, Some(Arc::new(net)), &k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("last layer must be dense"), "{e}");
    }
}
