//! Output postprocessors: one file per defense, all registered in [`build`].
//!
//! A postprocessor is named by a [`PostprocessorSpec`], which deserialises from TOML/JSON as a
//! table tagged by `kind`, e.g. `{ kind = "top_k", k = 3 }` or
//! `{ kind = "reverse_sigmoid", beta = 0.7, gamma = 1.2 }`, so gateway tiers and the escalation
//! policy can name them in configuration. Every postprocessor returns a valid distribution
//! (non-negative, summing to 1), except `top_k` with `renormalise = false`, which returns the
//! raw top-k probabilities with zeros elsewhere (the [`mamori_core::Disclosure::TopK`] wire
//! format).

use crate::error::DefenseError;
use crate::key::SecretKey;
use mamori_core::{Model, PostContext, Postprocessor, Tensor};
use mamori_ml::Network;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

mod adaptive_misinformation;
mod gaussian_noise;
mod label_only;
mod laplace_noise;
mod prediction_poisoning;
mod reverse_sigmoid;
mod rounding;
mod top_k;

pub use adaptive_misinformation::AdaptiveMisinformation;
pub use gaussian_noise::GaussianNoise;
pub use label_only::LabelOnly;
pub use laplace_noise::LaplaceNoise;
pub use prediction_poisoning::{mad_perturb, PredictionPoisoning};
pub use reverse_sigmoid::ReverseSigmoid;
pub use rounding::Rounding;
pub use top_k::TopK;

fn yes() -> bool {
    true
}

/// A serialisable description of one postprocessor (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostprocessorSpec {
    /// Answer only the predicted label, as a one-hot vector.
    LabelOnly,
    /// Keep the `k` largest probabilities, zero the rest.
    TopK {
        /// How many classes to keep (≥ 1).
        k: usize,
        /// Rescale the kept probabilities to sum to 1 (default `true`).
        #[serde(default = "yes")]
        renormalise: bool,
    },
    /// Round every probability to `decimals` decimal places, keeping a distribution.
    Rounding {
        /// Decimal places (0..=6).
        decimals: u32,
    },
    /// Keyed, deterministic Gaussian noise projected back to the simplex (needs the key).
    GaussianNoise {
        /// Standard deviation.
        sigma: f32,
    },
    /// Keyed, deterministic Laplace noise projected back to the simplex (needs the key).
    LaplaceNoise {
        /// Scale `b` (standard deviation `√2·b`).
        scale: f32,
    },
    /// Reverse sigmoid (Lee et al. 2019): `normalise(y − β(σ(γ·logit y) − ½))`.
    ReverseSigmoid {
        /// Strength `β > 0`.
        beta: f32,
        /// Slope `γ > 0` (`γ ≥ 1` and `βγ < 1` keep the class order).
        gamma: f32,
    },
    /// Adaptive misinformation (Kariyappa & Qureshi 2020).
    AdaptiveMisinformation {
        /// Threshold on the maximum probability below which a query counts as OOD.
        tau: f32,
        /// Sharpness of the sigmoid switch.
        nu: f32,
    },
    /// Prediction poisoning / MAD (Orekondy et al. 2020); uses the native network when the
    /// build context has one, else the uniform-surrogate approximation; needs the key.
    PredictionPoisoning {
        /// L1 budget `‖ỹ − y‖₁ ≤ ε`.
        epsilon: f32,
        /// Keep the predicted label (MAD-argmax); default `false`.
        #[serde(default)]
        keep_top1: bool,
    },
    /// Several postprocessors applied in order.
    Chain {
        /// The steps, first applied first.
        steps: Vec<PostprocessorSpec>,
    },
}

impl PostprocessorSpec {
    /// The `kind` tag of this spec.
    pub fn kind(&self) -> &'static str {
        match self {
            PostprocessorSpec::LabelOnly => "label_only",
            PostprocessorSpec::TopK { .. } => "top_k",
            PostprocessorSpec::Rounding { .. } => "rounding",
            PostprocessorSpec::GaussianNoise { .. } => "gaussian_noise",
            PostprocessorSpec::LaplaceNoise { .. } => "laplace_noise",
            PostprocessorSpec::ReverseSigmoid { .. } => "reverse_sigmoid",
            PostprocessorSpec::AdaptiveMisinformation { .. } => "adaptive_misinformation",
            PostprocessorSpec::PredictionPoisoning { .. } => "prediction_poisoning",
            PostprocessorSpec::Chain { .. } => "chain",
        }
    }
}

