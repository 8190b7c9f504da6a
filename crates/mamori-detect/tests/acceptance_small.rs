//! Issue #5's acceptance as a test, scaled down (the full tables come from
//! `examples/acceptance.rs`, docs/bench/detect.md): 784-128-10 MLPs trained on MNIST and on
//! Fashion-MNIST, detectors calibrated on 5,000 test images of each, then — under the default
//! policy —
//! 20 benign clients per stream (MNIST and Fashion-MNIST test images in random order, MNIST
//! images sent to a Fashion-MNIST model, repeated legitimate queries; Poisson arrivals, one query
//! per 10 s on average) and 40 clients sending Fashion-MNIST images to the MNIST model raise no
//! alert, a JBDA run diluted 1:1 with Fashion-MNIST images or pushed out of distribution (marked
//! corners) at the benign rate is alerted, and every attack stream is detected: uniform noise, Tramèr's
//! equation-solving queries, near-duplicate adversarial search and Knockoff with natural images
//! of another dataset at bulk speed within 500 queries, and a real JBDA run flagged by PRADA.

mod support;

use mamori_core::Model;
use mamori_detect::{calibrate, default_detectors, CalibrationOptions, Engine, PolicyConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::{interleave, jbda, run_client, Stream, Timing, BENIGN_INTERVAL_MS, BULK_INTERVAL_MS};

fn poisson(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<u64> {
    Timing::Poisson(BENIGN_INTERVAL_MS).times(n, rng)
}

fn bulk(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<u64> {
    Timing::Fixed(BULK_INTERVAL_MS).times(n, rng)
}

#[test]
fn benign_clients_are_left_alone_and_every_attack_stream_is_detected() {
    let dir = mamori_data::resolve_data_dir(None);
    let mnist = mamori_data::load("mnist", &dir).unwrap();
    let fashion = mamori_data::load("fashion-mnist", &dir).unwrap();
    let arch = mamori_ml::Arch::Mlp { hidden: vec![128] };
    let cfg = mamori_ml::TrainConfig {
        epochs: 1,
        progress: false,
        ..mamori_ml::zoo::default_config(&arch)
    };
    let victim = mamori_ml::zoo::train_model("mnist-mlp", &mnist, &arch, &cfg)
        .unwrap()
        .model;
    let fa_victim = mamori_ml::zoo::train_model("fashion-mlp", &fashion, &arch, &cfg)
        .unwrap()
        .model;
    let te = &mnist.test;
    let half = te.len() / 2;
    let cal = calibrate(
        &victim,
        &mnist.train.x,
        &te.x.slice_rows(0, half),
        "mnist test[0..5000]",
        &CalibrationOptions {
            benign_interval_ms: Some(BENIGN_INTERVAL_MS),
            ..CalibrationOptions::default()
        },
    )
    .unwrap();
    let fa_half = fashion.test.len() / 2;
    let cal_f = calibrate(
        &fa_victim,
        &fashion.train.x,
        &fashion.test.x.slice_rows(0, fa_half),
        "fashion-mnist test[0..5000]",
        &CalibrationOptions {
            benign_interval_ms: Some(BENIGN_INTERVAL_MS),
            ..CalibrationOptions::default()
        },
    )
    .unwrap();
    let rows = |d: &mamori_data::Dataset, r: std::ops::Range<usize>| -> Stream {
        r.map(|i| d.x.row(i).to_vec()).collect()
    };
    let mn_eval = rows(te, half..te.len());
    let fa_eval = rows(&fashion.test, fa_half..fashion.test.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let engine = || Engine::new(default_detectors(&cal.detectors), PolicyConfig::default());
    let fa_engine = || Engine::new(default_detectors(&cal_f.detectors), PolicyConfig::default());

    // Benign: 20 clients × 200 queries per stream, no client alerted.
    let (clients, queries) = (20, 200);
    type Gen<'a> = Box<dyn Fn(&mut rand::rngs::StdRng) -> Stream + 'a>;
    let streams: [(&str, bool, Gen); 4] = [
        (
            "MNIST test images, random order",
            false,
            Box::new(|r| {
                let mut s = mn_eval.clone();
                s.shuffle(r);
                s.truncate(queries);
                s
            }),
        ),
        (
            "Fashion-MNIST test images, random order",
            true,
            Box::new(|r| {
                let mut s = fa_eval.clone();
                s.shuffle(r);
                s.truncate(queries);
                s
            }),
        ),
        (
            "MNIST images sent to the Fashion-MNIST model",
            true,
            Box::new(|r| {
                let mut s = mn_eval.clone();
                s.shuffle(r);
                s.truncate(queries);
                s
            }),
        ),
        (
            "repeated legitimate queries (20 images, resent)",
            false,
            Box::new(|r| {
                let pool: Stream = mn_eval.choose_multiple(r, 20).cloned().collect();
                (0..queries)
                    .map(|_| pool.choose(r).cloned().unwrap())
                    .collect()
            }),
        ),
    ];
    for (label, to_fashion, gen) in &streams {
        let (mut e, model): (Engine, &dyn Model) = if *to_fashion {
            (fa_engine(), &fa_victim)
        } else {
            (engine(), &victim)
        };
        for c in 0..clients {
            let s = gen(&mut rng);
            let times = poisson(s.len(), &mut rng);
            let support::Outcome { alert, first, .. } =
                run_client(&mut e, model, &format!("benign{c}"), &s, &times);
            assert!(
                alert.is_none(),
                "{label}: benign client {c} alerted at query {alert:?} ({first:?})"
            );
        }
    }

    // The reverse cross-dataset stream: Fashion-MNIST images sent to the MNIST model, 40
    // clients × 300 queries. PRADA's normality test misread such foreign natural images (it
    // alerted ≈ 6–9% of these clients); it now observes only the queries the OOD test calls
    // in-distribution, and no client is alerted.
    let mut e = engine();
    for c in 0..40 {
        let mut s = fa_eval.clone();
        s.shuffle(&mut rng);
        s.truncate(300);
        let times = poisson(s.len(), &mut rng);
        let support::Outcome { alert, first, .. } =
            run_client(&mut e, &victim, &format!("foreign{c}"), &s, &times);
        assert!(
            alert.is_none(),
            "Fashion-MNIST images to the MNIST model: client {c} alerted at query {alert:?} ({first:?})"
        );
    }

    // Attacks at bulk speed: each detected within 500 queries under the default policy.
    let cap = 600;
    let noise: Stream = (0..cap)
        .map(|_| (0..784).map(|_| rng.gen::<f32>()).collect())
        .collect();
    let mut tramer: Stream = vec![vec![0.0; 784]];
    for i in 0..784 {
        let mut e = vec![0.0; 784];
        e[i] = 1.0;
        tramer.push(e);
    }
    tramer.truncate(cap);
    let mut x = mn_eval.choose(&mut rng).cloned().unwrap();
    let near_dup: Stream = (0..cap)
        .map(|_| {
            for v in x.iter_mut() {
                *v = (*v + rng.gen_range(-0.01..0.01)).clamp(0.0, 1.0);
            }
            x.clone()
        })
        .collect();
    let mut knockoff = fa_eval.clone();
    knockoff.shuffle(&mut rng);
    knockoff.truncate(cap);
    for (label, s) in [
        ("uniform noise", &noise),
        ("Tramèr equation solving", &tramer),
        ("near-duplicate adversarial search", &near_dup),
        ("Knockoff (Fashion-MNIST images)", &knockoff),
    ] {
        let mut e = engine();
        let support::Outcome { alert, first, .. } =
            run_client(&mut e, &victim, "attacker", s, &bulk(s.len(), &mut rng));
        assert!(
            alert.is_some_and(|q| q <= 500),
            "{label}: alert at {alert:?} ({first:?})"
        );
    }

    // A real JBDA run (150 seeds, label-only answers), capped at 600 queries: PRADA flags it.
    let pick: Vec<usize> = (half..te.len())
        .collect::<Vec<_>>()
        .choose_multiple(&mut rng, 150)
        .cloned()
        .collect();
    let seeds = te.select(&pick);
    let stream = jbda(&victim, &seeds, cap, 5);
    let mut e = engine();
    let support::Outcome { alert, first, .. } = run_client(
        &mut e,
        &victim,
        "jbda",
        &stream,
        &bulk(stream.len(), &mut rng),
    );
    assert!(
        first.get("prada").is_some_and(|&q| q <= 400),
        "JBDA: PRADA at {:?}, alert {alert:?} ({first:?}, {} queries)",
        first.get("prada"),
        stream.len()
    );
    // The same JBDA queries diluted 1:1 with foreign natural images (Fashion-MNIST), at the
    // benign rate: the foreign half keeps the OOD rate high but is not shown to PRADA, which
    // still flags the synthetic half, and the policy alerts.
    let mut foreign = fa_eval.clone();
    foreign.shuffle(&mut rng);
    let diluted = interleave(stream.clone(), foreign, 2 * stream.len());
    let mut e = engine();
    let times = poisson(diluted.len(), &mut rng);
    let support::Outcome { alert, first, .. } =
        run_client(&mut e, &victim, "diluted", &diluted, &times);
    assert!(
        alert.is_some() && first.contains_key("prada") && first.contains_key("ood"),
        "JBDA diluted with Fashion-MNIST images: alert {alert:?} ({first:?}, {} queries)",
        diluted.len()
    );
    // The same JBDA queries pushed out of distribution on purpose (a white 4×4 square in each
    // corner: every query fails the OOD test, the distances between queries do not change),
    // at the benign rate: PRADA's out-of-distribution pool flags them, and the policy alerts.
    let mut corners = stream.clone();
    for x in &mut corners {
        for (r, c) in (0..4).flat_map(|a| (0..4).map(move |b| (a, b))) {
            for (rr, cc) in [(r, c), (r, 27 - c), (27 - r, c), (27 - r, 27 - c)] {
                x[rr * 28 + cc] = 1.0;
            }
        }
    }
    let mut e = engine();
    let times = poisson(corners.len(), &mut rng);
    let support::Outcome { alert, first, .. } =
        run_client(&mut e, &victim, "corners", &corners, &times);
    assert!(
        alert.is_some() && first.contains_key("prada"),
        "JBDA with marked corners: alert {alert:?} ({first:?}, {} queries)",
        corners.len()
    );
}
