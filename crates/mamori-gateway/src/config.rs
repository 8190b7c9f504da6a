//! Gateway configuration: `mamori.toml` plus `MAMORI_*` environment overrides.
//!
//! ```toml
//! [server]
//! addr = "127.0.0.1:8080"
//! max_body_bytes = 8388608
//! max_batch = 256
//! store_raw_input = false
//!
//! [tiers.full]
//! disclosure = "probabilities"   # or "top_k" (with top_k = K) or "label"
//! rate_per_s = 100.0
//! burst = 200
//! daily_quota = 1000000
//! postprocessors = []             # names resolved by the postprocessor registry
//!
//! [detect]
//! throttle_factor = 0.1
//! degrade_postprocessors = ["round2"]
//!
//! [postprocessors.round2]          # named definitions, interpreted by the registry
//! kind = "rounding"
//! decimals = 2
//!
//! [watermark]                      # DAWN answer watermarking (see WatermarkConfig)
//! kind = "dawn"                    # or "none" (turns off the policy's DAWN)
//! rate = 0.005
//! # fingerprint = 9.0              # linear fingerprint strength; 0 = off
//! # fingerprint_dims = [0, 27]     # default: the model's quiet dimensions
//! ```

use crate::error::GatewayError;
use mamori_core::Disclosure;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Transport and validation limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind (`HOST:PORT`; port 0 picks a free port).
    pub addr: String,
    /// Largest accepted request body in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Largest accepted batch (first dimension).
    pub max_batch: usize,
    /// Store raw inputs in the audit log (otherwise only their SHA-256).
    pub store_raw_input: bool,
    /// Load balancers and reverse proxies (IP addresses or CIDR ranges) whose
    /// `X-Forwarded-For` is believed: the client's address is then the last one in that header
    /// that is not itself a trusted proxy. Others' `X-Forwarded-For` is ignored (a client
    /// could write anything there).
    pub trusted_proxies: Vec<String>,
    /// The gateway's TLS certificate chain (PEM): with [`ServerConfig::tls_key`], the gateway
    /// speaks HTTPS (see [`crate::tls`]); without, plain HTTP (put TLS in front of it then).
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of [`ServerConfig::tls_cert`] (PEM).
    pub tls_key: Option<std::path::PathBuf>,
    /// Clients must present a certificate this CA (PEM) signed: mutual TLS. The API key is
    /// still required.
    pub tls_client_ca: Option<std::path::PathBuf>,
}

impl ServerConfig {
    /// [`ServerConfig::trusted_proxies`] parsed; errors name the entry.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, GatewayError> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        GatewayError::Config(format!(
                            "server.trusted_proxies: {s:?} is not an IP address or CIDR range"
                        ))
                    })
            })
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            max_body_bytes: 8 << 20,
            max_batch: 256,
            store_raw_input: false,
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// Where the audit log (requests, alerts, blocks, watermark ledger) is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditBackend {
    /// `<home>/audit.db`, SQLite in WAL mode (one gateway process).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every gateway replica ([`AuditConfig::postgres_url`]).
    Postgres,
}

impl std::str::FromStr for AuditBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            other => Err(format!(
                "unknown audit store {other:?} (sqlite or postgres)"
            )),
        }
    }
}

/// A PostgreSQL connection string (`postgresql://user:pass@host:port/db` or
/// `host=... user=... dbname=...`). Its `Debug` hides the password, so a logged configuration
/// never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PostgresUrl(pub String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({:?})", redact_password(&self.0))
    }
}

/// The connection string with any password replaced by `***` (URL form `user:pass@` and
/// key-value form `password=...`).
pub fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, tail) = match rest.find('@') {
            Some(at) if !rest[..at].contains('/') => (&rest[..at], &rest[at..]),
            _ => return url.to_string(),
        };
        return match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{tail}"),
            None => url.to_string(),
        };
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where rate limits and quotas are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    /// Token buckets in this process (one gateway, or replicas limited separately).
    #[default]
    Local,
    /// Token buckets in Redis, shared by every replica ([`LimitsConfig::redis_url`]).
    Redis,
}

impl std::str::FromStr for LimitBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "redis" => Ok(Self::Redis),
            other => Err(format!("unknown limits store {other:?} (local or redis)")),
        }
    }
}

