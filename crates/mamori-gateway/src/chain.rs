//! The protection chain: one ordered list of stages, usable in-process without HTTP.
//!
//! ```text
//!   request ─► authenticate ─► validate ─► limit ─► detect ─► infer ─► postprocess ─► watermark ─► audit
//!                                                     │          │           │             │           │
//!  phase 1  request_filter   (each stage in order; infer runs the model here)
//!  phase 2  response_filter  (each stage in order: detect observes and decides, postprocess
//!                             and watermark change the answer)
//!  phase 3  logging          (always, success or error: audit writes the event)
//! ```
//!
//! Each stage implements [`Stage`], one method per phase with a no-op default (the shape of
//! pingora's `ProxyHttp`). The list is built in one place, [`Chain::stages_for`]; nothing else
//! decides the order. The HTTP server ([`crate::server`]) and the evaluation harness
//! ([`ChainOracle`]) both call [`Chain::handle`], so what is evaluated is exactly what is served.
//!
//! Extension points plugged in per model through [`ModelSpec`]: detectors
//! (`Arc<dyn mamori_core::Detector>`, one state per client and per client group), an escalation
//! [`Policy`], a watermark (`Arc<dyn mamori_core::Watermark>`) whose marks go to a
//! [`LedgerSink`]; and per tier, postprocessors resolved by name through a
//! [`PostprocessorRegistry`].

use crate::audit::{
    AlertEvent, AuditRecord, AuditStore, AuditWriter, BlockEvent, LedgerEvent, MemoryStore,
    OutputDraft, RequestDraft, SharedState,
};
use crate::block_sync::{BlockCursor, SETTLE_MS};
use crate::config::{GatewayConfig, TierConfig};
use crate::error::GatewayError;
use crate::keys::{now_ms, KeyStore, Principal};
use crate::metrics::{Metrics, ModelMetrics};
use crate::oip::{self, InferBody, MODEL_VERSION};
use crate::policy::{AlertOnAlarm, NamedVerdict, Policy};
use crate::ratelimit::{Limiter, Limits, RateLimiter};
use crate::validate::{self, OutputSelection};
use mamori_core::{
    Action, Detector, DetectorState, Disclosure, Model, ModelCard, Observation, Oracle,
    OracleAnswer, OracleError, PostContext, Postprocessor, Tensor, Verdict, Watermark,
    WatermarkMark,
};
use mamori_detect::engine::RepeatMemory;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a request carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// An Open Inference Protocol JSON body (optionally with binary tensor data).
    Oip {
        /// The raw body.
        body: Vec<u8>,
        /// `Inference-Header-Content-Length`, when the binary extension is used.
        binary_header_len: Option<usize>,
    },
    /// A body that was larger than the limit (refused by the validate stage, still audited).
    Oversized {
        /// Bytes received before giving up.
        got: usize,
    },
    /// An in-process batch of normalised inputs.
    Tensor {
        /// `[n, card.input_shape...]`.
        input: Tensor,
        /// Request id to echo.
        id: Option<String>,
    },
}

/// One inference request as the chain sees it.
#[derive(Clone, Debug)]
pub struct InferRequest {
    /// The API key presented, if any.
    pub credential: Option<String>,
    /// Model name.
    pub model: String,
    /// Model version, if addressed.
    pub version: Option<String>,
    /// The payload.
    pub payload: Payload,
    /// The client's IP address (the HTTP server's peer, or the address trusted proxies
    /// forwarded); `None` in process. Logged, and the per-network detector subject when
    /// `detect.network_prefix_v4` / `_v6` are set.
    pub peer: Option<std::net::IpAddr>,
}

/// The chain's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Echoed request id.
    pub id: Option<String>,
    /// `[n, classes]` probabilities as disclosed (`None` when not requested or not allowed).
    pub probabilities: Option<Tensor>,
    /// Labels (argmax of the returned answer), when requested.
    pub labels: Option<Vec<usize>>,
    /// What the answer disclosed.
    pub disclosure: Disclosure,
    /// The escalation decision applied to this answer.
    pub action: Action,
    /// Outputs the client asked to receive as binary tensor data (binary tensor data
    /// extension); the others go back as JSON.
    pub binary_outputs: OutputSelection,
}

/// Receives watermark marks (the DAWN ledger).
pub trait LedgerSink: Send + Sync {
    /// Records that `client`'s answer for an input was changed by `watermark` on `model`.
    fn record(&self, model: &str, client: &str, watermark: &str, mark: &WatermarkMark);
}

/// Resolves postprocessor names from the configuration (`rounding`, `top_k`, ...).
pub type PostprocessorRegistry = Arc<dyn Fn(&str) -> Option<Arc<dyn Postprocessor>> + Send + Sync>;

/// Everything served for one model.
pub struct ModelSpec {
    /// The model (embedded or upstream proxy).
    pub model: Arc<dyn Model>,
    /// Platform string for metadata (`mamori-native`, `onnx`, `upstream`).
    pub platform: String,
    /// Detectors watching this model's clients.
    pub detectors: Vec<Arc<dyn Detector>>,
    /// Escalation policy.
    pub policy: Box<dyn Policy>,
    /// Answer watermark.
    pub watermark: Option<Arc<dyn Watermark>>,
    /// The exact-repeat rule (`mamori_detect::Engine`'s): an input bit-identical to one the
    /// subject already sent is answered identically and leaks nothing new, so it is shown only
    /// to the volume detector (`rate`); the others answer their last verdict again (the
    /// similarity detectors would otherwise flag legitimate retries). The input is hashed once
    /// per subject, at most [`mamori_detect::engine::MAX_SEEN`] hashes are remembered per
    /// subject (all forgotten when full), and they are not saved (after a restart a repeat is
    /// seen as new). Off in [`ModelSpec::new`]; the built-in protection turns it on with its
    /// detectors.
    pub skip_exact_repeats: bool,
}

impl ModelSpec {
    /// A model with no detectors, the default policy, no watermark, every query shown to
    /// every detector.
    pub fn new(model: Arc<dyn Model>, platform: &str) -> Self {
        Self {
            model,
            platform: platform.to_string(),
            detectors: Vec::new(),
            policy: Box::new(AlertOnAlarm),
            watermark: None,
            skip_exact_repeats: false,
        }
    }
}

/// A subject's detector snapshots, by detector name.
type Snapshots = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct SubjectState {
    states: Vec<Box<dyn DetectorState>>,
    /// Each detector's last verdict (given again for an exact repeat it is not shown).
    last: Vec<Verdict>,
    /// The inputs the subject sent ([`ModelSpec::skip_exact_repeats`]; not saved).
    seen: RepeatMemory,
    alarmed: HashSet<String>,
    last_action: Option<Action>,
    /// Observed (or loaded from the first state-file format) since the last save: to the
    /// shared store with `detect.shared_state`, else to the subject's state file.
    dirty: bool,
    /// Arrival time of its last observed request (Unix ms; 0 = none since it was loaded):
    /// the least recently observed subjects are evicted first (`detect.max_resident_subjects`).
    last_seen_ms: u64,
    /// Heap bytes it holds ([`SubjectState::measure`]), as of its last measure: when it was
    /// made or loaded, every [`MEASURE_EVERY`] observations, and at each save.
    bytes: usize,
    /// Observations since that measure.
    unmeasured: u32,
}

/// Observations between two measures of a subject's memory ([`SubjectState::bytes`]): a
/// measure walks the detectors' indexes (tens of microseconds at 100k queries), so it is
/// spread over this many queries, while a subject grows by at most this many queries' worth
/// (≈ 2 MB at MNIST size) between two.
const MEASURE_EVERY: u32 = 1024;

/// What stays in memory of a subject whose detector states were evicted
/// (`detect.max_resident_subjects`): the admin listing's numbers, and the alarms and last
/// action that decide whether its next alarm is a new alert — given back to its states when
/// they are loaded again.
#[derive(Clone, Debug, Default)]
struct Evicted {
    queries: u64,
    alarmed: HashSet<String>,
    last_action: Option<Action>,
}

impl SubjectState {
    fn fresh(detectors: &[Arc<dyn Detector>]) -> Self {
        let mut st = SubjectState {
            states: detectors.iter().map(|d| d.new_state()).collect(),
            ..Default::default()
        };
        st.measure();
        st
    }

    /// Measures the heap bytes it holds (`detect.max_resident_bytes`): its detector states
    /// ([`DetectorState::heap_bytes`] and the states themselves) and its repeat memory.
    fn measure(&mut self) {
        self.bytes = self
            .states
            .iter()
            .map(|s| s.heap_bytes() + std::mem::size_of_val(&**s))
            .sum::<usize>()
            + self.seen.heap_bytes()
            + self.last.capacity() * std::mem::size_of::<Verdict>()
            + std::mem::size_of::<SubjectState>();
        self.unmeasured = 0;
    }

    /// Shows one query to the subject's detectors — to those of `skips_repeats` only when its
    /// input is not an exact repeat ([`ModelSpec::skip_exact_repeats`]) — and keeps each one's
    /// verdict in `last`.
    fn observe(&mut self, skips_repeats: &[bool], obs: &Observation<'_>) {
        let repeat = skips_repeats.iter().any(|&s| s) && self.seen.repeat(obs.input);
        self.last.resize(
            self.states.len(),
            Verdict {
                score: 0.0,
                alarm: false,
            },
        );
        for ((state, last), &skips) in self
            .states
            .iter_mut()
            .zip(&mut self.last)
            .zip(skips_repeats)
        {
            if !(repeat && skips) {
                *last = state.observe(obs);
            }
        }
        self.unmeasured += 1;
        if self.unmeasured >= MEASURE_EVERY {
            self.measure();
        }
    }

    /// Queries the subject's states have seen.
    fn queries(&self) -> u64 {
        self.states.iter().map(|s| s.queries()).max().unwrap_or(0)
    }

