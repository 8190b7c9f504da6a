//! Model extraction attacks behind one trait, [`ExtractionAttack`], one file per attack,
//! registered in [`by_name`].
//!
//! An attack gets any [`Oracle`] (local model, HTTP endpoint, several keys) and an
//! [`ExtractionContext`] (budget, substitute architecture, attacker data) and returns an
//! [`Extraction`]: a substitute [`NativeModel`] and the queries it cost. Evaluation and
//! budget curves are in [`crate::metrics`].

mod active;
mod jbda;
mod knockoff;
mod knockoff_adaptive;
mod label_only;
mod random;
mod tramer_lr;
mod tramer_mlp;
mod transfer;

pub use active::{ActiveLearning, ActiveStrategy};
pub use jbda::Jbda;
pub use knockoff::KnockoffRandom;
pub use knockoff_adaptive::{KnockoffAdaptive, Reward};
pub use label_only::LabelOnlyRetraining;
pub use random::{NoiseKind, RandomQueries};
pub use tramer_lr::{design_points, solve_log_ratios, QueryDesign, TramerLr};
pub use tramer_mlp::TramerMlp;
pub use transfer::TransferExtraction;

use crate::error::AttackError;
use crate::oracle::{answer_targets, is_soft};
use mamori_core::{
    DatasetRef, Disclosure, ModelCard, Normalisation, Oracle, OracleAnswer, OutputKind, Tensor,
};
use mamori_data::Dataset;
use mamori_ml::{Arch, NativeModel, Network, Plateau, Targets, TrainConfig, TrainReport};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

/// What an attack needs from the oracle's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Full probability vectors (equation solving).
    Probabilities,
    /// Probabilities preferred; labels work with lower fidelity.
    ProbabilitiesPreferred,
    /// Labels are enough.
    Labels,
}

/// An attack's self-description.
#[derive(Clone, Debug, Serialize)]
pub struct AttackInfo {
    /// Strategy name used on the command line.
    pub name: &'static str,
    /// The paper the algorithm comes from.
    pub paper: &'static str,
    /// What it needs from the answers.
    pub needs: Need,
    /// Whether it needs attacker-side natural data (`--query-data`).
    pub needs_query_data: bool,
    /// What it does when the oracle discloses less than it needs.
    pub fallback: &'static str,
}

/// Everything an attack may use besides the oracle.
#[derive(Clone, Debug)]
pub struct ExtractionContext<'a> {
    /// Query budget (samples); the oracle's own remaining budget also applies.
    pub budget: u64,
    /// Substitute architecture.
    pub arch: Arch,
    /// Substitute training settings (with [`ExtractionContext::stop`], `train.epochs` is the
    /// cap).
    pub train: TrainConfig,
    /// Train each substitute until its fit to the answers plateaus ([`Plateau`]), at most
    /// `train.epochs` epochs; `None`: exactly `train.epochs` epochs.
    pub stop: Option<Plateau>,
    /// Train on probabilities when the oracle discloses them (else labels).
    pub prefer_soft: bool,
    /// Attacker's natural data (Knockoff, active learning, JBDA seeds, transfer).
    pub query_data: Option<&'a Dataset>,
    /// Another labelled dataset to pre-train feature layers on (transfer extraction).
    pub aux_data: Option<&'a Dataset>,
    /// Valid range of input values.
    pub input_range: [f32; 2],
    /// Samples per oracle call.
    pub query_batch: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

impl<'a> ExtractionContext<'a> {
    /// Defaults: budget `budget`, substitute `arch` trained like a real thief trains it —
    /// until its fit to the answers plateaus ([`Plateau::default`]), at most
    /// [`SUBSTITUTE_MAX_EPOCHS`] epochs — with soft targets preferred.
    pub fn new(budget: u64, arch: Arch) -> Self {
        Self {
            budget,
            arch,
            stop: Some(Plateau::default()),
            train: TrainConfig {
                epochs: SUBSTITUTE_MAX_EPOCHS,
                batch_size: 64,
                learning_rate: 1e-3,
                weight_decay: 0.0,
                seed: 0,
                progress: false,
            },
            prefer_soft: true,
            query_data: None,
            aux_data: None,
            input_range: [0.0, 1.0],
            query_batch: 256,
            seed: 0,
            progress: false,
        }
    }

    /// The budget this run may spend: the smaller of the context's and the oracle's.
    pub fn effective_budget(&self, oracle: &dyn Oracle) -> u64 {
        oracle
            .remaining()
            .map_or(self.budget, |r| r.min(self.budget))
    }

    /// The attacker data, or an error naming the attack that needs it.
    pub fn require_query_data(&self, attack: &str) -> Result<&'a Dataset, AttackError> {
        self.query_data.ok_or_else(|| AttackError::Unsupported {
            attack: attack.into(),
            problem: "needs attacker data (--query-data DATASET)".into(),
        })
    }
}

/// The default cap on substitute training epochs when training stops at a [`Plateau`].
pub const SUBSTITUTE_MAX_EPOCHS: usize = 50;

