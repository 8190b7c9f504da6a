//! `mamori attack` (issue #4): extraction, model inversion and membership inference against a
//! local model or any Open Inference Protocol v2 endpoint.

use crate::global::Global;
use anyhow::{bail, Context, Result};
use mamori_attack::extract::{by_name, ExtractionContext, STRATEGIES};
use mamori_attack::inversion::{mi_face, MiFaceConfig};
use mamori_attack::membership::{
    GlobalThreshold, Lira, MembershipAttack, MembershipContext, MembershipResult, MembershipSplit,
    NetTrainer, ShadowModels,
};
use mamori_attack::metrics::{CurvePoint, EvalSet};
use mamori_attack::report;
use mamori_attack::{HttpOracle, HttpOracleConfig, LocalOracle, MultiKeyOracle};
use mamori_core::{Disclosure, Model, Oracle};
use mamori_ml::{Arch, Plateau, TrainConfig};
use std::path::{Path, PathBuf};

/// Arguments of `mamori attack`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Steal a model: query it with a strategy and train a substitute.
    Extract(ExtractArgs),
    /// MI-Face model inversion: reconstruct class prototypes.
    Invert(InvertArgs),
    /// Membership inference (global threshold, shadow models, LiRA) on a victim trained here.
    Membership(MembershipArgs),
}

/// Where the victim is and how it answers.
#[derive(clap::Args, Debug, Clone)]
struct TargetArgs {
    /// A native model directory / .onnx file, or http(s)://host:port/v2/models/NAME.
    #[arg(long)]
    target: String,
    /// API key(s); several keys split the traffic round-robin (one identity per key).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// For a local target: what answers disclose (`probabilities`, `top-k:N`, `label`).
    #[arg(long, default_value = "probabilities")]
    disclosure: String,
    /// Samples per request.
    #[arg(long, default_value_t = 256)]
    query_batch: usize,
}