    /// What the admin listing shows of it, and what stays in memory once it is evicted.
    fn summary(&self) -> Evicted {
        Evicted {
            queries: self.queries(),
            alarmed: self.alarmed.clone(),
            last_action: self.last_action,
        }
    }

    /// Every detector's state, by detector name: what a checkpoint saves per subject, to the
    /// shared store or the subject's state file ([`crate::state_codec`]).
    fn snapshots(&self, detectors: &[Arc<dyn Detector>]) -> Snapshots {
        detectors
            .iter()
            .zip(&self.states)
            .map(|(d, s)| (d.info().name, s.snapshot()))
            .collect()
    }

    /// The snapshots to save when the subject was observed since the last save (clearing
    /// the mark; the caller marks it again if the save fails), with its query count.
    fn take_changed(&mut self, detectors: &[Arc<dyn Detector>]) -> Option<(Snapshots, u64)> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.measure();
        Some((self.snapshots(detectors), self.queries()))
    }

    /// The subject named in a state file ([`crate::state_codec::encode_file`]) and its states.
    fn from_file(detectors: &[Arc<dyn Detector>], bytes: &[u8]) -> Result<(String, Self), String> {
        let (subject, snaps) = crate::state_codec::decode_file(bytes)?;
        Ok((subject, Self::restore(detectors, &snaps)?))
    }

    /// The states of [`SubjectState::snapshots`]; a detector missing from them starts fresh.
    fn restore(
        detectors: &[Arc<dyn Detector>],
        snaps: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, String> {
        let mut states = Vec::with_capacity(detectors.len());
        for d in detectors {
            let name = d.info().name;
            states.push(match snaps.get(&name) {
                Some(bytes) => d.restore_state(bytes).map_err(|e| format!("{name}: {e}"))?,
                None => d.new_state(),
            });
        }
        let mut st = SubjectState {
            states,
            ..Default::default()
        };
        st.measure();
        Ok(st)
    }
}

#[derive(Default)]
struct Blocks {
    blocked: HashMap<String, String>,
    overridden: HashSet<String>,
}

/// How many times `detect.max_resident_subjects` a model's resident subjects may reach before
/// a checkpoint is due early ([`Chain::memory_pressure`]).
pub const PRESSURE_FACTOR: usize = 2;

/// A served model with its own state: detector states, policy, blocks (model isolation).
pub struct ModelEntry {
    /// Model name (= card name).
    pub name: String,
    /// The model.
    pub model: Arc<dyn Model>,
    /// Platform string.
    pub platform: String,
    detectors: Vec<Arc<dyn Detector>>,
    /// The detectors' names, in order (taken once, not per verdict).
    detector_names: Vec<String>,
    /// Per detector, whether an exact repeat is withheld from it
    /// ([`ModelSpec::skip_exact_repeats`]: every detector but the volume detector).
    skips_repeats: Vec<bool>,
    subjects: Mutex<HashMap<String, Arc<Mutex<SubjectState>>>>,
    /// Subjects whose states were evicted from memory, with what the gateway keeps of them.
    evicted: Mutex<HashMap<String, Evicted>>,
    /// This model's per-subject state files (`<state dir>/<model>.states`), when detector
    /// states are kept in files: where an evicted or not yet loaded subject's states are read.
    state_files: Option<std::path::PathBuf>,
    policy: Mutex<Box<dyn Policy>>,
    watermark: Option<Arc<dyn Watermark>>,
    blocks: Mutex<Blocks>,
    /// Metric handles for allowed answers, taken on the first one.
    metrics: std::sync::OnceLock<ModelMetrics>,
}

impl ModelEntry {
    /// The model card.
    pub fn card(&self) -> &ModelCard {
        self.model.card()
    }

    /// The detector states of subject `name`: this replica's in memory, else the saved ones
    /// (with `detect.shared_state` the shared store's, which another replica may have written;
    /// else the subject's state file, written before it was evicted or before a restart), else
    /// fresh. An evicted subject gets back its alarms and last action.
    ///
    /// A state file that cannot be read fails the request (a storage error: its states are
    /// not replaced by fresh ones, which the next checkpoint would write over them); one that
    /// does not decode is moved aside (`….mss.damaged`, kept for inspection) and the subject
    /// starts fresh, logged as an error.
    fn subject(&self, name: &str, sh: &Shared) -> Result<Arc<Mutex<SubjectState>>, GatewayError> {
        if let Some(st) = self
            .subjects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(st.clone());
        }
        // Not under the map's lock: a store or file read must not hold up every other client.
        let restored = if sh.config.detect.shared_state {
            self.shared_subject(name, sh)
        } else {
            self.file_subject(name)?
        };
        let mut map = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .entry(name.to_string())
            .or_insert_with(|| {
                let mut st = restored.unwrap_or_else(|| SubjectState::fresh(&self.detectors));
                let back = self
                    .evicted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name);
                if let Some(ev) = back {
                    st.alarmed = ev.alarmed;
                    st.last_action = ev.last_action;
                }
                Arc::new(Mutex::new(st))
            })
            .clone())
    }

    /// The states of `subject` in its state file, if it has one (see [`ModelEntry::subject`]).
    fn file_subject(&self, subject: &str) -> Result<Option<SubjectState>, GatewayError> {
        let Some(dir) = &self.state_files else {
            return Ok(None);
        };
        let path = dir.join(crate::state_codec::file_name(subject));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(GatewayError::Storage(format!("{}: {e}", path.display()))),
        };
        let restored = SubjectState::from_file(&self.detectors, &bytes).and_then(|(who, st)| {
            if who != subject {
                return Err(format!("holds the states of {who:?}"));
            }
            Ok(st)
        });
        match restored {
            Ok(st) => Ok(Some(st)),
            Err(e) => {
                let aside = path.with_extension("mss.damaged");
                let moved = std::fs::rename(&path, &aside);
                tracing::error!(
                    "detector state of {subject:?} on {:?}: {}: invalid detector state: {e}; \
                     starting fresh ({})",
                    self.name,
                    path.display(),
                    match moved {
                        Ok(()) => format!("the file is kept as {}", aside.display()),
                        Err(m) => format!("moving it aside failed: {m}"),
                    }
                );
                Ok(None)
            }
        }
    }

    /// Evicts from memory the least recently observed subjects while the model holds more than
    /// `max` subjects or more than `max_bytes` heap bytes of them (0 = no such limit), among
    /// those saved since they were last observed and with no request in flight (a request
    /// holds its subject's state while it runs: such a subject is kept, and a subject observed
    /// since the last save stays until the next one writes it). Returns how many were evicted.
    /// The caller has saved the states (their file or the shared store has them).
    fn evict_idle(&self, max: usize, max_bytes: u64) -> usize {
        if max == 0 && max_bytes == 0 {
            return 0;
        }
        let (_, mut bytes) = self.resident();
        let mut map = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        let over =
            |len: usize, bytes: u64| (max > 0 && len > max) || (max_bytes > 0 && bytes > max_bytes);
        if !over(map.len(), bytes) {
            return 0;
        }
        // Under the map's lock no request can take a subject's state: one that only the map
        // holds is idle until the lock is released, and then it is gone from the map.
        let mut idle: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, st)| Arc::strong_count(st) == 1)
            .filter_map(|(name, st)| {
                let g = st.lock().unwrap_or_else(|e| e.into_inner());
                (!g.dirty).then(|| (g.last_seen_ms, name.clone()))
            })
            .collect();
        idle.sort_unstable();
        let mut evicted = self.evicted.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (_, name) in idle {
            if !over(map.len(), bytes) {
                break;
            }
            if let Some(st) = map.remove(&name) {
                let g = st.lock().unwrap_or_else(|e| e.into_inner());
                bytes = bytes.saturating_sub(g.bytes as u64);
                evicted.insert(name, g.summary());
                n += 1;
            }
        }
        n
    }

    /// Resident subjects and their heap bytes (as of their last measures). Each subject's
    /// lock is taken after the map's is released, so a request holding its subject for a
    /// long batch holds up this count, not every other request's look-up.
    fn resident(&self) -> (usize, u64) {
        let subjects: Vec<Arc<Mutex<SubjectState>>> = self
            .subjects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let bytes = subjects
            .iter()
            .map(|st| st.lock().unwrap_or_else(|e| e.into_inner()).bytes as u64)
            .sum();
        (subjects.len(), bytes)
    }

    /// The states of `subject` another replica saved in the shared store. A store that
    /// cannot be read, or a state that does not restore (another detector set), gives fresh
    /// states and a warning: detection goes on, from zero for this subject.
    fn shared_subject(&self, subject: &str, sh: &Shared) -> Option<SubjectState> {
        let saved = match sh.audit.with_store(|s| s.get_state(&self.name, subject)) {
            Ok(saved) => saved?,
            Err(e) => {
                tracing::warn!(
                    "detector state of {subject:?} on {:?} not read from the shared store: {e}",
                    self.name
                );
                return None;
            }
        };
        let restored = crate::state_codec::decode(&saved.snapshot)
            .and_then(|snaps| SubjectState::restore(&self.detectors, &snaps));
        match restored {
            Ok(st) => {
                tracing::info!(
                    "detector state of {subject:?} on {:?} taken over from the shared store ({} queries)",
                    self.name,
                    saved.queries
                );
                Some(st)
            }
            Err(e) => {
                tracing::warn!(
                    "detector state of {subject:?} on {:?} in the shared store does not restore ({e}); starting fresh",
                    self.name
                );
                None
            }
        }
    }

    /// Every subject with its state, copied out so the map's lock is not held while the
    /// states are read.
    fn subject_list(&self) -> Vec<(String, Arc<Mutex<SubjectState>>)> {
        self.subjects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether `client` is blocked on this model.
    pub fn is_blocked(&self, client: &str) -> bool {
        self.blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocked
            .contains_key(client)
    }
}

