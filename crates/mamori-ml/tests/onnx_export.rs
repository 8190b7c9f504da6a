//! `mamori export --onnx`: a native network written as ONNX runs in tract and in Python's
//! `onnx.reference.ReferenceEvaluator` with the same outputs, and matches the native engine.

use mamori_core::{Model, Tensor};
use mamori_ml::onnx_export::network_to_onnx_bytes;
use mamori_ml::{LayerParams, LayerSpec, Network, OnnxModel};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;

const TOL: f32 = 1e-4;

fn random_params(layers: &[LayerSpec], seed: u64) -> Vec<LayerParams> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = |n: usize| {
        (0..n)
            .map(|_| rng.gen_range(-0.5f32..0.5))
            .collect::<Vec<_>>()
    };
    layers
        .iter()
        .map(|l| match *l {
            LayerSpec::Dense { inputs, outputs } => LayerParams {
                weight: v(inputs * outputs),
                bias: v(outputs),
            },
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => LayerParams {
                weight: v(out_channels * in_channels * kernel * kernel),
                bias: v(out_channels),
            },
            _ => LayerParams::default(),
        })
        .collect()
}

/// A small MLP on 8x8 "digits"-like inputs, a binary logistic head, and a LeNet-style CNN.
fn networks() -> Vec<(&'static str, Network)> {
    let mlp = vec![
        LayerSpec::Flatten,
        LayerSpec::Dense {
            inputs: 64,
            outputs: 16,
        },
        LayerSpec::Relu,
        LayerSpec::Dense {
            inputs: 16,
            outputs: 10,
        },
    ];
    let logistic = vec![
        LayerSpec::Flatten,
        LayerSpec::Dense {
            inputs: 64,
            outputs: 1,
        },
        LayerSpec::BinaryHead,
    ];
    let cnn = vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 4,
            kernel: 3,
            stride: 1,
            padding: 0,
        },
        LayerSpec::Relu,
        LayerSpec::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
        LayerSpec::Conv2d {
            in_channels: 4,
            out_channels: 6,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        LayerSpec::Relu,
        LayerSpec::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
        LayerSpec::Flatten,
        LayerSpec::Dense {
            inputs: 6 * 6 * 6,
            outputs: 12,
        },
        LayerSpec::Relu,
        LayerSpec::Dense {
            inputs: 12,
            outputs: 10,
        },
    ];
    vec![
        (
            "mlp",
            Network {
                input_shape: vec![64],
                params: random_params(&mlp, 1),
                layers: mlp,
            },
        ),
        (
            "logistic",
            Network {
                input_shape: vec![64],
                params: random_params(&logistic, 2),
                layers: logistic,
            },
        ),
        (
            "cnn",
            Network {
                input_shape: vec![1, 28, 28],
                params: random_params(&cnn, 3),
                layers: cnn,
            },
        ),
    ]
}

fn inputs(net: &Network, n: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut shape = vec![n];
    shape.extend(&net.input_shape);
    let len: usize = shape.iter().product();
    Tensor::new(shape, (0..len).map(|_| rng.gen::<f32>()).collect()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn write_onnx(dir: &Path, name: &str, net: &Network) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, network_to_onnx_bytes(net, name).unwrap()).unwrap();
    p
}

