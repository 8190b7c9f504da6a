//! Random-query extraction: the substitute learns from answers to noise inputs.
//!
//! The baseline of Tramèr et al., "Stealing Machine Learning Models via Prediction APIs"
//! (USENIX Security 2016), §4 (uniform random queries), and the "T-RND"-style noise queries
//! PRADA (Juuti et al. 2019) evaluates against.

use super::{
    query_all, train_substitute, uniform_inputs, AttackInfo, Extraction, ExtractionAttack,
    ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use mamori_core::{Oracle, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// The noise distribution of the queries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseKind {
    /// Uniform over the input range.
    Uniform,
    /// Gaussian around the middle of the range, clipped to it.
    Gaussian {
        /// Standard deviation, in input units.
        std: f32,
    },
}

/// Random queries (uniform or Gaussian), then a substitute trained on the answers.
#[derive(Clone, Debug)]
pub struct RandomQueries {
    /// Noise distribution.
    pub noise: NoiseKind,
}

impl RandomQueries {
    /// Random queries with `noise`.
    pub fn new(noise: NoiseKind) -> Self {
        Self { noise }
    }
}

impl ExtractionAttack for RandomQueries {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: match self.noise {
                NoiseKind::Uniform => "random",
                NoiseKind::Gaussian { .. } => "random-gaussian",
            },
            paper: "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: false,
            fallback: "trains on labels when probabilities are not disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let meter = Meter::start(oracle);
        let n = ctx.effective_budget(oracle) as usize;
        let shape = oracle.input_shape();
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let x = match self.noise {
            NoiseKind::Uniform => uniform_inputs(&mut rng, n, &shape, ctx.input_range),
            NoiseKind::Gaussian { std } => {
                let [lo, hi] = ctx.input_range;
                let normal = Normal::new((lo + hi) / 2.0, std.max(1e-6))
                    .map_err(|e| AttackError::Config(e.to_string()))?;
                let per: usize = shape.iter().product();
                let data = (0..n * per)
                    .map(|_| normal.sample(&mut rng).clamp(lo, hi))
                    .collect();
                let mut full = vec![n];
                full.extend_from_slice(&shape);
                Tensor::new(full, data)?
            }
        };
        let answer = query_all(oracle, &x, ctx, "querying")?;
        let (sub, soft) = train_substitute(oracle, &x, &answer, ctx, self.info().name)?;
        Ok(meter.finish(oracle, sub, Some(answer.disclosure), soft, Vec::new()))
    }
}
