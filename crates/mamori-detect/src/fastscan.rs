//! 4-bit product quantisation scanned with in-register look-up tables ("PQ fast scan"):
//! André, Kermarrec & Le Scouarnec, "Cache locality is not enough: High-performance nearest
//! neighbor search with product quantization fast scan", PVLDB 9(4), 2015 (§4: 4-bit
//! sub-quantisers, codes grouped so that one `pshufb` looks up the partial distances of many
//! codes at once from a 16-entry table held in a register; §4.3: the tables quantised to 8-bit
//! integers and the partial sums accumulated in 16-bit lanes; §5: a threshold on the quantised
//! sums keeps a shortlist whose distances are then computed more precisely), on the product
//! quantiser of Jégou, Douze & Schmid ("Product quantization for nearest neighbor search",
//! TPAMI 2011, §III–IV: a vector split into `m` sub-vectors, each replaced by its nearest
//! sub-centroid; the quantised vector is the residual to the IVF cell's centroid).
//!
//! Here: [`KSUB`] = 16 sub-centroids per subspace (one nibble per sub-vector); the codes of a
//! cell are stored in groups of [`GROUP`] = 32 codes, and within a group subspaces `2j` and
//! `2j + 1` share 32 bytes (byte `p` holds code `p`'s nibble of subspace `2j` in its low half
//! and of subspace `2j + 1` in its high half). A query's table for one cell
//! ([`FastScanPq::lut`]) holds, per subspace, the 16 squared distances from the query's
//! residual to the sub-centroids, shifted by their minimum and quantised to bytes with one
//! scale for all subspaces; the scan ([`scan_cell`]) sums one group's 32 codes × `m`
//! subspaces with two `vpshufb` per pair of subspaces (AVX2, through `pulp`'s safe intrinsics,
//! chosen at run time) or a portable loop that gives the same integers (test
//! `tests::simd_and_portable_scans_agree`). Sums are exact in 16 bits (`m ≤ 24`, at most
//! `24 · 255`), so the wrapping additions that split the even and odd codes' sums never lose
//! a carry. The quantised distance is only a filter: [`crate::ivf`] re-ranks the shortlist with
//! the exact distances to the stored floats, so the distances it returns are exact.

// The loops index coordinate-major tables by subspace spans; ranges read more plainly here.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Sub-centroids per subspace (4-bit codes).
pub(crate) const KSUB: usize = 16;

/// Codes per group of the packed layout (one 256-bit register of bytes).
pub(crate) const GROUP: usize = 32;

/// Most subspaces (the 16-bit sums stay exact: `24 · 255 < 2¹⁵`).
pub(crate) const MAX_M: usize = 24;

/// 2²³: a float in `[2²³, 2²⁴)` has unit spacing, so `x + MAGIC` rounds `x ≥ 0` to an integer
/// held in the low mantissa bits.
const MAGIC: f32 = 8_388_608.0;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A trained 4-bit product quantiser for `dim`-dimensional residuals split into `m` subspaces
/// (subspace `s` covers coordinates `s·dim/m .. (s+1)·dim/m`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FastScanPq {
    dim: usize,
    m: usize,
    /// `dim × KSUB` values: `centroids[j·KSUB + i]` is coordinate `j` of sub-centroid `i` of
    /// the subspace holding coordinate `j`.
    centroids: Vec<f32>,
}

/// A query's quantised table for one cell: approximate squared distance of a code =
/// `offset + scale · Σ_s tables[s][nibble_s]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lut {
    /// `2 · pairs` rows; row `s` holds subspace `s`'s 16 bytes twice (both 128-bit lanes of a
    /// register); a padding subspace (odd `m`) is all zeros.
    pub(crate) tables: Vec<[u8; GROUP]>,
    /// Sum of the per-subspace minima.
    pub(crate) offset: f32,
    /// Units of one table step.
    pub(crate) scale: f32,
    /// Per subspace, the float distances above their minimum (scratch).
    dist: Vec<[f32; KSUB]>,
}

