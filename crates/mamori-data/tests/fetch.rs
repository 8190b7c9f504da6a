//! `fetch` against a local HTTP server serving the shared data directory: files are verified
//! against the pinned SHA-256, written atomically, and a corrupted download is refused.

mod common;

use mamori_data::fetch::{fetch, verify, CheckStatus, FetchEvent, FetchOptions};
use mamori_data::{load, DataError};
use std::sync::atomic::Ordering;

fn opts(mirror: String) -> FetchOptions {
    FetchOptions {
        mirror: Some(mirror),
        attempts: 2,
        ..Default::default()
    }
}

#[test]
fn fetches_mnist_and_digits_from_a_mirror_and_verifies_them() {
    let srv = common::serve(common::shared_data(), &[], 64);
    let dest = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let got = fetch(
        "mnist",
        dest.path(),
        &opts(format!("{}mnist", srv.base)),
        &mut |e| events.push(e.clone()),
    )
    .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, FetchEvent::Done { .. }))
            .count(),
        4
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, FetchEvent::Progress { bytes, .. } if *bytes > 1_000_000)));
    fetch(
        "digits",
        dest.path(),
        &opts(format!("{}digits/", srv.base)),
        &mut |_| {},
    )
    .unwrap();

    let checks = verify(None, dest.path()).unwrap();
    let ok = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Ok)
        .count();
    let missing = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Missing)
        .count();
    assert_eq!((ok, missing), (5, 4), "{checks:?}"); // fashion-mnist was not fetched
    let s = load("mnist", dest.path()).unwrap();
    assert_eq!(s.train.len(), 60_000);
    assert_eq!(load("digits", dest.path()).unwrap().test.len(), 451);

    // A second fetch finds verified copies and downloads nothing.
    let before = srv.requests.load(Ordering::SeqCst);
    let mut again = Vec::new();
    fetch(
        "mnist",
        dest.path(),
        &opts(format!("{}mnist", srv.base)),
        &mut |e| again.push(e.clone()),
    )
    .unwrap();
    assert_eq!(srv.requests.load(Ordering::SeqCst), before);
    assert!(again
        .iter()
        .all(|e| matches!(e, FetchEvent::AlreadyPresent { .. })));
}

#[test]
fn a_corrupted_download_is_refused_deleted_and_retried() {
    let srv = common::serve(common::shared_data(), &["t10k-labels-idx1-ubyte.gz"], 64);
    let dest = tempfile::tempdir().unwrap();
    let mut retries = 0;
    let err = fetch(
        "mnist",
        dest.path(),
        &opts(format!("{}mnist", srv.base)),
        &mut |e| {
            if matches!(e, FetchEvent::Retry { .. }) {
                retries += 1;
            }
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DataError::Checksum { attempts: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("mnist/t10k-labels-idx1-ubyte.gz: SHA-256 mismatch after 2 attempt(s)"),
        "{msg}"
    );
    assert!(
        msg.contains("expected f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        "{msg}"
    );
    assert_eq!(retries, 1);
    let dir = dest.path().join("mnist");
    assert!(!dir.join("t10k-labels-idx1-ubyte.gz").exists());
    // The files before it were kept (verified); no partial file is left behind.
    assert!(dir.join("train-images-idx3-ubyte.gz").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupted_digits_fails_the_decompressed_sum() {
    let srv = common::serve(common::shared_data(), &["digits.csv.gz"], 16);
    let dest = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        attempts: 1,
        ..opts(format!("{}digits", srv.base))
    };
    let msg = fetch("digits", dest.path(), &o, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("digits.csv.gz: SHA-256 mismatch after 1 attempt(s)"),
        "{msg}"
    );
    assert!(!dest.path().join("digits/digits.csv.gz").exists());
}

#[test]
fn http_errors_name_the_url() {
    let srv = common::serve(common::shared_data(), &[], 16);
    let dest = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        attempts: 1,
        ..opts(format!("{}nowhere/", srv.base))
    };
    let msg = fetch("digits", dest.path(), &o, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nowhere/digits.csv.gz: download failed: HTTP 404"),
        "{msg}"
    );
    let msg = fetch("cifar", dest.path(), &o, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown dataset 'cifar'"), "{msg}");
}

#[test]
fn verify_reports_a_tampered_file() {
    let dest = tempfile::tempdir().unwrap();
    let dir = dest.path().join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::shared_data().join("mnist/t10k-labels-idx1-ubyte.gz");
    std::fs::copy(&src, dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), b"not the labels").unwrap();
    let checks = verify(Some("mnist"), dest.path()).unwrap();
    let by = |n: &str| {
        checks
            .iter()
            .find(|c| c.path.ends_with(n))
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(by("t10k-labels-idx1-ubyte.gz"), CheckStatus::Ok);
    assert!(matches!(
        by("train-labels-idx1-ubyte.gz"),
        CheckStatus::Mismatch { .. }
    ));
    assert_eq!(by("train-images-idx3-ubyte.gz"), CheckStatus::Missing);
}
