//! ONNX models through the artifact layer (issue #8): an exported ONNX model directory is
//! signed, encrypted and served decrypted in memory, answering exactly as the native model it
//! came from; every way of getting it wrong is refused with a message naming the problem.

mod common;

use common::{
    create_key, infer_json, mamori, ok, output_data, serve_refuses, start_serve_logged,
    start_serve_with, stop, tiny_model,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The served probabilities of a fixed batch of 4 inputs.
fn probabilities(url: &str, key: &str) -> Vec<f64> {
    let data: Vec<f32> = (0..64).map(|i| (i % 17) as f32 / 16.0).collect();
    let rows: Vec<Vec<f32>> = data.chunks(16).map(|r| r.to_vec()).collect();
    let v = infer_json(url, "onnx-mlp", key, &rows);
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([4, 3]));
    output_data(&v)
}

fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `model sign` (with a signing key created in, and trusted by, the home) then `model keygen`
/// and `model encrypt` into `<dir>.enc`; returns (encrypted directory, key file, sign's output).
fn sign_and_encrypt(home: &Path, dir: &Path) -> (PathBuf, PathBuf, String) {
    ok(mamori(home)
        .args(["model", "keys", "create", "--name", "test"])
        .output()
        .unwrap());
    let signed = ok(mamori(home)
        .args(["model", "sign", "--model"])
        .arg(dir)
        .output()
        .unwrap());
    let key_file = dir.with_extension("key");
    ok(mamori(home)
        .args(["model", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap());
    let enc = dir.with_extension("enc");
    ok(mamori(home)
        .args(["model", "encrypt", "--model"])
        .arg(dir)
        .arg("--key-file")
        .arg(&key_file)
        .arg("--out")
        .arg(&enc)
        .output()
        .unwrap());
    (enc, key_file, signed)
}

#[test]
fn a_signed_encrypted_onnx_directory_is_served_decrypted_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let native = tmp.path().join("native");
    tiny_model(&native, "onnx-mlp");
    let key = create_key(&home, "carol");

    // Export to an ONNX model directory: m.onnx + its card m.onnx.json.
    let onnx_dir = tmp.path().join("onnx");
    std::fs::create_dir(&onnx_dir).unwrap();
    let onnx_file = onnx_dir.join("m.onnx");
    ok(mamori(&home)
        .args(["export", "--onnx", "--model"])
        .arg(&native)
        .arg("--out")
        .arg(&onnx_file)
        .output()
        .unwrap());
    // An unsigned copy, kept before signing.
    let unsigned_dir = tmp.path().join("onnx-unsigned");
    copy_dir(&onnx_dir, &unsigned_dir);

    // Sign it, then encrypt it.
    let (enc_dir, key_file, signed) = sign_and_encrypt(&home, &onnx_dir);
    assert!(signed.contains("(2 file(s))"), "{signed}");
    let verified = ok(mamori(&home)
        .args(["model", "verify", "--model"])
        .arg(&enc_dir)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .unwrap());
    assert!(verified.contains("OK:"), "{verified}");
    // No plaintext ONNX bytes in the encrypted directory.
    let plain = std::fs::read(&onnx_file).unwrap();
    for e in std::fs::read_dir(&enc_dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(64).any(|w| w == &plain[..64]));
    }

    // The native model's answers, then the encrypted ONNX directory's, without --allow-unsigned.
    let (child, url) = start_serve_with(
        &home,
        &args(&[
            &"--policy",
            &"none",
            &"--allow-unsigned",
            &"--model",
            &native,
        ]),
    );
    let expected = probabilities(&url, &key);
    stop(child);
    let (child, url) = start_serve_with(
        &home,
        &args(&[
            &"--policy",
            &"none",
            &"--model-key-file",
            &key_file,
            &"--model",
            &enc_dir,
        ]),
    );
    let got = probabilities(&url, &key);
    stop(child);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-5, "ONNX {got:?} vs native {expected:?}");
    }
    // The signed plaintext directory is served too.
    let (child, url) = start_serve_with(&home, &args(&[&"--model", &onnx_dir]));
    assert_eq!(probabilities(&url, &key).len(), 12);
    stop(child);

    // Refusals, each naming its problem.
    let err = serve_refuses(&home, &args(&[&"--model", &onnx_file]));
    assert!(
        err.contains("bare .onnx file") && err.contains("m.onnx"),
        "{err}"
    );
    let err = serve_refuses(&home, &args(&[&"--model", &unsigned_dir]));
    assert!(err.contains("unsigned"), "{err}");
    let err = serve_refuses(&home, &args(&[&"--model", &enc_dir]));
    assert!(err.contains("the model is encrypted"), "{err}");
    let wrong_key = tmp.path().join("wrong.key");
    ok(mamori(&home)
        .args(["model", "keygen", "--out"])
        .arg(&wrong_key)
        .output()
        .unwrap());
    let err = serve_refuses(
        &home,
        &args(&[&"--model-key-file", &wrong_key, &"--model", &enc_dir]),
    );
    assert!(err.contains("wrong model key"), "{err}");
    // One flipped byte of the encrypted ONNX file.
    let tampered = tmp.path().join("onnx-tampered");
    copy_dir(&enc_dir, &tampered);
    let target = tampered.join("m.onnx.enc");
    let mut bytes = std::fs::read(&target).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let err = serve_refuses(
        &home,
        &args(&[&"--model-key-file", &key_file, &"--model", &tampered]),
    );
    assert!(
        err.contains("m.onnx.enc") && err.contains("failed authentication"),
        "{err}"
    );
    // A signed ONNX directory whose graph was swapped after signing.
    let swapped = tmp.path().join("onnx-swapped");
    copy_dir(&onnx_dir, &swapped);
    let mut g = std::fs::read(swapped.join("m.onnx")).unwrap();
    let last = g.len() - 1;
    g[last] ^= 0x40;
    std::fs::write(swapped.join("m.onnx"), g).unwrap();
    let err = serve_refuses(&home, &args(&[&"--model", &swapped]));
    assert!(err.contains("m.onnx") && err.contains("sha256"), "{err}");
}

