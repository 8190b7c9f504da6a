//! Product quantisation of IVF residuals with asymmetric distance computation (IVFADC):
//! Jégou, Douze & Schmid, "Product quantization for nearest neighbor search", TPAMI 2011 —
//! §III (a vector split into `m` sub-vectors, each replaced by the index of its nearest of
//! [`KSUB`] sub-centroids learned by k-means; the *asymmetric* distance between a raw query and
//! a code is the sum of per-subspace distances read from tables computed once per query) and
//! §IV (the quantised vector is the residual `x − c` of the code to its coarse IVF centroid
//! `c`, so the sub-quantisers spend their precision on the distances inside a cell).
//!
//! The per-cell tables of §IV-B are avoided by expanding the squared distance of the query `q`
//! to a reconstructed code `c + r` (`r` the concatenated sub-centroids):
//!
//! `‖q − c − r‖² = ‖q − c‖² + (‖r‖² + 2⟨c, r⟩) − 2⟨q, r⟩`
//!
//! `‖q − c‖²` is the distance to the cell's centroid the IVF search computes anyway; the
//! bracket depends only on the code and its cell and is stored with the code (one `f32`,
//! [`ProductQuantizer::correction`]); `−2⟨q, r⟩ = Σ_s −2⟨q_s, r_s⟩` is read from one table of
//! `m × 256` entries per query ([`ProductQuantizer::table`], 8 KB for `m = 8`: it stays in L1),
//! the same for every cell. A code is then 8 bytes and one `f32` instead of `dim` floats, and
//! its distance `m + 1` loads and adds.
//!
//! The asymmetric distance equals the exact distance to the reconstructed code up to rounding
//! (test `adc_distance_is_the_distance_to_the_reconstruction`); [`crate::ivf`] only uses it
//! to pick a shortlist, whose exact distances (to the stored floats) are what a search
//! returns.

// The loops index coordinate-major tables by subspace spans; ranges read more plainly here.
#![allow(clippy::needless_range_loop)]

use crate::simd::Kernel;
use serde::{Deserialize, Serialize};

/// Sub-centroids per subspace (one byte per sub-vector).
pub(crate) const KSUB: usize = 256;

/// One table row: the contribution of each of a subspace's [`KSUB`] sub-centroids.
pub(crate) type Row = [f32; KSUB];

