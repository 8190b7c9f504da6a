//! `mamori keys` (issue #3): create, list and revoke API keys (stored as SHA-256 hashes in
//! `keys.json` under the home directory; a running gateway picks changes up within a second).

use crate::global::Global;
use mamori_gateway::{GatewayConfig, KeyStore};
use std::path::PathBuf;

/// Arguments of `mamori keys`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// Configuration file (for tier names; default: `mamori.toml` in the home directory).
    #[arg(long, env = "MAMORI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// `mamori keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Issue a key; the key is printed once, on the last line.
    Create {
        /// Client name (detectors and the audit log track clients).
        #[arg(long)]
        client: Option<String>,
        /// Tier (default: the configuration's `default_tier`).
        #[arg(long)]
        tier: Option<String>,
        /// Client group (organisation) watched together by the detectors.
        #[arg(long)]
        group: Option<String>,
        /// Restrict the key to this model (repeatable; default: every model).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Issue (rotate) the admin token for the admin API instead of a client key.
        #[arg(long, conflicts_with_all = ["client", "tier", "group", "models"])]
        admin: bool,
    },
    /// List keys (never the keys themselves).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id.
    Revoke {
        /// Key id (8 hex characters, as `list` shows).
        id: String,
    },
}

/// Runs `mamori keys`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let home = g.home();
    let store = KeyStore::open(&home)?;
    match args.action {
        Action::Create {
            client,
            tier,
            group,
            models,
            admin,
        } => {
            if admin {
                let token = store.create_admin_token()?;
                eprintln!(
                    "admin token for the admin API (shown once; the previous one no longer works):"
                );
                println!("{token}");
                return Ok(());
            }
            let cfg = GatewayConfig::load_for_home(args.config.as_deref(), &home)?;
            let tier = tier.unwrap_or_else(|| cfg.default_tier.clone());
            if !cfg.tiers.contains_key(&tier) {
                anyhow::bail!(
                    "unknown tier {tier:?}; tiers: {}",
                    cfg.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let client = client.ok_or_else(|| anyhow::anyhow!("--client NAME is required"))?;
            let (rec, key) = store.create(&client, group.as_deref(), &tier, &models)?;
            eprintln!(
                "key {} for client {} (tier {}, models {}); it is shown once, store it now:",
                rec.id,
                rec.client,
                rec.tier,
                if rec.models.is_empty() {
                    "all".to_string()
                } else {
                    rec.models.join(",")
                }
            );
            println!("{key}");
        }
        Action::List { json } => {
            let keys = store.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<10} {:<16} {:<10} {:<12} {:<16} status",
                    "id", "client", "tier", "group", "models"
                );
                for k in keys {
                    println!(
                        "{:<10} {:<16} {:<10} {:<12} {:<16} {}",
                        k.id,
                        k.client,
                        k.tier,
                        k.group.unwrap_or_default(),
                        if k.models.is_empty() {
                            "*".into()
                        } else {
                            k.models.join(",")
                        },
                        if k.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
        Action::Revoke { id } => {
            let rec = store.revoke(&id)?;
            println!("revoked key {} of client {}", rec.id, rec.client);
        }
    }
    Ok(())
}
