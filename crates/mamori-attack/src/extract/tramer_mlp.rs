//! Extraction of a one-hidden-layer MLP by retraining on random queries.
//!
//! Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security
//! 2016, §4.2: for models whose equations are not linear, the attacker queries random inputs
//! and fits a model of the known architecture to the returned probabilities (minimising
//! cross-entropy, i.e. solving the non-linear system approximately). With twice as many
//! queries as unknowns (`2 × 2,225 = 4,450` for a 20-unit hidden layer) they report 99.89%
//! test agreement. Uniform points in a high-dimensional box all lie near its centre, far from
//! sparse data such as images; by default the queries come from a mixture that also covers the
//! box's faces (`mixed = false` gives the paper's uniform queries).

use super::{
    query_all, uniform_inputs, AttackInfo, Extraction, ExtractionAttack, ExtractionContext, Meter,
    Need,
};
use crate::error::AttackError;
use crate::extract::train_substitute;
use mamori_core::Oracle;
use mamori_ml::Arch;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Tramèr's MLP extraction: `factor × unknowns` uniform queries, soft-target retraining.
#[derive(Clone, Debug)]
pub struct TramerMlp {
    /// Hidden units of the (known) victim architecture.
    pub hidden: usize,
    /// Queries per unknown parameter (2 in the paper).
    pub factor: f64,
    /// At least this many epochs, always run in full (no plateau stop).
    pub min_epochs: usize,
    /// Draw queries from the box mixture (faces included) instead of uniformly (the paper).
    pub mixed: bool,
}

impl Default for TramerMlp {
    fn default() -> Self {
        Self {
            hidden: 20,
            factor: 2.0,
            min_epochs: 200,
            mixed: true,
        }
    }
}

impl TramerMlp {
    /// Unknown parameters of a `d`-`h`-`c` MLP.
    pub fn unknowns(d: usize, h: usize, c: usize) -> usize {
        d * h + h + h * c + c
    }
}

impl ExtractionAttack for TramerMlp {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "tramer-mlp",
            paper: "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016, §4.2",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: false,
            fallback: "trains on labels when probabilities are not disclosed (much lower fidelity)",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let meter = Meter::start(oracle);
        let shape = oracle.input_shape();
        let d: usize = shape.iter().product();
        let c = oracle.num_classes();
        let unknowns = Self::unknowns(d, self.hidden, c);
        let want = (unknowns as f64 * self.factor).ceil() as usize;
        let n = want.min(ctx.effective_budget(oracle) as usize);
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let x = if self.mixed {
            super::mixed_inputs(&mut rng, n, &shape, ctx.input_range)
        } else {
            uniform_inputs(&mut rng, n, &shape, ctx.input_range)
        };
        let answer = query_all(oracle, &x, ctx, "querying")?;
        let mut ctx2 = ctx.clone();
        ctx2.arch = Arch::Mlp {
            hidden: vec![self.hidden],
        };
        // The paper's long fixed schedule: the answers are probabilities to regress, and the
        // top-1 agreement a plateau watches stops moving long before they are fitted.
        ctx2.train.epochs = ctx.train.epochs.max(self.min_epochs);
        ctx2.stop = None;
        let (sub, soft) = train_substitute(oracle, &x, &answer, &ctx2, "tramer-mlp")?;
        let notes = vec![format!(
            "{unknowns} unknowns, {n} queries ({:.2} per unknown)",
            n as f64 / unknowns as f64
        )];
        Ok(meter.finish(oracle, sub, Some(answer.disclosure), soft, notes))
    }
}
