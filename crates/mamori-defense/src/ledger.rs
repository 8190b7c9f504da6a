//! The DAWN ledger: an append-only, fsync'd, AES-256-GCM encrypted file of watermarked answers.
//!
//! File layout: the header `MAMORI-DAWN-LEDGER v1\n`, then one frame per record:
//! `u32 little-endian frame length | 12-byte nonce | ciphertext+tag`. The plaintext is the JSON
//! of a [`LedgerRecord`]; the associated data binds each frame to its position
//! (`"mamori-ledger" || u64 index`), so records cannot be reordered, dropped from the middle or
//! copied between positions without detection. A frame cut short at the end of the file (a
//! crash during a write, before the append was acknowledged) is discarded on open; any other
//! damage is an error naming the record.

use crate::error::DefenseError;
use crate::key::SecretKey;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"MAMORI-DAWN-LEDGER v1\n";
const NONCE_LEN: usize = 12;
/// Frames larger than this are treated as corruption (a record holds one input).
const MAX_FRAME: u32 = 64 << 20;

/// One watermarked answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// SHA-256 of the input ([`mamori_core::hash::sha256_f32`]).
    pub input_sha256: String,
    /// The input itself (normalised values), so the verifier can replay it.
    pub input: Vec<f32>,
    /// The label the model predicted.
    pub true_label: usize,
    /// The (wrong) label answered instead.
    pub given_label: usize,
    /// Number of classes of the answer.
    pub num_classes: usize,
    /// When the answer was given, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The served model that gave the answer (absent in records written before each model
    /// had its own ledger, and for a [`crate::Dawn`] without [`crate::Dawn::with_model`]).
    /// Left out of the JSON when absent, so older records and their commitments are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// An open ledger. Appends are durable when [`Ledger::append`] returns.
pub struct Ledger {
    path: PathBuf,
    cipher: Aes256Gcm,
    file: File,
    records: Vec<LedgerRecord>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("records", &self.records.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn aad(index: usize) -> Vec<u8> {
    let mut a = b"mamori-ledger".to_vec();
    a.extend_from_slice(&(index as u64).to_le_bytes());
    a
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, encrypted under `key`, and reads every
    /// record in it.
    pub fn open(path: &Path, key: &SecretKey) -> Result<Ledger, DefenseError> {
        let cipher = Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key");
        let io = |e: std::io::Error| DefenseError::io(path, e);
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| DefenseError::io(parent, e))?;
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut records = Vec::new();
        if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            sync_dir(path);
        } else {
            if !bytes.starts_with(MAGIC) {
                return Err(DefenseError::Ledger {
                    path: path.display().to_string(),
                    index: 0,
                    message: "not a mamori DAWN ledger (bad header)".into(),
                });
            }
            let mut pos = MAGIC.len();
            loop {
                if pos == bytes.len() {
                    break;
                }
                let index = records.len();
                let torn = |pos: usize| pos > bytes.len();
                if torn(pos + 4) {
                    break;
                }
                let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
                if len > MAX_FRAME || (len as usize) < NONCE_LEN + 16 {
                    return Err(DefenseError::Ledger {
                        path: path.display().to_string(),
                        index,
                        message: format!("implausible frame length {len}"),
                    });
                }
                let start = pos + 4;
                let end = start + len as usize;
                if torn(end) {
                    break;
                }
                let (nonce, ct) = bytes[start..end].split_at(NONCE_LEN);
                let plain = cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: ct,
                            aad: &aad(index),
                        },
                    )
                    .map_err(|_| DefenseError::Ledger {
                        path: path.display().to_string(),
                        index,
                        message: "authentication failed (wrong key, tampering or corruption)"
                            .into(),
                    })?;
                let rec: LedgerRecord =
                    serde_json::from_slice(&plain).map_err(|e| DefenseError::Ledger {
                        path: path.display().to_string(),
                        index,
                        message: format!("bad record: {e}"),
                    })?;
                records.push(rec);
                pos = end;
            }
            if pos < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    dropped_bytes = bytes.len() - pos,
                    "ledger ends with an incomplete (never acknowledged) record; truncating it"
                );
                file.set_len(pos as u64).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Ledger {
            path: path.to_path_buf(),
            cipher,
            file,
            records,
        })
    }

    /// Appends a record and syncs it to disk; when this returns `Ok` the record survives a
    /// crash or restart.
    pub fn append(&mut self, record: LedgerRecord) -> Result<(), DefenseError> {
        let io = |e: std::io::Error| DefenseError::io(&self.path, e);
        let plain = serde_json::to_vec(&record).map_err(|e| DefenseError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(self.records.len()),
                },
            )
            .map_err(|_| DefenseError::Io {
                path: self.path.display().to_string(),
                message: "encryption failed".into(),
            })?;
        let mut frame = Vec::with_capacity(4 + NONCE_LEN + ct.len());
        frame.extend_from_slice(&((NONCE_LEN + ct.len()) as u32).to_le_bytes());
        frame.extend_from_slice(&nonce);
        frame.extend_from_slice(&ct);
        self.file.write_all(&frame).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records.push(record);
        Ok(())
    }

    /// Every record, oldest first.
    pub fn records(&self) -> &[LedgerRecord] {
        &self.records
    }

    /// The ledger's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A commitment to the records: see [`commitment`].
    pub fn commitment(&self) -> String {
        commitment(&self.records)
    }
}

