//! # mamori-data
//!
//! Datasets for mamori: IDX images/labels, gzipped or raw (MNIST, Fashion-MNIST); CSV with a
//! label column (UCI digits); NPY arrays. Named shortcuts (`fashion-mnist`, `mnist`, `digits`)
//! resolve inside a data directory; `fetch` downloads the official files and checks pinned
//! SHA-256 sums. Every malformed file gives a [`DataError`] naming the file and the problem.
//!
//! | module | what |
//! |---|---|
//! | [`idx`] | IDX images and labels |
//! | [`csv`] | CSV with a label column |
//! | [`npy`] | NumPy `.npy` arrays |
//! | [`catalog`] | the named datasets, mirrors and pinned sums |
//! | [`fetch`] | verified download and verification of a data directory |
//! | [`split`] | seeded shuffles, splits and subsamples |

use mamori_core::{FileDigest, Normalisation, Tensor};
use std::path::{Path, PathBuf};

pub mod catalog;
pub mod csv;
mod error;
pub mod fetch;
pub mod idx;
pub mod npy;
pub mod read;
pub mod split;

pub use catalog::{DatasetSpec, DATASETS};
pub use csv::{CsvOptions, LabelColumn};
pub use error::DataError;

/// Seed of the 75/25 split of datasets without an official split (digits, single CSV/NPY).
pub const DEFAULT_SPLIT_SEED: u64 = 0;
/// Test fraction of datasets without an official split.
pub const DEFAULT_TEST_FRACTION: f64 = 0.25;

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

    /// Shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        self.x.sample_shape()
    }

    /// Number of samples of each class, index = class id.
    pub fn class_histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.num_classes];
        for &c in &self.y {
            if c < h.len() {
                h[c] += 1;
            }
        }
        h
    }

    /// The first `n` samples (or all if fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&idx)
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

/// Resolves the data directory: the explicit path if given, else `$MAMORI_DATA`, else
/// `../shared/data` relative to the current directory or to the repository root if it exists,
/// else `./data`.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("MAMORI_DATA").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
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

/// Options of [`load_with`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// How to read CSV files given by path (the `digits` shortcut always uses its own layout).
    pub csv: CsvOptions,
    /// Seed of the split of datasets without an official split.
    pub split_seed: u64,
    /// Test fraction of datasets without an official split.
    pub test_fraction: f64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            csv: CsvOptions::default(),
            split_seed: DEFAULT_SPLIT_SEED,
            test_fraction: DEFAULT_TEST_FRACTION,
        }
    }
}

/// Loads a dataset by shortcut (`fashion-mnist`, `mnist`, `digits`) from `data_dir`, or from
/// a path (a directory of IDX files, a CSV file, an NPY pair). Digits (no official split) is
/// split 75/25 with a fixed seed.
pub fn load(name_or_path: &str, data_dir: &Path) -> Result<Split, DataError> {
    load_with(name_or_path, data_dir, &LoadOptions::default())
}

