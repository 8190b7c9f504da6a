//! `mamori`: protect ML prediction APIs against model stealing.
//!
//! The binary is thin: each subcommand lives in `cmd/<name>.rs` and calls library crates.

use clap::{Parser, Subcommand};

mod cmd;
mod global;

use global::Global;

/// mamori (守り): a guarded gateway, attack harness and evaluation suite against model stealing.
#[derive(Parser, Debug)]
#[command(name = "mamori", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Datasets: fetch and verify the public datasets, inspect local files.
    Data(cmd::data::Args),
    /// Train a model from the zoo on a dataset.
    Train(cmd::train::Args),
    /// Export a native model (e.g. to ONNX).
    Export(cmd::export::Args),
    /// Run a model on dataset samples and print its predictions.
    Predict(cmd::predict::Args),
    /// Run the end-to-end demo on embedded defaults.
    Demo(cmd::demo::Args),
    /// Serve a model (or proxy an upstream) behind the protection chain.
    Serve(cmd::serve::Args),
    /// Manage API keys.
    Keys(cmd::keys::Args),
    /// Export the audit log.
    Audit(cmd::audit::Args),
    /// Run attacks (extraction, inversion, membership) against a model or endpoint.
    Attack(Box<cmd::attack::Args>),
    /// Print the detector catalogue.
    Detectors(cmd::detectors::Args),
    /// Calibrate detector thresholds on benign data.
    Calibrate(cmd::calibrate::Args),
    /// List alerts raised by the detectors.
    Alerts(cmd::alerts::Args),
    /// Watermark verification and evidence reports.
    Watermark(cmd::watermark::Args),
    /// Model artifact protection: encrypt, decrypt, sign, verify.
    Model(cmd::model::Args),
    /// Back up and restore models, keys, ledgers and audit data.
    Backup(cmd::backup::Args),
    /// Run an attack × defense evaluation matrix.
    Eval(cmd::eval::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    global::init_tracing(&cli.global);
    let result = match cli.command {
        Command::Data(a) => cmd::data::run(a, &cli.global),
        Command::Train(a) => cmd::train::run(a, &cli.global),
        Command::Export(a) => cmd::export::run(a, &cli.global),
        Command::Predict(a) => cmd::predict::run(a, &cli.global),
        Command::Demo(a) => cmd::demo::run(a, &cli.global),
        Command::Serve(a) => cmd::serve::run(a, &cli.global),
        Command::Keys(a) => cmd::keys::run(a, &cli.global),
        Command::Audit(a) => cmd::audit::run(a, &cli.global),
        Command::Attack(a) => cmd::attack::run(*a, &cli.global),
        Command::Detectors(a) => cmd::detectors::run(a, &cli.global),
        Command::Calibrate(a) => cmd::calibrate::run(a, &cli.global),
        Command::Alerts(a) => cmd::alerts::run(a, &cli.global),
        Command::Watermark(a) => cmd::watermark::run(a, &cli.global),
        Command::Model(a) => cmd::model::run(a, &cli.global),
        Command::Backup(a) => cmd::backup::run(a, &cli.global),
        Command::Eval(a) => cmd::eval::run(a, &cli.global),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
