//! Label-distribution and hardness monitors (after Sadeghzadeh, Dibaei, Jalili, "HODA:
//! Hardness-Oriented Detection of Model Extraction Attacks", IEEE TIFS 2023).
//!
//! HODA compares the histogram of a client's last 100 queries' *hardness* with the benign
//! reference histogram by Pearson distance. HODA's hardness is the training epoch at which a
//! sample's prediction stabilises (it needs training checkpoints); we use the hardness the
//! deployed model exposes, the max-softmax confidence, binned on a log scale of `1 − max p`
//! (the "HODA idea" with a confidence proxy). Alongside, the client's predicted-class histogram
//! is compared with the benign class frequencies by the chi-square statistic. Both thresholds
//! are calibrated on benign client windows; the client alarms when either distance exceeds its
//! threshold over a full window.
//!
//! Without calibration (empty reference) the detector is inactive.

use crate::error::{decode_state, encode_state};
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// Upper edges of the hardness bins on `1 − max p` (the last bin is everything above).
pub const HARDNESS_EDGES: [f64; 7] = [1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5];

/// The hardness bin of a probability vector.
pub fn hardness_bin(probs: &[f32]) -> usize {
    let msp = probs.iter().copied().fold(0.0f32, f32::max) as f64;
    let h = 1.0 - msp;
    HARDNESS_EDGES
        .iter()
        .position(|&e| h <= e)
        .unwrap_or(HARDNESS_EDGES.len())
}

/// HODA configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HodaConfig {
    /// Benign class frequencies (empty = uncalibrated, inactive).
    pub class_ref: Vec<f64>,
    /// Benign hardness-bin frequencies (`HARDNESS_EDGES.len() + 1` bins).
    pub hard_ref: Vec<f64>,
    /// Queries per client window (HODA: 100).
    pub window: usize,
    /// Alarm above this chi-square distance of the class histogram.
    pub class_threshold: f64,
    /// Alarm above this Pearson distance (1 − r) of the hardness histogram.
    pub hard_threshold: f64,
}

/// Chi-square statistic of observed counts against reference frequencies.
pub fn chi_square(counts: &[usize], reference: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let n = n as f64;
    reference
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let e = (p.max(1e-3)) * n;
            let o = counts.get(i).copied().unwrap_or(0) as f64;
            (o - e) * (o - e) / e
        })
        .sum::<f64>()
        + counts
            .iter()
            .skip(reference.len())
            .map(|&o| o as f64 * o as f64 / (1e-3 * n))
            .sum::<f64>()
}

/// Pearson distance `1 − r` between a histogram and reference frequencies (0 = same shape,
/// 2 = opposite).
pub fn pearson_distance(counts: &[usize], reference: &[f64]) -> f64 {
    let k = reference.len().max(counts.len());
    let a: Vec<f64> = (0..k)
        .map(|i| counts.get(i).copied().unwrap_or(0) as f64)
        .collect();
    let b: Vec<f64> = (0..k)
        .map(|i| reference.get(i).copied().unwrap_or(0.0))
        .collect();
    let ma = a.iter().sum::<f64>() / k as f64;
    let mb = b.iter().sum::<f64>() / k as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..k {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return 1.0;
    }
    1.0 - sab / (saa * sbb).sqrt()
}

/// The HODA-style detector.
#[derive(Clone, Debug)]
pub struct HodaDetector {
    cfg: Arc<HodaConfig>,
}

