//! `mamori audit` (issue #3): export the audit log for forensics.

use crate::global::Global;
use anyhow::Context;
use mamori_gateway::audit::{export_jsonl, parse_since};
use mamori_gateway::SqliteStore;
use std::path::PathBuf;

/// Arguments of `mamori audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
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

/// Runs `mamori audit`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let Action::Export { client, since, out } = args.action;
    let db = g.home().join("audit.db");
    if !db.is_file() {
        anyhow::bail!(
            "no audit database at {} (has `mamori serve` run with this home?)",
            db.display()
        );
    }
    let store = SqliteStore::open(&db)?;
    let since_ms = match &since {
        Some(s) => parse_since(s, mamori_gateway::keys::now_ms())?,
        None => 0,
    };
    let n = match &out {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            let n = export_jsonl(&store, client.as_deref(), since_ms, &mut f)?;
            std::io::Write::flush(&mut f)?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            export_jsonl(&store, client.as_deref(), since_ms, &mut lock)?
        }
    };
    eprintln!("exported {n} events");
    Ok(())
}
