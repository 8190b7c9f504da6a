//! Query streams and clients shared by `tests/acceptance_small.rs` and
//! `examples/acceptance.rs` (included there with `#[path]`): timing of benign and bulk
//! clients, one client's run through an [`Engine`], the model's answer, a label-only recording
//! oracle and a real JBDA run.

use mamori_attack::extract::Jbda;
use mamori_attack::{ExtractionAttack, ExtractionContext};
use mamori_core::{
    Action, Disclosure, Model, Observation, Oracle, OracleAnswer, OracleError, Tensor,
};
use mamori_detect::Engine;
use rand::Rng;
use std::collections::BTreeMap;

/// A client's queries, each a 28×28 image in `[0, 1]`.
pub type Stream = Vec<Vec<f32>>;

/// Mean time between two queries of a benign client (Poisson arrivals), in milliseconds.
pub const BENIGN_INTERVAL_MS: f64 = 10_000.0;
/// Time between two queries of a bulk attacker, in milliseconds (20 queries per second).
pub const BULK_INTERVAL_MS: u64 = 50;

/// How a client's queries are spaced in time.
#[derive(Clone, Copy)]
pub enum Timing {
    /// Poisson arrivals with this mean inter-arrival (ms).
    Poisson(f64),
    /// A fixed interval (ms).
    Fixed(u64),
}

impl Timing {
    /// The arrival times (ms) of `n` queries.
    pub fn times(self, n: usize, rng: &mut rand::rngs::StdRng) -> Vec<u64> {
        let mut t = 0.0f64;
        (0..n)
            .map(|i| match self {
                Timing::Poisson(m) => {
                    t += -m * (1.0 - rng.gen::<f64>()).ln();
                    t as u64
                }
                Timing::Fixed(d) => i as u64 * d,
            })
            .collect()
    }
}

/// What happened to one client.
pub struct Outcome {
    /// First query (1-based) at which each detector alarmed.
    pub first: BTreeMap<String, usize>,
    /// First query with action ≥ Alert.
    pub alert: Option<usize>,
    /// First query with action ≥ Block.
    pub block: Option<usize>,
}

/// The model's probabilities for `x` and its top label.
pub fn answer(model: &dyn Model, x: &[f32]) -> (Vec<f32>, usize) {
    let p = model
        .predict(&Tensor::new(vec![1, 1, 28, 28], x.to_vec()).expect("one 28×28 image"))
        .expect("predict")
        .into_data();
    let label = p
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    (p, label)
}

/// Streams `client`'s queries at `times` through `engine`, answered by `model`.
pub fn run_client(
    engine: &mut Engine,
    model: &dyn Model,
    client: &str,
    stream: &Stream,
    times: &[u64],
) -> Outcome {
    let mut out = Outcome {
        first: BTreeMap::new(),
        alert: None,
        block: None,
    };
    for (t, (x, &time_ms)) in stream.iter().zip(times).enumerate() {
        let (p, label) = answer(model, x);
        let d = engine.observe(
            client,
            None,
            &Observation {
                client,
                input: x,
                input_shape: &[1, 28, 28],
                probs: &p,
                label,
                time_ms,
            },
        );
        for r in &d.reasons {
            out.first.entry(r.detector.clone()).or_insert(t + 1);
        }
        if d.action >= Action::Alert && out.alert.is_none() {
            out.alert = Some(t + 1);
        }
        if d.action >= Action::Block && out.block.is_none() {
            out.block = Some(t + 1);
        }
    }
    out
}

/// `a` and `b` interleaved query by query (`a` first), at most `cap` queries.
pub fn interleave(a: Stream, b: Stream, cap: usize) -> Stream {
    a.into_iter()
        .zip(b)
        .flat_map(|(x, y)| [x, y])
        .take(cap)
        .collect()
}

/// An oracle over the victim answering labels only (as in Papernot et al.) and recording every
/// queried sample, so that the detectors see exactly the stream the attack sent.
pub struct Recorder<'a> {
    /// The victim.
    pub model: &'a dyn Model,
    /// Every sample queried, in order.
    pub sent: Stream,
}

impl Oracle for Recorder<'_> {
    fn input_shape(&self) -> Vec<usize> {
        self.model.card().input_shape.clone()
    }
    fn num_classes(&self) -> usize {
        self.model.card().num_classes()
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        for i in 0..x.batch_size() {
            self.sent.push(x.row(i).to_vec());
        }
        let p = self.model.predict(x)?;
        Ok(mamori_attack::oracle::disclose(p, Disclosure::Label))
    }
    fn queries_used(&self) -> u64 {
        self.sent.len() as u64
    }
    fn budget(&self) -> Option<u64> {
        None
    }
}

/// A real JBDA run (Papernot et al. 2017, `mamori_attack::extract::Jbda`: λ = 0.1 flipped
/// every τ = 3 rounds, 8 rounds, Jacobian of a 784-200-200-10 substitute retrained each round,
/// label-only answers) from `seeds` against `model`, capped at `cap` queries; returns the
/// queries it sent.
pub fn jbda(model: &dyn Model, seeds: &mamori_data::Dataset, cap: usize, seed: u64) -> Stream {
    let mut oracle = Recorder {
        model,
        sent: Vec::new(),
    };
    let mut ctx = ExtractionContext::new(
        cap as u64,
        mamori_ml::Arch::Mlp {
            hidden: vec![200, 200],
        },
    );
    ctx.query_data = Some(seeds);
    ctx.seed = seed;
    ctx.train.seed = seed;
    // The fixed 10-epoch schedule every documented run used (the harness's default thief now
    // trains until its fit plateaus, which changes the synthetic queries JBDA derives).
    ctx.stop = None;
    ctx.train.epochs = 10;
    let attack = Jbda {
        rounds: 8,
        ..Jbda::default()
    };
    if let Err(e) = attack.extract(&mut oracle, &ctx) {
        eprintln!("jbda stopped: {e}");
    }
    oracle.sent.truncate(cap);
    oracle.sent
}
