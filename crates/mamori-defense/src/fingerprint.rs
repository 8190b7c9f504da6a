//! A keyed linear fingerprint in every answer: DAWN's complement against least-squares thieves.
//!
//! **Why.** DAWN (Szyller et al. 2021) changes a keyed 0.5% of answers to wrong labels; a
//! substitute that *fits its training answers* reproduces them. Tramèr et al.'s equation
//! solving ("Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016)
//! does not: it fits a softmax regression to the answers' log-probability ratios by least
//! squares, and a handful of changed equations among thousands is averaged away (each moves
//! the solution by its leverage, ≈ unknowns / equations). Sparse marks cannot reach a
//! low-capacity copy; a signal that such a copy must absorb has to be present in *every*
//! answer and be *linear in the input*, so that least squares recovers it exactly.
//!
//! **The fingerprint.** For a `d`-dimensional input `x` and `c` classes, a `c × d` matrix `K` of
//! independent standard normal entries is drawn from the key (ChaCha20 seeded by a sub-key
//! for that shape). Every answer's log-probabilities get the term `ε·(Kx)/√d`, centred across
//! classes, and are re-normalised: `p'(x) = softmax(ln p(x) + ε·Kx/√d)`. The top-1 label is
//! never changed: when the term would change it, it is halved (up to 8 times) and otherwise
//! left out, so benign users lose no accuracy. Zero probabilities (undisclosed by `top_k`, or
//! underflowed) stay zero and the positive ones keep their total mass; answers with fewer
//! than two positive probabilities, a tied top or a non-finite value are left unchanged. The
//! fingerprint is added after the policy's postprocessors, so it would undo `rounding`: a
//! policy cannot combine the two (the gateway refuses it). A least-squares
//! thief's logit-difference model then contains `ε·K/√d` on top of the victim's own linear
//! part; `K` is deterministic per input shape, so repeating queries does not average it out.
//!
//! **Where: the model's quiet input dimensions.** The copy shows the term at
//! `z ≈ ε·√(c·m/d)/σ` (`m` dimensions used, `σ` the copy's own least-squares error per
//! weight, ≈ 1.2 for the equation-solving copy of our Fashion-MNIST MLP), while benign users
//! see a shift proportional to `ε` times the energy their inputs put on those `m` dimensions.
//! Over all 784 pixels, ε = 0.5 gave z = 1.2 (not evidence) and ε ≈ 2.5 would shift benign
//! log-probabilities by ≈ 1.2. So the term is confined ([`LinearFingerprint::with_dims`]) to
//! the dimensions the training inputs barely use (`mamori_detect::calibration::quiet_dims`,
//! stored by `mamori calibrate`: the 101 Fashion-MNIST pixels holding 0.25% of the images'
//! mean square, mostly the border), where a thief's synthetic queries have as much energy as
//! anywhere else: at ε = 9, z = 9.2 for the equation-solving copy, and benign answers move
//! by 0.011 in L1 (largest log-probability shift 0.24 on average), labels unchanged.
//!
//! **Verification: an exact test.** The suspect is queried on `n` inputs drawn uniformly from
//! `[lo, hi]^d` by a keyed generator of its own (a different sub-key); so is the *reference*,
//! the protected model itself without the fingerprint, when the owner supplies it. With `ẑ_i`
//! the suspect's centred log-probabilities for input `x_i` (probabilities clamped at `1e-30`),
//! minus the reference's, and `x̃_i = x_i − (lo + hi)/2`, the statistic is
//! `T = Σ_i ⟨ẑ_i, K x̃_i⟩/√d = Σ_{c,k} K_ck A_ck/√d`, where `A = Σ_i ẑ_i x̃_iᵀ`. Under H0, "the
//! suspect is independent of our key" (the reference is: it never saw the key), `A` is
//! independent of `K`, whose entries are i.i.d. `N(0, 1)`; so *given* the answers,
//! `T ~ N(0, Σ A²/d)` exactly, whatever the suspect is. The p-value is the normal upper tail of
//! `z = T / √(Σ A²/d)`. No population of independent models, no assumption about the suspect's
//! architecture.
//!
//! Two versions of `ẑ` are tested on the same answers, and the p-value is twice the smaller
//! tail (Bonferroni): probabilities clamped at `1e-30` (a least-squares copy reproduces the
//! fingerprint in every log-probability, the tiny ones included), and floored at
//! [`VERIFY_FLOOR`] (a copy trained on probabilities of noise inputs only learns the
//! fingerprint where the answers had mass; below the floor both models' log-probabilities are
//! unrelated extrapolations that only add variance). Each is exact by the argument above (any
//! function of the answers gives an `A` independent of `K`). On the fifth session's probe
//! (docs/bench/defense.md) the floor took a Gaussian-noise thief from z = 4.5 to 9.0 and
//! Tramèr's equation-solving copy from z = 11.6 to 2.0, hence both.
//!
//! Why the reference matters: without it `A` contains the suspect's own linear response
//! `n·W Cov(x)`, which grows with `n` as fast as the signal `n·ε K Cov(x)/√d`, so more queries
//! do not help (the signal-to-noise ratio stays `≈ ε c √d / ‖W‖`). A least-squares copy's
//! residual against the victim is uncorrelated with the inputs it was fitted on, so after
//! subtracting the reference the nuisance grows only like `√n` and the evidence like `n`.
//!
//! The test needs full probability vectors (a label-only or top-k suspect gives `None`).

