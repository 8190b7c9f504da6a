//! `mamori watermark` (issue #6): DAWN ownership verification and signed evidence reports.

use crate::global::Global;
use anyhow::{bail, Context, Result};
use mamori_attack::{HttpOracle, HttpOracleConfig};
use mamori_core::Oracle;
use mamori_defense::dawn::{DawnPaths, HomeLedgers};
use mamori_defense::report::{
    check_report, parse_public_key, read_signed_report, recheck, EvidenceReport, ReportSigner,
};
use mamori_defense::verify::{verify_with, FingerprintCheck, ModelOracle, Verdict, DEFAULT_ALPHA};
use mamori_defense::{Dawn, Ledger, LinearFingerprint, SecretKey};
use std::path::{Path, PathBuf};

/// Arguments of `mamori watermark`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Query a suspect model on the DAWN ledger's inputs and test for the watermark.
    Verify(Box<VerifyArgs>),
    /// Check the ed25519 signature of an evidence report and recompute its numbers from its
    /// evidence.
    CheckReport(CheckArgs),
    /// Summarise a DAWN ledger (records, classes, commitment).
    Ledger(LedgerArgs),
}

/// Where the ledger is.
#[derive(clap::Args, Debug)]
struct LedgerLoc {
    /// The served model whose DAWN ledger to use: `<home>/watermark/models/<model>/ledger.bin`.
    /// Required when the home holds several models' ledgers; with `--ledger`, the ledger's
    /// records must be this model's.
    #[arg(long)]
    model: Option<String>,
    /// The encrypted DAWN ledger. Default: the `--model`'s ledger in the home, or the home's
    /// only ledger (a home written before each model had its own ledger has one,
    /// `<home>/watermark/ledger.bin`).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The ledger's key file. Default: `ledger.key` beside the ledger.
    #[arg(long)]
    ledger_key: Option<PathBuf>,
}

/// A ledger found from [`LedgerLoc`].
struct FoundLedger {
    /// The ledger file.
    path: PathBuf,
    /// The model it belongs to, when known from the home's layout or `--model`.
    model: Option<String>,
}

/// The ledger `loc` names: `--ledger`, else `--model`'s ledger in the home, else the home's
/// only ledger; several ledgers and no `--model`, or an unknown model, are errors naming the
/// choices.
fn find_ledger(loc: &LedgerLoc, home: &Path) -> Result<FoundLedger> {
    if let Some(p) = &loc.ledger {
        return Ok(FoundLedger {
            path: p.clone(),
            model: loc.model.clone(),
        });
    }
    let found = HomeLedgers::find(home)
        .with_context(|| format!("listing the DAWN ledgers of {}", home.display()))?;
    let names: Vec<&str> = found.models.keys().map(String::as_str).collect();
    let legacy_note = found.legacy.as_ref().map_or(String::new(), |l| {
        format!(
            "; the ledger shared by every model before each had its own: --ledger {}",
            l.ledger.display()
        )
    });
    let choices = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    match &loc.model {
        Some(m) => match found.models.get(m) {
            Some(p) => Ok(FoundLedger {
                path: p.ledger.clone(),
                model: Some(m.clone()),
            }),
            None => bail!(
                "no DAWN ledger for model {m:?} in {}: models with a ledger: {choices}{legacy_note}",
                home.display()
            ),
        },
        None => match (found.models.len(), &found.legacy) {
            (1, None) => {
                let (m, p) = found.models.iter().next().expect("one");
                Ok(FoundLedger {
                    path: p.ledger.clone(),
                    model: Some(m.clone()),
                })
            }
            (0, Some(l)) => Ok(FoundLedger {
                path: l.ledger.clone(),
                model: None,
            }),
            (0, None) => bail!(
                "no DAWN ledger in {} (serve with DAWN watermarking on first, or give --ledger)",
                home.join("watermark").display()
            ),
            _ => bail!(
                "{} holds the DAWN ledgers of several models: choose one with --model NAME \
                 (models with a ledger: {choices}{legacy_note})",
                home.display()
            ),
        },
    }
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The suspect: a native model directory, an `.onnx` file, or
    /// `http(s)://host:port/v2/models/NAME`.
    #[arg(long)]
    suspect: String,
    /// API key for an HTTP suspect.
    #[arg(long = "api-key")]
    api_key: Option<String>,
    #[command(flatten)]
    ledger: LedgerLoc,
    /// Significance level: the watermark is declared found when p < alpha.
    #[arg(long, default_value_t = DEFAULT_ALPHA)]
    alpha: f64,
    /// Samples per query batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// How many suspects you screen against this ledger, this one included: the p-value is
    /// multiplied by it (Bonferroni), so that the chance of convicting any of that many
    /// models that did not copy stays below alpha. An exact test gives each such model
    /// p ≤ 0.01 with probability 1%: screening 20 of them without this correction, one comes
    /// out at p ≤ 0.01 about once in five screenings.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    family: u64,
    /// The protected model itself (native model directory or `.onnx` file, with the
    /// `calibration.json` of `mamori calibrate` beside it): adds the test of DAWN's linear
    /// answer fingerprint, which convicts least-squares (equation-solving) copies, and the
    /// reference-gap sum (the marks' lift over the protected model's own scores).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// DAWN's key file (for the fingerprint test). Default: `dawn.key` beside the ledger.
    #[arg(long)]
    dawn_key: Option<PathBuf>,
    /// Queries of the fingerprint test (keyed uniform inputs in [0, 1]).
    #[arg(long, default_value_t = mamori_defense::fingerprint::DEFAULT_VERIFY_QUERIES)]
    fingerprint_queries: usize,
    /// Write the full result (p_value, matches, queried, verdict, statistic, top1,
    /// top_among_wrong, rank_sum, log_gap_sum, reference_gap_sum, centred_gap_sum,
    /// fingerprint, evidence) as
    /// JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an ed25519-signed evidence report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Signing key (hex seed; created if absent). Default: `<home>/watermark/signing.key`;
    /// its public key is written beside it as `signing.key.pub`.
    #[arg(long)]
    signing_key: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The signed report file.
    file: PathBuf,
    /// The signer's public key: a file holding 64 hex characters, or the hex itself.
    #[arg(long)]
    public_key: String,
}

