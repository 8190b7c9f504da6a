//! Shared fixtures: a small model directory.
#![allow(dead_code)]

use std::path::Path;

use mamori_core::{DatasetRef, FileDigest, ModelCard, Normalisation, OutputKind};

/// A tiny model card with one dataset file and a base model.
pub fn card() -> ModelCard {
    let mut extra = serde_json::Map::new();
    extra.insert("base_model".into(), "fmnist-cnn-base".into());
    ModelCard {
        name: "tiny".into(),
        architecture: "logistic".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![4],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation::default(),
        class_names: vec!["a".into(), "b".into()],
        output_kind: OutputKind::Logits,
        dataset: DatasetRef {
            name: "digits".into(),
            files: vec![FileDigest {
                path: "digits/optdigits.tra".into(),
                sha256: mamori_core::hash::sha256_hex(b"train"),
            }],
        },
        test_accuracy: Some(0.5),
        training_time_s: None,
        seed: Some(7),
        extra,
    }
}

/// Writes `model.json` and a 96-byte stand-in `model.safetensors` into `dir`.
pub fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.json"), serde_json::to_vec(&card()).unwrap()).unwrap();
    let weights: Vec<u8> = (0..96u8).map(|i| i.wrapping_mul(37)).collect();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
}
