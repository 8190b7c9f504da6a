//! Oracle tests: exact query accounting, budgets, disclosure, multi-key round robin, and the
//! OIP v2 HTTP client against a tiny local server (issue #4).

mod common;

use common::Linear;
use mamori_attack::{HttpOracle, HttpOracleConfig, LocalOracle, MultiKeyOracle};
use mamori_core::{Disclosure, Model, Oracle, OracleError, Tensor};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn batch(n: usize, d: usize) -> Tensor {
    Tensor::new(
        vec![n, d],
        (0..n * d).map(|i| (i % 13) as f32 / 13.0).collect(),
    )
    .unwrap()
}

#[test]
fn local_oracle_counts_samples_and_enforces_budget() {
    let mut o = LocalOracle::new(Box::new(Linear::new(4, 3))).with_budget(Some(10));
    assert_eq!(o.queries_used(), 0);
    let a = o.query(&batch(7, 4)).unwrap();
    assert_eq!(a.probs.shape(), &[7, 3]);
    assert_eq!(o.queries_used(), 7);
    assert_eq!(o.remaining(), Some(3));
    // A batch that does not fit is refused whole and charges nothing.
    match o.query(&batch(4, 4)) {
        Err(OracleError::BudgetExhausted {
            budget: 10,
            used: 7,
        }) => {}
        other => panic!("expected BudgetExhausted, got {other:?}"),
    }
    assert_eq!(o.queries_used(), 7);
    o.query(&batch(3, 4)).unwrap();
    assert_eq!(o.remaining(), Some(0));
    // Wrong input shape is a model error, not a panic, and charges nothing.
    let mut o = LocalOracle::new(Box::new(Linear::new(4, 3)));
    assert!(o.query(&batch(2, 5)).is_err());
    assert_eq!(o.queries_used(), 0);
}

#[test]
fn local_oracle_disclosure_levels() {
    let x = batch(5, 4);
    let full = Linear::new(4, 3).predict(&x).unwrap();
    let mut o = LocalOracle::new(Box::new(Linear::new(4, 3))).with_disclosure(Disclosure::Label);
    let a = o.query(&x).unwrap();
    assert_eq!(a.labels, full.argmax_rows());
    assert!(a
        .probs
        .rows()
        .all(|r| r.iter().filter(|v| **v == 1.0).count() == 1));
    let mut o = LocalOracle::new(Box::new(Linear::new(4, 3))).with_disclosure(Disclosure::TopK(2));
    let a = o.query(&x).unwrap();
    assert!(a
        .probs
        .rows()
        .all(|r| r.iter().filter(|v| **v == 0.0).count() == 1));
}

#[test]
fn multi_key_oracle_splits_traffic_and_survives_a_refused_key() {
    let keys: Vec<Box<dyn Oracle>> = (0..3)
        .map(|i| {
            Box::new(
                LocalOracle::new(Box::new(Linear::new(4, 3))).with_budget(Some(if i == 0 {
                    10
                } else {
                    100
                })),
            ) as Box<dyn Oracle>
        })
        .collect();
    let mut m = MultiKeyOracle::new(keys, 5).unwrap().with_budget(Some(60));
    let a = m.query(&batch(30, 4)).unwrap();
    assert_eq!(a.labels.len(), 30);
    assert_eq!(m.queries_used(), 30);
    assert_eq!(m.per_identity(), vec![10, 10, 10]);
    // Key 0 is now exhausted: its share moves to the others, accounting stays exact.
    m.query(&batch(20, 4)).unwrap();
    assert_eq!(m.queries_used(), 50);
    assert_eq!(m.per_identity().iter().sum::<u64>(), 50);
    assert_eq!(m.per_identity()[0], 10);
    assert!(matches!(
        m.query(&batch(11, 4)),
        Err(OracleError::BudgetExhausted { .. })
    ));
    assert!(MultiKeyOracle::new(Vec::new(), 1).is_err());
}

/// A minimal Open Inference Protocol v2 server on 127.0.0.1:0 serving `Linear::new(4, 3)`.
/// Key `good` is served, `banned` gets 403; the first `throttle` inference requests get 429
/// with `Retry-After: 1`.
struct TinyServer {
    url: String,
    batches: Arc<Mutex<Vec<usize>>>,
    infer_calls: Arc<AtomicUsize>,
}

