//! One call for the gateway: open a model directory (plain or encrypted) in memory and apply
//! the signature policy.

use std::collections::HashMap;
use std::path::Path;

use zeroize::Zeroizing;

use crate::encrypt::{is_encrypted_model, open_encrypted_model, DecryptedModel};
use crate::error::{ArtifactError, Result};
use crate::files::now_unix;
use crate::key::ModelKey;
use crate::keys::TrustStore;
use crate::sign::{read_model_dir, verify_files, Manifest, MANIFEST_FILE, SIGNATURE_FILE};

/// What to do about signatures when loading a model.
#[derive(Clone, Debug)]
pub enum SignaturePolicy {
    /// Refuse unsigned, tampered or untrusted models (the default for serving).
    Require(TrustStore),
    /// Verify a signature when present (refusing a bad one) but accept an unsigned model.
    VerifyIfSigned(TrustStore),
    /// Do not check signatures (explicit opt-out, e.g. `--allow-unsigned`).
    Skip,
}

/// A model opened in memory.
#[derive(Debug)]
pub struct OpenedModel {
    /// The model's files (decrypted if it was encrypted), wiped on drop.
    pub files: DecryptedModel,
    /// The verified manifest, when a signature was checked.
    pub manifest: Option<Manifest>,
    /// Whether the directory was encrypted.
    pub encrypted: bool,
}

/// Opens `dir`: decrypts it in memory if it is encrypted (the key is then required:
/// [`ArtifactError::MissingKey`] otherwise), and verifies its signature per `policy`.
///
/// For a native model, pass `files.get("model.safetensors")` and `files.get("model.json")` to
/// `mamori_ml::NativeModel::from_bytes`.
pub fn open_model(
    dir: &Path,
    key: Option<&ModelKey>,
    policy: &SignaturePolicy,
) -> Result<OpenedModel> {
    open_model_at(dir, key, policy, now_unix())
}

/// [`open_model`] at a given time (Unix seconds), for tests.
pub fn open_model_at(
    dir: &Path,
    key: Option<&ModelKey>,
    policy: &SignaturePolicy,
    now: u64,
) -> Result<OpenedModel> {
    let encrypted = is_encrypted_model(dir);
    let files = if encrypted {
        open_encrypted_model(dir, key.ok_or(ArtifactError::MissingKey)?)?
    } else {
        let files: HashMap<String, Zeroizing<Vec<u8>>> = read_model_dir(dir)?
            .into_iter()
            .map(|(k, v)| (k, Zeroizing::new(v)))
            .collect();
        DecryptedModel { files }
    };
    let signed =
        files.files.contains_key(MANIFEST_FILE) || files.files.contains_key(SIGNATURE_FILE);
    let manifest = match policy {
        SignaturePolicy::Require(t) => Some(verify_files(dir, &files.files, t, now)?),
        SignaturePolicy::VerifyIfSigned(t) if signed => {
            Some(verify_files(dir, &files.files, t, now)?)
        }
        _ => None,
    };
    Ok(OpenedModel {
        files,
        manifest,
        encrypted,
    })
}