/// A Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS); its `Debug` hides
/// the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", redact_password(&self.0))
    }
}

/// Rate-limit store settings (`[limits]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `local` (default) or `redis` (shared by the replicas; see
    /// [`crate::ratelimit_redis`]).
    pub store: LimitBackend,
    /// The Redis URL when `store = "redis"` (or `MAMORI_REDIS_URL`).
    pub redis_url: Option<RedisUrl>,
    /// Prefix of the bucket names in Redis (several gateways' deployments can share a server).
    pub redis_prefix: String,
    /// Timeout (ms) for connecting to Redis and for each check; past it the check falls back
    /// to this replica's own buckets.
    pub redis_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            store: LimitBackend::Local,
            redis_url: None,
            redis_prefix: "mamori:limit:".into(),
            redis_timeout_ms: 250,
        }
    }
}

/// A secret string from the configuration; its `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Alert notification settings (`[alerts]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where every alert is POSTed as JSON (`http(s)://…`; or `MAMORI_ALERT_WEBHOOK_URL`);
    /// none: alerts are stored and counted only. See [`crate::alert_webhook`].
    pub webhook_url: Option<String>,
    /// HMAC-SHA-256 key of the `X-Mamori-Signature` header (or
    /// `MAMORI_ALERT_WEBHOOK_SECRET`).
    pub webhook_secret: Option<Secret>,
    /// Timeout of one delivery attempt (ms).
    pub webhook_timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout_ms: 5_000,
        }
    }
}

impl AlertsConfig {
    /// The webhook's settings, when one is configured.
    pub fn webhook(&self) -> Option<crate::alert_webhook::WebhookSettings> {
        self.webhook_url
            .as_ref()
            .map(|url| crate::alert_webhook::WebhookSettings {
                url: url.clone(),
                secret: self.webhook_secret.as_ref().map(|s| s.0.clone()),
                timeout: std::time::Duration::from_millis(self.webhook_timeout_ms),
            })
    }
}

/// Audit writer settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The store: `sqlite` (default, `<home>/audit.db`) or `postgres`.
    pub store: AuditBackend,
    /// The PostgreSQL connection string when `store = "postgres"` (better given through
    /// `MAMORI_AUDIT_POSTGRES_URL` than written into a file).
    pub postgres_url: Option<PostgresUrl>,
    /// PEM file of the CA certificate(s) the database server's TLS certificate is verified
    /// against (default: the public web PKI roots). TLS itself is chosen by `sslmode` in the
    /// connection string; use `sslmode=require` across a network.
    pub postgres_ca_file: Option<std::path::PathBuf>,
    /// PEM certificate (chain) the gateway presents to the database server (TLS client
    /// authentication, PostgreSQL's `hostssl … cert`); needs `postgres_client_key`.
    pub postgres_client_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `postgres_client_cert`.
    pub postgres_client_key: Option<std::path::PathBuf>,
    /// Capacity of the bounded event queue (requests wait when it is full).
    pub queue: usize,
    /// Largest number of events written in one transaction.
    pub batch: usize,
    /// After writing a batch, the writer waits this long (ms) so that the next transaction
    /// carries more events (fewer commits and wake-ups under load). A flush or a shutdown does
    /// not wait.
    pub linger_ms: u64,
    /// Seal every record into the tamper-evident chain (`mamori audit verify`; default on;
    /// see [`crate::audit_chain`]). The chain's state lives in `<home>/audit-chain`: one
    /// gateway process per home directory.
    pub seal: bool,
}

impl AuditConfig {
    /// The PostgreSQL connection string, or the configuration error naming both ways to give
    /// it.
    pub fn require_postgres_url(&self) -> Result<&PostgresUrl, GatewayError> {
        self.postgres_url.as_ref().ok_or_else(|| {
            GatewayError::Config(
                "audit.store = \"postgres\" needs audit.postgres_url (or MAMORI_AUDIT_POSTGRES_URL)"
                    .into(),
            )
        })
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            store: AuditBackend::Sqlite,
            postgres_url: None,
            postgres_ca_file: None,
            postgres_client_cert: None,
            postgres_client_key: None,
            queue: 10_000,
            batch: 512,
            linger_ms: 2,
            seal: true,
        }
    }
}

