//! The one-command demo: the whole story on embedded defaults.
//!
//! 1. Prepare the default Fashion-MNIST victim (trained once, cached in `home/eval-cache`)
//!    and calibrate the detectors on benign data.
//! 2. Start the gateway over HTTP on `127.0.0.1:0` with the `default` protection policy
//!    (detection + escalation, rounding, DAWN), exactly as `mamori serve` builds it.
//! 3. Run the benign clients and a Knockoff Nets attacker (MNIST images as queries) against
//!    it over HTTP, with live progress.
//! 4. Run the same attacker against an unprotected gateway (`none`) for comparison.
//! 5. Print when the attacker was flagged and blocked, how faithful its copy is compared with
//!    the unprotected run, whether the DAWN watermark convicts it, and what benign users paid;
//!    write the report (the printed numbers are read from the same results the report shows).

use crate::config::{AttackConfig, EvalConfig};
use crate::error::EvalError;
use crate::report::{self, ReportFiles};
use crate::runner::{self, CellResult, EvalResults, RunOptions, Transport};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the demo found.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// The results (also in the report).
    pub results: EvalResults,
    /// The report files.
    pub report: ReportFiles,
    /// The printed summary.
    pub summary: String,
}

/// The demo's configuration: the shipped default with one attacker and two policies.
pub fn demo_config(seed: u64, quick: bool) -> EvalConfig {
    let mut cfg = EvalConfig::shipped();
    cfg.seed = seed;
    cfg.attacks = vec![AttackConfig {
        name: None,
        strategy: "knockoff".into(),
        budget: if quick { 1500 } else { 3000 },
        query_data: Some("mnist".into()),
        query_limit: 0,
    }];
    cfg.matrix.policies = vec!["default".into(), "none".into()];
    if quick {
        cfg.victim.epochs = 2;
        cfg.victim.train_limit = 20_000;
        cfg.benign.queries_per_client = 150;
        cfg.substitute.epochs = 6;
        cfg.matrix.checkpoints = vec![0.25, 0.5, 1.0];
    }
    cfg
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(what.to_string());
    b
}

fn cell_live(
    cfg: &EvalConfig,
    prep: &runner::Prepared,
    policy: &str,
    opts: &RunOptions,
) -> Result<CellResult, EvalError> {
    let mp = indicatif::MultiProgress::new();
    let a = mp.add(bar(cfg.attacks[0].budget, "attacker queries"));
    let benign_total: u64 = prep.benign.iter().map(|b| b.x.batch_size() as u64).sum();
    let b = mp.add(bar(benign_total, "benign queries"));
    let (a2, b2) = (a.clone(), b.clone());
    let r = runner::run_cell(
        cfg,
        prep,
        &cfg.attacks[0],
        policy,
        0,
        opts,
        Some(Box::new(move |n| a2.set_position(n))),
        Some(Box::new(move |n| b2.inc(n))),
    );
    a.finish();
    b.finish();
    r
}

/// Summarises the protected and unprotected cells in words (what the demo prints).
pub fn summarize(protected: &CellResult, open: &CellResult, victim_accuracy: f64) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\n== Outcome (attacker: {}, budget {} queries; victim accuracy {:.1}%) ==",
        protected.attack,
        protected.budget,
        100.0 * victim_accuracy
    );
    match (&protected.first_alarm, &protected.first_alarm_detector) {
        (Some(q), Some(d)) => {
            let _ = writeln!(s, "flagged:   after {q} queries (first detector: {d})");
        }
        _ => {
            let _ = writeln!(s, "flagged:   never");
        }
    }
    if let Some(q) = protected.degraded_at {
        let _ = writeln!(s, "degraded:  to labels only after {q} queries");
    }
    match protected.blocked_at {
        Some(q) => {
            let _ = writeln!(
                s,
                "blocked:   after {q} answered queries (HTTP 403 from then on)"
            );
        }
        None => {
            let _ = writeln!(s, "blocked:   no ({} queries answered)", protected.queries);
        }
    }
    let _ = writeln!(
        s,
        "copy:      fidelity {:.1}% (accuracy {:.1}%) vs {:.1}% (accuracy {:.1}%) against an \
         unprotected gateway with the same budget",
        100.0 * protected.fidelity,
        100.0 * protected.substitute_accuracy,
        100.0 * open.fidelity,
        100.0 * open.substitute_accuracy
    );
    match &protected.watermark {
        Some(w) if w.marks > 0 => {
            let _ = writeln!(
                s,
                "watermark: {}: the copy gives the watermark label on {}/{} marked inputs \
                 (p = 10^{:.1})",
                if w.verified {
                    "CONVICTED"
                } else {
                    "not convicted"
                },
                w.matches,
                w.marks,
                w.log10_p_value
            );
        }
        Some(_) => {
            let _ = writeln!(s, "watermark: the attacker received no watermarked answer");
        }
        None => {
            let _ = writeln!(s, "watermark: not enabled");
        }
    }
    let _ = writeln!(
        s,
        "benign:    {} of {} clients falsely flagged; accuracy cost {:+.2} percentage points; \
         {:.1}% of their queries refused; +{:.3} ms per request over bare inference",
        protected.benign_false_alarms,
        protected.benign.len(),
        100.0 * protected.benign_accuracy_cost,
        100.0 * protected.benign_refused_share,
        protected.latency_added_ms
    );
    s
}

