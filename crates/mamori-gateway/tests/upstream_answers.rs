//! A proxied upstream's answers are checked like any input: a broken upstream (values that
//! are not numbers, the wrong count, rows that are not distributions) is a 502 naming the
//! upstream and the problem; logits are taken as logits only when the operator says so
//! (`--upstream-logits`), and then come out as their softmax.

mod common;

use common::*;
use mamori_core::{Oracle, Tensor};
use mamori_gateway::{
    ChainBuilder, ChainOracle, GatewayConfig, KeyStore, ModelSpec, UpstreamModel,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// An OIP server for model `m` (input `[-1, 1, 4, 4]`, 3 classes) whose answer rows are
/// whatever the test puts in `row`, repeated per sample.
struct FakeUpstream {
    url: String,
    row: Arc<Mutex<Value>>,
}

impl FakeUpstream {
    fn start() -> Self {
        use axum::routing::{get, post};
        let row = Arc::new(Mutex::new(json!([0.2, 0.3, 0.5])));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = row.clone();
        let app = axum::Router::new()
            .route(
                "/v2/models/m",
                get(|| async {
                    axum::Json(json!({
                        "name": "m",
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 4, 4]}],
                        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
                    }))
                }),
            )
            .route(
                "/v2/models/m/infer",
                post(move |axum::Json(req): axum::Json<Value>| {
                    let row = answer.lock().unwrap().clone();
                    async move {
                        let n = req["inputs"][0]["shape"][0].as_u64().unwrap() as usize;
                        let data: Vec<Value> = (0..n)
                            .flat_map(|_| row.as_array().unwrap().clone())
                            .collect();
                        axum::Json(json!({
                            "model_name": "m",
                            "outputs": [{"name": "probabilities", "datatype": "FP32",
                                         "shape": [n, 3], "data": data}]
                        }))
                    }
                }),
            );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        FakeUpstream { url, row }
    }

    fn answer(&self, row: Value) {
        *self.row.lock().unwrap() = row;
    }
}

/// A front gateway proxying `m`, and a client of it.
fn front(up: &FakeUpstream, logits: bool) -> ChainOracle {
    let mut m = UpstreamModel::connect(&up.url, "m", None, [0.0, 1.0]).unwrap();
    if logits {
        m = m.logits_output();
    }
    let keys = Arc::new(KeyStore::in_memory());
    let (_, k) = keys.create("client", None, "full", &[]).unwrap();
    let chain = ChainBuilder::new(GatewayConfig::default())
        .keys(keys)
        .model(ModelSpec::new(Arc::new(m), "upstream"))
        .build()
        .unwrap();
    ChainOracle::new(Arc::new(chain), &k, None).unwrap()
}

fn two() -> Tensor {
    Tensor::from_rows(&SHAPE, [sample(1).as_slice(), sample(2).as_slice()]).unwrap()
}

#[test]
fn broken_upstream_answers_are_refused_by_name_and_logits_only_when_declared() {
    let up = FakeUpstream::start();
    let mut o = front(&up, false);
    // A distribution passes through unchanged.
    let a = o.query(&two()).unwrap();
    for (p, q) in a.probs.row(1).iter().zip([0.2, 0.3, 0.5]) {
        assert!((p - q).abs() < 1e-5, "{:?}", a.probs.row(1));
    }
    for (row, fragment) in [
        (json!([2.0, 0.5, -1.0]), "not a probability distribution"),
        (json!([0.7, 0.7, 0.1]), "--upstream-logits"),
        (json!([0.5, "x", 0.5]), "not a finite number"),
        (
            json!([0.5, 0.5]),
            "answered 4 values for 2 samples of 3 classes",
        ),
    ] {
        up.answer(row.clone());
        let e = o.query(&two()).unwrap_err().to_string();
        assert!(e.contains(fragment), "{row}: {e}");
        assert!(
            e.contains(&up.url),
            "{row}: the error names the upstream: {e}"
        );
    }
    // Declared logits: the softmax of the scores.
    up.answer(json!([2.0, 0.5, -1.0]));
    let mut o = front(&up, true);
    let a = o.query(&two()).unwrap();
    let z: f32 = [2.0f32, 0.5, -1.0].iter().map(|v| v.exp()).sum();
    for (p, s) in a.probs.row(0).iter().zip([2.0f32, 0.5, -1.0]) {
        assert!((p - s.exp() / z).abs() < 1e-5, "{:?}", a.probs.row(0));
    }
    // Logits must still be numbers.
    up.answer(json!([2.0, 1e39, 0.0]));
    let e = o.query(&two()).unwrap_err().to_string();
    assert!(e.contains("not a finite number"), "{e}");
}

/// Over HTTP the refusal is a 502 with a JSON error that does not show the caller the
/// upstream's address or the cause; the audit record keeps both for the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_is_a_502_with_a_json_error() {
    let up = tokio::task::spawn_blocking(FakeUpstream::start)
        .await
        .unwrap();
    up.answer(json!([2.0, 0.5, -1.0]));
    let url = up.url.clone();
    let m =
        tokio::task::spawn_blocking(move || UpstreamModel::connect(&url, "m", None, [0.0, 1.0]))
            .await
            .unwrap()
            .unwrap();
    let mut env = start(
        GatewayConfig::default(),
        vec![ModelSpec::new(Arc::new(m), "upstream")],
    )
    .await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let (status, v) = env.post("m", &key, fp32_body(&[sample(0)])).await;
    assert_eq!(status, 502, "{v}");
    let shown = v["error"].as_str().unwrap();
    assert!(shown.starts_with("inference failed"), "{v}");
    assert!(
        !shown.contains(&up.url) && !shown.contains("distribution"),
        "{v}"
    );
    let audited = env.audited_requests();
    let error = audited[0].error.as_deref().unwrap();
    assert!(
        error.contains(&up.url) && error.contains("not a probability distribution"),
        "{error}"
    );
    env.shutdown().await;
}
