//! Top-k answers.

use crate::error::DefenseError;
use crate::simplex::normalise;
use mamori_core::{PostContext, Postprocessor};

/// Keeps the `k` largest probabilities and sets the others to 0.
///
/// With `renormalise = true` (the default in specs) the kept probabilities are rescaled to sum
/// to 1, so the answer is a distribution; with `false` they are returned as they were (the
/// [`mamori_core::Disclosure::TopK`] wire format), and the vector sums to less than 1. Ties at
/// the k-th place are broken by the lower class index. Keeps the top-1 label.
#[derive(Clone, Copy, Debug)]
pub struct TopK {
    k: usize,
    renormalise: bool,
}

impl TopK {
    /// A top-k postprocessor; `k` must be at least 1.
    pub fn new(k: usize, renormalise: bool) -> Result<Self, DefenseError> {
        if k == 0 {
            return Err(DefenseError::spec("top_k", "k must be at least 1"));
        }
        Ok(TopK { k, renormalise })
    }
}

impl Postprocessor for TopK {
    fn name(&self) -> String {
        "top_k".into()
    }
    fn keeps_top1(&self) -> bool {
        true
    }
    fn apply(&self, _ctx: &PostContext<'_>, probs: &mut [f32]) {
        if self.k < probs.len() {
            let mut idx: Vec<usize> = (0..probs.len()).collect();
            // Stable sort: on equal values the lower index comes first.
            idx.sort_by(|&a, &b| {
                probs[b]
                    .partial_cmp(&probs[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            for &i in &idx[self.k..] {
                probs[i] = 0.0;
            }
        }
        if self.renormalise {
            normalise(probs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;

    #[test]
    fn keeps_the_k_largest() {
        let mut v = [0.1, 0.4, 0.2, 0.3];
        TopK::new(2, false).unwrap().apply(&ctx(&[]), &mut v);
        assert_eq!(v, [0.0, 0.4, 0.0, 0.3]);
        let mut v = [0.1, 0.4, 0.2, 0.3];
        TopK::new(2, true).unwrap().apply(&ctx(&[]), &mut v);
        assert!((v[1] - 4.0 / 7.0).abs() < 1e-6 && (v[3] - 3.0 / 7.0).abs() < 1e-6);
        let mut v = [0.5, 0.5];
        TopK::new(5, true).unwrap().apply(&ctx(&[]), &mut v);
        assert_eq!(v, [0.5, 0.5]);
    }
}
