//! Ownership verification: does a suspect model carry our DAWN watermark?
//!
//! The suspect is queried on the ledger's inputs and every answer is compared with the
//! watermark label we gave for that input. A model that was trained on our watermarked
//! answers reproduces many of them; an independent model matches a watermark label only by
//! chance.
//!
//! **The null hypothesis and its exact chance.** For a ledger input `x` the victim predicted
//! `y` (the record's `true_label`) and we answered the watermark label `w(x)`, drawn by
//! `HMAC-SHA256(k, x)` uniformly from the `c − 1` labels other than `y`, independently of
//! anything a party without the key can compute (DAWN, Szyller et al. 2021, §4: watermarked
//! answers are keyed random wrong labels). Under H0, "the suspect is independent of our
//! answers", the suspect's answer `a(x)` is independent of `w(x)`, and the events below are
//! independent across distinct inputs (HMAC as a PRF). Two statistics count, over the `n`
//! distinct ledger inputs, the records where an event holds:
//!
//! - **`top1`** (used when the suspect discloses only labels): the suspect's label equals
//!   `w(x)`. `P(a(x) = w(x)) = 1[a(x) ≠ y] / (c − 1) ≤ 1/(c − 1)`.
//! - **`top_among_wrong`** (used when the suspect's answers carry scores: full
//!   probabilities or top-k): `w(x)` is the suspect's *unique* highest-scoring label among the
//!   `c − 1` labels other than `y`. For any fixed score vector, at most one label is the unique
//!   maximiser among those `c − 1`, so the chance is exactly `1/(c − 1)` when the maximiser is
//!   unique and 0 when it is tied (a tie — including two undisclosed labels reported as 0, or
//!   a non-finite score — counts as **no match**, which keeps the test conservative). This
//!   counts the thief's *second* choice when its first is `y`, which is where a substitute
//!   that only partly memorised the watermark puts `w(x)`, so it is the more powerful test.
//!
//! Either count is stochastically dominated by `Binomial(n, 1/(c − 1))` under H0, so the
//! upper tail of that binomial is an exact (conservative) p-value. An empirical agreement
//! baseline would need a population of independent models and gives no guarantee, so we use
//! `1/(c − 1)`. Duplicate inputs in the ledger are counted once.
//!
//! - **`rank_sum`** (scores): the sum over the records of `rank − 1`, where `rank` is the
//!   place of `w(x)` among the `c − 1` labels other than `y` in the suspect's scores (1 =
//!   highest; ties and non-finite scores count against `w(x)`, see [`rank_among_others`]).
//!   Under H0 `w(x)` is a uniform draw from those labels, independent of the scores, so each
//!   rank is uniform on `1..=c − 1` (stochastically larger with ties) and the lower tail of
//!   the sum of `n` independent uniform ranks ([`uniform_sum_lower_tail_ln`]) is an exact
//!   (conservative) p-value. It counts *how high* the suspect ranks the watermark label, not
//!   only whether it is first: a substitute that absorbed the marks only partly (trained on
//!   few epochs, on answers it could not fit, or with a small learning signal per mark) lifts
//!   `w(x)` a few places without making it its first choice, which `top_among_wrong` misses
//!   and a linear rank statistic sees (a Wilcoxon-type statistic; the sign-free ranks make the
//!   null distribution exact for any suspect).
//!
//! - **`fingerprint`** (full probabilities, and only when the verifier supplies DAWN's key,
//!   [`verify_with`]): the exact test of the keyed linear fingerprint DAWN adds to every
//!   answer ([`crate::fingerprint`]); it convicts least-squares (equation-solving) copies that
//!   the sparse marks cannot reach.
//!
//! **Which statistic decides** is fixed before any answer is looked at, by what the suspect's
//! API discloses and whether the verifier brought the key: when every answer carries scores
//! ([`Disclosure::Probabilities`] or [`Disclosure::TopK`]), `top_among_wrong_or_rank_sum`:
//! `p = min(1, 2·min(p_top_among_wrong, p_rank_sum))`, a Bonferroni combination, valid
//! whatever the dependence between the two; with the fingerprint test as well,
//! `top_among_wrong_or_rank_sum_or_fingerprint`, a weighted Bonferroni combination:
//! `p = min(1, p_top_among_wrong/0.495, p_rank_sum/0.495, p_fingerprint/0.01)`
//! ([`FINGERPRINT_WEIGHT`]);
//! `top1` when any answer is label-only. It depends on the disclosure kind only, never on the
//! answers' values, so the decision is one pre-specified test, not the best of several
//! looked at afterwards. Every statistic is reported; the verdict and `p_value` are those of
//! the decision, `matches` the `top_among_wrong` count for scored suspects and the `top1`
//! count otherwise.

use crate::error::DefenseError;
use crate::fingerprint::{FingerprintResult, LinearFingerprint};
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

