//! `NativeModel` save / load / from_bytes round trips, and every malformed-file case.

use mamori_core::{Model, ModelCard, Tensor};
use mamori_ml::{Arch, MlError, NativeModel, Network, CARD_FILE, WEIGHTS_FILE};
use std::path::Path;

fn card() -> ModelCard {
    ModelCard {
        name: "rt".into(),
        architecture: "cnn".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Default::default(),
        class_names: (0..3).map(|c| format!("c{c}")).collect(),
        output_kind: Default::default(),
        dataset: Default::default(),
        test_accuracy: Some(0.5),
        training_time_s: Some(1.0),
        seed: Some(9),
        extra: Default::default(),
    }
}

fn model() -> NativeModel {
    NativeModel::new(Network::new(&Arch::Cnn, &[2, 12, 12], 3, 4), card())
}

fn input() -> Tensor {
    let x: Vec<f32> = (0..2 * 2 * 144)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    Tensor::new(vec![2, 2, 12, 12], x).unwrap()
}

#[test]
fn save_load_round_trip_preserves_network_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    m.save(dir.path()).unwrap();
    let back = NativeModel::load(dir.path()).unwrap();
    assert_eq!(back.network, m.network);
    assert_eq!(back.card, m.card);
    assert_eq!(back.card.input_shape, vec![2, 12, 12]);
    assert_eq!(m.logits(&input()).unwrap(), back.logits(&input()).unwrap());
    let w = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let c = std::fs::read(dir.path().join(CARD_FILE)).unwrap();
    let mem = NativeModel::from_bytes(&w, &c).unwrap();
    assert_eq!(mem.network, m.network);
}

fn write_pair(dir: &Path, weights: &[u8], card: &[u8]) {
    std::fs::write(dir.join(WEIGHTS_FILE), weights).unwrap();
    std::fs::write(dir.join(CARD_FILE), card).unwrap();
}

fn load_err(weights: &[u8], card: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), weights, card);
    let e = NativeModel::load(dir.path()).unwrap_err();
    assert!(matches!(e, MlError::InvalidModel { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = NativeModel::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains(CARD_FILE) && e.contains("cannot read"), "{e}");
    let m = model();
    std::fs::write(dir.path().join(CARD_FILE), m.card_bytes().unwrap()).unwrap();
    let e = NativeModel::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("cannot read"), "{e}");
}

#[test]
fn malformed_card_is_rejected_with_the_file_and_field() {
    let m = model();
    let w = m.weights_bytes().unwrap();
    let e = load_err(&w, b"{not json");
    assert!(
        e.contains(CARD_FILE) && e.contains("not a model card"),
        "{e}"
    );

    let mut card: serde_json::Value = serde_json::from_slice(&m.card_bytes().unwrap()).unwrap();
    card["architecture_detail"] = serde_json::json!({"layers": "x"});
    let e = load_err(&w, &serde_json::to_vec(&card).unwrap());
    assert!(e.contains("architecture_detail"), "{e}");

    let mut card: serde_json::Value = serde_json::from_slice(&m.card_bytes().unwrap()).unwrap();
    card["input_shape"] = serde_json::json!([1, 12, 12]);
    let e = load_err(&w, &serde_json::to_vec(&card).unwrap());
    assert!(
        e.contains("differs from architecture_detail.input_shape"),
        "{e}"
    );

    let mut card: serde_json::Value = serde_json::from_slice(&m.card_bytes().unwrap()).unwrap();
    card["class_names"] = serde_json::json!(["a", "b"]);
    let e = load_err(&w, &serde_json::to_vec(&card).unwrap());
    assert!(
        e.contains("2 class names for a network with 3 outputs"),
        "{e}"
    );

    let mut card: serde_json::Value = serde_json::from_slice(&m.card_bytes().unwrap()).unwrap();
    card["architecture_detail"]["layers"][0]["in_channels"] = serde_json::json!(5);
    let e = load_err(&w, &serde_json::to_vec(&card).unwrap());
    assert!(e.contains("expects 5 input channels"), "{e}");
}

#[test]
fn malformed_weights_are_rejected_with_the_file_and_tensor() {
    let m = model();
    let c = m.card_bytes().unwrap();
    let w = m.weights_bytes().unwrap();
    let e = load_err(&w[..w.len() / 2], &c);
    assert!(
        e.contains(WEIGHTS_FILE) && e.contains("not a safetensors file"),
        "{e}"
    );
    let e = load_err(b"", &c);
    assert!(e.contains("not a safetensors file"), "{e}");

    // Weights of a different network: shape mismatch on the first conv.
    let other = NativeModel::new(Network::new(&Arch::Cnn, &[1, 12, 12], 3, 4), card());
    let e = load_err(&other.weights_bytes().unwrap(), &c);
    assert!(
        e.contains("tensor layers.0.weight has shape [32, 1, 3, 3]"),
        "{e}"
    );

    // Weights of an MLP for a CNN card: missing tensor.
    let mlp = NativeModel::new(
        Network::new(&Arch::Mlp { hidden: vec![4] }, &[2, 12, 12], 3, 4),
        card(),
    );
    let e = load_err(&mlp.weights_bytes().unwrap(), &c);
    assert!(e.contains("missing tensor layers.0.weight"), "{e}");

    // Non-finite values.
    let mut bad = m.clone();
    bad.network.params[0].weight[3] = f32::NAN;
    let e = load_err(&bad.weights_bytes().unwrap(), &c);
    assert!(e.contains("layers.0.weight holds non-finite values"), "{e}");

    // from_bytes names the logical file.
    let e = NativeModel::from_bytes(b"xx", &c).unwrap_err().to_string();
    assert!(e.starts_with(WEIGHTS_FILE), "{e}");
}

#[test]
fn wrong_input_shape_and_bad_targets_are_errors() {
    let m = model();
    let x = Tensor::zeros(vec![1, 1, 12, 12]);
    assert!(m.logits(&x).is_err());
    let e = m
        .input_gradient(&input(), &mamori_core::GradTarget::Logit(vec![0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 target classes for a batch of 2"), "{e}");
    let e = m
        .input_gradient(&input(), &mamori_core::GradTarget::Logit(vec![0, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("class 3 out of range"), "{e}");
}
