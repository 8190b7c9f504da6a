//! A client of any Open Inference Protocol v2 REST endpoint (KServe / Triton / `mamori serve`).
//!
//! `GET /v2/models/{name}` gives the input shape and the number of classes;
//! `POST /v2/models/{name}/infer` with an FP32 JSON tensor gives the answers. The API key is
//! sent as `Authorization: Bearer <key>`. HTTP 429 is retried with exponential backoff,
//! honouring `Retry-After`; 401/403 become [`OracleError::Refused`].

use super::Ledger;
use mamori_core::{softmax_rows, Disclosure, Oracle, OracleAnswer, OracleError, Tensor};
use serde_json::{json, Value};
use std::time::Duration;

/// Connection settings of an [`HttpOracle`].
#[derive(Clone, Debug)]
pub struct HttpOracleConfig {
    /// Server root, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Model name served under `/v2/models/{name}`.
    pub model: String,
    /// API key sent as a bearer token.
    pub api_key: Option<String>,
    /// Samples per HTTP request.
    pub batch_size: usize,
    /// Retries of one request after 429 / 5xx / connection errors.
    pub max_retries: u32,
    /// First backoff delay; doubled on every retry.
    pub initial_backoff: Duration,
    /// Upper bound of one wait (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl HttpOracleConfig {
    /// Settings for `url`, which is either `http://host:port/v2/models/NAME` or a server root
    /// plus `model`.
    pub fn from_url(url: &str, model: Option<&str>) -> Result<Self, OracleError> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(OracleError::Transport(format!(
                "target '{url}' is not an http(s) URL"
            )));
        }
        let (base, name) = match url.find("/v2/models/") {
            Some(i) => (
                url[..i].to_string(),
                url[i + "/v2/models/".len()..].to_string(),
            ),
            None => match model {
                Some(m) => (url.to_string(), m.to_string()),
                None => {
                    return Err(OracleError::Transport(format!(
                        "target '{url}' names no model: use http://host:port/v2/models/NAME"
                    )))
                }
            },
        };
        if name.is_empty() || name.contains('/') {
            return Err(OracleError::Transport(format!(
                "target '{url}': bad model name '{name}'"
            )));
        }
        Ok(Self {
            base_url: base,
            model: name,
            api_key: None,
            batch_size: 256,
            max_retries: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
        })
    }
}

/// An [`Oracle`] over HTTP. Input shape and classes come from the model metadata endpoint.
pub struct HttpOracle {
    cfg: HttpOracleConfig,
    client: reqwest::blocking::Client,
    input_shape: Vec<usize>,
    classes: usize,
    input_name: String,
    ledger: Ledger,
    retries: u64,
}

fn transport<E: std::fmt::Display>(e: E) -> OracleError {
    OracleError::Transport(e.to_string())
}

