//! The public API other crates program against; the bodies live in the engine modules.

use crate::arch::{Arch, LayerParams, Network};
use mamori_core::{GradTarget, Model, ModelCard, ModelError, Tensor};
use std::path::Path;
use thiserror::Error;

/// Errors of the ML runtime.
#[derive(Debug, Error)]
pub enum MlError {
    /// File I/O failed.
    #[error("{path}: {message}")]
    File {
        /// Path involved.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A model file or card is malformed.
    #[error("{path}: invalid model: {message}")]
    InvalidModel {
        /// Path involved.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Bad training data or configuration.
    #[error("training: {0}")]
    Training(String),
    /// Model evaluation error.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Loading a dataset failed.
    #[error(transparent)]
    Data(#[from] mamori_data::DataError),
}

/// Training targets: hard labels or soft (probability) targets `[n, classes]`.
#[derive(Clone, Debug)]
pub enum Targets {
    /// One class index per sample.
    Labels(Vec<usize>),
    /// One probability vector per sample (a thief training on soft labels).
    Soft(Tensor),
}

/// Training hyper-parameters.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Seed for shuffling.
    pub seed: u64,
    /// Show an indicatif progress bar.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            progress: false,
        }
    }
}

/// Early stopping on training fit: train until the network's agreement with its own training
/// targets stops improving, with [`TrainConfig::epochs`] as the cap.
///
/// This is how a model thief trains a substitute on stolen answers: it has no labelled
/// validation data, only the answers, and trains until it fits them. Watermarks carried by a
/// few deliberately wrong answers (DAWN, Szyller et al., "DAWN: Dynamic Adversarial
/// Watermarking of Neural Networks", ACM MM 2021) assume exactly such a thief, one whose
/// surrogate reproduces its training answers.
///
/// The agreement of an epoch is the share of training samples whose target (the label, or the
/// argmax of a soft target) the network predicted while that epoch ran
/// ([`TrainReport::epoch_accuracy`]). After epoch `e > patience`, training stops when the best
/// agreement of the last `patience` epochs is not more than `min_gain` (a fraction: `0.001` =
/// 0.1 points) above the best agreement of the epochs before them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plateau {
    /// Epochs without enough gain before stopping (at least 1).
    pub patience: usize,
    /// Gain in agreement (a fraction in `[0, 1)`) that must be exceeded to count as progress.
    pub min_gain: f32,
}

impl Default for Plateau {
    /// Three epochs without any gain in training agreement (`min_gain` 0: the best
    /// agreement so far must strictly improve). A coarser threshold lets a thief stop while
    /// the last few tenths of a percent of its answers — exactly where DAWN's 0.5% of marked
    /// answers sit — are still being fitted.
    fn default() -> Self {
        Self {
            patience: 3,
            min_gain: 0.0,
        }
    }
}

impl Plateau {
    /// Checks the settings (the error names the bad one).
    pub fn check(&self) -> Result<(), MlError> {
        if self.patience == 0 {
            return Err(MlError::Training(
                "plateau patience must be at least 1".into(),
            ));
        }
        if !(self.min_gain.is_finite() && (0.0..1.0).contains(&self.min_gain)) {
            return Err(MlError::Training(format!(
                "plateau min_gain must be in [0, 1), got {}",
                self.min_gain
            )));
        }
        Ok(())
    }

    /// Whether training should stop after the epochs whose agreements are `agreement`
    /// (oldest first).
    pub fn reached(&self, agreement: &[f32]) -> bool {
        let e = agreement.len();
        if self.patience == 0 || e <= self.patience {
            return false;
        }
        let (before, recent) = agreement.split_at(e - self.patience);
        let best = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        best(recent) <= best(before) + self.min_gain
    }
}

/// What training did.
#[derive(Clone, Debug, Default)]
pub struct TrainReport {
    /// Mean loss of each epoch.
    pub epoch_loss: Vec<f32>,
    /// Training accuracy of each epoch (against hard labels or argmax of soft targets).
    pub epoch_accuracy: Vec<f32>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Network {
    /// A freshly initialised network of `arch` (He/Glorot init from `seed`).
    ///
    /// # Panics
    /// If `arch` does not fit `input_shape`/`classes` (e.g. a CNN on a flat input, logistic
    /// regression with more than two classes); [`Network::try_new`] returns the error instead.
    pub fn new(arch: &Arch, input_shape: &[usize], classes: usize, seed: u64) -> Network {
        match Network::try_new(arch, input_shape, classes, seed) {
            Ok(n) => n,
            Err(e) => panic!("Network::new: {e}"),
        }
    }

    /// Logits `[n, classes]` for a batch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_impl(x)
    }

    /// Gradient of `target` with respect to the input batch.
    ///
    /// Each sample's gradient is that of its own objective (no batch averaging).
    pub fn input_gradient(&self, x: &Tensor, target: &GradTarget) -> Result<Tensor, ModelError> {
        self.input_gradient_impl(x, target)
    }

    /// Number of output classes (0 if the layers do not fit the input shape).
    pub fn num_classes(&self) -> usize {
        crate::engine::plan(&self.input_shape, &self.layers)
            .map(|p| p.classes)
            .unwrap_or(0)
    }
}

/// Trains `net` in place on `(x, y)`: seeded shuffles, mini-batches, Adam on the mean softmax
/// cross-entropy (plus L2 weight decay on weights), an indicatif bar when `cfg.progress`.
pub fn train(
    net: &mut Network,
    x: &Tensor,
    y: &Targets,
    cfg: &TrainConfig,
) -> Result<TrainReport, MlError> {
    crate::train::train(net, x, y, cfg, SoftLoss::CrossEntropy, None)
}

