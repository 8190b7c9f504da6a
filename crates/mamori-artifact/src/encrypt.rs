//! Encryption at rest of a model directory with AES-256-GCM (NIST SP 800-38D).
//!
//! Every file `NAME` of the model directory becomes `NAME.enc`, a container:
//!
//! ```text
//! offset  size  field
//! 0       8     magic  "MAMORIEC"
//! 8       1     format version (1)
//! 9       1     algorithm (1 = AES-256-GCM)
//! 10      8     key id (truncated SHA-256 of the key, see ModelKey::id)
//! 18      12    nonce (random per file and per encryption)
//! 30      ..    ciphertext ‖ 16-byte GCM tag
//! ```
//!
//! The associated data is the 30-byte header followed by a zero byte and the file's original
//! name, so a header cannot be altered and two encrypted files cannot be swapped or renamed
//! without the tag check failing. An encrypted index, `mamori-index.enc` (same container, name
//! `mamori-index`), lists every file with its plaintext SHA-256, so deleting, adding or mixing
//! files from two encryptions of the same model is detected too.
//!
//! Nonces are 96 random bits; with one key per model and a handful of files per encryption the
//! collision probability stays far below NIST's 2⁻³² bound for random nonces.
//!
//! Decryption ([`open_encrypted_model`]) happens in memory only; decrypted bytes are wiped when
//! the [`DecryptedModel`] is dropped.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{io_err, ArtifactError, Result};
use crate::files::{list_flat_dir, prepare_out_dir, write_private};
use crate::key::ModelKey;

/// Container magic bytes.
pub const MAGIC: &[u8; 8] = b"MAMORIEC";
/// Container format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Algorithm byte for AES-256-GCM.
pub const ALG_AES_256_GCM: u8 = 1;
/// Suffix of encrypted files.
pub const ENC_SUFFIX: &str = ".enc";
/// Logical name of the encrypted index (stored as `mamori-index.enc`).
pub const INDEX_NAME: &str = "mamori-index";

const HEADER_LEN: usize = 30;
const TAG_LEN: usize = 16;

/// One file recorded in the encrypted index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IndexEntry {
    name: String,
    sha256: String,
    size: u64,
}

/// The encrypted index's plaintext.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    files: Vec<IndexEntry>,
}

/// Encrypts `plaintext` as the container of the file called `name`.
pub fn encrypt_container(name: &str, plaintext: &[u8], key: &ModelKey) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(FORMAT_VERSION);
    header.push(ALG_AES_256_GCM);
    header.extend_from_slice(&key.id_bytes());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    header.extend_from_slice(&nonce);
    let aad = associated_data(&header, name);
    let cipher = Aes256Gcm::new(key.bytes().into());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        // AES-GCM encryption only fails for messages over 64 GiB.
        .expect("AES-GCM encryption of a model file");
    header.extend_from_slice(&ct);
    header
}

/// Decrypts the container of the file called `name`, in memory.
///
/// Errors: [`ArtifactError::BadContainer`] (magic, version, algorithm, length),
/// [`ArtifactError::WrongKey`], [`ArtifactError::TamperedCiphertext`].
pub fn decrypt_container(
    name: &str,
    container: &[u8],
    key: &ModelKey,
) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |reason: String| ArtifactError::BadContainer {
        file: format!("{name}{ENC_SUFFIX}"),
        reason,
    };
    if container.len() < HEADER_LEN + TAG_LEN {
        return Err(bad(format!(
            "{} bytes is shorter than header and tag ({} bytes)",
            container.len(),
            HEADER_LEN + TAG_LEN
        )));
    }
    if &container[..8] != MAGIC {
        return Err(bad("bad magic (not a mamori encrypted file)".into()));
    }
    if container[8] != FORMAT_VERSION {
        return Err(bad(format!(
            "unsupported format version {} (this build reads {FORMAT_VERSION})",
            container[8]
        )));
    }
    if container[9] != ALG_AES_256_GCM {
        return Err(bad(format!(
            "unsupported algorithm {} (1 = AES-256-GCM)",
            container[9]
        )));
    }
    if container[10..18] != key.id_bytes() {
        return Err(ArtifactError::WrongKey {
            file: format!("{name}{ENC_SUFFIX}"),
            expected: hex::encode(&container[10..18]),
            actual: key.id(),
        });
    }
    let header = &container[..HEADER_LEN];
    let aad = associated_data(header, name);
    let cipher = Aes256Gcm::new(key.bytes().into());
    cipher
        .decrypt(
            Nonce::from_slice(&container[18..30]),
            Payload {
                msg: &container[HEADER_LEN..],
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| ArtifactError::TamperedCiphertext {
            file: format!("{name}{ENC_SUFFIX}"),
        })
}

