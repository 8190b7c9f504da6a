//! The model card: what a served model is, what it takes, and where it came from.
//!
//! Written as `model.json` beside `model.safetensors` by `mamori train`; the gateway validates
//! every input against it.

use serde::{Deserialize, Serialize};

/// SHA-256 of one file, with the path it was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Path as given when the file was read (informational).
    pub path: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// The dataset a model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct DatasetRef {
    /// Dataset name (`fashion-mnist`, `mnist`, `digits`, or a path).
    pub name: String,
    /// Every file read, with its digest.
    pub files: Vec<FileDigest>,
}

/// How raw data values map to model inputs: `input = (raw * scale - mean) / std`.
///
/// For images, raw values are bytes 0..=255 and `scale = 1/255`, `mean = 0`, `std = 1`, so model
/// inputs lie in `[0, 1]`. The gateway uses this to accept UINT8 tensors as well as FP32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// Multiplier applied to raw values first.
    pub scale: f32,
    /// Subtracted after scaling.
    pub mean: f32,
    /// Divisor applied last.
    pub std: f32,
}

impl Default for Normalisation {
    fn default() -> Self {
        Self {
            scale: 1.0 / 255.0,
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl Normalisation {
    /// Maps one raw value to a model input value.
    pub fn apply(&self, raw: f32) -> f32 {
        (raw * self.scale - self.mean) / self.std
    }
}

/// What a model's raw output tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Unnormalised scores; softmax gives probabilities.
    #[default]
    Logits,
    /// Already probabilities.
    Probabilities,
}

/// The model card (`model.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model name; the gateway serves the model under this name.
    pub name: String,
    /// Architecture identifier (`logistic`, `softmax`, `mlp`, `cnn`, `onnx`).
    pub architecture: String,
    /// Free-form architecture detail (layer list), for humans.
    #[serde(default)]
    pub architecture_detail: serde_json::Value,
    /// Shape of one input sample, e.g. `[1, 28, 28]` or `[64]`.
    pub input_shape: Vec<usize>,
    /// Input dtype as the Open Inference Protocol names it (`FP32`).
    pub input_dtype: String,
    /// Valid range of (normalised) input values, inclusive.
    pub input_range: [f32; 2],
    /// Raw → input mapping.
    pub normalisation: Normalisation,
    /// Class names, index = class id.
    pub class_names: Vec<String>,
    /// What the model's output tensor holds.
    #[serde(default)]
    pub output_kind: OutputKind,
    /// Training data provenance.
    pub dataset: DatasetRef,
    /// Accuracy on the held-out test split.
    pub test_accuracy: Option<f64>,
    /// Wall-clock training time in seconds.
    pub training_time_s: Option<f64>,
    /// Seed used for initialisation and shuffling.
    pub seed: Option<u64>,
    /// Extra metadata (epochs, optimizer, calibration...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ModelCard {
    /// A card for an in-memory FP32 classifier with inputs in `[0, 1]`, no normalisation,
    /// logits out and classes named `"0"`, `"1"`, …: what benchmarks and experiments give the
    /// models they train on the fly.
    pub fn classifier(
        name: &str,
        architecture: &str,
        input_shape: &[usize],
        classes: usize,
    ) -> ModelCard {
        ModelCard {
            name: name.into(),
            architecture: architecture.into(),
            architecture_detail: serde_json::Value::Null,
            input_shape: input_shape.to_vec(),
            input_dtype: "FP32".into(),
            input_range: [0.0, 1.0],
            normalisation: Normalisation::default(),
            class_names: (0..classes).map(|i| i.to_string()).collect(),
            output_kind: OutputKind::Logits,
            dataset: DatasetRef::default(),
            test_accuracy: None,
            training_time_s: None,
            seed: None,
            extra: Default::default(),
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Number of values per input sample.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_round_trips_through_json() {
        let card = ModelCard {
            name: "fmnist-cnn".into(),
            architecture: "cnn".into(),
            architecture_detail: serde_json::Value::Null,
            input_shape: vec![1, 28, 28],
            input_dtype: "FP32".into(),
            input_range: [0.0, 1.0],
            normalisation: Normalisation::default(),
            class_names: (0..10).map(|i| i.to_string()).collect(),
            output_kind: OutputKind::Logits,
            dataset: DatasetRef::default(),
            test_accuracy: Some(0.9),
            training_time_s: None,
            seed: Some(1),
            extra: Default::default(),
        };
        let s = serde_json::to_string(&card).unwrap();
        let back: ModelCard = serde_json::from_str(&s).unwrap();
        assert_eq!(card, back);
        let plain = ModelCard::classifier("fmnist-cnn", "cnn", &[1, 28, 28], 10);
        assert_eq!(
            plain,
            ModelCard {
                test_accuracy: None,
                seed: None,
                ..card
            }
        );
        assert_eq!(back.input_len(), 784);
        assert!((Normalisation::default().apply(255.0) - 1.0).abs() < 1e-6);
    }
}
