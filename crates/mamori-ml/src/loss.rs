//! Softmax cross-entropy (hard labels and soft targets) and the logit-space gradients of the
//! input-gradient objectives.

/// Which scalar of a sample's logits an input gradient differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogitObjective {
    /// Cross-entropy of softmax(logits) against the class.
    CrossEntropy,
    /// The class's logit.
    Logit,
    /// The class's softmax probability.
    Probability,
}

/// Log-sum-exp of a row and the row's softmax written into `p`.
fn softmax_into(z: &[f32], p: &mut [f32]) -> f64 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0f64;
    for (pi, &zi) in p.iter_mut().zip(z) {
        let e = ((zi - m) as f64).exp();
        *pi = e as f32;
        s += e;
    }
    for pi in p.iter_mut() {
        *pi = (*pi as f64 / s) as f32;
    }
    m as f64 + s.ln()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Softmax cross-entropy against hard labels. Writes `scale · ∂loss/∂logits` into `dlogits`
/// and returns `(summed loss, number of correct argmax predictions)`.
pub(crate) fn xent_labels(
    logits: &[f32],
    labels: &[usize],
    classes: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, usize) {
    let mut loss = 0.0;
    let mut correct = 0;
    for ((z, d), &y) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        let lse = softmax_into(z, d);
        loss += lse - z[y] as f64;
        correct += usize::from(argmax(z) == y);
        d[y] -= 1.0;
        for v in d.iter_mut() {
            *v *= scale;
        }
    }
    (loss, correct)
}

/// Softmax cross-entropy against soft targets `t` (rows of probabilities):
/// `loss = −Σ_j t_j log p_j`, `∂loss/∂z = p·Σt − t`. Accuracy is against `argmax t`.
pub(crate) fn xent_soft(
    logits: &[f32],
    targets: &[f32],
    classes: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, usize) {
    soft_rows(logits, targets, classes, dlogits, |z, t, d| {
        let lse = softmax_into(z, d);
        let mut loss = 0.0;
        let mut tsum = 0.0f32;
        for j in 0..classes {
            loss += t[j] as f64 * (lse - z[j] as f64);
            tsum += t[j];
        }
        for j in 0..classes {
            d[j] = (d[j] * tsum - t[j]) * scale;
        }
        loss
    })
}

/// Runs `row(z, t, d)` — which writes one sample's scaled logit gradient into `d` and returns
/// its loss — over every (logits, soft target, gradient) row; returns `(summed loss, number of
/// rows whose logits' argmax is the target's argmax)`. Shared by the soft-target losses.
fn soft_rows(
    logits: &[f32],
    targets: &[f32],
    classes: usize,
    dlogits: &mut [f32],
    mut row: impl FnMut(&[f32], &[f32], &mut [f32]) -> f64,
) -> (f64, usize) {
    let mut loss = 0.0;
    let mut correct = 0;
    for ((z, d), t) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(targets.chunks_exact(classes))
    {
        loss += row(z, t, d);
        correct += usize::from(argmax(z) == argmax(t));
    }
    (loss, correct)
}

/// Smallest target probability whose logarithm [`logit_mse_soft`] takes; smaller targets
/// (including exact zeros) are clamped to it.
pub(crate) const LOG_TARGET_FLOOR: f32 = 1e-8;

/// Logit regression against soft targets: the softmax is inverted (`log t`, clamped at
/// [`LOG_TARGET_FLOOR`]) and the substitute's logits are fitted to it by squared error, up to
/// the additive constant the softmax cannot see: `loss = ½‖(z − z̄) − (log t − mean log t)‖²`.
/// Its gradient is `(z − z̄) − (log t − mean log t)` (already centred). Accuracy is against
/// `argmax t`.
pub(crate) fn logit_mse_soft(
    logits: &[f32],
    targets: &[f32],
    classes: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, usize) {
    let k = classes as f64;
    let lt = |v: f32| (v.max(LOG_TARGET_FLOOR) as f64).ln();
    soft_rows(logits, targets, classes, dlogits, |z, t, d| {
        let zm = z.iter().map(|&v| v as f64).sum::<f64>() / k;
        let tm = t.iter().map(|&v| lt(v)).sum::<f64>() / k;
        let mut loss = 0.0;
        for j in 0..classes {
            let r = (z[j] as f64 - zm) - (lt(t[j]) - tm);
            loss += 0.5 * r * r;
            d[j] = r as f32 * scale;
        }
        loss
    })
}

