//! The named datasets load from the shared data directory with the documented shapes,
//! class names, histograms and digests (numbers from `shared/data/README.md`).

use mamori_data::{load, resolve_data_dir};

fn data_dir() -> std::path::PathBuf {
    let d = resolve_data_dir(None);
    assert!(
        d.join("mnist").is_dir(),
        "test data not found at {}",
        d.display()
    );
    d
}

#[test]
fn fashion_mnist_loads() {
    let s = load("fashion-mnist", &data_dir()).unwrap();
    assert_eq!(s.train.x.shape(), &[60_000, 1, 28, 28]);
    assert_eq!(s.test.x.shape(), &[10_000, 1, 28, 28]);
    assert_eq!(&s.train.y[..10], &[9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(s.train.class_histogram(), vec![6000; 10]);
    assert_eq!(s.test.class_histogram(), vec![1000; 10]);
    assert_eq!(s.train.class_names[0], "T-shirt/top");
    assert_eq!(s.train.class_names[9], "Ankle boot");
    let mean: f64 =
        s.test.x.data().iter().map(|&v| v as f64).sum::<f64>() / s.test.x.data().len() as f64;
    assert!((mean * 255.0 - 73.1466).abs() < 1e-3, "{mean}");
    assert_eq!(s.train.files.len(), 2);
    assert_eq!(
        s.train.files[0].sha256,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    );
    assert_eq!(
        s.test.files[1].sha256,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    );
    let mx = s.train.x.data().iter().copied().fold(0.0f32, f32::max);
    assert_eq!(mx, 1.0);
}

#[test]
fn mnist_loads() {
    let s = load("mnist", &data_dir()).unwrap();
    assert_eq!(s.train.len(), 60_000);
    assert_eq!(&s.test.y[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert_eq!(
        s.test.class_histogram(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(
        s.train.class_names,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
}

#[test]
fn digits_loads_with_a_seeded_stratified_split() {
    let s = load("digits", &data_dir()).unwrap();
    assert_eq!(s.train.len() + s.test.len(), 1797);
    assert_eq!(s.train.x.sample_shape(), &[64]);
    let mut total = s.train.class_histogram();
    for (t, v) in total.iter_mut().zip(s.test.class_histogram()) {
        *t += v;
    }
    assert_eq!(
        total,
        vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    // 25% of each class, rounded.
    assert_eq!(s.test.class_histogram()[0], 45);
    assert!(s.train.x.data().iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!((s.train.normalisation.scale - 1.0 / 16.0).abs() < 1e-9);
    assert_eq!(
        s.train.files[0].sha256,
        "34af3b9b1a8afa599fef9fa56f4d7d4933c3e969bdf02f3fa698213eb8c8adec"
    );
    let again = load("digits", &data_dir()).unwrap();
    assert_eq!(again.test.y, s.test.y);
    assert_eq!(again.test.x, s.test.x);
}

#[test]
fn a_path_works_like_the_shortcut() {
    let d = data_dir();
    let s = load(d.join("mnist").to_str().unwrap(), &d).unwrap();
    assert_eq!(s.test.len(), 10_000);
    let c = load(d.join("digits/digits.csv.gz").to_str().unwrap(), &d).unwrap();
    assert_eq!(c.train.len() + c.test.len(), 1797);
    // A generic CSV gets no 1/16 scaling.
    assert!(c.train.x.data().iter().any(|&v| v > 1.0));
}

#[test]
fn missing_data_points_to_fetch() {
    let empty = tempfile::tempdir().unwrap();
    let e = load("fashion-mnist", empty.path()).unwrap_err().to_string();
    assert!(e.contains("mamori data fetch fashion-mnist"), "{e}");
    let e = load("digits", empty.path()).unwrap_err().to_string();
    assert!(e.contains("mamori data fetch digits"), "{e}");
    let e = load("cifar", empty.path()).unwrap_err().to_string();
    assert!(e.contains("unknown dataset 'cifar'"), "{e}");
}
