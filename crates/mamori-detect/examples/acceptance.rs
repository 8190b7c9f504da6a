//! Acceptance run of the detection engine (issue #5): benign false-alarm rates and
//! queries-until-detection per attack × detector and for the combined policy.
//!
//! Run (release; ~2–4 min on 2 cores):
//! `cargo run --release -p mamori-detect --example acceptance -- [clients] [queries] [max_attack] [--seed N]`
//! (`MAMORI_FOREIGN=1`: PRADA's out-of-distribution threshold fitted on the other dataset's
//! first test half, `CalibrationOptions::foreign`)
//!
//! Victims: one-hidden-layer MLPs (784-128-10) trained here on MNIST and Fashion-MNIST with
//! the workspace's trainer (`mamori_ml::zoo::train_model`, data read by `mamori_data::load`;
//! weights are never written to disk). Each victim is calibrated with
//! `mamori_detect::calibrate` on the first half of its test set; benign clients stream the
//! second half.
//!
//! Time: benign clients query as a Poisson process with mean inter-arrival
//! [`BENIGN_INTERVAL_MS`] (one query per 10 s, 6 per minute — an interactive user or a small
//! batch job); the calibration fits the rate limit for that rate in the same run. Attackers are
//! run twice: at bulk speed ([`BULK_INTERVAL_MS`] between queries) and *throttled* to the benign
//! Poisson rate, so that the table shows what content-based evidence alone achieves.

#![allow(clippy::type_complexity)]

// The streams, clients and JBDA run shared with `tests/acceptance_small.rs`.
#[path = "../tests/support/mod.rs"]
mod support;

use mamori_core::{Model, Observation};
use mamori_detect::{calibrate, default_detectors, CalibrationOptions, Engine, PolicyConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use support::{
    answer, interleave, jbda, run_client, Stream, Timing, BENIGN_INTERVAL_MS, BULK_INTERVAL_MS,
};

/// Training epochs of each victim.
const EPOCHS: usize = 2;

fn rows(d: &mamori_data::Dataset, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
    range.map(|i| d.x.row(i).to_vec()).collect()
}

/// A 784-128-10 ReLU MLP trained with the workspace's trainer (`mamori_ml::zoo::train_model`,
/// its default MLP hyper-parameters but `epochs` epochs).
fn train(
    name: &str,
    split: &mamori_data::Split,
    epochs: usize,
) -> Result<mamori_ml::NativeModel, mamori_ml::MlError> {
    let arch = mamori_ml::Arch::Mlp { hidden: vec![128] };
    let cfg = mamori_ml::TrainConfig {
        epochs,
        ..mamori_ml::zoo::default_config(&arch)
    };
    Ok(mamori_ml::zoo::train_model(name, split, &arch, &cfg)?.model)
}

/// A benign stream: the first `queries` images of `src` in a random order.
fn shuffled(src: &Stream, queries: usize) -> Box<dyn Fn(&mut rand::rngs::StdRng) -> Stream + '_> {
    Box::new(move |r| {
        let mut s = src.clone();
        s.shuffle(r);
        s.truncate(queries);
        s
    })
}

fn accuracy(m: &dyn Model, d: &mamori_data::Dataset) -> f64 {
    let p = m.predict(&d.x).expect("predict");
    let pred = p.argmax_rows();
    pred.iter().zip(&d.y).filter(|(a, b)| a == b).count() as f64 / d.len() as f64
}

