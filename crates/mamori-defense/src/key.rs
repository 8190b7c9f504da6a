//! Secret keys: redacted in `Debug`, stored in `0600` files, used for keyed (HMAC-SHA256)
//! randomness.

use crate::error::DefenseError;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// A 32-byte secret key. `Debug` never prints it; it is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the memory is released.
        for b in self.0.iter_mut() {
            // SAFETY-free volatile-ish write: a plain write is enough for our threat model.
            *b = 0;
        }
    }
}

impl SecretKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        SecretKey(b)
    }

    /// The raw key bytes (for cipher construction; never log them).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// A sub-key for one purpose: `HMAC-SHA256(self, "mamori/" + purpose)`. Different
    /// defenses use different sub-keys so that one's output reveals nothing about another's.
    pub fn derive(&self, purpose: &str) -> SecretKey {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"mamori/");
        mac.update(purpose.as_bytes());
        SecretKey(mac.finalize().into_bytes().into())
    }

    /// `HMAC-SHA256(key, bytes of input)`; the input's bytes are its `f32` values in
    /// little-endian order (the same bytes [`mamori_core::hash::sha256_f32`] hashes).
    pub fn hmac_f32(&self, input: &[f32]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for v in input {
            mac.update(&v.to_le_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// A ChaCha20 generator seeded by [`SecretKey::hmac_f32`]: the same input always gives the
    /// same stream, and without the key the stream is unpredictable.
    pub fn rng_for(&self, input: &[f32]) -> ChaCha20Rng {
        ChaCha20Rng::from_seed(self.hmac_f32(input))
    }

    /// Reads a key file: 64 hexadecimal characters (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, DefenseError> {
        let err = |m: String| DefenseError::Key {
            path: path.display().to_string(),
            message: m,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim())
            .map_err(|_| err("expected 64 hexadecimal characters".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| err(format!("expected 32 bytes, found {}", v.len())))?;
        Ok(SecretKey(arr))
    }

    /// Writes the key as hex to a new file readable only by its owner (`0600` on Unix).
    /// Fails if the file exists.
    pub fn save_new(&self, path: &Path) -> Result<(), DefenseError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| DefenseError::io(path, e))?;
        f.write_all(hex::encode(self.0).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| DefenseError::io(path, e))
    }

    /// Loads `path`, or generates a key and saves it there if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, DefenseError> {
        if path.exists() {
            return Self::load(path);
        }
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| DefenseError::io(parent, e))?;
            }
        }
        let k = Self::generate();
        k.save_new(path)?;
        Ok(k)
    }
}

/// Maps the first 8 bytes of a digest to a uniform number in `[0, 1)` (53-bit precision).
pub fn unit_interval(digest: &[u8; 32]) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let k = SecretKey::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn keyed_rng_is_deterministic_and_key_dependent() {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        let x = [0.25f32, 0.5];
        assert_eq!(a.rng_for(&x).next_u64(), a.rng_for(&x).next_u64());
        assert_ne!(a.rng_for(&x).next_u64(), b.rng_for(&x).next_u64());
        assert_ne!(
            a.rng_for(&x).next_u64(),
            a.rng_for(&[0.25, 0.75]).next_u64()
        );
        assert_ne!(a.derive("noise"), a.derive("dawn"));
    }

    #[test]
    fn key_file_round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = SecretKey::load_or_create(&p).unwrap();
        assert_eq!(SecretKey::load_or_create(&p).unwrap(), k);
        assert!(k.save_new(&p).is_err(), "must not overwrite");
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        let e = SecretKey::load(&dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad") && e.contains("hexadecimal"), "{e}");
        std::fs::write(dir.path().join("short"), "abcd").unwrap();
        let e = SecretKey::load(&dir.path().join("short"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 bytes"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unit_interval_in_range() {
        assert_eq!(unit_interval(&[0; 32]), 0.0);
        assert!(unit_interval(&[0xff; 32]) < 1.0);
    }
}
