//! Protection policies: the one place where a named policy becomes a protection chain.
//!
//! A [`PolicySpec`] (TOML/JSON) says which detectors watch the clients and how the escalation
//! policy reacts, which postprocessors change every answer, what a degraded client gets, and
//! whether answers are watermarked with DAWN. [`protect`] turns it into a gateway
//! configuration, a postprocessor registry and the [`ModelSpec`]s of the served models, ready
//! for [`ChainBuilder`] ([`Protected::builder`]). `mamori serve` and the evaluation harness
//! (`mamori eval`, the demo) both go through it, so what is evaluated is what is served.
//!
//! Built-in policies ([`builtin`], [`BUILTIN_POLICIES`]):
//!
//! | name | what it does |
//! |---|---|
//! | `none` | no protection (the chain still authenticates, validates, limits, audits) |
//! | `label_only`, `top_k`, `rounding`, `gaussian_noise`, `laplace_noise`, `reverse_sigmoid`, `adaptive_misinformation`, `prediction_poisoning` | that postprocessor alone, on every answer |
//! | `detect` | every registered detector (`mamori_detect::default_detectors`) with the risk/escalation policy (`mamori_detect::Policy`): alert → degrade to labels → throttle → block |
//! | `dawn` | DAWN answer watermarking (Szyller et al. 2021) at `r = 0.5%`, with the keyed linear fingerprint (`mamori_defense::fingerprint`, ε = 9 on the model's quiet input dimensions from its calibration) in every answer |
//! | `default` | `detect` + rounding to 2 decimals + DAWN (without the fingerprint, which would undo the rounding) |
//!
//! ```toml
//! # a custom policy (e.g. in the eval config's [policies] table)
//! [policies.strict]
//! detect = true
//! postprocessors = [{ kind = "rounding", decimals = 1 }]
//! degrade_postprocessors = [{ kind = "reverse_sigmoid", beta = 0.7, gamma = 1.2 }]
//! degrade_disclosure = "label"
//! watermark = { kind = "dawn", rate = 0.005, fingerprint = 9.0 }
//! [policies.strict.escalation]
//! degrade_at = 3.0
//! block_at = 30.0
//! ```
//!
//! Escalation: the gateway's detect stage reports one verdict per detector per request (the
//! state after the request's last sample) with the number of queries the detector has seen.
//! `mamori_detect::Policy` adds risk per alarming *query*, so the adapter [`Escalation`]
//! counts an alarm held at the end of a request for every query of that request (the queries
//! since the previous verdict of that detector about that subject).

use crate::chain::{ChainBuilder, ModelSpec, PostprocessorRegistry};
use crate::config::{DisclosureKind, GatewayConfig, WatermarkConfig, WatermarkKind};
use crate::error::GatewayError;
use crate::policy::{NamedVerdict, Policy as GatewayPolicy};
use mamori_core::{Action, Model, Postprocessor, Verdict, Watermark};
use mamori_defense::dawn::DawnPaths;
use mamori_defense::{BuildContext, Dawn, Ledger, PostprocessorSpec, SecretKey};
use mamori_detect::{DetectorsConfig, PolicyConfig};
use mamori_ml::Network;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names of the built-in policies, in the order reports list them.
pub const BUILTIN_POLICIES: &[&str] = &[
    "none",
    "label_only",
    "top_k",
    "rounding",
    "gaussian_noise",
    "laplace_noise",
    "reverse_sigmoid",
    "adaptive_misinformation",
    "prediction_poisoning",
    "detect",
    "dawn",
    "default",
];

/// Largest number of queries one request's alarm may count for (bounds the risk a single
/// batch can add).
pub const MAX_ALARM_REPEAT: u64 = 4096;

/// The answer watermark of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WatermarkSpec {
    /// DAWN (Szyller et al. 2021): a keyed `rate` share of answers get a keyed wrong label,
    /// recorded in the encrypted ledger.
    Dawn {
        /// Share of queries watermarked, in `(0, 1)` (paper default 0.005).
        #[serde(default = "default_dawn_rate")]
        rate: f64,
        /// Strength `ε` of the keyed linear fingerprint added to every answer
        /// ([`mamori_defense::fingerprint`]; it never changes the top-1 label); 0 turns it
        /// off.
        #[serde(default = "default_fingerprint")]
        fingerprint: f32,
        /// Input dimensions the fingerprint reads; empty = the model's quiet dimensions from
        /// its calibration ([`ProtectionContext::fingerprint_dims`]). Without either the
        /// fingerprint stays off: its default strength is set for quiet dimensions.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fingerprint_dims: Vec<u32>,
    },
}

fn default_dawn_rate() -> f64 {
    mamori_defense::dawn::DEFAULT_RATE
}

fn default_fingerprint() -> f32 {
    mamori_defense::fingerprint::DEFAULT_EPSILON
}

/// One protection policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// Run the detectors and the escalation policy.
    pub detect: bool,
    /// Detector configuration (thresholds); `None` = the calibration given in the
    /// [`ProtectionContext`], else the detectors' defaults.
    pub detectors: Option<DetectorsConfig>,
    /// Risk and escalation thresholds.
    pub escalation: PolicyConfig,
    /// Postprocessors applied to every answer, in order.
    pub postprocessors: Vec<PostprocessorSpec>,
    /// Postprocessors added for a degraded client.
    pub degrade_postprocessors: Vec<PostprocessorSpec>,
    /// Disclosure forced on a degraded client (default: labels only).
    pub degrade_disclosure: Option<DisclosureKind>,
    /// Answer watermark.
    pub watermark: Option<WatermarkSpec>,
}

impl PolicySpec {
    /// Whether any of its postprocessors (for every client or for degraded ones) rounds
    /// answers — which DAWN's linear fingerprint, added after them, would undo.
    pub fn rounds_answers(&self) -> bool {
        self.postprocessors
            .iter()
            .chain(&self.degrade_postprocessors)
            .any(|p| matches!(p, PostprocessorSpec::Rounding { .. }))
    }