/// One client (or `group:…` / `net:…` subject) as [`Chain::clients`] reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClientInfo {
    /// The model.
    pub model: String,
    /// The client name, `group:<name>` or `net:<network>`.
    pub subject: String,
    /// Queries its detectors have seen (since their states began).
    pub queries: u64,
    /// Its current escalation risk, when the policy keeps one.
    pub risk: Option<f64>,
    /// The highest action taken so far (`alert`, `degrade`, `throttle`, `block`).
    pub last_action: Option<String>,
    /// Detectors that have alarmed on it.
    pub alarmed: Vec<String>,
    /// The block's reason, when blocked.
    pub blocked: Option<String>,
    /// Whether an administrator overrode the policy's blocks for it.
    pub overridden: bool,
    /// Whether its detector states are in memory (`false`: evicted, see
    /// `detect.max_resident_subjects`; loaded again on its next request).
    pub resident: bool,
    /// Heap bytes of its detector states in memory, as of their last measure (0 when not
    /// resident; see `detect.max_resident_bytes`).
    pub state_bytes: u64,
}

/// Per-tier runtime settings.
struct Tier {
    config: TierConfig,
    postprocessors: Vec<Arc<dyn Postprocessor>>,
}

/// State shared by the stages.
pub struct Shared {
    /// Configuration.
    pub config: GatewayConfig,
    /// Served models by name.
    pub models: BTreeMap<String, Arc<ModelEntry>>,
    /// API keys.
    pub keys: Arc<KeyStore>,
    /// Rate limiter (this process's buckets, or Redis shared by the replicas).
    pub limiter: Arc<dyn Limiter>,
    /// Audit writer.
    pub audit: Arc<AuditWriter>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where alerts are POSTed, if anywhere.
    pub webhook: Option<Arc<crate::alert_webhook::AlertWebhook>>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    tiers: HashMap<String, Tier>,
    degrade: Vec<Arc<dyn Postprocessor>>,
    ledger: Arc<dyn LedgerSink>,
}

impl Shared {
    fn tier(&self, name: &str) -> Result<&Tier, GatewayError> {
        self.tiers
            .get(name)
            .ok_or_else(|| GatewayError::Config(format!("key refers to unknown tier {name:?}")))
    }
}

/// A request travelling through the chain.
pub struct Exchange {
    /// The request.
    pub request: InferRequest,
    /// Request arrival.
    pub started: Instant,
    /// Arrival time, ms since the epoch.
    pub time_ms: u64,
    /// Set by authenticate (shared with the key store's index: no copy per request).
    pub principal: Option<Arc<Principal>>,
    /// Set by validate.
    pub entry: Option<Arc<ModelEntry>>,
    /// Decoded OIP body, when the payload was JSON.
    pub body: Option<InferBody>,
    /// The normalised input batch (shared with the audit event: no copy per request).
    pub input: Option<Arc<Tensor>>,
    /// Requested outputs.
    pub outputs: OutputSelection,
    /// Whether the outputs were listed explicitly.
    pub outputs_explicit: bool,
    /// What the answer discloses.
    pub disclosure: Disclosure,
    /// Detector verdicts.
    pub verdicts: Vec<NamedVerdict>,
    /// Escalation decision.
    pub action: Action,
    /// The model's logits.
    pub logits: Option<Tensor>,
    /// Probabilities: the model's, then changed by postprocess and watermark.
    pub probs: Option<Tensor>,
    /// Labels of the model before any change.
    pub model_labels: Vec<usize>,
    /// Watermark marks.
    pub marks: Vec<WatermarkMark>,
}

impl Exchange {
    fn entry(&self) -> Result<&Arc<ModelEntry>, GatewayError> {
        self.entry
            .as_ref()
            .ok_or_else(|| GatewayError::Config("chain misordered: no model resolved".into()))
    }
    fn client(&self) -> &str {
        self.principal
            .as_ref()
            .map(|p| p.client.as_str())
            .unwrap_or("")
    }
}

/// One protection module. Each method is a phase; the default does nothing.
pub trait Stage: Send + Sync {
    /// Stage name (for logs).
    fn name(&self) -> &'static str;
    /// Phase 1, before inference (in chain order; the infer stage runs the model here).
    fn request_filter(&self, _sh: &Shared, _ex: &mut Exchange) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Phase 2, after inference (in chain order).
    fn response_filter(&self, _sh: &Shared, _ex: &mut Exchange) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Phase 3, always (success or failure).
    fn logging(&self, _sh: &Shared, _ex: &Exchange, _result: Result<(), &GatewayError>) {}
}

/// Whether the chain protects or only serves (the benchmark's baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainMode {
    /// Every stage.
    Full,
    /// Inference only: no authentication, validation, limits, detection, postprocessing,
    /// watermark or audit (full probabilities). For benchmarking only.
    Disabled,
}

/// The protection chain.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    shared: Shared,
    mode: ChainMode,
    state_dir: Option<std::path::PathBuf>,
    /// One save at a time (periodic checkpoints and the shutdown's save share the files).
    save_lock: Mutex<()>,
    /// The audit store's block events already applied ([`Chain::sync_blocks`]).
    applied_blocks: Mutex<BlockCursor>,
    /// This replica's name in the shared detector states (process id and start time).
    replica: String,
}

/// Builds a [`Chain`].
pub struct ChainBuilder {
    config: GatewayConfig,
    keys: Option<Arc<KeyStore>>,
    store: Option<Box<dyn AuditStore>>,
    audit_spill: Option<std::path::PathBuf>,
    audit_chain: Option<std::path::PathBuf>,
    limiter: Option<Arc<dyn Limiter>>,
    webhook: Option<Arc<crate::alert_webhook::AlertWebhook>>,
    models: Vec<ModelSpec>,
    registry: Option<PostprocessorRegistry>,
    ledger: Option<Arc<dyn LedgerSink>>,
    mode: ChainMode,
    metrics: Option<Arc<Metrics>>,
    state_dir: Option<std::path::PathBuf>,
}

