//! # mamori-core
//!
//! The types every other mamori crate speaks, and one trait per extension point:
//!
//! | extension point | trait | implemented in |
//! |---|---|---|
//! | a model that answers queries | [`Model`] | `mamori-ml` (native, ONNX) |
//! | what an attacker can query, with accounting | [`Oracle`] | `mamori-attack` (local, HTTP, in-process chain) |
//! | a per-client stateful detector | [`Detector`] / [`DetectorState`] | `mamori-detect` |
//! | an output perturbation | [`Postprocessor`] | `mamori-defense` |
//! | an answer watermark | [`Watermark`] | `mamori-defense` (DAWN) |
//!
//! Conventions used everywhere:
//! - A [`Tensor`] is row-major `f32`; the first dimension is the batch.
//! - Model inputs are *normalised* values (see [`Normalisation`]): images are pixels / 255 in
//!   `[0, 1]`, shape `[1, 28, 28]` per sample.
//! - Class outputs are `[n, classes]`; probabilities rows sum to 1.

pub mod card;
pub mod detector;
pub mod error;
pub mod hash;
pub mod model;
pub mod oracle;
pub mod postprocess;
pub mod tensor;
pub mod testing;
pub mod watermark;

pub use card::{DatasetRef, FileDigest, ModelCard, Normalisation, OutputKind};
pub use detector::{
    Action, DataNeed, Detector, DetectorInfo, DetectorState, Observation, Stage, Verdict,
};
pub use error::{CoreError, ModelError, OracleError};
pub use model::{softmax_rows, GradTarget, Model};
pub use oracle::{Disclosure, Oracle, OracleAnswer};
pub use postprocess::{PostContext, Postprocessor};
pub use tensor::Tensor;
pub use watermark::{Watermark, WatermarkMark};
