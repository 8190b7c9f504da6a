//! # mamori-defense
//!
//! Output defenses against model stealing, answer watermarking and ownership verification:
//!
//! - [`post`]: postprocessors implementing [`mamori_core::Postprocessor`], built from a
//!   serialisable [`post::PostprocessorSpec`] by [`post::build`].
//! - [`key`]: secret keys (redacted `Debug`, `0600` key files) and keyed per-input randomness.
//! - [`dawn`]: DAWN answer watermarking ([`mamori_core::Watermark`]), recording marked answers
//!   in the encrypted, append-only [`ledger`].
//! - [`simplex`]: helpers that keep answers valid distributions.

pub mod dawn;
pub mod error;
pub mod key;
pub mod ledger;
pub mod post;
pub mod simplex;

pub use dawn::Dawn;
pub use error::DefenseError;
pub use key::SecretKey;
pub use ledger::{Ledger, LedgerRecord};
pub use post::{build, BuildContext, PostprocessorSpec};
