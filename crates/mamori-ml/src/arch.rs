//! Network architecture description and parameter layout.
//!
//! Layouts follow PyTorch/ONNX so that exported files need no transposition:
//! - `Dense { inputs, outputs }`: weight `[outputs, inputs]`, bias `[outputs]`; `y = x Wᵀ + b`.
//! - `Conv2d`: weight `[out_channels, in_channels, kernel, kernel]`, bias `[out_channels]`,
//!   input/output `NCHW`.
//! - Parameter names in safetensors: `layers.{i}.weight`, `layers.{i}.bias`.

use serde::{Deserialize, Serialize};

/// One layer of a sequential network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum LayerSpec {
    /// Fully connected layer.
    Dense {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
    /// 2-D convolution over `NCHW` input, square kernel.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Rectified linear unit.
    Relu,
    /// Max pooling, square window.
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Flattens `[n, c, h, w]` to `[n, c*h*w]`.
    Flatten,
    /// Maps one logit `z` to the pair `[0, z]`, so that softmax gives `[1 − σ(z), σ(z)]`:
    /// binary logistic regression expressed as a two-class model.
    BinaryHead,
}

/// Named architectures of the model zoo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Arch {
    /// Binary logistic regression (two classes).
    Logistic,
    /// Multinomial (softmax) logistic regression.
    Softmax,
    /// Multi-layer perceptron with ReLU hidden layers.
    Mlp {
        /// Hidden layer sizes.
        hidden: Vec<usize>,
    },
    /// LeNet-style CNN: conv32 3×3 → relu → maxpool 2 → conv64 3×3 → relu → maxpool 2 →
    /// dense 128 → relu → dense classes.
    Cnn,
}

/// Parameters of one layer (empty vectors for parameter-free layers).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LayerParams {
    /// Weight values in the layout documented at module level.
    pub weight: Vec<f32>,
    /// Bias values.
    pub bias: Vec<f32>,
}

/// A sequential network: its input shape, layers and parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Shape of one input sample (`[c, h, w]` for images, `[d]` for tabular data).
    pub input_shape: Vec<usize>,
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
    /// One entry per layer, same order.
    pub params: Vec<LayerParams>,
}
