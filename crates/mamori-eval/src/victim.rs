//! The victim, its data and its detector calibration, prepared once and cached.
//!
//! The victim is either a model directory named by the configuration or a model of
//! `victim.arch` trained here on `victim.dataset` and cached under
//! `cache/victim-<hash of the victim config and seed>/` together with its
//! `calibration.json` (`mamori_detect::calibrate` on benign test data), so a second run
//! reuses both.
//!
//! The test split is permuted with the seed and cut into three disjoint parts: the
//! evaluation set (substitute accuracy and fidelity), the calibration set (the detectors'
//! benign reference) and the benign replay pool (the benign clients' images).

use crate::config::EvalConfig;
use crate::error::EvalError;
use mamori_attack::metrics::EvalSet;
use mamori_core::Model;
use mamori_data::Dataset;
use mamori_detect::{Calibration, CalibrationOptions, DetectorsConfig};
use mamori_ml::{NativeModel, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything about the victim an evaluation needs.
pub struct Victim {
    /// The model.
    pub model: Arc<NativeModel>,
    /// Where it is stored.
    pub dir: PathBuf,
    /// Its training data.
    pub train: Dataset,
    /// Evaluation part of the test split.
    pub eval: EvalSet,
    /// Benign replay pool (test images not used for evaluation or calibration).
    pub replay: Dataset,
    /// Calibrated detector thresholds.
    pub calibration: DetectorsConfig,
    /// The training inputs' quiet dimensions (`mamori_detect::calibration::quiet_dims` at
    /// `QUIET_SHARE`), where DAWN's linear fingerprint goes.
    pub fingerprint_dims: Vec<u32>,
    /// Whether the model was trained (not loaded from the cache) in this run.
    pub trained_now: bool,
}

fn load_dataset(name: &str, data_dir: &Path) -> Result<mamori_data::Split, EvalError> {
    mamori_data::load(name, data_dir).map_err(|source| EvalError::Data {
        name: name.into(),
        source,
    })
}

/// Loads a dataset by shortcut or path (the error names it).
pub fn dataset(name: &str, data_dir: &Path) -> Result<mamori_data::Split, EvalError> {
    load_dataset(name, data_dir)
}

fn cache_key(cfg: &EvalConfig) -> String {
    let text =
        serde_json::to_string(&(&cfg.victim, &cfg.calibration, cfg.seed)).unwrap_or_default();
    mamori_core::hash::sha256_hex(text.as_bytes())[..16].to_string()
}

/// Prepares (or loads from `cache`) the victim of `cfg`.
pub fn prepare(
    cfg: &EvalConfig,
    data_dir: &Path,
    cache: &Path,
    progress: bool,
) -> Result<Victim, EvalError> {
    let split = load_dataset(&cfg.victim.dataset, data_dir)?;
    let mut train = split.train;
    if cfg.victim.train_limit > 0 && cfg.victim.train_limit < train.len() {
        train = train.head(cfg.victim.train_limit);
    }
    let test = split.test;
    let mut idx: Vec<usize> = (0..test.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7e57));
    let n_eval = cfg.victim.eval_samples.min(test.len() / 2);
    let rest = test.len() - n_eval;
    let n_cal = rest / 2;
    if n_cal < 200 {
        return Err(EvalError::Config {
            path: "victim.eval_samples".into(),
            message: format!(
                "the test split of {} has {} samples; after {n_eval} for evaluation fewer than \
                 200 are left for calibration",
                cfg.victim.dataset,
                test.len()
            ),
        });
    }
    let eval_ds = test.select(&idx[..n_eval]);
    let cal_ds = test.select(&idx[n_eval..n_eval + n_cal]);
    let replay = test.select(&idx[n_eval + n_cal..]);

    let (model, dir, trained_now) = match &cfg.victim.model {
        Some(p) => {
            let dir = PathBuf::from(p);
            (NativeModel::load(&dir)?, dir, false)
        }
        None => {
            let dir = cache.join(format!("victim-{}", cache_key(cfg)));
            if dir.join(mamori_ml::CARD_FILE).is_file() {
                (NativeModel::load(&dir)?, dir, false)
            } else {
                let tc = TrainConfig {
                    epochs: cfg.victim.epochs,
                    batch_size: 64,
                    learning_rate: 1e-3,
                    weight_decay: 0.0,
                    seed: cfg.seed,
                    progress,
                };
                let name = format!(
                    "{}-victim",
                    cfg.victim.dataset.replace(['/', '\\', '.'], "-")
                );
                let m = mamori_attack::experiment::train_victim(
                    &cfg.victim.arch,
                    &train,
                    &test,
                    &tc,
                    &name,
                )
                .map_err(|e| EvalError::Model(e.to_string()))?;
                m.save(&dir)?;
                (m, dir, true)
            }
        }
    };
    if model.card().input_shape != train.x.sample_shape() {
        return Err(EvalError::Model(format!(
            "model {} takes shape {:?} but {} has samples of shape {:?}",
            dir.display(),
            model.card().input_shape,
            cfg.victim.dataset,
            train.x.sample_shape()
        )));
    }
    let cal_file = dir.join(mamori_detect::CALIBRATION_FILE);
    let calibration = match Calibration::load(&cal_file) {
        // A calibration fitted by older rules is refitted.
        Ok(c) if !trained_now && c.is_current() => c.detectors,
        _ => {
            let opts = CalibrationOptions {
                fpr: cfg.calibration.fpr,
                clients: cfg.calibration.clients,
                queries_per_client: cfg.calibration.queries_per_client,
                max_train: cfg.calibration.max_train,
                tail_clients: cfg.calibration.tail_clients,
                seed: cfg.seed,
                ..Default::default()
            };
            let c = mamori_detect::calibrate(
                &model,
                &train.x,
                &cal_ds.x,
                &format!("{} (test, calibration part)", cfg.victim.dataset),
                &opts,
            )
            .map_err(|e| EvalError::Calibration(e.to_string()))?;
            c.save(&dir)
                .map_err(|e| EvalError::Calibration(e.to_string()))?;
            c.detectors
        }
    };
    let eval = EvalSet::from_model(
        &model,
        &eval_ds,
        cfg.victim.uniform_samples,
        [0.0, 1.0],
        cfg.seed,
    )
    .map_err(|e| EvalError::Model(e.to_string()))?;
    let fingerprint_dims =
        mamori_detect::calibration::quiet_dims(&train.x, mamori_detect::calibration::QUIET_SHARE);
    Ok(Victim {
        model: Arc::new(model),
        dir,
        train,
        eval,
        replay,
        calibration,
        fingerprint_dims,
        trained_now,
    })
}
