//! Synthetic-input rate per client: queries that are not natural images.
//!
//! Natural images — photographs, scans, renderings, digits, clothes — have strongly correlated
//! neighbouring pixels (Simoncelli & Olshausen, "Natural Image Statistics and Neural
//! Representation", Annu. Rev. Neurosci. 2001: the power spectrum falls as 1/f², so most of
//! an image's variance sits at low spatial frequencies). The inputs of the synthetic-query
//! extraction attacks do not: uniform random queries (Tramèr et al., "Stealing Machine
//! Learning Models via Prediction APIs", USENIX Security 2016; PRADA's T-RND), the basis
//! vectors and random points of equation solving, and noise probes. This detector measures,
//! per query, the lag-1 spatial autocorrelation ("smoothness")
//!
//! ρ(x) = mean over horizontally and vertically adjacent pixel pairs (p, q) of (x_p − x̄)(x_q − x̄)
//!        / mean over pixels of (x_p − x̄)²
//!
//! (≈ 0 for independent noise, 0.8–0.9 for typical MNIST and Fashion-MNIST images, measured
//! in `docs/bench/detect.md`), flags a query whose ρ is below `threshold` and alarms when more
//! than `max_flagged` of the client's last `window` queries are flagged.
//!
//! Unlike the distribution monitors (`ood`, `hoda`), which also alarm on legitimate users
//! sending natural images of another kind, this is behaviour evidence: no natural-image
//! workload sends a stream of inputs without spatial structure, so the policy lets it act on its
//! own. Calibration ([`crate::calibration`]) sets `threshold` to the `fpr` quantile of ρ on the
//! model's training data and `max_flagged` by a binomial tail, like the OOD rate.
//!
//! The detector is inactive (score 0) until calibrated, for inputs without two spatial
//! dimensions of at least 2 (tabular models), and a constant image is never flagged.

use crate::error::{decode_state, encode_state};
use crate::window::FlagWindow;
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};

/// Synthetic-input rate configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// A query whose smoothness ρ is below this is flagged; `None` = uncalibrated (inactive).
    pub threshold: Option<f64>,
    /// Queries in the sliding window.
    pub window: usize,
    /// Flagged queries in the window above which the client alarms.
    pub max_flagged: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            window: 50,
            max_flagged: 6,
        }
    }
}

/// The lag-1 spatial autocorrelation ρ of one input of shape `shape` (`[.., H, W]`: leading
/// dimensions are channels, each correlated within itself); `None` when the input has no two
/// spatial dimensions of at least 2, does not match `shape`, or is constant.
pub fn smoothness(x: &[f32], shape: &[usize]) -> Option<f64> {
    let n = shape.len();
    if n < 2 {
        return None;
    }
    let (h, w) = (shape[n - 2], shape[n - 1]);
    if h < 2 || w < 2 || shape.iter().product::<usize>() != x.len() {
        return None;
    }
    crate::simd::vectorized(Smoothness { x, h, w })
}

/// Independent `f64` partial sums of [`Smoothness`]' loops (one 256-bit register of them at
/// the dispatched AVX2 level).
const LANES: usize = 4;

