//! Supply-chain pins (issue #8, item 3): the named mismatch error through the one-call API.

use std::fs;

use mamori_artifact::{check_pins, ArtifactError, PinSet};

#[test]
fn a_swapped_base_model_stops_with_the_file_and_both_hashes() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    fs::create_dir(&base).unwrap();
    fs::write(base.join("model.safetensors"), b"trusted weights").unwrap();
    fs::write(base.join("model.json"), b"{}").unwrap();
    let data = d.path().join("train.csv");
    fs::write(&data, b"1,2,3\n").unwrap();
    let pin_file = d.path().join("pins.toml");
    fs::write(
        &pin_file,
        PinSet::create(&[base.clone(), data.clone()])
            .unwrap()
            .to_toml(),
    )
    .unwrap();
    check_pins(&pin_file, &[base.clone(), data.clone()]).unwrap();

    fs::write(base.join("model.safetensors"), b"trojaned weights").unwrap();
    let err = check_pins(&pin_file, &[data.clone(), base.clone()]).unwrap_err();
    match &err {
        ArtifactError::PinMismatch {
            file,
            expected,
            actual,
        } => {
            assert!(file.ends_with("model.safetensors"));
            assert_eq!(expected, &mamori_core::hash::sha256_hex(b"trusted weights"));
            assert_eq!(actual, &mamori_core::hash::sha256_hex(b"trojaned weights"));
        }
        other => panic!("expected PinMismatch, got {other}"),
    }
    assert!(err.to_string().starts_with(&format!(
        "pin mismatch for {}: expected sha256 ",
        base.join("model.safetensors").display()
    )));
}
