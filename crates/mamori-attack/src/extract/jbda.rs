//! Jacobian-based dataset augmentation (JBDA).
//!
//! Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against
//! Machine Learning", AsiaCCS 2017, Algorithm 1 and §4. A small seed set is labelled by the
//! oracle; for substitute training epochs ρ = 0, …, `rounds` the substitute is trained on the labelled
//! set `S_ρ`, then every sample is pushed along the sign of the substitute's Jacobian row for
//! the oracle's label, `x + λ_ρ · sign(∂F_{O(x)}(x)/∂x)`, and the new points are labelled:
//! `S_{ρ+1} = S_ρ ∪ {…}`. The step `λ = 0.1` flips sign every `τ = 3` rounds (periodic step
//! size, §6 of the paper). With `reservoir = Some(κ)`, only κ randomly chosen points of `S_ρ`
//! are augmented per round (reservoir sampling, §6), so the set grows linearly.

use super::{
    check_data_shape, query_all, sample_indices, substitute_card, AttackInfo, Extraction,
    ExtractionAttack, ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::{GradTarget, Oracle, Tensor};
use mamori_ml::{NativeModel, Network, Targets};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Papernot et al.'s substitute training with Jacobian augmentation.
#[derive(Clone, Debug)]
pub struct Jbda {
    /// Seed samples taken from the attacker data (150 in the paper).
    pub seeds: usize,
    /// Augmentation rounds ρ_max (6 in the paper): the substitute is trained on `S_0`, …,
    /// `S_ρmax` (ρ_max + 1 trainings) and the returned one is trained on `S_ρmax`, which holds
    /// `seeds · 2^ρmax` points without a reservoir (Table 1 of the paper reports the accuracy at
    /// ρ = 6: 150 · 64 = 9,600 label queries).
    pub rounds: usize,
    /// Step λ (0.1).
    pub lambda: f32,
    /// Rounds between sign flips of λ, τ (3).
    pub tau: usize,
    /// Augment only κ random points per round.
    pub reservoir: Option<usize>,
    /// Differentiate the substitute's softmax output `F_{O(x)}` (the paper's `J_F`) instead of
    /// its logit (the later reference code).
    pub probability_jacobian: bool,
}

impl Default for Jbda {
    fn default() -> Self {
        Self {
            seeds: 150,
            rounds: 6,
            lambda: 0.1,
            tau: 3,
            reservoir: None,
            probability_jacobian: true,
        }
    }
}

impl Jbda {
    /// λ for round `r` (0-based): `λ · (−1)^⌊r/τ⌋`.
    pub fn step(&self, round: usize) -> f32 {
        if (round / self.tau.max(1)).is_multiple_of(2) {
            self.lambda
        } else {
            -self.lambda
        }
    }
}

impl ExtractionAttack for Jbda {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "jbda",
            paper: "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017",
            needs: Need::Labels,
            needs_query_data: true,
            fallback: "needs labels only; trains on probabilities when --soft and disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let data = ctx.require_query_data("jbda")?;
        check_data_shape(data, oracle, "jbda")?;
        let meter = Meter::start(oracle);
        let budget = ctx.effective_budget(oracle) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let n_seeds = self.seeds.min(budget).min(data.len());
        if n_seeds == 0 {
            return Err(AttackError::Config(
                "jbda: budget or seed set is empty".into(),
            ));
        }
        // Seeds: the first samples of the attacker data (Papernot: the first 150 test images).
        let seed_idx: Vec<usize> = (0..n_seeds).collect();
        let mut s = data.x.select(&seed_idx);
        let a0 = query_all(oracle, &s, ctx, "seeds")?;
        let disclosure = a0.disclosure;
        let soft = is_soft(disclosure) && ctx.prefer_soft;
        let mut labels = a0.labels;
        let mut probs = a0.probs;
        let shape = oracle.input_shape();
        let classes = oracle.num_classes();
        let mut net = Network::new(&ctx.arch, &shape, classes, ctx.seed);
        let mut notes = Vec::new();
        let [lo, hi] = ctx.input_range;
        for r in 0..=self.rounds {
            // Papernot retrains the substitute from scratch on S_ρ at each round.
            net = Network::new(&ctx.arch, &shape, classes, ctx.seed.wrapping_add(r as u64));
            let t = if soft {
                answer_targets(&probs, &labels, true, true)
            } else {
                Targets::Labels(labels.clone())
            };
            let mut cfg = ctx.train.clone();
            cfg.progress = ctx.progress;
            cfg.seed = ctx.train.seed.wrapping_add(r as u64);
            mamori_ml::train(&mut net, &s, &t, &cfg)?;
            notes.push(format!("round {r}: |S| = {}", s.batch_size()));
            if r == self.rounds {
                break;
            }
            let room = budget.saturating_sub((oracle.queries_used() - meter_q0(&meter)) as usize);
            if room == 0 {
                notes.push("budget exhausted: stopping augmentation".into());
                break;
            }
            let pick: Vec<usize> = match self.reservoir {
                Some(k) if k < s.batch_size() => sample_indices(&mut rng, s.batch_size(), k),
                _ => (0..s.batch_size()).collect(),
            };
            let pick: Vec<usize> = pick.into_iter().take(room).collect();
            let base = s.select(&pick);
            let base_labels: Vec<usize> = pick.iter().map(|&i| labels[i]).collect();
            let grad =
                input_gradient_batched(&net, &base, &base_labels, self.probability_jacobian)?;
            let lam = self.step(r);
            let mut new = base;
            for (v, g) in new.data_mut().iter_mut().zip(grad.data()) {
                let sign = if *g > 0.0 {
                    1.0
                } else if *g < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                *v = (*v + lam * sign).clamp(lo, hi);
            }
            let a = query_all(oracle, &new, ctx, "augmented")?;
            labels.extend(a.labels);
            probs = Tensor::concat(&[probs, a.probs])?;
            s = Tensor::concat(&[s, new])?;
        }
        let card = substitute_card(&ctx.arch, &shape, classes, "jbda", ctx.seed);
        let sub = NativeModel { network: net, card };
        Ok(meter.finish(oracle, sub, Some(disclosure), soft, notes))
    }
}

fn meter_q0(m: &Meter) -> u64 {
    m.q0
}

/// `∂ F[label] / ∂ x` (softmax output or logit) in chunks of 512 samples.
fn input_gradient_batched(
    net: &Network,
    x: &Tensor,
    labels: &[usize],
    probability: bool,
) -> Result<Tensor, AttackError> {
    let n = x.batch_size();
    let mut parts = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + 512).min(n);
        let l = labels[s..e].to_vec();
        let t = if probability {
            GradTarget::Probability(l)
        } else {
            GradTarget::Logit(l)
        };
        parts.push(net.input_gradient(&x.slice_rows(s, e), &t)?);
        s = e;
    }
    Ok(Tensor::concat(&parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_flips_every_tau_rounds() {
        let j = Jbda::default();
        let steps: Vec<f32> = (0..7).map(|r| j.step(r)).collect();
        assert_eq!(steps, vec![0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]);
    }
}
