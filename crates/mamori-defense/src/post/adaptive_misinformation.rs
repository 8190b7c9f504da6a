//! Adaptive misinformation (Kariyappa & Qureshi, "Defending Against Model Stealing Attacks
//! with Adaptive Misinformation", CVPR 2020).

use crate::error::DefenseError;
use crate::simplex::{argmax, normalise};
use mamori_core::{PostContext, Postprocessor};

/// `y′ = (1 − α)·y + α·ŷ` with `α = σ(ν·(τ − max_k y_k))`.
///
/// The out-of-distribution score is the maximum softmax probability (Hendrycks & Gimpel's
/// baseline, which the paper uses): queries the model is unsure about — typical of synthetic
/// and surrogate-data attack queries — get `α → 1` and a misleading answer, confident
/// (in-distribution) queries get `α → 0` and the true answer. `ν` sets the sharpness of the
/// switch (the paper uses large values, so the switch is nearly a threshold at `τ`).
///
/// The paper's misinformation function `ŷ` is a second network trained to minimise the
/// probability of the correct class. Here it is the analytic equivalent that needs no
/// training: `ŷ = softmax(−z)` restricted to the classes other than the predicted one (`z`
/// the logits when the context carries them, else `ln y`), which puts the most mass on the
/// classes the model finds least likely and none on the predicted class. Does not keep the
/// top-1 label (on OOD queries that is the point).
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveMisinformation {
    tau: f32,
    nu: f32,
}

impl AdaptiveMisinformation {
    /// Threshold `tau` in `(0, 1)` on the maximum probability and sharpness `nu > 0`.
    pub fn new(tau: f32, nu: f32) -> Result<Self, DefenseError> {
        if !(tau > 0.0 && tau < 1.0) {
            return Err(DefenseError::spec(
                "adaptive_misinformation",
                format!("tau must lie in (0, 1), got {tau}"),
            ));
        }
        if !(nu.is_finite() && nu > 0.0) {
            return Err(DefenseError::spec(
                "adaptive_misinformation",
                format!("nu must be finite and > 0, got {nu}"),
            ));
        }
        Ok(AdaptiveMisinformation { tau, nu })
    }

    /// The blending weight `α` for an answer whose top probability is `max_p`.
    pub fn alpha(&self, max_p: f32) -> f32 {
        let t = (self.nu * (self.tau - max_p)) as f64;
        (1.0 / (1.0 + (-t).exp())) as f32
    }
}

impl Postprocessor for AdaptiveMisinformation {
    fn name(&self) -> String {
        "adaptive_misinformation".into()
    }
    fn keeps_top1(&self) -> bool {
        false
    }
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]) {
        let c = probs.len();
        if c < 2 {
            return;
        }
        normalise(probs);
        let top = argmax(probs);
        let alpha = self.alpha(probs[top]);
        if alpha <= 0.0 {
            return;
        }
        let z: Vec<f64> = match ctx.logits {
            Some(l) if l.len() == c && l.iter().all(|v| v.is_finite()) => {
                l.iter().map(|&v| v as f64).collect()
            }
            _ => probs.iter().map(|&p| (p.max(1e-30) as f64).ln()).collect(),
        };
        // ŷ = softmax(−z) over the classes other than `top`.
        let m = z
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != top)
            .map(|(_, v)| -v)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut mis: Vec<f64> = z
            .iter()
            .enumerate()
            .map(|(i, v)| if i == top { 0.0 } else { (-v - m).exp() })
            .collect();
        let s: f64 = mis.iter().sum();
        mis.iter_mut().for_each(|v| *v /= s);
        let a = alpha as f64;
        for (p, q) in probs.iter_mut().zip(&mis) {
            *p = ((1.0 - a) * *p as f64 + a * q) as f32;
        }
        normalise(probs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;
    use crate::simplex::is_distribution;

    #[test]
    fn confident_answers_pass_unsure_answers_are_misled() {
        let am = AdaptiveMisinformation::new(0.5, 100.0).unwrap();
        let mut confident = [0.95f32, 0.04, 0.01];
        am.apply(&ctx(&[]), &mut confident);
        assert_eq!(argmax(&confident), 0);
        assert!((confident[0] - 0.95).abs() < 1e-3, "{confident:?}");
        let mut unsure = [0.3f32, 0.25, 0.45];
        am.apply(&ctx(&[]), &mut unsure);
        assert!(is_distribution(&unsure, 1e-5));
        assert_ne!(argmax(&unsure), 2, "{unsure:?}");
        assert!(unsure[2] < 0.01, "{unsure:?}");
        // The least likely class gets the most misinformation mass.
        assert_eq!(argmax(&unsure), 1);
    }

    #[test]
    fn alpha_is_a_sigmoid_of_the_ood_score() {
        let am = AdaptiveMisinformation::new(0.6, 10.0).unwrap();
        assert!((am.alpha(0.6) - 0.5).abs() < 1e-6);
        assert!(am.alpha(0.2) > 0.9 && am.alpha(0.99) < 0.05);
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let e = AdaptiveMisinformation::new(1.5, 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adaptive_misinformation") && e.contains("tau"),
            "{e}"
        );
        let e = AdaptiveMisinformation::new(0.5, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nu"), "{e}");
    }
}
