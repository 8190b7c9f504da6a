//! The matrix runner: attacks × protection policies through the gateway's chain.
//!
//! For every cell (attack, policy, repeat):
//! 1. the policy becomes a chain with [`mamori_gateway::protection::protect`] — the function
//!    `mamori serve` uses — with a master secret derived from the seed (reproducible DAWN
//!    marks and noise) and the victim's calibrated detector thresholds;
//! 2. the attacker (API key of client `attacker`) and the benign clients (one key each) query
//!    it concurrently: in-process through [`ChainOracle`], or with `--http` through a gateway
//!    listening on `127.0.0.1:0` with [`HttpOracle`];
//! 3. every answer the attacker receives is recorded. If the chain blocks it, the attack is
//!    stopped and its substitute is trained on what it harvested until the block (same
//!    architecture and training settings); otherwise the attack's own substitute is scored.
//!    The fidelity curve trains the same substitute on the first `checkpoint × budget`
//!    harvested answers;
//! 4. the audit log gives the queries at each detector's first alarm; the DAWN ledger, filtered
//!    to the marks the attacker received, is checked against the substitute with
//!    `mamori_defense::verify` (exact binomial test).
//!
//! Timing-dependent numbers (seconds, latency) vary between runs; everything else is fixed by
//! the seed. Caveat: in-process, queries arrive far faster than wall-clock time, so the
//! volume detector (`rate`, per-minute window) sees every stream as a burst.

use crate::benign::{self, BenignKind, BenignOutcome, BenignStream};
use crate::config::{AttackConfig, EvalConfig};
use crate::error::EvalError;
use crate::victim::{self, Victim};
use mamori_attack::extract::{fit_substitute, ExtractionContext};
use mamori_attack::metrics::SubstituteMetrics;
use mamori_attack::oracle::{answer_targets, is_soft};
use mamori_attack::{HttpOracle, HttpOracleConfig};
use mamori_core::{Disclosure, Model, Oracle, OracleAnswer, OracleError, Tensor, WatermarkMark};
use mamori_data::Dataset;
use mamori_defense::SecretKey;
use mamori_gateway::protection::{self, ProtectionContext};
use mamori_gateway::{
    BlockingServer, Chain, ChainOracle, GatewayConfig, KeyStore, LedgerSink, TierConfig,
};
use mamori_ml::{NativeModel, Network, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How clients reach the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// In-process through [`ChainOracle`].
    InProcess,
    /// Over HTTP through a live gateway on `127.0.0.1:0`.
    Http,
}

/// Where things are and how to show progress.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Dataset directory.
    pub data_dir: PathBuf,
    /// Output directory (reports, per-cell ledgers).
    pub out_dir: PathBuf,
    /// Cache directory for the trained victim and its calibration.
    pub cache_dir: PathBuf,
    /// In-process or HTTP.
    pub transport: Transport,
    /// Overall progress bar over the cells.
    pub progress: bool,
    /// The attacks' own progress bars (querying, training).
    pub attack_progress: bool,
}

/// One point of a fidelity curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Harvested answers the substitute was trained on.
    pub queries: u64,
    /// Agreement with the victim on the evaluation set.
    pub fidelity: f64,
    /// Accuracy on the evaluation set.
    pub accuracy: f64,
}

/// The DAWN verification of a substitute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatermarkOutcome {
    /// Watermarked answers the attacker received (distinct inputs).
    pub marks: usize,
    /// Matches of the deciding count of [`mamori_defense::verify`]: `top_among_wrong` (the
    /// watermark label is the substitute's highest-scoring label other than the victim's) when
    /// the substitute gives scores, `top1` (its label equals the watermark label) otherwise.
    pub matches: usize,
    /// The decision's exact p-value (1 when there were no marks): for substitutes that give
    /// probabilities the Bonferroni combination of the `top_among_wrong` binomial test, the
    /// rank-sum test and the linear-fingerprint test (against the victim as reference),
    /// otherwise the `top1` binomial test.
    pub p_value: f64,
    /// log10 of the p-value.
    pub log10_p_value: f64,
    /// Whether the substitute is convicted at α = 1e-4.
    pub verified: bool,
}

