//! # mamori-defense
//!
//! Output defenses against model stealing, answer watermarking and ownership verification:
//!
//! - [`post`]: postprocessors implementing [`mamori_core::Postprocessor`], built from a
//!   serialisable [`post::PostprocessorSpec`] by [`post::build`].
//! - [`key`]: secret keys (redacted `Debug`, `0600` key files) and keyed per-input randomness.
//! - [`dawn`]: DAWN answer watermarking ([`mamori_core::Watermark`]), recording marked answers
//!   in the encrypted, append-only [`ledger`] — one key and one ledger per served model
//!   ([`dawn::DawnPaths::for_model`]).
//! - [`fingerprint`]: a keyed linear fingerprint in every answer, DAWN's complement against
//!   least-squares (equation-solving) thieves, with its exact verification test.
//! - [`verify`](mod@verify): ownership verification of a suspect against the ledger (exact
//!   tests on the marks' log-probability gaps, in the suspect's scores and over the protected
//!   model's, plus the fingerprint test; the binomial counts and rank sum are reported).
//! - [`report`]: ed25519-signed evidence reports.
//! - [`robustness`]: fine-tuning and pruning, the usual watermark-removal attacks.
//! - [`simplex`]: helpers that keep answers valid distributions.

pub mod dawn;
pub mod error;
pub mod fingerprint;
pub mod key;
pub mod ledger;
pub mod post;
pub mod report;
pub mod robustness;
pub mod simplex;
pub mod verify;

pub use dawn::Dawn;
pub use error::DefenseError;
pub use fingerprint::LinearFingerprint;
pub use key::SecretKey;
pub use ledger::{Ledger, LedgerRecord};
pub use post::{
    answer_distortion, build, defended_answers, registry, BuildContext, PostprocessorSpec,
};
pub use verify::{
    verify, verify_model, verify_model_with, verify_with, FingerprintCheck, Verdict, VerifyResult,
};
