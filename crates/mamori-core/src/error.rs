//! Error types shared across crates.

use thiserror::Error;

/// Errors building or reshaping core values.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// The data length does not match the product of the shape.
    #[error("shape {shape:?} needs {expected} values, got {got}")]
    ShapeMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Number of values given.
        got: usize,
    },
    /// A tensor used as a batch must have at least one dimension.
    #[error("a batch tensor needs at least one dimension")]
    NoBatchDim,
}

/// Errors from running a [`crate::Model`].
#[derive(Debug, Error)]
pub enum ModelError {
    /// The input's per-sample shape is not what the model takes.
    #[error("input shape {got:?} does not match the model's input shape {expected:?}")]
    InputShape {
        /// What the model takes (per sample).
        expected: Vec<usize>,
        /// What was given (per sample).
        got: Vec<usize>,
    },
    /// The model cannot compute input gradients (e.g. an opaque ONNX model).
    #[error("this model does not provide input gradients")]
    GradientUnsupported,
    /// A gradient target does not fit the batch (wrong length or class out of range).
    #[error("invalid gradient target: {0}")]
    BadTarget(String),
    /// The runtime failed.
    #[error("model runtime error: {0}")]
    Runtime(String),
    /// Core value error.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Errors from querying an [`crate::Oracle`].
#[derive(Debug, Error)]
pub enum OracleError {
    /// The query budget is exhausted.
    #[error("query budget of {budget} exhausted ({used} used)")]
    BudgetExhausted {
        /// Budget in queries (samples).
        budget: u64,
        /// Queries already used.
        used: u64,
    },
    /// The defender refused to answer (blocked, HTTP 403).
    #[error("the oracle refused the query: {0}")]
    Refused(String),
    /// Rate limited and retries exhausted.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// Transport or protocol failure.
    #[error("oracle transport error: {0}")]
    Transport(String),
    /// The underlying model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}
