//! Ownership verification: does a suspect model carry our DAWN watermark?
//!
//! The suspect is queried on the ledger's inputs and every answer is compared with the
//! watermark label we gave for that input. A model that was trained on our watermarked
//! answers reproduces many of them; an independent model matches a watermark label only by
//! chance.
//!
//! **Chance of a match.** For a ledger input `x` with true label `y`, the watermark label
//! `w(x)` is drawn by `HMAC-SHA256(k, x)` uniformly from the `c − 1` labels other than `y`,
//! independently of anything a party without the key can compute. For any model `f` that did
//! not see our watermarked answers, `P(f(x) = w(x)) = 1[f(x) ≠ y] / (c − 1) ≤ 1/(c − 1)`, and
//! the events are independent across distinct inputs (HMAC as a PRF). So the number of matches
//! of an independent model is stochastically dominated by `Binomial(n, 1/(c−1))`, and the
//! upper tail of that binomial is a valid (conservative) p-value for the null hypothesis "the
//! suspect is independent of our answers". This is the argument of DAWN (Szyller et al. 2021,
//! §4), where watermarked answers are random wrong labels; measuring an empirical agreement
//! baseline instead would need a population of independent models and gives no guarantee, so
//! we use `1/(c − 1)`. Duplicate inputs in the ledger are counted once.

use crate::error::DefenseError;
use crate::ledger::{commitment, LedgerRecord};
use mamori_core::{Disclosure, Model, Oracle, OracleAnswer, OracleError, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Default significance level for the verdict.
pub const DEFAULT_ALPHA: f64 = 1e-4;

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The suspect matches the watermark far more often than chance: `p < alpha`.
    WatermarkFound,
    /// Not enough matches to reject independence at `alpha`.
    NotFound,
}

/// One queried ledger input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceItem {
    /// SHA-256 of the input.
    pub input_sha256: String,
    /// The watermark label we answered.
    pub watermark_label: usize,
    /// The label the suspect predicted.
    pub suspect_label: usize,
    /// Whether they are equal.
    pub matched: bool,
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Upper binomial tail `P(X ≥ matches)` for `X ~ Binomial(queried, chance)`.
    pub p_value: f64,
    /// `log10` of the p-value (finite even when `p_value` underflows to 0).
    pub log10_p_value: f64,
    /// Number of suspect answers equal to the watermark label.
    pub matches: usize,
    /// Number of distinct ledger inputs queried.
    pub queried: usize,
    /// Chance of a match under independence, `1/(c − 1)`.
    pub chance: f64,
    /// Significance level the verdict used.
    pub alpha: f64,
    /// The decision.
    pub verdict: Verdict,
    /// Number of classes.
    pub num_classes: usize,
    /// Commitment to the ledger records used (see [`crate::ledger::commitment`]).
    pub ledger_commitment: String,
    /// Per-input evidence.
    pub evidence: Vec<EvidenceItem>,
}

