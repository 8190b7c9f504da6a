//! Randomly damaged dataset files (IDX images and labels, raw and gzipped; NPY; CSV): every
//! reader returns the data or an error naming the file — never a panic. Seeded
//! ([`mamori_core::testing::corrupted`]); a failure names the format and seed.

use flate2::write::GzEncoder;
use mamori_core::testing::corrupted;
use mamori_data::csv::{read_csv, CsvOptions};
use mamori_data::idx::{encode_images, encode_labels, read_images, read_labels};
use mamori_data::npy::{encode_npy, read_npy};
use mamori_data::DataError;
use std::io::Write;
use std::path::Path;

/// Damaged copies per format.
const SEEDS: u64 = 400;

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Writes each damaged copy of `valid` to `file` and reads it back with `read`.
fn fuzz<T>(
    format: &str,
    valid: &[u8],
    file: &str,
    read: impl Fn(&Path) -> Result<T, DataError> + std::panic::RefUnwindSafe,
) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    let (mut ok, mut refused) = (0, 0);
    for seed in 0..SEEDS {
        std::fs::write(&path, corrupted(valid, seed)).unwrap();
        let r = std::panic::catch_unwind(|| read(&path).map(|_| ()));
        match r {
            Err(_) => panic!("{format}, seed {seed}: the reader panicked"),
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&path.display().to_string()),
                    "{format}, seed {seed}: the error does not name the file: {msg}"
                );
                refused += 1;
            }
        }
    }
    // The corruptions reach the checks: most copies are refused.
    assert!(
        refused > SEEDS as usize / 2,
        "{format}: {ok} read, {refused} refused"
    );
    (ok, refused)
}

#[test]
fn damaged_idx_files_are_refused_with_the_file_named() {
    let pixels: Vec<u8> = (0..6 * 5 * 4).map(|i| (i * 7) as u8).collect();
    let images = encode_images(6, 5, 4, &pixels);
    let labels = encode_labels(&[0, 1, 2, 3, 4, 9]);
    fuzz(
        "idx images",
        &images,
        "train-images-idx3-ubyte",
        read_images,
    );
    fuzz(
        "idx labels",
        &labels,
        "train-labels-idx1-ubyte",
        read_labels,
    );
    fuzz(
        "gzipped idx images",
        &gz(&images),
        "train-images-idx3-ubyte.gz",
        read_images,
    );
    fuzz(
        "gzipped idx labels",
        &gz(&labels),
        "train-labels-idx1-ubyte.gz",
        read_labels,
    );
}

#[test]
fn damaged_npy_files_are_refused_with_the_file_named() {
    let x: Vec<u8> = (0..4 * 3 * 4).map(|i| i as u8).collect();
    fuzz(
        "npy f32",
        &encode_npy("<f4", &[4, 3], &x),
        "x.npy",
        read_npy,
    );
    fuzz("npy u8", &encode_npy("|u1", &[8, 6], &x), "x.npy", read_npy);
    fuzz(
        "gzipped npy",
        &gz(&encode_npy("|u1", &[8, 6], &x)),
        "x.npy.gz",
        read_npy,
    );
}

#[test]
fn damaged_csv_files_are_refused_with_the_file_named() {
    let csv = "0,0.5,1,3\n2,1,0.25,7\n3,4,5,1\n";
    let opts = CsvOptions::default();
    // A damaged CSV often still parses (a digit became another digit): fewer refusals, so
    // the check is on panics and named errors only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.csv");
    for seed in 0..SEEDS {
        std::fs::write(&path, corrupted(csv.as_bytes(), seed)).unwrap();
        let r = std::panic::catch_unwind(|| read_csv(&path, &opts).map(|_| ()));
        match r {
            Err(_) => panic!("csv, seed {seed}: the reader panicked"),
            Ok(Err(e)) => assert!(
                e.to_string().contains(&path.display().to_string()),
                "csv, seed {seed}: {e}"
            ),
            Ok(Ok(())) => {}
        }
    }
    fuzz("gzipped csv", &gz(csv.as_bytes()), "digits.csv.gz", |p| {
        read_csv(p, &opts)
    });
}
