//! Shapiro–Wilk W statistic by Royston's algorithm (Royston 1995, *Applied Statistics*
//! algorithm AS R94, "A remark on algorithm AS 181: the W-test for normality").
//!
//! The coefficients `a` come from Royston's polynomial approximations around the expected
//! normal order statistics `m_i = Φ⁻¹((i − 3/8)/(n + 1/4))`; W is then
//! `(Σ a_i x_(i))² / Σ (x_i − x̄)²`. Valid for 3 ≤ n ≤ 5000. Verified in the tests against
//! `scipy.stats.shapiro` (which wraps the same algorithm); the reference values are produced by
//! `scripts/shapiro_reference.py`.

/// Errors of [`shapiro_wilk_w`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapiroError {
    /// Fewer than 3 or more than 5000 values.
    #[error("Shapiro-Wilk needs 3..=5000 values, got {0}")]
    SampleSize(usize),
    /// All values equal (W undefined).
    #[error("Shapiro-Wilk: all values are equal")]
    ZeroRange,
    /// A value is NaN or infinite.
    #[error("Shapiro-Wilk: non-finite value")]
    NonFinite,
}

const C1: [f64; 6] = [0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056];
const C2: [f64; 6] = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633];

fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
/// < 1.2e-9).
#[allow(clippy::excessive_precision)]
pub fn norm_ppf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383_577_518_672_69e2,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let plow = 0.02425;
    if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// Royston's coefficients `a_1..a_{n/2}` (positive, for the upper half of the order
/// statistics; the lower half has the opposite signs).
fn coefficients(n: usize) -> Vec<f64> {
    let nn2 = n / 2;
    let mut a = vec![0.0; nn2];
    if n == 3 {
        a[0] = std::f64::consts::FRAC_1_SQRT_2;
        return a;
    }
    let an = n as f64;
    let an25 = an + 0.25;
    let m: Vec<f64> = (1..=nn2)
        .map(|i| norm_ppf((i as f64 - 0.375) / an25))
        .collect();
    let summ2 = 2.0 * m.iter().map(|v| v * v).sum::<f64>();
    let ssumm2 = summ2.sqrt();
    let rsn = 1.0 / an.sqrt();
    let a1 = poly(&C1, rsn) - m[0] / ssumm2;
    let (i1, fac) = if n > 5 {
        let a2 = -m[1] / ssumm2 + poly(&C2, rsn);
        let fac = ((summ2 - 2.0 * m[0] * m[0] - 2.0 * m[1] * m[1])
            / (1.0 - 2.0 * a1 * a1 - 2.0 * a2 * a2))
            .sqrt();
        a[1] = a2;
        (2, fac)
    } else {
        let fac = ((summ2 - 2.0 * m[0] * m[0]) / (1.0 - 2.0 * a1 * a1)).sqrt();
        (1, fac)
    };
    a[0] = a1;
    for i in i1..nn2 {
        a[i] = -m[i] / fac;
    }
    a
}

/// Sorts `v` ascending in [`f64::total_cmp`] order — the same result as a comparison sort —
/// in linear time: an LSD radix sort, one byte per pass (all byte counts taken in one first
/// pass), of the order-preserving bit patterns
/// (sign bit flipped for positive values, all bits for negative ones), skipping the bytes every
/// value shares. PRADA sorts up to 5000 distances at each test.
fn sort_total(v: &mut [f64]) {
    if v.len() < 64 {
        v.sort_unstable_by(f64::total_cmp);
        return;
    }
    const SIGN: u64 = 1 << 63;
    let mut keys: Vec<u64> = v
        .iter()
        .map(|x| {
            let b = x.to_bits();
            if b & SIGN != 0 {
                !b
            } else {
                b ^ SIGN
            }
        })
        .collect();
    let mut tmp = vec![0u64; keys.len()];
    // The counts of all eight bytes in one pass.
    let mut counts = [[0usize; 256]; 8];
    for &k in &keys {
        for (b, c) in counts.iter_mut().enumerate() {
            c[((k >> (8 * b)) & 0xff) as usize] += 1;
        }
    }
    for (b, start) in counts.iter_mut().enumerate() {
        let shift = 8 * b;
        if start.contains(&keys.len()) {
            continue;
        }
        let mut sum = 0;
        for c in start.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &k in &keys {
            let d = ((k >> shift) & 0xff) as usize;
            tmp[start[d]] = k;
            start[d] += 1;
        }
        std::mem::swap(&mut keys, &mut tmp);
    }
    for (x, k) in v.iter_mut().zip(keys) {
        *x = f64::from_bits(if k & SIGN != 0 { k ^ SIGN } else { !k });
    }
}

