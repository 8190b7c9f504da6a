//! Keyed, deterministic Laplace noise.

use crate::error::DefenseError;
use crate::key::SecretKey;
use crate::simplex::project_to_simplex;
use mamori_core::{PostContext, Postprocessor};
use rand::Rng;

/// Adds `Laplace(0, b)` noise to every probability and projects the result back onto the
/// simplex. Keyed and deterministic per input exactly like
/// [`super::GaussianNoise`] (`HMAC-SHA256(key, input bytes)` seeds the generator). Samples are
/// drawn by inverting the CDF: `x = −b · sgn(u) · ln(1 − 2|u|)` for `u ~ U(−½, ½)`. Does not
/// promise to keep the top-1 label.
#[derive(Clone, Debug)]
pub struct LaplaceNoise {
    key: SecretKey,
    scale: f32,
}

impl LaplaceNoise {
    /// Noise of scale `b = scale` (finite, > 0; standard deviation `√2·b`) keyed by `key`.
    pub fn new(key: SecretKey, scale: f32) -> Result<Self, DefenseError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(DefenseError::spec(
                "laplace_noise",
                format!("scale must be finite and > 0, got {scale}"),
            ));
        }
        Ok(LaplaceNoise { key, scale })
    }
}

impl Postprocessor for LaplaceNoise {
    fn name(&self) -> String {
        "laplace_noise".into()
    }
    fn keeps_top1(&self) -> bool {
        false
    }
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]) {
        let mut rng = self.key.rng_for(ctx.input);
        let b = self.scale as f64;
        for p in probs.iter_mut() {
            let u: f64 = rng.gen::<f64>() - 0.5;
            let x = -b * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln();
            *p += x as f32;
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
    fn deterministic_keyed_and_valid() {
        let n = LaplaceNoise::new(SecretKey::from_bytes([3; 32]), 0.05).unwrap();
        let m = LaplaceNoise::new(SecretKey::from_bytes([4; 32]), 0.05).unwrap();
        let base = [0.6f32, 0.3, 0.1];
        let (mut a, mut b, mut c) = (base, base, base);
        n.apply(&ctx(&[1.0]), &mut a);
        n.apply(&ctx(&[1.0]), &mut b);
        m.apply(&ctx(&[1.0]), &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(is_distribution(&a, 1e-5));
    }

    #[test]
    fn sample_spread_matches_the_scale() {
        // Mean absolute deviation of Laplace(0, b) is b.
        let n = LaplaceNoise::new(SecretKey::from_bytes([3; 32]), 0.01).unwrap();
        let mut total = 0.0f64;
        let trials = 2000;
        for i in 0..trials {
            let mut v = [0.25f32; 4];
            n.apply(&ctx(&[i as f32]), &mut v);
            total += v.iter().map(|x| (x - 0.25).abs() as f64).sum::<f64>() / 4.0;
        }
        let mad = total / trials as f64;
        // Projection shrinks deviations a little; stay within a loose band.
        assert!(mad > 0.006 && mad < 0.012, "{mad}");
    }

    #[test]
    fn bad_scale_is_rejected() {
        let e = LaplaceNoise::new(SecretKey::from_bytes([0; 32]), f32::INFINITY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("laplace_noise"), "{e}");
    }
}
