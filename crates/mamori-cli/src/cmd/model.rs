//! `mamori model` (issue #8).

use crate::global::Global;

/// Arguments of `mamori model`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori model`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori model` is not implemented yet (issue #8)")
}
