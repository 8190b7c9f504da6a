//! DAWN acceptance measurement (issue #6): substitutes stolen *through the gateway's
//! protection chain* by every extraction attack of the harness, verified against the DAWN
//! ledger.
//!
//! ```text
//! cargo run -p mamori-eval --example dawn_acceptance -- [--data DIR] [--cache DIR] \
//!     [--out DIR] [--budget 10000] [--clean 20] [--hidden H] [--epochs E] [--patience P] \
//!     [--min-gain G] [--only STRATEGY,STRATEGY,..] [--key-seed S] [--benign-only]
//! ```
//!
//! 1. The victim is the evaluation harness's default (the shipped `eval.toml`: a Fashion-MNIST
//!    MLP 784-256-10), trained once and cached by [`mamori_eval::victim::prepare`] in
//!    `--cache` (default `<tmp>/mamori-dawn-acceptance/eval-cache`).
//! 2. It is served through the chain of the built-in `dawn` policy
//!    ([`mamori_gateway::protection`]: DAWN at r = 0.005, no detection, no blocking, full
//!    probabilities), built by [`CellChain::build`] exactly as the evaluation harness builds a
//!    cell (its keys derive from the evaluation seed, or from `--key-seed`: another DAWN key,
//!    fingerprint and set of marks for the same thieves), and reached in-process through [`mamori_gateway::ChainOracle`], one API key per
//!    thief.
//! 3. Benign cost: the evaluation images are answered through the chain (client `benign`).
//!    With `--benign-only` the whole Fashion-MNIST test split (10,000 images) is answered too
//!    (client `benign-full`), one table row is printed (key, marks and cost on both) and the
//!    run stops there.
//! 4. Thieves: every extraction strategy of the harness (`mamori attack extract --strategy`,
//!    [`mamori_attack::extract::STRATEGIES`]), `--budget` queries each, with the harness's
//!    default substitute (the shipped `[substitute]`: MLP 784-256-10 trained until its fit to
//!    the answers plateaus, at most 50 epochs; `--hidden`, `--epochs`, `--patience` and
//!    `--min-gain` change it, `--patience 0` trains exactly `--epochs`), trained on probabilities and, separately,
//!    on labels (label-only attacks once). Attacker data: MNIST training images (Knockoff,
//!    adaptive Knockoff, active learning, transfer with MNIST pre-training), 1,000
//!    Fashion-MNIST training images (JBDA seeds), none (random, Tramèr, label-only). Every
//!    answer a thief receives is recorded, so its substitute's fit to its own answers
//!    (training agreement) is reported beside the marks it reproduces.
//! 5. Each substitute is verified against the ledger records of the marks *its* client
//!    received ([`mamori_defense::verify`], both statistics), then again after fine-tuning on
//!    2,000 clean labelled images for 3 epochs and after pruning 50% of each layer's weights
//!    by magnitude ([`mamori_defense::robustness`]).
//! 6. `--clean` models of the substitute's architecture and schedule, trained independently on
//!    disjoint clean Fashion-MNIST training subsets (true labels, different seeds), are
//!    verified against the whole ledger.
//!
//! Prints a Markdown report on stdout; progress on stderr.

