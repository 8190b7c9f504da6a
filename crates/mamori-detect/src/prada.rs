//! PRADA (Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing
//! Attacks", EuroS&P 2019).
//!
//! Per client and per predicted class `c`, a growing set `G_c` of past queries and the set of
//! their distances `D_{G_c}`. For a new query `x` of class `c`: `d_min` = the smallest L2
//! distance from `x` to the queries in `G_c`; `d_min` joins the client's distance set `D`; if
//! `d_min > T_c`, `x` joins `G_c`, `d_min` joins `D_{G_c}` and
//! `T_c ← max(T_c, mean(D_{G_c}) − std(D_{G_c}))`. The first query of a class only seeds
//! `G_c`, with distance 0 in `D_{G_c}` (not in `D`). Every `check_every` queries (at queries
//! 1, 1 + k, …), the distances of classes with at least `min_class_entries` entries in `D` are
//! pooled, values at least `outlier_sigma` standard deviations from the mean are dropped, and,
//! when more than `min_distances` values remain, the Shapiro–Wilk statistic `W` is computed ([`crate::shapiro`]); the client is flagged when `W < δ`. Benign queries give
//! roughly normal distances; synthetic attack queries (JBDA's small Jacobian steps, random
//! probes) do not.
//!
//! Cost and memory: `d_min` comes from an inverted-file index per class ([`crate::ivf`]: k-means
//! cells of the class's points, the nearest cells scanned contiguously) searched in a
//! `proj_dim`-dimensional random projection of the quantised input (its codes scanned as byte
//! levels, [`crate::ivf::IvfParams::sq8`]); its `candidates` nearest are re-ranked by the
//! exact L2 distance on the inputs quantised to bytes over the model's input range (exact for
//! 8-bit images),
//! so `d_min` is exact whenever the true nearest is among the candidates (checked in the
//! tests against a linear scan); each class keeps at most `2·class_capacity` points
//! (generational eviction, and the per-cell FIFO cap of [`crate::ivf`]) and `D` keeps its
//! newest `max_distances` values (the Shapiro–Wilk algorithm is valid up to 5000).
//!
//! **Two pools: in-distribution queries and the others** (not in the paper;
//! `only_in_distribution`, default on when the OOD detector is calibrated). PRADA's reference —
//! natural queries give normally distributed minimum distances, δ calibrated on them —
//! describes natural queries *of the model's distribution*. Natural images of another
//! distribution settle at lower W with no trend (Fashion-MNIST images sent to an MNIST model:
//! W 0.90–0.97 against δ ≈ 0.925, 17 of 200 benign clients flagged). So the queries the
//! calibrated OOD test ([`crate::ood::OodDetector::is_ood`]: class-centroid radius and
//! max-softmax) calls in-distribution form the pool tested against δ, and the others a separate
//! pool (own class sets and distance set) tested against `ood_delta` (default 0.8; fitted by
//! calibration when it is given foreign benign traffic, `CalibrationOptions::foreign`): without
//! a benign reference for them, a conservative threshold still catches synthetic
//! streams pushed out of distribution on purpose (a JBDA stream with marked corners: every
//! query OOD, distances unchanged), while foreign natural images stay above it (lowest W 0.898
//! over 100 foreign clients). JBDA's own points stay near their in-distribution seeds (≈ 95%
//! pass the test) and are flagged in the first pool as before; a JBDA stream diluted with
//! foreign natural images is flagged sooner than without the split, because the foreign half
//! no longer props W up (docs/bench/detect.md, eighth session). Calibration fits δ on the
//! in-distribution pool of the benign streams.
//!
//! States saved before the IVF index (an HNSW index per class, [`crate::ann`], under the key
//! `index`) still load: each class's points and inputs are re-inserted, oldest first.

use crate::ann::{AnnIndex, HnswParams};
use crate::error::{decode_state, encode_state};
use crate::ivf::{IvfIndex, IvfParams};
use crate::knn::Projections;
use crate::ood::{OodConfig, OodDetector};
use crate::shapiro::shapiro_wilk_w_sorted;
use crate::simd::Kernel;
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// PRADA configuration.
///
/// `persist` (default 1, the paper's rule): the client is flagged only after that many
/// *consecutive* tests (`check_every` queries apart) gave `W < δ`. A single test is a sample of
/// a statistic that fluctuates from test to test; a benign stream can dip below δ once and
/// recover at the next test, while an attack stream's distances stay non-normal, so a larger
/// value trades `check_every` queries of detection delay per step for fewer one-test dips.
/// Calibration fits δ at the configured `persist` (on the per-client tail), and at 1 it kept
/// the false-alarm target with δ 0.909 instead of 0.911 (measured in `docs/bench/detect.md`,
/// ninth session), so the default is the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PradaConfig {
    /// Alarm when W < delta (paper: 0.95 for MNIST, 0.87 for GTSRB).
    pub delta: f64,
    /// Test every this many queries.
    pub check_every: u64,
    /// Test only once the distance set holds more than this many values.
    pub min_distances: usize,
    /// Pool only classes whose distance set has at least this many entries.
    pub min_class_entries: usize,
    /// Drop distances further than this many standard deviations from the mean.
    pub outlier_sigma: f64,
    /// Newest distances kept (≤ 5000).
    pub max_distances: usize,
    /// Growing-set points per class and generation.
    pub class_capacity: usize,
    /// Dimension of the random projection the index searches in.
    pub proj_dim: usize,
    /// Candidates re-ranked by exact distance on the full quantised input.
    pub candidates: usize,
    /// Index parameters.
    pub ivf: IvfParams,
    /// Not used since the search moved to the IVF index ([`PradaConfig::ivf`]); accepted (and
    /// not written) so that configuration files written before keep loading.
    #[serde(skip_serializing)]
    pub hnsw: HnswParams,
    /// Consecutive tests with `W < δ` before the client is flagged (1 = the paper's rule).
    pub persist: u32,
    /// Test the queries the calibrated OOD test calls in-distribution apart from the others
    /// (see the module documentation); without an OOD calibration every query is in the one
    /// pool tested against `delta`.
    pub only_in_distribution: bool,
    /// With `only_in_distribution`: the threshold of the separate test on the client's
    /// out-of-distribution queries: a fixed, conservative value well below `delta` when no
    /// benign reference exists for them, else fitted by [`crate::calibrate`] on foreign benign
    /// traffic (`CalibrationOptions::foreign`); 0 = out-of-distribution queries are not tested.
    pub ood_delta: f64,
    /// Range of the model's input values (its card's `input_range`, set by the gateway and
    /// calibration, [`crate::DetectorsConfig::set_input_range`]): the exact distances are
    /// computed on inputs mapped from it onto 256 levels, and given back in input units.
    /// `[0, 1]` for images; without it a tabular model's features in `[0, 1000]` would all
    /// quantise to the top level and the distances would say nothing of the inputs.
    pub input_range: [f32; 2],
}

