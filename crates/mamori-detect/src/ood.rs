//! Out-of-distribution query rate per client (after Atli, Szyller, Juuti, Marchal, Asokan,
//! "Extraction of Complex DNN Models: Real Threat or Boogeyman?", 2020: Knockoff-style thieves
//! query natural images from *another* distribution, so a client whose queries are mostly
//! out-of-distribution is suspicious).
//!
//! The OOD score is calibrated on the model's training distribution: for each predicted class,
//! the centroid of the training inputs predicted as that class and the `1 − alpha` quantile of
//! their distances to it; plus the `alpha` quantile of the training max-softmax probability
//! (Hendrycks & Gimpel 2017). A query is OOD when it lies further from its predicted class
//! centroid than that class's radius, or its max-softmax is below the MSP threshold. The client
//! alarms when more than `max_ood` of its last `window` queries are OOD — the bound set from
//! the benign OOD rate by a binomial tail (see [`binomial_bound`]).
//!
//! Without calibration data (empty centroids) the detector is inactive (score 0).

use crate::error::{decode_state, encode_state};
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// OOD-rate configuration (reference statistics come from calibration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OodConfig {
    /// Per-class centroid of training inputs (empty = uncalibrated, detector inactive).
    pub centroids: Vec<Vec<f32>>,
    /// Per-class radius: the `1 − alpha` quantile of training distances to the centroid.
    pub radius: Vec<f64>,
    /// Max-softmax below this = OOD.
    pub msp_threshold: f64,
    /// Fraction of benign queries scored OOD (measured at calibration).
    pub benign_rate: f64,
    /// Queries in the sliding window.
    pub window: usize,
    /// OOD queries in the window above which the client alarms.
    pub max_ood: usize,
}

/// Smallest count `b` with `P(Binomial(n, p) > b) ≤ tail`.
pub fn binomial_bound(n: usize, p: f64, tail: f64) -> usize {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    // Probability mass function computed iteratively in log space.
    let mut cdf = 0.0;
    let mut logpmf = n as f64 * (1.0 - p).ln();
    for k in 0..=n {
        cdf += logpmf.exp();
        if 1.0 - cdf <= tail {
            return k;
        }
        logpmf += ((n - k) as f64).ln() - ((k + 1) as f64).ln() + p.ln() - (1.0 - p).ln();
    }
    n
}

/// The OOD-rate detector.
#[derive(Clone, Debug)]
pub struct OodDetector {
    cfg: Arc<OodConfig>,
}

impl OodDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "ood";

    /// A detector with `cfg`.
    pub fn new(cfg: OodConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }

    /// Whether one query is out of distribution (false when uncalibrated).
    pub fn is_ood(cfg: &OodConfig, x: &[f32], probs: &[f32], label: usize) -> bool {
        let (Some(c), Some(&r)) = (cfg.centroids.get(label), cfg.radius.get(label)) else {
            return !cfg.centroids.is_empty();
        };
        if c.len() != x.len() {
            return true;
        }
        let d = sq_dist_f64(c, x).sqrt();
        let msp = probs.iter().copied().fold(0.0f32, f32::max) as f64;
        d > r || (!probs.is_empty() && msp < cfg.msp_threshold)
    }
}

/// `Σ ((a_i − b_i)²` in `f32`, summed in `f64`), in eight independent partial sums: a single
/// running sum is a chain of dependent additions (≈ 1 µs for an MNIST image, and this test runs
/// for the OOD detector and again in PRADA); the partial sums vectorise. The same terms, summed
/// in another order (within `f64` rounding of the one-by-one sum).
fn sq_dist_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += ((x[l] - y[l]) * (x[l] - y[l])) as f64;
        }
    }
    let tail: f64 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| ((x - y) * (x - y)) as f64)
        .sum();
    acc.iter().sum::<f64>() + tail
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OodState {
    #[serde(skip)]
    cfg: Arc<OodConfig>,
    recent: VecDeque<bool>,
    ood: usize,
    queries: u64,
}

impl Detector for OodDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "Atli et al., Extraction of Complex DNN Models: Real Threat or Boogeyman?, 2020"
                .into(),
            targets: "Knockoff-style extraction with natural out-of-distribution images".into(),
            stage: Stage::Precursor,
            needs: vec![
                DataNeed::TrainingData,
                DataNeed::TrainedModel,
                DataNeed::Input,
                DataNeed::Output,
            ],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(OodState {
            cfg: self.cfg.clone(),
            ..OodState::default()
        })
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: OodState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        Ok(Box::new(s))
    }
}

impl DetectorState for OodState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        if self.cfg.centroids.is_empty() {
            return Verdict {
                score: 0.0,
                alarm: false,
            };
        }
        let flag = OodDetector::is_ood(&self.cfg, obs.input, obs.probs, obs.label);
        self.recent.push_back(flag);
        self.ood += flag as usize;
        let window = self.cfg.window.max(1);
        while self.recent.len() > window {
            if self.recent.pop_front() == Some(true) {
                self.ood -= 1;
            }
        }
        let bound = self.cfg.max_ood.max(1);
        Verdict {
            score: self.ood as f64 / bound as f64,
            alarm: self.recent.len() >= window && self.ood > bound,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.queries
    }

    fn heap_bytes(&self) -> usize {
        crate::heap::deque(&self.recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partial sums give the one-by-one sum to `f64` rounding, for every remainder length.
    #[test]
    fn partial_sums_match_the_plain_sum() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for n in [0usize, 1, 7, 8, 9, 784] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..2.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..2.0)).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) * (x - y)) as f64)
                .sum();
            let got = sq_dist_f64(&a, &b);
            assert!(
                (got - plain).abs() <= 1e-12 * plain.max(1.0),
                "n = {n}: {got} vs {plain}"
            );
        }
    }

    #[test]
    fn binomial_bound_matches_hand_values() {
        // Binomial(100, 0.02): P(X > 8) ≈ 2.3e-4, P(X > 9) ≈ 4.5e-5.
        assert_eq!(binomial_bound(100, 0.02, 1e-4), 9);
        assert_eq!(binomial_bound(10, 0.5, 0.0), 10);
        assert_eq!(binomial_bound(100, 0.0, 1e-6), 0);
    }

    #[test]
    fn ood_rate_alarm() {
        let cfg = OodConfig {
            centroids: vec![vec![0.0, 0.0], vec![1.0, 1.0]],
            radius: vec![0.5, 0.5],
            msp_threshold: 0.6,
            benign_rate: 0.02,
            window: 50,
            max_ood: 5,
        };
        let d = OodDetector::new(cfg);
        let mut s = d.new_state();
        let o = |x: &'static [f32], p: &'static [f32], l| Observation {
            client: "c",
            input: x,
            input_shape: &[2],
            probs: p,
            label: l,
            time_ms: 0,
        };
        for i in 0..200 {
            let v = s.observe(&o(&[0.1, 0.1], &[0.9, 0.1], 0));
            let _ = i;
            assert!(!v.alarm);
        }
        let mut first = None;
        for i in 0..50 {
            // Far from the centroid of its class.
            if s.observe(&o(&[0.9, -0.9], &[0.9, 0.1], 0)).alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        assert_eq!(first, Some(6));
        // Low confidence counts as OOD too.
        assert!(OodDetector::is_ood(
            d.cfg.as_ref(),
            &[1.0, 1.0],
            &[0.5, 0.5],
            1
        ));
        let r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 250);
        assert!(d.restore_state(b"{\"recent\": 3}").is_err());
    }
}
