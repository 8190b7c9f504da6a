//! Inverted-file (IVF) index for k-nearest-neighbour distance queries with bounded memory: the
//! coarse-quantiser index of Jégou, Douze & Schmid ("Product quantization for nearest neighbor
//! search", TPAMI 2011, §IV "non-exhaustive search"), with exact distances inside the probed
//! cells.
//!
//! A *generation* holds centroids (k-means, Lloyd's algorithm) and one *cell* per
//! centroid: the codes assigned to that centroid, stored contiguously. A search computes the
//! distances to all centroids, scans the `probe` nearest cells in full (contiguous memory, an
//! auto-vectorised distance loop — compiled for AVX2 at run time where the CPU has it, see
//! `crate::simd` —, no pointer chasing) and keeps the `k` smallest distances.
//! Compared with a graph index ([`crate::ann`]), whose search is one cache miss per visited
//! vector and neighbour list, the scan reads sequential memory the hardware prefetcher streams.
//!
//! With [`IvfParams::fastscan_m`] > 0 a clustered generation also holds 4-bit product-quantised
//! codes of its codes' residuals (`crate::fastscan`: André, Kermarrec & Le Scouarnec, PVLDB
//! 2015); a search large enough for it to pay (`fastscan_pays`) scans those with in-register
//! tables into a shortlist of `fastscan_rerank · k` codes and computes exact distances only for
//! the shortlisted codes (from a row-major copy of a fast-scan generation's codes), so the
//! distances returned stay exact distances of held codes.
//!
//! Centroids come from the client's own queries: a fresh index is *flat* (one cell, searched
//! exactly) until it holds `train_size` codes; they are then clustered into
//! `lists(n) = clamp(√n, 2, max_lists)` cells for the `n` codes held, and re-clustered (all
//! codes re-assigned) each time the generation has grown 2× since its last clustering, so the
//! cells stay ≈ `√n` to `2√n` codes and a search scans `O(probe·√n)` codes, not `O(n)` (a block
//! of 8 codes none of which beats the current `k`-th distance is skipped whole). Each later
//! generation is trained, when it starts, on a sample of the generation that just filled — so
//! the cells follow the client's recent distribution, for any input dimension. A clustering
//! costs `O(sample · lists · iterations + n · lists)` distance computations, paid by the query
//! that triggers it (a few per generation; measured in `docs/bench/detect.md`).
//!
//! **Eviction rule** (memory and search cost bounded whatever the client sends):
//! - Generations: codes go into the *current* generation; after `capacity` insertions it becomes
//!   the *previous* one (the old previous is dropped) and a fresh current one starts, trained on
//!   a sample of the filled one. Searches look in both, so a search sees (at most) the client's
//!   last `2·capacity` queries, oldest forgotten first, in blocks.
//! - Cells: a cell holds at most `cell_cap = ⌈cell_factor · capacity / lists⌉` codes (`lists`
//!   of its generation); a code inserted into a full cell overwrites that cell's oldest code
//!   (per-cell FIFO). An attacker who concentrates every query in one region of the input
//!   space fills one cell and then only replaces its own oldest queries there: a search scans
//!   at most `probe · cell_cap` codes per generation (plus the next cells when fewer than `k`
//!   codes were seen), independent of the history's length.
//! - A flat (untrained) generation holds at most `max(train_size, 4)` codes (or `capacity`, if
//!   smaller).
//!
//! Cost measured on MNIST codes (`docs/bench/detect.md`, `examples/knn_recall.rs`): recall@50
//! 0.94–0.95 against exact search at the k-NN detector's parameters, ≈ 0.6× the HNSW search
//! time at the default capacity and the same time when one generation holds 100k codes.

use crate::ann::sq_dist;
use crate::fastscan::{FastScanPq, Lut, Shortlist};
use crate::simd::Kernel;
use serde::{Deserialize, Serialize};

/// IVF parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IvfParams {
    /// Most cells (k-means centroids) per generation (fewer while it holds fewer than
    /// `max_lists²` codes: `√n` for `n` codes).
    pub max_lists: usize,
    /// Cells scanned per search (the nearest centroids).
    pub probe: usize,
    /// Codes held flat (searched exactly) before the first clustering.
    pub train_size: usize,
    /// Codes per cell, as a multiple of the mean `capacity / lists` (the per-cell FIFO cap).
    pub cell_factor: usize,
    /// Lloyd iterations per clustering.
    pub kmeans_iters: usize,
    /// Sub-quantisers of the 4-bit fast-scan codes a clustered generation also stores
    /// (`crate::fastscan`; 0: none, every probed code is scanned exactly). With `m > 0` a
    /// search large enough for it to pay scans the probed cells' packed codes with quantised
    /// tables, keeps the `fastscan_rerank · k` nearest as a shortlist and computes their exact
    /// distances (to the stored floats, from a row-major copy the generation keeps beside its
    /// blocks: `4·dim` bytes more per code): the distances returned are always exact distances
    /// of held codes. At most 24 and at most the code dimension (otherwise no quantiser is
    /// trained and every scan stays exact).
    pub fastscan_m: usize,
    /// Shortlist of a fast-scan search, as a multiple of `k` (at least 1).
    pub fastscan_rerank: usize,
    /// Whether a clustered generation also stores its codes as bytes ([`Sq8`]: one level of
    /// 256 per coordinate, over the range of the codes it was clustered on), which the
    /// re-ranking search ([`IvfIndex::nearest_payload_dist2`]) scans to choose its candidates
    /// — a quarter of the bytes of the `f32` codes, summed in 32-bit integers — before their
    /// exact payload distances are computed. The other searches, whose distances are
    /// returned, never use them.
    pub sq8: bool,
}

impl Default for IvfParams {
    fn default() -> Self {
        Self {
            max_lists: 1024,
            probe: 16,
            train_size: 2048,
            cell_factor: 4,
            kmeans_iters: 6,
            fastscan_m: 0,
            fastscan_rerank: 4,
            sq8: false,
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Codes per block of a cell's layout.
const BLOCK: usize = 8;

/// `f32`s per 64-byte cache line (the line of the x86-64 and AArch64 cores this runs on).
const LINE_FLOATS: usize = 16;

/// Whether fast-scanning `n` probed codes in `cells` cells, of dimension `dim`, with `pairs`
/// pairs of sub-quantisers and a shortlist of `r` costs less than scanning them exactly, by
/// operation counts: the exact scan costs `3·dim` float operations per block of [`BLOCK`]
/// codes; the fast scan 12 integer operations per pair and group of 32 codes, one exact block
/// per shortlisted code for the re-rank (what it cost when the re-rank read the blocks; it now
/// reads one row-major code, and the count is kept so that the same searches are fast-scanned
/// as before) and about one block's worth per cell for its table (16 distances per coordinate,
/// then the bytes). Those two are counted twice to cover the shortlist's upkeep (measured,
/// `docs/bench/detect.md`, seventh session: at 10k queries of history, 16 k-NN cells of ≈ 110
/// codes, the fast scan with a shortlist of 200 was 2× slower than the exact scan; at 100k,
/// cells of ≈ 470, faster).
/// Smaller searches are scanned exactly.
fn fastscan_pays(n: usize, cells: usize, r: usize, dim: usize, pairs: usize) -> bool {
    let block = 3.0 * dim as f64;
    let saved = n as f64 * (block / BLOCK as f64 - 12.0 * pairs as f64 / 32.0);
    saved >= 2.0 * (r + cells) as f64 * block
}

/// Codes of one cell, contiguous, in blocks of [`BLOCK`] codes stored coordinate-major
/// (`blocks[(b·dim + j)·BLOCK + l]` = coordinate `j` of code `b·BLOCK + l`): the distances of a
/// whole block are computed in one loop the compiler vectorises across the codes. Once the cell
/// is full, `head` is the slot of its oldest code (the next one overwritten).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Cell {
    blocks: Vec<f32>,
    /// Optional per-code byte payloads (`payload_dim` bytes per slot, slot-major).
    #[serde(default)]
    payload: Vec<u8>,
    len: usize,
    head: usize,
    /// Packed 4-bit codes when the generation has a fast-scan quantiser (whole groups of
    /// [`crate::fastscan::GROUP`] slots, [`FastScanPq::write`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fs: Vec<u8>,
    /// With packed codes: a row-major copy of the codes (`rows[slot·dim..(slot + 1)·dim]`),
    /// from which the fast-scan shortlist is re-ranked — one code's 1–2 cache lines instead of
    /// the whole coordinate-major block holding it (12 lines at 24 dimensions). Derived from
    /// `blocks`, so not serialised (rebuilt on loading).
    #[serde(skip)]
    rows: Vec<f32>,
    /// When the generation has an [`Sq8`] quantiser: the codes' byte levels, in blocks of
    /// [`BLOCK`] codes laid out as [`Sq8`] says. Derived from `blocks`, so not serialised.
    #[serde(skip)]
    q8: Vec<u8>,
}

impl Cell {
    /// Heap bytes of its buffers.
    fn heap_bytes(&self) -> usize {
        use crate::heap::vec;
        vec(&self.blocks) + vec(&self.payload) + vec(&self.fs) + vec(&self.rows) + vec(&self.q8)
    }

    /// Writes `v` into slot `i` (the block holding it must exist).
    fn write(&mut self, i: usize, v: &[f32]) {
        let dim = v.len();
        let (b, l) = (i / BLOCK, i % BLOCK);
        let base = b * dim * BLOCK;
        for (j, &x) in v.iter().enumerate() {
            self.blocks[base + j * BLOCK + l] = x;
        }
    }

    /// Appends `v` and its payload `p` (at most `cap` codes), overwriting the oldest code
    /// when full; returns the slot written.
    fn push_fifo(&mut self, v: &[f32], p: &[u8], cap: usize) -> usize {
        let dim = v.len();
        let slot = if self.len < cap {
            if self.len.is_multiple_of(BLOCK) {
                self.blocks.resize(self.blocks.len() + dim * BLOCK, 0.0);
            }
            self.len += 1;
            self.payload.extend_from_slice(p);
            self.len - 1
        } else {
            let slot = self.head;
            self.head = (self.head + 1) % cap;
            self.payload[slot * p.len()..(slot + 1) * p.len()].copy_from_slice(p);
            slot
        };
        self.write(slot, v);
        slot
    }

    /// Code `i`, appended to `out`.
    fn read(&self, i: usize, dim: usize, out: &mut Vec<f32>) {
        let (b, l) = (i / BLOCK, i % BLOCK);
        let base = b * dim * BLOCK;
        out.extend((0..dim).map(|j| self.blocks[base + j * BLOCK + l]));
    }

    /// Every code and payload, oldest first, appended to `codes` and `payloads`.
    fn read_all(&self, dim: usize, pd: usize, codes: &mut Vec<f32>, payloads: &mut Vec<u8>) {
        for i in 0..self.len {
            let slot = (self.head + i) % self.len.max(1);
            self.read(slot, dim, codes);
            payloads.extend_from_slice(&self.payload[slot * pd..(slot + 1) * pd]);
        }
    }

    /// Squared distance of every code to `q`, offered with its slot to `offer` — except in
    /// blocks where no distance is below `bound()` (the caller's current worst kept distance),
    /// which are skipped whole.
    ///
    /// Two blocks are summed side by side: each code's sum is still one chain over its
    /// coordinates in order (the same value as one block at a time), but the two chains are
    /// independent, so their additions overlap. The blocks are then checked and offered in
    /// order, the second against `bound()` as it stands after the first one's offers — the
    /// same decisions as one block at a time.
    #[inline(always)]
    fn scan(&self, q: &[f32], bound: impl Fn() -> f32, mut offer: impl FnMut(f32, usize)) {
        let dim = q.len();
        if dim == 0 {
            return;
        }
        let stride = dim * BLOCK;
        let mut emit = |b: usize, acc: &[f32; BLOCK]| {
            let valid = (self.len - b * BLOCK).min(BLOCK);
            let least = if valid == BLOCK {
                min_lane(acc)
            } else {
                acc[..valid].iter().copied().fold(f32::INFINITY, f32::min)
            };
            if least >= bound() {
                return;
            }
            for (l, &d) in acc[..valid].iter().enumerate() {
                offer(d, b * BLOCK + l);
            }
        };
        let pairs = self.blocks.chunks_exact(2 * stride);
        let rest = pairs.remainder();
        for (p, pair) in pairs.enumerate() {
            let (x, y) = pair.split_at(stride);
            let (mut a, mut b) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
            for ((&qj, cx), cy) in q
                .iter()
                .zip(x.chunks_exact(BLOCK))
                .zip(y.chunks_exact(BLOCK))
            {
                for l in 0..BLOCK {
                    let d = cx[l] - qj;
                    a[l] += d * d;
                    let e = cy[l] - qj;
                    b[l] += e * e;
                }
            }
            emit(2 * p, &a);
            emit(2 * p + 1, &b);
        }
        if !rest.is_empty() {
            emit(self.blocks.len() / stride - 1, &block_sums(q, rest));
        }
    }
}

/// The squared distances of one block's [`BLOCK`] codes (`block`, coordinate-major) to `q`:
/// one chain per code over its coordinates in order — the value every scan of this module
/// gives.
#[inline(always)]
fn block_sums(q: &[f32], block: &[f32]) -> [f32; BLOCK] {
    let mut a = [0.0f32; BLOCK];
    for (&qj, col) in q.iter().zip(block.chunks_exact(BLOCK)) {
        for l in 0..BLOCK {
            let d = col[l] - qj;
            a[l] += d * d;
        }
    }
    a
}

/// The smallest lane, NaN lanes ignored as `f32::min` ignores them — the same value as a fold
/// with `f32::min` (distances are never −0), but without its NaN test per step, so it
/// vectorises.
#[inline(always)]
fn min_lane(acc: &[f32; BLOCK]) -> f32 {
    acc.iter()
        .fold(f32::INFINITY, |m, &x| if x < m { x } else { m })
}

/// A scalar quantiser of a generation's codes to bytes: coordinate `v` ↦ level
/// `round((v − lo) / step)`, clamped to `0..=255`, with one `lo` and `step` for every
/// coordinate, so that `step² · Σ (a_j − b_j)²` over two codes' levels approximates their
/// squared distance (the error per coordinate is at most one step, plus clamping outside the
/// trained range). Trained on the codes a generation is clustered on, their range widened by
/// an eighth on each side.
///
/// Layout in a cell (`Cell::q8`): blocks of [`BLOCK`] codes; inside a block the coordinates go
/// by pairs (`j = 2p, 2p + 1`; an odd dimension is padded with a level-0 coordinate, as the
/// query is), each pair holding its [`BLOCK`] codes' two levels side by side — `2·BLOCK`
/// bytes, `[c₀ⱼ, c₀ⱼ₊₁, c₁ⱼ, c₁ⱼ₊₁, …]` — so that one widening load, one subtraction and one
/// multiply-add of adjacent 16-bit pairs give eight codes' sums over two coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Sq8 {
    lo: f32,
    step: f32,
}

impl Sq8 {
    /// The quantiser of `codes`' range (`None` when they hold no finite value).
    fn train(codes: &[f32]) -> Option<Self> {
        let (lo, hi) = codes
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if lo > hi {
            return None;
        }
        let margin = (hi - lo) / 8.0;
        let width = (hi - lo) + 2.0 * margin;
        let step = if width > 0.0 && (width / 255.0).is_normal() {
            width / 255.0
        } else {
            1.0
        };
        Some(Self {
            lo: lo - margin,
            step,
        })
    }

