//! Membership inference: was this example in the victim's training set?
//!
//! One trait, [`MembershipAttack`], one file per attack: a global confidence threshold
//! (Yeom et al. 2018), shadow models (Shokri et al. 2017) and LiRA (Carlini et al. 2022).
//! [`Roc`] computes the ROC curve, AUC and TPR at a fixed low FPR, the metric LiRA argues
//! for. [`MembershipSplit`] builds the standard experiment: a victim trained on one half of a
//! sample of the data, so membership is known for every candidate.

mod lira;
mod shadow;
mod threshold;

pub use lira::Lira;
pub use shadow::ShadowModels;
pub use threshold::GlobalThreshold;

use crate::error::AttackError;
use mamori_core::{Model, Tensor};
use mamori_data::Dataset;
use mamori_ml::{Arch, NativeModel, Network, Targets, TrainConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Trains a model of the victim's kind on a dataset (for shadow models).
pub trait ShadowTrainer {
    /// Trains one model on `data` with `seed`.
    fn train(&mut self, data: &Dataset, seed: u64) -> Result<Box<dyn Model>, AttackError>;
}

/// A [`ShadowTrainer`] training networks of one architecture with one configuration.
pub struct NetTrainer {
    /// Architecture.
    pub arch: Arch,
    /// Training settings.
    pub cfg: TrainConfig,
}

impl ShadowTrainer for NetTrainer {
    fn train(&mut self, data: &Dataset, seed: u64) -> Result<Box<dyn Model>, AttackError> {
        let shape = data.x.sample_shape().to_vec();
        let mut net = Network::new(&self.arch, &shape, data.num_classes, seed);
        let cfg = TrainConfig {
            seed,
            ..self.cfg.clone()
        };
        mamori_ml::train(&mut net, &data.x, &Targets::Labels(data.y.clone()), &cfg)?;
        let card =
            crate::extract::substitute_card(&self.arch, &shape, data.num_classes, "shadow", seed);
        Ok(Box::new(NativeModel { network: net, card }))
    }
}

/// What a membership attack sees.
pub struct MembershipContext<'a> {
    /// The victim.
    pub target: &'a dyn Model,
    /// Candidates to score (labelled).
    pub candidates: &'a Dataset,
    /// Attacker data from the same distribution, disjoint from the candidates (offline
    /// shadow models).
    pub population: Option<&'a Dataset>,
    /// Trains shadow models.
    pub trainer: &'a mut dyn ShadowTrainer,
    /// Seed.
    pub seed: u64,
    /// Progress bars.
    pub progress: bool,
}

/// A membership inference attack: higher score = more likely a member.
pub trait MembershipAttack {
    /// Short name.
    fn name(&self) -> &'static str;
    /// The paper.
    fn paper(&self) -> &'static str;
    /// One score per candidate.
    fn scores(&self, ctx: &mut MembershipContext<'_>) -> Result<Vec<f64>, AttackError>;
}

/// Probabilities of `model` on `x`, in batches.
pub(crate) fn predict_batched(model: &dyn Model, x: &Tensor) -> Result<Tensor, AttackError> {
    let n = x.batch_size();
    let mut parts = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + 1024).min(n);
        parts.push(model.predict(&x.slice_rows(s, e))?);
        s = e;
    }
    Ok(Tensor::concat(&parts)?)
}

/// LiRA's logit-scaled confidence `φ = ln p_y − ln(1 − p_y)`, computed stably as
/// `ln p_y − ln Σ_{k≠y} p_k`.
pub fn logit_confidence(probs: &[f32], y: usize) -> f64 {
    let py = (probs[y] as f64).max(1e-45);
    let rest: f64 = probs
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != y)
        .map(|(_, p)| *p as f64)
        .sum::<f64>()
        .max(1e-45);
    py.ln() - rest.ln()
}

/// ROC curve of scores against membership truth.
#[derive(Clone, Debug, Serialize)]
pub struct Roc {
    /// False-positive rates, increasing.
    pub fpr: Vec<f64>,
    /// True-positive rates.
    pub tpr: Vec<f64>,
    /// Area under the curve.
    pub auc: f64,
}

