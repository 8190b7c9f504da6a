//! Errors of the evaluation harness.

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The evaluation configuration is invalid (file, field and problem).
    #[error("eval config {path}: {message}")]
    Config {
        /// The configuration file (or `<embedded>`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
    /// Loading a dataset failed.
    #[error("dataset {name}: {source}")]
    Data {
        /// The dataset name.
        name: String,
        /// The cause.
        #[source]
        source: mamori_data::DataError,
    },
    /// Training or running a model failed.
    #[error("model: {0}")]
    Model(String),
    /// The gateway or its protection policy failed.
    #[error("gateway: {0}")]
    Gateway(#[from] mamori_gateway::GatewayError),
    /// An attack failed for a reason other than being refused.
    #[error("attack {attack}: {message}")]
    Attack {
        /// The attack name.
        attack: String,
        /// The cause.
        message: String,
    },
    /// Reaching the gateway over HTTP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// Detector calibration failed.
    #[error("calibration: {0}")]
    Calibration(String),
    /// Watermark verification or a defense failed.
    #[error("defense: {0}")]
    Defense(String),
}

impl EvalError {
    /// An I/O error about `path`.
    pub fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        EvalError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl From<mamori_core::ModelError> for EvalError {
    fn from(e: mamori_core::ModelError) -> Self {
        EvalError::Model(e.to_string())
    }
}

impl From<mamori_ml::MlError> for EvalError {
    fn from(e: mamori_ml::MlError) -> Self {
        EvalError::Model(e.to_string())
    }
}
