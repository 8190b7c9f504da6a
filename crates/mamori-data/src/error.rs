//! Dataset errors: each names the file (or URL) and the problem.

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
    /// A dataset file is missing from the data directory.
    #[error(
        "{path}: not found; run `mamori data fetch {dataset}` to download it \
         (or pass --data-dir / set MAMORI_DATA to the directory holding `{dataset}/`)"
    )]
    Missing {
        /// The expected file.
        path: PathBuf,
        /// The dataset shortcut it belongs to.
        dataset: String,
    },
    /// A download failed (connection, HTTP status).
    #[error("{url}: download failed: {message}")]
    Download {
        /// URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A file's SHA-256 is not the pinned one.
    #[error(
        "{url}: SHA-256 mismatch after {attempts} attempt(s) (expected {expected}, got {actual}); \
         the download is corrupt or not the official file and was deleted"
    )]
    Checksum {
        /// URL downloaded.
        url: String,
        /// Pinned digest.
        expected: String,
        /// Digest of the last bytes received.
        actual: String,
        /// Downloads tried.
        attempts: usize,
    },
    /// Invalid argument (split fraction, sample counts...).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// Builds a [`DataError::Malformed`] for `path`.
    pub fn malformed(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// Builds a [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
