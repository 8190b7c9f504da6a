//! `mamori audit verify` end to end: a real gateway seals what it logs; the verification passes
//! on the untouched log, names the record an `UPDATE` in the database altered and the tail a
//! `DELETE` removed, works with the verification key moved off the home, and refuses bad
//! arguments with a clear message.

mod common;

use common::{create_key, mamori, ok, start_serve, stop, tiny_model};

fn verify(home: &std::path::Path, extra: &[&str]) -> std::process::Output {
    mamori(home)
        .args(["audit", "verify"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn audit_verify_passes_on_the_log_and_names_what_was_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "chain-mlp");
    let key = create_key(&home, "alice");
    let (child, url) = start_serve(&home, &model_dir);
    let client = reqwest::blocking::Client::new();
    for i in 0..6 {
        let body = serde_json::json!({
            "id": format!("q{i}"),
            "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
                        "data": vec![0.05f32 * i as f32; 16]}]
        });
        let r = client
            .post(format!("{url}/v2/models/chain-mlp/infer"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    // A refused request is logged (and sealed) too.
    let r = client
        .post(format!("{url}/v2/models/chain-mlp/infer"))
        .bearer_auth("mk_wrong")
        .json(&serde_json::json!({"inputs": []}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    stop(child);

    let chain_dir = home.join("audit-chain");
    let key0: Vec<_> = std::fs::read_dir(&chain_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key0"))
        .collect();
    assert_eq!(key0.len(), 1, "{key0:?}");
    let writer = key0[0].file_stem().unwrap().to_str().unwrap().to_string();

    let out = ok(verify(&home, &[]));
    assert!(out.contains(&writer) && out.contains("intact"), "{out}");
    let out = ok(verify(&home, &["--json"]));
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["intact"], true);
    let sealed = rep["writers"][0]["verified"].as_u64().unwrap();
    assert!(sealed >= 6, "{rep}");
    assert_eq!(rep["writers"][0]["expected_next"], sealed);
    assert_eq!(rep["unsealed"], 0);

    // The verification key moves to the auditors: verification works from there.
    let offline = tmp.path().join("auditors").join(format!("{writer}.key0"));
    std::fs::create_dir_all(offline.parent().unwrap()).unwrap();
    std::fs::rename(&key0[0], &offline).unwrap();
    let out = verify(&home, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no verification key"), "{err}");
    ok(verify(&home, &["--key", offline.to_str().unwrap()]));

    // Someone with access to the database rewrites one answer and drops the last record.
    let db = rusqlite::Connection::open(home.join("audit.db")).unwrap();
    let n = db
        .execute(
            "UPDATE requests SET client = 'bob' WHERE request_id = 'q2'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let last = sealed - 1;
    let deleted: usize = ["requests", "alerts", "blocks", "ledger"]
        .iter()
        .map(|t| {
            db.execute(&format!("DELETE FROM {t} WHERE seq = {last}"), [])
                .unwrap()
        })
        .sum();
    assert_eq!(deleted, 1);
    drop(db);
    let out = verify(&home, &["--key", offline.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("altered"), "{err}");
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = &rep["writers"][0];
    assert_eq!(w["intact"], false);
    assert_eq!(w["altered"].as_array().unwrap().len(), 1, "{w}");
    assert_eq!(w["altered"][0]["kind"], "request");
    assert_eq!(w["missing_tail"], serde_json::json!([last, last]));
    let text =
        String::from_utf8_lossy(&verify(&home, &["--key", offline.to_str().unwrap()]).stdout)
            .into_owned();
    assert!(
        text.contains("BROKEN") && text.contains("missing tail"),
        "{text}"
    );

    // An outside witness of a longer chain (the metric) reports more missing records.
    let out = verify(
        &home,
        &[
            "--key",
            offline.to_str().unwrap(),
            "--json",
            "--expect",
            &format!("{writer}:{}", sealed + 5),
        ],
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rep["writers"][0]["missing_tail"],
        serde_json::json!([last, sealed + 4])
    );

    // Bad arguments are clear errors.
    for (arg, msg) in [
        ("nocolon", "expected WRITER:N"),
        ("w:many", "N is not a count"),
        (":3", "the writer is empty"),
    ] {
        let out = verify(&home, &["--expect", arg]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{arg}: {err}");
    }
    let bad = tmp.path().join("bad.key0");
    std::fs::write(&bad, "{}").unwrap();
    let out = verify(&home, &["--key", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.key0"), "{err}");
}
