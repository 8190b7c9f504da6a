//! `mamori audit` (issue #3).

use crate::global::Global;

/// Arguments of `mamori audit`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori audit`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori audit` is not implemented yet (issue #3)")
}
