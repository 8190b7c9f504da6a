//! Signed model manifests (Ed25519, RFC 8032).
//!
//! `sign_model` writes two files into the model directory:
//! - `manifest.json`: the SHA-256 and size of every other file of the directory, the model
//!   card, the base model it was fine-tuned from and the dataset files it was trained on;
//! - `manifest.sig`: `{version, algorithm: "ed25519", key_id, signature}`, the signature being
//!   over `"mamori-model-manifest-v1\0" ‖ bytes of manifest.json` (the exact bytes, so no JSON
//!   canonicalisation is needed).
//!
//! Verification ([`verify_files`], [`verify_model`]) distinguishes: unsigned model, tampered
//! manifest or signature, unknown / expired / revoked key, tampered, missing or unlisted file.
//! It works on in-memory files too, so an encrypted model can be decrypted in memory and then
//! verified without touching the disk.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use ed25519_dalek::Signature;
use mamori_core::{DatasetRef, FileDigest, ModelCard};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, ArtifactError, Result};
use crate::files::{list_flat_dir, now_unix, sha256_file};
use crate::keys::{SigningKeyPair, TrustStore};

/// The manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The signature file name.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The model card file name.
pub const CARD_FILE: &str = "model.json";
/// The card of a model directory: for an ONNX model directory (exactly one `.onnx` file),
/// `<file>.onnx.json` beside it (the name `mamori export --onnx` writes and the ONNX loader
/// reads) when present; otherwise [`CARD_FILE`] (`model.json`, a native model's card).
/// `None` when the directory has neither.
pub fn card_file_name<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let names: Vec<&str> = names.into_iter().collect();
    let onnx: Vec<&&str> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".onnx"))
        .collect();
    if let [one] = onnx.as_slice() {
        let card = format!("{one}.json");
        if names.contains(&card.as_str()) {
            return Some(card);
        }
    }
    names.contains(&CARD_FILE).then(|| CARD_FILE.into())
}

/// The `format` field of a manifest.
pub const MANIFEST_FORMAT: &str = "mamori-model-manifest";
const SIGNING_CONTEXT: &[u8] = b"mamori-model-manifest-v1\0";

/// One model file in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the model directory.
    pub name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The base model a model was fine-tuned from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModelRef {
    /// How the card or the signer named it (path or name).
    pub reference: String,
    /// Digests of the base model's files, when the base directory was available at signing.
    pub files: Vec<FileDigest>,
}

/// The signed statement about a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Manifest version (1).
    pub version: u32,
    /// The model's name (from its card).
    pub model_name: String,
    /// Signing time, Unix seconds.
    pub signed_at: u64,
    /// The id of the key that signed it.
    pub key_id: String,
    /// Every file of the model directory except the manifest and signature.
    pub files: Vec<ManifestFile>,
    /// The model card.
    pub card: ModelCard,
    /// The base model it was fine-tuned from, if any.
    pub base_model: Option<BaseModelRef>,
    /// The training data (the card's dataset: name and file digests).
    pub datasets: Vec<DatasetRef>,
}

/// The contents of `manifest.sig`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignatureFile {
    /// Signature file version (1).
    pub version: u32,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key's id.
    pub key_id: String,
    /// The 64-byte signature, hex.
    pub signature: String,
}

/// Describes a base model directory: its card's name (or the directory name) and digests of
/// its files.
pub fn describe_base_dir(dir: &Path) -> Result<BaseModelRef> {
    let files = list_flat_dir(dir, &[MANIFEST_FILE, SIGNATURE_FILE])?;
    let mut digests = Vec::new();
    for (name, path) in &files {
        digests.push(FileDigest {
            path: name.clone(),
            sha256: sha256_file(path)?,
        });
    }
    Ok(BaseModelRef {
        reference: dir.display().to_string(),
        files: digests,
    })
}

/// The base model recorded in a card's `extra["base_model"]`: a string (a name or path), or
/// an object `{"reference"|"name"|"path": ..., "files": [{path, sha256}]}`.
pub fn base_from_card(card: &ModelCard) -> Option<BaseModelRef> {
    let v = card.extra.get("base_model")?;
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(BaseModelRef {
            reference: s.clone(),
            files: Vec::new(),
        }),
        serde_json::Value::Object(o) => {
            let reference = ["reference", "name", "path"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|v| v.as_str()))
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            let files = o
                .get("files")
                .and_then(|f| serde_json::from_value(f.clone()).ok())
                .unwrap_or_default();
            Some(BaseModelRef { reference, files })
        }
        other => Some(BaseModelRef {
            reference: other.to_string(),
            files: Vec::new(),
        }),
    }
}

