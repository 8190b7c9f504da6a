//! Calibration: fit every detector's thresholds on benign traffic and store them beside the
//! model (`calibration.json`).
//!
//! Benign traffic is simulated as `clients` clients, each sending `queries_per_client` samples
//! of the benign set (the model's test data) in random order. Then:
//! - `knn.threshold` = the `fpr` quantile of benign per-query mean k-NN distances (Chen et al.'s
//!   rule);
//! - `blacklight.match_threshold` = one more than the `1 − fpr` quantile of benign per-query
//!   matches (at least the paper's 25, at most `top_n`); `blacklight.min_flagged` = one more
//!   than the binomial tail bound (at `fpr / (ALONE_DETECTORS · queries_per_client)`: the
//!   union bound over the detectors that act alone, spread over a client's queries — the
//!   per-window tail of every analytic bound here) of flagged queries in one
//!   `window_queries` window for a per-query flag rate of max(benign rate,
//!   `blacklight_tolerance` = 5%) — a benign stream of similar images (e.g. MNIST digits, 1.3%
//!   flagged at threshold 25, up to 4 in one window) must not reach it, a near-duplicate search
//!   (every query flagged) reaches it within one window;
//! - `prada.delta` = min(configured δ, 0.995 × the smallest benign *critical* δ) — PRADA's own
//!   rule (δ below every benign W) applied per client and at the configured `persist`: a
//!   client's critical δ is the largest δ at which it is not flagged
//!   ([`crate::prada::critical_delta`]). A per-client false-positive rate of `fpr` is a tail
//!   event seen about once in 1/`fpr` clients, so PRADA is fitted on `tail_clients` simulated
//!   clients (⌈1/`fpr`⌉ by default, 1,000 at `fpr` = 0.001), not on the `clients` the other
//!   detectors use: fitted on 20 clients, δ let 1–2 of 200 fresh benign clients per stream
//!   through (`docs/bench/detect.md`);
//! - `ood`: per-predicted-class centroids and `1 − alpha` distance radii and the `alpha`
//!   max-softmax quantile on (a sample of) the training data; the window bound from the benign
//!   OOD rate by a binomial tail at that same per-window tail, at least the benign maximum;
//! - `hoda`: benign class and hardness frequencies; thresholds = `margin` × the largest benign
//!   window distance.
//! - `synthetic.threshold` = the `fpr` quantile of the smoothness of (a sample of) the training
//!   inputs (images only); `max_flagged` from the benign flag rate by the same binomial tail
//!   as the OOD rate.
//!
//! - `prada.ood_delta`, only when `foreign` benign traffic is given (queries some legitimate
//!   clients send from another distribution than the model's: MNIST digits to a
//!   Fashion-MNIST model) and PRADA tests out-of-distribution queries apart
//!   (`only_in_distribution` with a calibrated OOD test): PRADA's rule on that second pool —
//!   0.995 × the smallest critical δ of `tail_clients` simulated foreign clients, over the
//!   queries the fitted OOD test calls out of distribution — at most the configured `delta`.
//!   Without foreign traffic the second pool keeps its fixed, conservative `ood_delta`.
//! - `rate.max_per_window`, only when `benign_interval_ms` is given (the mean time between two
//!   queries of one benign client; arrivals modelled as a Poisson process): the Poisson upper
//!   tail at that per-window tail of the queries in one window, at least the largest
//!   count seen in simulated benign streams ([`crate::rate::fit_window_bound`]). Otherwise rate
//!   limits stay configuration.