    /// Whether its values can quantise anything (a loaded state is checked).
    fn valid(&self) -> bool {
        self.lo.is_finite() && self.step.is_normal() && self.step > 0.0
    }

    /// The level of `v` (NaN: 0).
    #[inline(always)]
    fn level(&self, v: f32) -> u8 {
        ((v - self.lo) / self.step).round().clamp(0.0, 255.0) as u8
    }

    /// Coordinates of a code padded to pairs.
    fn padded(dim: usize) -> usize {
        dim + dim % 2
    }

    /// Writes code `v`'s levels into slot `slot` of `q8` (growing it by a block when needed).
    fn write(&self, q8: &mut Vec<u8>, slot: usize, v: &[f32]) {
        let dp = Self::padded(v.len());
        let (b, l) = (slot / BLOCK, slot % BLOCK);
        let base = b * BLOCK * dp;
        if q8.len() < base + BLOCK * dp {
            q8.resize(base + BLOCK * dp, 0);
        }
        for (j, &x) in v.iter().enumerate() {
            q8[base + (j / 2) * 2 * BLOCK + 2 * l + j % 2] = self.level(x);
        }
    }

    /// The query's levels as 16-bit values, padded to pairs.
    fn query(&self, q: &[f32], out: &mut Vec<i16>) {
        out.clear();
        out.extend(q.iter().map(|&x| self.level(x) as i16));
        if q.len() % 2 == 1 {
            out.push(0);
        }
    }
}

/// The integer sums `Σ (q_j − c_j)²` of one [`Sq8`] block's [`BLOCK`] codes (`block`, laid out
/// as [`Sq8`] says) to the query levels `qq` (padded to pairs): the portable loop. The compiler
/// does not find the multiply-adds of adjacent pairs in it (2.3× slower than the `f32` scan
/// in a timing loop), hence [`q8_x86::block_sums_v3`] where the CPU has AVX2.
#[inline(always)]
fn q8_block_sums(qq: &[i16], block: &[u8]) -> [i32; BLOCK] {
    let mut acc = [0i32; BLOCK];
    for (qp, pair) in qq.chunks_exact(2).zip(block.chunks_exact(2 * BLOCK)) {
        for l in 0..BLOCK {
            let d0 = pair[2 * l] as i16 - qp[0];
            let d1 = pair[2 * l + 1] as i16 - qp[1];
            acc[l] += d0 as i32 * d0 as i32 + d1 as i32 * d1 as i32;
        }
    }
    acc
}

/// The x86 level [`Generation::scan_q8`] runs at (`()` elsewhere).
#[cfg(target_arch = "x86_64")]
type Q8Level = Option<pulp::x86::V3>;
#[cfg(not(target_arch = "x86_64"))]
type Q8Level = Option<()>;

/// [`Generation::scan_q8`]'s loop, its block sums by `level` (AVX2 when given, called directly
/// so that its intrinsics are inlined into the caller's AVX2 function).
#[inline(always)]
fn scan_q8_with(
    cell: &Cell,
    qq: &[i16],
    step: f32,
    bound: impl Fn() -> f32,
    mut offer: impl FnMut(f32, usize),
    level: Q8Level,
) {
    let s2 = step * step;
    let stride = qq.len() * BLOCK;
    if stride == 0 {
        return;
    }
    for (b, block) in cell.q8.chunks_exact(stride).enumerate() {
        let valid = cell.len.saturating_sub(b * BLOCK).min(BLOCK);
        let acc = match level {
            #[cfg(target_arch = "x86_64")]
            Some(v3) => q8_x86::block_sums_v3(v3, qq, block),
            _ => q8_block_sums(qq, block),
        };
        let least = acc[..valid].iter().copied().min().unwrap_or(i32::MAX);
        if least as f32 * s2 >= bound() {
            continue;
        }
        for (l, &d) in acc[..valid].iter().enumerate() {
            offer(d as f32 * s2, b * BLOCK + l);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod q8_x86 {
    use super::BLOCK;
    use core::arch::x86_64::__m128i;
    use pulp::x86::V3;

    /// [`super::q8_block_sums`] with AVX2: per pair of coordinates, one widening of the
    /// block's 16 bytes to 16-bit lanes, one subtraction of the query's pair and one
    /// multiply-add of adjacent lanes (`d₀² + d₁²` per code, in 32 bits).
    #[inline(always)]
    pub(super) fn block_sums_v3(v3: V3, qq: &[i16], block: &[u8]) -> [i32; BLOCK] {
        let (avx, avx2) = (v3.avx, v3.avx2);
        let mut acc = avx._mm256_setzero_si256();
        for (qp, pair) in qq.chunks_exact(2).zip(block.chunks_exact(2 * BLOCK)) {
            let mut bytes = [0u8; 2 * BLOCK];
            bytes.copy_from_slice(pair);
            let codes = avx2._mm256_cvtepu8_epi16(pulp::cast::<_, __m128i>(bytes));
            let q = (qp[0] as u16 as u32 | (qp[1] as u16 as u32) << 16) as i32;
            let d = avx2._mm256_sub_epi16(codes, avx._mm256_set1_epi32(q));
            acc = avx2._mm256_add_epi32(acc, avx2._mm256_madd_epi16(d, d));
        }
        pulp::cast(acc)
    }
}

/// One generation: centroids (none while flat) and their cells.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Generation {
    /// `lists × dim` centroid coordinates; empty while the generation is flat.
    centroids: Vec<f32>,
    /// One cell per centroid (one cell while flat).
    cells: Vec<Cell>,
    /// Codes inserted into this generation (overwritten ones included).
    inserted: usize,
    /// Codes the centroids were trained for (0 while flat): the generation is re-clustered when
    /// it holds 2× as many.
    clustered_at: usize,
    /// Fast-scan quantiser of the residuals to the centroids (clustered generations of an
    /// index with `fastscan_m > 0`; every held code then has its packed code in its cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fsq: Option<FastScanPq>,
    /// Byte quantiser of the codes (clustered generations of an index with
    /// [`IvfParams::sq8`]; every held code then has its levels in its cell's `q8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sq: Option<Sq8>,
}

impl Generation {
    fn flat() -> Self {
        Self {
            centroids: Vec::new(),
            cells: vec![Cell::default()],
            inserted: 0,
            clustered_at: 0,
            fsq: None,
            sq: None,
        }
    }

    /// A generation with `centroids`, trained for `clustered_at` codes, and empty cells.
    fn clustered(centroids: Vec<f32>, dim: usize, clustered_at: usize) -> Self {
        Self {
            cells: vec![Cell::default(); centroids.len() / dim.max(1)],
            centroids,
            inserted: 0,
            clustered_at,
            fsq: None,
            sq: None,
        }
    }

    /// Encodes the code in slot `slot` of cell `cell` with the generation's fast-scan quantiser
    /// (if any): its residual to the cell's centroid, packed into the cell's groups, and the
    /// code itself copied into the cell's rows.
    fn encode_slot(&mut self, cell: usize, slot: usize, dim: usize, bufs: &mut FsBufs) {
        if self.fsq.is_none() && self.sq.is_none() {
            return;
        }
        bufs.resid.clear();
        self.cells[cell].read(slot, dim, &mut bufs.resid);
        if let Some(sq) = &self.sq {
            sq.write(&mut self.cells[cell].q8, slot, &bufs.resid);
        }
        let Some(pq) = &self.fsq else {
            return;
        };
        let c = &self.centroids[cell * dim..(cell + 1) * dim];
        let rows = &mut self.cells[cell].rows;
        if rows.len() < (slot + 1) * dim {
            rows.resize((slot + 1) * dim, 0.0);
        }
        rows[slot * dim..(slot + 1) * dim].copy_from_slice(&bufs.resid);
        for (r, &cj) in bufs.resid.iter_mut().zip(c) {
            *r -= cj;
        }
        pq.encode(&bufs.resid, &mut bufs.code);
        pq.write(&mut self.cells[cell].fs, slot, &bufs.code);
    }

    /// Encodes every held code ([`Generation::encode_slot`]), or drops the packed codes (and
    /// rows) and byte levels of a generation without the quantiser.
    fn encode_all(&mut self, dim: usize, bufs: &mut FsBufs) {
        for i in 0..self.cells.len() {
            self.cells[i].fs.clear();
            self.cells[i].rows.clear();
            self.cells[i].q8.clear();
            for slot in 0..self.cells[i].len {
                self.encode_slot(i, slot, dim, bufs);
            }
        }
    }

    fn held(&self) -> usize {
        self.cells.iter().map(|c| c.len).sum()
    }

    /// Heap bytes of its centroids, cells and quantiser.
    fn heap_bytes(&self) -> usize {
        use crate::heap::vec;
        vec(&self.centroids)
            + vec(&self.cells)
            + self.cells.iter().map(Cell::heap_bytes).sum::<usize>()
            + self.fsq.as_ref().map_or(0, FastScanPq::heap_bytes)
    }

    /// Rewrites every cell's byte levels from its codes (none without a quantiser).
    fn encode_q8(&mut self, dim: usize) {
        let mut code = Vec::with_capacity(dim);
        for cell in &mut self.cells {
            cell.q8 = Vec::new();
            if let Some(sq) = &self.sq {
                for slot in 0..cell.len {
                    code.clear();
                    cell.read(slot, dim, &mut code);
                    sq.write(&mut cell.q8, slot, &code);
                }
            }
        }
    }

    /// Scans cell `c`'s byte levels for the query levels `qq` (quantiser step `step`): each
    /// code's approximate squared distance offered with its slot, as [`Cell::scan`] offers
    /// exact ones (blocks with no distance below `bound()` skipped whole). With AVX2 where the
    /// CPU has it ([`q8_x86::block_sums_v3`]), the portable loop otherwise: the same sums.
    #[inline(always)]
    fn scan_q8(
        &self,
        c: usize,
        qq: &[i16],
        step: f32,
        bound: impl Fn() -> f32,
        offer: impl FnMut(f32, usize),
    ) {
        let cell = &self.cells[c];
        // Called inside the search's dispatched kernel (`crate::simd`), already compiled for
        // AVX2 when the CPU has it: the intrinsics are inlined there.
        #[cfg(target_arch = "x86_64")]
        let level = pulp::x86::V3::try_new();
        #[cfg(not(target_arch = "x86_64"))]
        let level = None;
        scan_q8_with(cell, qq, step, bound, offer, level)
    }
}

/// A bounded-memory IVF index over `dim`-dimensional `f32` codes (see the module docs for the
/// eviction rule).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "IvfRepr")]
pub struct IvfIndex {
    dim: usize,
    params: IvfParams,
    capacity: usize,
    rng: u64,
    /// Payload bytes per code (0: none).
    payload_dim: usize,
    current: Generation,
    previous: Option<Generation>,
    /// Reusable buffers (not serialised).
    #[serde(skip)]
    scratch: Scratch,
    /// Counts the current generation's clusterings and rotations (not serialised): a nearest
    /// cell found by a search is valid for an insertion while it is unchanged.
    #[serde(skip)]
    stamp: u64,
}

/// Buffers of a fast-scan encoding.
#[derive(Clone, Debug, Default)]
struct FsBufs {
    resid: Vec<f32>,
    code: Vec<u8>,
}

/// Buffers of a fast-scan search.
#[derive(Clone, Debug, Default)]
struct FsScratch {
    /// The query's residual to the cell being scanned.
    resid: Vec<f32>,
    /// The query's quantised table for that cell.
    lut: Lut,
    /// The shortlist.
    short: Shortlist,
    /// The shortlist's codes: `cell << 32 | slot`, in the shortlist's order.
    codes: Vec<u64>,
    /// [`BLOCK`] shortlisted codes, coordinate-major (`block[j·BLOCK + l]`), being re-ranked.
    block: Vec<f32>,
    /// The query's [`Sq8`] levels.
    qq: Vec<i16>,
}

impl Scratch {
    /// Heap bytes of its buffers.
    fn heap_bytes(&self) -> usize {
        use crate::heap::vec;
        let fs = &self.fs;
        vec(&self.bufs.resid)
            + vec(&self.bufs.code)
            + vec(&fs.resid)
            + fs.lut.heap_bytes()
            + fs.short.heap_bytes()
            + vec(&fs.codes)
            + vec(&fs.block)
            + vec(&fs.qq)
            + vec(&self.probes)
            + vec(&self.found)
            + vec(&self.cands)
            + vec(&self.home_code)
    }
}

#[derive(Clone, Debug, Default)]
struct Scratch {
    /// Fast-scan encoding buffers.
    bufs: FsBufs,
    /// Fast-scan search buffers.
    fs: FsScratch,
    /// Probed cells: (distance to centroid, cell), ascending, at most `probe`.
    probes: Vec<(f32, u32)>,
    /// The `k` smallest distances found so far, ascending.
    found: Vec<f32>,
    /// The nearest candidates found so far: (distance, generation, cell, slot), ascending.
    cands: Vec<(f32, u32, u32, u32)>,
    /// The last re-ranking search's code and its nearest cell of the current generation (with
    /// the index's stamp then): an insertion of that code right after reuses the cell.
    home: Option<(u64, u32)>,
    home_code: Vec<f32>,
}

/// Serialised form of [`IvfIndex`], checked on loading.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IvfRepr {
    dim: usize,
    params: IvfParams,
    capacity: usize,
    rng: u64,
    #[serde(default)]
    payload_dim: usize,
    current: Generation,
    previous: Option<Generation>,
}

impl TryFrom<IvfRepr> for IvfIndex {
    type Error = String;

    fn try_from(r: IvfRepr) -> Result<Self, String> {
        if r.dim == 0 || r.capacity == 0 {
            return Err(format!("dimension {} and capacity {}", r.dim, r.capacity));
        }
        let mut idx = Self {
            dim: r.dim,
            params: r.params,
            capacity: r.capacity,
            rng: r.rng,
            payload_dim: r.payload_dim,
            current: r.current,
            previous: r.previous,
            scratch: Scratch::default(),
            stamp: 0,
        };
        for g in std::iter::once(&idx.current).chain(idx.previous.as_ref()) {
            let trained = !g.centroids.is_empty();
            let cells = if trained {
                g.centroids.len() / r.dim
            } else {
                1
            };
            if g.centroids.len() % r.dim != 0 || g.cells.len() != cells {
                return Err(format!(
                    "{} centroid values and {} cells for dimension {}",
                    g.centroids.len(),
                    g.cells.len(),
                    r.dim
                ));
            }
            let cap = if trained {
                idx.cell_cap(g)
            } else {
                idx.flat_cap()
            };
            let gb = match &g.fsq {
                Some(pq) if trained => {
                    pq.check(r.dim)?;
                    pq.group_bytes()
                }
                Some(_) => return Err("a fast-scan quantiser in a flat generation".into()),
                None => 0,
            };
            for (i, c) in g.cells.iter().enumerate() {
                let blocks = c.len.div_ceil(BLOCK);
                let groups = c.len.div_ceil(crate::fastscan::GROUP);
                if c.fs.len() != groups * gb {
                    return Err(format!(
                        "cell {i}: {} fast-scan code bytes for {} codes ({gb} bytes per group)",
                        c.fs.len(),
                        c.len
                    ));
                }
                if Some(c.blocks.len()) != blocks.checked_mul(r.dim * BLOCK)
                    || Some(c.payload.len()) != c.len.checked_mul(r.payload_dim)
                    || c.len > cap
                    || (c.head > 0 && c.head >= c.len)
                {
                    return Err(format!(
                        "cell {i}: {} values and {} payload bytes for {} codes, head {} (dimension {}, at most {cap} codes)",
                        c.blocks.len(),
                        c.payload.len(),
                        c.len,
                        c.head,
                        r.dim
                    ));
                }
            }
        }
        // The rows of the packed codes' cells, from the (checked) blocks.
        for g in std::iter::once(&mut idx.current).chain(idx.previous.as_mut()) {
            match g.sq {
                Some(sq) if !sq.valid() || g.centroids.is_empty() => {
                    return Err(format!(
                        "a byte quantiser (lo {}, step {}) in a flat generation or with a bad step",
                        sq.lo, sq.step
                    ))
                }
                Some(_) => g.encode_q8(r.dim),
                None => {}
            }
            if g.fsq.is_some() {
                for c in &mut g.cells {
                    let mut rows = Vec::with_capacity(c.len * r.dim);
                    for slot in 0..c.len {
                        c.read(slot, r.dim, &mut rows);
                    }
                    c.rows = rows;
                }
            }
        }
        Ok(idx)
    }
}

/// The `n` nearest of the `dim`-dimensional `centroids` to `q`, ascending (ties to the lower
/// cell), into `out`.
fn nearest_centroids(
    centroids: &[f32],
    dim: usize,
    q: &[f32],
    n: usize,
    out: &mut Vec<(f32, u32)>,
) {
    crate::simd::vectorized(CentroidKernel {
        centroids,
        dim,
        q,
        n,
        out,
    })
}

/// [`nearest_centroids`] as a [`Kernel`].
struct CentroidKernel<'a> {
    centroids: &'a [f32],
    dim: usize,
    q: &'a [f32],
    n: usize,
    out: &'a mut Vec<(f32, u32)>,
}

impl Kernel for CentroidKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        nearest_centroids_in(self.centroids, self.dim, self.q, self.n, self.out)
    }
}

