//! Rounding probabilities to a few decimals (Tramèr et al., USENIX Security 2016, §7:
//! rounding to 2–3 decimals weakens equation-solving attacks, 4–5 do not).

use crate::error::DefenseError;
use crate::simplex::{argmax, normalise};
use mamori_core::{PostContext, Postprocessor};

/// Rounds every probability to `decimals` decimal places so that the answer is still a
/// distribution on the grid `{0, 10⁻ⁿ, 2·10⁻ⁿ, …, 1}`.
///
/// Plain rounding need not sum to 1 (three classes at ⅓ round to 0.33 each), so the grid units
/// are distributed by the largest-remainder method: every entry gets the floor of its scaled
/// value and the units still missing go to the largest fractional parts. This never reorders
/// two classes strictly, but can tie the top class with another; in that case one unit moves
/// from the tied class to the true top class, so the top-1 label is kept strictly (and the
/// answer moves by at most one grid unit more).
#[derive(Clone, Copy, Debug)]
pub struct Rounding {
    decimals: u32,
}

impl Rounding {
    /// A rounding postprocessor; `decimals` must be at most 6 (an `f32` carries ~7 digits).
    pub fn new(decimals: u32) -> Result<Self, DefenseError> {
        if decimals > 6 {
            return Err(DefenseError::spec(
                "rounding",
                format!("decimals must be at most 6, got {decimals}"),
            ));
        }
        Ok(Rounding { decimals })
    }
}

impl Postprocessor for Rounding {
    fn name(&self) -> String {
        "rounding".into()
    }
    fn keeps_top1(&self) -> bool {
        true
    }
    fn apply(&self, _ctx: &PostContext<'_>, probs: &mut [f32]) {
        if probs.is_empty() {
            return;
        }
        normalise(probs);
        let top = argmax(probs);
        let units_total = 10u64.pow(self.decimals);
        let scaled: Vec<f64> = probs
            .iter()
            .map(|&p| p as f64 * units_total as f64)
            .collect();
        let mut units: Vec<u64> = scaled.iter().map(|s| s.floor() as u64).collect();
        let assigned: u64 = units.iter().sum();
        let mut missing = units_total.saturating_sub(assigned);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| {
            let ra = scaled[a] - scaled[a].floor();
            let rb = scaled[b] - scaled[b].floor();
            rb.partial_cmp(&ra)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let mut i = 0;
        while missing > 0 {
            units[order[i % order.len()]] += 1;
            missing -= 1;
            i += 1;
        }
        // Break a tie at the top in favour of the true top class.
        let max_units = *units.iter().max().unwrap_or(&0);
        if units[top] < max_units || units.iter().filter(|&&u| u == max_units).count() > 1 {
            if let Some(other) = (0..units.len()).find(|&j| j != top && units[j] == max_units) {
                units[other] -= 1;
                units[top] += 1;
            }
        }
        for (p, u) in probs.iter_mut().zip(&units) {
            *p = (*u as f64 / units_total as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::test_util::ctx;

    #[test]
    fn sums_to_one_on_the_grid() {
        let r = Rounding::new(2).unwrap();
        let mut v = [1.0 / 3.0; 3];
        r.apply(&ctx(&[]), &mut v);
        assert_eq!(v, [0.34, 0.33, 0.33]);
        let mut v = [0.123_456, 0.876_544];
        r.apply(&ctx(&[]), &mut v);
        assert_eq!(v, [0.12, 0.88]);
    }

    #[test]
    fn ties_at_the_top_go_to_the_true_top() {
        let r = Rounding::new(1).unwrap();
        let mut v = [0.30, 0.31, 0.39];
        r.apply(&ctx(&[]), &mut v);
        // floors 3,3,3; one unit to the largest remainder (0.39 → 0.4).
        assert_eq!(v, [0.3, 0.3, 0.4]);
        let mut v = [0.30, 0.34, 0.36];
        r.apply(&ctx(&[]), &mut v);
        assert_eq!(argmax(&v), 2);
        let mut v = [0.501, 0.499];
        Rounding::new(0).unwrap().apply(&ctx(&[]), &mut v);
        assert_eq!(v, [1.0, 0.0]);
        // Close values: 0.44 and 0.45 share the floor 4; the remainder unit goes to 0.45.
        let mut v = [0.44, 0.45, 0.11];
        r.apply(&ctx(&[]), &mut v);
        assert_eq!(argmax(&v), 1, "{v:?}");
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn too_many_decimals_is_an_error() {
        let e = Rounding::new(7).unwrap_err().to_string();
        assert!(e.contains("rounding") && e.contains("at most 6"), "{e}");
    }
}
