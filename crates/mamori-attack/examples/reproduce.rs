//! Regenerates the attack numbers of `REPRODUCTIONS.md` and `docs/bench/attack.md`
//! (rows 1–6 of the published-results table) and the extraction curves.
//!
//! ```text
//! cargo run -p mamori-attack --example reproduce -- <experiment> [--out DIR] [--quick]
//! jbda flags: [--seeds 0,1,2] [--seed S] [--epochs E] [--lr LR] [--batch B]
//!             [--cold-start] [--no-clip] [--logit-jacobian] [--per-round] [--sub-arch mlp|cnn]
//! experiments: tramer-binary, tramer-multinomial, tramer-mlp, label-only, jbda,
//!              knockoff, curves, membership, inversion, all
//! ```
//! Victims are trained here with fixed seeds and cached under `DIR/victims`.

use mamori_attack::experiment::{binary_subset, max_prob_distance, train_victim, tv_distance};
use mamori_attack::extract::{
    ExtractionContext, Jbda, KnockoffAdaptive, KnockoffRandom, LabelOnlyRetraining, NoiseKind,
    RandomQueries, TramerLr, TramerMlp,
};
use mamori_attack::inversion::{mi_face, MiFaceConfig};
use mamori_attack::membership::{
    GlobalThreshold, Lira, MembershipAttack, MembershipContext, MembershipResult, MembershipSplit,
    NetTrainer, ShadowModels, ShadowTrainer,
};
use mamori_attack::metrics::{CurvePoint, EvalSet};
use mamori_attack::{report, ExtractionAttack, LocalOracle};
use mamori_core::{Disclosure, Oracle, Tensor};
use mamori_data::{load, resolve_data_dir, Dataset, Split};
use mamori_ml::{agreement, Arch, NativeModel, TrainConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn cfg(epochs: usize, lr: f32, batch: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        learning_rate: lr,
        weight_decay: 0.0,
        seed,
        progress: true,
    }
}

fn uniform(n: usize, shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let per: usize = shape.iter().product();
    let mut full = vec![n];
    full.extend_from_slice(shape);
    Tensor::new(full, (0..n * per).map(|_| rng.gen::<f32>()).collect()).expect("shape")
}

/// Loads a cached victim or trains and caches it.
fn victim(
    out: &Path,
    name: &str,
    arch: &Arch,
    train: &Dataset,
    test: &Dataset,
    c: &TrainConfig,
) -> R<NativeModel> {
    let dir = out.join("victims").join(name);
    if let Ok(m) = NativeModel::load(&dir) {
        return Ok(m);
    }
    let t = Instant::now();
    let m = train_victim(arch, train, test, c, name)?;
    eprintln!(
        "victim {name}: test accuracy {:.4} ({:.0}s)",
        m.card.test_accuracy.unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64()
    );
    m.save(&dir)?;
    Ok(m)
}

fn data(name: &str) -> R<Split> {
    Ok(load(name, &resolve_data_dir(None))?)
}

fn row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

