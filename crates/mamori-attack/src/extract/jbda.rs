//! Jacobian-based dataset augmentation (JBDA).
//!
//! Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against
//! Machine Learning", AsiaCCS 2017 (arXiv:1602.02697), Algorithm 1 and §4. A small seed set
//! is labelled by the oracle; for substitute training epochs ρ = 0, …, `rounds` the substitute
//! is trained on the labelled set `S_ρ`, then every sample is pushed along the sign of the
//! substitute's Jacobian row for the oracle's label, `x + λ_ρ · sign(∂F_{O(x)}(x)/∂x)`, and the
//! new points are labelled: `S_{ρ+1} = S_ρ ∪ {…}`. The step `λ = 0.1` flips sign every `τ = 3`
//! rounds, `λ_ρ = λ·(−1)^⌊ρ/τ⌋` (periodic step size, §6 of the paper). With
//! `reservoir = Some(κ)`, only κ randomly chosen points of `S_ρ` are augmented per round
//! (reservoir sampling, §6), so the set grows linearly.
//!
//! The authors' reference implementation is cleverhans' `tutorials/mnist_blackbox.py`
//! (`train_sub`) with `attacks_tf.py`/`utils_tf.py: jacobian_augmentation`. What we take from
//! it, and where we differ:
//!
//! - substitute MLP 784-200-200-10 trained with Adam, learning rate 1e-3, batch 128, 10 epochs
//!   per substitute epoch ρ (`ModelSubstitute`, `NB_EPOCHS_S`, `BATCH_SIZE`, `LEARNING_RATE`):
//!   set by the caller through [`ExtractionContext::arch`](super::ExtractionContext) and
//!   `train`;
//! - **one substitute trained on, round after round** (`train(…, init_all=False)` since
//!   cleverhans commit 622fb1c2, May 2017): each round continues from the previous round's
//!   weights with a fresh optimiser state. That is [`Jbda::warm_start`] (the default). The
//!   paper's text describes a retraining from scratch at every ρ (with SGD, learning rate
//!   1e-2, momentum 0.9); `warm_start = false` gives that schedule (with our Adam);
//! - **no clipping** of the synthetic points: `jacobian_augmentation` adds
//!   `λ·sign(∂F/∂x)` and the points are labelled as they are, pixels outside [0, 1] included;
//!   Algorithm 1 has no clipping either. That is `clip = false`. The default, `clip = true`,
//!   keeps them in the context's input range, because a real prediction API (mamori's gateway
//!   among them) refuses out-of-range inputs;
//! - the λ sign schedule `2·[⌊ρ/3⌋ mod 2 = 0] − 1` (+λ for ρ = 0, 1, 2, then −λ): the same as
//!   the paper's `(−1)^⌊ρ/τ⌋`. Between cleverhans commits 4774fe53 (Dec 2017) and 716422b9
//!   (May 2020) the tutorial had `2·[⌊ρ/3⌋ ≠ 0] − 1` (−λ first, never flipping back), a bug
//!   that commit fixed; we follow the paper and the fixed code;
//! - the reference code takes the 150 seeds' labels from the test set's ground truth and
//!   evaluates on the test set without them (`x_test[holdout:]`); we query the oracle for the
//!   seeds, as the paper does (150 more queries), and [`Jbda::held_out`] gives the evaluation
//!   set without the seeds;
//! - `data_aug = 6` in the reference code trains 6 times (on `S_0` … `S_5`, 4,800 points);
//!   our `rounds = 6` trains 7 times and returns the substitute trained on `S_6` (9,600 points),
//!   Table 1's ρ = 6 row;
//! - the Jacobian of the softmax output `F` (the paper's `J_F`; the early reference code used
//!   the softmax output too, cleverhans 3 the logits: `probability_jacobian = false`).

