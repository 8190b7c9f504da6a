//! `mamori serve` (issue #3): serve models (or proxy an upstream OIP server) behind the
//! protection chain, until SIGTERM or ctrl-c (which flush the audit log).

use crate::global::Global;
use anyhow::Context;
use mamori_artifact::{ModelKey, SignaturePolicy, TrustStore};
use mamori_core::Model;
use mamori_gateway::protection::{self, PolicySpec, ProtectionContext};
use mamori_gateway::{server, GatewayConfig, KeyStore, UpstreamModel};
use mamori_ml::{NativeModel, Network};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `mamori serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model to serve: a model directory — native (`model.safetensors` + `model.json`) or ONNX
    /// (one `.onnx` file and its card `<file>.onnx.json`), plain, signed and/or encrypted —
    /// or a bare `.onnx` file (only with `--allow-unsigned`: it carries no signature).
    /// Repeatable; each model is served under its card's name with its own state.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Configuration file (default: `mamori.toml` in the home directory, if present).
    #[arg(long, env = "MAMORI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind, `HOST:PORT` (overrides the configuration; port 0 picks a free port).
    #[arg(long)]
    pub addr: Option<String>,
    /// Protection policy: a built-in name (`default`, `detect`, `dawn`, `none`, or a single
    /// postprocessor such as `rounding`, `top_k`, `label_only`, `reverse_sigmoid`...).
    #[arg(long, env = "MAMORI_POLICY", default_value = "default")]
    pub policy: String,
    /// A protection policy as a TOML file (a `PolicySpec`; overrides `--policy`).
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Turns on DAWN watermarking on top of the chosen policy (`dawn` is the only scheme),
    /// whatever the configuration's `[watermark]` section says; its settings are that
    /// section's when it asks for DAWN, else the policy's, else the defaults (rate 0.005).
    /// Each served model gets its own keys and ledger in `<home>/watermark/models/<model>/`.
    #[arg(long, value_parser = ["dawn"])]
    pub watermark: Option<String>,
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
    /// The upstream models output logits (unnormalised scores), not probabilities: the
    /// gateway applies the softmax. Without it, an answer row that is not a probability
    /// distribution is refused (502) as a broken upstream.
    #[arg(long, requires = "upstream")]
    pub upstream_logits: bool,
    /// Detector calibration (`calibration.json` from `mamori calibrate`) for every served
    /// model; default: each model directory's own `calibration.json` for that model (signed
    /// and encrypted with the model when it is), else the detectors' built-in thresholds.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Key file of encrypted models (else `MAMORI_MODEL_KEY_FILE` or `MAMORI_MODEL_KEY`).
    #[arg(long)]
    pub model_key_file: Option<PathBuf>,
    /// Serve models that carry no signature: native or ONNX model directories without a
    /// manifest signature, and bare `.onnx` files (signed models are still verified, and a
    /// tampered one is still refused). Without it, unsigned models are refused.
    #[arg(long, env = "MAMORI_ALLOW_UNSIGNED")]
    pub allow_unsigned: bool,
}

/// A model opened for serving, with the platform name OIP metadata reports and, for a
/// native model, its network (prediction poisoning needs its features).
struct Served {
    model: Arc<dyn Model>,
    platform: &'static str,
    network: Option<Network>,
    /// The directory's `calibration.json`, read from the verified (and decrypted) files.
    calibration: Option<(mamori_detect::Calibration, String)>,
}

/// Opens a model directory through the artifact layer — decrypted in memory if it is
/// encrypted, its signature checked against the home's trusted keys — and builds the model it
/// holds: a native model (`model.safetensors` + `model.json`) or an ONNX model (its only
/// `.onnx` file, with its card `<file>.onnx.json` or `model.json` if present). The plaintext
/// of an encrypted model never touches the disk.
fn open_dir(dir: &Path, args: &Args, home: &Path) -> anyhow::Result<Served> {
    let key = if mamori_artifact::is_encrypted_model(dir) {
        Some(
            ModelKey::resolve(args.model_key_file.as_deref()).with_context(|| {
                format!(
                    "{}: the model is encrypted (give its key with --model-key-file)",
                    dir.display()
                )
            })?,
        )
    } else {
        None
    };
    let trust = TrustStore::load(&home.join("signing"))
        .with_context(|| format!("loading trusted signing keys from {}", home.display()))?;
    let policy = if args.allow_unsigned {
        SignaturePolicy::VerifyIfSigned(trust)
    } else {
        SignaturePolicy::Require(trust)
    };
    let opened = match mamori_artifact::open_model(dir, key.as_ref(), &policy) {
        Ok(o) => o,
        Err(e @ mamori_artifact::ArtifactError::UnsignedModel { .. }) => {
            return Err(anyhow::Error::new(e).context(format!(
                "{}: refusing to serve this model (sign it with `mamori model sign`, or pass \
                 --allow-unsigned)",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("{}: refusing to serve this model", dir.display())))
        }
    };
    let files = &opened.files.files;
    let origin = |name: &str| {
        format!(
            "{} ({}{})",
            dir.join(name).display(),
            if opened.encrypted {
                "decrypted in memory"
            } else {
                "read with the model"
            },
            if opened.manifest.is_some() {
                ", signed"
            } else {
                ""
            }
        )
    };
    let calibration = match files.get(mamori_detect::CALIBRATION_FILE) {
        Some(bytes) => {
            let o = origin(mamori_detect::CALIBRATION_FILE);
            let text =
                std::str::from_utf8(bytes).with_context(|| format!("{o}: not UTF-8 text"))?;
            Some((mamori_detect::Calibration::from_json(text, &o)?, o))
        }
        None => None,
    };
    if files.contains_key(mamori_ml::WEIGHTS_FILE) {
        let file = |name: &str| {
            files
                .get(name)
                .with_context(|| format!("{}: no {name} in the model directory", dir.display()))
        };
        let m =
            NativeModel::from_bytes(file(mamori_ml::WEIGHTS_FILE)?, file(mamori_ml::CARD_FILE)?)?;
        return Ok(Served {
            network: Some(m.network.clone()),
            model: Arc::new(m),
            platform: "mamori-native",
            calibration,
        });
    }
    let mut onnx: Vec<&String> = files
        .keys()
        .filter(|n| n.to_ascii_lowercase().ends_with(".onnx"))
        .collect();
    onnx.sort();
    let name = match onnx.as_slice() {
        [one] => *one,
        [] => anyhow::bail!(
            "{}: not a model directory: no {} (native model) and no .onnx file",
            dir.display(),
            mamori_ml::WEIGHTS_FILE
        ),
        _ => anyhow::bail!(
            "{}: {} .onnx files in one model directory; serve each from its own directory",
            dir.display(),
            onnx.len()
        ),
    };
    let card = match mamori_artifact::card_file_name(files.keys().map(String::as_str)) {
        Some(c) => Some(
            serde_json::from_slice::<mamori_core::ModelCard>(&files[&c])
                .with_context(|| format!("{}: {c} is not a valid model card", dir.display()))?,
        ),
        None => None,
    };
    let m = mamori_ml::OnnxModel::from_bytes(&files[name], &dir.join(name), card)?;
    Ok(Served {
        model: Arc::new(m),
        platform: "onnx",
        network: None,
        calibration,
    })
}

/// Opens one `--model` path: a model directory (see [`open_dir`]) or a bare `.onnx` file. A
/// bare file carries no signature, so it is served only with `--allow-unsigned`.
fn open_served(path: &Path, args: &Args, home: &Path) -> anyhow::Result<Served> {
    if path.is_dir() {
        return open_dir(path, args, home);
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        if !args.allow_unsigned {
            anyhow::bail!(
                "{}: refusing to serve a bare .onnx file: it carries no signature. Put it in a \
                 directory (with its card <file>.onnx.json), sign it with `mamori model sign \
                 --model DIR` and serve the directory, or pass --allow-unsigned",
                path.display()
            );
        }
        let m = mamori_ml::load_model(path)
            .with_context(|| format!("loading model {}", path.display()))?;
        return Ok(Served {
            model: Arc::from(m),
            platform: "onnx",
            network: None,
            calibration: None,
        });
    }
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    anyhow::bail!(
        "{}: not a model: give a model directory (native or ONNX, plain, signed and/or \
         encrypted) or an .onnx file",
        path.display()
    )
}

/// The stop flag of `serve`'s background threads, and the condition variable that wakes them.
type StopSignal = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

/// Runs `task` every `every_s` seconds on a thread of its own until `stop` is set (none when
/// `every_s` is 0). The flag is not held while `task` runs, so setting it never waits on one.
fn every_until_stopped(
    stop: &StopSignal,
    every_s: u64,
    task: impl Fn() + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    if every_s == 0 {
        return None;
    }
    let stop = stop.clone();
    let every = std::time::Duration::from_secs(every_s);
    Some(std::thread::spawn(move || {
        let (lock, cv) = &*stop;
        let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Checked before each wait too: a stop set while `task` ran notified nobody.
        while !*stopped {
            let (s, timeout) = cv
                .wait_timeout(stopped, every)
                .unwrap_or_else(|e| e.into_inner());
            stopped = s;
            if timeout.timed_out() && !*stopped {
                drop(stopped);
                task();
                stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
    }))
}

/// A detector calibration: `--calibration FILE` if given, else a served model directory's
/// `calibration.json` (read with its verified, decrypted files); logs where it came from and
/// warns when it predates the current fitting rules.
fn calibration_for(
    explicit: Option<&Path>,
    from_models: Option<(mamori_detect::Calibration, String)>,
) -> anyhow::Result<Option<mamori_detect::Calibration>> {
    let (c, origin) = match (explicit, from_models) {
        (Some(p), _) => (
            mamori_detect::Calibration::load(p)
                .with_context(|| format!("loading detector calibration {}", p.display()))?,
            p.display().to_string(),
        ),
        (None, Some(found)) => found,
        (None, None) => return Ok(None),
    };
    tracing::info!("detector thresholds from {origin}");
    if !c.is_current() {
        tracing::warn!(
            "{origin} is calibration version {} (current {}): its thresholds predate the \
             current fitting rules{}; re-run `mamori calibrate`",
            c.version,
            mamori_detect::CALIBRATION_VERSION,
            if c.version < 2 {
                " and the `synthetic` detector stays inactive"
            } else {
                " (PRADA's δ was fitted on every query; PRADA now observes only in-distribution ones)"
            }
        );
    }
    Ok(Some(c))
}

fn policy_spec(args: &Args, cfg: &GatewayConfig) -> anyhow::Result<PolicySpec> {
    let mut spec = match &args.policy_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: not a valid policy", p.display()))?
        }
        None => protection::resolve(&args.policy, &Default::default())?,
    };
    if let Some(v) = &cfg.detect.policy {
        spec.escalation = v
            .clone()
            .try_into()
            .context("detect.policy in the configuration")?;
    }
    if !cfg.detect.enabled {
        spec.detect = false;
    }
    // The command line wins over `[watermark]`, which wins over the policy.
    let source =
        protection::merge_watermark(&mut spec, cfg.watermark.as_ref(), args.watermark.is_some())?;
    if let (
        Some(source),
        Some(protection::WatermarkSpec::Dawn {
            rate, fingerprint, ..
        }),
    ) = (source, &spec.watermark)
    {
        tracing::info!(
            "DAWN watermarking from {source}: rate {rate}, linear fingerprint {}",
            if *fingerprint > 0.0 {
                format!("ε = {fingerprint}")
            } else {
                "off".to_string()
            }
        );
    }
    Ok(spec)
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
    let spec = policy_spec(&args, &cfg)?;
    let mut served: Vec<(Arc<dyn Model>, String)> = Vec::new();
    let mut networks: Vec<Arc<Network>> = Vec::new();
    let mut model_calibrations = Vec::new();
    for path in &args.models {
        let Served {
            model,
            platform,
            network,
            calibration,
        } = open_served(path, &args, &home)?;
        networks.extend(network.map(Arc::new));
        model_calibrations.push((model.card().name.clone(), calibration));
        tracing::info!(
            "serving {} ({platform}) from {}",
            model.card().name,
            path.display()
        );
        served.push((model, platform.to_string()));
    }
    if let Some(url) = &args.upstream {
        for name in &args.upstream_models {
            let mut m = UpstreamModel::connect(url, name, args.upstream_key.clone(), [0.0, 1.0])
                .with_context(|| format!("connecting to upstream model {name} at {url}"))?;
            if args.upstream_logits {
                m = m.logits_output();
            }
            tracing::info!("proxying {name} to {url}");
            served.push((Arc::new(m), "upstream".to_string()));
        }
    }
    let mut ctx = ProtectionContext::new(&home);
    match args.calibration.as_deref() {
        // An explicit calibration file: every served model uses it.
        Some(p) => {
            if let Some(c) = calibration_for(Some(p), None)? {
                ctx.calibration = Some(c.detectors);
                ctx.fingerprint_dims = c.fingerprint_dims;
            }
        }
        // Else each model directory's own calibration.json, for that model only.
        None => {
            for (name, found) in model_calibrations {
                match calibration_for(None, found)? {
                    Some(c) => {
                        ctx.model_calibrations.insert(
                            name,
                            mamori_gateway::protection::ModelCalibration {
                                detectors: c.detectors,
                                fingerprint_dims: c.fingerprint_dims,
                            },
                        );
                    }
                    None if spec.detect => tracing::warn!(
                        "model {name:?} has no calibration.json: its detectors use their \
                         default thresholds (run `mamori calibrate --model DIR --benign DATA`)"
                    ),
                    None => {}
                }
            }
        }
    }
    // Prediction poisoning needs the served network's features: only unambiguous with one.
    if served.len() == 1 {
        ctx.network = networks.pop();
    }
    let protected = protection::protect(cfg.clone(), served, &spec, &ctx)?;
    tracing::info!(
        "protection policy {}{}",
        args.policy_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| args.policy.clone()),
        if protected.dawn.is_empty() {
            String::new()
        } else {
            format!(
                " (DAWN watermarking on; one ledger per model in {})",
                mamori_defense::dawn::models_dir(&home).display()
            )
        }
    );
    let metrics = std::sync::Arc::new(mamori_gateway::metrics::Metrics::new());
    let builder = protected
        .builder()
        .metrics(metrics.clone())
        .keys(keys.clone())
        .audit_store(
            mamori_gateway::open_store(&cfg.audit, &home).context("opening the audit store")?,
        )
        .audit_spill(home.join("audit-spill.jsonl"))
        .state_dir(&home.join("state"));
    let builder = match (&cfg.limits.store, &cfg.limits.redis_url) {
        (mamori_gateway::config::LimitBackend::Redis, Some(url)) => {
            let limiter = mamori_gateway::ratelimit_redis::RedisLimiter::connect(
                &url.0,
                &cfg.limits.redis_prefix,
                std::time::Duration::from_millis(cfg.limits.redis_timeout_ms),
                metrics.limit_store_errors(),
            )
            .context("opening the shared rate-limit store")?;
            tracing::info!(
                "rate limits: shared by every replica in Redis {}",
                mamori_gateway::config::redact_password(&url.0)
            );
            builder.limiter(std::sync::Arc::new(limiter))
        }
        _ => builder,
    };
    let builder = match cfg.alerts.webhook() {
        Some(settings) => {
            let shown = mamori_gateway::config::redact_password(&settings.url);
            let w = mamori_gateway::alert_webhook::AlertWebhook::start(
                settings,
                Some(&home),
                metrics.webhook_health(),
            )
            .context("starting the alert webhook")?;
            tracing::info!("alerts: POSTed to {shown}");
            builder.alert_webhook(std::sync::Arc::new(w))
        }
        None => builder,
    };
    let builder = if cfg.audit.seal {
        builder.audit_chain(home.join("audit-chain"))
    } else {
        tracing::warn!("audit.seal = false: audit records are not sealed (not tamper-evident)");
        builder
    };
    let chain = Arc::new(builder.build()?);
    if keys.list().iter().all(|k| k.revoked_ms.is_some()) {
        tracing::warn!("no active API key: create one with `mamori keys create --client NAME`");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Periodic checkpoints of detector states and escalation risk (a crash loses at most one
    // interval), and an early one whenever a model holds more than twice its
    // `detect.max_resident_subjects` subjects or `detect.max_resident_bytes` bytes of detector
    // states (checked every second, at most one every
    // `EARLY_GAP`: a burst of new clients or networks is saved and evicted instead of adding up
    // in memory until the next interval, and a cap too small for the clients active at once
    // costs a checkpoint every few seconds, not every second); the graceful shutdown saves them
    // once more.
    const EARLY_GAP: std::time::Duration = std::time::Duration::from_secs(5);
    let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let checkpoints = every_until_stopped(&stop, 1, {
        let chain = chain.clone();
        let every = std::time::Duration::from_secs(cfg.detect.checkpoint_s);
        let last = std::sync::Mutex::new(std::time::Instant::now());
        move || {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            let periodic = !every.is_zero() && last.elapsed() >= every;
            // Every second: it also publishes the resident subjects and bytes as metrics.
            let pressure = chain.memory_pressure();
            if !periodic {
                if last.elapsed() < EARLY_GAP || !pressure {
                    return;
                }
                tracing::warn!(
                    "more than twice detect.max_resident_subjects subjects, or twice \
                     detect.max_resident_bytes of detector states, in memory: checkpointing \
                     early to evict the idlest (if this repeats, the limit is too small for \
                     the clients active at once)"
                );
            }
            *last = std::time::Instant::now();
            if let Err(e) = chain.save_states() {
                tracing::error!("checkpoint of detector states failed: {e}");
            }
        }
    });
    // Blocks decided by other replicas sharing the audit store (PostgreSQL), applied here.
    let block_syncs = every_until_stopped(&stop, cfg.detect.block_sync_s, {
        let chain = chain.clone();
        move || {
            if let Err(e) = chain.sync_blocks() {
                tracing::error!("reading other replicas' blocks failed: {e}");
            }
        }
    });
    let served = rt.block_on(async move {
        let s = server::start(chain, &cfg.server.addr).await?;
        // The handlers first, then the announcement: a SIGTERM right after it (a supervisor
        // stopping a fresh replica) is a graceful shutdown, not the default kill.
        let signal = server::shutdown_signal();
        eprintln!("mamori gateway listening on {}", s.url());
        s.run_until(signal).await
    });
    *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    stop.1.notify_all();
    for t in [checkpoints, block_syncs].into_iter().flatten() {
        let _ = t.join();
    }
    served?;
    eprintln!("mamori gateway stopped; audit log flushed");
    Ok(())
}
