//! Measures the output defenses and DAWN on Fashion-MNIST and writes the tables to a Markdown
//! file (default `docs/bench/defense.md`).
//!
//! ```text
//! cargo run -p mamori-defense --example defense_bench -- [--out FILE] [--data-dir DIR] [--quick]
//! ```
//!
//! Setting: an MLP victim trained on the first 50,000 Fashion-MNIST training images; the thief
//! holds the other 10,000 (in-distribution natural queries, the Knockoff/"random" setting) and
//! queries each of them once through the defense; it trains a probability-trained and a
//! label-trained substitute on the answers. Fidelity = agreement with the victim on the 10,000
//! test images. Benign cost = victim test accuracy minus the accuracy of the defended answers.

use mamori_core::{ModelCard, Postprocessor, Tensor, Watermark};
use mamori_defense::defended_answers;
use mamori_defense::post::{build, BuildContext, PostprocessorSpec};
use mamori_defense::robustness::{fine_tune, prune_smallest};
use mamori_defense::simplex::argmax;
use mamori_defense::verify::verify_model;
use mamori_defense::{Dawn, Ledger, LedgerRecord, SecretKey};
use mamori_ml::{accuracy, agreement, train, Arch, NativeModel, Network, Targets, TrainConfig};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

/// Answers of `victim` on `x`, passed through `pp` and then `wm` (either optional).
fn answer(
    victim: &NativeModel,
    x: &Tensor,
    pp: Option<&dyn Postprocessor>,
    wm: Option<&dyn Watermark>,
) -> Tensor {
    let mut probs = defended_answers(victim, x, pp, "bench").expect("victim runs");
    if let Some(w) = wm {
        for i in 0..x.batch_size() {
            w.apply(x.row(i), probs.row_mut(i));
        }
    }
    probs
}

fn label_acc(probs: &Tensor, y: &[usize]) -> f64 {
    probs
        .rows()
        .zip(y)
        .filter(|(r, l)| argmax(r) == **l)
        .count() as f64
        / y.len() as f64
}

struct Sub {
    model: NativeModel,
}

fn substitute(
    x: &Tensor,
    targets: Targets,
    input_shape: &[usize],
    classes: usize,
    epochs: usize,
    seed: u64,
) -> Sub {
    let mut net = Network::new(&Arch::Mlp { hidden: vec![256] }, input_shape, classes, seed);
    let cfg = TrainConfig {
        epochs,
        batch_size: 64,
        learning_rate: 1e-3,
        seed,
        ..Default::default()
    };
    train(&mut net, x, &targets, &cfg).expect("substitute trains");
    Sub {
        model: NativeModel {
            network: net,
            card: ModelCard::classifier("bench", "mlp", input_shape, classes),
        },
    }
}

