//! The benign population: legitimate clients querying beside the attacker.
//!
//! Three kinds, as the detection literature's benign baselines (PRADA §V, Atli et al.):
//! - `replay`: held-out test images of the victim's task in random order;
//! - `other`: images of another dataset (e.g. MNIST digits sent to a Fashion-MNIST model) —
//!   legitimate but out-of-distribution use;
//! - `bursty`: a small working set of legitimate images asked again and again in bursts
//!   (repeated legitimate queries, e.g. a client re-checking its catalogue).
//!
//! Each client's stream is fixed by the seed. [`run_client`] sends it through any oracle
//! (the chain in-process or over HTTP) and records what the client paid: refused queries,
//! accuracy against the true labels next to the unprotected victim's accuracy on the same
//! images, agreement with the unprotected answers, and latency next to bare inference.

use crate::config::BenignConfig;
use crate::error::EvalError;
use mamori_core::{Model, Oracle, OracleError, Tensor};
use mamori_data::Dataset;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What kind of legitimate use a client simulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenignKind {
    /// Test images of the victim's task in random order.
    Replay,
    /// Images of another dataset.
    Other,
    /// A small working set repeated in bursts.
    Bursty,
}

/// One benign client's fixed stream.
#[derive(Clone, Debug)]
pub struct BenignStream {
    /// Client name (also its API key's client).
    pub client: String,
    /// Kind.
    pub kind: BenignKind,
    /// The inputs, in order.
    pub x: Tensor,
    /// True labels in the victim's label space (`None` for another dataset).
    pub y: Option<Vec<usize>>,
}

/// Builds the benign streams of `cfg` from the replay pool and the other dataset.
pub fn streams(
    cfg: &BenignConfig,
    replay: &Dataset,
    other: Option<&Dataset>,
    seed: u64,
) -> Result<Vec<BenignStream>, EvalError> {
    let mut out = Vec::new();
    let q = cfg.queries_per_client;
    if replay.is_empty() && (cfg.replay_clients > 0 || cfg.bursty_clients > 0) {
        return Err(EvalError::Config {
            path: "benign".into(),
            message: "the benign replay pool is empty".into(),
        });
    }
    for i in 0..cfg.replay_clients {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0xb0 + i as u64));
        // A permutation of the pool (no repeats), cycled only if the pool is smaller.
        let mut idx = Vec::with_capacity(q);
        while idx.len() < q {
            let mut perm: Vec<usize> = (0..replay.len()).collect();
            perm.shuffle(&mut rng);
            idx.extend(perm);
        }
        idx.truncate(q);
        let d = replay.select(&idx);
        out.push(BenignStream {
            client: format!("benign-replay-{i}"),
            kind: BenignKind::Replay,
            x: d.x,
            y: Some(d.y),
        });
    }
    if cfg.other_clients > 0 {
        let other = other.ok_or_else(|| EvalError::Config {
            path: "benign.other_dataset".into(),
            message: "other_clients > 0 needs benign.other_dataset".into(),
        })?;
        if other.x.sample_shape() != replay.x.sample_shape() {
            return Err(EvalError::Config {
                path: "benign.other_dataset".into(),
                message: format!(
                    "{} has samples of shape {:?}; the victim takes {:?}",
                    other.name,
                    other.x.sample_shape(),
                    replay.x.sample_shape()
                ),
            });
        }
        for i in 0..cfg.other_clients {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x07e0 + i as u64));
            let idx =
                rand::seq::index::sample(&mut rng, other.len(), q.min(other.len())).into_vec();
            out.push(BenignStream {
                client: format!("benign-other-{i}"),
                kind: BenignKind::Other,
                x: other.select(&idx).x,
                y: None,
            });
        }
    }
    for i in 0..cfg.bursty_clients {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0xb0b0 + i as u64));
        let w = cfg.bursty_working_set.clamp(1, replay.len());
        let set: Vec<usize> = (0..w).map(|_| rng.gen_range(0..replay.len())).collect();
        let mut idx = Vec::with_capacity(q);
        while idx.len() < q {
            let mut burst = set.clone();
            burst.shuffle(&mut rng);
            idx.extend(burst);
        }
        idx.truncate(q);
        let d = replay.select(&idx);
        out.push(BenignStream {
            client: format!("benign-bursty-{i}"),
            kind: BenignKind::Bursty,
            x: d.x,
            y: Some(d.y),
        });
    }
    Ok(out)
}

