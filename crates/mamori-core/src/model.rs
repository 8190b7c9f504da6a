//! The one `Model` abstraction used by the gateway, the attacks and the evaluation.

use crate::card::ModelCard;
use crate::error::ModelError;
use crate::tensor::Tensor;

/// What an input gradient differentiates.
#[derive(Clone, Debug, PartialEq)]
pub enum GradTarget {
    /// ∂ cross-entropy(softmax(logits), label) / ∂ input, one label per sample.
    CrossEntropy(Vec<usize>),
    /// ∂ logit\[class\] / ∂ input, one class per sample (JBDA's Jacobian row).
    Logit(Vec<usize>),
    /// ∂ softmax(logits)\[class\] / ∂ input, one class per sample (MI-Face's objective).
    Probability(Vec<usize>),
}

impl GradTarget {
    /// The per-sample class indices this target refers to.
    pub fn classes(&self) -> &[usize] {
        match self {
            GradTarget::CrossEntropy(c) | GradTarget::Logit(c) | GradTarget::Probability(c) => c,
        }
    }
}

/// A classifier that can be queried in batches.
///
/// Implementations: the native network (`mamori-ml`, with input gradients) and ONNX files run
/// by tract (no gradients). Inputs are normalised values (see [`crate::Normalisation`]) of
/// shape `[n, card.input_shape...]`.
pub trait Model: Send + Sync {
    /// The model card.
    fn card(&self) -> &ModelCard;

    /// Raw class scores `[n, classes]`. For a model whose graph ends in a softmax, the log of
    /// its probabilities (softmax of which gives the probabilities back).
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError>;

    /// Class probabilities `[n, classes]`; each row sums to 1.
    fn predict(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut l = self.logits(x)?;
        softmax_rows(&mut l);
        Ok(l)
    }

    /// Gradient of `target` with respect to the input, same shape as `x`.
    fn input_gradient(&self, x: &Tensor, target: &GradTarget) -> Result<Tensor, ModelError> {
        let _ = (x, target);
        Err(ModelError::GradientUnsupported)
    }

    /// Checks that `x`'s per-sample shape matches the card.
    fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        if x.sample_shape() != self.card().input_shape.as_slice() {
            return Err(ModelError::InputShape {
                expected: self.card().input_shape.clone(),
                got: x.sample_shape().to_vec(),
            });
        }
        Ok(())
    }
}

/// In-place, numerically stable softmax over each row of a `[n, c]` tensor.
pub fn softmax_rows(t: &mut Tensor) {
    let c = t.sample_len().max(1);
    for row in t.data_mut().chunks_mut(c) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        for v in row.iter_mut() {
            *v /= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution() {
        let mut t = Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 1000.0, 0.0, -1000.0]).unwrap();
        softmax_rows(&mut t);
        for r in t.rows() {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(t.row(0)[2] > t.row(0)[1]);
        assert!((t.row(1)[0] - 1.0).abs() < 1e-6);
    }
}
