//! Errors of the detection engine.

use thiserror::Error;

/// Errors of `mamori-detect`.
#[derive(Debug, Error)]
pub enum DetectError {
    /// A detector state snapshot could not be decoded.
    #[error("detector `{detector}`: bad state snapshot: {message}")]
    Snapshot {
        /// The detector whose snapshot failed.
        detector: String,
        /// What went wrong.
        message: String,
    },
    /// A calibration or policy file is malformed or inconsistent.
    #[error("{path}: {message}")]
    Config {
        /// File (or field path) involved.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Calibration could not be fitted.
    #[error("calibration: {0}")]
    Calibration(String),
    /// A model evaluation failed during calibration.
    #[error(transparent)]
    Model(#[from] mamori_core::ModelError),
    /// I/O failed.
    #[error("{path}: {message}")]
    Io {
        /// Path involved.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Decodes a JSON state snapshot, naming the detector on failure.
pub(crate) fn decode_state<T: serde::de::DeserializeOwned>(
    detector: &str,
    bytes: &[u8],
) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        DetectError::Snapshot {
            detector: detector.to_string(),
            message: e.to_string(),
        }
        .to_string()
    })
}

/// Encodes a state as a JSON snapshot.
pub(crate) fn encode_state<T: serde::Serialize>(state: &T) -> Vec<u8> {
    // Serialising plain data structs (no maps with non-string keys) cannot fail.
    serde_json::to_vec(state).unwrap_or_default()
}
