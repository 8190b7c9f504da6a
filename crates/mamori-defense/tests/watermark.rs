//! DAWN end to end with stand-in models (no training): a thief that memorised the watermarked
//! answers is caught at p < 1e-9, independent models are not, and signed reports detect
//! tampering.

use mamori_core::{Model, ModelCard, ModelError, Tensor, Watermark};
use mamori_defense::report::{
    check_report, parse_public_key, recheck, EvidenceReport, ReportSigner,
};
use mamori_defense::verify::{verify_model, Statistic, Verdict};
use mamori_defense::{Dawn, LedgerRecord, SecretKey};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const C: usize = 10;
const D: usize = 16;

fn card() -> ModelCard {
    ModelCard::classifier("stand-in", "softmax", &[D], C)
}

/// A fixed random linear classifier (the "victim").
struct Linear {
    card: ModelCard,
    w: Vec<f32>,
}

impl Linear {
    fn new(seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Linear {
            card: card(),
            w: (0..C * D).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        }
    }
}

impl Model for Linear {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut out = Vec::new();
        for r in x.rows() {
            for k in 0..C {
                out.push(
                    self.w[k * D..(k + 1) * D]
                        .iter()
                        .zip(r)
                        .map(|(a, b)| a * b)
                        .sum(),
                );
            }
        }
        Ok(Tensor::new(vec![x.batch_size(), C], out)?)
    }
}

/// The victim, except on memorised inputs where it answers the memorised label (a thief that
/// fitted the watermarked answers it received).
struct Memoriser {
    base: Linear,
    memory: HashMap<String, usize>,
}

impl Model for Memoriser {
    fn card(&self) -> &ModelCard {
        &self.base.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut l = self.base.logits(x)?;
        for i in 0..x.batch_size() {
            if let Some(&k) = self.memory.get(&mamori_core::hash::sha256_f32(x.row(i))) {
                let row = l.row_mut(i);
                row.iter_mut().for_each(|v| *v = 0.0);
                row[k] = 10.0;
            }
        }
        Ok(l)
    }
}

fn serve_watermarked(dawn: &Dawn, victim: &Linear, n: usize, seed: u64) -> Vec<(Vec<f32>, usize)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut answers = Vec::new();
    for _ in 0..n {
        let x: Vec<f32> = (0..D).map(|_| rng.gen::<f32>()).collect();
        let mut p = victim
            .predict(&Tensor::new(vec![1, D], x.clone()).unwrap())
            .unwrap()
            .into_data();
        dawn.apply(&x, &mut p);
        answers.push((x, mamori_defense::simplex::argmax(&p)));
    }
    answers
}