/// Everything measured in one cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    /// Attack row name.
    pub attack: String,
    /// Attack strategy.
    pub strategy: String,
    /// Policy column name.
    pub policy: String,
    /// Whether the policy runs the detectors.
    pub policy_detects: bool,
    /// Repeat index.
    pub repeat: usize,
    /// Seed of this run.
    pub seed: u64,
    /// Query budget.
    pub budget: u64,
    /// Queries answered to the attacker.
    pub queries: u64,
    /// Substitute test accuracy.
    pub substitute_accuracy: f64,
    /// Substitute fidelity (agreement with the victim on test data).
    pub fidelity: f64,
    /// Agreement on uniform random inputs.
    pub fidelity_uniform: f64,
    /// Where the scored substitute comes from (`attack` or `harvest`).
    pub substitute_source: String,
    /// Fidelity curve over harvested answers.
    pub curve: Vec<CurvePoint>,
    /// Attacker queries at the first alarm the policy acted on (action above `allow`;
    /// uncorroborated suspicion alarms are in `alarms_by_detector` only).
    pub first_alarm: Option<u64>,
    /// The detector of that alarm.
    pub first_alarm_detector: Option<String>,
    /// Attacker queries at each detector's first alarm (suspicion alarms included).
    pub alarms_by_detector: BTreeMap<String, u64>,
    /// Attacker queries answered before it was degraded to labels only.
    pub degraded_at: Option<u64>,
    /// Attacker queries answered before it was blocked.
    pub blocked_at: Option<u64>,
    /// DAWN verification (when the policy watermarks).
    pub watermark: Option<WatermarkOutcome>,
    /// The benign clients.
    pub benign: Vec<BenignOutcome>,
    /// Benign clients with at least one alarm the policy acted on.
    pub benign_false_alarms: usize,
    /// Mean over replay and bursty clients of (unprotected accuracy − accuracy received).
    pub benign_accuracy_cost: f64,
    /// Share of benign queries refused.
    pub benign_refused_share: f64,
    /// Mean benign agreement with the unprotected answers.
    pub benign_agreement: f64,
    /// Mean milliseconds per benign request added over bare inference.
    pub latency_added_ms: f64,
    /// Attack wall-clock seconds (querying + training).
    pub attack_seconds: f64,
    /// Cell wall-clock seconds.
    pub cell_seconds: f64,
    /// Notes (attack notes, why it stopped).
    pub notes: Vec<String>,
}

/// About the victim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VictimSummary {
    /// Model name.
    pub name: String,
    /// Architecture.
    pub architecture: String,
    /// Dataset.
    pub dataset: String,
    /// Accuracy on the evaluation set.
    pub accuracy: f64,
    /// Where it is stored.
    pub dir: String,
}

/// One row of the comparison table (per attack).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// Attack row name.
    pub attack: String,
    /// Strategy.
    pub strategy: String,
    /// Queries to reach 90% of the final fidelity, unprotected (median over repeats).
    pub queries_to_90: Option<u64>,
    /// Final fidelity, unprotected (mean over repeats).
    pub fidelity: f64,
    /// Final substitute accuracy, unprotected (mean).
    pub accuracy: f64,
    /// Runs under a detecting policy.
    pub detection_runs: usize,
    /// Of those, runs in which the attacker raised an alarm.
    pub detected_runs: usize,
    /// Median attacker queries at the first alarm over detected runs.
    pub median_queries_to_detection: Option<f64>,
    /// Runs under a detecting policy in which the attacker was blocked.
    pub blocked_runs: usize,
    /// Attack seconds, unprotected (mean).
    pub seconds: f64,
    /// Queries spent, unprotected (mean).
    pub queries: f64,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResults {
    /// The configuration that ran.
    pub config: EvalConfig,
    /// How clients reached the chain.
    pub transport: Transport,
    /// The victim.
    pub victim: VictimSummary,
    /// Every cell.
    pub cells: Vec<CellResult>,
    /// The comparison table.
    pub comparison: Vec<ComparisonRow>,
    /// Total wall-clock seconds.
    pub wall_seconds: f64,
    /// CPU threads available.
    pub threads: usize,
}

/// The master secret of a run: keys for DAWN, the ledger and keyed noise derive from it.
pub fn secret_for_seed(seed: u64) -> SecretKey {
    let h = mamori_core::hash::sha256_hex(format!("mamori-eval secret {seed}").as_bytes());
    let mut b = [0u8; 32];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    SecretKey::from_bytes(b)
}

/// The tier every evaluation client uses: full probabilities, no rate limit (the detectors
/// and the policy decide, not the limiter).
pub const EVAL_TIER: &str = "eval";