impl ChainBuilder {
    /// Starts from a configuration.
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            config,
            keys: None,
            store: None,
            audit_spill: None,
            audit_chain: None,
            limiter: None,
            webhook: None,
            models: Vec::new(),
            registry: None,
            ledger: None,
            mode: ChainMode::Full,
            metrics: None,
            state_dir: None,
        }
    }
    /// The key store (default: empty, in memory).
    pub fn keys(mut self, keys: Arc<KeyStore>) -> Self {
        self.keys = Some(keys);
        self
    }
    /// The audit store (default: in memory).
    pub fn audit_store(mut self, store: Box<dyn AuditStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// A local spill file for audit batches the store refuses, replayed when it answers again
    /// (see [`crate::audit::WriterOptions::spill`]; default: none, the writer waits for the
    /// store).
    pub fn audit_spill(mut self, path: std::path::PathBuf) -> Self {
        self.audit_spill = Some(path);
        self
    }
    /// Seals every audit record into the tamper-evident chain whose state lives in `dir`
    /// (`<home>/audit-chain`; see [`crate::audit_chain`]; default: records are not sealed).
    pub fn audit_chain(mut self, dir: std::path::PathBuf) -> Self {
        self.audit_chain = Some(dir);
        self
    }
    /// Where the token buckets live (default: this process, [`RateLimiter`]; replicas behind
    /// a load balancer share [`crate::ratelimit_redis::RedisLimiter`]).
    pub fn limiter(mut self, limiter: Arc<dyn Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }
    /// POSTs every alert to a webhook (see [`crate::alert_webhook`]; default: none).
    pub fn alert_webhook(mut self, webhook: Arc<crate::alert_webhook::AlertWebhook>) -> Self {
        self.webhook = Some(webhook);
        self
    }
    /// Adds a served model.
    pub fn model(mut self, spec: ModelSpec) -> Self {
        self.models.push(spec);
        self
    }
    /// Resolves the postprocessor names of the configuration.
    pub fn postprocessors(mut self, registry: PostprocessorRegistry) -> Self {
        self.registry = Some(registry);
        self
    }
    /// Where watermark marks go (default: the audit log's ledger table).
    pub fn ledger(mut self, sink: Arc<dyn LedgerSink>) -> Self {
        self.ledger = Some(sink);
        self
    }
    /// Full or disabled chain.
    pub fn mode(mut self, mode: ChainMode) -> Self {
        self.mode = mode;
        self
    }
    /// Directory where detector states are restored from at build and saved to at shutdown
    /// (`home/state`); one file per model.
    pub fn state_dir(mut self, dir: &std::path::Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }
    /// Shares a metrics registry.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the configuration and builds the chain (starts the audit writer).
    pub fn build(self) -> Result<Chain, GatewayError> {
        self.config.check()?;
        if self.models.is_empty() {
            return Err(GatewayError::Config("no model to serve".into()));
        }
        let resolve = |name: &str| -> Result<Arc<dyn Postprocessor>, GatewayError> {
            self.registry
                .as_ref()
                .and_then(|r| r(name))
                .ok_or_else(|| GatewayError::Config(format!("unknown postprocessor {name:?}")))
        };
        let mut tiers = HashMap::new();
        for (name, t) in &self.config.tiers {
            let pps = t
                .postprocessors
                .iter()
                .map(|n| resolve(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| GatewayError::Config(format!("tier {name}: {e}")))?;
            tiers.insert(
                name.clone(),
                Tier {
                    config: t.clone(),
                    postprocessors: pps,
                },
            );
        }
        let degrade = self
            .config
            .detect
            .degrade_postprocessors
            .iter()
            .map(|n| resolve(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut models = BTreeMap::new();
        for spec in self.models {
            let name = spec.model.card().name.clone();
            if name.is_empty() || name.contains('/') {
                return Err(GatewayError::Config(format!(
                    "model name {name:?} (from its card) must be non-empty and contain no '/'"
                )));
            }
            if models.contains_key(&name) {
                return Err(GatewayError::Config(format!(
                    "two models are named {name:?}; model names must be unique"
                )));
            }
            // With shared states, subjects are taken from the shared store as they come.
            let (subjects, not_loaded) = match &self.state_dir {
                Some(dir) if !self.config.detect.shared_state => load_states(
                    dir,
                    &name,
                    &spec.detectors,
                    self.config.detect.max_resident_subjects,
                )?,
                _ => (HashMap::new(), HashMap::new()),
            };
            let state_files = self
                .state_dir
                .as_ref()
                .filter(|_| !self.config.detect.shared_state)
                .map(|dir| states_dir(dir, &name));
            let mut spec = spec;
            if let Some(dir) = &self.state_dir {
                let path = dir.join(format!("{name}.policy.json"));
                match std::fs::read(&path) {
                    Ok(bytes) => spec
                        .policy
                        .restore(&bytes)
                        .map_err(|e| GatewayError::Storage(format!("{}: {e}", path.display())))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(GatewayError::Storage(format!("{}: {e}", path.display())))
                    }
                }
            }
            let detector_names: Vec<String> =
                spec.detectors.iter().map(|d| d.info().name).collect();
            let skips_repeats = detector_names
                .iter()
                .map(|n| spec.skip_exact_repeats && n != mamori_detect::rate::RateDetector::NAME)
                .collect();
            models.insert(
                name.clone(),
                Arc::new(ModelEntry {
                    name,
                    model: spec.model,
                    platform: spec.platform,
                    detectors: spec.detectors,
                    detector_names,
                    skips_repeats,
                    subjects: Mutex::new(subjects),
                    evicted: Mutex::new(not_loaded),
                    state_files,
                    policy: Mutex::new(spec.policy),
                    watermark: spec.watermark,
                    blocks: Mutex::new(Blocks::default()),
                    metrics: std::sync::OnceLock::new(),
                }),
            );
        }
        let store = self
            .store
            .unwrap_or_else(|| Box::new(MemoryStore::default()));
        if self.config.detect.shared_state && !store.shares_states() {
            return Err(GatewayError::Config(
                "detect.shared_state needs an audit store that keeps detector states \
                 (audit.store = \"sqlite\" or \"postgres\")"
                    .into(),
            ));
        }
        let applied_blocks = replay_blocks(store.as_ref(), &models)?;
        let metrics = self.metrics.unwrap_or_default();
        let audit_chain = match &self.audit_chain {
            Some(dir) => {
                let c = crate::audit_chain::ChainWriter::open(dir, store.as_ref())?;
                tracing::info!(
                    "audit chain: writer {}, {} records sealed so far",
                    c.writer(),
                    c.next_seq()
                );
                Some(c)
            }
            None => None,
        };
        let audit = Arc::new(AuditWriter::start_with(
            store,
            crate::audit::WriterOptions {
                capacity: self.config.audit.queue,
                batch: self.config.audit.batch,
                linger_ms: self.config.audit.linger_ms,
                spill: self.audit_spill,
                health: metrics.audit_health(),
                chain: audit_chain,
            },
        ));
        let ledger = self
            .ledger
            .unwrap_or_else(|| Arc::new(AuditLedger(audit.clone())));
        let limiter = self
            .limiter
            .unwrap_or_else(|| Arc::new(RateLimiter::new()) as Arc<dyn Limiter>);
        if let Some(dir) = &self.state_dir {
            let path = dir.join("limits.json");
            match std::fs::read(&path) {
                Ok(bytes) => limiter
                    .restore(&bytes)
                    .map_err(|e| GatewayError::Storage(format!("{}: {e}", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(GatewayError::Storage(format!("{}: {e}", path.display()))),
            }
        }
        let shared = Shared {
            models,
            keys: self.keys.unwrap_or_else(|| Arc::new(KeyStore::in_memory())),
            limiter,
            audit,
            metrics,
            webhook: self.webhook,
            trusted_proxies: self.config.server.trusted_proxy_nets()?,
            tiers,
            degrade,
            ledger,
            config: self.config,
        };
        Ok(Chain {
            stages: Chain::stages_for(self.mode),
            shared,
            mode: self.mode,
            state_dir: self.state_dir,
            save_lock: Mutex::new(()),
            applied_blocks: Mutex::new(applied_blocks),
            replica: format!("pid{}-{}", std::process::id(), now_ms()),
        })
    }
}

/// The default ledger: watermark marks go to the audit database.
struct AuditLedger(Arc<AuditWriter>);

impl LedgerSink for AuditLedger {
    fn record(&self, model: &str, client: &str, watermark: &str, mark: &WatermarkMark) {
        let ev = LedgerEvent {
            time_ms: now_ms(),
            model: model.into(),
            client: client.into(),
            watermark: watermark.into(),
            input_sha256: mark.input_sha256.clone(),
            true_label: mark.true_label as u64,
            given_label: mark.given_label as u64,
        };
        if let Err(e) = self.0.record(AuditRecord::Ledger(ev)) {
            tracing::error!("watermark ledger write failed: {e}");
        }
    }
}

impl Chain {
    /// THE ordered list of stages. Nothing else decides the order.
    pub fn stages_for(mode: ChainMode) -> Vec<Box<dyn Stage>> {
        match mode {
            ChainMode::Full => vec![
                Box::new(Authenticate),
                Box::new(Validate),
                Box::new(Limit),
                Box::new(Detect),
                Box::new(Infer),
                Box::new(Postprocess),
                Box::new(WatermarkStage),
                Box::new(Audit),
            ],
            ChainMode::Disabled => vec![Box::new(Infer)],
        }
    }

    /// Stage names in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// The shared state (models, keys, audit writer, metrics).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The mode the chain was built with.
    pub fn mode(&self) -> ChainMode {
        self.mode
    }

    /// Runs a request through every stage. Blocking (runs the model): call it from a plain
    /// thread or `tokio::task::spawn_blocking`, not from an async task.
    pub fn handle(&self, request: InferRequest) -> Result<InferResponse, GatewayError> {
        let mut ex = Exchange {
            request,
            started: Instant::now(),
            time_ms: now_ms(),
            principal: None,
            entry: None,
            body: None,
            input: None,
            outputs: OutputSelection::ALL,
            outputs_explicit: false,
            disclosure: Disclosure::Probabilities,
            verdicts: Vec::new(),
            action: Action::Allow,
            logits: None,
            probs: None,
            model_labels: Vec::new(),
            marks: Vec::new(),
        };
        let result = self.run_phases(&mut ex);
        for s in &self.stages {
            s.logging(&self.shared, &ex, result.as_ref().map(|_| ()));
        }
        let (status, decision) = match &result {
            Ok(()) => (200, action_name(ex.action)),
            Err(e) => (e.status(), e.kind()),
        };
        let seconds = ex.started.elapsed().as_secs_f64();
        let samples = ex.input.as_ref().map_or(0, |t| t.batch_size() as u64);
        match (&ex.entry, self.mode, status, decision) {
            (Some(e), ChainMode::Full, 200, "allow") => e
                .metrics
                .get_or_init(|| self.shared.metrics.model(&e.name))
                .observe_allowed(seconds, samples),
            (_, ChainMode::Full, ..) => self.shared.metrics.observe_request(
                &ex.request.model,
                status,
                decision,
                seconds,
                samples,
            ),
            (_, ChainMode::Disabled, ..) => {}
        }
        result?;
        Ok(respond(ex))
    }

    fn run_phases(&self, ex: &mut Exchange) -> Result<(), GatewayError> {
        for s in &self.stages {
            s.request_filter(&self.shared, ex)?;
        }
        for s in &self.stages {
            s.response_filter(&self.shared, ex)?;
        }
        Ok(())
    }

    /// Blocks `client` on `model` (`None`: every model) by administrator decision.
    pub fn admin_block(
        &self,
        client: &str,
        model: Option<&str>,
        reason: &str,
    ) -> Result<usize, GatewayError> {
        self.set_block(client, model, true, reason)
    }

    /// Unblocks `client` and overrides future policy blocks (administrator decision).
    pub fn admin_unblock(&self, client: &str, model: Option<&str>) -> Result<usize, GatewayError> {
        self.set_block(client, model, false, "administrator override")
    }

    fn set_block(
        &self,
        client: &str,
        model: Option<&str>,
        block: bool,
        reason: &str,
    ) -> Result<usize, GatewayError> {
        crate::keys::check_name("client", client)?;
        let entries: Vec<&Arc<ModelEntry>> = match model {
            Some(m) => vec![self
                .shared
                .models
                .get(m)
                .ok_or_else(|| GatewayError::NotFound(format!("unknown model {m:?}")))?],
            None => self.shared.models.values().collect(),
        };
        for e in &entries {
            let mut b = e.blocks.lock().unwrap_or_else(|e| e.into_inner());
            if block {
                b.blocked.insert(client.to_string(), reason.to_string());
                b.overridden.remove(client);
            } else {
                b.blocked.remove(client);
                b.overridden.insert(client.to_string());
            }
            self.shared.audit.record(AuditRecord::Block(BlockEvent {
                time_ms: now_ms(),
                model: e.name.clone(),
                client: client.into(),
                kind: if block { "block" } else { "unblock" }.into(),
                by: "admin".into(),
                reason: reason.into(),
            }))?;
        }
        Ok(entries.len())
    }

    /// Applies the block events other replicas wrote to a shared audit store since the last
    /// call (or since start): a client blocked — or unblocked by an administrator — on one
    /// replica is then refused — or served — by this one too. `mamori serve` calls it every
    /// `detect.block_sync_s` seconds.
    ///
    /// This replica's own queued audit records are written first, so the store holds every
    /// decision taken here before it is read; then the events not applied yet are applied in
    /// the store's order, which is the order the decisions were committed in — the later of
    /// two conflicting decisions (one replica's block, another's unblock) wins on every
    /// replica. Events are recognised by their row number, not by a cursor, so a PostgreSQL
    /// transaction that commits a lower number after a higher one was read is still applied
    /// at the next call. Returns how many events changed this replica's blocks or overrides.
    pub fn sync_blocks(&self) -> Result<usize, GatewayError> {
        self.shared.audit.flush();
        let mut applied = self
            .applied_blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let after = applied.after();
        let events = self.shared.audit.with_store(|s| s.numbered_blocks(after))?;
        let mut changed = 0;
        for (id, ev) in &events {
            if applied.first_sight(*id) && apply_block_event(&self.shared.models, ev) {
                changed += 1;
                tracing::info!(
                    "{} of {:?} on model {:?} by {} ({}) applied from the shared audit log",
                    ev.kind,
                    ev.client,
                    ev.model,
                    ev.by,
                    ev.reason
                );
            }
        }
        applied.settle(now_ms());
        Ok(changed)
    }

    /// What the gateway knows about every client (and client group or network) it has seen,
    /// per model: queries, current risk, last escalation, alarmed detectors, block and
    /// override — the admin API's `/admin/clients`.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let now = now_ms();
        let mut out = Vec::new();
        for e in self.shared.models.values() {
            let subjects = e.subject_list();
            let blocks = e.blocks.lock().unwrap_or_else(|e| e.into_inner());
            let policy = e.policy.lock().unwrap_or_else(|e| e.into_inner());
            // Evicted subjects, then the resident ones (a subject loaded again meanwhile is
            // listed once, as resident).
            let mut listed: BTreeMap<String, (Evicted, Option<u64>)> = e
                .evicted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), (v.clone(), None)))
                .collect();
            for (subject, st) in subjects {
                let g = st.lock().unwrap_or_else(|e| e.into_inner());
                listed.insert(subject, (g.summary(), Some(g.bytes as u64)));
            }
            for (subject, (s, bytes)) in listed {
                let mut alarmed: Vec<String> = s.alarmed.into_iter().collect();
                alarmed.sort();
                out.push(ClientInfo {
                    model: e.name.clone(),
                    risk: policy.risk(&subject, now),
                    queries: s.queries,
                    last_action: s.last_action.map(|a| action_name(a).to_string()),
                    alarmed,
                    blocked: blocks.blocked.get(&subject).cloned(),
                    overridden: blocks.overridden.contains(&subject),
                    subject,
                    resident: bytes.is_some(),
                    state_bytes: bytes.unwrap_or(0),
                });
            }
        }
        out.sort_by(|a, b| (&a.model, &a.subject).cmp(&(&b.model, &b.subject)));
        out
    }

    /// Clients currently blocked, as `(model, client, reason)`.
    pub fn blocked(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for e in self.shared.models.values() {
            let b = e.blocks.lock().unwrap_or_else(|e| e.into_inner());
            for (c, r) in &b.blocked {
                out.push((e.name.clone(), c.clone(), r.clone()));
            }
        }
        out.sort();
        out
    }

    /// Waits until every audit event so far is written.
    pub fn flush_audit(&self) {
        self.shared.audit.flush();
    }

    /// Flushes and stops the audit writer and saves detector states (graceful shutdown).
    pub fn shutdown(&self) {
        self.shared.audit.shutdown();
        if let Some(w) = &self.shared.webhook {
            w.shutdown();
        }
        if let Err(e) = self.save_states() {
            tracing::error!("saving detector states failed: {e}");
        }
    }

    /// Whether a checkpoint is due before its time: some model holds more than
    /// [`PRESSURE_FACTOR`] × `detect.max_resident_subjects` subjects in memory, or more than
    /// [`PRESSURE_FACTOR`] × `detect.max_resident_bytes` bytes of detector states, and a
    /// checkpoint can save and evict them (a state directory is set). Also publishes each
    /// model's resident subjects and bytes to the metrics (`mamori_resident_subjects`,
    /// `mamori_detector_state_bytes`). `serve` checks it every
    /// second (and checkpoints early at most every 5 s), so that a burst of new clients or
    /// networks between two checkpoints (`detect.checkpoint_s`, default 120 s) is saved and
    /// evicted within seconds instead of adding up in memory until the next one.
    pub fn memory_pressure(&self) -> bool {
        let d = &self.shared.config.detect;
        let (max, max_bytes) = (d.max_resident_subjects, d.max_resident_bytes);
        let can_evict = (max > 0 || max_bytes > 0) && self.state_dir.is_some();
        let mut pressure = false;
        for e in self.shared.models.values() {
            let (len, bytes) = e.resident();
            self.shared.metrics.set_resident(&e.name, len, bytes);
            pressure |= can_evict
                && ((max > 0 && len > max.saturating_mul(PRESSURE_FACTOR))
                    || (max_bytes > 0 && bytes > max_bytes.saturating_mul(PRESSURE_FACTOR as u64)));
        }
        pressure
    }

    /// Saves every model's detector states and escalation policy memory (per-client risk),
    /// and the daily quota counts of an in-process limiter (`limits.json`), under the state
    /// directory, if one is set (at shutdown, and periodically by `serve`:
    /// `detect.checkpoint_s`, or earlier under [`Chain::memory_pressure`]). Blocks need no
    /// saving: they are rebuilt from the audit log.
    pub fn save_states(&self) -> Result<(), GatewayError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let _one_at_a_time = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(dir)
            .map_err(|e| GatewayError::Storage(format!("{}: {e}", dir.display())))?;
        if let Some(bytes) = self.shared.limiter.snapshot() {
            write_synced(&dir.join("limits.json"), &bytes)?;
        }
        for e in self.shared.models.values() {
            let policy = e
                .policy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .snapshot();
            if let Some(bytes) = policy {
                write_synced(&dir.join(format!("{}.policy.json", e.name)), &bytes)?;
            }
            if e.detectors.is_empty() {
                continue;
            }
            if self.shared.config.detect.shared_state {
                self.save_shared_states(e)?;
            } else {
                save_state_files(dir, e)?;
            }
            let d = &self.shared.config.detect;
            let n = e.evict_idle(d.max_resident_subjects, d.max_resident_bytes);
            if n > 0 {
                tracing::debug!(
                    "{n} idle subjects' detector states on {:?} evicted from memory (saved)",
                    e.name
                );
            }
        }
        Ok(())
    }

    /// Saves the states of `e`'s subjects observed since the last save into the shared store
    /// (`detect.shared_state`); on failure they stay marked for the next save.
    fn save_shared_states(&self, e: &ModelEntry) -> Result<(), GatewayError> {
        let subjects = e.subject_list();
        let mut out = Vec::new();
        let mut taken = Vec::new();
        for (subject, st) in subjects {
            let changed = st
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_changed(&e.detectors);
            let Some((snaps, queries)) = changed else {
                continue;
            };
            // Compressed outside the subject's lock: its requests go on meanwhile.
            out.push(SharedState {
                subject,
                queries,
                snapshot: crate::state_codec::encode(&snaps),
            });
            taken.push(st);
        }
        if out.is_empty() {
            return Ok(());
        }
        let saved = self
            .shared
            .audit
            .with_store(|s| s.put_states(&e.name, &self.replica, now_ms(), &out));
        if saved.is_err() {
            for st in taken {
                st.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            }
        }
        saved
    }
}

