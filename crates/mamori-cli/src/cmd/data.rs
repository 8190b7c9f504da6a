//! `mamori data` (issue #2).

use crate::global::Global;

/// Arguments of `mamori data`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori data`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori data` is not implemented yet (issue #2)")
}
