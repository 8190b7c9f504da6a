//! Loading any model file mamori knows (native directory or ONNX file).

use crate::api::{MlError, NativeModel};
use crate::onnx::OnnxModel;
use mamori_core::Model;
use std::path::Path;

/// Loads any model file mamori knows:
/// - a directory holding `model.json` (and `model.safetensors`): a native model;
/// - a `model.json` file: the native model in its directory;
/// - an `.onnx` file (with its optional card `<file>.json`): an ONNX model run by tract.
pub fn load_model(path: &Path) -> Result<Box<dyn Model>, MlError> {
    let file_err = |message: String| MlError::File {
        path: path.display().to_string(),
        message,
    };
    if path.is_dir() {
        if path.join("model.json").is_file() {
            return Ok(Box::new(NativeModel::load(path)?));
        }
        let onnx: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| file_err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_onnx(p))
            .collect();
        return match onnx.as_slice() {
            [one] => Ok(Box::new(OnnxModel::load(one)?)),
            [] => Err(file_err(
                "not a model directory: no model.json (native model) and no .onnx file".into(),
            )),
            _ => Err(file_err(format!(
                "{} .onnx files here; name the one to load",
                onnx.len()
            ))),
        };
    }
    if !path.exists() {
        return Err(file_err("no such file or directory".into()));
    }
    if is_onnx(path) {
        return Ok(Box::new(OnnxModel::load(path)?));
    }
    if path.file_name().is_some_and(|n| n == "model.json") {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok(Box::new(NativeModel::load(dir)?));
    }
    Err(file_err(
        "unrecognised model: expected a native model directory (model.json + model.safetensors) \
         or an .onnx file"
            .into(),
    ))
}

fn is_onnx(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}
