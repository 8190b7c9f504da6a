//! `mamori backup` (issue #8): archive the gateway home (key store, audit database, watermark
//! ledger, detector state) and model directories; restore and verify.

use std::path::PathBuf;

use mamori_artifact::backup::{
    create_backup, is_encrypted_archive, restore_backup, verify_restored_dir,
};
use mamori_artifact::ModelKey;

use crate::global::Global;

/// Arguments of `mamori backup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Back up the home directory (`--home`) and model directories into a .tar.gz archive.
    /// SQLite databases are copied online (consistent even while the gateway writes).
    Create {
        /// Model directories to include (stored as models/<directory name>/).
        #[arg(long, num_args = 1..)]
        models: Vec<PathBuf>,
        /// Leave the home directory out (models only).
        #[arg(long)]
        no_home: bool,
        /// Archive to write.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing archive.
        #[arg(long)]
        force: bool,
        /// Encrypt the archive (AES-256-GCM) with the key in this file (see `mamori model
        /// keygen`); the home directory holds signing keys, so encrypt archives that leave
        /// the machine.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Encrypt with the key from $MAMORI_MODEL_KEY_FILE or $MAMORI_MODEL_KEY.
        #[arg(long)]
        encrypt: bool,
    },
    /// Restore an archive into a directory (home/ and models/ below it) and verify it.
    Restore {
        /// The archive.
        file: PathBuf,
        /// Destination directory (must be empty unless --force).
        #[arg(long)]
        into: PathBuf,
        /// Restore into a non-empty directory, overwriting files of the same name.
        #[arg(long)]
        force: bool,
        /// Key file for an encrypted archive (default: $MAMORI_MODEL_KEY_FILE, $MAMORI_MODEL_KEY).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Re-verify a restored directory against its MANIFEST.json (hashes, SQLite integrity).
    Verify {
        /// The restored directory.
        dir: PathBuf,
    },
}

/// Runs `mamori backup`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    match args.command {
        Command::Create {
            models,
            no_home,
            out,
            force,
            key_file,
            encrypt,
        } => {
            if out.exists() && !force {
                anyhow::bail!("{} exists (pass --force to overwrite)", out.display());
            }
            let home = g.home();
            let home = if no_home {
                None
            } else {
                anyhow::ensure!(
                    home.is_dir(),
                    "home directory {} does not exist (pass --home, or --no-home for models only)",
                    home.display()
                );
                Some(home)
            };
            anyhow::ensure!(
                home.is_some() || !models.is_empty(),
                "nothing to back up: --no-home and no --models"
            );
            let key = if key_file.is_some() || encrypt {
                Some(ModelKey::resolve(key_file.as_deref())?)
            } else {
                None
            };
            let m = create_backup(home.as_deref(), &models, &out, key.as_ref())?;
            let dbs = m.entries.iter().filter(|e| e.sqlite).count();
            let bytes: u64 = m.entries.iter().map(|e| e.size).sum();
            println!(
                "wrote {}{}: {} file(s), {} SQLite database(s) snapshotted online, {} bytes",
                out.display(),
                key.as_ref()
                    .map(|k| format!(" (encrypted, key id {})", k.id()))
                    .unwrap_or_default(),
                m.entries.len(),
                dbs,
                bytes
            );
            if let Some(h) = home {
                let cfg = mamori_gateway::GatewayConfig::load_for_home(None, &h);
                if cfg.is_ok_and(|c| c.audit.store == mamori_gateway::AuditBackend::Postgres) {
                    println!(
                        "note: this home's audit log is in PostgreSQL (audit.store = \"postgres\"), \
                         not in the archive: back up its mamori_* tables with pg_dump"
                    );
                }
            }
        }
        Command::Restore {
            file,
            into,
            force,
            key_file,
        } => {
            let key = if is_encrypted_archive(&file)? {
                Some(ModelKey::resolve(key_file.as_deref())?)
            } else {
                None
            };
            let m = restore_backup(&file, &into, force, key.as_ref())?;
            let dbs = m.entries.iter().filter(|e| e.sqlite).count();
            println!(
                "restored {} file(s) into {}; verified: every SHA-256 matches, {} database(s) pass PRAGMA integrity_check",
                m.entries.len(),
                into.display(),
                dbs
            );
            if into.join("home").is_dir() {
                println!("  serve with: --home {}", into.join("home").display());
            }
        }
        Command::Verify { dir } => {
            let m = verify_restored_dir(&dir)?;
            println!(
                "OK: {} file(s) in {} match the backup manifest",
                m.entries.len(),
                dir.display()
            );
        }
    }
    Ok(())
}
