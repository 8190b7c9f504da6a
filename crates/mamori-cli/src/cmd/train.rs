//! `mamori train` (issue #2).

use crate::global::Global;

/// Arguments of `mamori train`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori train`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori train` is not implemented yet (issue #2)")
}
