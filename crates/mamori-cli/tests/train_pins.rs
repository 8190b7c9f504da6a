//! Issue #8 item 3: training from a pre-trained base checks the base's and the dataset files'
//! hashes against a pin file; a mismatch stops the run with an error naming the file.

mod common;

use common::mamori;
use std::path::Path;

fn data_dir() -> std::path::PathBuf {
    mamori_data::resolve_data_dir(None)
}

fn run(home: &Path, args: &[&str]) -> std::process::Output {
    mamori(home)
        .arg("--data-dir")
        .arg(data_dir())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pinned_fine_tuning_runs_and_mismatches_stop_it_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = tmp.path().join("base");
    let tuned = tmp.path().join("tuned");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let out = run(
        &home,
        &[
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "3",
            "--quiet",
            "--out",
            &s(&base),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pin the base model and the digits file.
    let pins = tmp.path().join("pins.toml");
    let digits = data_dir().join("digits/digits.csv.gz");
    let out = run(
        &home,
        &["model", "pin", "--out", &s(&pins), &s(&base), &s(&digits)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pinned fine-tuning works and records its base in the card.
    let out = run(
        &home,
        &[
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "2",
            "--quiet",
            "--base",
            &s(&base),
            "--pins",
            &s(&pins),
            "--out",
            &s(&tuned),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tuned.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["extra"]["base_model"]["reference"], s(&base));
    assert!(
        card["test_accuracy"].as_f64().unwrap() > 0.9,
        "{}",
        card["test_accuracy"]
    );

    // A swapped base model (one weight byte changed) stops the run, naming the file.
    let w = base.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&w, &bytes).unwrap();
    let out = run(
        &home,
        &[
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "1",
            "--quiet",
            "--base",
            &s(&base),
            "--pins",
            &s(&pins),
            "--out",
            &s(&tmp.path().join("x")),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        !tmp.path().join("x").exists(),
        "a refused run must not write a model"
    );

    // A dataset that is not pinned stops the run too, naming the file.
    let only_base = tmp.path().join("only-base.toml");
    let out = run(&home, &["model", "pin", "--out", &s(&only_base), &s(&base)]);
    assert!(out.status.success());
    let out = run(
        &home,
        &[
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "1",
            "--quiet",
            "--pins",
            &s(&only_base),
            "--out",
            &s(&tmp.path().join("y")),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digits.csv.gz"), "{err}");
}
