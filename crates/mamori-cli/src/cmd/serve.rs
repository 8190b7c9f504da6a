//! `mamori serve` (issue #3): serve models (or proxy an upstream OIP server) behind the
//! protection chain, until SIGTERM or ctrl-c (which flush the audit log).

use crate::global::Global;
use anyhow::Context;
use mamori_core::{Action, Detector, Postprocessor};
use mamori_gateway::{
    server, ChainBuilder, GatewayConfig, KeyStore, ModelSpec, NamedVerdict, Policy,
    PostprocessorRegistry, SqliteStore, UpstreamModel,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `mamori serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model to serve: a native model directory or an `.onnx` file. Repeatable; each model is
    /// served under its card's name with its own state.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Configuration file (default: `mamori.toml` in the home directory, if present).
    #[arg(long, env = "MAMORI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind, `HOST:PORT` (overrides the configuration; port 0 picks a free port).
    #[arg(long)]
    pub addr: Option<String>,
    /// Proxy inference to this Open Inference Protocol v2 server instead of (or besides)
    /// embedded models.
    #[arg(long, env = "MAMORI_UPSTREAM")]
    pub upstream: Option<String>,
    /// Model name(s) on the upstream server (repeatable; required with `--upstream`).
    #[arg(long = "upstream-model", requires = "upstream")]
    pub upstream_models: Vec<String>,
    /// API key for the upstream server, if it needs one.
    #[arg(long, env = "MAMORI_UPSTREAM_KEY", hide_env_values = true)]
    pub upstream_key: Option<String>,
    /// Detector calibration (`calibration.json` from `mamori calibrate`); default:
    /// `calibration.json` beside a native model, else the detectors' built-in thresholds.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

/// `mamori-detect`'s escalation policy behind the gateway's [`Policy`] trait. Group verdicts
/// are named `group:<detector>`, as that policy expects.
struct DetectPolicy(mamori_detect::Policy);

impl Policy for DetectPolicy {
    fn decide(&mut self, client: &str, verdicts: &[NamedVerdict], now_ms: u64) -> Action {
        let mut group = None;
        let named: Vec<(String, mamori_core::Verdict)> = verdicts
            .iter()
            .map(|v| match v.subject.strip_prefix("group:") {
                Some(g) => {
                    group = Some(g.to_string());
                    (format!("group:{}", v.detector), v.verdict)
                }
                None => (v.detector.clone(), v.verdict),
            })
            .collect();
        self.0
            .decide(client, group.as_deref(), &named, now_ms)
            .action
    }
}

fn detectors_for(
    path: Option<&std::path::Path>,
    explicit: Option<&std::path::Path>,
) -> anyhow::Result<Vec<std::sync::Arc<dyn Detector>>> {
    let cal = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => path
            .filter(|p| p.is_dir())
            .map(|p| p.join(mamori_detect::CALIBRATION_FILE))
            .filter(|p| p.is_file()),
    };
    let cfg = match &cal {
        Some(p) => {
            let c = mamori_detect::Calibration::load(p)
                .with_context(|| format!("loading detector calibration {}", p.display()))?;
            tracing::info!("detector thresholds from {}", p.display());
            c.detectors
        }
        None => mamori_detect::DetectorsConfig::default(),
    };
    Ok(mamori_detect::default_detectors(&cfg))
}

/// Resolves the configuration's named postprocessor tables with `mamori-defense`.
fn registry(defs: &BTreeMap<String, toml::Value>) -> anyhow::Result<PostprocessorRegistry> {
    let mut built: BTreeMap<String, std::sync::Arc<dyn Postprocessor>> = BTreeMap::new();
    let ctx = mamori_defense::BuildContext::default();
    for (name, table) in defs {
        let spec: mamori_defense::PostprocessorSpec = table
            .clone()
            .try_into()
            .with_context(|| format!("postprocessors.{name}: not a valid postprocessor"))?;
        let pp =
            mamori_defense::build(&spec, &ctx).with_context(|| format!("postprocessors.{name}"))?;
        built.insert(name.clone(), std::sync::Arc::from(pp));
    }
    Ok(std::sync::Arc::new(move |n: &str| built.get(n).cloned()))
}

/// Runs `mamori serve`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let home = g.home();
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the home directory {}", home.display()))?;
    let mut cfg = GatewayConfig::load_for_home(args.config.as_deref(), &home)?;
    if let Some(a) = &args.addr {
        cfg.server.addr = a.clone();
    }
    if args.models.is_empty() && args.upstream.is_none() {
        anyhow::bail!("nothing to serve: give --model PATH (repeatable) or --upstream URL --upstream-model NAME");
    }
    if args.upstream.is_some() && args.upstream_models.is_empty() {
        anyhow::bail!(
            "--upstream needs --upstream-model NAME (the model's name on the upstream server)"
        );
    }
    let keys = Arc::new(KeyStore::open(&home)?);
    let policy_cfg: mamori_detect::PolicyConfig = match &cfg.detect.policy {
        Some(v) => v.clone().try_into().context("detect.policy")?,
        None => mamori_detect::PolicyConfig::default(),
    };
    let protect = |spec: &mut ModelSpec, path: Option<&std::path::Path>| -> anyhow::Result<()> {
        if cfg.detect.enabled {
            spec.detectors = detectors_for(path, args.calibration.as_deref())?;
            spec.policy = Box::new(DetectPolicy(mamori_detect::Policy::new(policy_cfg.clone())));
        }
        Ok(())
    };
    let mut builder = ChainBuilder::new(cfg.clone())
        .postprocessors(registry(&cfg.postprocessors)?)
        .keys(keys.clone())
        .audit_store(Box::new(SqliteStore::open_home(&home)?))
        .state_dir(&home.join("state"));
    for path in &args.models {
        let model = mamori_ml::load_model(path)
            .with_context(|| format!("loading model {}", path.display()))?;
        let platform = if path.extension().is_some_and(|e| e == "onnx") {
            "onnx"
        } else {
            "mamori-native"
        };
        tracing::info!(
            "serving {} ({platform}) from {}",
            model.card().name,
            path.display()
        );
        let mut spec = ModelSpec::new(Arc::from(model), platform);
        protect(&mut spec, Some(path))?;
        builder = builder.model(spec);
    }
    if let Some(url) = &args.upstream {
        for name in &args.upstream_models {
            let m = UpstreamModel::connect(url, name, args.upstream_key.clone(), [0.0, 1.0])
                .with_context(|| format!("connecting to upstream model {name} at {url}"))?;
            tracing::info!("proxying {name} to {url}");
            let mut spec = ModelSpec::new(Arc::new(m), "upstream");
            protect(&mut spec, None)?;
            builder = builder.model(spec);
        }
    }
    let chain = Arc::new(builder.build()?);
    if keys.list().iter().all(|k| k.revoked_ms.is_some()) {
        tracing::warn!("no active API key: create one with `mamori keys create --client NAME`");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let s = server::start(chain, &cfg.server.addr).await?;
        eprintln!("mamori gateway listening on http://{}", s.local_addr());
        s.run_until_signal().await
    })?;
    eprintln!("mamori gateway stopped; audit log flushed");
    Ok(())
}
