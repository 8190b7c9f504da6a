//! Analytic gradients against central finite differences (accumulated in f64) on small
//! networks: dense, convolution with stride and padding, overlapping and non-overlapping
//! max-pooling, the binary head; parameter gradients with hard and soft targets, and input
//! gradients for every `GradTarget`.

use mamori_core::{GradTarget, Tensor};
use mamori_ml::{loss_and_gradients, LayerSpec, Network, Targets};

const EPS: f32 = 1e-3;

fn close(num: f64, ana: f64, what: &str) {
    let tol = 5e-4 + 5e-3 * ana.abs().max(num.abs());
    assert!(
        (num - ana).abs() <= tol,
        "{what}: numeric {num:.6} vs analytic {ana:.6}"
    );
}

fn input(shape: &[usize], seed: u32) -> Tensor {
    let len: usize = shape.iter().product();
    let data: Vec<f32> = (0..len)
        .map(|i| {
            let v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000;
            v as f32 / 500.0 - 1.0
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

/// Checks every parameter's gradient of the mean loss.
#[allow(clippy::needless_range_loop)]
fn check_params(net: &Network, x: &Tensor, y: &Targets) {
    let (_, grads) = loss_and_gradients(net, x, y).unwrap();
    let mut checked = 0;
    for li in 0..net.params.len() {
        for (kind, len) in [
            ("weight", net.params[li].weight.len()),
            ("bias", net.params[li].bias.len()),
        ] {
            for j in 0..len {
                let mut plus = net.clone();
                let mut minus = net.clone();
                let (p, m, g) = if kind == "weight" {
                    (
                        &mut plus.params[li].weight[j],
                        &mut minus.params[li].weight[j],
                        grads[li].weight[j],
                    )
                } else {
                    (
                        &mut plus.params[li].bias[j],
                        &mut minus.params[li].bias[j],
                        grads[li].bias[j],
                    )
                };
                *p += EPS;
                *m -= EPS;
                let lp = loss_and_gradients(&plus, x, y).unwrap().0;
                let lm = loss_and_gradients(&minus, x, y).unwrap().0;
                let num = (lp - lm) / (2.0 * EPS as f64);
                close(num, g as f64, &format!("layer {li} {kind}[{j}]"));
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

fn objective(net: &Network, x: &Tensor, target: &GradTarget) -> Vec<f64> {
    let logits = net.forward(x).unwrap();
    logits
        .rows()
        .zip(target.classes())
        .map(|(z, &c)| {
            let z: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            match target {
                GradTarget::CrossEntropy(_) => lse - z[c],
                GradTarget::Logit(_) => z[c],
                GradTarget::Probability(_) => (z[c] - lse).exp(),
            }
        })
        .collect()
}

/// Checks the input gradient of each sample's objective, for all three targets.
fn check_input(net: &Network, x: &Tensor, classes: Vec<usize>) {
    for target in [
        GradTarget::CrossEntropy(classes.clone()),
        GradTarget::Logit(classes.clone()),
        GradTarget::Probability(classes.clone()),
    ] {
        let g = net.input_gradient(x, &target).unwrap();
        assert_eq!(g.shape(), x.shape());
        let per = x.sample_len();
        for i in 0..x.data().len() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp.data_mut()[i] += EPS;
            xm.data_mut()[i] -= EPS;
            let s = i / per;
            let num = (objective(net, &xp, &target)[s] - objective(net, &xm, &target)[s])
                / (2.0 * EPS as f64);
            close(num, g.data()[i] as f64, &format!("{target:?} input[{i}]"));
        }
    }
}

fn mlp() -> Network {
    Network::from_layers(
        &[2, 3],
        vec![
            LayerSpec::Flatten,
            LayerSpec::Dense {
                inputs: 6,
                outputs: 5,
            },
            LayerSpec::Relu,
            LayerSpec::Dense {
                inputs: 5,
                outputs: 3,
            },
        ],
        11,
    )
    .unwrap()
}

/// Strided, padded conv → relu → 2×2 pool → dense → binary head.
fn cnn_binary() -> Network {
    let mut net = Network::from_layers(
        &[2, 7, 7],
        vec![
            LayerSpec::Conv2d {
                in_channels: 2,
                out_channels: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            LayerSpec::Relu,
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: 2,
            },
            LayerSpec::Flatten,
            LayerSpec::Dense {
                inputs: 12,
                outputs: 1,
            },
            LayerSpec::BinaryHead,
        ],
        5,
    )
    .unwrap();
    for (i, b) in net.params[0].bias.iter_mut().enumerate() {
        *b = 0.1 * (i as f32 + 1.0);
    }
    net
}

/// conv → relu → overlapping 3×3/1 pool → strided conv → relu → dense.
fn cnn_overlap() -> Network {
    let mut net = Network::from_layers(
        &[1, 8, 8],
        vec![
            LayerSpec::Conv2d {
                in_channels: 1,
                out_channels: 4,
                kernel: 3,
                stride: 1,
                padding: 0,
            },
            LayerSpec::Relu,
            LayerSpec::MaxPool2d {
                kernel: 3,
                stride: 1,
            },
            LayerSpec::Conv2d {
                in_channels: 4,
                out_channels: 2,
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            LayerSpec::Relu,
            LayerSpec::Flatten,
            LayerSpec::Dense {
                inputs: 8,
                outputs: 3,
            },
        ],
        8,
    )
    .unwrap();
    for b in net.params[0].bias.iter_mut() {
        *b = 0.2;
    }
    for b in net.params[3].bias.iter_mut() {
        *b = 0.3;
    }
    net
}

#[test]
fn mlp_parameter_gradients_hard_labels() {
    check_params(
        &mlp(),
        &input(&[4, 2, 3], 1),
        &Targets::Labels(vec![0, 2, 1, 2]),
    );
}

#[test]
fn mlp_parameter_gradients_soft_targets() {
    let t = Tensor::new(
        vec![4, 3],
        vec![0.2, 0.5, 0.3, 1.0, 0.0, 0.0, 0.1, 0.1, 0.8, 0.4, 0.4, 0.2],
    )
    .unwrap();
    check_params(&mlp(), &input(&[4, 2, 3], 2), &Targets::Soft(t));
}

#[test]
fn mlp_input_gradients() {
    check_input(&mlp(), &input(&[3, 2, 3], 3), vec![0, 1, 2]);
}

#[test]
fn cnn_with_binary_head_parameter_and_input_gradients() {
    let net = cnn_binary();
    let x = input(&[3, 2, 7, 7], 4);
    check_params(&net, &x, &Targets::Labels(vec![1, 0, 1]));
    check_input(&net, &x, vec![1, 0, 1]);
}

#[test]
fn cnn_overlapping_pool_parameter_and_input_gradients() {
    let net = cnn_overlap();
    let x = input(&[2, 1, 8, 8], 5);
    check_params(&net, &x, &Targets::Labels(vec![2, 0]));
    let t = Tensor::new(vec![2, 3], vec![0.7, 0.2, 0.1, 0.05, 0.05, 0.9]).unwrap();
    check_params(&net, &x, &Targets::Soft(t));
    check_input(&net, &x, vec![1, 2]);
}

/// Max-pool backward routes the whole gradient to the window maximum (no averaging): for a
/// single 4×4 pool window, ∂ max / ∂ input is exactly 1 at the arg-max and 0 elsewhere.
#[test]
fn max_pool_routes_gradient_to_the_maximum() {
    let net = Network::from_layers(
        &[1, 4, 4],
        vec![
            LayerSpec::MaxPool2d {
                kernel: 4,
                stride: 4,
            },
            LayerSpec::Flatten,
            LayerSpec::Dense {
                inputs: 1,
                outputs: 2,
            },
        ],
        0,
    )
    .unwrap();
    let mut net = net;
    net.params[2].weight = vec![1.0, 0.0];
    let mut x = Tensor::zeros(vec![1, 1, 4, 4]);
    x.data_mut()[6] = 0.9;
    x.data_mut()[3] = 0.5;
    let g = net.input_gradient(&x, &GradTarget::Logit(vec![0])).unwrap();
    let mut want = vec![0.0; 16];
    want[6] = 1.0;
    assert_eq!(g.data(), want.as_slice());
}