impl PostprocessorSpec {
    /// Parses a spec from a string, in any of three forms:
    /// - a bare kind without parameters: `label_only`;
    /// - `kind:key=value,key=value` with TOML values: `top_k:k=3`,
    ///   `reverse_sigmoid:beta=0.7,gamma=1.2`;
    /// - a TOML inline table: `{ kind = "top_k", k = 3 }`.
    pub fn parse(text: &str) -> Result<PostprocessorSpec, DefenseError> {
        let t = text.trim();
        let err = |e: toml::de::Error| {
            DefenseError::spec(
                t,
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            )
        };
        if t.starts_with('{') {
            #[derive(Deserialize)]
            struct Wrap {
                v: PostprocessorSpec,
            }
            return toml::from_str::<Wrap>(&format!("v = {t}"))
                .map(|w| w.v)
                .map_err(err);
        }
        let (kind, params) = t.split_once(':').unwrap_or((t, ""));
        let mut doc = format!("kind = {:?}\n", kind.trim());
        for kv in params.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            doc.push_str(kv);
            doc.push('\n');
        }
        toml::from_str(&doc).map_err(err)
    }
}

/// The softmax answers of `model` on the batch `x`, each row passed through `pp` (when given)
/// with the context the gateway's postprocess stage gives it (`client`, the input, the logits,
/// the model). Benchmarks that steal through a defense use it as the defended API.
pub fn defended_answers(
    model: &mamori_ml::NativeModel,
    x: &Tensor,
    pp: Option<&dyn Postprocessor>,
    client: &str,
) -> Result<Tensor, DefenseError> {
    let logits = model.logits(x)?;
    let mut probs = logits.clone();
    mamori_core::softmax_rows(&mut probs);
    if let Some(p) = pp {
        let shape = &model.card.input_shape;
        for i in 0..x.batch_size() {
            let ctx = PostContext {
                client,
                input: x.row(i),
                input_shape: shape,
                logits: Some(logits.row(i)),
                model: Some(model),
            };
            p.apply(&ctx, probs.row_mut(i));
        }
    }
    Ok(probs)
}

/// How far defended answers moved from clean ones: the mean over rows of the L1 distance
/// between `defended` and `clean` (same shape; 0 = untouched, 2 = disjoint distributions).
pub fn answer_distortion(defended: &Tensor, clean: &Tensor) -> f64 {
    let total: f64 = defended
        .rows()
        .zip(clean.rows())
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() as f64)
                .sum::<f64>()
        })
        .sum();
    total / defended.batch_size().max(1) as f64
}

/// A name → postprocessor resolver for the gateway: parses the name with
/// [`PostprocessorSpec::parse`] and builds it with `ctx`; a name that does not parse or build
/// gives `None` (and a warning in the log).
pub fn registry(
    ctx: BuildContext,
) -> impl Fn(&str) -> Option<Arc<dyn Postprocessor>> + Send + Sync + 'static {
    move |name: &str| match PostprocessorSpec::parse(name).and_then(|s| build(&s, &ctx)) {
        Ok(p) => Some(Arc::from(p)),
        Err(e) => {
            tracing::warn!(name, error = %e, "unknown or invalid postprocessor");
            None
        }
    }
}

/// What building a postprocessor may need besides its spec.
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    /// The gateway's master secret; keyed defenses derive their own sub-key from it.
    pub key: Option<SecretKey>,
    /// The served native network, when there is one (prediction poisoning uses its
    /// penultimate activations).
    pub network: Option<Arc<Network>>,
}

impl BuildContext {
    /// The sub-key for `kind`, or an error naming `kind` when no key was given.
    fn sub_key(&self, kind: &str) -> Result<SecretKey, DefenseError> {
        self.key
            .as_ref()
            .map(|k| k.derive(kind))
            .ok_or_else(|| DefenseError::spec(kind, "needs the gateway's secret key"))
    }
}

/// Builds the postprocessor a spec names. This is the one place where postprocessors are
/// registered.
pub fn build(
    spec: &PostprocessorSpec,
    ctx: &BuildContext,
) -> Result<Box<dyn Postprocessor>, DefenseError> {
    Ok(match spec {
        PostprocessorSpec::LabelOnly => Box::new(LabelOnly),
        PostprocessorSpec::TopK { k, renormalise } => Box::new(TopK::new(*k, *renormalise)?),
        PostprocessorSpec::Rounding { decimals } => Box::new(Rounding::new(*decimals)?),
        PostprocessorSpec::GaussianNoise { sigma } => {
            Box::new(GaussianNoise::new(ctx.sub_key(spec.kind())?, *sigma)?)
        }
        PostprocessorSpec::LaplaceNoise { scale } => {
            Box::new(LaplaceNoise::new(ctx.sub_key(spec.kind())?, *scale)?)
        }
        PostprocessorSpec::ReverseSigmoid { beta, gamma } => {
            Box::new(ReverseSigmoid::new(*beta, *gamma)?)
        }
        PostprocessorSpec::AdaptiveMisinformation { tau, nu } => {
            Box::new(AdaptiveMisinformation::new(*tau, *nu)?)
        }
        PostprocessorSpec::PredictionPoisoning { epsilon, keep_top1 } => {
            Box::new(PredictionPoisoning::new(
                *epsilon,
                *keep_top1,
                ctx.network.clone(),
                &ctx.sub_key(spec.kind())?,
            )?)
        }
        PostprocessorSpec::Chain { steps } => {
            if steps.is_empty() {
                return Err(DefenseError::spec("chain", "needs at least one step"));
            }
            let steps = steps
                .iter()
                .map(|s| build(s, ctx))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(Chain { steps })
        }
    })
}

