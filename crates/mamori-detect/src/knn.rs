//! Mean distance to the k nearest past queries (Chen, Carlini, Wagner, "Stateful Detection of
//! Black-Box Adversarial Examples", 2019; k = 50).
//!
//! Each query is mapped to a low-dimensional code — here a fixed Rademacher random projection
//! (Johnson–Lindenstrauss; it stands in for the paper's learned similarity encoder and keeps
//! L2 distances within a small factor) — and its score is the mean L2 distance to the `k`
//! nearest codes among the client's past queries. A query is *flagged* when that mean is below
//! `threshold`, calibrated on benign streams as the `fpr` quantile of benign scores (the paper's
//! rule: 0.1th percentile). The client alarms when at least `min_flagged` of its last `window`
//! queries were flagged (one flagged query at FPR 0.1% would otherwise flag most long benign
//! sessions).
//!
//! Cost: the k-NN search runs on an inverted-file index ([`crate::ivf`]: k-means cells of the
//! client's own codes, the `probe` nearest cells scanned contiguously) with generational and
//! per-cell FIFO eviction (each client holds at most `2·capacity` codes, and one search scans
//! at most `probe · cell_cap` codes per generation however the client concentrates its
//! queries). Its recall@50 against exact search is checked in the tests and measured on MNIST
//! in `docs/bench/detect.md`.
//!
//! States saved before the IVF index (an HNSW index, [`crate::ann`], under the key `index`)
//! still load: their codes are re-inserted, oldest first, into an IVF index.

use crate::ann::{AnnIndex, HnswParams};
use crate::error::{decode_state, encode_state};
use crate::ivf::{IvfIndex, IvfParams};
use crate::simd::Kernel;
use crate::window::FlagWindow;
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// k-NN distance detector configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnConfig {
    /// Neighbours averaged (paper: 50).
    pub k: usize,
    /// Projected dimension.
    pub proj_dim: usize,
    /// Projection seed.
    pub seed: u64,
    /// A query is flagged when its mean k-NN distance is below this (input L2 units).
    pub threshold: f64,
    /// Sliding window of queries for the client alarm.
    pub window: usize,
    /// Flagged queries in the window that raise the alarm.
    pub min_flagged: usize,
    /// Codes per generation.
    pub capacity: usize,
    /// Index parameters.
    pub ivf: IvfParams,
    /// Not used since the k-NN search moved to the IVF index ([`KnnConfig::ivf`]); accepted
    /// (and not written) so that configuration files written before keep loading.
    #[serde(skip_serializing)]
    pub hnsw: HnswParams,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 50,
            proj_dim: 24,
            seed: 0x6b6e6e,
            threshold: 1.0,
            window: 20,
            min_flagged: 10,
            capacity: 20_000,
            ivf: IvfParams {
                fastscan_m: 24,
                fastscan_rerank: 2,
                ..IvfParams::default()
            },
            hnsw: HnswParams {
                m: 10,
                ef_construction: 40,
                ef_search: 50,
            },
        }
    }
}

/// Random projections, one per input dimension seen, shared by all clients.
#[derive(Debug, Default)]
pub(crate) struct Projections {
    seed: u64,
    out: usize,
    cache: Mutex<HashMap<usize, Arc<Vec<f32>>>>,
    signs: Mutex<HashMap<usize, Arc<SignRows>>>,
}

/// A projection matrix's signs as bytes (`±1`), with each row's sum and the scale `1/√out`:
/// the same projection applied to inputs given as byte levels ([`Projections::project_levels`]),
/// a quarter of the matrix's bytes.
#[derive(Debug)]
pub(crate) struct SignRows {
    dim: usize,
    signs: Vec<i8>,
    sums: Vec<i32>,
    scale: f32,
}

impl Projections {
    pub(crate) fn new(seed: u64, out: usize) -> Self {
        Self {
            seed,
            out,
            cache: Mutex::new(HashMap::new()),
            signs: Mutex::new(HashMap::new()),
        }
    }