fn associated_data(header: &[u8], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1 + name.len());
    aad.extend_from_slice(header);
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Whether `dir` holds an encrypted model (has `mamori-index.enc`).
pub fn is_encrypted_model(dir: &Path) -> bool {
    dir.join(format!("{INDEX_NAME}{ENC_SUFFIX}")).is_file()
}

/// Encrypts every file of the flat model directory `model_dir` into `out_dir` (which must be
/// empty unless `force`). Returns the names of the files encrypted.
pub fn encrypt_model(
    model_dir: &Path,
    key: &ModelKey,
    out_dir: &Path,
    force: bool,
) -> Result<Vec<String>> {
    if is_encrypted_model(model_dir) {
        return Err(ArtifactError::UnsupportedEntry {
            path: model_dir.to_owned(),
            reason: "this model directory is already encrypted".into(),
        });
    }
    let files = list_flat_dir(model_dir, &[])?;
    if files.is_empty() {
        return Err(ArtifactError::UnsupportedEntry {
            path: model_dir.to_owned(),
            reason: "no files to encrypt".into(),
        });
    }
    if same_dir(model_dir, out_dir) {
        return Err(ArtifactError::UnsupportedEntry {
            path: out_dir.to_owned(),
            reason: "the output directory must differ from the model directory".into(),
        });
    }
    prepare_out_dir(out_dir, force)?;
    let mut index = Index {
        version: 1,
        files: Vec::new(),
    };
    for (name, path) in &files {
        if name == INDEX_NAME {
            return Err(ArtifactError::UnsupportedEntry {
                path: path.clone(),
                reason: format!("the name {INDEX_NAME} is reserved"),
            });
        }
        let plain = Zeroizing::new(fs::read(path).map_err(io_err(path))?);
        index.files.push(IndexEntry {
            name: name.clone(),
            sha256: mamori_core::hash::sha256_hex(&plain),
            size: plain.len() as u64,
        });
        let out = out_dir.join(format!("{name}{ENC_SUFFIX}"));
        write_private(&out, &encrypt_container(name, &plain, key))?;
    }
    let index_json = serde_json::to_vec(&index).expect("index serialises");
    let out = out_dir.join(format!("{INDEX_NAME}{ENC_SUFFIX}"));
    write_private(&out, &encrypt_container(INDEX_NAME, &index_json, key))?;
    Ok(files.into_iter().map(|(n, _)| n).collect())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A model decrypted in memory: file name → bytes, wiped on drop.
pub struct DecryptedModel {
    /// The decrypted files by original name (`model.safetensors`, `model.json`, ...).
    pub files: HashMap<String, Zeroizing<Vec<u8>>>,
}

impl DecryptedModel {
    /// The bytes of one file.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|v| v.as_slice())
    }
}

impl fmt::Debug for DecryptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self
            .files
            .iter()
            .map(|(n, v)| format!("{n} ({} bytes)", v.len()))
            .collect();
        names.sort();
        f.debug_struct("DecryptedModel")
            .field("files", &names)
            .finish()
    }
}

