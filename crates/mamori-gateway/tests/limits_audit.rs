//! Rate limits and quotas (429 + Retry-After), and the audit log surviving a graceful restart.

mod common;

use common::*;
use mamori_gateway::audit::{export_jsonl, AuditStore};
use mamori_gateway::{GatewayConfig, ModelSpec, SqliteStore};
use std::sync::Arc;

fn tight(rate: f64, burst: u64, quota: u64) -> GatewayConfig {
    let mut cfg = GatewayConfig::default();
    let t = cfg.tiers.get_mut("full").unwrap();
    t.rate_per_s = rate;
    t.burst = burst;
    t.daily_quota = quota;
    cfg
}

/// Sends one sample to `lin` with key `k`, asserts a 429 and returns its `Retry-After` seconds
/// and its JSON body.
async fn refused_retry_after(env: &Env, k: &str) -> (u64, serde_json::Value) {
    let r = env
        .client
        .post(env.infer_url("lin"))
        .bearer_auth(k)
        .json(&fp32_body(&[sample(0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (retry, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_gives_429_with_retry_after() {
    let mut env = start(
        tight(0.5, 4, 1000),
        vec![ModelSpec::new(Arc::new(LinearModel::new("lin")), "t")],
    )
    .await;
    let (_, k) = env.keys.create("a", None, "full", &[]).unwrap();
    let (_, k2) = env.keys.create("b", None, "full", &[]).unwrap();
    // A batch of 3 then 1 uses the burst of 4 (one query = one sample).
    assert_eq!(
        env.post("lin", &k, fp32_body(&[sample(0), sample(1), sample(2)]))
            .await
            .0,
        200
    );
    assert_eq!(env.post("lin", &k, fp32_body(&[sample(0)])).await.0, 200);
    let (retry, v) = refused_retry_after(&env, &k).await;
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(v["error"].as_str().unwrap().contains("rate limit"));
    // A batch larger than the burst can never pass: say so.
    let (s, v) = env.post("lin", &k2, fp32_body(&vec![sample(0); 5])).await;
    assert_eq!(s, 429);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("exceeds this key's burst of 4"));
    // Another key is unaffected.
    assert_eq!(env.post("lin", &k2, fp32_body(&[sample(0)])).await.0, 200);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_gives_429_until_midnight() {
    let mut env = start(
        tight(1000.0, 1000, 5),
        vec![ModelSpec::new(Arc::new(LinearModel::new("lin")), "t")],
    )
    .await;
    let (_, k) = env.keys.create("a", None, "full", &[]).unwrap();
    assert_eq!(
        env.post("lin", &k, fp32_body(&vec![sample(0); 5])).await.0,
        200
    );
    let (retry, v) = refused_retry_after(&env, &k).await;
    assert!((1..=86_400).contains(&retry));
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("daily quota of 5 queries exhausted"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_requests_survive_a_graceful_restart() {
    let mut cfg = GatewayConfig::default();
    cfg.server.store_raw_input = true;
    // A tiny queue and batch exercise back-pressure and many transactions.
    cfg.audit.queue = 4;
    cfg.audit.batch = 3;
    let mut env = start(
        cfg,
        vec![ModelSpec::new(Arc::new(LinearModel::new("lin")), "t")],
    )
    .await;
    let (rec, k) = env.keys.create("alice", None, "full", &[]).unwrap();
    let (_, k2) = env.keys.create("bob", None, "label", &[]).unwrap();
    let mut handles = Vec::new();
    for i in 0..40usize {
        let c = env.client.clone();
        let url = env.infer_url("lin");
        let key = if i % 4 == 3 { k2.clone() } else { k.clone() };
        let mut body = fp32_body(&[sample(i)]);
        body["id"] = serde_json::json!(format!("r{i}"));
        handles.push(tokio::spawn(async move {
            c.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for h in handles {
        if h.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 40);
    // One refused request is audited too.
    assert_eq!(
        env.post("lin", "mk_nope_x", fp32_body(&[sample(0)]))
            .await
            .0,
        401
    );
    env.shutdown().await;

    let store = SqliteStore::open_home(env.home.path()).unwrap();
    let all = store.requests(None, 0).unwrap();
    assert_eq!(all.len(), 41);
    let alice = store.requests(Some("alice"), 0).unwrap();
    assert_eq!(alice.len(), 30);
    let e = alice
        .iter()
        .find(|e| e.request_id.as_deref() == Some("r0"))
        .unwrap();
    assert_eq!(e.key_id, rec.id);
    assert_eq!(e.model, "lin");
    assert_eq!(e.status, 200);
    assert_eq!(e.decision, "allow");
    assert_eq!(
        e.input_sha256.as_deref().unwrap(),
        mamori_core::hash::sha256_f32(&sample(0))
    );
    assert_eq!(e.input.as_deref().unwrap(), sample(0).as_slice());
    let want = expected_probs("lin", &[sample(0)]);
    assert_eq!(
        e.output.as_ref().unwrap()["label"],
        serde_json::json!(want.argmax_rows())
    );
    assert!(e.output.as_ref().unwrap()["probabilities"].is_array());
    // The label-only client's audit shows what it was given: no probabilities.
    let bob = store.requests(Some("bob"), 0).unwrap();
    assert_eq!(bob.len(), 10);
    assert!(bob[0]
        .output
        .as_ref()
        .unwrap()
        .get("probabilities")
        .is_none());
    let refused = all.iter().find(|e| e.status == 401).unwrap();
    assert_eq!(refused.decision, "invalid_credential");
    // Export as JSON Lines.
    let mut out = Vec::new();
    assert_eq!(export_jsonl(&store, Some("bob"), 0, &mut out).unwrap(), 10);
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 10);
}
