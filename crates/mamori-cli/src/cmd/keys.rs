//! `mamori keys` (issue #3).

use crate::global::Global;

/// Arguments of `mamori keys`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori keys`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori keys` is not implemented yet (issue #3)")
}
