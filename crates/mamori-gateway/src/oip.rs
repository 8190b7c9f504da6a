//! Open Inference Protocol v2 (KServe / Triton) REST wire format.
//!
//! Decodes inference requests (JSON tensors, optionally with Triton's binary tensor data
//! extension for inputs, and its `binary_data` / `binary_data_output` parameters asking for
//! binary outputs) and encodes metadata and inference responses. Structural problems of
//! a request (malformed JSON, missing fields, wrong JSON types) are reported here; checks against
//! the model card live in [`crate::validate`].

use crate::error::GatewayError;
use mamori_core::ModelCard;
use serde_json::{json, Map, Value};

/// The name of the single input tensor every mamori model takes.
pub const INPUT_NAME: &str = "input";
/// Output tensor: class probabilities, FP32 `[n, classes]`.
pub const OUTPUT_PROBABILITIES: &str = "probabilities";
/// Output tensor: predicted labels, INT64 `[n]`.
pub const OUTPUT_LABEL: &str = "label";
/// The version every embedded model is served as.
pub const MODEL_VERSION: &str = "1";

/// Input datatypes the gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputType {
    /// 32-bit floats: already normalised model inputs.
    Fp32,
    /// Raw bytes (e.g. pixels), normalised with the card's normalisation.
    Uint8,
}

/// One decoded input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// Tensor name.
    pub name: String,
    /// Full shape, batch first.
    pub shape: Vec<usize>,
    /// Declared datatype.
    pub datatype: InputType,
    /// Values, row-major, as given (not yet normalised or range-checked).
    pub data: Vec<f64>,
}

/// One requested output.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// The output's `binary_data` parameter (binary tensor data extension), if given.
    pub binary_data: Option<bool>,
}

/// A decoded inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferBody {
    /// Request id to echo.
    pub id: Option<String>,
    /// Request parameters (kept for the audit log).
    pub parameters: Map<String, Value>,
    /// Input tensors.
    pub inputs: Vec<InputTensor>,
    /// Requested outputs (`None`: every output the tier allows).
    pub outputs: Option<Vec<RequestedOutput>>,
}

impl InferBody {
    /// Whether output `name` is to be returned as binary tensor data: the output's own
    /// `binary_data` parameter when it is listed with one, else the request's
    /// `binary_data_output` parameter, else JSON (Triton's binary tensor data extension).
    pub fn binary_output(&self, name: &str) -> bool {
        let own = self
            .outputs
            .as_ref()
            .and_then(|o| o.iter().find(|o| o.name == name))
            .and_then(|o| o.binary_data);
        own.unwrap_or_else(|| {
            self.parameters
                .get("binary_data_output")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
    }
}

fn bad(msg: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest(msg.into())
}

/// Decodes an inference request body.
///
/// `binary_header_len` is the value of the `Inference-Header-Content-Length` header when the
/// client uses the binary tensor data extension: the first that many bytes are the JSON header,
/// the rest the concatenated raw tensor bytes (little-endian).
pub fn decode_infer(
    body: &[u8],
    binary_header_len: Option<usize>,
) -> Result<InferBody, GatewayError> {
    let (json_part, mut binary) = match binary_header_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!(
                "Inference-Header-Content-Length {n} exceeds the body length {}",
                body.len()
            )))
        }
        Some(n) => (&body[..n], Some(&body[n..])),
        None => (body, None),
    };
    if json_part.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad(
            "empty request body: expected an inference request JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(json_part).map_err(|e| {
        let text = String::from_utf8_lossy(json_part);
        if text.contains("NaN") || text.contains("Infinity") {
            bad(format!(
                "malformed JSON: non-finite numbers (NaN/Infinity) are not valid JSON and not valid inputs ({e})"
            ))
        } else {
            bad(format!("malformed JSON: {e}"))
        }
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("the inference request must be a JSON object"))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("`id` must be a string")),
    };
    let parameters = match obj.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad("`parameters` must be a JSON object")),
    };
    if parameters
        .get("binary_data_output")
        .is_some_and(|v| !v.is_boolean())
    {
        return Err(bad("parameter `binary_data_output` must be true or false"));
    }
    let inputs_v = obj
        .get("inputs")
        .ok_or_else(|| bad("missing `inputs`: the request must list its input tensors"))?
        .as_array()
        .ok_or_else(|| bad("`inputs` must be an array of tensors"))?;
    if inputs_v.is_empty() {
        return Err(bad("`inputs` is empty: one input tensor is required"));
    }
    let mut inputs = Vec::with_capacity(inputs_v.len());
    for (i, t) in inputs_v.iter().enumerate() {
        inputs.push(decode_input(i, t, &mut binary)?);
    }
    if let Some(rest) = binary {
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} bytes of binary tensor data are not claimed by any input",
                rest.len()
            )));
        }
    }
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut outs = Vec::with_capacity(a.len());
            for (i, o) in a.iter().enumerate() {
                let o = o
                    .as_object()
                    .ok_or_else(|| bad(format!("outputs[{i}] must be a JSON object")))?;
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("outputs[{i}] needs a string `name`")))?;
                outs.push(decode_output(name, o.get("parameters"))?);
            }
            Some(outs)
        }
        Some(_) => return Err(bad("`outputs` must be an array")),
    };
    Ok(InferBody {
        id,
        parameters,
        inputs,
        outputs,
    })
}