impl Lut {
    /// Heap bytes of its buffers.
    pub(crate) fn heap_bytes(&self) -> usize {
        crate::heap::vec(&self.tables) + crate::heap::vec(&self.dist)
    }

    /// A 16-bit bound on the sums of codes whose approximate distance `offset + scale · s` may
    /// be below `bound`: every such code has `s` below it (one step of margin for the float
    /// rounding of the division; the exact test in floats follows). At most `i16::MAX`, the
    /// signed compare's range; every sum is below `24 · 255`.
    #[inline(always)]
    pub(crate) fn threshold(&self, bound: f32) -> u16 {
        let top = i16::MAX as u16;
        if bound.is_nan() {
            return 0;
        }
        if self.scale > 0.0 {
            let x = ((bound - self.offset) / self.scale).floor() + 2.0;
            if x >= top as f32 {
                top
            } else if x > 0.0 {
                x as u16
            } else {
                0
            }
        } else if self.offset < bound {
            top
        } else {
            0
        }
    }

    /// The approximate squared distance of a code whose sum is `s`.
    #[inline(always)]
    pub(crate) fn value(&self, s: u16) -> f32 {
        self.offset + self.scale * s as f32
    }
}

impl FastScanPq {
    /// Trains `m` sub-quantisers of [`KSUB`] centroids on the `dim`-dimensional `samples`
    /// (concatenated): Lloyd's k-means per subspace, `iters` iterations, seeded with distinct
    /// sampled sub-vectors; an emptied centroid keeps its position. `None` when fewer than
    /// [`KSUB`] samples are given, or `m` is 0, above `dim` or above [`MAX_M`].
    pub(crate) fn train(
        dim: usize,
        m: usize,
        samples: &[f32],
        iters: usize,
        rng: &mut u64,
    ) -> Option<Self> {
        if dim == 0 || m == 0 || m > dim || m > MAX_M || !samples.len().is_multiple_of(dim) {
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
                    for (j, &xj) in x.iter().enumerate().take(hi).skip(lo) {
                        sums[j * KSUB + best] += xj as f64;
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

    /// Heap bytes of its sub-centroids.
    pub(crate) fn heap_bytes(&self) -> usize {
        crate::heap::vec(&self.centroids)
    }

    /// Pairs of subspaces (32-byte rows per group).
    pub(crate) fn pairs(&self) -> usize {
        self.m.div_ceil(2)
    }

    /// Bytes per group of [`GROUP`] codes.
    pub(crate) fn group_bytes(&self) -> usize {
        self.pairs() * GROUP
    }

    /// Coordinates `lo..hi` of subspace `s`.
    #[inline(always)]
    fn span(&self, s: usize) -> (usize, usize) {
        (s * self.dim / self.m, (s + 1) * self.dim / self.m)
    }

    /// The coordinates of every subspace in order — [`FastScanPq::span`] of `0, 1, …` — with no
    /// division per subspace (two divisions each cost more than the rest of a table row's
    /// bookkeeping).
    #[inline(always)]
    fn spans(&self) -> Spans {
        let m = self.m.max(1);
        Spans {
            lo: 0,
            left: self.m,
            q: self.dim / m,
            r: self.dim % m,
            m,
            acc: 0,
        }
    }

    /// Squared distances from the sub-vector `x` (coordinates `lo..lo + x.len()`) to the
    /// subspace's sub-centroids, into `dist`.
    #[inline(always)]
    fn sub_dists(&self, x: &[f32], lo: usize, dist: &mut [f32; KSUB]) {
        *dist = [0.0; KSUB];
        for (t, &xj) in x.iter().enumerate() {
            let col = &self.centroids[(lo + t) * KSUB..(lo + t + 1) * KSUB];
            for i in 0..KSUB {
                let d = col[i] - xj;
                dist[i] += d * d;
            }
        }
    }

    /// The nearest sub-centroid to the sub-vector `x` (ties to the lower index).
    #[inline(always)]
    fn nearest(&self, x: &[f32], lo: usize, dist: &mut [f32; KSUB]) -> usize {
        self.sub_dists(x, lo, dist);
        let mut best = (f32::INFINITY, 0usize);
        for (i, &d) in dist.iter().enumerate() {
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    /// The nibbles of residual `r` (`m` values below 16, written to `out`).
    pub(crate) fn encode(&self, r: &[f32], out: &mut Vec<u8>) {
        out.clear();
        let mut dist = [0.0f32; KSUB];
        for (lo, hi) in self.spans() {
            out.push(self.nearest(&r[lo..hi], lo, &mut dist) as u8);
        }
    }

    /// The quantised table of the query residual `r` (query minus the cell's centroid): per
    /// subspace the 16 squared distances, shifted by their minimum (the minima summed into the
    /// offset) and rounded to bytes with one scale for all subspaces (the widest subspace range
    /// maps to 255). Inline into a dispatched kernel (the loops run over 16 lanes).
    #[inline(always)]
    pub(crate) fn lut(&self, r: &[f32], lut: &mut Lut) {
        // Every distance and every row of a subspace below is overwritten: only the lengths are
        // set (no zeroing of tables already of that size, once per probed cell); the padding
        // row of an odd `m` is zeroed.
        let rows = 2 * self.pairs();
        lut.tables.resize(rows, [0; GROUP]);
        for row in lut.tables.iter_mut().skip(self.m) {
            *row = [0; GROUP];
        }
        lut.dist.resize(self.m, [0.0; KSUB]);
        let (mut offset, mut range) = (0.0f32, 0.0f32);
        for ((lo, hi), dist) in self.spans().zip(lut.dist.iter_mut()) {
            self.sub_dists(&r[lo..hi], lo, dist);
            let (least, most) = min_max(dist);
            for d in dist.iter_mut() {
                *d -= least;
            }
            offset += least;
            let span = most - least;
            range = if span > range { span } else { range };
        }
        let scale = if range.is_finite() && range > 0.0 {
            range / 255.0
        } else {
            0.0
        };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (row, dist) in lut.tables.iter_mut().zip(&lut.dist) {
            // Rounded to nearest by the float unit: adding 2²³ leaves the integer part of a
            // value in [0, 2²³) in the low mantissa bits (a vector add and a mask, where a
            // saturating cast would not vectorise as well). `dist · inv` is in [0, 255] up to
            // rounding (NaN, from a NaN query, gives some byte: never a panic).
            let mut bytes = [0u8; KSUB];
            for (b, &d) in bytes.iter_mut().zip(dist) {
                *b = ((d * inv + MAGIC).to_bits() & 0xff) as u8;
            }
            row[..KSUB].copy_from_slice(&bytes);
            row[KSUB..].copy_from_slice(&bytes);
        }
        lut.offset = offset;
        lut.scale = scale;
    }

    /// Writes the nibbles `code` of slot `i` into the packed groups `fs` (grown by whole
    /// groups as needed).
    pub(crate) fn write(&self, fs: &mut Vec<u8>, i: usize, code: &[u8]) {
        let gb = self.group_bytes();
        let (g, p) = (i / GROUP, i % GROUP);
        if fs.len() < (g + 1) * gb {
            fs.resize((g + 1) * gb, 0);
        }
        for j in 0..self.pairs() {
            let lo = code.get(2 * j).copied().unwrap_or(0) & 0x0f;
            let hi = code.get(2 * j + 1).copied().unwrap_or(0) & 0x0f;
            fs[g * gb + j * GROUP + p] = lo | (hi << 4);
        }
    }

    /// The reconstructed residual of the nibbles `code` (`dim` values, written to `out`).
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

    /// Checks a deserialised quantiser against the index's dimension.
    pub(crate) fn check(&self, dim: usize) -> Result<(), String> {
        if self.dim != dim
            || self.m == 0
            || self.m > dim
            || self.m > MAX_M
            || self.centroids.len() != dim * KSUB
        {
            return Err(format!(
                "fast-scan quantiser of dimension {} with {} subspaces and {} centroid values (index dimension {dim})",
                self.dim,
                self.m,
                self.centroids.len()
            ));
        }
        Ok(())
    }
}

/// The least and the largest of 16 values by halving (independent lanes, vectorised; NaN
/// lanes are dropped where a comparison with them is false).
#[inline(always)]
fn min_max(d: &[f32; KSUB]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0.0f32; 8], [0.0f32; 8]);
    for l in 0..8 {
        let (a, b) = (d[l], d[l + 8]);
        lo[l] = if b < a { b } else { a };
        hi[l] = if b > a { b } else { a };
    }
    for w in [4usize, 2, 1] {
        for l in 0..w {
            lo[l] = if lo[l + w] < lo[l] { lo[l + w] } else { lo[l] };
            hi[l] = if hi[l + w] > hi[l] { hi[l + w] } else { hi[l] };
        }
    }
    (lo[0], hi[0])
}

/// [`FastScanPq::spans`]: subspace `s` ends at `⌊(s + 1)·dim / m⌋ = (s + 1)·q + ⌊(s + 1)·r / m⌋`
/// (`dim = q·m + r`), the second term advancing by 0 or 1 per subspace as `acc`, the running
/// `(s + 1)·r mod m`, passes `m`.
#[derive(Clone, Copy, Debug)]
struct Spans {
    lo: usize,
    left: usize,
    q: usize,
    r: usize,
    m: usize,
    acc: usize,
}

impl Iterator for Spans {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.acc += self.r;
        let mut hi = self.lo + self.q;
        if self.acc >= self.m {
            self.acc -= self.m;
            hi += 1;
        }
        let span = (self.lo, hi);
        self.lo = hi;
        Some(span)
    }
}

/// The shortlist of a fast-scan search: candidates by approximate distance, cut to the `r`
/// smallest whenever `2r` are held (the bound is then the largest kept). A candidate is one
/// `u64` — the distance's bits (non-negative floats order as their bits) above the index of
/// its (cell, slot) in `meta` — so the cut is a selection on integers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shortlist {
    keys: Vec<u64>,
    meta: Vec<(u32, u32)>,
    r: usize,
    pub(crate) worst: f32,
}

impl Shortlist {
    /// Heap bytes of its buffers.
    pub(crate) fn heap_bytes(&self) -> usize {
        crate::heap::vec(&self.keys) + crate::heap::vec(&self.meta)
    }

