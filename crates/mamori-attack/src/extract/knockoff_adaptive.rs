//! Knockoff Nets, adaptive strategy: a gradient bandit over a hierarchy of the attacker's
//! data chooses which kind of image to query next.
//!
//! Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
//! CVPR 2019, §4.1.2 and Algorithm 1. The public reference code ships only the random
//! strategy; this follows the paper: actions are the nodes of a tree over the query set
//! (here: its classes, each split into k-means clusters), a path is sampled with a softmax
//! policy over per-node preferences `H`, and after each answer every node on the path is
//! updated with the gradient-bandit rule
//! `H(a) ← H(a) + α (r − r̄)(1 − π(a))`, `H(a') ← H(a') − α (r − r̄) π(a')` for its siblings,
//! with `r̄` the running mean reward. Rewards (each rescaled to `[0, 1]` by its running range):
//! certainty (margin of the victim's top two probabilities), diversity (how much the answer
//! exceeds the mean of the last Δ answers, per class) and loss (cross-entropy of the online
//! substitute against the victim's answer). The final substitute is retrained on the whole
//! transfer set.

use super::{
    check_data_shape, progress_bar, train_substitute, AttackInfo, Extraction, ExtractionAttack,
    ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::{Oracle, Tensor};
use mamori_data::Dataset;
use mamori_ml::{Network, TrainConfig};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// Which rewards drive the bandit (Orekondy et al. §4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reward {
    /// Margin of the top two victim probabilities.
    Certainty,
    /// Novelty of the answer against recent answers.
    Diversity,
    /// Substitute's cross-entropy against the answer.
    Loss,
    /// The sum of the three.
    All,
}

/// The adaptive (bandit) Knockoff strategy.
#[derive(Clone, Debug)]
pub struct KnockoffAdaptive {
    /// Reward signal.
    pub reward: Reward,
    /// Bandit learning rate α.
    pub alpha: f64,
    /// Samples queried per step (each with its own sampled path).
    pub batch: usize,
    /// k-means clusters per query-set class (the leaves of the tree).
    pub clusters_per_class: usize,
    /// Window Δ (in steps) of the diversity reward.
    pub diversity_window: usize,
}

impl Default for KnockoffAdaptive {
    fn default() -> Self {
        Self {
            reward: Reward::All,
            alpha: 0.1,
            batch: 32,
            clusters_per_class: 4,
            diversity_window: 25,
        }
    }
}

/// Tree of the query set: `leaves[p][l]` lists sample indices of class `p`, cluster `l`.
struct Tree {
    leaves: Vec<Vec<Vec<usize>>>,
}

fn build_tree<R: Rng>(data: &Dataset, k: usize, rng: &mut R) -> Tree {
    let classes = data
        .num_classes
        .max(data.y.iter().copied().max().map_or(1, |m| m + 1));
    let mut by_class = vec![Vec::new(); classes];
    for (i, &y) in data.y.iter().enumerate() {
        by_class[y].push(i);
    }
    let leaves = by_class
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|members| kmeans_split(&data.x, &members, k.max(1), rng))
        .collect();
    Tree { leaves }
}

