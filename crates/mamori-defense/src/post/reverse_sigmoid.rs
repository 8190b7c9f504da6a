//! Reverse sigmoid (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive
//! Perturbations", IEEE S&P Workshops 2019).

use crate::error::DefenseError;
use crate::simplex::normalise;
use mamori_core::{PostContext, Postprocessor};

/// `y′ = normalise(y − β·(σ(γ·logit(y)) − ½))`, element-wise, where `logit(y) = ln(y/(1−y))`.
///
/// The perturbation is chosen so that the answer's *log-probabilities* (what a soft-label
/// thief's cross-entropy trains on) carry misleading gradients, while a small change of `y`
/// itself costs little accuracy. Entries that would become negative (possible when `β > 1`)
/// are clipped to 0 before normalising.
///
/// **When the top-1 label is kept.** Write `f(y) = y − β(σ(γ·logit y) − ½)`. Substituting
/// `y = σ(t)` gives `f′(y) = 1 − βγ·σ′(γt)/σ′(t)`, and `σ′(γt)/σ′(t) = cosh²(t/2)/cosh²(γt/2)`,
/// which is at most 1 for every `t` exactly when `γ ≥ 1` (maximum at `t = 0`). So for `γ ≥ 1`
/// and `βγ < 1`, `f` is strictly increasing and positive (`f(0⁺) = β/2 > 0`): the order of all
/// classes, hence the top-1 label, is kept, and [`Postprocessor::keeps_top1`] is `true`. For
/// `γ < 1` (the paper's MNIST setting is `β = 1, γ = 0.2`) `f` decreases near `y = 0`, so very
/// unlikely classes are boosted and the top-1 label can change; `keeps_top1` is then `false`.
///
/// **Why a soft-label thief collapses against a confident victim.** `f(y) → 1 − β/2` as
/// `y → 1` and `f(y) → β/2` as `y → 0`. With `β = 1` both limits are ½, so a confident answer
/// (top-1 probability `1 − ε`) is mapped towards the uniform distribution: the gap between
/// the top entry and the others shrinks roughly like `ε^γ` (for 10 classes and `γ = 0.2`: 0.14
/// at `ε = 10⁻²`, 0.021 at `10⁻⁶`, 0.003 at `10⁻¹⁰`). The argmax mostly survives, so a
/// label-only thief is unaffected, but the probabilities a soft-label thief fits (by
/// cross-entropy or by regression on logits or probabilities) carry less signal the more
/// confident the victim is. Measured in `docs/bench/defense.md` (example
/// `reverse_sigmoid_repro`).
#[derive(Clone, Copy, Debug)]
pub struct ReverseSigmoid {
    beta: f32,
    gamma: f32,
}

impl ReverseSigmoid {
    /// Reverse sigmoid with strength `beta > 0` and slope `gamma > 0`.
    pub fn new(beta: f32, gamma: f32) -> Result<Self, DefenseError> {
        for (name, v) in [("beta", beta), ("gamma", gamma)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(DefenseError::spec(
                    "reverse_sigmoid",
                    format!("{name} must be finite and > 0, got {v}"),
                ));
            }
        }
        Ok(ReverseSigmoid { beta, gamma })
    }

    /// The perturbed, unnormalised value for one probability.
    fn f(&self, y: f32) -> f64 {
        let y = (y as f64).clamp(1e-12, 1.0 - 1e-12);
        let logit = (y / (1.0 - y)).ln();
        let s = 1.0 / (1.0 + (-(self.gamma as f64) * logit).exp());
        y - self.beta as f64 * (s - 0.5)
    }
}

impl Postprocessor for ReverseSigmoid {
    fn name(&self) -> String {
        "reverse_sigmoid".into()
    }
    fn keeps_top1(&self) -> bool {
        self.gamma >= 1.0 && self.beta * self.gamma < 1.0
    }
    fn apply(&self, _ctx: &PostContext<'_>, probs: &mut [f32]) {
        for p in probs.iter_mut() {
            *p = self.f(*p).max(0.0) as f32;
        }
        normalise(probs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;
    use crate::simplex::{argmax, is_distribution};

    #[test]
    fn matches_the_formula() {
        let r = ReverseSigmoid::new(1.0, 0.2).unwrap();
        let mut v = [0.9f32, 0.1];
        r.apply(&ctx(&[]), &mut v);
        let f = |y: f64| {
            let l = (y / (1.0 - y)).ln();
            y - (1.0 / (1.0 + (-0.2 * l).exp()) - 0.5)
        };
        let (a, b) = (f(0.9), f(0.1));
        assert!((v[0] as f64 - a / (a + b)).abs() < 1e-6, "{v:?}");
        assert!(is_distribution(&v, 1e-6));
    }

    #[test]
    fn published_setting_boosts_unlikely_classes() {
        // β = 1, γ = 0.2: a class at 1e-6 ends up above a class at 0.3.
        let r = ReverseSigmoid::new(1.0, 0.2).unwrap();
        assert!(!r.keeps_top1());
        let mut v = [0.3f32, 0.299_999, 0.4, 1e-6];
        r.apply(&ctx(&[]), &mut v);
        assert!(v[3] > v[0], "{v:?}");
    }

    #[test]
    fn confident_answers_tend_to_uniform_with_beta_one() {
        // The mechanism behind the published soft-label collapse: the more confident the
        // victim, the flatter the answer, while the argmax survives.
        let r = ReverseSigmoid::new(1.0, 0.2).unwrap();
        let mut gaps = Vec::new();
        for eps in [1e-2f32, 1e-4, 1e-6] {
            let mut v = vec![eps / 9.0; 10];
            v[3] = 1.0 - eps;
            r.apply(&ctx(&[]), &mut v);
            assert_eq!(argmax(&v), 3, "{v:?}");
            assert!(is_distribution(&v, 1e-5));
            gaps.push(v[3] - v[0]);
        }
        assert!(
            gaps[0] > 0.1 && gaps[1] < 0.06 && gaps[2] < 0.025,
            "{gaps:?}"
        );
        assert!(gaps.windows(2).all(|w| w[1] < w[0]), "{gaps:?}");
    }

    #[test]
    fn order_preserving_setting_keeps_order() {
        let r = ReverseSigmoid::new(0.5, 1.5).unwrap();
        assert!(r.keeps_top1());
        let mut v = [0.05f32, 0.25, 0.7, 1e-7];
        r.apply(&ctx(&[]), &mut v);
        assert_eq!(argmax(&v), 2);
        assert!(v[3] < v[0] && v[0] < v[1] && v[1] < v[2], "{v:?}");
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let e = ReverseSigmoid::new(-1.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("reverse_sigmoid") && e.contains("beta"), "{e}");
        let e = ReverseSigmoid::new(1.0, f32::NAN).unwrap_err().to_string();
        assert!(e.contains("gamma"), "{e}");
    }
}
