//! NPY arrays (NumPy's `.npy` format, versions 1.0 to 3.0): `x.npy` holds the inputs
//! (`float32`/`float64`, or `uint8` pixels scaled by 1/255) and `y.npy` integer labels.
//!
//! The format is small enough to parse here, which keeps the error messages ours (file, field,
//! problem) and adds no dependency: magic `\x93NUMPY`, version bytes, a little-endian header
//! length (`u16` in 1.0, `u32` in 2.0/3.0), then a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (n, ...), }` and the raw C-order data.
//! Spec: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use crate::read::read_maybe_gz;
use crate::DataError;
use mamori_core::FileDigest;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element type of an NPY array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// IEEE float of 4 or 8 bytes.
    Float(usize),
    /// Signed integer of 1, 2, 4 or 8 bytes.
    Int(usize),
    /// Unsigned integer of 1, 2, 4 or 8 bytes.
    Uint(usize),
    /// Boolean (1 byte).
    Bool,
}

impl NpyDtype {
    fn size(self) -> usize {
        match self {
            NpyDtype::Float(s) | NpyDtype::Int(s) | NpyDtype::Uint(s) => s,
            NpyDtype::Bool => 1,
        }
    }
    fn is_integer(self) -> bool {
        !matches!(self, NpyDtype::Float(_))
    }
}

/// An NPY array converted to `f64` values (exact for every supported integer up to 2^53).
#[derive(Debug)]
pub struct NpyArray {
    /// Shape (C order).
    pub shape: Vec<usize>,
    /// Element type as stored.
    pub dtype: NpyDtype,
    /// Values, row-major.
    pub values: Vec<f64>,
    /// Digest of the file as stored.
    pub digest: FileDigest,
}

/// Reads an NPY file (optionally gzipped).
pub fn read_npy(path: &Path) -> Result<NpyArray, DataError> {
    let f = read_maybe_gz(path)?;
    let b = &f.content;
    let bad = |m: String| DataError::malformed(path, m);
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err(bad(
            "wrong magic number: not an NPY file (expected \\x93NUMPY)".into(),
        ));
    }
    let major = b[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated NPY header".into()));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(bad(format!("unsupported NPY version {v}.{}", b[7]))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| {
            bad(format!(
                "NPY header claims {hlen} bytes but the file is {} bytes",
                b.len()
            ))
        })?;
    let header =
        std::str::from_utf8(&b[start..end]).map_err(|_| bad("NPY header is not text".into()))?;
    let descr =
        dict_value(header, "descr").ok_or_else(|| bad("NPY header has no 'descr'".into()))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype =
        parse_descr(descr).ok_or_else(|| bad(format!("unsupported NPY dtype '{descr}'")))?;
    let big = descr.starts_with('>');
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad("NPY header has no 'fortran_order'".into()))?;
    if fortran.trim() == "True" {
        return Err(bad(
            "Fortran-order NPY arrays are not supported (save with C order)".into(),
        ));
    }
    let shape_s =
        dict_value(header, "shape").ok_or_else(|| bad("NPY header has no 'shape'".into()))?;
    let shape =
        parse_shape(shape_s).ok_or_else(|| bad(format!("cannot parse NPY shape '{shape_s}'")))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = &b[end..];
    let need = count.and_then(|c| c.checked_mul(dtype.size()));
    if need != Some(data.len()) {
        return Err(bad(format!(
            "header shape {shape:?} of dtype '{descr}' needs {} data bytes, the file has {}",
            need.map_or("too many".into(), |n| n.to_string()),
            data.len()
        )));
    }
    let values = decode(data, dtype, big);
    Ok(NpyArray {
        shape,
        dtype,
        values,
        digest: f.digest,
    })
}

