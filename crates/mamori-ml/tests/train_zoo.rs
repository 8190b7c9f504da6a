//! Training the zoo architectures on real data reaches the accuracy they should.

mod common;

use mamori_core::{GradTarget, Model};
use mamori_ml::{
    accuracy, train, train_until_plateau, train_with_loss, Arch, MlError, Network, Plateau,
    SoftLoss, Targets, TrainConfig,
};

#[test]
fn digits_softmax_regression_reaches_95_percent() {
    let Some((x, y)) = common::digits() else {
        eprintln!("shared data missing; skipped");
        return;
    };
    let ((xtr, ytr), (xte, yte)) = common::split(&x, &y);
    let mut net = Network::new(&Arch::Softmax, &[64], 10, 1);
    let cfg = TrainConfig {
        epochs: 30,
        batch_size: 32,
        learning_rate: 0.01,
        ..TrainConfig::default()
    };
    let report = train(&mut net, &xtr, &Targets::Labels(ytr), &cfg).unwrap();
    assert_eq!(report.epoch_loss.len(), 30);
    assert!(report.epoch_loss[29] < report.epoch_loss[0]);
    let m = mamori_ml::NativeModel::new(net, card(64, 10));
    let acc = accuracy(&m, &xte, &yte).unwrap();
    assert!(acc >= 0.95, "digits softmax test accuracy {acc}");
}

#[test]
fn digits_mlp_with_soft_targets_learns() {
    let Some((x, y)) = common::digits() else {
        return;
    };
    let ((xtr, ytr), (xte, yte)) = common::split(&x, &y);
    // Smoothed one-hot soft targets.
    let mut t = vec![0.01f32; ytr.len() * 10];
    for (i, &c) in ytr.iter().enumerate() {
        t[i * 10 + c] = 0.91;
    }
    let soft = mamori_core::Tensor::new(vec![ytr.len(), 10], t).unwrap();
    let mut net = Network::new(&Arch::Mlp { hidden: vec![32] }, &[64], 10, 3);
    let cfg = TrainConfig {
        epochs: 15,
        batch_size: 32,
        ..TrainConfig::default()
    };
    train(&mut net, &xtr, &Targets::Soft(soft), &cfg).unwrap();
    let m = mamori_ml::NativeModel::new(net, card(64, 10));
    let acc = accuracy(&m, &xte, &yte).unwrap();
    assert!(acc >= 0.93, "digits MLP (soft targets) accuracy {acc}");
}

#[test]
fn digits_mlp_learns_soft_targets_by_logit_and_probability_regression() {
    let Some((x, y)) = common::digits() else {
        return;
    };
    let ((xtr, ytr), (xte, yte)) = common::split(&x, &y);
    // Soft targets from a teacher-like smoothing: most mass on the label, the rest spread.
    let mut t = vec![0.02f32; ytr.len() * 10];
    for (i, &c) in ytr.iter().enumerate() {
        t[i * 10 + c] = 0.82;
    }
    let soft = Targets::Soft(mamori_core::Tensor::new(vec![ytr.len(), 10], t).unwrap());
    for loss in [SoftLoss::LogitMse, SoftLoss::ProbabilityMse] {
        let mut net = Network::new(&Arch::Mlp { hidden: vec![32] }, &[64], 10, 3);
        let cfg = TrainConfig {
            epochs: 15,
            batch_size: 32,
            learning_rate: 3e-3,
            ..TrainConfig::default()
        };
        let rep = train_with_loss(&mut net, &xtr, &soft, &cfg, loss).unwrap();
        assert!(rep.epoch_loss[14] < rep.epoch_loss[0], "{loss:?}: {rep:?}");
        let m = mamori_ml::NativeModel::new(net, card(64, 10));
        let acc = accuracy(&m, &xte, &yte).unwrap();
        assert!(acc >= 0.9, "digits MLP ({loss:?}) accuracy {acc}");
    }
    // Bad targets are rejected whatever the loss.
    let mut net = Network::new(&Arch::Softmax, &[64], 10, 0);
    let bad = Targets::Soft(mamori_core::Tensor::new(vec![1, 10], vec![0.1; 10]).unwrap());
    let e = train_with_loss(
        &mut net,
        &xtr,
        &bad,
        &TrainConfig::default(),
        SoftLoss::LogitMse,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("soft targets have shape"), "{e}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let Some((x, y)) = common::digits() else {
        return;
    };
    let x = x.slice_rows(0, 300);
    let y = Targets::Labels(y[..300].to_vec());
    let cfg = TrainConfig {
        epochs: 2,
        seed: 7,
        ..TrainConfig::default()
    };
    let arch = Arch::Mlp { hidden: vec![16] };
    let mut a = Network::new(&arch, &[64], 10, 5);
    let mut b = Network::new(&arch, &[64], 10, 5);
    train(&mut a, &x, &y, &cfg).unwrap();
    train(&mut b, &x, &y, &cfg).unwrap();
    assert_eq!(a, b);
    let c = Network::new(&arch, &[64], 10, 6);
    assert_ne!(Network::new(&arch, &[64], 10, 5).params, c.params);
}

