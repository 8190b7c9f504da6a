//! `mamori eval` (issue #7).

use crate::global::Global;

/// Arguments of `mamori eval`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori eval`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori eval` is not implemented yet (issue #7)")
}