/// Lloyd's k-means (10 iterations) of the rows `members`; returns non-empty clusters.
fn kmeans_split<R: Rng>(x: &Tensor, members: &[usize], k: usize, rng: &mut R) -> Vec<Vec<usize>> {
    let k = k.min(members.len());
    if k <= 1 {
        return vec![members.to_vec()];
    }
    let d = x.sample_len();
    let mut centers: Vec<Vec<f32>> = rand::seq::index::sample(rng, members.len(), k)
        .into_iter()
        .map(|i| x.row(members[i]).to_vec())
        .collect();
    let mut assign = vec![0usize; members.len()];
    for _ in 0..10 {
        for (a, &m) in assign.iter_mut().zip(members) {
            let r = x.row(m);
            *a = (0..k)
                .min_by(|&i, &j| dist2(r, &centers[i]).total_cmp(&dist2(r, &centers[j])))
                .unwrap_or(0);
        }
        let mut sums = vec![vec![0.0f32; d]; k];
        let mut counts = vec![0usize; k];
        for (&a, &m) in assign.iter().zip(members) {
            counts[a] += 1;
            for (s, v) in sums[a].iter_mut().zip(x.row(m)) {
                *s += v;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centers[c] = sums[c].iter().map(|s| s / counts[c] as f32).collect();
            }
        }
    }
    let mut out = vec![Vec::new(); k];
    for (&a, &m) in assign.iter().zip(members) {
        out[a].push(m);
    }
    out.retain(|c| !c.is_empty());
    out
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn softmax(h: &[f64]) -> Vec<f64> {
    let m = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = h.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn sample_from<R: Rng>(p: &[f64], rng: &mut R) -> usize {
    let u: f64 = rng.gen();
    let mut acc = 0.0;
    for (i, v) in p.iter().enumerate() {
        acc += v;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

/// Gradient-bandit update of one level: `a` was chosen with policy `pi`.
fn bandit_update(h: &mut [f64], pi: &[f64], a: usize, alpha: f64, advantage: f64) {
    for (i, (hv, p)) in h.iter_mut().zip(pi).enumerate() {
        if i == a {
            *hv += alpha * advantage * (1.0 - p);
        } else {
            *hv -= alpha * advantage * p;
        }
    }
}

/// Running min–max rescaling of one reward.
#[derive(Default)]
struct Range {
    lo: f64,
    hi: f64,
    seen: bool,
}

impl Range {
    fn scale(&mut self, v: f64) -> f64 {
        if !self.seen {
            self.lo = v;
            self.hi = v;
            self.seen = true;
        }
        self.lo = self.lo.min(v);
        self.hi = self.hi.max(v);
        if self.hi - self.lo < 1e-12 {
            0.5
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

impl ExtractionAttack for KnockoffAdaptive {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "knockoff-adaptive",
            paper: "Orekondy et al., Knockoff Nets: Stealing Functionality of Black-Box Models, CVPR 2019 (adaptive strategy, Alg. 1)",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: true,
            fallback: "with labels only, certainty and diversity rewards see one-hot answers; the substitute trains on labels",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let data = ctx.require_query_data("knockoff-adaptive")?;
        check_data_shape(data, oracle, "knockoff-adaptive")?;
        let meter = Meter::start(oracle);
        let budget = ctx.effective_budget(oracle) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let tree = build_tree(data, self.clusters_per_class, &mut rng);
        let mut h_top = vec![0.0f64; tree.leaves.len()];
        let mut h_leaf: Vec<Vec<f64>> = tree.leaves.iter().map(|l| vec![0.0; l.len()]).collect();
        let mut used = vec![false; data.len()];
        let shape = oracle.input_shape();
        let classes = oracle.num_classes();
        let mut online = Network::new(&ctx.arch, &shape, classes, ctx.seed ^ 0x5eed);
        let online_cfg = TrainConfig {
            epochs: 1,
            progress: false,
            ..ctx.train.clone()
        };
        let (mut r_cert, mut r_div, mut r_loss) =
            (Range::default(), Range::default(), Range::default());
        let mut recent: VecDeque<Vec<f32>> = VecDeque::new();
        let mut mean_reward = 0.0f64;
        let mut n_rewards = 0u64;
        let mut chosen_all = Vec::with_capacity(budget);
        let mut probs_all = Vec::new();
        let mut labels_all = Vec::with_capacity(budget);
        let mut disclosure = None;
        let mut top_counts = vec![0usize; tree.leaves.len()];
        let bar = progress_bar(ctx.progress, budget as u64, "bandit");
        while chosen_all.len() < budget {
            let b = self.batch.max(1).min(budget - chosen_all.len());
            let pi_top = softmax(&h_top);
            let mut paths = Vec::with_capacity(b);
            let mut idx = Vec::with_capacity(b);
            for _ in 0..b {
                let p = sample_from(&pi_top, &mut rng);
                let l = sample_from(&softmax(&h_leaf[p]), &mut rng);
                let leaf = &tree.leaves[p][l];
                // Prefer an image not yet queried; fall back to any image of the leaf.
                let mut pick = leaf[rng.gen_range(0..leaf.len())];
                for _ in 0..8 {
                    if !used[pick] {
                        break;
                    }
                    pick = leaf[rng.gen_range(0..leaf.len())];
                }
                used[pick] = true;
                top_counts[p] += 1;
                paths.push((p, l));
                idx.push(pick);
            }
            let x = data.x.select(&idx);
            let answer = oracle.query(&x)?;
            disclosure.get_or_insert(answer.disclosure);
            let q = online.forward(&x)?;
            let mut q = q;
            mamori_core::softmax_rows(&mut q);
            let mean: Vec<f32> = if recent.is_empty() {
                vec![0.0; classes]
            } else {
                let mut m = vec![0.0; classes];
                for r in &recent {
                    for (a, v) in m.iter_mut().zip(r) {
                        *a += v;
                    }
                }
                m.iter().map(|v| v / recent.len() as f32).collect()
            };
            for (i, &(p, l)) in paths.iter().enumerate() {
                let y = answer.probs.row(i);
                let mut sorted: Vec<f32> = y.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let cert = (sorted[0] - sorted.get(1).copied().unwrap_or(0.0)) as f64;
                let div: f64 = y
                    .iter()
                    .zip(&mean)
                    .map(|(a, m)| (a - m).max(0.0) as f64)
                    .sum();
                let loss: f64 = y
                    .iter()
                    .zip(q.row(i))
                    .map(|(t, p)| -(*t as f64) * (p.max(1e-12) as f64).ln())
                    .sum();
                let r = match self.reward {
                    Reward::Certainty => r_cert.scale(cert),
                    Reward::Diversity => r_div.scale(div),
                    Reward::Loss => r_loss.scale(loss),
                    Reward::All => r_cert.scale(cert) + r_div.scale(div) + r_loss.scale(loss),
                };
                n_rewards += 1;
                mean_reward += (r - mean_reward) / n_rewards as f64;
                let adv = r - mean_reward;
                let pi_leaf = softmax(&h_leaf[p]);
                let pi_now = softmax(&h_top);
                bandit_update(&mut h_top, &pi_now, p, self.alpha, adv);
                bandit_update(&mut h_leaf[p], &pi_leaf, l, self.alpha, adv);
            }
            let mut batch_mean = vec![0.0f32; classes];
            for row in answer.probs.rows() {
                for (a, v) in batch_mean.iter_mut().zip(row) {
                    *a += v / b as f32;
                }
            }
            recent.push_back(batch_mean);
            if recent.len() > self.diversity_window.max(1) {
                recent.pop_front();
            }
            let soft = is_soft(answer.disclosure);
            let t = answer_targets(&answer.probs, &answer.labels, soft, ctx.prefer_soft);
            mamori_ml::train(&mut online, &x, &t, &online_cfg)?;
            labels_all.extend_from_slice(&answer.labels);
            probs_all.push(answer.probs);
            chosen_all.extend(idx);
            bar.inc(b as u64);
        }
        bar.finish_and_clear();
        let x = data.x.select(&chosen_all);
        let probs = if probs_all.is_empty() {
            Tensor::zeros(vec![0, classes])
        } else {
            Tensor::concat(&probs_all)?
        };
        let answer = mamori_core::OracleAnswer {
            probs,
            labels: labels_all,
            disclosure: disclosure.unwrap_or(mamori_core::Disclosure::Label),
        };
        let (sub, soft) = train_substitute(oracle, &x, &answer, ctx, "knockoff-adaptive")?;
        let pi = softmax(&h_top);
        let notes = vec![
            format!(
                "tree: {} classes of '{}' × ≤{} clusters",
                tree.leaves.len(),
                data.name,
                self.clusters_per_class
            ),
            format!(
                "queries per top-level node: {top_counts:?}; final policy: {:?}",
                pi.iter()
                    .map(|p| (p * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>()
            ),
        ];
        Ok(meter.finish(oracle, sub, Some(answer.disclosure), soft, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandit_moves_towards_rewarded_arm() {
        let mut h = vec![0.0; 3];
        let mut mean = 0.0;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for t in 1..=2000 {
            let pi = softmax(&h);
            let a = sample_from(&pi, &mut rng);
            let r = if a == 2 { 1.0 } else { 0.0 };
            mean += (r - mean) / t as f64;
            bandit_update(&mut h, &pi, a, 0.1, r - mean);
        }
        let pi = softmax(&h);
        assert!(pi[2] > 0.9, "policy {pi:?}");
    }

    #[test]
    fn kmeans_separates_two_blobs() {
        let mut data = Vec::new();
        for i in 0..20 {
            let base = if i < 10 { 0.0 } else { 10.0 };
            data.extend_from_slice(&[base + (i % 3) as f32 * 0.1, base]);
        }
        let x = Tensor::new(vec![20, 2], data).unwrap();
        let members: Vec<usize> = (0..20).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let clusters = kmeans_split(&x, &members, 2, &mut rng);
        assert_eq!(clusters.len(), 2);
        for c in clusters {
            assert!(c.iter().all(|&i| i < 10) || c.iter().all(|&i| i >= 10));
        }
    }
}
