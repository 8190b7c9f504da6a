//! # mamori-attack
//!
//! The attack harness: what a model thief (or a red team) can do against a prediction API.
//!
//! - [`oracle`]: what can be queried — a local model, an Open Inference Protocol v2 HTTP
//!   endpoint, several API keys — with exact query accounting (one sample = one query) and
//!   budgets; answers disclose probabilities, top-k or labels.
//! - [`extract`]: model extraction attacks behind [`ExtractionAttack`], one file each
//!   (random queries, Knockoff Nets random and adaptive, Papernot's JBDA, active learning,
//!   Tramèr's equation solving and label-only retraining, transfer learning).
//! - [`metrics`]: substitute accuracy, fidelity, curves over budgets.
//! - [`inversion`]: MI-Face model inversion (Fredrikson et al. 2015).
//! - [`membership`]: membership inference (global threshold, shadow models, LiRA).
//! - [`report`]: Markdown reports and PNG plots.
//!
//! Every attack states what it needs from the answers ([`extract::Need`]) and degrades to
//! what is disclosed.

pub mod error;
pub mod experiment;
pub mod extract;
pub mod inversion;
pub mod linalg;
pub mod membership;
pub mod metrics;
pub mod oracle;
pub mod report;

pub use error::AttackError;
pub use extract::{by_name, Extraction, ExtractionAttack, ExtractionContext};
pub use metrics::{extraction_curve, CurvePoint, EvalSet, SubstituteMetrics};
pub use oracle::{HttpOracle, HttpOracleConfig, LocalOracle, MultiKeyOracle};