/// `ln P(X ≥ k)` for `X ~ Binomial(n, p)`, computed in log space (log-sum-exp over the tail
/// terms `ln C(n,i) + i ln p + (n−i) ln(1−p)`), so p-values far below `f64::MIN_POSITIVE`
/// are still represented.
pub fn binomial_upper_tail_ln(n: usize, k: usize, p: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k > n {
        return f64::NEG_INFINITY;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let mut ln_fact = vec![0.0f64; n + 1];
    for i in 1..=n {
        ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
    }
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    let terms: Vec<f64> = (k..=n)
        .map(|i| ln_fact[n] - ln_fact[i] - ln_fact[n - i] + i as f64 * lp + (n - i) as f64 * lq)
        .collect();
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    (m + s.ln()).min(0.0)
}

/// Distinct ledger records (first occurrence of each input hash).
pub fn distinct_records(records: &[LedgerRecord]) -> Vec<&LedgerRecord> {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter(|r| seen.insert(r.input_sha256.clone()))
        .collect()
}

/// Queries `suspect` on the ledger's inputs (in batches of `batch`) and decides at `alpha`.
pub fn verify(
    suspect: &mut dyn Oracle,
    records: &[LedgerRecord],
    alpha: f64,
    batch: usize,
) -> Result<VerifyResult, DefenseError> {
    if records.is_empty() {
        return Err(DefenseError::Verify("the ledger has no records".into()));
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(DefenseError::Verify(format!(
            "alpha must lie in (0, 1), got {alpha}"
        )));
    }
    let c = records[0].num_classes;
    if let Some(r) = records.iter().find(|r| r.num_classes != c) {
        return Err(DefenseError::Verify(format!(
            "ledger mixes answers with {c} and {} classes",
            r.num_classes
        )));
    }
    if c < 2 {
        return Err(DefenseError::Verify(format!(
            "ledger records have {c} classes"
        )));
    }
    if suspect.num_classes() != c {
        return Err(DefenseError::Verify(format!(
            "the suspect has {} classes, the ledger {c}",
            suspect.num_classes()
        )));
    }
    let shape = suspect.input_shape();
    let len: usize = shape.iter().product();
    let distinct = distinct_records(records);
    if let Some(r) = distinct.iter().find(|r| r.input.len() != len) {
        return Err(DefenseError::Verify(format!(
            "ledger input {} has {} values; the suspect takes shape {shape:?} ({len} values)",
            r.input_sha256,
            r.input.len()
        )));
    }
    let mut evidence = Vec::with_capacity(distinct.len());
    for chunk in distinct.chunks(batch.max(1)) {
        let mut s = vec![chunk.len()];
        s.extend_from_slice(&shape);
        let data: Vec<f32> = chunk.iter().flat_map(|r| r.input.iter().copied()).collect();
        let x = Tensor::new(s, data).map_err(mamori_core::ModelError::from)?;
        let ans = suspect.query(&x)?;
        if ans.labels.len() != chunk.len() {
            return Err(DefenseError::Verify(format!(
                "the suspect answered {} labels for {} inputs",
                ans.labels.len(),
                chunk.len()
            )));
        }
        for (r, &l) in chunk.iter().zip(&ans.labels) {
            evidence.push(EvidenceItem {
                input_sha256: r.input_sha256.clone(),
                watermark_label: r.given_label,
                suspect_label: l,
                matched: l == r.given_label,
            });
        }
    }
    let queried = evidence.len();
    let matches = evidence.iter().filter(|e| e.matched).count();
    let chance = 1.0 / (c as f64 - 1.0);
    let ln_p = binomial_upper_tail_ln(queried, matches, chance);
    let p_value = ln_p.exp();
    Ok(VerifyResult {
        p_value,
        log10_p_value: ln_p / std::f64::consts::LN_10,
        matches,
        queried,
        chance,
        alpha,
        verdict: if p_value < alpha {
            Verdict::WatermarkFound
        } else {
            Verdict::NotFound
        },
        num_classes: c,
        ledger_commitment: commitment(records),
        evidence,
    })
}

/// Verifies a local model (see [`verify`]).
pub fn verify_model(
    model: &dyn Model,
    records: &[LedgerRecord],
    alpha: f64,
) -> Result<VerifyResult, DefenseError> {
    verify(&mut ModelOracle::new(model), records, alpha, 256)
}

/// A [`Model`] seen as an unlimited [`Oracle`] answering full probabilities.
pub struct ModelOracle<'a> {
    model: &'a dyn Model,
    used: u64,
}

impl<'a> ModelOracle<'a> {
    /// Wraps `model`.
    pub fn new(model: &'a dyn Model) -> Self {
        ModelOracle { model, used: 0 }
    }
}

impl Oracle for ModelOracle<'_> {
    fn input_shape(&self) -> Vec<usize> {
        self.model.card().input_shape.clone()
    }
    fn num_classes(&self) -> usize {
        self.model.card().num_classes()
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let probs = self.model.predict(x)?;
        self.used += x.batch_size() as u64;
        Ok(OracleAnswer {
            labels: probs.argmax_rows(),
            probs,
            disclosure: Disclosure::Probabilities,
        })
    }
    fn queries_used(&self) -> u64 {
        self.used
    }
    fn budget(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_direct_sums() {
        // P(X ≥ 3), X ~ Bin(5, 0.5) = (10 + 5 + 1) / 32.
        assert!((binomial_upper_tail_ln(5, 3, 0.5).exp() - 0.5).abs() < 1e-12);
        assert!((binomial_upper_tail_ln(10, 1, 0.1).exp() - (1.0 - 0.9f64.powi(10))).abs() < 1e-12);
        assert_eq!(binomial_upper_tail_ln(10, 0, 0.3), 0.0);
        assert_eq!(binomial_upper_tail_ln(10, 11, 0.3), f64::NEG_INFINITY);
        // 50 of 50 at 1/9: 9^-50 ≈ 1.9e-48.
        let l = binomial_upper_tail_ln(50, 50, 1.0 / 9.0) / std::f64::consts::LN_10;
        assert!((l - (-50.0 * 9f64.log10())).abs() < 1e-9, "{l}");
        // Far below f64's range and still finite in log space.
        let l = binomial_upper_tail_ln(1000, 1000, 1.0 / 9.0);
        assert!(l.is_finite() && l < -2000.0);
    }
}