impl HttpOracle {
    /// Connects: fetches `GET /v2/models/{name}` for the input shape and class count.
    pub fn connect(cfg: HttpOracleConfig) -> Result<Self, OracleError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(transport)?;
        let mut me = Self {
            cfg,
            client,
            input_shape: Vec::new(),
            classes: 0,
            input_name: "input".into(),
            ledger: Ledger::default(),
            retries: 0,
        };
        let url = format!("{}/v2/models/{}", me.cfg.base_url, me.cfg.model);
        let meta = me.send(|c| c.get(&url))?;
        me.parse_metadata(&meta)?;
        Ok(me)
    }

    /// Sets the query budget (samples).
    pub fn with_budget(mut self, budget: Option<u64>) -> Self {
        self.ledger.budget = budget;
        self
    }

    /// Sets the API key (a second identity of the same endpoint is `connect` with another key).
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.cfg.api_key = key;
        self
    }

    /// Requests retried so far (429, 5xx, connection errors).
    pub fn retries(&self) -> u64 {
        self.retries
    }

    fn parse_metadata(&mut self, meta: &Value) -> Result<(), OracleError> {
        let bad = |m: &str| OracleError::Transport(format!("model metadata: {m}"));
        let input = meta["inputs"]
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| bad("no `inputs` entry"))?;
        self.input_name = input["name"].as_str().unwrap_or("input").to_string();
        let shape: Vec<i64> = input["shape"]
            .as_array()
            .ok_or_else(|| bad("input has no `shape`"))?
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| bad("input shape holds a non-integer"))
            })
            .collect::<Result<_, _>>()?;
        // A leading -1 (or any non-positive) is the batch dimension.
        let dims: Vec<usize> = match shape.first() {
            Some(d) if *d <= 0 => shape[1..].iter().map(|d| *d as usize).collect(),
            _ => shape.iter().map(|d| *d as usize).collect(),
        };
        if dims.is_empty() || dims.contains(&0) {
            return Err(bad(&format!("unusable input shape {shape:?}")));
        }
        let out = meta["outputs"]
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| bad("no `outputs` entry"))?;
        let classes = out["shape"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|v| v.as_i64())
            .filter(|c| *c > 1)
            .ok_or_else(|| bad("output shape does not give the number of classes"))?;
        self.input_shape = dims;
        self.classes = classes as usize;
        Ok(())
    }

    /// Sends one request, retrying 429 / 5xx / connection errors; returns the JSON body.
    fn send<F>(&mut self, build: F) -> Result<Value, OracleError>
    where
        F: Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
    {
        let mut delay = self.cfg.initial_backoff;
        let mut attempt = 0;
        loop {
            let mut rb = build(&self.client);
            if let Some(k) = &self.cfg.api_key {
                rb = rb.bearer_auth(k);
            }
            let wait = match rb.send() {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(Duration::from_secs_f64);
                    match status {
                        200..=299 => return resp.json::<Value>().map_err(transport),
                        401 | 403 => {
                            let body = resp.text().unwrap_or_default();
                            return Err(OracleError::Refused(format!("HTTP {status}: {body}")));
                        }
                        429 => {
                            if attempt >= self.cfg.max_retries {
                                return Err(OracleError::RateLimited(format!(
                                    "HTTP 429 after {attempt} retries"
                                )));
                            }
                            retry_after.unwrap_or(delay)
                        }
                        500..=599 if attempt < self.cfg.max_retries => delay,
                        _ => {
                            let body = resp.text().unwrap_or_default();
                            return Err(OracleError::Transport(format!("HTTP {status}: {body}")));
                        }
                    }
                }
                Err(e) if attempt < self.cfg.max_retries && (e.is_connect() || e.is_timeout()) => {
                    delay
                }
                Err(e) => return Err(transport(e)),
            };
            std::thread::sleep(wait.min(self.cfg.max_backoff));
            delay = (delay * 2).min(self.cfg.max_backoff);
            attempt += 1;
            self.retries += 1;
        }
    }

    fn infer_batch(&mut self, x: &Tensor) -> Result<(Tensor, Disclosure), OracleError> {
        let n = x.batch_size();
        let body = json!({
            "inputs": [{
                "name": self.input_name,
                "shape": x.shape(),
                "datatype": "FP32",
                "data": x.data(),
            }]
        });
        let url = format!("{}/v2/models/{}/infer", self.cfg.base_url, self.cfg.model);
        let resp = self.send(|c| c.post(&url).json(&body))?;
        parse_outputs(&resp, n, self.classes)
    }
}

/// Reads an inference response: a probability (or logit, or label) tensor per sample.
fn parse_outputs(
    resp: &Value,
    n: usize,
    classes: usize,
) -> Result<(Tensor, Disclosure), OracleError> {
    let bad = |m: String| OracleError::Transport(format!("inference response: {m}"));
    let outs = resp["outputs"]
        .as_array()
        .ok_or_else(|| bad("no `outputs` array".into()))?;
    let pick = outs
        .iter()
        .find(|o| {
            matches!(
                o["name"].as_str(),
                Some("probabilities" | "probs" | "output" | "logits")
            )
        })
        .or_else(|| outs.first())
        .ok_or_else(|| bad("empty `outputs`".into()))?;
    let data: Vec<f32> = pick["data"]
        .as_array()
        .ok_or_else(|| bad("output has no `data` array".into()))?
        .iter()
        .map(|v| v.as_f64().map(|f| f as f32))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("output `data` holds a non-number".into()))?;
    let name = pick["name"].as_str().unwrap_or("");
    if data.len() == n && (name.contains("label") || classes > 1) && data.len() != n * classes {
        // Label-only answers: one class index per sample.
        let mut t = Tensor::zeros(vec![n, classes]);
        for (i, v) in data.iter().enumerate() {
            let l = *v as usize;
            if *v < 0.0 || l >= classes {
                return Err(bad(format!("label {v} out of range 0..{classes}")));
            }
            t.row_mut(i)[l] = 1.0;
        }
        return Ok((t, Disclosure::Label));
    }
    if data.len() != n * classes {
        return Err(bad(format!(
            "expected {n}×{classes} values, got {}",
            data.len()
        )));
    }
    let mut t = Tensor::new(vec![n, classes], data).map_err(|e| bad(e.to_string()))?;
    // The server may say what it disclosed (mamori's gateway: `parameters.disclosure` =
    // `probabilities`, `top_K` or `label`); a top-k answer is a truncated distribution whose
    // rows sum to less than one, not logits.
    if let Some(d) = resp["parameters"]["disclosure"].as_str() {
        let stated = match d {
            "probabilities" => Some(Disclosure::Probabilities),
            "label" => Some(Disclosure::Label),
            _ => d
                .strip_prefix("top_")
                .and_then(|k| k.parse().ok())
                .map(Disclosure::TopK),
        };
        if let Some(stated) = stated {
            return Ok((t, stated));
        }
    }
    let is_dist = t.rows().all(|r| {
        let sum = r.iter().sum::<f32>();
        let truncated = r.contains(&0.0) && sum <= 1.0 + 1e-3;
        r.iter().all(|v| *v >= 0.0) && ((sum - 1.0).abs() < 1e-3 || truncated)
    });
    if !is_dist {
        softmax_rows(&mut t);
        return Ok((t, Disclosure::Probabilities));
    }
    let max_nonzero = t
        .rows()
        .map(|r| r.iter().filter(|v| **v > 0.0).count())
        .max()
        .unwrap_or(classes);
    let d = if max_nonzero <= 1 {
        Disclosure::Label
    } else if max_nonzero < classes {
        Disclosure::TopK(max_nonzero)
    } else {
        Disclosure::Probabilities
    };
    Ok((t, d))
}

