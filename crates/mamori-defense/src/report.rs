//! Signed evidence reports (ed25519).
//!
//! A report states what was queried, how many answers matched the watermark, the p-value, the
//! verdict and the ledger commitment. It is signed over the canonical JSON of its
//! [`EvidenceReport`] (serde's field order; floats printed in shortest round-trip form, so
//! parsing and re-serialising gives the same bytes). Checking uses a public key supplied by the
//! checker, never the one embedded in the file.
//!
//! Version 2 reports also name the deciding statistic and carry both count statistics' counts
//! and p-values (see [`crate::verify`](mod@crate::verify)); version 3 reports add the rank-sum statistic and the
//! fingerprint test; version 4 reports add the log-gap-sum and reference-gap-sum statistics
//! (which decide them) and every queried input's gaps, from which anyone can recompute both;
//! version 5 reports name the served model whose ledger was used (`model`); version 6
//! reports add the centred-gap-sum statistic and every queried input's centred gaps (and are
//! decided with it, see [`crate::verify`](mod@crate::verify)). Fields
//! a version does not have are left out of its canonical JSON, so the signatures of older
//! reports still verify.

use crate::error::DefenseError;
use crate::fingerprint::FingerprintResult;
use crate::key::SecretKey;
use crate::verify::{
    binomial_upper_tail_ln, gap_sum_of, EvidenceItem, LogGapSumResult, RankSumResult, Statistic,
    StatisticResult, Verdict, VerifyResult,
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::f64::consts::LN_10;
use std::path::Path;

/// The signed content of a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceReport {
    /// Format version (6; 5 for reports made before `centred_gap_sum` existed, 4 before
    /// `model`, 3 before `log_gap_sum`,
    /// 2 before `rank_sum`, 1 before `statistic`).
    pub version: u32,
    /// When the report was made, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// What was verified (path or URL of the suspect).
    pub suspect: String,
    /// The served model whose watermark ledger was used (version 5; absent before, and for a
    /// ledger that names no model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Commitment to the ledger records used.
    pub ledger_commitment: String,
    /// Distinct inputs queried.
    pub queried: usize,
    /// The deciding statistic's count (version 1: answers equal to the watermark label).
    pub matches: usize,
    /// Chance of a match under independence.
    pub chance: f64,
    /// The deciding statistic's upper binomial tail p-value.
    pub p_value: f64,
    /// `log10` of the p-value.
    pub log10_p_value: f64,
    /// Significance level.
    pub alpha: f64,
    /// The decision.
    pub verdict: Verdict,
    /// The deciding statistic (version 2; absent in version 1, which used `top1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Statistic>,
    /// The `top1` statistic (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<StatisticResult>,
    /// The `top_among_wrong` statistic, when the suspect's answers carried scores (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_among_wrong: Option<StatisticResult>,
    /// The rank-sum statistic, when the suspect's answers carried scores (version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_sum: Option<RankSumResult>,
    /// The log-gap-sum statistic, when the suspect's answers carried scores (version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_gap_sum: Option<LogGapSumResult>,
    /// The reference-gap-sum statistic, when the verifier supplied the protected model
    /// (version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_gap_sum: Option<LogGapSumResult>,
    /// The centred-gap-sum statistic, when the suspect's answers carried scores (version 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centred_gap_sum: Option<LogGapSumResult>,
    /// The linear-fingerprint test, when it ran (version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintResult>,
    /// Per-input evidence (what was queried and what came back).
    pub evidence: Vec<EvidenceItem>,
    /// Suspects screened against the ledger together ([`VerifyResult::for_family`]); absent
    /// for one. `p_value` and the verdict account for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<usize>,
    /// With a family: this suspect's `log10` p-value alone, before the correction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log10_p_value_single: Option<f64>,
}

impl EvidenceReport {
    /// A report from a verification result.
    pub fn from_result(suspect: &str, r: &VerifyResult) -> Self {
        EvidenceReport {
            version: 6,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            suspect: suspect.to_string(),
            model: r.model.clone(),
            ledger_commitment: r.ledger_commitment.clone(),
            queried: r.queried,
            matches: r.matches,
            chance: r.chance,
            p_value: r.p_value,
            log10_p_value: r.log10_p_value,
            alpha: r.alpha,
            verdict: r.verdict,
            statistic: Some(r.statistic),
            top1: Some(r.top1),
            top_among_wrong: r.top_among_wrong,
            rank_sum: r.rank_sum,
            log_gap_sum: r.log_gap_sum,
            reference_gap_sum: r.reference_gap_sum,
            centred_gap_sum: r.centred_gap_sum,
            fingerprint: r.fingerprint,
            evidence: r.evidence.clone(),
            family: (r.family > 1).then_some(r.family),
            log10_p_value_single: r.log10_p_value_single,
        }
    }

    fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reports serialise")
    }
}

/// A report with its signature, as stored in a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedReport {
    /// The signed content.
    pub report: EvidenceReport,
    /// The signer's ed25519 public key, hex (informational).
    pub public_key: String,
    /// ed25519 signature of the report's canonical JSON, hex.
    pub signature: String,
}

/// An ed25519 report signer whose seed is a [`SecretKey`] (redacted in `Debug`).
#[derive(Debug)]
pub struct ReportSigner {
    seed: SecretKey,
}

impl ReportSigner {
    /// A signer from a 32-byte seed.
    pub fn new(seed: SecretKey) -> Self {
        ReportSigner { seed }
    }

    /// Loads the seed from `path`, creating it if absent, and writes the public key (hex)
    /// beside it as `<path>.pub`.
    pub fn load_or_create(path: &Path) -> Result<Self, DefenseError> {
        let s = ReportSigner::new(SecretKey::load_or_create(path)?);
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = std::path::PathBuf::from(pub_path);
        if !pub_path.exists() {
            std::fs::write(&pub_path, s.public_key_hex())
                .map_err(|e| DefenseError::io(&pub_path, e))?;
        }
        Ok(s)
    }

    fn key(&self) -> SigningKey {
        SigningKey::from_bytes(self.seed.expose())
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key().verifying_key().to_bytes())
    }

    /// Signs a report.
    pub fn sign(&self, report: EvidenceReport) -> SignedReport {
        let sig = self.key().sign(&report.canonical_bytes());
        SignedReport {
            public_key: self.public_key_hex(),
            signature: hex::encode(sig.to_bytes()),
            report,
        }
    }
}

/// Parses a public key: 64 hex characters (whitespace ignored).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, DefenseError> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        DefenseError::Report("public key: expected 64 hexadecimal characters".into())
    })?;
    let arr: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
        DefenseError::Report(format!("public key: expected 32 bytes, got {}", v.len()))
    })?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| DefenseError::Report(format!("public key: invalid ed25519 key: {e}")))
}

/// Checks a signed report against `public_key`; returns the report when the signature is
/// valid.
pub fn check_report(
    signed: &SignedReport,
    public_key: &VerifyingKey,
) -> Result<EvidenceReport, DefenseError> {
    let bytes = hex::decode(&signed.signature)
        .map_err(|_| DefenseError::Report("signature is not hexadecimal".into()))?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| DefenseError::Report("signature must be 64 bytes".into()))?;
    let sig = Signature::from_bytes(&arr);
    public_key
        .verify(&signed.report.canonical_bytes(), &sig)
        .map_err(|_| {
            DefenseError::Report(
                "signature does not verify: the report was altered or signed by another key".into(),
            )
        })?;
    Ok(signed.report.clone())
}

/// What [`recheck`] recomputed from a report's evidence and found equal to its numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Recheck {
    /// The statistics recomputed, by name (`top1`, `log_gap_sum`, …).
    pub recomputed: Vec<&'static str>,
    /// The decision's rule, recomputed from them.
    pub decision: Statistic,
    /// Whether the decision took the fingerprint test's p-value as reported (it needs the
    /// suspect's answers to fresh keyed inputs, which no report holds).
    pub fingerprint_as_reported: bool,
}

