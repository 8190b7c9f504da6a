//! Several API keys (or endpoints) used in turn: an attacker splitting traffic so that no
//! single client identity sees the whole attack.

use mamori_core::{Oracle, OracleAnswer, OracleError, Tensor};

/// Round-robin over several oracles, one batch per turn; batches larger than `chunk` are
/// split so that consecutive chunks go to different identities. A refused or exhausted
/// identity is dropped and its share moves to the others.
pub struct MultiKeyOracle {
    inner: Vec<Box<dyn Oracle>>,
    alive: Vec<bool>,
    next: usize,
    chunk: usize,
    used: u64,
    budget: Option<u64>,
}

impl MultiKeyOracle {
    /// Builds a round robin over `inner` (at least one), `chunk` samples per turn.
    pub fn new(inner: Vec<Box<dyn Oracle>>, chunk: usize) -> Result<Self, OracleError> {
        if inner.is_empty() {
            return Err(OracleError::Transport(
                "a multi-key oracle needs at least one oracle".into(),
            ));
        }
        let shape = inner[0].input_shape();
        let classes = inner[0].num_classes();
        if inner
            .iter()
            .any(|o| o.input_shape() != shape || o.num_classes() != classes)
        {
            return Err(OracleError::Transport(
                "all oracles of a multi-key oracle must serve the same model shape".into(),
            ));
        }
        let n = inner.len();
        Ok(Self {
            inner,
            alive: vec![true; n],
            next: 0,
            chunk: chunk.max(1),
            used: 0,
            budget: None,
        })
    }

    /// Sets an overall budget across all identities.
    pub fn with_budget(mut self, budget: Option<u64>) -> Self {
        self.budget = budget;
        self
    }

    /// Queries answered by each identity.
    pub fn per_identity(&self) -> Vec<u64> {
        self.inner.iter().map(|o| o.queries_used()).collect()
    }
}

impl Oracle for MultiKeyOracle {
    fn input_shape(&self) -> Vec<usize> {
        self.inner[0].input_shape()
    }
    fn num_classes(&self) -> usize {
        self.inner[0].num_classes()
    }
    fn query(&mut self, x: &Tensor) -> Result<OracleAnswer, OracleError> {
        let n = x.batch_size();
        if let Some(b) = self.budget {
            if self.used + n as u64 > b {
                return Err(OracleError::BudgetExhausted {
                    budget: b,
                    used: self.used,
                });
            }
        }
        let mut parts = Vec::new();
        let mut labels = Vec::with_capacity(n);
        let mut disclosure = None;
        let mut s = 0;
        while s < n {
            let e = (s + self.chunk).min(n);
            let part = x.slice_rows(s, e);
            let mut last_err = None;
            let mut answered = None;
            for _ in 0..self.inner.len() {
                let i = self.next % self.inner.len();
                self.next = (self.next + 1) % self.inner.len();
                if !self.alive[i] {
                    continue;
                }
                match self.inner[i].query(&part) {
                    Ok(a) => {
                        answered = Some(a);
                        break;
                    }
                    Err(e @ (OracleError::Refused(_) | OracleError::BudgetExhausted { .. })) => {
                        self.alive[i] = false;
                        last_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            let a = match answered {
                Some(a) => a,
                None => {
                    return Err(last_err.unwrap_or_else(|| {
                        OracleError::Refused("every identity is refused".into())
                    }))
                }
            };
            self.used += (e - s) as u64;
            disclosure.get_or_insert(a.disclosure);
            labels.extend_from_slice(&a.labels);
            parts.push(a.probs);
            s = e;
        }
        let probs = if parts.is_empty() {
            Tensor::zeros(vec![0, self.num_classes()])
        } else {
            Tensor::concat(&parts).map_err(|e| OracleError::Transport(e.to_string()))?
        };
        Ok(OracleAnswer {
            probs,
            labels,
            disclosure: disclosure.unwrap_or(mamori_core::Disclosure::Probabilities),
        })
    }
    fn queries_used(&self) -> u64 {
        self.used
    }
    fn budget(&self) -> Option<u64> {
        self.budget
    }
}