use crate::error::DefenseError;
use crate::key::SecretKey;
use crate::simplex::argmax;
use mamori_core::{Disclosure, Oracle, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default strength `ε` of the fingerprint (logits, before the `1/√d` scaling of `Kx`), for a
/// term confined to the model's quiet input dimensions ([`LinearFingerprint::with_dims`]).
///
/// Measured on the Fashion-MNIST victim (`docs/bench/defense.md`): Tramèr's least-squares copy
/// shows the fingerprint at z ≈ ε·√(c·m/d)/σ, where σ ≈ 1.2 is the copy's own estimation error
/// per weight; over all 784 pixels ε = 0.5 gave z = 1.2 and would need ε ≈ 2.5 (a logit shift of
/// ≈ 1.2 on benign answers). On the 101 quiet pixels ε = 9 gives z = 9.2 while benign images,
/// which put 0.25% of their energy there, see a shift of ≈ 0.2 logits.
pub const DEFAULT_EPSILON: f32 = 9.0;

/// Default number of verification queries.
pub const DEFAULT_VERIFY_QUERIES: usize = 10_000;

/// Largest accepted `ε`.
pub const MAX_EPSILON: f32 = 20.0;

/// Clamp of the verification's first statistic (log-probabilities down to `ln 1e-30`).
const RAW_FLOOR: f64 = 1e-30;

/// Floor of the verification's second statistic: probabilities below it count as it.
pub const VERIFY_FLOOR: f64 = 1e-3;

/// The keyed linear fingerprint (see the module documentation). `Debug` redacts the key.
pub struct LinearFingerprint {
    key: SecretKey,
    epsilon: f32,
    /// Input dimensions the term reads (empty = all).
    dims: Vec<u32>,
    matrices: Mutex<Matrices>,
}

/// `K` per `(input dimension, classes)`, drawn once.
type Matrices = HashMap<(usize, usize), Arc<Vec<f32>>>;

impl std::fmt::Debug for LinearFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearFingerprint")
            .field("key", &"<redacted>")
            .field("epsilon", &self.epsilon)
            .finish()
    }
}

/// The outcome of a fingerprint test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FingerprintResult {
    /// Inputs the suspect was queried on.
    pub queried: usize,
    /// The standardised statistic `z = T / sd(T | answers)`.
    pub z: f64,
    /// The same statistic on log-probabilities floored at [`VERIFY_FLOOR`] (absent in results
    /// made before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_floored: Option<f64>,
    /// The test's p-value: the upper normal tail `P(N(0, 1) ≥ z)`; with `z_floored`, twice the
    /// smaller of the two tails (Bonferroni over the two statistics).
    pub p_value: f64,
    /// `log10` of the p-value (finite even when `p_value` underflows to 0).
    pub log10_p_value: f64,
}