/// [`load`] with options (CSV label column and scale, split seed and fraction).
///
/// Paths: a directory holding `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`; a directory holding
/// `x_train.npy`/`y_train.npy`/`x_test.npy`/`y_test.npy` or `x.npy`/`y.npy`; a `.csv` or
/// `.csv.gz` file; an `x*.npy` file whose labels are the sibling `y*.npy`.
pub fn load_with(
    name_or_path: &str,
    data_dir: &Path,
    opts: &LoadOptions,
) -> Result<Split, DataError> {
    if let Some(spec) = catalog::spec(name_or_path) {
        return load_named(spec, data_dir);
    }
    let path = Path::new(name_or_path);
    if !path.exists() {
        let looks_like_name = !name_or_path.contains(['/', '\\', '.']);
        return Err(if looks_like_name {
            DataError::UnknownDataset(name_or_path.to_string())
        } else {
            DataError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            )
        });
    }
    let label = name_or_path.to_string();
    if path.is_dir() {
        if find_idx(path, "train", "images", 3).is_some() {
            let classes = path
                .file_name()
                .and_then(|n| catalog::spec(&n.to_string_lossy()))
                .map(|s| s.class_names);
            return load_idx_dir(path, &label, classes, None);
        }
        for (xt, yt, xs, ys) in [("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")] {
            if path.join(xt).is_file() {
                return load_npy_split(
                    &label,
                    &path.join(xt),
                    &path.join(yt),
                    &path.join(xs),
                    &path.join(ys),
                );
            }
        }
        if path.join("x.npy").is_file() {
            return load_npy_single(&label, &path.join("x.npy"), &path.join("y.npy"), opts);
        }
        return Err(DataError::malformed(
            path,
            "no dataset found in this directory (expected IDX files train-images-idx3-ubyte[.gz] \
             and friends, or x_train.npy/y_train.npy/x_test.npy/y_test.npy, or x.npy/y.npy)",
        ));
    }
    let fname = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if fname.ends_with(".csv") || fname.ends_with(".csv.gz") {
        return load_csv(&label, path, &opts.csv, None, opts);
    }
    if fname.ends_with(".npy") || fname.ends_with(".npy.gz") {
        let y = sibling_labels(path).ok_or_else(|| {
            DataError::malformed(path, "cannot tell where the labels are: name the inputs x*.npy and put the labels in the matching y*.npy")
        })?;
        let (xs, ys) = (
            fname.replacen("train", "test", 1),
            y.file_name()
                .unwrap()
                .to_string_lossy()
                .replacen("train", "test", 1),
        );
        let parent = path.parent().unwrap_or(Path::new("."));
        if fname.contains("train") && parent.join(&xs).is_file() {
            return load_npy_split(&label, path, &y, &parent.join(xs), &parent.join(ys));
        }
        return load_npy_single(&label, path, &y, opts);
    }
    Err(DataError::malformed(
        path,
        "unrecognised dataset file (expected a .csv, .csv.gz or .npy file, or a directory of IDX or NPY files)",
    ))
}

/// Loads a named dataset from `<data_dir>/<name>/`.
fn load_named(spec: &DatasetSpec, data_dir: &Path) -> Result<Split, DataError> {
    let dir = data_dir.join(spec.name);
    let missing = |p: PathBuf| DataError::Missing {
        path: p,
        dataset: spec.name.to_string(),
    };
    match spec.name {
        "digits" => {
            let p = [dir.join("digits.csv.gz"), dir.join("digits.csv")]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| missing(dir.join("digits.csv.gz")))?;
            let opts = CsvOptions {
                scale: 1.0 / 16.0,
                ..Default::default()
            };
            load_csv(
                spec.name,
                &p,
                &opts,
                Some(spec.class_names),
                &LoadOptions::default(),
            )
        }
        _ => {
            if find_idx(&dir, "train", "images", 3).is_none() {
                return Err(missing(dir.join("train-images-idx3-ubyte.gz")));
            }
            load_idx_dir(&dir, spec.name, Some(spec.class_names), Some(spec.name))
        }
    }
}

