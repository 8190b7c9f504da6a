//! Randomised bad input over HTTP: mutated inference requests, corrupted bytes, odd headers,
//! and mutated admin bodies. Whatever arrives, the gateway answers a 2xx, or a 4xx with a JSON
//! `error` — never a 5xx, a non-JSON body or a dropped connection — and keeps serving.
//! Seeded, so a failure names the case that reproduces it; `MAMORI_FUZZ_SEED` and
//! `MAMORI_FUZZ_CASES` run other or longer sequences.

mod common;

use common::*;
use mamori_gateway::GatewayConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Requests per run (`MAMORI_FUZZ_CASES` overrides).
const CASES: usize = 600;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Numbers that break naive arithmetic: overflow in a shape product, lossy casts, extremes.
fn edge_number(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..12) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(4_294_967_296u64),
        5 => json!(1e308),
        6 => json!(-1e308),
        7 => json!(5e-324),
        8 => json!(-0.0),
        9 => json!(0.5),
        10 => json!(usize::MAX / 2),
        _ => json!(rng.gen_range(-1000i64..1000)),
    }
}

fn edge_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..8) {
        0 => String::new(),
        1 => "input".into(),
        2 => "FP32".into(),
        3 => "UINT8".into(),
        4 => "NaN".into(),
        5 => "ü\u{0}\u{202e}名前".into(),
        6 => "x".repeat(rng.gen_range(1..5000)),
        _ => "probabilities".into(),
    }
}

