//! An oracle answering from an in-process model.

use super::{disclose, Ledger};
use mamori_core::{Disclosure, Model, Oracle, OracleAnswer, OracleError, Tensor};

/// Answers queries from any [`Model`] (native or ONNX), disclosing probabilities, top-k or
/// labels, and counting every sample against an optional budget.
pub struct LocalOracle {
    model: Box<dyn Model>,
    disclosure: Disclosure,
    ledger: Ledger,
}

impl LocalOracle {
    /// Wraps `model`, disclosing full probabilities, with no budget.
    pub fn new(model: Box<dyn Model>) -> Self {
        Self {
            model,
            disclosure: Disclosure::Probabilities,
            ledger: Ledger::default(),
        }
    }

    /// Sets what each answer discloses.
    pub fn with_disclosure(mut self, d: Disclosure) -> Self {
        self.disclosure = d;
        self
    }

    /// Sets the query budget (samples).
    pub fn with_budget(mut self, budget: Option<u64>) -> Self {
        self.ledger.budget = budget;
        self
    }

    /// The wrapped model (for evaluation, which costs no queries).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
}

impl Oracle for LocalOracle {
    fn input_shape(&self) -> Vec<usize> {
        self.model.card().input_shape.clone()
    }
    fn num_classes(&self) -> usize {
        self.model.card().num_classes()
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let n = x.batch_size() as u64;
        self.ledger.check(n)?;
        let probs = self.model.predict(x)?;
        self.ledger.used += n;
        Ok(disclose(probs, self.disclosure))
    }
    fn queries_used(&self) -> u64 {
        self.ledger.used
    }
    fn budget(&self) -> Option<u64> {
        self.ledger.budget
    }
}
