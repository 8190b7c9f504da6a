//! Shadow-model membership inference.
//!
//! Shokri, Stronati, Song, Shmatikov, "Membership Inference Attacks Against Machine Learning
//! Models", IEEE S&P 2017. The attacker trains `k` shadow models on halves of its own data
//! from the victim's distribution, so it knows which samples were in each shadow's training
//! set, and learns from them how members' outputs differ from non-members'. Shokri trains one
//! attack classifier per class on the output vectors; here the attack model is, per class, a
//! 1-D logistic regression on the logit-scaled true-class confidence φ (fitted on the shadow
//! IN/OUT outputs), whose membership probability is the score.

use super::{logit_confidence, predict_batched, MembershipAttack, MembershipContext};
use crate::error::AttackError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Shokri-style shadow models with a per-class logistic attack model.
#[derive(Clone, Debug)]
pub struct ShadowModels {
    /// Number of shadow models.
    pub shadows: usize,
    /// Samples per shadow training set (half of each shadow's draw).
    pub per_shadow: usize,
}

impl Default for ShadowModels {
    fn default() -> Self {
        Self {
            shadows: 4,
            per_shadow: 0,
        }
    }
}

/// Fits `P(member | φ) = σ(a φ + b)` by Newton's method (IRLS) with a tiny ridge.
fn fit_logistic_1d(phi: &[f64], y: &[bool]) -> (f64, f64) {
    let (mut a, mut b) = (0.0f64, 0.0f64);
    for _ in 0..50 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
        for (&x, &t) in phi.iter().zip(y) {
            let p = 1.0 / (1.0 + (-(a * x + b)).exp());
            let r = p - t as u8 as f64;
            ga += r * x;
            gb += r;
            let w = (p * (1.0 - p)).max(1e-9);
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

impl MembershipAttack for ShadowModels {
    fn name(&self) -> &'static str {
        "shadow"
    }
    fn paper(&self) -> &'static str {
        "Shokri et al., Membership Inference Attacks Against Machine Learning Models, IEEE S&P 2017"
    }
    fn scores(&self, ctx: &mut MembershipContext<'_>) -> Result<Vec<f64>, AttackError> {
        let pop = ctx.population.ok_or_else(|| AttackError::Unsupported {
            attack: "shadow".into(),
            problem: "needs attacker population data disjoint from the candidates".into(),
        })?;
        let half = if self.per_shadow > 0 {
            self.per_shadow
        } else {
            ctx.candidates.len() / 2
        };
        if pop.len() < 2 * half || half == 0 {
            return Err(AttackError::Config(format!(
                "shadow: population has {} samples, {} needed per shadow",
                pop.len(),
                2 * half
            )));
        }
        let classes = ctx.candidates.num_classes.max(1);
        let mut phi_by_class = vec![Vec::new(); classes];
        let mut in_by_class = vec![Vec::new(); classes];
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x5ad0);
        let bar = crate::extract::progress_bar(ctx.progress, self.shadows as u64, "shadows");
        for s in 0..self.shadows.max(1) {
            let draw = rand::seq::index::sample(&mut rng, pop.len(), 2 * half).into_vec();
            let data = pop.select(&draw);
            let train = pop.select(&draw[..half]);
            let model = ctx
                .trainer
                .train(&train, ctx.seed.wrapping_add(1000 + s as u64))?;
            let p = predict_batched(model.as_ref(), &data.x)?;
            for (i, &y) in data.y.iter().enumerate() {
                phi_by_class[y].push(logit_confidence(p.row(i), y));
                in_by_class[y].push(i < half);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let all_phi: Vec<f64> = phi_by_class.iter().flatten().copied().collect();
        let all_in: Vec<bool> = in_by_class.iter().flatten().copied().collect();
        let global = fit_logistic_1d(&all_phi, &all_in);
        let models: Vec<(f64, f64)> = (0..classes)
            .map(|c| {
                let has_both =
                    in_by_class[c].iter().any(|v| *v) && in_by_class[c].iter().any(|v| !*v);
                if has_both {
                    fit_logistic_1d(&phi_by_class[c], &in_by_class[c])
                } else {
                    global
                }
            })
            .collect();
        let p = predict_batched(ctx.target, &ctx.candidates.x)?;
        Ok(ctx
            .candidates
            .y
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let (a, b) = models[y];
                1.0 / (1.0 + (-(a * logit_confidence(p.row(i), y) + b)).exp())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_fit_separates() {
        let phi = [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0];
        let y = [false, false, true, false, true, true];
        let (a, _) = fit_logistic_1d(&phi, &y);
        assert!(a > 0.0);
    }
}