/// A random JSON value, at most `depth` levels deep.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.gen_bool(0.5);
    match (leaf, rng.gen_range(0..6)) {
        (_, 0) => Value::Null,
        (_, 1) => json!(rng.gen_bool(0.5)),
        (_, 2) | (true, 4) => edge_number(rng),
        (_, 3) | (true, _) => json!(edge_string(rng)),
        (false, 4) => Value::Array(
            (0..rng.gen_range(0..6))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        (false, _) => Value::Object(
            (0..rng.gen_range(0..4))
                .map(|_| (edge_string(rng), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A valid request for the test model (batch 1–3), sometimes asking for outputs.
fn valid_request(rng: &mut StdRng) -> Value {
    let n = rng.gen_range(1..=3);
    let rows: Vec<Vec<f32>> = (0..n).map(|k| sample(k + rng.gen_range(0..5))).collect();
    let mut body = fp32_body(&rows);
    if rng.gen_bool(0.3) {
        body["outputs"] = json!([{"name": "probabilities"}]);
    }
    if rng.gen_bool(0.3) {
        body["id"] = json!("req-1");
    }
    body
}

/// Every path (object keys and array indexes) in `v`.
fn paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(json!(k));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        // Only the first few elements of long arrays (the data).
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate().take(4) {
                prefix.push(json!(i));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, p| match p {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// One structural mutation at a random place of `v`.
fn mutate(rng: &mut StdRng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let path = &all[rng.gen_range(0..all.len())];
    let target = at(v, path);
    match rng.gen_range(0..6) {
        0 | 1 => *target = random_json(rng, 3),
        2 => {
            if let Value::Object(m) = target {
                if let Some(k) = m.keys().nth(rng.gen_range(0..m.len().max(1))).cloned() {
                    m.remove(&k);
                }
            }
        }
        3 => {
            if let Value::Array(a) = target {
                match rng.gen_range(0..3) {
                    0 => a.truncate(rng.gen_range(0..=a.len())),
                    1 if !a.is_empty() => {
                        let c = a[rng.gen_range(0..a.len())].clone();
                        a.push(c);
                    }
                    _ => a.push(random_json(rng, 2)),
                }
            } else {
                *target = edge_number(rng);
            }
        }
        4 => {
            if let Value::Object(m) = target {
                m.insert(edge_string(rng), random_json(rng, 2));
            } else {
                *target = json!([target.clone()]);
            }
        }
        _ => {
            // The shape: the usual place for arithmetic on client numbers.
            if let Some(shape) = v.pointer_mut("/inputs/0/shape") {
                *shape = Value::Array((0..rng.gen_range(0..6)).map(|_| edge_number(rng)).collect());
            }
        }
    }
}

/// Byte-level damage to a serialised body.
fn corrupt(rng: &mut StdRng, body: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..4) {
        if body.is_empty() {
            body.push(rng.gen());
            continue;
        }
        let i = rng.gen_range(0..body.len());
        match rng.gen_range(0..4) {
            0 => body[i] = rng.gen(),
            1 => {
                body.remove(i);
            }
            2 => {
                let syntax = b"{}[],:\"\\0e-";
                body.insert(i, syntax[rng.gen_range(0..syntax.len())]);
            }
            _ => body.truncate(i),
        }
    }
}

/// What the gateway must always do: no 5xx, and a JSON body; an error names itself.
fn check(seed: u64, case: usize, what: &str, status: u16, body: &[u8]) {
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
    assert!(
        status < 500,
        "seed {seed} case {case} ({what}): status {status}, body {shown}"
    );
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("seed {seed} case {case} ({what}): status {status}, non-JSON body ({e}): {shown}")
    });
    if status >= 400 {
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "seed {seed} case {case} ({what}): status {status} without an `error` message: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bad_requests_never_get_a_5xx_or_stop_the_gateway() {
    let mut cfg = GatewayConfig::default();
    cfg.server.max_batch = 8;
    cfg.server.max_body_bytes = 64 * 1024;
    for t in cfg.tiers.values_mut() {
        t.rate_per_s = 1e6;
        t.burst = 1_000_000;
        t.daily_quota = 10_000_000;
    }
    let mut env = start(cfg, vec![lin_spec()]).await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let (_, label_key) = env.keys.create("lab", None, "label", &[]).unwrap();
    let admin = env.keys.create_admin_token().unwrap();
    let seed = env_or("MAMORI_FUZZ_SEED", 2026u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for case in 0..env_or("MAMORI_FUZZ_CASES", CASES) {
        let kind = rng.gen_range(0..10);
        let (method_post, url, token, body, what): (bool, String, String, Vec<u8>, &str) =
            match kind {
                // Structurally mutated inference requests.
                0..=4 => {
                    let mut v = valid_request(&mut rng);
                    for _ in 0..rng.gen_range(1..=3) {
                        mutate(&mut rng, &mut v);
                    }
                    let model =
                        ["lin", "lin/versions/1", "lin/versions/x", "nope"][rng.gen_range(0..4)];
                    let k = if rng.gen_bool(0.8) { &key } else { &label_key };
                    (
                        true,
                        env.infer_url(model),
                        k.clone(),
                        v.to_string().into_bytes(),
                        "mutated infer",
                    )
                }
                // Byte-corrupted inference requests.
                5 | 6 => {
                    let mut b = valid_request(&mut rng).to_string().into_bytes();
                    corrupt(&mut rng, &mut b);
                    (
                        true,
                        env.infer_url("lin"),
                        key.clone(),
                        b,
                        "corrupted infer",
                    )
                }
                // Mutated admin bodies.
                7 => {
                    let mut v = json!({"client": "mallory", "model": "lin", "reason": "r"});
                    mutate(&mut rng, &mut v);
                    let path =
                        ["/admin/block", "/admin/unblock", "/admin/keys"][rng.gen_range(0..3)];
                    (
                        true,
                        format!("{}{path}", env.url),
                        admin.clone(),
                        v.to_string().into_bytes(),
                        "mutated admin",
                    )
                }
                // Odd paths and methods, with and without credentials.
                8 => {
                    let path = [
                        "/v2/models/lin",
                        "/v2/models/lin/ready",
                        "/v2/models/%ff/ready",
                        "/v2/models/lin/versions/99",
                        "/v2/models/lin/infer/extra",
                        "/admin/keys/no-such-id/revoke",
                        "/admin/clients",
                        "/v2/../admin/keys",
                    ][rng.gen_range(0..8)];
                    let t = [&key, &admin, &String::new()][rng.gen_range(0..3)].clone();
                    (
                        rng.gen_bool(0.5),
                        format!("{}{path}", env.url),
                        t,
                        b"{}".to_vec(),
                        "odd path",
                    )
                }
                // Random bytes.
                _ => {
                    let n = rng.gen_range(0..200);
                    let b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    (true, env.infer_url("lin"), key.clone(), b, "random bytes")
                }
            };
        let mut req = if method_post {
            env.client.post(&url).body(body)
        } else {
            env.client.get(&url)
        };
        if !token.is_empty() {
            req = req.bearer_auth(&token);
        }
        if rng.gen_bool(0.2) {
            let v = ["0", "-1", "abc", "99999999999999999999", "3"][rng.gen_range(0..5)];
            req = req.header("Inference-Header-Content-Length", v);
        }
        if rng.gen_bool(0.2) {
            let ct = [
                "application/octet-stream",
                "text/plain",
                "application/json; charset=latin1",
            ][rng.gen_range(0..3)];
            req = req.header("content-type", ct);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("seed {seed} case {case} ({what}): connection failed: {e}"));
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        check(seed, case, what, status, &bytes);
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("statuses: {statuses:?}");
    // The run exercised both sides: answers and several kinds of refusal.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 10,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().filter(|s| **s >= 400).count() >= 3,
        "{statuses:?}"
    );
    // Still serving.
    let (s, v) = env.post("lin", &key, fp32_body(&[sample(0)])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.get("/v2/health/live").await.0, 200);
    env.shutdown().await;
}

/// Names that could forge a log line or display as another client are refused by the admin
/// API with a JSON 400 naming the problem (key creation and blocks alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_names_that_forge_log_lines() {
    let mut env = start_default().await;
    let admin = env.keys.create_admin_token().unwrap();
    for (path, body, fragment) in [
        (
            "/admin/keys",
            json!({"client": "bob\nALERT alice blocked"}),
            "control character",
        ),
        (
            "/admin/keys",
            json!({"client": "bob", "group": "\u{202e}nimda"}),
            "bidirectional",
        ),
        (
            "/admin/block",
            json!({"client": "mallory\r"}),
            "control character",
        ),
        ("/admin/unblock", json!({"client": ""}), "must not be empty"),
    ] {
        let r = env
            .client
            .post(format!("{}{path}", env.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path} {body}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(fragment),
            "{path}: {v}"
        );
    }
    assert!(env.keys.list().is_empty());
    assert!(env.chain.blocked().is_empty());
    env.shutdown().await;
}
