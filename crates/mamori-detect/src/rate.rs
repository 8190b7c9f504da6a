//! Query volume and rate anomaly detector.
//!
//! The simplest precursor of every extraction attack is volume: Tramèr et al. (USENIX Security
//! 2016) need `c·(d+1)` queries, JBDA (Papernot et al. 2017) thousands, Knockoff Nets
//! (Orekondy et al. 2019) tens of thousands. This detector keeps, per client, the timestamps of
//! the queries inside a sliding window and the total count, and alarms when either exceeds its
//! configured (or calibrated) limit.
//!
//! Memory is bounded: at most `max_per_window + 1` timestamps are kept (older ones are evicted as
//! the window slides, and once the window is over its limit only the newest ones matter).

use crate::error::{decode_state, encode_state};
use mamori_core::{DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The smallest `k` with `P(X > k) ≤ tail` for `X ~ Poisson(mean)` (upper-tail bound of the
/// number of benign queries in one window when arrivals are Poisson).
pub fn poisson_bound(mean: f64, tail: f64) -> u64 {
    if mean.is_nan() || mean <= 0.0 || mean.is_infinite() {
        return 0;
    }
    // Probability mass function computed iteratively in log space.
    let mut logpmf = -mean;
    let mut cdf = 0.0;
    let mut k = 0u64;
    loop {
        cdf += logpmf.exp();
        if 1.0 - cdf <= tail || k > (mean + 50.0 * mean.sqrt() + 50.0) as u64 {
            return k;
        }
        k += 1;
        logpmf += mean.ln() - (k as f64).ln();
    }
}

/// Fits `max_per_window` for benign clients whose queries arrive as a Poisson process with
/// mean inter-arrival `interval_ms`: `clients` streams of `queries` exponential gaps are
/// simulated with `rng` and the largest window count seen is kept; the bound is the larger of
/// that and `1 + poisson_bound(window_ms / interval_ms, tail)` (the query that closes the window
/// plus the others in it). Returns `(bound, largest simulated count)`.
pub fn fit_window_bound(
    window_ms: u64,
    interval_ms: f64,
    clients: usize,
    queries: usize,
    tail: f64,
    rng: &mut impl rand::Rng,
) -> (u64, u64) {
    let interval = interval_ms.max(1e-3);
    let mut seen = 0u64;
    for _ in 0..clients {
        let mut times: VecDeque<f64> = VecDeque::new();
        let mut t = 0.0f64;
        for _ in 0..queries {
            t += -interval * (1.0 - rng.gen::<f64>()).ln();
            times.push_back(t);
            while times.front().is_some_and(|&f| t - f >= window_ms as f64) {
                times.pop_front();
            }
            seen = seen.max(times.len() as u64);
        }
    }
    let bound = 1 + poisson_bound(window_ms as f64 / interval, tail);
    (bound.max(seen), seen)
}

/// Configuration of the rate detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Sliding window length in milliseconds.
    pub window_ms: u64,
    /// Most queries allowed inside one window.
    pub max_per_window: u64,
    /// Most queries allowed in total (0 = unlimited).
    pub max_total: u64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            max_per_window: 600,
            max_total: 50_000,
        }
    }
}

/// The rate/volume detector (configuration).
#[derive(Clone, Debug)]
pub struct RateDetector {
    cfg: RateConfig,
}

impl RateDetector {
    /// Name in the catalogue.
    pub const NAME: &'static str = "rate";

    /// A detector with `cfg`.
    pub fn new(cfg: RateConfig) -> Self {
        Self { cfg }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RateState {
    #[serde(skip)]
    cfg: RateConfig,
    times: VecDeque<u64>,
    total: u64,
}

impl Detector for RateDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: Self::NAME.into(),
            paper: "query budgets of Tramèr et al. 2016 / Papernot et al. 2017 (volume baseline)"
                .into(),
            targets: "any high-volume extraction (equation solving, JBDA, Knockoff)".into(),
            stage: Stage::Precursor,
            needs: vec![DataNeed::Input],
        }
    }

    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(RateState {
            cfg: self.cfg.clone(),
            ..RateState::default()
        })
    }

    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let mut s: RateState = decode_state(Self::NAME, snapshot)?;
        s.cfg = self.cfg.clone();
        Ok(Box::new(s))
    }
}

