//! Safe matrix-multiply wrapper over the `gemm` crate.
//!
//! `gemm::gemm` takes raw pointers and strides; this module checks every index a call can touch
//! against the slice lengths before calling it, so the rest of the engine stays safe code.

#![allow(unsafe_code)]

use gemm::Parallelism;

/// A read-only strided matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows × cols`.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows × cols` matrix stored in `data` (so the view is
    /// `cols × rows`).
    pub fn rm_t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }

    fn check(&self, what: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "matmul: {what} view {}x{} (rs {}, cs {}) exceeds its buffer of {}",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `dst (row-major m × n) = [dst +] lhs (m × k) · rhs (k × n)`, on the rayon pool.
///
/// With `accumulate`, the product is added to `dst`; otherwise `dst` is overwritten.
/// Panics (an engine bug, never a user error) if the shapes or buffers do not fit.
pub(crate) fn matmul(dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    assert!(dst.len() >= m * n, "matmul: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    lhs.check("lhs");
    rhs.check("rhs");
    let t = rayon::current_num_threads();
    let par = if t > 1 {
        Parallelism::Rayon(t)
    } else {
        Parallelism::None
    };
    // SAFETY: every index `gemm` touches is `r * rs + c * cs` with `r < rows`, `c < cols` of
    // the respective matrix; the checks above prove those lie inside each slice, and `dst`
    // (row-major, m × n) was checked to hold `m * n` values. The slices do not alias: `dst`
    // is borrowed mutably while `lhs` and `rhs` are shared borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    c[i * n + j] += a[i * k + l] * b[l * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_including_transposed_views() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut got = vec![0.0; m * n];
        matmul(&mut got, Mat::rm(&a, m, k), Mat::rm(&b, k, n), false);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // b transposed stored row-major as n × k, viewed back as k × n.
        let mut bt = vec![0.0; n * k];
        for l in 0..k {
            for j in 0..n {
                bt[j * k + l] = b[l * n + j];
            }
        }
        let mut got2 = vec![1.0; m * n];
        matmul(&mut got2, Mat::rm(&a, m, k), Mat::rm_t(&bt, n, k), true);
        for (x, y) in got2.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-5);
        }
    }
}