/// One requested output's parameters: `binary_data` is honoured; the classification and
/// shared-memory extensions are refused by name rather than silently ignored.
fn decode_output(name: &str, params: Option<&Value>) -> Result<RequestedOutput, GatewayError> {
    let p = match params {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(bad(format!(
                "output {name:?}: `parameters` must be a JSON object"
            )))
        }
    };
    let get = |k: &str| p.and_then(|m| m.get(k)).filter(|v| !v.is_null());
    if get("classification").is_some_and(|v| v.as_u64() != Some(0)) {
        return Err(bad(format!(
            "output {name:?}: the classification extension (class_count) is not supported; request the \"{OUTPUT_LABEL}\" output for labels"
        )));
    }
    if get("shared_memory_region").is_some() {
        return Err(bad(format!(
            "output {name:?}: the shared-memory extension is not supported; omit shared_memory_region"
        )));
    }
    let binary_data = match get("binary_data") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(bad(format!(
                "output {name:?}: `binary_data` must be true or false"
            )))
        }
    };
    Ok(RequestedOutput {
        name: name.to_string(),
        binary_data,
    })
}

fn decode_input(
    i: usize,
    t: &Value,
    binary: &mut Option<&[u8]>,
) -> Result<InputTensor, GatewayError> {
    let o = t
        .as_object()
        .ok_or_else(|| bad(format!("inputs[{i}] must be a JSON object")))?;
    let name = o
        .get("name")
        .ok_or_else(|| bad(format!("inputs[{i}] is missing `name`")))?
        .as_str()
        .ok_or_else(|| bad(format!("inputs[{i}].name must be a string")))?
        .to_string();
    let shape_v = o
        .get("shape")
        .ok_or_else(|| bad(format!("input {name:?} is missing `shape`")))?
        .as_array()
        .ok_or_else(|| {
            bad(format!(
                "input {name:?}: `shape` must be an array of integers"
            ))
        })?;
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d.as_u64().ok_or_else(|| {
            bad(format!(
                "input {name:?}: shape {shape_v:?} must hold non-negative integers"
            ))
        })?;
        shape.push(d as usize);
    }
    let dt = o
        .get("datatype")
        .ok_or_else(|| bad(format!("input {name:?} is missing `datatype`")))?
        .as_str()
        .ok_or_else(|| bad(format!("input {name:?}: `datatype` must be a string")))?;
    let datatype = match dt {
        "FP32" => InputType::Fp32,
        "UINT8" => InputType::Uint8,
        "BOOL" | "UINT16" | "UINT32" | "UINT64" | "INT8" | "INT16" | "INT32" | "INT64"
        | "FP16" | "FP64" | "BF16" | "BYTES" => {
            return Err(bad(format!(
                "input {name:?}: datatype {dt} is not supported; send FP32 (normalised values) or UINT8 (raw bytes)"
            )))
        }
        other => {
            return Err(bad(format!(
                "input {name:?}: unknown datatype {other:?} (Open Inference Protocol datatypes are upper-case, e.g. FP32)"
            )))
        }
    };
    // Checked: the dimensions are the client's numbers, and a wrapped product could match a
    // short `data`. Four bytes per element must fit too (the binary extension's size).
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| {
            bad(format!(
                "input {name:?}: shape {shape:?} has too many elements"
            ))
        })?;
    if o.get("parameters")
        .and_then(|p| p.get("shared_memory_region"))
        .is_some()
    {
        return Err(bad(format!(
            "input {name:?}: the shared-memory extension is not supported; send the tensor in the body"
        )));
    }
    let binary_size = o
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                bad(format!(
                    "input {name:?}: binary_data_size must be an integer"
                ))
            })
        })
        .transpose()?;
    let data = if let Some(size) = binary_size {
        let size = size as usize;
        let buf = binary.as_mut().ok_or_else(|| {
            bad(format!(
                "input {name:?} declares binary_data_size but the request has no Inference-Header-Content-Length header"
            ))
        })?;
        if size > buf.len() {
            return Err(bad(format!(
                "input {name:?}: binary_data_size {size} exceeds the {} remaining bytes",
                buf.len()
            )));
        }
        let (mine, rest) = buf.split_at(size);
        *buf = rest;
        let width = if datatype == InputType::Fp32 { 4 } else { 1 };
        if size != expected * width {
            return Err(bad(format!(
                "input {name:?}: shape {shape:?} of {dt} needs {} bytes, binary_data_size is {size}",
                expected * width
            )));
        }
        match datatype {
            InputType::Fp32 => mine
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            InputType::Uint8 => mine.iter().map(|b| *b as f64).collect(),
        }
    } else {
        let d = o
            .get("data")
            .ok_or_else(|| bad(format!("input {name:?} is missing `data`")))?;
        let mut out = Vec::with_capacity(expected.min(1 << 24));
        flatten(&name, d, &mut out, 0)?;
        out
    };
    if data.len() != expected {
        return Err(bad(format!(
            "input {name:?}: shape {shape:?} needs {expected} values, `data` has {}",
            data.len()
        )));
    }
    Ok(InputTensor {
        name,
        shape,
        datatype,
        data,
    })
}