/// Training until the fit plateaus stops before the cap once the network fits its training
/// labels, on exactly the trajectory of the fixed schedule of that many epochs.
#[test]
fn training_until_plateau_stops_when_the_fit_stops_improving() {
    let Some((x, y)) = common::digits() else {
        return;
    };
    let x = x.slice_rows(0, 600);
    let y = Targets::Labels(y[..600].to_vec());
    let arch = Arch::Mlp { hidden: vec![32] };
    let cap = TrainConfig {
        epochs: 200,
        batch_size: 32,
        seed: 2,
        ..TrainConfig::default()
    };
    let plateau = Plateau::default();
    let mut a = Network::new(&arch, &[64], 10, 1);
    let rep = train_until_plateau(&mut a, &x, &y, &cap, &plateau).unwrap();
    let e = rep.epoch_accuracy.len();
    assert!(
        e > plateau.patience && e < cap.epochs,
        "stopped after {e} epochs"
    );
    assert!(plateau.reached(&rep.epoch_accuracy));
    assert!(!plateau.reached(&rep.epoch_accuracy[..e - 1]));
    // The stop comes once the 600 digits are fitted, not while the fit is still rising.
    let best = rep.epoch_accuracy.iter().copied().fold(0.0f32, f32::max);
    assert!(
        best >= 0.95 && best > rep.epoch_accuracy[0] + 0.2,
        "training agreement {:?}",
        rep.epoch_accuracy
    );
    let mut b = Network::new(&arch, &[64], 10, 1);
    let fixed = TrainConfig {
        epochs: e,
        ..cap.clone()
    };
    let rep_b = train(&mut b, &x, &y, &fixed).unwrap();
    assert_eq!(a, b);
    assert_eq!(rep.epoch_loss, rep_b.epoch_loss);
    // A cap below the plateau is honoured.
    let short = TrainConfig {
        epochs: 2,
        ..cap.clone()
    };
    let mut c = Network::new(&arch, &[64], 10, 1);
    let rep_c = train_until_plateau(&mut c, &x, &y, &short, &plateau).unwrap();
    assert_eq!(rep_c.epoch_accuracy.len(), 2);
}

#[test]
fn bad_plateau_settings_are_errors() {
    let x = mamori_core::Tensor::new(vec![4, 3], vec![0.5; 12]).unwrap();
    let y = Targets::Labels(vec![0, 1, 0, 1]);
    let mut net = Network::new(&Arch::Softmax, &[3], 2, 0);
    let cfg = TrainConfig::default();
    for (p, what) in [
        (
            Plateau {
                patience: 0,
                min_gain: 0.01,
            },
            "patience",
        ),
        (
            Plateau {
                patience: 2,
                min_gain: -0.1,
            },
            "min_gain",
        ),
        (
            Plateau {
                patience: 2,
                min_gain: f32::NAN,
            },
            "min_gain",
        ),
        (
            Plateau {
                patience: 2,
                min_gain: 1.0,
            },
            "min_gain",
        ),
    ] {
        let before = net.clone();
        let err = train_until_plateau(&mut net, &x, &y, &cfg, &p).unwrap_err();
        assert!(err.to_string().contains(what), "{p:?}: {err}");
        assert_eq!(net, before, "a refused run must not train");
    }
}