/// Trains `net` on `(x, targets)` with `cfg`: until the fit plateaus when `stop` is given
/// (`cfg.epochs` is then the cap), else exactly `cfg.epochs` epochs. Every substitute of the
/// harness is trained through this function.
pub fn fit_substitute(
    net: &mut Network,
    x: &Tensor,
    targets: &Targets,
    cfg: &TrainConfig,
    stop: Option<&Plateau>,
) -> Result<TrainReport, AttackError> {
    Ok(match stop {
        Some(p) => mamori_ml::train_until_plateau(net, x, targets, cfg, p)?,
        None => mamori_ml::train(net, x, targets, cfg)?,
    })
}

/// The result of one extraction.
pub struct Extraction {
    /// The stolen model.
    pub substitute: NativeModel,
    /// Queries charged by the oracle during the attack.
    pub queries: u64,
    /// Wall-clock seconds (querying + training).
    pub seconds: f64,
    /// What the answers disclosed.
    pub disclosure: Option<Disclosure>,
    /// Whether the substitute was trained on soft targets.
    pub soft_targets: bool,
    /// Notes for the report (fallbacks taken, rounds...).
    pub notes: Vec<String>,
}

/// A model extraction attack.
pub trait ExtractionAttack: Send + Sync {
    /// Self-description.
    fn info(&self) -> AttackInfo;
    /// Runs the attack against `oracle` within `ctx.budget` queries.
    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError>;
}

/// Every registered strategy name.
pub const STRATEGIES: &[&str] = &[
    "random",
    "random-gaussian",
    "knockoff",
    "knockoff-adaptive",
    "jbda",
    "active",
    "active-margin",
    "active-kcenter",
    "tramer",
    "tramer-mlp",
    "label-only",
    "transfer",
];

/// The attack registered under `name` with its paper defaults.
pub fn by_name(name: &str) -> Result<Box<dyn ExtractionAttack>, AttackError> {
    Ok(match name {
        "random" => Box::new(RandomQueries::new(NoiseKind::Uniform)),
        "random-gaussian" => Box::new(RandomQueries::new(NoiseKind::Gaussian { std: 0.25 })),
        "knockoff" => Box::new(KnockoffRandom),
        "knockoff-adaptive" => Box::new(KnockoffAdaptive::default()),
        "jbda" => Box::new(Jbda::default()),
        "active" => Box::new(ActiveLearning::new(ActiveStrategy::LeastConfident)),
        "active-margin" => Box::new(ActiveLearning::new(ActiveStrategy::Margin)),
        "active-kcenter" => Box::new(ActiveLearning::new(ActiveStrategy::KCenter)),
        "tramer" => Box::new(TramerLr::default()),
        "tramer-mlp" => Box::new(TramerMlp::default()),
        "label-only" => Box::new(LabelOnlyRetraining::default()),
        "transfer" => Box::new(TransferExtraction::default()),
        other => {
            return Err(AttackError::Config(format!(
                "unknown strategy '{other}'; known: {}",
                STRATEGIES.join(", ")
            )))
        }
    })
}

// ---- helpers shared by the attacks -------------------------------------------------------

/// Queries `x` in batches of `ctx.query_batch`, with a progress bar when asked.
pub(crate) fn query_all(
    oracle: &mut dyn Oracle,
    x: &Tensor,
    ctx: &ExtractionContext<'_>,
    what: &str,
) -> Result<OracleAnswer, AttackError> {
    let n = x.batch_size();
    let bar = progress_bar(ctx.progress, n as u64, what);
    let mut probs = Vec::new();
    let mut labels = Vec::with_capacity(n);
    let mut disclosure = None;
    let mut s = 0;
    while s < n {
        let e = (s + ctx.query_batch.max(1)).min(n);
        let a = oracle.query(&x.slice_rows(s, e))?;
        disclosure.get_or_insert(a.disclosure);
        labels.extend(a.labels);
        probs.push(a.probs);
        bar.inc((e - s) as u64);
        s = e;
    }
    bar.finish_and_clear();
    let probs = if probs.is_empty() {
        Tensor::zeros(vec![0, oracle.num_classes()])
    } else {
        Tensor::concat(&probs)?
    };
    Ok(OracleAnswer {
        probs,
        labels,
        disclosure: disclosure.unwrap_or(Disclosure::Label),
    })
}

/// An indicatif bar (hidden when `show` is false).
pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// A model card for a substitute of `arch` answering like the oracle.
pub(crate) fn substitute_card(
    arch: &Arch,
    input_shape: &[usize],
    classes: usize,
    strategy: &str,
    seed: u64,
) -> ModelCard {
    let architecture = match arch {
        Arch::Logistic => "logistic",
        Arch::Softmax => "softmax",
        Arch::Mlp { .. } => "mlp",
        Arch::Cnn => "cnn",
    };
    let mut extra = serde_json::Map::new();
    extra.insert("extracted_by".into(), strategy.into());
    ModelCard {
        name: format!("substitute-{strategy}"),
        architecture: architecture.into(),
        architecture_detail: serde_json::to_value(arch).unwrap_or_default(),
        input_shape: input_shape.to_vec(),
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation::default(),
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        output_kind: OutputKind::Logits,
        dataset: DatasetRef {
            name: format!("oracle answers ({strategy})"),
            files: Vec::new(),
        },
        test_accuracy: None,
        training_time_s: None,
        seed: Some(seed),
        extra,
    }
}

