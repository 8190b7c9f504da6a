//! Label-only answers.

use crate::simplex::argmax;
use mamori_core::{PostContext, Postprocessor};

/// Replaces the probabilities by the one-hot vector of the predicted label (the first one on
/// ties). Keeps the top-1 label.
#[derive(Clone, Copy, Debug, Default)]
pub struct LabelOnly;

impl Postprocessor for LabelOnly {
    fn name(&self) -> String {
        "label_only".into()
    }
    fn keeps_top1(&self) -> bool {
        true
    }
    fn apply(&self, _ctx: &PostContext<'_>, probs: &mut [f32]) {
        if probs.is_empty() {
            return;
        }
        let top = argmax(probs);
        for (i, p) in probs.iter_mut().enumerate() {
            *p = if i == top { 1.0 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;

    #[test]
    fn one_hot_of_the_argmax() {
        let mut v = [0.2, 0.5, 0.3];
        LabelOnly.apply(&ctx(&[]), &mut v);
        assert_eq!(v, [0.0, 1.0, 0.0]);
    }
}