/// A test statistic (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// The suspect's label equals the watermark label.
    Top1,
    /// The watermark label is the suspect's unique highest-scoring label among the labels
    /// other than the victim's (`true_label`); needs scores.
    TopAmongWrong,
    /// The sum of the watermark labels' ranks among the labels other than the victim's;
    /// needs scores.
    RankSum,
    /// The decision for suspects that disclose scores: the smaller of the `top_among_wrong`
    /// and `rank_sum` p-values, doubled (Bonferroni over the two).
    TopAmongWrongOrRankSum,
    /// The decision when the fingerprint test ran too: weighted Bonferroni over the three
    /// ([`FINGERPRINT_WEIGHT`]).
    TopAmongWrongOrRankSumOrFingerprint,
}

impl Statistic {
    /// The statistic's name as written in JSON (`top1`, `top_among_wrong`).
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Top1 => "top1",
            Statistic::TopAmongWrong => "top_among_wrong",
            Statistic::RankSum => "rank_sum",
            Statistic::TopAmongWrongOrRankSum => "top_among_wrong_or_rank_sum",
            Statistic::TopAmongWrongOrRankSumOrFingerprint => {
                "top_among_wrong_or_rank_sum_or_fingerprint"
            }
        }
    }
}

/// One statistic's count and p-value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatisticResult {
    /// Which statistic.
    pub statistic: Statistic,
    /// Records on which its event holds.
    pub matches: usize,
    /// Upper binomial tail `P(X ≥ matches)` for `X ~ Binomial(queried, 1/(c − 1))`.
    pub p_value: f64,
    /// `log10` of the p-value (finite even when `p_value` underflows to 0).
    pub log10_p_value: f64,
}

impl StatisticResult {
    fn new(statistic: Statistic, matches: usize, queried: usize, chance: f64) -> Self {
        let ln_p = binomial_upper_tail_ln(queried, matches, chance);
        StatisticResult {
            statistic,
            matches,
            p_value: ln_p.exp(),
            log10_p_value: ln_p / std::f64::consts::LN_10,
        }
    }
}

/// The rank-sum statistic: how high the suspect ranks the watermark labels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankSumResult {
    /// `Σ (rank − 1)` over the queried inputs, each rank that of the watermark label among the
    /// `c − 1` labels other than the victim's ([`rank_among_others`]); 0 when every watermark
    /// label is the suspect's top choice among them.
    pub rank_sum: usize,
    /// Its mean under H0, `n (c − 2) / 2`.
    pub expected: f64,
    /// Lower tail `P(S ≤ rank_sum)` for `S` a sum of `n` independent uniform ranks.
    pub p_value: f64,
    /// `log10` of the p-value.
    pub log10_p_value: f64,
}

impl RankSumResult {
    fn new(rank_sum: usize, queried: usize, c: usize) -> Self {
        let k = c.saturating_sub(1).max(1);
        let ln_p = uniform_sum_lower_tail_ln(queried, k, rank_sum);
        RankSumResult {
            rank_sum,
            expected: queried as f64 * (k as f64 - 1.0) / 2.0,
            p_value: ln_p.exp(),
            log10_p_value: ln_p / std::f64::consts::LN_10,
        }
    }
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
    /// Whether they are equal (the `top1` event).
    pub matched: bool,
    /// The victim's label for the input (the record's `true_label`); absent in reports made
    /// before the `top_among_wrong` statistic existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_label: Option<usize>,
    /// The suspect's unique highest-scoring label among those other than `true_label`;
    /// absent when the answer has no scores or the highest score is tied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_top_wrong: Option<usize>,
    /// Whether `suspect_top_wrong` is the watermark label (the `top_among_wrong` event);
    /// absent when the answer has no scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_top_wrong: Option<bool>,
    /// The watermark label's rank among the labels other than `true_label` in the suspect's
    /// scores ([`rank_among_others`]); absent when the answer has no scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_rank_wrong: Option<usize>,
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// The decision's p-value (see [`VerifyResult::statistic`]).
    pub p_value: f64,
    /// `log10` of the p-value (finite even when `p_value` underflows to 0).
    pub log10_p_value: f64,
    /// The deciding count: `top_among_wrong` matches for scored suspects, `top1` matches
    /// for label-only ones.
    pub matches: usize,
    /// Number of distinct ledger inputs queried.
    pub queried: usize,
    /// Chance of a match under independence, `1/(c − 1)` (both statistics).
    pub chance: f64,
    /// Significance level the verdict used.
    pub alpha: f64,
    /// The decision: `p_value < alpha`.
    pub verdict: Verdict,
    /// The deciding statistic, fixed by the suspect's disclosure before counting.
    pub statistic: Statistic,
    /// The `top1` statistic (always available).
    pub top1: StatisticResult,
    /// The `top_among_wrong` statistic, when every answer carried scores.
    pub top_among_wrong: Option<StatisticResult>,
    /// The rank-sum statistic, when every answer carried scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_sum: Option<RankSumResult>,
    /// The linear-fingerprint test ([`crate::fingerprint`]), when the verifier supplied the
    /// key and the suspect answered full probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintResult>,
    /// Number of classes.
    pub num_classes: usize,
    /// Commitment to the ledger records used (see [`crate::ledger::commitment`]).
    pub ledger_commitment: String,
    /// Per-input evidence.
    pub evidence: Vec<EvidenceItem>,
}

