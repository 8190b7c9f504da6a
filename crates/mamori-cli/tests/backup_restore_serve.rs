//! Issue #8 acceptance: a backup restored into an empty directory serves the same answers and
//! holds the same audit events (through the binary: serve, SIGTERM, backup, restore, serve).

mod common;

use common::{create_key, mamori, start_serve, stop, tiny_model};
use std::path::Path;

fn answers(url: &str, key: &str) -> Vec<serde_json::Value> {
    let client = reqwest::blocking::Client::new();
    (0..4)
        .map(|i| {
            let x: Vec<f32> = (0..32).map(|j| ((i * 32 + j) % 17) as f32 / 16.0).collect();
            let body = serde_json::json!({
                "id": format!("q{i}"),
                "inputs": [{"name": "input", "shape": [2, 1, 4, 4], "datatype": "FP32", "data": x}]
            });
            let r = client
                .post(format!("{url}/v2/models/bk-mlp/infer"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: serde_json::Value = r.json().unwrap();
            v["outputs"].clone()
        })
        .collect()
}

fn audit(home: &Path) -> Vec<serde_json::Value> {
    let out = mamori(home)
        .args(["audit", "export", "--client", "bob"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn restored_backup_serves_the_same_answers_and_holds_the_same_audit_events() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("bk-model");
    tiny_model(&model_dir, "bk-mlp");
    let key = create_key(&home, "bob");

    let (child, url) = start_serve(&home, &model_dir);
    let before = answers(&url, &key);
    stop(child);
    let events = audit(&home);
    assert_eq!(events.len(), 4);

    let archive = tmp.path().join("backup.tar.gz");
    let out = mamori(&home)
        .args(["backup", "create", "--models"])
        .arg(&model_dir)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = tmp.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    let out = mamori(&home)
        .args(["backup", "restore"])
        .arg(&archive)
        .arg("--into")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The original is gone: only the restored copy exists from here on.
    std::fs::remove_dir_all(&home).unwrap();
    std::fs::remove_dir_all(&model_dir).unwrap();
    let new_home = restored.join("home");
    let new_model = restored.join("models").join("bk-model");

    // The same audit events, and the same key still works.
    assert_eq!(audit(&new_home), events);
    let (child, url) = start_serve(&new_home, &new_model);
    let after = answers(&url, &key);
    stop(child);
    assert_eq!(before, after, "restored gateway answers differently");
    // The restored audit log holds the old events plus the new requests.
    let all = audit(&new_home);
    assert_eq!(all.len(), 8);
    assert_eq!(&all[..4], &events[..]);
}
