//! Small dense linear algebra in `f64` for equation-solving attacks.

use crate::error::AttackError;

/// Least-squares solution of `A x = b` (`a` is `m × n` row-major, `m ≥ n`) by Householder
/// QR. Fails when `A` is rank deficient (a pivot below `1e-12` times the largest column norm).
pub fn lstsq(a: &[f64], b: &[f64], m: usize, n: usize) -> Result<Vec<f64>, AttackError> {
    if a.len() != m * n || b.len() != m {
        return Err(AttackError::Numerical(format!(
            "lstsq: A has {} values (expected {m}×{n}), b has {} (expected {m})",
            a.len(),
            b.len()
        )));
    }
    if m < n {
        return Err(AttackError::Numerical(format!(
            "lstsq: {m} equations cannot determine {n} unknowns"
        )));
    }
    // Column-major copy for cache-friendly Householder updates.
    let mut q = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            q[j * m + i] = a[i * n + j];
        }
    }
    let mut rhs = b.to_vec();
    let scale = (0..n)
        .map(|j| {
            q[j * m..(j + 1) * m]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
        })
        .fold(0.0f64, f64::max)
        .max(1e-300);
    let mut diag = vec![0.0; n];
    for k in 0..n {
        let col = &mut q[k * m..(k + 1) * m];
        let norm = col[k..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm <= 1e-12 * scale {
            return Err(AttackError::Numerical(format!(
                "lstsq: the system is rank deficient (column {k})"
            )));
        }
        let alpha = if col[k] > 0.0 { -norm } else { norm };
        col[k] -= alpha;
        let vnorm2: f64 = col[k..].iter().map(|v| v * v).sum();
        diag[k] = alpha;
        let v: Vec<f64> = col[k..].to_vec();
        // Apply H = I - 2 v vᵀ / (vᵀv) to the remaining columns and to rhs.
        for j in k + 1..n {
            let cj = &mut q[j * m..(j + 1) * m];
            let dot: f64 = v.iter().zip(&cj[k..]).map(|(a, b)| a * b).sum();
            let f = 2.0 * dot / vnorm2;
            for (c, vv) in cj[k..].iter_mut().zip(&v) {
                *c -= f * vv;
            }
        }
        let dot: f64 = v.iter().zip(&rhs[k..]).map(|(a, b)| a * b).sum();
        let f = 2.0 * dot / vnorm2;
        for (c, vv) in rhs[k..].iter_mut().zip(&v) {
            *c -= f * vv;
        }
    }
    // Back substitution with R (diag on the diagonal, q above it).
    let mut x = vec![0.0; n];
    for k in (0..n).rev() {
        let mut s = rhs[k];
        for j in k + 1..n {
            s -= q[j * m + k] * x[j];
        }
        x[k] = s / diag[k];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_square_and_overdetermined() {
        // 2x + y = 5, x - y = 1  →  x = 2, y = 1
        let x = lstsq(&[2.0, 1.0, 1.0, -1.0], &[5.0, 1.0], 2, 2).unwrap();
        assert!((x[0] - 2.0).abs() < 1e-12 && (x[1] - 1.0).abs() < 1e-12);
        // Consistent overdetermined system.
        let a = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let x = lstsq(&a, &[3.0, 4.0, 7.0], 3, 2).unwrap();
        assert!((x[0] - 3.0).abs() < 1e-12 && (x[1] - 4.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_systems() {
        assert!(lstsq(&[1.0, 2.0, 2.0, 4.0], &[1.0, 2.0], 2, 2).is_err());
        assert!(lstsq(&[1.0, 2.0], &[1.0], 1, 2).is_err());
        assert!(lstsq(&[1.0], &[1.0, 2.0], 2, 1).is_err());
    }
}
