//! # mamori-detect
//!
//! Per-client stateful detectors of model extraction and adversarial search, their calibration
//! on benign data, and the risk/escalation policy the gateway applies.
//!
//! | detector | module | paper | stage |
//! |---|---|---|---|
//! | `rate` | [`rate`] | volume baseline (query budgets of Tramèr 2016, Papernot 2017) | precursor |
//! | `prada` | [`prada`] | Juuti et al., PRADA, EuroS&P 2019 | precursor |
//! | `knn` | [`knn`] | Chen, Carlini, Wagner 2019 (k = 50) | precursor |
//! | `blacklight` | [`blacklight`] | Li et al., Blacklight, USENIX Security 2022 | precursor |
//! | `ood` | [`ood`] | Atli et al. 2020 (OOD query rate) | precursor |
//! | `hoda` | [`hoda`] | Sadeghzadeh et al., HODA (hardness histogram) | precursor |
//! | `synthetic` | [`synthetic`] | natural-image statistics vs Tramèr et al. 2016's synthetic queries | precursor |
//!
//! Every detector is registered in one place, [`registry::default_detectors`]; the gateway
//! drives them through [`Engine::observe`], which applies the [`Policy`].
//! [`calibration::calibrate`] fits the thresholds on benign data (`calibration.json`).

pub mod ann;
pub mod blacklight;
pub mod calibration;
pub mod engine;
pub mod error;
mod fastscan;
mod heap;
pub mod hoda;
pub mod ivf;
pub mod knn;
pub mod ood;
pub mod policy;
pub mod prada;
pub mod rate;
pub mod registry;
pub mod settings;
pub mod shapiro;
mod simd;
pub mod synthetic;
mod window;

pub use calibration::{
    calibrate, Calibration, CalibrationOptions, ForeignBenign, CALIBRATION_FILE,
    CALIBRATION_VERSION,
};
pub use engine::Engine;
pub use error::DetectError;
pub use policy::{Decision, Override, Policy, PolicyConfig, Reason};
pub use registry::{catalogue, default_detectors, DetectorsConfig};
