//! The one place where every detector is registered.

use crate::ann::HnswParams;
use crate::blacklight::{BlacklightConfig, BlacklightDetector};
use crate::hoda::{HodaConfig, HodaDetector};
use crate::ivf::IvfParams;
use crate::knn::{KnnConfig, KnnDetector};
use crate::ood::{OodConfig, OodDetector};
use crate::prada::{PradaConfig, PradaDetector};
use crate::rate::{RateConfig, RateDetector};
use crate::synthetic::{SyntheticConfig, SyntheticDetector};
use crate::{settings, DetectError};
use mamori_core::{Detector, DetectorInfo};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Configuration (thresholds, reference statistics) of every detector; what calibration
/// fits and `calibration.json` stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorsConfig {
    /// Query volume and rate.
    pub rate: RateConfig,
    /// PRADA.
    pub prada: PradaConfig,
    /// Mean k-NN distance (Chen et al.).
    pub knn: KnnConfig,
    /// Blacklight.
    pub blacklight: BlacklightConfig,
    /// OOD query rate (inactive until calibrated).
    pub ood: OodConfig,
    /// HODA-style histograms (inactive until calibrated).
    pub hoda: HodaConfig,
    /// Synthetic-input rate (inactive until calibrated).
    pub synthetic: SyntheticConfig,
}

impl DetectorsConfig {
    /// Every detector active on 28×28 inputs of 10 classes, with a made-up reference in place of
    /// a calibration (class centroids at 0.13 with radius 9, uniform class frequencies, an
    /// MNIST-like hardness histogram, the synthetic-input threshold MNIST calibrates to): for
    /// benchmarks and tests that need the calibrated detectors' code paths without calibrating.
    pub fn example_active() -> Self {
        let mut cfg = DetectorsConfig::default();
        cfg.ood.centroids = vec![vec![0.13; 784]; 10];
        cfg.ood.radius = vec![9.0; 10];
        cfg.ood.msp_threshold = 0.5;
        cfg.ood.window = 100;
        cfg.ood.max_ood = 10;
        cfg.hoda.class_ref = vec![0.1; 10];
        let mut h = vec![0.01; crate::hoda::HARDNESS_EDGES.len() + 1];
        h[0] = 0.93;
        cfg.hoda.hard_ref = h;
        cfg.hoda.window = 100;
        cfg.hoda.class_threshold = 50.0;
        cfg.hoda.hard_threshold = 0.5;
        cfg.synthetic.threshold = Some(0.6);
        cfg
    }

    /// Sets the model's input range (its card's `input_range`) on the detectors that quantise
    /// inputs — Blacklight's fingerprints and PRADA's exact distances — so that they use 256
    /// levels across the values the model accepts whatever their scale (a tabular model's
    /// features in `[0, 1000]`, a normalised image in `[-0.42, 2.82]`), not only in `[0, 1]`.
    /// The gateway calls it with each model's card, and so does [`crate::calibrate`]. A range
    /// without a finite positive width (an infinite end, NaN, low ≥ high, or a width that
    /// overflows `f32`) is refused, and the settings are left as they were.
    pub fn set_input_range(&mut self, range: [f32; 2]) -> Result<(), DetectError> {
        settings::input_range("input_range", range)?;
        self.blacklight.input_range = range;
        self.prada.input_range = range;
        Ok(())
    }