/// Substitute architecture and training.
#[derive(clap::Args, Debug, Clone)]
struct SubArgs {
    /// Substitute architecture: `logistic`, `softmax`, `mlp[:H1,H2,..]`, `cnn`.
    #[arg(long, default_value = "mlp:200,200")]
    arch: String,
    /// Substitute training epochs: the cap when --patience > 0, else the exact count.
    #[arg(long, default_value_t = mamori_attack::extract::SUBSTITUTE_MAX_EPOCHS)]
    epochs: usize,
    /// Train the substitute until its fit to the answers plateaus: stop after this many epochs
    /// without a gain of more than --min-gain in training agreement (0: exactly --epochs).
    #[arg(long, default_value_t = Plateau::default().patience)]
    patience: usize,
    /// Gain in training agreement (a fraction) that counts as progress for --patience.
    #[arg(long, default_value_t = Plateau::default().min_gain)]
    min_gain: f32,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct ExtractArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    sub: SubArgs,
    /// Strategy (see `--strategy help`).
    #[arg(long)]
    strategy: String,
    /// Query budget (samples).
    #[arg(long)]
    budget: Option<u64>,
    /// Several budgets for a curve, comma separated (e.g. 1000,5000,20000).
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<u64>,
    /// Attacker data (dataset name or path) for knockoff / jbda / active / transfer.
    #[arg(long)]
    query_data: Option<String>,
    /// Which split of the query data the attacker uses.
    #[arg(long, default_value = "train", value_parser = ["train", "test"])]
    query_split: String,
    /// Pre-training dataset for `transfer`.
    #[arg(long)]
    pretrain_data: Option<String>,
    /// Dataset whose test split measures accuracy and fidelity (default: the victim's).
    #[arg(long)]
    eval_data: Option<String>,
    /// Uniform random inputs for the second fidelity measure.
    #[arg(long, default_value_t = 1000)]
    uniform_eval: usize,
    /// Train on labels even when probabilities are disclosed.
    #[arg(long)]
    labels_only: bool,
    /// JBDA seed count.
    #[arg(long, default_value_t = 150)]
    jbda_seeds: usize,
    /// JBDA rounds ρ.
    #[arg(long, default_value_t = 6)]
    jbda_rounds: usize,
    /// Save the substitute (native model directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown report with PNG plots into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct InvertArgs {
    /// Victim: native model directory (white-box), or any target with --steal.
    #[arg(long)]
    target: String,
    /// API key(s) for an HTTP target.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Black-box: first steal a substitute with this strategy, then invert the substitute.
    #[arg(long)]
    steal: Option<String>,
    /// Budget of the extraction (with --steal).
    #[arg(long, default_value_t = 10_000)]
    budget: u64,
    /// Attacker data for the extraction (with --steal).
    #[arg(long)]
    query_data: Option<String>,
    #[command(flatten)]
    sub: SubArgs,
    /// Classes to reconstruct (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// Maximum iterations α.
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Gradient step λ.
    #[arg(long, default_value_t = 0.1)]
    step: f32,
    /// Output PNG grid.
    #[arg(long, default_value = "inversion.png")]
    out: PathBuf,
    /// Write costs as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct MembershipArgs {
    /// Dataset the victim is trained on (train split).
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Members (the victim trains on these; as many non-members are drawn).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    #[command(flatten)]
    sub: SubArgs,
    /// Victim (and shadow) training epochs — many on a small set makes an overfit victim.
    #[arg(long, default_value_t = 30)]
    victim_epochs: usize,
    /// Shadow models.
    #[arg(long, default_value_t = 8)]
    shadows: usize,
    /// LiRA with a per-example variance instead of the fixed (global) one.
    #[arg(long)]
    per_example_variance: bool,
    /// Attacks to run.
    #[arg(long, value_delimiter = ',', default_value = "threshold,shadow,lira")]
    attacks: Vec<String>,
    /// Markdown report + ROC plot directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Runs `mamori attack`.
pub fn run(args: Args, g: &Global) -> Result<()> {
    match args.cmd {
        Sub::Extract(a) => extract(a, g),
        Sub::Invert(a) => invert(a, g),
        Sub::Membership(a) => membership(a, g),
    }
}

fn parse_arch(s: &str) -> Result<Arch> {
    Ok(match s {
        "logistic" => Arch::Logistic,
        "softmax" => Arch::Softmax,
        "cnn" => Arch::Cnn,
        "mlp" => Arch::Mlp {
            hidden: vec![200, 200],
        },
        m if m.starts_with("mlp:") => Arch::Mlp {
            hidden: m[4..]
                .split(',')
                .map(|h| h.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--arch {m}: hidden sizes must be integers"))?,
        },
        other => bail!("--arch {other}: use logistic, softmax, mlp[:H1,H2,..] or cnn"),
    })
}

fn parse_disclosure(s: &str) -> Result<Disclosure> {
    Ok(match s {
        "probabilities" | "probs" => Disclosure::Probabilities,
        "label" | "labels" => Disclosure::Label,
        k if k.starts_with("top-k:") => Disclosure::TopK(
            k[6..]
                .parse()
                .with_context(|| format!("--disclosure {k}: k must be an integer"))?,
        ),
        other => bail!("--disclosure {other}: use probabilities, top-k:N or label"),
    })
}

fn train_config(s: &SubArgs) -> TrainConfig {
    TrainConfig {
        epochs: s.epochs,
        batch_size: s.batch_size,
        learning_rate: s.lr,
        weight_decay: 0.0,
        seed: s.seed,
        progress: false,
    }
}

/// The substitute's stopping rule (`None`: exactly `--epochs`).
fn stop_rule(s: &SubArgs) -> Result<Option<Plateau>> {
    if s.patience == 0 {
        return Ok(None);
    }
    let p = Plateau {
        patience: s.patience,
        min_gain: s.min_gain,
    };
    p.check().context("--min-gain")?;
    Ok(Some(p))
}

fn is_url(t: &str) -> bool {
    t.starts_with("http://") || t.starts_with("https://")
}

/// The attack oracle and, for a local target, the victim model itself (for evaluation).
type OracleAndVictim = (Box<dyn Oracle>, Option<Box<dyn Model>>);

/// Builds the attack oracle with `budget`, and returns the local victim when there is one.
fn make_oracle(t: &TargetArgs, budget: Option<u64>) -> Result<OracleAndVictim> {
    if is_url(&t.target) {
        let keys: Vec<Option<String>> = if t.api_keys.is_empty() {
            vec![None]
        } else {
            t.api_keys.iter().cloned().map(Some).collect()
        };
        let mut oracles: Vec<Box<dyn Oracle>> = Vec::new();
        for k in keys {
            let mut cfg = HttpOracleConfig::from_url(&t.target, None)?;
            cfg.api_key = k;
            cfg.batch_size = t.query_batch;
            oracles.push(Box::new(
                HttpOracle::connect(cfg).with_context(|| format!("connecting to {}", t.target))?,
            ));
        }
        let o: Box<dyn Oracle> = if oracles.len() == 1 {
            let mut it = oracles.into_iter();
            let one = it.next().expect("one oracle");
            Box::new(MultiKeyOracle::new(vec![one], t.query_batch)?.with_budget(budget))
        } else {
            Box::new(MultiKeyOracle::new(oracles, t.query_batch)?.with_budget(budget))
        };
        Ok((o, None))
    } else {
        let path = Path::new(&t.target);
        let load = || load_local(path);
        let d = parse_disclosure(&t.disclosure)?;
        let o = LocalOracle::new(load()?)
            .with_disclosure(d)
            .with_budget(budget);
        Ok((Box::new(o), Some(load()?)))
    }
}

/// A native model directory, or any other file `mamori_ml::load_model` knows (ONNX).
fn load_local(path: &Path) -> Result<Box<dyn Model>> {
    if path.is_dir() {
        Ok(Box::new(mamori_ml::NativeModel::load(path).with_context(
            || format!("loading model {}", path.display()),
        )?))
    } else {
        mamori_ml::load_model(path).with_context(|| format!("loading model {}", path.display()))
    }
}

fn load_split(name: &str, g: &Global) -> Result<mamori_data::Split> {
    mamori_data::load(name, &g.data_dir()).with_context(|| format!("loading dataset {name}"))
}

fn extract(a: ExtractArgs, g: &Global) -> Result<()> {
    if a.strategy == "help" {
        for s in STRATEGIES {
            let i = by_name(s)?.info();
            println!(
                "{s:18} needs {:?}; {}\n{:18} {}",
                i.needs, i.paper, "", i.fallback
            );
        }
        return Ok(());
    }
    let attack = by_name(&a.strategy)?;
    let mut budgets = a.budgets.clone();
    if let Some(b) = a.budget {
        budgets.insert(0, b);
    }
    if budgets.is_empty() {
        bail!("give --budget N (or --budgets N1,N2,..)");
    }
    let query = match &a.query_data {
        Some(q) => Some(load_split(q, g)?),
        None => None,
    };
    let query_ds = query.as_ref().map(|s| {
        if a.query_split == "test" {
            &s.test
        } else {
            &s.train
        }
    });
    let pretrain = match &a.pretrain_data {
        Some(q) => Some(load_split(q, g)?),
        None => None,
    };
    let (_, victim) = make_oracle(&a.target, None)?;
    let eval_name = match (&a.eval_data, &victim) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(v)) => Some(v.card().dataset.name.clone()).filter(|n| !n.is_empty()),
        (None, None) => None,
    };
    let eval = match &eval_name {
        Some(n) => {
            let split = load_split(n, g)?;
            Some(match &victim {
                Some(v) => EvalSet::from_model(
                    v.as_ref(),
                    &split.test,
                    a.uniform_eval,
                    [0.0, 1.0],
                    a.sub.seed,
                )?,
                None => {
                    // Labels from the endpoint itself: a separate, unbudgeted identity.
                    let (mut o, _) = make_oracle(&a.target, None)?;
                    EvalSet::from_oracle(
                        o.as_mut(),
                        &split.test,
                        a.uniform_eval,
                        [0.0, 1.0],
                        a.sub.seed,
                    )?
                }
            })
        }
        None => {
            eprintln!(
                "note: no --eval-data and the victim's dataset is unknown: reporting queries only"
            );
            None
        }
    };
    let mut ctx = ExtractionContext::new(budgets[0], parse_arch(&a.sub.arch)?);
    ctx.train = train_config(&a.sub);
    ctx.stop = stop_rule(&a.sub)?;
    ctx.prefer_soft = !a.labels_only;
    ctx.query_data = query_ds;
    ctx.aux_data = pretrain.as_ref().map(|s| &s.train);
    ctx.query_batch = a.target.query_batch;
    ctx.seed = a.sub.seed;
    ctx.progress = !a.quiet;
    let attack: Box<dyn mamori_attack::ExtractionAttack> = if a.strategy == "jbda" {
        Box::new(mamori_attack::extract::Jbda {
            seeds: a.jbda_seeds,
            rounds: a.jbda_rounds,
            ..Default::default()
        })
    } else {
        attack
    };
    let mut points = Vec::new();
    let mut last = None;
    for &b in &budgets {
        let (mut oracle, _) = make_oracle(&a.target, Some(b))?;
        ctx.budget = b;
        let e = attack.extract(oracle.as_mut(), &ctx)?;
        let m = match &eval {
            Some(ev) => Some(ev.evaluate(&e.substitute)?),
            None => None,
        };
        let p = CurvePoint::new(
            attack.info().name,
            b,
            &e,
            m.unwrap_or(mamori_attack::SubstituteMetrics {
                substitute_accuracy: f64::NAN,
                fidelity: f64::NAN,
                fidelity_uniform: f64::NAN,
            }),
        );
        eprintln!(
            "{}: budget {} → {} queries, accuracy {:.4}, fidelity {:.4} (uniform {:.4}), {:.1}s",
            p.strategy,
            b,
            p.queries,
            p.substitute_accuracy,
            p.fidelity,
            p.fidelity_uniform,
            p.seconds
        );
        for n in &e.notes {
            eprintln!("  {n}");
        }
        points.push(p);
        last = Some(e);
    }
    if let (Some(dir), Some(e)) = (&a.out, &last) {
        let mut sub = e.substitute.clone();
        if let Some(p) = points.last() {
            if p.substitute_accuracy.is_finite() {
                sub.card.test_accuracy = Some(p.substitute_accuracy);
            }
        }
        sub.card.training_time_s = Some(e.seconds);
        sub.save(dir)
            .with_context(|| format!("saving substitute to {}", dir.display()))?;
        eprintln!("substitute saved to {}", dir.display());
    }
    let victim_accuracy = eval.as_ref().map(|e| e.victim_accuracy());
    if let Some(j) = &a.json {
        let v = if points.len() == 1 {
            let mut v = serde_json::to_value(&points[0])?;
            v["victim_accuracy"] = serde_json::json!(victim_accuracy);
            v
        } else {
            serde_json::json!({"victim_accuracy": victim_accuracy, "points": points})
        };
        std::fs::write(j, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    if let Some(dir) = &a.report {
        let cmd: Vec<String> = std::env::args().collect();
        report::write_extraction_report(
            dir,
            &format!("Extraction of {} ({})", a.target.target, a.strategy),
            victim_accuracy,
            &points,
            &cmd.join(" "),
        )?;
        eprintln!("report written to {}", dir.display());
    }
    if a.json.is_none() {
        println!("{}", serde_json::to_string_pretty(&points)?);
    }
    Ok(())
}

fn invert(a: InvertArgs, g: &Global) -> Result<()> {
    let t = TargetArgs {
        target: a.target.clone(),
        api_keys: a.api_keys.clone(),
        disclosure: "probabilities".into(),
        query_batch: 256,
    };
    let model: Box<dyn Model> = match &a.steal {
        None => {
            if is_url(&a.target) {
                bail!("white-box inversion needs a local model; use --steal STRATEGY for an HTTP target");
            }
            load_local(Path::new(&a.target))?
        }
        Some(s) => {
            let q = match &a.query_data {
                Some(q) => Some(load_split(q, g)?),
                None => None,
            };
            let (mut oracle, _) = make_oracle(&t, Some(a.budget))?;
            let mut ctx = ExtractionContext::new(a.budget, parse_arch(&a.sub.arch)?);
            ctx.train = train_config(&a.sub);
            ctx.stop = stop_rule(&a.sub)?;
            ctx.query_data = q.as_ref().map(|s| &s.train);
            ctx.seed = a.sub.seed;
            ctx.progress = true;
            let e = by_name(s)?.extract(oracle.as_mut(), &ctx)?;
            eprintln!("stole a substitute with {} queries ({s})", e.queries);
            Box::new(e.substitute)
        }
    };
    let classes: Vec<usize> = if a.classes.is_empty() {
        (0..model.card().num_classes()).collect()
    } else {
        a.classes.clone()
    };
    if let Some(c) = classes.iter().find(|c| **c >= model.card().num_classes()) {
        bail!(
            "--classes: class {c} out of range 0..{}",
            model.card().num_classes()
        );
    }
    let cfg = MiFaceConfig {
        max_iters: a.iters,
        step: a.step,
        ..Default::default()
    };
    let inv = mi_face(model.as_ref(), &classes, &cfg)?;
    let shape = &model.card().input_shape;
    let (h, w) = match shape.as_slice() {
        [_, h, w] => (*h, *w),
        [d] => {
            let s = (*d as f64).sqrt() as usize;
            if s * s != *d {
                bail!("cannot draw inputs of shape {shape:?} as images");
            }
            (s, s)
        }
        _ => bail!("cannot draw inputs of shape {shape:?} as images"),
    };
    let images: Vec<Vec<f32>> = inv.iter().map(|i| i.image.clone()).collect();
    report::save_image_grid(&a.out, &images, h, w, classes.len().min(10), 4)?;
    for i in &inv {
        eprintln!(
            "class {}: cost 1 − p = {:.5} after {} iterations",
            i.class, i.cost, i.iterations
        );
    }
    eprintln!("prototypes written to {}", a.out.display());
    if let Some(j) = &a.json {
        let v: Vec<_> = inv
            .iter()
            .map(|i| serde_json::json!({"class": i.class, "cost": i.cost, "iterations": i.iterations}))
            .collect();
        std::fs::write(j, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

fn membership(a: MembershipArgs, g: &Global) -> Result<()> {
    let split = load_split(&a.data, g)?;
    let ms = MembershipSplit::new(&split.train, a.members, a.sub.seed)?;
    let arch = parse_arch(&a.sub.arch)?;
    let mut cfg = train_config(&a.sub);
    cfg.epochs = a.victim_epochs;
    let mut trainer = NetTrainer { arch, cfg };
    use mamori_attack::membership::ShadowTrainer;
    eprintln!(
        "training the victim on {} members ({} epochs)",
        a.members, a.victim_epochs
    );
    let victim = trainer.train(&ms.train, a.sub.seed)?;
    let train_acc = mamori_ml::accuracy(victim.as_ref(), &ms.train.x, &ms.train.y)?;
    let test_acc = mamori_ml::accuracy(victim.as_ref(), &split.test.x, &split.test.y)?;
    eprintln!("victim: train accuracy {train_acc:.4}, test accuracy {test_acc:.4}");
    let mut results = Vec::new();
    for name in &a.attacks {
        let attack: Box<dyn MembershipAttack> = match name.as_str() {
            "threshold" => Box::new(GlobalThreshold),
            "shadow" => Box::new(ShadowModels {
                shadows: a.shadows.clamp(1, 4),
                per_shadow: 0,
            }),
            "lira" => Box::new(Lira {
                shadows: a.shadows,
                fixed_variance: !a.per_example_variance,
            }),
            other => bail!("--attacks: unknown '{other}' (threshold, shadow, lira)"),
        };
        let mut ctx = MembershipContext {
            target: victim.as_ref(),
            candidates: &ms.candidates,
            population: Some(&ms.population),
            trainer: &mut trainer,
            seed: a.sub.seed,
            progress: !a.quiet,
        };
        let s = attack.scores(&mut ctx)?;
        let r = MembershipResult::new(attack.name(), &s, &ms.members)?;
        eprintln!(
            "{}: AUC {:.4}, TPR@0.1%FPR {:.4}, TPR@1%FPR {:.4}",
            r.attack, r.auc, r.tpr_at_0_1pct_fpr, r.tpr_at_1pct_fpr
        );
        results.push(r);
    }
    if let Some(dir) = &a.report {
        let cmd: Vec<String> = std::env::args().collect();
        report::write_membership_report(
            dir,
            &format!("Membership inference on {} ({} members)", a.data, a.members),
            &results,
            &cmd.join(" "),
        )?;
    }
    let v = serde_json::json!({
        "victim_train_accuracy": train_acc,
        "victim_test_accuracy": test_acc,
        "results": results,
    });
    match &a.json {
        Some(j) => std::fs::write(j, serde_json::to_string_pretty(&v)?)?,
        None => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(patience: usize, min_gain: f32) -> SubArgs {
        SubArgs {
            arch: "mlp:8".into(),
            epochs: 5,
            patience,
            min_gain,
            lr: 1e-3,
            batch_size: 16,
            seed: 0,
        }
    }

    #[test]
    fn the_stopping_rule_follows_patience_and_refuses_a_bad_min_gain() {
        assert_eq!(stop_rule(&sub(0, 0.5)).unwrap(), None);
        assert_eq!(
            stop_rule(&sub(3, 0.0)).unwrap(),
            Some(Plateau {
                patience: 3,
                min_gain: 0.0
            })
        );
        for bad in [-0.1, 1.0, f32::NAN] {
            let e = format!("{:#}", stop_rule(&sub(3, bad)).unwrap_err());
            assert!(e.contains("--min-gain") && e.contains("min_gain"), "{e}");
        }
    }
}
