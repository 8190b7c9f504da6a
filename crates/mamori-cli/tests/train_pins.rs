//! Issue #8 item 3: training from a pre-trained base checks the base's and the dataset files'
//! hashes against a pin file; a mismatch stops the run with an error naming the file.

mod common;

use common::{data_dir, mamori_with_data};
use std::path::Path;
use std::process::Output;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn run(home: &Path, args: &[String]) -> Output {
    mamori_with_data(home).args(args).output().unwrap()
}

/// `mamori train` of a softmax model on digits for `epochs`, writing `out`, plus `extra` flags.
fn train(home: &Path, epochs: u32, out: &Path, extra: &[String]) -> Output {
    let mut args: Vec<String> = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "softmax",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--epochs".into(),
        epochs.to_string(),
        "--out".into(),
        s(out),
    ]);
    args.extend_from_slice(extra);
    run(home, &args)
}

/// `mamori model pin --out PINS FILES...`.
fn pin(home: &Path, pins: &Path, files: &[&Path]) {
    let mut args = vec!["model".into(), "pin".into(), "--out".into(), s(pins)];
    args.extend(files.iter().map(|f| s(f)));
    let out = run(home, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_refused_naming(out: &Output, file: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(file), "{err}");
}

#[test]
fn pinned_fine_tuning_runs_and_mismatches_stop_it_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let base = tmp.path().join("base");
    let tuned = tmp.path().join("tuned");
    assert_ok(&train(&home, 3, &base, &[]));

    // Pin the base model and the digits file.
    let pins = tmp.path().join("pins.toml");
    let digits = data_dir().join("digits/digits.csv.gz");
    pin(&home, &pins, &[&base, &digits]);
    let pinned =
        |base: &Path, pins: &Path| vec!["--base".into(), s(base), "--pins".into(), s(pins)];

    // Pinned fine-tuning works and records its base in the card.
    assert_ok(&train(&home, 2, &tuned, &pinned(&base, &pins)));
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
    let refused = tmp.path().join("x");
    let out = train(&home, 1, &refused, &pinned(&base, &pins));
    assert_refused_naming(&out, "model.safetensors");
    assert!(!refused.exists(), "a refused run must not write a model");

    // A dataset that is not pinned stops the run too, naming the file.
    let only_base = tmp.path().join("only-base.toml");
    pin(&home, &only_base, &[&base]);
    let out = train(
        &home,
        1,
        &tmp.path().join("y"),
        &["--pins".into(), s(&only_base)],
    );
    assert_refused_naming(&out, "digits.csv.gz");
}
