//! Open Inference Protocol v2 REST conformance over real HTTP (issue #3, acceptance 1).

mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let mut env = start_default().await;
    assert_eq!(
        env.get("/v2/health/live").await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        env.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let (s, meta) = env.get("/v2").await;
    assert_eq!(s, 200);
    assert_eq!(meta["name"], "mamori");
    assert!(meta["version"].is_string());
    assert!(meta["extensions"].is_array());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_ready_with_and_without_version() {
    let mut env = start_default().await;
    for path in ["/v2/models/lin", "/v2/models/lin/versions/1"] {
        let (s, m) = env.get(path).await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(m["name"], "lin");
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(m["platform"], "test");
        assert_eq!(m["inputs"][0]["name"], "input");
        assert_eq!(m["inputs"][0]["datatype"], "FP32");
        assert_eq!(m["inputs"][0]["shape"], json!([-1, 1, 4, 4]));
        assert_eq!(m["outputs"][0]["name"], "probabilities");
        assert_eq!(m["outputs"][0]["shape"], json!([-1, 3]));
        assert_eq!(m["outputs"][1]["name"], "label");
        assert_eq!(m["outputs"][1]["datatype"], "INT64");
    }
    for path in ["/v2/models/lin/ready", "/v2/models/lin/versions/1/ready"] {
        assert_eq!(
            env.get(path).await,
            (200, json!({"name": "lin", "ready": true}))
        );
    }
    let (s, e) = env.get("/v2/models/nope").await;
    assert_eq!(s, 404);
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("unknown model \"nope\""));
    let (s, e) = env.get("/v2/models/lin/versions/7").await;
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap().contains("no version \"7\""));
    let (s, _) = env.get("/v2/models/nope/ready").await;
    assert_eq!(s, 404);
    let (s, e) = env.get("/v2/nothing/here").await;
    assert_eq!(s, 404);
    assert!(e["error"].is_string());
    // Wrong method: JSON error too.
    let r = env.client.get(env.infer_url("lin")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"].is_string());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_fp32_batched_with_id_parameters_and_outputs() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let rows = vec![sample(1), sample(2), sample(3)];
    let mut body = fp32_body(&rows);
    body["id"] = json!("req-42");
    body["parameters"] = json!({"priority": 1});
    let (s, r) = env.post("lin", &key, body.clone()).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["id"], "req-42");
    assert_eq!(r["model_name"], "lin");
    assert_eq!(r["model_version"], "1");
    let want = expected_probs("lin", &rows);
    let p = &r["outputs"][0];
    assert_eq!(p["name"], "probabilities");
    assert_eq!(p["datatype"], "FP32");
    assert_eq!(p["shape"], json!([3, 3]));
    let got: Vec<f32> = serde_json::from_value(p["data"].clone()).unwrap();
    for (a, b) in got.iter().zip(want.data()) {
        assert!((a - b).abs() < 1e-6, "{got:?} vs {:?}", want.data());
    }
    let l = &r["outputs"][1];
    assert_eq!(l["name"], "label");
    assert_eq!(l["datatype"], "INT64");
    assert_eq!(l["shape"], json!([3]));
    let labels: Vec<usize> = serde_json::from_value(l["data"].clone()).unwrap();
    assert_eq!(labels, want.argmax_rows());

    // Output selection: only the label.
    body["outputs"] = json!([{"name": "label"}]);
    let (s, r) = env.post("lin", &key, body.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(r["outputs"][0]["name"], "label");

    // Versioned endpoint, nested data, flat [n, 16] shape, no id → no id echoed.
    let nested = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
        "data": [sample(1)]}]});
    let r = env
        .client
        .post(format!("{}/v2/models/lin/versions/1/infer", env.url))
        .header("x-api-key", &key)
        .json(&nested)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r: serde_json::Value = r.json().await.unwrap();
    assert!(r.get("id").is_none());
    assert_eq!(r["outputs"][1]["data"], json!([want.argmax_rows()[0]]));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_uint8_is_normalised_with_the_card() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let raw: Vec<u8> = (0..16).map(|i| (i * 16) as u8).collect();
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "UINT8", "data": raw}]});
    let (s, r) = env.post("lin", &key, body).await;
    assert_eq!(s, 200, "{r}");
    let norm: Vec<f32> = raw.iter().map(|v| *v as f32 / 255.0).collect();
    let want = expected_probs("lin", &[norm]);
    let got: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
    for (a, b) in got.iter().zip(want.data()) {
        assert!((a - b).abs() < 1e-6);
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_extension_input() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let x = sample(5);
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]
    }))
    .unwrap();
    let mut body = header.clone();
    for v in &x {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let r = env
        .client
        .post(env.infer_url("lin"))
        .bearer_auth(&key)
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r: serde_json::Value = r.json().await.unwrap();
    let want = expected_probs("lin", &[x]);
    let got: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
    for (a, b) in got.iter().zip(want.data()) {
        assert!((a - b).abs() < 1e-6);
    }
    env.shutdown().await;
}