/// What one benign client experienced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenignOutcome {
    /// Client name.
    pub client: String,
    /// Kind.
    pub kind: BenignKind,
    /// Queries sent.
    pub queries: u64,
    /// Queries refused (blocked, throttled beyond retries).
    pub refused: u64,
    /// Accuracy of the answers against the true labels (refused = wrong), if known.
    pub accuracy: Option<f64>,
    /// The unprotected victim's accuracy on the same images.
    pub baseline_accuracy: Option<f64>,
    /// Share of queries answered with the unprotected victim's label.
    pub agreement: f64,
    /// Whether the policy acted on an alarm of this client (action above `allow`; filled from
    /// the audit log).
    pub alarmed: bool,
    /// Detectors that alarmed on this client, with the client's queries at the alarm
    /// (uncorroborated suspicion alarms included).
    pub alarms: Vec<(String, u64)>,
    /// Mean seconds per request through the chain.
    pub mean_request_s: f64,
    /// Mean seconds per request of bare inference on the same batches.
    pub mean_bare_s: f64,
    /// 99th percentile seconds per request through the chain.
    pub p99_request_s: f64,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Sends `stream` through `oracle` in requests of `batch` samples.
pub fn run_client(
    stream: &BenignStream,
    oracle: &mut dyn Oracle,
    victim: &dyn Model,
    batch: usize,
    mut on_request: impl FnMut(u64),
) -> Result<BenignOutcome, EvalError> {
    let n = stream.x.batch_size();
    let mut given: Vec<Option<usize>> = Vec::with_capacity(n);
    let mut bare_labels = Vec::with_capacity(n);
    let mut times = Vec::new();
    let mut bare = Vec::new();
    let mut refused = 0u64;
    let mut s = 0;
    while s < n {
        let e = (s + batch.max(1)).min(n);
        let x = stream.x.slice_rows(s, e);
        let t0 = Instant::now();
        let r = oracle.query(&x);
        let dt = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let probs = victim.logits(&x)?;
        bare.push(t1.elapsed().as_secs_f64());
        bare_labels.extend(probs.argmax_rows());
        match r {
            Ok(a) => {
                times.push(dt);
                given.extend(a.labels.into_iter().map(Some));
            }
            Err(OracleError::Refused(_)) | Err(OracleError::RateLimited(_)) => {
                refused += (e - s) as u64;
                given.extend(std::iter::repeat_n(None, e - s));
            }
            Err(e) => {
                return Err(EvalError::Gateway(mamori_gateway::GatewayError::Inference(
                    format!("benign client {}: {e}", stream.client),
                )))
            }
        }
        on_request((e - s) as u64);
        s = e;
    }
    let agree = given
        .iter()
        .zip(&bare_labels)
        .filter(|(g, b)| **g == Some(**b))
        .count();
    let (accuracy, baseline_accuracy) = match &stream.y {
        Some(y) => {
            let acc = given
                .iter()
                .zip(y)
                .filter(|(g, t)| **g == Some(**t))
                .count();
            let base = bare_labels.iter().zip(y).filter(|(b, t)| b == t).count();
            (
                Some(acc as f64 / n.max(1) as f64),
                Some(base as f64 / n.max(1) as f64),
            )
        }
        None => (None, None),
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mean_request_s = mean(&times);
    let mean_bare_s = mean(&bare);
    Ok(BenignOutcome {
        client: stream.client.clone(),
        kind: stream.kind,
        queries: n as u64,
        refused,
        accuracy,
        baseline_accuracy,
        agreement: agree as f64 / n.max(1) as f64,
        alarmed: false,
        alarms: Vec::new(),
        mean_request_s,
        mean_bare_s,
        p99_request_s: quantile(&mut times, 0.99),
    })
}