/// Finds `<part>-<kind>-idx<d>-ubyte[.gz]` (or the `<part>-<kind>.idx<d>-ubyte` spelling).
fn find_idx(dir: &Path, part: &str, kind: &str, d: u8) -> Option<PathBuf> {
    [
        format!("{part}-{kind}-idx{d}-ubyte.gz"),
        format!("{part}-{kind}-idx{d}-ubyte"),
        format!("{part}-{kind}.idx{d}-ubyte.gz"),
        format!("{part}-{kind}.idx{d}-ubyte"),
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

fn load_idx_dir(
    dir: &Path,
    name: &str,
    class_names: Option<&[&str]>,
    shortcut: Option<&str>,
) -> Result<Split, DataError> {
    let need = |part: &str, kind: &str, d: u8| {
        find_idx(dir, part, kind, d).ok_or_else(|| {
            let p = dir.join(format!("{part}-{kind}-idx{d}-ubyte.gz"));
            match shortcut {
                Some(s) => DataError::Missing {
                    path: p,
                    dataset: s.to_string(),
                },
                None => DataError::io(
                    p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "missing IDX file"),
                ),
            }
        })
    };
    let (tri, trl) = (need("train", "images", 3)?, need("train", "labels", 1)?);
    let (tei, tel) = (need("t10k", "images", 3)?, need("t10k", "labels", 1)?);
    let nc = class_names.map(|c| c.len());
    let train = idx::read_pair(&tri, &trl, nc)?;
    let test = idx::read_pair(&tei, &tel, nc)?;
    if train.shape[1..] != test.shape[1..] {
        return Err(DataError::malformed(
            &tei,
            format!(
                "test images are {:?}, training images are {:?}",
                &test.shape[1..],
                &train.shape[1..]
            ),
        ));
    }
    let num_classes =
        nc.unwrap_or_else(|| train.y.iter().chain(&test.y).max().map_or(1, |m| m + 1));
    let names = class_name_list(class_names, num_classes);
    let mk = |p: idx::IdxPair| -> Result<Dataset, DataError> {
        Ok(Dataset {
            name: name.to_string(),
            x: Tensor::new(p.shape, p.x).map_err(|e| DataError::malformed(dir, e.to_string()))?,
            y: p.y,
            num_classes,
            class_names: names.clone(),
            files: p.files,
            normalisation: Normalisation::default(),
        })
    };
    Ok(Split {
        train: mk(train)?,
        test: mk(test)?,
    })
}

fn class_name_list(given: Option<&[&str]>, n: usize) -> Vec<String> {
    match given {
        Some(c) => c.iter().map(|s| s.to_string()).collect(),
        None => (0..n).map(|i| i.to_string()).collect(),
    }
}

fn load_csv(
    name: &str,
    path: &Path,
    csv_opts: &CsvOptions,
    class_names: Option<&[&str]>,
    opts: &LoadOptions,
) -> Result<Split, DataError> {
    let t = csv::read_csv(path, csv_opts)?;
    let num_classes = match class_names {
        Some(c) => {
            if let Some((i, &l)) = t.y.iter().enumerate().find(|(_, &l)| l >= c.len()) {
                return Err(DataError::malformed(
                    path,
                    format!("label {l} in data row {} is out of range (the dataset has {} classes, 0..{})", i + 1, c.len(), c.len() - 1),
                ));
            }
            c.len()
        }
        None => t.y.iter().max().map_or(1, |m| m + 1),
    };
    let n = t.y.len();
    let ds = Dataset {
        name: name.to_string(),
        x: Tensor::new(vec![n, t.features], t.x)
            .map_err(|e| DataError::malformed(path, e.to_string()))?,
        y: t.y,
        num_classes,
        class_names: class_name_list(class_names, num_classes),
        files: vec![t.digest],
        normalisation: Normalisation {
            scale: csv_opts.scale,
            mean: 0.0,
            std: 1.0,
        },
    };
    split::train_test_split(&ds, opts.test_fraction, opts.split_seed)
}

/// `x.npy` → `y.npy`, `x_train.npy` → `y_train.npy`, `X.npy` → `Y.npy`.
fn sibling_labels(x: &Path) -> Option<PathBuf> {
    let name = x.file_name()?.to_string_lossy().to_string();
    let rest = name
        .strip_prefix('x')
        .map(|r| format!("y{r}"))
        .or_else(|| name.strip_prefix('X').map(|r| format!("Y{r}")))?;
    Some(x.with_file_name(rest))
}

fn npy_dataset(name: &str, a: npy::XyArrays, num_classes: usize) -> Result<Dataset, DataError> {
    let n = a.y.len();
    let mut shape = vec![n];
    shape.extend(&a.sample_shape);
    let path = a.files[0].path.clone();
    Ok(Dataset {
        name: name.to_string(),
        x: Tensor::new(shape, a.x).map_err(|e| DataError::malformed(path, e.to_string()))?,
        y: a.y,
        num_classes,
        class_names: class_name_list(None, num_classes),
        files: a.files,
        normalisation: Normalisation {
            scale: a.scale,
            mean: 0.0,
            std: 1.0,
        },
    })
}

fn load_npy_single(name: &str, x: &Path, y: &Path, opts: &LoadOptions) -> Result<Split, DataError> {
    let a = npy::read_xy(x, y)?;
    let c = a.y.iter().max().map_or(1, |m| m + 1);
    split::train_test_split(
        &npy_dataset(name, a, c)?,
        opts.test_fraction,
        opts.split_seed,
    )
}

fn load_npy_split(
    name: &str,
    xtr: &Path,
    ytr: &Path,
    xte: &Path,
    yte: &Path,
) -> Result<Split, DataError> {
    let a = npy::read_xy(xtr, ytr)?;
    let b = npy::read_xy(xte, yte)?;
    if a.sample_shape != b.sample_shape {
        return Err(DataError::malformed(
            xte,
            format!(
                "test samples are {:?}, training samples are {:?}",
                b.sample_shape, a.sample_shape
            ),
        ));
    }
    let c = a.y.iter().chain(&b.y).max().map_or(1, |m| m + 1);
    Ok(Split {
        train: npy_dataset(name, a, c)?,
        test: npy_dataset(name, b, c)?,
    })
}
