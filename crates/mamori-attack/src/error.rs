//! Errors of the attack harness.

use mamori_core::{CoreError, ModelError, OracleError};
use mamori_ml::MlError;
use thiserror::Error;

/// Errors raised by oracles, attacks, metrics and reports.
#[derive(Debug, Error)]
pub enum AttackError {
    /// The oracle failed (budget, refusal, transport).
    #[error(transparent)]
    Oracle(#[from] OracleError),
    /// A local model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training or loading a substitute failed.
    #[error(transparent)]
    Ml(#[from] MlError),
    /// A tensor could not be built.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The attack cannot run with what it was given (e.g. no query data, wrong disclosure).
    #[error("{attack}: {problem}")]
    Unsupported {
        /// Attack name.
        attack: String,
        /// What is missing, in words.
        problem: String,
    },
    /// Bad configuration (unknown strategy name, zero budget...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A numerical step failed (singular system...).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Writing a report, image or file failed.
    #[error("{path}: {message}")]
    Output {
        /// File involved.
        path: String,
        /// What went wrong.
        message: String,
    },
}