    /// [`Projections::matrix`]'s signs for `dim`-dimensional inputs.
    pub(crate) fn signs(&self, dim: usize) -> Arc<SignRows> {
        if let Some(rows) = self
            .signs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&dim)
        {
            return rows.clone();
        }
        let m = self.matrix(dim);
        let mut cache = self.signs.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(dim)
            .or_insert_with(|| {
                let signs: Vec<i8> = m.iter().map(|&v| if v > 0.0 { 1 } else { -1 }).collect();
                let sums = signs
                    .chunks(dim.max(1))
                    .map(|r| r.iter().map(|&v| v as i32).sum())
                    .collect();
                Arc::new(SignRows {
                    dim,
                    signs,
                    sums,
                    scale: 1.0 / (self.out as f32).sqrt(),
                })
            })
            .clone()
    }

    /// The projection of the input whose values are `lo + step · levels[i]` (byte levels, as
    /// PRADA quantises its inputs): row `r` is `scale · (lo · Σ s_ri + step · Σ s_ri · l_i)`,
    /// the second sum exact in integers (AVX2 byte multiply-adds where the CPU has it, a plain
    /// loop otherwise: the same sums). Equal to [`Projections::project`] of those values up to
    /// `f32` rounding.
    pub(crate) fn project_levels(
        rows: &SignRows,
        levels: &[u8],
        lo: f32,
        step: f32,
        out: &mut Vec<f32>,
    ) {
        out.clear();
        if levels.len() != rows.dim || rows.dim == 0 {
            out.resize(rows.sums.len(), 0.0);
            return;
        }
        let value = |sum: i32, dot: i32| rows.scale * (lo * sum as f32 + step * dot as f32);
        let each = rows.signs.chunks_exact(rows.dim).zip(&rows.sums);
        // One dispatch for all rows (the AVX2 sums inlined into the dispatched function).
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            return v3.vectorize(|| {
                for (row, &sum) in each {
                    out.push(value(sum, sign_dot_v3(v3, row, levels)));
                }
            });
        }
        for (row, &sum) in each {
            out.push(value(sum, sign_dot_portable(row, levels)));
        }
    }

    /// The `out × dim` ±1/√out matrix for `dim`-dimensional inputs.
    pub(crate) fn matrix(&self, dim: usize) -> Arc<Vec<f32>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(dim)
            .or_insert_with(|| {
                let s = 1.0 / (self.out as f32).sqrt();
                let mut st = self.seed ^ (dim as u64).wrapping_mul(0x9E37_79B9);
                let mut bits = 0u64;
                let mut m = Vec::with_capacity(self.out * dim);
                for i in 0..self.out * dim {
                    if i % 64 == 0 {
                        st = st.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        let mut z = st;
                        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                        bits = z ^ (z >> 31);
                    }
                    m.push(if (bits >> (i % 64)) & 1 == 1 { s } else { -s });
                }
                Arc::new(m)
            })
            .clone()
    }

    pub(crate) fn project(m: &[f32], x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        crate::simd::vectorized(ProjectKernel { m, x, out });
    }
}

/// `Σ s_i · l_i` (signs `±1`, byte levels), exact: the plain loop.
fn sign_dot_portable(signs: &[i8], levels: &[u8]) -> i32 {
    signs
        .iter()
        .zip(levels)
        .map(|(&s, &l)| s as i32 * l as i32)
        .sum()
}

/// [`sign_dot_portable`] with AVX2: 32 levels times 32 signs per step (`maddubs`: adjacent pairs summed
/// in 16 bits, at most `2 · 255`, then in 32 bits), the remainder one by one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sign_dot_v3(v3: pulp::x86::V3, signs: &[i8], levels: &[u8]) -> i32 {
    use core::arch::x86_64::__m256i;
    let (avx, avx2) = (v3.avx, v3.avx2);
    let ones = avx._mm256_set1_epi16(1);
    let mut acc = avx._mm256_setzero_si256();
    let (cs, cl) = (signs.chunks_exact(32), levels.chunks_exact(32));
    let (rs, rl) = (cs.remainder(), cl.remainder());
    for (s, l) in cs.zip(cl) {
        let (mut sa, mut la) = ([0i8; 32], [0u8; 32]);
        sa.copy_from_slice(s);
        la.copy_from_slice(l);
        let pairs = avx2._mm256_maddubs_epi16(pulp::cast::<_, __m256i>(la), pulp::cast(sa));
        acc = avx2._mm256_add_epi32(acc, avx2._mm256_madd_epi16(pairs, ones));
    }
    let lanes: [i32; 8] = pulp::cast(acc);
    lanes.iter().sum::<i32>() + sign_dot_portable(rs, rl)
}

