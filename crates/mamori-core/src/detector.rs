//! Per-client stateful detectors: configuration shared, state per client.
//!
//! The split mirrors tract's `Op` / `OpState`: a [`Detector`] holds immutable configuration
//! (thresholds, reference statistics) and creates a fresh [`DetectorState`] for every client
//! (or group of clients) it watches.

use serde::{Deserialize, Serialize};

/// Where in an attack a detector looks (JSSST ML-system security guideline taxonomy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Signs that precede the harm (e.g. the query distribution of an extraction attack).
    Precursor,
    /// Signs of the harm itself (e.g. an extracted model).
    Symptom,
}

/// What a detector needs to operate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataNeed {
    /// The model's training data (for calibration).
    TrainingData,
    /// The trained model itself.
    TrainedModel,
    /// Each query's input.
    Input,
    /// Each query's output.
    Output,
}

/// A detector's self-description, printed by `mamori detectors`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorInfo {
    /// Short identifier (`prada`, `knn`, ...).
    pub name: String,
    /// The paper the algorithm comes from.
    pub paper: String,
    /// The attack it targets.
    pub targets: String,
    /// Precursor or symptom.
    pub stage: Stage,
    /// Data it needs.
    pub needs: Vec<DataNeed>,
}

/// One observed query, as a detector sees it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Client (or group) identifier.
    pub client: &'a str,
    /// The normalised input sample, flat.
    pub input: &'a [f32],
    /// Shape of one sample.
    pub input_shape: &'a [usize],
    /// The model's probabilities before postprocessing.
    pub probs: &'a [f32],
    /// The model's predicted label.
    pub label: usize,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// A detector's output for one observation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Detector-specific score, higher = more suspicious, normalised so 1.0 is the alarm level
    /// where the detector can say so.
    pub score: f64,
    /// Whether the detector alarms on this client now.
    pub alarm: bool,
}

/// Immutable detector configuration; creates per-client state.
pub trait Detector: Send + Sync {
    /// Self-description.
    fn info(&self) -> DetectorInfo;
    /// Fresh state for a new client.
    fn new_state(&self) -> Box<dyn DetectorState>;
    /// Rebuilds state from [`DetectorState::snapshot`] bytes (restart persistence).
    fn restore_state(&self, snapshot: &[u8]) -> Result<Box<dyn DetectorState>, String>;
}

/// Per-client mutable state of a detector.
pub trait DetectorState: Send {
    /// Observes one query and returns the current verdict for this client.
    fn observe(&mut self, obs: &Observation<'_>) -> Verdict;
    /// Serialises the state so it survives a restart.
    fn snapshot(&self) -> Vec<u8>;
    /// Queries observed so far.
    fn queries(&self) -> u64;
    /// Heap bytes the state holds: its buffers' capacities (an estimate that follows the
    /// allocator's figure within a few percent; data shared between clients, such as a
    /// projection matrix, is not counted). What a gateway's memory budget for resident
    /// detector states adds up (`detect.max_resident_bytes`).
    fn heap_bytes(&self) -> usize;
}

/// What the protection chain does with a client, in escalating order.
///
/// Produced by the escalation policy (`mamori-detect`) from detector verdicts; acted on by
/// the gateway's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer normally.
    Allow,
    /// Answer normally, record and publish an alert.
    Alert,
    /// Answer with stronger postprocessing for this client.
    Degrade,
    /// Answer, but with a tighter rate limit for this client.
    Throttle,
    /// Refuse (HTTP 403).
    Block,
}