/// Builds the manifest of in-memory model files (manifest and signature files excluded).
pub fn build_manifest(
    files: &BTreeMap<String, Vec<u8>>,
    base_dir: Option<&Path>,
    key_id: &str,
    now: u64,
) -> Result<Manifest> {
    let card_name = card_file_name(files.keys().map(String::as_str)).ok_or_else(|| {
        ArtifactError::UnsupportedEntry {
            path: CARD_FILE.into(),
            reason: "a model directory needs its model card to be signed (model.json; for an \
                     ONNX model directory, <file>.onnx.json beside its only .onnx file)"
                .into(),
        }
    })?;
    let card: ModelCard =
        serde_json::from_slice(&files[&card_name]).map_err(|e| ArtifactError::Json {
            path: card_name.clone().into(),
            source: e,
        })?;
    let base_model = match (base_dir, base_from_card(&card)) {
        (Some(dir), from_card) => {
            let mut b = describe_base_dir(dir)?;
            if let Some(c) = from_card {
                b.reference = c.reference;
            }
            Some(b)
        }
        (None, from_card) => from_card,
    };
    let manifest_files = files
        .iter()
        .filter(|(n, _)| n.as_str() != MANIFEST_FILE && n.as_str() != SIGNATURE_FILE)
        .map(|(name, bytes)| ManifestFile {
            name: name.clone(),
            sha256: mamori_core::hash::sha256_hex(bytes),
            size: bytes.len() as u64,
        })
        .collect();
    Ok(Manifest {
        format: MANIFEST_FORMAT.into(),
        version: 1,
        model_name: card.name.clone(),
        signed_at: now,
        key_id: key_id.to_owned(),
        files: manifest_files,
        datasets: vec![card.dataset.clone()],
        card,
        base_model,
    })
}

/// Signs the model in `dir` with `key` at time `now`, writing `manifest.json` and
/// `manifest.sig` (replacing earlier ones). Refuses an expired key.
pub fn sign_model(
    dir: &Path,
    key: &SigningKeyPair,
    base_dir: Option<&Path>,
    now: u64,
) -> Result<Manifest> {
    if now >= key.info.expires_at {
        return Err(ArtifactError::ExpiredKey {
            key_id: key.info.key_id.clone(),
            expired_at: crate::files::iso8601(key.info.expires_at),
        });
    }
    let mut files = BTreeMap::new();
    for (name, path) in list_flat_dir(dir, &[MANIFEST_FILE, SIGNATURE_FILE])? {
        files.insert(name, fs::read(&path).map_err(io_err(&path))?);
    }
    let manifest = build_manifest(&files, base_dir, &key.info.key_id, now)?;
    let mut manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    manifest_bytes.push(b'\n');
    let sig = key.sign(&signing_message(&manifest_bytes));
    let sig_file = SignatureFile {
        version: 1,
        algorithm: "ed25519".into(),
        key_id: key.info.key_id.clone(),
        signature: hex::encode(sig.to_bytes()),
    };
    let p = dir.join(MANIFEST_FILE);
    fs::write(&p, &manifest_bytes).map_err(io_err(&p))?;
    let p = dir.join(SIGNATURE_FILE);
    let sig_bytes = serde_json::to_vec_pretty(&sig_file).expect("signature serialises");
    fs::write(&p, sig_bytes).map_err(io_err(&p))?;
    Ok(manifest)
}

fn signing_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

