//! Two `mamori serve` processes (replicas with the same keys) behind one Redis share one rate
//! budget; a Redis configuration without a URL, or a Redis that does not answer, stops `serve`
//! with the reason and without the password.

mod common;

use common::{create_key, serve_refuses, start_serve_logged, stop, tiny_model};
use mamori_core::testing::TempRedis;

fn write_config(home: &std::path::Path, limits: &str) {
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(
        home.join("mamori.toml"),
        format!(
            "default_tier = \"full\"\n\n[tiers.full]\ndisclosure = \"probabilities\"\n\
             rate_per_s = 0.0001\nburst = 4\ndaily_quota = 1000\n\n[limits]\n{limits}"
        ),
    )
    .unwrap();
}

#[test]
fn two_gateway_processes_share_one_rate_budget_through_redis() {
    let Some(redis) = TempRedis::start_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "shared-mlp");
    let (home_a, home_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let limits = format!("store = \"redis\"\nredis_url = \"{}\"\n", redis.url());
    write_config(&home_a, &limits);
    write_config(&home_b, &limits);
    let key = create_key(&home_a, "alice");
    std::fs::copy(home_a.join("keys.json"), home_b.join("keys.json")).unwrap();
    let args = [
        "--allow-unsigned".into(),
        "--model".into(),
        model_dir.clone().into_os_string(),
    ];
    let (a, url_a, log_a) = start_serve_logged(&home_a, &args);
    let (b, url_b, _) = start_serve_logged(&home_b, &args);
    assert!(
        log_a
            .iter()
            .any(|l| l.contains("shared by every replica in Redis")),
        "{log_a:?}"
    );
    let client = reqwest::blocking::Client::new();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": vec![0.5f32; 16]}]
    });
    let mut statuses = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 { &url_a } else { &url_b };
        let r = client
            .post(format!("{url}/v2/models/shared-mlp/infer"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            let v: serde_json::Value = r.json().unwrap();
            assert!(
                v["error"].as_str().unwrap_or("").contains("rate limit"),
                "{v}"
            );
        }
        statuses.push(status);
    }
    stop(a);
    stop(b);
    // Burst 4 for the key, across both processes (each alone would grant 4).
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        6,
        "{statuses:?}"
    );
}

#[test]
fn serve_refuses_a_redis_store_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    tiny_model(&model_dir, "m");
    let home = tmp.path().join("home");
    let args = [
        "--allow-unsigned".into(),
        "--model".into(),
        model_dir.into_os_string(),
    ];
    write_config(&home, "store = \"redis\"\n");
    let err = serve_refuses(&home, &args);
    assert!(
        err.contains("limits.redis_url") && err.contains("MAMORI_REDIS_URL"),
        "{err}"
    );
    // Nothing listens on port 1.
    write_config(
        &home,
        "store = \"redis\"\nredis_url = \"redis://:pw-never-shown@127.0.0.1:1/0\"\n",
    );
    let err = serve_refuses(&home, &args);
    assert!(
        err.contains("shared rate-limit store") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("pw-never-shown"), "{err}");
}