/// The gateway configuration of an evaluation chain.
pub fn eval_gateway_config() -> GatewayConfig {
    let mut cfg = GatewayConfig::default();
    cfg.tiers.insert(
        EVAL_TIER.into(),
        TierConfig {
            disclosure: mamori_gateway::config::DisclosureKind::Probabilities,
            top_k: 3,
            rate_per_s: 1e9,
            burst: 1_000_000_000,
            daily_quota: u64::MAX / 4,
            postprocessors: Vec::new(),
        },
    );
    cfg.default_tier = EVAL_TIER.into();
    cfg.server.max_batch = 1024;
    cfg.server.max_body_bytes = 64 << 20;
    cfg
}

/// Records which client received which watermark marks.
#[derive(Default)]
pub struct ClientMarks(Mutex<HashMap<String, HashSet<String>>>);

impl ClientMarks {
    /// Input hashes marked for `client`.
    pub fn of(&self, client: &str) -> HashSet<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .cloned()
            .unwrap_or_default()
    }
}

impl LedgerSink for ClientMarks {
    fn record(&self, _model: &str, client: &str, _watermark: &str, mark: &WatermarkMark) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(client.to_string())
            .or_default()
            .insert(mark.input_sha256.clone());
    }
}

/// An oracle that keeps every answer the attacker received and stops at a refusal.
pub struct Recorder {
    inner: Box<dyn Oracle>,
    xs: Vec<Tensor>,
    probs: Vec<Tensor>,
    labels: Vec<usize>,
    first_disclosure: Option<Disclosure>,
    /// Queries answered before the first label-only answer after soft ones.
    pub degraded_at: Option<u64>,
    /// Queries answered before the refusal.
    pub blocked_at: Option<u64>,
    /// Why the chain refused.
    pub refusal: Option<String>,
    on_answer: Option<Box<dyn FnMut(u64) + Send>>,
}

impl Recorder {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Oracle>) -> Self {
        Self {
            inner,
            xs: Vec::new(),
            probs: Vec::new(),
            labels: Vec::new(),
            first_disclosure: None,
            degraded_at: None,
            blocked_at: None,
            refusal: None,
            on_answer: None,
        }
    }

    /// Calls `f(queries so far)` after every answered request (live progress).
    pub fn on_answer(mut self, f: impl FnMut(u64) + Send + 'static) -> Self {
        self.on_answer = Some(Box::new(f));
        self
    }

    /// Answers harvested.
    pub fn harvested(&self) -> u64 {
        self.labels.len() as u64
    }

    /// The harvest: inputs, answers and whether the answers were soft at first.
    pub fn harvest(&self) -> Result<(Tensor, OracleAnswer), EvalError> {
        let c = self.inner.num_classes();
        let x = if self.xs.is_empty() {
            let mut s = vec![0];
            s.extend(self.inner.input_shape());
            Tensor::zeros(s)
        } else {
            Tensor::concat(&self.xs).map_err(|e| EvalError::Model(e.to_string()))?
        };
        let probs = if self.probs.is_empty() {
            Tensor::zeros(vec![0, c])
        } else {
            Tensor::concat(&self.probs).map_err(|e| EvalError::Model(e.to_string()))?
        };
        Ok((
            x,
            OracleAnswer {
                probs,
                labels: self.labels.clone(),
                disclosure: self.first_disclosure.unwrap_or(Disclosure::Label),
            },
        ))
    }
}

impl Oracle for Recorder {
    fn input_shape(&self) -> Vec<usize> {
        self.inner.input_shape()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        if let Some(r) = &self.refusal {
            return Err(OracleError::Refused(r.clone()));
        }
        match self.inner.query(x) {
            Ok(a) => {
                let first = *self.first_disclosure.get_or_insert(a.disclosure);
                if self.degraded_at.is_none() && is_soft(first) && !is_soft(a.disclosure) {
                    self.degraded_at = Some(self.labels.len() as u64);
                }
                self.xs.push(x.clone());
                self.probs.push(a.probs.clone());
                self.labels.extend(a.labels.iter().copied());
                let n = self.labels.len() as u64;
                if let Some(f) = self.on_answer.as_mut() {
                    f(n);
                }
                Ok(a)
            }
            Err(OracleError::Refused(r)) => {
                self.blocked_at = Some(self.labels.len() as u64);
                self.refusal = Some(r.clone());
                Err(OracleError::Refused(r))
            }
            Err(e) => Err(e),
        }
    }
    fn queries_used(&self) -> u64 {
        self.inner.queries_used()
    }
    fn budget(&self) -> Option<u64> {
        self.inner.budget()
    }
}

