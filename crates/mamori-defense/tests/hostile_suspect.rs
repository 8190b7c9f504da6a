//! The suspect in `mamori watermark verify` is the thief's own server: its answers are hostile
//! input. Whatever it returns — NaN, ±∞, negative or enormous scores, rows that do not sum to
//! one, labels at the edges, under any disclosure — verification returns an error or a result
//! whose p-values are numbers in [0, 1] and whose verdict follows them; it never panics. A
//! suspect that answers garbage is not convicted (its answers carry no watermark).

use mamori_core::{Disclosure, Oracle, OracleAnswer, OracleError, Tensor};
use mamori_defense::verify::{verify_with, Verdict};
use mamori_defense::LedgerRecord;
use proptest::prelude::*;

const CLASSES: usize = 4;
const DIM: usize = 6;

/// Answers from a fixed pool of hostile values, cycling, with the disclosure it claims.
struct Hostile {
    values: Vec<f32>,
    next: usize,
    disclosure: Disclosure,
    used: u64,
}

impl Oracle for Hostile {
    fn input_shape(&self) -> Vec<usize> {
        vec![DIM]
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let n = x.shape()[0];
        self.used += n as u64;
        let mut data = Vec::with_capacity(n * CLASSES);
        for _ in 0..n * CLASSES {
            data.push(self.values[self.next % self.values.len()]);
            self.next += 1;
        }
        let labels = (0..n).map(|i| (self.next + i) % CLASSES).collect();
        Ok(OracleAnswer {
            probs: Tensor::new(vec![n, CLASSES], data).unwrap(),
            labels,
            disclosure: self.disclosure,
        })
    }
    fn queries_used(&self) -> u64 {
        self.used
    }
    fn budget(&self) -> Option<u64> {
        None
    }
}

fn ledger(n: usize) -> Vec<LedgerRecord> {
    (0..n)
        .map(|i| LedgerRecord {
            input_sha256: format!("{i:064x}"),
            input: (0..DIM)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 / 11.0)
                .collect(),
            true_label: i % CLASSES,
            given_label: (i + 1) % CLASSES,
            num_classes: CLASSES,
            unix_ms: 1_700_000_000_000 + i as u64,
            model: None,
        })
        .collect()
}

fn hostile_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-1.0f32),
        Just(0.0f32),
        Just(-0.0f32),
        Just(1.0f32),
        Just(f32::MAX),
        Just(f32::MIN_POSITIVE),
        Just(1e-45f32),
        -1e6f32..1e6f32,
        0.0f32..1.0f32,
    ]
}

fn disclosure() -> impl Strategy<Value = Disclosure> {
    prop_oneof![
        Just(Disclosure::Probabilities),
        Just(Disclosure::Label),
        (1usize..=CLASSES).prop_map(Disclosure::TopK),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn hostile_answers_give_numbers_or_errors_never_panics(
        values in prop::collection::vec(hostile_value(), 1..40),
        disclosure in disclosure(),
        records in 1usize..60,
    ) {
        let mut suspect = Hostile { values, next: 0, disclosure, used: 0 };
        let recs = ledger(records);
        if let Ok(r) = verify_with(&mut suspect, &recs, 1e-9, 16, None, None) {
            prop_assert!(
                (0.0..=1.0).contains(&r.p_value),
                "p-value {} ({:?})",
                r.p_value,
                r
            );
            prop_assert!(!r.log10_p_value.is_nan(), "{r:?}");
            prop_assert_eq!(r.verdict == Verdict::WatermarkFound, r.p_value < 1e-9, "{:?}", r);
        }
    }
}

/// Answers that are all NaN or all infinite carry no watermark: not convicted.
#[test]
fn a_suspect_answering_non_numbers_is_not_convicted() {
    for (v, d) in [
        (f32::NAN, Disclosure::Probabilities),
        (f32::INFINITY, Disclosure::Probabilities),
        (f32::NAN, Disclosure::TopK(2)),
        (f32::NEG_INFINITY, Disclosure::Label),
    ] {
        let mut suspect = Hostile {
            values: vec![v],
            next: 0,
            disclosure: d,
            used: 0,
        };
        // Verification completes (the answers are well-formed tensors) and finds nothing.
        let r = verify_with(&mut suspect, &ledger(50), 1e-9, 16, None, None).unwrap();
        assert_ne!(r.verdict, Verdict::WatermarkFound, "{v} {d:?}: {r:?}");
        assert!(r.p_value > 0.01, "{v} {d:?}: {r:?}");
    }
}