/// A search of both generations, as a [`Kernel`] (see [`SearchKernel::run`]).
struct SearchKernel<'a, B, O> {
    index: &'a IvfIndex,
    q: &'a [f32],
    k: usize,
    approx: bool,
    probes: &'a mut Vec<(f32, u32)>,
    fs: &'a mut FsScratch,
    bound: B,
    offer: O,
}

impl<B: Fn() -> f32 + Copy, O: FnMut(f32, u32, u32, usize)> Kernel for SearchKernel<'_, B, O> {
    type Output = usize;

    /// Offers the distance of every code in the searched cells of both generations to `offer`
    /// (with its generation — 0 current, 1 previous —, cell and slot); returns the current
    /// generation's nearest cell (where `q` would be inserted). With `approx`, a generation
    /// with byte levels ([`Sq8`]) offers their approximate distances instead.
    ///
    /// In a clustered generation the `probe` nearest *non-empty* cells are scanned, then further
    /// ones in order of their centroid's distance until `k` codes were seen (so a search returns
    /// `min(k, held)` distances, as an exact search would).
    #[inline(always)]
    fn run(self) -> usize {
        let SearchKernel {
            index,
            q,
            k,
            approx,
            probes,
            fs,
            bound,
            mut offer,
        } = self;
        let mut home = 0;
        let probe = index.params.probe.max(1);
        for (gi, g) in std::iter::once(&index.current)
            .chain(index.previous.as_ref())
            .enumerate()
        {
            let gi = gi as u32;
            if g.centroids.is_empty() {
                g.cells[0].scan(q, bound, |d, slot| offer(d, gi, 0, slot));
                continue;
            }
            // Distances to every centroid: the nearest is the home cell; the non-empty ones are
            // the probe candidates.
            probes.clear();
            let mut best = (f32::INFINITY, 0usize);
            for (i, c) in g.centroids.chunks_exact(index.dim).enumerate() {
                let d = sq_dist(q, c);
                if d < best.0 {
                    best = (d, i);
                }
                if g.cells[i].len > 0 {
                    probes.push((d, i as u32));
                }
            }
            if gi == 0 {
                home = best.1;
            }
            let by = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            let first = probe.min(probes.len());
            if first < probes.len() {
                probes.select_nth_unstable_by(first, by);
            }
            probes[..first].sort_unstable_by(by);
            // The three ways of scanning the probed cells below each write out the same loop
            // (the probed cells, then further ones until `k` codes were seen). Not a helper
            // taking the cell scan as a closure: the closure's body may stay out of line,
            // compiled without the dispatched AVX2 level (`crate::simd`) — measured, PRADA's
            // byte-level search went from 12 to 77 µs that way.
            if let Some(sq) = g.sq.filter(|_| approx) {
                // Byte levels: approximate distances, for a caller that re-ranks its
                // candidates exactly.
                sq.query(q, &mut fs.qq);
                let mut seen = 0;
                for &(_, c) in &probes[..first] {
                    g.scan_q8(c as usize, &fs.qq, sq.step, bound, |d, slot| {
                        offer(d, gi, c, slot)
                    });
                    seen += g.cells[c as usize].len;
                }
                if seen < k && first < probes.len() {
                    probes[first..].sort_unstable_by(by);
                    for &(_, c) in &probes[first..] {
                        if seen >= k {
                            break;
                        }
                        g.scan_q8(c as usize, &fs.qq, sq.step, bound, |d, slot| {
                            offer(d, gi, c, slot)
                        });
                        seen += g.cells[c as usize].len;
                    }
                }
                continue;
            }
            let r = index.params.fastscan_rerank.max(1).saturating_mul(k.max(1));
            let planned: usize = probes[..first]
                .iter()
                .map(|&(_, c)| g.cells[c as usize].len)
                .sum();
            let pays = |pq: &&FastScanPq| fastscan_pays(planned, first, r, index.dim, pq.pairs());
            if let Some(pq) = g.fsq.as_ref().filter(pays) {
                // Fast scan: a shortlist by quantised distance over the same cells, then the
                // shortlisted codes' exact distances.
                fs.short.reset(r);
                let mut seen = 0;
                for &(_, c) in &probes[..first] {
                    seen += index.fastscan_cell(g, pq, q, c, fs);
                }
                if seen < k && first < probes.len() {
                    probes[first..].sort_unstable_by(by);
                    for &(_, c) in &probes[first..] {
                        if seen >= k {
                            break;
                        }
                        seen += index.fastscan_cell(g, pq, q, c, fs);
                    }
                }
                fs.short.cut();
                // Exact distances of the shortlisted codes, from the cells' rows, in the
                // shortlist's order (sorting them into memory order first cost more than it
                // saved: 0.7 µs per k-NN query at 100k codes). The `k` smallest distances
                // returned do not depend on the order they are offered in.
                fs.codes.clear();
                fs.codes.extend(
                    fs.short
                        .items()
                        .map(|(c, slot)| ((c as u64) << 32) | slot as u64),
                );
                // The shortlisted rows lie in up to `probe` cells spread over the generation, so
                // reading them is bound by cache misses: first one load per cache line of every
                // row and nothing else (independent loads, whose misses overlap — the safe
                // stand-in for a prefetch); then [`BLOCK`] rows at a time copied
                // coordinate-major into `fs.block`, summed as the scan sums a block
                // ([`block_sums`]), and offered in order.
                let dim = index.dim;
                let row_of = |key: u64| {
                    let (c, slot) = ((key >> 32) as usize, (key & u32::MAX as u64) as usize);
                    &g.cells[c].rows[slot * dim..(slot + 1) * dim]
                };
                let mut touched = 0u32;
                for &key in &fs.codes {
                    let row = row_of(key);
                    for x in row.iter().step_by(LINE_FLOATS).chain(row.last()) {
                        touched |= x.to_bits();
                    }
                }
                std::hint::black_box(touched);
                fs.block.resize(dim * BLOCK, 0.0);
                for keys in fs.codes.chunks(BLOCK) {
                    for (l, &key) in keys.iter().enumerate() {
                        for (j, &x) in row_of(key).iter().enumerate() {
                            fs.block[j * BLOCK + l] = x;
                        }
                    }
                    let acc = block_sums(q, &fs.block);
                    for (&key, &d) in keys.iter().zip(&acc) {
                        let (c, slot) = ((key >> 32) as u32, (key & u32::MAX as u64) as usize);
                        if d < bound() {
                            offer(d, gi, c, slot);
                        }
                    }
                }
                continue;
            }
            let mut seen = 0;
            for &(_, c) in &probes[..first] {
                let cell = &g.cells[c as usize];
                cell.scan(q, bound, |d, slot| offer(d, gi, c, slot));
                seen += cell.len;
            }
            if seen < k && first < probes.len() {
                probes[first..].sort_unstable_by(by);
                for &(_, c) in &probes[first..] {
                    if seen >= k {
                        break;
                    }
                    let cell = &g.cells[c as usize];
                    cell.scan(q, bound, |d, slot| offer(d, gi, c, slot));
                    seen += cell.len;
                }
            }
        }
        home
    }
}