use mamori_attack::extract::{ExtractionAttack, ExtractionContext, STRATEGIES};
use mamori_defense::fingerprint::DEFAULT_VERIFY_QUERIES;
use mamori_defense::robustness::{fine_tune, prune_smallest};
use mamori_defense::verify::{
    distinct_records, holm_log10, verify_model_with, StatisticResult, VerifyResult,
};
use mamori_defense::LedgerRecord;
use mamori_eval::runner::{CellChain, Recorder, Transport};
use mamori_eval::EvalConfig;
use mamori_ml::{NativeModel, Network, Targets, TrainConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// The acceptance threshold of issue #6.
const THRESHOLD: f64 = 1e-9;

struct Args {
    data: Option<PathBuf>,
    cache: PathBuf,
    out: PathBuf,
    budget: u64,
    clean: usize,
    hidden: Option<usize>,
    epochs: Option<usize>,
    patience: Option<usize>,
    min_gain: Option<f32>,
    only: Option<Vec<String>>,
    fingerprint: Option<f32>,
    quiet_share: Option<f64>,
    key_seed: Option<u64>,
    benign_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let base = std::env::temp_dir().join("mamori-dawn-acceptance");
    let mut a = Args {
        data: None,
        cache: base.join("eval-cache"),
        out: base.join("home"),
        budget: 10_000,
        clean: 20,
        hidden: None,
        epochs: None,
        patience: None,
        min_gain: None,
        only: None,
        fingerprint: None,
        quiet_share: None,
        key_seed: None,
        benign_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => a.data = Some(PathBuf::from(value()?)),
            "--cache" => a.cache = PathBuf::from(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--budget" => a.budget = value()?.parse().map_err(|e| format!("--budget: {e}"))?,
            "--clean" => a.clean = value()?.parse().map_err(|e| format!("--clean: {e}"))?,
            "--hidden" => a.hidden = Some(value()?.parse().map_err(|e| format!("--hidden: {e}"))?),
            "--epochs" => a.epochs = Some(value()?.parse().map_err(|e| format!("--epochs: {e}"))?),
            "--patience" => {
                a.patience = Some(value()?.parse().map_err(|e| format!("--patience: {e}"))?)
            }
            "--min-gain" => {
                a.min_gain = Some(value()?.parse().map_err(|e| format!("--min-gain: {e}"))?)
            }
            "--only" => {
                let list: Vec<String> = value()?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|s| !STRATEGIES.contains(&s.as_str())) {
                    return Err(format!("--only: unknown strategy {bad}"));
                }
                a.only = Some(list);
            }
            "--fingerprint" => {
                a.fingerprint = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--fingerprint: {e}"))?,
                )
            }
            "--quiet-share" => {
                a.quiet_share = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--quiet-share: {e}"))?,
                )
            }
            "--key-seed" => {
                a.key_seed = Some(value()?.parse().map_err(|e| format!("--key-seed: {e}"))?)
            }
            "--benign-only" => a.benign_only = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dawn_acceptance: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("dawn_acceptance failed: {e}");
        std::process::exit(1);
    }
}

fn stat(s: &StatisticResult, n: usize) -> String {
    format!("{}/{n}, p = {:.2e}", s.matches, s.p_value)
}

/// One table row; `fit` is the model's agreement with the answers its thief received.
fn row(md: &mut String, what: &str, fit: Option<f64>, fid: f64, acc: f64, r: &VerifyResult) {
    let taw = r
        .top_among_wrong
        .as_ref()
        .map_or("–".to_string(), |s| stat(s, r.queried));
    let rank = r.rank_sum.as_ref().map_or("–".to_string(), |s| {
        format!(
            "{} (exp. {:.0}), p = {:.2e}",
            s.rank_sum, s.expected, s.p_value
        )
    });
    let gap_of = |g: Option<&mamori_defense::verify::LogGapSumResult>| {
        g.map_or("–".to_string(), |s| {
            format!(
                "{} (exp. {:.0}), p = {:.2e}",
                s.log_gap_sum, s.expected, s.p_value
            )
        })
    };
    let gap = gap_of(r.log_gap_sum.as_ref());
    let rgap = gap_of(r.reference_gap_sum.as_ref());
    let cgap = gap_of(r.centred_gap_sum.as_ref());
    let fpr = r.fingerprint.as_ref().map_or("–".to_string(), |f| {
        format!(
            "z = {:.1} / {:.1} (floored), p = {:.2e}",
            f.z,
            f.z_floored.unwrap_or(f64::NAN),
            f.p_value
        )
    });
    let fit = fit.map_or("–".to_string(), |f| format!("{:.2}%", 100.0 * f));
    let _ = writeln!(
        md,
        "| {what} | {fit} | {:.2}% | {:.2}% | {} | {taw} | {rank} | {gap} | {rgap} | {cgap} | {fpr} | {}, p = {:.2e} | {} |",
        100.0 * fid,
        100.0 * acc,
        stat(&r.top1, r.queried),
        r.statistic.name(),
        r.p_value,
        if r.p_value < THRESHOLD {
            "yes"
        } else {
            "**no**"
        }
    );
}

/// One independently trained clean model's verification.
struct Clean {
    acc: f64,
    p_top1: f64,
    p_top_wrong: f64,
    p_rank: f64,
    p_gap: f64,
    p_rgap: f64,
    p_cgap: f64,
    p_fingerprint: f64,
    p: f64,
    top1: usize,
    top_wrong: usize,
}

/// What a verification of the run was of.
#[derive(Clone, Copy, PartialEq)]
enum Screened {
    /// A thief's substitute.
    Substitute,
    /// A substitute fine-tuned or pruned.
    Derived,
    /// An independently trained clean model.
    Clean,
}

