//! Shared fixtures: a tiny linear softmax model and a gateway on 127.0.0.1:0.
#![allow(dead_code)]

use mamori_core::{
    DataNeed, Detector, DetectorInfo, DetectorState, Model, ModelCard, ModelError, Observation,
    Stage as DStage, Tensor, Verdict,
};
use mamori_gateway::{
    server, Chain, ChainBuilder, GatewayConfig, KeyStore, ModelSpec, RunningServer, SqliteStore,
};
use std::sync::Arc;

/// Per-sample shape of the test model.
pub const SHAPE: [usize; 3] = [1, 4, 4];
/// Values per sample.
pub const LEN: usize = 16;
/// Classes.
pub const CLASSES: usize = 3;

/// A fixed linear softmax model: logit_c = Σ_i w[c][i] x_i + b_c.
pub struct LinearModel {
    card: ModelCard,
    w: Vec<f32>,
    b: Vec<f32>,
}

pub fn card(name: &str) -> ModelCard {
    ModelCard {
        class_names: vec!["a".into(), "b".into(), "c".into()],
        ..ModelCard::classifier(name, "softmax", &SHAPE, 3)
    }
}

impl LinearModel {
    pub fn new(name: &str) -> Self {
        let w = (0..CLASSES * LEN)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        Self {
            card: card(name),
            w,
            b: vec![0.1, -0.2, 0.05],
        }
    }
}

impl Model for LinearModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut out = Vec::with_capacity(x.batch_size() * CLASSES);
        for r in x.rows() {
            for c in 0..CLASSES {
                let mut s = self.b[c];
                for (i, v) in r.iter().enumerate() {
                    s += self.w[c * LEN + i] * v;
                }
                out.push(s);
            }
        }
        Ok(Tensor::new(vec![x.batch_size(), CLASSES], out)?)
    }
}

/// A deterministic sample `k` in [0, 1].
pub fn sample(k: usize) -> Vec<f32> {
    (0..LEN)
        .map(|i| ((i * 31 + k * 17) % 100) as f32 / 100.0)
        .collect()
}

/// Expected probabilities of the test model for a batch.
pub fn expected_probs(name: &str, rows: &[Vec<f32>]) -> Tensor {
    let m = LinearModel::new(name);
    let x = Tensor::from_rows(&SHAPE, rows.iter().map(|r| r.as_slice())).unwrap();
    m.predict(&x).unwrap()
}

/// A running gateway with its home directory.
pub struct Env {
    pub server: Option<RunningServer>,
    pub url: String,
    pub keys: Arc<KeyStore>,
    pub chain: Arc<Chain>,
    pub home: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Env {
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
    /// Every request the audit log holds, after writing what is queued.
    pub fn audited_requests(&self) -> Vec<mamori_gateway::audit::RequestEvent> {
        self.chain.flush_audit();
        self.chain
            .shared()
            .audit
            .with_store(|s| s.requests(None, 0).unwrap())
    }
    pub fn infer_url(&self, model: &str) -> String {
        format!("{}/v2/models/{model}/infer", self.url)
    }
    pub async fn post(
        &self,
        model: &str,
        key: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.infer_url(model))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap())
    }
    /// GET `url` with `token` as the bearer credential; the JSON body (the admin API's lists).
    pub async fn get_as(&self, url: &str, token: &str) -> serde_json::Value {
        self.client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// An FP32 request body for rows.
pub fn fp32_body(rows: &[Vec<f32>]) -> serde_json::Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 1, 4, 4], "datatype": "FP32", "data": data}]
    })
}

/// Starts a gateway serving `specs` with `cfg`, state under a fresh home directory.
pub async fn start(cfg: GatewayConfig, specs: Vec<ModelSpec>) -> Env {
    start_with(cfg, specs, |b| b).await
}

/// Like [`start`], with a hook on the builder.
pub async fn start_with(
    cfg: GatewayConfig,
    specs: Vec<ModelSpec>,
    hook: impl FnOnce(ChainBuilder) -> ChainBuilder,
) -> Env {
    let home = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open(home.path()).unwrap());
    let mut b = ChainBuilder::new(cfg)
        .keys(keys.clone())
        .audit_store(Box::new(SqliteStore::open_home(home.path()).unwrap()));
    for s in specs {
        b = b.model(s);
    }
    let chain = Arc::new(hook(b).build().unwrap());
    let server = server::start(chain.clone(), "127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", server.local_addr());
    Env {
        server: Some(server),
        url,
        keys,
        chain,
        home,
        client: reqwest::Client::new(),
    }
}

/// The test model `lin` (platform `test`), with no detectors.
pub fn lin_spec() -> ModelSpec {
    ModelSpec::new(Arc::new(LinearModel::new("lin")), "test")
}

/// A default gateway with one test model named `lin`.
pub async fn start_default() -> Env {
    start(GatewayConfig::default(), vec![lin_spec()]).await
}

/// Alarms once a subject has sent `threshold` queries.
pub struct CountDetector {
    /// Queries at which it alarms.
    pub threshold: u64,
}

struct CountState {
    n: u64,
    threshold: u64,
}

impl Detector for CountDetector {
    fn info(&self) -> DetectorInfo {
        DetectorInfo {
            name: "count".into(),
            paper: "test fixture".into(),
            targets: "volume".into(),
            stage: DStage::Precursor,
            needs: vec![DataNeed::Input],
        }
    }
    fn new_state(&self) -> Box<dyn DetectorState> {
        Box::new(CountState {
            n: 0,
            threshold: self.threshold,
        })
    }
    fn restore_state(&self, s: &[u8]) -> Result<Box<dyn DetectorState>, String> {
        let n = u64::from_le_bytes(s.try_into().map_err(|_| "bad snapshot".to_string())?);
        Ok(Box::new(CountState {
            n,
            threshold: self.threshold,
        }))
    }
}

impl DetectorState for CountState {
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict {
        assert!(
            (obs.probs.iter().sum::<f32>() - 1.0).abs() < 1e-4,
            "detectors see model probabilities"
        );
        self.n += 1;
        Verdict {
            score: self.n as f64 / self.threshold as f64,
            alarm: self.n >= self.threshold,
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        self.n.to_le_bytes().to_vec()
    }
    fn heap_bytes(&self) -> usize {
        0
    }
    fn queries(&self) -> u64 {
        self.n
    }
}

/// One in-process request for sample `k` (request id `q<k>`) to the model `lin` with `key`.
pub fn infer_sample(
    chain: &Chain,
    key: &str,
    k: usize,
) -> Result<mamori_gateway::InferResponse, mamori_gateway::GatewayError> {
    let input = Tensor::from_rows(&SHAPE, [sample(k).as_slice()]).unwrap();
    chain.handle(mamori_gateway::InferRequest {
        credential: Some(key.to_string()),
        model: "lin".into(),
        version: None,
        payload: mamori_gateway::Payload::Tensor {
            input,
            id: Some(format!("q{k}")),
        },
        peer: None,
    })
}

/// A self-signed CA and a server certificate it signed for 127.0.0.1 and localhost (PEM):
/// (CA certificate, server certificate, server key).
pub fn test_pki() -> (String, String, String) {
    let (ca, cert, key, _, _) = test_pki_with_client();
    (ca, cert, key)
}

/// Like [`test_pki`], plus a client certificate the same CA signed and its key:
/// (CA, server certificate, server key, client certificate, client key).
pub fn test_pki_with_client() -> (String, String, String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mamori test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mamori");
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    (
        ca.pem(),
        server.pem(),
        key.serialize_pem(),
        client.pem(),
        client_key.serialize_pem(),
    )
}