/// The suspect's unique highest-scoring label among all labels but `exclude`; `None` when
/// the highest score is tied or any considered score is not finite (the conservative tie
/// rule: no label is the suspect's choice, so nothing can match).
pub fn top_among_others(scores: &[f32], exclude: usize) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    let mut tied = false;
    for (j, &s) in scores.iter().enumerate() {
        if j == exclude {
            continue;
        }
        if !s.is_finite() {
            return None;
        }
        match best {
            None => best = Some((j, s)),
            Some((_, b)) if s > b => {
                best = Some((j, s));
                tied = false;
            }
            Some((_, b)) if s == b => tied = true,
            Some(_) => {}
        }
    }
    if tied {
        None
    } else {
        best.map(|(j, _)| j)
    }
}

/// The rank (1 = highest) of `label`'s score among all labels but `exclude`, with ties and
/// non-finite scores counted against `label` (every other label scoring at least as high, or
/// not finite, ranks above it; a non-finite score of `label` itself gives the last rank).
/// Under H0 the watermark label is uniform over the `c − 1` labels other than the victim's,
/// independently of the scores, so with distinct scores its rank is uniform on `1..=c − 1`;
/// the pessimistic tie rule only makes ranks larger, which keeps the rank-sum test
/// conservative.
pub fn rank_among_others(scores: &[f32], exclude: usize, label: usize) -> usize {
    let others = scores.len().saturating_sub(1).max(1);
    let Some(&s) = scores.get(label) else {
        return others;
    };
    if !s.is_finite() {
        return others;
    }
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(j, &v)| j != exclude && j != label && (!v.is_finite() || v >= s))
        .count()
}

/// Work bound (`n · (s + 1) · k` additions) above which [`uniform_sum_lower_tail_ln`] uses
/// its Chernoff bound instead of the exact convolution.
const EXACT_SUM_WORK: usize = 100_000_000;

/// `ln P(S ≤ s)` for `S` the sum of `n` independent uniform integers on `0..k` (`k` values).
///
/// Exact, by convolving the distribution `n` times over `0..=s` only, rescaled after each step
/// so that tails far below `f64::MIN_POSITIVE` stay representable (e.g. `P(S = 0) = k^−n`).
/// When that costs more than `1e8` additions it returns the Chernoff bound
/// `min_θ≥0 θs + n ln E[e^−θU]` instead, which is never below the exact value (a conservative
/// p-value).
pub fn uniform_sum_lower_tail_ln(n: usize, k: usize, s: usize) -> f64 {
    if k <= 1 || n == 0 || s >= n * (k - 1) {
        return 0.0;
    }
    let work = n.saturating_mul(s + 1).saturating_mul(k);
    if work <= EXACT_SUM_WORK {
        let mut dist = vec![0.0f64; s + 1];
        dist[0] = 1.0;
        let mut next = vec![0.0f64; s + 1];
        let mut ln_scale = 0.0f64;
        for _ in 0..n {
            for (t, slot) in next.iter_mut().enumerate() {
                let lo = t.saturating_sub(k - 1);
                *slot = dist[lo..=t].iter().sum::<f64>() / k as f64;
            }
            let m = next.iter().copied().fold(0.0f64, f64::max);
            if m <= 0.0 {
                return f64::NEG_INFINITY;
            }
            ln_scale += m.ln();
            for (d, x) in dist.iter_mut().zip(&next) {
                *d = x / m;
            }
        }
        return (ln_scale + dist.iter().sum::<f64>().ln()).min(0.0);
    }
    uniform_sum_chernoff_ln(n, k, s)
}

/// The Chernoff bound on `ln P(S ≤ s)` of [`uniform_sum_lower_tail_ln`]:
/// `ln P(S ≤ s) ≤ θs + n ln((1/k) Σ_u e^−θu)` for every `θ ≥ 0`; the right side is convex in
/// `θ` and minimised by golden-section search.
fn uniform_sum_chernoff_ln(n: usize, k: usize, s: usize) -> f64 {
    let bound = |theta: f64| {
        let m: f64 = (0..k).map(|u| (-theta * u as f64).exp()).sum::<f64>() / k as f64;
        theta * s as f64 + n as f64 * m.ln()
    };
    let (mut a, mut b) = (0.0f64, 60.0f64);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..200 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if bound(c) < bound(d) {
            b = d;
        } else {
            a = c;
        }
    }
    bound((a + b) / 2.0).min(bound(0.0)).min(0.0)
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

/// Share of the significance level the fingerprint test gets in the three-test decision
/// (weighted Bonferroni: `p = min(1, p_top_among_wrong/w, p_rank_sum/w, p_fingerprint/w_f)`
/// with `w = (1 − w_f)/2`). The fingerprint test is there for least-squares copies, which it
/// convicts with z ≈ 9 (p ≈ 1e-20), so 1% of the level costs it nothing, while the two count
/// tests, which decide every other thief, keep 99% (×2.02 instead of ×3).
pub const FINGERPRINT_WEIGHT: f64 = 0.01;

/// Share of the level each count test gets in the three-test decision.
pub const COUNT_WEIGHT: f64 = (1.0 - FINGERPRINT_WEIGHT) / 2.0;

