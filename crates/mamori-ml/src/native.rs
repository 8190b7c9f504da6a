//! The native model format: `model.safetensors` (parameters `layers.{i}.weight|bias` in
//! PyTorch layout) + `model.json` (the [`ModelCard`], whose `architecture_detail` holds the
//! input shape and layer list the network is rebuilt from).

use crate::api::{MlError, NativeModel};
use crate::arch::{LayerParams, LayerSpec, Network};
use crate::engine::{self, param_shapes};
use mamori_core::ModelCard;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// File name of the parameters inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the model card inside a model directory.
pub const CARD_FILE: &str = "model.json";

/// What `card.architecture_detail` holds for a native model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchitectureDetail {
    /// Shape of one input sample.
    pub input_shape: Vec<usize>,
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
}

fn invalid(path: &str, message: impl Into<String>) -> MlError {
    MlError::InvalidModel {
        path: path.to_string(),
        message: message.into(),
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl NativeModel {
    /// A model from a network and a card; the card's `architecture_detail` and `input_shape`
    /// are set from the network (the network is the source of truth).
    pub fn new(network: Network, mut card: ModelCard) -> NativeModel {
        card.input_shape = network.input_shape.clone();
        card.architecture_detail = serde_json::to_value(ArchitectureDetail {
            input_shape: network.input_shape.clone(),
            layers: network.layers.clone(),
        })
        .expect("layer specs serialise");
        NativeModel { network, card }
    }

    /// The parameters as safetensors bytes.
    pub fn weights_bytes(&self) -> Result<Vec<u8>, MlError> {
        let plan = self.network.plan().map_err(|m| invalid(WEIGHTS_FILE, m))?;
        let mut bufs = Vec::new();
        for (i, (op, p)) in plan.ops.iter().zip(&self.network.params).enumerate() {
            if let Some((ws, bs)) = param_shapes(op) {
                bufs.push((format!("layers.{i}.weight"), ws, to_bytes(&p.weight)));
                bufs.push((format!("layers.{i}.bias"), bs, to_bytes(&p.bias)));
            }
        }
        let views = bufs
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| invalid(WEIGHTS_FILE, format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::tensor::serialize(views, &None)
            .map_err(|e| invalid(WEIGHTS_FILE, format!("serialising: {e}")))
    }

    /// The model card as pretty JSON, with `architecture_detail` taken from the network.
    pub fn card_bytes(&self) -> Result<Vec<u8>, MlError> {
        let m = NativeModel::new(self.network.clone(), self.card.clone());
        serde_json::to_vec_pretty(&m.card).map_err(|e| invalid(CARD_FILE, e.to_string()))
    }

    pub(crate) fn save_impl(&self, dir: &Path) -> Result<(), MlError> {
        let file_err = |p: &Path, e: std::io::Error| MlError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let weights = self.weights_bytes()?;
        let card = self.card_bytes()?;
        let wp = dir.join(WEIGHTS_FILE);
        std::fs::write(&wp, weights).map_err(|e| file_err(&wp, e))?;
        let cp = dir.join(CARD_FILE);
        std::fs::write(&cp, card).map_err(|e| file_err(&cp, e))?;
        Ok(())
    }

    pub(crate) fn load_impl(dir: &Path) -> Result<NativeModel, MlError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| MlError::File {
                path: p.display().to_string(),
                message: format!("cannot read: {e}"),
            })
        };
        let card = read(CARD_FILE)?;
        let weights = read(WEIGHTS_FILE)?;
        parse(
            &weights,
            &card,
            &dir.join(WEIGHTS_FILE).display().to_string(),
            &dir.join(CARD_FILE).display().to_string(),
        )
    }

    /// A model from in-memory `model.safetensors` and `model.json` bytes (e.g. decrypted by
    /// the gateway). Errors name `model.safetensors` / `model.json`.
    pub fn from_bytes(weights: &[u8], card_json: &[u8]) -> Result<NativeModel, MlError> {
        parse(weights, card_json, WEIGHTS_FILE, CARD_FILE)
    }
}

fn parse(
    weights: &[u8],
    card_json: &[u8],
    wpath: &str,
    cpath: &str,
) -> Result<NativeModel, MlError> {
    let card: ModelCard = serde_json::from_slice(card_json)
        .map_err(|e| invalid(cpath, format!("not a model card: {e}")))?;
    let detail: ArchitectureDetail = serde_json::from_value(card.architecture_detail.clone())
        .map_err(|e| {
            invalid(
                cpath,
                format!("architecture_detail must hold input_shape and layers: {e}"),
            )
        })?;
    if detail.input_shape != card.input_shape {
        return Err(invalid(
            cpath,
            format!(
                "input_shape {:?} differs from architecture_detail.input_shape {:?}",
                card.input_shape, detail.input_shape
            ),
        ));
    }
    let plan = engine::plan(&detail.input_shape, &detail.layers)
        .map_err(|m| invalid(cpath, format!("architecture_detail: {m}")))?;
    if card.class_names.len() != plan.classes {
        return Err(invalid(
            cpath,
            format!(
                "{} class names for a network with {} outputs",
                card.class_names.len(),
                plan.classes
            ),
        ));
    }
    let st = SafeTensors::deserialize(weights)
        .map_err(|e| invalid(wpath, format!("not a safetensors file: {e:?}")))?;
    let mut expected = BTreeSet::new();
    let mut params = Vec::with_capacity(plan.ops.len());
    for (i, op) in plan.ops.iter().enumerate() {
        let Some((wshape, bshape)) = param_shapes(op) else {
            params.push(LayerParams::default());
            continue;
        };
        let mut get = |kind: &str, shape: &[usize]| -> Result<Vec<f32>, MlError> {
            let name = format!("layers.{i}.{kind}");
            let t = st
                .tensor(&name)
                .map_err(|_| invalid(wpath, format!("missing tensor {name}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(invalid(
                    wpath,
                    format!("tensor {name} has dtype {:?}, expected F32", t.dtype()),
                ));
            }
            if t.shape() != shape {
                return Err(invalid(
                    wpath,
                    format!(
                        "tensor {name} has shape {:?}, expected {shape:?}",
                        t.shape()
                    ),
                ));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(invalid(
                    wpath,
                    format!("tensor {name} holds non-finite values"),
                ));
            }
            expected.insert(name);
            Ok(v)
        };
        let weight = get("weight", &wshape)?;
        let bias = get("bias", &bshape)?;
        params.push(LayerParams { weight, bias });
    }
    if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(*n)) {
        return Err(invalid(wpath, format!("unexpected tensor {extra}")));
    }
    let network = Network {
        input_shape: detail.input_shape,
        layers: detail.layers,
        params,
    };
    Ok(NativeModel { network, card })
}