fn spawn_server(throttle: usize) -> TinyServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let batches = Arc::new(Mutex::new(Vec::new()));
    let infer_calls = Arc::new(AtomicUsize::new(0));
    let (b2, c2) = (batches.clone(), infer_calls.clone());
    std::thread::spawn(move || {
        let model = Linear::new(4, 3);
        // Bounded: a test never sends more than a few hundred requests.
        for stream in listener.incoming().take(500) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    auth = h["authorization:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let (status, extra, payload) = if line.starts_with("GET /v2/models/lin ") {
                (
                    "200 OK",
                    "",
                    r#"{"name":"lin","platform":"mamori","inputs":[{"name":"input","datatype":"FP32","shape":[-1,4]}],"outputs":[{"name":"probabilities","datatype":"FP32","shape":[-1,3]}]}"#.to_string(),
                )
            } else if line.starts_with("POST /v2/models/lin/infer ") {
                let k = c2.fetch_add(1, Ordering::SeqCst);
                if auth == "Bearer banned" {
                    ("403 Forbidden", "", r#"{"error":"blocked"}"#.to_string())
                } else if auth != "Bearer good" {
                    ("401 Unauthorized", "", r#"{"error":"no key"}"#.to_string())
                } else if k < throttle {
                    (
                        "429 Too Many Requests",
                        "Retry-After: 1\r\n",
                        r#"{"error":"slow down"}"#.to_string(),
                    )
                } else {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let inp = &v["inputs"][0];
                    let shape: Vec<usize> = inp["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    let data: Vec<f32> = inp["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_f64().unwrap() as f32)
                        .collect();
                    b2.lock().unwrap().push(shape[0]);
                    let p = model
                        .predict(&Tensor::new(shape.clone(), data).unwrap())
                        .unwrap();
                    let out = serde_json::json!({"model_name":"lin","outputs":[{"name":"probabilities","shape":[shape[0],3],"datatype":"FP32","data":p.data()}]});
                    ("200 OK", "", out.to_string())
                }
            } else {
                ("404 Not Found", "", r#"{"error":"not found"}"#.to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            let _ = stream.write_all(resp.as_bytes());
        }
    });
    TinyServer {
        url,
        batches,
        infer_calls,
    }
}

fn config(url: &str, key: &str) -> HttpOracleConfig {
    let mut c = HttpOracleConfig::from_url(&format!("{url}/v2/models/lin"), None).unwrap();
    c.api_key = Some(key.into());
    c.batch_size = 4;
    c
}

#[test]
fn http_oracle_matches_the_local_model_with_batching_and_retry_after() {
    let srv = spawn_server(1);
    let mut o = HttpOracle::connect(config(&srv.url, "good"))
        .unwrap()
        .with_budget(Some(10));
    assert_eq!(o.input_shape(), vec![4]);
    assert_eq!(o.num_classes(), 3);
    let x = batch(10, 4);
    let t0 = Instant::now();
    let a = o.query(&x).unwrap();
    // The first request was throttled with Retry-After: 1 and retried after waiting.
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(o.retries(), 1);
    assert_eq!(a.disclosure, Disclosure::Probabilities);
    let local = Linear::new(4, 3).predict(&x).unwrap();
    for (p, q) in a.probs.data().iter().zip(local.data()) {
        assert!((p - q).abs() < 1e-6);
    }
    assert_eq!(o.queries_used(), 10);
    assert_eq!(*srv.batches.lock().unwrap(), vec![4, 4, 2]);
    assert!(matches!(
        o.query(&batch(1, 4)),
        Err(OracleError::BudgetExhausted { .. })
    ));
    assert_eq!(srv.infer_calls.load(Ordering::SeqCst), 4);
    // Bad input shape is rejected before any request.
    assert!(o.query(&batch(1, 5)).is_err());
}

#[test]
fn http_oracle_maps_403_to_refused_and_bad_targets_to_errors() {
    let srv = spawn_server(0);
    let mut o = HttpOracle::connect(config(&srv.url, "banned")).unwrap();
    assert!(matches!(
        o.query(&batch(2, 4)),
        Err(OracleError::Refused(_))
    ));
    assert_eq!(o.queries_used(), 0);
    let mut o = HttpOracle::connect(config(&srv.url, "nobody")).unwrap();
    assert!(matches!(
        o.query(&batch(2, 4)),
        Err(OracleError::Refused(_))
    ));
    // Unknown model: metadata 404.
    let mut c = config(&srv.url, "good");
    c.model = "nope".into();
    c.max_retries = 0;
    assert!(HttpOracle::connect(c).is_err());
    // Nothing listening: a transport error after bounded retries.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut c = config(&format!("http://{addr}"), "good");
    c.max_retries = 1;
    c.initial_backoff = Duration::from_millis(10);
    assert!(matches!(
        HttpOracle::connect(c),
        Err(OracleError::Transport(_))
    ));
}

#[test]
fn multi_key_over_http_drops_the_banned_key() {
    let srv = spawn_server(0);
    let a: Box<dyn Oracle> = Box::new(HttpOracle::connect(config(&srv.url, "banned")).unwrap());
    let b: Box<dyn Oracle> = Box::new(HttpOracle::connect(config(&srv.url, "good")).unwrap());
    let mut m = MultiKeyOracle::new(vec![a, b], 3).unwrap();
    let ans = m.query(&batch(9, 4)).unwrap();
    assert_eq!(ans.labels.len(), 9);
    assert_eq!(m.per_identity(), vec![0, 9]);
}
