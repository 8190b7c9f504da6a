//! The one place where every detector is registered.

use crate::blacklight::{BlacklightConfig, BlacklightDetector};
use crate::hoda::{HodaConfig, HodaDetector};
use crate::knn::{KnnConfig, KnnDetector};
use crate::ood::{OodConfig, OodDetector};
use crate::prada::{PradaConfig, PradaDetector};
use crate::rate::{RateConfig, RateDetector};
use crate::synthetic::{SyntheticConfig, SyntheticDetector};
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
    }
}
