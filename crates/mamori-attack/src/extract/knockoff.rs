//! Knockoff Nets, random strategy: query natural images from another distribution and train
//! the substitute on the victim's (soft) answers.
//!
//! Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
//! CVPR 2019, §4.1 ("random" sampling strategy).

use super::{
    check_data_shape, query_all, sample_indices, train_substitute, AttackInfo, Extraction,
    ExtractionAttack, ExtractionContext, Meter, Need,
};
use crate::error::AttackError;
use mamori_core::Oracle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Knockoff Nets with the random strategy: `budget` samples drawn uniformly from the
/// attacker's data (without replacement while it lasts).
#[derive(Clone, Debug, Default)]
pub struct KnockoffRandom;

impl ExtractionAttack for KnockoffRandom {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "knockoff",
            paper: "Orekondy et al., Knockoff Nets: Stealing Functionality of Black-Box Models, CVPR 2019",
            needs: Need::ProbabilitiesPreferred,
            needs_query_data: true,
            fallback: "trains on labels when probabilities are not disclosed",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let data = ctx.require_query_data("knockoff")?;
        check_data_shape(data, oracle, "knockoff")?;
        let meter = Meter::start(oracle);
        let n = ctx.effective_budget(oracle) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let idx = sample_indices(&mut rng, data.len(), n);
        let x = data.x.select(&idx);
        let answer = query_all(oracle, &x, ctx, "querying")?;
        let (sub, soft) = train_substitute(oracle, &x, &answer, ctx, "knockoff")?;
        let notes = vec![format!(
            "query data: {} ({} samples)",
            data.name,
            data.len()
        )];
        Ok(meter.finish(oracle, sub, Some(answer.disclosure), soft, notes))
    }
}