#[test]
fn exported_graph_computes_the_layers_by_hand() {
    // Dense 2->2 then a binary head: logits [0, z] with z = w·relu(Wx + b) + c.
    let layers = vec![
        LayerSpec::Dense {
            inputs: 2,
            outputs: 2,
        },
        LayerSpec::Relu,
        LayerSpec::Dense {
            inputs: 2,
            outputs: 1,
        },
        LayerSpec::BinaryHead,
    ];
    let params = vec![
        LayerParams {
            weight: vec![1.0, 2.0, -1.0, 0.5],
            bias: vec![0.5, -0.25],
        },
        LayerParams::default(),
        LayerParams {
            weight: vec![2.0, -3.0],
            bias: vec![0.125],
        },
        LayerParams::default(),
    ];
    let net = Network {
        input_shape: vec![2],
        layers,
        params,
    };
    let d = tempfile::tempdir().unwrap();
    let m = OnnxModel::load(&write_onnx(d.path(), "hand", &net)).unwrap();
    let x = Tensor::new(vec![2, 2], vec![1.0, 1.0, -1.0, 2.0]).unwrap();
    let got = m.logits(&x).unwrap();
    // Row 0: h = relu([3.5, -0.25]) = [3.5, 0]; z = 7 + 0.125.
    // Row 1: h = relu([3.5, 1.75]) = [3.5, 1.75]; z = 7 - 5.25 + 0.125.
    assert_eq!(got.data(), &[0.0, 7.125, 0.0, 1.875]);

    // Conv (2x2 kernel of ones, stride 1, pad 1) then 2x2 max pool on a 2x2 image.
    let layers = vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 1,
            kernel: 2,
            stride: 1,
            padding: 1,
        },
        LayerSpec::MaxPool2d {
            kernel: 2,
            stride: 2,
        },
        LayerSpec::Flatten,
        LayerSpec::Dense {
            inputs: 1,
            outputs: 2,
        },
    ];
    let params = vec![
        LayerParams {
            weight: vec![1.0; 4],
            bias: vec![0.5],
        },
        LayerParams::default(),
        LayerParams::default(),
        LayerParams {
            weight: vec![1.0, -1.0],
            bias: vec![0.0, 0.0],
        },
    ];
    let net = Network {
        input_shape: vec![1, 2, 2],
        layers,
        params,
    };
    let m = OnnxModel::load(&write_onnx(d.path(), "conv", &net)).unwrap();
    let x = Tensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    // Conv output 3x3: top-left 2x2 window of the padded image: [1, 3; 4, 10]; max = 10 + 0.5.
    assert_eq!(m.logits(&x).unwrap().data(), &[10.5, -10.5]);
}

#[test]
fn malformed_networks_are_refused() {
    let net = Network {
        input_shape: vec![4],
        layers: vec![LayerSpec::Dense {
            inputs: 4,
            outputs: 2,
        }],
        params: vec![LayerParams {
            weight: vec![0.0; 7],
            bias: vec![0.0; 2],
        }],
    };
    let e = network_to_onnx_bytes(&net, "x").unwrap_err().to_string();
    assert!(
        e.contains("layer 0: weight has 7 values, expected 8"),
        "{e}"
    );
    let net = Network {
        input_shape: vec![4],
        layers: vec![LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 1,
            kernel: 3,
            stride: 1,
            padding: 0,
        }],
        params: vec![LayerParams::default()],
    };
    let e = network_to_onnx_bytes(&net, "x").unwrap_err().to_string();
    assert!(e.contains("conv2d expects a [c, h, w] input"), "{e}");
}

/// Exported MLP, logistic and CNN graphs pass `onnx.checker` and `ReferenceEvaluator` gives
/// tract's outputs to 1e-4. Needs python3 with `onnx` (skipped without it, failing in CI).
#[test]
fn exported_onnx_matches_reference_evaluator() {
    if !mamori_core::testing::python_imports_or_skip("onnx, numpy", "onnx numpy") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_onnx_cnn.py");
    let d = tempfile::tempdir().unwrap();
    for (name, net) in networks() {
        let f = write_onnx(d.path(), name, &net);
        let x = inputs(&net, 5, 7);
        let xb: Vec<u8> = x.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        let xin = d.path().join(format!("{name}_x.npy"));
        std::fs::write(&xin, mamori_data::npy::encode_npy("<f4", x.shape(), &xb)).unwrap();
        let yout = d.path().join(format!("{name}_y.npy"));
        let st = Command::new("python3")
            .arg(&script)
            .arg("--eval")
            .arg(&f)
            .arg(&xin)
            .arg(&yout)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "{name}: onnx.checker / ReferenceEvaluator failed"
        );
        let r = mamori_data::npy::read_npy(&yout).unwrap();
        let want = Tensor::new(r.shape, r.values.iter().map(|&v| v as f32).collect()).unwrap();
        let got = OnnxModel::load(&f).unwrap().logits(&x).unwrap();
        let diff = max_diff(&got, &want);
        assert!(
            diff <= TOL,
            "{name}: tract vs ReferenceEvaluator max |diff| {diff}"
        );
    }
}
