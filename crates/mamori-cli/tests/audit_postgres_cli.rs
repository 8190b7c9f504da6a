//! `mamori serve`, `audit export` and `alerts` on a PostgreSQL audit store chosen by the home's
//! `mamori.toml`, against a real server (`TempPostgres`; skipped with a message where none is
//! installed, except in CI).

mod common;

use common::{
    create_key, infer_json, mamori, ok, serve_refuses, start_serve_with, stop, tiny_model,
};
use mamori_core::testing::TempPostgres;
use mamori_gateway::audit::{AlertEvent, AuditRecord, AuditStore};
use mamori_gateway::PostgresStore;
use std::ffi::OsString;

#[test]
fn the_gateway_writes_its_audit_log_to_postgres_and_the_cli_reads_it_back() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "pg-mlp");
    let key = create_key(&home, "dora");
    let config = |url: Option<&str>| {
        let mut text = "[audit]\nstore = \"postgres\"\n".to_string();
        if let Some(u) = url {
            text.push_str(&format!("postgres_url = \"{u}\"\n"));
        }
        std::fs::write(home.join("mamori.toml"), text).unwrap();
    };
    config(None);

    // Without the URL: a configuration error naming what is missing.
    let args: Vec<OsString> = vec![
        "--allow-unsigned".into(),
        "--model".into(),
        model_dir.clone().into(),
    ];
    let err = serve_refuses(&home, &args);
    assert!(err.contains("MAMORI_AUDIT_POSTGRES_URL"), "{err}");
    // A database that does not answer: refused at start, password hidden.
    config(Some(
        "postgresql://mamori:hunter2@127.0.0.1:1/postgres?connect_timeout=5",
    ));
    let err = serve_refuses(&home, &args);
    assert!(
        err.contains("opening the audit store") && !err.contains("hunter2"),
        "{err}"
    );

    config(Some(&pg.url()));
    let (child, url) = start_serve_with(&home, &args);
    let body = serde_json::json!({
        "id": "pg-1",
        "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": vec![0.5f32; 16]}]
    });
    let client = reqwest::blocking::Client::new();
    for _ in 0..4 {
        let r = client
            .post(format!("{url}/v2/models/pg-mlp/infer"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    stop(child);
    // No SQLite file was written: the events are in PostgreSQL only.
    assert!(!home.join("audit.db").exists());

    let out = ok(mamori(&home)
        .args(["audit", "export", "--client", "dora"])
        .output()
        .unwrap());
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines
        .iter()
        .all(|e| e["request_id"] == "pg-1" && e["model"] == "pg-mlp"));
    // An alert another replica wrote into the shared database is listed here.
    let mut other_replica = PostgresStore::connect(&pg.url()).unwrap();
    other_replica
        .write_batch(&[AuditRecord::Alert(AlertEvent {
            time_ms: 1_700_000_000_000,
            model: "pg-mlp".into(),
            client: "eve".into(),
            detector: "prada".into(),
            score: 0.93,
            queries: 201,
            action: "throttle".into(),
        })])
        .unwrap();
    let out = ok(mamori(&home).args(["alerts", "--json"]).output().unwrap());
    let alerts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let eve: Vec<&serde_json::Value> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["client"] == "eve")
        .collect();
    assert_eq!(eve.len(), 1, "{alerts}");
    assert_eq!(eve[0]["detector"], "prada");
    assert_eq!(eve[0]["queries"], 201);
    assert_eq!(eve[0]["time"], "2023-11-14T22:13:20.000Z");
}

/// Two replica homes sharing one PostgreSQL audit store (`[detect]` gets `detect`), the model
/// they serve, a client key (`alice`) and the admin token valid on both.
struct Replicas {
    _tmp: tempfile::TempDir,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    key: String,
    admin: String,
    args: Vec<OsString>,
}

impl Replicas {
    fn new(pg: &TempPostgres, detect: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model_dir = tmp.path().join("model");
        tiny_model(&model_dir, "pg-mlp");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let key = create_key(&a, "alice");
        let admin = ok(mamori(&a)
            .args(["keys", "create", "--admin"])
            .output()
            .unwrap())
        .trim()
        .to_string();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::copy(a.join("keys.json"), b.join("keys.json")).unwrap();
        let config = format!(
            "[audit]\nstore = \"postgres\"\npostgres_url = \"{}\"\n\n[detect]\n{detect}\n",
            pg.url()
        );
        for h in [&a, &b] {
            std::fs::write(h.join("mamori.toml"), &config).unwrap();
        }
        let args = vec![
            "--allow-unsigned".into(),
            "--model".into(),
            model_dir.into(),
        ];
        Replicas {
            _tmp: tmp,
            a,
            b,
            key,
            admin,
            args,
        }
    }
}

/// Two `mamori serve` replicas on one PostgreSQL audit store: an administrator blocks a client
/// on one, and the other refuses it (403) within `detect.block_sync_s`; the unblock travels
/// the same way.
#[test]
fn a_block_on_one_replica_reaches_the_other_through_postgres() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let r = Replicas::new(&pg, "block_sync_s = 1");
    let (home_a, home_b, key, admin, args) = (&r.a, &r.b, &r.key, &r.admin, &r.args);
    let (a, url_a) = start_serve_with(home_a, args);
    let (b, url_b) = start_serve_with(home_b, args);
    let client = reqwest::blocking::Client::new();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": vec![0.5f32; 16]}]
    });
    let status_on_b = || {
        client
            .post(format!("{url_b}/v2/models/pg-mlp/infer"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Polls B until it answers `want` (at most 15 s: block_sync_s = 1).
    let wait_for = |want: u16| {
        let t0 = std::time::Instant::now();
        loop {
            let s = status_on_b();
            if s == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(15),
                "B still answers {s}, not {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    assert_eq!(status_on_b(), 200);
    let admin_call = |path: &str| {
        let r = client
            .post(format!("{url_a}/admin/{path}"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"client": "alice", "reason": "abuse report"}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    };
    admin_call("block");
    let took = wait_for(403);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    admin_call("unblock");
    wait_for(200);
    stop(a);
    stop(b);
}

/// A rolling deploy with `detect.shared_state`: replica A answers a client's queries and is
/// stopped (SIGTERM saves the states into PostgreSQL); replica B, which never saw the client,
/// takes her history over at her next query — its admin API counts every query she sent,
/// not just the one it answered.
#[test]
fn a_client_keeps_her_detector_history_when_her_replica_is_replaced() {
    let Some(pg) = TempPostgres::start_or_skip() else {
        return;
    };
    let r = Replicas::new(&pg, "shared_state = true");
    let (home_a, home_b, key, admin, args) = (&r.a, &r.b, &r.key, &r.admin, &r.args);
    let client = reqwest::blocking::Client::new();
    let infer = |url: &str, v: f32| infer_json(url, "pg-mlp", key, &[vec![v; 16]]);
    let queries_seen = |url: &str| -> u64 {
        let v: serde_json::Value = client
            .get(format!("{url}/admin/clients"))
            .bearer_auth(admin)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["subject"] == "alice")
            .map_or(0, |c| c["queries"].as_u64().unwrap())
    };
    let (a, url_a) = start_serve_with(home_a, args);
    for i in 0..7 {
        infer(&url_a, i as f32 / 10.0);
    }
    assert_eq!(queries_seen(&url_a), 7);
    stop(a);
    let (b, url_b) = start_serve_with(home_b, args);
    infer(&url_b, 0.9);
    assert_eq!(queries_seen(&url_b), 8, "B took over A's 7 queries");
    stop(b);
}