impl Default for PradaConfig {
    fn default() -> Self {
        Self {
            delta: 0.95,
            check_every: 10,
            min_distances: 100,
            min_class_entries: 10,
            outlier_sigma: 3.0,
            max_distances: 5000,
            class_capacity: 2048,
            proj_dim: 32,
            candidates: 8,
            // Fast scan off (`IvfParams::fastscan_m` = 0): for PRADA's 32-d codes and class
            // cells of ≈ 100 codes it was faster only under memory pressure and 12% slower in a
            // quiet window (`docs/bench/detect.md`, seventh session); `fastscan_m = 16`,
            // `fastscan_rerank = 2` turn it on (saved states are converted on restore).
            // Byte levels on (`IvfParams::sq8`): the candidates are chosen on a quarter of the
            // bytes of the `f32` codes, then re-ranked on the exact payloads as before.
            ivf: IvfParams {
                train_size: 512,
                sq8: true,
                ..IvfParams::default()
            },
            hnsw: HnswParams {
                m: 8,
                ef_construction: 32,
                ef_search: 24,
            },
            persist: 1,
            only_in_distribution: true,
            ood_delta: 0.8,
            input_range: crate::settings::UNIT_RANGE,
        }
    }
}

/// The PRADA detector.
#[derive(Clone, Debug)]
pub struct PradaDetector {
    cfg: PradaConfig,
    proj: Arc<Projections>,
    /// The OOD test's reference when `only_in_distribution` applies.
    reference: Option<Arc<OodConfig>>,
}

impl PradaDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "prada";

    /// A detector with `cfg`.
    pub fn new(cfg: PradaConfig) -> Self {
        let proj = Arc::new(Projections::new(0x707261646100, cfg.proj_dim.max(1)));
        Self {
            cfg,
            proj,
            reference: None,
        }
    }

    /// With the calibrated OOD test `ood`: when `only_in_distribution` is set and `ood` is
    /// calibrated (has centroids), queries it calls out-of-distribution are skipped.
    pub fn with_reference(mut self, ood: &OodConfig) -> Self {
        self.reference = (self.cfg.only_in_distribution && !ood.centroids.is_empty())
            .then(|| Arc::new(ood.clone()));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PradaConfig {
        &self.cfg
    }

    /// The W of every test a fresh client state runs on `stream` (each query's input and
    /// predicted label), in order; a test on equal distances counts as W = 0 as in
    /// [`DetectorState::observe`]. Calibration sets δ from these series.
    pub fn w_series<'a>(&self, stream: impl IntoIterator<Item = (&'a [f32], usize)>) -> Vec<f64> {
        self.w_series_scored(stream.into_iter().map(|(x, l)| (x, &[][..], l)))
    }

    /// [`PradaDetector::w_series`] with each query's probabilities, which the in-distribution
    /// test reads (its max-softmax rule; without them only the centroid rule applies).
    pub fn w_series_scored<'a>(
        &self,
        stream: impl IntoIterator<Item = (&'a [f32], &'a [f32], usize)>,
    ) -> Vec<f64> {
        let mut s = PradaState {
            cfg: self.cfg.clone(),
            proj: Some(self.proj.clone()),
            reference: self.reference.clone(),
            ..PradaState::default()
        };
        let mut out = Vec::new();
        for (t, (x, probs, label)) in stream.into_iter().enumerate() {
            let before = s.tests;
            s.observe(&Observation {
                client: "calibration",
                input: x,
                input_shape: &[x.len()],
                probs,
                label,
                time_ms: t as u64,
            });
            if s.tests > before {
                out.extend(s.last_w);
            }
        }
        out
    }
}

