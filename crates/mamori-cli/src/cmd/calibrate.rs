//! `mamori calibrate` (issue #5): fit detector thresholds on benign data and store them
//! beside the model (`calibration.json`).

use crate::global::Global;
use anyhow::Context;
use mamori_detect::{calibrate, CalibrationOptions};
use std::path::PathBuf;

/// Arguments of `mamori calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (native) or `.onnx` file.
    #[arg(long)]
    pub model: PathBuf,
    /// Benign dataset (shortcut such as `mnist`, or a path): its training part gives the OOD
    /// statistics, its test part the simulated benign clients.
    #[arg(long)]
    pub benign: String,
    /// Target false-positive rate.
    #[arg(long, default_value_t = 0.001)]
    pub fpr: f64,
    /// Simulated benign clients.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Queries per simulated client.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Simulated benign clients PRADA's per-client tail is fitted on (default ⌈1/fpr⌉, at
    /// most 5,000, at least `--clients`).
    #[arg(long)]
    pub tail_clients: Option<usize>,
    /// Benign traffic from another distribution than the model's that legitimate clients send
    /// (shortcut or path; its test part is used), e.g. `mnist` for a Fashion-MNIST model: fits
    /// PRADA's threshold on out-of-distribution queries (`prada.ood_delta`), which otherwise
    /// stays at its conservative default.
    #[arg(long)]
    pub foreign: Option<String>,
    /// Shuffling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write `calibration.json` (default: the model directory, or the directory of
    /// the `.onnx` file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `mamori calibrate`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    if !(args.fpr > 0.0 && args.fpr < 1.0) {
        anyhow::bail!("--fpr must be in (0, 1), got {}", args.fpr);
    }
    let model = mamori_ml::load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let split = mamori_data::load(&args.benign, &g.data_dir())
        .with_context(|| format!("loading benign dataset `{}`", args.benign))?;
    let foreign = match &args.foreign {
        Some(name) => {
            let f = mamori_data::load(name, &g.data_dir())
                .with_context(|| format!("loading foreign dataset `{name}`"))?;
            Some(mamori_detect::ForeignBenign {
                name: name.clone(),
                x: std::sync::Arc::new(f.test.x),
            })
        }
        None => None,
    };
    let opts = CalibrationOptions {
        fpr: args.fpr,
        foreign,
        clients: args.clients,
        queries_per_client: args.queries,
        tail_clients: args.tail_clients,
        seed: args.seed,
        ..CalibrationOptions::default()
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "calibrating on {} clients × {} queries (PRADA: {} clients)",
        args.clients,
        args.queries,
        opts.prada_clients()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let cal = calibrate(
        model.as_ref(),
        &split.train.x,
        &split.test.x,
        &args.benign,
        &opts,
    )?;
    spinner.finish_and_clear();
    let dir = match args.out {
        Some(d) => d,
        None if args.model.is_dir() => args.model.clone(),
        None => args
            .model
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = cal.save(&dir)?;
    let d = &cal.detectors;
    println!("calibration written to {}", path.display());
    println!(
        "  prada.delta                = {:.4} ({} clients, persist {})",
        d.prada.delta, cal.report.prada_clients, d.prada.persist
    );
    match (&cal.report.foreign, cal.report.prada_ood_min_critical) {
        (Some(f), Some(_)) => println!(
            "  prada.ood_delta            = {:.4} (fitted on {f}: {:.1}% of it out of distribution)",
            d.prada.ood_delta,
            100.0 * cal.report.foreign_ood_rate
        ),
        (Some(f), None) => println!(
            "  prada.ood_delta            = {:.4} (kept: {f} gave PRADA's second pool no test; \
             {:.1}% of it out of distribution)",
            d.prada.ood_delta,
            100.0 * cal.report.foreign_ood_rate
        ),
        (None, _) => println!(
            "  prada.ood_delta            = {:.4} (default; --foreign fits it)",
            d.prada.ood_delta
        ),
    }
    println!("  knn.threshold              = {:.4}", d.knn.threshold);
    println!(
        "  blacklight.match_threshold = {}, client alarm at {} of {} queries",
        d.blacklight.match_threshold, d.blacklight.min_flagged, d.blacklight.window_queries
    );
    println!(
        "  ood: benign rate {:.4}, alarm above {} of {} queries",
        d.ood.benign_rate, d.ood.max_ood, d.ood.window
    );
    println!(
        "  hoda: class χ² > {:.2}, hardness Pearson > {:.3}",
        d.hoda.class_threshold, d.hoda.hard_threshold
    );
    match d.synthetic.threshold {
        Some(t) => println!(
            "  synthetic: smoothness < {t:.3}, alarm above {} of {} queries",
            d.synthetic.max_flagged, d.synthetic.window
        ),
        None => println!("  synthetic: inactive (the model's inputs are not images)"),
    }
    Ok(())
}