/// A chain for one cell, reachable in-process or over HTTP.
pub struct CellChain {
    /// The chain.
    pub chain: Arc<Chain>,
    /// Keys by client.
    pub keys: HashMap<String, String>,
    /// Marks by client.
    pub marks: Arc<ClientMarks>,
    /// The DAWN watermark, if the policy has one.
    pub dawn: Option<Arc<mamori_defense::Dawn>>,
    /// The live gateway (HTTP transport).
    pub server: Option<BlockingServer>,
    /// The served model's name.
    pub model_name: String,
}

impl CellChain {
    /// Builds the chain of `policy` for `victim` (its model, calibrated thresholds and quiet
    /// dimensions), with keys for `clients`, and starts a gateway on `127.0.0.1:0` for the
    /// HTTP transport. `home` holds the DAWN ledger.
    pub fn build(
        prepared: &Victim,
        policy: &str,
        custom: &BTreeMap<String, protection::PolicySpec>,
        home: &Path,
        seed: u64,
        clients: &[String],
        transport: Transport,
    ) -> Result<Self, EvalError> {
        let spec = protection::resolve(policy, custom)?;
        if home.exists() {
            std::fs::remove_dir_all(home).map_err(|e| EvalError::io(home, e))?;
        }
        std::fs::create_dir_all(home).map_err(|e| EvalError::io(home, e))?;
        let victim = &prepared.model;
        let ctx = ProtectionContext {
            home: home.to_path_buf(),
            secret: Some(secret_for_seed(seed)),
            calibration: Some(prepared.calibration.clone()),
            model_calibrations: Default::default(),
            network: Some(Arc::new(victim.network.clone())),
            fingerprint_dims: prepared.fingerprint_dims.clone(),
        };
        let model: Arc<dyn Model> = victim.clone();
        let protected = protection::protect(
            eval_gateway_config(),
            vec![(model, "mamori-native".to_string())],
            &spec,
            &ctx,
        )?;
        let dawn = protected.dawn.get(&victim.card.name).cloned();
        let store = Arc::new(KeyStore::in_memory());
        let mut keys = HashMap::new();
        for c in clients {
            let (_, k) = store.create(c, None, EVAL_TIER, &[])?;
            keys.insert(c.clone(), k);
        }
        let marks = Arc::new(ClientMarks::default());
        let chain = Arc::new(
            protected
                .builder()
                .keys(store)
                .ledger(marks.clone())
                .build()?,
        );
        let server = match transport {
            Transport::InProcess => None,
            Transport::Http => Some(BlockingServer::start(chain.clone(), "127.0.0.1:0")?),
        };
        Ok(Self {
            chain,
            keys,
            marks,
            dawn,
            server,
            model_name: victim.card.name.clone(),
        })
    }

    /// An oracle for `client` through the chain (in-process or HTTP).
    pub fn oracle(&self, client: &str, batch: usize) -> Result<Box<dyn Oracle>, EvalError> {
        let key = self.keys.get(client).ok_or_else(|| EvalError::Config {
            path: "<clients>".into(),
            message: format!("no key for client {client:?}"),
        })?;
        Ok(match &self.server {
            None => Box::new(ChainOracle::new(
                self.chain.clone(),
                key,
                Some(&self.model_name),
            )?),
            Some(s) => {
                let mut cfg = HttpOracleConfig::from_url(&s.url(), Some(&self.model_name))
                    .map_err(|e| EvalError::Transport(e.to_string()))?;
                cfg.api_key = Some(key.clone());
                cfg.batch_size = batch.max(1);
                cfg.max_retries = 2;
                Box::new(HttpOracle::connect(cfg).map_err(|e| EvalError::Transport(e.to_string()))?)
            }
        })
    }

    /// Alerts recorded so far, as (client, detector, queries).
    /// Each alert as (client, detector, the client's queries at the alarm, whether the policy
    /// acted on it, i.e. its action was more than `allow`: alarms of suspicion-only detectors
    /// without corroboration are recorded with `allow`).
    pub fn alerts(&self) -> Result<Vec<(String, String, u64, bool)>, EvalError> {
        self.chain.flush_audit();
        let alerts = self.chain.shared().audit.with_store(|s| s.alerts())?;
        Ok(alerts
            .into_iter()
            .map(|a| {
                let acted = a.action != "allow";
                (a.client, a.detector, a.queries, acted)
            })
            .collect())
    }

    /// Stops the gateway (HTTP) and the audit writer.
    pub fn shutdown(self) -> Result<(), EvalError> {
        if let Some(s) = self.server {
            s.shutdown()?;
        }
        self.chain.shutdown();
        Ok(())
    }
}

