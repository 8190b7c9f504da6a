//! Equation-solving extraction of logistic regression.
//!
//! Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing Machine Learning Models via
//! Prediction APIs", USENIX Security 2016, §4.1.1. A binary LR answers `p = σ(w·x + b)`, so
//! each answer gives one linear equation `w·x + b = ln(p / (1 − p))`: `d + 1` queries at
//! random points determine `(w, b)` exactly. A multinomial (softmax) LR answers
//! `p_k ∝ exp(w_k·x + b_k)`; it is identified up to a common shift, so with class 0 as the
//! reference `(w_k − w_0)·x + (b_k − b_0) = ln(p_k / p_0)` — linear again. The paper counts
//! `c·(d+1)` unknowns and queries; we use that many queries (by default) and solve each
//! class's `d + 1` unknowns by least squares (Householder QR in `f64`), which also absorbs the
//! `f32` rounding of the answers.
//!
//! Query design: the paper draws the `d + 1` points at random. A square random system is
//! badly conditioned (its condition number grows with `d`), which is harmless in the paper's
//! `f64` arithmetic but amplifies the `f32` rounding of real answers about a thousandfold. The
//! default [`QueryDesign::Basis`] asks the origin of the input box and its `d` unit corners
//! (`lo + (hi − lo)·e_i`, all valid inputs), whose system is perfectly conditioned; further
//! blocks of `d + 1` queries repeat it with the corners scaled by `1 − r/blocks`, which
//! averages the rounding noise. [`QueryDesign::Random`] is the paper's design.

