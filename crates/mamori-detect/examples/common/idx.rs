//! Minimal IDX (MNIST-format) reader for the bench and the acceptance example, so they run
//! without the dataset crate. Images are normalised to `[0, 1]` as the core conventions say.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

/// Images `[n × rows·cols]` in `[0, 1]` and labels.
pub struct Idx {
    /// Flat pixel values, one image after another.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<usize>,
    /// Pixels per image.
    pub dim: usize,
}

fn read_gz(path: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(out)
}

fn be(b: &[u8], i: usize) -> usize {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
}

/// Loads `{prefix}-images-idx3-ubyte.gz` and `{prefix}-labels-idx1-ubyte.gz` from `dir`.
pub fn load(dir: &Path, prefix: &str) -> Result<Idx, String> {
    let img = read_gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let lab = read_gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    if img.len() < 16 || be(&img, 0) != 2051 || lab.len() < 8 || be(&lab, 0) != 2049 {
        return Err(format!("{}: not IDX files", dir.display()));
    }
    let (n, r, c) = (be(&img, 4), be(&img, 8), be(&img, 12));
    let dim = r * c;
    if img.len() != 16 + n * dim || lab.len() != 8 + n {
        return Err(format!("{}: truncated IDX files", dir.display()));
    }
    Ok(Idx {
        x: img[16..].iter().map(|&b| b as f32 / 255.0).collect(),
        y: lab[8..].iter().map(|&b| b as usize).collect(),
        dim,
    })
}

impl Idx {
    /// Image `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.y.len()
    }
}
