//! Dataset errors: each names the file and the problem.

use std::path::PathBuf;
use thiserror::Error;

/// Errors reading or fetching datasets.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file's content is malformed.
    #[error("{path}: {problem}")]
    Malformed {
        /// File path.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// Unknown dataset name.
    #[error("unknown dataset '{0}': use fashion-mnist, mnist, digits, or a path")]
    UnknownDataset(String),
}