/// Coefficient vectors of the most recent sample sizes: they depend on `n` only, and PRADA
/// tests samples of nearly the same size (up to 5000) every few queries.
static COEFFICIENTS: std::sync::Mutex<Vec<(usize, std::sync::Arc<Vec<f64>>)>> =
    std::sync::Mutex::new(Vec::new());

/// Sample sizes whose coefficients are kept (≤ 64 × 2500 values).
const CACHED_SIZES: usize = 64;

/// [`coefficients`] of `n`, from the cache when `n` was seen recently.
fn cached_coefficients(n: usize) -> std::sync::Arc<Vec<f64>> {
    let find = |c: &Vec<(usize, std::sync::Arc<Vec<f64>>)>| {
        c.iter().find(|(m, _)| *m == n).map(|(_, a)| a.clone())
    };
    if let Some(a) = find(&COEFFICIENTS.lock().unwrap_or_else(|e| e.into_inner())) {
        return a;
    }
    let a = std::sync::Arc::new(coefficients(n));
    let mut cache = COEFFICIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if find(&cache).is_none() {
        if cache.len() >= CACHED_SIZES {
            cache.remove(0);
        }
        cache.push((n, a.clone()));
    }
    a
}

/// The Shapiro–Wilk W statistic of `x` (any order). Smaller W = less normal.
pub fn shapiro_wilk_w(x: &[f64]) -> Result<f64, ShapiroError> {
    shapiro_wilk_w_in_place(&mut x.to_vec())
}

/// [`shapiro_wilk_w`] without the copy: sorts `x` in place.
pub fn shapiro_wilk_w_in_place(x: &mut [f64]) -> Result<f64, ShapiroError> {
    if x.iter().any(|v| !v.is_finite()) {
        return Err(ShapiroError::NonFinite);
    }
    sort_total(x);
    shapiro_wilk_w_sorted(x)
}

/// [`shapiro_wilk_w`] of a sample already in ascending order (PRADA keeps its distance set
/// sorted); an unsorted sample is sorted in a copy first.
pub fn shapiro_wilk_w_sorted(x: &[f64]) -> Result<f64, ShapiroError> {
    let n = x.len();
    if !(3..=5000).contains(&n) {
        return Err(ShapiroError::SampleSize(n));
    }
    // Both checks without an early exit (a fold of `&`), so that they vectorise.
    if !x.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return Err(ShapiroError::NonFinite);
    }
    if !x.iter().zip(&x[1..]).fold(true, |ok, (a, b)| ok & (a <= b)) {
        return shapiro_wilk_w_in_place(&mut x.to_vec());
    }
    let s = x;
    let range = s[n - 1] - s[0];
    if range <= 0.0 {
        return Err(ShapiroError::ZeroRange);
    }
    let mean = lane_sum(s.len(), |i| s[i]) / n as f64;
    let ss = lane_sum(s.len(), |i| (s[i] - mean) * (s[i] - mean));
    let a = cached_coefficients(n);
    let num = lane_sum(a.len(), |i| a[i] * (s[n - 1 - i] - s[i]));
    Ok((num * num / ss).min(1.0))
}