impl LinearFingerprint {
    /// A fingerprint with key `key` and strength `epsilon` in `(0, MAX_EPSILON]`.
    pub fn new(key: SecretKey, epsilon: f32) -> Result<Self, DefenseError> {
        if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= MAX_EPSILON) {
            return Err(DefenseError::spec(
                "fingerprint",
                format!("epsilon must lie in (0, {MAX_EPSILON}], got {epsilon}"),
            ));
        }
        Ok(LinearFingerprint {
            key,
            epsilon,
            dims: Vec::new(),
            matrices: Mutex::new(HashMap::new()),
        })
    }

    /// Restricts the term to the input dimensions `dims` (the columns of `K` outside them are
    /// zero): choose dimensions benign inputs barely use (`mamori_detect::calibration::quiet_dims`,
    /// stored by `mamori calibrate`) and the benign
    /// distortion shrinks with their energy while a thief querying synthetic inputs still
    /// sees the full term.
    pub fn with_dims(mut self, mut dims: Vec<u32>) -> Self {
        dims.sort_unstable();
        dims.dedup();
        self.dims = dims;
        self
    }

    /// The dimensions the term reads (empty = all).
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }

    /// Whether column `k` of `K` is used.
    fn uses(&self, k: usize) -> bool {
        self.dims.is_empty() || self.dims.binary_search(&(k as u32)).is_ok()
    }

    /// The strength `ε`.
    pub fn epsilon(&self) -> f32 {
        self.epsilon
    }

    /// `K` for `d`-dimensional inputs and `c` classes, row-major `c × d`.
    fn matrix(&self, d: usize, c: usize) -> Arc<Vec<f32>> {
        let mut m = self.matrices.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((d, c))
            .or_insert_with(|| {
                let sub = self
                    .key
                    .derive(&format!("linear-fingerprint/matrix/{d}x{c}"));
                let mut rng = ChaCha20Rng::from_seed(*sub.expose());
                Arc::new((0..c * d).map(|_| rng.sample(StandardNormal)).collect())
            })
            .clone()
    }

    /// `Kx/√d`, centred across classes.
    fn direction(&self, input: &[f32], c: usize) -> Vec<f64> {
        let d = input.len();
        let k = self.matrix(d, c);
        let scale = 1.0 / (d.max(1) as f64).sqrt();
        let mut v: Vec<f64> = k
            .chunks(d.max(1))
            .map(|row| {
                let dot: f64 = if self.dims.is_empty() {
                    row.iter().zip(input).map(|(a, b)| f64::from(a * b)).sum()
                } else {
                    self.dims
                        .iter()
                        .filter_map(|&j| {
                            Some(f64::from(row.get(j as usize)? * input.get(j as usize)?))
                        })
                        .sum()
                };
                dot * scale
            })
            .collect();
        let mean = v.iter().sum::<f64>() / c as f64;
        for x in &mut v {
            *x -= mean;
        }
        v
    }

    /// Adds the fingerprint to one answer in place; returns whether it was applied (see the
    /// module documentation for when it is not). The top-1 label never changes and the
    /// result is a valid distribution.
    pub fn apply(&self, input: &[f32], probs: &mut [f32]) -> bool {
        let c = probs.len();
        let positive = probs.iter().filter(|p| **p > 0.0).count();
        if c < 2
            || input.is_empty()
            || positive < 2
            || probs.iter().any(|p| !(p.is_finite() && *p >= 0.0))
        {
            return false;
        }
        let top = argmax(probs);
        if !unique_max(probs, top) {
            return false;
        }
        let dir = self.direction(input, c);
        let mass: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        // Zero entries (undisclosed by top-k, or underflowed) stay zero: the term is added to
        // the log-probabilities of the positive ones, and their total mass is kept.
        let logp: Vec<Option<f64>> = probs
            .iter()
            .map(|&p| (p > 0.0).then(|| f64::from(p).ln()))
            .collect();
        let mut scale = f64::from(self.epsilon);
        for _ in 0..9 {
            let z: Vec<Option<f64>> = logp
                .iter()
                .zip(&dir)
                .map(|(l, d)| l.map(|l| l + scale * d))
                .collect();
            let m = z
                .iter()
                .flatten()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| v.map_or(0.0, |v| (v - m).exp())).collect();
            let s: f64 = e.iter().sum();
            let q: Vec<f32> = e.iter().map(|v| (mass * v / s) as f32).collect();
            let kept = q
                .iter()
                .zip(probs.iter())
                .all(|(a, b)| (*a > 0.0) == (*b > 0.0));
            if kept && unique_max(&q, top) {
                probs.copy_from_slice(&q);
                return true;
            }
            scale /= 2.0;
        }
        false
    }

    /// Tests `suspect` for the fingerprint on `n` keyed inputs drawn uniformly from
    /// `[range.0, range.1]` (in batches of `batch`), against `reference` (the protected model
    /// without the fingerprint) when given. `Ok(None)` when the suspect or the reference does
    /// not answer full probability vectors.
    pub fn verify(
        &self,
        suspect: &mut dyn Oracle,
        mut reference: Option<&mut dyn Oracle>,
        n: usize,
        range: (f32, f32),
        batch: usize,
    ) -> Result<Option<FingerprintResult>, DefenseError> {
        let (lo, hi) = range;
        if n == 0 {
            return Err(DefenseError::Verify(
                "the fingerprint test needs at least one query".into(),
            ));
        }
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(DefenseError::Verify(format!(
                "fingerprint input range must be finite with lo < hi, got [{lo}, {hi}]"
            )));
        }
        let shape = suspect.input_shape();
        let d: usize = shape.iter().product();
        let c = suspect.num_classes();
        if d == 0 || c < 2 {
            return Err(DefenseError::Verify(format!(
                "the suspect takes shape {shape:?} and has {c} classes"
            )));
        }
        check_reference(reference.as_deref(), &shape, c)?;
        let centre = 0.5 * (f64::from(lo) + f64::from(hi));
        let sub = self.key.derive("linear-fingerprint/inputs");
        let mut rng = ChaCha20Rng::from_seed(*sub.expose());
        let mut a = vec![0.0f64; c * d];
        let mut a_floored = vec![0.0f64; c * d];
        let mut done = 0usize;
        while done < n {
            let b = batch.max(1).min(n - done);
            let data: Vec<f32> = (0..b * d).map(|_| rng.gen_range(lo..=hi)).collect();
            let mut s = vec![b];
            s.extend_from_slice(&shape);
            let x = Tensor::new(s, data).map_err(mamori_core::ModelError::from)?;
            let Some(sus) = full_probabilities(suspect, &x, "suspect", b, c)? else {
                return Ok(None);
            };
            let refp = match reference.as_deref_mut() {
                Some(r) => match full_probabilities(r, &x, "reference", b, c)? {
                    Some(p) => Some(p),
                    None => return Ok(None),
                },
                None => None,
            };
            for i in 0..b {
                let xi = x.row(i);
                for (acc, floor) in [(&mut a, RAW_FLOOR), (&mut a_floored, VERIFY_FLOOR)] {
                    let mut z = centred_log(sus.row(i), floor);
                    if let Some(rp) = &refp {
                        for (v, r) in z.iter_mut().zip(centred_log(rp.row(i), floor)) {
                            *v -= r;
                        }
                    }
                    for (cls, zc) in z.iter().enumerate() {
                        let arow = &mut acc[cls * d..(cls + 1) * d];
                        for (acc, &xv) in arow.iter_mut().zip(xi) {
                            *acc += zc * (f64::from(xv) - centre);
                        }
                    }
                }
            }
            done += b;
        }
        let k = self.matrix(d, c);
        let used = |i: &usize| self.uses(i % d);
        let standardised = |a: &[f64]| {
            let t: f64 = (0..c * d)
                .filter(used)
                .map(|i| f64::from(k[i]) * a[i])
                .sum::<f64>()
                / (d as f64).sqrt();
            let var: f64 = (0..c * d).filter(used).map(|i| a[i] * a[i]).sum::<f64>() / d as f64;
            if var > 0.0 {
                t / var.sqrt()
            } else {
                0.0
            }
        };
        let (z, z_floored) = (standardised(&a), standardised(&a_floored));
        let ln_p = (std::f64::consts::LN_2
            + normal_upper_tail_ln(z).min(normal_upper_tail_ln(z_floored)))
        .min(0.0);
        Ok(Some(FingerprintResult {
            queried: n,
            z,
            z_floored: Some(z_floored),
            p_value: ln_p.exp(),
            log10_p_value: ln_p / std::f64::consts::LN_10,
        }))
    }
}

