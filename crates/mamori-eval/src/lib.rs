//! # mamori-eval
//!
//! The evaluation harness: "how stealable is my model, and what does protection cost my
//! users?" answered with one command.
//!
//! [`run`] drives a matrix of extraction attacks (from `mamori-attack`) × protection policies
//! (built by [`mamori_gateway::protection`], exactly as `mamori serve` builds them), each
//! attacker beside a population of benign clients, through the gateway's protection chain —
//! in-process ([`mamori_gateway::ChainOracle`]) or over HTTP against a live gateway on
//! `127.0.0.1:0` ([`mamori_attack::HttpOracle`]). Per cell it measures the substitute's
//! accuracy and fidelity, queries spent, queries until the first alarm and until the block,
//! DAWN watermark verification of the substitute, benign false alarms and accuracy cost, and
//! the latency the chain adds. [`report`] writes Markdown, a self-contained HTML page and
//! JSON; [`demo`] tells the whole story on embedded defaults.

pub mod benign;
pub mod config;
pub mod demo;
pub mod error;
pub mod report;
pub mod runner;
pub mod victim;

pub use config::{EvalConfig, DEFAULT_CONFIG};
pub use error::EvalError;
pub use runner::{run, CellResult, EvalResults, RunOptions, Transport};