/// The largest δ at which a client whose tests gave `ws` would *not* be flagged with
/// `persist` consecutive tests below δ: the smallest, over every run of `persist` consecutive
/// tests, of the run's largest W (`None` when there are fewer than `persist` tests: the client
/// cannot be flagged at any δ).
pub fn critical_delta(ws: &[f64], persist: u32) -> Option<f64> {
    ws.windows(persist.max(1) as usize)
        .map(|run| run.iter().copied().fold(f64::MIN, f64::max))
        .reduce(f64::min)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClassSet {
    /// `G_c` (absent only in a state saved with the HNSW index, until it is converted).
    #[serde(default, rename = "ivf")]
    index: Option<IvfIndex>,
    /// The HNSW index of a state saved before the IVF index (read, converted on restore,
    /// never written).
    #[serde(default, rename = "index", skip_serializing)]
    legacy: Option<AnnIndex<f32>>,
    threshold: f64,
    /// Running sums over `D_{G_c}`: count, Σd, Σd².
    g_n: f64,
    g_sum: f64,
    g_sum2: f64,
    /// Entries of this class in the distance set `D`.
    d_count: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PradaState {
    #[serde(skip)]
    cfg: PradaConfig,
    #[serde(skip)]
    proj: Option<Arc<Projections>>,
    /// The OOD test's reference (see [`PradaDetector::with_reference`]).
    #[serde(skip)]
    reference: Option<Arc<OodConfig>>,
    /// Queries skipped as out-of-distribution (counted in `queries`).
    #[serde(default)]
    skipped: u64,
    /// The pool of the client's out-of-distribution queries, tested against `ood_delta`
    /// (created at the first such query when `ood_delta > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outside: Option<Box<PradaState>>,
    classes: Vec<Option<ClassSet>>,
    /// The distance set `D`: (class, d_min), newest last.
    dists: VecDeque<(u16, f64)>,
    queries: u64,
    last_w: Option<f64>,
    alarm: bool,
    /// Consecutive tests with `W < δ` so far.
    #[serde(default)]
    below: u32,
    #[serde(skip)]
    buf: Vec<u8>,
    #[serde(skip)]
    code: Vec<f32>,
    /// Tests run by this state since it was created or restored (for calibration).
    #[serde(skip)]
    tests: u64,
    /// The pooled distances of a test (reused).
    #[serde(skip)]
    pooled: Vec<f64>,
    /// The distance set `D` sorted ((distance, class), ascending) as of the last test, brought
    /// up to date at each test by one merge pass with the distances added and removed since
    /// (instead of a binary search and a shift of the whole set per query), so that a test
    /// needs no sort; rebuilt from `dists` when out of step (after a restore).
    #[serde(skip)]
    sorted: Vec<(f64, u16)>,
    /// Distances that entered `D` since the last test (unsorted).
    #[serde(skip)]
    added: Vec<(f64, u16)>,
    /// Distances that left `D` since the last test (unsorted).
    #[serde(skip)]
    removed: Vec<(f64, u16)>,
    /// The merge's output buffer (swapped with `sorted`).
    #[serde(skip)]
    merged: Vec<(f64, u16)>,
    /// Whether `sorted`, `added` and `removed` describe `dists` (false after a restore).
    #[serde(skip)]
    in_step: bool,
}

impl PradaState {
    /// Heap bytes of its class indexes, distance sets and buffers, and of its pool of
    /// out-of-distribution queries. (A legacy HNSW index is converted and dropped on restore,
    /// so a live state holds none.)
    fn heap_bytes_inner(&self) -> usize {
        use crate::heap::{deque, vec};
        let classes: usize = self
            .classes
            .iter()
            .flatten()
            .map(|c| c.index.as_ref().map_or(0, IvfIndex::heap_bytes))
            .sum();
        let outside = self.outside.as_ref().map_or(0, |o| {
            std::mem::size_of::<PradaState>() + o.heap_bytes_inner()
        });
        vec(&self.classes)
            + classes
            + deque(&self.dists)
            + vec(&self.buf)
            + vec(&self.code)
            + vec(&self.pooled)
            + vec(&self.sorted)
            + vec(&self.added)
            + vec(&self.removed)
            + vec(&self.merged)
            + outside
    }
}

/// The order of [`PradaState::sorted`]: by distance ([`f64::total_cmp`]), then class.
fn by_distance(a: &(f64, u16), b: &(f64, u16)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// An empty `G_c` index for class `c`.
fn new_class_index(cfg: &PradaConfig, dim: usize, c: usize) -> IvfIndex {
    IvfIndex::new(dim, cfg.ivf, cfg.class_capacity, 0x5EED ^ c as u64)
}

/// Quantises inputs in `range` to bytes (`range` onto `0..=255`).
pub(crate) fn quantise_range(x: &[f32], range: [f32; 2], out: &mut Vec<u8>) {
    out.clear();
    out.resize(x.len(), 0);
    let (lo, inv) = crate::settings::unit_map(range);
    crate::simd::vectorized(QuantiseKernel { x, lo, inv, out });
}

/// [`quantise_range`]'s loop as a [`Kernel`] (a plain loop: with SSE4.1, part of the dispatched
/// level, `round` is an instruction sequence instead of a `roundf` call per value; same values).
/// The rounded value of [`crate::settings::unit_value`] is always a whole number in `0..=255`,
/// converted exactly by [`crate::simd::whole_to_u32`] (vectorised; `as u8` is a scalar
/// conversion per value) — the byte the clamp, rounding and saturating cast gave, NaN
/// included.
struct QuantiseKernel<'a> {
    x: &'a [f32],
    lo: f32,
    inv: f32,
    out: &'a mut [u8],
}

impl Kernel for QuantiseKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for (o, &v) in self.out.iter_mut().zip(self.x) {
            let unit = crate::settings::unit_value(v, self.lo, self.inv);
            *o = crate::simd::whole_to_u32((unit * 255.0).round()) as u8;
        }
    }
}

impl Detector for PradaDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "Juuti et al., PRADA, EuroS&P 2019".into(),
            targets: "synthetic-query extraction (JBDA, T-RND, equation solving)".into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::Input, DataNeed::Output],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(PradaState {
            cfg: self.cfg.clone(),
            proj: Some(self.proj.clone()),
            reference: self.reference.clone(),
            ..PradaState::default()
        })
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: PradaState = decode_state(Self::NAME, snapshot)?;
        s.attach(&self.cfg, &self.proj, self.reference.clone())?;
        Ok(Box::new(s))
    }
}

impl PradaState {
    fn test(&mut self) {
        self.bring_sorted_up_to_date();
        let min_entries = self.cfg.min_class_entries;
        let classes = &self.classes;
        let pooled_class = |c: u16| {
            classes
                .get(c as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.d_count >= min_entries)
        };
        // Mean and σ over the pooled distances in arrival order (the summation order of the
        // authors' code), then the kept values straight from the sorted set.
        let (mut n, mut sum) = (0usize, 0.0f64);
        for &(c, d) in &self.dists {
            if pooled_class(c) {
                n += 1;
                sum += d;
            }
        }
        if n == 0 {
            return;
        }
        let mean = sum / n as f64;
        let var = self
            .dists
            .iter()
            .filter(|&&(c, _)| pooled_class(c))
            .map(|&(_, d)| (d - mean) * (d - mean))
            .sum::<f64>()
            / n as f64;
        let sd = var.sqrt();
        // Outliers are dropped first (strictly within `outlier_sigma`·σ, as the authors' code
        // does; with σ = 0 every value is kept); the test needs more than `min_distances`
        // of the remaining values.
        let limit = self.cfg.outlier_sigma * sd;
        let pooled = &mut self.pooled;
        pooled.clear();
        pooled.extend(
            self.sorted
                .iter()
                .filter(|&&(d, c)| pooled_class(c) && (sd == 0.0 || (d - mean).abs() < limit))
                .map(|&(d, _)| d),
        );
        if pooled.len() <= self.cfg.min_distances.max(2) {
            return;
        }
        match shapiro_wilk_w_sorted(pooled) {
            Ok(w) => {
                self.tests += 1;
                self.last_w = Some(w);
                self.below = if w < self.cfg.delta {
                    self.below.saturating_add(1)
                } else {
                    0
                };
            }
            // All distances equal (e.g. one point repeated): maximally non-normal.
            Err(crate::shapiro::ShapiroError::ZeroRange) => {
                self.tests += 1;
                self.last_w = Some(0.0);
                self.below = self.below.saturating_add(1);
            }
            Err(_) => return,
        }
        self.alarm = self.below >= self.cfg.persist.max(1);
    }
}