/// What a tier discloses, in TOML form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisclosureKind {
    /// Full probability vectors.
    Probabilities,
    /// The `top_k` largest probabilities, zeros elsewhere.
    TopK,
    /// Only the label.
    Label,
}

/// One client tier: what it sees and how much it may ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// What answers disclose.
    pub disclosure: DisclosureKind,
    /// `k` for [`DisclosureKind::TopK`].
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Sustained rate in queries (samples) per second.
    pub rate_per_s: f64,
    /// Bucket size in queries.
    pub burst: u64,
    /// Queries per UTC day.
    pub daily_quota: u64,
    /// Extra postprocessors applied to this tier's answers (registry names).
    #[serde(default)]
    pub postprocessors: Vec<String>,
}

fn default_top_k() -> usize {
    3
}

impl TierConfig {
    /// The disclosure as the core type.
    pub fn disclosure(&self) -> Disclosure {
        match self.disclosure {
            DisclosureKind::Probabilities => Disclosure::Probabilities,
            DisclosureKind::TopK => Disclosure::TopK(self.top_k),
            DisclosureKind::Label => Disclosure::Label,
        }
    }
}

/// How the chain acts on escalation decisions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Whether `mamori serve` attaches the detector set and escalation policy.
    pub enabled: bool,
    /// Escalation policy settings, handed as-is to the policy implementation
    /// (`mamori-detect`'s `PolicyConfig` in `mamori serve`).
    pub policy: Option<toml::Value>,
    /// A throttled client's rate and burst are multiplied by this factor.
    pub throttle_factor: f64,
    /// Postprocessors added for a degraded client (registry names).
    pub degrade_postprocessors: Vec<String>,
    /// Disclosure forced on a degraded client.
    pub degrade_disclosure: DisclosureKind,
    /// Also run the detectors per client network: IPv4 clients grouped by this prefix length
    /// (e.g. 24; 0 = off, the default — many benign users behind one NAT would share a
    /// stream). See [`crate::chain::network_subject`].
    pub network_prefix_v4: u8,
    /// The same for IPv6 clients (e.g. 48 or 56; 0 = off).
    pub network_prefix_v6: u8,
    /// `mamori serve` saves detector states and escalation risk this often (seconds; 0 = only
    /// at shutdown), so a crash loses at most this much of them.
    pub checkpoint_s: u64,
    /// `mamori serve` applies the block events other replicas wrote to the shared audit store
    /// this often (seconds; 0 = only at start). See [`crate::Chain::sync_blocks`].
    pub block_sync_s: u64,
    /// Keep each client's detector states in the shared audit store (SQLite or PostgreSQL)
    /// instead of this replica's state files: saved at every checkpoint and at shutdown,
    /// loaded by whichever replica sees the client next, so a client moved to another
    /// replica (a restart, a rolling deploy, a failover) keeps its history. A hand-off, not a
    /// merge: two replicas serving one client at the same time each keep their own.
    pub shared_state: bool,
    /// Most subjects (clients, groups, networks) per model whose detector states stay in
    /// memory (0 = no limit). At each checkpoint, once the states observed since the last one
    /// are saved, the least recently observed subjects beyond this many — saved, and with no
    /// request in flight — are dropped from memory (and `mamori serve` checkpoints early, within
    /// seconds, when a model holds more than twice this many:
    /// [`crate::Chain::memory_pressure`]); their states are loaded again, from their
    /// state file or the shared store, on their next request, and the admin listing keeps
    /// their query count, alarms and last action meanwhile. At start, at most this many state
    /// files are loaded (the most recently written); the others are loaded on their subject's
    /// first request. One subject's memory is bounded by its detectors' capacities
    /// (`docs/bench/detect.md`); this bounds how many of them are held at once, so that many
    /// keys (or networks) used one after another do not add up in memory. Needs somewhere to
    /// save to: without a state directory (or `shared_state`), nothing is evicted.
    pub max_resident_subjects: usize,
    /// Most heap bytes of detector states per model in memory (0 = no limit; default 4 GiB),
    /// beside `max_resident_subjects`: at each checkpoint the least recently observed saved
    /// subjects are dropped from memory until both hold, and `mamori serve` checkpoints early
    /// when a model holds more than twice this. A subject's bytes are what its detector states
    /// and repeat memory hold ([`mamori_core::DetectorState::heap_bytes`]), measured when it
    /// is loaded, every 1,024 of its queries and at each checkpoint — up to ≈ 150 MiB for one
    /// MNIST-sized client at its detectors' default capacities, so the subject count alone
    /// does not bound memory. Listed per subject by the admin API (`state_bytes`) and summed
    /// per model in the `mamori_detector_state_bytes` metric.
    pub max_resident_bytes: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            policy: None,
            throttle_factor: 0.1,
            degrade_postprocessors: Vec::new(),
            degrade_disclosure: DisclosureKind::Label,
            network_prefix_v4: 0,
            network_prefix_v6: 0,
            checkpoint_s: 120,
            block_sync_s: 5,
            shared_state: false,
            max_resident_subjects: 1024,
            max_resident_bytes: 4 << 30,
        }
    }
}

