//! End to end through the binary: `keys create`, `serve` (real HTTP, SIGTERM), `audit export`,
//! `alerts --json` (issue #3).

mod common;

use common::{create_key, infer_json, mamori, start_serve, stop, tiny_model};

#[test]
fn serve_answers_then_flushes_the_audit_log_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "cli-mlp");
    let key = create_key(&home, "alice");
    assert!(key.starts_with("mk_"));
    let (child, url) = start_serve(&home, &model_dir);
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
    stop(child);

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
    // Detector state was saved for the restart: one state file per subject.
    let states = home.join("state").join("cli-mlp.states");
    assert!(
        std::fs::read_dir(&states).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "mss")),
        "{}",
        states.display()
    );
}

#[test]
fn serve_posts_alerts_to_a_configured_webhook_and_refuses_a_bad_one() {
    use common::{serve_refuses, start_serve_logged};
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "hook-mlp");
    std::fs::create_dir_all(&home).unwrap();
    let args = [
        "--allow-unsigned".into(),
        "--model".into(),
        model_dir.into_os_string(),
    ];
    std::fs::write(
        home.join("mamori.toml"),
        "[alerts]\nwebhook_url = \"ftp://hooks.example/x\"\n",
    )
    .unwrap();
    let err = serve_refuses(&home, &args);
    assert!(err.contains("alerts.webhook_url"), "{err}");
    std::fs::write(
        home.join("mamori.toml"),
        "[alerts]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_secret = \"never-logged\"\n",
    )
    .unwrap();
    let (child, _, log) = start_serve_logged(&home, &args);
    stop(child);
    assert!(
        log.iter()
            .any(|l| l.contains("alerts: POSTed to http://127.0.0.1:9/hook")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("never-logged")), "{log:?}");
}

#[test]
fn a_killed_gateway_keeps_the_detector_states_of_its_last_checkpoint() {
    use common::start_serve_logged;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "ckpt-mlp");
    let key = create_key(&home, "carol");
    std::fs::write(home.join("mamori.toml"), "[detect]\ncheckpoint_s = 1\n").unwrap();
    let (mut child, url, _) = start_serve_logged(
        &home,
        &[
            "--allow-unsigned".into(),
            "--model".into(),
            model_dir.into_os_string(),
        ],
    );
    let client = reqwest::blocking::Client::new();
    for i in 0..4 {
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
                        "data": vec![0.1f32 * i as f32; 16]}]
        });
        let r = client
            .post(format!("{url}/v2/models/ckpt-mlp/infer"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let state = home
        .join("state")
        .join("ckpt-mlp.states")
        .join(mamori_gateway::state_codec::file_name("carol"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !state.is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A crash: no graceful shutdown.
    child.kill().unwrap();
    child.wait().unwrap();
    let (subject, snaps) =
        mamori_gateway::state_codec::decode_file(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(subject, "carol");
    assert!(snaps.contains_key("prada"), "{:?}", snaps.keys());
    assert!(home.join("state").join("ckpt-mlp.policy.json").is_file());
}

/// More than twice `detect.max_resident_subjects` subjects in memory make `serve` checkpoint
/// (save, then evict the idlest) long before its interval: with `checkpoint_s` an hour and a
/// cap of 1, three clients' queries bring every client's state file within seconds (where the
/// pressure starts, beyond the cap's double, is checked at the chain:
/// `mamori-gateway/tests/chain_inprocess.rs`).
#[test]
fn a_burst_of_new_clients_is_checkpointed_before_the_interval() {
    use common::start_serve_logged;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "burst-mlp");
    let names = ["ann", "ben", "cat"];
    let keys: Vec<String> = names.iter().map(|n| create_key(&home, n)).collect();
    std::fs::write(
        home.join("mamori.toml"),
        "[detect]\ncheckpoint_s = 3600\nmax_resident_subjects = 1\n",
    )
    .unwrap();
    // Killed when dropped, however the test ends (`common::Served`).
    let (_server, url, _) = start_serve_logged(
        &home,
        &[
            "--allow-unsigned".into(),
            "--model".into(),
            model_dir.into_os_string(),
        ],
    );
    let query = |key: &str| {
        infer_json(&url, "burst-mlp", key, &[vec![0.3f32; 16]]);
    };
    let state = |name: &str| {
        home.join("state")
            .join("burst-mlp.states")
            .join(mamori_gateway::state_codec::file_name(name))
    };
    for key in &keys {
        query(key);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !names.iter().all(|n| state(n).is_file()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no early checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The poll that checks the pressure also publishes what is resident: after the
    // checkpoint's eviction, the cap's one subject and its detector states' bytes.
    let gauge = |text: &str, name: &str| -> Option<f64> {
        let line = format!("{name}{{model=\"burst-mlp\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    loop {
        let text = reqwest::blocking::get(format!("{url}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        let subjects = gauge(&text, "mamori_resident_subjects");
        let bytes = gauge(&text, "mamori_detector_state_bytes");
        if subjects == Some(1.0) {
            assert!(bytes.is_some_and(|b| b > 0.0), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resident subjects not published as 1: {subjects:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