use super::{
    query_all, substitute_card, uniform_inputs, AttackInfo, Extraction, ExtractionAttack,
    ExtractionContext, LabelOnlyRetraining, Meter, Need,
};
use crate::error::AttackError;
use crate::linalg::lstsq;
use mamori_core::{Disclosure, Oracle, Tensor};
use mamori_ml::{Arch, LayerSpec, NativeModel, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Where the equation-solving queries are placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryDesign {
    /// The box origin and its `d` unit corners first, then random points.
    #[default]
    Basis,
    /// Uniform random points (the paper's choice).
    Random,
}

/// Tramèr et al.'s equation solving for binary and multinomial logistic regression.
#[derive(Clone, Debug, Default)]
pub struct TramerLr {
    /// Number of queries; default `d + 1` for two classes, `c·(d + 1)` otherwise.
    pub queries: Option<usize>,
    /// Placement of the queries.
    pub design: QueryDesign,
}

/// `n` query points for `d` features in `range` following `design`.
pub fn design_points<R: rand::Rng>(
    design: QueryDesign,
    rng: &mut R,
    n: usize,
    shape: &[usize],
    range: [f32; 2],
) -> Tensor {
    let d: usize = shape.iter().product();
    let mut x = uniform_inputs(rng, n, shape, range);
    if design == QueryDesign::Basis {
        // Block r: the origin and the d corners scaled by s_r = 1 − r/blocks, so that extra
        // queries average the rounding noise of every unknown, the bias included.
        let [lo, hi] = range;
        let blocks = n.div_ceil(d + 1).max(1);
        for j in 0..n {
            let (r, i) = (j / (d + 1), j % (d + 1));
            let scale = 1.0 - r as f32 / blocks as f32;
            let row = x.row_mut(j);
            row.iter_mut().for_each(|v| *v = lo);
            if i > 0 {
                row[i - 1] = lo + scale * (hi - lo);
            }
        }
    }
    x
}

impl TramerLr {
    /// The query count the paper uses for `d` features and `c` classes.
    pub fn paper_queries(d: usize, c: usize) -> usize {
        if c == 2 {
            d + 1
        } else {
            c * (d + 1)
        }
    }
}

/// Solves the per-class log-ratio systems: returns `u[k] = [w_k − w_0 ; b_k − b_0]`
/// (`u[0] = 0`) from probability answers `p` to inputs `x` (`[n, d]`).
pub fn solve_log_ratios(x: &Tensor, p: &Tensor) -> Result<Vec<Vec<f64>>, AttackError> {
    let n = x.batch_size();
    let d = x.sample_len();
    let c = p.sample_len();
    let mut out = vec![vec![0.0; d + 1]];
    for k in 1..c {
        let mut a = Vec::with_capacity(n * (d + 1));
        let mut b = Vec::with_capacity(n);
        for i in 0..n {
            let (p0, pk) = (p.row(i)[0] as f64, p.row(i)[k] as f64);
            if p0 > 0.0 && pk > 0.0 && p0.is_finite() && pk.is_finite() {
                a.extend(x.row(i).iter().map(|v| *v as f64));
                a.push(1.0);
                b.push(pk.ln() - p0.ln());
            }
        }
        let m = b.len();
        if m < d + 1 {
            return Err(AttackError::Numerical(format!(
                "class {k}: only {m} answers with non-zero probabilities, {} needed",
                d + 1
            )));
        }
        out.push(lstsq(&a, &b, m, d + 1)?);
    }
    Ok(out)
}

/// Writes solved log-ratios into a fresh network of `Logistic` (2 classes) or `Softmax`
/// architecture.
fn network_from_solution(
    shape: &[usize],
    u: &[Vec<f64>],
    seed: u64,
) -> Result<(Network, Arch), AttackError> {
    let c = u.len();
    let d: usize = shape.iter().product();
    let arch = if c == 2 {
        Arch::Logistic
    } else {
        Arch::Softmax
    };
    let mut net = Network::new(&arch, shape, c, seed);
    let li = net
        .layers
        .iter()
        .rposition(|l| matches!(l, LayerSpec::Dense { .. }))
        .ok_or_else(|| AttackError::Numerical("the LR network has no dense layer".into()))?;
    let outs = match net.layers[li] {
        LayerSpec::Dense { outputs, .. } => outputs,
        _ => unreachable!("checked above"),
    };
    let params = &mut net.params[li];
    if outs == 1 {
        // Binary head: one logit z, answered as [0, z].
        params.weight = u[1][..d].iter().map(|v| *v as f32).collect();
        params.bias = vec![u[1][d] as f32];
    } else {
        params.weight = u
            .iter()
            .flat_map(|r| r[..d].iter().map(|v| *v as f32))
            .collect();
        params.bias = u.iter().map(|r| r[d] as f32).collect();
    }
    Ok((net, arch))
}

impl ExtractionAttack for TramerLr {
    fn info(&self) -> AttackInfo {
        AttackInfo {
            name: "tramer",
            paper: "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016, §4.1.1",
            needs: Need::Probabilities,
            needs_query_data: false,
            fallback: "label-only answers: switches to label-only adaptive retraining (§5) with the remaining budget, reusing the answers already paid for",
        }
    }

    fn extract(
        &self,
        oracle: &mut dyn Oracle,
        ctx: &ExtractionContext<'_>,
    ) -> Result<Extraction, AttackError> {
        let meter = Meter::start(oracle);
        let shape = oracle.input_shape();
        let d: usize = shape.iter().product();
        let c = oracle.num_classes();
        let need = self.queries.unwrap_or_else(|| Self::paper_queries(d, c));
        let budget = ctx.effective_budget(oracle) as usize;
        if budget < d + 1 {
            return Err(AttackError::Config(format!(
                "tramer: {d} features need at least {} queries, the budget is {budget}",
                d + 1
            )));
        }
        let n = need.min(budget);
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let x = design_points(self.design, &mut rng, n, &shape, ctx.input_range);
        let answer = query_all(oracle, &x, ctx, "querying")?;
        if answer.disclosure != Disclosure::Probabilities {
            let mut ctx2 = ctx.clone();
            ctx2.budget = ctx.budget.saturating_sub(n as u64);
            let mut e = LabelOnlyRetraining::default().extract_from(
                oracle,
                &ctx2,
                Some((x, answer.labels)),
            )?;
            e.notes.insert(
                0,
                format!(
                    "answers disclose {:?}, not probabilities: fell back to label-only retraining",
                    answer.disclosure
                ),
            );
            e.queries = oracle.queries_used() - meter.q0;
            return Ok(e);
        }
        let u = solve_log_ratios(&x, &answer.probs)?;
        let (net, arch) = network_from_solution(&shape, &u, ctx.seed)?;
        let card = substitute_card(&arch, &shape, c, "tramer", ctx.seed);
        let notes = vec![format!(
            "solved {} × {} unknowns from {n} answers",
            c - 1,
            d + 1
        )];
        Ok(meter.finish(
            oracle,
            NativeModel { network: net, card },
            Some(answer.disclosure),
            true,
            notes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_log_ratios_of_a_known_softmax() {
        // 3 classes, 2 features: z_k = w_k·x + b_k.
        let w = [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-0.5, 0.25, 2.0]];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let x = uniform_inputs(&mut rng, 9, &[2], [0.0, 1.0]);
        let mut p = Vec::new();
        for r in x.rows() {
            let z: Vec<f64> = w
                .iter()
                .map(|k| k[0] * r[0] as f64 + k[1] * r[1] as f64 + k[2])
                .collect();
            let m = z.iter().copied().fold(f64::MIN, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            p.extend(z.iter().map(|v| ((v - m).exp() / s) as f32));
        }
        let p = Tensor::new(vec![9, 3], p).unwrap();
        let u = solve_log_ratios(&x, &p).unwrap();
        for k in 0..3 {
            for j in 0..3 {
                assert!(
                    (u[k][j] - w[k][j]).abs() < 1e-4,
                    "{k} {j}: {} vs {}",
                    u[k][j],
                    w[k][j]
                );
            }
        }
    }

    #[test]
    fn too_few_answers_is_an_error() {
        let x = Tensor::new(vec![2, 2], vec![0.1, 0.2, 0.3, 0.4]).unwrap();
        let p = Tensor::new(vec![2, 2], vec![0.5, 0.5, 0.4, 0.6]).unwrap();
        assert!(solve_log_ratios(&x, &p).is_err());
    }
}
