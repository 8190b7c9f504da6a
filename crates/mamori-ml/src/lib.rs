//! # mamori-ml
//!
//! mamori's ML runtime: a CPU neural-network engine (im2col + GEMM) with exact input
//! gradients, training, native models stored as `model.safetensors` + `model.json` (model
//! card), and ONNX models run by tract.
//!
//! The network description ([`arch`]) is shared by the engine, the safetensors format and the
//! ONNX exporter: parameter `layers.{i}.weight` / `layers.{i}.bias` belongs to layer `i`.

pub mod arch;

pub use arch::{Arch, LayerParams, LayerSpec, Network};

mod api;
pub use api::*;
mod engine;
mod linalg;
mod loss;
mod native;
pub use native::{ArchitectureDetail, CARD_FILE, WEIGHTS_FILE};
mod network;
pub use network::zoo_layers;
mod loader;
mod train;
pub mod zoo;
pub use loader::load_model;

// ONNX runtime and exporter (data helper).
pub mod onnx;
pub mod onnx_export;
pub use onnx::OnnxModel;
pub use onnx_export::{export_onnx, network_to_onnx};