impl Oracle for HttpOracle {
    fn input_shape(&self) -> Vec<usize> {
        self.input_shape.clone()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let n = x.batch_size();
        if x.sample_shape() != self.input_shape.as_slice() {
            return Err(OracleError::Model(mamori_core::ModelError::InputShape {
                expected: self.input_shape.clone(),
                got: x.sample_shape().to_vec(),
            }));
        }
        self.ledger.check(n as u64)?;
        let mut parts = Vec::new();
        let mut disclosure = Disclosure::Label;
        let mut s = 0;
        while s < n {
            let e = (s + self.cfg.batch_size.max(1)).min(n);
            let (p, d) = self.infer_batch(&x.slice_rows(s, e))?;
            self.ledger.used += (e - s) as u64;
            // The least informative answer seen in a batch describes the whole batch only if
            // all agree; keep the most informative one (answers are per sample anyway).
            disclosure = match (disclosure, d) {
                (_, Disclosure::Probabilities) | (Disclosure::Probabilities, _) => {
                    Disclosure::Probabilities
                }
                (Disclosure::TopK(a), Disclosure::TopK(b)) => Disclosure::TopK(a.max(b)),
                (Disclosure::TopK(a), _) | (_, Disclosure::TopK(a)) => Disclosure::TopK(a),
                _ => Disclosure::Label,
            };
            parts.push(p);
            s = e;
        }
        let probs = if parts.is_empty() {
            Tensor::zeros(vec![0, self.classes])
        } else {
            Tensor::concat(&parts).map_err(transport)?
        };
        let labels = probs.argmax_rows();
        Ok(OracleAnswer {
            probs,
            labels,
            disclosure,
        })
    }
    fn queries_used(&self) -> u64 {
        self.ledger.used
    }
    fn budget(&self) -> Option<u64> {
        self.ledger.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c = HttpOracleConfig::from_url("http://127.0.0.1:9/v2/models/fm", None).unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        assert_eq!(c.model, "fm");
        assert!(HttpOracleConfig::from_url("ftp://x", None).is_err());
        assert!(HttpOracleConfig::from_url("http://x:1", None).is_err());
        assert_eq!(
            HttpOracleConfig::from_url("http://x:1/", Some("m"))
                .unwrap()
                .model,
            "m"
        );
    }

    #[test]
    fn output_parsing() {
        let r = json!({"outputs":[{"name":"probabilities","shape":[1,3],"datatype":"FP32","data":[0.0,1.0,0.0]}]});
        let (t, d) = parse_outputs(&r, 1, 3).unwrap();
        assert_eq!(d, Disclosure::Label);
        assert_eq!(t.argmax_rows(), vec![1]);
        let r = json!({"outputs":[{"name":"probabilities","shape":[1,3],"data":[0.2,0.5,0.3]}]});
        assert_eq!(
            parse_outputs(&r, 1, 3).unwrap().1,
            Disclosure::Probabilities
        );
        let r = json!({"outputs":[{"name":"label","shape":[2],"data":[2, 0]}]});
        let (t, d) = parse_outputs(&r, 2, 3).unwrap();
        assert_eq!((d, t.argmax_rows()), (Disclosure::Label, vec![2, 0]));
        let r = json!({"outputs":[{"name":"label","shape":[1],"data":[7]}]});
        assert!(parse_outputs(&r, 1, 3).is_err());
        let r = json!({"outputs":[{"name":"p","data":[0.2,"x"]}]});
        assert!(parse_outputs(&r, 1, 2).is_err());
        let r = json!({"nothing": 1});
        assert!(parse_outputs(&r, 1, 2).is_err());
        // Top-k answers are truncated distributions, not logits: no softmax over them.
        let r = json!({"outputs":[{"name":"probabilities","data":[0.5,0.3,0.0,0.0]}]});
        let (t, d) = parse_outputs(&r, 1, 4).unwrap();
        assert_eq!(
            (d, t.data()),
            (Disclosure::TopK(2), &[0.5, 0.3, 0.0, 0.0][..])
        );
        // The gateway's stated disclosure wins over the guess.
        let r = json!({"parameters":{"disclosure":"top_3"},
            "outputs":[{"name":"probabilities","data":[0.5,0.3,0.0,0.0]}]});
        assert_eq!(parse_outputs(&r, 1, 4).unwrap().1, Disclosure::TopK(3));
    }
}