/// A thief: row label, strategy, attacker data, auxiliary (pre-training) data, and whether it
/// is run with probabilities preferred and/or with labels.
struct Thief<'a> {
    label: &'static str,
    strategy: &'static str,
    data: Option<&'a mamori_data::Dataset>,
    aux: Option<&'a mamori_data::Dataset>,
    modes: &'static [bool],
}

/// Share of `x` on which `model` gives the recorded label.
fn agreement(model: &NativeModel, x: &mamori_core::Tensor, labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    match mamori_ml::predict_labels(model, x) {
        Ok(p) => p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64,
        Err(_) => 0.0,
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let log = |msg: String| eprintln!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
    let mut cfg = EvalConfig::shipped();
    // The thief (and the clean models): the shipped substitute unless overridden. The victim
    // and its cache key are unaffected.
    if let Some(h) = args.hidden {
        cfg.substitute.arch = mamori_ml::Arch::Mlp { hidden: vec![h] };
    }
    if let Some(e) = args.epochs {
        cfg.substitute.epochs = e;
    }
    if let Some(p) = args.patience {
        cfg.substitute.patience = p;
    }
    if let Some(g) = args.min_gain {
        cfg.substitute.min_gain = g;
    }
    cfg.check("<shipped eval.toml with overrides>")?;
    let stop = cfg.substitute.stop();
    let schedule = match stop {
        Some(p) if p.min_gain == 0.0 => format!(
            "trained until its training agreement stops improving for {} epochs, at most {} \
             epochs",
            p.patience, cfg.substitute.epochs
        ),
        Some(p) => format!(
            "trained until its training agreement gains no more than {} points in {} epochs, \
             at most {} epochs",
            100.0 * p.min_gain,
            p.patience,
            cfg.substitute.epochs
        ),
        None => format!("trained exactly {} epochs", cfg.substitute.epochs),
    };
    let data_dir = mamori_data::resolve_data_dir(args.data.as_deref());
    std::fs::create_dir_all(&args.cache)?;
    let victim = mamori_eval::victim::prepare(&cfg, &data_dir, &args.cache, true)?;
    let v_acc = victim.eval.victim_accuracy();
    log(format!(
        "victim {} ({}), accuracy {:.2}% on {} evaluation images{}",
        victim.model.card.name,
        victim.dir.display(),
        100.0 * v_acc,
        victim.eval.test_y.len(),
        if victim.trained_now {
            " (trained in this run)"
        } else {
            " (cached)"
        }
    ));

    let fashion = mamori_eval::victim::dataset("fashion-mnist", &data_dir)?;
    let mnist = mamori_eval::victim::dataset("mnist", &data_dir)?;
    let mut jbda_idx: Vec<usize> = (0..fashion.train.len()).collect();
    jbda_idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xa77a));
    jbda_idx.truncate(1000);
    let jbda_data = fashion.train.select(&jbda_idx);
    const BOTH: &[bool] = &[true, false];
    const SOFT: &[bool] = &[true];
    const LABELS: &[bool] = &[false];
    let all = [
        Thief {
            label: "random (uniform noise)",
            strategy: "random",
            data: None,
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "random (Gaussian noise)",
            strategy: "random-gaussian",
            data: None,
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "Knockoff (MNIST)",
            strategy: "knockoff",
            data: Some(&mnist.train),
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "adaptive Knockoff (MNIST)",
            strategy: "knockoff-adaptive",
            data: Some(&mnist.train),
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "JBDA (Fashion-MNIST seeds)",
            strategy: "jbda",
            data: Some(&jbda_data),
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "active, least confident (MNIST pool)",
            strategy: "active",
            data: Some(&mnist.train),
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "active, margin (MNIST pool)",
            strategy: "active-margin",
            data: Some(&mnist.train),
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "active, k-center (MNIST pool)",
            strategy: "active-kcenter",
            data: Some(&mnist.train),
            aux: None,
            modes: BOTH,
        },
        // Equation solving needs probabilities; on labels it falls back to label-only
        // retraining, which has its own row.
        Thief {
            label: "Tramèr equation solving (softmax regression)",
            strategy: "tramer",
            data: None,
            aux: None,
            modes: SOFT,
        },
        Thief {
            label: "Tramèr MLP retraining (784-20-10)",
            strategy: "tramer-mlp",
            data: None,
            aux: None,
            modes: BOTH,
        },
        Thief {
            label: "Tramèr label-only adaptive retraining",
            strategy: "label-only",
            data: None,
            aux: None,
            modes: LABELS,
        },
        Thief {
            label: "transfer (MNIST pre-training, MNIST queries)",
            strategy: "transfer",
            data: Some(&mnist.train),
            aux: Some(&mnist.train),
            modes: BOTH,
        },
    ];
    debug_assert_eq!(all.len(), STRATEGIES.len());
    let thieves: Vec<&Thief> = all
        .iter()
        .filter(|t| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|s| s == t.strategy))
        })
        .collect();
    // The `dawn` policy; `--fingerprint` / `--quiet-share` change the fingerprint's strength
    // and the share of the training images' energy its dimensions may carry.
    let mut custom = cfg.matrix.custom.clone();
    if args.fingerprint.is_some() || args.quiet_share.is_some() {
        let eps = args
            .fingerprint
            .unwrap_or(mamori_defense::fingerprint::DEFAULT_EPSILON);
        let mut p = mamori_gateway::protection::builtin("dawn").ok_or("no dawn policy")?;
        if let Some(mamori_gateway::protection::WatermarkSpec::Dawn {
            fingerprint,
            fingerprint_dims,
            ..
        }) = &mut p.watermark
        {
            *fingerprint = eps;
            if let Some(share) = args.quiet_share {
                *fingerprint_dims = mamori_detect::calibration::quiet_dims(&victim.train.x, share);
            }
        }
        custom.insert("dawn".into(), p);
    }
    let client_of =
        |t: &Thief, soft: bool| format!("{}-{}", t.strategy, if soft { "prob" } else { "label" });
    let mut clients = vec!["benign".to_string()];
    if args.benign_only {
        clients.push("benign-full".to_string());
    }
    for t in &thieves {
        for &soft in t.modes {
            clients.push(client_of(t, soft));
        }
    }
    let cell = CellChain::build(
        &victim,
        "dawn",
        &custom,
        &args.out,
        args.key_seed.unwrap_or(cfg.seed),
        &clients,
        Transport::InProcess,
    )?;
    let dawn = cell
        .dawn
        .clone()
        .ok_or("the `dawn` policy built no watermark")?;
    let fp_desc = match dawn.fingerprint() {
        Some(f) => format!(
            "ε = {} on {} quiet input dimensions",
            f.epsilon(),
            f.dims().len()
        ),
        None => "off".to_string(),
    };
    log(format!("fingerprint: {fp_desc}"));
    let records_of = |client: &str| -> Vec<LedgerRecord> {
        let mine = cell.marks.of(client);
        dawn.ledger_records()
            .into_iter()
            .filter(|r| mine.contains(&r.input_sha256))
            .collect()
    };

    // Verification: every statistic, with the fingerprint test against the victim when the
    // policy adds the fingerprint.
    // Every verified model's scores on its marks go to `<out>/verify-scores.jsonl` (one JSON
    // object per line: row, victim labels, watermark labels, the model's probabilities), so
    // other statistics can be computed afterwards without retraining.
    let dump = std::cell::RefCell::new(std::io::BufWriter::new(std::fs::File::create(
        args.out.join("verify-scores.jsonl"),
    )?));
    let ver = |what: &str, m: &dyn mamori_core::Model, records: &[LedgerRecord]| {
        let r = verify_model_with(
            m,
            records,
            1e-4,
            dawn.fingerprint(),
            Some(victim.model.as_ref()),
            DEFAULT_VERIFY_QUERIES,
        )?;
        let marks = distinct_records(records);
        let mut shape = vec![marks.len()];
        shape.extend_from_slice(&m.card().input_shape);
        let x = mamori_core::Tensor::new(
            shape,
            marks.iter().flat_map(|r| r.input.iter().copied()).collect(),
        )
        .map_err(mamori_core::ModelError::from)?;
        let probs = m.predict(&x)?;
        let reference = mamori_core::Model::predict(victim.model.as_ref(), &x)?;
        let line = serde_json::json!({
            "reference": reference.rows().map(|r| r.to_vec()).collect::<Vec<_>>(),
            "row": what,
            "true": marks.iter().map(|r| r.true_label).collect::<Vec<_>>(),
            "given": marks.iter().map(|r| r.given_label).collect::<Vec<_>>(),
            "probs": probs.rows().map(|r| r.to_vec()).collect::<Vec<_>>(),
            "p": r.p_value,
        });
        use std::io::Write as _;
        let mut f = dump.borrow_mut();
        writeln!(f, "{line}")?;
        f.flush()?;
        Ok::<_, Box<dyn std::error::Error>>(r)
    };

    // Benign cost through the chain.
    let mut benign = cell.oracle("benign", 256)?;
    let mut agree_true = 0usize;
    let test_x = &victim.eval.test_x;
    let n_test = test_x.batch_size();
    // Distortion of the answers that keep their label (the fingerprint's cost): mean L1
    // distance to the victim's own answer and mean largest log-probability shift.
    let (mut l1, mut dlog, mut kept) = (0.0f64, 0.0f64, 0usize);
    for start in (0..n_test).step_by(256) {
        let end = (start + 256).min(n_test);
        let xb = test_x.slice_rows(start, end);
        let a = benign.query(&xb)?;
        let clean = mamori_core::Model::predict(victim.model.as_ref(), &xb)?;
        for i in 0..end - start {
            let (p, q) = (a.probs.row(i), clean.row(i));
            if a.labels[i] != clean.argmax_rows()[i] {
                continue;
            }
            kept += 1;
            l1 += p
                .iter()
                .zip(q)
                .map(|(x, y)| f64::from((x - y).abs()))
                .sum::<f64>();
            dlog += p
                .iter()
                .zip(q)
                .filter(|(x, y)| **x > 0.0 && **y > 0.0)
                .map(|(x, y)| (f64::from(*x).ln() - f64::from(*y).ln()).abs())
                .fold(0.0, f64::max);
        }
        agree_true += a
            .labels
            .iter()
            .zip(&victim.eval.test_y[start..end])
            .filter(|(a, b)| a == b)
            .count();
    }
    let (l1, dlog) = (l1 / kept.max(1) as f64, dlog / kept.max(1) as f64);
    let benign_marks = distinct_records(&records_of("benign")).len();
    let chain_acc = agree_true as f64 / n_test as f64;
    log(format!(
        "benign: {benign_marks} of {n_test} answers watermarked, accuracy {:.2}% -> {:.2}%",
        100.0 * v_acc,
        100.0 * chain_acc
    ));
    if args.benign_only {
        // The benign cost alone, also on the whole Fashion-MNIST test split (10,000 images:
        // a fifth of the sampling noise of the evaluation images' estimate), then stop.
        let mut full = cell.oracle("benign-full", 256)?;
        let (x, y) = (&fashion.test.x, &fashion.test.y);
        let n = x.batch_size();
        let (mut victim_right, mut chain_right) = (0usize, 0usize);
        for start in (0..n).step_by(256) {
            let end = (start + 256).min(n);
            let xb = x.slice_rows(start, end);
            let a = full.query(&xb)?;
            let clean = mamori_core::Model::predict(victim.model.as_ref(), &xb)?.argmax_rows();
            for (i, want) in y[start..end].iter().enumerate() {
                victim_right += usize::from(clean[i] == *want);
                chain_right += usize::from(a.labels[i] == *want);
            }
        }
        let marks = distinct_records(&records_of("benign-full")).len();
        println!(
            "| {} | {benign_marks} of {n_test} | {:.2} pts | {marks} of {n} | {:.2}% → {:.2}% | {:.3} pts |",
            args.key_seed.map_or("default".to_string(), |k| k.to_string()),
            100.0 * (v_acc - chain_acc),
            100.0 * victim_right as f64 / n as f64,
            100.0 * chain_right as f64 / n as f64,
            100.0 * (victim_right as f64 - chain_right as f64) / n as f64,
        );
        return Ok(());
    }

    // Clean data for the removal attacks: benign replay images (test split, disjoint from the
    // evaluation and calibration parts), true labels.
    let ft_n = 2000.min(victim.replay.len());
    let ft = victim.replay.head(ft_n);
    let ft_cfg = TrainConfig {
        epochs: 3,
        batch_size: 64,
        learning_rate: 1e-3,
        weight_decay: 0.0,
        seed: cfg.seed,
        progress: false,
    };
    let sub_train = |seed: u64| TrainConfig {
        epochs: cfg.substitute.epochs,
        batch_size: cfg.substitute.batch_size,
        learning_rate: cfg.substitute.learning_rate,
        weight_decay: 0.0,
        seed,
        progress: false,
    };

    let mut md = String::new();
    let _ = writeln!(
        md,
        "| thief / model | fit to its answers | fidelity | test acc. | top1 matches, p | top_among_wrong matches, p | rank sum, p | log-gap sum, p | reference-gap sum, p | centred-gap sum, p | fingerprint | decision | p < 1e-9 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    // Every verification of the run against this ledger, for the family-wise correction:
    // (row, log10 p, kind).
    let mut screened: Vec<(String, f64, Screened)> = Vec::new();
    for t in &thieves {
        for &soft in t.modes {
            let client = client_of(t, soft);
            let attack: Box<dyn ExtractionAttack> = mamori_attack::extract::by_name(t.strategy)?;
            let mut ctx = ExtractionContext::new(args.budget, cfg.substitute.arch.clone());
            ctx.train = sub_train(cfg.seed);
            ctx.stop = stop;
            ctx.prefer_soft = soft;
            ctx.query_data = t.data;
            ctx.aux_data = t.aux;
            ctx.query_batch = cfg.substitute.query_batch;
            ctx.seed = cfg.seed;
            let mut oracle = Recorder::new(cell.oracle(&client, cfg.substitute.query_batch)?);
            let ts = Instant::now();
            let e = attack.extract(&mut oracle, &ctx)?;
            let (hx, hans) = oracle.harvest()?;
            let fit = agreement(&e.substitute, &hx, &hans.labels);
            let records = records_of(&client);
            let m = victim.eval.evaluate(&e.substitute)?;
            let r = ver(&client, &e.substitute, &records)?;
            log(format!(
                "{client}: {} queries, {} marks, soft targets {}, fit {:.2}%, fidelity {:.2}%, \
                 top1 {} top_among_wrong {:?}, rank sum {:?}, fingerprint {:?}, p {:.2e} ({:.0} s) \
                 {:?}",
                e.queries,
                r.queried,
                e.soft_targets,
                100.0 * fit,
                100.0 * m.fidelity,
                r.top1.matches,
                r.top_among_wrong.map(|s| s.matches),
                r.rank_sum.map(|s| (s.rank_sum, s.expected, s.p_value)),
                r.fingerprint.map(|f| (f.z, f.p_value)),
                r.p_value,
                ts.elapsed().as_secs_f64(),
                e.notes
            ));
            let kind = if e.soft_targets { "prob." } else { "label" };
            let name = format!(
                "{}, {kind}-trained, {} queries, {} marks",
                t.label, e.queries, r.queried
            );
            row(
                &mut md,
                &name,
                Some(fit),
                m.fidelity,
                m.substitute_accuracy,
                &r,
            );
            summary.push((name.clone(), r.p_value));
            screened.push((name.clone(), r.log10_p_value, Screened::Substitute));

            // Fine-tuned on clean labelled data.
            let mut net: Network = e.substitute.network.clone();
            fine_tune(&mut net, &ft.x, &ft.y, &ft_cfg)?;
            let tuned = NativeModel {
                network: net,
                card: e.substitute.card.clone(),
            };
            let mt = victim.eval.evaluate(&tuned)?;
            let rt = ver(&format!("{client}, fine-tuned"), &tuned, &records)?;
            row(
                &mut md,
                &format!("↳ fine-tuned 3 epochs on {ft_n} clean labelled images"),
                Some(agreement(&tuned, &hx, &hans.labels)),
                mt.fidelity,
                mt.substitute_accuracy,
                &rt,
            );
            summary.push((format!("{name}, fine-tuned"), rt.p_value));
            screened.push((
                format!("{name}, fine-tuned"),
                rt.log10_p_value,
                Screened::Derived,
            ));

            // 50% magnitude pruning.
            let mut net: Network = e.substitute.network.clone();
            prune_smallest(&mut net, 0.5)?;
            let pruned = NativeModel {
                network: net,
                card: e.substitute.card.clone(),
            };
            let mp = victim.eval.evaluate(&pruned)?;
            let rp = ver(&format!("{client}, pruned"), &pruned, &records)?;
            row(
                &mut md,
                "↳ 50% smallest weights of each layer pruned",
                Some(agreement(&pruned, &hx, &hans.labels)),
                mp.fidelity,
                mp.substitute_accuracy,
                &rp,
            );
            summary.push((format!("{name}, pruned"), rp.p_value));
            screened.push((
                format!("{name}, pruned"),
                rp.log10_p_value,
                Screened::Derived,
            ));
        }
    }
    let all_records = dawn.ledger_records();
    let all_distinct = distinct_records(&all_records).len();
    // The victim itself (never matches top-1 by construction; its second choices are
    // independent of the key).
    let rv = ver("victim", victim.model.as_ref(), &all_records)?;
    row(
        &mut md,
        &format!("victim, whole ledger ({all_distinct} marks)"),
        None,
        1.0,
        v_acc,
        &rv,
    );

    // Independent clean models on disjoint training subsets, trained like the thieves'
    // substitutes (same architecture and schedule), on true labels.
    let per = fashion.train.len() / args.clean.max(1);
    let per = per.min(3000);
    let mut clean = Vec::new();
    let mut clean_epochs = Vec::new();
    for i in 0..args.clean {
        let idx: Vec<usize> = (i * per..(i + 1) * per).collect();
        let d = fashion.train.select(&idx);
        let seed = 1000 + i as u64;
        let mut net = Network::new(
            &cfg.substitute.arch,
            &victim.model.card.input_shape,
            victim.model.card.num_classes(),
            seed,
        );
        let rep = mamori_attack::extract::fit_substitute(
            &mut net,
            &d.x,
            &Targets::Labels(d.y.clone()),
            &sub_train(seed),
            stop.as_ref(),
        )?;
        clean_epochs.push(rep.epoch_loss.len());
        let mut card = victim.model.card.clone();
        card.name = format!("clean-{i}");
        let m = NativeModel { network: net, card };
        let acc = victim.eval.evaluate(&m)?;
        let r = ver(&format!("clean-{i}"), &m, &all_records)?;
        screened.push((format!("clean-{i}"), r.log10_p_value, Screened::Clean));
        clean.push(Clean {
            acc: acc.substitute_accuracy,
            p_top1: r.top1.p_value,
            p_top_wrong: r.top_among_wrong.map_or(1.0, |s| s.p_value),
            p_rank: r.rank_sum.map_or(1.0, |s| s.p_value),
            p_gap: r.log_gap_sum.map_or(1.0, |s| s.p_value),
            p_rgap: r.reference_gap_sum.map_or(1.0, |s| s.p_value),
            p_cgap: r.centred_gap_sum.map_or(1.0, |s| s.p_value),
            p_fingerprint: r.fingerprint.map_or(1.0, |f| f.p_value),
            p: r.p_value,
            top1: r.top1.matches,
            top_wrong: r.top_among_wrong.map_or(0, |s| s.matches),
        });
    }
    log(format!("{} clean models verified", clean.len()));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Victim: `{}` ({}, shipped `eval.toml`), accuracy {:.2}% on {} evaluation images. \
         Served through the `dawn` policy chain (DAWN r = 0.005, full probabilities, no \
         detection), in-process `ChainOracle`, one API key per thief.\n",
        victim.model.card.name,
        victim.model.card.architecture,
        100.0 * v_acc,
        n_test
    );
    let _ = writeln!(
        out,
        "Benign cost: {benign_marks} of {n_test} evaluation answers watermarked; accuracy \
         {:.2}% → {:.2}% (**{:.2} pts**). Linear fingerprint: {fp_desc}; the {kept} unmarked \
         answers differ from the victim's by {l1:.4} in L1 on average, and their largest \
         log-probability shift is {dlog:.3} on average.\n",
        100.0 * v_acc,
        100.0 * chain_acc,
        100.0 * (v_acc - chain_acc)
    );
    let verify_queries = DEFAULT_VERIFY_QUERIES;
    let _ = writeln!(
        out,
        "Thieves: the harness's attacks, budget {} queries each, substitute {:?} {schedule} \
         ({}); each verified against the marks its own client received. \"Fit\" is the \
         model's agreement with every answer its thief received. Chance per mark 1/(c−1) = \
         1/9 for both counts; the rank sum is Σ (rank − 1) of the watermark label among the 9 \
         wrong labels (expected 4 per mark); the log-gap sum is Σ of the watermark label's \
         log-probability gap below the suspect's best wrong label, in eighths of a nat capped \
         at 8 nats (exact null: each mark's gap uniform over its 9 wrong labels' gaps); the \
         reference-gap sum is the same on the suspect's log-lift over the victim (both \
         probabilities floored at 1e-3); the centred-gap sum is the same on the suspect's \
         log-probabilities centred per label on their mean over the marks verified (floored at \
         1e-6); the fingerprint test ({verify_queries} keyed uniform inputs, \
         the victim as reference; two statistics, log-probabilities clamped at 1e-30 and floored \
         at 1e-3, p = twice the smaller tail) checks the keyed linear fingerprint the policy adds to every \
         answer; the decision is the one the suspect's answers allow (probabilities and the \
         victim as reference → `log_gap_sum_or_reference_gap_sum_or_centred_gap_sum_or_fingerprint`: \
         weighted Bonferroni, min(p_log_gap_sum / 0.33, p_reference_gap_sum / 0.33, \
         p_centred_gap_sum / 0.33, p_fingerprint / 0.01)).\n",
        args.budget,
        cfg.substitute.arch,
        if args.hidden.is_some()
            || args.epochs.is_some()
            || args.patience.is_some()
            || args.min_gain.is_some()
        {
            "overridden by --hidden/--epochs/--patience/--min-gain"
        } else {
            "the shipped `[substitute]`"
        }
    );
    out.push_str(&md);
    let n_ok = summary.iter().filter(|(_, p)| *p < THRESHOLD).count();
    let _ = writeln!(
        out,
        "\nDeciding p < 1e-9: {n_ok} of {} rows (substitutes and their fine-tuned / pruned \
         versions).",
        summary.len()
    );
    for (name, p) in summary.iter().filter(|(_, p)| *p >= THRESHOLD) {
        let _ = writeln!(out, "- not below 1e-9: {name}: p = {p:.2e}");
    }
    let min = |f: fn(&Clean) -> f64| clean.iter().map(f).fold(1.0f64, f64::min);
    let _ = writeln!(
        out,
        "\n{} independent models ({:?}, {schedule}: {}–{} epochs run; each on {per} disjoint \
         clean Fashion-MNIST training images with true labels, seeds 1000–{}; test accuracy \
         {:.1}–{:.1}%) verified against the whole ledger ({all_distinct} distinct marks): \
         smallest p top1 **{:.3}**, top_among_wrong **{:.3}**, rank sum **{:.3}**, \
         log-gap sum **{:.3}**, reference-gap sum **{:.3}**, centred-gap sum **{:.3}**, \
         fingerprint **{:.3}**; most \
         matches top1 {}, top_among_wrong {}; all decision p > 0.01: **{}** ({} of {} at p ≤ \
         0.01). Decision p-values, smallest first: {}.",
        clean.len(),
        cfg.substitute.arch,
        clean_epochs.iter().min().unwrap_or(&0),
        clean_epochs.iter().max().unwrap_or(&0),
        999 + clean.len(),
        100.0 * clean.iter().map(|c| c.acc).fold(1.0f64, f64::min),
        100.0 * clean.iter().map(|c| c.acc).fold(0.0f64, f64::max),
        min(|c| c.p_top1),
        min(|c| c.p_top_wrong),
        min(|c| c.p_rank),
        min(|c| c.p_gap),
        min(|c| c.p_rgap),
        min(|c| c.p_cgap),
        min(|c| c.p_fingerprint),
        clean.iter().map(|c| c.top1).max().unwrap_or(0),
        clean.iter().map(|c| c.top_wrong).max().unwrap_or(0),
        clean.iter().all(|c| c.p > 0.01),
        clean.iter().filter(|c| c.p <= 0.01).count(),
        clean.len(),
        {
            let mut ps: Vec<f64> = clean.iter().map(|c| c.p).collect();
            ps.sort_by(f64::total_cmp);
            ps.iter()
                .map(|p| format!("{p:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    // Family-wise: Holm over every suspect this run screened against the ledger.
    let adjusted = holm_log10(&screened.iter().map(|s| s.1).collect::<Vec<_>>());
    let of = |k: Screened| {
        screened
            .iter()
            .zip(&adjusted)
            .filter(move |(s, _)| s.2 == k)
            .map(|(s, a)| (s.0.as_str(), *a))
    };
    let below = |k: Screened| of(k).filter(|(_, a)| *a < THRESHOLD.log10()).count();
    let count = |k: Screened| of(k).count();
    let clean_min = of(Screened::Clean).map(|(_, a)| a).fold(0.0f64, f64::min);
    let weakest = of(Screened::Substitute)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(String::new(), |(n, a)| {
            format!("{n}: {:.2e}", 10f64.powf(a))
        });
    let _ = writeln!(
        out,
        "\nFamily-wise, as an owner screening these {} suspects against the ledger together \
         (`mamori watermark verify --family N` is the Bonferroni form; Holm's step-down \
         adjustment here, `mamori_defense::verify::holm_log10`): substitutes below 1e-9 \
         **{} of {}** (weakest {weakest}); fine-tuned / pruned copies below 1e-9 {} of {}; \
         clean models above 0.01 **{} of {}** (smallest adjusted p {:.3}).",
        screened.len(),
        below(Screened::Substitute),
        count(Screened::Substitute),
        below(Screened::Derived),
        count(Screened::Derived),
        of(Screened::Clean).filter(|(_, a)| *a > -2.0).count(),
        count(Screened::Clean),
        10f64.powf(clean_min),
    );
    let _ = writeln!(
        out,
        "\nTotal {:.0} s (`cargo run{} -p mamori-eval --example dawn_acceptance -- {}`).",
        t0.elapsed().as_secs_f64(),
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        },
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("{out}");
    cell.shutdown()?;
    Ok(())
}