/// SHA-256 hash chain over the records' JSON: `h₀ = SHA-256("mamori-ledger-v1")`,
/// `hᵢ₊₁ = SHA-256(hᵢ || JSON(recordᵢ))`; lowercase hex of the last value. Publishing it fixes
/// the ledger's content without revealing it.
pub fn commitment(records: &[LedgerRecord]) -> String {
    let mut h: [u8; 32] = Sha256::digest(b"mamori-ledger-v1").into();
    for r in records {
        let mut d = Sha256::new();
        d.update(h);
        d.update(serde_json::to_vec(r).expect("records serialise"));
        h = d.finalize().into();
    }
    hex::encode(h)
}

/// Best effort: sync the directory so a newly created file's entry is durable.
fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> LedgerRecord {
        LedgerRecord {
            input_sha256: mamori_core::hash::sha256_f32(&[i as f32]),
            input: vec![i as f32, 0.5],
            true_label: i % 10,
            given_label: (i + 1) % 10,
            num_classes: 10,
            unix_ms: 1_700_000_000_000 + i as u64,
            model: None,
        }
    }

    #[test]
    fn reopened_ledger_holds_every_acknowledged_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ledger.bin");
        let k = SecretKey::from_bytes([1; 32]);
        {
            let mut l = Ledger::open(&p, &k).unwrap();
            for i in 0..20 {
                l.append(rec(i)).unwrap();
            }
        }
        let mut l = Ledger::open(&p, &k).unwrap();
        assert_eq!(l.records().len(), 20);
        assert_eq!(l.records()[7], rec(7));
        l.append(rec(20)).unwrap();
        drop(l);
        let l = Ledger::open(&p, &k).unwrap();
        assert_eq!(l.records().len(), 21);
        assert_eq!(
            l.commitment(),
            commitment(&(0..21).map(rec).collect::<Vec<_>>())
        );
    }

    #[test]
    fn encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.bin");
        let k = SecretKey::from_bytes([1; 32]);
        let mut l = Ledger::open(&p, &k).unwrap();
        l.append(rec(3)).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("input_sha256") && !text.contains(&rec(3).input_sha256));
        let e = Ledger::open(&p, &SecretKey::from_bytes([2; 32]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 0") && e.contains("authentication failed"),
            "{e}"
        );
    }

    #[test]
    fn torn_tail_is_dropped_tampering_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.bin");
        let k = SecretKey::from_bytes([1; 32]);
        let mut l = Ledger::open(&p, &k).unwrap();
        for i in 0..3 {
            l.append(rec(i)).unwrap();
        }
        drop(l);
        let good = std::fs::read(&p).unwrap();
        // A crash mid-append: half a frame at the end.
        let mut torn = good.clone();
        torn.extend_from_slice(&good[MAGIC.len()..MAGIC.len() + 30]);
        std::fs::write(&p, &torn).unwrap();
        let l = Ledger::open(&p, &k).unwrap();
        assert_eq!(l.records().len(), 3);
        drop(l);
        assert_eq!(std::fs::read(&p).unwrap(), good, "torn tail truncated");
        // A flipped bit in the second record.
        let mut bad = good.clone();
        let second = MAGIC.len()
            + 4
            + u32::from_le_bytes(good[MAGIC.len()..MAGIC.len() + 4].try_into().unwrap()) as usize
            + 20;
        bad[second] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let e = Ledger::open(&p, &k).unwrap_err().to_string();
        assert!(e.contains("record 1"), "{e}");
        // Not a ledger at all.
        std::fs::write(&p, b"hello").unwrap();
        let e = Ledger::open(&p, &k).unwrap_err().to_string();
        assert!(e.contains("bad header") && e.contains("ledger.bin"), "{e}");
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::from_bytes([0xcd; 32]);
        let l = Ledger::open(&dir.path().join("l"), &k).unwrap();
        let s = format!("{l:?}");
        assert!(
            !s.to_lowercase().contains("cdcd") && s.contains("redacted"),
            "{s}"
        );
    }
}