/// Like [`train`], but stops early when the fit to the training targets reaches a
/// [`Plateau`]; `cfg.epochs` is the cap. The report has one entry per epoch run.
pub fn train_until_plateau(
    net: &mut Network,
    x: &Tensor,
    y: &Targets,
    cfg: &TrainConfig,
    plateau: &Plateau,
) -> Result<TrainReport, MlError> {
    plateau.check()?;
    crate::train::train(net, x, y, cfg, SoftLoss::CrossEntropy, Some(plateau))
}

/// How a network is fitted to soft targets (probability vectors). Hard labels are always
/// fitted by softmax cross-entropy.
///
/// The regression losses model the soft-label thieves that reverse-sigmoid perturbations
/// (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive Perturbations",
/// IEEE S&P Workshops 2019) are designed against: a thief that inverts the softmax and
/// regresses its logits on the answers' log-probabilities, or regresses its probabilities on
/// the answers directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SoftLoss {
    /// Softmax cross-entropy `−Σ t log softmax(z)` (the default of [`train`]).
    #[default]
    CrossEntropy,
    /// Logit regression: `½‖(z − z̄) − (log t − mean log t)‖²`, with targets below `1e-8`
    /// (zeros included) clamped to `1e-8` before the logarithm.
    LogitMse,
    /// Probability regression: `½‖softmax(z) − t‖²`.
    ProbabilityMse,
}

/// Like [`train`], but fits soft targets with `soft_loss` instead of cross-entropy (hard labels
/// are still fitted by cross-entropy).
pub fn train_with_loss(
    net: &mut Network,
    x: &Tensor,
    y: &Targets,
    cfg: &TrainConfig,
    soft_loss: SoftLoss,
) -> Result<TrainReport, MlError> {
    crate::train::train(net, x, y, cfg, soft_loss, None)
}

/// Mean softmax cross-entropy of `net` on `(x, y)` and its gradient with respect to every
/// parameter (same layout as `net.params`; empty for parameter-free layers).
pub fn loss_and_gradients(
    net: &Network,
    x: &Tensor,
    y: &Targets,
) -> Result<(f64, Vec<LayerParams>), MlError> {
    crate::train::loss_and_gradients(net, x, y)
}

/// A native model: network + model card, stored as `model.safetensors` + `model.json`.
#[derive(Clone, Debug)]
pub struct NativeModel {
    /// The network.
    pub network: Network,
    /// The model card.
    pub card: ModelCard,
}

impl NativeModel {
    /// Loads `dir/model.safetensors` and `dir/model.json`.
    ///
    /// Every missing or malformed part gives an error naming the file and the problem.
    pub fn load(dir: &Path) -> Result<NativeModel, MlError> {
        Self::load_impl(dir)
    }

    /// Writes `dir/model.safetensors` and `dir/model.json` (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), MlError> {
        self.save_impl(dir)
    }
}

impl Model for NativeModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        self.network.forward(x)
    }
    fn input_gradient(&self, x: &Tensor, target: &GradTarget) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        self.network.input_gradient(x, target)
    }
}

/// Fraction of `x` whose argmax prediction equals `y`.
pub fn accuracy(model: &dyn Model, x: &Tensor, y: &[usize]) -> Result<f64, ModelError> {
    let pred = predict_labels(model, x)?;
    let hits = pred.iter().zip(y).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y.len().max(1) as f64)
}

/// Fraction of `x` on which two models predict the same label (fidelity).
pub fn agreement(a: &dyn Model, b: &dyn Model, x: &Tensor) -> Result<f64, ModelError> {
    let pa = predict_labels(a, x)?;
    let pb = predict_labels(b, x)?;
    let same = pa.iter().zip(&pb).filter(|(p, q)| p == q).count();
    Ok(same as f64 / pa.len().max(1) as f64)
}

/// Argmax labels, evaluated in batches of 1,024.
pub fn predict_labels(model: &dyn Model, x: &Tensor) -> Result<Vec<usize>, ModelError> {
    let n = x.batch_size();
    let mut out = Vec::with_capacity(n);
    let mut s = 0;
    while s < n {
        let e = (s + 1024).min(n);
        out.extend(model.logits(&x.slice_rows(s, e))?.argmax_rows());
        s = e;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Plateau;

    #[test]
    fn plateau_stops_only_after_patience_epochs_without_enough_gain() {
        let p = Plateau {
            patience: 2,
            min_gain: 0.01,
        };
        assert!(!p.reached(&[]));
        assert!(!p.reached(&[0.5, 0.5]), "needs more than `patience` epochs");
        assert!(p.reached(&[0.5, 0.5, 0.5]));
        // A gain of at least min_gain in the last two epochs keeps training.
        assert!(!p.reached(&[0.5, 0.5, 0.52]));
        assert!(!p.reached(&[0.5, 0.52, 0.51]));
        assert!(p.reached(&[0.5, 0.505, 0.509]));
        // A drop after a peak is no progress: compared with the best before the window.
        assert!(p.reached(&[0.3, 0.9, 0.8, 0.85]));
        assert!(!p.reached(&[0.3, 0.9, 0.8, 0.95]));
        // min_gain 0: any improvement counts.
        let any = Plateau {
            patience: 1,
            min_gain: 0.0,
        };
        assert!(!any.reached(&[0.5, 0.5001]));
        assert!(any.reached(&[0.5, 0.5]));
        assert!(Plateau::default().check().is_ok());
    }
}