/// `calibrate` → `sign` → `encrypt`: the detector thresholds travel inside the signed,
/// encrypted model directory, and `serve` reads them from the decrypted, verified files (before
/// this session it looked for a plaintext `calibration.json` on disk and silently ran the
/// built-in thresholds for an encrypted model).
#[test]
fn the_calibration_of_an_encrypted_model_is_read_with_its_verified_files() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model = tmp.path().join("digits");
    ok(mamori(&home)
        .args([
            "train",
            "--dataset",
            "digits",
            "--arch",
            "softmax",
            "--epochs",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&model)
        .output()
        .unwrap());
    ok(mamori(&home)
        .args([
            "calibrate",
            "--benign",
            "digits",
            "--fpr",
            "0.05",
            "--clients",
            "4",
            "--queries",
            "40",
            "--tail-clients",
            "20",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap());
    assert!(model.join("calibration.json").is_file());
    let (enc, key_file, _) = sign_and_encrypt(&home, &model);
    assert!(!enc.join("calibration.json").exists());
    let serve_enc = args(&[
        &"--policy",
        &"detect",
        &"--model-key-file",
        &key_file,
        &"--model",
        &enc,
    ]);
    let (child, _url, log) = start_serve_logged(&home, &serve_enc);
    stop(child);
    let want = format!(
        "detector thresholds from {} (decrypted in memory, signed)",
        enc.join("calibration.json").display()
    );
    assert!(log.iter().any(|l| l.contains(&want)), "{want}\n{log:#?}");

    // Served beside a second, uncalibrated model, the calibration stays the digits model's
    // own: the other is named as running the default thresholds (unit test of the per-model
    // thresholds: `protection::tests::each_served_model_gets_its_own_calibration`).
    let other = tmp.path().join("other");
    tiny_model(&other, "other-mlp");
    let mut beside = serve_enc.clone();
    beside.extend(args(&[&"--allow-unsigned", &"--model", &other]));
    let (child, _url, log) = start_serve_logged(&home, &beside);
    stop(child);
    assert!(log.iter().any(|l| l.contains(&want)), "{want}\n{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("model \"other-mlp\" has no calibration.json")),
        "{log:#?}"
    );

    // A calibration changed after signing is refused like any other tampered file.
    let plain = tmp.path().join("digits-tampered");
    copy_dir(&model, &plain);
    let cal = plain.join("calibration.json");
    let text = std::fs::read_to_string(&cal).unwrap();
    std::fs::write(&cal, text.replacen("\"version\"", "\"version\" ", 1)).unwrap();
    let err = serve_refuses(&home, &args(&[&"--model", &plain]));
    assert!(
        err.contains("calibration.json") && err.contains("sha256"),
        "{err}"
    );
}
