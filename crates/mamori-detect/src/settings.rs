//! Range checks for detector settings ([`crate::DetectorsConfig::validate`]): settings come
//! from operators' `mamori.toml` and from `calibration.json` files, and a value that breaks the
//! arithmetic (a zero window, a projection too large to allocate, a threshold that is not a
//! number) must be refused by name when the gateway starts, not crash a request.

use crate::DetectError;

/// The largest count setting (capacities, windows, history lengths): 2²⁴.
pub const MAX_COUNT: usize = 1 << 24;

/// The largest projection dimension (a `proj_dim × input` matrix is allocated per detector).
pub const MAX_PROJ_DIM: usize = 1024;

/// The largest neighbour, candidate and search-list setting.
pub const MAX_SEARCH: usize = 4096;

fn refuse(path: &str, message: String) -> DetectError {
    DetectError::Config {
        path: format!("detectors.{path}"),
        message,
    }
}

/// The default input range of the detectors that quantise inputs: images in `[0, 1]`.
pub const UNIT_RANGE: [f32; 2] = [0.0, 1.0];

/// `range` is a model input range the quantising detectors can map onto `[0, 1]`: low end
/// below the high one, and a width that is a finite `f32` with a finite reciprocal (so not
/// `[−3.4e38, 3.4e38]`, whose width overflows).
pub(crate) fn input_range(path: &str, range: [f32; 2]) -> Result<(), DetectError> {
    let [lo, hi] = range;
    let width = hi - lo;
    if width.is_finite() && width > 0.0 && (1.0 / width).is_finite() {
        Ok(())
    } else {
        Err(refuse(
            path,
            format!("[{lo}, {hi}] is not a range of finite width with low < high"),
        ))
    }
}

/// The affine map of an input range onto `[0, 1]`: `(v − lo) · inv` for `(lo, inv)`, the
/// identity (bit for bit) for [`UNIT_RANGE`].
pub(crate) fn unit_map(range: [f32; 2]) -> (f32, f32) {
    (range[0], 1.0 / (range[1] - range[0]))
}

/// `(v − lo)·inv` (from [`unit_map`]) clamped to `[0, 1]`, NaN mapped to 0 where `clamp` keeps
/// it: the unit value the quantising detectors round or floor, always a number, so that their
/// conversion to integers ([`crate::simd::whole_to_u32`]) needs no NaN case — and the level a
/// NaN input gets is the one the saturating casts gave it (0).
#[inline(always)]
#[allow(clippy::manual_clamp)]
pub(crate) fn unit_value(v: f32, lo: f32, inv: f32) -> f32 {
    ((v - lo) * inv).max(0.0).min(1.0)
}

/// `v` lies in `lo..=hi`.
pub(crate) fn count(path: &str, v: usize, lo: usize, hi: usize) -> Result<(), DetectError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(refuse(path, format!("{v} is outside {lo}..={hi}")))
    }
}

/// `v` is a finite number in `[lo, hi]`.
pub(crate) fn number(path: &str, v: f64, lo: f64, hi: f64) -> Result<(), DetectError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(refuse(path, format!("{v} is not a number in [{lo}, {hi}]")))
    }
}

/// `v` is at most `bound` (named `what`).
pub(crate) fn at_most(path: &str, v: usize, bound: usize, what: &str) -> Result<(), DetectError> {
    if v <= bound {
        Ok(())
    } else {
        Err(refuse(path, format!("{v} exceeds {what} ({bound})")))
    }
}

/// A refusal with its own message.
pub(crate) fn invalid(path: &str, message: impl Into<String>) -> DetectError {
    refuse(path, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_names_the_setting_and_the_bound() {
        assert!(count("knn.k", 5, 1, 10).is_ok());
        let e = count("knn.k", 0, 1, 10).unwrap_err().to_string();
        assert_eq!(e, "detectors.knn.k: 0 is outside 1..=10");
        assert!(number("prada.delta", 0.9, 0.0, 1.0).is_ok());
        for bad in [f64::NAN, f64::INFINITY, -0.1, 1.1] {
            let e = number("prada.delta", bad, 0.0, 1.0)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("detectors.prada.delta: "), "{e}");
        }
        let e = at_most("knn.min_flagged", 30, 20, "knn.window").unwrap_err();
        assert_eq!(
            e.to_string(),
            "detectors.knn.min_flagged: 30 exceeds knn.window (20)"
        );
    }
}