/// [`crate::ann::dot`] of four rows with the same `b`, bit for bit (the same products, the same
/// eight partial sums, summed the same way), with AVX2: the four rows' sums in four registers,
/// independent chains of additions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot4_v3(v3: pulp::x86::V3, rows: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    use core::arch::x86_64::__m256;
    let avx = v3.avx;
    let n = rows.iter().fold(b.len(), |n, r| n.min(r.len()));
    let (rows, b) = (rows.map(|r| &r[..n]), &b[..n]);
    let load = |s: &[f32]| -> __m256 {
        let mut a = [0.0f32; 8];
        a.copy_from_slice(s);
        pulp::cast(a)
    };
    let mut acc = [avx._mm256_setzero_ps(); 4];
    let cb = b.chunks_exact(8);
    let tail_at = n - cb.remainder().len();
    for (i, y) in cb.enumerate() {
        let y = load(y);
        for (a, r) in acc.iter_mut().zip(rows) {
            *a = avx._mm256_add_ps(*a, avx._mm256_mul_ps(load(&r[i * 8..i * 8 + 8]), y));
        }
    }
    let mut out = [0.0f32; 4];
    for ((o, a), r) in out.iter_mut().zip(acc).zip(rows) {
        let lanes: [f32; 8] = pulp::cast(a);
        let tail: f32 = r[tail_at..]
            .iter()
            .zip(&b[tail_at..])
            .map(|(x, y)| x * y)
            .sum();
        *o = lanes.iter().sum::<f32>() + tail;
    }
    out
}

/// [`Projections::project`] as a [`Kernel`].
struct ProjectKernel<'a> {
    m: &'a [f32],
    x: &'a [f32],
    out: &'a mut Vec<f32>,
}

impl Kernel for ProjectKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        // Four rows at a time with AVX2 ([`dot4_v3`]: their sums advance together, where one
        // row's sum waits on each of its additions — the rows one by one took 1.4× as long),
        // each the same sum as [`crate::ann::dot`]'s, bit for bit; the rest one by one.
        // Plain loops: an iterator adapter's `fold` would stay out of line, undispatched.
        let d = self.x.len().max(1);
        let mut quads = self.m.chunks_exact(4 * d);
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            for q in &mut quads {
                let (r0, rest) = q.split_at(d);
                let (r1, rest) = rest.split_at(d);
                let (r2, r3) = rest.split_at(d);
                self.out
                    .extend_from_slice(&dot4_v3(v3, [r0, r1, r2, r3], self.x));
            }
        }
        for row in quads.remainder().chunks(d) {
            self.out.push(crate::ann::dot(row, self.x));
        }
    }
}

/// The k-NN distance detector.
#[derive(Clone, Debug)]
pub struct KnnDetector {
    cfg: KnnConfig,
    proj: Arc<Projections>,
}

