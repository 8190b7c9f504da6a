//! Times the `gemm` crate on the matrix shapes of the zoo CNN's training step (batch 128),
//! to see where an epoch goes. `cargo run --release -p mamori-ml --example gemm_shapes`.

#![allow(unsafe_code)]

use std::time::Instant;

fn run(name: &str, m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool, threads: usize) {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let (lcs, lrs) = if lhs_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (rcs, rrs) = if rhs_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let reps = 3;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: buffers sized m·k, k·n and m·n with the strides above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                lcs,
                lrs,
                b.as_ptr(),
                rcs,
                rrs,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let s = best;
    let gf = 2.0 * (m * n * k) as f64 / s / 1e9;
    println!(
        "{name:<28} m={m:<6} n={n:<4} k={k:<6} thr={threads}: {:8.2} ms  {gf:6.1} GFLOP/s",
        s * 1e3
    );
}

fn main() {
    let nb = 128;
    let thr = rayon::current_num_threads();
    let (p2, k2, p1) = (nb * 121, 288, nb * 676);
    // forward conv2 variants (dst m x n row-major)
    run("c2 fwd NT [nP,oc]", p2, 64, k2, false, true, thr);
    run("c2 fwd NN [oc,nP]=W.colsT", 64, p2, k2, false, false, thr);
    run("c2 fwd TN [oc,nP]", 64, p2, k2, true, false, thr);
    run("c2 fwd NN [nP,oc]=cols.WT'", p2, 64, k2, false, false, thr);
    // dW variants: [oc,K]
    run("c2 dW NN dY'[oc,nP].cols", 64, k2, p2, false, false, thr);
    run("c2 dW NT dY'.colsT^T", 64, k2, p2, false, true, thr);
    run("c2 dW TN", 64, k2, p2, true, false, thr);
    // dcols variants
    run("c2 dcols NN [nP,K]", p2, k2, 64, false, false, thr);
    run("c2 dcolsT TN [K,nP]", k2, p2, 64, true, false, thr);
    run("c2 dcolsT NN [K,nP]", k2, p2, 64, false, false, thr);
    run("c1 fwd NN [oc,nP]", 32, p1, 9, false, false, thr);
    run("c1 fwd NT [nP,oc]", p1, 32, 9, false, true, thr);
    run("c1 dW NT [oc,K]", 32, 9, p1, false, true, thr);
    run("c1 dW NN [oc,K]", 32, 9, p1, false, false, thr);
    run("c2 per-sample NN", 64, 121, k2, false, false, 1);
}