/// A trained product quantiser for `dim`-dimensional residuals split into `m` subspaces
/// (subspace `s` covers coordinates `s·dim/m .. (s+1)·dim/m`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProductQuantizer {
    dim: usize,
    m: usize,
    /// `dim × KSUB` values: `centroids[j·KSUB + i]` is coordinate `j` of sub-centroid `i` of
    /// the subspace holding coordinate `j` (coordinate-major, so the table and encoding loops
    /// run across the 256 sub-centroids and vectorise).
    centroids: Vec<f32>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ProductQuantizer {
    /// Trains `m` sub-quantisers of [`KSUB`] centroids on the `dim`-dimensional `samples`
    /// (concatenated): Lloyd's k-means per subspace, `iters` iterations, seeded with distinct
    /// sampled sub-vectors; an emptied centroid keeps its position. `None` when fewer than
    /// [`KSUB`] samples are given, `m` is 0 or exceeds `dim`.
    pub(crate) fn train(
        dim: usize,
        m: usize,
        samples: &[f32],
        iters: usize,
        rng: &mut u64,
    ) -> Option<Self> {
        crate::simd::vectorized(TrainKernel {
            dim,
            m,
            samples,
            iters,
            rng,
        })
    }

    /// [`ProductQuantizer::train`]'s body (inlined into the dispatched kernel).
    #[inline(always)]
    fn train_in(
        dim: usize,
        m: usize,
        samples: &[f32],
        iters: usize,
        rng: &mut u64,
    ) -> Option<Self> {
        if dim == 0 || m == 0 || m > dim || !samples.len().is_multiple_of(dim) {
            return None;
        }
        let n = samples.len() / dim;
        if n < KSUB {
            return None;
        }
        let mut pq = Self {
            dim,
            m,
            centroids: vec![0.0; dim * KSUB],
        };
        // Seeds: KSUB distinct samples (partial Fisher–Yates), the same for every subspace.
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in 0..KSUB {
            let j = i + (splitmix(rng) % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        for (i, &o) in order[..KSUB].iter().enumerate() {
            for j in 0..dim {
                pq.centroids[j * KSUB + i] = samples[o as usize * dim + j];
            }
        }
        let mut sums = vec![0.0f64; dim * KSUB];
        let mut counts = vec![0usize; m * KSUB];
        let mut dist = [0.0f32; KSUB];
        for _ in 0..iters {
            sums.fill(0.0);
            counts.fill(0);
            for x in samples.chunks_exact(dim) {
                for s in 0..m {
                    let (lo, hi) = pq.span(s);
                    let best = pq.nearest(&x[lo..hi], lo, &mut dist);
                    counts[s * KSUB + best] += 1;
                    for j in lo..hi {
                        sums[j * KSUB + best] += x[j] as f64;
                    }
                }
            }
            for s in 0..m {
                let (lo, hi) = pq.span(s);
                for i in 0..KSUB {
                    let cnt = counts[s * KSUB + i];
                    if cnt > 0 {
                        for j in lo..hi {
                            pq.centroids[j * KSUB + i] = (sums[j * KSUB + i] / cnt as f64) as f32;
                        }
                    }
                }
            }
        }
        Some(pq)
    }

    /// Subspaces.
    pub(crate) fn m(&self) -> usize {
        self.m
    }

    /// Coordinates `lo..hi` of subspace `s`.
    #[inline(always)]
    fn span(&self, s: usize) -> (usize, usize) {
        (s * self.dim / self.m, (s + 1) * self.dim / self.m)
    }

    /// The nearest sub-centroid to the sub-vector `x` (coordinates `lo..lo + x.len()`), ties to
    /// the lower index; `dist` is scratch.
    #[inline(always)]
    fn nearest(&self, x: &[f32], lo: usize, dist: &mut [f32; KSUB]) -> usize {
        dist.fill(0.0);
        for (t, &xj) in x.iter().enumerate() {
            let col = &self.centroids[(lo + t) * KSUB..(lo + t + 1) * KSUB];
            for i in 0..KSUB {
                let d = col[i] - xj;
                dist[i] += d * d;
            }
        }
        // The least value by a branch-free fold (vectorised), then its first position.
        let least = dist
            .iter()
            .fold(f32::INFINITY, |m, &d| if d < m { d } else { m });
        dist.iter().position(|&d| d == least).unwrap_or(0)
    }

    /// The code of residual `r` (`m` bytes, written to `out`), and its correction term
    /// `‖r̂‖² + 2⟨c, r̂⟩` for the cell centroid `c` (`r̂` the reconstructed residual).
    pub(crate) fn encode(&self, r: &[f32], c: &[f32], out: &mut [u8]) -> f32 {
        crate::simd::vectorized(EncodeKernel {
            pq: self,
            r,
            c,
            out,
        })
    }

    /// The correction term of `code` in the cell of centroid `c`: `‖r̂‖² + 2⟨c, r̂⟩`.
    #[inline(always)]
    pub(crate) fn correction(&self, code: &[u8], c: &[f32]) -> f32 {
        let mut acc = 0.0f32;
        for s in 0..self.m {
            let (lo, hi) = self.span(s);
            let i = code[s] as usize;
            for j in lo..hi {
                let v = self.centroids[j * KSUB + i];
                acc += v * v + 2.0 * c[j] * v;
            }
        }
        acc
    }

    /// The reconstructed residual `r̂` of `code` (`dim` values, written to `out`).
    #[cfg(test)]
    pub(crate) fn decode(&self, code: &[u8], out: &mut Vec<f32>) {
        out.clear();
        for s in 0..self.m {
            let (lo, hi) = self.span(s);
            for j in lo..hi {
                out.push(self.centroids[j * KSUB + code[s] as usize]);
            }
        }
    }

    /// The per-query table (`m` rows): `table[s][i] = −2⟨q_s, centroid_{s,i}⟩`. Inline into a
    /// dispatched kernel.
    #[inline(always)]
    pub(crate) fn table(&self, q: &[f32], table: &mut Vec<Row>) {
        table.clear();
        table.resize(self.m, [0.0; KSUB]);
        for (s, row) in table.iter_mut().enumerate() {
            let (lo, hi) = self.span(s);
            for j in lo..hi {
                let col = &self.centroids[j * KSUB..(j + 1) * KSUB];
                let w = -2.0 * q[j];
                for i in 0..KSUB {
                    row[i] += w * col[i];
                }
            }
        }
    }

    /// Checks a deserialised quantiser against the index's dimension.
    pub(crate) fn check(&self, dim: usize) -> Result<(), String> {
        if self.dim != dim || self.m == 0 || self.m > dim || self.centroids.len() != dim * KSUB {
            return Err(format!(
                "product quantiser of dimension {} with {} subspaces and {} centroid values (index dimension {dim})",
                self.dim,
                self.m,
                self.centroids.len()
            ));
        }
        Ok(())
    }
}

/// [`ProductQuantizer::train`] as a [`Kernel`].
struct TrainKernel<'a> {
    dim: usize,
    m: usize,
    samples: &'a [f32],
    iters: usize,
    rng: &'a mut u64,
}

impl Kernel for TrainKernel<'_> {
    type Output = Option<ProductQuantizer>;

    #[inline(always)]
    fn run(self) -> Option<ProductQuantizer> {
        ProductQuantizer::train_in(self.dim, self.m, self.samples, self.iters, self.rng)
    }
}