/// An error unless `reference` (when given) takes the suspect's input `shape` and has its `c`
/// classes.
pub(crate) fn check_reference(
    reference: Option<&dyn Oracle>,
    shape: &[usize],
    c: usize,
) -> Result<(), DefenseError> {
    match reference {
        Some(r) if r.input_shape() != shape || r.num_classes() != c => {
            Err(DefenseError::Verify(format!(
                "the reference takes shape {:?} with {} classes, the suspect {shape:?} with {c}",
                r.input_shape(),
                r.num_classes()
            )))
        }
        _ => Ok(()),
    }
}

/// The answer's probabilities for `x`, `None` unless they are full probability vectors.
pub(crate) fn full_probabilities(
    o: &mut dyn Oracle,
    x: &Tensor,
    who: &str,
    b: usize,
    c: usize,
) -> Result<Option<Tensor>, DefenseError> {
    let ans = o.query(x)?;
    if ans.disclosure != Disclosure::Probabilities {
        return Ok(None);
    }
    if ans.probs.shape() != [b, c] {
        return Err(DefenseError::Verify(format!(
            "the {who} answered scores of shape {:?} for {b} inputs and {c} classes",
            ans.probs.shape()
        )));
    }
    Ok(Some(ans.probs))
}

/// Log-probabilities floored at `floor` (non-finite values count as 1) centred across
/// classes.
fn centred_log(row: &[f32], floor: f64) -> Vec<f64> {
    let mut z: Vec<f64> = row
        .iter()
        .map(|&p| {
            if p.is_finite() {
                f64::from(p).max(floor).ln()
            } else {
                0.0
            }
        })
        .collect();
    let mean = z.iter().sum::<f64>() / z.len().max(1) as f64;
    for v in &mut z {
        *v -= mean;
    }
    z
}