fn main() {
    let mut out = std::path::PathBuf::from("docs/bench/defense.md");
    let mut data_dir = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().expect("--out FILE").into(),
            "--data-dir" => data_dir = Some(std::path::PathBuf::from(args.next().expect("DIR"))),
            "--quick" => quick = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let t0 = Instant::now();
    let dir = mamori_data::resolve_data_dir(data_dir.as_deref());
    let split = mamori_data::load("fashion-mnist", &dir).expect("Fashion-MNIST loads");
    let (train_set, test) = (split.train, split.test);
    let classes = train_set.num_classes;
    let shape = train_set.x.sample_shape().to_vec();
    let n_victim = if quick { 20_000 } else { 50_000 };
    let n_queries = if quick { 3_000 } else { 10_000 };
    let victim_idx: Vec<usize> = (0..n_victim).collect();
    let thief_idx: Vec<usize> = (50_000..50_000 + n_queries).collect();
    let vset = train_set.select(&victim_idx);
    let qx = train_set.x.select(&thief_idx);
    let q_true = thief_idx
        .iter()
        .map(|&i| train_set.y[i])
        .collect::<Vec<_>>();
    let (victim_epochs, sub_epochs) = if quick { (2, 5) } else { (5, 15) };

    eprintln!(
        "[{:>6.1}s] training the victim MLP 784-256-10 on {n_victim} images",
        t0.elapsed().as_secs_f64()
    );
    let mut vnet = Network::new(&Arch::Mlp { hidden: vec![256] }, &shape, classes, 7);
    let rep = train(
        &mut vnet,
        &vset.x,
        &Targets::Labels(vset.y.clone()),
        &TrainConfig {
            epochs: victim_epochs,
            batch_size: 64,
            learning_rate: 1e-3,
            seed: 7,
            ..Default::default()
        },
    )
    .expect("victim trains");
    let victim = NativeModel {
        network: vnet.clone(),
        card: ModelCard::classifier("bench", "mlp", &shape, classes),
    };
    let victim_acc = accuracy(&victim, &test.x, &test.y).unwrap();
    eprintln!(
        "[{:>6.1}s] victim test accuracy {:.4} ({:.1}s)",
        t0.elapsed().as_secs_f64(),
        victim_acc,
        rep.seconds
    );

    let key = SecretKey::from_bytes(*b"mamori-defense-bench-fixed-key!!");
    let ctx = BuildContext {
        key: Some(key.clone()),
        network: Some(Arc::new(vnet.clone())),
    };
    use PostprocessorSpec::*;
    let specs: Vec<(String, Option<PostprocessorSpec>, BuildContext)> = vec![
        ("none".into(), None, ctx.clone()),
        ("label_only".into(), Some(LabelOnly), ctx.clone()),
        (
            "top_k k=3".into(),
            Some(TopK {
                k: 3,
                renormalise: true,
            }),
            ctx.clone(),
        ),
        (
            "rounding 1 decimal".into(),
            Some(Rounding { decimals: 1 }),
            ctx.clone(),
        ),
        (
            "rounding 2 decimals".into(),
            Some(Rounding { decimals: 2 }),
            ctx.clone(),
        ),
        (
            "gaussian σ=0.1".into(),
            Some(GaussianNoise { sigma: 0.1 }),
            ctx.clone(),
        ),
        (
            "laplace b=0.1".into(),
            Some(LaplaceNoise { scale: 0.1 }),
            ctx.clone(),
        ),
        (
            "reverse_sigmoid β=1 γ=0.2".into(),
            Some(ReverseSigmoid {
                beta: 1.0,
                gamma: 0.2,
            }),
            ctx.clone(),
        ),
        (
            "reverse_sigmoid β=0.6 γ=1.5".into(),
            Some(ReverseSigmoid {
                beta: 0.6,
                gamma: 1.5,
            }),
            ctx.clone(),
        ),
        (
            "adaptive_misinformation τ=0.7 ν=100".into(),
            Some(AdaptiveMisinformation {
                tau: 0.7,
                nu: 100.0,
            }),
            ctx.clone(),
        ),
        (
            "MAD ε=1 (native surrogate)".into(),
            Some(PredictionPoisoning {
                epsilon: 1.0,
                keep_top1: false,
            }),
            ctx.clone(),
        ),
        (
            "MAD-argmax ε=1 (native surrogate)".into(),
            Some(PredictionPoisoning {
                epsilon: 1.0,
                keep_top1: true,
            }),
            ctx.clone(),
        ),
        (
            "MAD ε=1 (uniform approx., ONNX path)".into(),
            Some(PredictionPoisoning {
                epsilon: 1.0,
                keep_top1: false,
            }),
            BuildContext {
                key: Some(key.clone()),
                network: None,
            },
        ),
    ];

    let mut md = String::new();
    let _ = writeln!(md, "# Output defenses and DAWN (issue #6)\n");
    let _ = writeln!(
        md,
        "Machine: 2-core CPU shared with other jobs, no GPU. Date: {}. Command: \
         `cargo run -p mamori-defense --example defense_bench{}`.\n",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        if quick { " -- --quick" } else { "" }
    );
    let _ = writeln!(
        md,
        "Victim: MLP 784-256-10 trained {victim_epochs} epochs on the first {n_victim} Fashion-MNIST \
         training images; test accuracy **{:.2}%**. Thief: {n_queries} queries (the last training \
         images, in-distribution natural queries), each answered once through the defense; \
         substitutes MLP 784-256-10 trained {sub_epochs} epochs on the answers, with soft \
         targets (probability-trained) or argmax labels (label-trained). Fidelity = agreement \
         with the victim on the 10,000 test images; the `none` row is the undefended baseline \
         measured in the same run.\n",
        100.0 * victim_acc
    );
    let _ = writeln!(md, "## Postprocessors: benign cost and stealing fidelity\n");
    let _ = writeln!(md, "| defense | keeps top-1 | defended test acc. | benign cost (pts) | mean L1 change | fidelity, prob.-trained | fidelity, label-trained | thief acc. prob. / label |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let clean_test = answer(&victim, &test.x, None, None);
    for (name, spec, bctx) in &specs {
        let ts = Instant::now();
        let pp = spec.as_ref().map(|s| build(s, bctx).expect("spec builds"));
        let pp_ref = pp.as_deref();
        let test_ans = answer(&victim, &test.x, pp_ref, None);
        let acc = label_acc(&test_ans, &test.y);
        let l1 = mamori_defense::answer_distortion(&test_ans, &clean_test);
        let q_ans = answer(&victim, &qx, pp_ref, None);
        let q_labels: Vec<usize> = q_ans.rows().map(argmax).collect();
        let soft = substitute(
            &qx,
            Targets::Soft(q_ans.clone()),
            &shape,
            classes,
            sub_epochs,
            11,
        );
        let hard = substitute(
            &qx,
            Targets::Labels(q_labels),
            &shape,
            classes,
            sub_epochs,
            11,
        );
        let fs = agreement(&soft.model, &victim, &test.x).unwrap();
        let fh = agreement(&hard.model, &victim, &test.x).unwrap();
        let as_ = accuracy(&soft.model, &test.x, &test.y).unwrap();
        let ah = accuracy(&hard.model, &test.x, &test.y).unwrap();
        let keeps = pp
            .as_ref()
            .map(|p| if p.keeps_top1() { "yes" } else { "no" })
            .unwrap_or("–");
        let _ = writeln!(
            md,
            "| {name} | {keeps} | {:.2}% | {:.2} | {:.3} | {:.2}% | {:.2}% | {:.2}% / {:.2}% |",
            100.0 * acc,
            100.0 * (victim_acc - acc),
            l1,
            100.0 * fs,
            100.0 * fh,
            100.0 * as_,
            100.0 * ah
        );
        eprintln!(
            "[{:>6.1}s] {name}: acc {:.4}, fidelity soft {:.4} label {:.4} ({:.1}s)",
            t0.elapsed().as_secs_f64(),
            acc,
            fs,
            fh,
            ts.elapsed().as_secs_f64()
        );
    }
    std::fs::create_dir_all(out.parent().unwrap_or(std::path::Path::new("."))).ok();
    std::fs::write(&out, &md).expect("write partial table");

    // ---------------- DAWN ----------------
    let rate = 0.005;
    let home = tempfile::tempdir().expect("temp dir");
    let lkey = SecretKey::from_bytes(*b"mamori-defense-bench-ledger-key!");
    let ledger = Ledger::open(&home.path().join("ledger.bin"), &lkey).expect("ledger");
    let dawn = Dawn::new(key.derive("dawn"), rate)
        .unwrap()
        .with_ledger(ledger);
    // Benign cost: a separate DAWN instance (no ledger) over the test set.
    let dawn_test = Dawn::new(key.derive("dawn"), rate).unwrap();
    let test_wm = answer(&victim, &test.x, None, Some(&dawn_test));
    let acc_wm = label_acc(&test_wm, &test.y);
    let changed = test_wm
        .rows()
        .zip(clean_test.rows())
        .filter(|(a, b)| argmax(a) != argmax(b))
        .count();
    let q_wm = answer(&victim, &qx, None, Some(&dawn));
    let records: Vec<LedgerRecord> = dawn.ledger_records();
    let _ = writeln!(md, "\n## DAWN (r = {rate})\n");
    let _ = writeln!(
        md,
        "Benign: {changed} of {} test answers changed ({:.2}%); test accuracy {:.2}% → {:.2}% \
         (cost **{:.2} pts**). The thief's {n_queries} queries produced **{}** ledger records. \
         p-values: exact binomial upper tail against chance 1/(c−1) = 1/9; a suspect is \
         accused when p < 1e-4.\n",
        test.y.len(),
        100.0 * changed as f64 / test.y.len() as f64,
        100.0 * victim_acc,
        100.0 * acc_wm,
        100.0 * (victim_acc - acc_wm),
        records.len()
    );
    let _ = writeln!(
        md,
        "| model | test acc. | fidelity | top1 matches / queried, p | deciding statistic: matches, p |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, m: &NativeModel| {
        let r = verify_model(m, &records, 1e-4).expect("verify");
        let acc = accuracy(m, &test.x, &test.y).unwrap();
        let fid = agreement(m, &victim, &test.x).unwrap();
        let _ = writeln!(
            md,
            "| {name} | {:.2}% | {:.2}% | {} / {}, {:.3e} | {:?}: {}, {:.3e} |",
            100.0 * acc,
            100.0 * fid,
            r.top1.matches,
            r.queried,
            r.top1.p_value,
            r.statistic,
            r.matches,
            r.p_value
        );
        eprintln!(
            "[{:>6.1}s] DAWN {name}: {} / {} p = {:e}",
            t0.elapsed().as_secs_f64(),
            r.matches,
            r.queried,
            r.p_value
        );
        r.p_value
    };
    row(
        &mut md,
        "victim (top1 never matches by construction)",
        &victim,
    );
    let wm_labels: Vec<usize> = q_wm.rows().map(argmax).collect();
    let mut stolen = Vec::new();
    for (name, targets, epochs) in [
        (
            "substitute, prob.-trained",
            Targets::Soft(q_wm.clone()),
            sub_epochs,
        ),
        (
            "substitute, label-trained",
            Targets::Labels(wm_labels.clone()),
            sub_epochs,
        ),
        (
            "substitute, label-trained, 3× epochs",
            Targets::Labels(wm_labels.clone()),
            3 * sub_epochs,
        ),
    ] {
        let s = substitute(&qx, targets, &shape, classes, epochs, 21);
        row(&mut md, name, &s.model);
        stolen.push((name, s));
    }
    // Removal attempts on each stolen substitute.
    let ft_idx: Vec<usize> = (0..2000).collect();
    let ft_x = test.x.select(&ft_idx);
    let ft_y: Vec<usize> = ft_idx.iter().map(|&i| test.y[i]).collect();
    for (name, s) in &stolen {
        let mut net = s.model.network.clone();
        fine_tune(
            &mut net,
            &ft_x,
            &ft_y,
            &TrainConfig {
                epochs: 3,
                batch_size: 64,
                learning_rate: 1e-3,
                seed: 5,
                ..Default::default()
            },
        )
        .unwrap();
        let m = NativeModel {
            network: net,
            card: ModelCard::classifier("bench", "mlp", &shape, classes),
        };
        row(
            &mut md,
            &format!("{name}, fine-tuned 3 epochs on 2,000 clean labelled images"),
            &m,
        );
        let mut net = s.model.network.clone();
        prune_smallest(&mut net, 0.5).unwrap();
        let m = NativeModel {
            network: net,
            card: ModelCard::classifier("bench", "mlp", &shape, classes),
        };
        row(&mut md, &format!("{name}, 50% smallest weights pruned"), &m);
    }
    // Independent models.
    let mut ps = Vec::new();
    for seed in 0..20u64 {
        let idx: Vec<usize> = (0..5000)
            .map(|i| (i * 7 + seed as usize * 1001) % 50_000)
            .collect();
        let sub = train_set.select(&idx);
        let mut net = Network::new(&Arch::Mlp { hidden: vec![32] }, &shape, classes, 100 + seed);
        train(
            &mut net,
            &sub.x,
            &Targets::Labels(sub.y.clone()),
            &TrainConfig {
                epochs: 3,
                batch_size: 64,
                learning_rate: 1e-3,
                seed,
                ..Default::default()
            },
        )
        .unwrap();
        let m = NativeModel {
            network: net,
            card: ModelCard::classifier("bench", "mlp", &shape, classes),
        };
        let r = verify_model(&m, &records, 1e-4).unwrap();
        ps.push((r.p_value, r.matches));
    }
    let min_p = ps.iter().map(|p| p.0).fold(1.0, f64::min);
    let max_m = ps.iter().map(|p| p.1).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "\n20 independent MLPs 784-32-10 (each trained 3 epochs on 5,000 clean images with true \
         labels, different data and seeds): smallest p-value **{min_p:.3}**, most matches {max_m} of {}; \
         all p > 0.01: **{}**.\n",
        records.len(),
        ps.iter().all(|p| p.0 > 0.01)
    );
    let _ = writeln!(md, "Total run time {:.0} s. Queries answered once each; `q_true` (true labels of the thief's images) unused by the thief: victim agreement on them {:.2}%.",
        t0.elapsed().as_secs_f64(),
        100.0 * label_acc(&answer(&victim, &qx, None, None), &q_true));
    std::fs::write(&out, &md).expect("write table");
    eprintln!("wrote {}", out.display());
}