    /// An empty shortlist of `r` codes.
    pub(crate) fn reset(&mut self, r: usize) {
        self.keys.clear();
        self.meta.clear();
        self.r = r.max(1);
        self.worst = f32::INFINITY;
    }

    /// Adds a candidate (`d` non-negative, below the bound); returns whether the bound changed.
    #[inline(always)]
    pub(crate) fn push(&mut self, d: f32, cell: u32, slot: u32) -> bool {
        let i = self.meta.len() as u64;
        self.meta.push((cell, slot));
        self.keys.push(((d.to_bits() as u64) << 32) | i);
        if self.keys.len() >= 2 * self.r {
            self.cut();
            return true;
        }
        false
    }

    /// Keeps the `r` smallest candidates (unordered) and sets the bound to the largest kept.
    pub(crate) fn cut(&mut self) {
        if self.keys.len() > self.r {
            let (_, &mut kth, _) = self.keys.select_nth_unstable(self.r - 1);
            self.keys.truncate(self.r);
            self.worst = f32::from_bits((kth >> 32) as u32);
        }
    }

    /// The (cell, slot) of every candidate held.
    pub(crate) fn items(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.keys
            .iter()
            .map(|&k| self.meta[(k & u32::MAX as u64) as usize])
    }

    /// Candidates held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// (distance, cell, slot) of every candidate held, in order of insertion (tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(f32, u32, u32)> {
        let mut k = self.keys.clone();
        k.sort_unstable_by_key(|&k| k & u32::MAX as u64);
        k.iter()
            .map(|&k| {
                let (c, s) = self.meta[(k & u32::MAX as u64) as usize];
                (f32::from_bits((k >> 32) as u32), c, s)
            })
            .collect()
    }
}

