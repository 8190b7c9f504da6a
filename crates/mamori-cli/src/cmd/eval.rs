//! `mamori eval` (issue #7): attacks × protection policies through the gateway's chain, with
//! benign clients beside each attacker; writes Markdown, HTML and JSON reports.

use crate::global::Global;
use anyhow::Context;
use mamori_eval::{EvalConfig, RunOptions, Transport};
use std::path::PathBuf;

/// Arguments of `mamori eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Evaluation configuration (TOML); default: the shipped default
    /// (`crates/mamori-eval/eval.toml`, embedded).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Report directory.
    #[arg(long, default_value = "eval-report")]
    pub out: PathBuf,
    /// Go through a live gateway over HTTP on 127.0.0.1:0 instead of the in-process chain.
    #[arg(long)]
    pub http: bool,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `mamori eval`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => EvalConfig::load(p)?,
        None => EvalConfig::from_toml(mamori_eval::DEFAULT_CONFIG, "<embedded default>")?,
    };
    let opts = RunOptions {
        data_dir: mamori_data::resolve_data_dir(g.data_dir.as_deref()),
        out_dir: args.out.clone(),
        cache_dir: g.home().join("eval-cache"),
        transport: if args.http {
            Transport::Http
        } else {
            Transport::InProcess
        },
        progress: !args.quiet,
        attack_progress: false,
    };
    let results = mamori_eval::run(&cfg, &opts).context("running the evaluation")?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let files = mamori_eval::report::write(&results, &args.out, &command)?;
    println!("{}", mamori_eval::report::comparison_markdown(&results));
    println!(
        "{} cells in {:.0} s; report: {} ({} and {})",
        results.cells.len(),
        results.wall_seconds,
        files.html.display(),
        files.markdown.display(),
        files.json.display()
    );
    Ok(())
}