/// A hand-written HTTP/1.1 request exactly as the protocol's example shows it (raw socket, no
/// client library), to prove a foreign client works unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_spec_request_over_a_raw_socket() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let data: Vec<String> = sample(9).iter().map(|v| format!("{v}")).collect();
    let body = format!(
        "{{\n  \"id\" : \"42\",\n  \"inputs\" : [\n    {{\n      \"name\" : \"input\",\n      \"shape\" : [ 1, 1, 4, 4 ],\n      \"datatype\" : \"FP32\",\n      \"data\" : [ {} ]\n    }}\n  ],\n  \"outputs\" : [\n    {{\n      \"name\" : \"label\"\n    }}\n  ]\n}}",
        data.join(", ")
    );
    let addr = env.server.as_ref().unwrap().local_addr();
    let req = format!(
        "POST /v2/models/lin/infer HTTP/1.1\r\nHost: localhost:8000\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json_part = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json_part).unwrap();
    assert_eq!(v["id"], "42");
    assert_eq!(v["outputs"][0]["name"], "label");
    let want = expected_probs("lin", &[sample(9)]).argmax_rows();
    assert_eq!(v["outputs"][0]["data"], json!(want));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_requests_and_decisions() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let (s, _) = env
        .post("lin", &key, fp32_body(&[sample(0), sample(1)]))
        .await;
    assert_eq!(s, 200);
    let (s, _) = env.post("lin", "mk_bad_key", fp32_body(&[sample(0)])).await;
    assert_eq!(s, 401);
    let text = env
        .client
        .get(format!("{}/metrics", env.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("mamori_requests_total{model=\"lin\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("mamori_requests_total{model=\"lin\",status=\"401\"} 1"));
    assert!(text.contains("mamori_queries_total{model=\"lin\"} 2"));
    assert!(text.contains("mamori_decisions_total{model=\"lin\",decision=\"allow\"} 1"));
    assert!(text.contains("mamori_request_duration_seconds_count{model=\"lin\"} 2"));
    env.shutdown().await;
}

/// Binary tensor data extension for outputs (what NVIDIA's tritonclient asks for by default):
/// A binary-extension reply split into the JSON header's length (from
/// `Inference-Header-Content-Length`), the parsed header and the whole body.
async fn binary_reply(r: reqwest::Response) -> (usize, serde_json::Value, Vec<u8>) {
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap().to_vec();
    let header = serde_json::from_slice(&bytes[..n]).unwrap();
    (n, header, bytes)
}

/// `binary_data_output` for every output, `binary_data` per output overriding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_extension_output() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let rows = vec![sample(4), sample(5)];
    let want = expected_probs("lin", &rows);
    let send = |body: serde_json::Value| {
        env.client
            .post(env.infer_url("lin"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };

    // Every output binary.
    let mut body = fp32_body(&rows);
    body["parameters"] = json!({"binary_data_output": true});
    let r = send(body).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let (n, header, bytes) = binary_reply(r).await;
    let outs = &header["outputs"];
    assert_eq!(outs[0]["name"], "probabilities");
    assert_eq!(outs[0]["shape"], json!([2, 3]));
    assert_eq!(outs[0]["parameters"]["binary_data_size"], 24);
    assert!(outs[0].get("data").is_none());
    assert_eq!(outs[1]["name"], "label");
    assert_eq!(outs[1]["datatype"], "INT64");
    assert_eq!(outs[1]["parameters"]["binary_data_size"], 16);
    assert_eq!(bytes.len(), n + 24 + 16);
    let probs: Vec<f32> = bytes[n..n + 24]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(probs, want.data());
    let labels: Vec<usize> = bytes[n + 24..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    assert_eq!(labels, want.argmax_rows());

    // Per-output choice overrides the request-wide one: label binary, probabilities JSON.
    let mut body = fp32_body(&rows);
    body["parameters"] = json!({"binary_data_output": true});
    body["outputs"] = json!([
        {"name": "probabilities", "parameters": {"binary_data": false}},
        {"name": "label"}
    ]);
    let r = send(body).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (n, header, bytes) = binary_reply(r).await;
    let json_probs: Vec<f32> = header["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(json_probs, want.data());
    assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 16);
    assert_eq!(bytes.len(), n + 16);

    // binary_data false everywhere: a plain JSON answer without the header.
    let mut body = fp32_body(&rows);
    body["outputs"] = json!([{"name": "label", "parameters": {"binary_data": false}}]);
    let r = send(body).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("inference-header-content-length").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["outputs"][0]["data"], json!(want.argmax_rows()));
    env.shutdown().await;
}

/// Extensions the gateway does not implement are refused by name (400), not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_output_extensions_are_named() {
    let mut env = start_default().await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let cases = [
        (
            json!({"outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}),
            "classification extension (class_count) is not supported",
        ),
        (
            json!({"outputs": [{"name": "label", "parameters": {"shared_memory_region": "r"}}]}),
            "shared-memory extension is not supported",
        ),
        (
            json!({"outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}),
            "`binary_data` must be true or false",
        ),
        (
            json!({"outputs": [{"name": "label", "parameters": 3}]}),
            "`parameters` must be a JSON object",
        ),
        (
            json!({"parameters": {"binary_data_output": 1}}),
            "`binary_data_output` must be true or false",
        ),
    ];
    for (extra, want) in cases {
        let mut body = fp32_body(&[sample(1)]);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, e) = env.post("lin", &key, body).await;
        assert_eq!(s, 400, "{want}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(want), "{msg} should say {want}");
    }
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
        "parameters": {"shared_memory_region": "in"}}]});
    let (s, e) = env.post("lin", &key, body).await;
    assert_eq!(s, 400);
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("shared-memory extension is not supported"));
    env.shutdown().await;
}
