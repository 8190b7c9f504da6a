//! Oracles: what an attack can query, with exact query accounting (one sample = one query).
//!
//! | oracle | file | answers from |
//! |---|---|---|
//! | [`LocalOracle`] | `local.rs` | any in-process [`mamori_core::Model`] |
//! | [`HttpOracle`] | `http.rs` | an Open Inference Protocol v2 REST endpoint |
//! | [`MultiKeyOracle`] | `multikey.rs` | several oracles (API keys) in round robin |
//!
//! Every attack states which [`mamori_core::Disclosure`] it needs; [`answer_targets`] turns an
//! answer into training targets, falling back to labels when probabilities are not disclosed.

mod http;
mod local;
mod multikey;

pub use http::{HttpOracle, HttpOracleConfig};
pub use local::LocalOracle;
pub use multikey::MultiKeyOracle;

use mamori_core::{Disclosure, OracleAnswer, Tensor};
use mamori_ml::Targets;

/// Applies a disclosure level to a probability batch `[n, c]`: full, top-k (zeros elsewhere)
/// or one-hot labels. Returns the answer with its argmax labels.
pub fn disclose(probs: Tensor, disclosure: Disclosure) -> OracleAnswer {
    let labels = probs.argmax_rows();
    let c = probs.sample_len();
    let mut probs = probs;
    match disclosure {
        Disclosure::Probabilities => {}
        Disclosure::TopK(k) => {
            for row in probs.data_mut().chunks_mut(c.max(1)) {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
                for &i in idx.iter().skip(k.max(1)) {
                    row[i] = 0.0;
                }
            }
        }
        Disclosure::Label => {
            for (row, &l) in probs.data_mut().chunks_mut(c.max(1)).zip(&labels) {
                row.iter_mut().for_each(|v| *v = 0.0);
                row[l] = 1.0;
            }
        }
    }
    OracleAnswer {
        probs,
        labels,
        disclosure,
    }
}

/// Whether an answer carries more than the label (probabilities or top-k with k > 1).
pub fn is_soft(d: Disclosure) -> bool {
    match d {
        Disclosure::Probabilities => true,
        Disclosure::TopK(k) => k > 1,
        Disclosure::Label => false,
    }
}

/// Training targets from a batch of answers: soft targets (renormalised top-k or full
/// probabilities) when `prefer_soft` and the answers disclose them, else labels.
pub fn answer_targets(probs: &Tensor, labels: &[usize], soft: bool, prefer_soft: bool) -> Targets {
    if soft && prefer_soft {
        let mut p = probs.clone();
        let c = p.sample_len().max(1);
        for row in p.data_mut().chunks_mut(c) {
            let s: f32 = row.iter().sum();
            if s > 0.0 {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        Targets::Soft(p)
    } else {
        Targets::Labels(labels.to_vec())
    }
}

/// Budget bookkeeping shared by the oracles.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    pub used: u64,
    pub budget: Option<u64>,
}

impl Ledger {
    /// Checks that `n` more queries fit the budget (charging nothing).
    pub fn check(&self, n: u64) -> Result<(), mamori_core::OracleError> {
        if let Some(b) = self.budget {
            if self.used + n > b {
                return Err(mamori_core::OracleError::BudgetExhausted {
                    budget: b,
                    used: self.used,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disclosure_levels() {
        let p = Tensor::new(vec![1, 3], vec![0.2, 0.5, 0.3]).unwrap();
        let a = disclose(p.clone(), Disclosure::TopK(2));
        assert_eq!(a.probs.data(), &[0.0, 0.5, 0.3]);
        let l = disclose(p.clone(), Disclosure::Label);
        assert_eq!(l.probs.data(), &[0.0, 1.0, 0.0]);
        assert_eq!(l.labels, vec![1]);
        let f = disclose(p, Disclosure::Probabilities);
        assert_eq!(f.probs.data(), &[0.2, 0.5, 0.3]);
        match answer_targets(&a.probs, &a.labels, true, true) {
            Targets::Soft(t) => assert!((t.data()[1] - 0.625).abs() < 1e-6),
            Targets::Labels(_) => panic!("expected soft targets"),
        }
        assert!(matches!(
            answer_targets(&l.probs, &l.labels, false, true),
            Targets::Labels(_)
        ));
    }
}
