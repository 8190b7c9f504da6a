//! # mamori-detect
//!
//! Per-client stateful detectors of model extraction and adversarial search, their calibration
//! on benign data, and the risk/escalation policy the gateway applies.
//!
//! | detector | file | paper |
//! |---|---|---|
//! | `rate` | [`rate`] | volume baseline |
//!
//! Every detector is registered in one place, [`registry::default_detectors`].

pub mod error;
pub mod rate;
pub mod registry;

pub use error::DetectError;
pub use rate::{RateConfig, RateDetector};
pub use registry::{catalogue, default_detectors, DetectorsConfig};