use crate::blacklight::BlacklightDetector;
use crate::error::DetectError;
use crate::hoda::{hardness_bin, HodaDetector, HARDNESS_EDGES};
use crate::knn::KnnDetector;
use crate::ood::{binomial_bound, OodDetector};
use crate::registry::DetectorsConfig;
use crate::synthetic::{smoothness, SyntheticDetector};
use mamori_core::{Model, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Detectors whose alarms act on their own under the default policy (rate, PRADA, k-NN,
/// Blacklight, synthetic; OOD and HODA are suspicion). The analytic per-client bounds use
/// `fpr / ALONE_DETECTORS` each, so that the union of their false alarms stays within `fpr`.
pub const ALONE_DETECTORS: usize = 5;

/// Version of the calibrations [`calibrate`] writes. 2: PRADA's δ fitted on `tail_clients`,
/// the FPR budget split among the detectors that act alone, the `synthetic` detector fitted.
/// 3: PRADA's δ fitted on the queries it observes (only those the OOD test calls
/// in-distribution, `PradaConfig::only_in_distribution`). 4: PRADA's δ fitted for the paper's
/// single-test rule (`PradaConfig::persist` = 1, the new default). Older files still load
/// (their detectors run with the thresholds and `persist` they hold; version 1: `synthetic`
/// inactive) but are not [`Calibration::is_current`].
pub const CALIBRATION_VERSION: u32 = 4;

/// File name of a calibration stored beside a model.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Calibration options.
#[derive(Clone, Debug)]
pub struct CalibrationOptions {
    /// Target false-positive rate.
    pub fpr: f64,
    /// Simulated benign clients.
    pub clients: usize,
    /// Queries per simulated client.
    pub queries_per_client: usize,
    /// Per-query OOD tail on the training data.
    pub alpha: f64,
    /// Margin on the largest benign HODA distances.
    pub margin: f64,
    /// Training samples used for OOD statistics (at most).
    pub max_train: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// Starting configuration (non-fitted fields are kept).
    pub base: DetectorsConfig,
    /// Mean time between two queries of one benign client, in milliseconds (Poisson
    /// arrivals); `None` leaves the rate limits as configured.
    pub benign_interval_ms: Option<f64>,
    /// Simulated benign clients for PRADA's per-client tail; `None`: ⌈1/`fpr`⌉ (at most
    /// 5,000), and never fewer than `clients`.
    pub tail_clients: Option<usize>,
    /// Per-query Blacklight flag rate a benign stream may reach without its client being
    /// flagged (when higher than the rate measured on the benign data): benign traffic from a
    /// distribution calibration never saw (e.g. MNIST digits, which share stroke windows, sent
    /// to a Fashion-MNIST model: 1.3% of queries flagged, some clients 4 in one 20-query
    /// window) must stay below the client rule, while a near-duplicate search flags nearly
    /// every query and still reaches it within a window.
    pub blacklight_tolerance: f64,
    /// Benign traffic from another distribution than the model's, which fits PRADA's
    /// threshold on out-of-distribution queries (`prada.ood_delta`); `None` keeps it.
    pub foreign: Option<ForeignBenign>,
}

/// Benign queries from another distribution than the model's: what some legitimate clients
/// send (MNIST digits to a Fashion-MNIST model). [`calibrate`] fits `prada.ood_delta` on the
/// ones its OOD test calls out of distribution.
#[derive(Clone, Debug)]
pub struct ForeignBenign {
    /// What the data is (recorded in the calibration).
    pub name: String,
    /// The queries, one sample per row, in the model's input shape.
    pub x: std::sync::Arc<Tensor>,
}

impl CalibrationOptions {
    /// Simulated clients PRADA's δ is fitted on: `tail_clients`, by default ⌈1/`fpr`⌉ (at most
    /// 5,000), never fewer than `clients`.
    pub fn prada_clients(&self) -> usize {
        let n = self
            .tail_clients
            .unwrap_or_else(|| ((1.0 / self.fpr).ceil() as usize).min(5000));
        n.max(self.clients)
    }
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            fpr: 0.001,
            clients: 20,
            queries_per_client: 500,
            alpha: 0.01,
            margin: 1.25,
            max_train: 10_000,
            seed: 0,
            base: DetectorsConfig::default(),
            benign_interval_ms: None,
            tail_clients: None,
            blacklight_tolerance: 0.05,
            foreign: None,
        }
    }
}