/// Reads `x` (inputs) and `y` (labels) arrays. `uint8` inputs are scaled by 1/255 (pixels);
/// float inputs are kept. Returns inputs, their sample shape, labels, the input scale and digests.
pub fn read_xy(x_path: &Path, y_path: &Path) -> Result<XyArrays, DataError> {
    let x = read_npy(x_path)?;
    let y = read_npy(y_path)?;
    if x.shape.is_empty() {
        return Err(DataError::malformed(
            x_path,
            "inputs must have a sample dimension (got a scalar)",
        ));
    }
    let n = x.shape[0];
    let y_ok = y.shape.len() == 1 || (y.shape.len() == 2 && y.shape[1] == 1);
    if !y_ok {
        return Err(DataError::malformed(
            y_path,
            format!("labels must have shape (n,) or (n, 1), got {:?}", y.shape),
        ));
    }
    if !y.dtype.is_integer() {
        return Err(DataError::malformed(
            y_path,
            format!("labels must be integers, got {:?}", y.dtype),
        ));
    }
    if y.shape[0] != n {
        return Err(DataError::malformed(
            y_path,
            format!(
                "sample/label count mismatch: {} has {n} samples but this file has {} labels",
                x_path.display(),
                y.shape[0]
            ),
        ));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &v) in y.values.iter().enumerate() {
        if v < 0.0 {
            return Err(DataError::malformed(
                y_path,
                format!("label {v} at index {i} is negative"),
            ));
        }
        labels.push(v as usize);
    }
    let scale = if x.dtype == NpyDtype::Uint(1) {
        1.0 / 255.0
    } else {
        1.0
    };
    let mut sample_shape = x.shape[1..].to_vec();
    if sample_shape.len() == 2 {
        // [n, h, w] images get a channel dimension.
        sample_shape.insert(0, 1);
    }
    if let Some(i) = x.values.iter().position(|v| !v.is_finite()) {
        return Err(DataError::malformed(
            x_path,
            format!("value at flat index {i} is not finite"),
        ));
    }
    Ok(XyArrays {
        x: x.values.iter().map(|&v| (v * scale) as f32).collect(),
        sample_shape,
        y: labels,
        scale: scale as f32,
        files: vec![x.digest, y.digest],
    })
}

/// Inputs and labels read from an NPY pair.
#[derive(Debug)]
pub struct XyArrays {
    /// Inputs, row-major, scaled.
    pub x: Vec<f32>,
    /// Shape of one sample.
    pub sample_shape: Vec<usize>,
    /// Labels.
    pub y: Vec<usize>,
    /// Scale applied to the stored values.
    pub scale: f32,
    /// Digests of the two files.
    pub files: Vec<FileDigest>,
}

/// The text of `'key': value` in a Python dict literal, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}'");
    let pat_b = format!("\"{key}\"");
    let at = header
        .find(&pat_a)
        .map(|i| i + pat_a.len())
        .or_else(|| header.find(&pat_b).map(|i| i + pat_b.len()))?;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_descr(d: &str) -> Option<NpyDtype> {
    let d = d.trim_start_matches(['<', '>', '|', '=']);
    let (kind, size) = d.split_at(1);
    let size: usize = size.parse().ok()?;
    match (kind, size) {
        ("f", 4 | 8) => Some(NpyDtype::Float(size)),
        ("i", 1 | 2 | 4 | 8) => Some(NpyDtype::Int(size)),
        ("u", 1 | 2 | 4 | 8) => Some(NpyDtype::Uint(size)),
        ("b", 1) => Some(NpyDtype::Bool),
        _ => None,
    }
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse().ok())
        .collect()
}

