//! ONNX conformance: tract (through [`OnnxModel`]) must reproduce the outputs that
//! `onnx.reference.ReferenceEvaluator` computed for a CNN built with Python's `onnx` package
//! (fixtures and the script that made them in `tests/fixtures/`).

use mamori_core::{Model, OutputKind, Tensor};
use mamori_ml::onnx::card_path;
use mamori_ml::OnnxModel;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn npy(path: &Path) -> Tensor {
    let a = mamori_data::npy::read_npy(path).unwrap();
    Tensor::new(a.shape, a.values.iter().map(|&v| v as f32).collect()).unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let worst = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= TOL, "{what}: max |diff| {worst} > {TOL}");
}

/// Checks both fixture graphs in `dir` against their reference outputs.
fn check_dir(dir: &Path) {
    let x = npy(&dir.join("cnn_input.npy"));
    let probs = OnnxModel::load(&dir.join("cnn_probs.onnx")).unwrap();
    assert_eq!(probs.card().output_kind, OutputKind::Probabilities);
    assert_eq!(probs.card().input_shape, vec![1, 28, 28]);
    assert_eq!(probs.card().class_names.len(), 10);
    assert!(probs.has_symbolic_batch());
    let want_p = npy(&dir.join("cnn_probs_expected.npy"));
    assert_close(
        &probs.predict(&x).unwrap(),
        &want_p,
        "probabilities (softmax graph)",
    );

    let logits = OnnxModel::load(&dir.join("cnn_logits.onnx")).unwrap();
    assert_eq!(logits.card().output_kind, OutputKind::Logits);
    let want_l = npy(&dir.join("cnn_logits_expected.npy"));
    assert_close(&logits.logits(&x).unwrap(), &want_l, "logits (no softmax)");
    // Same weights: softmax of the logits graph equals the softmax graph.
    assert_close(
        &logits.predict(&x).unwrap(),
        &want_p,
        "softmax(logits) vs probabilities",
    );
    // logits() of a probabilities graph are log-probabilities: softmax gives them back.
    let mut lp = probs.logits(&x).unwrap();
    mamori_core::softmax_rows(&mut lp);
    assert_close(&lp, &want_p, "softmax(log-probabilities)");
}

#[test]
fn tract_matches_onnx_reference_evaluator() {
    check_dir(&fixtures());
}

#[test]
fn batch_dimension_is_dynamic() {
    let dir = fixtures();
    let x = npy(&dir.join("cnn_input.npy"));
    let m = OnnxModel::load(&dir.join("cnn_logits.onnx")).unwrap();
    let all = m.logits(&x).unwrap();
    for (s, e) in [(0, 1), (1, 4), (4, 8), (2, 3)] {
        let part = m.logits(&x.slice_rows(s, e)).unwrap();
        assert_close(&part, &all.slice_rows(s, e), &format!("rows {s}..{e}"));
    }
    // A batch larger than any seen before.
    let big = Tensor::concat(&[x.clone(), x.clone(), x.clone()]).unwrap();
    assert_eq!(m.logits(&big).unwrap().shape(), &[24, 10]);
}

/// Regenerates the fixtures with Python's `onnx` package and checks tract against the fresh
/// reference outputs. Skipped (with a message) when `onnx` is not importable, except in CI
/// (`CI=true`), where `.ci/run` installs it and a missing package is a failure.
#[test]
fn regenerated_fixtures_match_when_python_onnx_is_available() {
    if !mamori_core::testing::python_imports_or_skip("onnx, numpy", "onnx numpy") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let st = Command::new("python3")
        .arg(fixtures().join("make_onnx_cnn.py"))
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success(), "make_onnx_cnn.py failed");
    check_dir(out.path());
    // The generator is deterministic: the committed reference outputs are what it produces.
    for f in [
        "cnn_input.npy",
        "cnn_probs_expected.npy",
        "cnn_logits_expected.npy",
    ] {
        assert_close(&npy(&out.path().join(f)), &npy(&fixtures().join(f)), f);
    }
}

#[test]
fn a_card_beside_the_file_is_used_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.onnx");
    std::fs::copy(fixtures().join("cnn_logits.onnx"), &f).unwrap();
    let inferred = OnnxModel::load(&f).unwrap();
    assert_eq!(inferred.card().name, "m");
    assert_eq!(inferred.card().architecture, "onnx");
    let mut card = inferred.card().clone();
    card.name = "fashion".into();
    card.class_names = (0..10).map(|i| format!("class{i}")).collect();
    std::fs::write(card_path(&f), serde_json::to_string(&card).unwrap()).unwrap();
    let m = OnnxModel::load(&f).unwrap();
    assert_eq!(m.card().name, "fashion");
    assert_eq!(m.card().class_names[3], "class3");

    card.class_names.pop();
    std::fs::write(card_path(&f), serde_json::to_string(&card).unwrap()).unwrap();
    let e = OnnxModel::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("m.onnx: invalid model: the card names 9 classes but the graph outputs 10"),
        "{e}"
    );

    card.input_shape = vec![784];
    std::fs::write(card_path(&f), serde_json::to_string(&card).unwrap()).unwrap();
    let e = OnnxModel::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("the card's input_shape [784] differs from the graph's input [1, 28, 28]"),
        "{e}"
    );

    std::fs::write(card_path(&f), "{not json").unwrap();
    let e = OnnxModel::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("m.onnx.json: invalid model: bad model card"),
        "{e}"
    );
}

#[test]
fn bad_files_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("junk.onnx");
    std::fs::write(&f, b"\x08\x07 this is not protobuf \xff\xff\xff").unwrap();
    let e = OnnxModel::load(&f).unwrap_err().to_string();
    assert!(e.contains("junk.onnx: invalid model:"), "{e}");
    std::fs::write(&f, b"").unwrap();
    let e = OnnxModel::load(&f).unwrap_err().to_string();
    assert!(e.contains("junk.onnx: invalid model: empty file"), "{e}");
    let e = OnnxModel::load(&d.path().join("absent.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.onnx"), "{e}");
    // Wrong input shape at run time is an error, not a panic.
    let m = OnnxModel::load(&fixtures().join("cnn_logits.onnx")).unwrap();
    let e = m
        .logits(&Tensor::zeros(vec![2, 784]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("input shape [784] does not match"), "{e}");
}
