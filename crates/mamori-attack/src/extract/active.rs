//! Pool-based active learning for extraction: query the attacker-data samples the current
//! substitute is least sure about (or that cover the pool best), retrain, repeat.
//!
//! Uncertainty sampling (least confident, margin): Lewis & Gale 1994; Settles, "Active
//! Learning Literature Survey" 2009. k-center greedy core sets: Sener & Savarese, "Active
//! Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018 (here on the
//! substitute's probability vectors as embeddings). Applied to model extraction by
//! Chandrasekaran et al., "Exploring Connections Between Active Learning and Model
//! Extraction", USENIX Security 2020, and Pal et al., "ActiveThief", AAAI 2020.

use super::{
    check_data_shape, query_all, sample_indices, substitute_card, AttackInfo, Extraction,
    ExtractionAttack, ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::{softmax_rows, Disclosure, Oracle, Tensor};
use mamori_ml::{NativeModel, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// How the next batch is chosen from the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveStrategy {
    /// Smallest top-1 probability.
    LeastConfident,
    /// Smallest gap between the top two probabilities.
    Margin,
    /// Greedy k-center cover of the pool (farthest point from the labelled set).
    KCenter,
}

/// Pool-based active-learning extraction.
#[derive(Clone, Debug)]
pub struct ActiveLearning {
    /// Selection rule.
    pub strategy: ActiveStrategy,
    /// Query rounds after the random initial batch.
    pub rounds: usize,
    /// Fraction of the budget spent on the random initial batch.
    pub initial_fraction: f64,
    /// Largest pool scored per round (a random subset of the attacker data).
    pub pool: usize,
}

impl ActiveLearning {
    /// Defaults: 10 rounds, 10% random start, pool of 20,000.
    pub fn new(strategy: ActiveStrategy) -> Self {
        Self {
            strategy,
            rounds: 10,
            initial_fraction: 0.1,
            pool: 20_000,
        }
    }
}

/// Indices of the `k` pool entries with the highest `score`.
fn top_k(score: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|a, b| score[*b].total_cmp(&score[*a]));
    idx.truncate(k);
    idx
}

/// Greedy k-center: picks `k` rows of `emb` (pool) farthest from `centers` (already
/// labelled) one by one.
fn k_center(emb: &Tensor, centers: &Tensor, k: usize) -> Vec<usize> {
    let n = emb.batch_size();
    let d2 =
        |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum() };
    let mut min_d: Vec<f32> = (0..n)
        .map(|i| {
            centers
                .rows()
                .map(|c| d2(emb.row(i), c))
                .fold(f32::INFINITY, f32::min)
        })
        .collect();
    let mut out = Vec::with_capacity(k);
    for _ in 0..k.min(n) {
        let best = (0..n)
            .max_by(|&a, &b| min_d[a].total_cmp(&min_d[b]))
            .unwrap_or(0);
        out.push(best);
        let c = emb.row(best).to_vec();
        for (i, m) in min_d.iter_mut().enumerate() {
            *m = m.min(d2(emb.row(i), &c));
        }
    }
    out
}

fn probs_batched(net: &Network, x: &Tensor) -> Result<Tensor, AttackError> {
    let n = x.batch_size();
    let mut parts = Vec::new();
    let mut s = 0;
    while s < n {
        let e = (s + 1024).min(n);
        let mut p = net.forward(&x.slice_rows(s, e))?;
        softmax_rows(&mut p);
        parts.push(p);
        s = e;
    }
    Ok(Tensor::concat(&parts)?)
}

