//! Model artifact protection (OWASP ML05 model theft, ML07 transfer-learning attack):
//! encryption at rest, ed25519 signing, supply-chain pins, backups.
//!
//! - [`encrypt`]: AES-256-GCM containers for every file of a model directory, decrypted in
//!   memory only ([`open_encrypted_model`]); keys from [`ModelKey`].
//! - [`sign`] and [`keys`]: signed manifests (file hashes, card, base model, datasets) and the
//!   key management around them (expiry, revocation list, trusted keys); [`verify_model`].
//! - [`pins`]: SHA-256 pins for pre-trained bases and dataset files; [`check_pins`].
//! - [`backup`]: tar.gz backups of the gateway home and model directories with an online
//!   SQLite snapshot and a verified restore.
//! - [`open`]: the gateway's one call, [`open_model`], combining decryption and verification.

pub mod backup;
pub mod encrypt;
pub mod error;
pub mod files;
pub mod key;
pub mod keys;
pub mod open;
pub mod pins;
pub mod sign;

pub use backup::{create_backup, restore_backup, verify_restored_dir, BackupManifest};
pub use encrypt::{
    decrypt_model_to_dir, encrypt_model, is_encrypted_model, open_encrypted_model, DecryptedModel,
};
pub use error::{ArtifactError, Result};
pub use key::ModelKey;
pub use keys::{KeyInfo, SigningKeyPair, TrustStore};
pub use open::{open_model, OpenedModel, SignaturePolicy};
pub use pins::{check_pinned_digests, check_pins, PinSet};
pub use sign::{card_file_name, sign_model, verify_files, verify_model, Manifest};
