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
//! - **`log_gap_sum`** (scores): the sum over the records of the watermark label's
//!   log-probability gap below the suspect's best label among the `c − 1` labels other than
//!   `y`, quantised to eighths of a nat and capped at 8 nats ([`log_gaps`]). Under H0 `w(x)` is
//!   uniform over those labels independently of the scores, so each record's gap is a uniform
//!   draw from its own `c − 1` gaps and the lower tail of the sum is computed exactly by
//!   convolution ([`discrete_sum_lower_tail_ln`]; ties need no rule). It is the score test
//!   of "the suspect raised the watermark label's log-odds" (see [`log_gaps`]): `top_among_wrong`
//!   (gap 0) and the ranks are coarsenings of it, and on the DAWN acceptance runs it was about
//!   as strong as the better of the two or stronger (docs/bench/defense.md).
//!
//! - **`reference_gap_sum`** (scores, and the verifier supplies the protected model as
//!   reference): the same sum and exact null on the gaps of the suspect's *log-lift over the
//!   reference* ([`reference_gaps`]). A copy imitates the protected model's order of the wrong
//!   labels, which is noise to the raw gaps; over the reference only the labels the copy was
//!   taught differently stand out, the watermark labels among them. It convicts copies that
//!   absorbed the marks only partly (soft-label thieves that fit 86% of their answers) by
//!   many orders of magnitude more than the raw gaps; the raw gaps stay stronger for copies
//!   trained on noise inputs, where the two models' wrong-label scores are unrelated.
//!
//! - **`centred_gap_sum`** (scores): the same sum and exact null on the gaps of the
//!   suspect's log-probabilities *centred per label* on their mean over the verified inputs
//!   ([`centred_gaps`]). A copy trained on noise inputs gives every such input much the same
//!   order of the wrong labels; centring removes that shared order and keeps what the marks
//!   taught it on their own inputs. On the four-key acceptance runs (tenth session, in the
//!   decision) it took the weakest substitute, a label-trained Gaussian-noise thief, from
//!   1.6e-8 to 4.6e-39, and the noise thieves' copies fine-tuned on clean images from
//!   1e-1 … 1e-8 to 1e-14 … 1e-61 (docs/bench/defense.md).
//!
//! - **`fingerprint`** (full probabilities, and only when the verifier supplies DAWN's key,
//!   [`verify_with`]): the exact test of the keyed linear fingerprint DAWN adds to every
//!   answer ([`crate::fingerprint`]); it convicts least-squares (equation-solving) copies that
//!   the sparse marks cannot reach.
//!
//! **Which statistic decides** is fixed before any answer is looked at, by what the suspect's
//! API discloses and what the verifier brought (the reference, DAWN's key): when every answer
//! carries scores ([`Disclosure::Probabilities`] or [`Disclosure::TopK`]), Bonferroni over
//! every gap sum that ran — `log_gap_sum_or_centred_gap_sum` (`p = min(1, 2·min(p_log_gap_sum,
//! p_centred_gap_sum))`), with the reference `log_gap_sum_or_reference_gap_sum_or_centred_gap_sum`
//! (the smallest of the three, tripled); with the fingerprint test, weighted Bonferroni, valid
//! whatever the dependence between the tests: the gap sums share [`GAP_WEIGHT`] (0.99)
//! equally and the fingerprint test gets [`FINGERPRINT_WEIGHT`] (0.01), e.g.
//! `log_gap_sum_or_reference_gap_sum_or_centred_gap_sum_or_fingerprint`, `p = min(1,
//! p_log_gap_sum/0.33, p_reference_gap_sum/0.33, p_centred_gap_sum/0.33, p_fingerprint/0.01)`;
//! `top1` when any answer is label-only. It depends on the disclosure kind only, never on the
//! answers' values, so the decision is one pre-specified test, not the best of several
//! looked at afterwards. Every statistic is reported; the verdict and `p_value` are those of
//! the decision, `matches` the `top_among_wrong` count for scored suspects and the `top1`
//! count otherwise. (Version-3 evidence reports were decided by
//! `top_among_wrong_or_rank_sum[_or_fingerprint]`, a Bonferroni combination of the two
//! coarser counts; version-4 and -5 reports by the same decisions without the centred gap
//! sum; those reports still read and verify.)

use crate::error::DefenseError;
use crate::fingerprint::{
    check_reference, full_probabilities, FingerprintResult, LinearFingerprint,
};
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
    /// The sum of the watermark labels' quantised log-probability gaps below the suspect's
    /// best label among the labels other than the victim's ([`log_gaps`]); needs scores.
    LogGapSum,
    /// The decision of version-3 reports for suspects that disclose scores: the smaller of the
    /// `top_among_wrong` and `rank_sum` p-values, doubled (Bonferroni over the two). Kept so
    /// that those reports still read and verify; no longer decided.
    TopAmongWrongOrRankSum,
    /// The decision of version-3 reports when the fingerprint test ran too: weighted
    /// Bonferroni over the three. Kept for those reports; no longer decided.
    TopAmongWrongOrRankSumOrFingerprint,
    /// The sum of the watermark labels' quantised gaps in log-lift over the reference (the
    /// protected model) below the best wrong label's lift ([`reference_gaps`]); needs scores
    /// and the reference.
    ReferenceGapSum,
    /// The decision of version-4 and -5 reports when the fingerprint test ran without a
    /// reference: weighted Bonferroni over the log-gap sum and the fingerprint test
    /// ([`FINGERPRINT_WEIGHT`]). Kept for those reports; no longer decided.
    LogGapSumOrFingerprint,
    /// The decision of version-4 and -5 reports with a reference and no fingerprint test: the
    /// smaller of the `log_gap_sum` and `reference_gap_sum` p-values, doubled. Kept for those
    /// reports; no longer decided.
    LogGapSumOrReferenceGapSum,
    /// The decision of version-4 and -5 reports with a reference and the fingerprint test:
    /// weighted Bonferroni over the three ([`GAP_WEIGHT`] split between the two gap sums,
    /// [`FINGERPRINT_WEIGHT`]). Kept for those reports; no longer decided.
    LogGapSumOrReferenceGapSumOrFingerprint,
    /// The sum of the watermark labels' quantised gaps in the suspect's *self-centred*
    /// log-probabilities ([`centred_gaps`]); needs scores.
    CentredGapSum,
    /// The decision for scored answers without a reference or fingerprint test: the smaller
    /// of the `log_gap_sum` and `centred_gap_sum` p-values, doubled (Bonferroni over the two).
    LogGapSumOrCentredGapSum,
    /// The same with the fingerprint test: weighted Bonferroni ([`GAP_WEIGHT`] split between
    /// the two gap sums, [`FINGERPRINT_WEIGHT`]).
    LogGapSumOrCentredGapSumOrFingerprint,
    /// The decision with a reference and no fingerprint test: the smallest of the three gap
    /// sums' p-values, tripled (Bonferroni over the three).
    LogGapSumOrReferenceGapSumOrCentredGapSum,
    /// The decision with a reference and the fingerprint test: weighted Bonferroni
    /// ([`GAP_WEIGHT`] split between the three gap sums, [`FINGERPRINT_WEIGHT`]).
    LogGapSumOrReferenceGapSumOrCentredGapSumOrFingerprint,
    /// The linear-fingerprint test ([`crate::fingerprint`]), as a part of a decision
    /// ([`Statistic::parts`]); never a decision alone.
    Fingerprint,
}

