#![allow(dead_code)]
//! A tiny hand-written softmax model shared by the oracle tests (no ML engine needed).

use mamori_core::{Model, ModelCard, ModelError, Tensor};

/// `logits = W x + b` with fixed weights, `d` inputs, `c` classes.
pub struct Linear {
    /// Weights `[c, d]`.
    pub w: Vec<f32>,
    /// Biases `[c]`.
    pub b: Vec<f32>,
    /// Model card.
    pub card: ModelCard,
}

impl Linear {
    /// Fixed pseudo-random weights.
    pub fn new(d: usize, c: usize) -> Self {
        let w = (0..c * d)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 5.0)
            .collect();
        let b = (0..c).map(|k| k as f32 * 0.1 - 0.2).collect();
        let card = ModelCard::classifier("lin", "softmax", &[d], c);
        Self { w, b, card }
    }
}

impl Model for Linear {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let d = self.card.input_shape[0];
        let c = self.b.len();
        let mut out = Vec::with_capacity(x.batch_size() * c);
        for r in x.rows() {
            for k in 0..c {
                let z: f32 = (0..d).map(|j| self.w[k * d + j] * r[j]).sum::<f32>() + self.b[k];
                out.push(z);
            }
        }
        Ok(Tensor::new(vec![x.batch_size(), c], out)?)
    }
}
