//! Export of a native [`Network`] as an ONNX model (opset 13, symbolic batch dimension `N`).
//!
//! Each layer maps to standard operators, so any ONNX runtime runs the file:
//!
//! | layer | ONNX |
//! |---|---|
//! | `Dense` | `Gemm(x, W, b)` with `transB = 1` (W is `[outputs, inputs]`, PyTorch layout) |
//! | `Conv2d` | `Conv` with `kernel_shape`, `strides`, `pads` |
//! | `Relu` | `Relu` |
//! | `MaxPool2d` | `MaxPool` (floor mode, as the engine) |
//! | `Flatten` | `Flatten(axis = 1)` |
//! | `BinaryHead` | `Concat([zeros, z], axis = 1)`, zeros from `ConstantOfShape(Shape(z))` |
//!
//! Weights become initializers named as in `model.safetensors` (`layers.{i}.weight`,
//! `layers.{i}.bias`). The graph outputs logits (`output_kind = logits` in the card).
//! Messages are tract-onnx's protobuf types (`tract_onnx::pb`), encoded with prost.

use crate::api::{MlError, NativeModel};
use crate::arch::{LayerSpec, Network};
use crate::onnx::card_path;
use mamori_core::OutputKind;
use prost::Message;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

/// ONNX operator set the exporter targets.
pub const OPSET: i64 = 13;
/// ONNX IR version written (IR 8 goes with opsets up to 18).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "logits";

