//! `mamori predict` (issue #2): run a model on test samples and print predictions vs labels.

use crate::global::Global;
use anyhow::Context;
use mamori_core::Model;
use std::path::{Path, PathBuf};

/// Arguments of `mamori predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a native model directory (`model.safetensors` + `model.json`) or an `.onnx` file.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset whose test split is used: `fashion-mnist`, `mnist`, `digits`, or a path.
    #[arg(long)]
    pub dataset: String,
    /// Number of samples to print.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    /// First test sample to print.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Also report accuracy on the whole test split.
    #[arg(long)]
    pub all: bool,
}

/// Loads a model: native directories directly, anything else through `load_model`.
pub fn load_any(path: &Path) -> anyhow::Result<Box<dyn Model>> {
    if path.is_dir() {
        let m = mamori_ml::NativeModel::load(path)?;
        Ok(Box::new(m))
    } else {
        Ok(mamori_ml::load_model(path)?)
    }
}

/// Runs `mamori predict`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let model =
        load_any(&args.model).with_context(|| format!("loading model {}", args.model.display()))?;
    let data_dir = g.data_dir();
    let split = mamori_data::load(&args.dataset, &data_dir).with_context(|| {
        format!(
            "loading dataset {} from {} (run `mamori data fetch {}` if it is missing)",
            args.dataset,
            data_dir.display(),
            args.dataset
        )
    })?;
    let test = &split.test;
    let card = model.card();
    if test.num_classes != card.num_classes() {
        anyhow::bail!(
            "model {} has {} classes, dataset {} has {}",
            card.name,
            card.num_classes(),
            args.dataset,
            test.num_classes
        );
    }
    let start = args.offset.min(test.len());
    let end = (start + args.n).min(test.len());
    let x = test.x.slice_rows(start, end);
    let probs = model.predict(&x)?;
    let names = &card.class_names;
    println!(
        "model {} ({}) on {} test samples {start}..{end}",
        card.name, card.architecture, args.dataset
    );
    println!(
        "{:>6}  {:<20} {:>7}  {:<20} ok",
        "sample", "predicted", "p", "label"
    );
    let mut hits = 0;
    for (i, row) in probs.rows().enumerate() {
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
        let label = test.y[start + i];
        hits += usize::from(pred == label);
        println!(
            "{:>6}  {:<20} {:>7.4}  {:<20} {}",
            start + i,
            names.get(pred).map_or("?", String::as_str),
            row[pred],
            test.class_names.get(label).map_or("?", String::as_str),
            if pred == label { "✓" } else { "✗" }
        );
    }
    println!("{hits}/{} correct", end - start);
    if args.all {
        let acc = mamori_ml::accuracy(model.as_ref(), &test.x, &test.y)?;
        println!("test accuracy {acc:.4} on {} samples", test.len());
    }
    Ok(())
}
