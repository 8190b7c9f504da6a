//! `mamori demo` (issue #2, first version): prepare the default Fashion-MNIST CNN (train it
//! once, then load it from `<home>/models/fashion-mnist-cnn`) and show predictions.

use crate::global::Global;
use mamori_core::Model;
use mamori_ml::{zoo, MlError};

/// Arguments of `mamori demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of test predictions to show.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
}

/// Runs `mamori demo`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let data_dir = g.data_dir();
    let home = g.home();
    let missing = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{e}\nThe demo needs the Fashion-MNIST dataset in {}: run `mamori data fetch {}` (or pass --data-dir)",
            data_dir.display(),
            zoo::DEFAULT_DATASET
        )
    };
    let split = mamori_data::load(zoo::DEFAULT_DATASET, &data_dir).map_err(|e| missing(&e))?;
    println!(
        "mamori demo: default model {} (cached under {})",
        zoo::DEFAULT_MODEL_NAME,
        zoo::default_model_dir(&home).display()
    );
    let (model, trained) = match zoo::ensure_default_model(&home, &data_dir, true) {
        Ok(m) => m,
        Err(MlError::Data(e)) => return Err(missing(&e)),
        Err(e) => return Err(e.into()),
    };
    let card = model.card();
    println!(
        "{} the model ({}, seed {}, trained in {:.0} s)",
        if trained { "trained" } else { "loaded" },
        card.architecture,
        card.seed.unwrap_or(0),
        card.training_time_s.unwrap_or(0.0)
    );
    let test = &split.test;
    let n = args.n.min(test.len());
    let probs = model.predict(&test.x.slice_rows(0, n))?;
    println!(
        "{:>6}  {:<14} {:>6}  {:<14}",
        "sample", "predicted", "p", "label"
    );
    for (i, row) in probs.rows().enumerate() {
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
        let label = test.y[i];
        println!(
            "{:>6}  {:<14} {:>6.3}  {:<14} {}",
            i,
            card.class_names[pred],
            row[pred],
            test.class_names[label],
            if pred == label { "✓" } else { "✗" }
        );
    }
    let acc = mamori_ml::accuracy(&model, &test.x, &test.y)?;
    println!(
        "test accuracy {acc:.4} on {} Fashion-MNIST test images",
        test.len()
    );
    Ok(())
}