/// The smallest exact squared distance between `full` and the payloads of `cands` (PRADA's
/// re-rank), as a [`Kernel`].
struct RerankKernel<'a> {
    index: &'a IvfIndex,
    cands: &'a [(f32, u32, u32, u32)],
    full: &'a [u8],
}

impl Kernel for RerankKernel<'_> {
    type Output = Option<f32>;

    #[inline(always)]
    fn run(self) -> Option<f32> {
        let pd = self.index.payload_dim;
        let payload = |&(_, g, c, slot): &(f32, u32, u32, u32)| {
            let gen = if g == 0 {
                &self.index.current
            } else {
                self.index.previous.as_ref().unwrap_or(&self.index.current)
            };
            &gen.cells[c as usize].payload[slot as usize * pd..(slot as usize + 1) * pd]
        };
        // A plain loop, not an iterator adapter: an adapter's `fold` is compiled out of line,
        // without the dispatched SIMD level, and the distance with it.
        // First one load per cache line of every candidate's payload and nothing else:
        // independent loads, whose misses overlap (the candidates lie anywhere in the
        // generation), before the distances read them in order.
        let mut touched = 0u8;
        for cand in self.cands {
            let p = payload(cand);
            for x in p.iter().step_by(64).chain(p.last()) {
                touched |= x;
            }
        }
        std::hint::black_box(touched);
        let mut best: Option<f32> = None;
        for cand in self.cands {
            let d = <u8 as crate::ann::Elem>::dist2(self.full, payload(cand));
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        best
    }
}

/// One pass of Lloyd's assignment step (nearest centroid of each sample code, summed into
/// `sums` and counted), as a [`Kernel`].
struct AssignKernel<'a> {
    sample: &'a [&'a [f32]],
    cent: &'a [f32],
    dim: usize,
    sums: &'a mut [f64],
    counts: &'a mut [usize],
}

impl Kernel for AssignKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let dim = self.dim;
        for v in self.sample {
            let mut best = (f32::INFINITY, 0usize);
            for (i, c) in self.cent.chunks_exact(dim).enumerate() {
                let d = sq_dist(v, c);
                if d < best.0 {
                    best = (d, i);
                }
            }
            self.counts[best.1] += 1;
            for (s, &x) in self.sums[best.1 * dim..(best.1 + 1) * dim]
                .iter_mut()
                .zip(*v)
            {
                *s += x as f64;
            }
        }
    }
}

/// [`nearest_centroids`]' body (inlined into the dispatched closure).
#[inline(always)]
fn nearest_centroids_in(
    centroids: &[f32],
    dim: usize,
    q: &[f32],
    n: usize,
    out: &mut Vec<(f32, u32)>,
) {
    out.clear();
    for (i, c) in centroids.chunks_exact(dim).enumerate() {
        let d = sq_dist(q, c);
        if out.len() >= n {
            match out.last() {
                Some(&(w, _)) if d < w => {
                    out.pop();
                }
                _ => continue,
            }
        }
        let mut j = out.len();
        out.push((d, i as u32));
        while j > 0 && out[j - 1].0 > d {
            out[j] = out[j - 1];
            j -= 1;
        }
        out[j] = (d, i as u32);
    }
}

/// Inserts `x` into the list `found`, ascending by `key`, keeping its `k` smallest entries
/// (ties: the earlier entry first).
#[inline]
fn push_bounded_by<T: Copy>(found: &mut Vec<T>, x: T, k: usize, key: impl Fn(&T) -> f32) {
    let d = key(&x);
    if found.len() >= k {
        match found.last() {
            Some(w) if d < key(w) => {
                found.pop();
            }
            _ => return,
        }
    }
    let mut i = found.len();
    found.push(x);
    while i > 0 && key(&found[i - 1]) > d {
        found[i] = found[i - 1];
        i -= 1;
    }
    found[i] = x;
}

impl IvfIndex {
    /// An empty index for `dim`-dimensional codes; each generation covers `capacity`
    /// insertions.
    pub fn new(dim: usize, params: IvfParams, capacity: usize, seed: u64) -> Self {
        Self {
            dim: dim.max(1),
            params,
            capacity: capacity.max(1),
            rng: seed,
            payload_dim: 0,
            current: Generation::flat(),
            previous: None,
            scratch: Scratch::default(),
            stamp: 0,
        }
    }

    /// Heap bytes the index holds: both generations' centroids, cells (codes, payloads,
    /// packed codes and row copies) and quantisers, and its search buffers.
    pub fn heap_bytes(&self) -> usize {
        self.current.heap_bytes()
            + self.previous.as_ref().map_or(0, Generation::heap_bytes)
            + self.scratch.heap_bytes()
    }

