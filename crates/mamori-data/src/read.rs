//! Reading a file whole, transparently decompressing gzip, and recording its SHA-256.

use crate::DataError;
use flate2::read::MultiGzDecoder;
use mamori_core::hash::sha256_hex;
use mamori_core::FileDigest;
use std::io::Read;
use std::path::Path;

/// The two magic bytes every gzip member starts with (RFC 1952 §2.3.1).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A file's content (decompressed if it was gzip) and the digest of its bytes on disk.
#[derive(Debug)]
pub struct FileBytes {
    /// Content after decompression.
    pub content: Vec<u8>,
    /// SHA-256 of the bytes on disk (before decompression).
    pub digest: FileDigest,
}

/// Whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[..2] == GZIP_MAGIC
}

/// Reads `path`, decompressing it if it starts with the gzip magic number (the file name
/// does not matter). Empty files, truncated or corrupt gzip streams are errors naming the file.
pub fn read_maybe_gz(path: &Path) -> Result<FileBytes, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.is_empty() {
        return Err(DataError::malformed(path, "empty file"));
    }
    let digest = FileDigest {
        path: path.display().to_string(),
        sha256: sha256_hex(&raw),
    };
    let content = if is_gzip(&raw) {
        gunzip(path, &raw)?
    } else {
        raw
    };
    if content.is_empty() {
        return Err(DataError::malformed(
            path,
            "empty file (after decompression)",
        ));
    }
    Ok(FileBytes { content, digest })
}

/// Decompresses a (possibly multi-member) gzip buffer read from `path`.
pub fn gunzip(path: &Path, raw: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    MultiGzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "truncated gzip stream (the file ends before the compressed data does)".to_string()
            } else {
                format!("corrupt gzip stream: {e}")
            };
            DataError::malformed(path, what)
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_detected_by_magic_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.bin");
        std::fs::write(&p, gz(b"hello")).unwrap();
        let f = read_maybe_gz(&p).unwrap();
        assert_eq!(f.content, b"hello");
        let q = dir.path().join("raw.gz");
        std::fs::write(&q, b"hello").unwrap();
        assert_eq!(read_maybe_gz(&q).unwrap().content, b"hello");
    }

    #[test]
    fn truncated_gzip_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gz");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let z = gz(&data);
        std::fs::write(&p, &z[..z.len() / 2]).unwrap();
        let e = read_maybe_gz(&p).unwrap_err().to_string();
        assert!(e.contains("t.gz"), "{e}");
        assert!(e.contains("truncated gzip"), "{e}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::fs::write(&p, b"").unwrap();
        let e = read_maybe_gz(&p).unwrap_err().to_string();
        assert!(e.contains("e.csv: empty file"), "{e}");
    }
}