impl DetectorState for RateState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        self.total += 1;
        let t = obs.time_ms;
        self.times.push_back(t);
        while let Some(&front) = self.times.front() {
            // Out-of-order clocks: a timestamp "in the future" stays until the window passes it.
            if t.saturating_sub(front) >= self.cfg.window_ms
                || self.times.len() as u64 > self.cfg.max_per_window + 1
            {
                self.times.pop_front();
            } else {
                break;
            }
        }
        let rate_score = self.times.len() as f64 / self.cfg.max_per_window.max(1) as f64;
        let total_score = if self.cfg.max_total == 0 {
            0.0
        } else {
            self.total as f64 / self.cfg.max_total as f64
        };
        let score = rate_score.max(total_score);
        Verdict {
            score,
            alarm: score > 1.0,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn queries(&self) -> u64 {
        self.total
    }

    fn heap_bytes(&self) -> usize {
        crate::heap::deque(&self.times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn obs(t: u64) -> Observation<'static> {
        Observation {
            client: "c",
            input: &[],
            input_shape: &[],
            probs: &[],
            label: 0,
            time_ms: t,
        }
    }

    #[test]
    fn burst_alarms_and_slow_stream_does_not() {
        let d = RateDetector::new(RateConfig {
            window_ms: 1000,
            max_per_window: 10,
            max_total: 0,
        });
        let mut slow = d.new_state();
        for i in 0..1000 {
            assert!(!slow.observe(&obs(i * 200)).alarm, "query {i}");
        }
        let mut burst = d.new_state();
        let mut first = None;
        for i in 0..20 {
            if burst.observe(&obs(i * 10)).alarm && first.is_none() {
                first = Some(i);
            }
        }
        assert_eq!(first, Some(10), "the 11th query inside one second alarms");
    }

    #[test]
    fn poisson_window_bound() {
        // Poisson(6): P(X ≤ 14) = 0.99858, P(X ≤ 15) = 0.99943.
        assert_eq!(poisson_bound(6.0, 1e-3), 15);
        assert_eq!(poisson_bound(6.0, 2e-3), 14);
        assert_eq!(poisson_bound(0.0, 1e-3), 0);
        assert_eq!(poisson_bound(f64::NAN, 1e-3), 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // One query per 10 s on average, 60 s windows: about 6 per window.
        let (bound, seen) = fit_window_bound(60_000, 10_000.0, 20, 500, 2e-6, &mut rng);
        assert!((8..=20).contains(&seen), "largest simulated window {seen}");
        assert!(bound >= seen && bound <= 30, "bound {bound}");
        // A stream at that rate does not alarm; one ten times faster does.
        let d = RateDetector::new(RateConfig {
            window_ms: 60_000,
            max_per_window: bound,
            max_total: 0,
        });
        let mut slow = d.new_state();
        let mut fast = d.new_state();
        let (mut t, mut slow_alarm) = (0.0f64, false);
        for i in 0..500u64 {
            t += -10_000.0 * (1.0 - rng.gen::<f64>()).ln();
            slow_alarm |= slow.observe(&obs(t as u64)).alarm;
            fast.observe(&obs(i * 1000));
        }
        assert!(!slow_alarm);
        assert!(fast.observe(&obs(500_000)).alarm);
    }

    #[test]
    fn total_volume_alarms() {
        let d = RateDetector::new(RateConfig {
            window_ms: 10,
            max_per_window: 100,
            max_total: 50,
        });
        let mut s = d.new_state();
        let alarms: Vec<bool> = (0..60).map(|i| s.observe(&obs(i * 1000)).alarm).collect();
        assert!(!alarms[49]);
        assert!(alarms[50]);
        assert_eq!(s.queries(), 60);
    }

    #[test]
    fn snapshot_restores_and_bad_snapshot_is_an_error() {
        let d = RateDetector::new(RateConfig {
            window_ms: 1000,
            max_per_window: 5,
            max_total: 0,
        });
        let mut s = d.new_state();
        for i in 0..5 {
            s.observe(&obs(i));
        }
        let mut r = d.restore_state(&s.snapshot()).unwrap();
        assert_eq!(r.queries(), 5);
        assert!(r.observe(&obs(6)).alarm);
        let err = d.restore_state(b"{not json").err().unwrap();
        assert!(err.contains("rate"), "{err}");
    }
}
