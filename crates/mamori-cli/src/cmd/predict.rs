//! `mamori predict` (issue #2).

use crate::global::Global;

/// Arguments of `mamori predict`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori predict`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori predict` is not implemented yet (issue #2)")
}
