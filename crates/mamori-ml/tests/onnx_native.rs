//! mamori's own ONNX export of native models (MLP, CNN, softmax and binary logistic
//! regression) predicts what the native engine predicts, to 1e-4, and `load_model` opens
//! both kinds.

use mamori_core::{DatasetRef, Model, ModelCard, Normalisation, OutputKind, Tensor};
use mamori_data::{load, resolve_data_dir};
use mamori_ml::onnx::card_path;
use mamori_ml::{
    agreement, export_onnx, load_model, train, Arch, NativeModel, Network, Targets, TrainConfig,
};

const TOL: f32 = 1e-4;

fn card(name: &str, classes: usize) -> ModelCard {
    ModelCard {
        name: name.into(),
        architecture: name.into(),
        architecture_detail: serde_json::Value::Null,
        input_shape: vec![],
        input_dtype: "FP32".into(),
        input_range: [0.0, 1.0],
        normalisation: Normalisation::default(),
        class_names: (0..classes).map(|c| format!("c{c}")).collect(),
        output_kind: OutputKind::Logits,
        dataset: DatasetRef::default(),
        test_accuracy: None,
        training_time_s: None,
        seed: Some(1),
        extra: Default::default(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Saves `native`, exports it, loads both through `load_model` and compares them on `x`.
fn check_export(native: NativeModel, x: &Tensor) {
    let name = native.card.name.clone();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("native");
    native.save(&dir).unwrap();
    let onnx_file = d.path().join("export").join(format!("{name}.onnx"));
    export_onnx(&native, &onnx_file).unwrap();
    assert!(card_path(&onnx_file).is_file());

    let a = load_model(&dir).unwrap();
    let b = load_model(&onnx_file).unwrap();
    assert_eq!(b.card().name, name);
    assert_eq!(b.card().class_names, native.card.class_names);
    assert_eq!(b.card().input_shape, native.card.input_shape);
    assert_eq!(
        b.card().extra.get("format").and_then(|v| v.as_str()),
        Some("onnx")
    );

    let la = a.logits(x).unwrap();
    let lb = b.logits(x).unwrap();
    let d_logits = max_diff(&la, &lb);
    assert!(d_logits <= TOL, "{name}: logits max |diff| {d_logits}");
    let d_probs = max_diff(&a.predict(x).unwrap(), &b.predict(x).unwrap());
    assert!(d_probs <= TOL, "{name}: probabilities max |diff| {d_probs}");
    assert_eq!(agreement(a.as_ref(), b.as_ref(), x).unwrap(), 1.0, "{name}");
    // The native model directly (not through the loader) gives the same logits too.
    assert!(max_diff(&native.logits(x).unwrap(), &lb) <= TOL);
}

#[test]
fn exported_mlp_and_softmax_match_native_on_digits() {
    let s = load("digits", &resolve_data_dir(None)).unwrap();
    let x = s.test.x.slice_rows(0, 200);
    for (name, arch) in [
        (
            "mlp",
            Arch::Mlp {
                hidden: vec![32, 16],
            },
        ),
        ("softmax", Arch::Softmax),
    ] {
        let mut net = Network::new(&arch, &[64], 10, 3);
        let cfg = TrainConfig {
            epochs: 2,
            ..Default::default()
        };
        train(
            &mut net,
            &s.train.x,
            &Targets::Labels(s.train.y.clone()),
            &cfg,
        )
        .unwrap();
        check_export(NativeModel::new(net, card(name, 10)), &x);
    }
}

#[test]
fn exported_logistic_matches_native() {
    let s = load("digits", &resolve_data_dir(None)).unwrap();
    // Binary task: digit 0 against digit 1.
    let pick = |d: &mamori_data::Dataset| -> (Tensor, Vec<usize>) {
        let idx: Vec<usize> = (0..d.len()).filter(|&i| d.y[i] < 2).collect();
        (d.x.select(&idx), idx.iter().map(|&i| d.y[i]).collect())
    };
    let (xtr, ytr) = pick(&s.train);
    let (xte, _) = pick(&s.test);
    let mut net = Network::new(&Arch::Logistic, &[64], 2, 4);
    train(
        &mut net,
        &xtr,
        &Targets::Labels(ytr),
        &TrainConfig::default(),
    )
    .unwrap();
    check_export(NativeModel::new(net, card("logistic", 2)), &xte);
}

#[test]
fn exported_cnn_matches_native_on_fashion_mnist() {
    let s = load("fashion-mnist", &resolve_data_dir(None)).unwrap();
    let mut net = Network::new(&Arch::Cnn, &[1, 28, 28], 10, 5);
    // A short training run so that the weights are not just their initialisation.
    let sub = s.train.head(512);
    let cfg = TrainConfig {
        epochs: 1,
        ..Default::default()
    };
    train(&mut net, &sub.x, &Targets::Labels(sub.y.clone()), &cfg).unwrap();
    check_export(
        NativeModel::new(net, card("cnn", 10)),
        &s.test.x.slice_rows(0, 64),
    );
}
