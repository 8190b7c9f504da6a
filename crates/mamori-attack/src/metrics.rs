//! Extraction metrics: substitute accuracy, fidelity on test data and on uniform inputs,
//! queries, time; and curves over budgets.
//!
//! The victim's labels on the evaluation inputs are computed once ([`EvalSet`]), from a local
//! model or through a separate (unbudgeted) oracle, so evaluating never spends the attack's
//! budget.

use crate::error::AttackError;
use crate::extract::{Extraction, ExtractionAttack, ExtractionContext};
use mamori_core::{Model, Oracle, Tensor};
use mamori_data::Dataset;
use mamori_ml::predict_labels;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Evaluation inputs with the victim's labels on them.
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// Held-out test inputs.
    pub test_x: Tensor,
    /// True labels of the test inputs.
    pub test_y: Vec<usize>,
    /// The victim's labels on the test inputs.
    pub victim_test: Vec<usize>,
    /// Uniform random inputs.
    pub uniform_x: Tensor,
    /// The victim's labels on them.
    pub victim_uniform: Vec<usize>,
}

impl EvalSet {
    /// Labels the test set and `n_uniform` uniform inputs in `range` with a local victim.
    pub fn from_model(
        victim: &dyn Model,
        test: &Dataset,
        n_uniform: usize,
        range: [f32; 2],
        seed: u64,
    ) -> Result<Self, AttackError> {
        let uniform_x = uniform_like(&test.x, n_uniform, range, seed);
        Ok(Self {
            victim_test: predict_labels(victim, &test.x)?,
            victim_uniform: predict_labels(victim, &uniform_x)?,
            test_x: test.x.clone(),
            test_y: test.y.clone(),
            uniform_x,
        })
    }

    /// Same, asking a (separate, unbudgeted) oracle for the victim's labels.
    pub fn from_oracle(
        victim: &mut dyn Oracle,
        test: &Dataset,
        n_uniform: usize,
        range: [f32; 2],
        seed: u64,
    ) -> Result<Self, AttackError> {
        let uniform_x = uniform_like(&test.x, n_uniform, range, seed);
        let label = |o: &mut dyn Oracle, x: &Tensor| -> Result<Vec<usize>, AttackError> {
            let mut out = Vec::with_capacity(x.batch_size());
            let mut s = 0;
            while s < x.batch_size() {
                let e = (s + 512).min(x.batch_size());
                out.extend(o.query(&x.slice_rows(s, e))?.labels);
                s = e;
            }
            Ok(out)
        };
        Ok(Self {
            victim_test: label(victim, &test.x)?,
            victim_uniform: label(victim, &uniform_x)?,
            test_x: test.x.clone(),
            test_y: test.y.clone(),
            uniform_x,
        })
    }

    /// The victim's own test accuracy (from its labels).
    pub fn victim_accuracy(&self) -> f64 {
        agree(&self.victim_test, &self.test_y)
    }

    /// Scores a substitute.
    pub fn evaluate(&self, sub: &dyn Model) -> Result<SubstituteMetrics, AttackError> {
        let pt = predict_labels(sub, &self.test_x)?;
        let pu = predict_labels(sub, &self.uniform_x)?;
        Ok(SubstituteMetrics {
            substitute_accuracy: agree(&pt, &self.test_y),
            fidelity: agree(&pt, &self.victim_test),
            fidelity_uniform: agree(&pu, &self.victim_uniform),
        })
    }
}

fn uniform_like(x: &Tensor, n: usize, range: [f32; 2], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xe7a1);
    crate::extract::uniform_inputs(&mut rng, n, x.sample_shape(), range)
}

fn agree(a: &[usize], b: &[usize]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// How good a substitute is.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct SubstituteMetrics {
    /// Accuracy on the test set's true labels.
    pub substitute_accuracy: f64,
    /// Agreement with the victim on the test set.
    pub fidelity: f64,
    /// Agreement with the victim on uniform random inputs.
    pub fidelity_uniform: f64,
}

/// One point of an extraction curve (and the JSON of `mamori attack extract`).
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    /// Strategy name.
    pub strategy: String,
    /// Budget given.
    pub budget: u64,
    /// Queries actually charged.
    pub queries: u64,
    /// Substitute test accuracy.
    pub substitute_accuracy: f64,
    /// Test-set agreement with the victim.
    pub fidelity: f64,
    /// Agreement on uniform inputs.
    pub fidelity_uniform: f64,
    /// Attack wall-clock seconds.
    pub seconds: f64,
    /// Whether the substitute trained on soft targets.
    pub soft_targets: bool,
    /// Attack notes.
    pub notes: Vec<String>,
}

impl CurvePoint {
    /// Combines an extraction and its metrics.
    pub fn new(strategy: &str, budget: u64, e: &Extraction, m: SubstituteMetrics) -> Self {
        Self {
            strategy: strategy.into(),
            budget,
            queries: e.queries,
            substitute_accuracy: m.substitute_accuracy,
            fidelity: m.fidelity,
            fidelity_uniform: m.fidelity_uniform,
            seconds: e.seconds,
            soft_targets: e.soft_targets,
            notes: e.notes.clone(),
        }
    }
}

/// Runs `attack` once per budget, each time against a fresh oracle from `make_oracle(budget)`,
/// and scores every substitute on `eval`. This is how the evaluation harness gets a curve for
/// any oracle (local, HTTP, multi-key, the in-process protection chain).
pub fn extraction_curve(
    attack: &dyn ExtractionAttack,
    budgets: &[u64],
    make_oracle: &mut dyn FnMut(u64) -> Result<Box<dyn Oracle>, AttackError>,
    ctx: &ExtractionContext<'_>,
    eval: &EvalSet,
) -> Result<Vec<CurvePoint>, AttackError> {
    let mut out = Vec::with_capacity(budgets.len());
    for &b in budgets {
        let mut oracle = make_oracle(b)?;
        let mut c = ctx.clone();
        c.budget = b;
        let e = attack.extract(oracle.as_mut(), &c)?;
        let m = eval.evaluate(&e.substitute)?;
        out.push(CurvePoint::new(attack.info().name, b, &e, m));
    }
    Ok(out)
}
