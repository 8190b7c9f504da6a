//! `mamori model` (issue #8): encryption at rest, signing and verification, signing-key
//! management, supply-chain pins.

use std::path::PathBuf;

use anyhow::Context;
use mamori_artifact::files::{iso8601, now_unix};
use mamori_artifact::keys::KeyInfo;
use mamori_artifact::sign::{check_base, verify_model};
use mamori_artifact::{
    check_pins, decrypt_model_to_dir, encrypt_model, open_model, sign_model, ModelKey, PinSet,
    SignaturePolicy, SigningKeyPair, TrustStore,
};

use crate::global::Global;

/// Arguments of `mamori model`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Create a random 256-bit model key file (mode 0600; refuses to overwrite).
    Keygen {
        /// Key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Encrypt every file of a model directory (AES-256-GCM) into a new directory.
    Encrypt {
        /// The plaintext model directory.
        #[arg(long)]
        model: PathBuf,
        /// Key file (64 hex digits). Default: $MAMORI_MODEL_KEY_FILE, then the key itself in
        /// $MAMORI_MODEL_KEY.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Output directory (must be empty unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Write into a non-empty output directory.
        #[arg(long)]
        force: bool,
    },
    /// Decrypt an encrypted model directory to plaintext files (mode 0600).
    Decrypt {
        /// The encrypted model directory.
        #[arg(long)]
        model: PathBuf,
        /// Key file (see `encrypt`).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Output directory (must be empty unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Write into a non-empty output directory.
        #[arg(long)]
        force: bool,
    },
    /// Sign a model directory: writes manifest.json and manifest.sig into it.
    Sign {
        /// The model directory.
        #[arg(long)]
        model: PathBuf,
        /// Signing key file (`*.key.json`). Default: the newest valid key in <home>/signing/keys.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// The base model directory it was fine-tuned from (its file hashes are recorded).
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Verify a signed model (plain or encrypted) against the trusted keys.
    Verify {
        /// The model directory.
        #[arg(long)]
        model: PathBuf,
        /// Directory with trusted.json and revoked.json. Default: <home>/signing.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Key file, for an encrypted model (see `encrypt`).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Also check a base model directory against the base recorded in the manifest.
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Manage ed25519 signing keys and the trusted-keys / revocation files.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write a pin file (TOML: path → SHA-256) for base models and dataset files.
    Pin {
        /// Pin file to write.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing pin file.
        #[arg(long)]
        force: bool,
        /// Files or directories (expanded to every file below them) to pin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check files against a pin file; fails naming the first mismatching file.
    CheckPins {
        /// The pin file.
        #[arg(long)]
        pins: PathBuf,
        /// Files or directories to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Create a signing key in <home>/signing/keys and trust it locally.
    Create {
        /// A name for humans (e.g. `release-2026`).
        #[arg(long, default_value = "mamori")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// List trusted keys with their status, and the revocation list.
    List {
        /// Signing directory. Default: <home>/signing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Put a key on the revocation list: models it signed no longer verify.
    Revoke {
        /// The key id.
        key_id: String,
        /// Why (recorded and shown in verification errors).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
        /// Signing directory. Default: <home>/signing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Trust a public key file (`<key_id>.pub.json`, as written by `keys create`).
    Trust {
        /// The public key file.
        public_key: PathBuf,
        /// Signing directory. Default: <home>/signing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `mamori model`.
pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let signing_dir = g.home().join("signing");
    match args.command {
        Command::Keygen { out } => {
            let key = ModelKey::generate();
            key.write_new_file(&out)?;
            println!("wrote model key {} (id {})", out.display(), key.id());
        }
        Command::Encrypt {
            model,
            key_file,
            out,
            force,
        } => {
            let key = ModelKey::resolve(key_file.as_deref())?;
            let names = encrypt_model(&model, &key, &out, force)?;
            println!(
                "encrypted {} file(s) of {} into {} with key id {}: {}",
                names.len(),
                model.display(),
                out.display(),
                key.id(),
                names.join(", ")
            );
        }
        Command::Decrypt {
            model,
            key_file,
            out,
            force,
        } => {
            let key = ModelKey::resolve(key_file.as_deref())?;
            let names = decrypt_model_to_dir(&model, &key, &out, force)?;
            println!(
                "decrypted {} file(s) into {}: {}",
                names.len(),
                out.display(),
                names.join(", ")
            );
        }
        Command::Sign {
            model,
            signing_key,
            base,
        } => {
            let (key, path) = match signing_key {
                Some(p) => (SigningKeyPair::load(&p)?, p),
                None => SigningKeyPair::find_default(&signing_dir, now_unix())?,
            };
            let m = sign_model(&model, &key, base.as_deref(), now_unix())?;
            println!(
                "signed {} ({} file(s)) with key {} ({}, from {}, expires {})",
                model.display(),
                m.files.len(),
                key.info.key_id,
                key.info.name,
                path.display(),
                iso8601(key.info.expires_at)
            );
        }
        Command::Verify {
            model,
            trust,
            key_file,
            base,
        } => {
            let trust_dir = trust.unwrap_or(signing_dir);
            let store = TrustStore::load(&trust_dir)?;
            let manifest = if mamori_artifact::is_encrypted_model(&model) {
                let key = ModelKey::resolve(key_file.as_deref())?;
                open_model(&model, Some(&key), &SignaturePolicy::Require(store))?
                    .manifest
                    .context("verification returned no manifest")?
            } else {
                verify_model(&model, &store)?
            };
            if let Some(b) = base {
                check_base(&manifest, &b)?;
                println!("base model {} matches the signed manifest", b.display());
            }
            println!(
                "OK: {} verified — {} file(s), signed {} by key {}",
                model.display(),
                manifest.files.len(),
                iso8601(manifest.signed_at),
                manifest.key_id
            );
            if let Some(b) = &manifest.base_model {
                println!(
                    "  base model: {} ({} file digest(s))",
                    b.reference,
                    b.files.len()
                );
            }
            for d in &manifest.datasets {
                println!("  dataset: {} ({} file digest(s))", d.name, d.files.len());
            }
        }
        Command::Keys { command } => run_keys(command, &signing_dir)?,
        Command::Pin { out, force, files } => {
            if out.exists() && !force {
                anyhow::bail!("{} exists (pass --force to overwrite)", out.display());
            }
            let pins = PinSet::create(&files)?;
            std::fs::write(&out, pins.to_toml())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("pinned {} file(s) in {}", pins.pins.len(), out.display());
        }
        Command::CheckPins { pins, files } => {
            check_pins(&pins, &files)?;
            println!("all files match {}", pins.display());
        }
    }
    Ok(())
}

fn run_keys(command: KeysCommand, default_dir: &std::path::Path) -> anyhow::Result<()> {
    let now = now_unix();
    match command {
        KeysCommand::Create { name, days } => {
            anyhow::ensure!(days > 0, "--days must be at least 1");
            let (pair, path) =
                SigningKeyPair::create_in(default_dir, &name, now, days.saturating_mul(86_400))?;
            println!(
                "created signing key {} ({}) valid until {}\n  private key: {}\n  public key to hand to verifiers: {}",
                pair.info.key_id,
                pair.info.name,
                iso8601(pair.info.expires_at),
                path.display(),
                path.with_file_name(format!("{}.pub.json", pair.info.key_id)).display()
            );
        }
        KeysCommand::List { dir } => {
            let dir = dir.unwrap_or_else(|| default_dir.to_owned());
            let store = TrustStore::load(&dir)?;
            println!("trusted keys in {}:", dir.display());
            if store.trusted.is_empty() {
                println!("  (none)");
            }
            for k in &store.trusted {
                let status = match store.check(&k.key_id, now) {
                    Ok(_) => "valid".to_string(),
                    Err(mamori_artifact::ArtifactError::RevokedKey { .. }) => "REVOKED".into(),
                    Err(mamori_artifact::ArtifactError::ExpiredKey { .. }) => "EXPIRED".into(),
                    Err(e) => format!("invalid: {e}"),
                };
                let private = dir
                    .join("keys")
                    .join(format!("{}.key.json", k.key_id))
                    .is_file();
                println!(
                    "  {}  {:<20} created {}  expires {}  {}{}",
                    k.key_id,
                    k.name,
                    iso8601(k.created_at),
                    iso8601(k.expires_at),
                    status,
                    if private { "  (private key here)" } else { "" }
                );
            }
            for r in &store.revoked {
                println!(
                    "  revoked: {} at {}: {}",
                    r.key_id,
                    iso8601(r.revoked_at),
                    r.reason
                );
            }
        }
        KeysCommand::Revoke {
            key_id,
            reason,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| default_dir.to_owned());
            let mut store = TrustStore::load(&dir)?;
            if !store.trusted.iter().any(|k| k.key_id == key_id) {
                eprintln!("note: {key_id} is not among the trusted keys; revoking it anyway");
            }
            store.revoke(&key_id, &reason, now);
            store.save(&dir)?;
            println!("revoked {key_id} in {}", dir.join("revoked.json").display());
        }
        KeysCommand::Trust { public_key, dir } => {
            let dir = dir.unwrap_or_else(|| default_dir.to_owned());
            let bytes = std::fs::read(&public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let info: KeyInfo = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a public key file", public_key.display()))?;
            info.verifying_key(&public_key)?;
            let mut store = TrustStore::load(&dir)?;
            if store.revocation(&info.key_id).is_some() {
                eprintln!(
                    "warning: {} is on the revocation list and stays refused",
                    info.key_id
                );
            }
            let id = info.key_id.clone();
            store.trust(info);
            store.save(&dir)?;
            println!("trusted {id} in {}", dir.join("trusted.json").display());
        }
    }
    Ok(())
}
