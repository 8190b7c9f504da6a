//! Input validation against the model card: nothing reaches a model unvalidated.
//!
//! Checks, each with its own error message: input count and name, datatype, rank and per-sample
//! shape, batch size (zero or over the limit), value range for FP32 (after the card's
//! `input_range`), byte range and integrality for UINT8, finiteness (NaN/Inf), and the requested
//! outputs.

use crate::error::GatewayError;
use crate::oip::{InferBody, InputType, INPUT_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES};
use mamori_core::{ModelCard, Tensor};

/// Which outputs a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSelection {
    /// `probabilities` requested.
    pub probabilities: bool,
    /// `label` requested.
    pub label: bool,
}

impl OutputSelection {
    /// Both outputs.
    pub const ALL: OutputSelection = OutputSelection {
        probabilities: true,
        label: true,
    };
    /// Neither output.
    pub const NONE: OutputSelection = OutputSelection {
        probabilities: false,
        label: false,
    };
}

fn bad(msg: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest(msg.into())
}

/// Validates a decoded request against `card`; returns the normalised batch and the outputs.
pub fn validate_body(
    body: &InferBody,
    card: &ModelCard,
    max_batch: usize,
) -> Result<(Tensor, OutputSelection), GatewayError> {
    if body.inputs.len() != 1 {
        return Err(bad(format!(
            "model {:?} takes exactly one input tensor ({INPUT_NAME:?}), got {}",
            card.name,
            body.inputs.len()
        )));
    }
    let inp = &body.inputs[0];
    if inp.name != INPUT_NAME {
        return Err(bad(format!(
            "unknown input {:?}: model {:?} takes one input named {INPUT_NAME:?}",
            inp.name, card.name
        )));
    }
    let per = card.input_len();
    let sample_ok = inp.shape.len() >= 2
        && (inp.shape[1..] == card.input_shape[..]
            || (inp.shape.len() == 2 && inp.shape[1] == per));
    if !sample_ok {
        let mut want = vec!["n".to_string()];
        want.extend(card.input_shape.iter().map(|d| d.to_string()));
        return Err(bad(format!(
            "input {:?}: shape {:?} does not match the model's [{}] (or [n, {per}])",
            inp.name,
            inp.shape,
            want.join(", ")
        )));
    }
    let n = inp.shape[0];
    check_batch(n, max_batch)?;
    let mut data = Vec::with_capacity(inp.data.len());
    match inp.datatype {
        InputType::Fp32 => {
            let [lo, hi] = card.input_range;
            for (i, &v) in inp.data.iter().enumerate() {
                let f = v as f32;
                if !f.is_finite() {
                    return Err(bad(format!(
                        "input {:?}: value {v} at index {i} is not a finite FP32 number",
                        inp.name
                    )));
                }
                if f < lo || f > hi {
                    return Err(bad(format!(
                        "input {:?}: value {v} at index {i} is outside the model's input range [{lo}, {hi}]",
                        inp.name
                    )));
                }
                data.push(f);
            }
        }
        InputType::Uint8 => {
            for (i, &v) in inp.data.iter().enumerate() {
                if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                    return Err(bad(format!(
                        "input {:?}: value {v} at index {i} is not a UINT8 (an integer in 0..=255)",
                        inp.name
                    )));
                }
                data.push(card.normalisation.apply(v as f32));
            }
        }
    }
    let mut shape = vec![n];
    shape.extend_from_slice(&card.input_shape);
    let tensor = Tensor::new(shape, data).map_err(|e| bad(e.to_string()))?;
    let outputs = select_outputs(body)?;
    Ok((tensor, outputs))
}

/// Checks the batch size.
pub fn check_batch(n: usize, max_batch: usize) -> Result<(), GatewayError> {
    if n == 0 {
        return Err(bad("batch size is 0: send at least one sample"));
    }
    if n > max_batch {
        return Err(bad(format!(
            "batch size {n} exceeds the limit of {max_batch} samples per request"
        )));
    }
    Ok(())
}

/// Validates an in-process tensor (the evaluation path) against `card`.
pub fn validate_tensor(x: &Tensor, card: &ModelCard, max_batch: usize) -> Result<(), GatewayError> {
    if x.sample_shape() != card.input_shape.as_slice() {
        return Err(bad(format!(
            "input shape {:?} does not match the model's per-sample shape {:?}",
            x.sample_shape(),
            card.input_shape
        )));
    }
    check_batch(x.batch_size(), max_batch)?;
    let [lo, hi] = card.input_range;
    for (i, &v) in x.data().iter().enumerate() {
        if !v.is_finite() {
            return Err(bad(format!("input value at index {i} is not finite ({v})")));
        }
        if v < lo || v > hi {
            return Err(bad(format!(
                "input value {v} at index {i} is outside the model's input range [{lo}, {hi}]"
            )));
        }
    }
    Ok(())
}

fn select_outputs(body: &InferBody) -> Result<OutputSelection, GatewayError> {
    let Some(outs) = &body.outputs else {
        return Ok(OutputSelection::ALL);
    };
    if outs.is_empty() {
        return Ok(OutputSelection::ALL);
    }
    let mut sel = OutputSelection::NONE;
    for o in outs {
        match o.name.as_str() {
            OUTPUT_PROBABILITIES => sel.probabilities = true,
            OUTPUT_LABEL => sel.label = true,
            other => {
                return Err(bad(format!(
                    "unknown output {other:?}: this model has outputs {OUTPUT_PROBABILITIES:?} and {OUTPUT_LABEL:?}"
                )))
            }
        }
    }
    Ok(sel)
}