fn tramer_binary(out: &Path) -> R<()> {
    println!("\n## Row 1: Tramèr binary LR (d+1 queries)\n");
    println!("| victim | victim acc | queries | mean TV distance (test) | max abs prob diff (test) | (uniform) | disagreement test / uniform | seconds |\n|---|---:|---:|---:|---:|---:|---:|---:|");
    for (ds, n_train, epochs) in [("digits", usize::MAX, 5), ("mnist", 12_000, 1)] {
        let s = data(ds)?;
        let tr = binary_subset(&s.train, 0, 1);
        let tr = tr.select(&(0..tr.len().min(n_train)).collect::<Vec<_>>());
        let te = binary_subset(&s.test, 0, 1);
        let v = victim(
            out,
            &format!("{ds}-0v1-lr"),
            &Arch::Logistic,
            &tr,
            &te,
            &cfg(epochs, 1e-2, 32, 1),
        )?;
        let mut o = LocalOracle::new(Box::new(v.clone()));
        let e = TramerLr::default()
            .extract(&mut o, &ExtractionContext::new(u64::MAX, Arch::Logistic))?;
        let u = uniform(10_000, &v.card.input_shape, 2);
        row(&[
            format!("{ds} 0-vs-1 LR"),
            format!("{:.4}", v.card.test_accuracy.unwrap_or(f64::NAN)),
            e.queries.to_string(),
            format!("{:.2e}", tv_distance(&v, &e.substitute, &te.x)?.0),
            format!("{:.2e}", max_prob_distance(&v, &e.substitute, &te.x)?),
            format!("{:.2e}", max_prob_distance(&v, &e.substitute, &u)?),
            format!(
                "{:.4} / {:.4}",
                1.0 - agreement(&v, &e.substitute, &te.x)?,
                1.0 - agreement(&v, &e.substitute, &u)?
            ),
            format!("{:.2}", e.seconds),
        ]);
    }
    Ok(())
}

fn tramer_multinomial(out: &Path) -> R<()> {
    println!("\n## Row 2: Tramèr multinomial LR (c·(d+1) queries)\n");
    println!("| victim | victim acc | queries | mean TV distance (test) | max abs prob diff (test) | (uniform) | disagreement test / uniform |\n|---|---:|---:|---:|---:|---:|---:|");
    let s = data("digits")?;
    let v = victim(
        out,
        "digits-softmax",
        &Arch::Softmax,
        &s.train,
        &s.test,
        &cfg(20, 1e-2, 32, 1),
    )?;
    let mut o = LocalOracle::new(Box::new(v.clone()));
    let e =
        TramerLr::default().extract(&mut o, &ExtractionContext::new(u64::MAX, Arch::Softmax))?;
    let u = uniform(10_000, &v.card.input_shape, 2);
    row(&[
        "digits softmax LR".into(),
        format!("{:.4}", v.card.test_accuracy.unwrap_or(f64::NAN)),
        e.queries.to_string(),
        format!("{:.2e}", tv_distance(&v, &e.substitute, &s.test.x)?.0),
        format!("{:.2e}", max_prob_distance(&v, &e.substitute, &s.test.x)?),
        format!("{:.2e}", max_prob_distance(&v, &e.substitute, &u)?),
        format!(
            "{:.4} / {:.4}",
            1.0 - agreement(&v, &e.substitute, &s.test.x)?,
            1.0 - agreement(&v, &e.substitute, &u)?
        ),
    ]);
    Ok(())
}

fn tramer_mlp(out: &Path) -> R<()> {
    println!("\n## Row 3: Tramèr MLP, one hidden layer of 20 (2 × unknowns queries)\n");
    println!("| victim | victim acc | unknowns | queries | test agreement | uniform agreement | seconds |\n|---|---:|---:|---:|---:|---:|---:|");
    let s = data("digits")?;
    let v = victim(
        out,
        "digits-mlp20",
        &Arch::Mlp { hidden: vec![20] },
        &s.train,
        &s.test,
        &cfg(50, 1e-2, 32, 1),
    )?;
    let mut o = LocalOracle::new(Box::new(v.clone()));
    let mut ctx = ExtractionContext::new(u64::MAX, Arch::Mlp { hidden: vec![20] });
    ctx.train = cfg(1000, 3e-3, 64, 2);
    ctx.stop = None; // the paper's fixed schedule
    ctx.train.progress = false;
    let e = TramerMlp::default().extract(&mut o, &ctx)?;
    let u = uniform(10_000, &v.card.input_shape, 2);
    row(&[
        "digits MLP 64-20-10".into(),
        format!("{:.4}", v.card.test_accuracy.unwrap_or(f64::NAN)),
        TramerMlp::unknowns(64, 20, 10).to_string(),
        e.queries.to_string(),
        format!("{:.4}", agreement(&v, &e.substitute, &s.test.x)?),
        format!("{:.4}", agreement(&v, &e.substitute, &u)?),
        format!("{:.1}", e.seconds),
    ]);
    Ok(())
}