/// Whether `top` is the only index holding the maximum of `q`.
fn unique_max(q: &[f32], top: usize) -> bool {
    q.iter().enumerate().all(|(j, &v)| j == top || v < q[top])
}

/// `ln P(N(0, 1) ≥ z)`: from `erfc` while it is representable, then from the asymptotic
/// series `φ(z)/z · (1 − 1/z² + 3/z⁴ − 15/z⁶)` (relative error below `1e-9` for `z ≥ 30`).
pub fn normal_upper_tail_ln(z: f64) -> f64 {
    if !z.is_finite() {
        return if z > 0.0 { f64::NEG_INFINITY } else { 0.0 };
    }
    if z < 30.0 {
        return (0.5 * libm::erfc(z / std::f64::consts::SQRT_2))
            .ln()
            .min(0.0);
    }
    let z2 = z * z;
    let series = 1.0 - 1.0 / z2 + 3.0 / (z2 * z2) - 15.0 / (z2 * z2 * z2);
    -0.5 * z2 - z.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mamori_core::{OracleAnswer, OracleError};

    fn fp(seed: u8, eps: f32) -> LinearFingerprint {
        LinearFingerprint::new(SecretKey::from_bytes([seed; 32]), eps).unwrap()
    }

    #[test]
    fn normal_tail_matches_known_values_and_stays_finite() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_931_457_05),
            (3.0, 0.001_349_898_031_630_094_6),
            (-2.0, 0.977_249_868_051_820_8),
        ] {
            let got = normal_upper_tail_ln(z).exp();
            assert!((got - p).abs() < 1e-12 * p.max(1e-3), "z {z}: {got} vs {p}");
        }
        // Both branches agree where they meet, and far tails stay finite in log space.
        let a = (0.5 * libm::erfc(30.0 / std::f64::consts::SQRT_2)).ln();
        let b = normal_upper_tail_ln(30.0);
        assert!((a - b).abs() < 1e-6, "{a} {b}");
        assert!(normal_upper_tail_ln(100.0) < -5000.0 && normal_upper_tail_ln(100.0).is_finite());
        assert_eq!(normal_upper_tail_ln(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn applied_answers_keep_the_label_stay_distributions_and_are_deterministic() {
        let f = fp(1, 2.0);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut changed = 0;
        for _ in 0..300 {
            let x: Vec<f32> = (0..64).map(|_| rng.gen::<f32>()).collect();
            let raw: Vec<f32> = (0..10).map(|_| rng.gen::<f32>().powi(3) + 1e-4).collect();
            let s: f32 = raw.iter().sum();
            let p: Vec<f32> = raw.iter().map(|v| v / s).collect();
            let mut q = p.clone();
            let applied = f.apply(&x, &mut q);
            assert_eq!(argmax(&q), argmax(&p));
            assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(q.iter().all(|v| *v > 0.0));
            let mut again = p.clone();
            assert_eq!(f.apply(&x, &mut again), applied);
            assert_eq!(again, q);
            if applied && q != p {
                changed += 1;
            }
        }
        assert!(changed > 250, "{changed}");
        // Zeros (top-k, underflow) stay zero and the positive mass is kept; one-hot answers,
        // ties at the top and one-class answers are left alone.
        let mut changed_top_k = 0;
        for i in 0..50 {
            let x: Vec<f32> = (0..4).map(|j| ((i * 7 + j) % 11) as f32 / 10.0).collect();
            let mut z = vec![0.5, 0.2, 0.0, 0.1];
            if f.apply(&x, &mut z) {
                changed_top_k += 1;
                assert_eq!(z[2], 0.0);
                assert!((z.iter().sum::<f32>() - 0.8).abs() < 1e-5, "{z:?}");
                assert_eq!(argmax(&z), 0);
            }
        }
        assert!(changed_top_k > 40, "{changed_top_k}");
        for mut p in [
            vec![1.0, 0.0, 0.0],
            vec![0.4, 0.4, 0.2],
            vec![0.5, f32::NAN, 0.5],
        ] {
            let before = p.clone();
            assert!(!f.apply(&[0.5; 4], &mut p));
            assert_eq!(format!("{p:?}"), format!("{before:?}"));
        }
        assert!(!f.apply(&[0.5; 4], &mut [1.0]));
    }

    #[test]
    fn bad_settings_are_errors() {
        for e in [0.0, -1.0, f32::NAN, 25.0] {
            assert!(LinearFingerprint::new(SecretKey::from_bytes([1; 32]), e).is_err());
        }
        let f = fp(1, 0.5);
        assert!(format!("{f:?}").contains("redacted"));
        let mut o = Linear::new(vec![0.0; 8 * 3], 8, 3);
        assert!(f.verify(&mut o, None, 0, (0.0, 1.0), 16).is_err());
        assert!(f.verify(&mut o, None, 10, (1.0, 0.0), 16).is_err());
        assert!(f.verify(&mut o, None, 10, (0.0, f32::NAN), 16).is_err());
        let mut wrong = Linear::new(vec![0.0; 8 * 4], 8, 4);
        let e = f
            .verify(&mut o, Some(&mut wrong), 10, (0.0, 1.0), 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reference"), "{e}");
    }

    /// A softmax regression `softmax(W x)` answering full probabilities, or labels only.
    struct Linear {
        w: Vec<f32>,
        d: usize,
        c: usize,
        labels_only: bool,
    }

    impl Linear {
        fn new(w: Vec<f32>, d: usize, c: usize) -> Self {
            Linear {
                w,
                d,
                c,
                labels_only: false,
            }
        }
        fn probs(&self, x: &[f32]) -> Vec<f32> {
            let z: Vec<f64> = self
                .w
                .chunks(self.d)
                .map(|r| r.iter().zip(x).map(|(a, b)| f64::from(a * b)).sum())
                .collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| (v / s) as f32).collect()
        }
    }

    impl Oracle for Linear {
        fn input_shape(&self) -> Vec<usize> {
            vec![self.d]
        }
        fn num_classes(&self) -> usize {
            self.c
        }
        fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
            let data: Vec<f32> = x.rows().flat_map(|r| self.probs(r)).collect();
            let probs = Tensor::new(vec![x.batch_size(), self.c], data).unwrap();
            Ok(OracleAnswer {
                labels: probs.argmax_rows(),
                probs,
                disclosure: if self.labels_only {
                    Disclosure::Label
                } else {
                    Disclosure::Probabilities
                },
            })
        }
        fn queries_used(&self) -> u64 {
            0
        }
        fn budget(&self) -> Option<u64> {
            None
        }
    }

    /// Least squares of the answers' centred log-probabilities on the inputs (Tramèr-style
    /// equation solving), solved by gradient descent on the normal equations.
    fn least_squares_thief(f: &LinearFingerprint, victim: &Linear, n: usize) -> Linear {
        let (d, c) = (victim.d, victim.c);
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..n {
            let x: Vec<f32> = (0..d).map(|_| rng.gen::<f32>()).collect();
            let mut p = victim.probs(&x);
            f.apply(&x, &mut p);
            let l: Vec<f64> = p.iter().map(|v| f64::from(*v).ln()).collect();
            let m = l.iter().sum::<f64>() / c as f64;
            ys.push(l.iter().map(|v| v - m).collect::<Vec<_>>());
            xs.push(x);
        }
        // Normal equations (XᵀX) W_cᵀ = Xᵀ y_c, solved by Gauss–Jordan on d × d.
        let mut xtx = vec![0.0f64; d * d];
        for x in &xs {
            for i in 0..d {
                for j in 0..d {
                    xtx[i * d + j] += f64::from(x[i] * x[j]);
                }
            }
        }
        let mut w = vec![0.0f32; c * d];
        for cls in 0..c {
            let mut a = xtx.clone();
            let mut b: Vec<f64> = (0..d)
                .map(|i| {
                    xs.iter()
                        .zip(&ys)
                        .map(|(x, y)| f64::from(x[i]) * y[cls])
                        .sum()
                })
                .collect();
            for col in 0..d {
                let piv = a[col * d + col];
                for j in 0..d {
                    a[col * d + j] /= piv;
                }
                b[col] /= piv;
                for row in 0..d {
                    if row != col {
                        let f = a[row * d + col];
                        for j in 0..d {
                            a[row * d + j] -= f * a[col * d + j];
                        }
                        b[row] -= f * b[col];
                    }
                }
            }
            for i in 0..d {
                w[cls * d + i] = b[i] as f32;
            }
        }
        Linear::new(w, d, c)
    }

    /// A least-squares copy of a fingerprinted linear victim carries the fingerprint
    /// (p < 1e-9, against the victim as reference); the victim itself, and the copy checked
    /// with another key, do not; a label-only suspect cannot be tested. Without the reference
    /// the copy's own weights drown the signal (the module documentation's reason).
    #[test]
    fn a_least_squares_copy_carries_the_fingerprint_and_independent_models_do_not() {
        let (d, c) = (20, 5);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let w: Vec<f32> = (0..c * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut victim = Linear::new(w, d, c);
        let f = fp(9, 0.5);
        let mut copy = least_squares_thief(&f, &victim, 400);
        let r = f
            .verify(&mut copy, Some(&mut victim), 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(r.p_value < 1e-9, "{r:?}");
        // Both statistics ran; the p-value is twice the smaller tail.
        let zf = r.z_floored.expect("the floored statistic");
        let want = (2.0
            * normal_upper_tail_ln(r.z)
                .min(normal_upper_tail_ln(zf))
                .exp())
        .min(1.0);
        assert!((r.p_value / want - 1.0).abs() < 1e-9, "{r:?} vs {want}");
        let mut v = Linear::new(victim.w.clone(), d, c);
        let r = f
            .verify(&mut v, Some(&mut victim), 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(r.z.abs() < 1e-6, "the victim against itself: {r:?}");
        assert!(r.z_floored.unwrap().abs() < 1e-6, "{r:?}");
        let r = f
            .verify(&mut v, None, 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(r.p_value > 1e-4, "{r:?}");
        let other = fp(10, 0.5);
        let r = other
            .verify(&mut copy, Some(&mut victim), 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(r.p_value > 1e-4, "{r:?}");
        let strong = f
            .verify(&mut copy, Some(&mut victim), 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        let weak = f
            .verify(&mut copy, None, 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(weak.z < strong.z / 2.0, "{weak:?} vs {strong:?}");
        copy.labels_only = true;
        assert_eq!(
            f.verify(&mut copy, None, 100, (0.0, 1.0), 64).unwrap(),
            None
        );
    }

    /// Confined to some input dimensions, the term ignores the others (an input that is zero
    /// on them keeps its answer) and a least-squares copy still carries it.
    #[test]
    fn a_fingerprint_on_quiet_dimensions_leaves_the_other_dimensions_alone() {
        let (d, c) = (40, 5);
        // The even dimensions (given out of order, with a repeat).
        let mut dims: Vec<u32> = (0..d as u32).filter(|j| j % 2 == 0).rev().collect();
        dims.push(0);
        let f = fp(9, 4.0).with_dims(dims);
        assert_eq!(f.dims().len(), 20);
        assert_eq!(f.dims()[..3], [0, 2, 4]);
        // Zero on every fingerprinted dimension: the answer is unchanged.
        let mut x: Vec<f32> = (0..d).map(|j| if j % 2 == 0 { 0.0 } else { 0.7 }).collect();
        let base = vec![0.4f32, 0.3, 0.2, 0.05, 0.05];
        let mut p = base.clone();
        f.apply(&x, &mut p);
        assert_eq!(p, base);
        x[2] = 1.0;
        let mut q = base.clone();
        assert!(f.apply(&x, &mut q) && q != base);
        // The test statistic is bounded by √((c − 1)·m) here (m = 20 dimensions): z ≈ 8.9 for
        // a perfect copy.
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let w: Vec<f32> = (0..c * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut victim = Linear::new(w, d, c);
        let mut copy = least_squares_thief(&f, &victim, 800);
        let r = f
            .verify(&mut copy, Some(&mut victim), 2000, (0.0, 1.0), 128)
            .unwrap()
            .unwrap();
        assert!(r.p_value < 1e-9, "{r:?}");
    }

    /// Under H0 each statistic's p-value is uniform: 300 independent random linear suspects,
    /// each tested with its own key (half of them against an independent reference), reject
    /// at rate a (± sampling slack) for every level a, with either floor; the test's
    /// Bonferroni p-value never rejects more often than a.
    #[test]
    fn independent_suspects_give_uniform_p_values() {
        let (d, c) = (12, 4);
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let reps = 300;
        let (mut ps, mut ps_raw, mut ps_floored) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..reps {
            let w: Vec<f32> = (0..c * d).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let mut s = Linear::new(w, d, c);
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let f = LinearFingerprint::new(SecretKey::from_bytes(key), 0.5).unwrap();
            let w: Vec<f32> = (0..c * d).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let mut reference = Linear::new(w, d, c);
            let r = if i % 2 == 0 {
                f.verify(&mut s, Some(&mut reference), 200, (0.0, 1.0), 200)
            } else {
                f.verify(&mut s, None, 200, (0.0, 1.0), 200)
            };
            let r = r.unwrap().unwrap();
            ps.push(r.p_value);
            ps_raw.push(normal_upper_tail_ln(r.z).exp());
            ps_floored.push(normal_upper_tail_ln(r.z_floored.unwrap()).exp());
        }
        for a in [0.01, 0.05, 0.2, 0.5] {
            let slack = 4.0 * (a * (1.0 - a) / reps as f64).sqrt();
            let share = |ps: &[f64]| ps.iter().filter(|&&p| p <= a).count() as f64 / reps as f64;
            for one in [&ps_raw, &ps_floored] {
                let s = share(one);
                assert!(s <= a + slack, "P(p ≤ {a}) = {s}");
                assert!(s >= a - slack, "P(p ≤ {a}) = {s} (not uniform)");
            }
            let s = share(&ps);
            assert!(s <= a + slack, "Bonferroni: P(p ≤ {a}) = {s}");
        }
    }
}
