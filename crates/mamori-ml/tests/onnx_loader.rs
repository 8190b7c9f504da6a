//! `load_model` picks the runtime from the path: `.onnx` files (or a directory holding exactly
//! one) load as ONNX; anything unrecognised is a clear error naming the path.

use mamori_ml::load_model;

/// The error of a load that must fail.
fn err(p: &Path) -> String {
    match load_model(p) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    }
}
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn onnx_files_and_directories_load() {
    let m = load_model(&fixture("cnn_probs.onnx")).unwrap();
    assert_eq!(m.card().input_shape, vec![1, 28, 28]);
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("cnn_logits.onnx"), d.path().join("served.ONNX")).unwrap();
    let m = load_model(d.path()).unwrap();
    assert_eq!(m.card().name, "served");
}

#[test]
fn unrecognised_paths_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let e = err(d.path());
    assert!(e.contains("not a model directory: no model.json"), "{e}");
    std::fs::copy(fixture("cnn_logits.onnx"), d.path().join("a.onnx")).unwrap();
    std::fs::copy(fixture("cnn_logits.onnx"), d.path().join("b.onnx")).unwrap();
    let e = err(d.path());
    assert!(e.contains("2 .onnx files here"), "{e}");
    let f = d.path().join("weights.bin");
    std::fs::write(&f, b"x").unwrap();
    let e = err(&f);
    assert!(e.contains("weights.bin: unrecognised model"), "{e}");
    let e = err(&d.path().join("nope"));
    assert!(e.contains("nope: no such file or directory"), "{e}");
}
