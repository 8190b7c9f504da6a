//! What an attacker (or a watermark verifier) can query.

use crate::error::OracleError;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How much of the model's output an answer discloses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "k")]
pub enum Disclosure {
    /// The full probability vector.
    Probabilities,
    /// The `k` largest probabilities; the others are reported as 0.
    TopK(usize),
    /// Only the predicted label (reported as a one-hot vector).
    Label,
}

/// An oracle's answer to a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct OracleAnswer {
    /// `[n, classes]`: probabilities, top-k with zeros elsewhere, or one-hot labels,
    /// according to `disclosure`.
    pub probs: Tensor,
    /// The predicted label of each sample.
    pub labels: Vec<usize>,
    /// What the answer discloses.
    pub disclosure: Disclosure,
}

/// Something that answers classification queries and counts them.
///
/// Query accounting is exact: one query is one sample, whatever the batching.
pub trait Oracle: Send {
    /// Shape of one input sample.
    fn input_shape(&self) -> Vec<usize>;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Answers a batch, charging `x.batch_size()` queries.
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError>;
    /// Queries charged so far.
    fn queries_used(&self) -> u64;
    /// Total budget, if any.
    fn budget(&self) -> Option<u64>;
    /// Queries still allowed (`None` when unlimited).
    fn remaining(&self) -> Option<u64> {
        self.budget().map(|b| b.saturating_sub(self.queries_used()))
    }
}