/// `Σ (a_i − m)·(b_i − m)` over the common length, in [`LANES`] partial sums.
#[inline(always)]
fn centred_products(a: &[f32], b: &[f32], m: f64) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += (x[l] as f64 - m) * (y[l] as f64 - m);
        }
    }
    let mut tail = 0.0;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += (x as f64 - m) * (y as f64 - m);
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ x_i`, in [`LANES`] partial sums.
#[inline(always)]
fn sum(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let c = x.chunks_exact(LANES);
    let mut tail = 0.0;
    for &v in c.remainder() {
        tail += v as f64;
    }
    for v in c {
        for l in 0..LANES {
            acc[l] += v[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// [`smoothness`] (shape already checked) as a [`crate::simd::Kernel`]: the mean and variance,
/// then the products of horizontal neighbours — one pass over each plane shifted by one
/// value, less the pairs that wrap from a row's end to the next row's start — and of vertical
/// neighbours — one pass over each plane shifted by one row.
struct Smoothness<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
}

impl crate::simd::Kernel for Smoothness<'_> {
    type Output = Option<f64>;

    #[inline(always)]
    fn run(self) -> Option<f64> {
        let Self { x, h, w } = self;
        let len = x.len() as f64;
        let mean = sum(x) / len;
        let var = centred_products(x, x, mean) / len;
        if var <= 1e-12 {
            return None;
        }
        let (mut cov, mut pairs) = (0.0f64, 0usize);
        for plane in x.chunks_exact(h * w) {
            let mut wrapped = 0.0;
            for r in 1..h {
                wrapped += (plane[r * w - 1] as f64 - mean) * (plane[r * w] as f64 - mean);
            }
            cov += centred_products(&plane[..h * w - 1], &plane[1..], mean) - wrapped;
            cov += centred_products(&plane[..(h - 1) * w], &plane[w..], mean);
            pairs += h * (w - 1) + (h - 1) * w;
        }
        Some(cov / pairs as f64 / var)
    }
}

/// The synthetic-input detector.
#[derive(Clone, Debug)]
pub struct SyntheticDetector {
    cfg: SyntheticConfig,
}

impl SyntheticDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "synthetic";

    /// A detector with `cfg`.
    pub fn new(cfg: SyntheticConfig) -> Self {
        Self { cfg }
    }

    /// Whether one query is flagged (false when uncalibrated or not an image).
    pub fn is_flagged(cfg: &SyntheticConfig, x: &[f32], shape: &[usize]) -> bool {
        match (cfg.threshold, smoothness(x, shape)) {
            (Some(t), Some(r)) => r < t,
            _ => false,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SyntheticState {
    #[serde(skip)]
    cfg: SyntheticConfig,
    #[serde(flatten)]
    flags: FlagWindow,
    queries: u64,
}

impl Detector for SyntheticDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "natural-image statistics (Simoncelli & Olshausen 2001) against the synthetic \
                    queries of Tramèr et al. 2016"
                .into(),
            targets: "synthetic-input extraction (uniform random queries, equation solving, \
                      noise probes)"
                .into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::TrainingData, DataNeed::Input],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(SyntheticState {
            cfg: self.cfg.clone(),
            ..SyntheticState::default()
        })
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: SyntheticState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        Ok(Box::new(s))
    }
}

impl DetectorState for SyntheticState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        if self.cfg.threshold.is_none() {
            return Verdict {
                score: 0.0,
                alarm: false,
            };
        }
        let flag = SyntheticDetector::is_flagged(&self.cfg, obs.input, obs.input_shape);
        // Alarm above `max_flagged`, i.e. at `max_flagged + 1` flagged queries.
        self.flags.push(
            flag,
            self.cfg.window,
            self.cfg.max_flagged.saturating_add(1),
        )
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.queries
    }

    fn heap_bytes(&self) -> usize {
        self.flags.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A smooth 28×28 "image": a blurred blob at a random place.
    fn blob(rng: &mut rand::rngs::StdRng) -> Vec<f32> {
        let (cy, cx) = (rng.gen_range(6.0..22.0), rng.gen_range(6.0..22.0));
        let s: f32 = rng.gen_range(3.0..7.0);
        (0..784)
            .map(|i| {
                let (y, x) = ((i / 28) as f32, (i % 28) as f32);
                (-((y - cy).powi(2) + (x - cx).powi(2)) / (2.0 * s * s)).exp()
            })
            .collect()
    }

    /// The partial-sum passes give ρ as the pair-by-pair definition does (to rounding): one
    /// and three planes, square and odd shapes, images and noise.
    #[test]
    fn smoothness_equals_the_pair_by_pair_definition() {
        fn plain(x: &[f32], planes: usize, h: usize, w: usize) -> f64 {
            let n = x.len() as f64;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let (mut cov, mut pairs) = (0.0, 0);
            for p in 0..planes {
                let at = |r: usize, c: usize| x[p * h * w + r * w + c] as f64 - mean;
                for r in 0..h {
                    for c in 0..w {
                        if c + 1 < w {
                            cov += at(r, c) * at(r, c + 1);
                            pairs += 1;
                        }
                        if r + 1 < h {
                            cov += at(r, c) * at(r + 1, c);
                            pairs += 1;
                        }
                    }
                }
            }
            cov / pairs as f64 / var
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (planes, h, w) in [(1, 28, 28), (3, 32, 32), (1, 7, 5), (2, 2, 9), (1, 2, 2)] {
            for smooth in [true, false] {
                let x: Vec<f32> = if smooth && (planes, h, w) == (1, 28, 28) {
                    blob(&mut rng)
                } else {
                    (0..planes * h * w).map(|_| rng.gen()).collect()
                };
                let got = smoothness(&x, &[planes, h, w]).unwrap();
                let want = plain(&x, planes, h, w);
                assert!(
                    (got - want).abs() < 1e-12,
                    "{planes}×{h}×{w}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn smoothness_separates_images_from_noise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let shape = [1, 28, 28];
        for _ in 0..20 {
            let r = smoothness(&blob(&mut rng), &shape).unwrap();
            assert!(r > 0.8, "{r}");
            let noise: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
            let r = smoothness(&noise, &shape).unwrap();
            assert!(r.abs() < 0.15, "{r}");
        }
        // A single lit pixel (an equation-solving basis vector) is anti-smooth.
        let mut e = vec![0.0f32; 784];
        e[400] = 1.0;
        assert!(smoothness(&e, &shape).unwrap() < 0.0);
        // Constant images, tabular shapes and mismatched lengths carry no spatial evidence.
        assert_eq!(smoothness(&[0.5; 784], &shape), None);
        assert_eq!(smoothness(&[0.1, 0.9, 0.3], &[3]), None);
        assert_eq!(smoothness(&[0.1; 10], &[1, 28, 28]), None);
        assert_eq!(smoothness(&[0.1, 0.2], &[1, 2]), None);
    }

    #[test]
    fn noise_stream_alarms_images_do_not_and_state_round_trips() {
        let cfg = SyntheticConfig {
            threshold: Some(0.3),
            ..SyntheticConfig::default()
        };
        let d = SyntheticDetector::new(cfg.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut s = d.new_state();
        let obs = |x: &[f32]| {
            let x = x.to_vec();
            move |s: &mut Box<dyn DetectorState>| {
                s.observe(&Observation {
                    client: "c",
                    input: &x,
                    input_shape: &[1, 28, 28],
                    probs: &[],
                    label: 0,
                    time_ms: 0,
                })
            }
        };
        for _ in 0..300 {
            assert!(!obs(&blob(&mut rng))(&mut s).alarm);
        }
        let mut first = None;
        for i in 0..50 {
            let noise: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
            if obs(&noise)(&mut s).alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        assert_eq!(first, Some(cfg.max_flagged + 1));
        let r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 350);
        assert!(d.restore_state(b"{\"queries\": \"x\"}").is_err());
        // Uncalibrated: inactive.
        let mut u = SyntheticDetector::new(SyntheticConfig::default()).new_state();
        let noise: Vec<f32> = (0..784).map(|_| rng.gen()).collect();
        for _ in 0..50 {
            assert_eq!(obs(&noise)(&mut u).score, 0.0);
        }
    }
}