/// Applies one block event of the audit log to its model's blocks and admin overrides;
/// `true` when that changed them (an unknown model or kind changes nothing).
fn apply_block_event(models: &BTreeMap<String, Arc<ModelEntry>>, ev: &BlockEvent) -> bool {
    let Some(e) = models.get(&ev.model) else {
        return false;
    };
    let mut b = e.blocks.lock().unwrap_or_else(|e| e.into_inner());
    let admin = ev.by == "admin";
    match ev.kind.as_str() {
        "block" => {
            let changed = b.blocked.get(&ev.client) != Some(&ev.reason)
                || (admin && b.overridden.contains(&ev.client));
            b.blocked.insert(ev.client.clone(), ev.reason.clone());
            if admin {
                b.overridden.remove(&ev.client);
            }
            changed
        }
        "unblock" => {
            let changed = b.blocked.remove(&ev.client).is_some();
            if admin {
                return b.overridden.insert(ev.client.clone()) || changed;
            }
            changed
        }
        other => {
            tracing::warn!("audit log: unknown block event kind {other:?} ignored");
            false
        }
    }
}

/// Rebuilds every model's blocks and admin overrides from the audit log's block events (policy
/// blocks, admin blocks and unblocks, oldest first): the audit store is what survives a crash
/// or a restart — and, on a shared PostgreSQL store, what other replicas decided. Returns the
/// cursor of the events applied.
fn replay_blocks(
    store: &dyn AuditStore,
    models: &BTreeMap<String, Arc<ModelEntry>>,
) -> Result<BlockCursor, GatewayError> {
    let events = store.numbered_blocks(i64::MIN)?;
    let mut applied = BlockCursor::new(SETTLE_MS);
    let mut restored = 0usize;
    for (id, ev) in &events {
        apply_block_event(models, ev);
        applied.first_sight(*id);
        restored += 1;
    }
    applied.settle(now_ms());
    if restored > 0 {
        let blocked: usize = models
            .values()
            .map(|e| {
                e.blocks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .blocked
                    .len()
            })
            .sum();
        tracing::info!(
            "{blocked} blocked clients restored from {restored} block events of the audit log"
        );
    }
    Ok(applied)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<(), GatewayError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| GatewayError::Storage(format!("{}: {e}", path.display())))
}

type SubjectMap = HashMap<String, Arc<Mutex<SubjectState>>>;

/// The directory of `model`'s per-subject state files.
fn states_dir(dir: &std::path::Path, model: &str) -> std::path::PathBuf {
    dir.join(format!("{model}.states"))
}