/// `Σ f(i)` for `i < len`, in eight partial sums (term `i` into sum `i mod 8`, then the sums
/// in order): eight independent chains of additions instead of one — PRADA computes W of up to
/// 5,000 values every few queries, three sums each. The same terms in another order: within
/// rounding of the one-by-one sum (scipy's reference values are matched to 2·10⁻⁶, test).
#[inline(always)]
fn lane_sum(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let whole = len - len % LANES;
    for base in (0..whole).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    let tail: f64 = (whole..len).map(f).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    // generated by scripts/shapiro_reference.py with scipy 1.17.1
    const REFERENCE: [(&str, f64); 8] = [
        ("three", 0.9642857142857142),
        ("five", 0.9320849391953863),
        ("eleven", 0.7888146948631716),
        ("uniform_20", 0.9630648427762961),
        ("uniform_200", 0.9467132311020872),
        ("exp_150", 0.8545349985889665),
        ("normalish_500", 0.9970368228164032),
        ("normalish_3000", 0.9993696855140941),
    ];

    #[test]
    fn radix_sort_matches_total_cmp_sort() {
        let u = lcg_uniform(7, 6000);
        for n in [0usize, 1, 5, 63, 64, 65, 1000, 5000] {
            // Mixed signs and magnitudes, signed zeros, infinities, ties.
            let mut v: Vec<f64> = u[..n]
                .iter()
                .enumerate()
                .map(|(i, &x)| match i % 7 {
                    0 => -x * 1e3,
                    1 => x,
                    2 => (x * 10.0).floor(),
                    3 => -0.0,
                    4 => 0.0,
                    5 if i % 5 == 0 => f64::INFINITY,
                    5 => f64::NEG_INFINITY,
                    _ => x * 1e-300,
                })
                .collect();
            let mut want = v.clone();
            want.sort_by(f64::total_cmp);
            sort_total(&mut v);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v), bits(&want), "n = {n}");
        }
    }

    fn lcg_uniform(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    fn sample(name: &str) -> Vec<f64> {
        match name {
            "three" => vec![1.0, 2.0, 4.0],
            "five" => vec![2.1, 3.4, 1.9, 5.6, 4.4],
            "eleven" => vec![
                148.0, 154.0, 158.0, 160.0, 161.0, 162.0, 166.0, 170.0, 182.0, 195.0, 236.0,
            ],
            "uniform_20" => lcg_uniform(1, 20),
            "uniform_200" => lcg_uniform(2, 200),
            "exp_150" => lcg_uniform(3, 150)
                .into_iter()
                .map(|u| -(1.0 - u).ln())
                .collect(),
            "normalish_500" | "normalish_3000" => {
                let (seed, n) = if name == "normalish_500" {
                    (4, 500)
                } else {
                    (5, 3000)
                };
                let u = lcg_uniform(seed, n * 12);
                u.chunks(12).map(|c| c.iter().sum::<f64>() - 6.0).collect()
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn matches_scipy_reference_values() {
        for (name, w_ref) in REFERENCE {
            let w = shapiro_wilk_w(&sample(name)).unwrap();
            assert!((w - w_ref).abs() < 2e-6, "{name}: W = {w}, scipy = {w_ref}");
        }
    }

    /// Cached coefficients are the computed ones, for sizes seen again after others.
    #[test]
    fn cached_coefficients_match_and_w_is_unchanged() {
        for n in [3usize, 4, 5, 6, 11, 4999, 5000] {
            assert_eq!(*cached_coefficients(n), coefficients(n));
        }
        for n in (100..200).chain(100..110) {
            assert_eq!(*cached_coefficients(n), coefficients(n));
        }
        let x = lcg_uniform(5, 1234);
        let w = shapiro_wilk_w(&x).unwrap();
        let mut y = x.clone();
        assert_eq!(shapiro_wilk_w_in_place(&mut y), Ok(w));
        assert!(y.windows(2).all(|p| p[0] <= p[1]));
        assert_eq!(shapiro_wilk_w_sorted(&y), Ok(w));
        assert_eq!(shapiro_wilk_w_sorted(&x), Ok(w));
        assert_eq!(
            shapiro_wilk_w_sorted(&[1.0, 1.0]),
            Err(ShapiroError::SampleSize(2))
        );
    }

    #[test]
    fn norm_ppf_known_quantiles() {
        assert!(norm_ppf(0.5).abs() < 1e-12);
        assert!((norm_ppf(0.975) - 1.959963984540054).abs() < 1e-8);
        assert!((norm_ppf(0.001) + 3.090232306167813).abs() < 1e-8);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            shapiro_wilk_w(&[1.0, 2.0]),
            Err(ShapiroError::SampleSize(2))
        );
        assert_eq!(
            shapiro_wilk_w(&vec![0.0; 5001]),
            Err(ShapiroError::SampleSize(5001))
        );
        assert_eq!(shapiro_wilk_w(&[1.0; 10]), Err(ShapiroError::ZeroRange));
        assert_eq!(
            shapiro_wilk_w(&[1.0, f64::NAN, 2.0]),
            Err(ShapiroError::NonFinite)
        );
    }
}
