//! `mamori export` (issue #2).

use crate::global::Global;

/// Arguments of `mamori export`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori export`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori export` is not implemented yet (issue #2)")
}