/// What the fingerprint test of [`verify_with`] needs (see [`crate::fingerprint`]).
pub struct FingerprintCheck<'a> {
    /// The fingerprint (DAWN's sub-key and strength: [`crate::Dawn::fingerprint_for_key`]).
    pub fingerprint: &'a LinearFingerprint,
    /// The protected model itself, without the fingerprint (much stronger test when given).
    pub reference: Option<&'a mut dyn Oracle>,
    /// Verification queries.
    pub queries: usize,
    /// Range the verification inputs are drawn from, uniformly per value.
    pub range: (f32, f32),
}

/// Queries `suspect` on the ledger's inputs (in batches of `batch`), computes every statistic
/// and decides at `alpha` with the one the suspect's disclosure allows (see the module
/// documentation). No fingerprint test: [`verify_with`].
pub fn verify(
    suspect: &mut dyn Oracle,
    records: &[LedgerRecord],
    alpha: f64,
    batch: usize,
) -> Result<VerifyResult, DefenseError> {
    verify_with(suspect, records, alpha, batch, None)
}

/// Like [`verify`], and when `fingerprint` is given and the suspect answers full
/// probabilities, the linear-fingerprint test joins the decision (weighted Bonferroni, see
/// [`FINGERPRINT_WEIGHT`]).
pub fn verify_with(
    suspect: &mut dyn Oracle,
    records: &[LedgerRecord],
    alpha: f64,
    batch: usize,
    fingerprint: Option<FingerprintCheck<'_>>,
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
    if let Some(r) = records
        .iter()
        .find(|r| r.true_label >= c || r.given_label >= c || r.true_label == r.given_label)
    {
        return Err(DefenseError::Verify(format!(
            "ledger record {} is not a watermark mark: true label {}, given label {}, {c} classes",
            r.input_sha256, r.true_label, r.given_label
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
    let mut all_scored = true;
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
        let scored = ans.disclosure != Disclosure::Label;
        if scored && ans.probs.shape() != [chunk.len(), c] {
            return Err(DefenseError::Verify(format!(
                "the suspect answered scores of shape {:?} for {} inputs and {c} classes",
                ans.probs.shape(),
                chunk.len()
            )));
        }
        all_scored &= scored;
        for (i, (r, &l)) in chunk.iter().zip(&ans.labels).enumerate() {
            let top_wrong = if scored {
                top_among_others(ans.probs.row(i), r.true_label)
            } else {
                None
            };
            evidence.push(EvidenceItem {
                input_sha256: r.input_sha256.clone(),
                watermark_label: r.given_label,
                suspect_label: l,
                matched: l == r.given_label,
                true_label: Some(r.true_label),
                suspect_top_wrong: top_wrong,
                matched_top_wrong: scored.then_some(top_wrong == Some(r.given_label)),
                suspect_rank_wrong: scored
                    .then(|| rank_among_others(ans.probs.row(i), r.true_label, r.given_label)),
            });
        }
    }
    if !all_scored {
        // The decision uses `top1` for every record; do not report a partial second count.
        for e in &mut evidence {
            e.suspect_top_wrong = None;
            e.matched_top_wrong = None;
            e.suspect_rank_wrong = None;
        }
    }
    let queried = evidence.len();
    let chance = 1.0 / (c as f64 - 1.0);
    let top1 = StatisticResult::new(
        Statistic::Top1,
        evidence.iter().filter(|e| e.matched).count(),
        queried,
        chance,
    );
    let top_among_wrong = all_scored.then(|| {
        StatisticResult::new(
            Statistic::TopAmongWrong,
            evidence
                .iter()
                .filter(|e| e.matched_top_wrong == Some(true))
                .count(),
            queried,
            chance,
        )
    });
    let rank_sum = all_scored.then(|| {
        RankSumResult::new(
            evidence
                .iter()
                .filter_map(|e| e.suspect_rank_wrong)
                .map(|r| r - 1)
                .sum(),
            queried,
            c,
        )
    });
    let fingerprint = match fingerprint {
        Some(f) if all_scored => {
            f.fingerprint
                .verify(suspect, f.reference, f.queries, f.range, batch)?
        }
        _ => None,
    };
    // The decision (fixed by the disclosure and the verifier's key, see the module
    // documentation).
    let (statistic, log10_p, matches) = match (top_among_wrong, rank_sum, fingerprint) {
        (Some(t), Some(r), Some(f)) => (
            Statistic::TopAmongWrongOrRankSumOrFingerprint,
            (t.log10_p_value - COUNT_WEIGHT.log10())
                .min(r.log10_p_value - COUNT_WEIGHT.log10())
                .min(f.log10_p_value - FINGERPRINT_WEIGHT.log10())
                .min(0.0),
            t.matches,
        ),
        (Some(t), Some(r), _) => (
            Statistic::TopAmongWrongOrRankSum,
            (std::f64::consts::LOG10_2 + t.log10_p_value.min(r.log10_p_value)).min(0.0),
            t.matches,
        ),
        _ => (Statistic::Top1, top1.log10_p_value, top1.matches),
    };
    let p_value = 10f64.powf(log10_p);
    Ok(VerifyResult {
        p_value,
        log10_p_value: log10_p,
        matches,
        queried,
        chance,
        alpha,
        verdict: if p_value < alpha {
            Verdict::WatermarkFound
        } else {
            Verdict::NotFound
        },
        statistic,
        top1,
        top_among_wrong,
        rank_sum,
        fingerprint,
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

/// Verifies a local model ([`verify_with`]), with the fingerprint test too when the DAWN that
/// answered it added one (`fingerprint`, e.g. [`crate::Dawn::fingerprint`]): `reference` is
/// the protected model without the fingerprint; `queries` inputs uniform on `[0, 1]`. With
/// `None` it is [`verify_model`].
pub fn verify_model_with(
    model: &dyn Model,
    records: &[LedgerRecord],
    alpha: f64,
    fingerprint: Option<&LinearFingerprint>,
    reference: Option<&dyn Model>,
    queries: usize,
) -> Result<VerifyResult, DefenseError> {
    let mut reference = reference.map(ModelOracle::new);
    let check = fingerprint.map(|fingerprint| FingerprintCheck {
        fingerprint,
        reference: reference.as_mut().map(|r| r as &mut dyn Oracle),
        queries,
        range: (0.0, 1.0),
    });
    verify_with(&mut ModelOracle::new(model), records, alpha, 256, check)
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

    #[test]
    fn ranks_count_ties_and_non_finite_scores_against_the_label() {
        // Labels other than 0: 1 (0.1), 2 (0.25), 3 (0.05).
        let s = [0.6, 0.1, 0.25, 0.05];
        assert_eq!(rank_among_others(&s, 0, 2), 1);
        assert_eq!(rank_among_others(&s, 0, 1), 2);
        assert_eq!(rank_among_others(&s, 0, 3), 3);
        // The excluded label never counts, even when it scores highest.
        assert_eq!(rank_among_others(&[0.9, 0.05, 0.05], 0, 1), 2);
        assert_eq!(rank_among_others(&[0.9, 0.05, 0.05], 1, 2), 2);
        assert_eq!(rank_among_others(&[0.5, f32::NAN, 0.3], 0, 2), 2);
        assert_eq!(rank_among_others(&[0.5, 0.2, f32::INFINITY], 0, 2), 2);
        assert_eq!(rank_among_others(&[0.5, 0.2, 0.3], 0, 7), 2);
    }

    /// `P(S ≤ s)` by enumerating every sequence of `n` values in `0..k`.
    fn brute_lower_tail(n: usize, k: usize, s: usize) -> f64 {
        let total = k.pow(n as u32);
        let hits = (0..total)
            .filter(|&code| {
                let (mut c, mut sum) = (code, 0);
                for _ in 0..n {
                    sum += c % k;
                    c /= k;
                }
                sum <= s
            })
            .count();
        hits as f64 / total as f64
    }

    #[test]
    fn uniform_sum_tail_is_exact_and_its_bound_conservative() {
        for n in 1..=5 {
            for k in 1..=5 {
                for s in 0..=n * k {
                    let exact = uniform_sum_lower_tail_ln(n, k, s).exp();
                    let brute = brute_lower_tail(n, k, s);
                    assert!(
                        (exact - brute).abs() < 1e-12,
                        "n {n} k {k} s {s}: {exact} vs {brute}"
                    );
                }
            }
        }
        // P(S = 0) = k^−n, far below f64's range and still exact in log space.
        let l = uniform_sum_lower_tail_ln(1000, 9, 0);
        assert!((l + 1000.0 * 9f64.ln()).abs() < 1e-6, "{l}");
        // The Chernoff bound is never below the exact tail and is tight to a few nats.
        for s in [0, 50, 200, 500, 799] {
            let exact = uniform_sum_lower_tail_ln(200, 9, s);
            let bound = uniform_sum_chernoff_ln(200, 9, s);
            assert!(
                bound >= exact - 1e-9 && bound - exact < 5.0,
                "s {s}: {bound} vs {exact}"
            );
        }
        // Past the exact method's work bound the function returns the Chernoff bound.
        let (n, s) = (20_000, 40_000);
        assert_eq!(
            uniform_sum_lower_tail_ln(n, 9, s),
            uniform_sum_chernoff_ln(n, 9, s)
        );
        assert!(uniform_sum_chernoff_ln(n, 9, s) < -1000.0);
    }

    /// A suspect that absorbed the marks only partly: the watermark label is never its first
    /// choice among the wrong labels, always its second or third. `top_among_wrong` sees
    /// nothing; the rank sum convicts.
    #[test]
    fn rank_sum_catches_a_partly_absorbed_watermark() {
        let c = 10;
        let n = 40;
        let mut records = Vec::new();
        let mut scores = Vec::new();
        for i in 0..n {
            let y = i % c;
            let w = (y + 1 + i % (c - 1)) % c;
            let other = (0..c).find(|&j| j != y && j != w).unwrap();
            let mut s = vec![0.01f32; c];
            s[y] = 0.7;
            s[other] = 0.12;
            s[w] = if i % 2 == 0 { 0.1 } else { 0.11 };
            // The third place: one more label above w on odd records.
            if i % 2 == 1 {
                let third = (0..c).find(|&j| j != y && j != w && j != other).unwrap();
                s[third] = 0.115;
            }
            records.push(rec(i, y, w, c));
            scores.push(s);
        }
        let mut o = Table {
            scores,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify(&mut o, &records, 1e-9, 16).unwrap();
        assert_eq!(r.top_among_wrong.unwrap().matches, 0);
        let rs = r.rank_sum.unwrap();
        // Ranks 2 and 3 alternate: Σ (rank − 1) = 20·1 + 20·2 = 60, against 160 expected.
        assert_eq!(rs.rank_sum, 60);
        assert!((rs.expected - 160.0).abs() < 1e-12);
        assert!(rs.p_value < 1e-9, "{}", rs.p_value);
        assert_eq!(r.statistic, Statistic::TopAmongWrongOrRankSum);
        assert!((r.log10_p_value - (std::f64::consts::LOG10_2 + rs.log10_p_value)).abs() < 1e-9);
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        assert!(r
            .evidence
            .iter()
            .all(|e| matches!(e.suspect_rank_wrong, Some(2 | 3))));
    }

    /// Answers row `i` of `scores` for the input `[i]`, with the given disclosure.
    struct Table {
        scores: Vec<Vec<f32>>,
        disclosure: Disclosure,
    }

    impl Oracle for Table {
        fn input_shape(&self) -> Vec<usize> {
            vec![1]
        }
        fn num_classes(&self) -> usize {
            self.scores[0].len()
        }
        fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
            let c = self.num_classes();
            let rows: Vec<&Vec<f32>> = x.rows().map(|r| &self.scores[r[0] as usize]).collect();
            let labels: Vec<usize> = rows
                .iter()
                .map(|s| crate::simplex::argmax(s.as_slice()))
                .collect();
            let data: Vec<f32> = match self.disclosure {
                Disclosure::Label => labels
                    .iter()
                    .flat_map(|&l| (0..c).map(move |j| if j == l { 1.0 } else { 0.0 }))
                    .collect(),
                _ => rows.iter().flat_map(|s| s.iter().copied()).collect(),
            };
            Ok(OracleAnswer {
                probs: Tensor::new(vec![rows.len(), c], data).unwrap(),
                labels,
                disclosure: self.disclosure,
            })
        }
        fn queries_used(&self) -> u64 {
            0
        }
        fn budget(&self) -> Option<u64> {
            None
        }
    }

    fn rec(i: usize, true_label: usize, given_label: usize, c: usize) -> LedgerRecord {
        LedgerRecord {
            input_sha256: mamori_core::hash::sha256_f32(&[i as f32]),
            input: vec![i as f32],
            true_label,
            given_label,
            num_classes: c,
            unix_ms: 0,
        }
    }

    /// Three marks among 4 classes and a suspect's scores for them (see the first test).
    fn constructed_case() -> (Vec<LedgerRecord>, Vec<Vec<f32>>) {
        let records = vec![rec(0, 0, 2, 4), rec(1, 1, 3, 4), rec(2, 2, 0, 4)];
        let scores = vec![
            // Top-1 is the true label 0, second choice the watermark 2: top_among_wrong only.
            vec![0.6, 0.1, 0.25, 0.05],
            // Top-1 is the watermark 3: both statistics.
            vec![0.1, 0.2, 0.1, 0.6],
            // Second choice 1, not the watermark 0: neither.
            vec![0.1, 0.3, 0.5, 0.1],
        ];
        (records, scores)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn exact_p_values_on_a_constructed_case() {
        // c = 4: chance 1/3 for both statistics.
        let (records, scores) = constructed_case();
        let mut o = Table {
            scores,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify(&mut o, &records, 0.6, 2).unwrap();
        assert_eq!(r.statistic, Statistic::TopAmongWrongOrRankSum);
        assert_eq!(r.queried, 3);
        assert!(close(r.chance, 1.0 / 3.0));
        // top1: 1 of 3, P(X ≥ 1) = 1 − (2/3)³ = 19/27.
        assert_eq!(r.top1.matches, 1);
        assert!(close(r.top1.p_value, 19.0 / 27.0), "{}", r.top1.p_value);
        // top_among_wrong: 2 of 3, P(X ≥ 2) = 3·(1/3)²·(2/3) + (1/3)³ = 7/27.
        let t = r.top_among_wrong.unwrap();
        assert_eq!(t.matches, 2);
        assert!(close(t.p_value, 7.0 / 27.0), "{}", t.p_value);
        // rank_sum: ranks 1, 1, 3 (label 0 ties with 3 at 0.1 and counts below it): Σ (rank −
        // 1) = 2; P(S ≤ 2) for three uniform values on {0, 1, 2} = (1 + 3 + 6) / 27.
        let rs = r.rank_sum.unwrap();
        assert_eq!(rs.rank_sum, 2);
        assert!(close(rs.p_value, 10.0 / 27.0), "{}", rs.p_value);
        assert!(close(rs.expected, 3.0));
        // The decision: 2·min(7/27, 10/27), with the top_among_wrong count.
        assert_eq!(r.matches, t.matches);
        assert!(close(r.p_value, 14.0 / 27.0), "{}", r.p_value);
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        assert!(close(r.log10_p_value, (14.0f64 / 27.0).log10()));
        let e: Vec<_> = r.evidence.iter().map(|e| e.suspect_top_wrong).collect();
        assert_eq!(e, vec![Some(2), Some(3), Some(1)]);
        let e: Vec<_> = r.evidence.iter().map(|e| e.suspect_rank_wrong).collect();
        assert_eq!(e, vec![Some(1), Some(1), Some(3)]);
        assert_eq!(r.evidence[0].true_label, Some(0));
        assert_eq!(r.evidence[0].matched_top_wrong, Some(true));
        assert!(!r.evidence[0].matched);
        // JSON names of the statistics.
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["statistic"], "top_among_wrong_or_rank_sum");
        assert_eq!(j["rank_sum"]["rank_sum"], 2);
        assert_eq!(j["top1"]["statistic"], "top1");
        assert_eq!(Statistic::TopAmongWrong.name(), "top_among_wrong");
    }

    /// With the fingerprint test the decision is the weighted Bonferroni combination, and a
    /// label-only suspect still falls back to `top1` (the fingerprint needs probabilities).
    #[test]
    fn the_fingerprint_test_joins_the_decision_with_its_weight() {
        let (records, scores) = constructed_case();
        let fp = LinearFingerprint::new(crate::SecretKey::from_bytes([3; 32]), 1.0).unwrap();
        let check = || {
            Some(FingerprintCheck {
                fingerprint: &fp,
                reference: None,
                queries: 64,
                range: (0.0, 1.0),
            })
        };
        let mut o = Table {
            scores: scores.clone(),
            disclosure: Disclosure::Probabilities,
        };
        let r = verify_with(&mut o, &records, 0.6, 2, check()).unwrap();
        assert_eq!(r.statistic, Statistic::TopAmongWrongOrRankSumOrFingerprint);
        let (t, rs, f) = (
            r.top_among_wrong.unwrap(),
            r.rank_sum.unwrap(),
            r.fingerprint.unwrap(),
        );
        assert_eq!(f.queried, 64);
        let want = (t.p_value / COUNT_WEIGHT)
            .min(rs.p_value / COUNT_WEIGHT)
            .min(f.p_value / FINGERPRINT_WEIGHT)
            .min(1.0);
        assert!((r.p_value - want).abs() < 1e-12, "{} vs {want}", r.p_value);
        assert!((COUNT_WEIGHT * 2.0 + FINGERPRINT_WEIGHT - 1.0).abs() < 1e-15);
        let mut o = Table {
            scores,
            disclosure: Disclosure::Label,
        };
        let r = verify_with(&mut o, &records, 0.6, 2, check()).unwrap();
        assert_eq!(r.statistic, Statistic::Top1);
        assert!(r.fingerprint.is_none());
    }

    #[test]
    fn ties_count_as_no_match() {
        assert_eq!(top_among_others(&[0.5, 0.2, 0.2, 0.1], 0), None);
        // A tie with the excluded (true) label does not matter.
        assert_eq!(top_among_others(&[0.4, 0.4, 0.2], 0), Some(1));
        // Undisclosed labels (top-k zeros) tie with each other.
        assert_eq!(top_among_others(&[0.9, 0.0, 0.0, 0.0], 0), None);
        assert_eq!(top_among_others(&[0.5, f32::NAN, 0.3], 0), None);
        assert_eq!(top_among_others(&[0.5], 0), None);
        // The watermark label 2 ties with 1 for the suspect's second choice: no match, even
        // though 2 is one of the highest.
        let records = vec![rec(0, 0, 2, 4)];
        let mut o = Table {
            scores: vec![vec![0.4, 0.25, 0.25, 0.1]],
            disclosure: Disclosure::TopK(3),
        };
        let r = verify(&mut o, &records, 0.5, 8).unwrap();
        assert_eq!(r.statistic, Statistic::TopAmongWrongOrRankSum);
        assert_eq!(r.matches, 0);
        assert_eq!(r.p_value, 1.0);
        // The tie puts the watermark label second of three: P(S ≤ 1) = 2/3.
        assert_eq!(r.evidence[0].suspect_rank_wrong, Some(2));
        assert!(close(r.rank_sum.unwrap().p_value, 2.0 / 3.0));
        assert_eq!(r.evidence[0].suspect_top_wrong, None);
        assert_eq!(r.evidence[0].matched_top_wrong, Some(false));
    }

    #[test]
    fn label_only_answers_fall_back_to_top1() {
        let records = vec![rec(0, 0, 2, 4), rec(1, 1, 3, 4), rec(2, 2, 0, 4)];
        let scores = vec![
            vec![0.6, 0.1, 0.25, 0.05],
            vec![0.1, 0.2, 0.1, 0.6],
            vec![0.7, 0.1, 0.1, 0.1],
        ];
        let mut o = Table {
            scores,
            disclosure: Disclosure::Label,
        };
        let r = verify(&mut o, &records, 0.5, 2).unwrap();
        assert_eq!(r.statistic, Statistic::Top1);
        assert!(r.top_among_wrong.is_none() && r.rank_sum.is_none());
        assert_eq!(r.matches, 2);
        // P(X ≥ 2), X ~ Bin(3, 1/3) = 7/27.
        assert!(close(r.p_value, 7.0 / 27.0));
        assert!(r.evidence.iter().all(|e| e.suspect_top_wrong.is_none()
            && e.matched_top_wrong.is_none()
            && e.suspect_rank_wrong.is_none()));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["statistic"], "top1");
        assert!(j["top_among_wrong"].is_null());
    }

    #[test]
    fn bad_scores_and_records_are_errors() {
        let mut o = Table {
            scores: vec![vec![0.5, 0.5, 0.0, 0.0]],
            disclosure: Disclosure::Probabilities,
        };
        for bad in [rec(0, 1, 1, 4), rec(0, 4, 1, 4), rec(0, 1, 7, 4)] {
            let e = verify(&mut o, &[bad], 0.5, 1).unwrap_err().to_string();
            assert!(e.contains("not a watermark mark"), "{e}");
        }

        /// Claims scores but answers a wrongly shaped tensor.
        struct Short;
        impl Oracle for Short {
            fn input_shape(&self) -> Vec<usize> {
                vec![1]
            }
            fn num_classes(&self) -> usize {
                4
            }
            fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
                Ok(OracleAnswer {
                    probs: Tensor::zeros(vec![x.batch_size(), 3]),
                    labels: vec![0; x.batch_size()],
                    disclosure: Disclosure::Probabilities,
                })
            }
            fn queries_used(&self) -> u64 {
                0
            }
            fn budget(&self) -> Option<u64> {
                None
            }
        }
        let e = verify(&mut Short, &[rec(0, 0, 1, 4)], 0.5, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("scores of shape"), "{e}");
    }

    /// A suspect independent of the key: its scores are drawn from its own stream, the
    /// watermark labels uniformly over the wrong labels from another. Both counts match at
    /// rate 1/(c − 1), and every p-value — the three statistics' and the decision's — is
    /// (conservatively) uniform: P(p ≤ a) ≤ a.
    #[test]
    fn a_model_independent_of_the_key_gives_uniform_statistics() {
        use rand::{Rng, SeedableRng};
        let c = 10;
        let n = 44;
        let reps = 400;
        let mut scores_rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut key_rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let (mut m1, mut m2) = (0usize, 0usize);
        let mut ps1 = Vec::new();
        let mut ps2 = Vec::new();
        let mut ps3 = Vec::new();
        let mut ps_decision = Vec::new();
        for _ in 0..reps {
            let scores: Vec<Vec<f32>> = (0..n)
                .map(|_| {
                    // Peaked like a classifier's output: the true label usually wins.
                    (0..c).map(|_| scores_rng.gen::<f32>().powi(4)).collect()
                })
                .collect();
            let records: Vec<LedgerRecord> = (0..n)
                .map(|i| {
                    let y = key_rng.gen_range(0..c);
                    let w = (y + key_rng.gen_range(1..c)) % c;
                    rec(i, y, w, c)
                })
                .collect();
            let mut o = Table {
                scores,
                disclosure: Disclosure::Probabilities,
            };
            let r = verify(&mut o, &records, DEFAULT_ALPHA, 64).unwrap();
            let t = r.top_among_wrong.unwrap();
            m1 += r.top1.matches;
            m2 += t.matches;
            ps1.push(r.top1.p_value);
            ps2.push(t.p_value);
            ps3.push(r.rank_sum.unwrap().p_value);
            ps_decision.push(r.p_value);
        }
        let total = (n * reps) as f64;
        let chance = 1.0 / (c as f64 - 1.0);
        let sd = (total * chance * (1.0 - chance)).sqrt();
        // top_among_wrong matches at exactly 1/(c − 1) (no ties with continuous scores);
        // top1 at (1/(c − 1))·P(top-1 ≠ y) = 1/(c − 1) · (c − 1)/c = 1/c here.
        assert!(
            (m2 as f64 - total * chance).abs() < 4.0 * sd,
            "{m2} vs {}",
            total * chance
        );
        let top1_rate = 1.0 / c as f64;
        assert!(
            (m1 as f64 - total * top1_rate).abs() < 4.0 * sd,
            "{m1} vs {}",
            total * top1_rate
        );
        for ps in [&ps1, &ps2, &ps3, &ps_decision] {
            for a in [0.01, 0.05, 0.2, 0.5] {
                let share = ps.iter().filter(|&&p| p <= a).count() as f64 / reps as f64;
                let slack = 4.0 * (a * (1.0 - a) / reps as f64).sqrt();
                assert!(share <= a + slack, "P(p ≤ {a}) = {share}");
            }
        }
        // Not trivially conservative: at a = 0.5 the exact test rejects often.
        for ps in [&ps2, &ps3] {
            let share = ps.iter().filter(|&&p| p <= 0.5).count() as f64 / reps as f64;
            assert!(share > 0.2, "{share}");
        }
    }
}