impl ExtractionAttack for ActiveLearning {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: match self.strategy {
                ActiveStrategy::LeastConfident => "active",
                ActiveStrategy::Margin => "active-margin",
                ActiveStrategy::KCenter => "active-kcenter",
            },
            paper: "Settles 2009 (uncertainty); Sener & Savarese, ICLR 2018 (k-center); for extraction: Chandrasekaran et al., USENIX Security 2020; Pal et al., ActiveThief, AAAI 2020",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: true,
            fallback: "selection uses the substitute only; trains on labels when probabilities are not disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let name = self.info().name;
        let data = ctx.require_query_data(name)?;
        check_data_shape(data, oracle, name)?;
        let meter = Meter::start(oracle);
        let budget = (ctx.effective_budget(oracle) as usize).min(data.len());
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let shape = oracle.input_shape();
        let classes = oracle.num_classes();
        let mut labelled = vec![false; data.len()];
        let init =
            ((budget as f64 * self.initial_fraction).ceil() as usize).clamp(1, budget.max(1));
        let mut chosen = sample_indices(&mut rng, data.len(), init.min(budget));
        for &i in &chosen {
            labelled[i] = true;
        }
        let mut x = data.x.select(&chosen);
        let a = query_all(oracle, &x, ctx, "initial")?;
        let disclosure = a.disclosure;
        let soft = is_soft(disclosure) && ctx.prefer_soft;
        let mut probs = a.probs;
        let mut labels = a.labels;
        let per_round = (budget - chosen.len()).div_ceil(self.rounds.max(1));
        let mut notes = Vec::new();
        let net = loop {
            let mut net = Network::new(&ctx.arch, &shape, classes, ctx.seed);
            let t = answer_targets(&probs, &labels, soft, ctx.prefer_soft);
            let mut cfg = ctx.train.clone();
            cfg.progress = ctx.progress;
            super::fit_substitute(&mut net, &x, &t, &cfg, ctx.stop.as_ref())?;
            let room = budget.saturating_sub(chosen.len());
            if room == 0 {
                break net;
            }
            let k = per_round.min(room);
            let unl: Vec<usize> = (0..data.len()).filter(|&i| !labelled[i]).collect();
            let pool: Vec<usize> = if unl.len() > self.pool {
                sample_indices(&mut rng, unl.len(), self.pool)
                    .into_iter()
                    .map(|i| unl[i])
                    .collect()
            } else {
                unl
            };
            if pool.is_empty() {
                notes.push("pool exhausted".into());
                break net;
            }
            let px = data.x.select(&pool);
            let pp = probs_batched(&net, &px)?;
            let pick_local = match self.strategy {
                ActiveStrategy::LeastConfident => {
                    let score: Vec<f32> = pp
                        .rows()
                        .map(|r| 1.0 - r.iter().copied().fold(0.0, f32::max))
                        .collect();
                    top_k(&score, k)
                }
                ActiveStrategy::Margin => {
                    let score: Vec<f32> = pp
                        .rows()
                        .map(|r| {
                            let mut s = r.to_vec();
                            s.sort_by(|a, b| b.total_cmp(a));
                            -(s[0] - s.get(1).copied().unwrap_or(0.0))
                        })
                        .collect();
                    top_k(&score, k)
                }
                ActiveStrategy::KCenter => {
                    let centers = probs_batched(&net, &x)?;
                    k_center(&pp, &centers, k)
                }
            };
            let pick: Vec<usize> = pick_local.into_iter().map(|i| pool[i]).collect();
            for &i in &pick {
                labelled[i] = true;
            }
            let nx = data.x.select(&pick);
            let a = query_all(oracle, &nx, ctx, "selected")?;
            probs = Tensor::concat(&[probs, a.probs])?;
            labels.extend(a.labels);
            x = Tensor::concat(&[x, nx])?;
            chosen.extend(pick);
            notes.push(format!("labelled {}", chosen.len()));
        };
        let card = substitute_card(&ctx.arch, &shape, classes, name, ctx.seed);
        let sub = NativeModel { network: net, card };
        let d: Option<Disclosure> = Some(disclosure);
        Ok(meter.finish(oracle, sub, d, soft, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_center_picks_far_points() {
        let emb = Tensor::new(vec![4, 1], vec![0.0, 0.1, 5.0, 10.0]).unwrap();
        let centers = Tensor::new(vec![1, 1], vec![0.0]).unwrap();
        assert_eq!(k_center(&emb, &centers, 2), vec![3, 2]);
        assert_eq!(top_k(&[0.1, 0.9, 0.5], 2), vec![1, 2]);
    }
}
