//! `mamori alerts` (issue #5).

use crate::global::Global;

/// Arguments of `mamori alerts`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori alerts`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori alerts` is not implemented yet (issue #5)")
}