impl KnnDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "knn";

    /// A detector with `cfg`.
    pub fn new(cfg: KnnConfig) -> Self {
        let proj = Arc::new(Projections::new(cfg.seed, cfg.proj_dim.max(1)));
        Self { cfg, proj }
    }

    /// The per-query score (mean distance to the k nearest of `history`), as used by
    /// calibration: returns `None` until `k` past queries exist.
    pub fn score_stream(&self, xs: &[&[f32]]) -> Vec<Option<f64>> {
        let mut st = self.fresh();
        xs.iter().map(|x| st.score_and_insert(x)).collect()
    }

    fn fresh(&self) -> KnnState {
        KnnState {
            cfg: self.cfg.clone(),
            proj: Some(self.proj.clone()),
            index: None,
            legacy: None,
            flags: FlagWindow::default(),
            queries: 0,
            code: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KnnState {
    #[serde(skip)]
    cfg: KnnConfig,
    #[serde(skip)]
    proj: Option<Arc<Projections>>,
    #[serde(default, rename = "ivf")]
    index: Option<IvfIndex>,
    /// The HNSW index of a state saved before the IVF index (read, converted on restore,
    /// never written).
    #[serde(default, rename = "index", skip_serializing)]
    legacy: Option<AnnIndex<f32>>,
    #[serde(flatten)]
    flags: FlagWindow,
    queries: u64,
    #[serde(skip)]
    code: Vec<f32>,
}

impl KnnState {
    fn score_and_insert(&mut self, x: &[f32]) -> Option<f64> {
        let m = self
            .proj
            .as_ref()
            .map(|p| p.matrix(x.len()))
            .unwrap_or_default();
        let mut code = std::mem::take(&mut self.code);
        Projections::project(&m, x, &mut code);
        let cfg = &self.cfg;
        let index = self
            .index
            .get_or_insert_with(|| IvfIndex::new(code.len(), cfg.ivf, cfg.capacity, cfg.seed));
        // One search serves the score and the insertion (`IvfIndex::search_insert`).
        let enough = index.len() >= cfg.k;
        let d = index.search_insert(&code, cfg.k);
        let score = enough
            .then(|| d.iter().map(|&d2| (d2 as f64).sqrt()).sum::<f64>() / d.len().max(1) as f64);
        self.code = code;
        score
    }
}

impl Detector for KnnDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper:
                "Chen, Carlini, Wagner, Stateful Detection of Black-Box Adversarial Examples, 2019"
                    .into(),
            targets: "near-duplicate query streams (decision-based adversarial search)".into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::Input],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(self.fresh())
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: KnnState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        s.proj = Some(self.proj.clone());
        if let Some(old) = s.legacy.take() {
            if s.index.is_none() && !old.is_empty() {
                let mut index =
                    IvfIndex::new(old.dim(), self.cfg.ivf, self.cfg.capacity, self.cfg.seed);
                for code in old.points() {
                    index.insert(code);
                }
                s.index = Some(index);
            }
        }
        // A state saved before fast scan (or with other fast-scan parameters) is converted to
        // this configuration's.
        if let Some(index) = &mut s.index {
            index.set_fastscan(self.cfg.ivf.fastscan_m, self.cfg.ivf.fastscan_rerank);
        }
        Ok(Box::new(s))
    }
}