impl Roc {
    /// Builds the ROC (ties broken pessimistically as one step).
    pub fn new(scores: &[f64], members: &[bool]) -> Result<Roc, AttackError> {
        let pos = members.iter().filter(|m| **m).count();
        let neg = members.len() - pos;
        if scores.len() != members.len() || pos == 0 || neg == 0 {
            return Err(AttackError::Config(format!(
                "ROC needs members and non-members with one score each ({} scores, {pos} members, {neg} non-members)",
                scores.len()
            )));
        }
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut fpr = vec![0.0];
        let mut tpr = vec![0.0];
        let mut i = 0;
        while i < idx.len() {
            let s = scores[idx[i]];
            while i < idx.len() && scores[idx[i]] == s {
                if members[idx[i]] {
                    tp += 1;
                } else {
                    fp += 1;
                }
                i += 1;
            }
            fpr.push(fp as f64 / neg as f64);
            tpr.push(tp as f64 / pos as f64);
        }
        let auc = fpr
            .windows(2)
            .zip(tpr.windows(2))
            .map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0)
            .sum();
        Ok(Roc { fpr, tpr, auc })
    }

    /// Largest TPR with FPR ≤ `max_fpr`.
    pub fn tpr_at(&self, max_fpr: f64) -> f64 {
        self.fpr
            .iter()
            .zip(&self.tpr)
            .filter(|(f, _)| **f <= max_fpr + 1e-12)
            .map(|(_, t)| *t)
            .fold(0.0, f64::max)
    }
}

/// The standard experiment: `2n` random samples, the first `n` train the victim.
pub struct MembershipSplit {
    /// The `2n` candidates.
    pub candidates: Dataset,
    /// Whether each candidate is a member.
    pub members: Vec<bool>,
    /// The `n` members (the victim's training set).
    pub train: Dataset,
    /// Samples outside the candidates (attacker population for offline shadows).
    pub population: Dataset,
}

impl MembershipSplit {
    /// Draws `2n` candidates from `data` (shuffled with `seed`); the rest is the population.
    pub fn new(data: &Dataset, n: usize, seed: u64) -> Result<Self, AttackError> {
        if 2 * n > data.len() || n == 0 {
            return Err(AttackError::Config(format!(
                "membership split: need 2×{n} samples, '{}' has {}",
                data.name,
                data.len()
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let perm = rand::seq::index::sample(&mut rng, data.len(), data.len()).into_vec();
        let cand = &perm[..2 * n];
        let mut members = vec![false; 2 * n];
        members[..n].iter_mut().for_each(|m| *m = true);
        Ok(Self {
            candidates: data.select(cand),
            members,
            train: data.select(&perm[..n]),
            population: data.select(&perm[2 * n..]),
        })
    }
}

/// Results of one membership attack.
#[derive(Clone, Debug, Serialize)]
pub struct MembershipResult {
    /// Attack name.
    pub attack: String,
    /// Area under the ROC curve.
    pub auc: f64,
    /// TPR at 0.1% FPR.
    pub tpr_at_0_1pct_fpr: f64,
    /// TPR at 1% FPR.
    pub tpr_at_1pct_fpr: f64,
    /// Balanced accuracy of the best threshold.
    pub best_accuracy: f64,
    /// The ROC curve.
    #[serde(skip)]
    pub roc: Roc,
}

impl MembershipResult {
    /// Scores → result.
    pub fn new(attack: &str, scores: &[f64], members: &[bool]) -> Result<Self, AttackError> {
        let roc = Roc::new(scores, members)?;
        let best_accuracy = roc
            .fpr
            .iter()
            .zip(&roc.tpr)
            .map(|(f, t)| (t + 1.0 - f) / 2.0)
            .fold(0.0, f64::max);
        Ok(Self {
            attack: attack.into(),
            auc: roc.auc,
            tpr_at_0_1pct_fpr: roc.tpr_at(0.001),
            tpr_at_1pct_fpr: roc.tpr_at(0.01),
            best_accuracy,
            roc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_perfect_and_random_scores() {
        let m = [true, true, false, false];
        let r = Roc::new(&[0.9, 0.8, 0.2, 0.1], &m).unwrap();
        assert!((r.auc - 1.0).abs() < 1e-12);
        assert_eq!(r.tpr_at(0.0), 1.0);
        let r = Roc::new(&[0.5; 4], &m).unwrap();
        assert!((r.auc - 0.5).abs() < 1e-12);
        assert_eq!(r.tpr_at(0.001), 0.0);
        let r = Roc::new(&[0.1, 0.2, 0.8, 0.9], &m).unwrap();
        assert!(r.auc < 1e-12);
        assert!(Roc::new(&[0.1], &[true]).is_err());
    }

    #[test]
    fn logit_confidence_is_monotone_and_finite() {
        assert!(logit_confidence(&[0.9, 0.1], 0) > logit_confidence(&[0.6, 0.4], 0));
        assert!(logit_confidence(&[1.0, 0.0], 0).is_finite());
        assert!((logit_confidence(&[0.5, 0.5], 1)).abs() < 1e-12);
    }
}
