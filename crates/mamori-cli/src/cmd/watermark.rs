//! `mamori watermark` (issue #6).

use crate::global::Global;

/// Arguments of `mamori watermark`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori watermark`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori watermark` is not implemented yet (issue #6)")
}