impl Statistic {
    /// The statistic's name as written in JSON (`top1`, `top_among_wrong`).
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Top1 => "top1",
            Statistic::TopAmongWrong => "top_among_wrong",
            Statistic::RankSum => "rank_sum",
            Statistic::LogGapSum => "log_gap_sum",
            Statistic::TopAmongWrongOrRankSum => "top_among_wrong_or_rank_sum",
            Statistic::TopAmongWrongOrRankSumOrFingerprint => {
                "top_among_wrong_or_rank_sum_or_fingerprint"
            }
            Statistic::ReferenceGapSum => "reference_gap_sum",
            Statistic::LogGapSumOrFingerprint => "log_gap_sum_or_fingerprint",
            Statistic::LogGapSumOrReferenceGapSum => "log_gap_sum_or_reference_gap_sum",
            Statistic::LogGapSumOrReferenceGapSumOrFingerprint => {
                "log_gap_sum_or_reference_gap_sum_or_fingerprint"
            }
            Statistic::CentredGapSum => "centred_gap_sum",
            Statistic::LogGapSumOrCentredGapSum => "log_gap_sum_or_centred_gap_sum",
            Statistic::LogGapSumOrCentredGapSumOrFingerprint => {
                "log_gap_sum_or_centred_gap_sum_or_fingerprint"
            }
            Statistic::LogGapSumOrReferenceGapSumOrCentredGapSum => {
                "log_gap_sum_or_reference_gap_sum_or_centred_gap_sum"
            }
            Statistic::LogGapSumOrReferenceGapSumOrCentredGapSumOrFingerprint => {
                "log_gap_sum_or_reference_gap_sum_or_centred_gap_sum_or_fingerprint"
            }
            Statistic::Fingerprint => "fingerprint",
        }
    }

    /// The tests this decision combines, each with its share of the level (weighted
    /// Bonferroni: `p = min(1, min_i p_i / w_i)`, valid whatever the dependence between the
    /// tests); a single statistic is itself with weight 1. The one table of every decision
    /// rule, current and of older reports: [`verify_with`] decides by it and
    /// [`crate::report::recheck`] recomputes a report's decision by it.
    pub fn parts(self) -> Vec<(Statistic, f64)> {
        use Statistic::*;
        let (g, f) = (GAP_WEIGHT, FINGERPRINT_WEIGHT);
        match self {
            TopAmongWrongOrRankSum => vec![(TopAmongWrong, 0.5), (RankSum, 0.5)],
            TopAmongWrongOrRankSumOrFingerprint => {
                vec![
                    (TopAmongWrong, g / 2.0),
                    (RankSum, g / 2.0),
                    (Fingerprint, f),
                ]
            }
            LogGapSumOrFingerprint => vec![(LogGapSum, g), (Fingerprint, f)],
            LogGapSumOrReferenceGapSum => vec![(LogGapSum, 0.5), (ReferenceGapSum, 0.5)],
            LogGapSumOrReferenceGapSumOrFingerprint => vec![
                (LogGapSum, g / 2.0),
                (ReferenceGapSum, g / 2.0),
                (Fingerprint, f),
            ],
            LogGapSumOrCentredGapSum => vec![(LogGapSum, 0.5), (CentredGapSum, 0.5)],
            LogGapSumOrCentredGapSumOrFingerprint => vec![
                (LogGapSum, g / 2.0),
                (CentredGapSum, g / 2.0),
                (Fingerprint, f),
            ],
            LogGapSumOrReferenceGapSumOrCentredGapSum => vec![
                (LogGapSum, 1.0 / 3.0),
                (ReferenceGapSum, 1.0 / 3.0),
                (CentredGapSum, 1.0 / 3.0),
            ],
            LogGapSumOrReferenceGapSumOrCentredGapSumOrFingerprint => vec![
                (LogGapSum, g / 3.0),
                (ReferenceGapSum, g / 3.0),
                (CentredGapSum, g / 3.0),
                (Fingerprint, f),
            ],
            single => vec![(single, 1.0)],
        }
    }

    /// The decision for the tests that ran (see the module documentation): every gap sum
    /// that ran, with the fingerprint test when it ran, for scored answers (`log_gap_sum` and
    /// `centred_gap_sum` present); `top1` otherwise.
    pub fn decision(scored: bool, reference: bool, fingerprint: bool) -> Statistic {
        match (scored, reference, fingerprint) {
            (false, _, _) => Statistic::Top1,
            (true, false, false) => Statistic::LogGapSumOrCentredGapSum,
            (true, false, true) => Statistic::LogGapSumOrCentredGapSumOrFingerprint,
            (true, true, false) => Statistic::LogGapSumOrReferenceGapSumOrCentredGapSum,
            (true, true, true) => Statistic::LogGapSumOrReferenceGapSumOrCentredGapSumOrFingerprint,
        }
    }

    /// `log10` of the decision's p-value from its parts' `log10` p-values (`log10_p_of`;
    /// `None` when a part did not run).
    pub fn combine(self, log10_p_of: impl Fn(Statistic) -> Option<f64>) -> Option<f64> {
        self.parts()
            .into_iter()
            .map(|(part, w)| log10_p_of(part).map(|p| p - w.log10()))
            .try_fold(0.0f64, |acc, p| p.map(|p| acc.min(p)))
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
    pub(crate) fn new(statistic: Statistic, matches: usize, queried: usize, chance: f64) -> Self {
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
    pub(crate) fn new(rank_sum: usize, queried: usize, c: usize) -> Self {
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

/// The log-gap-sum statistic: how close to the suspect's best wrong label the watermark
/// labels' log-probabilities lie (see [`log_gaps`] and [`discrete_sum_lower_tail_ln`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogGapSumResult {
    /// `Σ gap(w(x))` over the queried inputs, in units of [`LOG_GAP_STEP`] nats; 0 when every
    /// watermark label is the suspect's most probable label among the wrong ones.
    pub log_gap_sum: u64,
    /// Its mean under H0, `Σ_x mean_j gap_x(j)` over the `c − 1` wrong labels `j`.
    pub expected: f64,
    /// Lower tail `P(S ≤ log_gap_sum)` for `S` the sum over the inputs of one gap each, drawn
    /// uniformly from that input's `c − 1` gaps.
    pub p_value: f64,
    /// `log10` of the p-value.
    pub log10_p_value: f64,
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
    /// The suspect's quantised log-probability gaps of the `c − 1` labels other than
    /// `true_label`, in label order ([`log_gaps`]): with them anyone can recompute the
    /// `log_gap_sum` statistic and its exact null distribution from the report. Absent when the
    /// answer has no scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_log_gaps: Option<Vec<u32>>,
    /// The quantised log-lift gaps over the reference of the same `c − 1` labels
    /// ([`reference_gaps`]); absent without scores or without a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_log_gaps: Option<Vec<u32>>,
    /// The quantised gaps of the same `c − 1` labels in the suspect's self-centred
    /// log-probabilities ([`centred_gaps`]); absent without scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centred_log_gaps: Option<Vec<u32>>,
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
    /// The log-gap-sum statistic, when every answer carried scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_gap_sum: Option<LogGapSumResult>,
    /// The reference-gap-sum statistic (the same form as the log-gap sum, on the gaps of
    /// [`reference_gaps`]), when every answer carried scores and the verifier supplied the
    /// reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_gap_sum: Option<LogGapSumResult>,
    /// The centred-gap-sum statistic (the same form as the log-gap sum, on the gaps of
    /// [`centred_gaps`]), when every answer carried scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centred_gap_sum: Option<LogGapSumResult>,
    /// The linear-fingerprint test ([`crate::fingerprint`]), when the verifier supplied the
    /// key and the suspect answered full probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintResult>,
    /// Number of classes.
    pub num_classes: usize,
    /// The served model whose marks were tested: the model named by the ledger's records
    /// ([`LedgerRecord::model`]), or the caller's when the records predate the field
    /// (`mamori watermark verify` fills in the ledger's model then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Commitment to the ledger records used (see [`crate::ledger::commitment`]).
    pub ledger_commitment: String,
    /// Per-input evidence.
    pub evidence: Vec<EvidenceItem>,
    /// Suspects screened against this ledger together, this one included
    /// ([`VerifyResult::for_family`]); `p_value` and the verdict account for them. 1 (the
    /// default): this suspect alone.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub family: usize,
    /// With a family of more than one: the deciding `log10` p-value of this suspect alone,
    /// before the correction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log10_p_value_single: Option<f64>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl VerifyResult {
    /// The result for one of `m` suspects screened against the same ledger: the p-value
    /// multiplied by `m` (Bonferroni; at most 1) and the verdict taken on it, so that the
    /// chance of convicting *any* of `m` independently trained models stays below `alpha`
    /// (family-wise). An exact test gives each independent model `p ≤ 0.01` with probability
    /// 1%; screening 20 of them, one such p-value comes up about once in five screenings —
    /// an owner who screens a marketplace says how many suspects it screens. Holm's step-down
    /// version, for a set of results in hand, is [`holm_log10`].
    pub fn for_family(mut self, m: usize) -> Self {
        if m <= 1 {
            return self;
        }
        let single = self.log10_p_value_single.unwrap_or(self.log10_p_value);
        self.set_log10_p((single + (m as f64).log10()).min(0.0));
        self.family = m;
        self.log10_p_value_single = Some(single);
        self
    }

    /// Sets the deciding `log10` p-value and the verdict that follows from it.
    fn set_log10_p(&mut self, log10_p: f64) {
        self.log10_p_value = log10_p;
        self.p_value = 10f64.powf(log10_p);
        self.verdict = if self.p_value < self.alpha {
            Verdict::WatermarkFound
        } else {
            Verdict::NotFound
        };
    }
}

/// Holm's step-down adjustment (Holm 1979) of `log10` p-values (the order of the input is
/// kept): sorted ascending, the `j`-th smallest is multiplied by `m − j + 1`, and each adjusted
/// value is at least the one before it (at most 1). It controls the family-wise error — the
/// chance that *any* true null (a model that did not copy) is rejected — at the level the
/// adjusted values are compared with, and rejects at least what Bonferroni rejects. In `log10`
/// so that p-values far below `f64`'s range (1e-150 for a faithful copy) stay ordered.
pub fn holm_log10(log10_p: &[f64]) -> Vec<f64> {
    let m = log10_p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| log10_p[a].total_cmp(&log10_p[b]));
    let mut out = vec![0.0; m];
    let mut running = f64::NEG_INFINITY;
    for (j, &i) in order.iter().enumerate() {
        let adjusted = (log10_p[i] + ((m - j) as f64).log10()).min(0.0);
        running = running.max(adjusted);
        out[i] = running;
    }
    out
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

/// Work bound (`(s + 1) · Σ |row|` additions) above which [`discrete_sum_lower_tail_ln`] uses
/// its Chernoff bound instead of the exact convolution.
const EXACT_SUM_WORK: usize = 100_000_000;

/// `ln P(S ≤ s)` for `S` the sum of `n` independent uniform integers on `0..k` (`k` values).
///
/// The rank-sum case of [`discrete_sum_lower_tail_ln`] (every row `0..k`): exact by
/// convolution over `0..=s` with rescaling, so that tails far below `f64::MIN_POSITIVE` stay
/// representable (e.g. `P(S = 0) = k^−n`); past `1e8` additions the Chernoff bound
/// `min_θ≥0 θs + n ln E[e^−θU]`, which is never below the exact value (a conservative
/// p-value).
pub fn uniform_sum_lower_tail_ln(n: usize, k: usize, s: usize) -> f64 {
    if k <= 1 || n == 0 {
        return 0.0;
    }
    let row: Vec<u32> = (0..k as u32).collect();
    discrete_sum_lower_tail_ln(&vec![row; n], s as u64)
}

/// The Chernoff bound of [`uniform_sum_lower_tail_ln`] (see [`discrete_sum_chernoff_ln`]).
#[cfg(test)]
fn uniform_sum_chernoff_ln(n: usize, k: usize, s: usize) -> f64 {
    let row: Vec<u32> = (0..k as u32).collect();
    discrete_sum_chernoff_ln(&vec![&row; n], s as u64)
}

/// Width of one unit of the `log_gap_sum` statistic, in nats (natural-log units of
/// probability).
pub const LOG_GAP_STEP: f64 = 0.125;

/// The largest gap counted, in units of [`LOG_GAP_STEP`] (8 nats: a label `e^−8 ≈ 3·10⁻⁴`
/// times as probable as the suspect's best wrong label counts as far away as one it scores
/// 0).
pub const LOG_GAP_CAP: u32 = 64;

/// The quantised log-probability gaps of the labels other than `exclude`, in label order
/// (`scores.len() − 1` values): `gap(j) = min(CAP, round((ln s_max − ln s_j) / STEP))` with
/// `s_max` the largest score among those labels ([`LOG_GAP_STEP`], [`LOG_GAP_CAP`]). A score
/// that is not a finite positive number (an undisclosed top-k label, a 0, a NaN) gets the
/// cap; when no label qualifies, every gap is the cap (the input then carries no evidence
/// either way).
///
/// **Why this statistic.** Under H0 the watermark label is a uniform draw from these labels,
/// independent of the scores. Against the alternative "the suspect raised the watermark
/// label's log-odds" — `P(w = j | scores) ∝ s_j^δ`, δ > 0, which is what training on the
/// mark does to a soft-label substitute — the locally most powerful test statistic (the
/// score test at δ = 0) is `Σ_x ln s_{w(x)}` minus a per-input constant, i.e. the sum of the
/// watermark labels' log-probability gaps (with the sign flipped). The ranks
/// ([`rank_among_others`]) keep only the order of the scores; the gaps keep how far apart
/// they are, which is where a partly absorbed mark shows. The cap bounds one input's
/// influence (a label the suspect scores as impossible says little more than an unlikely
/// one), and the quantisation makes the null distribution exactly computable
/// ([`discrete_sum_lower_tail_ln`]). Any function of the scores and the label gives an exact
/// test under this null; ties need no special rule.
pub fn log_gaps(scores: &[f32], exclude: usize) -> Vec<u32> {
    let ln: Vec<Option<f64>> = scores
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != exclude)
        .map(|(_, &v)| (v.is_finite() && v > 0.0).then(|| f64::from(v).ln()))
        .collect();
    quantised_gaps(&ln)
}

/// Each value's gap below the largest, in units of [`LOG_GAP_STEP`] rounded and capped at
/// [`LOG_GAP_CAP`]; `None` (and everything, when no value is given) gets the cap.
fn quantised_gaps(values: &[Option<f64>]) -> Vec<u32> {
    let best = values
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    values
        .iter()
        .map(|l| match l {
            Some(l) if best.is_finite() => {
                let units = ((best - l) / LOG_GAP_STEP).round();
                if units >= f64::from(LOG_GAP_CAP) {
                    LOG_GAP_CAP
                } else {
                    units.max(0.0) as u32
                }
            }
            _ => LOG_GAP_CAP,
        })
        .collect()
}

/// Probabilities below this count as this in [`reference_gaps`]' log-lifts.
pub const REFERENCE_FLOOR: f32 = 1e-3;

/// The quantised log-lift gaps of the labels other than `exclude`, in label order: with
/// `d_j = ln max(s_j, F) − ln max(r_j, F)` the suspect's log-lift of label `j` over the
/// reference's score `r_j` ([`REFERENCE_FLOOR`] `F`), `gap(j) = min(CAP, round((max d − d_j) /
/// STEP))` (the same step and cap as [`log_gaps`]). A score that is not finite counts as 0.
///
/// **Why.** A copy imitates the protected model, so its wrong labels follow the reference's
/// order; the raw gaps of [`log_gaps`] carry that imitated order as noise, and the lift over
/// the reference removes it, leaving the watermark label as the one the copy raised. The
/// reference's scores do not depend on the key, so this is a function of the scores and the
/// label like any other and the exact null of [`discrete_sum_lower_tail_ln`] holds (the
/// protected model itself gives every gap 0: no evidence). The floor keeps both models'
/// extrapolations at tiny probabilities out of the lift: below 1e-3 they are noise (on the
/// design runs, without it the lifts of copies trained on noise inputs were dominated by
/// labels both models scored below 1e-6; docs/bench/defense.md).
pub fn reference_gaps(scores: &[f32], reference: &[f32], exclude: usize) -> Vec<u32> {
    let floor = f64::from(REFERENCE_FLOOR);
    let ln = |v: f32| {
        if v.is_finite() {
            f64::from(v).max(floor).ln()
        } else {
            floor.ln()
        }
    };
    let lift: Vec<Option<f64>> = scores
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|&(j, _)| j != exclude)
        .map(|(_, (&s, &r))| Some(ln(s) - ln(r)))
        .collect();
    quantised_gaps(&lift)
}

