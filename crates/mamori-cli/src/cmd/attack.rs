//! `mamori attack` (issue #4).

use crate::global::Global;

/// Arguments of `mamori attack`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori attack`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori attack` is not implemented yet (issue #4)")
}