/// Writes the state file of every subject of `e` observed since the last save (each through
/// a synced temporary file and a rename: a crash leaves the old file or the new one), then
/// removes the first format's `<model>.json` once everything it held is in files. A
/// checkpoint costs the states that changed, not every client's. On failure the subjects not
/// written stay marked for the next save.
fn save_state_files(dir: &std::path::Path, e: &ModelEntry) -> Result<(), GatewayError> {
    let sdir = states_dir(dir, &e.name);
    std::fs::create_dir_all(&sdir)
        .map_err(|err| GatewayError::Storage(format!("{}: {err}", sdir.display())))?;
    for (subject, st) in e.subject_list() {
        let changed = st
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_changed(&e.detectors);
        let Some((snaps, queries)) = changed else {
            continue;
        };
        // Compressed and written outside the subject's lock.
        let bytes = match crate::state_codec::encode_file(&subject, queries, &snaps) {
            Ok(bytes) => bytes,
            Err(err) => {
                // Not this subject's fault to hold up the others' checkpoint: reported, kept
                // marked, the next subject saved.
                tracing::error!(model = %e.name, "state of a subject not saved: {err}");
                st.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
                continue;
            }
        };
        if let Err(err) = write_synced(&sdir.join(crate::state_codec::file_name(&subject)), &bytes)
        {
            st.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            return Err(err);
        }
    }
    let legacy = dir.join(format!("{}.json", e.name));
    match std::fs::remove_file(&legacy) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(GatewayError::Storage(
            format!("{}: {err}", legacy.display()),
        )),
        _ => Ok(()),
    }
}

/// `model`'s detector states from the state directory: the per-subject files of
/// `<model>.states/` — with `max` > 0 (`detect.max_resident_subjects`) only the `max` most
/// recently written, the others being loaded on their subject's first request and listed
/// meanwhile as evicted subjects are, with the query count of their file's header (the second
/// map) — and the first format's `<model>.json` if it is still there (its subjects marked for
/// the next save, which moves them into files; a subject in both is taken from its file, the
/// newer). A loaded file that does not decode stops the start, naming it; a file not loaded
/// whose header does not read is not listed (its subject's first request deals with it).
fn load_states(
    dir: &std::path::Path,
    model: &str,
    detectors: &[Arc<dyn Detector>],
    max: usize,
) -> Result<(SubjectMap, HashMap<String, Evicted>), GatewayError> {
    let mut out = load_legacy_states(dir, model, detectors)?;
    let mut listed = HashMap::new();
    let sdir = states_dir(dir, model);
    let entries = match std::fs::read_dir(&sdir) {
        Ok(it) => it,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((out, listed)),
        Err(err) => return Err(GatewayError::Storage(format!("{}: {err}", sdir.display()))),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|err| GatewayError::Storage(format!("{}: {err}", sdir.display())))?;
        let path = entry.path();
        if path.extension().and_then(|x| x.to_str()) != Some("mss") {
            // A temporary file of a write a crash interrupted (the previous file stands), or a
            // damaged file moved aside.
            continue;
        }
        let written = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|err| GatewayError::Storage(format!("{}: {err}", path.display())))?;
        files.push((written, path));
    }
    let mut later = Vec::new();
    if max > 0 && files.len() > max {
        // Newest first (ties by path, so the choice does not depend on the directory order).
        files.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        later = files.split_off(max);
    }
    for (_, path) in files {
        let bad = |err: String| {
            GatewayError::Storage(format!("{}: invalid detector state: {err}", path.display()))
        };
        let bytes = std::fs::read(&path).map_err(|err| bad(err.to_string()))?;
        let (subject, st) = SubjectState::from_file(detectors, &bytes).map_err(bad)?;
        out.insert(subject, Arc::new(Mutex::new(st)));
    }
    for (_, path) in later {
        // A first-version file has no count in its header: its states are decoded for it
        // (once per start, until the subject's next checkpoint rewrites the file).
        let header = crate::state_codec::read_file_header(&path).and_then(|(subject, q)| match q {
            Some(q) => Ok((subject, q)),
            None => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| SubjectState::from_file(detectors, &bytes))
                .map(|(subject, st)| (subject, st.queries())),
        });
        // A file is found again by its subject's name: one under another name (copied or
        // renamed by hand) would never be read for the subject its header names.
        let named = |subject: &str| {
            path.file_name().and_then(|n| n.to_str())
                == Some(crate::state_codec::file_name(subject).as_str())
        };
        match header {
            Ok((subject, _)) if !named(&subject) => tracing::warn!(
                "{}: holds the states of {subject:?}, whose file has another name; not listed",
                path.display()
            ),
            Ok((subject, queries)) => {
                // A subject also in the first format's `<model>.json` is taken from its file,
                // the newer, as a loaded one is: on its first request.
                out.remove(&subject);
                listed.insert(
                    subject,
                    Evicted {
                        queries,
                        ..Evicted::default()
                    },
                );
            }
            Err(e) => tracing::warn!(
                "detector state file not listed (read on its subject's first request): {e}"
            ),
        }
    }
    Ok((out, listed))
}

/// The first state-file format: every subject of `model` in one `<model>.json` (a JSON map of
/// subjects to maps of hex snapshots), rewritten whole at every checkpoint.
fn load_legacy_states(
    dir: &std::path::Path,
    model: &str,
    detectors: &[Arc<dyn Detector>],
) -> Result<SubjectMap, GatewayError> {
    let path = dir.join(format!("{model}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(GatewayError::Storage(format!("{}: {e}", path.display()))),
    };
    let saved: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_str(&text).map_err(|e| {
            GatewayError::Storage(format!("{}: invalid detector state: {e}", path.display()))
        })?;
    let mut out = HashMap::new();
    for (subject, snaps) in saved {
        let snaps = crate::state_codec::from_hex_map(snaps)
            .and_then(|snaps| SubjectState::restore(detectors, &snaps));
        let mut st = snaps
            .map_err(|e| GatewayError::Storage(format!("{}: {subject}/{e}", path.display())))?;
        st.dirty = true;
        out.insert(subject, Arc::new(Mutex::new(st)));
    }
    Ok(out)
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Alert => "alert",
        Action::Degrade => "degrade",
        Action::Throttle => "throttle",
        Action::Block => "block",
    }
}

fn respond(ex: Exchange) -> InferResponse {
    let entry_name = ex
        .entry
        .as_ref()
        .map(|e| e.name.clone())
        .unwrap_or_else(|| ex.request.model.clone());
    let id = match (&ex.body, &ex.request.payload) {
        (Some(b), _) => b.id.clone(),
        (None, Payload::Tensor { id, .. }) => id.clone(),
        _ => None,
    };
    let probs = ex.probs.unwrap_or_else(|| Tensor::zeros(vec![0, 0]));
    let labels = probs.argmax_rows();
    let show_probs = ex.outputs.probabilities && ex.disclosure != Disclosure::Label;
    let binary_outputs = match &ex.body {
        Some(b) => OutputSelection {
            probabilities: b.binary_output(oip::OUTPUT_PROBABILITIES),
            label: b.binary_output(oip::OUTPUT_LABEL),
        },
        None => OutputSelection::NONE,
    };
    InferResponse {
        model_name: entry_name,
        model_version: MODEL_VERSION.to_string(),
        id,
        probabilities: show_probs.then_some(probs),
        labels: ex.outputs.label.then_some(labels),
        disclosure: ex.disclosure,
        action: ex.action,
        binary_outputs,
    }
}

/// Applies a disclosure to one probability vector in place.
pub fn enforce_disclosure(d: Disclosure, probs: &mut [f32]) {
    match d {
        Disclosure::Probabilities => {}
        Disclosure::TopK(k) if k >= probs.len() => {}
        Disclosure::TopK(k) if probs.len() <= 64 => {
            // Rank by counting (no allocation): i is kept when fewer than k values come before
            // it in the order "larger first, then lower index" of the sort below.
            let mut keep = 0u64;
            for i in 0..probs.len() {
                let above = (0..probs.len())
                    .filter(|&j| {
                        probs[j].total_cmp(&probs[i]).then(i.cmp(&j)) == std::cmp::Ordering::Greater
                    })
                    .count();
                if above < k {
                    keep |= 1 << i;
                }
            }
            for (i, v) in probs.iter_mut().enumerate() {
                if keep & (1 << i) == 0 {
                    *v = 0.0;
                }
            }
        }
        Disclosure::TopK(k) => {
            let mut idx: Vec<usize> = (0..probs.len()).collect();
            idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            for &i in &idx[k..] {
                probs[i] = 0.0;
            }
        }
        Disclosure::Label => {
            let mut best = 0;
            for (i, v) in probs.iter().enumerate() {
                if *v > probs[best] {
                    best = i;
                }
            }
            for (i, v) in probs.iter_mut().enumerate() {
                *v = if i == best { 1.0 } else { 0.0 };
            }
        }
    }
}

fn stricter(a: Disclosure, b: Disclosure) -> Disclosure {
    fn rank(d: Disclosure) -> (u8, usize) {
        match d {
            Disclosure::Probabilities => (0, usize::MAX),
            Disclosure::TopK(k) => (1, usize::MAX - k),
            Disclosure::Label => (2, 0),
        }
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

// ───────────────────────────── the stages ─────────────────────────────

/// Stage 1: authenticate the API key and check the key's model scope.
struct Authenticate;

impl Stage for Authenticate {
    fn name(&self) -> &'static str {
        "authenticate"
    }
    fn request_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let key = ex
            .request
            .credential
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(GatewayError::MissingCredential)?;
        let p = sh.keys.authenticate_shared(key)?;
        if !p.models.is_empty() && !p.models.contains(&ex.request.model) {
            return Err(GatewayError::Forbidden(format!(
                "key {} is not allowed to query model {:?}",
                p.key_id, ex.request.model
            )));
        }
        ex.disclosure = sh.tier(&p.tier)?.config.disclosure();
        ex.principal = Some(p);
        Ok(())
    }
}

/// Stage 2: resolve the model and validate the input against its card.
struct Validate;

