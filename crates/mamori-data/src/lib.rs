//! # mamori-data
//!
//! Datasets for mamori: IDX images/labels, gzipped or raw (MNIST, Fashion-MNIST); CSV with a
//! label column (UCI digits); NPY arrays. Named shortcuts (`fashion-mnist`, `mnist`, `digits`)
//! resolve inside a data directory; `fetch` downloads the official files and checks pinned
//! SHA-256 sums. Every malformed file gives a [`DataError`] naming the file and the problem.

use mamori_core::{FileDigest, Normalisation, Tensor};
use std::path::{Path, PathBuf};

mod error;
pub use error::DataError;

/// A labelled set of samples, already normalised to model inputs.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Dataset name (shortcut or path).
    pub name: String,
    /// Inputs `[n, sample_shape...]`, normalised (images: `[n, 1, 28, 28]` in `[0, 1]`).
    pub x: Tensor,
    /// Labels, one per sample, each `< num_classes`.
    pub y: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names, index = class id.
    pub class_names: Vec<String>,
    /// Files read, with their SHA-256.
    pub files: Vec<FileDigest>,
    /// Raw → input mapping that was applied.
    pub normalisation: Normalisation,
}

/// Train and test parts of a dataset.
#[derive(Clone, Debug)]
pub struct Split {
    /// Training part.
    pub train: Dataset,
    /// Held-out test part.
    pub test: Dataset,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The samples at `indices`, as a new dataset.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            x: self.x.select(indices),
            y: indices.iter().map(|&i| self.y[i]).collect(),
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            x: Tensor::zeros(vec![0]),
            y: Vec::new(),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            files: self.files.clone(),
            normalisation: self.normalisation.clone(),
        }
    }
}

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

/// Loads a dataset by shortcut (`fashion-mnist`, `mnist`, `digits`) from `data_dir`, or from
/// a path (a directory of IDX files, a CSV file, an NPY pair). Digits (no official split) is
/// split 75/25 with a fixed seed.
pub fn load(name_or_path: &str, data_dir: &Path) -> Result<Split, DataError> {
    let _ = (name_or_path, data_dir);
    unimplemented!("mamori-data: load (being written in the `data` branch)")
}