/// The answer watermark a `[watermark]` section asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkKind {
    /// DAWN (Szyller et al. 2021), with each served model's own keys and ledger.
    #[default]
    Dawn,
    /// No watermark, even if the protection policy has one (`--watermark dawn` still turns
    /// it on).
    None,
}

/// `[watermark]`: answer watermarking for this gateway, on top of the protection policy
/// (see `crate::protection::merge_watermark` for the precedence: `mamori serve --watermark`,
/// then this section, then the policy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    /// `dawn` (default) or `none`.
    pub kind: WatermarkKind,
    /// Share of queries DAWN watermarks, in `(0, 1)` (default 0.005, the paper's).
    pub rate: f64,
    /// Strength `ε` of DAWN's keyed linear fingerprint in `[0, 20]`
    /// (`mamori_defense::fingerprint`); 0 turns it off. Default: 9, or 0 when the policy
    /// rounds answers (the fingerprint would undo the rounding).
    pub fingerprint: Option<f32>,
    /// Input dimensions the fingerprint reads; empty (default) = the model's quiet dimensions
    /// from its calibration.
    pub fingerprint_dims: Vec<u32>,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            kind: WatermarkKind::Dawn,
            rate: mamori_defense::dawn::DEFAULT_RATE,
            fingerprint: None,
            fingerprint_dims: Vec::new(),
        }
    }
}

impl WatermarkConfig {
    /// Checks the rate and fingerprint strength; errors name the key.
    pub fn check(&self) -> Result<(), GatewayError> {
        if self.kind == WatermarkKind::None {
            return Ok(());
        }
        if !(self.rate > 0.0 && self.rate < 1.0) {
            return Err(GatewayError::Config(format!(
                "watermark.rate must lie in (0, 1), got {}",
                self.rate
            )));
        }
        let max = mamori_defense::fingerprint::MAX_EPSILON;
        if let Some(f) = self.fingerprint {
            if !(f.is_finite() && (0.0..=max).contains(&f)) {
                return Err(GatewayError::Config(format!(
                    "watermark.fingerprint must lie in [0, {max}], got {f}"
                )));
            }
        }
        Ok(())
    }
}

