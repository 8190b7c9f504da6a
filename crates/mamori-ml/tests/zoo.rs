//! The zoo: default configurations, the model card `train_model` writes, class selection for
//! binary logistic regression, and the cached default model.

use mamori_core::Model;
use mamori_ml::zoo::{self, ensure_default_model};
use mamori_ml::{Arch, NativeModel, Network};

fn data_dir() -> Option<std::path::PathBuf> {
    let d = mamori_data::resolve_data_dir(None);
    d.join("digits").is_dir().then_some(d)
}

#[test]
fn digits_softmax_with_defaults_meets_target_and_fills_the_card() {
    let Some(dir) = data_dir() else {
        eprintln!("shared data missing; skipped");
        return;
    };
    let split = mamori_data::load("digits", &dir).unwrap();
    let arch = zoo::parse_arch("softmax", None).unwrap();
    let t = zoo::train_model("digits-softmax", &split, &arch, &zoo::default_config(&arch)).unwrap();
    let card = &t.model.card;
    assert!(
        card.test_accuracy.unwrap() >= 0.95,
        "{:?}",
        card.test_accuracy
    );
    assert_eq!(card.name, "digits-softmax");
    assert_eq!(card.architecture, "softmax");
    assert_eq!(card.input_shape, vec![64]);
    assert_eq!(card.input_dtype, "FP32");
    assert_eq!(card.class_names.len(), 10);
    assert_eq!(card.dataset.name, "digits");
    assert!(!card.dataset.files.is_empty());
    assert_eq!(card.dataset.files[0].sha256.len(), 64);
    assert!(card.training_time_s.is_some());
    assert_eq!(card.seed, Some(0));
    assert_eq!(card.extra["learning_rate"], serde_json::json!(0.01));
    assert!(card.input_range[0] <= 0.0 && card.input_range[1] >= 1.0);

    let out = tempfile::tempdir().unwrap();
    t.model.save(out.path()).unwrap();
    let back = NativeModel::load(out.path()).unwrap();
    assert_eq!(back.network, t.model.network);
    assert_eq!(back.card.dataset, card.dataset);
    assert_eq!(back.card.architecture_detail, card.architecture_detail);
    let acc = mamori_ml::accuracy(&back, &split.test.x, &split.test.y).unwrap();
    assert!((acc - card.test_accuracy.unwrap()).abs() < 1e-12);
}

#[test]
fn two_class_selection_feeds_binary_logistic() {
    let Some(dir) = data_dir() else {
        return;
    };
    let mut split = mamori_data::load("digits", &dir).unwrap();
    split.train = zoo::select_two_classes(&split.train, 3, 8).unwrap();
    split.test = zoo::select_two_classes(&split.test, 3, 8).unwrap();
    assert_eq!(split.train.class_names, vec!["3", "8"]);
    assert!(split.train.y.iter().all(|&c| c < 2));
    let cfg = mamori_ml::TrainConfig {
        epochs: 20,
        learning_rate: 0.01,
        ..zoo::default_config(&Arch::Logistic)
    };
    let t = zoo::train_model("d38", &split, &Arch::Logistic, &cfg).unwrap();
    assert!(t.model.card.test_accuracy.unwrap() >= 0.9);
    assert!(zoo::select_two_classes(&split.train, 0, 0).is_err());
    assert!(zoo::select_two_classes(&split.train, 0, 12).is_err());
}

#[test]
fn arch_names_parse_and_reject() {
    assert_eq!(
        zoo::parse_arch("mlp", Some(&[8, 4])).unwrap(),
        Arch::Mlp { hidden: vec![8, 4] }
    );
    assert_eq!(
        zoo::parse_arch("mlp", None).unwrap(),
        Arch::Mlp {
            hidden: zoo::DEFAULT_HIDDEN.to_vec()
        }
    );
    assert!(zoo::parse_arch("resnet", None)
        .unwrap_err()
        .to_string()
        .contains("unknown architecture"));
    assert!(zoo::parse_arch("cnn", Some(&[3])).is_err());
    for a in ["logistic", "softmax", "mlp", "cnn"] {
        assert_eq!(zoo::arch_name(&zoo::parse_arch(a, None).unwrap()), a);
    }
}

#[test]
fn default_model_is_loaded_from_the_cache_without_data() {
    let home = tempfile::tempdir().unwrap();
    let net = Network::new(&Arch::Cnn, &[1, 28, 28], 10, 1);
    let card = mamori_core::ModelCard {
        name: zoo::DEFAULT_MODEL_NAME.into(),
        architecture: "cnn".into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![1, 28, 28],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Default::default(),
        class_names: (0..10).map(|c| c.to_string()).collect(),
        output_kind: Default::default(),
        dataset: Default::default(),
        test_accuracy: Some(0.5),
        training_time_s: None,
        seed: Some(1),
        extra: Default::default(),
    };
    let m = NativeModel::new(net, card);
    m.save(&zoo::default_model_dir(home.path())).unwrap();
    let nowhere = home.path().join("no-data");
    let (loaded, trained) = ensure_default_model(home.path(), &nowhere, false).unwrap();
    assert!(!trained);
    assert_eq!(loaded.network, m.network);
    assert_eq!(loaded.card().test_accuracy, Some(0.5));
    // Without a cache and without data: a data error, not a panic.
    let empty = tempfile::tempdir().unwrap();
    let e = ensure_default_model(empty.path(), &nowhere, false).unwrap_err();
    assert!(matches!(e, mamori_ml::MlError::Data(_)), "{e:?}");
}
