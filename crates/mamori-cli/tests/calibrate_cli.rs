//! `mamori calibrate` end to end through the binary: thresholds stored beside the model, and
//! bad input refused with a message naming the problem.

mod common;

use common::{data_dir, mamori, tiny_model};
use mamori_core::ModelCard;
use mamori_ml::{Arch, NativeModel, Network};
use std::path::Path;

fn calibrate(home: &Path, model: &Path, extra: &[&str]) -> std::process::Output {
    mamori(home)
        .arg("calibrate")
        .arg("--model")
        .arg(model)
        .args(["--benign", "fashion-mnist", "--data-dir"])
        .arg(data_dir())
        .args(["--clients", "4", "--queries", "100", "--tail-clients", "10"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn calibrate_stores_every_detector_threshold_beside_the_model() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("fashion-mlp");
    let card = ModelCard::classifier("fashion-mlp", "mlp", &[1, 28, 28], 10);
    let net = Network::new(&Arch::Mlp { hidden: vec![8] }, &[1, 28, 28], 10, 2);
    NativeModel::new(net, card).save(&dir).unwrap();
    let o = calibrate(d.path(), &dir, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("(10 clients, persist 1)"), "{stdout}");
    // Fashion-MNIST inputs are images: the synthetic-input detector is fitted.
    assert!(stdout.contains("synthetic: smoothness <"), "{stdout}");
    let c = mamori_detect::Calibration::load(&dir).unwrap();
    assert!(c.is_current());
    assert_eq!(c.report.prada_clients, 10);
    assert!(c.detectors.synthetic.threshold.is_some());
    assert!(c.detectors.prada.delta <= 0.95);
    assert_eq!(c.report.foreign, None);
    assert!(stdout.contains("(default; --foreign fits it)"), "{stdout}");
    // With foreign benign traffic (MNIST digits sent to this Fashion-MNIST model) the
    // out-of-distribution threshold is fitted on it, or kept and said so.
    let o = calibrate(d.path(), &dir, &["--foreign", "mnist"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = mamori_detect::Calibration::load(&dir).unwrap();
    assert_eq!(c.report.foreign.as_deref(), Some("mnist"));
    assert!(
        stdout.contains("fitted on mnist") || stdout.contains("kept: mnist"),
        "{stdout}"
    );
}

#[test]
fn calibrate_refuses_bad_input_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    // A model whose input shape does not match the benign data.
    let tiny = d.path().join("tiny");
    tiny_model(&tiny, "tiny");
    let o = calibrate(d.path(), &tiny, &[]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("shape"), "{e}");
    // An out-of-range false-positive rate.
    let o = calibrate(d.path(), &tiny, &["--fpr", "2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fpr"));
    // A foreign dataset that cannot be loaded is named.
    let o = calibrate(d.path(), &tiny, &["--foreign", "no-such-dataset"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("foreign dataset `no-such-dataset`"), "{e}");
    // A model path that does not exist is named.
    let missing = d.path().join("no-such-model");
    let o = calibrate(d.path(), &missing, &[]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no-such-model"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}