impl PradaState {
    /// Brings [`PradaState::sorted`] up to date: the distances added since the last test and
    /// those removed since (sorted first, an entry both added and removed cancelled) are
    /// spliced in at their binary-searched positions, the runs between them copied whole into
    /// the other buffer — one copy of the set per test instead of a shift per query —; out of
    /// step (after a restore, or when the bookkeeping does not add up), `dists` is sorted.
    fn bring_sorted_up_to_date(&mut self) {
        let expected = self.sorted.len() + self.added.len();
        let mut ok = self.in_step && expected == self.dists.len() + self.removed.len();
        if ok && !(self.added.is_empty() && self.removed.is_empty()) {
            self.added.sort_unstable_by(by_distance);
            self.removed.sort_unstable_by(by_distance);
            // Cancel the entries both added and removed (multiset difference, two pointers).
            let (mut add, mut rem) = (Vec::new(), Vec::new());
            let (mut a, mut r) = (0, 0);
            while a < self.added.len() || r < self.removed.len() {
                match (self.added.get(a), self.removed.get(r)) {
                    (Some(x), Some(y)) if by_distance(x, y).is_eq() => {
                        a += 1;
                        r += 1;
                    }
                    (Some(x), Some(y)) if by_distance(x, y).is_lt() => {
                        add.push(*x);
                        a += 1;
                    }
                    (Some(x), None) => {
                        add.push(*x);
                        a += 1;
                    }
                    (_, Some(y)) => {
                        rem.push(*y);
                        r += 1;
                    }
                    (None, None) => break,
                }
            }
            let sorted = &self.sorted;
            let merged = &mut self.merged;
            merged.clear();
            merged.reserve(self.dists.len());
            let (mut prev, mut a, mut r) = (0, 0, 0);
            while ok && (a < add.len() || r < rem.len()) {
                // Removals first at equal keys (they are found in the old set).
                let removal =
                    a >= add.len() || (r < rem.len() && by_distance(&rem[r], &add[a]).is_le());
                let e = if removal { rem[r] } else { add[a] };
                let pos = prev + sorted[prev..].partition_point(|x| by_distance(x, &e).is_lt());
                merged.extend_from_slice(&sorted[prev..pos]);
                prev = pos;
                if removal {
                    ok = sorted.get(prev).is_some_and(|x| by_distance(x, &e).is_eq());
                    prev += 1;
                    r += 1;
                } else {
                    merged.push(e);
                    a += 1;
                }
            }
            if ok {
                merged.extend_from_slice(&sorted[prev.min(sorted.len())..]);
                ok = merged.len() == self.dists.len();
                std::mem::swap(&mut self.sorted, &mut self.merged);
            }
        }
        if !ok {
            self.sorted.clear();
            self.sorted.extend(self.dists.iter().map(|&(c, d)| (d, c)));
            self.sorted.sort_unstable_by(by_distance);
        }
        self.added.clear();
        self.removed.clear();
        self.in_step = true;
    }

    /// The verdict of the last test (score `(1 − W)/(1 − δ)`, ≥ 1 below δ) and the alarm; with
    /// an out-of-distribution pool, the larger score and either alarm.
    fn verdict(&self) -> Verdict {
        let score = self
            .last_w
            .map_or(0.0, |w| (1.0 - w) / (1.0 - self.cfg.delta).max(1e-9));
        let outside = self.outside.as_ref().map(|o| o.verdict());
        Verdict {
            score: outside.map_or(score, |o| score.max(o.score)),
            alarm: self.alarm || outside.is_some_and(|o| o.alarm),
        }
    }

    /// Restores what a snapshot does not hold (configuration, projections, reference) and
    /// converts saved indexes to the configuration's (see [`Detector::restore_state`]), for
    /// this pool and its out-of-distribution pool.
    fn attach(
        &mut self,
        cfg: &PradaConfig,
        proj: &Arc<Projections>,
        reference: Option<Arc<OodConfig>>,
    ) -> Result<(), String> {
        self.cfg = cfg.clone();
        self.proj = Some(proj.clone());
        self.reference = reference;
        for (c, set) in self.classes.iter_mut().enumerate() {
            let Some(set) = set else { continue };
            if let Some(old) = set.legacy.take() {
                if set.index.is_none() {
                    let mut index = new_class_index(cfg, old.dim(), c);
                    for (code, input) in old.points_with_payload() {
                        index.insert_with_payload(code, input);
                    }
                    set.index = Some(index);
                }
            }
            let Some(index) = set.index.as_mut() else {
                return Err(format!("prada: class {c} has no index"));
            };
            // A state saved before fast scan or byte levels (or with other parameters) is
            // converted.
            index.set_fastscan(cfg.ivf.fastscan_m, cfg.ivf.fastscan_rerank);
            index.set_sq8(cfg.ivf.sq8);
        }
        if let Some(o) = self.outside.as_mut() {
            let ocfg = PradaConfig {
                delta: cfg.ood_delta,
                ..cfg.clone()
            };
            o.attach(&ocfg, proj, None)?;
        }
        Ok(())
    }
}