/// Probability regression against soft targets: `loss = ½‖softmax(z) − t‖²`, gradient
/// `∂loss/∂z_j = p_j (e_j − Σ_k p_k e_k)` with `e = p − t`. Accuracy is against `argmax t`.
pub(crate) fn prob_mse_soft(
    logits: &[f32],
    targets: &[f32],
    classes: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, usize) {
    soft_rows(logits, targets, classes, dlogits, |z, t, d| {
        softmax_into(z, d);
        let mut loss = 0.0;
        let mut pe = 0.0f64;
        for j in 0..classes {
            let e = (d[j] - t[j]) as f64;
            loss += 0.5 * e * e;
            pe += d[j] as f64 * e;
        }
        for j in 0..classes {
            let p = d[j] as f64;
            d[j] = (p * ((p - t[j] as f64) - pe)) as f32 * scale;
        }
        loss
    })
}

/// Gradient of each sample's objective w.r.t. its logits (unscaled: one sample's objective,
/// not a batch mean).
pub(crate) fn logit_gradient(
    logits: &[f32],
    classes_of: &[usize],
    classes: usize,
    objective: LogitObjective,
    dlogits: &mut [f32],
) {
    for ((z, d), &c) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(classes_of)
    {
        match objective {
            LogitObjective::CrossEntropy => {
                softmax_into(z, d);
                d[c] -= 1.0;
            }
            LogitObjective::Logit => {
                d.fill(0.0);
                d[c] = 1.0;
            }
            LogitObjective::Probability => {
                // ∂p_c/∂z_j = p_c (δ_cj − p_j)
                softmax_into(z, d);
                let pc = d[c];
                for v in d.iter_mut() {
                    *v *= -pc;
                }
                d[c] += pc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_and_soft_losses_agree_on_one_hot_targets() {
        let z = [1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
        let (mut d1, mut d2) = ([0.0; 6], [0.0; 6]);
        let (l1, c1) = xent_labels(&z, &[2, 0], 3, 0.5, &mut d1);
        let t = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let (l2, c2) = xent_soft(&z, &t, 3, 0.5, &mut d2);
        assert!((l1 - l2).abs() < 1e-9);
        assert_eq!((c1, c2), (1, 1));
        for (a, b) in d1.iter().zip(&d2) {
            assert!((a - b).abs() < 1e-7);
        }
        // Known value: -log softmax([1,-2,0.5])[2].
        let lse0 = (1f64.exp() + (-2f64).exp() + 0.5f64.exp()).ln();
        let lse1 = (3f64.exp() + 1.0 + (-1f64).exp()).ln();
        assert!((l1 - ((lse0 - 0.5) + (lse1 - 3.0))).abs() < 1e-6);
    }

    type SoftLossFn = fn(&[f32], &[f32], usize, f32, &mut [f32]) -> (f64, usize);

    fn check_gradient(f: SoftLossFn, z: [f32; 4], t: [f32; 4]) {
        let mut d = [0.0; 4];
        f(&z, &t, 4, 1.0, &mut d);
        for j in 0..4 {
            let eps = 1e-3;
            let (mut zp, mut zm) = (z, z);
            zp[j] += eps;
            zm[j] -= eps;
            let mut tmp = [0.0; 4];
            let lp = f(&zp, &t, 4, 1.0, &mut tmp).0;
            let lm = f(&zm, &t, 4, 1.0, &mut tmp).0;
            let num = (lp - lm) / (2.0 * eps as f64);
            assert!((num - d[j] as f64).abs() < 1e-3, "j={j}: {num} vs {}", d[j]);
        }
    }

    #[test]
    fn soft_loss_gradient_matches_finite_differences() {
        check_gradient(xent_soft, [0.3, -1.2, 2.0, 0.7], [0.1, 0.2, 0.6, 0.1]);
    }

    #[test]
    fn regression_loss_gradients_match_finite_differences() {
        let z = [0.3f32, -1.2, 2.0, 0.7];
        let t = [0.1f32, 0.2, 0.6, 0.1];
        check_gradient(logit_mse_soft, z, t);
        check_gradient(prob_mse_soft, z, t);
        // A zero target is clamped, not turned into -inf.
        check_gradient(logit_mse_soft, z, [0.0, 0.3, 0.7, 0.0]);
    }

    #[test]
    fn logit_regression_is_zero_at_the_inverted_softmax_up_to_a_constant() {
        let t = [0.1f32, 0.2, 0.6, 0.1];
        let z: Vec<f32> = t.iter().map(|v| v.ln() + 5.0).collect();
        let mut d = [0.0; 4];
        let (l, c) = logit_mse_soft(&z, &t, 4, 1.0, &mut d);
        assert!(l < 1e-10, "{l}");
        assert_eq!(c, 1);
        assert!(d.iter().all(|v| v.abs() < 1e-5), "{d:?}");
        let (l, _) = prob_mse_soft(&z, &t, 4, 1.0, &mut d);
        assert!(l < 1e-10, "{l}");
        // Away from it both losses are positive.
        let (l, c) = logit_mse_soft(&[0.0, 0.0, 0.0, 1.0], &t, 4, 1.0, &mut d);
        assert!(l > 0.1 && c == 0, "{l}");
    }
}
