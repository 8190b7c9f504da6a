//! The model zoo: named architectures with default hyper-parameters, training a model on a
//! dataset split into a [`NativeModel`] with a complete model card, and the default
//! Fashion-MNIST CNN that `mamori demo` prepares.

use crate::api::{accuracy, train, MlError, NativeModel, Targets, TrainConfig, TrainReport};
use crate::arch::{Arch, Network};
use mamori_core::{DatasetRef, ModelCard, OutputKind};
use mamori_data::{Dataset, Split};
use std::path::{Path, PathBuf};

/// Name of the default demo model (its directory under `<home>/models/`).
pub const DEFAULT_MODEL_NAME: &str = "fashion-mnist-cnn";
/// Dataset of the default demo model.
pub const DEFAULT_DATASET: &str = "fashion-mnist";

/// Default hidden sizes of the zoo MLP.
pub const DEFAULT_HIDDEN: [usize; 2] = [256, 128];

/// The zoo name of an architecture (`logistic`, `softmax`, `mlp`, `cnn`).
pub fn arch_name(arch: &Arch) -> &'static str {
    match arch {
        Arch::Logistic => "logistic",
        Arch::Softmax => "softmax",
        Arch::Mlp { .. } => "mlp",
        Arch::Cnn => "cnn",
    }
}

/// Parses a zoo architecture name; `hidden` sets the MLP's hidden sizes (default
/// [`DEFAULT_HIDDEN`]) and is rejected for the other architectures.
pub fn parse_arch(name: &str, hidden: Option<&[usize]>) -> Result<Arch, MlError> {
    let arch = match name {
        "logistic" => Arch::Logistic,
        "softmax" => Arch::Softmax,
        "mlp" => Arch::Mlp {
            hidden: hidden
                .map(<[usize]>::to_vec)
                .unwrap_or(DEFAULT_HIDDEN.to_vec()),
        },
        "cnn" => Arch::Cnn,
        other => {
            return Err(MlError::Training(format!(
                "unknown architecture {other:?} (expected logistic, softmax, mlp or cnn)"
            )))
        }
    };
    if hidden.is_some() && !matches!(arch, Arch::Mlp { .. }) {
        return Err(MlError::Training(
            "hidden layer sizes only apply to the mlp architecture".into(),
        ));
    }
    Ok(arch)
}

/// Default training hyper-parameters of each architecture, chosen so that the documented
/// accuracy targets are met with them (see `docs/bench/ml.md`).
pub fn default_config(arch: &Arch) -> TrainConfig {
    let (epochs, batch_size, learning_rate) = match arch {
        Arch::Logistic => (5, 64, 1e-3),
        Arch::Softmax => (30, 32, 1e-2),
        Arch::Mlp { .. } => (12, 64, 1e-3),
        Arch::Cnn => (6, 64, 1e-3),
    };
    TrainConfig {
        epochs,
        batch_size,
        learning_rate,
        weight_decay: 0.0,
        seed: 0,
        progress: false,
    }
}

/// Keeps the samples of classes `a` and `b` only, relabelled `a → 0`, `b → 1`.
pub fn select_two_classes(d: &Dataset, a: usize, b: usize) -> Result<Dataset, MlError> {
    if a == b || a >= d.num_classes || b >= d.num_classes {
        return Err(MlError::Training(format!(
            "classes {a},{b}: need two different classes below {}",
            d.num_classes
        )));
    }
    let keep: Vec<usize> = (0..d.len())
        .filter(|&i| d.y[i] == a || d.y[i] == b)
        .collect();
    let mut s = d.select(&keep);
    s.y = s.y.iter().map(|&c| usize::from(c == b)).collect();
    s.num_classes = 2;
    s.class_names = vec![d.class_names[a].clone(), d.class_names[b].clone()];
    Ok(s)
}

/// A trained model and what training did.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The model, its card filled in.
    pub model: NativeModel,
    /// Per-epoch loss and accuracy, wall time.
    pub report: TrainReport,
}

/// Trains `arch` on `split.train` with `cfg` (seeded by `cfg.seed` for both initialisation
/// and shuffling), measures test accuracy on `split.test`, and fills the model card: name,
/// architecture, input shape/dtype/range, normalisation, class names, dataset files with
/// their SHA-256, test accuracy, training time, seed and hyper-parameters.
pub fn train_model(
    name: &str,
    split: &Split,
    arch: &Arch,
    cfg: &TrainConfig,
) -> Result<Trained, MlError> {
    train_from(name, split, arch, cfg, None)
}