impl HodaDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "hoda";

    /// A detector with `cfg`.
    pub fn new(cfg: HodaConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }

    /// (class distance, hardness distance) of every full window of a stream of
    /// (label, probabilities), for calibration.
    pub fn window_distances(&self, stream: &[(usize, Vec<f32>)]) -> Vec<(f64, f64)> {
        let mut s = self.fresh();
        stream.iter().filter_map(|(l, p)| s.push(*l, p)).collect()
    }

    fn fresh(&self) -> HodaState {
        HodaState {
            cfg: self.cfg.clone(),
            ..HodaState::default()
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HodaState {
    #[serde(skip)]
    cfg: Arc<HodaConfig>,
    recent: VecDeque<(u16, u8)>,
    class_counts: Vec<usize>,
    hard_counts: Vec<usize>,
    queries: u64,
}

impl HodaState {
    /// Adds one query; returns the distances once the window is full.
    fn push(&mut self, label: usize, probs: &[f32]) -> Option<(f64, f64)> {
        let label = label.min(u16::MAX as usize - 1);
        let bin = hardness_bin(probs);
        if self.class_counts.len() <= label {
            self.class_counts.resize(label + 1, 0);
        }
        if self.hard_counts.len() <= HARDNESS_EDGES.len() {
            self.hard_counts.resize(HARDNESS_EDGES.len() + 1, 0);
        }
        self.class_counts[label] += 1;
        self.hard_counts[bin] += 1;
        self.recent.push_back((label as u16, bin as u8));
        let window = self.cfg.window.max(1);
        while self.recent.len() > window {
            if let Some((l, b)) = self.recent.pop_front() {
                self.class_counts[l as usize] -= 1;
                self.hard_counts[b as usize] -= 1;
            }
        }
        (self.recent.len() >= window).then(|| {
            (
                chi_square(&self.class_counts, &self.cfg.class_ref),
                pearson_distance(&self.hard_counts, &self.cfg.hard_ref),
            )
        })
    }
}

impl Detector for HodaDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "Sadeghzadeh et al., HODA, IEEE TIFS 2023 (confidence as hardness)".into(),
            targets: "extraction with unnatural query mixes (Knockoff, JBDA, random)".into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::TrainedModel, DataNeed::Output],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(self.fresh())
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: HodaState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        Ok(Box::new(s))
    }
}

impl DetectorState for HodaState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.queries += 1;
        if self.cfg.class_ref.is_empty() || self.cfg.hard_ref.is_empty() {
            return Verdict {
                score: 0.0,
                alarm: false,
            };
        }
        match self.push(obs.label, obs.probs) {
            None => Verdict {
                score: 0.0,
                alarm: false,
            },
            Some((dc, dh)) => {
                let sc = dc / self.cfg.class_threshold.max(1e-12);
                let sh = dh / self.cfg.hard_threshold.max(1e-12);
                let score = sc.max(sh);
                Verdict {
                    score,
                    alarm: score > 1.0,
                }
            }
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
            + crate::heap::vec(&self.class_counts)
            + crate::heap::vec(&self.hard_counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_behave() {
        assert!(chi_square(&[10, 10], &[0.5, 0.5]).abs() < 1e-12);
        assert!((chi_square(&[20, 0], &[0.5, 0.5]) - 20.0).abs() < 1e-9);
        assert!(pearson_distance(&[1, 2, 3], &[0.1, 0.2, 0.3]).abs() < 1e-12);
        assert!((pearson_distance(&[3, 2, 1], &[0.1, 0.2, 0.3]) - 2.0).abs() < 1e-12);
        assert_eq!(hardness_bin(&[1.0, 0.0]), 0);
        assert_eq!(hardness_bin(&[0.5, 0.5]), 6);
        assert_eq!(hardness_bin(&[0.3, 0.3, 0.4]), 7);
    }

    #[test]
    fn skewed_client_alarms_balanced_does_not() {
        let cfg = HodaConfig {
            class_ref: vec![0.5, 0.5],
            hard_ref: vec![0.9, 0.05, 0.02, 0.01, 0.01, 0.005, 0.005, 0.0],
            window: 20,
            class_threshold: 10.0,
            hard_threshold: 0.5,
        };
        let d = HodaDetector::new(cfg);
        let mut s = d.new_state();
        let confident = [0.99999f32, 0.00001];
        let unsure = [0.55f32, 0.45];
        for i in 0..100 {
            let o = Observation {
                client: "c",
                input: &[],
                input_shape: &[],
                probs: &confident,
                label: i % 2,
                time_ms: 0,
            };
            assert!(!s.observe(&o).alarm, "benign query {i}");
        }
        let mut first = None;
        for i in 0..40 {
            let o = Observation {
                client: "c",
                input: &[],
                input_shape: &[],
                probs: &unsure,
                label: 0,
                time_ms: 0,
            };
            if s.observe(&o).alarm && first.is_none() {
                first = Some(i + 1);
            }
        }
        assert!(first.is_some_and(|f| f <= 15), "{first:?}");
        let r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 140);
        assert!(d.restore_state(b"{").is_err());
    }
}
