//! Output perturbation: one trait, one implementation per file in `mamori-defense`.

use crate::model::Model;

/// Context a postprocessor may use besides the probabilities.
#[derive(Clone, Copy)]
pub struct PostContext<'a> {
    /// Client identifier.
    pub client: &'a str,
    /// The normalised input sample (keyed noise derives its randomness from it).
    pub input: &'a [f32],
    /// Shape of one input sample.
    pub input_shape: &'a [usize],
    /// The model's logits for this sample, when available.
    pub logits: Option<&'a [f32]>,
    /// The served model (prediction poisoning needs its gradients).
    pub model: Option<&'a dyn Model>,
}

/// Transforms one answer's probability vector in place.
///
/// The result must remain a valid distribution (non-negative, sums to 1); label-only answers
/// are one-hot vectors, top-k answers carry zeros outside the top k.
pub trait Postprocessor: Send + Sync {
    /// Short identifier (`top_k`, `reverse_sigmoid`, ...).
    fn name(&self) -> String;
    /// Whether the top-1 label is guaranteed to be kept.
    fn keeps_top1(&self) -> bool;
    /// Applies the perturbation to `probs`.
    fn apply(&self, ctx: &PostContext<'_>, probs: &mut [f32]);
}
