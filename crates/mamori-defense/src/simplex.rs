//! Helpers keeping answers on the probability simplex.

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Replaces non-finite or negative entries by 0 and scales to sum 1. An all-zero vector
/// becomes uniform.
pub fn normalise(v: &mut [f32]) {
    let mut s = 0.0f64;
    for x in v.iter_mut() {
        if !x.is_finite() || *x < 0.0 {
            *x = 0.0;
        }
        s += *x as f64;
    }
    if s <= 0.0 {
        let u = 1.0 / v.len().max(1) as f32;
        v.iter_mut().for_each(|x| *x = u);
        return;
    }
    v.iter_mut().for_each(|x| *x = (*x as f64 / s) as f32);
}

/// Euclidean projection onto the probability simplex (Duchi et al., ICML 2008, Fig. 1):
/// the closest point `p` to `v` with `p ≥ 0` and `Σp = 1`.
pub fn project_to_simplex(v: &mut [f32]) {
    if v.is_empty() {
        return;
    }
    for x in v.iter_mut() {
        if !x.is_finite() {
            *x = 0.0;
        }
    }
    let mut u: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    u.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let mut cum = 0.0;
    let mut theta = 0.0;
    for (j, &uj) in u.iter().enumerate() {
        cum += uj;
        let t = (cum - 1.0) / (j + 1) as f64;
        if uj - t > 0.0 {
            theta = t;
        }
    }
    for x in v.iter_mut() {
        *x = ((*x as f64 - theta).max(0.0)) as f32;
    }
    // Remove the last rounding error of the f32 conversion.
    normalise(v);
}

/// Whether `v` is a probability vector up to `tol`: finite, non-negative, summing to 1.
pub fn is_distribution(v: &[f32], tol: f32) -> bool {
    !v.is_empty()
        && v.iter().all(|x| x.is_finite() && *x >= 0.0)
        && (v.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() <= tol as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_of_a_distribution_is_itself() {
        let mut v = [0.2, 0.3, 0.5];
        project_to_simplex(&mut v);
        assert!((v[0] - 0.2).abs() < 1e-6 && (v[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn projection_clips_and_shifts() {
        let mut v = [1.5, -0.5, 0.2];
        project_to_simplex(&mut v);
        assert!(is_distribution(&v, 1e-6));
        assert!((v[0] - 1.0).abs() < 1e-6, "{v:?}");
        let mut w = [0.5, 0.5, 0.5, f32::NAN];
        project_to_simplex(&mut w);
        assert!(is_distribution(&w, 1e-6));
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn normalise_handles_zeros() {
        let mut v = [0.0, 0.0];
        normalise(&mut v);
        assert_eq!(v, [0.5, 0.5]);
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
    }
}