/// The whole gateway configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Transport and validation limits.
    pub server: ServerConfig,
    /// Audit writer.
    pub audit: AuditConfig,
    /// Where rate limits are kept.
    pub limits: LimitsConfig,
    /// Alert notifications.
    pub alerts: AlertsConfig,
    /// Tier used by keys created without `--tier`.
    pub default_tier: String,
    /// Tiers by name.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Escalation settings.
    pub detect: DetectConfig,
    /// Named postprocessor definitions referenced by tiers and `detect.degrade_postprocessors`;
    /// each table is interpreted by the postprocessor registry (in `mamori serve`,
    /// `mamori-defense`'s specs, e.g. `[postprocessors.round2] kind = "rounding"`,
    /// `decimals = 2`).
    pub postprocessors: BTreeMap<String, toml::Value>,
    /// Answer watermarking (`[watermark]`); absent = as the protection policy says.
    pub watermark: Option<WatermarkConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "full".to_string(),
            TierConfig {
                disclosure: DisclosureKind::Probabilities,
                top_k: 3,
                rate_per_s: 1000.0,
                burst: 2000,
                daily_quota: 10_000_000,
                postprocessors: Vec::new(),
            },
        );
        tiers.insert(
            "standard".to_string(),
            TierConfig {
                disclosure: DisclosureKind::TopK,
                top_k: 3,
                rate_per_s: 100.0,
                burst: 200,
                daily_quota: 100_000,
                postprocessors: Vec::new(),
            },
        );
        tiers.insert(
            "label".to_string(),
            TierConfig {
                disclosure: DisclosureKind::Label,
                top_k: 1,
                rate_per_s: 20.0,
                burst: 50,
                daily_quota: 10_000,
                postprocessors: Vec::new(),
            },
        );
        Self {
            server: ServerConfig::default(),
            audit: AuditConfig::default(),
            limits: LimitsConfig::default(),
            alerts: AlertsConfig::default(),
            default_tier: "standard".into(),
            tiers,
            detect: DetectConfig::default(),
            postprocessors: BTreeMap::new(),
            watermark: None,
        }
    }
}