/// Benign statistics observed during calibration (for the record).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// Smallest benign PRADA W (over every test of every PRADA calibration client).
    pub prada_min_w: Option<f64>,
    /// Smallest benign PRADA critical δ (`prada::critical_delta` at the configured `persist`):
    /// the fitted δ is 0.995 × this value (or the configured δ, if lower).
    #[serde(default)]
    pub prada_min_critical: Option<f64>,
    /// Simulated benign clients PRADA's δ was fitted on.
    #[serde(default)]
    pub prada_clients: usize,
    /// Smallest benign mean k-NN distance.
    pub knn_min_score: Option<f64>,
    /// Largest benign Blacklight match count.
    pub blacklight_max_match: usize,
    /// Fraction of benign queries Blacklight flags at the fitted threshold.
    #[serde(default)]
    pub blacklight_flag_rate: f64,
    /// Fraction of benign queries scored OOD.
    pub ood_benign_rate: f64,
    /// Largest benign OOD count in one window.
    pub ood_max_window: usize,
    /// Largest benign class chi-square.
    pub hoda_max_class: f64,
    /// Largest benign hardness Pearson distance.
    pub hoda_max_hard: f64,
    /// Mean benign inter-arrival time the rate limit was fitted for (ms), if any.
    #[serde(default)]
    pub rate_benign_interval_ms: Option<f64>,
    /// Largest number of simulated benign queries in one rate window.
    #[serde(default)]
    pub rate_max_window: u64,
    /// Fraction of benign queries the synthetic-input detector flags at the fitted threshold.
    #[serde(default)]
    pub synthetic_benign_rate: f64,
    /// The foreign benign traffic `prada.ood_delta` was fitted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    /// Fraction of the foreign queries the fitted OOD test calls out of distribution.
    #[serde(default)]
    pub foreign_ood_rate: f64,
    /// Smallest critical δ of PRADA's out-of-distribution pool over the simulated foreign
    /// clients: the fitted `ood_delta` is 0.995 × this value (at most the configured δ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prada_ood_min_critical: Option<f64>,
}

/// A stored calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Format version ([`CALIBRATION_VERSION`] when written by this release; 1 = older).
    pub version: u32,
    /// Model name (from its card).
    pub model: String,
    /// Benign data description.
    pub benign: String,
    /// Target false-positive rate.
    pub fpr: f64,
    /// Simulated clients.
    pub clients: usize,
    /// Queries per client.
    pub queries_per_client: usize,
    /// The fitted detector configuration.
    pub detectors: DetectorsConfig,
    /// Benign statistics.
    pub report: CalibrationReport,
    /// The input dimensions the model's training inputs barely use ([`quiet_dims`] at
    /// [`QUIET_SHARE`]): where DAWN's linear answer fingerprint is placed
    /// (`mamori_defense::fingerprint`). Empty in files written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprint_dims: Vec<u32>,
}

/// Share of the training inputs' total mean square the quiet dimensions may carry.
pub const QUIET_SHARE: f64 = 0.0025;

/// The input dimensions `x` (a batch) barely uses: the dimensions sorted by their mean square
/// over the batch, the quietest first, as many as keep their share of the total mean square
/// at most `share` (ties broken by index). For Fashion-MNIST at `share` = 0.0025 these are
/// 101 of the 784 pixels (mostly the image border).
pub fn quiet_dims(x: &Tensor, share: f64) -> Vec<u32> {
    let d = x.sample_len();
    let mut ms = vec![0.0f64; d];
    for row in x.rows() {
        for (m, &v) in ms.iter_mut().zip(row) {
            *m += f64::from(v) * f64::from(v);
        }
    }
    let total: f64 = ms.iter().sum();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| ms[a].total_cmp(&ms[b]).then(a.cmp(&b)));
    let mut acc = 0.0;
    let mut out = Vec::new();
    for j in order {
        acc += ms[j];
        if acc > share * total || acc.is_nan() {
            break;
        }
        out.push(j as u32);
    }
    out.sort_unstable();
    out
}

impl Calibration {
    /// Whether this calibration was fitted by the current rules (else: re-run `mamori
    /// calibrate` to get them).
    pub fn is_current(&self) -> bool {
        self.version == CALIBRATION_VERSION
    }