/// Probabilities below this count as this in [`centred_gaps`].
pub const CENTRED_FLOOR: f32 = 1e-6;

/// The quantised gaps of the suspect's *self-centred* log-probabilities, one row per
/// answer (`scores[i]`, the labels other than `exclude[i]`, in label order): with `l_ij =
/// ln max(s_ij, F)` ([`CENTRED_FLOOR`] `F`; a score that is not finite counts as `F`) and
/// `m_j` the mean of `l_ij` over all the answers, `d_ij = l_ij − m_j` and `gap_i(j) =
/// min(CAP, round((max_j d_ij − d_ij) / STEP))` (the step and cap of [`log_gaps`]).
///
/// **Why.** A copy trained on inputs far from any natural image (uniform or Gaussian noise)
/// answers every such input with much the same order of the wrong labels — the order its
/// teacher gave noise — so the raw gaps of [`log_gaps`] mostly measure where the watermark
/// label sits in that fixed order, and the protected model, which orders them otherwise,
/// is no help as a reference ([`reference_gaps`]). What training on a mark leaves is a lift
/// of `w(x)` on *that* input over what the copy gives the same label elsewhere; centring each
/// label on its mean over the verified inputs removes the shared order and keeps that lift.
/// The means are a function of the suspect's scores on the ledger's inputs only, which under
/// H0 are independent of the watermark labels, so each row is still a fixed set of `c − 1`
/// gaps from which the watermark label draws one uniformly and independently of the other
/// rows: the exact null of [`discrete_sum_lower_tail_ln`] holds. With one answer every gap is
/// 0 (no evidence). The floor is far lower than the reference's: the copies it is for put
/// most wrong labels between 1e-6 and 1e-3, where their lifts are (docs/bench/defense.md,
/// tenth session).
pub fn centred_gaps(scores: &[&[f32]], exclude: &[usize]) -> Vec<Vec<u32>> {
    let floor = f64::from(CENTRED_FLOOR);
    let ln = |v: f32| {
        if v.is_finite() {
            f64::from(v).max(floor).ln()
        } else {
            floor.ln()
        }
    };
    let c = scores.first().map_or(0, |r| r.len());
    let mut mean = vec![0.0f64; c];
    for row in scores {
        for (m, &v) in mean.iter_mut().zip(row.iter()) {
            *m += ln(v);
        }
    }
    let n = scores.len().max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    scores
        .iter()
        .zip(exclude)
        .map(|(row, &y)| {
            let d: Vec<Option<f64>> = row
                .iter()
                .zip(&mean)
                .enumerate()
                .filter(|&(j, _)| j != y)
                .map(|(_, (&v, m))| Some(ln(v) - m))
                .collect();
            quantised_gaps(&d)
        })
        .collect()
}

