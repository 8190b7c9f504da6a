//! Errors of the defense crate.

use thiserror::Error;

/// Errors building defenses, using the ledger or verifying a suspect.
#[derive(Debug, Error)]
pub enum DefenseError {
    /// A postprocessor or watermark specification is invalid.
    #[error("invalid defense spec `{kind}`: {message}")]
    InvalidSpec {
        /// The `kind` of the spec.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A key file is missing, unreadable or malformed.
    #[error("{path}: key error: {message}")]
    Key {
        /// Path of the key file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// File I/O failed.
    #[error("{path}: {message}")]
    Io {
        /// Path involved.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The ledger is corrupt, tampered with or encrypted under another key.
    #[error("{path}: ledger record {index}: {message}")]
    Ledger {
        /// Path of the ledger file.
        path: String,
        /// Index of the bad record (0-based).
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Verification could not be carried out.
    #[error("verification: {0}")]
    Verify(String),
    /// An evidence report is malformed or its signature does not verify.
    #[error("report: {0}")]
    Report(String),
    /// The suspect oracle failed.
    #[error(transparent)]
    Oracle(#[from] mamori_core::OracleError),
    /// A model failed.
    #[error(transparent)]
    Model(#[from] mamori_core::ModelError),
    /// The ML runtime failed.
    #[error(transparent)]
    Ml(#[from] mamori_ml::MlError),
}

impl DefenseError {
    /// An [`DefenseError::InvalidSpec`] for `kind`.
    pub fn spec(kind: &str, message: impl Into<String>) -> Self {
        DefenseError::InvalidSpec {
            kind: kind.to_string(),
            message: message.into(),
        }
    }

    /// An [`DefenseError::Io`] for `path`.
    pub fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        DefenseError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
