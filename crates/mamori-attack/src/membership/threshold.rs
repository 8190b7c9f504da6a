//! Global confidence threshold.
//!
//! Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning: Analyzing the
//! Connection to Overfitting", CSF 2018: a sample is called a member when the victim's
//! confidence in its true label is high. The score is the victim's `p_y`; sweeping the
//! threshold gives the ROC. LiRA (Carlini et al. 2022) uses it as the baseline: one global
//! threshold cannot tell easy non-members from members, so its TPR at low FPR is poor.

use super::{predict_batched, MembershipAttack, MembershipContext};
use crate::error::AttackError;

/// Score = victim's probability of the true label.
#[derive(Clone, Debug, Default)]
pub struct GlobalThreshold;

impl MembershipAttack for GlobalThreshold {
    fn name(&self) -> &'static str {
        "global-threshold"
    }
    fn paper(&self) -> &'static str {
        "Yeom et al., Privacy Risk in Machine Learning, CSF 2018"
    }
    fn scores(&self, ctx: &mut MembershipContext<'_>) -> Result<Vec<f64>, AttackError> {
        let p = predict_batched(ctx.target, &ctx.candidates.x)?;
        Ok(ctx
            .candidates
            .y
            .iter()
            .enumerate()
            .map(|(i, &y)| p.row(i)[y] as f64)
            .collect())
    }
}