#[test]
fn memorising_thief_is_caught_independent_models_are_not() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed key: the checks on independent models below are statistical, and with a fresh
    // random key each run they would fail in a few per cent of runs by design.
    let paths = mamori_defense::dawn::DawnPaths::in_home(dir.path());
    std::fs::create_dir_all(paths.key.parent().unwrap()).unwrap();
    SecretKey::from_bytes([0x5a; 32])
        .save_new(&paths.key)
        .unwrap();
    let dawn = Dawn::open_home(dir.path(), 0.01).unwrap();
    let victim = Linear::new(1);
    let answers = serve_watermarked(&dawn, &victim, 5000, 2);
    let ledger: Vec<LedgerRecord> = dawn.ledger_records();
    assert!(ledger.len() > 25 && ledger.len() < 80, "{}", ledger.len());

    // A thief that learnt 70% of the answers it got.
    let memory = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 < 7)
        .map(|(_, (x, l))| (mamori_core::hash::sha256_f32(x), *l))
        .collect();
    let thief = Memoriser {
        base: Linear::new(1),
        memory,
    };
    let r = verify_model(&thief, &ledger, 1e-4).unwrap();
    assert_eq!(r.queried, ledger.len());
    assert!(
        r.p_value < 1e-9,
        "p = {}, {}/{}",
        r.p_value,
        r.matches,
        r.queried
    );
    assert_eq!(r.verdict, Verdict::WatermarkFound);

    assert_eq!(r.statistic, Statistic::LogGapSumOrCentredGapSum);
    assert!(r.top1.p_value < 1e-9 && r.top_among_wrong.unwrap().matches >= r.top1.matches);

    // Its evidence report's numbers follow from its evidence — also for a family — and a
    // report whose p-value, verdict or evidence was changed (even if signed again by a
    // dishonest signer) does not.
    let report = EvidenceReport::from_result("thief", &r);
    let again = recheck(&report).unwrap();
    assert_eq!(again.decision, Statistic::LogGapSumOrCentredGapSum);
    for name in [
        "top1",
        "top_among_wrong",
        "rank_sum",
        "log_gap_sum",
        "centred_gap_sum",
    ] {
        assert!(again.recomputed.contains(&name), "{name}: {again:?}");
    }
    assert!(!again.fingerprint_as_reported);
    recheck(&EvidenceReport::from_result(
        "thief",
        &r.clone().for_family(20),
    ))
    .unwrap();
    let mut t = report.clone();
    t.log10_p_value -= 3.0;
    assert!(recheck(&t).unwrap_err().to_string().contains("p-value"));
    let mut t = report.clone();
    t.verdict = Verdict::NotFound;
    assert!(recheck(&t).unwrap_err().to_string().contains("verdict"));
    let mut t = report.clone();
    let (w, y) = (
        t.evidence[0].watermark_label,
        t.evidence[0].true_label.unwrap(),
    );
    let g = t.evidence[0].centred_log_gaps.as_mut().unwrap();
    g[if w < y { w } else { w - 1 }] += 5;
    assert!(recheck(&t)
        .unwrap_err()
        .to_string()
        .contains("centred_gap_sum"));
    let mut t = report.clone();
    t.evidence[0].matched = !t.evidence[0].matched;
    assert!(recheck(&t).unwrap_err().to_string().contains("match flags"));
    let mut t = report;
    t.evidence.pop();
    assert!(recheck(&t).unwrap_err().to_string().contains("queried"));

    // The victim itself never matches top-1 (watermark labels are never its label); its
    // second choices are independent of the key, so it is not accused either.
    let r = verify_model(&victim, &ledger, 1e-4).unwrap();
    assert_eq!(r.top1.matches, 0);
    assert_eq!(r.top1.p_value, 1.0);
    assert!(r.p_value > 0.01, "victim: p = {}", r.p_value);
    assert_eq!(r.verdict, Verdict::NotFound);
    // Twenty independent models: none is accused, and at most one falls below 1%. The
    // decision's p-value is exact under independence (uniform), so 1 of 20 below 0.01 happens
    // by chance (18% of keys); 2 or more would be 1.6%.
    let mut below = 0;
    for seed in 10..30 {
        let r = verify_model(&Linear::new(seed), &ledger, 1e-4).unwrap();
        below += usize::from(r.p_value <= 0.01);
        assert!(
            r.top1.p_value > 0.01,
            "seed {seed}: top1 p = {}",
            r.top1.p_value
        );
        assert_eq!(
            r.verdict,
            Verdict::NotFound,
            "seed {seed}: p = {}",
            r.p_value
        );
    }
    assert!(
        below <= 1,
        "{below} of 20 independent models below p = 0.01"
    );

    // A signed report of the thief's verification; tampering is detected.
    let r = verify_model(&thief, &ledger, 1e-4).unwrap();
    let signer = ReportSigner::load_or_create(&dir.path().join("signing.key")).unwrap();
    let signed = signer.sign(EvidenceReport::from_result("thief", &r));
    let pk = parse_public_key(&signer.public_key_hex()).unwrap();
    assert!(check_report(&signed, &pk).is_ok());
    let mut forged = signed.clone();
    forged.report.ledger_commitment = "00".repeat(32);
    assert!(check_report(&forged, &pk).is_err());
}

#[test]
fn verification_input_errors_are_clear() {
    let victim = Linear::new(1);
    let e = verify_model(&victim, &[], 1e-4).unwrap_err().to_string();
    assert!(e.contains("no records"), "{e}");
    let rec = LedgerRecord {
        input_sha256: "x".into(),
        input: vec![0.0; D + 1],
        true_label: 0,
        given_label: 1,
        num_classes: C,
        unix_ms: 0,
        model: None,
    };
    let e = verify_model(&victim, std::slice::from_ref(&rec), 1e-4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("17 values") && e.contains("16"), "{e}");
    let mut r3 = rec.clone();
    r3.num_classes = 3;
    r3.input = vec![0.0; D];
    let e = verify_model(&victim, &[r3], 1e-4).unwrap_err().to_string();
    assert!(e.contains("3 classes") || e.contains("the ledger 3"), "{e}");
    let e = verify_model(&victim, &[rec], 2.0).unwrap_err().to_string();
    assert!(e.contains("alpha"), "{e}");
    let _ = SecretKey::generate();
}