/// Trains the substitute of `cfg` on the first `n` harvested answers.
pub fn train_on_harvest(
    cfg: &EvalConfig,
    victim: &NativeModel,
    x: &Tensor,
    answers: &OracleAnswer,
    n: usize,
    seed: u64,
) -> Result<NativeModel, EvalError> {
    let n = n.min(x.batch_size());
    let shape = victim.card.input_shape.clone();
    let classes = victim.card.num_classes();
    let mut net = Network::new(&cfg.substitute.arch, &shape, classes, seed);
    let xs = x.slice_rows(0, n);
    let soft = is_soft(answers.disclosure);
    let targets = answer_targets(
        &answers.probs.slice_rows(0, n),
        &answers.labels[..n],
        soft,
        true,
    );
    if n > 0 {
        fit_substitute(
            &mut net,
            &xs,
            &targets,
            &train_config(cfg, seed, false),
            cfg.substitute.stop().as_ref(),
        )
        .map_err(|e| EvalError::Model(e.to_string()))?;
    }
    let mut card = victim.card.clone();
    card.name = "substitute".into();
    card.test_accuracy = None;
    Ok(NativeModel { network: net, card })
}

fn train_config(cfg: &EvalConfig, seed: u64, progress: bool) -> TrainConfig {
    TrainConfig {
        epochs: cfg.substitute.epochs,
        batch_size: cfg.substitute.batch_size,
        learning_rate: cfg.substitute.learning_rate,
        weight_decay: 0.0,
        seed,
        progress,
    }
}

/// Queries at which a curve first reaches 90% of its last fidelity.
pub fn queries_to_90(curve: &[CurvePoint]) -> Option<u64> {
    let last = curve.last()?;
    curve
        .iter()
        .find(|p| p.fidelity >= 0.9 * last.fidelity)
        .map(|p| p.queries)
}

/// Attacker data for `a`: the training part of its dataset, at most `query_limit` samples.
fn attacker_data(
    a: &AttackConfig,
    data_dir: &Path,
    seed: u64,
) -> Result<Option<Dataset>, EvalError> {
    let Some(name) = &a.query_data else {
        return Ok(None);
    };
    let mut d = victim::dataset(name, data_dir)?.train;
    if a.query_limit > 0 && a.query_limit < d.len() {
        let mut idx: Vec<usize> = (0..d.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xa77a));
        idx.truncate(a.query_limit);
        d = d.select(&idx);
    }
    Ok(Some(d))
}

/// Context shared by the cells of a run.
pub struct Prepared {
    /// The victim.
    pub victim: Victim,
    /// Benign streams.
    pub benign: Vec<BenignStream>,
    /// Attacker data per attack label.
    pub attacker_data: HashMap<String, Option<Dataset>>,
}

/// Prepares the victim, the benign streams and the attacker data.
pub fn prepare(cfg: &EvalConfig, opts: &RunOptions) -> Result<Prepared, EvalError> {
    let victim = victim::prepare(cfg, &opts.data_dir, &opts.cache_dir, opts.progress)?;
    let other = if cfg.benign.other_clients > 0 {
        Some(victim::dataset(&cfg.benign.other_dataset, &opts.data_dir)?.test)
    } else {
        None
    };
    let benign = benign::streams(&cfg.benign, &victim.replay, other.as_ref(), cfg.seed)?;
    let mut attacker = HashMap::new();
    for a in &cfg.attacks {
        attacker.insert(a.label(), attacker_data(a, &opts.data_dir, cfg.seed)?);
    }
    Ok(Prepared {
        victim,
        benign,
        attacker_data: attacker,
    })
}

/// The attacker's client name.
pub const ATTACKER: &str = "attacker";