/// Fine-tunes a copy of `base` (a pre-trained model of the same input shape and number of
/// classes) on `split.train` with `cfg`, like [`train_model`] otherwise; the card records the
/// base in `extra["base_model"]` (`{"name", "reference", "files"}`), which signing picks up.
/// `base_ref` names where the base came from (its directory) and `base_files` its files'
/// digests (what supply-chain pins check).
pub fn fine_tune_model(
    name: &str,
    split: &Split,
    base: &NativeModel,
    base_ref: &str,
    base_files: &[mamori_core::FileDigest],
    cfg: &TrainConfig,
) -> Result<Trained, MlError> {
    let tr = &split.train;
    if base.card.input_shape != tr.x.sample_shape() || base.network.num_classes() != tr.num_classes
    {
        return Err(MlError::Training(format!(
            "base model {base_ref} takes {:?} with {} classes; dataset {} has {:?} with {}",
            base.card.input_shape,
            base.network.num_classes(),
            tr.name,
            tr.x.sample_shape(),
            tr.num_classes
        )));
    }
    let arch = parse_arch(&base.card.architecture, None).unwrap_or(Arch::Cnn);
    let mut trained = train_from(name, split, &arch, cfg, Some(base.network.clone()))?;
    trained.model.card.architecture = base.card.architecture.clone();
    trained.model.card.extra.insert(
        "base_model".into(),
        serde_json::json!({
            "name": base.card.name,
            "reference": base_ref,
            "files": base_files,
        }),
    );
    Ok(trained)
}

fn train_from(
    name: &str,
    split: &Split,
    arch: &Arch,
    cfg: &TrainConfig,
    init: Option<Network>,
) -> Result<Trained, MlError> {
    let tr = &split.train;
    if tr.is_empty() || split.test.is_empty() {
        return Err(MlError::Training(format!(
            "dataset {}: empty train or test split",
            tr.name
        )));
    }
    let input_shape = tr.x.sample_shape().to_vec();
    let mut net = match init {
        Some(n) => n,
        None => Network::try_new(arch, &input_shape, tr.num_classes, cfg.seed)?,
    };
    let report = train(&mut net, &tr.x, &Targets::Labels(tr.y.clone()), cfg)?;
    let norm = tr.normalisation.clone();
    // Raw values span [0, 1/scale] (bytes for images); widen by what the data actually holds.
    let (lo, hi) =
        tr.x.data()
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
    let raw_max = if norm.scale > 0.0 {
        1.0 / norm.scale
    } else {
        0.0
    };
    let input_range = [lo.min(norm.apply(0.0)), hi.max(norm.apply(raw_max))];
    let mut extra = serde_json::Map::new();
    extra.insert("epochs".into(), cfg.epochs.into());
    extra.insert("batch_size".into(), cfg.batch_size.into());
    // Through the shortest decimal form, so 0.01f32 is recorded as 0.01.
    let f = |v: f32| v.to_string().parse::<f64>().unwrap_or(f64::from(v));
    extra.insert("learning_rate".into(), f(cfg.learning_rate).into());
    extra.insert("weight_decay".into(), f(cfg.weight_decay).into());
    extra.insert("optimizer".into(), "adam".into());
    extra.insert(
        "train_loss".into(),
        report.epoch_loss.iter().map(|&v| f64::from(v)).collect(),
    );
    extra.insert(
        "train_accuracy".into(),
        report
            .epoch_accuracy
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
    );
    extra.insert(
        "test_files".into(),
        serde_json::to_value(&split.test.files).unwrap_or_default(),
    );
    extra.insert("train_samples".into(), tr.len().into());
    extra.insert("test_samples".into(), split.test.len().into());
    let card = ModelCard {
        name: name.to_string(),
        architecture: arch_name(arch).to_string(),
        architecture_detail: serde_json::Value::Null,
        input_shape,
        input_dtype: "FP32".into(),
        input_range,
        normalisation: norm,
        class_names: tr.class_names.clone(),
        output_kind: OutputKind::Logits,
        dataset: DatasetRef {
            name: tr.name.clone(),
            files: tr.files.clone(),
        },
        test_accuracy: None,
        training_time_s: Some(report.seconds),
        seed: Some(cfg.seed),
        extra,
    };
    let mut model = NativeModel::new(net, card);
    let acc = accuracy(&model, &split.test.x, &split.test.y)?;
    model.card.test_accuracy = Some(acc);
    Ok(Trained { model, report })
}

/// Where the default demo model lives under `home`.
pub fn default_model_dir(home: &Path) -> PathBuf {
    home.join("models").join(DEFAULT_MODEL_NAME)
}

/// The default Fashion-MNIST CNN: loaded from `<home>/models/fashion-mnist-cnn` when a valid
/// model is cached there, otherwise trained with the zoo defaults on
/// `mamori_data::load("fashion-mnist", data_dir)` and saved there. Returns the model and
/// whether it was trained now.
pub fn ensure_default_model(
    home: &Path,
    data_dir: &Path,
    progress: bool,
) -> Result<(NativeModel, bool), MlError> {
    let dir = default_model_dir(home);
    if dir.join(crate::WEIGHTS_FILE).is_file() && dir.join(crate::CARD_FILE).is_file() {
        return NativeModel::load(&dir).map(|m| (m, false));
    }
    let split = mamori_data::load(DEFAULT_DATASET, data_dir)?;
    let cfg = TrainConfig {
        progress,
        ..default_config(&Arch::Cnn)
    };
    let trained = train_model(DEFAULT_MODEL_NAME, &split, &Arch::Cnn, &cfg)?;
    trained.model.save(&dir)?;
    Ok((trained.model, true))
}
