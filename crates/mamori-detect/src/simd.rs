//! Runtime SIMD dispatch for the distance scans, without `unsafe` in this crate.
//!
//! [`vectorized`] runs a [`Kernel`] compiled a second time with the AVX2 + FMA instruction set
//! enabled (`pulp`'s `x86-v3` level) when the running CPU has it, and the portable build
//! otherwise (SSE2 on a generic x86-64 target, or another architecture's baseline). The
//! distance loops in this crate are written over arrays of 8 independent lanes, which the
//! compiler turns into one 256-bit operation per step at that level instead of two 128-bit
//! ones. The arithmetic is unchanged — the same multiplies and adds in the same order, no
//! fused multiply-add (Rust never contracts `a * b + c`) — so results are bit-identical
//! at every level (test `tests::dispatch_is_bit_identical_to_the_portable_build`).

use std::sync::OnceLock;

fn arch() -> pulp::Arch {
    static ARCH: OnceLock<pulp::Arch> = OnceLock::new();
    *ARCH.get_or_init(pulp::Arch::new)
}

/// A computation run by [`vectorized`]. Its [`Kernel::run`] must be `#[inline(always)]`, and
/// so must every function it calls on the hot path: only code inlined into the dispatched
/// function is compiled for the wider instruction set (a closure body would stay a separate,
/// portable function).
pub(crate) trait Kernel {
    /// The result.
    type Output;
    /// The computation.
    fn run(self) -> Self::Output;
}

struct Op<K>(K);

impl<K: Kernel> pulp::WithSimd for Op<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> K::Output {
        self.0.run()
    }
}

/// `2²³`, the float above which every float is a whole number.
const WHOLE: f32 = 8_388_608.0;

/// The value of `f` — a whole number in `0..2²³` — as an integer, exactly: `f + 2²³` is exact
/// and holds `f` in its low mantissa bits. A float addition and a bit cast, which vectorise,
/// where the saturating casts `as u8`/`as i32`/`as u32` compile to range and NaN checks and
/// one scalar conversion per value (at the dispatched AVX2 level too).
#[inline(always)]
pub(crate) fn whole_to_u32(f: f32) -> u32 {
    (f + WHOLE).to_bits().wrapping_sub(WHOLE.to_bits())
}

/// Runs `k` with the widest instruction set the CPU supports (see the module docs).
#[inline]
pub(crate) fn vectorized<K: Kernel>(k: K) -> K::Output {
    arch().dispatch(Op(k))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ann::{dot, sq_dist};
    use rand::{Rng, SeedableRng};

    struct Both<'a>(&'a [f32], &'a [f32]);

    impl Kernel for Both<'_> {
        type Output = (f32, f32);

        #[inline(always)]
        fn run(self) -> (f32, f32) {
            (dot(self.0, self.1), sq_dist(self.0, self.1))
        }
    }

    /// Every whole number below 2²³ converts to itself (and so do its negative zero and the
    /// whole floats a rounding or a floor gives).
    #[test]
    fn whole_numbers_convert_exactly() {
        for n in 0..1u32 << 23 {
            assert_eq!(whole_to_u32(n as f32), n);
        }
        assert_eq!(whole_to_u32(-0.0), 0);
        assert_eq!(whole_to_u32(254.5f32.round()), 255);
        assert_eq!(whole_to_u32(254.99f32.floor()), 254);
    }

    /// Values quantised as the detectors do (`crate::prada`, `crate::blacklight`): NaN and
    /// infinities, values outside the range and the neighbours of every level boundary.
    pub(crate) fn quantisation_probes() -> Vec<f32> {
        let mut xs = vec![
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fc0_00ff),
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            2.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for k in 0..=510u32 {
            let t = k as f32 / 510.0;
            for b in t.to_bits().saturating_sub(2)..=t.to_bits() + 2 {
                xs.push(f32::from_bits(b));
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        xs.extend((0..20_000).map(|_| rng.gen_range(-0.5f32..1.5)));
        xs
    }

    #[test]
    fn dispatch_is_bit_identical_to_the_portable_build() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in [0usize, 1, 7, 8, 24, 31, 784] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let (d0, s0) = (dot(&a, &b), sq_dist(&a, &b));
            let (d1, s1) = vectorized(Both(&a, &b));
            assert_eq!(d0.to_bits(), d1.to_bits(), "dot, n = {n}");
            assert_eq!(s0.to_bits(), s1.to_bits(), "sq_dist, n = {n}");
        }
    }

    /// The byte distance (PRADA's re-rank) and the byte quantisation, written as dispatched
    /// loops, give the values of the plain formulas (including the remainder lanes and the
    /// edge values of the quantisation: NaN, out of range, halves).
    #[test]
    fn byte_kernels_match_the_plain_formulas() {
        use crate::ann::Elem;
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for n in [0usize, 1, 15, 16, 17, 784] {
            let a: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let plain: u32 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| ((x as i32 - y as i32) * (x as i32 - y as i32)) as u32)
                .sum();
            assert_eq!(<u8 as Elem>::dist2(&a, &b), plain as f32, "n = {n}");
        }
        let mut x: Vec<f32> = (0..784).map(|_| rng.gen_range(-0.2..1.2)).collect();
        x.extend([
            f32::NAN,
            -0.0,
            0.5 / 255.0,
            1.5 / 255.0,
            254.5 / 255.0,
            f32::INFINITY,
        ]);
        let mut q = Vec::new();
        crate::prada::quantise_range(&x, crate::settings::UNIT_RANGE, &mut q);
        let plain: Vec<u8> = x
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        assert_eq!(q, plain);
    }
}