/// Runs the demo. `home` holds the cached victim; `data_dir` the datasets (`None`: the
/// default resolution); the report goes to `out_dir`.
pub fn run(
    home: &Path,
    data_dir: Option<&Path>,
    out_dir: &Path,
    seed: u64,
    quick: bool,
) -> Result<DemoOutcome, EvalError> {
    let t0 = Instant::now();
    let mut cfg = demo_config(seed, quick);
    let data_dir = mamori_data::resolve_data_dir(data_dir);
    if !quick {
        // The full demo protects the project's default model: the zoo's Fashion-MNIST CNN,
        // trained once (about 5 minutes on 2 cores) and cached in the home directory.
        eprintln!("[0/4] the default Fashion-MNIST CNN (trained once, then loaded)…");
        mamori_ml::zoo::ensure_default_model(home, &data_dir, true)
            .map_err(|e| EvalError::Model(e.to_string()))?;
        cfg.victim.model = Some(
            mamori_ml::zoo::default_model_dir(home)
                .to_string_lossy()
                .into_owned(),
        );
    }
    cfg.check("<demo>")?;
    let opts = RunOptions {
        data_dir,
        out_dir: out_dir.to_path_buf(),
        cache_dir: home.join("eval-cache"),
        transport: Transport::Http,
        progress: true,
        attack_progress: false,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| EvalError::io(out_dir, e))?;
    eprintln!("[1/4] preparing the default Fashion-MNIST model and calibrating the detectors…");
    let prep = runner::prepare(&cfg, &opts)?;
    eprintln!(
        "      model {} (accuracy {:.1}%) in {}",
        prep.victim.model.card.name,
        100.0 * prep.victim.eval.victim_accuracy(),
        prep.victim.dir.display()
    );
    eprintln!(
        "[2/4] gateway on http://127.0.0.1:<port> with the `default` policy; {} benign clients \
         and a {} attacker query it over HTTP…",
        prep.benign.len(),
        cfg.attacks[0].strategy
    );
    let protected = cell_live(&cfg, &prep, "default", &opts)?;
    eprintln!("[3/4] the same attacker against an unprotected gateway (`none`)…");
    let open = cell_live(&cfg, &prep, "none", &opts)?;
    eprintln!("[4/4] writing the report…");
    let cells = vec![protected, open];
    let comparison = runner::comparison(&cfg, &cells);
    let v = &prep.victim;
    let results = EvalResults {
        victim: runner::VictimSummary {
            name: v.model.card.name.clone(),
            architecture: v.model.card.architecture.clone(),
            dataset: cfg.victim.dataset.clone(),
            accuracy: v.eval.victim_accuracy(),
            dir: v.dir.display().to_string(),
        },
        config: cfg.clone(),
        transport: Transport::Http,
        cells,
        comparison,
        wall_seconds: t0.elapsed().as_secs_f64(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let command = format!(
        "mamori_eval::demo::run(home, data, {}, seed={seed}, quick={quick})",
        out_dir.display()
    );
    let report = report::write(&results, out_dir, &command)?;
    let mut summary = summarize(
        &results.cells[0],
        &results.cells[1],
        results.victim.accuracy,
    );
    summary.push_str(&format!(
        "report:    {} (also {} and {}); {:.0} s in all\n",
        report.html.display(),
        report.markdown.display(),
        report.json.display(),
        results.wall_seconds
    ));
    println!("{summary}");
    Ok(DemoOutcome {
        results,
        report,
        summary,
    })
}

/// The default output directory of the demo under `home`.
pub fn default_out_dir(home: &Path) -> PathBuf {
    home.join("demo-report")
}
