//! Datasets for mamori: IDX (MNIST, Fashion-MNIST), CSV (UCI digits), NPY; named shortcuts, verified download, seeded splits.

use std::path::{Path, PathBuf};

/// Resolves the data directory: the explicit path if given, else `../shared/data` relative to
/// the current directory or to the repository root if it exists, else `./data`.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let candidates = [
        PathBuf::from("../shared/data"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    ];
    for c in candidates {
        if c.is_dir() {
            return c;
        }
    }
    PathBuf::from("data")
}
