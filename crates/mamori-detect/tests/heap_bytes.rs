//! `DetectorState::heap_bytes` against the allocator: every detector's state, after a history
//! long enough to cluster its indexes and turn its generations over, reports within a few
//! percent of the bytes it actually holds, counted by a global allocator that tracks live
//! bytes. One test in this binary, so that no other test allocates while it counts.

// The counting allocator is the one place that needs `unsafe` (the `GlobalAlloc` contract);
// each method only adds to a counter and hands the call to the system allocator unchanged.
#![allow(unsafe_code)]

use mamori_core::{DetectorState, Observation};
use mamori_detect::{default_detectors, DetectorsConfig};
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting live bytes in [`LIVE`].
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// contract; the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// MNIST-shaped images: a few bright strokes on black, so that every detector (the similarity
/// hashes included, which skip blank windows) has something to hold; every 7th a bright
/// noise image, out of the example calibration's distribution (PRADA's second pool).
fn images(n: usize, seed: u64) -> Vec<(Vec<f32>, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut x = vec![0.0f32; 784];
            if i % 7 == 6 {
                x.iter_mut().for_each(|v| *v = rng.gen_range(0.6..1.0));
                return (x, i % 10);
            }
            for _ in 0..3 {
                let (r, c) = (rng.gen_range(4i32..24), rng.gen_range(4i32..24));
                let (dr, dc) = (rng.gen_range(-1i32..=1), rng.gen_range(-1i32..=1));
                for t in 0..8i32 {
                    let (rr, cc) = (r + dr * t, c + dc * t);
                    if (0..28).contains(&rr) && (0..28).contains(&cc) {
                        x[(rr * 28 + cc) as usize] = rng.gen_range(0.5..1.0);
                    }
                }
            }
            (x, i % 10)
        })
        .collect()
}

fn run(state: &mut dyn DetectorState, xs: &[(Vec<f32>, usize)]) {
    for (i, (x, y)) in xs.iter().enumerate() {
        let mut p = vec![0.01f32; 10];
        p[*y] = 0.91;
        state.observe(&Observation {
            client: "c",
            input: x,
            input_shape: &[1, 28, 28],
            probs: &p,
            label: *y,
            time_ms: i as u64 * 1000,
        });
    }
}

/// The state `make` builds, after checking that it reports, within 3% or 1 KiB, the bytes the
/// allocator counted while it was built (`what` names it in the failure).
fn measured(what: &str, make: impl FnOnce() -> Box<dyn DetectorState>) -> Box<dyn DetectorState> {
    let before = LIVE.load(Ordering::Relaxed);
    let state = make();
    let held = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let reported = (state.heap_bytes() + std::mem::size_of_val(&*state)) as f64;
    eprintln!("{what}: held {held} bytes, reported {reported}");
    assert!(
        (0.97..=1.03).contains(&(reported / held)) || (reported - held).abs() < 1024.0,
        "{what}: reports {reported} heap bytes, holds {held}"
    );
    state
}

#[test]
fn every_state_reports_the_bytes_it_holds() {
    let mut cfg = DetectorsConfig::example_active();
    // Small generations, so that 6,000 queries fill and drop some.
    cfg.knn.capacity = 2_000;
    cfg.blacklight.capacity = 2_000;
    cfg.prada.class_capacity = 250;
    cfg.rate.max_total = 0;
    cfg.rate.max_per_window = u64::MAX / 2;
    let xs = images(6_000, 1);
    for det in default_detectors(&cfg) {
        let name = det.info().name;
        // Shared data (projection matrices, a thread's dense count array, the Shapiro–Wilk
        // coefficients of the last sample sizes) is made by a first state over the same
        // stream, so that the second one finds it as it leaves it.
        run(&mut *det.new_state(), &xs);
        let state = measured(&name, || {
            let mut s = det.new_state();
            run(&mut *s, &xs);
            s
        });
        // A restored state (its buffers sized by the decoder), once it has observed again.
        let snapshot = state.snapshot();
        drop(state);
        measured(&format!("{name} restored"), || {
            let mut s = det.restore_state(&snapshot).expect("restores");
            run(&mut *s, &xs[..500]);
            s
        });
    }
}
