//! Test-only readers for the shared datasets (the library uses `mamori_data`; these keep the
//! engine's tests independent of it).

#![allow(dead_code)]

use flate2::read::GzDecoder;
use mamori_core::Tensor;
use std::io::Read;
use std::path::PathBuf;

/// `../shared/data` seen from the crate, if present.
pub fn data_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    // CI always has the shared data beside the repository: a missing directory there is a
    // broken setup, not a reason to skip.
    assert!(
        d.is_dir() || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the shared datasets are missing at {}",
        d.display()
    );
    d.is_dir().then_some(d)
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// UCI digits: 1,797 samples of 64 values in `[0, 1]` (raw / 16), labels 0–9.
pub fn digits() -> Option<(Tensor, Vec<usize>)> {
    let text = String::from_utf8(gunzip(&data_dir()?.join("digits/digits.csv.gz"))).ok()?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f32> = line.split(',').map(|s| s.trim().parse().unwrap()).collect();
        x.extend(v[..64].iter().map(|a| a / 16.0));
        y.push(v[64] as usize);
    }
    Some((Tensor::new(vec![y.len(), 64], x).unwrap(), y))
}

/// The first `n` images of an IDX split (`train` or `t10k`) of `dataset`, as `[n, 1, 28, 28]`.
pub fn idx(dataset: &str, split: &str, n: usize) -> Option<(Tensor, Vec<usize>)> {
    let dir = data_dir()?.join(dataset);
    let img = gunzip(&dir.join(format!("{split}-images-idx3-ubyte.gz")));
    let lab = gunzip(&dir.join(format!("{split}-labels-idx1-ubyte.gz")));
    let n = n.min(lab.len() - 8);
    let x: Vec<f32> = img[16..16 + n * 784]
        .iter()
        .map(|&b| b as f32 / 255.0)
        .collect();
    let y: Vec<usize> = lab[8..8 + n].iter().map(|&b| b as usize).collect();
    Some((Tensor::new(vec![n, 1, 28, 28], x).unwrap(), y))
}

/// Splits off every fourth sample as a test set.
pub fn split(x: &Tensor, y: &[usize]) -> ((Tensor, Vec<usize>), (Tensor, Vec<usize>)) {
    let (tr, te): (Vec<usize>, Vec<usize>) = (0..y.len()).partition(|i| i % 4 != 0);
    (
        (x.select(&tr), tr.iter().map(|&i| y[i]).collect()),
        (x.select(&te), te.iter().map(|&i| y[i]).collect()),
    )
}