impl Stage for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }
    fn request_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let entry = resolve_model(sh, &ex.request)?;
        let card = entry.card();
        let max_batch = sh.config.server.max_batch;
        match &ex.request.payload {
            Payload::Oversized { got } => {
                return Err(GatewayError::BodyTooLarge {
                    got: *got,
                    limit: sh.config.server.max_body_bytes,
                })
            }
            Payload::Oip {
                body,
                binary_header_len,
            } => {
                if body.len() > sh.config.server.max_body_bytes {
                    return Err(GatewayError::BodyTooLarge {
                        got: body.len(),
                        limit: sh.config.server.max_body_bytes,
                    });
                }
                let decoded = oip::decode_infer(body, *binary_header_len)?;
                let (t, sel) = validate::validate_body(&decoded, card, max_batch)?;
                ex.outputs_explicit = decoded.outputs.as_ref().is_some_and(|o| !o.is_empty());
                ex.outputs = sel;
                ex.input = Some(Arc::new(t));
                ex.body = Some(decoded);
            }
            Payload::Tensor { input, .. } => {
                validate::validate_tensor(input, card, max_batch)?;
                ex.input = Some(Arc::new(input.clone()));
            }
        }
        if ex.outputs_explicit && ex.outputs.probabilities && ex.disclosure == Disclosure::Label {
            return Err(GatewayError::Forbidden(
                "this key's tier discloses labels only; request the \"label\" output".into(),
            ));
        }
        ex.entry = Some(entry);
        Ok(())
    }
}

fn resolve_model(sh: &Shared, req: &InferRequest) -> Result<Arc<ModelEntry>, GatewayError> {
    let entry = sh
        .models
        .get(&req.model)
        .ok_or_else(|| GatewayError::NotFound(format!("unknown model {:?}", req.model)))?;
    if let Some(v) = &req.version {
        if v != MODEL_VERSION {
            return Err(GatewayError::NotFound(format!(
                "model {:?} has no version {v:?} (versions: [\"{MODEL_VERSION}\"])",
                req.model
            )));
        }
    }
    Ok(entry.clone())
}

/// Stage 3: token bucket and daily quota per key (one query = one sample).
struct Limit;

impl Stage for Limit {
    fn name(&self) -> &'static str {
        "limit"
    }
    fn request_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let p = ex
            .principal
            .as_ref()
            .ok_or_else(|| GatewayError::Config("chain misordered: limit before auth".into()))?;
        let t = &sh.tier(&p.tier)?.config;
        let n = ex.input.as_ref().map(|x| x.batch_size()).unwrap_or(0) as u64;
        sh.limiter.check(
            &p.key_id,
            Limits {
                rate_per_s: t.rate_per_s,
                burst: t.burst,
                daily_quota: t.daily_quota,
            },
            n,
            ex.time_ms,
        )
    }
}

/// The per-network detector subject of `ip` (`net:203.0.113.0/24`), when the configuration
/// groups clients by network (`detect.network_prefix_v4` / `_v6`, 0 = off): an attacker who
/// spreads queries over many keys from one network is seen as one stream (issue #5's
/// cross-account correlation).
pub fn network_subject(ip: std::net::IpAddr, d: &crate::config::DetectConfig) -> Option<String> {
    let ip = match ip {
        // An IPv4 client seen through an IPv6 socket is grouped as IPv4.
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let prefix = match ip {
        std::net::IpAddr::V4(_) => d.network_prefix_v4,
        std::net::IpAddr::V6(_) => d.network_prefix_v6,
    };
    if prefix == 0 {
        return None;
    }
    ipnet::IpNet::new(ip, prefix)
        .ok()
        .map(|n| format!("net:{}", n.trunc()))
}

/// Stage 4, detection: refuse blocked clients before inference; after inference, feed every
/// sample to the per-client and per-group detector states and ask the policy for an action.
struct Detect;

impl Stage for Detect {
    fn name(&self) -> &'static str {
        "detect"
    }
    fn request_filter(&self, _sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        if ex.entry()?.is_blocked(ex.client()) {
            return Err(GatewayError::Blocked(ex.client().to_string()));
        }
        Ok(())
    }

    fn response_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let entry = ex.entry()?.clone();
        if entry.detectors.is_empty() {
            return Ok(());
        }
        let p = ex.principal.clone().ok_or_else(misordered)?;
        let mut subjects = vec![p.client.clone()];
        if let Some(g) = &p.group {
            subjects.push(format!("group:{g}"));
        }
        if let Some(net) = ex
            .request
            .peer
            .and_then(|ip| network_subject(ip, &sh.config.detect))
        {
            subjects.push(net);
        }
        let input = ex.input.as_ref().ok_or_else(misordered)?;
        let probs = ex.probs.as_ref().ok_or_else(misordered)?;
        let card = entry.card();
        let mut verdicts = Vec::new();
        let mut subject_states = Vec::new();
        for s in &subjects {
            let st = entry.subject(s, sh)?;
            {
                let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                g.dirty = true;
                g.last_seen_ms = ex.time_ms;
                for i in 0..input.batch_size() {
                    let obs = Observation {
                        client: s,
                        input: input.row(i),
                        input_shape: &card.input_shape,
                        probs: probs.row(i),
                        label: ex.model_labels[i],
                        time_ms: ex.time_ms,
                    };
                    g.observe(&entry.skips_repeats, &obs);
                }
                // The verdicts after the request's last query (a request holds at least one:
                // an empty batch is refused by validation, before this stage).
                for ((name, state), v) in entry.detector_names.iter().zip(&g.states).zip(&g.last) {
                    verdicts.push(NamedVerdict {
                        detector: name.clone(),
                        subject: s.clone(),
                        verdict: *v,
                        queries: state.queries(),
                    });
                }
            }
            subject_states.push((s.clone(), st));
        }
        let action = entry
            .policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide(&p.client, &verdicts, ex.time_ms);
        let overridden = entry
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overridden
            .contains(&p.client);
        let action = if overridden && action == Action::Block {
            Action::Alert
        } else {
            action
        };
        // Alerts: on a detector's first alarm for a subject, and when the action escalates.
        for (s, st) in &subject_states {
            let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
            let escalated = action > Action::Allow && g.last_action.is_none_or(|a| action > a);
            for v in verdicts
                .iter()
                .filter(|v| &v.subject == s && v.verdict.alarm)
            {
                if g.alarmed.insert(v.detector.clone()) || escalated {
                    sh.metrics.observe_alert(&entry.name, &v.detector);
                    let alert = AlertEvent {
                        time_ms: ex.time_ms,
                        model: entry.name.clone(),
                        client: s.clone(),
                        detector: v.detector.clone(),
                        score: v.verdict.score,
                        queries: v.queries,
                        action: action_name(action).into(),
                    };
                    if let Some(w) = &sh.webhook {
                        w.send(&alert);
                    }
                    sh.audit.record(AuditRecord::Alert(alert))?;
                }
            }
            if escalated {
                g.last_action = Some(action);
            }
        }
        ex.verdicts = verdicts;
        ex.action = action;
        match action {
            Action::Allow | Action::Alert => Ok(()),
            Action::Degrade => {
                ex.disclosure = stricter(ex.disclosure, {
                    let d = &sh.config.detect;
                    match d.degrade_disclosure {
                        crate::config::DisclosureKind::Probabilities => Disclosure::Probabilities,
                        crate::config::DisclosureKind::TopK => Disclosure::TopK(1),
                        crate::config::DisclosureKind::Label => Disclosure::Label,
                    }
                });
                Ok(())
            }
            Action::Throttle => {
                sh.limiter
                    .set_throttle(&p.key_id, Some(sh.config.detect.throttle_factor));
                Ok(())
            }
            Action::Block => {
                // The reason the audit log keeps is the one a restart restores.
                let reason = verdicts_reason(&ex.verdicts);
                let newly = {
                    let mut b = entry.blocks.lock().unwrap_or_else(|e| e.into_inner());
                    b.blocked.insert(p.client.clone(), reason.clone()).is_none()
                };
                if newly {
                    sh.audit.record(AuditRecord::Block(BlockEvent {
                        time_ms: ex.time_ms,
                        model: entry.name.clone(),
                        client: p.client.clone(),
                        kind: "block".into(),
                        by: "policy".into(),
                        reason,
                    }))?;
                }
                Err(GatewayError::Blocked(p.client.clone()))
            }
        }
    }
}

fn misordered() -> GatewayError {
    GatewayError::Config(
        "chain misordered: a stage ran before the stage that prepares its input".into(),
    )
}

fn verdicts_reason(v: &[NamedVerdict]) -> String {
    v.iter()
        .filter(|v| v.verdict.alarm)
        .map(|v| {
            format!(
                "{} alarm on {} (score {:.3})",
                v.detector, v.subject, v.verdict.score
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Stage 5: inference.
struct Infer;

impl Stage for Infer {
    fn name(&self) -> &'static str {
        "infer"
    }
    fn request_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        if ex.entry.is_none() {
            // Chain disabled: resolve and decode without validation.
            let entry = resolve_model(sh, &ex.request)?;
            if ex.input.is_none() {
                match &ex.request.payload {
                    Payload::Oip {
                        body,
                        binary_header_len,
                    } => {
                        let b = oip::decode_infer(body, *binary_header_len)?;
                        let inp = b
                            .inputs
                            .first()
                            .ok_or_else(|| GatewayError::BadRequest("no input".into()))?;
                        let mut shape = vec![inp.shape.first().copied().unwrap_or(0)];
                        shape.extend_from_slice(&entry.card().input_shape);
                        let data = match inp.datatype {
                            oip::InputType::Fp32 => inp.data.iter().map(|v| *v as f32).collect(),
                            oip::InputType::Uint8 => inp
                                .data
                                .iter()
                                .map(|v| entry.card().normalisation.apply(*v as f32))
                                .collect(),
                        };
                        ex.input = Some(Arc::new(
                            Tensor::new(shape, data)
                                .map_err(|e| GatewayError::BadRequest(e.to_string()))?,
                        ));
                        ex.body = Some(b);
                    }
                    Payload::Tensor { input, .. } => ex.input = Some(Arc::new(input.clone())),
                    Payload::Oversized { got } => {
                        return Err(GatewayError::BodyTooLarge {
                            got: *got,
                            limit: sh.config.server.max_body_bytes,
                        })
                    }
                }
            }
            ex.entry = Some(entry);
        }
        let entry = ex.entry()?.clone();
        let input = ex
            .input
            .as_ref()
            .ok_or_else(|| GatewayError::BadRequest("no input".into()))?;
        let logits = entry
            .model
            .logits(input)
            .map_err(|e| GatewayError::Inference(e.to_string()))?;
        let mut probs = logits.clone();
        mamori_core::softmax_rows(&mut probs);
        ex.model_labels = probs.argmax_rows();
        ex.logits = Some(logits);
        ex.probs = Some(probs);
        Ok(())
    }
}

/// Stage 6, output postprocessing: the tier's postprocessors (plus the degrade set for a
/// degraded client), then the tier's disclosure.
struct Postprocess;

impl Stage for Postprocess {
    fn name(&self) -> &'static str {
        "postprocess"
    }
    fn response_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let entry = ex.entry()?.clone();
        let p = ex.principal.as_ref().ok_or_else(misordered)?;
        let tier = sh.tier(&p.tier)?;
        let degraded = ex.action == Action::Degrade;
        let pps = || {
            tier.postprocessors
                .iter()
                .chain(sh.degrade.iter().filter(|_| degraded))
        };
        let input = ex.input.as_ref().ok_or_else(misordered)?;
        let logits = ex.logits.as_ref();
        let probs = ex.probs.as_mut().ok_or_else(misordered)?;
        let card = entry.card();
        for i in 0..input.batch_size() {
            let ctx = PostContext {
                client: &p.client,
                input: input.row(i),
                input_shape: &card.input_shape,
                logits: logits.map(|l| l.row(i)),
                model: Some(entry.model.as_ref()),
            };
            let row = probs.row_mut(i);
            for pp in pps() {
                pp.apply(&ctx, row);
            }
            enforce_disclosure(ex.disclosure, row);
        }
        Ok(())
    }
}

