//! Randomly damaged model files — a native model's weights (`model.safetensors`) and card
//! (`model.json`), and an exported `.onnx` file: loading returns the model or an error naming
//! the file, never a panic; a damaged file that still loads answers a well-formed input without
//! panicking either. Seeded ([`mamori_core::testing::corrupted`]); a failure names the file and
//! the seed.

use mamori_core::testing::corrupted;
use mamori_core::{ModelCard, Tensor};
use mamori_ml::{export_onnx, load_model, Arch, NativeModel, Network, CARD_FILE, WEIGHTS_FILE};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Damaged copies per file.
const SEEDS: u64 = 250;

fn model(arch: &Arch) -> NativeModel {
    let card = ModelCard::classifier("fz", "mlp", &[], 3);
    NativeModel::new(Network::new(arch, &[1, 12, 12], 3, 4), card)
}

/// Loads `path`, then (when it loaded) answers one input of the loaded card's shape when that
/// shape is small. Panics name `what` and `seed`; returns whether the model loaded.
fn load_and_answer(path: &Path, what: &str, seed: u64) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| match load_model(path) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    || msg.contains(CARD_FILE)
                    || msg.contains(WEIGHTS_FILE),
                "{what}, seed {seed}: the error does not name the file: {msg}"
            );
            false
        }
        Ok(m) => {
            let shape = m.card().input_shape.clone();
            let n: usize = shape.iter().product();
            if (1..=10_000).contains(&n) {
                let mut s = vec![1];
                s.extend_from_slice(&shape);
                let x = Tensor::new(s, vec![0.5; n]).unwrap();
                // An error is fine (a damaged graph may not run); a panic is not.
                let _ = m.logits(&x);
            }
            true
        }
    }));
    match r {
        Ok(loaded) => loaded,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}, seed {seed}: panicked: {msg}")
        }
    }
}

#[test]
fn damaged_native_model_files_are_refused_with_the_file_named() {
    for arch in [Arch::Mlp { hidden: vec![8] }, Arch::Cnn] {
        let dir = tempfile::tempdir().unwrap();
        model(&arch).save(dir.path()).unwrap();
        for file in [WEIGHTS_FILE, CARD_FILE] {
            let path = dir.path().join(file);
            let valid = std::fs::read(&path).unwrap();
            let mut refused = 0;
            for seed in 0..SEEDS {
                std::fs::write(&path, corrupted(&valid, seed)).unwrap();
                refused += usize::from(!load_and_answer(dir.path(), file, seed));
            }
            std::fs::write(&path, &valid).unwrap();
            eprintln!("{arch:?} {file}: {refused} of {SEEDS} damaged copies refused");
            assert!(
                refused > SEEDS as usize / 2,
                "{file}: only {refused} of {SEEDS} damaged copies refused"
            );
        }
    }
}

#[test]
fn damaged_onnx_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fz.onnx");
    export_onnx(&model(&Arch::Mlp { hidden: vec![8] }), &path).unwrap();
    let valid = std::fs::read(&path).unwrap();
    // Without its card (a bare .onnx file), so the graph alone is parsed.
    let _ = std::fs::remove_file(dir.path().join("fz.onnx.json"));
    let _ = std::fs::remove_file(dir.path().join("fz.json"));
    assert!(load_and_answer(&path, "valid onnx", 0));
    let mut refused = 0;
    for seed in 0..SEEDS {
        std::fs::write(&path, corrupted(&valid, seed)).unwrap();
        refused += usize::from(!load_and_answer(&path, "fz.onnx", seed));
    }
    eprintln!("fz.onnx: {refused} of {SEEDS} damaged copies refused");
    // Protobuf tolerates many edits (a changed weight byte is still a model): at least a
    // quarter of the copies must be refused, which shows the damage reaches the parser.
    assert!(
        refused > SEEDS as usize / 4,
        "only {refused} of {SEEDS} refused"
    );
}