/// The 16-bit sums of the 32 codes of one group (`bytes`: `pairs · 32` bytes), in slot order —
/// the portable version.
#[inline(always)]
fn group_sums_portable(bytes: &[u8], tables: &[[u8; GROUP]]) -> [u16; GROUP] {
    let mut acc = [0u16; GROUP];
    for (row, t) in bytes.chunks_exact(GROUP).zip(tables.chunks_exact(2)) {
        for p in 0..GROUP {
            let b = row[p];
            acc[p] += t[0][(b & 0x0f) as usize] as u16 + t[1][(b >> 4) as usize] as u16;
        }
    }
    acc
}

/// Scans the `len` codes packed in `fs` (groups of `tables.len() / 2 · 32` bytes) against the
/// table `lut`, adding every code whose approximate distance is below `short.worst` to `short`
/// (as cell `cell`). Uses AVX2 where the CPU has it, the portable loop otherwise; both give
/// the same sums, hence the same shortlist.
pub(crate) fn scan_cell(fs: &[u8], len: usize, lut: &Lut, cell: u32, short: &mut Shortlist) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        return v3.vectorize(|| x86::scan_cell_v3(v3, fs, len, lut, cell, short));
    }
    scan_cell_portable(fs, len, lut, cell, short)
}

/// [`scan_cell`]'s portable version.
pub(crate) fn scan_cell_portable(
    fs: &[u8],
    len: usize,
    lut: &Lut,
    cell: u32,
    short: &mut Shortlist,
) {
    let gb = lut.tables.len() / 2 * GROUP;
    if gb == 0 {
        return;
    }
    let mut thr = lut.threshold(short.worst);
    for (g, bytes) in fs.chunks_exact(gb).enumerate() {
        let sums = group_sums_portable(bytes, &lut.tables);
        let valid = (len.saturating_sub(g * GROUP)).min(GROUP);
        for (p, &s) in sums[..valid].iter().enumerate() {
            if s < thr {
                offer(lut, s, cell, g * GROUP + p, short, &mut thr);
            }
        }
    }
}

