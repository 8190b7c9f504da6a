//! IDX files (MNIST, Fashion-MNIST): images `[n, rows, cols]` and labels `[n]`, unsigned bytes,
//! gzipped or raw.
//!
//! Format (LeCun et al., <http://yann.lecun.com/exdb/mnist/>): a big-endian `u32` magic number
//! whose third byte is the element type (`0x08` = unsigned byte) and fourth the number of
//! dimensions, then one big-endian `u32` per dimension, then the data. Images use magic
//! `0x00000803`, labels `0x00000801`.

use crate::read::read_maybe_gz;
use crate::DataError;
use mamori_core::FileDigest;
use std::path::Path;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images read from an IDX file.
#[derive(Debug)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `n * rows * cols` pixels, row-major.
    pub pixels: Vec<u8>,
    /// Digest of the file as stored.
    pub digest: FileDigest,
}

/// Labels read from an IDX file.
#[derive(Debug)]
pub struct IdxLabels {
    /// One label per sample.
    pub labels: Vec<u8>,
    /// Digest of the file as stored.
    pub digest: FileDigest,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the header of an IDX buffer with the expected magic; returns the dims and the data.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::malformed(
            path,
            format!("too short for an IDX header ({} bytes)", bytes.len()),
        ));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::malformed(
            path,
            format!(
                "wrong magic number 0x{found:08x} (expected 0x{magic:08x} for an IDX {what} file)"
            ),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::malformed(
            path,
            format!("truncated IDX header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = &bytes[header..];
    match expected {
        Some(e) if e == data.len() => Ok((dims, data)),
        _ => {
            let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            Err(DataError::malformed(
                path,
                format!(
                    "header dims {} need {} data bytes, the file has {}",
                    shown.join("x"),
                    expected.map_or("too many".to_string(), |e| e.to_string()),
                    data.len()
                ),
            ))
        }
    }
}

/// Reads an IDX images file (`magic 0x00000803`), gzipped or raw.
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    let f = read_maybe_gz(path)?;
    let (dims, data) = parse(path, &f.content, IMAGES_MAGIC, "images")?;
    Ok(IdxImages {
        n: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels: data.to_vec(),
        digest: f.digest,
    })
}

/// Reads an IDX labels file (`magic 0x00000801`), gzipped or raw.
pub fn read_labels(path: &Path) -> Result<IdxLabels, DataError> {
    let f = read_maybe_gz(path)?;
    let (_, data) = parse(path, &f.content, LABELS_MAGIC, "labels")?;
    Ok(IdxLabels {
        labels: data.to_vec(),
        digest: f.digest,
    })
}

/// Images (pixels / 255, shape `[n, 1, rows, cols]`), labels and the digests of both files,
/// checking that the counts agree and every label is below `num_classes` (when given).
#[derive(Debug)]
pub struct IdxPair {
    /// Normalised pixels, `[n, 1, rows, cols]` row-major.
    pub x: Vec<f32>,
    /// `[n, 1, rows, cols]`.
    pub shape: Vec<usize>,
    /// Labels.
    pub y: Vec<usize>,
    /// Digests of the images and labels files.
    pub files: Vec<FileDigest>,
}

/// Reads an images file and a labels file and checks them against each other.
pub fn read_pair(
    images: &Path,
    labels: &Path,
    num_classes: Option<usize>,
) -> Result<IdxPair, DataError> {
    let im = read_images(images)?;
    let lb = read_labels(labels)?;
    if im.n != lb.labels.len() {
        return Err(DataError::malformed(
            labels,
            format!(
                "image/label count mismatch: {} has {} images but this file has {} labels",
                images.display(),
                im.n,
                lb.labels.len()
            ),
        ));
    }
    if let Some(c) = num_classes {
        if let Some((i, &l)) = lb.labels.iter().enumerate().find(|(_, &l)| l as usize >= c) {
            return Err(DataError::malformed(
                labels,
                format!(
                    "label {l} at index {i} is out of range (the dataset has {c} classes, 0..{})",
                    c - 1
                ),
            ));
        }
    }
    Ok(IdxPair {
        x: im.pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        shape: vec![im.n, 1, im.rows, im.cols],
        y: lb.labels.iter().map(|&l| l as usize).collect(),
        files: vec![im.digest, lb.digest],
    })
}

/// Encodes images as an (uncompressed) IDX buffer; used by tests and tools writing fixtures.
pub fn encode_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [n, rows, cols] {
        v.extend((d as u32).to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

/// Encodes labels as an (uncompressed) IDX buffer.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = LABELS_MAGIC.to_be_bytes().to_vec();
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn round_trip_raw() {
        let d = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..3 * 4).map(|i| (i * 20) as u8).collect();
        let im = write(d.path(), "im", &encode_images(3, 2, 2, &px));
        let lb = write(d.path(), "lb", &encode_labels(&[0, 2, 1]));
        let p = read_pair(&im, &lb, Some(3)).unwrap();
        assert_eq!(p.shape, vec![3, 1, 2, 2]);
        assert_eq!(p.y, vec![0, 2, 1]);
        assert!((p.x[1] - 20.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.files.len(), 2);
    }

    #[test]
    fn wrong_magic_is_reported() {
        let d = tempfile::tempdir().unwrap();
        // A labels file where an images file is expected.
        let im = write(d.path(), "images.idx", &encode_labels(&[1, 2]));
        let e = read_images(&im).unwrap_err().to_string();
        assert!(e.contains("images.idx"), "{e}");
        assert!(
            e.contains("wrong magic number 0x00000801 (expected 0x00000803"),
            "{e}"
        );
    }

    #[test]
    fn header_dims_must_match_length() {
        let d = tempfile::tempdir().unwrap();
        let mut b = encode_images(2, 2, 2, &[0; 8]);
        b.pop();
        let im = write(d.path(), "short.idx", &b);
        let e = read_images(&im).unwrap_err().to_string();
        assert!(
            e.contains("header dims 2x2x2 need 8 data bytes, the file has 7"),
            "{e}"
        );
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let d = tempfile::tempdir().unwrap();
        let im = write(d.path(), "im.idx", &encode_images(2, 1, 1, &[0, 1]));
        let lb = write(d.path(), "lb.idx", &encode_labels(&[0, 1, 1]));
        let e = read_pair(&im, &lb, None).unwrap_err().to_string();
        assert!(e.contains("lb.idx: image/label count mismatch"), "{e}");
        assert!(
            e.contains("im.idx has 2 images but this file has 3 labels"),
            "{e}"
        );
    }

    #[test]
    fn label_out_of_range() {
        let d = tempfile::tempdir().unwrap();
        let im = write(d.path(), "im.idx", &encode_images(2, 1, 1, &[0, 1]));
        let lb = write(d.path(), "lb.idx", &encode_labels(&[3, 10]));
        let e = read_pair(&im, &lb, Some(10)).unwrap_err().to_string();
        assert!(
            e.contains("lb.idx: label 10 at index 1 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn tiny_file_is_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let im = write(d.path(), "x", &[0, 0]);
        assert!(read_images(&im)
            .unwrap_err()
            .to_string()
            .contains("too short"));
        let im = write(d.path(), "y", &[0, 0, 8, 3, 0]);
        assert!(read_images(&im)
            .unwrap_err()
            .to_string()
            .contains("truncated IDX header"));
    }
}
