//! The gateway serving a real `mamori-ml` model loaded from disk (native directory).

mod common;

use common::*;
use mamori_core::Model;
use mamori_gateway::{GatewayConfig, ModelSpec};
use mamori_ml::{Arch, NativeModel, Network};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_saved_native_model() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::new(&Arch::Mlp { hidden: vec![8] }, &SHAPE, CLASSES, 7);
    NativeModel::new(net, card("native-mlp"))
        .save(dir.path())
        .unwrap();
    let model: Arc<dyn Model> = Arc::from(mamori_ml::load_model(dir.path()).unwrap());
    assert_eq!(model.card().name, "native-mlp");
    let mut env = start(
        GatewayConfig::default(),
        vec![ModelSpec::new(model.clone(), "mamori-native")],
    )
    .await;
    let (_, key) = env.keys.create("alice", None, "full", &[]).unwrap();
    let rows = vec![sample(1), sample(2)];
    let (s, r) = env.post("native-mlp", &key, fp32_body(&rows)).await;
    assert_eq!(s, 200, "{r}");
    let x = mamori_core::Tensor::from_rows(&SHAPE, rows.iter().map(|r| r.as_slice())).unwrap();
    let want = model.predict(&x).unwrap();
    let got: Vec<f32> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
    for (a, b) in got.iter().zip(want.data()) {
        assert!((a - b).abs() < 1e-6, "{got:?} vs {:?}", want.data());
    }
    env.shutdown().await;
}
