//! A real third-party Open Inference Protocol client works unchanged (issue #3): NVIDIA's
//! `tritonclient[http]` Python package drives the gateway over real HTTP
//! (`tests/python/triton_client.py`), and the numbers it receives are compared here with what
//! the in-process model computes.
//!
//! Skipped (with a message) when `tritonclient.http` is not importable, except in CI
//! (`CI=true`), where `.ci/run` installs it and a missing package is a failure.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/triton_client.py")
}

fn tritonclient_available() -> bool {
    mamori_core::testing::python_imports_or_skip("tritonclient.http, numpy", "'tritonclient[http]'")
}

/// Raw UINT8 rows (pixel-like bytes).
fn u8_rows() -> Vec<Vec<u8>> {
    (0..2)
        .map(|k| (0..LEN).map(|i| ((i * 37 + k * 101) % 256) as u8).collect())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .flat_map(|r| match r {
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            x => vec![x.as_f64().unwrap() as f32],
        })
        .collect()
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn assert_probs(got: &Value, want: &mamori_core::Tensor, what: &str) {
    let got = floats(got);
    assert_eq!(got.len(), want.data().len(), "{what}: {got:?}");
    for (g, w) in got.iter().zip(want.data()) {
        assert!(
            (g - w).abs() <= 1e-6,
            "{what}: got {got:?}, want {:?}",
            want.data()
        );
    }
}

fn assert_answer(r: &Value, want: &mamori_core::Tensor, binary: &[&str], what: &str) {
    assert_eq!(r["model_name"], "lin", "{what}");
    assert_probs(&r["probabilities"], want, what);
    assert_eq!(r["probabilities_dtype"], "float32", "{what}");
    assert_eq!(labels(&r["label"]), want.argmax_rows(), "{what}");
    assert_eq!(r["label_dtype"], "int64", "{what}");
    let got_binary: Vec<&str> = r["binary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got_binary, binary, "{what}: outputs sent as binary data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_tritonclient_http_works_unchanged() {
    if !tritonclient_available() {
        return;
    }
    let mut env = start_default().await;
    let (_, key) = env.keys.create("triton", None, "full", &[]).unwrap();
    let fp32 = vec![sample(1), sample(2), sample(3)];
    let u8s = u8_rows();
    let inputs = env.home.path().join("inputs.json");
    std::fs::write(
        &inputs,
        serde_json::json!({"fp32": fp32, "uint8": u8s, "sample_shape": SHAPE}).to_string(),
    )
    .unwrap();
    let addr = env.url.trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script())
            .args([addr.as_str(), key.as_str(), "lin"])
            .arg(&inputs)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "triton_client.py failed:\n{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad report ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    // Health and metadata.
    assert_eq!(r["live"], true);
    assert_eq!(r["ready"], true);
    assert_eq!(r["server_metadata"]["name"], "mamori");
    assert_eq!(r["model_ready"], true);
    assert_eq!(r["model_ready_v1"], true);
    assert_eq!(r["unknown_model_ready"], false);
    let m = &r["model_metadata"];
    assert_eq!(m["name"], "lin");
    assert_eq!(m["inputs"][0]["name"], "input");
    assert_eq!(m["inputs"][0]["datatype"], "FP32");
    assert_eq!(m["outputs"][0]["name"], "probabilities");
    assert!(r["model_config_error"]
        .as_str()
        .unwrap()
        .contains("no such endpoint"));

    // Inference: the numbers are the in-process model's.
    let want = expected_probs("lin", &fp32);
    assert_answer(
        &r["fp32_default"],
        &want,
        &["probabilities", "label"],
        "FP32 binary in, client's default (binary) outputs",
    );
    assert_eq!(r["fp32_default"]["id"], "tc-1");
    assert_answer(&r["fp32_json"], &want, &[], "FP32 JSON in, JSON outputs");
    assert_answer(
        &r["fp32_mixed"],
        &want,
        &["probabilities"],
        "FP32, binary probabilities + JSON label, versioned URL",
    );
    assert_eq!(r["label_only"]["probabilities"], Value::Null);
    assert_eq!(labels(&r["label_only"]["label"]), want.argmax_rows());

    let norm = card("lin").normalisation;
    let u8_norm: Vec<Vec<f32>> = u8s
        .iter()
        .map(|row| row.iter().map(|b| norm.apply(*b as f32)).collect())
        .collect();
    let want_u8 = expected_probs("lin", &u8_norm);
    assert_answer(
        &r["uint8"],
        &want_u8,
        &["probabilities", "label"],
        "UINT8 binary in",
    );
    assert_answer(
        &r["uint8_json"],
        &want_u8,
        &["probabilities", "label"],
        "UINT8 JSON in",
    );

    // Errors: InferenceServerException with the gateway's own message.
    for k in ["wrong_shape_error", "wrong_shape_json_error"] {
        let msg = r[k].as_str().unwrap();
        assert!(
            msg.contains("shape [2, 5, 5] does not match the model's [n, 1, 4, 4]"),
            "{k}: {msg}"
        );
    }
    assert!(r["out_of_range_error"]
        .as_str()
        .unwrap()
        .contains("outside the model's input range"));
    assert!(r["unknown_output_error"]
        .as_str()
        .unwrap()
        .contains("unknown output \"logits\""));
    assert!(r["class_count_error"]
        .as_str()
        .unwrap()
        .contains("class_count"));
    assert!(r["no_key_error"]
        .as_str()
        .unwrap()
        .contains("missing API key"));
    assert_eq!(r["bad_key_error"], "invalid API key");
    assert!(r["unknown_model_error"]
        .as_str()
        .unwrap()
        .contains("unknown model \"no-such-model\""));

    // Every inference the client made is in the audit log.
    env.shutdown().await;
    let events = env
        .chain
        .shared()
        .audit
        .with_store(|s| s.requests(Some("triton"), 0))
        .unwrap();
    assert_eq!(events.iter().filter(|e| e.status == 200).count(), 6);
}
