//! Corrupt datasets behind the named shortcuts give errors naming the file and the problem
//! (issue #2: truncated gzip, wrong magic number, image/label count mismatch, label out of
//! range, ragged CSV, non-numeric CSV, header dims vs length, empty file).

use flate2::write::GzEncoder;
use mamori_data::idx::{encode_images, encode_labels};
use mamori_data::load;
use std::io::Write;
use std::path::Path;

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Writes a small valid `mnist/` (4 train, 2 test 2x2 images) into `root`.
fn mnist_like(root: &Path) -> std::path::PathBuf {
    let d = root.join("mnist");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("train-images-idx3-ubyte.gz"),
        gz(&encode_images(4, 2, 2, &[7; 16])),
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gz(&encode_labels(&[0, 1, 2, 9])),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte.gz"),
        gz(&encode_images(2, 2, 2, &[1; 8])),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gz(&encode_labels(&[3, 4])),
    )
    .unwrap();
    d
}

fn err(root: &Path, name: &str) -> String {
    load(name, root).unwrap_err().to_string()
}

#[test]
fn valid_small_idx_loads() {
    let t = tempfile::tempdir().unwrap();
    mnist_like(t.path());
    let s = load("mnist", t.path()).unwrap();
    assert_eq!(s.train.x.shape(), &[4, 1, 2, 2]);
    assert_eq!(s.test.y, vec![3, 4]);
}

#[test]
fn truncated_gzip() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    let big: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let z = gz(&encode_images(5000, 2, 2, &big));
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), &z[..z.len() - 40]).unwrap();
    let e = err(t.path(), "mnist");
    assert!(
        e.contains("train-images-idx3-ubyte.gz: truncated gzip stream"),
        "{e}"
    );
}

#[test]
fn wrong_magic_number() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    // Labels and images swapped.
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gz(&encode_images(2, 2, 2, &[1; 8])),
    )
    .unwrap();
    let e = err(t.path(), "mnist");
    assert!(
        e.contains("t10k-labels-idx1-ubyte.gz: wrong magic number 0x00000803 (expected 0x00000801"),
        "{e}"
    );
}

#[test]
fn image_label_count_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gz(&encode_labels(&[0, 1, 2])),
    )
    .unwrap();
    let e = err(t.path(), "mnist");
    assert!(
        e.contains("train-labels-idx1-ubyte.gz: image/label count mismatch"),
        "{e}"
    );
    assert!(e.contains("has 4 images but this file has 3 labels"), "{e}");
}

#[test]
fn label_out_of_range() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte.gz"),
        gz(&encode_labels(&[3, 12])),
    )
    .unwrap();
    let e = err(t.path(), "mnist");
    assert!(e.contains("t10k-labels-idx1-ubyte.gz: label 12 at index 1 is out of range (the dataset has 10 classes"), "{e}");
}

#[test]
fn header_dims_do_not_match_length() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    let mut b = encode_images(4, 2, 2, &[7; 16]);
    b.truncate(b.len() - 3);
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&b)).unwrap();
    let e = err(t.path(), "mnist");
    assert!(
        e.contains(
            "train-images-idx3-ubyte.gz: header dims 4x2x2 need 16 data bytes, the file has 13"
        ),
        "{e}"
    );
}

#[test]
fn empty_file() {
    let t = tempfile::tempdir().unwrap();
    let d = mnist_like(t.path());
    std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), b"").unwrap();
    let e = err(t.path(), "mnist");
    assert!(e.contains("t10k-images-idx3-ubyte.gz: empty file"), "{e}");
}

fn digits(root: &Path, csv: &str) {
    let d = root.join("digits");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("digits.csv.gz"), gz(csv.as_bytes())).unwrap();
}

#[test]
fn ragged_csv() {
    let t = tempfile::tempdir().unwrap();
    digits(t.path(), "0,1,2,3\n4,5,6,7\n1,2,3\n");
    let e = err(t.path(), "digits");
    assert!(
        e.contains("digits.csv.gz: ragged CSV: line 3 has 3 fields, expected 4"),
        "{e}"
    );
}

#[test]
fn non_numeric_csv() {
    let t = tempfile::tempdir().unwrap();
    digits(t.path(), "0,1,2,3\n4,five,6,7\n");
    let e = err(t.path(), "digits");
    assert!(
        e.contains("digits.csv.gz: non-numeric CSV: line 2, column 2: 'five'"),
        "{e}"
    );
}

#[test]
fn csv_label_out_of_range() {
    let t = tempfile::tempdir().unwrap();
    digits(t.path(), "0,1,2,3\n4,5,6,10\n");
    let e = err(t.path(), "digits");
    assert!(
        e.contains("digits.csv.gz: label 10 in data row 2 is out of range"),
        "{e}"
    );
}

#[test]
fn unrecognised_paths() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("model.bin");
    std::fs::write(&p, b"xyz").unwrap();
    let e = load(p.to_str().unwrap(), t.path()).unwrap_err().to_string();
    assert!(e.contains("model.bin: unrecognised dataset file"), "{e}");
    let e = load(t.path().to_str().unwrap(), t.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no dataset found in this directory"), "{e}");
    let e = load("./nope.csv", t.path()).unwrap_err().to_string();
    assert!(e.contains("nope.csv: cannot read"), "{e}");
}

#[test]
fn npy_pairs_load_by_path() {
    use mamori_data::npy::encode_npy;
    let t = tempfile::tempdir().unwrap();
    let x: Vec<u8> = (0..8 * 3).map(|i| i as u8).collect();
    let y: Vec<u8> = (0..8).map(|i| (i % 2) as u8).collect();
    std::fs::write(t.path().join("x_train.npy"), encode_npy("|u1", &[8, 3], &x)).unwrap();
    std::fs::write(t.path().join("y_train.npy"), encode_npy("|u1", &[8], &y)).unwrap();
    std::fs::write(
        t.path().join("x_test.npy"),
        encode_npy("|u1", &[2, 3], &x[..6]),
    )
    .unwrap();
    std::fs::write(
        t.path().join("y_test.npy"),
        encode_npy("|u1", &[2], &y[..2]),
    )
    .unwrap();
    let s = load(t.path().to_str().unwrap(), t.path()).unwrap();
    assert_eq!(
        (s.train.len(), s.test.len(), s.train.num_classes),
        (8, 2, 2)
    );
    let f = t.path().join("x_train.npy");
    let s2 = load(f.to_str().unwrap(), t.path()).unwrap();
    assert_eq!(s2.test.len(), 2);
    // x.npy alone: seeded 75/25 split.
    std::fs::write(t.path().join("x.npy"), encode_npy("|u1", &[8, 3], &x)).unwrap();
    std::fs::write(t.path().join("y.npy"), encode_npy("|u1", &[8], &y)).unwrap();
    let s3 = load(t.path().join("x.npy").to_str().unwrap(), t.path()).unwrap();
    assert_eq!((s3.train.len(), s3.test.len()), (6, 2));
}
