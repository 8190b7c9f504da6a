//! `mamori calibrate` (issue #5).

use crate::global::Global;

/// Arguments of `mamori calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori calibrate`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori calibrate` is not implemented yet (issue #5)")
}
