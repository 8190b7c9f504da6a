//! The symmetric model key (AES-256) and where it comes from.
//!
//! A key file holds the key as 64 hex digits (whitespace around it is ignored); `mamori model
//! keygen` writes one with mode 0600. The key is looked up, in order, from an explicit path
//! (`--key-file`, `--model-key-file`), the file named by `MAMORI_MODEL_KEY_FILE`, or the key
//! itself in `MAMORI_MODEL_KEY` (64 hex digits; convenient in containers, but an environment is
//! readable by the same user through `/proc/<pid>/environ`, so prefer a file).
//!
//! The key bytes are wiped from memory when a [`ModelKey`] is dropped, and its `Debug` output
//! shows only the key id (a truncated SHA-256 of the key, safe to print).

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{io_err, ArtifactError, Result};
use crate::files::create_private_new;

/// Environment variable naming a key file.
pub const ENV_KEY_FILE: &str = "MAMORI_MODEL_KEY_FILE";
/// Environment variable carrying the key itself (64 hex digits).
pub const ENV_KEY: &str = "MAMORI_MODEL_KEY";

/// A 256-bit model encryption key, wiped on drop.
pub struct ModelKey {
    bytes: [u8; 32],
}

impl ModelKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// A key from raw bytes (tests, callers holding a key from a secret manager).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// Parses 64 hex digits; `origin` names the source in errors.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(ArtifactError::BadKey {
                origin: origin.into(),
                reason: format!(
                    "expected 64 hex digits (a 256-bit key), found {} characters",
                    text.len()
                ),
            });
        }
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(text, &mut bytes).is_err() {
            bytes.zeroize();
            return Err(ArtifactError::BadKey {
                origin: origin.into(),
                reason: "not hexadecimal".into(),
            });
        }
        Ok(Self { bytes })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err(path))?);
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Resolves the key from an explicit path, else `MAMORI_MODEL_KEY_FILE`, else
    /// `MAMORI_MODEL_KEY`; [`ArtifactError::MissingKey`] if none is set.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        Self::resolve_with(explicit, |k| std::env::var_os(k))
    }

    /// [`ModelKey::resolve`] with an injectable environment (for tests).
    pub fn resolve_with(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self> {
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = env(ENV_KEY_FILE).filter(|v| !v.is_empty()) {
            return Self::from_file(Path::new(&p));
        }
        if let Some(v) = env(ENV_KEY).filter(|v| !v.is_empty()) {
            let text = Zeroizing::new(v.to_string_lossy().into_owned());
            return Self::from_hex(&text, ENV_KEY);
        }
        Err(ArtifactError::MissingKey)
    }

    /// Writes the key as hex to a new file with mode 0600 (fails if the file exists).
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let mut text = Zeroizing::new(hex::encode(self.bytes));
        text.push('\n');
        create_private_new(path, text.as_bytes())
    }

    /// The key id: the first 8 bytes of SHA-256("mamori-model-key-id\0" ‖ key), hex. It
    /// tells a wrong key from a tampered file and is safe to print.
    pub fn id(&self) -> String {
        hex::encode(self.id_bytes())
    }

    pub(crate) fn id_bytes(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"mamori-model-key-id\0");
        h.update(self.bytes);
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl Drop for ModelKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelKey")
            .field("id", &self.id())
            .field("bytes", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn debug_output_redacts_the_key() {
        let k = ModelKey::from_hex(HEX, "test").unwrap();
        let s = format!("{k:?} {k:#?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains(HEX));
        assert!(!s.contains("0a0b0c"));
        assert!(!s.contains("[0, 1, 2"));
        assert!(s.contains(&k.id()));
    }

    #[test]
    fn bad_key_text_is_rejected_with_origin() {
        let e = ModelKey::from_hex("abcd", "keyfile.hex").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad model key from keyfile.hex: expected 64 hex digits (a 256-bit key), found 4 characters"
        );
        let e = ModelKey::from_hex(&"zz".repeat(32), "X").unwrap_err();
        assert!(e.to_string().contains("not hexadecimal"), "{e}");
        // The error never echoes the key material.
        assert!(!e.to_string().contains("zzzz"));
    }

    #[test]
    fn resolve_order_and_missing_key() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k.hex");
        let k = ModelKey::generate();
        k.write_new_file(&f).unwrap();
        let fs = f.clone().into_os_string();
        // Explicit path wins.
        let got = ModelKey::resolve_with(Some(&f), |_| None).unwrap();
        assert_eq!(got.id(), k.id());
        // Then the key-file variable.
        let got =
            ModelKey::resolve_with(None, |v| (v == ENV_KEY_FILE).then(|| fs.clone())).unwrap();
        assert_eq!(got.id(), k.id());
        // Then the key variable.
        let got =
            ModelKey::resolve_with(None, |v| (v == ENV_KEY).then(|| OsString::from(HEX))).unwrap();
        assert_eq!(got.bytes(), ModelKey::from_hex(HEX, "").unwrap().bytes());
        // Nothing: the named error.
        let e = ModelKey::resolve_with(None, |_| None).unwrap_err();
        assert!(matches!(e, ArtifactError::MissingKey));
        assert!(e.to_string().starts_with("missing model key"), "{e}");
        // A key file that does not exist names the path.
        let e = ModelKey::resolve_with(Some(&d.path().join("nope")), |_| None).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        // keygen refuses to overwrite.
        assert!(k.write_new_file(&f).is_err());
    }
}