use super::{
    check_data_shape, query_all, sample_indices, substitute_card, AttackInfo, Extraction,
    ExtractionAttack, ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::{GradTarget, Oracle, Tensor};
use mamori_data::Dataset;
use mamori_ml::{NativeModel, Network, Targets};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Papernot et al.'s substitute training with Jacobian augmentation.
#[derive(Clone, Debug)]
pub struct Jbda {
    /// Seed samples: the first `seeds` samples of the attacker data (150 in the paper, the
    /// first 150 MNIST test images in the reference code).
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
    /// Keep training one substitute across rounds (the reference code: `init_all=False`,
    /// weights carried over, fresh optimiser state each round) instead of re-initialising it
    /// before each round (the paper's text). Round 0 starts from `Network::new(…, ctx.seed)`;
    /// without a warm start round `r` starts from `Network::new(…, ctx.seed + r)`. Round `r`
    /// trains with `ctx.train` (until its fit plateaus when `ctx.stop` is set), its shuffling
    /// seed `ctx.train.seed + r`.
    pub warm_start: bool,
    /// Clip the synthetic points to the context's input range (the reference code and
    /// Algorithm 1 do not; real APIs refuse out-of-range inputs).
    pub clip: bool,
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
            warm_start: true,
            clip: true,
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

    /// The evaluation set that matches this attack's seeds: `data` without its first `seeds`
    /// samples (the reference code's `x_test[holdout:]`, 9,850 MNIST test images), so the
    /// substitute is never scored on the images it was seeded with.
    ///
    /// Errors when nothing would be left.
    pub fn held_out(&self, data: &Dataset) -> Result<Dataset, AttackError> {
        if data.len() <= self.seeds {
            return Err(AttackError::Config(format!(
                "jbda: {} samples leave nothing to evaluate on after {} seeds",
                data.len(),
                self.seeds
            )));
        }
        Ok(data.select(&(self.seeds..data.len()).collect::<Vec<_>>()))
    }

    /// `x + λ_r · sign(g)` for every value, clipped to `range` when [`Jbda::clip`] is set
    /// (a zero gradient leaves the value unchanged).
    fn augment(&self, base: &mut Tensor, grad: &Tensor, round: usize, range: [f32; 2]) {
        let lam = self.step(round);
        let [lo, hi] = range;
        for (v, g) in base.data_mut().iter_mut().zip(grad.data()) {
            let sign = if *g > 0.0 {
                1.0
            } else if *g < 0.0 {
                -1.0
            } else {
                0.0
            };
            *v += lam * sign;
            if self.clip {
                *v = v.clamp(lo, hi);
            }
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
        for r in 0..=self.rounds {
            if r > 0 && !self.warm_start {
                // The paper retrains the substitute from scratch on S_ρ at each round.
                net = Network::new(&ctx.arch, &shape, classes, ctx.seed.wrapping_add(r as u64));
            }
            let t = if soft {
                answer_targets(&probs, &labels, true, true)
            } else {
                Targets::Labels(labels.clone())
            };
            let mut cfg = ctx.train.clone();
            cfg.progress = ctx.progress;
            cfg.seed = ctx.train.seed.wrapping_add(r as u64);
            super::fit_substitute(&mut net, &s, &t, &cfg, ctx.stop.as_ref())?;
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
            let mut new = s.select(&pick);
            let base_labels: Vec<usize> = pick.iter().map(|&i| labels[i]).collect();
            let grad = input_gradient_batched(&net, &new, &base_labels, self.probability_jacobian)?;
            self.augment(&mut new, &grad, r, ctx.input_range);
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
    use mamori_core::Normalisation;

    #[test]
    fn lambda_flips_every_tau_rounds() {
        let j = Jbda::default();
        let steps: Vec<f32> = (0..7).map(|r| j.step(r)).collect();
        // +λ first, as in the paper and cleverhans after 716422b9 (not −λ first).
        assert_eq!(steps, vec![0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]);
    }

    fn augmented(clip: bool, round: usize) -> Vec<f32> {
        let j = Jbda {
            clip,
            ..Jbda::default()
        };
        let mut x = Tensor::new(vec![1, 5], vec![0.0, 0.05, 0.5, 1.0, 0.95]).unwrap();
        let g = Tensor::new(vec![1, 5], vec![-2.0, 3.0, 0.0, 1e-9, -0.5]).unwrap();
        j.augment(&mut x, &g, round, [0.0, 1.0]);
        x.data().to_vec()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-6)
    }

    #[test]
    fn augmentation_steps_by_the_gradient_sign_and_clips_only_when_asked() {
        // Round 0: +λ · sign(g); a zero gradient leaves the value alone.
        let free = augmented(false, 0);
        assert!(close(&free, &[-0.1, 0.15, 0.5, 1.1, 0.85]), "{free:?}");
        let clipped = augmented(true, 0);
        assert!(close(&clipped, &[0.0, 0.15, 0.5, 1.0, 0.85]), "{clipped:?}");
        // Round 3: −λ · sign(g).
        let free = augmented(false, 3);
        assert!(close(&free, &[0.1, -0.05, 0.5, 0.9, 1.05]), "{free:?}");
        let clipped = augmented(true, 3);
        assert!(close(&clipped, &[0.1, 0.0, 0.5, 0.9, 1.0]), "{clipped:?}");
    }

    fn dataset(n: usize) -> Dataset {
        Dataset {
            name: "toy".into(),
            x: Tensor::new(vec![n, 2], (0..2 * n).map(|v| v as f32).collect()).unwrap(),
            y: (0..n).map(|i| i % 2).collect(),
            num_classes: 2,
            class_names: vec!["a".into(), "b".into()],
            files: Vec::new(),
            normalisation: Normalisation::default(),
        }
    }

    #[test]
    fn held_out_drops_exactly_the_seed_samples() {
        let j = Jbda {
            seeds: 3,
            ..Jbda::default()
        };
        let h = j.held_out(&dataset(5)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.x.row(0), &[6.0, 7.0]);
        assert_eq!(h.y, vec![1, 0]);
    }

    #[test]
    fn held_out_refuses_a_set_no_larger_than_the_seeds() {
        let j = Jbda {
            seeds: 3,
            ..Jbda::default()
        };
        for n in [0, 3] {
            let e = j.held_out(&dataset(n)).unwrap_err();
            assert!(matches!(e, AttackError::Config(_)), "{e}");
        }
    }
}