fn label_only(out: &Path) -> R<()> {
    println!("\n## Row 4: label-only adaptive retraining, binary LR\n");
    println!("| victim | queries | test agreement | uniform agreement | seconds |\n|---|---:|---:|---:|---:|");
    for (ds, n_train, epochs) in [("digits", usize::MAX, 5), ("mnist", 12_000, 1)] {
        let s = data(ds)?;
        let tr = binary_subset(&s.train, 0, 1);
        let tr = tr.select(&(0..tr.len().min(n_train)).collect::<Vec<_>>());
        let te = binary_subset(&s.test, 0, 1);
        let v = victim(
            out,
            &format!("{ds}-0v1-lr"),
            &Arch::Logistic,
            &tr,
            &te,
            &cfg(epochs, 1e-2, 32, 1),
        )?;
        let mut o = LocalOracle::new(Box::new(v.clone())).with_disclosure(Disclosure::Label);
        let mut ctx = ExtractionContext::new(827, Arch::Logistic);
        ctx.train = cfg(100, 1e-2, 32, 2);
        ctx.stop = None; // the paper's fixed schedule
        ctx.train.progress = false;
        let e = LabelOnlyRetraining::default().extract(&mut o, &ctx)?;
        let u = uniform(10_000, &v.card.input_shape, 2);
        row(&[
            format!("{ds} 0-vs-1 LR"),
            e.queries.to_string(),
            format!("{:.4}", agreement(&v, &e.substitute, &te.x)?),
            format!("{:.4}", agreement(&v, &e.substitute, &u)?),
            format!("{:.1}", e.seconds),
        ]);
    }
    Ok(())
}

fn mnist_victim(out: &Path, s: &Split, quick: bool) -> R<NativeModel> {
    if quick {
        victim(
            out,
            "mnist-mlp",
            &Arch::Mlp { hidden: vec![256] },
            &s.train,
            &s.test,
            &cfg(3, 1e-3, 64, 1),
        )
    } else {
        victim(
            out,
            "mnist-cnn",
            &Arch::Cnn,
            &s.train,
            &s.test,
            &cfg(2, 1e-3, 64, 1),
        )
    }
}

/// JBDA settings taken from the command line.
struct JbdaRun {
    epochs: usize,
    lr: f32,
    batch: usize,
    logit: bool,
    warm_start: bool,
    clip: bool,
    seeds: Vec<u64>,
    per_round: bool,
    /// Substitute architecture (`--sub-arch mlp|cnn`; the paper's row uses the MLP).
    cnn: bool,
}

/// The JBDA substitute: Papernot et al.'s MLP 784-200-200-10 (PAPERS.md row 5), or the
/// LeNet-style CNN (`--sub-arch cnn`).
fn jbda_substitute(cnn: bool) -> Arch {
    if cnn {
        Arch::Cnn
    } else {
        Arch::Mlp {
            hidden: vec![200, 200],
        }
    }
}