/// Recomputes what a report's evidence determines — the `top1` and `top_among_wrong` counts
/// and their binomial tails, the rank sum, the log-, reference- and centred-gap sums and their
/// exact nulls, the decision by its rule ([`Statistic::parts`]), the family correction and the
/// verdict — and compares each with the report's value. A signature says who made a report;
/// this says its numbers follow from its evidence, so a reader need not trust the signer's
/// arithmetic. The fingerprint test's p-value enters the decision as reported. Any mismatch
/// is an error naming the number.
pub fn recheck(r: &EvidenceReport) -> Result<Recheck, DefenseError> {
    let bad = |what: String| DefenseError::Report(format!("the report's {what}"));
    let n = r.evidence.len();
    if r.queried != n {
        return Err(bad(format!(
            "queried count {} differs from its {n} evidence items",
            r.queried
        )));
    }
    let others = (1.0 / r.chance).round();
    if !(others >= 1.0 && (1.0 / others - r.chance).abs() < 1e-12) {
        return Err(bad(format!("chance {} is not 1/(c − 1)", r.chance)));
    }
    let c = others as usize + 1;
    for e in &r.evidence {
        let top_wrong_ok = e
            .matched_top_wrong
            .is_none_or(|m| m == (e.suspect_top_wrong == Some(e.watermark_label)));
        if e.matched != (e.suspect_label == e.watermark_label) || !top_wrong_ok {
            return Err(bad(format!("match flags of input {}", e.input_sha256)));
        }
    }
    let close = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    let mut recomputed = Vec::new();
    let mut check_count = |name: &'static str,
                           reported: Option<&StatisticResult>,
                           statistic: Statistic,
                           matches: usize|
     -> Result<Option<f64>, DefenseError> {
        let Some(rep) = reported else {
            return Ok(None);
        };
        let want = StatisticResult::new(statistic, matches, n, r.chance);
        if rep.matches != want.matches || !close(rep.log10_p_value, want.log10_p_value) {
            return Err(bad(format!(
                "{name}: reported {} matches, log10 p {}; the evidence gives {}, {}",
                rep.matches, rep.log10_p_value, want.matches, want.log10_p_value
            )));
        }
        recomputed.push(name);
        Ok(Some(want.log10_p_value))
    };
    let top1_matches = r.evidence.iter().filter(|e| e.matched).count();
    let top1 = check_count("top1", r.top1.as_ref(), Statistic::Top1, top1_matches)?
        .unwrap_or_else(|| binomial_upper_tail_ln(n, top1_matches, r.chance) / LN_10);
    let taw_matches = r
        .evidence
        .iter()
        .filter(|e| e.matched_top_wrong == Some(true))
        .count();
    let taw = check_count(
        "top_among_wrong",
        r.top_among_wrong.as_ref(),
        Statistic::TopAmongWrong,
        taw_matches,
    )?;
    let rank = match &r.rank_sum {
        None => None,
        Some(rep) => {
            let sum = r
                .evidence
                .iter()
                .map(|e| e.suspect_rank_wrong.map(|k| k.saturating_sub(1)))
                .sum::<Option<usize>>()
                .ok_or_else(|| bad("rank sum: an evidence item has no rank".into()))?;
            let want = RankSumResult::new(sum, n, c);
            if rep.rank_sum != sum || !close(rep.log10_p_value, want.log10_p_value) {
                return Err(bad(format!(
                    "rank sum: reported {} (log10 p {}); the evidence gives {sum} ({})",
                    rep.rank_sum, rep.log10_p_value, want.log10_p_value
                )));
            }
            recomputed.push("rank_sum");
            Some(want.log10_p_value)
        }
    };
    type Gaps = fn(&EvidenceItem) -> Option<&Vec<u32>>;
    let gap_sums: [(&'static str, Option<&LogGapSumResult>, Gaps); 3] = [
        ("log_gap_sum", r.log_gap_sum.as_ref(), |e| {
            e.suspect_log_gaps.as_ref()
        }),
        ("reference_gap_sum", r.reference_gap_sum.as_ref(), |e| {
            e.reference_log_gaps.as_ref()
        }),
        ("centred_gap_sum", r.centred_gap_sum.as_ref(), |e| {
            e.centred_log_gaps.as_ref()
        }),
    ];
    let mut gaps = [None; 3];
    for (slot, (name, rep, of)) in gaps.iter_mut().zip(gap_sums) {
        let Some(rep) = rep else { continue };
        let want = gap_sum_of(&r.evidence, of)
            .ok_or_else(|| bad(format!("{name}: an evidence item has no gaps")))?;
        if rep.log_gap_sum != want.log_gap_sum || !close(rep.log10_p_value, want.log10_p_value) {
            return Err(bad(format!(
                "{name}: reported {} (log10 p {}); the evidence gives {} ({})",
                rep.log_gap_sum, rep.log10_p_value, want.log_gap_sum, want.log10_p_value
            )));
        }
        recomputed.push(name);
        *slot = Some(want.log10_p_value);
    }
    let decision = r.statistic.unwrap_or(Statistic::Top1);
    let fingerprint = r.fingerprint.map(|f| f.log10_p_value);
    let single = decision
        .combine(|part| match part {
            Statistic::Top1 => Some(top1),
            Statistic::TopAmongWrong => taw,
            Statistic::RankSum => rank,
            Statistic::LogGapSum => gaps[0],
            Statistic::ReferenceGapSum => gaps[1],
            Statistic::CentredGapSum => gaps[2],
            Statistic::Fingerprint => fingerprint,
            _ => None,
        })
        .ok_or_else(|| {
            bad(format!(
                "decision {}: a statistic it combines is missing",
                decision.name()
            ))
        })?;
    let family = r.family.unwrap_or(1).max(1);
    let reported_single = r.log10_p_value_single.unwrap_or(r.log10_p_value);
    let want = if family > 1 {
        (single + (family as f64).log10()).min(0.0)
    } else {
        single
    };
    if !close(reported_single, single) || !close(r.log10_p_value, want) {
        return Err(bad(format!(
            "p-value: reported log10 {} ({} alone); the evidence and the rule {} give {want} \
             ({single} alone)",
            r.log10_p_value,
            reported_single,
            decision.name()
        )));
    }
    let found = 10f64.powf(want) < r.alpha;
    if found != (r.verdict == Verdict::WatermarkFound) {
        return Err(bad(format!(
            "verdict {:?} does not follow from p = 10^{want} at alpha {}",
            r.verdict, r.alpha
        )));
    }
    Ok(Recheck {
        recomputed,
        decision,
        fingerprint_as_reported: decision
            .parts()
            .iter()
            .any(|(p, _)| *p == Statistic::Fingerprint),
    })
}

/// Reads a signed report file.
pub fn read_signed_report(path: &Path) -> Result<SignedReport, DefenseError> {
    let text = std::fs::read_to_string(path).map_err(|e| DefenseError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DefenseError::Report(format!("{}: not a signed report: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EvidenceReport {
        EvidenceReport {
            version: 1,
            created_unix_ms: 1,
            suspect: "model/".into(),
            model: None,
            ledger_commitment: "ab".repeat(32),
            queried: 3,
            matches: 2,
            chance: 1.0 / 9.0,
            p_value: 0.031_550_068_587_105_62,
            log10_p_value: -1.501_004_870_412_3,
            alpha: 1e-4,
            verdict: Verdict::NotFound,
            statistic: None,
            top1: None,
            top_among_wrong: None,
            rank_sum: None,
            log_gap_sum: None,
            reference_gap_sum: None,
            centred_gap_sum: None,
            fingerprint: None,
            evidence: vec![EvidenceItem {
                input_sha256: "cd".repeat(32),
                watermark_label: 3,
                suspect_label: 3,
                matched: true,
                true_label: None,
                suspect_top_wrong: None,
                matched_top_wrong: None,
                suspect_rank_wrong: None,
                suspect_log_gaps: None,
                reference_log_gaps: None,
                centred_log_gaps: None,
            }],
            family: None,
            log10_p_value_single: None,
        }
    }

    /// A family-corrected report signs its family and single-suspect p-value; a report
    /// without them keeps its bytes (older reports still verify).
    #[test]
    fn the_family_correction_is_signed() {
        let s = ReportSigner::new(SecretKey::from_bytes([8; 32]));
        let pk = parse_public_key(&s.public_key_hex()).unwrap();
        assert!(!serde_json::to_string(&report()).unwrap().contains("family"));
        let mut r = report();
        r.family = Some(20);
        r.log10_p_value_single = Some(-2.8);
        let signed = s.sign(r.clone());
        let back: SignedReport =
            serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), r);
        let mut t = back;
        t.report.family = Some(1);
        assert!(check_report(&t, &pk).is_err(), "the family is signed");
    }

    fn report_v2() -> EvidenceReport {
        let mut r = report();
        r.version = 2;
        r.statistic = Some(Statistic::TopAmongWrong);
        r.top1 = Some(StatisticResult {
            statistic: Statistic::Top1,
            matches: 1,
            p_value: 0.297_668_038_408_779_2,
            log10_p_value: -0.526_270_654_959_657_2,
        });
        r.top_among_wrong = Some(StatisticResult {
            statistic: Statistic::TopAmongWrong,
            matches: 2,
            p_value: 0.031_550_068_587_105_62,
            log10_p_value: -1.501_004_870_412_3,
        });
        r.evidence[0].true_label = Some(1);
        r.evidence[0].suspect_top_wrong = Some(3);
        r.evidence[0].matched_top_wrong = Some(true);
        r
    }

    /// Version 1 reports (no statistic fields) keep their canonical bytes, so their
    /// signatures still verify; version 2 and 3 fields are signed too.
    #[test]
    fn version_1_reports_still_verify_and_newer_fields_are_signed() {
        let s = ReportSigner::new(SecretKey::from_bytes([8; 32]));
        let pk = parse_public_key(&s.public_key_hex()).unwrap();
        let v1 = serde_json::to_string(&s.sign(report())).unwrap();
        assert!(
            !v1.contains("statistic") && !v1.contains("true_label"),
            "{v1}"
        );
        let back: SignedReport = serde_json::from_str(&v1).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), report());

        let signed = s.sign(report_v2());
        let text = serde_json::to_string_pretty(&signed).unwrap();
        assert!(
            text.contains("\"statistic\": \"top_among_wrong\""),
            "{text}"
        );
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), report_v2());
        let mut t = back.clone();
        t.report.statistic = Some(Statistic::Top1);
        assert!(check_report(&t, &pk).is_err());
        let mut t = back.clone();
        t.report.top_among_wrong.as_mut().unwrap().matches = 3;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back;
        t.report.evidence[0].matched_top_wrong = Some(false);
        assert!(check_report(&t, &pk).is_err());

        // Version 3: the rank-sum statistic and the evidence's ranks are signed too, and a
        // version 2 report has neither in its JSON.
        assert!(!text.contains("rank_sum") && !text.contains("suspect_rank_wrong"));
        let mut v3 = report_v2();
        v3.version = 3;
        v3.statistic = Some(Statistic::TopAmongWrongOrRankSum);
        v3.rank_sum = Some(RankSumResult {
            rank_sum: 0,
            expected: 4.0,
            p_value: 1.0 / 9.0,
            log10_p_value: -(9f64.log10()),
        });
        v3.evidence[0].suspect_rank_wrong = Some(1);
        let text = serde_json::to_string_pretty(&s.sign(v3.clone())).unwrap();
        assert!(
            text.contains("\"statistic\": \"top_among_wrong_or_rank_sum\""),
            "{text}"
        );
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), v3);
        let mut t = back.clone();
        t.report.rank_sum.as_mut().unwrap().rank_sum = 1;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back;
        t.report.evidence[0].suspect_rank_wrong = Some(2);
        assert!(check_report(&t, &pk).is_err());

        // Version 4: the log-gap sum and the evidence's gaps are signed too, and a version 3
        // report has neither in its JSON.
        assert!(!text.contains("log_gap") && !text.contains("suspect_log_gaps"));
        let mut v4 = v3;
        v4.version = 4;
        v4.log_gap_sum = Some(LogGapSumResult {
            log_gap_sum: 0,
            expected: 30.0,
            p_value: 1.0 / 9.0,
            log10_p_value: -(9f64.log10()),
        });
        v4.evidence[0].suspect_log_gaps = Some(vec![7, 64, 0, 12, 64, 64, 64, 64, 64]);
        v4.reference_gap_sum = v4.log_gap_sum;
        v4.evidence[0].reference_log_gaps = Some(vec![0, 9, 3, 12, 14, 20, 64, 64, 64]);
        let text = serde_json::to_string_pretty(&s.sign(v4.clone())).unwrap();
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), v4);
        let mut t = back.clone();
        t.report.log_gap_sum.as_mut().unwrap().log_gap_sum = 1;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back.clone();
        t.report.evidence[0].suspect_log_gaps.as_mut().unwrap()[2] = 1;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back;
        t.report.evidence[0].reference_log_gaps.as_mut().unwrap()[0] = 1;
        assert!(check_report(&t, &pk).is_err());

        // Version 5: the model is signed too, and a version 4 report has none in its JSON.
        assert!(!text.contains("\"model\""), "{text}");
        let mut v5 = v4;
        v5.version = 5;
        v5.model = Some("fashion-cnn".into());
        let text = serde_json::to_string_pretty(&s.sign(v5.clone())).unwrap();
        assert!(text.contains("\"model\": \"fashion-cnn\""), "{text}");
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), v5);
        let mut t = back;
        t.report.model = Some("other".into());
        assert!(check_report(&t, &pk).is_err());

        // Version 6: the centred gap sum and the evidence's centred gaps are signed too, and
        // a version 5 report has neither in its JSON.
        assert!(!text.contains("centred"), "{text}");
        let mut v6 = v5;
        v6.version = 6;
        v6.centred_gap_sum = v6.log_gap_sum;
        v6.evidence[0].centred_log_gaps = Some(vec![3, 0, 64, 12, 64, 8, 64, 64, 64]);
        let text = serde_json::to_string_pretty(&s.sign(v6.clone())).unwrap();
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), v6);
        let mut t = back.clone();
        t.report.centred_gap_sum.as_mut().unwrap().log_gap_sum = 2;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back;
        t.report.evidence[0].centred_log_gaps.as_mut().unwrap()[1] = 1;
        assert!(check_report(&t, &pk).is_err());
    }

    /// A report read back from its file verifies whatever its floats are: serde_json parses
    /// them bit for bit (its `float_roundtrip` feature; without it, one of these values in a
    /// few parsed one ulp off and the signature of an untouched report failed).
    #[test]
    fn signatures_survive_the_file_round_trip_for_any_float() {
        let s = ReportSigner::new(SecretKey::from_bytes([9; 32]));
        let pk = parse_public_key(&s.public_key_hex()).unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..500 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let mut r = report_v2();
            r.log10_p_value = -300.0 * u;
            r.p_value = 10f64.powf(r.log10_p_value);
            r.chance = u / 7.0;
            r.alpha = u.sqrt() / 3.0;
            let text = serde_json::to_string_pretty(&s.sign(r.clone())).unwrap();
            let back: SignedReport = serde_json::from_str(&text).unwrap();
            assert_eq!(check_report(&back, &pk).unwrap(), r, "{text}");
        }
    }

    #[test]
    fn sign_round_trip_through_json_and_detect_tampering() {
        let s = ReportSigner::new(SecretKey::from_bytes([8; 32]));
        let pk = parse_public_key(&s.public_key_hex()).unwrap();
        let signed = s.sign(report());
        let text = serde_json::to_string_pretty(&signed).unwrap();
        let back: SignedReport = serde_json::from_str(&text).unwrap();
        assert_eq!(check_report(&back, &pk).unwrap(), report());

        let mut t = back.clone();
        t.report.matches = 3;
        assert!(check_report(&t, &pk)
            .unwrap_err()
            .to_string()
            .contains("altered"));
        let mut t = back.clone();
        t.report.p_value = 1e-12;
        assert!(check_report(&t, &pk).is_err());
        let mut t = back.clone();
        t.report.evidence[0].suspect_label = 4;
        assert!(check_report(&t, &pk).is_err());
        // Another signer's key does not verify, even if embedded in the file.
        let other = ReportSigner::new(SecretKey::from_bytes([9; 32]));
        let mut t = other.sign(report());
        t.public_key = s.public_key_hex();
        assert!(check_report(&t, &pk).is_err());
    }

    #[test]
    fn bad_keys_and_signatures_are_reported() {
        assert!(parse_public_key("zz")
            .unwrap_err()
            .to_string()
            .contains("hexadecimal"));
        assert!(parse_public_key("abcd")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        let s = ReportSigner::new(SecretKey::from_bytes([8; 32]));
        let pk = parse_public_key(&s.public_key_hex()).unwrap();
        let mut t = s.sign(report());
        t.signature = "00".into();
        assert!(check_report(&t, &pk)
            .unwrap_err()
            .to_string()
            .contains("64 bytes"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, "{}").unwrap();
        let e = read_signed_report(&p).unwrap_err().to_string();
        assert!(
            e.contains("r.json") && e.contains("not a signed report"),
            "{e}"
        );
    }

    #[test]
    fn signer_key_file_and_public_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("signing.key");
        let s = ReportSigner::load_or_create(&p).unwrap();
        let pub_text = std::fs::read_to_string(dir.path().join("signing.key.pub")).unwrap();
        assert_eq!(pub_text, s.public_key_hex());
        assert_eq!(
            ReportSigner::load_or_create(&p).unwrap().public_key_hex(),
            pub_text
        );
        assert!(!format!("{s:?}").contains(&hex::encode([8u8; 4])));
    }
}