    /// Checks the values a policy can get wrong before anything is built.
    pub fn check(&self, name: &str) -> Result<(), GatewayError> {
        if let Some(WatermarkSpec::Dawn {
            rate, fingerprint, ..
        }) = &self.watermark
        {
            if !(*rate > 0.0 && *rate < 1.0) {
                return Err(GatewayError::Config(format!(
                    "policy {name:?}: watermark.rate must lie in (0, 1), got {rate}"
                )));
            }
            let max = mamori_defense::fingerprint::MAX_EPSILON;
            if !(fingerprint.is_finite() && (0.0..=max).contains(fingerprint)) {
                return Err(GatewayError::Config(format!(
                    "policy {name:?}: watermark.fingerprint must lie in [0, {max}], got \
                     {fingerprint}"
                )));
            }
            if *fingerprint > 0.0 && self.rounds_answers() {
                return Err(GatewayError::Config(format!(
                    "policy {name:?}: watermark.fingerprint = {fingerprint} would undo the \
                     rounding postprocessor (the fingerprint is added after it); set \
                     watermark.fingerprint = 0"
                )));
            }
        }
        if let Some(d) = &self.detectors {
            d.validate()
                .map_err(|e| GatewayError::Config(format!("policy {name:?}: {e}")))?;
        }
        let e = &self.escalation;
        for (field, v) in [
            ("degrade_at", e.degrade_at),
            ("throttle_at", e.throttle_at),
            ("block_at", e.block_at),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(GatewayError::Config(format!(
                    "policy {name:?}: escalation.{field} must be a positive number, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// The built-in policy `name` (see the module documentation).
pub fn builtin(name: &str) -> Option<PolicySpec> {
    let post = |s: PostprocessorSpec| PolicySpec {
        postprocessors: vec![s],
        ..Default::default()
    };
    let detect = PolicySpec {
        detect: true,
        escalation: detect_escalation(),
        degrade_disclosure: Some(DisclosureKind::Label),
        ..Default::default()
    };
    Some(match name {
        "none" => PolicySpec::default(),
        "label_only" => post(PostprocessorSpec::LabelOnly),
        "top_k" => post(PostprocessorSpec::TopK {
            k: 1,
            renormalise: true,
        }),
        "rounding" => post(PostprocessorSpec::Rounding { decimals: 1 }),
        "gaussian_noise" => post(PostprocessorSpec::GaussianNoise { sigma: 0.1 }),
        "laplace_noise" => post(PostprocessorSpec::LaplaceNoise { scale: 0.07 }),
        "reverse_sigmoid" => post(PostprocessorSpec::ReverseSigmoid {
            beta: 0.7,
            gamma: 1.2,
        }),
        "adaptive_misinformation" => post(PostprocessorSpec::AdaptiveMisinformation {
            tau: 0.6,
            nu: 1000.0,
        }),
        "prediction_poisoning" => post(PostprocessorSpec::PredictionPoisoning {
            epsilon: 0.5,
            keep_top1: true,
        }),
        "detect" => detect,
        "dawn" => PolicySpec {
            watermark: Some(WatermarkSpec::Dawn {
                rate: default_dawn_rate(),
                fingerprint: default_fingerprint(),
                fingerprint_dims: Vec::new(),
            }),
            ..Default::default()
        },
        "default" => PolicySpec {
            postprocessors: vec![PostprocessorSpec::Rounding { decimals: 2 }],
            watermark: Some(WatermarkSpec::Dawn {
                rate: default_dawn_rate(),
                // Rounding is on: the fingerprint would undo it.
                fingerprint: 0.0,
                fingerprint_dims: Vec::new(),
            }),
            ..detect
        },
        _ => return None,
    })
}

/// The escalation of the built-in `detect` and `default` policies: `mamori_detect`'s default
/// thresholds, with the distribution monitors (`ood`, `hoda`) weighted 0.1 per alarming query.
/// Their alarms say "this client's queries do not look like the training distribution", which
/// is also true of legitimate out-of-distribution users; under `mamori_detect`'s default
/// `suspicion` rule they add risk only while a behaviour detector (rate/volume, PRADA, k-NN,
/// Blacklight) alarms on the same query, and then at 0.1 a client is degraded after 50 such
/// queries and blocked only after 500, so behaviour and volume, not one batch, decide the block.
pub fn detect_escalation() -> PolicyConfig {
    let mut e = PolicyConfig::default();
    e.weights.insert("ood".into(), 0.1);
    e.weights.insert("hoda".into(), 0.1);
    e.weights.insert("group:ood".into(), 0.1);
    e.weights.insert("group:hoda".into(), 0.1);
    e
}

/// Where the served watermark came from ([`merge_watermark`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatermarkSource {
    /// The protection policy's own `watermark`.
    Policy,
    /// The gateway configuration's `[watermark]` section.
    Config,
    /// `mamori serve --watermark dawn`.
    Flag,
}

impl std::fmt::Display for WatermarkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatermarkSource::Policy => "the protection policy",
            WatermarkSource::Config => "[watermark] in the gateway configuration",
            WatermarkSource::Flag => "--watermark dawn",
        })
    }
}

/// Merges the gateway configuration's `[watermark]` section (`config`) and
/// `mamori serve --watermark dawn` (`flag`) into `spec`'s watermark; returns where the result
/// came from (`None`: no watermark; [`WatermarkSource::Flag`] only when the flag turned on
/// what would otherwise be off).
///
/// Precedence, strongest first:
/// 1. `--watermark dawn` (the command line wins): DAWN is on whatever the configuration says;
///    its settings are the configuration's `[watermark]` when that section asks for DAWN,
///    else the policy's own DAWN, else the defaults.
/// 2. `[watermark]`: `kind = "dawn"` serves DAWN with the section's settings (replacing the
///    policy's DAWN settings, e.g. the rate of the built-in `default` policy); `kind = "none"`
///    turns the policy's DAWN off.
/// 3. The policy's own `watermark`.
///
/// Where the fingerprint strength is not given (the flag's defaults, or the section without
/// `fingerprint`) it is 9, or 0 when the policy rounds answers (the fingerprint would undo the
/// rounding); an explicit non-zero strength with a rounding policy is an error naming
/// `watermark.fingerprint`.
pub fn merge_watermark(
    spec: &mut PolicySpec,
    config: Option<&WatermarkConfig>,
    flag: bool,
) -> Result<Option<WatermarkSource>, GatewayError> {
    let rounds = spec.rounds_answers();
    let from_config = match config {
        Some(c) if c.kind == WatermarkKind::Dawn => {
            c.check()?;
            let fingerprint = match c.fingerprint {
                Some(f) if f > 0.0 && rounds => {
                    return Err(GatewayError::Config(format!(
                        "watermark.fingerprint = {f} would undo the policy's rounding \
                         postprocessor (the fingerprint is added after it); set \
                         watermark.fingerprint = 0"
                    )))
                }
                Some(f) => f,
                None if rounds => 0.0,
                None => default_fingerprint(),
            };
            Some(WatermarkSpec::Dawn {
                rate: c.rate,
                fingerprint,
                fingerprint_dims: c.fingerprint_dims.clone(),
            })
        }
        _ => None,
    };
    let policy_own = spec.watermark.take();
    let mut merged = match config.map(|c| c.kind) {
        Some(WatermarkKind::None) => None,
        Some(WatermarkKind::Dawn) => from_config.map(|w| (w, WatermarkSource::Config)),
        None => policy_own.clone().map(|w| (w, WatermarkSource::Policy)),
    };
    if flag && merged.is_none() {
        let w = policy_own.or_else(|| {
            let mut w = builtin("dawn").and_then(|d| d.watermark);
            if let Some(WatermarkSpec::Dawn { fingerprint, .. }) = &mut w {
                if rounds {
                    *fingerprint = 0.0;
                }
            }
            w
        });
        merged = w.map(|w| (w, WatermarkSource::Flag));
    }
    let source = merged.as_ref().map(|(_, s)| *s);
    spec.watermark = merged.map(|(w, _)| w);
    Ok(source)
}

/// Resolves `name` among `custom` policies first, then the built-ins.
pub fn resolve(
    name: &str,
    custom: &BTreeMap<String, PolicySpec>,
) -> Result<PolicySpec, GatewayError> {
    if let Some(p) = custom.get(name) {
        return Ok(p.clone());
    }
    builtin(name).ok_or_else(|| {
        let mut known: Vec<&str> = BUILTIN_POLICIES.to_vec();
        known.extend(custom.keys().map(|k| k.as_str()));
        GatewayError::Config(format!(
            "unknown protection policy {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

/// Secrets, calibration and storage the policy needs.
#[derive(Clone, Debug)]
pub struct ProtectionContext {
    /// Gateway home: each served model's DAWN keys and ledger live in
    /// `home/watermark/models/<model>/` (see [`mamori_defense::dawn::DawnPaths::for_model`])
    /// and the postprocessor key in `home/protection.key`.
    pub home: PathBuf,
    /// A fixed master secret (reproducible evaluations): the postprocessor key and each
    /// model's DAWN and ledger keys are derived from it (DAWN's with the model's name as
    /// context: `dawn/model/<name>`, `dawn-ledger/model/<name>`) instead of the key files;
    /// the ledgers still go to the home.
    pub secret: Option<SecretKey>,
    /// Calibrated detector thresholds (`calibration.json`), used when the policy names none
    /// and the model has none of its own in `model_calibrations`.
    pub calibration: Option<DetectorsConfig>,
    /// Each served model's own calibration, by model name (detector thresholds and DAWN
    /// fingerprint dimensions): with several served models, each is watched with the
    /// thresholds fitted to it, not the first one's. Wins over `calibration` and
    /// `fingerprint_dims` for its model.
    pub model_calibrations: BTreeMap<String, ModelCalibration>,
    /// The served native network (prediction poisoning uses its features).
    pub network: Option<Arc<Network>>,
    /// The served model's quiet input dimensions (`Calibration::fingerprint_dims`, see
    /// `mamori_detect::calibration::quiet_dims`), where DAWN's linear fingerprint goes when
    /// the policy names none.
    pub fingerprint_dims: Vec<u32>,
}

/// One served model's calibration ([`ProtectionContext::model_calibrations`]).
#[derive(Clone, Debug, Default)]
pub struct ModelCalibration {
    /// Its detector thresholds.
    pub detectors: DetectorsConfig,
    /// Its quiet input dimensions, for DAWN's fingerprint.
    pub fingerprint_dims: Vec<u32>,
}

impl ProtectionContext {
    /// The detector thresholds for `model` when the policy names none: its own calibration,
    /// else the shared one, else the detectors' defaults.
    pub fn detectors_for(&self, model: &str) -> DetectorsConfig {
        self.model_calibrations
            .get(model)
            .map(|c| c.detectors.clone())
            .or_else(|| self.calibration.clone())
            .unwrap_or_default()
    }

    /// The quiet input dimensions for `model`'s DAWN fingerprint: its own calibration's, else
    /// the shared ones.
    pub fn fingerprint_dims_for(&self, model: &str) -> Vec<u32> {
        self.model_calibrations
            .get(model)
            .map(|c| c.fingerprint_dims.clone())
            .unwrap_or_else(|| self.fingerprint_dims.clone())
    }

    /// A context keeping its keys and ledger in `home`.
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            secret: None,
            calibration: None,
            model_calibrations: BTreeMap::new(),
            network: None,
            fingerprint_dims: Vec::new(),
        }
    }
}

/// A protection policy turned into what the chain builder takes.
pub struct Protected {
    /// The gateway configuration, with the policy's postprocessors added to every tier and its
    /// degrade settings.
    pub config: GatewayConfig,
    /// Resolves the postprocessor names of `config`.
    pub registry: PostprocessorRegistry,
    /// The served models with their detectors, escalation policy and watermark.
    pub models: Vec<ModelSpec>,
    /// Each served model's own DAWN watermark (its keys and ledger), by model name; empty
    /// when the policy has no watermark.
    pub dawn: BTreeMap<String, Arc<Dawn>>,
}

impl std::fmt::Debug for Protected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protected")
            .field("models", &self.models.len())
            .field("dawn", &self.dawn.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Protected {
    /// A chain builder with the configuration, the registry and every model; add keys, an
    /// audit store, a ledger sink as needed, then `build()`.
    pub fn builder(self) -> ChainBuilder {
        let mut b = ChainBuilder::new(self.config).postprocessors(self.registry);
        for m in self.models {
            b = b.model(m);
        }
        b
    }
}

fn cfg_err(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config(e.to_string())
}

/// Turns `policy` into a protected configuration for `models` (`(model, platform)` pairs).
///
/// Postprocessors are appended to every tier of `config` (named `policy:N`), degrade
/// postprocessors to `detect.degrade_postprocessors` (`policy:degrade:N`); names already in
/// `config` are resolved as built-in policies with a single postprocessor (`rounding`,
/// `top_k`, ...). Each model gets its own detector states and escalation policy, and its own
/// DAWN watermark: its own keys and ledger ([`mamori_defense::Dawn::open_model`], or keys
/// derived from [`ProtectionContext::secret`] with the model's name as context), so a mark one
/// model gave never shows up in another's ledger.
///
/// A home written before each model had its own ledger (the shared
/// `home/watermark/{dawn.key, ledger.key, ledger.bin}`) is migrated when it serves a single
/// model: the files move to that model's directory ([`mamori_defense::dawn::migrate_legacy`];
/// same keys, same records). Serving several models, the legacy ledger is left where it is,
/// read-only (verify against it with `mamori watermark verify --ledger PATH`), and every model
/// starts its own.
pub fn protect(
    mut config: GatewayConfig,
    models: Vec<(Arc<dyn Model>, String)>,
    policy: &PolicySpec,
    ctx: &ProtectionContext,
) -> Result<Protected, GatewayError> {
    policy.check("policy")?;
    let post_key = match &ctx.secret {
        Some(s) => s.derive("postprocessors"),
        None => SecretKey::load_or_create(&ctx.home.join("protection.key")).map_err(cfg_err)?,
    };
    let bctx = BuildContext {
        key: Some(post_key),
        network: ctx.network.clone(),
    };
    let mut named: HashMap<String, Arc<dyn Postprocessor>> = HashMap::new();
    let build = |named: &mut HashMap<String, Arc<dyn Postprocessor>>,
                 spec: &PostprocessorSpec,
                 name: String|
     -> Result<String, GatewayError> {
        let p = mamori_defense::build(spec, &bctx).map_err(cfg_err)?;
        named.insert(name.clone(), Arc::from(p));
        Ok(name)
    };
    let mut tier_names = Vec::new();
    for (i, s) in policy.postprocessors.iter().enumerate() {
        tier_names.push(build(&mut named, s, format!("policy:{i}"))?);
    }
    let mut degrade_names = Vec::new();
    for (i, s) in policy.degrade_postprocessors.iter().enumerate() {
        degrade_names.push(build(&mut named, s, format!("policy:degrade:{i}"))?);
    }
    // Names the configuration already uses: built-in single-postprocessor policies.
    let existing: Vec<String> = config
        .tiers
        .values()
        .flat_map(|t| t.postprocessors.iter().cloned())
        .chain(config.detect.degrade_postprocessors.iter().cloned())
        .collect();
    for n in existing {
        if named.contains_key(&n) {
            continue;
        }
        let spec = builtin(&n)
            .and_then(|p| (p.postprocessors.len() == 1).then(|| p.postprocessors[0].clone()))
            .ok_or_else(|| {
                GatewayError::Config(format!(
                    "unknown postprocessor {n:?} in the gateway configuration; known: label_only, \
                     top_k, rounding, gaussian_noise, laplace_noise, reverse_sigmoid, \
                     adaptive_misinformation, prediction_poisoning"
                ))
            })?;
        build(&mut named, &spec, n)?;
    }
    for t in config.tiers.values_mut() {
        t.postprocessors.extend(tier_names.iter().cloned());
    }
    config
        .detect
        .degrade_postprocessors
        .extend(degrade_names.iter().cloned());
    if let Some(d) = policy.degrade_disclosure {
        config.detect.degrade_disclosure = d;
    }
    let named = Arc::new(named);
    let registry: PostprocessorRegistry = Arc::new(move |n: &str| named.get(n).cloned());

    let mut dawn: BTreeMap<String, Arc<Dawn>> = BTreeMap::new();
    if let Some(WatermarkSpec::Dawn {
        rate,
        fingerprint,
        fingerprint_dims,
    }) = &policy.watermark
    {
        let names: Vec<String> = models.iter().map(|(m, _)| m.card().name.clone()).collect();
        if ctx.secret.is_none() {
            adopt_legacy_ledger(&ctx.home, &names)?;
        }
        for name in names {
            // A repeated name is refused by the chain builder; open its ledger once.
            if dawn.contains_key(&name) {
                continue;
            }
            let d = open_dawn(ctx, &name, *rate, *fingerprint, fingerprint_dims.clone())?;
            dawn.insert(name, Arc::new(d));
        }
    }
    let mut specs = Vec::with_capacity(models.len());
    for (model, platform) in models {
        let mut spec = ModelSpec::new(model, &platform);
        if policy.detect {
            let card = spec.model.card();
            let mut detectors_cfg = policy
                .detectors
                .clone()
                .unwrap_or_else(|| ctx.detectors_for(&card.name));
            // Blacklight and PRADA quantise over the range the model accepts (its card's;
            // validation refuses values outside it).
            detectors_cfg
                .set_input_range(card.input_range)
                .map_err(|e| {
                    GatewayError::Config(format!(
                        "model {:?}: its card's input range: {e}",
                        card.name
                    ))
                })?;
            spec.detectors = mamori_detect::default_detectors(&detectors_cfg);
            spec.skip_exact_repeats = true;
            spec.policy = Box::new(Escalation::new(policy.escalation.clone()));
        }
        spec.watermark = dawn
            .get(&spec.model.card().name)
            .cloned()
            .map(|d| d as Arc<dyn Watermark>);
        specs.push(spec);
    }
    Ok(Protected {
        config,
        registry,
        models: specs,
        dawn,
    })
}

/// The legacy shared DAWN ledger of `home`, if any: moved to the model's own directory when
/// `names` is a single model, else left in place (with a warning saying how to verify it).
fn adopt_legacy_ledger(home: &Path, names: &[String]) -> Result<(), GatewayError> {
    let legacy = DawnPaths::in_home(home);
    if let [only] = names {
        if mamori_defense::dawn::migrate_legacy(home, only).map_err(cfg_err)? {
            tracing::info!(
                "DAWN: the home's shared watermark ledger (written before each model had its \
                 own) now belongs to model {only:?}: moved to {}",
                DawnPaths::for_model(home, only)
                    .ledger
                    .parent()
                    .unwrap_or(home)
                    .display()
            );
        }
    }
    if legacy.ledger.is_file() && !names.is_empty() {
        tracing::warn!(
            "DAWN: {} is the ledger every model shared before each had its own; it is kept \
             read-only (verify against it with `mamori watermark verify --ledger {}`) and each \
             served model records its marks in its own ledger",
            legacy.ledger.display(),
            legacy.ledger.display()
        );
    }
    Ok(())
}

/// The DAWN watermark of served model `model` (see [`protect`]).
fn open_dawn(
    ctx: &ProtectionContext,
    model: &str,
    rate: f64,
    fingerprint: f32,
    dims: Vec<u32>,
) -> Result<Dawn, GatewayError> {
    let dawn = match &ctx.secret {
        None => Dawn::open_model(&ctx.home, model, rate).map_err(cfg_err)?,
        Some(s) => {
            let p = DawnPaths::for_model(&ctx.home, model);
            let ledger_key = s.derive(&format!("dawn-ledger/model/{model}"));
            let ledger = Ledger::open(&p.ledger, &ledger_key).map_err(cfg_err)?;
            Dawn::new(s.derive(&format!("dawn/model/{model}")), rate)
                .map_err(cfg_err)?
                .with_ledger(ledger)
                .with_model(model)
        }
    };
    let dims = if dims.is_empty() {
        ctx.fingerprint_dims_for(model)
    } else {
        dims
    };
    if fingerprint > 0.0 && dims.is_empty() {
        tracing::warn!(
            "DAWN's linear fingerprint is off: no quiet input dimensions (run `mamori \
             calibrate` on the model, or name watermark.fingerprint_dims in the policy)"
        );
    }
    if fingerprint > 0.0 && !dims.is_empty() {
        dawn.with_fingerprint(fingerprint, dims).map_err(cfg_err)
    } else {
        Ok(dawn)
    }
}

/// `mamori_detect`'s risk/escalation policy behind the gateway's [`GatewayPolicy`] trait.
///
/// An alarm seen at the end of a request counts once per query of that request (the growth
/// of the detector's query count since its previous verdict about the subject, at most
/// [`MAX_ALARM_REPEAT`]); group verdicts (`group:<g>` subjects) are passed as
/// `group:<detector>`.
pub struct Escalation {
    policy: mamori_detect::Policy,
    seen: HashMap<(String, String), u64>,
}

impl Escalation {
    /// An escalation policy with `cfg`.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            policy: mamori_detect::Policy::new(cfg),
            seen: HashMap::new(),
        }
    }

    /// The client's current risk.
    pub fn risk(&self, client: &str, now_ms: u64) -> f64 {
        self.policy.risk(client, now_ms)
    }
}

/// What [`Escalation`] saves: the risk policy (its configuration is replaced by the current
/// one on restore) and the query counts already counted per (subject, detector).
#[derive(Serialize, Deserialize)]
struct EscalationSnapshot {
    policy: mamori_detect::Policy,
    seen: Vec<(String, String, u64)>,
}

impl GatewayPolicy for Escalation {
    fn risk(&self, client: &str, now_ms: u64) -> Option<f64> {
        Some(self.policy.risk(client, now_ms))
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let s = EscalationSnapshot {
            policy: self.policy.clone(),
            seen: self
                .seen
                .iter()
                .map(|((a, b), n)| (a.clone(), b.clone(), *n))
                .collect(),
        };
        serde_json::to_vec(&s).ok()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let s: EscalationSnapshot = serde_json::from_slice(snapshot)
            .map_err(|e| format!("invalid escalation state: {e}"))?;
        self.policy.restore_risk(&s.policy);
        self.seen = s.seen.into_iter().map(|(a, b, n)| ((a, b), n)).collect();
        Ok(())
    }

    fn decide(&mut self, client: &str, verdicts: &[NamedVerdict], now_ms: u64) -> Action {
        let mut group = None;
        let mut list: Vec<(String, Verdict)> = Vec::new();
        for v in verdicts {
            let name = match v.subject.strip_prefix("group:") {
                Some(g) => {
                    group = Some(g.to_string());
                    format!("group:{}", v.detector)
                }
                None => v.detector.clone(),
            };
            let prev = self
                .seen
                .insert((v.subject.clone(), v.detector.clone()), v.queries)
                .unwrap_or(0);
            let n = if v.verdict.alarm {
                v.queries.saturating_sub(prev).clamp(1, MAX_ALARM_REPEAT)
            } else {
                1
            };
            for _ in 0..n {
                list.push((name.clone(), v.verdict));
            }
        }
        self.policy
            .decide(client, group.as_deref(), &list, now_ms)
            .action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small native model named `name` (input `[1, 4, 4]`, 3 classes).
    fn tiny(name: &str) -> (Arc<dyn Model>, String) {
        tiny_with(name, &[1, 4, 4], [0.0, 1.0])
    }

    /// A small native model named `name` with 3 classes, input `shape` and input `range`.
    fn tiny_with(name: &str, shape: &[usize], range: [f32; 2]) -> (Arc<dyn Model>, String) {
        let net = Network::new(&mamori_ml::Arch::Mlp { hidden: vec![4] }, shape, 3, 1);
        let mut card = mamori_core::ModelCard::classifier(name, "mlp", shape, 3);
        card.input_range = range;
        (
            Arc::new(mamori_ml::NativeModel::new(net, card)),
            "mamori-native".into(),
        )
    }

    fn dawn_spec(rate: f64, fingerprint: f32) -> WatermarkSpec {
        WatermarkSpec::Dawn {
            rate,
            fingerprint,
            fingerprint_dims: Vec::new(),
        }
    }

    /// Every served model gets its own DAWN (own key, own ledger, records naming it), from the
    /// key files or, with a master secret, from keys derived with the model's name.
    #[test]
    fn each_served_model_gets_its_own_dawn() {
        for secret in [None, Some(SecretKey::from_bytes([6; 32]))] {
            let tmp = tempfile::tempdir().unwrap();
            let mut ctx = ProtectionContext::new(tmp.path());
            ctx.secret = secret.clone();
            let mut spec = builtin("dawn").unwrap();
            spec.watermark = Some(dawn_spec(0.3, 0.0));
            let p = protect(
                GatewayConfig::default(),
                vec![tiny("a"), tiny("b")],
                &spec,
                &ctx,
            )
            .unwrap();
            assert_eq!(p.dawn.keys().collect::<Vec<_>>(), ["a", "b"]);
            assert!(p.models.iter().all(|m| m.watermark.is_some()));
            let (a, b) = (&p.dawn["a"], &p.dawn["b"]);
            let (mut na, mut nb, mut differ) = (0, 0, 0);
            for i in 0..200 {
                let x: Vec<f32> = (0..16).map(|j| ((i * 16 + j) % 97) as f32 / 97.0).collect();
                let (mut pa, mut pb) = ([0.2f32, 0.5, 0.3], [0.2f32, 0.5, 0.3]);
                let ma = a.apply(&x, &mut pa);
                let mb = b.apply(&x, &mut pb);
                na += usize::from(ma.is_some());
                nb += usize::from(mb.is_some());
                differ += usize::from(ma.is_some() != mb.is_some());
            }
            assert!(differ > 20, "{differ}");
            assert_eq!((a.ledger_len(), b.ledger_len()), (na, nb));
            for (name, d) in [("a", a), ("b", b)] {
                assert!(d
                    .ledger_records()
                    .iter()
                    .all(|r| r.model.as_deref() == Some(name)));
                assert!(DawnPaths::for_model(tmp.path(), name).ledger.is_file());
            }
            assert!(!DawnPaths::in_home(tmp.path()).any_exists());
            let ledgers = mamori_defense::dawn::HomeLedgers::find(tmp.path()).unwrap();
            assert_eq!(ledgers.models.len(), 2);
        }
    }

    /// With several served models, each is watched with its own calibration; a model without
    /// one falls back to the shared calibration, then to the defaults. Same for DAWN's
    /// fingerprint dimensions.
    #[test]
    fn each_served_model_gets_its_own_calibration() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ctx = ProtectionContext::new(tmp.path());
        ctx.secret = Some(SecretKey::from_bytes([3; 32]));
        let mut tight = DetectorsConfig::default();
        tight.rate.max_total = 2;
        ctx.model_calibrations.insert(
            "a".into(),
            ModelCalibration {
                detectors: tight,
                fingerprint_dims: vec![4, 2],
            },
        );
        // The volume detector's verdict on the third query, per served model.
        let third_alarms = |ctx: &ProtectionContext| -> Vec<bool> {
            let p = protect(
                GatewayConfig::default(),
                vec![tiny("a"), tiny("b")],
                &builtin("detect").unwrap(),
                ctx,
            )
            .unwrap();
            p.models
                .iter()
                .map(|m| {
                    let rate = m
                        .detectors
                        .iter()
                        .find(|d| d.info().name == "rate")
                        .unwrap();
                    let mut st = rate.new_state();
                    let x = [0.5f32; 16];
                    (0..3)
                        .map(|t| {
                            st.observe(&mamori_core::Observation {
                                client: "c",
                                input: &x,
                                input_shape: &[1, 4, 4],
                                probs: &[0.2, 0.5, 0.3],
                                label: 1,
                                time_ms: t,
                            })
                            .alarm
                        })
                        .last()
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(third_alarms(&ctx), [true, false], "a: its own; b: defaults");
        let mut shared = DetectorsConfig::default();
        shared.rate.max_total = 1;
        ctx.calibration = Some(shared);
        assert_eq!(
            third_alarms(&ctx),
            [true, true],
            "b: the shared calibration"
        );
        // DAWN's fingerprint: a's own quiet dimensions, b's from the shared list.
        ctx.fingerprint_dims = vec![7];
        let p = protect(
            GatewayConfig::default(),
            vec![tiny("a"), tiny("b")],
            &builtin("dawn").unwrap(),
            &ctx,
        )
        .unwrap();
        assert_eq!(p.dawn["a"].fingerprint().unwrap().dims(), &[2, 4]);
        assert_eq!(p.dawn["b"].fingerprint().unwrap().dims(), &[7]);
    }

    /// The detectors that quantise inputs get each model's input range from its card: a
    /// tabular model's Blacklight (64 features in `[0, 1000]`) alarms on a perturbation search
    /// at its third query, which on the `[0, 1]` default it never sees (every value would
    /// saturate); a card whose range has no width is refused, naming the model.
    #[test]
    fn quantising_detectors_take_the_models_input_range() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ProtectionContext::new(tmp.path());
        let tabular = |name: &str, range: [f32; 2]| tiny_with(name, &[64], range);
        let p = protect(
            GatewayConfig::default(),
            vec![tabular("t", [0.0, 1000.0])],
            &builtin("detect").unwrap(),
            &ctx,
        )
        .unwrap();
        let blacklight = p.models[0]
            .detectors
            .iter()
            .find(|d| d.info().name == "blacklight")
            .unwrap();
        let mut st = blacklight.new_state();
        let mut x: Vec<f32> = (0..64).map(|i| (i * 389 % 1000) as f32).collect();
        let first = (0..20).position(|t| {
            for (i, v) in x.iter_mut().enumerate() {
                *v = (*v + if (i + t) % 2 == 0 { 0.5 } else { -0.5 }).clamp(0.0, 1000.0);
            }
            st.observe(&mamori_core::Observation {
                client: "c",
                input: &x,
                input_shape: &[64],
                probs: &[0.2, 0.5, 0.3],
                label: 1,
                time_ms: t as u64,
            })
            .alarm
        });
        assert_eq!(
            first,
            Some(2),
            "alarmed at the third query (the second and third flagged)"
        );
        let e = protect(
            GatewayConfig::default(),
            vec![tabular("flat", [1.0, 1.0])],
            &builtin("detect").unwrap(),
            &ctx,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("\"flat\"") && e.contains("input_range"), "{e}");
    }

    /// A legacy shared ledger moves to the model when one model is served, and stays put
    /// (read-only) when several are.
    #[test]
    fn a_legacy_ledger_is_adopted_by_a_single_model_only() {
        let spec = builtin("dawn").unwrap();
        let legacy_home = || {
            let tmp = tempfile::tempdir().unwrap();
            Dawn::open_home(tmp.path(), 0.5).unwrap();
            assert!(DawnPaths::in_home(tmp.path()).ledger.is_file());
            tmp
        };
        let one = legacy_home();
        let key = SecretKey::load(&DawnPaths::in_home(one.path()).key).unwrap();
        protect(
            GatewayConfig::default(),
            vec![tiny("solo")],
            &spec,
            &ProtectionContext::new(one.path()),
        )
        .unwrap();
        assert!(!DawnPaths::in_home(one.path()).any_exists());
        let moved = DawnPaths::for_model(one.path(), "solo");
        assert_eq!(SecretKey::load(&moved.key).unwrap(), key);
        let two = legacy_home();
        protect(
            GatewayConfig::default(),
            vec![tiny("a"), tiny("b")],
            &spec,
            &ProtectionContext::new(two.path()),
        )
        .unwrap();
        let found = mamori_defense::dawn::HomeLedgers::find(two.path()).unwrap();
        assert!(found.legacy.is_some());
        assert_eq!(found.models.len(), 2);
        assert_ne!(
            SecretKey::load(&DawnPaths::for_model(two.path(), "a").key).unwrap(),
            SecretKey::load(&DawnPaths::in_home(two.path()).key).unwrap()
        );
    }

    /// `--watermark` wins over `[watermark]`, which wins over the policy.
    #[test]
    fn watermark_precedence_flag_then_config_then_policy() {
        let cfg = |kind, rate, fingerprint| WatermarkConfig {
            kind,
            rate,
            fingerprint,
            fingerprint_dims: Vec::new(),
        };
        let fp = default_fingerprint();
        // No section, no flag: the policy's.
        let mut p = builtin("default").unwrap();
        let own = p.watermark.clone();
        assert_eq!(
            merge_watermark(&mut p, None, false).unwrap(),
            Some(WatermarkSource::Policy)
        );
        assert_eq!(p.watermark, own);
        let mut p = builtin("none").unwrap();
        assert_eq!(merge_watermark(&mut p, None, false).unwrap(), None);
        assert_eq!(p.watermark, None);
        // The section turns DAWN on with its settings, replacing the policy's.
        let mut p = builtin("none").unwrap();
        let c = cfg(WatermarkKind::Dawn, 0.02, None);
        assert_eq!(
            merge_watermark(&mut p, Some(&c), false).unwrap(),
            Some(WatermarkSource::Config)
        );
        assert_eq!(p.watermark, Some(dawn_spec(0.02, fp)));
        // On a rounding policy the default strength is 0; an explicit one is refused.
        let mut p = builtin("default").unwrap();
        merge_watermark(&mut p, Some(&c), false).unwrap();
        assert_eq!(p.watermark, Some(dawn_spec(0.02, 0.0)));
        let mut p = builtin("default").unwrap();
        let e = merge_watermark(
            &mut p,
            Some(&cfg(WatermarkKind::Dawn, 0.02, Some(3.0))),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("watermark.fingerprint"), "{e}");
        // A bad rate in the section is named.
        let mut p = builtin("none").unwrap();
        let e = merge_watermark(&mut p, Some(&cfg(WatermarkKind::Dawn, 2.0, None)), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("watermark.rate"), "{e}");
        // `kind = "none"` turns the policy's DAWN off...
        let off = cfg(WatermarkKind::None, 0.005, None);
        let mut p = builtin("dawn").unwrap();
        assert_eq!(merge_watermark(&mut p, Some(&off), false).unwrap(), None);
        assert_eq!(p.watermark, None);
        // ...but the flag wins: the policy's own DAWN, else the defaults.
        let mut p = builtin("dawn").unwrap();
        let own = p.watermark.clone();
        assert_eq!(
            merge_watermark(&mut p, Some(&off), true).unwrap(),
            Some(WatermarkSource::Flag)
        );
        assert_eq!(p.watermark, own);
        let mut p = builtin("rounding").unwrap();
        assert_eq!(
            merge_watermark(&mut p, Some(&off), true).unwrap(),
            Some(WatermarkSource::Flag)
        );
        assert_eq!(p.watermark, Some(dawn_spec(default_dawn_rate(), 0.0)));
        // The flag with a DAWN section: the section's settings.
        let mut p = builtin("none").unwrap();
        assert_eq!(
            merge_watermark(&mut p, Some(&c), true).unwrap(),
            Some(WatermarkSource::Config)
        );
        assert_eq!(p.watermark, Some(dawn_spec(0.02, fp)));
        let mut p = builtin("none").unwrap();
        merge_watermark(&mut p, None, true).unwrap();
        assert_eq!(p.watermark, Some(dawn_spec(default_dawn_rate(), fp)));
    }

    fn verdict(subject: &str, detector: &str, alarm: bool, queries: u64) -> NamedVerdict {
        NamedVerdict {
            detector: detector.into(),
            subject: subject.into(),
            verdict: Verdict {
                score: if alarm { 2.0 } else { 0.1 },
                alarm,
            },
            queries,
        }
    }

    #[test]
    fn every_builtin_resolves_and_checks() {
        for n in BUILTIN_POLICIES {
            let p = resolve(n, &BTreeMap::new()).unwrap();
            p.check(n).unwrap();
        }
        let e = resolve("nope", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("default"), "{e}");
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let mut p = builtin("dawn").unwrap();
        p.watermark = Some(WatermarkSpec::Dawn {
            rate: 1.5,
            fingerprint: 0.5,
            fingerprint_dims: Vec::new(),
        });
        assert!(p.check("x").unwrap_err().to_string().contains("rate"));
        for bad in [-0.1, f32::NAN, 25.0] {
            p.watermark = Some(WatermarkSpec::Dawn {
                rate: 0.005,
                fingerprint: bad,
                fingerprint_dims: Vec::new(),
            });
            let e = p.check("x").unwrap_err().to_string();
            assert!(e.contains("watermark.fingerprint"), "{e}");
        }
        let mut p = builtin("detect").unwrap();
        p.escalation.block_at = -1.0;
        assert!(p.check("x").unwrap_err().to_string().contains("block_at"));
        let e = toml::from_str::<PolicySpec>("detekt = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("detekt"), "{e}");
        let p: PolicySpec = toml::from_str(
            "detect = true\npostprocessors = [{ kind = \"rounding\", decimals = 2 }]\n\
             watermark = { kind = \"dawn\" }\n[escalation]\nblock_at = 10.0\n",
        )
        .unwrap();
        assert!(p.detect && p.postprocessors.len() == 1);
        assert_eq!(p.escalation.block_at, 10.0);
        assert_eq!(
            p.watermark,
            Some(WatermarkSpec::Dawn {
                rate: 0.005,
                fingerprint: 9.0,
                fingerprint_dims: Vec::new(),
            })
        );
        let p: PolicySpec =
            toml::from_str("watermark = { kind = \"dawn\", fingerprint = 0.0 }\n").unwrap();
        p.check("x").unwrap();
        // Rounding with the fingerprint: refused with the fix in the message.
        let p: PolicySpec = toml::from_str(
            "postprocessors = [{ kind = \"rounding\", decimals = 2 }]\n\
             watermark = { kind = \"dawn\" }\n",
        )
        .unwrap();
        let e = p.check("x").unwrap_err().to_string();
        assert!(e.contains("watermark.fingerprint = 0"), "{e}");
        // Detector settings out of range (TOML can spell NaN): refused by name.
        for (toml_text, setting) in [
            ("[detectors.knn]\nwindow = 0\n", "detectors.knn.window"),
            ("[detectors.prada]\ndelta = nan\n", "detectors.prada.delta"),
            (
                "[detectors.knn]\nproj_dim = 100000\n",
                "detectors.knn.proj_dim",
            ),
        ] {
            let p: PolicySpec = toml::from_str(toml_text).unwrap();
            let e = p.check("x").unwrap_err().to_string();
            assert!(e.contains(setting), "{toml_text}: {e}");
        }
    }

    /// DAWN's fingerprint goes on the calibration's quiet dimensions, or on the policy's own
    /// list; with neither, or at strength 0, it stays off.
    #[test]
    fn the_dawn_fingerprint_takes_its_dimensions_from_the_calibration() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ctx = ProtectionContext::new(tmp.path());
        ctx.secret = Some(SecretKey::from_bytes([2; 32]));
        let build = |spec: &PolicySpec, ctx: &ProtectionContext| {
            protect(GatewayConfig::default(), vec![tiny("m")], spec, ctx)
                .unwrap()
                .dawn
                .remove("m")
                .unwrap()
        };
        let spec = builtin("dawn").unwrap();
        assert!(build(&spec, &ctx).fingerprint().is_none());
        ctx.fingerprint_dims = vec![9, 1, 5];
        let d = build(&spec, &ctx);
        let f = d.fingerprint().unwrap();
        assert_eq!(f.dims(), &[1, 5, 9]);
        assert_eq!(f.epsilon(), mamori_defense::fingerprint::DEFAULT_EPSILON);
        let mut own = spec.clone();
        if let Some(WatermarkSpec::Dawn {
            fingerprint_dims, ..
        }) = &mut own.watermark
        {
            *fingerprint_dims = vec![0];
        }
        assert_eq!(build(&own, &ctx).fingerprint().unwrap().dims(), &[0]);
        let mut off = spec;
        if let Some(WatermarkSpec::Dawn { fingerprint, .. }) = &mut off.watermark {
            *fingerprint = 0.0;
        }
        assert!(build(&off, &ctx).fingerprint().is_none());
        // The default policy rounds answers: DAWN without the fingerprint.
        assert!(build(&builtin("default").unwrap(), &ctx)
            .fingerprint()
            .is_none());
    }

    #[test]
    fn escalation_counts_alarms_per_query_and_blocks() {
        let mut e = Escalation::new(PolicyConfig::default());
        // No alarm: allow.
        assert_eq!(
            e.decide("c", &[verdict("c", "prada", false, 10)], 0),
            Action::Allow
        );
        // One alarming request of 10 more queries: risk 10 ≥ degrade (5).
        assert_eq!(
            e.decide("c", &[verdict("c", "prada", true, 20)], 0),
            Action::Degrade
        );
        // 40 more alarming queries: risk 50 ≥ block.
        assert_eq!(
            e.decide("c", &[verdict("c", "prada", true, 60)], 0),
            Action::Block
        );
        // Another client is unaffected.
        assert_eq!(
            e.decide("d", &[verdict("d", "prada", false, 60)], 0),
            Action::Allow
        );
    }
}
