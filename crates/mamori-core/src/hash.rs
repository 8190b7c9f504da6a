//! Stable hashing helpers (SHA-256 of files and of tensors).

use sha2::{Digest, Sha256};

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of an `f32` slice in little-endian byte order, lowercase hex.
///
/// This is the canonical hash of a query input: the audit log, the DAWN ledger and the
/// detectors all identify an input by it.
pub fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn f32_hash_depends_on_value() {
        assert_ne!(sha256_f32(&[0.0, 1.0]), sha256_f32(&[1.0, 0.0]));
        assert_eq!(sha256_f32(&[0.5]), sha256_hex(&0.5f32.to_le_bytes()));
    }
}