    /// Checks every setting against the range its detector works in; the error names the
    /// setting (`detectors.knn.window: 0 is outside 1..=16777216`). `mamori serve` and
    /// `mamori calibrate` call it on the configuration and on every `calibration.json`, so a
    /// bad value stops the start instead of failing requests.
    pub fn validate(&self) -> Result<(), DetectError> {
        use settings::{at_most, count, invalid, number, MAX_COUNT, MAX_PROJ_DIM, MAX_SEARCH};
        let r = &self.rate;
        if r.window_ms == 0 {
            return Err(invalid("rate.window_ms", "must be at least 1 ms"));
        }
        let p = &self.prada;
        number("prada.delta", p.delta, f64::MIN_POSITIVE, 1.0)?;
        number("prada.ood_delta", p.ood_delta, 0.0, 1.0)?;
        number(
            "prada.outlier_sigma",
            p.outlier_sigma,
            f64::MIN_POSITIVE,
            1e6,
        )?;
        count("prada.check_every", p.check_every as usize, 1, MAX_COUNT)?;
        // Royston's Shapiro–Wilk needs 3 to 5,000 values.
        count("prada.min_distances", p.min_distances, 3, 5000)?;
        count(
            "prada.max_distances",
            p.max_distances,
            p.min_distances,
            5000,
        )?;
        count("prada.min_class_entries", p.min_class_entries, 0, MAX_COUNT)?;
        count("prada.class_capacity", p.class_capacity, 1, MAX_COUNT)?;
        count("prada.proj_dim", p.proj_dim, 1, MAX_PROJ_DIM)?;
        count("prada.candidates", p.candidates, 1, MAX_SEARCH)?;
        count("prada.persist", p.persist as usize, 1, MAX_COUNT)?;
        check_ivf("prada", &p.ivf, p.proj_dim)?;
        settings::input_range("prada.input_range", p.input_range)?;
        check_hnsw("prada.hnsw", &p.hnsw)?;
        let k = &self.knn;
        count("knn.k", k.k, 1, MAX_SEARCH)?;
        count("knn.proj_dim", k.proj_dim, 1, MAX_PROJ_DIM)?;
        number("knn.threshold", k.threshold, 0.0, f64::MAX)?;
        count("knn.window", k.window, 1, MAX_COUNT)?;
        at_most("knn.min_flagged", k.min_flagged, k.window, "knn.window")?;
        count("knn.capacity", k.capacity, 1, MAX_COUNT)?;
        check_ivf("knn", &k.ivf, k.proj_dim)?;
        check_hnsw("knn.hnsw", &k.hnsw)?;
        let b = &self.blacklight;
        count("blacklight.quant_step", b.quant_step as usize, 1, 255)?;
        settings::input_range("blacklight.input_range", b.input_range)?;
        count("blacklight.window", b.window, 1, MAX_SEARCH)?;
        count("blacklight.top_n", b.top_n, 1, MAX_SEARCH)?;
        count(
            "blacklight.match_threshold",
            b.match_threshold,
            1,
            MAX_SEARCH,
        )?;
        at_most(
            "blacklight.match_threshold",
            b.match_threshold,
            b.top_n,
            "blacklight.top_n",
        )?;
        count("blacklight.window_queries", b.window_queries, 1, MAX_COUNT)?;
        at_most(
            "blacklight.min_flagged",
            b.min_flagged,
            b.window_queries,
            "blacklight.window_queries",
        )?;
        count("blacklight.capacity", b.capacity, 1, MAX_COUNT)?;
        count("blacklight.max_postings", b.max_postings, 1, 1 << 16)?;
        let o = &self.ood;
        if o.radius.len() != o.centroids.len() {
            return Err(invalid(
                "ood.radius",
                format!(
                    "{} radii for {} centroids (ood.centroids; one of each per class)",
                    o.radius.len(),
                    o.centroids.len()
                ),
            ));
        }
        if let Some(c) = o.centroids.first() {
            if c.is_empty() || o.centroids.iter().any(|x| x.len() != c.len()) {
                return Err(invalid(
                    "ood.centroids",
                    "every centroid needs the same, non-zero number of values",
                ));
            }
        }
        if o.centroids.iter().flatten().any(|v| !v.is_finite()) {
            return Err(invalid(
                "ood.centroids",
                "holds a value that is not a number",
            ));
        }
        for r in &o.radius {
            number("ood.radius", *r, 0.0, f64::MAX)?;
        }
        number("ood.msp_threshold", o.msp_threshold, 0.0, 1.0)?;
        number("ood.benign_rate", o.benign_rate, 0.0, 1.0)?;
        // Uncalibrated (no centroids), the detector is inactive and its window unused.
        let lo = usize::from(!o.centroids.is_empty());
        count("ood.window", o.window, lo, MAX_COUNT)?;
        at_most("ood.max_ood", o.max_ood, o.window, "ood.window")?;
        let h = &self.hoda;
        for v in &h.class_ref {
            number("hoda.class_ref", *v, 0.0, 1.0)?;
        }
        if !h.hard_ref.is_empty() && h.hard_ref.len() != crate::hoda::HARDNESS_EDGES.len() + 1 {
            return Err(invalid(
                "hoda.hard_ref",
                format!(
                    "{} bins; the hardness histogram has {}",
                    h.hard_ref.len(),
                    crate::hoda::HARDNESS_EDGES.len() + 1
                ),
            ));
        }
        for v in &h.hard_ref {
            number("hoda.hard_ref", *v, 0.0, 1.0)?;
        }
        let lo = usize::from(!h.class_ref.is_empty());
        count("hoda.window", h.window, lo, MAX_COUNT)?;
        number("hoda.class_threshold", h.class_threshold, 0.0, f64::MAX)?;
        number("hoda.hard_threshold", h.hard_threshold, 0.0, 2.0)?;
        let y = &self.synthetic;
        if let Some(t) = y.threshold {
            number("synthetic.threshold", t, f64::MIN, f64::MAX)?;
        }
        count("synthetic.window", y.window, 1, MAX_COUNT)?;
        at_most(
            "synthetic.max_flagged",
            y.max_flagged,
            y.window,
            "synthetic.window",
        )?;
        Ok(())
    }
}

