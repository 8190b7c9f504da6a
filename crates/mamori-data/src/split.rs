//! Deterministic seeded shuffles, splits and subsamples.
//!
//! Every function takes a seed and uses ChaCha8 (`rand_chacha`), so results are identical on
//! every platform and run.

use crate::{DataError, Dataset, Split};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The indices `0..n` in a seeded random order.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx
}

/// Sample indices grouped by class (`result[c]` lists the samples of class `c`, in order).
pub fn indices_by_class(ds: &Dataset) -> Vec<Vec<usize>> {
    let mut by = vec![Vec::new(); ds.num_classes];
    for (i, &c) in ds.y.iter().enumerate() {
        if c >= by.len() {
            by.resize(c + 1, Vec::new());
        }
        by[c].push(i);
    }
    by
}

/// The dataset in a seeded random order.
pub fn shuffle(ds: &Dataset, seed: u64) -> Dataset {
    ds.select(&shuffled_indices(ds.len(), seed))
}

/// Splits `ds` into `(rest, held_out)` with `fraction` of every class held out (stratified),
/// each part in a seeded random order. `fraction` must lie in `(0, 1)`.
pub fn stratified_split(
    ds: &Dataset,
    fraction: f64,
    seed: u64,
) -> Result<(Dataset, Dataset), DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::Invalid(format!(
            "split fraction must be in (0, 1), got {fraction}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rest = Vec::new();
    let mut held = Vec::new();
    for mut members in indices_by_class(ds) {
        members.shuffle(&mut rng);
        let k = (members.len() as f64 * fraction).round() as usize;
        held.extend_from_slice(&members[..k]);
        rest.extend_from_slice(&members[k..]);
    }
    rest.shuffle(&mut rng);
    held.shuffle(&mut rng);
    Ok((ds.select(&rest), ds.select(&held)))
}

/// A stratified train/test split with `test_fraction` of each class in the test part.
pub fn train_test_split(ds: &Dataset, test_fraction: f64, seed: u64) -> Result<Split, DataError> {
    let (train, test) = stratified_split(ds, test_fraction, seed)?;
    Ok(Split { train, test })
}

/// Splits a training set into `(train, validation)` with `val_fraction` of each class held out.
pub fn train_val_split(
    ds: &Dataset,
    val_fraction: f64,
    seed: u64,
) -> Result<(Dataset, Dataset), DataError> {
    stratified_split(ds, val_fraction, seed)
}

/// `n` samples drawn without replacement, uniformly at random.
pub fn subsample(ds: &Dataset, n: usize, seed: u64) -> Result<Dataset, DataError> {
    if n > ds.len() {
        return Err(DataError::Invalid(format!(
            "cannot draw {n} samples from a dataset of {}",
            ds.len()
        )));
    }
    let mut idx = shuffled_indices(ds.len(), seed);
    idx.truncate(n);
    Ok(ds.select(&idx))
}

/// `n` samples drawn without replacement keeping the class proportions (largest-remainder
/// rounding, so the counts sum to exactly `n`), in a seeded random order.
pub fn stratified_subsample(ds: &Dataset, n: usize, seed: u64) -> Result<Dataset, DataError> {
    let total = ds.len();
    if n > total {
        return Err(DataError::Invalid(format!(
            "cannot draw {n} samples from a dataset of {total}"
        )));
    }
    let by = indices_by_class(ds);
    let exact: Vec<f64> = by
        .iter()
        .map(|m| m.len() as f64 * n as f64 / total.max(1) as f64)
        .collect();
    let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..by.len()).collect();
    // Largest fractional part first; ties by class id for determinism.
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.partial_cmp(&fa)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut missing = n - take.iter().sum::<usize>();
    for c in order {
        if missing == 0 {
            break;
        }
        if take[c] < by[c].len() {
            take[c] += 1;
            missing -= 1;
        }
    }
    pick_per_class(ds, by, &take, seed)
}

/// `n_per_class` samples of every class, drawn at random; an error if a class has fewer.
pub fn take_per_class(ds: &Dataset, n_per_class: usize, seed: u64) -> Result<Dataset, DataError> {
    let by = indices_by_class(ds);
    if let Some((c, m)) = by.iter().enumerate().find(|(_, m)| m.len() < n_per_class) {
        return Err(DataError::Invalid(format!(
            "class {c} has {} samples, fewer than the {n_per_class} asked per class",
            m.len()
        )));
    }
    let take = vec![n_per_class; by.len()];
    pick_per_class(ds, by, &take, seed)
}

fn pick_per_class(
    ds: &Dataset,
    by: Vec<Vec<usize>>,
    take: &[usize],
    seed: u64,
) -> Result<Dataset, DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = Vec::new();
    for (mut members, &k) in by.into_iter().zip(take) {
        members.shuffle(&mut rng);
        idx.extend_from_slice(&members[..k]);
    }
    idx.shuffle(&mut rng);
    Ok(ds.select(&idx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mamori_core::{Normalisation, Tensor};

    fn toy(n: usize, classes: usize) -> Dataset {
        Dataset {
            name: "toy".into(),
            x: Tensor::new(vec![n, 1], (0..n).map(|i| i as f32).collect()).unwrap(),
            y: (0..n).map(|i| i % classes).collect(),
            num_classes: classes,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            files: vec![],
            normalisation: Normalisation::default(),
        }
    }

    #[test]
    fn shuffles_are_deterministic_permutations() {
        let a = shuffled_indices(100, 7);
        assert_eq!(a, shuffled_indices(100, 7));
        assert_ne!(a, shuffled_indices(100, 8));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn stratified_split_keeps_class_balance_and_is_disjoint() {
        let ds = toy(400, 4);
        let s = train_test_split(&ds, 0.25, 1).unwrap();
        assert_eq!(s.test.len(), 100);
        assert_eq!(s.train.len(), 300);
        assert_eq!(s.test.class_histogram(), vec![25; 4]);
        let mut all: Vec<f32> = s
            .train
            .x
            .data()
            .iter()
            .chain(s.test.x.data())
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, (0..400).map(|i| i as f32).collect::<Vec<_>>());
        // Labels still follow their samples.
        for (i, &v) in s.test.x.data().iter().enumerate() {
            assert_eq!(s.test.y[i], v as usize % 4);
        }
        assert!(train_test_split(&ds, 1.0, 1).is_err());
        assert_eq!(train_test_split(&ds, 0.25, 1).unwrap().test.x, s.test.x);
    }

    #[test]
    fn subsamples_have_requested_sizes() {
        let ds = toy(103, 3);
        let s = stratified_subsample(&ds, 10, 3).unwrap();
        assert_eq!(s.len(), 10);
        let h = s.class_histogram();
        assert!(h.iter().all(|&c| c == 3 || c == 4), "{h:?}");
        assert_eq!(subsample(&ds, 50, 0).unwrap().len(), 50);
        assert!(subsample(&ds, 104, 0).is_err());
        let t = take_per_class(&ds, 5, 9).unwrap();
        assert_eq!(t.class_histogram(), vec![5, 5, 5]);
        let e = take_per_class(&ds, 40, 9).unwrap_err().to_string();
        assert!(e.contains("class 0 has 35 samples"), "{e}");
    }
}
