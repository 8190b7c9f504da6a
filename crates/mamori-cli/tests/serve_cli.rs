//! End to end through the binary: `keys create`, `serve` (real HTTP, SIGTERM), `audit export`,
//! `alerts --json` (issue #3).

use mamori_core::{DatasetRef, ModelCard, Normalisation, OutputKind};
use mamori_ml::{Arch, NativeModel, Network};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn mamori(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mamori"));
    c.arg("--home").arg(home);
    c
}

#[test]
fn serve_answers_then_flushes_the_audit_log_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    let card = ModelCard {
        name: "cli-mlp".into(),
        architecture: "mlp".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![1, 4, 4],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation::default(),
        class_names: vec!["a".into(), "b".into(), "c".into()],
        output_kind: OutputKind::Logits,
        dataset: DatasetRef::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: None,
        extra: Default::default(),
    };
    let net = Network::new(&Arch::Mlp { hidden: vec![8] }, &[1, 4, 4], 3, 3);
    NativeModel::new(net, card).save(&model_dir).unwrap();

    let out = mamori(&home)
        .args(["keys", "create", "--client", "alice", "--tier", "full"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(key.starts_with("mk_"));

    let mut child = mamori(&home)
        .args([
            "serve",
            "--allow-unsigned",
            "--addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(&model_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    for _ in 0..200 {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(a) = line.trim().strip_prefix("mamori gateway listening on ") {
            addr = Some(a.to_string());
            break;
        }
    }
    let Some(url) = addr else {
        let _ = child.kill();
        panic!("server did not start: {line}");
    };
    let client = reqwest::blocking::Client::new();
    let body = serde_json::json!({
        "id": "cli-1",
        "inputs": [{"name": "input", "shape": [2, 1, 4, 4], "datatype": "FP32", "data": vec![0.25f32; 32]}]
    });
    for _ in 0..3 {
        let r = client
            .post(format!("{url}/v2/models/cli-mlp/infer"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["id"], "cli-1");
        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 3]));
    }
    let r = client
        .post(format!("{url}/v2/models/cli-mlp/infer"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // SIGTERM: graceful shutdown flushes the audit log.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");

    let out = mamori(&home)
        .args(["audit", "export", "--client", "alice", "--since", "1d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["request_id"], "cli-1");
    assert_eq!(lines[0]["model"], "cli-mlp");
    assert_eq!(lines[0]["batch"], 2);
    assert!(lines[0]["input_sha256"].as_str().unwrap().len() == 64);
    // The detectors from mamori-detect scored every answered request.
    assert!(
        !lines[0]["scores"].as_object().unwrap().is_empty(),
        "{}",
        lines[0]
    );

    let out = mamori(&home).args(["alerts", "--json"]).output().unwrap();
    assert!(out.status.success());
    let alerts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(alerts.is_array());
    // Detector state was saved for the restart.
    assert!(home.join("state").join("cli-mlp.json").is_file());
}
