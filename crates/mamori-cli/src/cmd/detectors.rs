//! `mamori detectors` (issue #5).

use crate::global::Global;

/// Arguments of `mamori detectors`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori detectors`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori detectors` is not implemented yet (issue #5)")
}