impl DetectorState for KnnState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        let score = self.score_and_insert(obs.input);
        let flag = score.is_some_and(|s| s < self.cfg.threshold);
        self.flags.push(flag, self.cfg.window, self.cfg.min_flagged)
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.queries
    }

    fn heap_bytes(&self) -> usize {
        self.index.as_ref().map_or(0, IvfIndex::heap_bytes)
            + self.flags.heap_bytes()
            + crate::heap::vec(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn observe_all(s: &mut dyn DetectorState, xs: &[Vec<f32>]) -> Option<usize> {
        let mut first = None;
        for (i, x) in xs.iter().enumerate() {
            let v = s.observe(&Observation {
                client: "c",
                input: x,
                input_shape: &[x.len()],
                probs: &[],
                label: 0,
                time_ms: 0,
            });
            if v.alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        first
    }

    #[test]
    fn near_duplicates_alarm_spread_queries_do_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let spread: Vec<Vec<f32>> = (0..400)
            .map(|_| (0..100).map(|_| rng.gen::<f32>()).collect())
            .collect();
        let d = KnnDetector::new(KnnConfig {
            threshold: 1.0,
            ..KnnConfig::default()
        });
        let mut s = d.new_state();
        assert_eq!(observe_all(s.as_mut(), &spread), None);
        // Adversarial search: tiny perturbations of one image, after the benign history.
        let base = spread[0].clone();
        let search: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                base.iter()
                    .map(|v| v + rng.gen_range(-0.01..0.01))
                    .collect()
            })
            .collect();
        let first = observe_all(s.as_mut(), &search).expect("not flagged");
        assert!(first <= 80, "flagged after {first}");
        let r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 600);
        assert!(d.restore_state(b"{\"queries\":\"x\"}").is_err());
    }

    /// A state saved before the IVF index (its codes in an HNSW `index`) loads: the codes are
    /// re-inserted oldest first, so the restored state scores the next queries exactly as a
    /// state that saw the same stream with the IVF index from the start.
    #[test]
    fn states_saved_with_the_hnsw_index_still_load() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let xs: Vec<Vec<f32>> = (0..3000)
            .map(|_| (0..64).map(|_| rng.gen::<f32>()).collect())
            .collect();
        let d = KnnDetector::new(KnnConfig::default());
        let mut now = d.new_state();
        observe_all(now.as_mut(), &xs[..2500]);
        // The same history as an HNSW-era snapshot.
        let m = d.proj.matrix(64);
        let cfg = KnnConfig::default();
        let mut old = AnnIndex::new(cfg.proj_dim, cfg.hnsw, cfg.capacity, cfg.seed);
        let mut code = Vec::new();
        for x in &xs[..2500] {
            Projections::project(&m, x, &mut code);
            old.insert(&code);
        }
        let mut snap: serde_json::Value = serde_json::from_slice(&now.snapshot()).unwrap();
        let obj = snap.as_object_mut().unwrap();
        assert!(obj.remove("ivf").is_some());
        obj.insert("index".into(), serde_json::to_value(&old).unwrap());
        let mut restored = d
            .restore_state(&serde_json::to_vec(&snap).unwrap())
            .unwrap();
        assert_eq!(restored.queries(), 2500);
        for x in &xs[2500..] {
            let o = Observation {
                client: "c",
                input: x,
                input_shape: &[64],
                probs: &[],
                label: 0,
                time_ms: 0,
            };
            assert_eq!(now.observe(&o), restored.observe(&o));
        }
        // Same index, same flags: the snapshots are identical, in the new form.
        assert_eq!(now.snapshot(), restored.snapshot());
        let again: serde_json::Value = serde_json::from_slice(&restored.snapshot()).unwrap();
        assert!(again.get("ivf").is_some() && again.get("index").is_none());
    }

    /// A state saved before fast scan (no quantiser, no packed codes, index parameters without
    /// the fast-scan fields: `main`'s format) is converted on restore: its clustered generation
    /// gets a quantiser and packed codes, and the next scores stay within 1% of the unconverted
    /// exact scan's; a snapshot whose packed codes do not match its codes is refused.
    #[test]
    fn states_saved_before_fast_scan_are_converted() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let xs: Vec<Vec<f32>> = (0..3200)
            .map(|_| (0..64).map(|_| rng.gen::<f32>()).collect())
            .collect();
        let exact = KnnDetector::new(KnnConfig {
            ivf: IvfParams::default(),
            ..KnnConfig::default()
        });
        let mut old = exact.fresh();
        for x in &xs[..3000] {
            old.score_and_insert(x);
        }
        let mut snap: serde_json::Value = serde_json::from_slice(&old.snapshot()).unwrap();
        let params = snap["ivf"]["params"].as_object_mut().unwrap();
        assert!(params.remove("fastscan_m").is_some());
        assert!(params.remove("fastscan_rerank").is_some());
        assert!(snap["ivf"]["current"].get("fsq").is_none());
        let bytes = serde_json::to_vec(&snap).unwrap();
        let d = KnnDetector::new(KnnConfig::default());
        let restored = d.restore_state(&bytes).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&restored.snapshot()).unwrap();
        assert!(again["ivf"]["current"]["fsq"].is_object(), "converted");
        assert_eq!(
            again["ivf"]["params"]["fastscan_m"],
            KnnConfig::default().ivf.fastscan_m
        );
        let mut conv: KnnState = serde_json::from_value(again.clone()).unwrap();
        conv.cfg = KnnConfig::default();
        conv.proj = Some(d.proj.clone());
        for x in &xs[3000..] {
            let (a, b) = (
                old.score_and_insert(x).unwrap(),
                conv.score_and_insert(x).unwrap(),
            );
            assert!((a - b).abs() <= 0.01 * a, "{a} vs {b}");
        }
        let mut bad = again;
        let cell = bad["ivf"]["current"]["cells"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["len"].as_u64() > Some(0))
            .unwrap();
        cell["fs"].as_array_mut().unwrap().pop();
        let err = d
            .restore_state(&serde_json::to_vec(&bad).unwrap())
            .err()
            .unwrap();
        assert!(err.contains("fast-scan code bytes"), "{err}");
    }

    /// The projection of byte levels (PRADA's) is the float projection of the values they
    /// stand for, up to `f32` rounding, over a range that is not `[0, 1]` too; its integer
    /// sums are the same with AVX2 as in the plain loop, for every remainder length; a level
    /// vector of another length gives zeros, not a panic.
    #[test]
    fn projection_of_byte_levels_matches_the_float_projection() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let p = Projections::new(7, 32);
        for (dim, lo, hi) in [
            (784usize, 0.0f32, 1.0f32),
            (13, -3.0, 5.0),
            (64, 0.0, 1000.0),
        ] {
            let levels: Vec<u8> = (0..dim).map(|_| rng.gen()).collect();
            let step = (hi - lo) / 255.0;
            let x: Vec<f32> = levels.iter().map(|&l| lo + step * l as f32).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            Projections::project(&p.matrix(dim), &x, &mut a);
            Projections::project_levels(&p.signs(dim), &levels, lo, step, &mut b);
            assert_eq!(a.len(), b.len());
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (u, v) in a.iter().zip(&b) {
                assert!(
                    (u - v).abs() <= 1e-5 * norm.max(1.0),
                    "{u} vs {v} (dim {dim})"
                );
            }
            let mut short = Vec::new();
            Projections::project_levels(&p.signs(dim), &levels[1..], lo, step, &mut short);
            assert_eq!(short, vec![0.0; 32]);
        }
        for n in [0usize, 1, 31, 32, 33, 784] {
            let s: Vec<i8> = (0..n).map(|_| if rng.gen() { 1 } else { -1 }).collect();
            let l: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let plain: i32 = s.iter().zip(&l).map(|(&a, &b)| a as i32 * b as i32).sum();
            assert_eq!(sign_dot_portable(&s, &l), plain, "n = {n}");
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                assert_eq!(v3.vectorize(|| sign_dot_v3(v3, &s, &l)), plain, "n = {n}");
            }
        }
    }

    /// The projection (four rows at a time with AVX2) gives every row exactly the sum of the
    /// one-row dot product, for every remainder length and a row count that is not a multiple
    /// of four.
    #[test]
    fn projection_rows_are_the_one_row_sums_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for (out, dim) in [
            (24usize, 784usize),
            (7, 13),
            (5, 8),
            (4, 1),
            (9, 31),
            (3, 0),
        ] {
            let p = Projections::new(out as u64, out);
            let m = p.matrix(dim);
            let x: Vec<f32> = (0..dim).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let mut got = Vec::new();
            Projections::project(&m, &x, &mut got);
            let want: Vec<u32> = m
                .chunks(dim.max(1))
                .map(|row| crate::ann::dot(row, &x).to_bits())
                .collect();
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{out} rows of {dim}");
        }
    }

    #[test]
    fn projection_roughly_preserves_distances() {
        let p = Projections::new(3, 24);
        let m = p.matrix(784);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut ratios = Vec::new();
        for _ in 0..200 {
            let a: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
            let b: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
            let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            let mut c = Vec::new();
            Projections::project(&m, &diff, &mut c);
            let n1: f32 = diff.iter().map(|v| v * v).sum::<f32>().sqrt();
            let n2: f32 = c.iter().map(|v| v * v).sum::<f32>().sqrt();
            ratios.push(n2 / n1);
        }
        let mean = ratios.iter().sum::<f32>() / ratios.len() as f32;
        assert!((mean - 1.0).abs() < 0.1, "mean ratio {mean}");
    }
}