impl GatewayConfig {
    /// Reads a TOML file (missing keys take defaults), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, GatewayError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| GatewayError::Config(format!("{}: {e}", p.display())))?;
                Self::from_toml(&text)
                    .map_err(|e| GatewayError::Config(format!("{}: {e}", p.display())))?
            }
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Like [`GatewayConfig::load`], defaulting to `home/mamori.toml` when it exists.
    pub fn load_for_home(path: Option<&Path>, home: &Path) -> Result<Self, GatewayError> {
        let default = home.join("mamori.toml");
        match path {
            Some(p) => Self::load(Some(p)),
            None if default.is_file() => Self::load(Some(&default)),
            None => Self::load(None),
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        toml::from_str(text).map_err(|e| GatewayError::Config(e.to_string()))
    }

    /// Applies `MAMORI_ADDR`, `MAMORI_MAX_BODY_BYTES`, `MAMORI_MAX_BATCH`,
    /// `MAMORI_STORE_RAW_INPUT`, `MAMORI_DEFAULT_TIER`, `MAMORI_AUDIT_STORE`,
    /// `MAMORI_AUDIT_POSTGRES_URL`, `MAMORI_LIMITS_STORE`, `MAMORI_REDIS_URL`,
    /// `MAMORI_ALERT_WEBHOOK_URL` and `MAMORI_ALERT_WEBHOOK_SECRET` from `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), GatewayError> {
        fn parse<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, GatewayError> {
            v.parse().map_err(|_| {
                GatewayError::Config(format!("environment variable {k}={v:?} is invalid"))
            })
        }
        if let Some(v) = get("MAMORI_ADDR") {
            self.server.addr = v;
        }
        if let Some(v) = get("MAMORI_MAX_BODY_BYTES") {
            self.server.max_body_bytes = parse("MAMORI_MAX_BODY_BYTES", &v)?;
        }
        if let Some(v) = get("MAMORI_MAX_BATCH") {
            self.server.max_batch = parse("MAMORI_MAX_BATCH", &v)?;
        }
        if let Some(v) = get("MAMORI_STORE_RAW_INPUT") {
            self.server.store_raw_input = parse("MAMORI_STORE_RAW_INPUT", &v)?;
        }
        if let Some(v) = get("MAMORI_DEFAULT_TIER") {
            self.default_tier = v;
        }
        if let Some(v) = get("MAMORI_AUDIT_STORE") {
            self.audit.store = v.parse().map_err(|e| {
                GatewayError::Config(format!("environment variable MAMORI_AUDIT_STORE: {e}"))
            })?;
        }
        if let Some(v) = get("MAMORI_AUDIT_POSTGRES_URL").filter(|v| !v.is_empty()) {
            self.audit.postgres_url = Some(PostgresUrl(v));
        }
        if let Some(v) = get("MAMORI_LIMITS_STORE") {
            self.limits.store = v.parse().map_err(|e| {
                GatewayError::Config(format!("environment variable MAMORI_LIMITS_STORE: {e}"))
            })?;
        }
        if let Some(v) = get("MAMORI_REDIS_URL").filter(|v| !v.is_empty()) {
            self.limits.redis_url = Some(RedisUrl(v));
        }
        if let Some(v) = get("MAMORI_ALERT_WEBHOOK_URL").filter(|v| !v.is_empty()) {
            self.alerts.webhook_url = Some(v);
        }
        if let Some(v) = get("MAMORI_ALERT_WEBHOOK_SECRET").filter(|v| !v.is_empty()) {
            self.alerts.webhook_secret = Some(Secret(v));
        }
        Ok(())
    }

    /// Checks internal consistency (the default tier exists, limits are positive).
    pub fn check(&self) -> Result<(), GatewayError> {
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(GatewayError::Config(format!(
                "default_tier {:?} is not one of the tiers {:?}",
                self.default_tier,
                self.tiers.keys().collect::<Vec<_>>()
            )));
        }
        for (name, t) in &self.tiers {
            if t.rate_per_s.is_nan() || t.rate_per_s <= 0.0 || t.burst == 0 {
                return Err(GatewayError::Config(format!(
                    "tier {name}: rate_per_s and burst must be positive"
                )));
            }
            if t.disclosure == DisclosureKind::TopK && t.top_k == 0 {
                return Err(GatewayError::Config(format!(
                    "tier {name}: top_k must be ≥ 1"
                )));
            }
        }
        if self.server.max_batch == 0 || self.server.max_body_bytes == 0 {
            return Err(GatewayError::Config(
                "server.max_batch and server.max_body_bytes must be positive".into(),
            ));
        }
        if self.audit.store == AuditBackend::Postgres {
            self.audit.require_postgres_url()?;
        }
        if self.audit.postgres_client_cert.is_some() != self.audit.postgres_client_key.is_some() {
            return Err(GatewayError::Config(
                "audit.postgres_client_cert and audit.postgres_client_key go together".into(),
            ));
        }
        if self.limits.store == LimitBackend::Redis && self.limits.redis_url.is_none() {
            return Err(GatewayError::Config(
                "limits.store = \"redis\" needs limits.redis_url (or MAMORI_REDIS_URL)".into(),
            ));
        }
        self.server.trusted_proxy_nets()?;
        crate::tls::server_config(&self.server)?;
        if self.detect.network_prefix_v4 > 32 || self.detect.network_prefix_v6 > 128 {
            return Err(GatewayError::Config(
                "detect.network_prefix_v4 must be 0..=32 and detect.network_prefix_v6 0..=128"
                    .into(),
            ));
        }
        if let Some(url) = &self.alerts.webhook_url {
            crate::alert_webhook::check_url(url)?;
        }
        if self.alerts.webhook_timeout_ms == 0 {
            return Err(GatewayError::Config(
                "alerts.webhook_timeout_ms must be positive".into(),
            ));
        }
        if self.limits.redis_timeout_ms == 0 {
            return Err(GatewayError::Config(
                "limits.redis_timeout_ms must be positive".into(),
            ));
        }
        if !(self.detect.throttle_factor > 0.0 && self.detect.throttle_factor <= 1.0) {
            return Err(GatewayError::Config(
                "detect.throttle_factor must be in (0, 1]".into(),
            ));
        }
        if let Some(w) = &self.watermark {
            w.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_store_is_configured_by_file_or_environment_and_its_password_never_printed() {
        let cfg = GatewayConfig::from_toml(
            "[audit]\nstore = \"postgres\"\npostgres_url = \"postgresql://mamori:s3cret@db:5432/audit\"\n",
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.audit.store, AuditBackend::Postgres);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgresql://mamori:***@db:5432/audit"),
            "{shown}"
        );
        assert_eq!(
            redact_password("host=/run/pg user=m password=s3cret dbname=a"),
            "host=/run/pg user=m password=*** dbname=a"
        );
        assert_eq!(redact_password("postgresql://db/a"), "postgresql://db/a");

        // The backend without its URL is a configuration error naming both settings.
        let mut cfg = GatewayConfig::default();
        cfg.apply_env(|k| (k == "MAMORI_AUDIT_STORE").then(|| "postgres".to_string()))
            .unwrap();
        let e = cfg.check().unwrap_err().to_string();
        assert!(
            e.contains("audit.postgres_url") && e.contains("MAMORI_AUDIT_POSTGRES_URL"),
            "{e}"
        );
        cfg.apply_env(|k| {
            (k == "MAMORI_AUDIT_POSTGRES_URL").then(|| "postgresql://db/a".to_string())
        })
        .unwrap();
        cfg.check().unwrap();
        let e = cfg
            .apply_env(|k| (k == "MAMORI_AUDIT_STORE").then(|| "mysql".to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MAMORI_AUDIT_STORE") && e.contains("mysql"),
            "{e}"
        );
        // An unknown store name in the file is refused too.
        assert!(GatewayConfig::from_toml("[audit]\nstore = \"mysql\"\n").is_err());
    }

    #[test]
    fn toml_and_env_overrides() {
        let cfg = GatewayConfig::from_toml(
            "default_tier = \"t\"\n[tiers.t]\ndisclosure = \"top_k\"\ntop_k = 2\nrate_per_s = 5.0\nburst = 3\ndaily_quota = 9\n",
        )
        .unwrap();
        assert_eq!(cfg.tiers["t"].disclosure(), Disclosure::TopK(2));
        cfg.check().unwrap();
        let mut cfg = cfg;
        cfg.apply_env(|k| (k == "MAMORI_MAX_BATCH").then(|| "7".to_string()))
            .unwrap();
        assert_eq!(cfg.server.max_batch, 7);
        assert!(cfg
            .apply_env(|k| (k == "MAMORI_MAX_BATCH").then(|| "x".to_string()))
            .is_err());
    }

    #[test]
    fn the_redis_limits_store_needs_a_url_and_never_prints_its_password() {
        let e = GatewayConfig::from_toml("[limits]\nstore = \"redis\"\n")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.redis_url") && e.contains("MAMORI_REDIS_URL"),
            "{e}"
        );
        let mut cfg = GatewayConfig::default();
        cfg.apply_env(|k| match k {
            "MAMORI_LIMITS_STORE" => Some("redis".into()),
            "MAMORI_REDIS_URL" => Some("redis://:hunter2@cache:6379/0".into()),
            _ => None,
        })
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.limits.store, LimitBackend::Redis);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = cfg
            .apply_env(|k| (k == "MAMORI_LIMITS_STORE").then(|| "memcached".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MAMORI_LIMITS_STORE") && e.contains("local or redis"),
            "{e}"
        );
        let e = GatewayConfig::from_toml("[limits]\nredis_timeout_ms = 0\n")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis_timeout_ms"), "{e}");
    }

    #[test]
    fn the_watermark_section_parses_and_bad_values_are_named() {
        let cfg = GatewayConfig::from_toml("[watermark]\nkind = \"dawn\"\nrate = 0.02\n").unwrap();
        cfg.check().unwrap();
        let w = cfg.watermark.unwrap();
        assert_eq!(
            (w.kind, w.rate, w.fingerprint),
            (WatermarkKind::Dawn, 0.02, None)
        );
        let cfg = GatewayConfig::from_toml("[watermark]\n").unwrap();
        assert_eq!(cfg.watermark, Some(WatermarkConfig::default()));
        assert_eq!(GatewayConfig::default().watermark, None);
        let off = GatewayConfig::from_toml("[watermark]\nkind = \"none\"\nrate = 7.0\n").unwrap();
        off.check().unwrap();
        for (text, key) in [
            ("rate = 0.0", "watermark.rate"),
            ("rate = 1.5", "watermark.rate"),
            ("rate = nan", "watermark.rate"),
            ("fingerprint = -1.0", "watermark.fingerprint"),
            ("fingerprint = 21.0", "watermark.fingerprint"),
        ] {
            let e = GatewayConfig::from_toml(&format!("[watermark]\n{text}\n"))
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        for bad in ["kind = \"radioactive\"", "rat = 0.1"] {
            assert!(
                GatewayConfig::from_toml(&format!("[watermark]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_config_is_named() {
        assert!(GatewayConfig::from_toml("[server]\nbogus = 1\n").is_err());
        let cfg = GatewayConfig {
            default_tier: "nope".into(),
            ..Default::default()
        };
        assert!(cfg.check().unwrap_err().to_string().contains("nope"));
    }
}
