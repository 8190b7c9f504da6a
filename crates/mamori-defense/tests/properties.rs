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

/// A small native network with input length 6 and 4 classes (for MAD's native surrogate).
fn small_network() -> std::sync::Arc<mamori_ml::Network> {
    std::sync::Arc::new(mamori_ml::Network::new(
        &mamori_ml::Arch::Mlp { hidden: vec![5] },
        &[6],
        4,
        3,
    ))
}

/// A random 4-class probability vector.
fn probs4() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![Just(0.0f32), 0.0f32..1e-6, 0.0f32..1.0, 0.0f32..100.0],
        4,
    )
    .prop_filter("needs positive mass", |w| w.iter().sum::<f32>() > 1e-3)
    .prop_map(|w| {
        let s: f32 = w.iter().sum();
        w.into_iter().map(|x| x / s).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The paths the first property test cannot reach: MAD with the native surrogate (the
    /// network's penultimate features), adaptive misinformation with the victim's logits, and
    /// top-k without renormalising (a sub-distribution: the raw top-k wire format).
    #[test]
    fn context_dependent_paths_give_distributions_and_keep_promises(
        y in probs4(),
        input in prop::collection::vec(0.0f32..1.0, 6),
        logits in prop::collection::vec(-8.0f32..8.0, 4),
    ) {
        use PostprocessorSpec::*;
        let ctx = BuildContext { key: Some(SecretKey::from_bytes([4; 32])), network: Some(small_network()) };
        let pc = PostContext { client: "c", input: &input, input_shape: &[6], logits: Some(&logits), model: None };
        let mut sorted = y.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let clear_top = sorted[0] - sorted[1] > 1e-3;
        let top = argmax(&y);
        for spec in [
            PredictionPoisoning { epsilon: 0.8, keep_top1: false },
            PredictionPoisoning { epsilon: 1.5, keep_top1: true },
            AdaptiveMisinformation { tau: 0.9, nu: 20.0 },
        ] {
            let p = build(&spec, &ctx).unwrap();
            let mut v = y.clone();
            p.apply(&pc, &mut v);
            prop_assert!(is_distribution(&v, 1e-4), "{} gave {:?} for {:?}", p.name(), v, y);
            let mut w = y.clone();
            p.apply(&pc, &mut w);
            prop_assert_eq!(&v, &w, "{} is not deterministic", p.name());
            if p.keeps_top1() && clear_top {
                prop_assert_eq!(argmax(&v), top, "{} moved the top-1 of {:?} to {:?}", p.name(), y, v);
            }
        }
        let raw = build(&TopK { k: 2, renormalise: false }, &ctx).unwrap();
        let mut v = y.clone();
        raw.apply(&pc, &mut v);
        let s: f32 = v.iter().sum();
        prop_assert!(v.iter().all(|x| *x >= 0.0) && s <= 1.0 + 1e-5, "{:?}", v);
        prop_assert!(v.iter().filter(|x| **x > 0.0).count() <= 2, "{:?}", v);
        if clear_top {
            prop_assert_eq!(argmax(&v), top);
        }
    }

    /// Keyed noise is a function of (key, input): a separately built instance with the same
    /// key answers identically (so repeating a query, even across restarts, returns the same
    /// answer and averaging repeats cannot cancel the noise).
    #[test]
    fn keyed_noise_is_a_function_of_key_and_input(
        y in probs(),
        input in prop::collection::vec(-1.0f32..1.0, 1..8),
    ) {
        for spec in keyed_specs() {
            let a = build(&spec, &BuildContext { key: Some(SecretKey::from_bytes([7; 32])), network: None }).unwrap();
            let b = build(&spec, &BuildContext { key: Some(SecretKey::from_bytes([7; 32])), network: None }).unwrap();
            let pc = PostContext { client: "one", input: &input, input_shape: &[], logits: None, model: None };
            let pc_other_client = PostContext { client: "two", ..pc };
            let (mut v, mut w) = (y.clone(), y.clone());
            a.apply(&pc, &mut v);
            b.apply(&pc_other_client, &mut w);
            prop_assert_eq!(&v, &w, "{} differs between instances with the same key", a.name());
        }
    }
}

fn keyed_specs() -> Vec<PostprocessorSpec> {
    use PostprocessorSpec::*;
    vec![GaussianNoise { sigma: 0.1 }, LaplaceNoise { scale: 0.05 }]
}

/// The noise depends on the key and on the input: over many random inputs, another key or
/// another input almost always changes the answer (not always: the projection back to the
/// simplex can map two noisy vectors to the same vertex).
#[test]
fn keyed_noise_changes_with_the_key_and_the_input() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for spec in keyed_specs() {
        let a = build(
            &spec,
            &BuildContext {
                key: Some(SecretKey::from_bytes([7; 32])),
                network: None,
            },
        )
        .unwrap();
        let b = build(
            &spec,
            &BuildContext {
                key: Some(SecretKey::from_bytes([8; 32])),
                network: None,
            },
        )
        .unwrap();
        let (mut other_key, mut other_input) = (0, 0);
        let n = 200;
        for _ in 0..n {
            let input: Vec<f32> = (0..5).map(|_| rng.gen_range(0.0..1.0)).collect();
            let mut input2 = input.clone();
            input2[0] += 1e-3;
            let y = [0.5f32, 0.3, 0.15, 0.05];
            let ctx = |x: &[f32]| -> Vec<f32> {
                let mut v = y.to_vec();
                a.apply(
                    &PostContext {
                        client: "c",
                        input: x,
                        input_shape: &[],
                        logits: None,
                        model: None,
                    },
                    &mut v,
                );
                v
            };
            let base = ctx(&input);
            let mut kb = y.to_vec();
            b.apply(
                &PostContext {
                    client: "c",
                    input: &input,
                    input_shape: &[],
                    logits: None,
                    model: None,
                },
                &mut kb,
            );
            other_key += usize::from(kb != base);
            other_input += usize::from(ctx(&input2) != base);
        }
        assert!(other_key >= n * 9 / 10, "{}: {other_key}/{n}", a.name());
        assert!(other_input >= n * 9 / 10, "{}: {other_input}/{n}", a.name());
    }
}
