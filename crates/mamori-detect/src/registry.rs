//! The one place where every detector is registered.

use crate::rate::{RateConfig, RateDetector};
use mamori_core::{Detector, DetectorInfo};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Configuration (thresholds, reference statistics) of every detector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorsConfig {
    /// Query volume and rate.
    pub rate: RateConfig,
}

/// The detector set built from `cfg`, in catalogue order.
pub fn default_detectors(cfg: &DetectorsConfig) -> Vec<Arc<dyn Detector>> {
    vec![Arc::new(RateDetector::new(cfg.rate.clone()))]
}

/// The catalogue of every detector this crate implements.
pub fn catalogue() -> Vec<DetectorInfo> {
    default_detectors(&DetectorsConfig::default())
        .iter()
        .map(|d| d.info())
        .collect()
}