/// `ln P(S ≤ s)` for `S = Σ_i U_i` with the `U_i` independent and `U_i` uniform over the
/// multiset `values[i]` (each entry with probability `1/values[i].len()`; rows may differ in
/// content and length, an empty row contributes 0).
///
/// Exact, by convolving over `0..=s` with rescaling (as [`uniform_sum_lower_tail_ln`]) while
/// that costs at most `1e8` additions; beyond, the Chernoff bound
/// `min_θ≥0 θs + Σ_i ln((1/|values[i]|) Σ_v e^−θv)`, which is never below the exact value.
pub fn discrete_sum_lower_tail_ln(values: &[Vec<u32>], s: u64) -> f64 {
    let rows: Vec<&Vec<u32>> = values.iter().filter(|r| !r.is_empty()).collect();
    let max_sum: u64 = rows
        .iter()
        .map(|r| u64::from(*r.iter().max().unwrap_or(&0)))
        .sum();
    if rows.is_empty() || s >= max_sum {
        return 0.0;
    }
    let min_sum: u64 = rows
        .iter()
        .map(|r| u64::from(*r.iter().min().unwrap_or(&0)))
        .sum();
    if s < min_sum {
        return f64::NEG_INFINITY;
    }
    let entries: usize = rows.iter().map(|r| r.len()).sum();
    let work = (s as usize).saturating_add(1).saturating_mul(entries);
    if work <= EXACT_SUM_WORK {
        let len = s as usize + 1;
        let mut dist = vec![0.0f64; len];
        dist[0] = 1.0;
        let mut next = vec![0.0f64; len];
        let mut ln_scale = 0.0f64;
        for r in rows {
            next.iter_mut().for_each(|x| *x = 0.0);
            let w = 1.0 / r.len() as f64;
            for &v in r.iter() {
                let v = v as usize;
                if v >= len {
                    continue;
                }
                for (n, d) in next[v..].iter_mut().zip(&dist[..len - v]) {
                    *n += w * d;
                }
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
    discrete_sum_chernoff_ln(&rows, s)
}

/// The Chernoff bound of [`discrete_sum_lower_tail_ln`] (rows non-empty):
/// `ln P(S ≤ s) ≤ θs + Σ_i ln((1/|row_i|) Σ_v e^−θv)` for every `θ ≥ 0`, convex in `θ`,
/// minimised by golden-section search.
fn discrete_sum_chernoff_ln(rows: &[&Vec<u32>], s: u64) -> f64 {
    let bound = |theta: f64| {
        let log_mgf: f64 = rows
            .iter()
            .map(|r| {
                // ln((1/|r|) Σ e^−θv), shifted by the row's minimum so that no term underflows
                // to a sum of 0 (a row of large values at a large θ).
                let lo = f64::from(*r.iter().min().unwrap_or(&0));
                let m: f64 = r
                    .iter()
                    .map(|&v| (-theta * (f64::from(v) - lo)).exp())
                    .sum();
                -theta * lo + (m / r.len() as f64).ln()
            })
            .sum();
        theta * s as f64 + log_mgf
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

/// Computes a gap-sum statistic from the evidence, on the gaps `gaps_of` picks (the log-gap
/// sum: `suspect_log_gaps`; the reference-gap sum: `reference_log_gaps`); `None` unless every
/// item carries them.
pub(crate) fn gap_sum_of(
    evidence: &[EvidenceItem],
    gaps_of: fn(&EvidenceItem) -> Option<&Vec<u32>>,
) -> Option<LogGapSumResult> {
    let mut rows = Vec::with_capacity(evidence.len());
    let mut sum = 0u64;
    let mut expected = 0.0f64;
    for e in evidence {
        let gaps = gaps_of(e)?;
        let y = e.true_label?;
        let idx = if e.watermark_label < y {
            e.watermark_label
        } else {
            e.watermark_label.checked_sub(1)?
        };
        sum += u64::from(*gaps.get(idx)?);
        expected += gaps.iter().map(|&g| f64::from(g)).sum::<f64>() / gaps.len().max(1) as f64;
        rows.push(gaps.clone());
    }
    let ln_p = discrete_sum_lower_tail_ln(&rows, sum);
    Some(LogGapSumResult {
        log_gap_sum: sum,
        expected,
        p_value: ln_p.exp(),
        log10_p_value: ln_p / std::f64::consts::LN_10,
    })
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

/// Share of the significance level the fingerprint test gets in the decision (weighted
/// Bonferroni: `p = min(1, p_log_gap_sum/(1 − w_f), p_fingerprint/w_f)`). The fingerprint
/// test is there for least-squares copies, which it convicts with z ≈ 9 (p ≈ 1e-20), so 1% of
/// the level costs it nothing, while the log-gap sum, which decides every other thief, keeps
/// 99%.
pub const FINGERPRINT_WEIGHT: f64 = 0.01;

/// Share of the level the gap sums get in the decision with the fingerprint test (split
/// equally between the log-gap and reference-gap sums when both ran).
pub const GAP_WEIGHT: f64 = 1.0 - FINGERPRINT_WEIGHT;

/// What the fingerprint test of [`verify_with`] needs (see [`crate::fingerprint`]).
pub struct FingerprintCheck<'a> {
    /// The fingerprint (DAWN's sub-key and strength: [`crate::Dawn::fingerprint_for_key`]).
    pub fingerprint: &'a LinearFingerprint,
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
    verify_with(suspect, records, alpha, batch, None, None)
}

/// Like [`verify`], with the protected model as `reference` (it must answer full
/// probabilities; the reference-gap sum joins the decision when the suspect answers scores)
/// and, when `fingerprint` is given and the suspect answers full probabilities, the
/// linear-fingerprint test (against `reference` when given); see the module documentation
/// for the decision.
pub fn verify_with(
    suspect: &mut dyn Oracle,
    records: &[LedgerRecord],
    alpha: f64,
    batch: usize,
    mut reference: Option<&mut dyn Oracle>,
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
    let model = records.iter().find_map(|r| r.model.clone());
    if let (Some(m), Some(other)) = (
        &model,
        records
            .iter()
            .filter_map(|r| r.model.as_ref())
            .find(|o| *o != model.as_ref().expect("some")),
    ) {
        return Err(DefenseError::Verify(format!(
            "the records mix marks of models {m:?} and {other:?}; verify against one model's \
             ledger"
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
    check_reference(reference.as_deref(), &shape, c)?;
    let mut evidence = Vec::with_capacity(distinct.len());
    // The suspect's scores, kept for the centred gaps (which need every answer's).
    let mut answered: Vec<Vec<f32>> = Vec::with_capacity(distinct.len());
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
        let reference_probs = match reference.as_deref_mut() {
            Some(o) if scored => Some(
                full_probabilities(o, &x, "reference", chunk.len(), c)?.ok_or_else(|| {
                    DefenseError::Verify(
                        "the reference must answer full probabilities, it answered labels or \
                         top-k scores"
                            .into(),
                    )
                })?,
            ),
            _ => None,
        };
        for (i, (r, &l)) in chunk.iter().zip(&ans.labels).enumerate() {
            if scored {
                answered.push(ans.probs.row(i).to_vec());
            }
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
                suspect_log_gaps: scored.then(|| log_gaps(ans.probs.row(i), r.true_label)),
                reference_log_gaps: reference_probs
                    .as_ref()
                    .map(|p| reference_gaps(ans.probs.row(i), p.row(i), r.true_label)),
                centred_log_gaps: None,
            });
        }
    }
    if all_scored {
        let rows: Vec<&[f32]> = answered.iter().map(Vec::as_slice).collect();
        let excludes: Vec<usize> = distinct.iter().map(|r| r.true_label).collect();
        for (e, g) in evidence.iter_mut().zip(centred_gaps(&rows, &excludes)) {
            e.centred_log_gaps = Some(g);
        }
    }
    if !all_scored {
        // The decision uses `top1` for every record; do not report a partial second count.
        for e in &mut evidence {
            e.suspect_top_wrong = None;
            e.matched_top_wrong = None;
            e.suspect_rank_wrong = None;
            e.suspect_log_gaps = None;
            e.reference_log_gaps = None;
            e.centred_log_gaps = None;
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
    let (log_gap_sum, reference_gap_sum, centred_gap_sum) = if all_scored {
        (
            gap_sum_of(&evidence, |e| e.suspect_log_gaps.as_ref()),
            gap_sum_of(&evidence, |e| e.reference_log_gaps.as_ref()),
            gap_sum_of(&evidence, |e| e.centred_log_gaps.as_ref()),
        )
    } else {
        (None, None, None)
    };
    let fingerprint = match fingerprint {
        Some(f) if all_scored => f
            .fingerprint
            .verify(suspect, reference, f.queries, f.range, batch)?,
        _ => None,
    };
    // The decision (fixed by the disclosure and the verifier's key, see the module
    // documentation).
    let statistic = Statistic::decision(
        top_among_wrong.is_some() && log_gap_sum.is_some() && centred_gap_sum.is_some(),
        reference_gap_sum.is_some(),
        fingerprint.is_some(),
    );
    let log10_p = statistic
        .combine(|part| match part {
            Statistic::Top1 => Some(top1.log10_p_value),
            Statistic::LogGapSum => log_gap_sum.map(|g| g.log10_p_value),
            Statistic::ReferenceGapSum => reference_gap_sum.map(|g| g.log10_p_value),
            Statistic::CentredGapSum => centred_gap_sum.map(|g| g.log10_p_value),
            Statistic::Fingerprint => fingerprint.map(|f| f.log10_p_value),
            _ => None,
        })
        .expect("every part of the decision ran");
    let matches = match (statistic, top_among_wrong) {
        (Statistic::Top1, _) | (_, None) => top1.matches,
        (_, Some(t)) => t.matches,
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
        log_gap_sum,
        reference_gap_sum,
        centred_gap_sum,
        fingerprint,
        num_classes: c,
        model,
        ledger_commitment: commitment(records),
        evidence,
        family: 1,
        log10_p_value_single: None,
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
        queries,
        range: (0.0, 1.0),
    });
    verify_with(
        &mut ModelOracle::new(model),
        records,
        alpha,
        256,
        reference.as_mut().map(|r| r as &mut dyn Oracle),
        check,
    )
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
    fn holm_matches_the_textbook_example_and_keeps_the_order() {
        // p = 0.01, 0.04, 0.03, 0.005: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
        // 0.04·1 = 0.04 → raised to 0.06 (monotone).
        let p = [0.01f64, 0.04, 0.03, 0.005];
        let adj: Vec<f64> = holm_log10(&p.map(f64::log10))
            .iter()
            .map(|l| 10f64.powf(*l))
            .collect();
        for (a, want) in adj.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!((a - want).abs() < 1e-12, "{adj:?}");
        }
        // Capped at 1 (0.95·2), and raised to the one before (0.98 < 1).
        assert_eq!(
            holm_log10(&[0.98f64.log10(), 0.95f64.log10()]),
            vec![0.0, 0.0]
        );
        // Far below f64's range still ordered; the largest is not multiplied.
        let adj = holm_log10(&[-0.01, -200.0, -150.0]);
        assert_eq!(adj[0], -0.01);
        assert!((adj[1] - (-200.0 + 3f64.log10())).abs() < 1e-12);
        assert!((adj[2] - (-150.0 + 2f64.log10())).abs() < 1e-12);
        assert!(holm_log10(&[]).is_empty());
    }

    /// Under the null, screening 20 suspects: some raw p ≤ 0.01 about 18% of the time, some
    /// Holm-adjusted one about 1% (at most α, the family-wise guarantee).
    #[test]
    fn holm_controls_the_family_wise_error_of_uniform_p_values() {
        let mut state = 7u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (mut raw, mut adjusted) = (0, 0);
        let trials = 20_000;
        for _ in 0..trials {
            let p: Vec<f64> = (0..20).map(|_| uniform().log10()).collect();
            raw += usize::from(p.iter().any(|l| *l <= -2.0));
            adjusted += usize::from(holm_log10(&p).iter().any(|l| *l <= -2.0));
        }
        let (raw, adjusted) = (raw as f64 / trials as f64, adjusted as f64 / trials as f64);
        assert!((raw - 0.182).abs() < 0.015, "raw {raw}");
        assert!(adjusted <= 0.0115, "adjusted {adjusted}");
    }

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
        // The log-gap sum sees the same (every mark within 0.2 nats of the top), and the
        // decision is at most twice its p-value.
        assert_eq!(r.statistic, Statistic::LogGapSumOrCentredGapSum);
        let g = r.log_gap_sum.unwrap();
        assert!(g.log_gap_sum <= 40 && g.p_value < 1e-9, "{g:?}");
        assert!(r.log10_p_value <= g.log10_p_value + 2f64.log10() + 1e-12);
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        assert!(r
            .evidence
            .iter()
            .all(|e| matches!(e.suspect_rank_wrong, Some(2 | 3))));
    }

    #[test]
    fn log_gaps_quantise_clip_and_cap() {
        let e = std::f32::consts::E;
        // Excluding label 0; the best wrong label is 1 (0.25).
        let g = log_gaps(&[0.5, 0.25, 0.25 / e, 0.0, f32::NAN, 0.25 / e.powi(20)], 0);
        assert_eq!(g, vec![0, 8, LOG_GAP_CAP, LOG_GAP_CAP, LOG_GAP_CAP]);
        // Half a step rounds to the nearest unit.
        let g = log_gaps(&[0.3, 0.3 * (-0.06f32).exp(), 0.9], 2);
        assert_eq!(g, vec![0, 0]);
        let g = log_gaps(&[0.3, 0.3 * (-0.07f32).exp(), 0.9], 2);
        assert_eq!(g, vec![0, 1]);
        // Nothing usable: every gap is the cap.
        assert_eq!(log_gaps(&[1.0, 0.0, -1.0], 0), vec![LOG_GAP_CAP; 2]);
    }

    /// Brute-force `P(S ≤ s)` by enumerating every combination.
    fn brute_discrete(rows: &[Vec<u32>], s: u64) -> f64 {
        fn go(rows: &[Vec<u32>], acc: u64, s: u64) -> f64 {
            match rows.split_first() {
                None => f64::from(u8::from(acc <= s)),
                Some((r, rest)) => {
                    r.iter()
                        .map(|&v| go(rest, acc + u64::from(v), s))
                        .sum::<f64>()
                        / r.len() as f64
                }
            }
        }
        go(rows, 0, s)
    }

    #[test]
    fn discrete_sum_tail_is_exact_and_its_bound_conservative() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..30 {
            let n = rng.gen_range(1..6);
            let rows: Vec<Vec<u32>> = (0..n)
                .map(|_| {
                    (0..rng.gen_range(1..5))
                        .map(|_| rng.gen_range(0..9))
                        .collect()
                })
                .collect();
            let max: u64 = rows
                .iter()
                .map(|r| u64::from(*r.iter().max().unwrap()))
                .sum();
            for s in 0..=max + 1 {
                let want = brute_discrete(&rows, s);
                let got = discrete_sum_lower_tail_ln(&rows, s).exp();
                assert!(
                    (got - want).abs() < 1e-12,
                    "{rows:?} s={s}: {got} vs {want}"
                );
                let refs: Vec<&Vec<u32>> = rows.iter().collect();
                let bound = discrete_sum_chernoff_ln(&refs, s).exp();
                assert!(
                    bound >= want - 1e-12,
                    "{rows:?} s={s}: bound {bound} < {want}"
                );
            }
        }
        // Uniform rows 0..k reduce to the rank-sum distribution.
        let rows = vec![(0..9).collect::<Vec<u32>>(); 30];
        for s in [0, 10, 60, 119] {
            let a = discrete_sum_lower_tail_ln(&rows, s);
            let b = uniform_sum_lower_tail_ln(30, 9, s as usize);
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // Far tails stay finite in log space: P(S = 0) = 9^−400.
        let rows = vec![(0..9).collect::<Vec<u32>>(); 400];
        let ln = discrete_sum_lower_tail_ln(&rows, 0);
        assert!((ln + 400.0 * 9f64.ln()).abs() < 1e-6, "{ln}");
        // Rows of large values: the bound stays finite and above the exact tail (no term
        // underflows), here P(S ≤ 64) = 1/2 for rows {64, 64} and {0, 5}.
        let (big, small) = (vec![64u32, 64], vec![0u32, 5]);
        let b = discrete_sum_chernoff_ln(&[&big, &small], 64);
        assert!(b.is_finite() && b >= 0.5f64.ln() - 1e-12, "{b}");
        // Empty rows contribute nothing; below the smallest possible sum the tail is empty.
        assert_eq!(
            discrete_sum_lower_tail_ln(&[vec![], vec![3, 5]], 3),
            (0.5f64).ln()
        );
        assert_eq!(
            discrete_sum_lower_tail_ln(&[vec![3, 5]], 2),
            f64::NEG_INFINITY
        );
        assert_eq!(discrete_sum_lower_tail_ln(&[], 0), 0.0);
    }

    /// A soft-label suspect that lifted every watermark label a little — never its first or
    /// second choice among the wrong labels, but far closer to the top than the labels around
    /// it: the gaps convict where the ranks say little.
    #[test]
    fn log_gap_sum_sees_how_far_a_mark_was_lifted() {
        let c = 10;
        let n = 40;
        let mut records = Vec::new();
        let mut scores = Vec::new();
        for i in 0..n {
            let y = i % c;
            let w = (y + 1 + i % (c - 1)) % c;
            let mut s = vec![0.0f32; c];
            // Two wrong labels above w; the rest 6 nats lower.
            let mut above = 0;
            for (j, v) in s.iter_mut().enumerate() {
                *v = if j == y {
                    0.8
                } else if j == w {
                    0.05
                } else if above < 2 {
                    above += 1;
                    0.06
                } else {
                    0.05 * (-6.0f32).exp()
                };
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
        let g = r.log_gap_sum.unwrap();
        // ln(0.06/0.05) = 0.18 nats = 1 unit per mark; the others 6.18 nats = 49 units.
        assert_eq!(g.log_gap_sum, 40);
        assert!((g.expected - 40.0 * (1.0 + 6.0 * 49.0) / 9.0).abs() < 1e-9);
        assert!(g.p_value < 1e-15, "{}", g.p_value);
        // The ranks: third of nine every time, p about 2e-6 (Σ = 80 against 160).
        let rs = r.rank_sum.unwrap();
        assert_eq!(rs.rank_sum, 80);
        assert!(rs.p_value > 1e-9 && rs.p_value < 1e-3, "{}", rs.p_value);
        // The report carries every gap, so the statistic can be recomputed from it.
        let again = gap_sum_of(&r.evidence, |e| e.suspect_log_gaps.as_ref()).unwrap();
        assert_eq!(again, g);
        assert!(r.evidence.iter().all(|e| e
            .suspect_log_gaps
            .as_ref()
            .is_some_and(|v| v.len() == c - 1)));
    }

    #[test]
    fn reference_gaps_lift_over_the_reference_with_a_floor() {
        // Label 0 excluded. Lifts: label 1 ln 2, label 2 0, label 3 both below the floor: 0,
        // label 4 ln(0.1/0.2) = −ln 2.
        let g = reference_gaps(&[0.5, 0.2, 0.1, 1e-6, 0.1], &[0.4, 0.1, 0.1, 1e-9, 0.2], 0);
        let units = |nats: f64| (nats / LOG_GAP_STEP).round() as u32;
        let ln2 = 2f64.ln();
        assert_eq!(g, vec![0, units(ln2), units(ln2), units(2.0 * ln2)]);
        // The protected model against itself: every gap 0, no evidence.
        let p = [0.7, 0.2, 0.05, 0.05];
        assert_eq!(reference_gaps(&p, &p, 1), vec![0, 0, 0]);
        // Non-finite scores count as the floor.
        assert_eq!(
            reference_gaps(&[0.5, f32::NAN, 0.2], &[0.5, 0.3, 0.2], 0).len(),
            2
        );
    }

    /// A copy that imitates the protected model's order of the wrong labels and raised the
    /// watermark label by one nat: among its own scores the watermark label sits wherever the
    /// reference put it (the raw gaps see little), over the reference it is the one label
    /// lifted (the reference gaps convict). The decision takes both, Bonferroni.
    #[test]
    fn reference_gap_sum_sees_a_lift_the_imitated_order_hides() {
        use rand::{Rng, SeedableRng};
        let c = 10;
        let n = 40;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut records, mut sus, mut refs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let y = rng.gen_range(0..c);
            let w = (y + rng.gen_range(1..c)) % c;
            // The reference: y at 0.6, the wrong labels spread over four nats.
            let mut r: Vec<f32> = (0..c)
                .map(|j| {
                    if j == y {
                        0.0
                    } else {
                        (-rng.gen_range(0.0f32..4.0)).exp()
                    }
                })
                .collect();
            let rest: f32 = r.iter().sum();
            r.iter_mut().for_each(|v| *v *= 0.4 / rest);
            r[y] = 0.6;
            let mut s = r.clone();
            s[w] *= 1f32.exp();
            let t: f32 = s.iter().sum();
            s.iter_mut().for_each(|v| *v /= t);
            records.push(rec(i, y, w, c));
            sus.push(s);
            refs.push(r);
        }
        let mut o = Table {
            scores: sus,
            disclosure: Disclosure::Probabilities,
        };
        let mut reference = Table {
            scores: refs,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify_with(&mut o, &records, 1e-9, 16, Some(&mut reference), None).unwrap();
        let (g, rg) = (r.log_gap_sum.unwrap(), r.reference_gap_sum.unwrap());
        assert!(g.p_value > 1e-9, "log-gap sum alone: {}", g.p_value);
        // Every lift is exactly one nat (8 units) above the others: gap 0 at the mark.
        assert_eq!(rg.log_gap_sum, 0);
        assert!(rg.p_value < 1e-30, "{}", rg.p_value);
        assert_eq!(
            r.statistic,
            Statistic::LogGapSumOrReferenceGapSumOrCentredGapSum
        );
        let cg = r.centred_gap_sum.unwrap();
        let want = (3.0 * g.p_value.min(rg.p_value).min(cg.p_value)).min(1.0);
        assert!(
            (r.p_value / want - 1.0).abs() < 1e-9,
            "{} vs {want}",
            r.p_value
        );
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        assert!(r.evidence.iter().all(|e| e
            .reference_log_gaps
            .as_ref()
            .is_some_and(|v| v.len() == c - 1)));
        let again = gap_sum_of(&r.evidence, |e| e.reference_log_gaps.as_ref()).unwrap();
        assert_eq!(again, rg);

        // With the fingerprint test as well: weighted Bonferroni over the three.
        let fp = LinearFingerprint::new(crate::SecretKey::from_bytes([3; 32]), 1.0).unwrap();
        let check = FingerprintCheck {
            fingerprint: &fp,
            queries: 8,
            range: (0.0, 1.0),
        };
        let r = verify_with(
            &mut o,
            &records,
            1e-9,
            16,
            Some(&mut reference),
            Some(check),
        );
        // The table oracle only answers inputs 0..n; the fingerprint's uniform inputs in
        // [0, 1] read rows 0 and 1, which is enough to run the test.
        let r = r.unwrap();
        assert_eq!(
            r.statistic,
            Statistic::LogGapSumOrReferenceGapSumOrCentredGapSumOrFingerprint
        );
        let f = r.fingerprint.unwrap();
        let want = (g.p_value / (GAP_WEIGHT / 3.0))
            .min(rg.p_value / (GAP_WEIGHT / 3.0))
            .min(cg.p_value / (GAP_WEIGHT / 3.0))
            .min(f.p_value / FINGERPRINT_WEIGHT)
            .min(1.0);
        assert!(
            (r.p_value / want - 1.0).abs() < 1e-9,
            "{} vs {want}",
            r.p_value
        );
        // Its report rechecks: every gap sum recomputed, the fingerprint's p as reported.
        let report = crate::report::EvidenceReport::from_result("s", &r);
        let again = crate::report::recheck(&report).unwrap();
        assert!(again.fingerprint_as_reported);
        assert!(again.recomputed.contains(&"reference_gap_sum"));
        let mut t = report;
        t.fingerprint.as_mut().unwrap().log10_p_value = -80.0;
        assert!(crate::report::recheck(&t).is_err(), "the decision uses it");
    }

    #[test]
    fn a_reference_that_does_not_fit_is_an_error() {
        let (records, scores) = constructed_case();
        let mut o = Table {
            scores: scores.clone(),
            disclosure: Disclosure::Probabilities,
        };
        let mut labels_only = Table {
            scores: scores.clone(),
            disclosure: Disclosure::Label,
        };
        let e = verify_with(&mut o, &records, 0.5, 2, Some(&mut labels_only), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reference must answer full probabilities"),
            "{e}"
        );
        let mut wider = Table {
            scores: scores
                .iter()
                .map(|s| [s.as_slice(), &[0.0]].concat())
                .collect(),
            disclosure: Disclosure::Probabilities,
        };
        let e = verify_with(&mut o, &records, 0.5, 2, Some(&mut wider), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the reference takes shape"), "{e}");
        // A label-only suspect with a reference: the reference is not needed, top1 decides.
        let mut lab = Table {
            scores: scores.clone(),
            disclosure: Disclosure::Label,
        };
        let mut reference = Table {
            scores,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify_with(&mut lab, &records, 0.5, 2, Some(&mut reference), None).unwrap();
        assert_eq!(r.statistic, Statistic::Top1);
        assert!(r.reference_gap_sum.is_none());
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
            model: None,
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

    /// The result names the model of the records; records of two models are refused.
    #[test]
    fn the_result_names_the_model_and_mixed_models_are_refused() {
        let (mut records, scores) = constructed_case();
        let table = |scores: &Vec<Vec<f32>>| Table {
            scores: scores.clone(),
            disclosure: Disclosure::Probabilities,
        };
        assert_eq!(
            verify(&mut table(&scores), &records, 0.6, 2).unwrap().model,
            None
        );
        // Legacy records (no model) beside named ones count as that model's.
        records[1].model = Some("a".into());
        let r = verify(&mut table(&scores), &records, 0.6, 2).unwrap();
        assert_eq!(r.model.as_deref(), Some("a"));
        records[2].model = Some("b".into());
        let e = verify(&mut table(&scores), &records, 0.6, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"a\"") && e.contains("\"b\""), "{e}");
    }

    #[test]
    /// One of a family of suspects: the p-value is multiplied by the family (at most 1), the
    /// verdict follows the corrected value, the single-suspect value is kept, and the JSON of
    /// a lone suspect is unchanged.
    fn a_family_of_suspects_multiplies_the_p_value() {
        let (records, scores) = constructed_case();
        let mut o = Table {
            scores,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify(&mut o, &records, 0.6, 2).unwrap();
        // 8/27: see exact_p_values_on_a_constructed_case.
        assert!(close(r.p_value, 8.0 / 27.0));
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        let lone = serde_json::to_value(&r).unwrap();
        assert!(lone.get("family").is_none() && lone.get("log10_p_value_single").is_none());
        let f = r.clone().for_family(2);
        assert!(close(f.p_value, 16.0 / 27.0), "{}", f.p_value);
        assert_eq!(f.verdict, Verdict::WatermarkFound);
        assert_eq!(f.family, 2);
        assert!(close(f.log10_p_value_single.unwrap(), r.log10_p_value));
        let f = r.clone().for_family(3);
        assert!(close(f.p_value, 24.0 / 27.0));
        assert_eq!(f.verdict, Verdict::NotFound, "0.89 is not below α = 0.6");
        // Applied twice, the family replaces (not compounds) the correction; capped at 1.
        let f = f.for_family(10);
        assert_eq!(f.p_value, 1.0);
        assert!(close(f.log10_p_value_single.unwrap(), r.log10_p_value));
        assert_eq!(r.clone().for_family(1), r);
        let back: VerifyResult =
            serde_json::from_value(serde_json::to_value(r.clone().for_family(3)).unwrap()).unwrap();
        assert_eq!(back.family, 3);
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
        assert_eq!(r.statistic, Statistic::LogGapSumOrCentredGapSum);
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
        // log_gap_sum, in eighths of a nat below the best wrong label, capped at 64:
        // record 0 (wrong labels 1, 2, 3; best 0.25): ln 2.5 → 7, 0, ln 5 → 13, mark 2 → 0;
        // record 1 (0, 2, 3; best 0.6): ln 6 → 14, 14, 0, mark 3 → 0;
        // record 2 (0, 1, 3; best 0.3): ln 3 → 9, 0, 9, mark 0 → 9. Sum 9.
        // P(S ≤ 9) needs record 1 at 0 (1/3) and records 0 + 2 ≤ 9: 0 + anything (1/3) or
        // 7 + 0 (1/9), so 1/3 · 4/9 = 4/27. Expected (20 + 28 + 18)/3 = 22.
        let g = r.log_gap_sum.unwrap();
        assert_eq!(g.log_gap_sum, 9);
        assert!(close(g.expected, 22.0));
        assert!(close(g.p_value, 4.0 / 27.0), "{}", g.p_value);
        let gaps: Vec<_> = r
            .evidence
            .iter()
            .map(|e| e.suspect_log_gaps.clone())
            .collect();
        assert_eq!(
            gaps,
            vec![
                Some(vec![7, 0, 13]),
                Some(vec![14, 14, 0]),
                Some(vec![9, 0, 9])
            ]
        );
        // centred_gap_sum: ln max(s, 1e-6) centred per label on its mean over the three
        // answers (label means ln 0.1·0.6·0.1 / 3, …), then the same gaps:
        // record 0 (labels 1, 2, 3): centred −0.597, 0.074, −1.059 → 5, 0, 9, mark 2 → 0;
        // record 1 (0, 2, 3): −0.597, −0.842, 1.426 → 16, 18, 0, mark 3 → 0;
        // record 2 (0, 1, 3): −0.597, 0.501, −0.366 → 9, 0, 7, mark 0 → 9. Sum 9.
        // P(S ≤ 9) needs record 1 at 0 (1/3) and records 0 + 2 ≤ 9: 0 + anything (1/3) or
        // 5 + 0 (1/9) or 9 + 0 (1/9), so 1/3 · 5/9 = 5/27. Expected (14 + 34 + 16)/3.
        let cg = r.centred_gap_sum.unwrap();
        assert_eq!(cg.log_gap_sum, 9);
        assert!(close(cg.expected, 64.0 / 3.0));
        assert!(close(cg.p_value, 5.0 / 27.0), "{}", cg.p_value);
        let gaps: Vec<_> = r
            .evidence
            .iter()
            .map(|e| e.centred_log_gaps.clone())
            .collect();
        assert_eq!(
            gaps,
            vec![
                Some(vec![5, 0, 9]),
                Some(vec![16, 18, 0]),
                Some(vec![9, 0, 7])
            ]
        );
        // The decision: the smaller of the two gap sums' p-values, doubled, with the
        // top_among_wrong count.
        assert_eq!(r.matches, t.matches);
        assert!(close(r.p_value, 8.0 / 27.0), "{}", r.p_value);
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        assert!(close(r.log10_p_value, (8.0f64 / 27.0).log10()));
        let e: Vec<_> = r.evidence.iter().map(|e| e.suspect_top_wrong).collect();
        assert_eq!(e, vec![Some(2), Some(3), Some(1)]);
        let e: Vec<_> = r.evidence.iter().map(|e| e.suspect_rank_wrong).collect();
        assert_eq!(e, vec![Some(1), Some(1), Some(3)]);
        assert_eq!(r.evidence[0].true_label, Some(0));
        assert_eq!(r.evidence[0].matched_top_wrong, Some(true));
        assert!(!r.evidence[0].matched);
        // JSON names of the statistics.
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["statistic"], "log_gap_sum_or_centred_gap_sum");
        assert_eq!(j["centred_gap_sum"]["log_gap_sum"], 9);
        assert_eq!(j["rank_sum"]["rank_sum"], 2);
        assert_eq!(j["log_gap_sum"]["log_gap_sum"], 9);
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
                queries: 64,
                range: (0.0, 1.0),
            })
        };
        let mut o = Table {
            scores: scores.clone(),
            disclosure: Disclosure::Probabilities,
        };
        let r = verify_with(&mut o, &records, 0.6, 2, None, check()).unwrap();
        assert_eq!(
            r.statistic,
            Statistic::LogGapSumOrCentredGapSumOrFingerprint
        );
        let (g, cg, f) = (
            r.log_gap_sum.unwrap(),
            r.centred_gap_sum.unwrap(),
            r.fingerprint.unwrap(),
        );
        assert_eq!(f.queried, 64);
        let want = (g.p_value / (GAP_WEIGHT / 2.0))
            .min(cg.p_value / (GAP_WEIGHT / 2.0))
            .min(f.p_value / FINGERPRINT_WEIGHT)
            .min(1.0);
        assert!((r.p_value - want).abs() < 1e-12, "{} vs {want}", r.p_value);
        assert!((GAP_WEIGHT + FINGERPRINT_WEIGHT - 1.0).abs() < 1e-15);
        let mut o = Table {
            scores,
            disclosure: Disclosure::Label,
        };
        let r = verify_with(&mut o, &records, 0.6, 2, None, check()).unwrap();
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
        assert_eq!(r.statistic, Statistic::LogGapSumOrCentredGapSum);
        assert_eq!(r.matches, 0);
        assert_eq!(r.top_among_wrong.unwrap().p_value, 1.0);
        // The gaps need no tie rule: labels 1 and 2 both sit at gap 0, so the watermark's 0
        // is reached by 2 of the 3 labels, P(S ≤ 0) = 2/3.
        assert_eq!(r.evidence[0].suspect_log_gaps, Some(vec![0, 0, 7]));
        assert!(close(r.log_gap_sum.unwrap().p_value, 2.0 / 3.0));
        // One answer centred on itself: every gap 0, no evidence; the decision 2·(2/3) → 1.
        assert_eq!(r.evidence[0].centred_log_gaps, Some(vec![0, 0, 0]));
        assert_eq!(r.centred_gap_sum.unwrap().p_value, 1.0);
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
        let mut ps4 = Vec::new();
        let mut ps5 = Vec::new();
        let mut ps6 = Vec::new();
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
            // The reference: another model independent of the key (its own stream too).
            let reference: Vec<Vec<f32>> = (0..n)
                .map(|_| (0..c).map(|_| scores_rng.gen::<f32>().powi(4)).collect())
                .collect();
            let mut o = Table {
                scores,
                disclosure: Disclosure::Probabilities,
            };
            let mut reference = Table {
                scores: reference,
                disclosure: Disclosure::Probabilities,
            };
            let r = verify_with(
                &mut o,
                &records,
                DEFAULT_ALPHA,
                64,
                Some(&mut reference),
                None,
            )
            .unwrap();
            ps5.push(r.reference_gap_sum.unwrap().p_value);
            ps6.push(r.centred_gap_sum.unwrap().p_value);
            let t = r.top_among_wrong.unwrap();
            m1 += r.top1.matches;
            m2 += t.matches;
            ps1.push(r.top1.p_value);
            ps2.push(t.p_value);
            ps3.push(r.rank_sum.unwrap().p_value);
            ps4.push(r.log_gap_sum.unwrap().p_value);
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
        for ps in [&ps1, &ps2, &ps3, &ps4, &ps5, &ps6, &ps_decision] {
            for a in [0.01, 0.05, 0.2, 0.5] {
                let share = ps.iter().filter(|&&p| p <= a).count() as f64 / reps as f64;
                let slack = 4.0 * (a * (1.0 - a) / reps as f64).sqrt();
                assert!(share <= a + slack, "P(p ≤ {a}) = {share}");
            }
        }
        // Not trivially conservative: at a = 0.5 the exact test rejects often.
        for ps in [&ps2, &ps3, &ps4, &ps5, &ps6] {
            let share = ps.iter().filter(|&&p| p <= 0.5).count() as f64 / reps as f64;
            assert!(share > 0.2, "{share}");
        }
    }

    /// Scores like those of a copy trained on noise inputs: every input gets the same order of
    /// the wrong labels (per-label log-scores fixed over inputs, plus a little noise), and the
    /// mark lifts its label by 1.5 nats on its own input — not enough to leave the bottom of
    /// that shared order. Drawn from `seed`; the marks' lift only when `lift`.
    fn shared_order_case(seed: u64, lift: bool) -> (Vec<LedgerRecord>, Vec<Vec<f32>>) {
        use rand::{Rng, SeedableRng};
        let c = 10;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Label 0 wins every input; the wrong labels' log-scores 1 … 9 nats lower.
        let base: Vec<f64> = (0..c).map(|j| -(j as f64)).collect();
        let (mut records, mut scores) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let y = 0;
            let w = rng.gen_range(1..c);
            let mut l: Vec<f64> = base
                .iter()
                .map(|b| b + rng.gen_range(-0.25..0.25))
                .collect();
            if lift {
                l[w] += 1.5;
            }
            let z: f64 = l.iter().map(|v| v.exp()).sum();
            scores.push(l.iter().map(|v| (v.exp() / z) as f32).collect());
            records.push(rec(i, y, w, c));
        }
        (records, scores)
    }

    /// The centred gap sum sees marks that a shared order of the wrong labels hides from the
    /// raw gaps (the noise-trained copies of docs/bench/defense.md, tenth session).
    #[test]
    fn centred_gap_sum_sees_a_lift_a_shared_order_hides() {
        let (records, scores) = shared_order_case(5, true);
        let mut o = Table {
            scores,
            disclosure: Disclosure::Probabilities,
        };
        let r = verify(&mut o, &records, 1e-9, 16).unwrap();
        let (g, cg) = (r.log_gap_sum.unwrap(), r.centred_gap_sum.unwrap());
        assert!(g.p_value > 1e-3, "raw gaps: {}", g.p_value);
        assert!(cg.p_value < 1e-15, "centred gaps: {}", cg.p_value);
        assert_eq!(r.verdict, Verdict::WatermarkFound);
        let again = gap_sum_of(&r.evidence, |e| e.centred_log_gaps.as_ref()).unwrap();
        assert_eq!(again, cg);
    }

    /// Under H0 the centred gap sum is exact for a suspect with a shared order too (its means
    /// depend on the scores only): P(p ≤ a) ≤ a over independent draws of the marks.
    #[test]
    fn centred_gap_sum_is_exact_under_a_shared_order() {
        let reps = 400;
        let mut ps = Vec::new();
        let mut decision = Vec::new();
        for rep in 0..reps {
            let (records, scores) = shared_order_case(1000 + rep, false);
            let mut o = Table {
                scores,
                disclosure: Disclosure::Probabilities,
            };
            let r = verify(&mut o, &records, DEFAULT_ALPHA, 64).unwrap();
            ps.push(r.centred_gap_sum.unwrap().p_value);
            decision.push(r.p_value);
        }
        for ps in [&ps, &decision] {
            for a in [0.01, 0.05, 0.2, 0.5] {
                let share = ps.iter().filter(|&&p| p <= a).count() as f64 / reps as f64;
                let slack = 4.0 * (a * (1.0 - a) / reps as f64).sqrt();
                assert!(share <= a + slack, "P(p ≤ {a}) = {share}");
            }
        }
        let share = ps.iter().filter(|&&p| p <= 0.5).count() as f64 / reps as f64;
        assert!(share > 0.3, "not trivially conservative: {share}");
    }

    #[test]
    fn centred_gaps_centre_each_label_with_a_floor() {
        // Two answers; label 0 excluded in both. Label 1: 0.2 and 0.05 (mean ln 0.1), label
        // 2: 0.0 (floored at 1e-6) and NaN (counts as the floor) → centred 0 on both.
        let a: [f32; 3] = [0.75, 0.2, 0.0];
        let b: [f32; 3] = [0.95, 0.05, f32::NAN];
        let g = centred_gaps(&[&a, &b], &[0, 0]);
        // Row a: label 1 at +ln 2, label 2 at 0 → gaps 0, round(ln 2 · 8) = 6.
        // Row b: label 1 at −ln 2, label 2 at 0 → gaps 6, 0.
        assert_eq!(g, vec![vec![0, 6], vec![6, 0]]);
        // One answer: no evidence.
        assert_eq!(centred_gaps(&[&a], &[1]), vec![vec![0, 0]]);
        assert!(centred_gaps(&[], &[]).is_empty());
    }
}