/// [`ProductQuantizer::encode`] as a [`Kernel`].
struct EncodeKernel<'a> {
    pq: &'a ProductQuantizer,
    r: &'a [f32],
    c: &'a [f32],
    out: &'a mut [u8],
}

impl Kernel for EncodeKernel<'_> {
    type Output = f32;

    #[inline(always)]
    fn run(self) -> f32 {
        let pq = self.pq;
        let mut dist = [0.0f32; KSUB];
        for s in 0..pq.m {
            let (lo, hi) = pq.span(s);
            self.out[s] = pq.nearest(&self.r[lo..hi], lo, &mut dist) as u8;
        }
        pq.correction(self.out, self.c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Encoding then decoding gives the nearest sub-centroid in every subspace (no other
    /// sub-centroid is closer), and the quantisation error is far below the data's spread.
    #[test]
    fn training_and_encoding_round_trip() {
        let dim = 24;
        let xs = data(4000, dim, 1);
        let mut rng = 5;
        let pq = ProductQuantizer::train(dim, 8, &xs, 6, &mut rng).unwrap();
        pq.check(dim).unwrap();
        let zero = vec![0.0; dim];
        let (mut code, mut back) = (vec![0u8; 8], Vec::new());
        let (mut err, mut spread) = (0.0f64, 0.0f64);
        for x in xs.chunks_exact(dim).take(500) {
            pq.encode(x, &zero, &mut code);
            pq.decode(&code, &mut back);
            for s in 0..8 {
                let (lo, hi) = pq.span(s);
                let d = |i: usize| -> f32 {
                    (lo..hi)
                        .map(|j| (x[j] - pq.centroids[j * KSUB + i]).powi(2))
                        .sum()
                };
                let got = d(code[s] as usize);
                assert!((0..KSUB).all(|i| d(i) >= got), "subspace {s}");
            }
            err += x
                .iter()
                .zip(&back)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            spread += x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        }
        // 256 centroids in 3 uniform dimensions: ≈ 256^(−2/3) ≈ 1/40 of the variance.
        assert!(err < 0.1 * spread, "error {err} vs spread {spread}");
        // Too few samples, bad subspace counts: no quantiser.
        assert!(ProductQuantizer::train(dim, 8, &xs[..dim * 100], 6, &mut rng).is_none());
        assert!(ProductQuantizer::train(dim, 0, &xs, 6, &mut rng).is_none());
        assert!(ProductQuantizer::train(dim, 25, &xs, 6, &mut rng).is_none());
        assert!(ProductQuantizer::train(dim, 8, &xs[..dim * 300 + 1], 6, &mut rng).is_none());
    }

    /// `‖q − c‖² + correction + Σ table` is the exact squared distance from `q` to the
    /// reconstructed code `c + r̂` (up to rounding), for uneven subspaces too.
    #[test]
    fn adc_distance_is_the_distance_to_the_reconstruction() {
        for (dim, m) in [(24, 8), (10, 3), (5, 5)] {
            let xs = data(600, dim, 2);
            let mut rng = 9;
            let pq = ProductQuantizer::train(dim, m, &xs, 3, &mut rng).unwrap();
            let c: Vec<f32> = data(1, dim, 3).iter().map(|v| v * 2.0).collect();
            let q = data(1, dim, 4);
            let mut table = Vec::new();
            pq.table(&q, &mut table);
            assert_eq!(table.len(), m);
            let (mut code, mut back) = (vec![0u8; m], Vec::new());
            for x in xs.chunks_exact(dim).take(50) {
                let corr = pq.encode(x, &c, &mut code);
                assert_eq!(corr, pq.correction(&code, &c));
                pq.decode(&code, &mut back);
                let exact: f32 = (0..dim).map(|j| (q[j] - c[j] - back[j]).powi(2)).sum();
                let qc: f32 = (0..dim).map(|j| (q[j] - c[j]).powi(2)).sum();
                let adc = qc + corr + (0..m).map(|s| table[s][code[s] as usize]).sum::<f32>();
                assert!(
                    (adc - exact).abs() <= 1e-4 * (1.0 + exact),
                    "dim {dim}, m {m}: {adc} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn bad_quantisers_are_refused() {
        let xs = data(300, 6, 1);
        let mut rng = 1;
        let pq = ProductQuantizer::train(6, 2, &xs, 1, &mut rng).unwrap();
        assert!(pq.check(6).is_ok());
        assert!(pq.check(7).unwrap_err().contains("dimension 6"));
        let mut bad = pq.clone();
        bad.centroids.pop();
        assert!(bad.check(6).is_err());
        let mut bad = pq;
        bad.m = 7;
        assert!(bad.check(6).is_err());
    }
}