/// Verifies a model given as in-memory files (name → bytes) against `trust` at time `now`.
/// `dir` only labels errors.
pub fn verify_files<B: AsRef<[u8]>>(
    dir: &Path,
    files: &HashMap<String, B>,
    trust: &TrustStore,
    now: u64,
) -> Result<Manifest> {
    let unsigned = |missing: &str| ArtifactError::UnsignedModel {
        dir: dir.to_owned(),
        missing: missing.into(),
    };
    let tampered_manifest = |reason: String| ArtifactError::TamperedManifest { reason };
    let manifest_bytes = files
        .get(MANIFEST_FILE)
        .ok_or_else(|| unsigned(MANIFEST_FILE))?
        .as_ref();
    let sig_bytes = files
        .get(SIGNATURE_FILE)
        .ok_or_else(|| unsigned(SIGNATURE_FILE))?
        .as_ref();
    let sig_file: SignatureFile = serde_json::from_slice(sig_bytes)
        .map_err(|e| tampered_manifest(format!("{SIGNATURE_FILE} is not valid: {e}")))?;
    if sig_file.version != 1 || sig_file.algorithm != "ed25519" {
        return Err(tampered_manifest(format!(
            "{SIGNATURE_FILE}: unsupported version {} / algorithm {:?}",
            sig_file.version, sig_file.algorithm
        )));
    }
    let vk = trust.check(&sig_file.key_id, now)?;
    let mut raw = [0u8; 64];
    hex::decode_to_slice(&sig_file.signature, &mut raw).map_err(|_| {
        tampered_manifest(format!("{SIGNATURE_FILE}: signature is not 128 hex digits"))
    })?;
    vk.verify_strict(
        &signing_message(manifest_bytes),
        &Signature::from_bytes(&raw),
    )
    .map_err(|_| {
        tampered_manifest(format!(
            "the signature in {SIGNATURE_FILE} does not match {MANIFEST_FILE} (key {})",
            sig_file.key_id
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| tampered_manifest(format!("{MANIFEST_FILE} is not valid: {e}")))?;
    if manifest.format != MANIFEST_FORMAT || manifest.version != 1 {
        return Err(tampered_manifest(format!(
            "unsupported manifest format {:?} version {}",
            manifest.format, manifest.version
        )));
    }
    if manifest.key_id != sig_file.key_id {
        return Err(tampered_manifest(format!(
            "manifest names key {} but was signed by {}",
            manifest.key_id, sig_file.key_id
        )));
    }
    for mf in &manifest.files {
        let Some(bytes) = files.get(&mf.name) else {
            return Err(ArtifactError::TamperedFile {
                file: mf.name.clone(),
                reason: "listed in the signed manifest but missing".into(),
            });
        };
        let actual = mamori_core::hash::sha256_hex(bytes.as_ref());
        if actual != mf.sha256 {
            return Err(ArtifactError::TamperedFile {
                file: mf.name.clone(),
                reason: format!("sha256 {actual}, signed manifest says {}", mf.sha256),
            });
        }
    }
    let mut extra: Vec<&String> = files
        .keys()
        .filter(|n| {
            n.as_str() != MANIFEST_FILE
                && n.as_str() != SIGNATURE_FILE
                && !manifest.files.iter().any(|f| &f.name == *n)
        })
        .collect();
    extra.sort();
    if let Some(n) = extra.first() {
        return Err(ArtifactError::TamperedFile {
            file: (*n).clone(),
            reason: "not listed in the signed manifest".into(),
        });
    }
    let card_name = card_file_name(files.keys().map(String::as_str));
    if let Some((name, card)) = card_name.and_then(|n| files.get(&n).map(|c| (n, c))) {
        let card: ModelCard =
            serde_json::from_slice(card.as_ref()).map_err(|e| ArtifactError::TamperedFile {
                file: name.clone(),
                reason: format!("not a valid model card: {e}"),
            })?;
        if card != manifest.card {
            return Err(ArtifactError::TamperedFile {
                file: name,
                reason: "differs from the card in the signed manifest".into(),
            });
        }
    }
    Ok(manifest)
}

/// Reads every file of the flat model directory into memory.
pub fn read_model_dir(dir: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let mut files = HashMap::new();
    for (name, path) in list_flat_dir(dir, &[])? {
        files.insert(name, fs::read(&path).map_err(io_err(&path))?);
    }
    Ok(files)
}

/// Verifies the signed model in `dir` against `trust`, now.
pub fn verify_model(dir: &Path, trust: &TrustStore) -> Result<Manifest> {
    verify_model_at(dir, trust, now_unix())
}

/// [`verify_model`] at a given time (Unix seconds).
pub fn verify_model_at(dir: &Path, trust: &TrustStore, now: u64) -> Result<Manifest> {
    let files = read_model_dir(dir)?;
    verify_files(dir, &files, trust, now)
}

/// Checks a base model directory against the base recorded in a verified manifest.
pub fn check_base(manifest: &Manifest, base_dir: &Path) -> Result<()> {
    let Some(base) = &manifest.base_model else {
        return Err(ArtifactError::TamperedManifest {
            reason: "the signed manifest records no base model".into(),
        });
    };
    let actual = describe_base_dir(base_dir)?;
    for want in &base.files {
        let got = actual.files.iter().find(|f| f.path == want.path);
        match got {
            Some(g) if g.sha256 == want.sha256 => {}
            Some(g) => {
                return Err(ArtifactError::TamperedFile {
                    file: base_dir.join(&want.path).display().to_string(),
                    reason: format!("sha256 {}, signed manifest says {}", g.sha256, want.sha256),
                })
            }
            None => {
                return Err(ArtifactError::TamperedFile {
                    file: base_dir.join(&want.path).display().to_string(),
                    reason: "base model file recorded in the signed manifest is missing".into(),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_of_an_onnx_directory_is_its_onnx_json() {
        let card = |names: &[&str]| card_file_name(names.iter().copied());
        assert_eq!(
            card(&["model.json", "model.safetensors"]).as_deref(),
            Some("model.json")
        );
        assert_eq!(
            card(&["m.onnx", "m.onnx.json"]).as_deref(),
            Some("m.onnx.json")
        );
        assert_eq!(
            card(&["m.ONNX", "m.ONNX.json"]).as_deref(),
            Some("m.ONNX.json")
        );
        assert_eq!(
            card(&["m.onnx", "m.onnx.json", "model.json"]).as_deref(),
            Some("m.onnx.json")
        );
        assert_eq!(
            card(&["m.onnx", "model.json"]).as_deref(),
            Some("model.json")
        );
        assert_eq!(card(&["m.onnx"]), None);
        assert_eq!(
            card(&["a.onnx", "a.onnx.json", "b.onnx", "b.onnx.json"]),
            None
        );
        assert_eq!(card(&["weights.bin"]), None);
    }
}
