//! `mamori data` and `mamori export --onnx` end to end through the binary.

use mamori_core::{DatasetRef, ModelCard, Normalisation, OutputKind};
use mamori_ml::{Arch, NativeModel, Network};
use std::process::Command;

fn mamori() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mamori"))
}

#[test]
fn export_onnx_writes_the_file_and_card_and_checks_them() {
    let d = tempfile::tempdir().unwrap();
    let net = Network::new(&Arch::Mlp { hidden: vec![8] }, &[64], 10, 1);
    let card = ModelCard {
        name: "digits-mlp".into(),
        architecture: "mlp".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![64],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation {
            scale: 1.0 / 16.0,
            mean: 0.0,
            std: 1.0,
        },
        class_names: (0..10).map(|c| c.to_string()).collect(),
        output_kind: OutputKind::Logits,
        dataset: DatasetRef::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: Some(1),
        extra: Default::default(),
    };
    let dir = d.path().join("m");
    NativeModel::new(net, card).save(&dir).unwrap();
    let out = d.path().join("m.onnx");
    let o = mamori()
        .args(["export", "--onnx", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("check: ONNX (tract) vs native logits on 16 inputs"),
        "{stdout}"
    );
    assert!(out.is_file() && d.path().join("m.onnx.json").is_file());

    let o = mamori()
        .args(["export", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose an export format: --onnx"));
}

#[test]
fn data_info_and_missing_data_hint() {
    let o = mamori().args(["data", "info", "digits"]).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(s.contains("train / test:  1346 / 451"), "{s}");
    assert!(s.contains("sample shape:  [64]"), "{s}");

    let empty = tempfile::tempdir().unwrap();
    let o = mamori()
        .args(["data", "info", "mnist", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("run `mamori data fetch mnist`"), "{e}");
    let o = mamori()
        .args(["data", "verify", "digits", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("MISSING (run `mamori data fetch digits`)"));
}
