//! `mamori demo` (issue #2).

use crate::global::Global;

/// Arguments of `mamori demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `mamori demo`.
pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mamori demo` is not implemented yet (issue #2)")
}