    /// The code dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Codes held now (at most `2·capacity`).
    pub fn len(&self) -> usize {
        self.current.held() + self.previous.as_ref().map_or(0, Generation::held)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most codes one cell of the clustered generation `g` holds.
    fn cell_cap(&self, g: &Generation) -> usize {
        let lists = g.cells.len().max(1);
        (self.params.cell_factor.max(1) * self.capacity)
            .div_ceil(lists)
            .max(1)
    }

    /// Cells for a clustering of `n` codes: `√n`, within `[2, max_lists]`.
    fn lists_for(&self, n: usize) -> usize {
        n.isqrt().clamp(2, self.params.max_lists.max(2))
    }

    /// Most codes a flat generation holds before it is clustered (or rotated).
    fn flat_cap(&self) -> usize {
        // At least 4 codes: the smallest set a clustering (2 cells) accepts.
        self.params.train_size.max(4).min(self.capacity)
    }

    /// Squared distances of the (approximately) `k` nearest held codes to `q`, ascending
    /// (none when `q` does not have the index's dimension).
    pub fn search(&mut self, q: &[f32], k: usize) -> Vec<f32> {
        if q.len() != self.dim {
            return Vec::new();
        }
        self.search_scratch(q, k);
        self.scratch.found.clone()
    }

    /// [`IvfIndex::search`] then [`IvfIndex::insert`] of the same code (the current
    /// generation's nearest centroid is computed once); nothing is inserted, and nothing found,
    /// for a code of another dimension; nothing is inserted into an index with payloads
    /// ([`IvfIndex::insert_with_payload`]).
    pub fn search_insert(&mut self, v: &[f32], k: usize) -> Vec<f32> {
        if v.len() != self.dim || self.payload_dim != 0 {
            return self.search(v, k);
        }
        self.rotate();
        let cell = self.search_scratch(v, k);
        let d = self.scratch.found.clone();
        self.insert_into(v, &[], cell);
        d
    }

    /// Inserts a code, rotating generations and clustering as the eviction rule says. A code
    /// whose length is not the index's dimension is not inserted, nor is one without a payload
    /// in an index that has payloads.
    pub fn insert(&mut self, v: &[f32]) {
        self.insert_with_payload(v, &[]);
    }

    /// Inserts a code with a byte payload (all payloads of an index have the length of the
    /// first one; a code with another payload length, or another dimension, is not inserted).
    pub fn insert_with_payload(&mut self, v: &[f32], payload: &[u8]) {
        if self.is_empty() && self.previous.is_none() {
            self.payload_dim = payload.len();
        }
        if v.len() != self.dim || payload.len() != self.payload_dim {
            return;
        }
        self.rotate();
        let home = self.scratch.home.take();
        let cell = if self.current.centroids.is_empty() {
            0
        } else if let Some((_, c)) =
            home.filter(|&(stamp, _)| stamp == self.stamp && self.scratch.home_code == v)
        {
            // The re-ranking search of this code just found it (`nearest_payload_dist2`).
            c as usize
        } else {
            nearest_centroids(
                &self.current.centroids,
                self.dim,
                v,
                1,
                &mut self.scratch.probes,
            );
            self.scratch.probes[0].1 as usize
        };
        self.insert_into(v, payload, cell);
    }

    /// Re-ranking search (PRADA's use): the `candidates` nearest codes to `q` found by the IVF
    /// search, then the smallest exact squared L2 distance between `full` and their payloads
    /// (`None` for an empty index, a query of another dimension or another payload length).
    pub fn nearest_payload_dist2(
        &mut self,
        q: &[f32],
        full: &[u8],
        candidates: usize,
    ) -> Option<f32> {
        if q.len() != self.dim || full.len() != self.payload_dim {
            return None;
        }
        let mut sc = std::mem::take(&mut self.scratch);
        let k = candidates.max(1);
        let cands = &mut sc.cands;
        cands.clear();
        let worst = std::cell::Cell::new(f32::INFINITY);
        let bound = || worst.get();
        let home = crate::simd::vectorized(SearchKernel {
            index: self,
            q,
            k,
            approx: true,
            probes: &mut sc.probes,
            fs: &mut sc.fs,
            bound,
            offer: |d, g, c, slot| {
                if d < worst.get() {
                    push_bounded_by(cands, (d, g, c, slot as u32), k, |x| x.0);
                    if cands.len() >= k {
                        worst.set(cands.last().map_or(f32::INFINITY, |w| w.0));
                    }
                }
            },
        });
        let best = crate::simd::vectorized(RerankKernel {
            index: self,
            cands: &sc.cands,
            full,
        });
        sc.home = Some((self.stamp, home as u32));
        sc.home_code.clear();
        sc.home_code.extend_from_slice(q);
        self.scratch = sc;
        best
    }

    /// Exact version of [`IvfIndex::nearest_payload_dist2`] (linear scan over the payloads).
    pub fn exact_nearest_payload_dist2(&self, full: &[u8]) -> Option<f32> {
        let (mut codes, mut payloads) = (Vec::new(), Vec::new());
        for g in std::iter::once(&self.current).chain(self.previous.as_ref()) {
            g.read_all(self.dim, self.payload_dim, &mut codes, &mut payloads);
        }
        payloads
            .chunks_exact(self.payload_dim.max(1))
            .filter(|_| self.payload_dim > 0 && full.len() == self.payload_dim)
            .map(|p| <u8 as crate::ann::Elem>::dist2(full, p))
            .reduce(f32::min)
    }

    /// Every held code (concatenated) and payload, cell by cell.
    #[cfg(test)]
    pub(crate) fn held_codes(&self) -> (Vec<f32>, Vec<u8>) {
        let (mut codes, mut payloads) = (Vec::new(), Vec::new());
        for g in self.previous.iter().chain(std::iter::once(&self.current)) {
            g.read_all(self.dim, self.payload_dim, &mut codes, &mut payloads);
        }
        (codes, payloads)
    }

    /// Exact version of [`IvfIndex::search`] (linear scan over every held code).
    pub fn exact_search(&self, q: &[f32], k: usize) -> Vec<f32> {
        if q.len() != self.dim {
            return Vec::new();
        }
        let (mut codes, mut payloads) = (Vec::new(), Vec::new());
        for g in std::iter::once(&self.current).chain(self.previous.as_ref()) {
            g.read_all(self.dim, self.payload_dim, &mut codes, &mut payloads);
        }
        let mut d: Vec<f32> = codes
            .chunks_exact(self.dim)
            .map(|c| sq_dist(q, c))
            .collect();
        d.sort_by(f32::total_cmp);
        d.truncate(k);
        d
    }

    /// Searches both generations; leaves the `k` smallest distances in `scratch.found`
    /// (ascending) and returns the current generation's nearest cell (where `q` would be
    /// inserted).
    ///
    /// The distances below the bound are appended to an unsorted buffer of up to `2k`; a full
    /// buffer is cut to its `k` smallest (a selection, `O(k)`), whose largest becomes the
    /// bound. The bound is looser between two cuts than a sorted list of `k` would keep, so
    /// more codes are appended, but each in `O(1)` instead of an insertion into the list; a code
    /// that is skipped is still never below the final `k`-th distance, so the `k` values
    /// returned are exactly the `k` smallest of the scanned codes, as before.
    fn search_scratch(&mut self, q: &[f32], k: usize) -> usize {
        let mut sc = std::mem::take(&mut self.scratch);
        let found = &mut sc.found;
        found.clear();
        let worst = std::cell::Cell::new(f32::INFINITY);
        let bound = || worst.get();
        let cut = |found: &mut Vec<f32>| {
            if found.len() > k {
                found.select_nth_unstable_by(k, f32::total_cmp);
                found.truncate(k);
            }
        };
        let home = crate::simd::vectorized(SearchKernel {
            index: self,
            q,
            k,
            approx: false,
            probes: &mut sc.probes,
            fs: &mut sc.fs,
            bound,
            offer: |d, _, _, _| {
                if k > 0 && d < worst.get() {
                    found.push(d);
                    if found.len() >= 2 * k {
                        cut(found);
                        worst.set(found.iter().copied().fold(f32::NEG_INFINITY, f32::max));
                    }
                }
            },
        });
        cut(found);
        found.sort_unstable_by(f32::total_cmp);
        self.scratch = sc;
        home
    }

    /// Fast-scans cell `c` of generation `g` (quantiser `pq`) for `q` into the shortlist;
    /// returns the cell's code count.
    #[inline(always)]
    fn fastscan_cell(
        &self,
        g: &Generation,
        pq: &FastScanPq,
        q: &[f32],
        c: u32,
        fs: &mut FsScratch,
    ) -> usize {
        let cent = &g.centroids[c as usize * self.dim..(c as usize + 1) * self.dim];
        fs.resid.clear();
        for (a, b) in q.iter().zip(cent) {
            fs.resid.push(a - b);
        }
        pq.lut(&fs.resid, &mut fs.lut);
        let cell = &g.cells[c as usize];
        crate::fastscan::scan_cell(&cell.fs, cell.len, &fs.lut, c, &mut fs.short);
        cell.len
    }

    /// Starts a new generation when the current one has covered `capacity` insertions.
    fn rotate(&mut self) {
        if self.current.inserted < self.capacity {
            return;
        }
        self.stamp += 1;
        let full = std::mem::take(&mut self.current);
        let (mut codes, mut payloads) = (Vec::new(), Vec::new());
        full.read_all(self.dim, 0, &mut codes, &mut payloads);
        let n = codes.len() / self.dim;
        let centroids = self.kmeans(&codes, self.lists_for(n));
        self.current = if centroids.is_empty() {
            Generation::flat()
        } else {
            let fsq = self.train_fastscan(&codes, &centroids);
            let mut g = Generation::clustered(centroids, self.dim, n);
            g.fsq = fsq;
            g.sq = self.train_sq8(&codes);
            g
        };
        self.previous = Some(full);
    }

    /// Appends `v` (payload `p`) to cell `cell` of the current generation (overwriting the
    /// cell's oldest code when it is full); clusters a flat generation that reaches
    /// `train_size`, re-clusters one that has grown 2× since its last clustering.
    fn insert_into(&mut self, v: &[f32], p: &[u8], cell: usize) {
        let flat = self.current.centroids.is_empty();
        let cap = if flat {
            self.flat_cap()
        } else {
            self.cell_cap(&self.current)
        };
        let slot = self.current.cells[cell].push_fifo(v, p, cap);
        self.current
            .encode_slot(cell, slot, self.dim, &mut self.scratch.bufs);
        self.current.inserted += 1;
        let held = self.current.held();
        let due = if flat {
            held >= self.params.train_size && self.lists_for(held) * 2 <= held
        } else {
            held >= 2 * self.current.clustered_at && self.lists_for(held) > self.current.cells.len()
        };
        if due && self.params.max_lists > 1 {
            self.cluster_current();
        }
    }

    /// (Re-)clusters the current generation: trains centroids on its codes and re-assigns
    /// them with their payloads (in each cell's FIFO order, so the per-cell eviction order is
    /// kept as far as the new cells allow).
    fn cluster_current(&mut self) {
        let (mut codes, mut payloads) = (Vec::new(), Vec::new());
        let pd = self.payload_dim;
        self.current
            .read_all(self.dim, pd, &mut codes, &mut payloads);
        let n = codes.len() / self.dim;
        let centroids = self.kmeans(&codes, self.lists_for(n));
        if centroids.is_empty() {
            return;
        }
        let fsq = self.train_fastscan(&codes, &centroids);
        let inserted = self.current.inserted;
        self.stamp += 1;
        self.current = Generation::clustered(centroids, self.dim, n);
        self.current.inserted = inserted;
        self.current.fsq = fsq;
        self.current.sq = self.train_sq8(&codes);
        let cap = self.cell_cap(&self.current);
        let mut probes = std::mem::take(&mut self.scratch.probes);
        for (i, v) in codes.chunks_exact(self.dim).enumerate() {
            nearest_centroids(&self.current.centroids, self.dim, v, 1, &mut probes);
            let p = &payloads[i * pd..(i + 1) * pd];
            let cell = probes[0].1 as usize;
            let slot = self.current.cells[cell].push_fifo(v, p, cap);
            self.current
                .encode_slot(cell, slot, self.dim, &mut self.scratch.bufs);
        }
        self.scratch.probes = probes;
    }

    /// Codes sampled to train a fast-scan quantiser (at most).
    const FS_SAMPLE: usize = 4096;

    /// A fast-scan quantiser of the residuals of (a sample of at most [`Self::FS_SAMPLE`] of)
    /// `codes` to their nearest of `centroids`, when the index uses fast scan
    /// (`fastscan_m > 0`) and enough codes are given (see [`FastScanPq::train`]); `None`
    /// otherwise.
    fn train_fastscan(&mut self, codes: &[f32], centroids: &[f32]) -> Option<FastScanPq> {
        let m = self.params.fastscan_m;
        let dim = self.dim;
        let n = codes.len() / dim;
        if m == 0 || n < crate::fastscan::KSUB || centroids.is_empty() {
            return None;
        }
        let take = n.min(Self::FS_SAMPLE);
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in 0..take {
            let j = i + (splitmix(&mut self.rng) % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut resid = Vec::with_capacity(take * dim);
        let mut probes = std::mem::take(&mut self.scratch.probes);
        for &i in &order[..take] {
            let v = &codes[i as usize * dim..(i as usize + 1) * dim];
            nearest_centroids(centroids, dim, v, 1, &mut probes);
            let c = probes[0].1 as usize;
            resid.extend(v.iter().zip(&centroids[c * dim..]).map(|(x, y)| x - y));
        }
        self.scratch.probes = probes;
        FastScanPq::train(
            dim,
            m,
            &resid,
            self.params.kmeans_iters.max(1),
            &mut self.rng,
        )
    }

    /// A byte quantiser of `codes` when the index stores byte levels ([`IvfParams::sq8`]).
    fn train_sq8(&self, codes: &[f32]) -> Option<Sq8> {
        self.params.sq8.then(|| Sq8::train(codes)).flatten()
    }

    /// Switches the byte levels ([`IvfParams::sq8`]) on or off: each clustered generation
    /// without a quantiser gets one trained on its held codes, and its levels written (a state
    /// saved before them is converted); off, they are dropped. The held codes are unchanged.
    pub fn set_sq8(&mut self, on: bool) {
        self.params.sq8 = on;
        let dim = self.dim;
        for g in std::iter::once(&mut self.current).chain(self.previous.as_mut()) {
            if !on || g.centroids.is_empty() {
                if g.sq.take().is_some() {
                    g.encode_q8(dim);
                }
                continue;
            }
            if g.sq.is_none() {
                let (mut codes, mut payloads) = (Vec::new(), Vec::new());
                g.read_all(dim, 0, &mut codes, &mut payloads);
                g.sq = Sq8::train(&codes);
                g.encode_q8(dim);
            }
        }
    }

    /// Switches fast scan to `m` sub-quantisers (0: off) with shortlists of `rerank · k`.
    /// When `m` is not already the index's, each clustered generation gets a quantiser trained
    /// on its held codes — the current one also on the previous generation's, as a rotation
    /// trains it, so that a young generation gets one too — (none when `m` is 0) and every
    /// code is re-encoded: a state saved before fast scan is converted. The held codes
    /// themselves are unchanged.
    pub fn set_fastscan(&mut self, m: usize, rerank: usize) {
        self.params.fastscan_rerank = rerank;
        if m == self.params.fastscan_m {
            return;
        }
        self.params.fastscan_m = m;
        let mut bufs = std::mem::take(&mut self.scratch.bufs);
        for gi in 0..2 {
            let mut g = if gi == 0 {
                std::mem::take(&mut self.current)
            } else {
                match self.previous.take() {
                    Some(g) => g,
                    None => break,
                }
            };
            g.fsq = None;
            if !g.centroids.is_empty() {
                let (mut codes, mut payloads) = (Vec::new(), Vec::new());
                g.read_all(self.dim, 0, &mut codes, &mut payloads);
                if gi == 0 {
                    if let Some(p) = &self.previous {
                        p.read_all(self.dim, 0, &mut codes, &mut payloads);
                    }
                }
                g.fsq = self.train_fastscan(&codes, &g.centroids);
            }
            g.encode_all(self.dim, &mut bufs);
            if gi == 0 {
                self.current = g;
            } else {
                self.previous = Some(g);
            }
        }
        self.scratch.bufs = bufs;
    }

    /// The index's parameters.
    pub fn params(&self) -> &IvfParams {
        &self.params
    }

    /// Lloyd's k-means on a sample of `codes` (at most `max(train_size, 16·lists)` of them):
    /// `lists` centroids seeded with distinct sampled codes; an emptied centroid keeps its
    /// position. Returns no centroids (the generation stays flat) when fewer than `2·lists`
    /// codes are given.
    fn kmeans(&mut self, codes: &[f32], lists: usize) -> Vec<f32> {
        let dim = self.dim;
        let n = codes.len() / dim;
        if lists < 2 || n < 2 * lists {
            return Vec::new();
        }
        // Sample without replacement (partial Fisher–Yates over the indices).
        let take = n.min(self.params.train_size.max(16 * lists));
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in 0..take {
            let j = i + (splitmix(&mut self.rng) % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        let sample: Vec<&[f32]> = order[..take]
            .iter()
            .map(|&i| &codes[i as usize * dim..(i as usize + 1) * dim])
            .collect();
        let mut cent: Vec<f32> = sample[..lists]
            .iter()
            .flat_map(|c| c.iter())
            .copied()
            .collect();
        let mut sums = vec![0.0f64; lists * dim];
        let mut counts = vec![0usize; lists];
        for _ in 0..self.params.kmeans_iters {
            sums.fill(0.0);
            counts.fill(0);
            crate::simd::vectorized(AssignKernel {
                sample: &sample,
                cent: &cent,
                dim,
                sums: &mut sums,
                counts: &mut counts,
            });
            for (i, &cnt) in counts.iter().enumerate() {
                if cnt > 0 {
                    for j in 0..dim {
                        cent[i * dim + j] = (sums[i * dim + j] / cnt as f64) as f32;
                    }
                }
            }
        }
        cent
    }
}

impl Generation {
    /// Every held code and payload, cell by cell, oldest first within a cell.
    fn read_all(&self, dim: usize, pd: usize, codes: &mut Vec<f32>, payloads: &mut Vec<u8>) {
        for c in &self.cells {
            c.read_all(dim, pd, codes, payloads);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The scan (two blocks side by side, branch-free minimum) offers exactly what the plain
    /// one-block-at-a-time scan offers — the same distances, bit for bit, the same slots, in
    /// the same order — for cells of every length (odd block counts, a partial last block),
    /// several queries per cell, code dimensions 1 to 8, with the bound tightening as a k-NN
    /// search's does.
    #[test]
    fn scan_offers_what_one_block_at_a_time_offers() {
        fn plain(cell: &Cell, q: &[f32], k: usize) -> Vec<(u32, usize)> {
            let (mut kept, mut out) = (Vec::<f32>::new(), Vec::new());
            for (b, block) in cell.blocks.chunks_exact(q.len() * BLOCK).enumerate() {
                let mut acc = [0.0f32; BLOCK];
                for (&qj, col) in q.iter().zip(block.chunks_exact(BLOCK)) {
                    for l in 0..BLOCK {
                        let d = col[l] - qj;
                        acc[l] += d * d;
                    }
                }
                let valid = (cell.len - b * BLOCK).min(BLOCK);
                let bound = if kept.len() >= k {
                    kept[k - 1]
                } else {
                    f32::INFINITY
                };
                if acc[..valid].iter().copied().fold(f32::INFINITY, f32::min) >= bound {
                    continue;
                }
                for (l, &d) in acc[..valid].iter().enumerate() {
                    out.push((d.to_bits(), b * BLOCK + l));
                    kept.push(d);
                    kept.sort_by(f32::total_cmp);
                }
            }
            out
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (len, dim, queries) in [1usize, 7, 8, 9, 16, 17, 24, 25, 40, 41, 100]
            .map(|len| (len, 5, 1))
            .into_iter()
            .chain([(500, 6, 20), (2000, 8, 20), (300, 1, 5)])
        {
            let mut cell = Cell::default();
            for _ in 0..len {
                let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                cell.push_fifo(&v, &[], usize::MAX);
            }
            for (q, k) in (0..queries)
                .map(|_| {
                    (0..dim)
                        .map(|_| rng.gen_range(-1.0..1.0))
                        .collect::<Vec<f32>>()
                })
                .flat_map(|q| [1usize, 3, 10].map(|k| (q.clone(), k)))
            {
                let kept = std::cell::RefCell::new(Vec::<f32>::new());
                let mut got = Vec::new();
                let bound = || {
                    let kept = kept.borrow();
                    if kept.len() >= k {
                        kept[k - 1]
                    } else {
                        f32::INFINITY
                    }
                };
                cell.scan(&q, bound, |d, slot| {
                    got.push((d.to_bits(), slot));
                    let mut kept = kept.borrow_mut();
                    kept.push(d);
                    kept.sort_by(f32::total_cmp);
                });
                assert_eq!(got, plain(&cell, &q, k), "len {len}, k {k}");
            }
        }
    }

    /// MNIST-like codes: images with a low intrinsic dimension (10 class centres plus 8 latent
    /// directions of variation in 196 pixels, clamped to `[0, 1]`), projected to 24 dimensions
    /// by a Rademacher projection as the k-NN detector does.
    fn mnist_like_codes(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut frozen = rand::rngs::StdRng::seed_from_u64(99);
        let centres: Vec<Vec<f32>> = (0..10)
            .map(|_| (0..196).map(|_| frozen.gen_range(0.0..0.6)).collect())
            .collect();
        let basis: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..196).map(|_| frozen.gen::<f32>() - 0.5).collect())
            .collect();
        let proj = crate::knn::Projections::new(5, 24);
        let m = proj.matrix(196);
        (0..n)
            .map(|_| {
                let c = &centres[rng.gen_range(0..10)];
                let z: Vec<f32> = (0..8).map(|_| rng.gen::<f32>() - 0.5).collect();
                let img: Vec<f32> = (0..196)
                    .map(|j| {
                        let s: f32 = z.iter().zip(&basis).map(|(a, b)| a * b[j]).sum();
                        (c[j] + 0.8 * s + 0.05 * (rng.gen::<f32>() - 0.5)).clamp(0.0, 1.0)
                    })
                    .collect();
                let mut code = Vec::new();
                crate::knn::Projections::project(&m, &img, &mut code);
                code
            })
            .collect()
    }

    /// Recall@50 against exact linear search at the k-NN detector's parameters
    /// (`KnnConfig::default()`: k = 50, 24-d codes, the default `IvfParams`), on a stream scored
    /// and inserted with `search_insert` past the first clustering: at least 0.9.
    #[test]
    fn recall_against_exact_search_at_knn_parameters() {
        let cfg = crate::knn::KnnConfig::default();
        let k = cfg.k;
        let codes = mnist_like_codes(8000, 1);
        let mut idx = IvfIndex::new(24, cfg.ivf, cfg.capacity, 3);
        let (mut hit, mut total, mut err) = (0usize, 0usize, 0.0f64);
        for (i, c) in codes.iter().enumerate() {
            let exact = idx.exact_search(c, k);
            let approx = idx.search_insert(c, k);
            assert_eq!(approx.len(), exact.len(), "point {i}");
            // Never closer than the truth (up to the summation order's rounding).
            assert!(approx
                .iter()
                .zip(&exact)
                .all(|(a, e)| *a >= e * (1.0 - 1e-5)));
            if i > cfg.ivf.train_size && i % 7 == 0 {
                let kth = exact[k - 1];
                hit += approx.iter().filter(|&&d| d <= kth).count();
                total += k;
                let mean = |d: &[f32]| d.iter().map(|&v| (v as f64).sqrt()).sum::<f64>();
                err += (mean(&approx) - mean(&exact)) / mean(&exact);
            }
        }
        assert!(!idx.current.centroids.is_empty(), "never clustered");
        let recall = hit as f64 / total as f64;
        assert!(recall >= 0.9, "recall@50 = {recall}");
        // The score (mean distance to the 50 found) is within 1% of the exact one on average.
        let rel = err / (total / k) as f64;
        assert!(rel < 0.01, "mean relative score error {rel}");
    }

    /// Fast scan ([`crate::fastscan`]) at a size where it is used (k = 10, cells of ≈ 90 codes,
    /// 16 probed: ≈ 1,400 codes for a shortlist of 20): the distances returned are exact
    /// distances of held codes (never below the truth), recall@10 against exact search is at
    /// least 0.9 and nearly all of the exact scan's over the same cells; zeroing the packed
    /// codes changes the results (the path is taken); a snapshot round-trips; a snapshot whose
    /// packed codes do not match its codes, or with a quantiser in a flat generation, is
    /// refused; `set_fastscan(0, _)` drops the packed codes and gives the exact scan.
    #[test]
    fn fast_scan_returns_exact_distances_with_recall() {
        let codes = mnist_like_codes(8200, 6);
        let (data, queries) = codes.split_at(8000);
        let params = IvfParams {
            fastscan_m: 24,
            fastscan_rerank: 2,
            ..IvfParams::default()
        };
        let k = 10;
        let mut idx = IvfIndex::new(24, params, 20_000, 3);
        for c in data {
            idx.insert(c);
        }
        let lists = idx.current.cells.len();
        assert!(idx.current.fsq.is_some() && lists > 50, "{lists} cells");
        assert!(fastscan_pays(16 * 8000 / lists, 16, 2 * k, 24, 12));
        // The k-NN detector's bench sizes: 16 cells of ≈ 470 codes are fast-scanned, of ≈ 110
        // not; PRADA's classes of ≈ 1,000 codes (cells of ≈ 32) not.
        assert!(fastscan_pays(16 * 470, 16, 100, 24, 12));
        assert!(!fastscan_pays(16 * 110, 16, 100, 24, 12));
        assert!(!fastscan_pays(16 * 32, 16, 16, 32, 8));
        let mut exact_scan = idx.clone();
        exact_scan.set_fastscan(0, 2);
        assert!(exact_scan.current.fsq.is_none());
        assert!(exact_scan.current.cells.iter().all(|c| c.fs.is_empty()));
        let mut zeroed = idx.clone();
        for c in &mut zeroed.current.cells {
            c.fs.fill(0);
        }
        let (mut hit, mut same, mut differ) = (0usize, 0usize, 0usize);
        for q in queries {
            let fast = idx.search(q, k);
            let truth = idx.exact_search(q, k);
            let scan = exact_scan.search(q, k);
            assert_eq!(fast.len(), k);
            assert!(fast.iter().zip(&truth).all(|(a, e)| *a >= e * (1.0 - 1e-5)));
            // Each distance is one of the exact scan's over the same cells or of a code it
            // skipped: never a quantised value (the exact scan's k-th bounds it from above
            // only when both found the same codes, so check membership in all distances).
            let all = idx.exact_search(q, 8000);
            for d in &fast {
                assert!(all.iter().any(|e| (e - d).abs() <= 1e-5 * (1.0 + e)), "{d}");
            }
            hit += fast.iter().filter(|&&d| d <= truth[k - 1]).count();
            same += fast.iter().filter(|&&d| d <= scan[k - 1]).count();
            differ += (zeroed.search(q, k) != fast) as usize;
        }
        let n = (queries.len() * k) as f64;
        assert!(hit as f64 / n >= 0.9, "recall {}", hit as f64 / n);
        assert!(
            same as f64 / n >= 0.95,
            "against the exact scan {}",
            same as f64 / n
        );
        assert!(
            differ > queries.len() / 2,
            "zeroed codes changed {differ} results"
        );
        // Snapshots.
        let json = serde_json::to_string(&idx).unwrap();
        let mut back: IvfIndex = serde_json::from_str(&json).unwrap();
        for q in queries.iter().take(20) {
            assert_eq!(back.search(q, k), idx.search(q, k));
        }
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let cell = v["current"]["cells"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["len"].as_u64() > Some(0))
            .unwrap();
        cell["fs"].as_array_mut().unwrap().pop();
        let err = serde_json::from_value::<IvfIndex>(v).unwrap_err();
        assert!(err.to_string().contains("fast-scan code bytes"), "{err}");
        let mut flat = IvfIndex::new(24, params, 20_000, 3);
        flat.insert(&data[0]);
        let mut v = serde_json::to_value(&flat).unwrap();
        v["current"]["fsq"] = serde_json::to_value(idx.current.fsq.as_ref().unwrap()).unwrap();
        let err = serde_json::from_value::<IvfIndex>(v).unwrap_err();
        assert!(err.to_string().contains("flat generation"), "{err}");
    }

    /// A client that sends the same region of the input space over and over fills one cell,
    /// which then only recycles its own oldest codes: the cell never exceeds its cap, the index
    /// never exceeds `2·capacity`, and the newest codes are the ones held.
    #[test]
    fn concentrated_queries_are_capped_per_cell_and_generations_bound_memory() {
        let params = IvfParams {
            max_lists: 8,
            probe: 2,
            train_size: 64,
            cell_factor: 2,
            kmeans_iters: 4,
            ..IvfParams::default()
        };
        let capacity = 400;
        let mut idx = IvfIndex::new(4, params, capacity, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // A spread first phase (the clustering sees 8 regions), then one region only.
        for i in 0..200 {
            let c = (i % 8) as f32 * 10.0;
            idx.insert(&[c + rng.gen::<f32>(), c, 0.0, 0.0]);
        }
        for i in 0..3000 {
            idx.insert(&[0.5 + i as f32 * 1e-4, 0.0, 0.0, 0.0]);
            assert!(idx.len() <= 2 * capacity);
            for g in std::iter::once(&idx.current).chain(idx.previous.as_ref()) {
                let most = g.cells.iter().map(|c| c.len).max().unwrap_or(0);
                let cap = if g.centroids.is_empty() {
                    idx.flat_cap()
                } else {
                    idx.cell_cap(g)
                };
                // At most 2·400 / 5 (5 = lists for the 64 codes of the first clustering).
                assert!(
                    cap <= 2 * capacity / 5 && most <= cap,
                    "cell of {most} (cap {cap})"
                );
            }
        }
        // The newest code is found at distance 0, the oldest of the phase is forgotten.
        let newest = [0.5 + 2999.0 * 1e-4, 0.0, 0.0, 0.0];
        assert_eq!(idx.search(&newest, 1), vec![0.0]);
        let oldest = idx.search(&[0.5, 0.0, 0.0, 0.0], 1)[0];
        assert!(oldest > 0.0, "{oldest}");
    }

    /// Every held code's row-major copy equals its block coordinates in generations with a
    /// fast-scan quantiser; generations without one hold no rows.
    fn assert_rows_follow_blocks(idx: &IvfIndex) {
        for g in std::iter::once(&idx.current).chain(idx.previous.as_ref()) {
            for c in &g.cells {
                if g.fsq.is_none() {
                    assert!(c.rows.is_empty());
                    continue;
                }
                assert!(c.rows.len() >= c.len * idx.dim);
                for slot in 0..c.len {
                    let mut v = Vec::new();
                    c.read(slot, idx.dim, &mut v);
                    assert_eq!(&c.rows[slot * idx.dim..(slot + 1) * idx.dim], &v[..]);
                }
            }
        }
    }

    #[test]
    fn row_copies_follow_the_blocks_through_overwrites_rotations_and_restores() {
        let params = IvfParams {
            max_lists: 8,
            train_size: 64,
            cell_factor: 1,
            fastscan_m: 4,
            fastscan_rerank: 1,
            ..IvfParams::default()
        };
        let mut idx = IvfIndex::new(4, params, 300, 7);
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for i in 0..2000 {
            // Concentrated in one region half of the time: full cells overwrite their oldest.
            let c = if i % 2 == 0 {
                0.0
            } else {
                (i % 8) as f32 * 5.0
            };
            idx.insert(&[c + rng.gen::<f32>(), c, rng.gen(), 0.0]);
            if i % 97 == 0 {
                assert_rows_follow_blocks(&idx);
            }
        }
        assert!(idx.previous.as_ref().is_some_and(|g| g.fsq.is_some()));
        assert_rows_follow_blocks(&idx);
        let back: IvfIndex = serde_json::from_str(&serde_json::to_string(&idx).unwrap()).unwrap();
        assert_rows_follow_blocks(&back);
        let mut off = back.clone();
        off.set_fastscan(0, 1);
        assert_rows_follow_blocks(&off);
        off.set_fastscan(4, 1);
        assert_rows_follow_blocks(&off);
    }

    /// The byte levels' block sums are the plain `Σ (level(q_j) − level(c_j))²` of the
    /// quantiser's levels — through the AVX2 path where the CPU has it and the portable loop,
    /// for odd and even dimensions, partial blocks, values outside the trained range (clamped)
    /// and NaN (level 0) — and the scan offers them times `step²`, slot by slot.
    #[test]
    fn byte_levels_sum_as_the_plain_formula() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for dim in [1usize, 7, 24, 32] {
            let codes: Vec<Vec<f32>> = (0..21)
                .map(|_| (0..dim).map(|_| rng.gen_range(-3.0..3.0)).collect())
                .collect();
            let flat: Vec<f32> = codes.iter().flatten().copied().collect();
            let sq = Sq8::train(&flat).unwrap();
            assert!(sq.valid());
            let mut cell = Cell::default();
            for (slot, c) in codes.iter().enumerate() {
                sq.write(&mut cell.q8, slot, c);
            }
            cell.len = codes.len();
            assert_eq!(cell.q8.len(), 3 * BLOCK * Sq8::padded(dim));
            let mut q: Vec<f32> = (0..dim).map(|_| rng.gen_range(-5.0..5.0)).collect();
            q[0] = f32::NAN;
            let mut qq = Vec::new();
            sq.query(&q, &mut qq);
            assert_eq!(qq.len(), Sq8::padded(dim));
            let plain: Vec<i32> = codes
                .iter()
                .map(|c| {
                    c.iter()
                        .zip(&q)
                        .map(|(&x, &y)| {
                            let d = sq.level(x) as i32 - sq.level(y) as i32;
                            d * d
                        })
                        .sum()
                })
                .collect();
            assert_eq!(sq.level(f32::NAN), 0);
            assert_eq!(sq.level(1e9), 255);
            let stride = BLOCK * qq.len();
            for (b, block) in cell.q8.chunks_exact(stride).enumerate() {
                let valid = (codes.len() - b * BLOCK).min(BLOCK);
                let portable = q8_block_sums(&qq, block);
                assert_eq!(&portable[..valid], &plain[b * BLOCK..b * BLOCK + valid]);
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    let fast = v3.vectorize(|| q8_x86::block_sums_v3(v3, &qq, block));
                    assert_eq!(fast, portable, "dim {dim}, block {b}");
                }
            }
            for level in [None, Some(())] {
                let mut g = Generation::clustered(vec![0.0; dim], dim, 1);
                g.cells[0] = cell.clone();
                let mut offered = Vec::new();
                let bound = || f32::INFINITY;
                #[cfg(target_arch = "x86_64")]
                let lv = level.and_then(|_| pulp::x86::V3::try_new());
                #[cfg(not(target_arch = "x86_64"))]
                let lv = level.and(None);
                scan_q8_with(
                    &g.cells[0],
                    &qq,
                    sq.step,
                    bound,
                    |d, slot| offered.push((slot, d)),
                    lv,
                );
                let want: Vec<(usize, f32)> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (i, p as f32 * (sq.step * sq.step)))
                    .collect();
                assert_eq!(offered, want, "dim {dim}");
            }
        }
        assert!(Sq8::train(&[f32::NAN, f32::INFINITY]).is_none());
        let same = Sq8::train(&[2.0; 8]).unwrap();
        assert!(same.valid() && same.level(2.0) == same.level(2.0 + 1e-7));
    }

    /// Byte levels: written for every held code when a state is switched to them (a state saved
    /// without them is converted), kept through every insertion, clustering and rotation,
    /// rebuilt on loading (not serialised), checked on loading, and dropped when switched off.
    #[test]
    fn byte_levels_follow_the_codes_and_are_checked_on_loading() {
        let codes = mnist_like_codes(700, 5);
        let params = IvfParams {
            max_lists: 16,
            probe: 4,
            train_size: 256,
            ..IvfParams::default()
        };
        let payload = |c: &[f32]| -> Vec<u8> { c.iter().map(|x| (x * 40.0) as u8).collect() };
        let mut plain = IvfIndex::new(24, params, 500, 9);
        let mut levels = IvfIndex::new(
            24,
            IvfParams {
                sq8: true,
                ..params
            },
            500,
            9,
        );
        for c in &codes[..600] {
            plain.insert_with_payload(c, &payload(c));
            levels.insert_with_payload(c, &payload(c));
        }
        assert!(plain.previous.is_some() && levels.previous.is_some());
        let check = |idx: &IvfIndex| {
            for g in std::iter::once(&idx.current).chain(idx.previous.as_ref()) {
                let Some(sq) = g.sq else {
                    assert!(g.centroids.is_empty() || !idx.params.sq8);
                    assert!(g.cells.iter().all(|c| c.q8.is_empty()));
                    continue;
                };
                for cell in &g.cells {
                    let mut want = Vec::new();
                    let mut code = Vec::new();
                    for slot in 0..cell.len {
                        code.clear();
                        cell.read(slot, 24, &mut code);
                        sq.write(&mut want, slot, &code);
                    }
                    assert_eq!(cell.q8, want);
                }
            }
        };
        check(&levels);
        let mut converted = plain.clone();
        converted.set_sq8(true);
        assert!(converted.current.sq.is_some() || converted.current.centroids.is_empty());
        assert!(converted.previous.as_ref().unwrap().sq.is_some());
        check(&converted);
        let json = serde_json::to_string(&levels).unwrap();
        assert!(!json.contains("\"q8\""), "levels serialised");
        let mut back: IvfIndex = serde_json::from_str(&json).unwrap();
        check(&back);
        for c in &codes[600..] {
            let p = payload(c);
            assert_eq!(
                back.nearest_payload_dist2(c, &p, 4),
                levels.nearest_payload_dist2(c, &p, 4)
            );
            levels.insert_with_payload(c, &p);
            back.insert_with_payload(c, &p);
        }
        check(&levels);
        check(&back);
        let mut off = levels.clone();
        off.set_sq8(false);
        check(&off);
        assert!(off.heap_bytes() < levels.heap_bytes());
        for (path, bad) in [
            ("step", serde_json::json!(0.0)),
            ("lo", serde_json::json!(null)),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v["previous"]["sq"][path] = bad;
            let err = serde_json::from_value::<IvfIndex>(v).unwrap_err();
            assert!(
                err.to_string().contains("byte quantiser") || err.to_string().contains("f32"),
                "{err}"
            );
        }
    }

    /// An insertion right after the re-ranking search of the same code reuses the cell that
    /// search found, through clusterings and rotations; the index ends up exactly as one whose
    /// insertions each looked their cell up (another code, or a changed generation, is looked
    /// up again).
    #[test]
    fn insertions_after_a_search_go_where_a_lookup_puts_them() {
        let codes = mnist_like_codes(1500, 6);
        let params = IvfParams {
            max_lists: 16,
            probe: 4,
            train_size: 128,
            sq8: true,
            ..IvfParams::default()
        };
        let payload = |c: &[f32]| -> Vec<u8> { c.iter().map(|x| (x * 40.0) as u8).collect() };
        let mut searched = IvfIndex::new(24, params, 600, 3);
        let mut plain = IvfIndex::new(24, params, 600, 3);
        for (i, c) in codes.iter().enumerate() {
            let p = payload(c);
            searched.nearest_payload_dist2(c, &p, 4);
            // Every fifth insertion is of another code than the one searched.
            let v = if i % 5 == 4 { &codes[i - 1] } else { c };
            let pv = payload(v);
            searched.insert_with_payload(v, &pv);
            plain.insert_with_payload(v, &pv);
        }
        assert!(
            searched.stamp > 2,
            "no clustering or rotation: {}",
            searched.stamp
        );
        assert_eq!(
            serde_json::to_string(&searched).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
    }

    #[test]
    fn serde_round_trip_and_corrupt_states_are_refused() {
        let codes = mnist_like_codes(700, 4);
        let params = IvfParams {
            max_lists: 16,
            probe: 4,
            train_size: 256,
            ..IvfParams::default()
        };
        let mut idx = IvfIndex::new(24, params, 500, 9);
        for c in &codes[..600] {
            idx.insert(c);
        }
        assert!(idx.previous.is_some());
        let json = serde_json::to_string(&idx).unwrap();
        let mut back: IvfIndex = serde_json::from_str(&json).unwrap();
        for c in &codes[600..] {
            assert_eq!(back.search_insert(c, 10), idx.search_insert(c, 10));
        }
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["current"]["cells"][0]["len"] = serde_json::json!(100_000);
        let err = serde_json::from_value::<IvfIndex>(v).unwrap_err();
        assert!(err.to_string().contains("cell 0"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["current"]["centroids"] = serde_json::json!([1.0, 2.0]);
        let err = serde_json::from_value::<IvfIndex>(v).unwrap_err();
        assert!(err.to_string().contains("centroid values"), "{err}");
        assert!(serde_json::from_str::<IvfIndex>("{\"dim\":0}").is_err());
    }

    /// PRADA's use at its parameters (`PradaConfig::default()`: 32-d projection, 8 candidates
    /// re-ranked on the full quantised input): on image-like data (a low intrinsic dimension
    /// in 196 values) the re-ranked distance is the exact nearest distance for at least 90% of
    /// the queries, never below it, and the payloads follow their codes through the
    /// re-clusterings and the generation rotation.
    #[test]
    fn payload_rerank_finds_the_exact_nearest_at_prada_parameters() {
        let cfg = crate::prada::PradaConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let basis: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..196).map(|_| rng.gen::<f32>() - 0.5).collect())
            .collect();
        let all: Vec<Vec<f32>> = (0..6200)
            .map(|_| {
                let z: Vec<f32> = (0..8).map(|_| rng.gen::<f32>()).collect();
                (0..196)
                    .map(|j| {
                        let s: f32 = z.iter().zip(&basis).map(|(a, b)| a * b[j]).sum();
                        (0.5 + 0.33 * s + 0.01 * (rng.gen::<f32>() - 0.5)).clamp(0.0, 1.0)
                    })
                    .collect()
            })
            .collect();
        let (pts, queries) = all.split_at(6000);
        let proj = crate::knn::Projections::new(5, cfg.proj_dim);
        let m = proj.matrix(196);
        let prep = |p: &[f32]| {
            let mut code = Vec::new();
            crate::knn::Projections::project(&m, p, &mut code);
            let mut bytes = Vec::new();
            crate::prada::quantise_range(p, crate::settings::UNIT_RANGE, &mut bytes);
            (code, bytes)
        };
        // Capacity 4000: the stream clusters, re-clusters and rotates once. Fast scan on (16
        // sub-quantisers of 2 coordinates, a shortlist of 2 × 8) and byte levels off, compared
        // below with the exact scan of the same index and with its byte levels (PRADA's
        // default).
        let params = IvfParams {
            fastscan_m: 16,
            fastscan_rerank: 2,
            sq8: false,
            ..cfg.ivf
        };
        assert!(
            cfg.ivf.sq8 && cfg.ivf.fastscan_m == 0,
            "PRADA's default changed"
        );
        let mut idx = IvfIndex::new(cfg.proj_dim, params, 4000, 1);
        for p in pts {
            let (c, b) = prep(p);
            idx.insert_with_payload(&c, &b);
        }
        assert!(idx.previous.is_some() && !idx.current.centroids.is_empty());
        // The same index scanned exactly: the fast scan finds the exact nearest as often.
        let mut scanned = idx.clone();
        scanned.set_fastscan(0, 2);
        let mut levels = scanned.clone();
        levels.set_sq8(true);
        assert!(levels.current.sq.is_some() && levels.previous.as_ref().unwrap().sq.is_some());
        let (mut exact, mut exact_scan, mut exact_levels) = (0, 0, 0);
        for q in queries {
            let (c, b) = prep(q);
            let approx = idx.nearest_payload_dist2(&c, &b, cfg.candidates).unwrap();
            let truth = idx.exact_nearest_payload_dist2(&b).unwrap();
            assert!(approx >= truth);
            exact += (approx == truth) as usize;
            let s = scanned
                .nearest_payload_dist2(&c, &b, cfg.candidates)
                .unwrap();
            exact_scan += (s == truth) as usize;
            let l = levels
                .nearest_payload_dist2(&c, &b, cfg.candidates)
                .unwrap();
            assert!(l >= truth);
            exact_levels += (l == truth) as usize;
        }
        println!(
            "exact 1-NN: fast scan {exact}/200, exact scan {exact_scan}/200, byte levels {exact_levels}/200"
        );
        assert!(exact >= 180, "exact 1-NN for {exact}/200 queries");
        assert!(
            exact + 6 >= exact_scan,
            "{exact} vs {exact_scan} with the exact scan"
        );
        assert!(
            exact_levels + 4 >= exact_scan,
            "{exact_levels} with byte levels vs {exact_scan} with the exact scan"
        );
        // An inserted point is found at distance 0 through its own payload.
        let (c, b) = prep(&queries[0]);
        idx.insert_with_payload(&c, &b);
        assert_eq!(idx.nearest_payload_dist2(&c, &b, 1), Some(0.0));
        // Wrong payload length: not inserted, no answer.
        idx.insert_with_payload(&c, &b[..10]);
        assert_eq!(idx.nearest_payload_dist2(&c, &b[..10], 8), None);
    }

    /// Degenerate parameters (zeros) give a working, bounded index, not a panic or an index
    /// stuck at one code.
    #[test]
    fn zero_parameters_still_give_a_bounded_working_index() {
        let zero = IvfParams {
            max_lists: 0,
            probe: 0,
            train_size: 0,
            cell_factor: 0,
            kmeans_iters: 0,
            fastscan_m: 0,
            fastscan_rerank: 0,
            sq8: true,
        };
        for (params, capacity) in [
            (zero, 0),
            (zero, 50),
            (
                IvfParams {
                    max_lists: 4,
                    ..zero
                },
                50,
            ),
        ] {
            let mut idx = IvfIndex::new(2, params, capacity, 1);
            for i in 0..300 {
                let v = [i as f32, (i % 7) as f32];
                let found = idx.search_insert(&v, 3);
                assert!(found.len() <= 3 && idx.len() <= 2 * capacity.max(1));
                if i >= 10 && capacity > 0 {
                    assert_eq!(found.len(), 3, "{params:?}");
                }
            }
            assert_eq!(idx.search(&[299.0, 5.0], 1), vec![0.0], "{params:?}");
        }
    }

    #[test]
    fn codes_of_another_dimension_are_not_inserted_and_do_not_panic() {
        let mut idx = IvfIndex::new(3, IvfParams::default(), 10, 1);
        idx.insert(&[1.0, 2.0, 3.0]);
        idx.insert(&[1.0]);
        assert!(idx.search_insert(&[1.0, 2.0, 3.0, 4.0], 5).is_empty());
        assert_eq!(idx.search(&[1.0, 2.0, 3.0], 5), vec![0.0]);
        assert_eq!(idx.len(), 1);
        assert!(IvfIndex::new(3, IvfParams::default(), 10, 1)
            .search(&[1.0, 2.0, 3.0], 5)
            .is_empty());
    }
}
