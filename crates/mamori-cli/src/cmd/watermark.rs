//! `mamori watermark` (issue #6): DAWN ownership verification and signed evidence reports.

use crate::global::Global;
use anyhow::{bail, Context, Result};
use mamori_attack::{HttpOracle, HttpOracleConfig};
use mamori_core::Oracle;
use mamori_defense::dawn::DawnPaths;
use mamori_defense::report::{
    check_report, parse_public_key, read_signed_report, EvidenceReport, ReportSigner,
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
    /// Check the ed25519 signature of an evidence report.
    CheckReport(CheckArgs),
    /// Summarise a DAWN ledger (records, classes, commitment).
    Ledger(LedgerArgs),
}

/// Where the ledger is.
#[derive(clap::Args, Debug)]
struct LedgerLoc {
    /// The encrypted DAWN ledger. Default: `<home>/watermark/ledger.bin`.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The ledger's key file. Default: `ledger.key` beside the ledger.
    #[arg(long)]
    ledger_key: Option<PathBuf>,
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
    /// top_among_wrong, rank_sum, log_gap_sum, reference_gap_sum, fingerprint, evidence) as
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
            let ledger = open_ledger(&a.ledger, g)?;
            let recs = ledger.records();
            let classes = recs.first().map(|r| r.num_classes).unwrap_or(0);
            println!("ledger      {}", ledger.path().display());
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

fn open_ledger(loc: &LedgerLoc, g: &Global) -> Result<Ledger> {
    let path = loc
        .ledger
        .clone()
        .unwrap_or_else(|| DawnPaths::in_home(&g.home()).ledger);
    if !path.is_file() {
        bail!("ledger {} does not exist", path.display());
    }
    let key_path = loc.ledger_key.clone().unwrap_or_else(|| {
        path.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("ledger.key")
    });
    let key = SecretKey::load(&key_path).context("reading the ledger key")?;
    Ledger::open(&path, &key).with_context(|| format!("opening ledger {}", path.display()))
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
    g: &Global,
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
        let ledger = a
            .ledger
            .ledger
            .clone()
            .unwrap_or_else(|| DawnPaths::in_home(&g.home()).ledger);
        ledger
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("dawn.key")
    });
    let key = SecretKey::load(&key_path)
        .with_context(|| format!("reading DAWN's key {}", key_path.display()))?;
    let fp = Dawn::fingerprint_for_key(&key, mamori_defense::fingerprint::DEFAULT_EPSILON)?
        .with_dims(cal.fingerprint_dims);
    Ok((model, fp))
}

fn run_verify(a: VerifyArgs, g: &Global) -> Result<()> {
    let ledger = open_ledger(&a.ledger, g)?;
    let records = ledger.records().to_vec();
    let setup = match &a.reference {
        Some(r) => Some(fingerprint_setup(&a, r, g)?),
        None => None,
    };
    let mut reference = setup.as_ref().map(|(m, _)| ModelOracle::new(m.as_ref()));
    let check = setup.as_ref().map(|(_, f)| FingerprintCheck {
        fingerprint: f,
        queries: a.fingerprint_queries,
        range: (0.0, 1.0),
    });
    let reference = reference.as_mut().map(|r| r as &mut dyn Oracle);
    let result = if a.suspect.starts_with("http://") || a.suspect.starts_with("https://") {
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
    println!("suspect     {}", a.suspect);
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
    println!("suspect     {}", r.suspect);
    println!(
        "matches     {}/{} (statistic {})",
        r.matches,
        r.queried,
        r.statistic.map_or("top1", |s| s.name())
    );
    println!("p-value     {:e}", r.p_value);
    println!("verdict     {:?}", r.verdict);
    println!("commitment  {}", r.ledger_commitment);
    Ok(())
}