#[test]
fn mnist_subset_small_cnn_and_mlp_learn() {
    let (Some((xtr, ytr)), Some((xte, yte))) = (
        common::idx("mnist", "train", 3000),
        common::idx("mnist", "t10k", 1000),
    ) else {
        return;
    };
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 64,
        ..TrainConfig::default()
    };
    for (arch, min) in [(Arch::Mlp { hidden: vec![64] }, 0.85), (Arch::Cnn, 0.90)] {
        let mut net = Network::new(&arch, &[1, 28, 28], 10, 1);
        train(&mut net, &xtr, &Targets::Labels(ytr.clone()), &cfg).unwrap();
        let m = mamori_ml::NativeModel::new(net, card_img());
        let acc = accuracy(&m, &xte, &yte).unwrap();
        assert!(acc >= min, "{arch:?} on 3k MNIST: accuracy {acc}");
        // The Model trait answers gradients of the right shape.
        let g = m
            .input_gradient(&xte.slice_rows(0, 4), &GradTarget::Logit(vec![0, 1, 2, 3]))
            .unwrap();
        assert_eq!(g.shape(), &[4, 1, 28, 28]);
    }
}

#[test]
fn bad_training_input_is_an_error_not_a_panic() {
    let x = mamori_core::Tensor::new(vec![4, 3], vec![0.5; 12]).unwrap();
    let mut net = Network::new(&Arch::Softmax, &[3], 2, 0);
    let cfg = TrainConfig::default();
    let msg = |r: Result<_, MlError>| {
        r.map(|_: mamori_ml::TrainReport| ())
            .unwrap_err()
            .to_string()
    };
    assert!(msg(train(
        &mut net,
        &x,
        &Targets::Labels(vec![0, 1, 2, 0]),
        &cfg
    ))
    .contains("label 2"));
    assert!(msg(train(&mut net, &x, &Targets::Labels(vec![0, 1]), &cfg)).contains("2 labels for 4"));
    let soft = mamori_core::Tensor::new(vec![4, 3], vec![0.3; 12]).unwrap();
    assert!(
        msg(train(&mut net, &x, &Targets::Soft(soft), &cfg)).contains("soft targets have shape")
    );
    let x5 = mamori_core::Tensor::new(vec![2, 5], vec![0.5; 10]).unwrap();
    assert!(msg(train(&mut net, &x5, &Targets::Labels(vec![0, 1]), &cfg)).contains("sample shape"));
    let zero_bs = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    assert!(
        msg(train(&mut net, &x, &Targets::Labels(vec![0; 4]), &zero_bs)).contains("batch size")
    );
    let mut xn = x.clone();
    xn.data_mut()[5] = f32::NAN;
    assert!(msg(train(&mut net, &xn, &Targets::Labels(vec![0; 4]), &cfg)).contains("not finite"));
    assert!(Network::try_new(&Arch::Cnn, &[64], 10, 0).is_err());
    assert!(Network::try_new(&Arch::Logistic, &[64], 10, 0)
        .unwrap_err()
        .to_string()
        .contains("exactly 2 classes"));
}

#[test]
fn binary_logistic_separates_two_digit_classes() {
    let Some((x, y)) = common::digits() else {
        return;
    };
    let keep: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 0 || y[i] == 1).collect();
    let x = x.select(&keep);
    let y: Vec<usize> = keep.iter().map(|&i| y[i]).collect();
    let ((xtr, ytr), (xte, yte)) = common::split(&x, &y);
    let mut net = Network::new(&Arch::Logistic, &[64], 2, 0);
    let cfg = TrainConfig {
        epochs: 10,
        batch_size: 16,
        learning_rate: 0.01,
        ..TrainConfig::default()
    };
    train(&mut net, &xtr, &Targets::Labels(ytr), &cfg).unwrap();
    let m = mamori_ml::NativeModel::new(net, card(64, 2));
    let acc = accuracy(&m, &xte, &yte).unwrap();
    assert!(acc >= 0.98, "0-vs-1 logistic accuracy {acc}");
}

fn card(d: usize, classes: usize) -> mamori_core::ModelCard {
    mamori_core::ModelCard {
        name: "t".into(),
        architecture: "test".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![d],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Default::default(),
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        output_kind: Default::default(),
        dataset: Default::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: None,
        extra: Default::default(),
    }
}

fn card_img() -> mamori_core::ModelCard {
    mamori_core::ModelCard {
        input_shape: vec![1, 28, 28],
        ..card(784, 10)
    }
}
