//! Every bad input gets its own 4xx with a JSON error naming the problem (issue #3, item 4).

mod common;

use common::*;
use mamori_gateway::GatewayConfig;
use serde_json::json;

fn good_input() -> serde_json::Value {
    json!({"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": sample(0)})
}

fn with_input(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut i = good_input();
    f(&mut i);
    json!({"inputs": [i]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_each_get_a_named_4xx() {
    let mut cfg = GatewayConfig::default();
    cfg.server.max_batch = 8;
    cfg.server.max_body_bytes = 64 * 1024;
    let mut env = start(cfg, vec![lin_spec()]).await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let (_, label_key) = env.keys.create("lab", None, "label", &[]).unwrap();

    let mut nested_ragged = good_input();
    nested_ragged["shape"] = json!([2, 16]);
    nested_ragged["data"] = json!([sample(0), sample(1)[..15].to_vec()]);
    let big = vec![0.5f32; 40_000];

    // (name, model path, body, key, expected status, expected message fragment)
    let cases: Vec<(&str, &str, String, &str, u16, &str)> = vec![
        ("not json", "lin", "hello".into(), &key, 400, "malformed JSON"),
        ("truncated json", "lin", "{\"inputs\": [".into(), &key, 400, "malformed JSON"),
        ("empty body", "lin", "".into(), &key, 400, "empty request body"),
        ("json array", "lin", "[1,2]".into(), &key, 400, "must be a JSON object"),
        ("missing inputs", "lin", "{}".into(), &key, 400, "missing `inputs`"),
        ("inputs not array", "lin", json!({"inputs": 3}).to_string(), &key, 400, "`inputs` must be an array"),
        ("empty inputs", "lin", json!({"inputs": []}).to_string(), &key, 400, "`inputs` is empty"),
        ("two inputs", "lin", json!({"inputs": [good_input(), good_input()]}).to_string(), &key, 400, "exactly one input"),
        ("input not object", "lin", json!({"inputs": [5]}).to_string(), &key, 400, "inputs[0] must be a JSON object"),
        ("missing name", "lin", with_input(|i| { i.as_object_mut().unwrap().remove("name"); }), &key, 400, "missing `name`"),
        ("wrong input name", "lin", with_input(|i| i["name"] = json!("pixels")), &key, 400, "unknown input \"pixels\""),
        ("missing shape", "lin", with_input(|i| { i.as_object_mut().unwrap().remove("shape"); }), &key, 400, "missing `shape`"),
        ("shape not array", "lin", with_input(|i| i["shape"] = json!("1x16")), &key, 400, "`shape` must be an array"),
        ("negative dim", "lin", with_input(|i| i["shape"] = json!([1, -16])), &key, 400, "non-negative integers"),
        ("missing datatype", "lin", with_input(|i| { i.as_object_mut().unwrap().remove("datatype"); }), &key, 400, "missing `datatype`"),
        ("unsupported datatype", "lin", with_input(|i| i["datatype"] = json!("INT64")), &key, 400, "INT64 is not supported"),
        ("unknown datatype", "lin", with_input(|i| i["datatype"] = json!("fp32")), &key, 400, "unknown datatype \"fp32\""),
        ("missing data", "lin", with_input(|i| { i.as_object_mut().unwrap().remove("data"); }), &key, 400, "missing `data`"),
        ("data not array", "lin", with_input(|i| i["data"] = json!("abc")), &key, 400, "`data` must be an array"),
        ("string in data", "lin", with_input(|i| i["data"][3] = json!("x")), &key, 400, "only numbers are allowed"),
        ("bool in data", "lin", with_input(|i| i["data"][3] = json!(true)), &key, 400, "holds a boolean"),
        ("too few values", "lin", with_input(|i| { i["data"].as_array_mut().unwrap().pop(); }), &key, 400, "needs 16 values, `data` has 15"),
        ("too many values", "lin", with_input(|i| i["data"].as_array_mut().unwrap().push(json!(0.5))), &key, 400, "needs 16 values, `data` has 17"),
        ("ragged nested data", "lin", json!({"inputs": [nested_ragged]}).to_string(), &key, 400, "needs 32 values, `data` has 31"),
        ("wrong sample shape", "lin", with_input(|i| i["shape"] = json!([1, 4, 4])), &key, 400, "does not match the model's [n, 1, 4, 4]"),
        ("shape product overflows", "lin", with_input(|i| i["shape"] = json!([4_294_967_296u64, 4_294_967_296u64, 1, 1])), &key, 400, "has too many elements"),
        ("rank 1 shape", "lin", with_input(|i| i["shape"] = json!([16])), &key, 400, "does not match the model's"),
        ("batch zero", "lin", with_input(|i| { i["shape"] = json!([0, 1, 4, 4]); i["data"] = json!([]); }), &key, 400, "batch size is 0"),
        ("batch over limit", "lin", with_input(|i| { i["shape"] = json!([9, 16]); i["data"] = json!(vec![0.5f32; 9 * 16]); }), &key, 400, "batch size 9 exceeds the limit of 8"),
        ("fp32 above range", "lin", with_input(|i| i["data"][2] = json!(1.5)), &key, 400, "value 1.5 at index 2 is outside the model's input range [0, 1]"),
        ("fp32 below range", "lin", with_input(|i| i["data"][0] = json!(-0.1)), &key, 400, "outside the model's input range"),
        ("fp32 overflow to inf", "lin", with_input(|i| i["data"][1] = json!(1e39)), &key, 400, "is not a finite FP32 number"),
        ("NaN literal", "lin", with_input(|i| i["data"][0] = json!(0.0)).replacen("0.0", "NaN", 1), &key, 400, "NaN/Infinity"),
        ("Infinity literal", "lin", with_input(|i| i["data"][0] = json!(0.0)).replacen("0.0", "-Infinity", 1), &key, 400, "NaN/Infinity"),
        ("uint8 above 255", "lin", with_input(|i| { i["datatype"] = json!("UINT8"); i["data"] = json!(vec![256; 16]); }), &key, 400, "is not a UINT8"),
        ("uint8 negative", "lin", with_input(|i| { i["datatype"] = json!("UINT8"); i["data"] = json!(vec![-1; 16]); }), &key, 400, "is not a UINT8"),
        ("uint8 fractional", "lin", with_input(|i| { i["datatype"] = json!("UINT8"); i["data"] = json!(vec![1.5; 16]); }), &key, 400, "is not a UINT8"),
        ("unknown output", "lin", json!({"inputs": [good_input()], "outputs": [{"name": "logits"}]}).to_string(), &key, 400, "unknown output \"logits\""),
        ("outputs not array", "lin", json!({"inputs": [good_input()], "outputs": {"name": "label"}}).to_string(), &key, 400, "`outputs` must be an array"),
        ("output without name", "lin", json!({"inputs": [good_input()], "outputs": [{}]}).to_string(), &key, 400, "needs a string `name`"),
        ("id not string", "lin", json!({"id": 5, "inputs": [good_input()]}).to_string(), &key, 400, "`id` must be a string"),
        ("parameters not object", "lin", json!({"parameters": [1], "inputs": [good_input()]}).to_string(), &key, 400, "`parameters` must be a JSON object"),
        ("wrong model name", "nope", json!({"inputs": [good_input()]}).to_string(), &key, 404, "unknown model \"nope\""),
        ("unknown version", "lin/versions/3", json!({"inputs": [good_input()]}).to_string(), &key, 404, "no version \"3\""),
        ("label tier asks probabilities", "lin", json!({"inputs": [good_input()], "outputs": [{"name": "probabilities"}]}).to_string(), &label_key, 403, "labels only"),
        ("body too large", "lin", json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": big}]}).to_string(), &key, 413, "exceeds the limit of 65536 bytes"),
    ];
    assert!(cases.len() >= 25);
    let mut seen = std::collections::HashSet::new();
    for (name, model, body, k, status, fragment) in &cases {
        assert!(seen.insert(*name), "duplicate case {name}");
        let r = env
            .client
            .post(env.infer_url(model))
            .bearer_auth(k)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let v: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: non-JSON error body: {e}"));
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no `error` in {v}"));
        assert_eq!(got, *status, "{name}: {msg}");
        assert!(
            msg.contains(fragment),
            "{name}: {msg:?} should contain {fragment:?}"
        );
    }
    // Binary extension misuse.
    let header = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
        "parameters": {"binary_data_size": 64}}]})
    .to_string();
    for (hlen, extra, fragment) in [
        ("abc".to_string(), 0usize, "must be a non-negative integer"),
        (
            (header.len() + 100).to_string(),
            64,
            "exceeds the body length",
        ),
        (
            header.len().to_string(),
            60,
            "exceeds the 60 remaining bytes",
        ),
        (header.len().to_string(), 68, "not claimed by any input"),
    ] {
        let mut body = header.clone().into_bytes();
        body.extend(std::iter::repeat_n(0u8, extra));
        let r = env
            .client
            .post(env.infer_url("lin"))
            .bearer_auth(&key)
            .header("Inference-Header-Content-Length", hlen)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(fragment), "{v}");
    }
    // Nothing above reached the model: no request was answered.
    let answered = env
        .audited_requests()
        .into_iter()
        .filter(|e| e.status == 200)
        .count();
    assert_eq!(answered, 0);
    env.shutdown().await;
}
