//! Building networks: zoo layer lists, deterministic initialisation, validation, and the
//! batched forward pass and input gradients behind [`Network`]'s public methods.

use crate::api::MlError;
use crate::arch::{Arch, LayerParams, LayerSpec, Network};
use crate::engine::{self, param_sizes, Plan, Workspace};
use crate::loss::{logit_gradient, LogitObjective};
use mamori_core::{GradTarget, ModelError, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::cell::RefCell;

/// Samples per chunk when running inference or input gradients (bounds workspace memory).
pub(crate) const CHUNK: usize = 256;

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// The layer list of a zoo architecture for one sample of `input_shape` and `classes` outputs.
///
/// Every list starts with `Flatten` for the dense architectures. `Logistic` needs
/// `classes == 2`; `Cnn` needs a `[c, h, w]` input of at least 10×10.
pub fn zoo_layers(
    arch: &Arch,
    input_shape: &[usize],
    classes: usize,
) -> Result<Vec<LayerSpec>, MlError> {
    let bad = |m: String| MlError::Training(m);
    if input_shape.is_empty() || input_shape.contains(&0) {
        return Err(bad(format!("invalid input shape {input_shape:?}")));
    }
    if classes < 2 {
        return Err(bad(format!(
            "a classifier needs at least 2 classes, got {classes}"
        )));
    }
    let d: usize = input_shape.iter().product();
    let layers = match arch {
        Arch::Logistic => {
            if classes != 2 {
                return Err(bad(format!(
                    "binary logistic regression needs exactly 2 classes, got {classes} (select two classes)"
                )));
            }
            vec![
                LayerSpec::Flatten,
                LayerSpec::Dense {
                    inputs: d,
                    outputs: 1,
                },
                LayerSpec::BinaryHead,
            ]
        }
        Arch::Softmax => vec![
            LayerSpec::Flatten,
            LayerSpec::Dense {
                inputs: d,
                outputs: classes,
            },
        ],
        Arch::Mlp { hidden } => {
            let mut v = vec![LayerSpec::Flatten];
            let mut prev = d;
            for &h in hidden {
                if h == 0 {
                    return Err(bad("MLP hidden layer sizes must be positive".into()));
                }
                v.push(LayerSpec::Dense {
                    inputs: prev,
                    outputs: h,
                });
                v.push(LayerSpec::Relu);
                prev = h;
            }
            v.push(LayerSpec::Dense {
                inputs: prev,
                outputs: classes,
            });
            v
        }
        Arch::Cnn => {
            let [c, h, w] = input_shape[..] else {
                return Err(bad(format!(
                    "the CNN needs an image input [c, h, w], got {input_shape:?}"
                )));
            };
            if h < 10 || w < 10 {
                return Err(bad(format!(
                    "the CNN needs images of at least 10x10, got {h}x{w}"
                )));
            }
            let (h1, w1) = ((h - 2) / 2, (w - 2) / 2);
            let (h2, w2) = ((h1 - 2) / 2, (w1 - 2) / 2);
            vec![
                LayerSpec::Conv2d {
                    in_channels: c,
                    out_channels: 32,
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
                    in_channels: 32,
                    out_channels: 64,
                    kernel: 3,
                    stride: 1,
                    padding: 0,
                },
                LayerSpec::Relu,
                LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: 2,
                },
                LayerSpec::Flatten,
                LayerSpec::Dense {
                    inputs: 64 * h2 * w2,
                    outputs: 128,
                },
                LayerSpec::Relu,
                LayerSpec::Dense {
                    inputs: 128,
                    outputs: classes,
                },
            ]
        }
    };
    Ok(layers)
}

impl Network {
    /// A network of a zoo architecture, initialised from `seed`; `Err` when the architecture
    /// does not fit the input shape or class count (see [`zoo_layers`]).
    pub fn try_new(
        arch: &Arch,
        input_shape: &[usize],
        classes: usize,
        seed: u64,
    ) -> Result<Network, MlError> {
        let layers = zoo_layers(arch, input_shape, classes)?;
        Network::from_layers(input_shape, layers, seed)
    }

