//! `mamori serve` (issue #3).

use crate::global::Global;

/// Arguments of `mamori serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori serve`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori serve` is not implemented yet (issue #3)")
}
