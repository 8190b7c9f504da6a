//! # mamori-gateway
//!
//! The guarded inference gateway: Open Inference Protocol v2 REST, API keys and tiers, input
//! validation, rate limits, the protection chain, the audit log and metrics.
//!
//! The heart is the [`chain`]: authenticate → validate → limit → detect → infer → postprocess →
//! watermark → audit, one ordered list usable in-process ([`Chain::handle`], [`ChainOracle`])
//! and over HTTP ([`server`]).
//!
//! ```no_run
//! # async fn demo(model: std::sync::Arc<dyn mamori_core::Model>) -> Result<(), mamori_gateway::GatewayError> {
//! use mamori_gateway::{ChainBuilder, GatewayConfig, ModelSpec, KeyStore};
//! use std::sync::Arc;
//! let keys = Arc::new(KeyStore::in_memory());
//! let (_, api_key) = keys.create("alice", None, "full", &[])?;
//! let chain = Arc::new(
//!     ChainBuilder::new(GatewayConfig::default())
//!         .keys(keys)
//!         .model(ModelSpec::new(model, "mamori-native"))
//!         .build()?,
//! );
//! let server = mamori_gateway::server::start(chain, "127.0.0.1:0").await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod alert_webhook;
pub mod audit;
pub mod audit_chain;
pub mod audit_postgres;
pub mod block_sync;
pub mod chain;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod oip;
pub mod policy;
pub mod protection;
pub mod ratelimit;
pub mod ratelimit_redis;
pub mod server;
pub mod state_codec;
pub mod tls;
pub mod upstream;
pub mod validate;

pub use audit::{open_store, AuditRecord, AuditStore, AuditWriter, MemoryStore, SqliteStore};
pub use audit_postgres::PostgresStore;
pub use chain::{
    Chain, ChainBuilder, ChainMode, ChainOracle, InferRequest, InferResponse, LedgerSink,
    ModelSpec, Payload, PostprocessorRegistry, Stage,
};
pub use config::{AuditBackend, GatewayConfig, TierConfig};
pub use error::GatewayError;
pub use keys::{KeyRecord, KeyStore, Principal};
pub use policy::{AlertOnAlarm, NamedVerdict, OnAlarm, Policy};
pub use server::{BlockingServer, RunningServer};
pub use upstream::UpstreamModel;