fn decode(data: &[u8], dtype: NpyDtype, big: bool) -> Vec<f64> {
    let s = dtype.size();
    data.chunks_exact(s)
        .map(|c| {
            let mut b = [0u8; 8];
            if big {
                // Reverse into little-endian order.
                for (i, v) in c.iter().rev().enumerate() {
                    b[i] = *v;
                }
            } else {
                b[..s].copy_from_slice(c);
            }
            match dtype {
                NpyDtype::Float(4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                NpyDtype::Float(_) => f64::from_le_bytes(b),
                NpyDtype::Uint(_) | NpyDtype::Bool => u64::from_le_bytes(b) as f64,
                NpyDtype::Int(n) => {
                    // Sign-extend from n bytes.
                    let shift = 64 - 8 * n as u32;
                    ((u64::from_le_bytes(b) << shift) as i64 >> shift) as f64
                }
            }
        })
        .collect()
}

/// Encodes a little-endian NPY 1.0 file (for tests and fixture tools): `descr` like `<f4`,
/// `data` the raw element bytes.
pub fn encode_npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = MAGIC.to_vec();
    v.extend([1u8, 0]);
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, b: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn reads_f32_and_i64() {
        let d = tempfile::tempdir().unwrap();
        let xs: Vec<u8> = [0.5f32, -1.0, 2.0, 3.0, 4.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let x = write(d.path(), "x.npy", &encode_npy("<f4", &[2, 3], &xs));
        let ys: Vec<u8> = [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let y = write(d.path(), "y.npy", &encode_npy("<i8", &[2], &ys));
        let a = read_xy(&x, &y).unwrap();
        assert_eq!(a.sample_shape, vec![3]);
        assert_eq!(a.x, vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(a.y, vec![1, 0]);
        assert_eq!(a.scale, 1.0);
    }

    #[test]
    fn u8_images_get_a_channel_and_are_scaled() {
        let d = tempfile::tempdir().unwrap();
        let x = write(
            d.path(),
            "x.npy",
            &encode_npy("|u1", &[1, 2, 2], &[0, 255, 51, 102]),
        );
        let y = write(d.path(), "y.npy", &encode_npy("|u1", &[1], &[3]));
        let a = read_xy(&x, &y).unwrap();
        assert_eq!(a.sample_shape, vec![1, 2, 2]);
        assert!((a.x[1] - 1.0).abs() < 1e-7 && (a.x[2] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn big_endian_and_signed() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [-2i16, 300].iter().flat_map(|v| v.to_be_bytes()).collect();
        let p = write(d.path(), "a.npy", &encode_npy(">i2", &[2], &data));
        assert_eq!(read_npy(&p).unwrap().values, vec![-2.0, 300.0]);
    }

    #[test]
    fn header_shape_must_match_length() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "x.npy", &encode_npy("<f4", &[2, 3], &[0u8; 20]));
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(
            e.contains(
                "x.npy: header shape [2, 3] of dtype '<f4' needs 24 data bytes, the file has 20"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_magic_dtype_and_labels() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "x.npy", b"PK\x03\x04 definitely not npy");
        assert!(read_npy(&p)
            .unwrap_err()
            .to_string()
            .contains("x.npy: wrong magic number"));
        let p = write(d.path(), "c.npy", &encode_npy("<c8", &[1], &[0u8; 8]));
        assert!(read_npy(&p)
            .unwrap_err()
            .to_string()
            .contains("unsupported NPY dtype '<c8'"));
        let x = write(d.path(), "x.npy", &encode_npy("<f4", &[1, 1], &[0u8; 4]));
        let y = write(d.path(), "y.npy", &encode_npy("<f4", &[1], &[0u8; 4]));
        assert!(read_xy(&x, &y)
            .unwrap_err()
            .to_string()
            .contains("y.npy: labels must be integers"));
        let y = write(d.path(), "y.npy", &encode_npy("|u1", &[2], &[0, 1]));
        let e = read_xy(&x, &y).unwrap_err().to_string();
        assert!(e.contains("y.npy: sample/label count mismatch"), "{e}");
        let y = write(d.path(), "y.npy", &encode_npy("|i1", &[1], &[0xff]));
        assert!(read_xy(&x, &y)
            .unwrap_err()
            .to_string()
            .contains("label -1 at index 0 is negative"));
    }
}