fn jbda(out: &Path, quick: bool, run: &JbdaRun) -> R<()> {
    let JbdaRun {
        epochs, lr, batch, ..
    } = *run;
    let schedule = if run.warm_start {
        "one substitute trained on across rounds (reference code)"
    } else {
        "substitute re-initialised every round"
    };
    let clip = if run.clip {
        "synthetic points clipped to [0, 1]"
    } else {
        "synthetic points not clipped (reference code)"
    };
    let jac = if run.logit { "logit" } else { "softmax" };
    println!(
        "\n## Row 5: Papernot JBDA (150 seeds, 6 rounds, λ=0.1 flipped every 3, labels only, MLP 784-200-200-10, {epochs} epochs per round, Adam lr {lr}, batch {batch}, {schedule}, {clip}, {jac} Jacobian; scored on the 9,850 test images after the seeds)\n"
    );
    println!("| victim | victim acc | substitute seed | queries | substitute accuracy | fidelity (test) | seconds |\n|---|---:|---:|---:|---:|---:|---:|");
    let s = data("mnist")?;
    let v = mnist_victim(out, &s, quick)?;
    let attack = Jbda {
        probability_jacobian: !run.logit,
        warm_start: run.warm_start,
        clip: run.clip,
        ..Jbda::default()
    };
    // The reference code's evaluation set: the test set without the 150 seed images.
    let held_out = attack.held_out(&s.test)?;
    let eval = EvalSet::from_model(&v, &held_out, 1000, [0.0, 1.0], 0)?;
    let mut accs = Vec::new();
    for &seed in &run.seeds {
        let mut o = LocalOracle::new(Box::new(v.clone())).with_disclosure(Disclosure::Label);
        let mut ctx = ExtractionContext::new(u64::MAX, jbda_substitute(run.cnn));
        ctx.train = cfg(epochs, lr, batch, 3 + seed);
        ctx.stop = None; // the paper's fixed schedule
        ctx.train.progress = false;
        ctx.seed = seed;
        ctx.query_data = Some(&s.test); // Papernot's seeds: the first 150 test images.
        let e = attack.extract(&mut o, &ctx)?;
        let m = eval.evaluate(&e.substitute)?;
        accs.push(m.substitute_accuracy);
        row(&[
            format!("MNIST {}", v.card.architecture),
            format!("{:.4}", eval.victim_accuracy()),
            seed.to_string(),
            e.queries.to_string(),
            format!("{:.4}", m.substitute_accuracy),
            format!("{:.4}", m.fidelity),
            format!("{:.0}", e.seconds),
        ]);
    }
    let (mean, sd) = mean_sd(&accs);
    println!(
        "\nSubstitute accuracy over {} seeds: mean {:.4} ± {:.4} (sample std), min {:.4}, max {:.4}",
        accs.len(),
        mean,
        sd,
        accs.iter().copied().fold(f64::INFINITY, f64::min),
        accs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    if run.per_round {
        // Table 1 of the paper: the substitute after each substitute epoch ρ. Training is
        // deterministic per round (round r uses seed `train.seed + r`), so the substitute of a
        // `rounds = r` run is the one the 6-round run had after round r.
        println!("\n| ρ | queries | substitute accuracy, mean ± std over seeds | paper (Table 1, MNIST seeds) |\n|---:|---:|---:|---:|");
        let paper = [
            "24.86%", "41.37%", "65.72%", "74.22%", "80.56%", "79.18%", "81.20%",
        ];
        for (r, p) in paper.iter().enumerate().take(attack.rounds + 1) {
            let short = Jbda {
                rounds: r,
                ..attack.clone()
            };
            let mut accs = Vec::new();
            let mut queries = 0;
            for &seed in &run.seeds {
                let mut o =
                    LocalOracle::new(Box::new(v.clone())).with_disclosure(Disclosure::Label);
                let mut ctx = ExtractionContext::new(u64::MAX, jbda_substitute(run.cnn));
                ctx.train = cfg(epochs, lr, batch, 3 + seed);
                ctx.stop = None; // the paper's fixed schedule
                ctx.train.progress = false;
                ctx.seed = seed;
                ctx.query_data = Some(&s.test);
                let e = short.extract(&mut o, &ctx)?;
                queries = e.queries;
                accs.push(eval.evaluate(&e.substitute)?.substitute_accuracy);
            }
            let (m, d) = mean_sd(&accs);
            row(&[
                r.to_string(),
                queries.to_string(),
                format!("{:.2}% ± {:.2}", 100.0 * m, 100.0 * d),
                p.to_string(),
            ]);
        }
    }
    Ok(())
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let sd = if v.len() > 1 {
        (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

fn knockoff(out: &Path, quick: bool) -> R<()> {
    println!(
        "\n## Row 6: Knockoff Nets, random strategy (MLP 784-200-200 substitute, soft labels)\n"
    );
    println!("| victim | victim acc | query data | queries | substitute accuracy | fidelity (test) | seconds |\n|---|---:|---|---:|---:|---:|---:|");
    let mnist = data("mnist")?;
    let fm = data("fashion-mnist")?;
    let v = mnist_victim(out, &mnist, quick)?;
    let eval = EvalSet::from_model(&v, &mnist.test, 1000, [0.0, 1.0], 0)?;
    let runs: Vec<(&str, &Dataset, u64)> = if quick {
        vec![
            ("mnist (in-distribution)", &mnist.train, 5000),
            ("fashion-mnist", &fm.train, 10_000),
        ]
    } else {
        vec![
            ("mnist (in-distribution)", &mnist.train, 5000),
            ("fashion-mnist", &fm.train, 60_000),
        ]
    };
    for (qname, qd, budget) in runs {
        let mut o = LocalOracle::new(Box::new(v.clone())).with_budget(Some(budget));
        let mut ctx = ExtractionContext::new(
            budget,
            Arch::Mlp {
                hidden: vec![200, 200],
            },
        );
        ctx.train = cfg(10, 1e-3, 64, 3);
        ctx.stop = None; // the paper's fixed schedule
        ctx.query_data = Some(qd);
        ctx.progress = true;
        let e = KnockoffRandom.extract(&mut o, &ctx)?;
        let m = eval.evaluate(&e.substitute)?;
        row(&[
            format!("MNIST {}", v.card.architecture),
            format!("{:.4}", eval.victim_accuracy()),
            qname.into(),
            e.queries.to_string(),
            format!("{:.4}", m.substitute_accuracy),
            format!("{:.4}", m.fidelity),
            format!("{:.0}", e.seconds),
        ]);
    }
    Ok(())
}

fn curves(out: &Path, quick: bool) -> R<()> {
    println!("\n## Extraction curves\n");
    let mnist = data("mnist")?;
    let fm = data("fashion-mnist")?;
    let budgets: Vec<u64> = if quick {
        vec![1000, 5000, 20_000]
    } else {
        vec![1000, 5000, 20_000, 50_000]
    };
    let fm_victim = if quick {
        victim(
            out,
            "fmnist-mlp",
            &Arch::Mlp { hidden: vec![256] },
            &fm.train,
            &fm.test,
            &cfg(3, 1e-3, 64, 1),
        )?
    } else {
        victim(
            out,
            "fmnist-cnn",
            &Arch::Cnn,
            &fm.train,
            &fm.test,
            &cfg(2, 1e-3, 64, 1),
        )?
    };
    let mnist_victim = mnist_victim(out, &mnist, quick)?;
    let settings: Vec<(&str, &NativeModel, &Split, &Split)> = vec![
        ("fmnist-victim-mnist-queries", &fm_victim, &fm, &mnist),
        ("mnist-victim-fmnist-queries", &mnist_victim, &mnist, &fm),
    ];
    for (name, v, own, other) in settings {
        let eval = EvalSet::from_model(v, &own.test, 1000, [0.0, 1.0], 0)?;
        let attacks: Vec<Box<dyn ExtractionAttack>> = vec![
            Box::new(KnockoffRandom),
            Box::new(KnockoffAdaptive::default()),
            Box::new(RandomQueries::new(NoiseKind::Uniform)),
        ];
        let mut points: Vec<CurvePoint> = Vec::new();
        for a in &attacks {
            for &b in &budgets {
                let mut o: Box<dyn Oracle> =
                    Box::new(LocalOracle::new(Box::new(v.clone())).with_budget(Some(b)));
                let mut ctx = ExtractionContext::new(
                    b,
                    Arch::Mlp {
                        hidden: vec![200, 200],
                    },
                );
                ctx.train = cfg(5, 1e-3, 64, 3);
                ctx.stop = None; // the paper's fixed schedule
                ctx.query_data = Some(&other.train);
                ctx.progress = true;
                let e = a.extract(o.as_mut(), &ctx)?;
                let m = eval.evaluate(&e.substitute)?;
                let p = CurvePoint::new(a.info().name, b, &e, m);
                eprintln!("{name} {} {b}: fidelity {:.4}", p.strategy, p.fidelity);
                points.push(p);
            }
        }
        let dir = out.join("curves").join(name);
        report::write_extraction_report(
            &dir,
            &format!("{name} (victim accuracy {:.4})", eval.victim_accuracy()),
            Some(eval.victim_accuracy()),
            &points,
            &format!(
                "cargo run -p mamori-attack --example reproduce -- curves{}",
                if quick { " --quick" } else { "" }
            ),
        )?;
        println!("### {name}\n");
        println!("| strategy | queries | substitute accuracy | fidelity | fidelity (uniform) | seconds |\n|---|---:|---:|---:|---:|---:|");
        for p in &points {
            row(&[
                p.strategy.clone(),
                p.queries.to_string(),
                format!("{:.4}", p.substitute_accuracy),
                format!("{:.4}", p.fidelity),
                format!("{:.4}", p.fidelity_uniform),
                format!("{:.0}", p.seconds),
            ]);
        }
        println!("\nPlots: `{}`\n", dir.display());
    }
    Ok(())
}

fn membership(out: &Path, quick: bool) -> R<()> {
    println!(
        "\n## Membership inference (overfit victim: MLP 784-256-10 on {} Fashion-MNIST members)\n",
        1000
    );
    let fm = data("fashion-mnist")?;
    let split = MembershipSplit::new(&fm.train, 1000, 11)?;
    let mut trainer = NetTrainer {
        arch: Arch::Mlp { hidden: vec![256] },
        cfg: TrainConfig {
            progress: false,
            ..cfg(30, 1e-3, 32, 11)
        },
    };
    let v = trainer.train(&split.train, 11)?;
    let shadows = if quick { 4 } else { 8 };
    let attacks: Vec<Box<dyn MembershipAttack>> = vec![
        Box::new(GlobalThreshold),
        Box::new(ShadowModels {
            shadows: 4,
            per_shadow: 1000,
        }),
        Box::new(Lira {
            shadows,
            fixed_variance: true,
        }),
    ];
    let mut results = Vec::new();
    for a in attacks {
        let mut ctx = MembershipContext {
            target: v.as_ref(),
            candidates: &split.candidates,
            population: Some(&split.population),
            trainer: &mut trainer,
            seed: 11,
            progress: true,
        };
        let s = a.scores(&mut ctx)?;
        results.push(MembershipResult::new(a.name(), &s, &split.members)?);
    }
    println!("| attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR |\n|---|---:|---:|---:|");
    for r in &results {
        row(&[
            r.attack.clone(),
            format!("{:.4}", r.auc),
            format!("{:.4}", r.tpr_at_0_1pct_fpr),
            format!("{:.4}", r.tpr_at_1pct_fpr),
        ]);
    }
    let dir = out.join("membership");
    report::write_membership_report(
        &dir,
        "Fashion-MNIST overfit MLP",
        &results,
        "cargo run -p mamori-attack --example reproduce -- membership",
    )?;
    println!("\nROC: `{}`", dir.join("roc.png").display());
    Ok(())
}

fn inversion(out: &Path, quick: bool) -> R<()> {
    println!(
        "\n## MI-Face on an MNIST softmax victim (white-box) and through a stolen substitute\n"
    );
    let s = data("mnist")?;
    let v = victim(
        out,
        "mnist-softmax",
        &Arch::Softmax,
        &s.train,
        &s.test,
        &cfg(2, 1e-3, 64, 1),
    )?;
    let classes: Vec<usize> = (0..10).collect();
    let c = MiFaceConfig {
        max_iters: if quick { 300 } else { 1000 },
        ..Default::default()
    };
    let wb = mi_face(&v, &classes, &c)?;
    let mut o = LocalOracle::new(Box::new(v.clone())).with_budget(Some(10_000));
    let mut ctx = ExtractionContext::new(10_000, Arch::Softmax);
    ctx.train = cfg(10, 1e-3, 64, 3);
    ctx.stop = None; // the paper's fixed schedule
    ctx.query_data = Some(&s.test);
    let e = KnockoffRandom.extract(&mut o, &ctx)?;
    let bb = mi_face(&e.substitute, &classes, &c)?;
    // How the victim classifies the black-box reconstructions.
    let xb = Tensor::from_rows(&v.card.input_shape, bb.iter().map(|i| i.image.as_slice()))?;
    let pb = mamori_core::Model::predict(&v, &xb)?;
    let imgs: Vec<Vec<f32>> = wb
        .iter()
        .chain(bb.iter())
        .map(|i| i.image.clone())
        .collect();
    let path = out.join("inversion.png");
    report::save_image_grid(&path, &imgs, 28, 28, 10, 4)?;
    println!("| class | white-box 1−p | black-box (substitute, {} queries) 1−p_sub | victim p on black-box image |\n|---:|---:|---:|---:|", e.queries);
    for (i, (w, b)) in wb.iter().zip(&bb).enumerate() {
        row(&[
            i.to_string(),
            format!("{:.4}", w.cost),
            format!("{:.4}", b.cost),
            format!("{:.4}", pb.row(i)[i]),
        ]);
    }
    println!(
        "\nGrid (row 1 white-box, row 2 black-box): `{}`",
        path.display()
    );
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().cloned().unwrap_or_else(|| "all".into());
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("out/attack"));
    std::fs::create_dir_all(&out)?;
    println!(
        "<!-- {} -->",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let all = what == "all";
    if all || what == "tramer-binary" {
        tramer_binary(&out)?;
    }
    if all || what == "tramer-multinomial" {
        tramer_multinomial(&out)?;
    }
    if all || what == "tramer-mlp" {
        tramer_mlp(&out)?;
    }
    if all || what == "label-only" {
        label_only(&out)?;
    }
    let epochs = args
        .iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|e| e.parse().ok())
        .unwrap_or(10);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let lr = flag("--lr").and_then(|v| v.parse().ok()).unwrap_or(1e-3);
    let batch = flag("--batch").and_then(|v| v.parse().ok()).unwrap_or(128);
    if all || what == "jbda" {
        // `--seeds 0,1,2,3,4` (or `--seed S` for one run): substitute seeds.
        let seeds: Vec<u64> = match flag("--seeds") {
            Some(list) => list
                .split(',')
                .map(|v| v.trim().parse())
                .collect::<Result<_, _>>()?,
            None => vec![flag("--seed").and_then(|v| v.parse().ok()).unwrap_or(0)],
        };
        let run = JbdaRun {
            epochs,
            lr,
            batch,
            logit: args.iter().any(|a| a == "--logit-jacobian"),
            warm_start: !args.iter().any(|a| a == "--cold-start"),
            clip: !args.iter().any(|a| a == "--no-clip"),
            seeds,
            per_round: args.iter().any(|a| a == "--per-round"),
            cnn: flag("--sub-arch").as_deref() == Some("cnn"),
        };
        jbda(&out, quick, &run)?;
    }
    if all || what == "knockoff" {
        knockoff(&out, quick)?;
    }
    if all || what == "curves" {
        curves(&out, quick)?;
    }
    if all || what == "membership" {
        membership(&out, quick)?;
    }
    if all || what == "inversion" {
        inversion(&out, quick)?;
    }
    Ok(())
}