/// Reads and decrypts an encrypted model directory in memory, checking that the set of
/// files matches the encrypted index exactly.
pub fn open_encrypted_model(dir: &Path, key: &ModelKey) -> Result<DecryptedModel> {
    let mismatch = |reason: String| ArtifactError::EncryptedSetMismatch {
        dir: dir.to_owned(),
        reason,
    };
    let listing = list_flat_dir(dir, &[])?;
    let mut on_disk: HashMap<String, std::path::PathBuf> = HashMap::new();
    for (name, path) in listing {
        let Some(stem) = name.strip_suffix(ENC_SUFFIX) else {
            return Err(mismatch(format!(
                "unexpected unencrypted file {name} in an encrypted model directory"
            )));
        };
        on_disk.insert(stem.to_owned(), path);
    }
    let Some(index_path) = on_disk.remove(INDEX_NAME) else {
        return Err(mismatch(format!(
            "{INDEX_NAME}{ENC_SUFFIX} not found: not an encrypted model (encrypt it with `mamori model encrypt`)"
        )));
    };
    let raw = fs::read(&index_path).map_err(io_err(&index_path))?;
    let index_json = decrypt_container(INDEX_NAME, &raw, key)?;
    let index: Index = serde_json::from_slice(&index_json).map_err(|e| ArtifactError::Json {
        path: index_path.clone(),
        source: e,
    })?;
    let mut files = HashMap::new();
    for entry in &index.files {
        let Some(path) = on_disk.remove(&entry.name) else {
            return Err(mismatch(format!(
                "{}{ENC_SUFFIX} is listed in the index but missing",
                entry.name
            )));
        };
        let raw = fs::read(&path).map_err(io_err(&path))?;
        let plain = decrypt_container(&entry.name, &raw, key)?;
        let digest = mamori_core::hash::sha256_hex(&plain);
        if digest != entry.sha256 {
            return Err(mismatch(format!(
                "{}{ENC_SUFFIX} is not the file the index lists (sha256 {digest}, index {}): files from different encryptions were mixed",
                entry.name, entry.sha256
            )));
        }
        files.insert(entry.name.clone(), plain);
    }
    if let Some(extra) = on_disk.keys().min() {
        return Err(mismatch(format!(
            "{extra}{ENC_SUFFIX} is not listed in the encrypted index"
        )));
    }
    Ok(DecryptedModel { files })
}

/// Decrypts an encrypted model directory into `out_dir` (plaintext on disk, mode 0600; the
/// directory must be empty unless `force`). Returns the names written.
pub fn decrypt_model_to_dir(
    dir: &Path,
    key: &ModelKey,
    out_dir: &Path,
    force: bool,
) -> Result<Vec<String>> {
    let model = open_encrypted_model(dir, key)?;
    prepare_out_dir(out_dir, force)?;
    let mut names: Vec<_> = model.files.keys().cloned().collect();
    names.sort();
    for name in &names {
        write_private(&out_dir.join(name), &model.files[name])?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_round_trip_and_header_checks() {
        let k = ModelKey::generate();
        let c = encrypt_container("a.bin", b"hello", &k);
        assert_eq!(c.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(&*decrypt_container("a.bin", &c, &k).unwrap(), b"hello");
        // Same plaintext twice: different nonces, different bytes.
        assert_ne!(c, encrypt_container("a.bin", b"hello", &k));
        // Name bound as associated data.
        let e = decrypt_container("b.bin", &c, &k).unwrap_err();
        assert_eq!(
            e.to_string(),
            "encrypted file b.bin.enc failed authentication: it was tampered with or renamed"
        );
        let mut v = c.clone();
        v[8] = 2;
        let e = decrypt_container("a.bin", &v, &k).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 2"),
            "{e}"
        );
        let mut v = c.clone();
        v[9] = 7;
        let e = decrypt_container("a.bin", &v, &k).unwrap_err();
        assert!(e.to_string().contains("unsupported algorithm 7"), "{e}");
        let e = decrypt_container("a.bin", &c[..20], &k).unwrap_err();
        assert!(e.to_string().contains("shorter than header and tag"), "{e}");
        let e = decrypt_container(
            "a.bin",
            b"PK\x03\x04 this is a zip file, long enough to hold a header",
            &k,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }

    #[test]
    fn decrypted_model_debug_hides_bytes() {
        let mut files = HashMap::new();
        files.insert("w".to_string(), Zeroizing::new(vec![0xAB; 4]));
        let m = DecryptedModel { files };
        let s = format!("{m:?}");
        assert!(s.contains("w (4 bytes)"), "{s}");
        assert!(!s.contains("171"), "{s}");
    }
}