#[derive(clap::Args, Debug)]
struct LedgerArgs {
    #[command(flatten)]
    ledger: LedgerLoc,
}

/// Runs `mamori watermark`.
pub fn run(args: Args, g: &Global) -> Result<()> {
    match args.cmd {
        Sub::Verify(a) => run_verify(*a, g),
        Sub::CheckReport(a) => run_check(a),
        Sub::Ledger(a) => {
            let (ledger, model) = open_ledger(&a.ledger, g)?;
            let recs = ledger.records();
            let classes = recs.first().map(|r| r.num_classes).unwrap_or(0);
            println!("ledger      {}", ledger.path().display());
            println!("model       {}", model.as_deref().unwrap_or("(not named)"));
            println!("records     {}", recs.len());
            println!(
                "distinct    {}",
                mamori_defense::verify::distinct_records(recs).len()
            );
            println!("classes     {classes}");
            println!("commitment  {}", ledger.commitment());
            Ok(())
        }
    }
}

fn open_ledger(loc: &LedgerLoc, g: &Global) -> Result<(Ledger, Option<String>)> {
    let FoundLedger { path, model } = find_ledger(loc, &g.home())?;
    if !path.is_file() {
        bail!("ledger {} does not exist", path.display());
    }
    let key_path = loc.ledger_key.clone().unwrap_or_else(|| {
        path.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("ledger.key")
    });
    let key = SecretKey::load(&key_path).context("reading the ledger key")?;
    let ledger =
        Ledger::open(&path, &key).with_context(|| format!("opening ledger {}", path.display()))?;
    // `--model` with `--ledger`: the records must not be another model's.
    if let Some(m) = &model {
        if let Some(other) = ledger
            .records()
            .iter()
            .filter_map(|r| r.model.as_deref())
            .find(|o| o != m)
        {
            bail!(
                "ledger {} holds marks of model {other:?}, not {m:?}",
                path.display()
            );
        }
    }
    let model = model.or_else(|| ledger.records().iter().find_map(|r| r.model.clone()));
    Ok((ledger, model))
}

