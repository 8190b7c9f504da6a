//! Keyed, deterministic Gaussian noise.

use crate::error::DefenseError;
use crate::key::SecretKey;
use crate::simplex::project_to_simplex;
use mamori_core::{PostContext, Postprocessor};
use rand_distr::{Distribution, Normal};

/// Adds `N(0, σ²)` noise to every probability and projects the result back onto the simplex
/// (Euclidean projection).
///
/// The noise is **keyed and deterministic per input**: the generator is seeded with
/// `HMAC-SHA256(key, input bytes)`, so the same query always gets the same answer and
/// repeating a query to average the noise away gains nothing; without the key the noise is
/// unpredictable. Does not promise to keep the top-1 label.
#[derive(Clone, Debug)]
pub struct GaussianNoise {
    key: SecretKey,
    normal: Normal<f64>,
    sigma: f32,
}

impl GaussianNoise {
    /// Noise of standard deviation `sigma` (finite, > 0) keyed by `key`.
    pub fn new(key: SecretKey, sigma: f32) -> Result<Self, DefenseError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(DefenseError::spec(
                "gaussian_noise",
                format!("sigma must be finite and > 0, got {sigma}"),
            ));
        }
        let normal = Normal::new(0.0, sigma as f64)
            .map_err(|e| DefenseError::spec("gaussian_noise", e.to_string()))?;
        Ok(GaussianNoise { key, normal, sigma })
    }

    /// The standard deviation.
    pub fn sigma(&self) -> f32 {
        self.sigma
    }
}

impl Postprocessor for GaussianNoise {
    fn name(&self) -> String {
        "gaussian_noise".into()
    }
    fn keeps_top1(&self) -> bool {
        false
    }
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]) {
        let mut rng = self.key.rng_for(ctx.input);
        for p in probs.iter_mut() {
            *p += self.normal.sample(&mut rng) as f32;
        }
        project_to_simplex(probs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;
    use crate::simplex::is_distribution;

    #[test]
    fn same_input_same_answer_other_input_other_answer() {
        let n = GaussianNoise::new(SecretKey::from_bytes([7; 32]), 0.05).unwrap();
        let base = [0.6f32, 0.3, 0.1];
        let (mut a, mut b, mut c) = (base, base, base);
        n.apply(&ctx(&[1.0, 2.0]), &mut a);
        n.apply(&ctx(&[1.0, 2.0]), &mut b);
        n.apply(&ctx(&[1.0, 2.5]), &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, base);
        assert!(is_distribution(&a, 1e-5));
    }

    #[test]
    fn averaging_repeats_does_not_cancel_the_noise() {
        let n = GaussianNoise::new(SecretKey::from_bytes([7; 32]), 0.05).unwrap();
        let base = [0.5f32, 0.3, 0.2];
        let mut mean = [0.0f32; 3];
        let mut first = base;
        n.apply(&ctx(&[0.5]), &mut first);
        for _ in 0..100 {
            let mut v = base;
            n.apply(&ctx(&[0.5]), &mut v);
            for (m, x) in mean.iter_mut().zip(v) {
                *m += x / 100.0;
            }
        }
        for (m, f) in mean.iter().zip(first) {
            assert!((m - f).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_sigma_is_rejected() {
        let k = SecretKey::from_bytes([0; 32]);
        for s in [0.0, -1.0, f32::NAN] {
            let e = GaussianNoise::new(k.clone(), s).unwrap_err().to_string();
            assert!(e.contains("gaussian_noise") && e.contains("sigma"), "{e}");
        }
    }
}