/// Adds one candidate whose sum passed the threshold (checked again in floats) and refreshes
/// the threshold when the shortlist's bound changed.
#[inline(always)]
fn offer(lut: &Lut, s: u16, cell: u32, slot: usize, short: &mut Shortlist, thr: &mut u16) {
    let d = lut.value(s);
    if d < short.worst && short.push(d, cell, slot as u32) {
        *thr = lut.threshold(short.worst);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{offer, Lut, Shortlist, GROUP};
    use core::arch::x86_64::__m256i;
    use pulp::x86::V3;

    #[inline(always)]
    fn load(v: &[u8]) -> __m256i {
        let mut a = [0u8; GROUP];
        a.copy_from_slice(&v[..GROUP]);
        pulp::cast(a)
    }

    /// The sums of one group's even and odd codes (16 lanes each: lane `w` is code `2w`,
    /// resp. `2w + 1`).
    #[inline(always)]
    pub(super) fn group_sums_v3(
        v3: V3,
        bytes: &[u8],
        tables: &[[u8; GROUP]],
    ) -> (__m256i, __m256i) {
        let (avx, avx2) = (v3.avx, v3.avx2);
        let nib = avx._mm256_set1_epi8(0x0f);
        let mut a = avx._mm256_setzero_si256();
        let mut b = a;
        for (row, t) in bytes.chunks_exact(GROUP).zip(tables.chunks_exact(2)) {
            let x = load(row);
            let lo = avx2._mm256_and_si256(x, nib);
            let hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(x), nib);
            let r0 = avx2._mm256_shuffle_epi8(pulp::cast(t[0]), lo);
            let r1 = avx2._mm256_shuffle_epi8(pulp::cast(t[1]), hi);
            // As 16-bit lanes, `r` is `even + 256·odd`: `a` sums that (wrapping), `b` the odd
            // bytes; the even sums are `a − 256·b` at the end.
            a = avx2._mm256_add_epi16(a, r0);
            b = avx2._mm256_add_epi16(b, avx2._mm256_srli_epi16::<8>(r0));
            a = avx2._mm256_add_epi16(a, r1);
            b = avx2._mm256_add_epi16(b, avx2._mm256_srli_epi16::<8>(r1));
        }
        let even = avx2._mm256_sub_epi16(a, avx2._mm256_slli_epi16::<8>(b));
        (even, b)
    }

    /// The sums of one group in slot order (tests).
    #[cfg(test)]
    pub(super) fn group_sums_in_order(
        v3: V3,
        bytes: &[u8],
        tables: &[[u8; GROUP]],
    ) -> [u16; GROUP] {
        v3.vectorize(|| {
            let (e, o) = group_sums_v3(v3, bytes, tables);
            let (e, o): ([u16; 16], [u16; 16]) = (pulp::cast(e), pulp::cast(o));
            let mut out = [0u16; GROUP];
            for w in 0..16 {
                out[2 * w] = e[w];
                out[2 * w + 1] = o[w];
            }
            out
        })
    }

    #[inline(always)]
    pub(super) fn scan_cell_v3(
        v3: V3,
        fs: &[u8],
        len: usize,
        lut: &Lut,
        cell: u32,
        short: &mut Shortlist,
    ) {
        let (avx, avx2) = (v3.avx, v3.avx2);
        let gb = lut.tables.len() / 2 * GROUP;
        if gb == 0 {
            return;
        }
        let mut thr = lut.threshold(short.worst);
        for (g, bytes) in fs.chunks_exact(gb).enumerate() {
            let (even, odd) = group_sums_v3(v3, bytes, &lut.tables);
            // Lanes below the threshold (signed compare: every sum and threshold < 2¹⁵);
            // `movemask` gives two bits per 16-bit lane, the even one kept.
            let t = avx._mm256_set1_epi16(thr as i16);
            let me = avx2._mm256_movemask_epi8(avx2._mm256_cmpgt_epi16(t, even)) as u32;
            let mo = avx2._mm256_movemask_epi8(avx2._mm256_cmpgt_epi16(t, odd)) as u32;
            let mut mask = (me & 0x5555_5555) | ((mo & 0x5555_5555) << 1);
            let valid = (len.saturating_sub(g * GROUP)).min(GROUP);
            if valid < GROUP {
                mask &= (1u32 << valid) - 1;
            }
            if mask == 0 {
                continue;
            }
            let (e, o): ([u16; 16], [u16; 16]) = (pulp::cast(even), pulp::cast(odd));
            while mask != 0 {
                let p = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let s = if p.is_multiple_of(2) {
                    e[p / 2]
                } else {
                    o[p / 2]
                };
                // The threshold may have tightened since the mask was computed.
                if s < thr {
                    offer(lut, s, cell, g * GROUP + p, short, &mut thr);
                }
            }
        }
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

    /// The subspaces' ranges without divisions are those of the division formula, for every
    /// dimension and sub-quantiser count up to 64.
    #[test]
    fn spans_are_the_divided_ranges() {
        for dim in 1..=64usize {
            for m in 1..=dim {
                let pq = FastScanPq {
                    dim,
                    m,
                    centroids: Vec::new(),
                };
                let want: Vec<(usize, usize)> = (0..m).map(|s| pq.span(s)).collect();
                assert_eq!(pq.spans().collect::<Vec<_>>(), want, "dim {dim}, m {m}");
            }
        }
    }

    /// Encoding picks the nearest sub-centroid in every subspace; the reconstruction error is
    /// far below the data's spread; bad inputs give no quantiser.
    #[test]
    fn training_and_encoding_round_trip() {
        let dim = 24;
        let xs = data(3000, dim, 1);
        let mut rng = 5;
        let pq = FastScanPq::train(dim, 12, &xs, 6, &mut rng).unwrap();
        pq.check(dim).unwrap();
        let (mut code, mut back) = (Vec::new(), Vec::new());
        let (mut err, mut spread) = (0.0f64, 0.0f64);
        for x in xs.chunks_exact(dim).take(300) {
            pq.encode(x, &mut code);
            assert_eq!(code.len(), 12);
            pq.decode(&code, &mut back);
            for s in 0..12 {
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
        // 16 centroids in 2 uniform dimensions: ≈ 1/16 of the variance.
        assert!(err < 0.15 * spread, "error {err} vs spread {spread}");
        assert!(FastScanPq::train(dim, 12, &xs[..dim * 10], 6, &mut rng).is_none());
        assert!(FastScanPq::train(dim, 0, &xs, 6, &mut rng).is_none());
        assert!(FastScanPq::train(dim, 25, &xs, 6, &mut rng).is_none());
        assert!(FastScanPq::train(30, 25, &data(100, 30, 1), 6, &mut rng).is_none());
        assert!(FastScanPq::train(dim, 12, &xs[..dim * 300 + 1], 6, &mut rng).is_none());
    }

    /// `offset + scale · Σ bytes` is the distance from the residual to the reconstructed code
    /// within the byte rounding (`m · scale / 2`), for odd `m` (a padding subspace) too.
    #[test]
    fn quantised_table_approximates_the_distance_to_the_reconstruction() {
        // One table reused across quantisers (as an index's scratch is when its fast scan is
        // switched) equals a fresh one each time: the padding row of an odd count is zero.
        let mut reused = Lut::default();
        for (dim, m) in [(24, 12), (24, 8), (10, 3), (5, 5)] {
            let xs = data(500, dim, 2);
            let mut rng = 9;
            let pq = FastScanPq::train(dim, m, &xs, 3, &mut rng).unwrap();
            let q = data(1, dim, 4);
            let mut lut = Lut::default();
            pq.lut(&q, &mut lut);
            assert_eq!(lut.tables.len(), 2 * m.div_ceil(2));
            pq.lut(&q, &mut reused);
            assert_eq!(reused.tables, lut.tables, "dim {dim}, m {m}");
            let (mut code, mut back) = (Vec::new(), Vec::new());
            for x in xs.chunks_exact(dim).take(50) {
                pq.encode(x, &mut code);
                pq.decode(&code, &mut back);
                let exact: f32 = (0..dim).map(|j| (q[j] - back[j]).powi(2)).sum();
                let s: u16 = (0..m).map(|s| lut.tables[s][code[s] as usize] as u16).sum();
                let tol = m as f32 * lut.scale * 0.5 + 1e-4 * (1.0 + exact);
                assert!(
                    (lut.value(s) - exact).abs() <= tol,
                    "dim {dim}, m {m}: {} vs {exact}",
                    lut.value(s)
                );
            }
        }
    }

    /// The AVX2 sums equal the portable ones for random bytes and tables at every subspace
    /// count, and the AVX2 scan keeps exactly the portable scan's shortlist (same candidates,
    /// same order, the bound tightening as it goes; partial last groups).
    #[test]
    fn simd_and_portable_scans_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for pairs in 1..=MAX_M / 2 {
            let tables: Vec<[u8; GROUP]> = (0..2 * pairs)
                .map(|_| {
                    let mut t = [0u8; GROUP];
                    for i in 0..KSUB {
                        t[i] = rng.gen();
                        t[i + KSUB] = t[i];
                    }
                    t
                })
                .collect();
            let bytes: Vec<u8> = (0..pairs * GROUP).map(|_| rng.gen()).collect();
            let plain = group_sums_portable(&bytes, &tables);
            // The plain formula: Σ over subspaces of the table entry of each nibble.
            for p in 0..GROUP {
                let want: u16 = (0..pairs)
                    .map(|j| {
                        let b = bytes[j * GROUP + p];
                        tables[2 * j][(b & 15) as usize] as u16
                            + tables[2 * j + 1][(b >> 4) as usize] as u16
                    })
                    .sum();
                assert_eq!(plain[p], want);
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                assert_eq!(
                    x86::group_sums_in_order(v3, &bytes, &tables),
                    plain,
                    "{pairs} pairs"
                );
            }
        }
        // Whole scans: a quantiser, a cell of 100 codes (a partial last group), a table.
        let dim = 24;
        let xs = data(1000, dim, 3);
        let mut seed = 1;
        for m in [8usize, 12, 24] {
            let pq = FastScanPq::train(dim, m, &xs, 3, &mut seed).unwrap();
            let mut fs = Vec::new();
            let mut code = Vec::new();
            for (i, x) in xs.chunks_exact(dim).take(100).enumerate() {
                pq.encode(x, &mut code);
                pq.write(&mut fs, i, &code);
            }
            assert_eq!(fs.len(), 4 * pq.group_bytes());
            let mut lut = Lut::default();
            pq.lut(&data(1, dim, 8), &mut lut);
            for r in [1usize, 5, 200] {
                let (mut a, mut b) = (Shortlist::default(), Shortlist::default());
                a.reset(r);
                b.reset(r);
                scan_cell(&fs, 100, &lut, 3, &mut a);
                scan_cell_portable(&fs, 100, &lut, 3, &mut b);
                assert_eq!(a.entries(), b.entries(), "m {m}, r {r}");
                assert!(b.items().all(|(c, slot)| c == 3 && slot < 100));
                // After the last cut, the r smallest quantised distances of the cell are held.
                b.cut();
                assert_eq!(b.len(), r.min(100));
                let mut all: Vec<f32> = (0..100)
                    .map(|i| {
                        let g = &fs[(i / GROUP) * pq.group_bytes()..];
                        let s: u16 = (0..m)
                            .map(|s| {
                                let byte = g[(s / 2) * GROUP + i % GROUP];
                                let nib = if s % 2 == 0 { byte & 15 } else { byte >> 4 };
                                lut.tables[s][nib as usize] as u16
                            })
                            .sum();
                        lut.value(s)
                    })
                    .collect();
                all.sort_by(f32::total_cmp);
                let mut kept: Vec<f32> = b.entries().iter().map(|e| e.0).collect();
                kept.sort_by(f32::total_cmp);
                assert_eq!(kept, all[..r.min(100)], "m {m}, r {r}");
            }
        }
    }

    #[test]
    fn thresholds_are_safe_at_the_edges() {
        let lut = Lut {
            tables: vec![[0; GROUP]; 2],
            offset: 2.0,
            scale: 0.5,
            dist: Vec::new(),
        };
        assert_eq!(lut.threshold(f32::INFINITY), i16::MAX as u16);
        assert_eq!(lut.threshold(f32::NAN), 0);
        assert_eq!(lut.threshold(1.0), 0);
        // value(s) < 3.0 ⇔ s < 2 (one step of margin).
        assert_eq!(lut.threshold(3.0), 4);
        assert_eq!(lut.threshold(3.1), 4);
        assert_eq!(lut.threshold(3.5), 5);
        let flat = Lut {
            scale: 0.0,
            ..lut.clone()
        };
        assert_eq!(flat.threshold(2.5), i16::MAX as u16);
        assert_eq!(flat.threshold(2.0), 0);
        let bad = FastScanPq {
            dim: 6,
            m: 2,
            centroids: vec![0.0; 5],
        };
        assert!(bad.check(6).unwrap_err().contains("fast-scan quantiser"));
        assert!(FastScanPq {
            centroids: vec![0.0; 6 * KSUB],
            ..bad
        }
        .check(7)
        .is_err());
    }
}