/// The inverted-file index settings of detector `det`, whose codes have `proj_dim` values.
fn check_ivf(det: &str, p: &IvfParams, proj_dim: usize) -> Result<(), DetectError> {
    use settings::{at_most, count, MAX_COUNT, MAX_SEARCH};
    let at = |f: &str| format!("{det}.ivf.{f}");
    count(&at("max_lists"), p.max_lists, 1, 1 << 16)?;
    count(&at("probe"), p.probe, 1, 1 << 16)?;
    count(&at("train_size"), p.train_size, 1, MAX_COUNT)?;
    count(&at("cell_factor"), p.cell_factor, 1, 1024)?;
    count(&at("kmeans_iters"), p.kmeans_iters, 0, 1000)?;
    count(&at("fastscan_m"), p.fastscan_m, 0, 24)?;
    at_most(
        &at("fastscan_m"),
        p.fastscan_m,
        proj_dim,
        &format!("{det}.proj_dim"),
    )?;
    count(&at("fastscan_rerank"), p.fastscan_rerank, 1, MAX_SEARCH)?;
    Ok(())
}

/// The HNSW graph settings of `path`.
fn check_hnsw(path: &str, p: &HnswParams) -> Result<(), DetectError> {
    use settings::{count, MAX_SEARCH};
    let at = |f: &str| format!("{path}.{f}");
    count(&at("m"), p.m, 2, 256)?;
    count(&at("ef_construction"), p.ef_construction, 1, MAX_SEARCH)?;
    count(&at("ef_search"), p.ef_search, 1, MAX_SEARCH)?;
    Ok(())
}

/// The detector set built from `cfg`, in catalogue order.
pub fn default_detectors(cfg: &DetectorsConfig) -> Vec<Arc<dyn Detector>> {
    vec![
        Arc::new(RateDetector::new(cfg.rate.clone())),
        Arc::new(PradaDetector::new(cfg.prada.clone()).with_reference(&cfg.ood)),
        Arc::new(KnnDetector::new(cfg.knn.clone())),
        Arc::new(BlacklightDetector::new(cfg.blacklight.clone())),
        Arc::new(OodDetector::new(cfg.ood.clone())),
        Arc::new(HodaDetector::new(cfg.hoda.clone())),
        Arc::new(SyntheticDetector::new(cfg.synthetic.clone())),
    ]
}

/// The catalogue of every detector this crate implements.
pub fn catalogue() -> Vec<DetectorInfo> {
    default_detectors(&DetectorsConfig::default())
        .iter()
        .map(|d| d.info())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_every_detector_once_with_a_paper() {
        let c = catalogue();
        let names: Vec<&str> = c.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rate",
                "prada",
                "knn",
                "blacklight",
                "ood",
                "hoda",
                "synthetic"
            ]
        );
        assert!(c.iter().all(|i| !i.paper.is_empty() && !i.needs.is_empty()));
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let e = serde_json::from_str::<DetectorsConfig>("{\"prada\": {\"delt\": 0.9}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delt"), "{e}");
        let ok: DetectorsConfig = serde_json::from_str("{\"prada\": {\"delta\": 0.9}}").unwrap();
        assert_eq!(ok.prada.delta, 0.9);
        // Written before the input range: the quantising detectors keep `[0, 1]`.
        assert_eq!(ok.blacklight.input_range, [0.0, 1.0]);
        assert_eq!(ok.prada.input_range, [0.0, 1.0]);
    }

    #[test]
    fn input_ranges_reach_both_quantising_detectors_and_bad_ones_are_refused_by_name() {
        let mut cfg = DetectorsConfig::default();
        cfg.set_input_range([-2.5, 1000.0]).unwrap();
        assert_eq!(cfg.blacklight.input_range, [-2.5, 1000.0]);
        assert_eq!(cfg.prada.input_range, [-2.5, 1000.0]);
        cfg.validate().unwrap();
        for bad in [
            [1.0, 1.0],
            [2.0, 1.0],
            [0.0, f32::INFINITY],
            [f32::NAN, 1.0],
            [-3.0e38, 3.0e38],
        ] {
            let e = cfg.set_input_range(bad).unwrap_err().to_string();
            assert!(e.contains("input_range"), "{bad:?}: {e}");
            assert_eq!(cfg.prada.input_range, [-2.5, 1000.0], "left as it was");
        }
        let mut b = cfg.clone();
        b.blacklight.input_range = [3.0, 3.0];
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("detectors.blacklight.input_range"), "{e}");
        let mut p = cfg;
        p.prada.input_range = [0.0, f32::NAN];
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("detectors.prada.input_range"), "{e}");
    }
}
