//! `mamori train` (issue #2): train a zoo model on a dataset and write
//! `DIR/model.safetensors` + `DIR/model.json`.

use crate::global::Global;
use anyhow::Context;
use mamori_ml::zoo;
use std::path::PathBuf;

/// Arguments of `mamori train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset: `fashion-mnist`, `mnist`, `digits`, or a path.
    #[arg(long)]
    pub dataset: String,
    /// Architecture: `logistic` (binary), `softmax`, `mlp` or `cnn`.
    #[arg(long, value_parser = ["logistic", "softmax", "mlp", "cnn"])]
    pub arch: String,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training data (default: per architecture).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// MLP hidden layer sizes, comma-separated (default 256,128).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Mini-batch size (default: per architecture).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate (default: per architecture).
    #[arg(long)]
    pub lr: Option<f32>,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Two classes `A,B` to keep (required by `logistic` on a dataset with more classes).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub classes: Option<Vec<usize>>,
    /// Model name in the card (default `<dataset>-<arch>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Fine-tune from this pre-trained native model directory instead of a fresh
    /// initialisation (same input shape and classes; its architecture is kept).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Supply-chain pin file (`mamori model pin`): the base model's files and every dataset
    /// file read must match their pinned SHA-256, else training stops naming the file.
    #[arg(long)]
    pub pins: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `mamori train`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let arch = zoo::parse_arch(&args.arch, args.hidden.as_deref())?;
    let data_dir = g.data_dir();
    let mut split = mamori_data::load(&args.dataset, &data_dir).with_context(|| {
        format!(
            "loading dataset {} from {} (run `mamori data fetch {}` if it is missing)",
            args.dataset,
            data_dir.display(),
            args.dataset
        )
    })?;
    if let Some(pins) = &args.pins {
        mamori_artifact::check_pinned_digests(pins, &split.train.files)
            .and_then(|()| mamori_artifact::check_pinned_digests(pins, &split.test.files))
            .with_context(|| format!("dataset {} against pins {}", args.dataset, pins.display()))?;
        if let Some(base) = &args.base {
            mamori_artifact::check_pins(pins, std::slice::from_ref(base)).with_context(|| {
                format!(
                    "base model {} against pins {}",
                    base.display(),
                    pins.display()
                )
            })?;
        }
    }
    let mut name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.dataset, args.arch));
    if let Some(c) = &args.classes {
        let [a, b] = c[..] else {
            anyhow::bail!("--classes takes exactly two class ids, e.g. --classes 0,1");
        };
        split.train = zoo::select_two_classes(&split.train, a, b)?;
        split.test = zoo::select_two_classes(&split.test, a, b)?;
        if args.name.is_none() {
            name = format!("{name}-{a}v{b}");
        }
    } else if args.arch == "logistic" && split.train.num_classes != 2 {
        anyhow::bail!(
            "binary logistic regression needs two classes; {} has {} — pick two with --classes A,B",
            args.dataset,
            split.train.num_classes
        );
    }
    let mut cfg = zoo::default_config(&arch);
    cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
    cfg.batch_size = args.batch_size.unwrap_or(cfg.batch_size);
    cfg.learning_rate = args.lr.unwrap_or(cfg.learning_rate);
    cfg.weight_decay = args.weight_decay;
    cfg.seed = args.seed;
    cfg.progress = !args.quiet;
    eprintln!(
        "training {} on {} ({} train / {} test samples): {} epochs, batch {}, lr {}",
        args.arch,
        args.dataset,
        split.train.len(),
        split.test.len(),
        cfg.epochs,
        cfg.batch_size,
        cfg.learning_rate
    );
    let trained = match &args.base {
        None => zoo::train_model(&name, &split, &arch, &cfg)?,
        Some(dir) => {
            let base = mamori_ml::NativeModel::load(dir)
                .with_context(|| format!("loading base model {}", dir.display()))?;
            let mut files = Vec::new();
            for f in [mamori_ml::WEIGHTS_FILE, mamori_ml::CARD_FILE] {
                let p = dir.join(f);
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                files.push(mamori_core::FileDigest {
                    path: p.display().to_string(),
                    sha256: mamori_core::hash::sha256_hex(&bytes),
                });
            }
            eprintln!("fine-tuning from base model {}", dir.display());
            zoo::fine_tune_model(
                &name,
                &split,
                &base,
                &dir.display().to_string(),
                &files,
                &cfg,
            )?
        }
    };
    trained
        .model
        .save(&args.out)
        .with_context(|| format!("writing the model to {}", args.out.display()))?;
    let card = &trained.model.card;
    println!(
        "test accuracy {:.4} ({} samples), training time {:.1} s, model written to {}",
        card.test_accuracy.unwrap_or(f64::NAN),
        split.test.len(),
        trained.report.seconds,
        args.out.display()
    );
    Ok(())
}