/// Stage 7: answer watermark; marks go to the ledger. The disclosure is enforced again afterwards.
struct WatermarkStage;

impl Stage for WatermarkStage {
    fn name(&self) -> &'static str {
        "watermark"
    }
    fn response_filter(&self, sh: &Shared, ex: &mut Exchange) -> Result<(), GatewayError> {
        let entry = ex.entry()?.clone();
        let Some(wm) = &entry.watermark else {
            return Ok(());
        };
        let client = ex.client().to_string();
        let input = ex.input.as_ref().ok_or_else(misordered)?;
        let probs = ex.probs.as_mut().ok_or_else(misordered)?;
        for i in 0..input.batch_size() {
            let row = probs.row_mut(i);
            if let Some(mark) = wm.apply(input.row(i), row) {
                sh.ledger.record(&entry.name, &client, &wm.name(), &mark);
                ex.marks.push(mark);
            }
            enforce_disclosure(ex.disclosure, row);
        }
        Ok(())
    }
}

/// Stage 8: audit: one event per request, success or failure.
struct Audit;

impl Stage for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }
    fn logging(&self, sh: &Shared, ex: &Exchange, result: Result<(), &GatewayError>) {
        let (status, decision, error) = match result {
            Ok(()) => (200, action_name(ex.action), None),
            // The audit record keeps an inference failure's cause (for the operator); storage
            // and configuration errors stay generic there too (they can name credentials).
            Err(e @ GatewayError::Inference(_)) => (e.status(), e.kind(), Some(e.to_string())),
            Err(e) => (e.status(), e.kind(), Some(e.public_message())),
        };
        // The costly parts (input hash, output JSON) are left to the writer thread.
        let output = match (result, &ex.probs) {
            (Ok(()), Some(p)) => Some(OutputDraft {
                probabilities: p.clone(),
                show_probabilities: ex.outputs.probabilities && ex.disclosure != Disclosure::Label,
            }),
            _ => None,
        };
        let scores = ex
            .verdicts
            .iter()
            .map(|v| {
                let key = if v.subject.starts_with("group:") {
                    format!("{}@group", v.detector)
                } else if v.subject.starts_with("net:") {
                    format!("{}@net", v.detector)
                } else {
                    v.detector.clone()
                };
                (key, v.verdict.score)
            })
            .collect();
        let p = ex.principal.as_ref();
        let draft = RequestDraft {
            time_ms: ex.time_ms,
            request_id: match (&ex.body, &ex.request.payload) {
                (Some(b), _) => b.id.clone(),
                (None, Payload::Tensor { id, .. }) => id.clone(),
                _ => None,
            },
            client: p.map(|p| p.client.clone()).unwrap_or_default(),
            key_id: p.map(|p| p.key_id.clone()).unwrap_or_default(),
            model: ex.request.model.clone(),
            input: ex.input.clone(),
            store_raw_input: sh.config.server.store_raw_input,
            output,
            scores,
            decision,
            status,
            error,
            latency_us: ex.started.elapsed().as_micros() as u64,
            peer: ex.request.peer,
        };
        if let Err(e) = sh.audit.record_request(draft) {
            tracing::error!("audit event lost: {e}");
        }
    }
}

// ───────────────────────────── in-process oracle ─────────────────────────────

/// An in-process client of the chain: what the evaluation harness and attack tests query.
///
/// Every query goes through the same stages as an HTTP request with `api_key`.
pub struct ChainOracle {
    /// The chain.
    pub chain: Arc<Chain>,
    /// The client's API key.
    pub api_key: String,
    /// Model queried.
    pub model: String,
    /// Query budget, if any.
    pub budget: Option<u64>,
    /// The client address its requests carry (default none; see [`InferRequest::peer`]).
    pub peer: Option<std::net::IpAddr>,
    used: u64,
    input_shape: Vec<usize>,
    classes: usize,
}

impl ChainOracle {
    /// An oracle for `model` (`None`: the only / first model) with `api_key`.
    pub fn new(
        chain: Arc<Chain>,
        api_key: &str,
        model: Option<&str>,
    ) -> Result<Self, GatewayError> {
        let entry = match model {
            Some(m) => chain
                .shared
                .models
                .get(m)
                .ok_or_else(|| GatewayError::NotFound(format!("unknown model {m:?}")))?,
            None => chain
                .shared
                .models
                .values()
                .next()
                .ok_or_else(|| GatewayError::Config("no model".into()))?,
        }
        .clone();
        Ok(Self {
            chain,
            api_key: api_key.to_string(),
            model: entry.name.clone(),
            budget: None,
            peer: None,
            used: 0,
            input_shape: entry.card().input_shape.clone(),
            classes: entry.card().num_classes(),
        })
    }

    /// Sets a query budget.
    pub fn with_budget(mut self, budget: u64) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl Oracle for ChainOracle {
    fn input_shape(&self) -> Vec<usize> {
        self.input_shape.clone()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let n = x.batch_size() as u64;
        if let Some(b) = self.budget {
            if self.used + n > b {
                return Err(OracleError::BudgetExhausted {
                    budget: b,
                    used: self.used,
                });
            }
        }
        let r = self.chain.handle(InferRequest {
            credential: Some(self.api_key.clone()),
            model: self.model.clone(),
            version: None,
            payload: Payload::Tensor {
                input: x.clone(),
                id: None,
            },
            peer: self.peer,
        });
        let r = match r {
            Ok(r) => r,
            Err(e @ (GatewayError::Blocked(_) | GatewayError::Forbidden(_))) => {
                return Err(OracleError::Refused(e.to_string()))
            }
            Err(e @ GatewayError::RateLimited { .. }) => {
                return Err(OracleError::RateLimited(e.to_string()))
            }
            Err(e) => return Err(OracleError::Transport(e.to_string())),
        };
        self.used += n;
        let labels = r.labels.unwrap_or_default();
        let probs = match r.probabilities {
            Some(p) => p,
            None => {
                let mut t = Tensor::zeros(vec![labels.len(), self.classes]);
                for (i, &l) in labels.iter().enumerate() {
                    if l < self.classes {
                        t.row_mut(i)[l] = 1.0;
                    }
                }
                t
            }
        };
        Ok(OracleAnswer {
            probs,
            labels,
            disclosure: r.disclosure,
        })
    }
    fn queries_used(&self) -> u64 {
        self.used
    }
    fn budget(&self) -> Option<u64> {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disclosure_masks() {
        let mut p = [0.1, 0.5, 0.3, 0.1];
        enforce_disclosure(Disclosure::TopK(2), &mut p);
        assert_eq!(p, [0.0, 0.5, 0.3, 0.0]);
        enforce_disclosure(Disclosure::Label, &mut p);
        assert_eq!(p, [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            stricter(Disclosure::TopK(3), Disclosure::Label),
            Disclosure::Label
        );
        assert_eq!(
            stricter(Disclosure::Label, Disclosure::Probabilities),
            Disclosure::Label
        );
    }

    #[test]
    fn top_k_without_allocation_matches_the_sort() {
        fn by_sort(k: usize, p: &mut [f32]) {
            let mut idx: Vec<usize> = (0..p.len()).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            for &i in &idx[k.min(p.len())..] {
                p[i] = 0.0;
            }
        }
        let mut seed = 7u64;
        for n in [1usize, 2, 3, 10, 64, 65, 100] {
            for k in [1usize, 2, 3, 5, 70] {
                for _ in 0..20 {
                    // Few distinct values, so ties are common.
                    let p: Vec<f32> = (0..n)
                        .map(|_| {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                            ((seed >> 60) as f32) / 16.0
                        })
                        .collect();
                    let (mut a, mut b) = (p.clone(), p.clone());
                    enforce_disclosure(Disclosure::TopK(k), &mut a);
                    by_sort(k, &mut b);
                    assert_eq!(a, b, "n {n} k {k} p {p:?}");
                }
            }
        }
    }

    #[test]
    fn the_order_is_fixed() {
        let names: Vec<_> = Chain::stages_for(ChainMode::Full)
            .iter()
            .map(|s| s.name())
            .collect();
        assert_eq!(
            names,
            [
                "authenticate",
                "validate",
                "limit",
                "detect",
                "infer",
                "postprocess",
                "watermark",
                "audit"
            ]
        );
    }
}