/// Flattens `data`, which the protocol allows flat or nested row-major.
fn flatten(name: &str, v: &Value, out: &mut Vec<f64>, depth: usize) -> Result<(), GatewayError> {
    match v {
        Value::Array(a) => {
            if depth > 8 {
                return Err(bad(format!("input {name:?}: `data` is nested too deeply")));
            }
            for x in a {
                flatten(name, x, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Number(n) if depth > 0 => {
            out.push(
                n.as_f64().ok_or_else(|| {
                    bad(format!("input {name:?}: value {n} is not representable"))
                })?,
            );
            Ok(())
        }
        Value::Bool(_) if depth > 0 => Err(bad(format!(
            "input {name:?}: `data` holds a boolean; numbers were expected"
        ))),
        _ if depth == 0 => Err(bad(format!("input {name:?}: `data` must be an array"))),
        other => Err(bad(format!(
            "input {name:?}: `data` holds {other}; only numbers are allowed"
        ))),
    }
}

/// `GET /v2` server metadata.
pub fn server_metadata() -> Value {
    json!({
        "name": "mamori",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    })
}

/// `GET /v2/models/{name}` model metadata.
pub fn model_metadata(card: &ModelCard, platform: &str, tier_label_only: bool) -> Value {
    let mut in_shape: Vec<i64> = vec![-1];
    in_shape.extend(card.input_shape.iter().map(|d| *d as i64));
    let mut outputs = Vec::new();
    if !tier_label_only {
        outputs.push(json!({
            "name": OUTPUT_PROBABILITIES,
            "datatype": "FP32",
            "shape": [-1, card.num_classes() as i64],
        }));
    }
    outputs.push(json!({"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]}));
    json!({
        "name": card.name,
        "versions": [MODEL_VERSION],
        "platform": platform,
        "inputs": [{
            "name": INPUT_NAME,
            "datatype": card.input_dtype,
            "shape": in_shape,
            "parameters": {
                "accepted_datatypes": ["FP32", "UINT8"],
                "input_range": card.input_range,
            },
        }],
        "outputs": outputs,
        "parameters": {"class_names": card.class_names},
    })
}

/// Error body `{"error": "..."}`.
pub fn error_body(message: &str) -> Value {
    json!({ "error": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_flat_nested_and_binary() {
        let b = br#"{"id":"r1","inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"outputs":[{"name":"label"}]}"#;
        let r = decode_infer(b, None).unwrap();
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.inputs[0].data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(r.outputs.unwrap()[0].name, "label");

        let header = br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"UINT8","parameters":{"binary_data_size":2}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[7, 255]);
        let r = decode_infer(&body, Some(header.len())).unwrap();
        assert_eq!(r.inputs[0].data, vec![7.0, 255.0]);
        assert_eq!(r.inputs[0].datatype, InputType::Uint8);
    }

    #[test]
    fn binary_outputs_follow_the_output_then_the_request() {
        let b = br#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[1]}],
            "parameters":{"binary_data_output":true},
            "outputs":[{"name":"label","parameters":{"binary_data":false}},{"name":"probabilities"}]}"#;
        let r = decode_infer(b, None).unwrap();
        assert!(!r.binary_output(OUTPUT_LABEL));
        assert!(r.binary_output(OUTPUT_PROBABILITIES));
        let b = br#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[1]}],
            "outputs":[{"name":"label","parameters":{"binary_data":true}}]}"#;
        let r = decode_infer(b, None).unwrap();
        assert!(r.binary_output(OUTPUT_LABEL));
        assert!(!r.binary_output(OUTPUT_PROBABILITIES));
    }

    #[test]
    fn structural_errors_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "malformed JSON"),
            (b"[]", "JSON object"),
            (b"{}", "missing `inputs`"),
            (
                br#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[NaN]}]}"#,
                "NaN",
            ),
            (
                br#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
                "only numbers",
            ),
        ];
        for (body, want) in cases {
            let e = decode_infer(body, None).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }
}
