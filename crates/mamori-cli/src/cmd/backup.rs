//! `mamori backup` (issue #8).

use crate::global::Global;

/// Arguments of `mamori backup`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori backup`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori backup` is not implemented yet (issue #8)")
}