    /// Writes `dir/calibration.json`.
    pub fn save(&self, dir: &Path) -> Result<std::path::PathBuf, DetectError> {
        let path = dir.join(CALIBRATION_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| DetectError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|e| DetectError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(path)
    }

    /// Reads a calibration file (or `dir/calibration.json` when given a directory).
    pub fn load(path: &Path) -> Result<Calibration, DetectError> {
        let path = if path.is_dir() {
            path.join(CALIBRATION_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| DetectError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and checks a calibration held in memory (e.g. a file of a signed or encrypted
    /// model directory, read through the artifact layer); `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Calibration, DetectError> {
        let c: Calibration = serde_json::from_str(text).map_err(|e| DetectError::Config {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        if c.version == 0 || c.version > CALIBRATION_VERSION {
            return Err(DetectError::Config {
                path: origin.to_string(),
                message: format!("unsupported calibration version {}", c.version),
            });
        }
        c.detectors.validate().map_err(|e| DetectError::Config {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        Ok(c)
    }
}

fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(v[i])
}

fn predict_all(model: &dyn Model, x: &Tensor) -> Result<Tensor, DetectError> {
    let n = x.batch_size();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < n {
        let j = (i + 512).min(n);
        parts.push(model.predict(&x.slice_rows(i, j))?);
        i = j;
    }
    Tensor::concat(&parts).map_err(|e| DetectError::Calibration(e.to_string()))
}

/// `prada.ood_delta` from foreign benign traffic (see the module documentation): simulated
/// clients send `queries_per_client` of its samples each in random order; the queries the
/// fitted OOD test calls out of distribution go to PRADA's second pool, tested on its own.
fn fit_ood_delta(
    model: &dyn Model,
    foreign: &ForeignBenign,
    cfg: &mut DetectorsConfig,
    opts: &CalibrationOptions,
    report: &mut CalibrationReport,
) -> Result<(), DetectError> {
    report.foreign = Some(foreign.name.clone());
    let x = &*foreign.x;
    if x.batch_size() == 0 {
        return Err(DetectError::Calibration(format!(
            "foreign data {:?} holds no samples",
            foreign.name
        )));
    }
    let probs = predict_all(model, x)?;
    let labels = probs.argmax_rows();
    let outside: Vec<bool> = (0..x.batch_size())
        .map(|i| OodDetector::is_ood(&cfg.ood, x.row(i), probs.row(i), labels[i]))
        .collect();
    report.foreign_ood_rate = outside.iter().filter(|&&o| o).count() as f64 / x.batch_size() as f64;
    let split = cfg.prada.only_in_distribution && !cfg.ood.centroids.is_empty();
    if !split || cfg.prada.ood_delta <= 0.0 {
        // No second pool to fit: PRADA sees every query in one pool, or does not test the
        // out-of-distribution ones.
        return Ok(());
    }
    // The second pool as the serving state builds it: the queries already found outside.
    let pool = crate::prada::PradaDetector::new(crate::prada::PradaConfig {
        only_in_distribution: false,
        ..cfg.prada.clone()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x666f_7265_6967_6e00);
    let mut order: Vec<usize> = (0..x.batch_size()).collect();
    let min_crit = (0..opts.prada_clients())
        .filter_map(|_| {
            order.shuffle(&mut rng);
            let client = order
                .iter()
                .take(opts.queries_per_client)
                .filter(|&&i| outside[i]);
            let ws = pool.w_series_scored(client.map(|&i| (x.row(i), probs.row(i), labels[i])));
            crate::prada::critical_delta(&ws, cfg.prada.persist)
        })
        .reduce(f64::min);
    report.prada_ood_min_critical = min_crit;
    if let Some(c) = min_crit {
        cfg.prada.ood_delta = (PRADA_MARGIN * c).min(opts.base.prada.delta);
    }
    Ok(())
}

/// PRADA's thresholds sit this far below the smallest benign critical δ (`prada.delta`, and
/// `prada.ood_delta` with foreign traffic).
const PRADA_MARGIN: f64 = 0.995;

/// Fits the detectors on benign data: `train_x` (the model's training inputs, for OOD
/// statistics) and `benign_x` (held-out inputs, streamed by simulated clients).
pub fn calibrate(
    model: &dyn Model,
    train_x: &Tensor,
    benign_x: &Tensor,
    benign_name: &str,
    opts: &CalibrationOptions,
) -> Result<Calibration, DetectError> {
    let card = model.card();
    let foreign = opts.foreign.as_ref().map(|f| &*f.x);
    for (what, t) in [("training", train_x), ("benign", benign_x)]
        .into_iter()
        .chain(foreign.map(|f| ("foreign", f)))
    {
        if t.sample_shape() != card.input_shape.as_slice() {
            return Err(DetectError::Calibration(format!(
                "{what} samples have shape {:?}, the model expects {:?}",
                t.sample_shape(),
                card.input_shape
            )));
        }
    }
    let need = opts.clients * opts.queries_per_client;
    if benign_x.batch_size() < 200 || need == 0 {
        return Err(DetectError::Calibration(format!(
            "need at least 200 benign samples and clients × queries > 0 (got {} samples)",
            benign_x.batch_size()
        )));
    }
    if !(opts.fpr > 0.0 && opts.fpr < 1.0) {
        return Err(DetectError::Calibration(format!(
            "fpr must be in (0, 1), got {}",
            opts.fpr
        )));
    }
    if let Some(i) = opts.benign_interval_ms {
        if !(i > 0.0 && i.is_finite()) {
            return Err(DetectError::Calibration(format!(
                "benign_interval_ms must be a positive number, got {i}"
            )));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut cfg = opts.base.clone();
    // The detectors that quantise inputs do so over the range the model accepts.
    cfg.set_input_range(card.input_range)
        .map_err(|e| DetectError::Calibration(format!("the model card's input range: {e}")))?;
    let mut report = CalibrationReport::default();

    // OOD statistics on (a sample of) the training data.
    let mut tidx: Vec<usize> = (0..train_x.batch_size()).collect();
    tidx.shuffle(&mut rng);
    tidx.truncate(opts.max_train);
    let tx = train_x.select(&tidx);
    let tp = predict_all(model, &tx)?;
    let classes = tp.sample_len();
    let dim = tx.sample_len();
    let labels = tp.argmax_rows();
    let mut sums = vec![vec![0f64; dim]; classes];
    let mut counts = vec![0usize; classes];
    for (i, &l) in labels.iter().enumerate() {
        counts[l] += 1;
        for (s, &v) in sums[l].iter_mut().zip(tx.row(i)) {
            *s += v as f64;
        }
    }
    let centroids: Vec<Vec<f32>> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| s.iter().map(|v| (v / c.max(1) as f64) as f32).collect())
        .collect();
    let mut dists = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        let d: f64 = centroids[l]
            .iter()
            .zip(tx.row(i))
            .map(|(a, b)| ((a - b) * (a - b)) as f64)
            .sum::<f64>()
            .sqrt();
        dists[l].push(d);
    }
    let radius: Vec<f64> = dists
        .iter_mut()
        .map(|d| quantile(d, 1.0 - opts.alpha).unwrap_or(f64::MAX / 4.0))
        .collect();
    let mut msp: Vec<f64> = tp
        .rows()
        .map(|r| r.iter().copied().fold(0.0f32, f32::max) as f64)
        .collect();
    cfg.ood.centroids = centroids;
    cfg.ood.radius = radius;
    cfg.ood.msp_threshold = quantile(&mut msp, opts.alpha).unwrap_or(0.0);
    if cfg.ood.window == 0 {
        cfg.ood.window = 100;
    }
    if cfg.hoda.window == 0 {
        cfg.hoda.window = 100;
    }

    // The per-client budget `fpr` is split evenly (union bound) among the detectors whose
    // alarms act on their own, and spread over a client's queries: the per-window tail of
    // every analytic bound below.
    let tail = opts.fpr / (ALONE_DETECTORS as f64 * opts.queries_per_client as f64);

    // Benign client streams.
    let bp = predict_all(model, benign_x)?;
    let blabels = bp.argmax_rows();
    let streams: Vec<Vec<usize>> = (0..opts.clients)
        .map(|_| {
            let mut p: Vec<usize> = (0..benign_x.batch_size()).collect();
            p.shuffle(&mut rng);
            p.truncate(opts.queries_per_client);
            p
        })
        .collect();

    // k-NN threshold and Blacklight threshold from per-query benign scores.
    let knn = KnnDetector::new(cfg.knn.clone());
    let bl = BlacklightDetector::new(cfg.blacklight.clone());
    let mut knn_scores = Vec::new();
    let mut bl_matches = Vec::new();
    for s in &streams {
        let xs: Vec<&[f32]> = s.iter().map(|&i| benign_x.row(i)).collect();
        knn_scores.extend(knn.score_stream(&xs).into_iter().flatten());
        bl_matches.extend(bl.match_stream(&xs).into_iter().map(|m| m as f64));
    }
    report.knn_min_score = knn_scores.iter().copied().reduce(f64::min);
    if let Some(t) = quantile(&mut knn_scores, opts.fpr) {
        cfg.knn.threshold = t;
    }
    report.blacklight_max_match = bl_matches.iter().copied().fold(0.0, f64::max) as usize;
    if let Some(q) = quantile(&mut bl_matches, 1.0 - opts.fpr) {
        cfg.blacklight.match_threshold = ((q as usize) + 1)
            .max(opts.base.blacklight.match_threshold)
            .min(cfg.blacklight.top_n);
    }
    // Client alarm: more flagged queries in one window than a benign stream with a per-query
    // flag rate of max(observed, blacklight_tolerance) reaches with probability `fpr / queries_per_client`.
    let bl_thr = cfg.blacklight.match_threshold as f64;
    let bl_rate =
        bl_matches.iter().filter(|&&m| m >= bl_thr).count() as f64 / bl_matches.len().max(1) as f64;
    report.blacklight_flag_rate = bl_rate;
    cfg.blacklight.min_flagged = (1 + binomial_bound(
        cfg.blacklight.window_queries,
        bl_rate.max(opts.blacklight_tolerance),
        tail,
    ))
    .max(opts.base.blacklight.min_flagged)
    .min(cfg.blacklight.window_queries.max(1));

    // OOD benign rate and window bound; HODA references.
    let mut ood_flags = 0usize;
    let mut class_freq = vec![0f64; classes];
    let mut hard_freq = vec![0f64; HARDNESS_EDGES.len() + 1];
    for s in &streams {
        let mut window = std::collections::VecDeque::new();
        let mut in_window = 0usize;
        for &i in s {
            let f = OodDetector::is_ood(&cfg.ood, benign_x.row(i), bp.row(i), blabels[i]);
            ood_flags += f as usize;
            window.push_back(f);
            in_window += f as usize;
            if window.len() > cfg.ood.window && window.pop_front() == Some(true) {
                in_window -= 1;
            }
            report.ood_max_window = report.ood_max_window.max(in_window);
            class_freq[blabels[i]] += 1.0;
            hard_freq[hardness_bin(bp.row(i))] += 1.0;
        }
    }
    report.ood_benign_rate = ood_flags as f64 / need as f64;
    cfg.ood.benign_rate = report.ood_benign_rate;
    cfg.ood.max_ood = binomial_bound(cfg.ood.window, report.ood_benign_rate.max(opts.alpha), tail)
        .max(report.ood_max_window);
    // Synthetic inputs: the `fpr` quantile of the training data's smoothness; the window bound
    // from the benign flag rate by the same binomial tail as the OOD rate. Models whose inputs
    // are not images keep the detector inactive.
    let mut rho: Vec<f64> = (0..tx.batch_size())
        .filter_map(|i| smoothness(tx.row(i), &card.input_shape))
        .collect();
    if let Some(t) = quantile(&mut rho, opts.fpr) {
        cfg.synthetic.threshold = Some(t);
        let flagged = streams
            .iter()
            .flatten()
            .filter(|&&i| {
                SyntheticDetector::is_flagged(&cfg.synthetic, benign_x.row(i), &card.input_shape)
            })
            .count();
        report.synthetic_benign_rate = flagged as f64 / need as f64;
        cfg.synthetic.max_flagged = binomial_bound(
            cfg.synthetic.window,
            report.synthetic_benign_rate.max(opts.alpha),
            tail,
        );
    }
    cfg.hoda.class_ref = class_freq.iter().map(|c| c / need as f64).collect();
    cfg.hoda.hard_ref = hard_freq.iter().map(|c| c / need as f64).collect();
    let hoda = HodaDetector::new(cfg.hoda.clone());
    for s in &streams {
        let st: Vec<(usize, Vec<f32>)> = s
            .iter()
            .map(|&i| (blabels[i], bp.row(i).to_vec()))
            .collect();
        for (dc, dh) in hoda.window_distances(&st) {
            report.hoda_max_class = report.hoda_max_class.max(dc);
            report.hoda_max_hard = report.hoda_max_hard.max(dh);
        }
    }
    cfg.hoda.class_threshold = opts.margin * report.hoda_max_class.max(1e-6);
    cfg.hoda.hard_threshold = opts.margin * report.hoda_max_hard.max(1e-6);

    // PRADA: δ from the per-client tail. A client is flagged iff `persist` consecutive tests
    // give W < δ, i.e. iff δ exceeds its critical value (`prada::critical_delta`). A per-client
    // false-positive rate of `fpr` is only visible over about 1/fpr clients, so PRADA gets its
    // own, larger population of simulated benign clients (`tail_clients`), drawn from a
    // separate generator so that the other detectors' fits do not depend on it.
    // With the OOD test fitted above: PRADA sees the queries it will see when serving.
    let prada = crate::prada::PradaDetector::new(cfg.prada.clone()).with_reference(&cfg.ood);
    let tail_clients = opts.prada_clients();
    let mut tail_rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x7072_6164_615f_7461);
    let mut min_w: Option<f64> = None;
    let mut min_crit: Option<f64> = None;
    for c in 0..tail_clients {
        let extra;
        let s = match streams.get(c) {
            Some(s) => s,
            None => {
                let mut p: Vec<usize> = (0..benign_x.batch_size()).collect();
                p.shuffle(&mut tail_rng);
                p.truncate(opts.queries_per_client);
                extra = p;
                &extra
            }
        };
        let ws = prada.w_series_scored(s.iter().map(|&i| (benign_x.row(i), bp.row(i), blabels[i])));
        for &w in &ws {
            min_w = Some(min_w.map_or(w, |m: f64| m.min(w)));
        }
        if let Some(c) = crate::prada::critical_delta(&ws, cfg.prada.persist) {
            min_crit = Some(min_crit.map_or(c, |m: f64| m.min(c)));
        }
    }
    report.prada_min_w = min_w;
    report.prada_min_critical = min_crit;
    report.prada_clients = tail_clients;
    if let Some(c) = min_crit {
        cfg.prada.delta = cfg.prada.delta.min(PRADA_MARGIN * c);
    }
    if let Some(f) = &opts.foreign {
        fit_ood_delta(model, f, &mut cfg, opts, &mut report)?;
    }

    // Rate: Poisson arrivals at the benign mean interval.
    if let Some(interval) = opts.benign_interval_ms {
        let (bound, seen) = crate::rate::fit_window_bound(
            cfg.rate.window_ms,
            interval,
            opts.clients,
            opts.queries_per_client,
            tail,
            &mut rng,
        );
        cfg.rate.max_per_window = bound;
        report.rate_benign_interval_ms = Some(interval);
        report.rate_max_window = seen;
    }

    Ok(Calibration {
        version: CALIBRATION_VERSION,
        model: card.name.clone(),
        benign: benign_name.to_string(),
        fpr: opts.fpr,
        clients: opts.clients,
        queries_per_client: opts.queries_per_client,
        detectors: cfg,
        report,
        fingerprint_dims: quiet_dims(train_x, QUIET_SHARE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_dims_are_the_least_used_within_the_share() {
        // Dimension 0 always 0, 1 tiny, 2 and 3 large.
        let rows: Vec<f32> = (0..50)
            .flat_map(|i| [0.0, 0.01 * (i % 2) as f32, 0.8, 1.0])
            .collect();
        let x = Tensor::new(vec![50, 4], rows).unwrap();
        assert_eq!(quiet_dims(&x, 0.0), vec![0]);
        assert_eq!(quiet_dims(&x, 0.001), vec![0, 1]);
        assert_eq!(quiet_dims(&x, 0.5), vec![0, 1, 2]);
        assert_eq!(quiet_dims(&x, 1.0), vec![0, 1, 2, 3]);
        // All-zero data: every dimension is quiet.
        let z = Tensor::zeros(vec![3, 4]);
        assert_eq!(quiet_dims(&z, QUIET_SHARE), vec![0, 1, 2, 3]);
    }
}