/// Trains a fresh substitute of `ctx.arch` on `(x, answers)`.
pub(crate) fn train_substitute(
    oracle: &dyn Oracle,
    x: &Tensor,
    answer: &OracleAnswer,
    ctx: &ExtractionContext<'_>,
    strategy: &str,
) -> Result<(NativeModel, bool), AttackError> {
    let shape = oracle.input_shape();
    let classes = oracle.num_classes();
    let mut net = Network::new(&ctx.arch, &shape, classes, ctx.seed);
    let soft = is_soft(answer.disclosure) && ctx.prefer_soft;
    let targets = answer_targets(&answer.probs, &answer.labels, soft, ctx.prefer_soft);
    let mut cfg = ctx.train.clone();
    cfg.progress = ctx.progress;
    if x.batch_size() > 0 {
        fit_substitute(&mut net, x, &targets, &cfg, ctx.stop.as_ref())?;
    }
    let card = substitute_card(&ctx.arch, &shape, classes, strategy, ctx.seed);
    Ok((NativeModel { network: net, card }, soft))
}

/// `n` uniform random inputs in `range` with sample shape `shape`.
pub(crate) fn uniform_inputs<R: Rng>(
    rng: &mut R,
    n: usize,
    shape: &[usize],
    range: [f32; 2],
) -> Tensor {
    let per: usize = shape.iter().product();
    let data = (0..n * per)
        .map(|_| rng.gen_range(range[0]..=range[1]))
        .collect();
    let mut full = vec![n];
    full.extend_from_slice(shape);
    Tensor::new(full, data).expect("shape product matches")
}

/// `n` random inputs covering the whole box including its faces: for each sample a fraction
/// `q ~ U(0, 1)` of its coordinates sits at the lower bound (sparse inputs, like images), a
/// further tenth of the rest at the upper bound, the others are uniform. Uniform points alone
/// concentrate in the middle of a high-dimensional box, far from where data lives.
pub(crate) fn mixed_inputs<R: Rng>(
    rng: &mut R,
    n: usize,
    shape: &[usize],
    range: [f32; 2],
) -> Tensor {
    let per: usize = shape.iter().product();
    let [lo, hi] = range;
    let mut data = Vec::with_capacity(n * per);
    for _ in 0..n {
        let q: f32 = rng.gen();
        for _ in 0..per {
            let u: f32 = rng.gen();
            data.push(if u < q {
                lo
            } else if u < q + (1.0 - q) * 0.1 {
                hi
            } else {
                rng.gen_range(lo..=hi)
            });
        }
    }
    let mut full = vec![n];
    full.extend_from_slice(shape);
    Tensor::new(full, data).expect("shape product matches")
}

/// Picks `n` indices of `0..len` (without replacement when `n ≤ len`).
pub(crate) fn sample_indices<R: Rng>(rng: &mut R, len: usize, n: usize) -> Vec<usize> {
    if n <= len {
        rand::seq::index::sample(rng, len, n).into_vec()
    } else {
        (0..n).map(|_| rng.gen_range(0..len)).collect()
    }
}

/// Checks that the attacker data has the oracle's sample shape.
pub(crate) fn check_data_shape(
    data: &Dataset,
    oracle: &dyn Oracle,
    attack: &str,
) -> Result<(), AttackError> {
    if data.x.sample_shape() != oracle.input_shape().as_slice() {
        return Err(AttackError::Unsupported {
            attack: attack.into(),
            problem: format!(
                "query data '{}' has sample shape {:?} but the oracle takes {:?}",
                data.name,
                data.x.sample_shape(),
                oracle.input_shape()
            ),
        });
    }
    if data.is_empty() {
        return Err(AttackError::Unsupported {
            attack: attack.into(),
            problem: format!("query data '{}' is empty", data.name),
        });
    }
    Ok(())
}

/// Starts a stopwatch and records the queries already charged.
pub(crate) struct Meter {
    start: Instant,
    pub(crate) q0: u64,
}

impl Meter {
    pub(crate) fn start(oracle: &dyn Oracle) -> Self {
        Self {
            start: Instant::now(),
            q0: oracle.queries_used(),
        }
    }
    pub(crate) fn finish(
        &self,
        oracle: &dyn Oracle,
        substitute: NativeModel,
        disclosure: Option<Disclosure>,
        soft_targets: bool,
        notes: Vec<String>,
    ) -> Extraction {
        Extraction {
            substitute,
            queries: oracle.queries_used() - self.q0,
            seconds: self.start.elapsed().as_secs_f64(),
            disclosure,
            soft_targets,
            notes,
        }
    }
}
