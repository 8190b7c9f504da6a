//! `mamori audit` (issue #3): export the audit log for forensics.

use crate::global::Global;
use anyhow::Context;
use mamori_gateway::audit::{export_jsonl, parse_since};
use mamori_gateway::GatewayConfig;
use std::path::PathBuf;

/// Arguments of `mamori audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// Gateway configuration naming the audit store (default: `mamori.toml` in the home
    /// directory, if present).
    #[arg(long, global = true, env = "MAMORI_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `mamori audit` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Write requests as JSON Lines (one event per line).
    Export {
        /// Only this client (default: every client).
        #[arg(long)]
        client: Option<String>,
        /// Only events at or after this time: `2026-11-21T01:00:00Z`, `2026-11-21`, `2h`
        /// (ago), or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Opens the audit store of `home` as the gateway configuration names it (`--config`,
/// `MAMORI_CONFIG`, else `<home>/mamori.toml`, with `MAMORI_AUDIT_*` overrides). `None` when
/// the store is the home's SQLite file and it does not exist yet (nothing was served).
pub fn open_configured_store(
    config: Option<&std::path::Path>,
    home: &std::path::Path,
) -> anyhow::Result<Option<Box<dyn mamori_gateway::AuditStore>>> {
    let cfg = GatewayConfig::load_for_home(config, home)?;
    if cfg.audit.store == mamori_gateway::AuditBackend::Sqlite && !home.join("audit.db").is_file() {
        return Ok(None);
    }
    Ok(Some(
        mamori_gateway::open_store(&cfg.audit, home).context("opening the audit store")?,
    ))
}

/// Runs `mamori audit`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let Action::Export { client, since, out } = args.action;
    let Some(store) = open_configured_store(args.config.as_deref(), &g.home())? else {
        anyhow::bail!(
            "no audit database at {} (has `mamori serve` run with this home?)",
            g.home().join("audit.db").display()
        );
    };
    let store = store.as_ref();
    let since_ms = match &since {
        Some(s) => parse_since(s, mamori_gateway::keys::now_ms())?,
        None => 0,
    };
    let n = match &out {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            let n = export_jsonl(store, client.as_deref(), since_ms, &mut f)?;
            std::io::Write::flush(&mut f)?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            export_jsonl(store, client.as_deref(), since_ms, &mut lock)?
        }
    };
    eprintln!("exported {n} events");
    Ok(())
}
