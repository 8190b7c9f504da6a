//! Answer watermarking (DAWN and friends).

/// A watermark decision for one answer.
#[derive(Clone, Debug, PartialEq)]
pub struct WatermarkMark {
    /// SHA-256 of the input (see [`crate::hash::sha256_f32`]).
    pub input_sha256: String,
    /// The label the model gave.
    pub true_label: usize,
    /// The label returned instead.
    pub given_label: usize,
}

/// Decides whether to watermark an answer and changes it if so.
pub trait Watermark: Send + Sync {
    /// Short identifier (`dawn`).
    fn name(&self) -> String;
    /// Possibly changes `probs` for `input`; returns the mark to record in the ledger.
    /// Must be deterministic in `input` (same query → same answer).
    fn apply(&self, input: &[f32], probs: &mut [f32]) -> Option<WatermarkMark>;
}