/// Loads a native model directory or a model file; `what` names it in errors.
fn load_any_model(path: &Path, what: &str) -> Result<Box<dyn mamori_core::Model>> {
    Ok(if path.is_dir() {
        Box::new(
            mamori_ml::NativeModel::load(path)
                .with_context(|| format!("loading {what} model {}", path.display()))?,
        )
    } else {
        mamori_ml::load_model(path)
            .with_context(|| format!("loading {what} model {}", path.display()))?
    })
}

/// The reference model and the fingerprint (DAWN's key, the reference's quiet dimensions).
fn fingerprint_setup(
    a: &VerifyArgs,
    reference: &Path,
    ledger: &Path,
) -> Result<(Box<dyn mamori_core::Model>, LinearFingerprint)> {
    let model = load_any_model(reference, "reference")?;
    let cal_dir = if reference.is_dir() {
        reference.to_path_buf()
    } else {
        reference
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let cal_path = cal_dir.join(mamori_detect::CALIBRATION_FILE);
    if !cal_path.is_file() {
        bail!(
            "the fingerprint test needs the reference's quiet input dimensions: {} does not \
             exist (run `mamori calibrate` on the model)",
            cal_path.display()
        );
    }
    let cal = mamori_detect::Calibration::load(&cal_path)
        .with_context(|| format!("loading {}", cal_path.display()))?;
    if cal.fingerprint_dims.is_empty() {
        bail!(
            "{} has no fingerprint_dims (written before the fingerprint existed): re-run \
             `mamori calibrate` on the model",
            cal_path.display()
        );
    }
    let key_path = a.dawn_key.clone().unwrap_or_else(|| {
        DawnPaths::in_dir(ledger.parent().unwrap_or_else(|| Path::new("."))).key
    });
    let key = SecretKey::load(&key_path)
        .with_context(|| format!("reading DAWN's key {}", key_path.display()))?;
    let fp = Dawn::fingerprint_for_key(&key, mamori_defense::fingerprint::DEFAULT_EPSILON)?
        .with_dims(cal.fingerprint_dims);
    Ok((model, fp))
}

fn run_verify(a: VerifyArgs, g: &Global) -> Result<()> {
    let (ledger, model) = open_ledger(&a.ledger, g)?;
    let records = ledger.records().to_vec();
    let setup = match &a.reference {
        Some(r) => Some(fingerprint_setup(&a, r, ledger.path())?),
        None => None,
    };
    let mut reference = setup.as_ref().map(|(m, _)| ModelOracle::new(m.as_ref()));
    let check = setup.as_ref().map(|(_, f)| FingerprintCheck {
        fingerprint: f,
        queries: a.fingerprint_queries,
        range: (0.0, 1.0),
    });
    let reference = reference.as_mut().map(|r| r as &mut dyn Oracle);
    let mut result = if a.suspect.starts_with("http://") || a.suspect.starts_with("https://") {
        let mut cfg = HttpOracleConfig::from_url(&a.suspect, None)?;
        cfg.api_key = a.api_key.clone();
        cfg.batch_size = a.batch.max(1);
        let mut oracle: HttpOracle =
            HttpOracle::connect(cfg).with_context(|| format!("connecting to {}", a.suspect))?;
        let r = verify_with(&mut oracle, &records, a.alpha, a.batch, reference, check)?;
        tracing::info!(queries = oracle.queries_used(), "suspect queried over HTTP");
        r
    } else {
        let model = load_any_model(Path::new(&a.suspect), "suspect")?;
        verify_with(
            &mut ModelOracle::new(model.as_ref()),
            &records,
            a.alpha,
            a.batch,
            reference,
            check,
        )?
    };
    // Records written before each model had its own ledger name no model: the ledger's
    // place in the home (or `--model`) does.
    if result.model.is_none() {
        result.model = model;
    }
    let result = result.for_family(a.family as usize);
    println!("suspect     {}", a.suspect);
    println!(
        "model       {} (ledger {})",
        result.model.as_deref().unwrap_or("(not named)"),
        ledger.path().display()
    );
    println!("queried     {}", result.queried);
    println!(
        "chance      {:.4} per input (expected {:.1} matches)",
        result.chance,
        result.chance * result.queried as f64
    );
    for st in std::iter::once(&result.top1).chain(result.top_among_wrong.as_ref()) {
        println!(
            "{:<15} {} matches, p = {:e} (log10 {:.2}){}",
            st.statistic.name(),
            st.matches,
            st.p_value,
            st.log10_p_value,
            if st.statistic == result.statistic {
                "  <- decides"
            } else {
                ""
            }
        );
    }
    if let Some(f) = &result.fingerprint {
        println!(
            "fingerprint     z = {:.2}{} over {} queries, p = {:e} (log10 {:.2})",
            f.z,
            f.z_floored
                .map_or(String::new(), |z| format!(" / {z:.2} floored")),
            f.queried,
            f.p_value,
            f.log10_p_value
        );
    } else if a.reference.is_some() {
        println!("fingerprint     not tested (the suspect does not answer full probabilities)");
    }
    if let Some(rs) = &result.rank_sum {
        println!(
            "rank_sum        {} (expected {:.1} under independence), p = {:e} (log10 {:.2})",
            rs.rank_sum, rs.expected, rs.p_value, rs.log10_p_value
        );
    }
    for (name, g) in [
        ("log_gap_sum", &result.log_gap_sum),
        ("reference_gap", &result.reference_gap_sum),
        ("centred_gap", &result.centred_gap_sum),
    ] {
        if let Some(g) = g {
            println!(
                "{name:<15} {} (expected {:.1} under independence), p = {:e} (log10 {:.2})",
                g.log_gap_sum, g.expected, g.p_value, g.log10_p_value
            );
        }
    }
    println!(
        "p-value     {:e} (log10 {:.2}, statistic {})",
        result.p_value,
        result.log10_p_value,
        result.statistic.name()
    );
    if let Some(single) = result.log10_p_value_single {
        println!(
            "family      {} suspects screened: this suspect alone p = {:e} (log10 {single:.2}), \
             × {} (Bonferroni) above",
            result.family,
            10f64.powf(single),
            result.family
        );
    }
    println!(
        "verdict     {}",
        match result.verdict {
            Verdict::WatermarkFound => format!("watermark found (p < {})", result.alpha),
            Verdict::NotFound => format!("not found at alpha = {}", result.alpha),
        }
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.report {
        let key_path = a
            .signing_key
            .clone()
            .unwrap_or_else(|| g.home().join("watermark").join("signing.key"));
        let signer = ReportSigner::load_or_create(&key_path)?;
        let signed = signer.sign(EvidenceReport::from_result(&a.suspect, &result));
        std::fs::write(p, serde_json::to_string_pretty(&signed)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!(
            "report      {} (public key {})",
            p.display(),
            signer.public_key_hex()
        );
    }
    Ok(())
}

fn run_check(a: CheckArgs) -> Result<()> {
    let text = if Path::new(&a.public_key).is_file() {
        std::fs::read_to_string(&a.public_key)
            .with_context(|| format!("reading public key {}", a.public_key))?
    } else {
        a.public_key.clone()
    };
    let pk = parse_public_key(&text)?;
    let signed = read_signed_report(&a.file)?;
    let r = check_report(&signed, &pk).with_context(|| format!("checking {}", a.file.display()))?;
    println!("signature   valid");
    // The signature says who made the report; the recheck, that its numbers follow from its
    // evidence.
    let again = recheck(&r).with_context(|| {
        format!(
            "checking {}: the signature is valid but the numbers do not follow from the evidence",
            a.file.display()
        )
    })?;
    println!(
        "recomputed  {} and the decision {} from the evidence: consistent{}",
        again.recomputed.join(", "),
        again.decision.name(),
        if again.fingerprint_as_reported {
            " (the fingerprint test's p-value as reported: it needs the suspect)"
        } else {
            ""
        }
    );
    println!("suspect     {}", r.suspect);
    if let Some(m) = &r.model {
        println!("model       {m}");
    }
    println!(
        "matches     {}/{} (statistic {})",
        r.matches,
        r.queried,
        r.statistic.map_or("top1", |s| s.name())
    );
    println!("p-value     {:e}", r.p_value);
    if let (Some(m), Some(single)) = (r.family, r.log10_p_value_single) {
        println!(
            "family      {m} suspects screened (this one alone: p = {:e})",
            10f64.powf(single)
        );
    }
    println!("verdict     {:?}", r.verdict);
    println!("commitment  {}", r.ledger_commitment);
    Ok(())
}