/// Postprocessors applied one after the other.
pub struct Chain {
    steps: Vec<Box<dyn Postprocessor>>,
}

impl Postprocessor for Chain {
    fn name(&self) -> String {
        self.steps
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join("+")
    }
    fn keeps_top1(&self) -> bool {
        self.steps.iter().all(|s| s.keeps_top1())
    }
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]) {
        for s in &self.steps {
            s.apply(ctx, probs);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use mamori_core::PostContext;

    /// A context with only an input.
    pub fn ctx(input: &[f32]) -> PostContext<'_> {
        PostContext {
            client: "test",
            input,
            input_shape: &[],
            logits: None,
            model: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_distortion_is_the_mean_row_l1() {
        let clean = Tensor::new(vec![2, 2], vec![1.0, 0.0, 0.5, 0.5]).unwrap();
        let moved = Tensor::new(vec![2, 2], vec![0.0, 1.0, 0.5, 0.5]).unwrap();
        assert_eq!(answer_distortion(&clean, &clean), 0.0);
        // Row 1 moves by 2 (disjoint), row 2 not at all.
        assert!((answer_distortion(&moved, &clean) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn specs_parse_from_toml() {
        #[derive(Deserialize)]
        struct T {
            p: Vec<PostprocessorSpec>,
        }
        let t: T = toml::from_str(
            r#"p = [{ kind = "top_k", k = 3 }, { kind = "label_only" },
                   { kind = "rounding", decimals = 2 },
                   { kind = "chain", steps = [{ kind = "top_k", k = 2, renormalise = false }] }]"#,
        )
        .unwrap();
        assert_eq!(
            t.p[0],
            PostprocessorSpec::TopK {
                k: 3,
                renormalise: true
            }
        );
        for s in &t.p {
            build(s, &BuildContext::default()).unwrap();
        }
    }

    #[test]
    fn bad_specs_are_rejected_with_their_kind() {
        let e = toml::from_str::<PostprocessorSpec>(r#"kind = "top_k""#).unwrap_err();
        assert!(e.to_string().contains('k'), "{e}");
        let e = toml::from_str::<PostprocessorSpec>(r#"kind = "nope""#).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = toml::from_str::<PostprocessorSpec>(
            r#"kind = "top_k"
k = 2
kk = 3"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("kk"), "{e}");
        let ctx = BuildContext::default();
        let e = build(
            &PostprocessorSpec::TopK {
                k: 0,
                renormalise: true,
            },
            &ctx,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("top_k"), "{e}");
        let e = build(&PostprocessorSpec::Chain { steps: vec![] }, &ctx)
            .err()
            .unwrap();
        assert!(e.to_string().contains("chain"), "{e}");
    }

    #[test]
    fn compact_names_parse() {
        assert_eq!(
            PostprocessorSpec::parse("label_only").unwrap(),
            PostprocessorSpec::LabelOnly
        );
        assert_eq!(
            PostprocessorSpec::parse("top_k:k=3").unwrap(),
            PostprocessorSpec::TopK {
                k: 3,
                renormalise: true
            }
        );
        assert_eq!(
            PostprocessorSpec::parse("reverse_sigmoid: beta=0.5, gamma=1.5").unwrap(),
            PostprocessorSpec::ReverseSigmoid {
                beta: 0.5,
                gamma: 1.5
            }
        );
        assert_eq!(
            PostprocessorSpec::parse(r#"{ kind = "rounding", decimals = 2 }"#).unwrap(),
            PostprocessorSpec::Rounding { decimals: 2 }
        );
        let chain =
            r#"{ kind = "chain", steps = [{ kind = "top_k", k = 2 }, { kind = "label_only" }] }"#;
        assert!(matches!(
            PostprocessorSpec::parse(chain).unwrap(),
            PostprocessorSpec::Chain { .. }
        ));
        let e = PostprocessorSpec::parse("top_k").unwrap_err().to_string();
        assert!(e.contains("top_k") && e.contains('k'), "{e}");
        assert!(PostprocessorSpec::parse("bogus").is_err());
        let r = registry(BuildContext::default());
        assert_eq!(r("top_k:k=2").unwrap().name(), "top_k");
        assert!(r("gaussian_noise:sigma=0.1").is_none(), "needs a key");
        assert!(r("nope").is_none());
    }

    #[test]
    fn chain_applies_in_order() {
        let p = build(
            &PostprocessorSpec::Chain {
                steps: vec![
                    PostprocessorSpec::TopK {
                        k: 2,
                        renormalise: true,
                    },
                    PostprocessorSpec::Rounding { decimals: 1 },
                ],
            },
            &BuildContext::default(),
        )
        .unwrap();
        let mut v = [0.5, 0.3, 0.2];
        p.apply(&test_util::ctx(&[]), &mut v);
        assert_eq!(v, [0.6, 0.4, 0.0]);
        assert_eq!(p.name(), "top_k+rounding");
        assert!(p.keeps_top1());
    }
}
