//! Label-only extraction by adaptive retraining.
//!
//! Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security
//! 2016, §5.2 ("adaptive retraining"): when the API returns only class labels, spend the
//! budget `m` in `r` rounds: a first batch of uniform random queries, then in each round
//! retrain the model on every label so far and query the `m / r` candidates (from a random
//! pool) closest to its decision boundary (smallest margin between its top two
//! probabilities) — uncertainty sampling in the sense of active learning. Binary LR reaches
//! more than 99% agreement with about 827 queries (≈ 13·(d+1) for their 64-feature tasks) in the paper.
//! Points come from a box mixture that covers its faces by default (see `mixed`); the paper's
//! uniform points miss sparse data such as images.

use super::{
    query_all, substitute_card, uniform_inputs, AttackInfo, Extraction, ExtractionAttack,
    ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use mamori_core::{softmax_rows, Disclosure, Oracle, Tensor};
use mamori_ml::{NativeModel, Network, Targets};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Tramèr's adaptive retraining on labels.
#[derive(Clone, Debug)]
pub struct LabelOnlyRetraining {
    /// Rounds r.
    pub rounds: usize,
    /// Random candidates scored per selected query.
    pub pool_factor: usize,
    /// At least this many training epochs per round (small sets need many); the rounds run
    /// `max(ctx.train.epochs, min_epochs)` epochs in full (no plateau stop).
    pub min_epochs: usize,
    /// Draw initial points and candidates from the box mixture (faces included) instead of
    /// uniformly (the paper).
    pub mixed: bool,
}

impl Default for LabelOnlyRetraining {
    fn default() -> Self {
        Self {
            rounds: 10,
            pool_factor: 20,
            min_epochs: 100,
            mixed: true,
        }
    }
}

impl LabelOnlyRetraining {
    fn sample<R: rand::Rng>(
        &self,
        rng: &mut R,
        n: usize,
        shape: &[usize],
        range: [f32; 2],
    ) -> Tensor {
        if self.mixed {
            super::mixed_inputs(rng, n, shape, range)
        } else {
            uniform_inputs(rng, n, shape, range)
        }
    }

    /// Runs the attack, starting from already-answered `(x, labels)` when given.
    pub fn extract_from(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
        start: Option<(Tensor, Vec<usize>)>,
    ) -> Result<Extraction, AttackError> {
        let meter = Meter::start(oracle);
        let shape = oracle.input_shape();
        let classes = oracle.num_classes();
        let budget = ctx.effective_budget(oracle) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x1abe1);
        let per_round = budget.div_ceil(self.rounds.max(1) + 1).max(1);
        let (mut x, mut labels) = match start {
            Some((x, l)) if x.batch_size() > 0 => (x, l),
            _ => {
                let n = per_round.min(budget);
                let x = self.sample(&mut rng, n, &shape, ctx.input_range);
                let a = query_all(oracle, &x, ctx, "initial")?;
                (x, a.labels)
            }
        };
        let mut cfg = ctx.train.clone();
        cfg.epochs = cfg.epochs.max(self.min_epochs);
        cfg.progress = false;
        let mut spent = (oracle.queries_used() - meter.q0) as usize;
        let mut round = 0;
        let net = loop {
            let mut net = Network::new(&ctx.arch, &shape, classes, ctx.seed);
            mamori_ml::train(&mut net, &x, &Targets::Labels(labels.clone()), &cfg)?;
            let room = budget.saturating_sub(spent);
            if room == 0 || round >= self.rounds {
                break net;
            }
            let k = per_round.min(room);
            let cand = uniform_inputs(
                &mut rng,
                k * self.pool_factor.max(1),
                &shape,
                ctx.input_range,
            );
            let mut p = net.forward(&cand)?;
            softmax_rows(&mut p);
            let margin: Vec<f32> = p
                .rows()
                .map(|r| {
                    let mut s = r.to_vec();
                    s.sort_by(|a, b| b.total_cmp(a));
                    s[0] - s.get(1).copied().unwrap_or(0.0)
                })
                .collect();
            let mut idx: Vec<usize> = (0..margin.len()).collect();
            idx.sort_by(|a, b| margin[*a].total_cmp(&margin[*b]));
            idx.truncate(k);
            let nx = cand.select(&idx);
            let a = query_all(oracle, &nx, ctx, "boundary")?;
            labels.extend(a.labels);
            x = Tensor::concat(&[x, nx])?;
            spent += k;
            round += 1;
        };
        let card = substitute_card(&ctx.arch, &shape, classes, "label-only", ctx.seed);
        let notes = vec![format!(
            "{} labelled points over {round} adaptive rounds",
            x.batch_size()
        )];
        Ok(meter.finish(
            oracle,
            NativeModel { network: net, card },
            Some(Disclosure::Label),
            false,
            notes,
        ))
    }
}

impl ExtractionAttack for LabelOnlyRetraining {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "label-only",
            paper: "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016, §5.2 (adaptive retraining)",
            needs: Need::Labels,
            needs_query_data: false,
            fallback: "uses labels even when probabilities are disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        self.extract_from(oracle, ctx, None)
    }
}
