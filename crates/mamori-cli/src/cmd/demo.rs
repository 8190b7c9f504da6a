//! `mamori demo` (issues #2, #3, #7): the whole story on embedded defaults — prepare the
//! default Fashion-MNIST model, start the guarded gateway on 127.0.0.1, run benign clients and
//! an extraction attacker against it over HTTP, and print what protection did and cost.

use crate::global::Global;
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `mamori demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the report (default: `<home>/demo-report`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of every random choice (same seed, same numbers).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// A shorter run (smaller budgets), for a first look.
    #[arg(long)]
    pub quick: bool,
}

/// Runs `mamori demo`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let home = g.home();
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the home directory {}", home.display()))?;
    let data_dir = g.data_dir();
    if mamori_data::load("fashion-mnist", &data_dir).is_err() {
        anyhow::bail!(
            "the demo needs the Fashion-MNIST dataset in {}: run `mamori data fetch fashion-mnist` (or pass --data-dir)",
            data_dir.display()
        );
    }
    let out = args
        .out
        .unwrap_or_else(|| mamori_eval::demo::default_out_dir(&home));
    // The demo prints its outcome and where the report is.
    mamori_eval::demo::run(&home, Some(&data_dir), &out, args.seed, args.quick)?;
    Ok(())
}