/// Runs one cell.
#[allow(clippy::too_many_arguments)]
pub fn run_cell(
    cfg: &EvalConfig,
    prep: &Prepared,
    attack: &AttackConfig,
    policy: &str,
    repeat: usize,
    opts: &RunOptions,
    on_attacker_answer: Option<Box<dyn FnMut(u64) + Send>>,
    on_benign_request: Option<Box<dyn FnMut(u64) + Send>>,
) -> Result<CellResult, EvalError> {
    let t0 = Instant::now();
    let seed = cfg.seed + repeat as u64;
    let spec = protection::resolve(policy, &cfg.matrix.custom)?;
    let mut clients = vec![ATTACKER.to_string()];
    clients.extend(prep.benign.iter().map(|b| b.client.clone()));
    let home = opts.out_dir.join("cells").join(format!(
        "{}__{}__r{repeat}",
        sanitize(&attack.label()),
        sanitize(policy)
    ));
    let cell = CellChain::build(
        &prep.victim,
        policy,
        &cfg.matrix.custom,
        &home,
        seed,
        &clients,
        opts.transport,
    )?;
    let strategy = mamori_attack::by_name(&attack.strategy).map_err(|e| EvalError::Attack {
        attack: attack.label(),
        message: e.to_string(),
    })?;
    let qd = prep
        .attacker_data
        .get(&attack.label())
        .and_then(|d| d.as_ref());
    let mut ctx = ExtractionContext::new(attack.budget, cfg.substitute.arch.clone());
    ctx.train = train_config(cfg, seed, false);
    ctx.stop = cfg.substitute.stop();
    ctx.query_data = qd;
    ctx.query_batch = cfg.substitute.query_batch;
    ctx.seed = seed;
    ctx.progress = opts.attack_progress;
    let victim_model: &NativeModel = &prep.victim.model;

    let attacker_oracle = cell.oracle(ATTACKER, cfg.substitute.query_batch)?;
    let mut recorder = Recorder::new(attacker_oracle);
    if let Some(f) = on_attacker_answer {
        recorder.on_answer = Some(f);
    }
    let benign_oracles: Vec<Box<dyn Oracle>> = prep
        .benign
        .iter()
        .map(|b| cell.oracle(&b.client, cfg.benign.batch))
        .collect::<Result<_, _>>()?;
    let (extraction, benign_out) = std::thread::scope(|s| {
        let benign_handle = s.spawn(move || -> Result<Vec<BenignOutcome>, EvalError> {
            let mut cb = on_benign_request;
            let mut out = Vec::new();
            for (stream, mut o) in prep.benign.iter().zip(benign_oracles) {
                out.push(benign::run_client(
                    stream,
                    o.as_mut(),
                    victim_model,
                    cfg.benign.batch,
                    |n| {
                        if let Some(f) = cb.as_mut() {
                            f(n)
                        }
                    },
                )?);
            }
            Ok(out)
        });
        let e = strategy.extract(&mut recorder, &ctx);
        let b = benign_handle
            .join()
            .unwrap_or_else(|_| Err(EvalError::Model("benign client thread panicked".into())));
        (e, b)
    });
    let mut benign_out = benign_out?;
    let mut notes = Vec::new();
    let (x, answers) = recorder.harvest()?;
    let harvested = recorder.harvested();
    let (substitute, source, attack_seconds) = match extraction {
        Ok(e) if recorder.refusal.is_none() => {
            notes.extend(e.notes.clone());
            (e.substitute, "attack".to_string(), e.seconds)
        }
        Ok(e) => {
            notes.push("blocked; substitute trained on the answers harvested before".into());
            let s = train_on_harvest(cfg, victim_model, &x, &answers, harvested as usize, seed)?;
            (s, "harvest".into(), e.seconds)
        }
        Err(err) => {
            if recorder.refusal.is_none() {
                return Err(EvalError::Attack {
                    attack: attack.label(),
                    message: err.to_string(),
                });
            }
            notes.push(format!(
                "stopped by the gateway after {harvested} answers ({err}); substitute trained on \
                 the harvest"
            ));
            let s = train_on_harvest(cfg, victim_model, &x, &answers, harvested as usize, seed)?;
            (s, "harvest".into(), t0.elapsed().as_secs_f64())
        }
    };
    let m: SubstituteMetrics = prep
        .victim
        .eval
        .evaluate(&substitute)
        .map_err(|e| EvalError::Model(e.to_string()))?;

    // Fidelity curve over the harvest.
    let mut curve = Vec::new();
    let mut points: Vec<u64> = cfg
        .matrix
        .checkpoints
        .iter()
        .map(|c| ((c * attack.budget as f64).round() as u64).max(1))
        .filter(|&n| n <= harvested)
        .collect();
    if harvested > 0 && points.last() != Some(&harvested) {
        points.push(harvested);
    }
    points.dedup();
    for n in points {
        let sub = train_on_harvest(cfg, victim_model, &x, &answers, n as usize, seed)?;
        let pm = prep
            .victim
            .eval
            .evaluate(&sub)
            .map_err(|e| EvalError::Model(e.to_string()))?;
        curve.push(CurvePoint {
            queries: n,
            fidelity: pm.fidelity,
            accuracy: pm.substitute_accuracy,
        });
    }

    // Detection from the audit log.
    let alerts = cell.alerts()?;
    let mut by_det: BTreeMap<String, u64> = BTreeMap::new();
    let mut first: Option<(u64, String)> = None;
    // Alarms of one request share its query count; among them the first alarm names a
    // behaviour detector rather than one of the cell policy's suspicion monitors (which cannot
    // act alone).
    let suspicion = &spec.escalation.suspicion;
    let weak = |d: &str| {
        suspicion
            .iter()
            .any(|s| d.trim_start_matches("group:") == s)
    };
    for (client, det, q, acted) in &alerts {
        if client == ATTACKER {
            let e = by_det.entry(det.clone()).or_insert(*q);
            *e = (*e).min(*q);
            let earlier = first
                .as_ref()
                .is_none_or(|f| *q < f.0 || (*q == f.0 && weak(&f.1) && !weak(det)));
            if *acted && earlier {
                first = Some((*q, det.clone()));
            }
        }
    }
    let (first_alarm, first_alarm_detector) = match first {
        Some((q, d)) => (Some(q), Some(d)),
        None => (None, None),
    };
    // A benign client is falsely alarmed when the policy acted on one of its alarms.
    let alarmed: HashSet<&str> = alerts
        .iter()
        .filter(|a| a.3)
        .map(|a| a.0.as_str())
        .collect();
    for b in &mut benign_out {
        b.alarmed = alarmed.contains(b.client.as_str());
        b.alarms = alerts
            .iter()
            .filter(|a| a.0 == b.client)
            .map(|a| (a.1.clone(), a.2))
            .collect();
    }

    // DAWN.
    let watermark = match &cell.dawn {
        None => None,
        Some(d) => {
            let mine = cell.marks.of(ATTACKER);
            let records: Vec<_> = d
                .ledger_records()
                .into_iter()
                .filter(|r| mine.contains(&r.input_sha256))
                .collect();
            if records.is_empty() {
                Some(WatermarkOutcome {
                    marks: 0,
                    matches: 0,
                    p_value: 1.0,
                    log10_p_value: 0.0,
                    verified: false,
                })
            } else {
                let alpha = mamori_defense::verify::DEFAULT_ALPHA;
                let v = mamori_defense::verify_model_with(
                    &substitute,
                    &records,
                    alpha,
                    d.fingerprint(),
                    Some(victim_model),
                    mamori_defense::fingerprint::DEFAULT_VERIFY_QUERIES,
                )
                .map_err(|e| EvalError::Defense(e.to_string()))?;
                Some(WatermarkOutcome {
                    marks: v.queried,
                    matches: v.matches,
                    p_value: v.p_value,
                    log10_p_value: v.log10_p_value,
                    verified: v.verdict == mamori_defense::Verdict::WatermarkFound,
                })
            }
        }
    };
    let degraded_at = recorder.degraded_at;
    let blocked_at = recorder.blocked_at;
    drop(recorder);
    cell.shutdown()?;

    let labelled: Vec<&BenignOutcome> = benign_out
        .iter()
        .filter(|b| b.kind != BenignKind::Other && b.accuracy.is_some())
        .collect();
    let benign_accuracy_cost = labelled
        .iter()
        .map(|b| b.baseline_accuracy.unwrap_or(0.0) - b.accuracy.unwrap_or(0.0))
        .sum::<f64>()
        / labelled.len().max(1) as f64;
    let total_q: u64 = benign_out.iter().map(|b| b.queries).sum();
    let refused: u64 = benign_out.iter().map(|b| b.refused).sum();
    let latency_added_ms = benign_out
        .iter()
        .map(|b| (b.mean_request_s - b.mean_bare_s) * 1e3)
        .sum::<f64>()
        / benign_out.len().max(1) as f64;
    Ok(CellResult {
        attack: attack.label(),
        strategy: attack.strategy.clone(),
        policy: policy.to_string(),
        policy_detects: spec.detect,
        repeat,
        seed,
        budget: attack.budget,
        queries: harvested,
        substitute_accuracy: m.substitute_accuracy,
        fidelity: m.fidelity,
        fidelity_uniform: m.fidelity_uniform,
        substitute_source: source,
        curve,
        first_alarm,
        first_alarm_detector,
        alarms_by_detector: by_det,
        degraded_at,
        blocked_at,
        watermark,
        benign_false_alarms: benign_out.iter().filter(|b| b.alarmed).count(),
        benign_accuracy_cost,
        benign_refused_share: refused as f64 / total_q.max(1) as f64,
        benign_agreement: benign_out.iter().map(|b| b.agreement).sum::<f64>()
            / benign_out.len().max(1) as f64,
        benign: benign_out,
        latency_added_ms,
        attack_seconds,
        cell_seconds: t0.elapsed().as_secs_f64(),
        notes,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The comparison table from the cells.
pub fn comparison(cfg: &EvalConfig, cells: &[CellResult]) -> Vec<ComparisonRow> {
    let mut rows = Vec::new();
    for a in &cfg.attacks {
        let label = a.label();
        let mine: Vec<&CellResult> = cells.iter().filter(|c| c.attack == label).collect();
        let open: Vec<&&CellResult> = mine.iter().filter(|c| c.policy == "none").collect();
        let base: Vec<&&CellResult> = if open.is_empty() {
            mine.iter()
                .filter(|c| c.policy == cfg.matrix.policies[0])
                .collect()
        } else {
            open
        };
        let mean = |f: &dyn Fn(&CellResult) -> f64| {
            base.iter().map(|c| f(c)).sum::<f64>() / base.len().max(1) as f64
        };
        let mut q90: Vec<u64> = base
            .iter()
            .filter_map(|c| queries_to_90(&c.curve))
            .collect();
        q90.sort_unstable();
        let det: Vec<&&CellResult> = mine.iter().filter(|c| c.policy_detects).collect();
        let mut delays: Vec<f64> = det
            .iter()
            .filter_map(|c| c.first_alarm.map(|q| q as f64))
            .collect();
        delays.sort_by(f64::total_cmp);
        rows.push(ComparisonRow {
            attack: label.clone(),
            strategy: a.strategy.clone(),
            queries_to_90: q90.get(q90.len().saturating_sub(1) / 2).copied(),
            fidelity: mean(&|c| c.fidelity),
            accuracy: mean(&|c| c.substitute_accuracy),
            detection_runs: det.len(),
            detected_runs: delays.len(),
            median_queries_to_detection: median(&delays),
            blocked_runs: det.iter().filter(|c| c.blocked_at.is_some()).count(),
            seconds: mean(&|c| c.attack_seconds),
            queries: mean(&|c| c.queries as f64),
        });
    }
    rows
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Runs the whole matrix of `cfg`.
pub fn run(cfg: &EvalConfig, opts: &RunOptions) -> Result<EvalResults, EvalError> {
    cfg.check("<config>")?;
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| EvalError::io(&opts.out_dir, e))?;
    let prep = prepare(cfg, opts)?;
    let total = (cfg.attacks.len() * cfg.matrix.policies.len() * cfg.matrix.repeats) as u64;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "eval [{bar:30}] {pos}/{len} cells {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut cells = Vec::new();
    for repeat in 0..cfg.matrix.repeats {
        for a in &cfg.attacks {
            for p in &cfg.matrix.policies {
                bar.set_message(format!("{} × {p}", a.label()));
                let c = run_cell(cfg, &prep, a, p, repeat, opts, None, None)?;
                bar.inc(1);
                cells.push(c);
            }
        }
    }
    bar.finish_and_clear();
    let comparison = comparison(cfg, &cells);
    let v = &prep.victim;
    Ok(EvalResults {
        config: cfg.clone(),
        transport: opts.transport,
        victim: VictimSummary {
            name: v.model.card.name.clone(),
            architecture: v.model.card.architecture.clone(),
            dataset: cfg.victim.dataset.clone(),
            accuracy: v.eval.victim_accuracy(),
            dir: v.dir.display().to_string(),
        },
        cells,
        comparison,
        wall_seconds: t0.elapsed().as_secs_f64(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_percent_point() {
        let c = |q, f| CurvePoint {
            queries: q,
            fidelity: f,
            accuracy: 0.0,
        };
        let curve = vec![c(10, 0.3), c(50, 0.75), c(100, 0.8), c(200, 0.82)];
        // 0.9 × 0.82 = 0.738 → first reached at 50.
        assert_eq!(queries_to_90(&curve), Some(50));
        assert_eq!(queries_to_90(&[]), None);
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
        assert_eq!(median(&[1.0, 3.0, 7.0]), Some(3.0));
    }

    #[test]
    fn the_secret_depends_on_the_seed_only() {
        assert_eq!(secret_for_seed(3).expose(), secret_for_seed(3).expose());
        assert_ne!(secret_for_seed(3).expose(), secret_for_seed(4).expose());
    }
}
