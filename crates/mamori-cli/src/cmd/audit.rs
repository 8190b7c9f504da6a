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
    /// Check the tamper-evident chain: recompute every record's seal from the writers'
    /// verification keys and list altered, deleted and missing-tail records. Exits non-zero
    /// when a chain is broken.
    Verify {
        /// Verification key files (`<writer>.key0`; default: every `*.key0` in
        /// `<home>/audit-chain`). Keep them off the gateway host.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// The number of records a writer is known to have sealed, as `WRITER:N` (e.g. the
        /// `mamori_audit_chain_sealed` metric your Prometheus scraped): a store holding fewer
        /// lost its tail. The home's own chain state is always used too.
        #[arg(long = "expect", value_name = "WRITER:N")]
        expect: Vec<String>,
        /// Also fail when records carry no seal or a writer has no verification key.
        #[arg(long)]
        strict: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
    let Some(store) = open_configured_store(args.config.as_deref(), &g.home())? else {
        anyhow::bail!(
            "no audit database at {} (has `mamori serve` run with this home?)",
            g.home().join("audit.db").display()
        );
    };
    let store = store.as_ref();
    match args.action {
        Action::Export { client, since, out } => export(store, client, since, out),
        Action::Verify {
            keys,
            expect,
            strict,
            json,
        } => verify(store, &g.home(), &keys, &expect, strict, json),
    }
}

/// Parses `WRITER:N`.
fn parse_expect(s: &str) -> anyhow::Result<(String, u64)> {
    let (w, n) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--expect {s:?}: expected WRITER:N"))?;
    let n = n
        .trim()
        .parse::<u64>()
        .map_err(|e| anyhow::anyhow!("--expect {s:?}: N is not a count: {e}"))?;
    if w.trim().is_empty() {
        anyhow::bail!("--expect {s:?}: the writer is empty");
    }
    Ok((w.trim().to_string(), n))
}

fn verify(
    store: &dyn mamori_gateway::AuditStore,
    home: &std::path::Path,
    key_files: &[PathBuf],
    expect: &[String],
    strict: bool,
    json: bool,
) -> anyhow::Result<()> {
    use mamori_gateway::audit_chain::{sealed_through, verify, VerifyKey};
    let chain_dir = home.join("audit-chain");
    let keys = if key_files.is_empty() {
        VerifyKey::load_dir(&chain_dir)?
    } else {
        key_files
            .iter()
            .map(|p| VerifyKey::load(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut expected = sealed_through(&chain_dir);
    for e in expect {
        expected.push(parse_expect(e)?);
    }
    if keys.is_empty() {
        anyhow::bail!(
            "no verification key: give --key FILE (a `<writer>.key0`), or keep them in {}",
            chain_dir.display()
        );
    }
    let rep = verify(store, &keys, &expected)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        for w in &rep.writers {
            println!(
                "writer {}: {} records, {} verified{}{}",
                w.writer,
                w.records,
                w.verified,
                if w.duplicates > 0 {
                    format!(", {} stored twice (retried batch)", w.duplicates)
                } else {
                    String::new()
                },
                if w.intact {
                    " — intact"
                } else {
                    " — BROKEN"
                }
            );
            for b in &w.altered {
                println!(
                    "  altered or forged: #{} ({}, time_ms {})",
                    b.seq, b.kind, b.time_ms
                );
            }
            for [a, b] in &w.missing {
                println!("  deleted: #{a}..=#{b} ({} records)", b - a + 1);
            }
            if let Some([a, b]) = w.missing_tail {
                println!(
                    "  missing tail: #{a}..=#{b} ({} records sealed but not in the store)",
                    b - a + 1
                );
            }
        }
        for w in &rep.unverified_writers {
            println!("writer {w}: no verification key (not verified)");
        }
        if rep.unsealed > 0 {
            println!(
                "{} records carry no seal (not covered by the chain)",
                rep.unsealed
            );
        }
    }
    if !rep.intact {
        anyhow::bail!("the audit log was altered: see the report above");
    }
    if strict && (rep.unsealed > 0 || !rep.unverified_writers.is_empty()) {
        anyhow::bail!(
            "--strict: {} unsealed records, {} writers without a verification key",
            rep.unsealed,
            rep.unverified_writers.len()
        );
    }
    Ok(())
}

fn export(
    store: &dyn mamori_gateway::AuditStore,
    client: Option<String>,
    since: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
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