impl DetectorState for PradaState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        if let Some(r) = &self.reference {
            if OodDetector::is_ood(r, obs.input, obs.probs, obs.label) {
                self.skipped += 1;
                if self.cfg.ood_delta > 0.0 {
                    let outside = self.outside.get_or_insert_with(|| {
                        Box::new(PradaState {
                            cfg: PradaConfig {
                                delta: self.cfg.ood_delta,
                                ..self.cfg.clone()
                            },
                            proj: self.proj.clone(),
                            ..PradaState::default()
                        })
                    });
                    outside.observe(obs);
                }
                return self.verdict();
            }
        }
        let c = obs.label.min(u16::MAX as usize - 1);
        if self.classes.len() <= c {
            self.classes.resize(c + 1, None);
        }
        let mut buf = std::mem::take(&mut self.buf);
        quantise_range(obs.input, self.cfg.input_range, &mut buf);
        let mut code = std::mem::take(&mut self.code);
        if let Some(p) = &self.proj {
            // From the byte levels just computed (the values PRADA's distances are measured
            // on): a quarter of the float matrix's bytes, exact integer sums.
            let [lo, hi] = self.cfg.input_range;
            let step = (hi - lo) / 255.0;
            Projections::project_levels(&p.signs(obs.input.len()), &buf, lo, step, &mut code);
        }
        let cfg = &self.cfg;
        let slot = &mut self.classes[c];
        match slot {
            None => {
                let mut index = new_class_index(cfg, code.len(), c);
                index.insert_with_payload(&code, &buf);
                // The first query of a class seeds `G_c` with distance 0 in `D_{G_c}` (it
                // lowers the first thresholds); it adds nothing to `D`.
                *slot = Some(ClassSet {
                    index: Some(index),
                    legacy: None,
                    threshold: 0.0,
                    g_n: 1.0,
                    g_sum: 0.0,
                    g_sum2: 0.0,
                    d_count: 0,
                });
            }
            Some(set) => {
                let dmin = set
                    .index
                    .as_mut()
                    .and_then(|i| i.nearest_payload_dist2(&code, &buf, cfg.candidates.max(1)))
                    .map_or(0.0, |d2| {
                        let [lo, hi] = cfg.input_range;
                        (d2 as f64).sqrt() / 255.0 * (hi - lo) as f64
                    });
                self.dists.push_back((c as u16, dmin));
                set.d_count += 1;
                // The sorted set's bookkeeping, while in step (bounded: a test comes every
                // `check_every` queries once `D` holds `min_distances`).
                let track =
                    self.in_step && self.added.len() <= 2 * cfg.max_distances.clamp(3, 5000);
                self.in_step = track;
                if track {
                    self.added.push((dmin, c as u16));
                }
                if self.dists.len() > cfg.max_distances.clamp(3, 5000) {
                    if let Some((old, d)) = self.dists.pop_front() {
                        if let Some(Some(s)) = self.classes.get_mut(old as usize) {
                            s.d_count -= 1;
                        }
                        if track {
                            self.removed.push((d, old));
                        }
                    }
                }
                let Some(set) = self.classes[c].as_mut() else {
                    unreachable!("class set exists")
                };
                if dmin > set.threshold {
                    if let Some(i) = set.index.as_mut() {
                        i.insert_with_payload(&code, &buf);
                    }
                    set.g_n += 1.0;
                    set.g_sum += dmin;
                    set.g_sum2 += dmin * dmin;
                    let mean = set.g_sum / set.g_n;
                    let var = (set.g_sum2 / set.g_n - mean * mean).max(0.0);
                    set.threshold = set.threshold.max(mean - var.sqrt());
                }
            }
        }
        self.buf = buf;
        self.code = code;
        // Tested at observed queries 1, 1 + k, 1 + 2k, … (k = `check_every`), as in the
        // authors' code (skipped out-of-distribution queries do not count).
        if (self.queries - self.skipped - 1).is_multiple_of(self.cfg.check_every.max(1))
            && self.dists.len() > self.cfg.min_distances
        {
            self.test();
        }
        self.verdict()
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.queries
    }

    fn heap_bytes(&self) -> usize {
        self.heap_bytes_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn run(d: &PradaDetector, xs: &[(Vec<f32>, usize)]) -> (Option<usize>, Box<dyn DetectorState>) {
        let mut s = d.new_state();
        let mut first = None;
        for (i, (x, l)) in xs.iter().enumerate() {
            let v = s.observe(&Observation {
                client: "c",
                input: x,
                input_shape: &[x.len()],
                probs: &[],
                label: *l,
                time_ms: i as u64,
            });
            if v.alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        (first, s)
    }

    /// Client `c`'s observation of query `i` (`x`, predicted `label`), no shape or scores.
    fn obs(x: &[f32], label: usize, i: usize) -> Observation<'_> {
        Observation {
            client: "c",
            input: x,
            input_shape: &[],
            probs: &[],
            label,
            time_ms: i as u64,
        }
    }

    /// The quantisation gives, for every value, the byte of the clamp, rounding and saturating
    /// cast it is written without (NaN and infinities included), at the dispatched instruction
    /// set and in the portable loop, for ranges that are not `[0, 1]` too.
    #[test]
    fn quantisation_matches_the_saturating_cast() {
        let base = crate::simd::tests::quantisation_probes();
        for range in [[0.0f32, 1.0], [-3.0, 5.0], [0.0, 1000.0]] {
            let (lo, inv) = crate::settings::unit_map(range);
            let xs: Vec<f32> = base
                .iter()
                .flat_map(|&t| [t, lo + t * (range[1] - range[0])])
                .collect();
            let want: Vec<u8> = xs
                .iter()
                .map(|&v| (((v - lo) * inv).clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            let mut got = Vec::new();
            quantise_range(&xs, range, &mut got);
            assert_eq!(got, want, "dispatched, {range:?}");
            let mut plain = vec![0u8; xs.len()];
            QuantiseKernel {
                x: &xs,
                lo,
                inv,
                out: &mut plain,
            }
            .run();
            assert_eq!(plain, want, "portable, {range:?}");
        }
    }

    /// A tabular model's rows (64 features in `[0, 1000]`): with the model's input range the
    /// distance PRADA records is the L2 distance in input units, within the 256 levels'
    /// quantisation (each feature off by at most one level, 1000/255); on the `[0, 1]` default
    /// every feature above 1 saturates at the top level and the distance says nothing.
    #[test]
    fn tabular_distances_are_measured_over_the_models_input_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let a: Vec<f32> = (0..64).map(|_| rng.gen_range(0.0..1000.0)).collect();
        let b: Vec<f32> = a
            .iter()
            .map(|v| (v + rng.gen_range(-80.0..80.0)).clamp(0.0, 1000.0))
            .collect();
        let exact = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let recorded = |range: [f32; 2]| {
            let d = PradaDetector::new(PradaConfig {
                input_range: range,
                ..PradaConfig::default()
            });
            let mut s = PradaState {
                cfg: d.cfg.clone(),
                proj: Some(d.proj.clone()),
                ..PradaState::default()
            };
            s.observe(&obs(&a, 3, 0));
            s.observe(&obs(&b, 3, 1));
            s.dists.back().map(|&(_, d)| d)
        };
        let d = recorded([0.0, 1000.0]).unwrap();
        let tolerance = 1000.0 / 255.0 * 64f64.sqrt();
        assert!((d - exact).abs() <= tolerance, "{d} vs {exact}");
        assert!(exact > 10.0 * tolerance);
        // Saturated: at most one unit per feature (the values below 1), whatever the rows.
        let saturated = recorded([0.0, 1.0]).unwrap();
        assert!(saturated <= 8.0 && saturated < exact / 10.0, "{saturated}");
    }

    /// Natural-like queries: each class a blob with Gaussian-ish spread (distances to the
    /// nearest previous query are roughly normal).
    fn natural(n: usize, seed: u64) -> Vec<(Vec<f32>, usize)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..10)
            .map(|_| (0..64).map(|_| rng.gen_range(0.3..0.7)).collect())
            .collect();
        (0..n)
            .map(|_| {
                let c = rng.gen_range(0..10);
                let x = centres[c]
                    .iter()
                    .map(|m| {
                        let g: f32 = (0..6).map(|_| rng.gen::<f32>()).sum::<f32>() - 3.0;
                        (m + 0.1 * g).clamp(0.0, 1.0)
                    })
                    .collect();
                (x, c)
            })
            .collect()
    }

    /// A state saved without fast scan (`main`'s format: no quantisers, index parameters without
    /// the fast-scan fields) and restored by a configuration that turns it on is converted:
    /// the clustered generations of its class indexes get quantisers and packed codes, and the
    /// converted state goes on like the unconverted one (same alarms, W within 0.01).
    #[test]
    fn states_saved_before_fast_scan_are_converted() {
        let exact = PradaDetector::new(PradaConfig::default());
        assert_eq!(exact.cfg.ivf.fastscan_m, 0);
        // Two classes of ≈ 2,500 queries: their generations are clustered into cells large
        // enough for the fast scan.
        let stream: Vec<(Vec<f32>, usize)> = natural(5300, 9)
            .into_iter()
            .map(|(x, c)| (x, c % 2))
            .collect();
        let (_, mut old) = run(&exact, &stream[..5000]);
        let mut snap: serde_json::Value = serde_json::from_slice(&old.snapshot()).unwrap();
        for class in snap["classes"].as_array_mut().unwrap() {
            let params = class["ivf"]["params"].as_object_mut().unwrap();
            assert!(params.remove("fastscan_m").is_some());
            assert!(params.remove("fastscan_rerank").is_some());
        }
        let d = PradaDetector::new(PradaConfig {
            ivf: IvfParams {
                fastscan_m: 16,
                fastscan_rerank: 2,
                ..PradaConfig::default().ivf
            },
            ..PradaConfig::default()
        });
        let mut conv = d
            .restore_state(&serde_json::to_vec(&snap).unwrap())
            .unwrap();
        let again: serde_json::Value = serde_json::from_slice(&conv.snapshot()).unwrap();
        let quantised = again["classes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ivf"]["current"]["fsq"].is_object())
            .count();
        assert_eq!(quantised, 2, "converted");
        for (i, (x, l)) in stream[5000..].iter().enumerate() {
            let o = obs(x, *l, 5000 + i);
            let (a, b) = (old.observe(&o), conv.observe(&o));
            assert_eq!(a.alarm, b.alarm);
            assert!(
                (a.score - b.score).abs() < 0.01,
                "{} vs {}",
                a.score,
                b.score
            );
        }
    }

    #[test]
    fn natural_stream_passes_and_synthetic_steps_alarm() {
        let d = PradaDetector::new(PradaConfig::default());
        let (first, s) = run(&d, &natural(1500, 1));
        assert_eq!(first, None, "benign stream flagged");
        assert_eq!(s.queries(), 1500);
        // JBDA-like: seeds then many tiny steps from them (distances cluster near the step).
        let seeds = natural(30, 2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut stream = seeds.clone();
        let mut frontier = seeds;
        while stream.len() < 600 {
            let mut next = Vec::new();
            for (x, l) in &frontier {
                let y: Vec<f32> = x
                    .iter()
                    .map(|v| (v + if rng.gen::<bool>() { 0.02 } else { -0.02 }).clamp(0.0, 1.0))
                    .collect();
                next.push((y, *l));
            }
            stream.extend(next.iter().cloned());
            frontier.extend(next);
        }
        let (first, _) = run(&d, &stream);
        let first = first.expect("synthetic stream not flagged");
        assert!(first <= 300, "flagged only after {first} queries");
    }

    /// The JBDA-like stream of `natural_stream_passes_and_synthetic_steps_alarm`: seeds, then
    /// tiny steps from them.
    fn synthetic_steps(n: usize) -> Vec<(Vec<f32>, usize)> {
        let seeds = natural(30, 2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut stream = seeds.clone();
        let mut frontier = seeds;
        while stream.len() < n {
            let next: Vec<(Vec<f32>, usize)> = frontier
                .iter()
                .map(|(x, l)| {
                    let y = x
                        .iter()
                        .map(|v| (v + if rng.gen::<bool>() { 0.02 } else { -0.02 }).clamp(0.0, 1.0))
                        .collect();
                    (y, *l)
                })
                .collect();
            stream.extend(next.iter().cloned());
            frontier.extend(next);
        }
        stream.truncate(n);
        stream
    }

    /// A reference whose every class sits at the blobs' mean value (0.5) with radius 2: the
    /// blobs of `natural` (≈ 1.1 from it) are in-distribution, a query with 24 of its 64
    /// values set to 1 (≥ 2.4 from it) is not.
    fn blob_reference() -> OodConfig {
        OodConfig {
            centroids: vec![vec![0.5; 64]; 10],
            radius: vec![2.0; 10],
            msp_threshold: 0.0,
            benign_rate: 0.0,
            window: 100,
            max_ood: 10,
        }
    }

    fn marked(stream: &[(Vec<f32>, usize)]) -> Vec<(Vec<f32>, usize)> {
        stream
            .iter()
            .map(|(x, l)| {
                let mut y = x.clone();
                y[..24].fill(1.0);
                (y, *l)
            })
            .collect()
    }

    /// With a calibrated OOD reference, the queries it calls in-distribution form PRADA's pool
    /// (tested against δ) and the others a separate pool (tested against `ood_delta`, or not
    /// at all when it is 0); skipped queries still count as queries and shift no test of the
    /// other pool.
    #[test]
    fn out_of_distribution_queries_form_their_own_pool() {
        let synthetic = synthetic_steps(600);
        let reference = blob_reference();
        // The synthetic queries interleaved with marked (out-of-distribution) natural ones.
        let far = marked(&natural(600, 4));
        let mixed: Vec<(Vec<f32>, usize)> = synthetic
            .iter()
            .zip(&far)
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        let skip_outside = PradaDetector::new(PradaConfig {
            ood_delta: 0.0,
            ..PradaConfig::default()
        })
        .with_reference(&reference);
        let (first_f, s) = run(&skip_outside, &mixed);
        assert_eq!(
            s.queries(),
            mixed.len() as u64,
            "skipped queries still count"
        );
        // The marked half is not in the pool: the same alarm as on the synthetic half alone,
        // at the same observed query, i.e. at twice the stream position (±1).
        let (first_alone, _) = run(&skip_outside, &synthetic);
        let (first_f, first_alone) = (first_f.expect("flagged"), first_alone.expect("flagged"));
        assert!(
            first_f.abs_diff(2 * first_alone) <= 1,
            "{first_f} vs 2 × {first_alone}"
        );
        // Unfiltered (switched off, or no calibration), the marked half is in the one pool
        // and changes when the client is flagged.
        for d in [
            PradaDetector::new(PradaConfig {
                only_in_distribution: false,
                ..PradaConfig::default()
            })
            .with_reference(&reference),
            PradaDetector::new(PradaConfig::default()).with_reference(&OodConfig::default()),
        ] {
            let (first_u, _) = run(&d, &mixed);
            assert_ne!(first_u, Some(first_f));
        }
        // The out-of-distribution pool (default `ood_delta`): a synthetic stream made out of
        // distribution (marked) is flagged there; marked natural queries are not; with
        // `ood_delta = 0` the marked synthetic stream goes unseen.
        let default = PradaDetector::new(PradaConfig::default()).with_reference(&reference);
        let (first, s) = run(&default, &marked(&synthetic));
        assert!(first.is_some(), "marked synthetic stream not flagged");
        assert_eq!(s.queries(), 600);
        let (first, _) = run(&default, &marked(&natural(1500, 1)));
        assert_eq!(first, None, "marked natural stream flagged");
        let (first, _) = run(&skip_outside, &marked(&synthetic));
        assert_eq!(first, None);
        // The out-of-distribution pool survives a snapshot: restored, the state goes on alike.
        let stream = marked(&synthetic);
        let (_, mut live) = run(&default, &stream[..300]);
        let mut restored = default.restore_state(&live.snapshot()).unwrap();
        for (i, (x, l)) in stream[300..].iter().enumerate() {
            let o = obs(x, *l, 300 + i);
            assert_eq!(live.observe(&o), restored.observe(&o));
        }
    }

    #[test]
    fn persistence_delays_the_alarm_by_whole_tests() {
        // A stream whose distances stay non-normal: the alarm with `persist = 2` comes exactly
        // one test (`check_every` queries) after the paper's single-test alarm.
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let stream: Vec<(Vec<f32>, usize)> = (0..400)
            .map(|i| {
                let x: Vec<f32> = (0..32)
                    .map(|j| {
                        if j == i % 32 {
                            rng.gen_range(0.0..0.05)
                        } else {
                            0.5
                        }
                    })
                    .collect();
                (x, 0)
            })
            .collect();
        let first = |persist| {
            let d = PradaDetector::new(PradaConfig {
                persist,
                ..PradaConfig::default()
            });
            run(&d, &stream).0.expect("not flagged")
        };
        let (one, two) = (first(1), first(2));
        assert_eq!(two, one + PradaConfig::default().check_every as usize);
    }

    #[test]
    fn critical_delta_predicts_the_alarm() {
        // Benign-like streams (the W series of natural data) and a synthetic one: a state
        // run at δ is flagged exactly when δ exceeds the series' critical value.
        assert_eq!(
            critical_delta(&[0.97, 0.93, 0.96, 0.92, 0.91], 1),
            Some(0.91)
        );
        assert_eq!(
            critical_delta(&[0.97, 0.93, 0.96, 0.92, 0.91], 2),
            Some(0.92)
        );
        assert_eq!(
            critical_delta(&[0.97, 0.93, 0.96, 0.92, 0.91], 3),
            Some(0.96)
        );
        assert_eq!(critical_delta(&[0.9], 2), None);
        for seed in [7u64, 8, 9] {
            let xs = natural(400, seed);
            let probe = PradaDetector::new(PradaConfig::default());
            let ws = probe.w_series(xs.iter().map(|(x, l)| (x.as_slice(), *l)));
            assert!(ws.len() > 20, "{}", ws.len());
            for persist in [1u32, 2, 3] {
                let c = critical_delta(&ws, persist).unwrap();
                for delta in [c - 1e-3, c + 1e-3] {
                    let d = PradaDetector::new(PradaConfig {
                        delta,
                        persist,
                        ..PradaConfig::default()
                    });
                    let flagged = run(&d, &xs).0.is_some();
                    assert_eq!(
                        flagged,
                        delta > c,
                        "seed {seed} persist {persist} δ {delta}"
                    );
                }
            }
        }
    }

    /// The splice of the added and removed distances gives the sorted `dists` — with repeated
    /// values, entries added and removed between two tests (cancelled), whole turnovers of the
    /// set between two tests, and bookkeeping that does not add up (sorted again).
    #[test]
    fn splicing_keeps_the_set_sorted() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut s = PradaState::default();
        let cap = 60;
        for round in 0..400 {
            for _ in 0..rng.gen_range(0..90) {
                // Few distinct values: many ties, in distance and class.
                let e = (rng.gen_range(0..8) as f64 * 0.5, rng.gen_range(0..3u16));
                s.dists.push_back((e.1, e.0));
                s.added.push(e);
                if s.dists.len() > cap {
                    let (c, d) = s.dists.pop_front().unwrap();
                    s.removed.push((d, c));
                }
            }
            if round == 200 {
                s.sorted.pop();
            }
            s.bring_sorted_up_to_date();
            let mut want: Vec<(f64, u16)> = s.dists.iter().map(|&(c, d)| (d, c)).collect();
            want.sort_unstable_by(by_distance);
            assert_eq!(s.sorted, want, "round {round}");
        }
    }

    /// The sorted distance set gives every test exactly the W of the plain computation (pool
    /// the classes' distances in arrival order, drop the outliers, sort, W), also while the
    /// oldest distances leave the set and after a restore.
    #[test]
    fn sorted_distance_set_gives_the_plain_w() {
        let cfg = PradaConfig {
            max_distances: 300,
            ..PradaConfig::default()
        };
        let d = PradaDetector::new(cfg.clone());
        let mut s = PradaState {
            cfg: cfg.clone(),
            proj: Some(d.proj.clone()),
            ..PradaState::default()
        };
        let mut checked = 0;
        for (i, (x, l)) in natural(1500, 11).iter().enumerate() {
            if i == 700 {
                // As after a restore: the sorted set is rebuilt.
                s.sorted.clear();
            }
            let before = s.tests;
            s.observe(&obs(x, *l, i));
            assert!(
                !s.in_step || s.sorted.len() + s.added.len() == s.dists.len() + s.removed.len(),
                "query {i}"
            );
            if s.tests == before {
                continue;
            }
            let pooled: Vec<f64> = s
                .dists
                .iter()
                .filter(|(c, _)| {
                    s.classes[*c as usize]
                        .as_ref()
                        .is_some_and(|c| c.d_count >= cfg.min_class_entries)
                })
                .map(|&(_, d)| d)
                .collect();
            let n = pooled.len() as f64;
            let mean = pooled.iter().sum::<f64>() / n;
            let sd = (pooled.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / n).sqrt();
            let kept: Vec<f64> = pooled
                .into_iter()
                .filter(|d| sd == 0.0 || (d - mean).abs() < cfg.outlier_sigma * sd)
                .collect();
            assert_eq!(
                s.last_w,
                crate::shapiro::shapiro_wilk_w(&kept).ok(),
                "query {i}"
            );
            checked += 1;
        }
        assert!(checked > 100, "{checked} tests");
    }

    #[test]
    fn snapshot_round_trip_keeps_state() {
        let d = PradaDetector::new(PradaConfig::default());
        let xs = natural(300, 5);
        let (_, s) = run(&d, &xs);
        let mut s = s;
        let mut r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 300);
        for (i, (x, l)) in natural(100, 6).iter().enumerate() {
            let o = obs(x, *l, i);
            let (a, b) = (s.observe(&o), r.observe(&o));
            assert_eq!(a.alarm, b.alarm);
            assert!((a.score - b.score).abs() < 1e-9);
        }
        assert!(d.restore_state(b"[]").is_err());
    }

    /// A state saved with the HNSW index (each class's points under `index`) loads: the points
    /// are re-inserted into IVF indexes and the restored state goes on exactly as the live one
    /// (small classes are scanned exactly, so both find the same `d_min`).
    #[test]
    fn states_saved_with_the_hnsw_index_still_load() {
        let d = PradaDetector::new(PradaConfig::default());
        let (_, mut live) = run(&d, &natural(300, 5));
        let mut snap: serde_json::Value = serde_json::from_slice(&live.snapshot()).unwrap();
        let cfg = PradaConfig::default();
        for class in snap["classes"].as_array_mut().unwrap() {
            let obj = class.as_object_mut().unwrap();
            let ivf: IvfIndex = serde_json::from_value(obj.remove("ivf").unwrap()).unwrap();
            let (codes, inputs) = ivf.held_codes();
            let mut old = AnnIndex::new(cfg.proj_dim, cfg.hnsw, cfg.class_capacity, 1);
            for (code, input) in codes.chunks(cfg.proj_dim).zip(inputs.chunks(64)) {
                old.insert_with_payload(code, input);
            }
            obj.insert("index".into(), serde_json::to_value(&old).unwrap());
        }
        let mut restored = d
            .restore_state(&serde_json::to_vec(&snap).unwrap())
            .unwrap();
        assert_eq!(restored.queries(), 300);
        let mut alarms = 0;
        for (i, (x, l)) in natural(200, 6).iter().enumerate() {
            let o = obs(x, *l, i);
            let (a, b) = (live.observe(&o), restored.observe(&o));
            assert_eq!(a, b, "query {i}");
            alarms += a.alarm as usize;
        }
        assert_eq!(alarms, 0);
        // A class without any index is refused.
        let mut bad: serde_json::Value = serde_json::from_slice(&live.snapshot()).unwrap();
        bad["classes"][0].as_object_mut().unwrap().remove("ivf");
        let err = d
            .restore_state(&serde_json::to_vec(&bad).unwrap())
            .err()
            .unwrap();
        assert!(err.contains("class 0 has no index"), "{err}");
    }
}
