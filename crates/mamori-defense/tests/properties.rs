//! Property tests: every postprocessor returns a valid distribution for random answers and
//! inputs, and those that promise to keep the top-1 label keep it.

use mamori_core::PostContext;
use mamori_defense::post::{build, BuildContext, PostprocessorSpec};
use mamori_defense::simplex::{argmax, is_distribution};
use mamori_defense::SecretKey;
use proptest::prelude::*;

fn specs() -> Vec<PostprocessorSpec> {
    use PostprocessorSpec::*;
    vec![
        LabelOnly,
        TopK {
            k: 1,
            renormalise: true,
        },
        TopK {
            k: 3,
            renormalise: true,
        },
        Rounding { decimals: 0 },
        Rounding { decimals: 1 },
        Rounding { decimals: 2 },
        Rounding { decimals: 4 },
        GaussianNoise { sigma: 0.1 },
        LaplaceNoise { scale: 0.05 },
        ReverseSigmoid {
            beta: 1.0,
            gamma: 0.2,
        },
        ReverseSigmoid {
            beta: 0.6,
            gamma: 1.5,
        },
        ReverseSigmoid {
            beta: 3.0,
            gamma: 0.5,
        },
        AdaptiveMisinformation { tau: 0.6, nu: 50.0 },
        PredictionPoisoning {
            epsilon: 0.5,
            keep_top1: false,
        },
        PredictionPoisoning {
            epsilon: 1.5,
            keep_top1: true,
        },
        Chain {
            steps: vec![
                ReverseSigmoid {
                    beta: 0.5,
                    gamma: 1.0,
                },
                Rounding { decimals: 2 },
            ],
        },
    ]
}

/// A random probability vector: random non-negative weights (some exactly 0, some tiny)
/// normalised.
fn probs() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![Just(0.0f32), 0.0f32..1e-6, 0.0f32..1.0, 0.0f32..100.0],
        2..12,
    )
    .prop_filter("needs positive mass", |w| w.iter().sum::<f32>() > 1e-3)
    .prop_map(|w| {
        let s: f32 = w.iter().sum();
        w.into_iter().map(|x| x / s).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_output_is_a_distribution(
        y in probs(),
        input in prop::collection::vec(-1.0f32..1.0, 1..8),
    ) {
        let ctx = BuildContext { key: Some(SecretKey::from_bytes([9; 32])), network: None };
        for spec in specs() {
            let p = build(&spec, &ctx).unwrap();
            let mut v = y.clone();
            let pc = PostContext { client: "c", input: &input, input_shape: &[], logits: None, model: None };
            p.apply(&pc, &mut v);
            prop_assert!(is_distribution(&v, 1e-4), "{} gave {:?} for {:?}", p.name(), v, y);
            prop_assert_eq!(v.len(), y.len());
            // Deterministic per input.
            let mut w = y.clone();
            p.apply(&pc, &mut w);
            prop_assert_eq!(&v, &w, "{} is not deterministic", p.name());
        }
    }

    #[test]
    fn top1_is_kept_when_promised(
        y in probs(),
        input in prop::collection::vec(-1.0f32..1.0, 1..8),
    ) {
        let mut sorted = y.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        prop_assume!(sorted[0] - sorted[1] > 1e-3);
        let ctx = BuildContext { key: Some(SecretKey::from_bytes([9; 32])), network: None };
        let top = argmax(&y);
        for spec in specs() {
            let p = build(&spec, &ctx).unwrap();
            if !p.keeps_top1() {
                continue;
            }
            let mut v = y.clone();
            let pc = PostContext { client: "c", input: &input, input_shape: &[], logits: None, model: None };
            p.apply(&pc, &mut v);
            let ok = v[top] > v.iter().enumerate().filter(|(i, _)| *i != top).map(|(_, x)| *x).fold(f32::MIN, f32::max);
            prop_assert!(ok, "{} moved the top-1 of {:?} to {:?}", p.name(), y, v);
        }
    }
}

#[test]
fn the_promises_are_as_documented() {
    let ctx = BuildContext {
        key: Some(SecretKey::from_bytes([9; 32])),
        network: None,
    };
    let keeps: Vec<(String, bool)> = specs()
        .iter()
        .map(|s| {
            let p = build(s, &ctx).unwrap();
            (p.name(), p.keeps_top1())
        })
        .collect();
    let expect = [
        true, true, true, true, true, true, true, false, false, false, true, false, false, false,
        true, true,
    ];
    for ((name, k), e) in keeps.iter().zip(expect) {
        assert_eq!(*k, e, "{name}");
    }
}