fn median(v: &mut [usize]) -> Option<usize> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Positional: clients, queries, attack cap; `--seed N` seeds the benign clients, the
    // attack streams and the arrival times (default 42, the seed of the first runs).
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut seed = 42u64;
    let mut args: Vec<usize> = Vec::new();
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        if a == "--seed" {
            seed = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or("--seed needs an unsigned integer")?;
        } else {
            args.push(
                a.parse()
                    .map_err(|_| format!("unexpected argument `{a}`"))?,
            );
        }
    }
    let clients = args.first().copied().unwrap_or(20);
    let queries = args.get(1).copied().unwrap_or(500);
    let cap = args.get(2).copied().unwrap_or(2000);
    let attackers = 5;
    let dir = mamori_data::resolve_data_dir(None);
    let t0 = std::time::Instant::now();
    let mn_split = mamori_data::load("mnist", &dir)?;
    let fa_split = mamori_data::load("fashion-mnist", &dir)?;
    let (mn_tr, mn_te) = (&mn_split.train, &mn_split.test);
    let (fa_tr, fa_te) = (&fa_split.train, &fa_split.test);
    let mnist = train("mnist-mlp", &mn_split, EPOCHS)?;
    let fashion = train("fashion-mlp", &fa_split, EPOCHS)?;
    eprintln!(
        "trained victims in {:.0}s: MNIST acc {:.4}, Fashion acc {:.4}",
        t0.elapsed().as_secs_f64(),
        accuracy(&mnist, mn_te),
        accuracy(&fashion, fa_te)
    );
    let half = mn_te.len() / 2;
    let mut opts = CalibrationOptions {
        benign_interval_ms: Some(BENIGN_INTERVAL_MS),
        ..CalibrationOptions::default()
    };
    // `MAMORI_PRADA_PERSIST=N`: calibrate (and run) PRADA with N consecutive tests.
    if let Some(p) = std::env::var("MAMORI_PRADA_PERSIST")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.base.prada.persist = p;
    }
    // `MAMORI_FOREIGN=1`: fit PRADA's out-of-distribution threshold (`prada.ood_delta`) on the
    // other dataset's first test half (the foreign benign streams below use the second half).
    let foreign = |name: &str, x: &mamori_core::Tensor| {
        std::env::var_os("MAMORI_FOREIGN").map(|_| mamori_detect::ForeignBenign {
            name: name.to_string(),
            x: std::sync::Arc::new(x.slice_rows(0, half)),
        })
    };
    let cal_m = calibrate(
        &mnist,
        &mn_tr.x,
        &mn_te.x.slice_rows(0, half),
        "mnist test[0..5000]",
        &CalibrationOptions {
            foreign: foreign("fashion-mnist test[0..5000]", &fa_te.x),
            ..opts.clone()
        },
    )?;
    let cal_f = calibrate(
        &fashion,
        &fa_tr.x,
        &fa_te.x.slice_rows(0, half),
        "fashion-mnist test[0..5000]",
        &CalibrationOptions {
            foreign: foreign("mnist test[0..5000]", &mn_te.x),
            ..opts
        },
    )?;
    eprintln!(
        "calibrated: mnist {}",
        serde_json::to_string(&cal_m.report)?
    );
    eprintln!(
        "calibrated: fashion {}",
        serde_json::to_string(&cal_f.report)?
    );
    let names: Vec<String> = default_detectors(&cal_m.detectors)
        .iter()
        .map(|d| d.info().name)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mn_eval = rows(mn_te, half..mn_te.len());
    let fa_eval = rows(fa_te, half..fa_te.len());

    // ---- benign ----
    println!("## Benign streams ({clients} clients × {queries} queries each, default policy, seed {seed})\n");
    println!(
        "| stream | model | clients alerted (action ≥ alert) | per-detector alarms (clients) |"
    );
    println!("|---|---|---|---|");
    let benign: Vec<(
        &str,
        &dyn Model,
        &mamori_detect::Calibration,
        Box<dyn Fn(&mut rand::rngs::StdRng) -> Stream>,
    )> = vec![
        (
            "MNIST test images, random order",
            &mnist,
            &cal_m,
            shuffled(&mn_eval, queries),
        ),
        (
            "Fashion test images, random order",
            &fashion,
            &cal_f,
            shuffled(&fa_eval, queries),
        ),
        (
            "MNIST images sent to the Fashion model",
            &fashion,
            &cal_f,
            shuffled(&mn_eval, queries),
        ),
        (
            "Fashion images sent to the MNIST model",
            &mnist,
            &cal_m,
            shuffled(&fa_eval, queries),
        ),
        (
            "repeated legitimate queries (20 images, resent)",
            &mnist,
            &cal_m,
            Box::new(|r: &mut rand::rngs::StdRng| {
                let pool: Stream = mn_eval.choose_multiple(r, 20).cloned().collect();
                (0..queries)
                    .map(|_| pool.choose(r).cloned().unwrap_or_default())
                    .collect()
            }),
        ),
    ];
    let mut total_clients = 0;
    let mut total_alerted = 0;
    // The MNIST benign streams (first row), replayed to PRADA alone below.
    let mut mnist_benign: Vec<Stream> = Vec::new();
    for (label, model, cal, gen) in &benign {
        let mut engine = Engine::new(default_detectors(&cal.detectors), PolicyConfig::default());
        let mut alerted = 0;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for c in 0..clients {
            let s = gen(&mut rng);
            if mnist_benign.len() < clients {
                mnist_benign.push(s.clone());
            }
            let times = Timing::Poisson(BENIGN_INTERVAL_MS).times(s.len(), &mut rng);
            let o = run_client(&mut engine, *model, &format!("benign{c}"), &s, &times);
            alerted += o.alert.is_some() as usize;
            for k in o.first.keys() {
                *per.entry(k.clone()).or_default() += 1;
            }
        }
        total_clients += clients;
        total_alerted += alerted;
        println!(
            "| {label} | {} | {alerted}/{clients} | {} |",
            model.card().name,
            if per.is_empty() {
                "none".to_string()
            } else {
                per.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    println!(
        "\nOverall benign false-alarm rate: {total_alerted}/{total_clients} clients = {:.2}%\n",
        100.0 * total_alerted as f64 / total_clients as f64
    );

    type Gen<'a> = Box<dyn Fn(&mut rand::rngs::StdRng) -> Stream + 'a>;
    let attacks: Vec<(&str, Gen)> = vec![
        (
            "JBDA (150 seeds, λ=0.1, τ=3)",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let idx: Vec<usize> = (half..mn_te.len()).collect();
                let pick: Vec<usize> = idx.choose_multiple(r, 150).cloned().collect();
                let seeds = mn_te.select(&pick);
                jbda(&mnist, &seeds, cap, r.gen())
            }),
        ),
        (
            "JBDA interleaved 1:1 with Fashion-MNIST images",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let idx: Vec<usize> = (half..mn_te.len()).collect();
                let pick: Vec<usize> = idx.choose_multiple(r, 150).cloned().collect();
                let seeds = mn_te.select(&pick);
                let j = jbda(&mnist, &seeds, cap, r.gen());
                let mut f = fa_eval.clone();
                f.shuffle(r);
                interleave(j, f, cap)
            }),
        ),
        (
            "uniform noise",
            Box::new(|r: &mut rand::rngs::StdRng| {
                (0..cap)
                    .map(|_| (0..784).map(|_| r.gen::<f32>()).collect())
                    .collect()
            }),
        ),
        (
            "Knockoff (Fashion-MNIST images)",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let mut s = fa_eval.clone();
                s.shuffle(r);
                s.truncate(cap);
                s
            }),
        ),
        (
            "Tramèr equation solving (basis + random vectors)",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let mut s: Stream = vec![vec![0.0; 784]];
                let mut px: Vec<usize> = (0..784).collect();
                px.shuffle(r);
                for i in px {
                    let mut e = vec![0.0; 784];
                    e[i] = 1.0;
                    s.push(e);
                }
                while s.len() < cap {
                    s.push((0..784).map(|_| r.gen::<f32>()).collect());
                }
                s.truncate(cap);
                s
            }),
        ),
        (
            "near-duplicate adversarial search (random walk, step 0.01)",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let mut x = mn_eval.choose(r).cloned().unwrap_or_default();
                (0..cap.min(1000))
                    .map(|_| {
                        for v in x.iter_mut() {
                            *v = (*v + r.gen_range(-0.01..0.01)).clamp(0.0, 1.0);
                        }
                        x.clone()
                    })
                    .collect()
            }),
        ),
        (
            "JBDA with marked corners (every query out of distribution)",
            Box::new(|r: &mut rand::rngs::StdRng| {
                let idx: Vec<usize> = (half..mn_te.len()).collect();
                let pick: Vec<usize> = idx.choose_multiple(r, 150).cloned().collect();
                let seeds = mn_te.select(&pick);
                let mut j = jbda(&mnist, &seeds, cap, r.gen());
                // A 4×4 white square in each corner: far from every class centroid, while the
                // distances between queries (PRADA's statistic) do not change.
                for x in &mut j {
                    for (row, col) in (0..4).flat_map(|a| (0..4).map(move |b| (a, b))) {
                        for (rr, cc) in [
                            (row, col),
                            (row, 27 - col),
                            (27 - row, col),
                            (27 - row, 27 - col),
                        ] {
                            x[rr * 28 + cc] = 1.0;
                        }
                    }
                }
                j
            }),
        ),
    ];
    // Every attacker's stream is drawn once and replayed under both timings.
    let streams: Vec<(&str, Vec<Stream>)> = attacks
        .iter()
        .map(|(label, gen)| (*label, (0..attackers).map(|_| gen(&mut rng)).collect()))
        .collect();
    eprintln!("attack streams ready at {:.0}s", t0.elapsed().as_secs_f64());
    for (title, timing) in [
        (
            format!("bulk speed, one query per {BULK_INTERVAL_MS} ms"),
            Timing::Fixed(BULK_INTERVAL_MS),
        ),
        (
            format!(
                "throttled to the benign rate, Poisson, mean {:.0} s between queries",
                BENIGN_INTERVAL_MS / 1000.0
            ),
            Timing::Poisson(BENIGN_INTERVAL_MS),
        ),
    ] {
        println!("## Attacks on the MNIST victim, {title}: queries until detection (median over {attackers} attacker clients; detected/attackers; stream cap {cap})\n");
        let mut header = vec!["attack".to_string()];
        header.extend(names.iter().cloned());
        header.push("policy: alert".into());
        header.push("policy: block".into());
        println!("| {} |", header.join(" | "));
        println!("|{}", "---|".repeat(header.len()));
        for (label, ss) in &streams {
            let mut engine =
                Engine::new(default_detectors(&cal_m.detectors), PolicyConfig::default());
            let mut per: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            let mut alerts = Vec::new();
            let mut blocks = Vec::new();
            for (a, s) in ss.iter().enumerate() {
                let times = timing.times(s.len(), &mut rng);
                let o = run_client(&mut engine, &mnist, &format!("attacker{a}"), s, &times);
                for (k, v) in o.first {
                    per.entry(k).or_default().push(v);
                }
                alerts.extend(o.alert);
                blocks.extend(o.block);
            }
            let cell = |v: &mut Vec<usize>| match median(v) {
                Some(m) => format!("{m} ({}/{attackers})", v.len()),
                None => "—".to_string(),
            };
            let mut line = vec![label.to_string()];
            for n in &names {
                line.push(cell(per.entry(n.clone()).or_default()));
            }
            line.push(cell(&mut alerts));
            line.push(cell(&mut blocks));
            println!("| {} |", line.join(" | "));
        }
        println!();
    }

    // ---- PRADA: the paper's single-test rule against two consecutive tests ----
    println!(
        "## PRADA alone on the MNIST benign streams above and the JBDA streams: persist = 1 (paper, default), 2, 3 consecutive tests below δ = {:.3}\n",
        cal_m.detectors.prada.delta
    );
    println!("| persist | benign MNIST clients flagged | JBDA: queries until flagged (median, detected/{attackers}) | JBDA per attacker |");
    println!("|---|---|---|---|");
    let jbda_streams = &streams[0].1;
    for persist in [1u32, 2, 3] {
        let mut pc = cal_m.detectors.prada.clone();
        pc.persist = persist;
        let det = mamori_detect::prada::PradaDetector::new(pc.clone());
        let run = |s: &Stream, who: &str| -> Option<usize> {
            let mut st = mamori_core::Detector::new_state(&det);
            let mut first = None;
            let mut below = Vec::new();
            for (t, x) in s.iter().enumerate() {
                let (p, label) = answer(&mnist, x);
                let v = st.observe(&Observation {
                    client: who,
                    input: x,
                    input_shape: &[1, 28, 28],
                    probs: &p,
                    label,
                    time_ms: t as u64,
                });
                // Tests run at queries 1, 11, 21, …; W = 1 − score·(1 − δ).
                if t % pc.check_every as usize == 0 && v.score > 0.0 {
                    let w = 1.0 - v.score * (1.0 - pc.delta);
                    if w < pc.delta {
                        below.push(format!("{}:{w:.3}", t + 1));
                    }
                }
                if v.alarm && first.is_none() {
                    first = Some(t + 1);
                }
            }
            if !below.is_empty() && who.starts_with("benign") {
                eprintln!(
                    "prada persist={persist} {who}: tests with W < δ (query:W) {}",
                    below.join(" ")
                );
            }
            first
        };
        let mut flagged = 0;
        for (c, s) in mnist_benign.iter().enumerate() {
            flagged += run(s, &format!("benign{c}")).is_some() as usize;
        }
        let firsts: Vec<Option<usize>> = jbda_streams
            .iter()
            .enumerate()
            .map(|(a, s)| run(s, &format!("jbda{a}")))
            .collect();
        let mut found: Vec<usize> = firsts.iter().flatten().copied().collect();
        let n = found.len();
        println!(
            "| {persist} | {flagged}/{clients} | {} ({n}/{attackers}) | {} |",
            median(&mut found).map_or("—".into(), |m| m.to_string()),
            firsts
                .iter()
                .map(|f| f.map_or("—".into(), |m| m.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if std::env::var_os("MAMORI_PRADA_DIAG").is_some() {
        // PRADA's W per test (δ of the MNIST calibration) on benign and attack streams, with
        // every query shown to it and with only the queries the OOD test calls
        // in-distribution ("IN").
        let det = mamori_detect::prada::PradaDetector::new(cal_m.detectors.prada.clone());
        let ood_cfg = &cal_m.detectors.ood;
        // `part`: None = every query, Some(true) = in-distribution ones, Some(false) = the
        // out-of-distribution ones.
        let ws = |s: &Stream, part: Option<bool>| -> (Vec<f64>, usize) {
            let mut kept = Vec::new();
            for x in s {
                let (p, l) = answer(&mnist, x);
                let inside = !mamori_detect::ood::OodDetector::is_ood(ood_cfg, x, &p, l);
                if part.is_none_or(|want| want == inside) {
                    kept.push((x.as_slice(), l));
                }
            }
            let n = kept.len();
            (det.w_series(kept), n)
        };
        let mut foreign: Vec<Stream> = Vec::new();
        for _ in 0..100 {
            let mut s = fa_eval.clone();
            s.shuffle(&mut rng);
            s.truncate(queries);
            foreign.push(s);
        }
        let mut diluted: Vec<Stream> = Vec::new();
        for s in jbda_streams {
            let mut f = fa_eval.clone();
            f.shuffle(&mut rng);
            diluted.push(interleave(s.clone(), f, cap));
        }
        let marked = streams
            .iter()
            .find(|(label, _)| label.starts_with("JBDA with marked corners"))
            .map(|(_, ss)| ss)
            .ok_or("no marked-corners attack row")?;
        let kinds: [(&str, &[Stream]); 5] = [
            ("mnist benign", &mnist_benign[..mnist_benign.len().min(100)]),
            ("fashion->mnist", &foreign),
            ("jbda", jbda_streams),
            ("jbda+fashion 1:1", &diluted),
            ("jbda marked corners", marked),
        ];
        let mut all: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
        for part in [Some(true), Some(false), None] {
            for (name, streams) in kinds {
                let name = format!(
                    "{}{name}",
                    match part {
                        Some(true) => "IN ",
                        Some(false) => "OUT ",
                        None => "",
                    }
                );
                let (series, kept): (Vec<Vec<f64>>, Vec<usize>) =
                    streams.iter().map(|s| ws(s, part)).unzip();
                let shown: Vec<usize> = kept.iter().take(20).copied().collect();
                eprintln!("W {name}: queries observed per client {shown:?}");
                all.push((name, series));
            }
        }
        for (name, series) in &all {
            for ser in series.iter().take(8) {
                let txt: Vec<String> = ser.iter().take(40).map(|w| format!("{w:.3}")).collect();
                eprintln!("W {name}: {}", txt.join(" "));
            }
            let mut mins: Vec<f64> = series
                .iter()
                .map(|v| v.iter().copied().fold(f64::MAX, f64::min))
                .collect();
            mins.sort_by(f64::total_cmp);
            let mut crit: Vec<f64> = series
                .iter()
                .filter_map(|v| mamori_detect::prada::critical_delta(v, 2))
                .collect();
            crit.sort_by(f64::total_cmp);
            eprintln!(
                "W {name}: min W quantiles {:?}; persist-2 critical δ quantiles {:?}",
                q5(&mins),
                q5(&crit)
            );
        }
    }
    eprintln!("total {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn q5(v: &[f64]) -> Vec<String> {
    if v.is_empty() {
        return vec![];
    }
    [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
        .iter()
        .map(|q| format!("{:.3}", v[((v.len() - 1) as f64 * q) as usize]))
        .collect()
}
