//! `mamori export`: write a native model in another format (ONNX) (issue #2).

use crate::global::Global;
use anyhow::{bail, Context};
use mamori_core::{Model, Tensor};
use mamori_ml::onnx::card_path;
use mamori_ml::{export_onnx, NativeModel, OnnxModel};
use std::path::PathBuf;

/// Arguments of `mamori export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Export as ONNX (opset 13, dynamic batch); also writes the model card as `<out>.json`.
    #[arg(long)]
    onnx: bool,
    /// Native model directory (`model.json` + `model.safetensors`).
    #[arg(long)]
    model: PathBuf,
    /// Output file, e.g. `model.onnx`.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `mamori export`.
pub fn run(args: Args, _g: &Global) -> anyhow::Result<()> {
    if !args.onnx {
        bail!("choose an export format: --onnx");
    }
    let native = NativeModel::load(&args.model)
        .with_context(|| format!("loading the native model in {}", args.model.display()))?;
    export_onnx(&native, &args.out)
        .with_context(|| format!("exporting to {}", args.out.display()))?;

    // Check the file: tract must load it and agree with the native engine.
    let onnx = OnnxModel::load(&args.out).context("re-loading the exported file")?;
    let n = 16;
    let per: usize = native.card.input_shape.iter().product();
    let [lo, hi] = native.card.input_range;
    // Deterministic inputs spread over the valid range (a simple LCG; no need for a CSPRNG).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<f32> = (0..n * per)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect();
    let mut shape = vec![n];
    shape.extend(&native.card.input_shape);
    let x = Tensor::new(shape, data)?;
    let a = native.logits(&x)?;
    let b = onnx.logits(&x)?;
    let diff = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({size} bytes) and {}",
        args.out.display(),
        card_path(&args.out).display()
    );
    println!("check: ONNX (tract) vs native logits on {n} inputs: max |diff| = {diff:.2e}");
    if diff > 1e-4 {
        bail!("the exported model disagrees with the native one (max |diff| {diff:.2e} > 1e-4)");
    }
    Ok(())
}
