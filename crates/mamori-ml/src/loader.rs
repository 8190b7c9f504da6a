//! Loading any model file mamori knows (native directory or ONNX file).

use crate::api::MlError;
use mamori_core::Model;
use std::path::Path;

/// Loads any model file mamori knows: a native model directory or an `.onnx` file.
pub fn load_model(path: &Path) -> Result<Box<dyn Model>, MlError> {
    let _ = path;
    unimplemented!("mamori-ml: load_model (native + ONNX) in progress")
}
