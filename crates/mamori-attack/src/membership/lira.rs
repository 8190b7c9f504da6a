//! The Likelihood Ratio Attack (LiRA), online.
//!
//! Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks From First
//! Principles", IEEE S&P 2022, Algorithm 1. Shadow models are trained on random halves of a
//! population that contains the candidates, so every candidate is IN for about half of them
//! and OUT for the others. For each candidate the logit-scaled confidence
//! `φ = ln(p_y / (1 − p_y))` of the IN and OUT shadows is fitted with two Gaussians, and the
//! score is the log likelihood ratio `ln N(φ_target; μ_in, σ²_in) − ln N(φ_target; μ_out,
//! σ²_out)`. With few shadows the paper recommends a fixed (global) variance, an option here.

use super::{logit_confidence, predict_batched, MembershipAttack, MembershipContext};
use crate::error::AttackError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Online LiRA.
#[derive(Clone, Debug)]
pub struct Lira {
    /// Number of shadow models (the paper uses 16–256; a few work with a fixed variance).
    pub shadows: usize,
    /// One variance per side shared by every example (recommended with few shadows).
    pub fixed_variance: bool,
}

impl Default for Lira {
    fn default() -> Self {
        Self {
            shadows: 8,
            fixed_variance: true,
        }
    }
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var)
}

fn log_normal(x: f64, m: f64, var: f64) -> f64 {
    let var = var.max(1e-6);
    -0.5 * ((x - m) * (x - m) / var + var.ln())
}

impl MembershipAttack for Lira {
    fn name(&self) -> &'static str {
        "lira"
    }
    fn paper(&self) -> &'static str {
        "Carlini et al., Membership Inference Attacks From First Principles, IEEE S&P 2022"
    }
    fn scores(&self, ctx: &mut MembershipContext<'_>) -> Result<Vec<f64>, AttackError> {
        let cand = ctx.candidates;
        let n = cand.len();
        if n < 2 || self.shadows < 2 {
            return Err(AttackError::Config(
                "lira needs at least 2 candidates and 2 shadow models".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x11ea);
        let mut phi_in = vec![Vec::new(); n];
        let mut phi_out = vec![Vec::new(); n];
        let bar = crate::extract::progress_bar(ctx.progress, self.shadows as u64, "shadows");
        for s in 0..self.shadows {
            // Balanced IN/OUT: each shadow trains on a random half of the candidates.
            let perm = rand::seq::index::sample(&mut rng, n, n).into_vec();
            let mut is_in = vec![false; n];
            for &i in &perm[..n / 2] {
                is_in[i] = true;
            }
            let train = cand.select(&perm[..n / 2]);
            let model = ctx
                .trainer
                .train(&train, ctx.seed.wrapping_add(2000 + s as u64))?;
            let p = predict_batched(model.as_ref(), &cand.x)?;
            for (i, &y) in cand.y.iter().enumerate() {
                let phi = logit_confidence(p.row(i), y);
                if is_in[i] {
                    phi_in[i].push(phi);
                } else {
                    phi_out[i].push(phi);
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let all_in: Vec<f64> = phi_in.iter().flatten().copied().collect();
        let all_out: Vec<f64> = phi_out.iter().flatten().copied().collect();
        // Global variances: mean of per-example variances (the paper's fixed variance).
        let pooled = |groups: &[Vec<f64>], all: &[f64]| -> f64 {
            let per: Vec<f64> = groups
                .iter()
                .filter(|g| g.len() >= 2)
                .map(|g| mean_var(g).1)
                .collect();
            if per.is_empty() {
                mean_var(all).1
            } else {
                per.iter().sum::<f64>() / per.len() as f64
            }
        };
        let var_in_global = pooled(&phi_in, &all_in);
        let var_out_global = pooled(&phi_out, &all_out);
        let (m_in_global, _) = mean_var(&all_in);
        let (m_out_global, _) = mean_var(&all_out);
        let p = predict_batched(ctx.target, &cand.x)?;
        Ok(cand
            .y
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let phi = logit_confidence(p.row(i), y);
                let (m_in, v_in) = if phi_in[i].is_empty() {
                    (m_in_global, var_in_global)
                } else {
                    mean_var(&phi_in[i])
                };
                let (m_out, v_out) = if phi_out[i].is_empty() {
                    (m_out_global, var_out_global)
                } else {
                    mean_var(&phi_out[i])
                };
                let (v_in, v_out) =
                    if self.fixed_variance || phi_in[i].len() < 2 || phi_out[i].len() < 2 {
                        (var_in_global, var_out_global)
                    } else {
                        (v_in, v_out)
                    };
                log_normal(phi, m_in, v_in) - log_normal(phi, m_out, v_out)
            })
            .collect())
    }
}