fn bad(message: String) -> MlError {
    MlError::InvalidModel {
        path: "<network>".into(),
        message,
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, sample: &[usize]) -> pb::ValueInfoProto {
    let mut dim = vec![Dimension {
        value: Some(dimension::Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(sample.iter().map(|&d| Dimension {
        value: Some(dimension::Value::DimValue(d as i64)),
        ..Default::default()
    }));
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check_len(i: usize, what: &str, got: usize, want: usize) -> Result<(), MlError> {
    if got != want {
        return Err(bad(format!(
            "layer {i}: {what} has {got} values, expected {want}"
        )));
    }
    Ok(())
}

/// Builds the ONNX model of `net`. `name` becomes the graph name.
pub fn network_to_onnx(net: &Network, name: &str) -> Result<pb::ModelProto, MlError> {
    if net.params.len() != net.layers.len() {
        return Err(bad(format!(
            "{} layers but {} parameter entries",
            net.layers.len(),
            net.params.len()
        )));
    }
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut shape = net.input_shape.clone(); // per sample
    let mut cur = INPUT_NAME.to_string();
    let last = net.layers.len();
    for (i, (layer, p)) in net.layers.iter().zip(&net.params).enumerate() {
        let out = if i + 1 == last {
            OUTPUT_NAME.to_string()
        } else {
            format!("h{i}")
        };
        let (w, b) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
        match *layer {
            LayerSpec::Dense { inputs, outputs } => {
                if shape.len() != 1 {
                    // The engine treats a dense layer's input as flat; make that explicit.
                    let flat = format!("h{i}_flat");
                    nodes.push(node(
                        "Flatten",
                        format!("layers.{i}.flatten"),
                        &[&cur],
                        &flat,
                        vec![attr_int("axis", 1)],
                    ));
                    cur = flat;
                    shape = vec![shape.iter().product()];
                }
                if shape[0] != inputs {
                    return Err(bad(format!(
                        "layer {i}: dense expects {inputs} inputs, gets {}",
                        shape[0]
                    )));
                }
                check_len(i, "weight", p.weight.len(), inputs * outputs)?;
                check_len(i, "bias", p.bias.len(), outputs)?;
                inits.push(f32_tensor(&w, &[outputs, inputs], &p.weight));
                inits.push(f32_tensor(&b, &[outputs], &p.bias));
                nodes.push(node(
                    "Gemm",
                    format!("layers.{i}.gemm"),
                    &[&cur, &w, &b],
                    &out,
                    vec![attr_int("transB", 1)],
                ));
                shape = vec![outputs];
            }
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                let [c, h, wd] = shape[..] else {
                    return Err(bad(format!(
                        "layer {i}: conv2d expects a [c, h, w] input, gets {shape:?}"
                    )));
                };
                if c != in_channels
                    || stride == 0
                    || kernel == 0
                    || h + 2 * padding < kernel
                    || wd + 2 * padding < kernel
                {
                    return Err(bad(format!("layer {i}: conv2d {in_channels}->{out_channels} k{kernel} s{stride} p{padding} does not fit input {shape:?}")));
                }
                check_len(
                    i,
                    "weight",
                    p.weight.len(),
                    out_channels * in_channels * kernel * kernel,
                )?;
                check_len(i, "bias", p.bias.len(), out_channels)?;
                inits.push(f32_tensor(
                    &w,
                    &[out_channels, in_channels, kernel, kernel],
                    &p.weight,
                ));
                inits.push(f32_tensor(&b, &[out_channels], &p.bias));
                let (k, s, pd) = (kernel as i64, stride as i64, padding as i64);
                nodes.push(node(
                    "Conv",
                    format!("layers.{i}.conv"),
                    &[&cur, &w, &b],
                    &out,
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[pd, pd, pd, pd]),
                    ],
                ));
                shape = vec![
                    out_channels,
                    (h + 2 * padding - kernel) / stride + 1,
                    (wd + 2 * padding - kernel) / stride + 1,
                ];
            }
            LayerSpec::Relu => nodes.push(node(
                "Relu",
                format!("layers.{i}.relu"),
                &[&cur],
                &out,
                vec![],
            )),
            LayerSpec::MaxPool2d { kernel, stride } => {
                let [c, h, wd] = shape[..] else {
                    return Err(bad(format!(
                        "layer {i}: max_pool2d expects a [c, h, w] input, gets {shape:?}"
                    )));
                };
                if kernel == 0 || stride == 0 || kernel > h || kernel > wd {
                    return Err(bad(format!(
                        "layer {i}: max_pool2d k{kernel} s{stride} does not fit input {shape:?}"
                    )));
                }
                let (k, s) = (kernel as i64, stride as i64);
                nodes.push(node(
                    "MaxPool",
                    format!("layers.{i}.maxpool"),
                    &[&cur],
                    &out,
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                    ],
                ));
                shape = vec![c, (h - kernel) / stride + 1, (wd - kernel) / stride + 1];
            }
            LayerSpec::Flatten => {
                nodes.push(node(
                    "Flatten",
                    format!("layers.{i}.flatten"),
                    &[&cur],
                    &out,
                    vec![attr_int("axis", 1)],
                ));
                shape = vec![shape.iter().product()];
            }
            LayerSpec::BinaryHead => {
                if shape != [1] {
                    return Err(bad(format!(
                        "layer {i}: binary head expects one logit, gets {shape:?}"
                    )));
                }
                let (sh, zeros) = (format!("h{i}_shape"), format!("h{i}_zeros"));
                nodes.push(node(
                    "Shape",
                    format!("layers.{i}.shape"),
                    &[&cur],
                    &sh,
                    vec![],
                ));
                nodes.push(pb::NodeProto {
                    attribute: vec![pb::AttributeProto {
                        name: "value".into(),
                        r#type: AttributeType::Tensor as i32,
                        t: Some(f32_tensor("", &[1], &[0.0])),
                        ..Default::default()
                    }],
                    ..node(
                        "ConstantOfShape",
                        format!("layers.{i}.zeros"),
                        &[&sh],
                        &zeros,
                        vec![],
                    )
                });
                nodes.push(node(
                    "Concat",
                    format!("layers.{i}.concat"),
                    &[&zeros, &cur],
                    &out,
                    vec![attr_int("axis", 1)],
                ));
                shape = vec![2];
            }
        }
        cur = out;
    }
    if shape.len() != 1 {
        return Err(bad(format!(
            "the network must end with [classes] outputs, ends with {shape:?}"
        )));
    }
    if cur != OUTPUT_NAME {
        // No layers at all, or a trailing rename: keep the output name stable.
        nodes.push(node(
            "Identity",
            "output".into(),
            &[&cur],
            OUTPUT_NAME,
            vec![],
        ));
    }
    let graph = pb::GraphProto {
        name: name.into(),
        node: nodes,
        initializer: inits,
        input: vec![value_info(INPUT_NAME, &net.input_shape)],
        output: vec![value_info(OUTPUT_NAME, &shape)],
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "mamori".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{name}: exported by mamori; outputs logits"),
        graph: Some(graph),
        ..Default::default()
    })
}

/// The encoded ONNX bytes of `net`.
pub fn network_to_onnx_bytes(net: &Network, name: &str) -> Result<Vec<u8>, MlError> {
    Ok(network_to_onnx(net, name)?.encode_to_vec())
}

/// Writes `model` as ONNX to `out` and its model card to `<out>.json` (same card, with
/// `output_kind = logits` and the export recorded in `extra`).
pub fn export_onnx(model: &NativeModel, out: &Path) -> Result<(), MlError> {
    let bytes = network_to_onnx_bytes(&model.network, &model.card.name)?;
    let werr = |p: &Path, e: std::io::Error| MlError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;
    }
    std::fs::write(out, &bytes).map_err(|e| werr(out, e))?;
    let mut card = model.card.clone();
    card.output_kind = OutputKind::Logits;
    card.extra.insert("format".into(), "onnx".into());
    card.extra.insert("onnx_opset".into(), OPSET.into());
    card.extra.insert(
        "onnx_sha256".into(),
        mamori_core::hash::sha256_hex(&bytes).into(),
    );
    let json = serde_json::to_string_pretty(&card).map_err(|e| bad(e.to_string()))?;
    let cp = card_path(out);
    std::fs::write(&cp, json).map_err(|e| werr(&cp, e))?;
    Ok(())
}
