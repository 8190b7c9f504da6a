//! A model served by another Open Inference Protocol v2 server (Triton, KServe, MLServer or
//! another mamori), proxied through the chain.
//!
//! The model card is built from the upstream's model metadata: input name and per-sample shape,
//! the FP32 `[-1, classes]` output, and — when the upstream is a mamori — the class names and
//! input range it publishes in `parameters`. Answers are probabilities by default
//! ([`Model::logits`] returns their logarithm, softmax of which gives them back), or raw
//! logits ([`UpstreamModel::logits_output`]; Triton models often end before their softmax).
//!
//! The upstream's answers are checked like any input: the right count of numbers, every one
//! finite, and — for probabilities — every row a distribution. A broken upstream is a 502
//! naming it and the problem, never garbage passed on to detectors, postprocessors and the
//! client.

use crate::error::GatewayError;
use mamori_core::{DatasetRef, Model, ModelCard, ModelError, Normalisation, OutputKind, Tensor};
use serde_json::{json, Value};
use std::time::Duration;

/// A proxied model.
pub struct UpstreamModel {
    base: String,
    name: String,
    input_name: String,
    output_name: String,
    api_key: Option<String>,
    client: reqwest::blocking::Client,
    card: ModelCard,
}

fn up(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Inference(format!("upstream: {e}"))
}

impl UpstreamModel {
    /// Reads `base/v2/models/{name}` and prepares the proxy. Call from a plain thread (not an
    /// async task): it uses a blocking HTTP client.
    pub fn connect(
        base: &str,
        name: &str,
        api_key: Option<String>,
        default_range: [f32; 2],
    ) -> Result<Self, GatewayError> {
        let base = base.trim_end_matches('/').to_string();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(up)?;
        let url = format!("{base}/v2/models/{name}");
        let mut req = client.get(&url);
        if let Some(k) = &api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().map_err(|e| up(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(up(format!("{url}: HTTP {}", resp.status())));
        }
        let meta: Value = resp.json().map_err(|e| up(format!("{url}: {e}")))?;
        let input = meta["inputs"]
            .get(0)
            .ok_or_else(|| up(format!("{url}: metadata lists no inputs")))?;
        let input_name = input["name"].as_str().unwrap_or("input").to_string();
        let shape: Vec<i64> = input["shape"]
            .as_array()
            .ok_or_else(|| up(format!("{url}: input has no shape")))?
            .iter()
            .map(|d| d.as_i64().unwrap_or(-1))
            .collect();
        if shape.len() < 2 || shape[1..].iter().any(|d| *d <= 0) {
            return Err(up(format!(
                "{url}: input shape {shape:?} must be [-1, fixed dims...]"
            )));
        }
        let input_shape: Vec<usize> = shape[1..].iter().map(|d| *d as usize).collect();
        let out = meta["outputs"]
            .as_array()
            .and_then(|outs| {
                outs.iter().find(|o| {
                    o["datatype"] == "FP32" && o["shape"].as_array().is_some_and(|s| s.len() == 2)
                })
            })
            .ok_or_else(|| up(format!("{url}: no FP32 [-1, classes] output")))?;
        let output_name = out["name"].as_str().unwrap_or("probabilities").to_string();
        let classes = out["shape"][1].as_i64().unwrap_or(0);
        if classes <= 0 {
            return Err(up(format!("{url}: output class count unknown")));
        }
        let class_names = meta["parameters"]["class_names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .filter(|v: &Vec<String>| v.len() == classes as usize)
            .unwrap_or_else(|| (0..classes).map(|i| i.to_string()).collect());
        let range = input["parameters"]["input_range"]
            .as_array()
            .and_then(|a| Some([a.first()?.as_f64()? as f32, a.get(1)?.as_f64()? as f32]))
            .unwrap_or(default_range);
        let card = ModelCard {
            name: name.to_string(),
            architecture: "upstream".into(),
            architecture_detail: json!({"upstream": base}),
            input_shape,
            input_dtype: "FP32".into(),
            input_range: range,
            normalisation: Normalisation::default(),
            class_names,
            output_kind: OutputKind::Probabilities,
            dataset: DatasetRef::default(),
            test_accuracy: None,
            training_time_s: None,
            seed: None,
            extra: Default::default(),
        };
        Ok(Self {
            base,
            name: name.to_string(),
            input_name,
            output_name,
            api_key,
            client,
            card,
        })
    }

    /// Treats the upstream's output as logits (unnormalised scores) instead of
    /// probabilities: `mamori serve --upstream-logits`.
    pub fn logits_output(mut self) -> Self {
        self.card.output_kind = OutputKind::Logits;
        self
    }

    /// Whether the upstream's output is taken as logits ([`UpstreamModel::logits_output`]).
    pub fn outputs_logits(&self) -> bool {
        self.card.output_kind == OutputKind::Logits
    }

    /// The upstream's output `[n, classes]` for `x`, checked: finite numbers, and rows that
    /// are probability distributions unless the output is taken as logits.
    pub fn probabilities(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let out = self.fetch(x)?;
        let url = format!("{}/v2/models/{}", self.base, self.name);
        if let Some(i) = out.data().iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Runtime(format!(
                "{url}: answered a value that is not a finite number (position {i})"
            )));
        }
        if !self.outputs_logits() {
            for (i, row) in out.rows().enumerate() {
                let sum: f64 = row.iter().map(|v| f64::from(*v)).sum();
                if row.iter().any(|v| *v < 0.0) || (sum - 1.0).abs() > 1e-3 {
                    return Err(ModelError::Runtime(format!(
                        "{url}: answer row {i} is not a probability distribution (sum {sum:.4}, \
                         smallest {:.4}); if the model outputs logits, serve it with \
                         --upstream-logits",
                        row.iter().copied().fold(f32::INFINITY, f32::min)
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The upstream's raw output `[n, classes]` for `x`.
    fn fetch(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let url = format!("{}/v2/models/{}/infer", self.base, self.name);
        let body = json!({
            "inputs": [{
                "name": self.input_name,
                "shape": x.shape(),
                "datatype": "FP32",
                "data": x.data(),
            }],
            "outputs": [{"name": self.output_name}],
        });
        let mut req = self.client.post(&url).json(&body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .map_err(|e| ModelError::Runtime(format!("{url}: {e}")))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .map_err(|e| ModelError::Runtime(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(ModelError::Runtime(format!(
                "{url}: HTTP {status}: {}",
                v["error"].as_str().unwrap_or("")
            )));
        }
        let out = v["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == self.output_name.as_str()))
            .ok_or_else(|| {
                ModelError::Runtime(format!("{url}: output {} missing", self.output_name))
            })?;
        let data: Vec<f32> = out["data"]
            .as_array()
            .ok_or_else(|| ModelError::Runtime(format!("{url}: output data missing")))?
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        let want = x.batch_size() * self.card.num_classes();
        if data.len() != want {
            return Err(ModelError::Runtime(format!(
                "{url}: answered {} values for {} samples of {} classes",
                data.len(),
                x.batch_size(),
                self.card.num_classes()
            )));
        }
        Ok(Tensor::new(
            vec![x.batch_size(), self.card.num_classes()],
            data,
        )?)
    }
}

impl Model for UpstreamModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut p = self.probabilities(x)?;
        if !self.outputs_logits() {
            for v in p.data_mut() {
                *v = v.max(1e-12).ln();
            }
        }
        Ok(p)
    }
}