    /// A network of arbitrary `layers`, initialised from `seed`: weights of a layer followed
    /// by ReLU get He-normal init (He et al., "Delving Deep into Rectifiers", ICCV 2015),
    /// others Glorot-uniform (Glorot & Bengio, AISTATS 2010); biases start at zero.
    pub fn from_layers(
        input_shape: &[usize],
        layers: Vec<LayerSpec>,
        seed: u64,
    ) -> Result<Network, MlError> {
        let plan = engine::plan(input_shape, &layers).map_err(MlError::Training)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(layers.len());
        for (i, op) in plan.ops.iter().enumerate() {
            let (wn, bn) = param_sizes(op);
            if wn == 0 {
                params.push(LayerParams::default());
                continue;
            }
            let (fan_in, fan_out) = match *op {
                engine::Op::Dense { inputs, outputs } => (inputs, outputs),
                engine::Op::Conv { c, oc, k, .. } => (c * k * k, oc * k * k),
                _ => unreachable!("only dense and conv layers have parameters"),
            };
            let relu_next = matches!(layers.get(i + 1), Some(LayerSpec::Relu));
            let weight: Vec<f32> = if relu_next {
                let std = (2.0 / fan_in as f64).sqrt();
                let dist = Normal::new(0.0, std).expect("positive std");
                (0..wn).map(|_| dist.sample(&mut rng) as f32).collect()
            } else {
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                let dist = Uniform::new_inclusive(-limit, limit);
                (0..wn).map(|_| dist.sample(&mut rng) as f32).collect()
            };
            params.push(LayerParams {
                weight,
                bias: vec![0.0; bn],
            });
        }
        Ok(Network {
            input_shape: input_shape.to_vec(),
            layers,
            params,
        })
    }

    /// Checks that the layers fit the input shape and that every parameter vector has the
    /// length its layer needs.
    pub fn validate(&self) -> Result<(), MlError> {
        self.plan().map(|_| ()).map_err(MlError::Training)
    }

    /// Total number of trainable values.
    pub fn num_parameters(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.weight.len() + p.bias.len())
            .sum()
    }

    /// Resolved shapes, with parameter lengths checked.
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        let plan = engine::plan(&self.input_shape, &self.layers)?;
        if self.params.len() != self.layers.len() {
            return Err(format!(
                "{} parameter entries for {} layers",
                self.params.len(),
                self.layers.len()
            ));
        }
        for (i, (op, p)) in plan.ops.iter().zip(&self.params).enumerate() {
            let (wn, bn) = param_sizes(op);
            if p.weight.len() != wn || p.bias.len() != bn {
                return Err(format!(
                    "layer {i}: expected {wn} weights and {bn} biases, got {} and {}",
                    p.weight.len(),
                    p.bias.len()
                ));
            }
        }
        Ok(plan)
    }

    pub(crate) fn checked_plan(&self, x: &Tensor) -> Result<Plan, ModelError> {
        if x.sample_shape() != self.input_shape.as_slice() {
            return Err(ModelError::InputShape {
                expected: self.input_shape.clone(),
                got: x.sample_shape().to_vec(),
            });
        }
        self.plan().map_err(ModelError::Runtime)
    }

    pub(crate) fn forward_impl(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let plan = self.checked_plan(x)?;
        let n = x.batch_size();
        let mut out = Vec::with_capacity(n * plan.classes);
        WORKSPACE.with(|ws| {
            let mut ws = ws.borrow_mut();
            for chunk in x.data().chunks(CHUNK * plan.in_len) {
                let m = chunk.len() / plan.in_len;
                engine::forward(&plan, &self.params, chunk, m, &mut ws);
                out.extend_from_slice(ws.logits());
            }
        });
        Ok(Tensor::new(vec![n, plan.classes], out)?)
    }

    pub(crate) fn input_gradient_impl(
        &self,
        x: &Tensor,
        target: &GradTarget,
    ) -> Result<Tensor, ModelError> {
        let plan = self.checked_plan(x)?;
        let n = x.batch_size();
        let classes = target.classes();
        if classes.len() != n {
            return Err(ModelError::BadTarget(format!(
                "{} target classes for a batch of {n}",
                classes.len()
            )));
        }
        if let Some(&c) = classes.iter().find(|&&c| c >= plan.classes) {
            return Err(ModelError::BadTarget(format!(
                "class {c} out of range for a model with {} classes",
                plan.classes
            )));
        }
        let objective = match target {
            GradTarget::CrossEntropy(_) => LogitObjective::CrossEntropy,
            GradTarget::Logit(_) => LogitObjective::Logit,
            GradTarget::Probability(_) => LogitObjective::Probability,
        };
        let mut grad = Vec::with_capacity(x.data().len());
        let mut dlogits = Vec::new();
        WORKSPACE.with(|ws| {
            let mut ws = ws.borrow_mut();
            for (ci, chunk) in x.data().chunks(CHUNK * plan.in_len).enumerate() {
                let m = chunk.len() / plan.in_len;
                let cls = &classes[ci * CHUNK..ci * CHUNK + m];
                engine::forward(&plan, &self.params, chunk, m, &mut ws);
                dlogits.resize(m * plan.classes, 0.0);
                logit_gradient(ws.logits(), cls, plan.classes, objective, &mut dlogits);
                let g = engine::backward(&plan, &self.params, chunk, &mut ws, &dlogits, None, true);
                grad.extend_from_slice(&g);
            }
        });
        Ok(Tensor::new(x.shape().to_vec(), grad)?)
    }
}
