//! The CPU engine: shape planning, forward and backward passes for every [`LayerSpec`].
//!
//! Convolutions are lowered to matrix products (im2col, Chellapilla, Puri & Simard, "High
//! Performance Convolutional Neural Networks for Document Processing", 2006): the whole batch
//! is unfolded into one `[n·oh·ow, c·k·k]` matrix and multiplied by the weights in one GEMM
//! (`[oc, n·oh·ow]` output, so that moving to NCHW copies contiguous planes);
//! the backward pass uses the same unfolded matrix for the weight gradient and folds the
//! column gradient back (col2im). Unfolding, folding, pooling and layout permutations run in
//! parallel over the batch with rayon; the GEMMs are the `gemm` crate's, also on rayon.
//!
//! All buffers live in a [`Workspace`] that is reused across mini-batches, so the training
//! loop does not allocate once the first batch has sized it.

use crate::arch::{LayerParams, LayerSpec};
use crate::linalg::{matmul, Mat};
use rayon::prelude::*;

/// One layer with all shapes resolved.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Dense {
        inputs: usize,
        outputs: usize,
    },
    Conv {
        c: usize,
        h: usize,
        w: usize,
        oc: usize,
        k: usize,
        s: usize,
        p: usize,
        oh: usize,
        ow: usize,
    },
    Relu,
    Pool {
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        oh: usize,
        ow: usize,
    },
    Flatten,
    Binary,
}

/// A network's layers with resolved shapes.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    /// Values per input sample.
    pub in_len: usize,
    /// Values per sample after each layer.
    pub out_len: Vec<usize>,
    /// Number of output classes (values per sample after the last layer).
    pub classes: usize,
}

/// Resolves shapes through `layers` from one sample's `input_shape`; `Err` explains the first
/// layer that does not fit.
pub(crate) fn plan(input_shape: &[usize], layers: &[LayerSpec]) -> Result<Plan, String> {
    if input_shape.is_empty() || input_shape.contains(&0) {
        return Err(format!(
            "input shape {input_shape:?} must be non-empty with no zero dimension"
        ));
    }
    let mut shape = input_shape.to_vec();
    let mut ops = Vec::with_capacity(layers.len());
    let mut out_len = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let op = match *layer {
            LayerSpec::Dense { inputs, outputs } => {
                if shape != [inputs] {
                    return Err(format!(
                        "layer {i} (dense {inputs}→{outputs}) expects input [{inputs}], got {shape:?}"
                    ));
                }
                if outputs == 0 {
                    return Err(format!("layer {i} (dense) has zero outputs"));
                }
                shape = vec![outputs];
                Op::Dense { inputs, outputs }
            }
            LayerSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            } => {
                let [c, h, w] = shape[..] else {
                    return Err(format!(
                        "layer {i} (conv2d) expects a [c, h, w] input, got {shape:?}"
                    ));
                };
                if c != in_channels {
                    return Err(format!(
                        "layer {i} (conv2d) expects {in_channels} input channels, got {c}"
                    ));
                }
                if kernel == 0 || stride == 0 || out_channels == 0 {
                    return Err(format!(
                        "layer {i} (conv2d): kernel, stride and out_channels must be positive"
                    ));
                }
                if h + 2 * padding < kernel || w + 2 * padding < kernel {
                    return Err(format!(
                        "layer {i} (conv2d): kernel {kernel} larger than the padded input {h}x{w}"
                    ));
                }
                let oh = (h + 2 * padding - kernel) / stride + 1;
                let ow = (w + 2 * padding - kernel) / stride + 1;
                shape = vec![out_channels, oh, ow];
                Op::Conv {
                    c,
                    h,
                    w,
                    oc: out_channels,
                    k: kernel,
                    s: stride,
                    p: padding,
                    oh,
                    ow,
                }
            }
            LayerSpec::Relu => Op::Relu,
            LayerSpec::MaxPool2d { kernel, stride } => {
                let [_, h, w] = shape[..] else {
                    return Err(format!(
                        "layer {i} (max_pool2d) expects a [c, h, w] input, got {shape:?}"
                    ));
                };
                if kernel == 0 || stride == 0 {
                    return Err(format!(
                        "layer {i} (max_pool2d): kernel and stride must be positive"
                    ));
                }
                if h < kernel || w < kernel {
                    return Err(format!(
                        "layer {i} (max_pool2d): window {kernel} larger than the input {h}x{w}"
                    ));
                }
                let oh = (h - kernel) / stride + 1;
                let ow = (w - kernel) / stride + 1;
                shape = vec![shape[0], oh, ow];
                Op::Pool {
                    h,
                    w,
                    k: kernel,
                    s: stride,
                    oh,
                    ow,
                }
            }
            LayerSpec::Flatten => {
                shape = vec![shape.iter().product()];
                Op::Flatten
            }
            LayerSpec::BinaryHead => {
                if shape != [1] {
                    return Err(format!(
                        "layer {i} (binary_head) expects input [1], got {shape:?}"
                    ));
                }
                shape = vec![2];
                Op::Binary
            }
        };
        ops.push(op);
        out_len.push(shape.iter().product());
    }
    if shape.len() != 1 {
        return Err(format!(
            "the network must end in a flat [classes] output, it ends in {shape:?}"
        ));
    }
    Ok(Plan {
        ops,
        in_len: input_shape.iter().product(),
        out_len,
        classes: shape[0],
    })
}

/// Expected `(weight, bias)` lengths of layer `op`.
pub(crate) fn param_sizes(op: &Op) -> (usize, usize) {
    match *op {
        Op::Dense { inputs, outputs } => (inputs * outputs, outputs),
        Op::Conv { c, oc, k, .. } => (oc * c * k * k, oc),
        _ => (0, 0),
    }
}

/// Expected safetensors shapes `(weight, bias)` of a parametrised layer.
pub(crate) fn param_shapes(op: &Op) -> Option<(Vec<usize>, Vec<usize>)> {
    match *op {
        Op::Dense { inputs, outputs } => Some((vec![outputs, inputs], vec![outputs])),
        Op::Conv { c, oc, k, .. } => Some((vec![oc, c, k, k], vec![oc])),
        _ => None,
    }
}

/// Reusable buffers of one forward/backward pass.
#[derive(Default)]
pub(crate) struct Workspace {
    /// Output of each layer.
    acts: Vec<Vec<f32>>,
    /// im2col matrix of each convolution.
    cols: Vec<Vec<f32>>,
    /// Arg-max position (within its plane) of each pooling output.
    argmax: Vec<Vec<u32>>,
    /// GEMM output in `[n·p, oc]` layout before permutation.
    tmp: Vec<f32>,
    /// Column gradient of a convolution.
    dcols: Vec<f32>,
    /// Gradient ping-pong buffers.
    g0: Vec<f32>,
    g1: Vec<f32>,
    /// Batch size of the last forward pass.
    n: usize,
}

fn ensure<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() != len {
        v.resize(len, T::default());
    }
}

impl Workspace {
    /// The logits `[n, classes]` of the last forward pass.
    pub fn logits(&self) -> &[f32] {
        self.acts.last().map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// Runs the network on `x` (`n` samples of `plan.in_len` values), keeping every intermediate in
/// `ws` for a later [`backward`].
pub(crate) fn forward(
    plan: &Plan,
    params: &[LayerParams],
    x: &[f32],
    n: usize,
    ws: &mut Workspace,
) {
    debug_assert_eq!(x.len(), n * plan.in_len);
    let layers = plan.ops.len();
    ws.acts.resize_with(layers, Vec::new);
    ws.cols.resize_with(layers, Vec::new);
    ws.argmax.resize_with(layers, Vec::new);
    ws.n = n;
    for (i, op) in plan.ops.iter().enumerate() {
        let (prev, rest) = ws.acts.split_at_mut(i);
        let input: &[f32] = if i == 0 { x } else { &prev[i - 1] };
        let out = &mut rest[0];
        ensure(out, n * plan.out_len[i]);
        let prm = &params[i];
        match *op {
            Op::Dense { inputs, outputs } => {
                for row in out.chunks_exact_mut(outputs) {
                    row.copy_from_slice(&prm.bias);
                }
                matmul(
                    out,
                    Mat::rm(input, n, inputs),
                    Mat::rm_t(&prm.weight, outputs, inputs),
                    true,
                );
            }
            Op::Conv {
                c,
                h,
                w,
                oc,
                k,
                s,
                p,
                oh,
                ow,
            } => {
                let pp = oh * ow;
                let kk = c * k * k;
                let cols = &mut ws.cols[i];
                ensure(cols, n * pp * kk);
                cols.par_chunks_mut(pp * kk)
                    .zip(input.par_chunks(c * h * w))
                    .for_each(|(col, img)| im2col(img, col, c, h, w, k, s, p, oh, ow));
                // [oc, n·p] = W [oc, kk] · colsᵀ [kk, n·p]
                ensure(&mut ws.tmp, n * pp * oc);
                matmul(
                    &mut ws.tmp,
                    Mat::rm(&prm.weight, oc, kk),
                    Mat::rm_t(cols, n * pp, kk),
                    false,
                );
                let tmp = &ws.tmp;
                let bias = &prm.bias;
                out.par_chunks_mut(oc * pp).enumerate().for_each(|(b, o)| {
                    for (ch, plane) in o.chunks_exact_mut(pp).enumerate() {
                        let src = &tmp[ch * n * pp + b * pp..][..pp];
                        let bv = bias[ch];
                        for (v, &t) in plane.iter_mut().zip(src) {
                            *v = t + bv;
                        }
                    }
                });
            }
            Op::Relu => {
                out.par_chunks_mut(4096)
                    .zip(input.par_chunks(4096))
                    .for_each(|(o, i)| {
                        for (a, &b) in o.iter_mut().zip(i) {
                            *a = b.max(0.0);
                        }
                    });
            }
            Op::Pool { h, w, k, s, oh, ow } => {
                let am = &mut ws.argmax[i];
                ensure(am, out.len());
                out.par_chunks_mut(oh * ow)
                    .zip(am.par_chunks_mut(oh * ow))
                    .zip(input.par_chunks(h * w))
                    .for_each(|((o, a), plane)| {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut best = f32::NEG_INFINITY;
                                let mut at = (oy * s) * w + ox * s;
                                for ky in 0..k {
                                    let base = (oy * s + ky) * w + ox * s;
                                    for kx in 0..k {
                                        let v = plane[base + kx];
                                        if v > best {
                                            best = v;
                                            at = base + kx;
                                        }
                                    }
                                }
                                o[oy * ow + ox] = plane[at];
                                a[oy * ow + ox] = at as u32;
                            }
                        }
                    });
            }
            Op::Flatten => out.copy_from_slice(input),
            Op::Binary => {
                for (o, &z) in out.chunks_exact_mut(2).zip(input) {
                    o[0] = 0.0;
                    o[1] = z;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn im2col(
    img: &[f32],
    col: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
) {
    let kk = c * k * k;
    if p == 0 {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut col[(oy * ow + ox) * kk..][..kk];
                for ci in 0..c {
                    for ky in 0..k {
                        let src = &img[(ci * h + oy * s + ky) * w + ox * s..][..k];
                        row[(ci * k + ky) * k..][..k].copy_from_slice(src);
                    }
                }
            }
        }
        return;
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut col[(oy * ow + ox) * kk..][..kk];
            let mut idx = 0;
            for ci in 0..c {
                let plane = &img[ci * h * w..][..h * w];
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        row[idx..idx + k].fill(0.0);
                        idx += k;
                        continue;
                    }
                    let line = &plane[iy as usize * w..][..w];
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - p as isize;
                        row[idx] = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            line[ix as usize]
                        };
                        idx += 1;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn col2im(
    col: &[f32],
    img: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
) {
    img.fill(0.0);
    let kk = c * k * k;
    if p == 0 {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &col[(oy * ow + ox) * kk..][..kk];
                for ci in 0..c {
                    for ky in 0..k {
                        let dst = &mut img[(ci * h + oy * s + ky) * w + ox * s..][..k];
                        for (d, &v) in dst.iter_mut().zip(&row[(ci * k + ky) * k..][..k]) {
                            *d += v;
                        }
                    }
                }
            }
        }
        return;
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &col[(oy * ow + ox) * kk..][..kk];
            let mut idx = 0;
            for ci in 0..c {
                let plane = &mut img[ci * h * w..][..h * w];
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        idx += k;
                        continue;
                    }
                    let line = &mut plane[iy as usize * w..][..w];
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - p as isize;
                        if ix >= 0 && ix < w as isize {
                            line[ix as usize] += row[idx];
                        }
                        idx += 1;
                    }
                }
            }
        }
    }
}

/// Back-propagates `dlogits` (`[n, classes]`, gradient of the objective w.r.t. the logits of
/// the last [`forward`] on `x`). Writes parameter gradients into `grads` when given, and
/// returns the gradient w.r.t. `x` when `want_input` (otherwise an empty vector).
pub(crate) fn backward(
    plan: &Plan,
    params: &[LayerParams],
    x: &[f32],
    ws: &mut Workspace,
    dlogits: &[f32],
    mut grads: Option<&mut [LayerParams]>,
    want_input: bool,
) -> Vec<f32> {
    let n = ws.n;
    debug_assert_eq!(dlogits.len(), n * plan.classes);
    let mut g = std::mem::take(&mut ws.g0);
    let mut gx = std::mem::take(&mut ws.g1);
    g.clear();
    g.extend_from_slice(dlogits);
    for i in (0..plan.ops.len()).rev() {
        let op = &plan.ops[i];
        let input: &[f32] = if i == 0 { x } else { &ws.acts[i - 1] };
        let in_len = if i == 0 {
            plan.in_len
        } else {
            plan.out_len[i - 1]
        };
        let need_dx = i > 0 || want_input;
        let has_params = matches!(op, Op::Dense { .. } | Op::Conv { .. });
        if !(need_dx || has_params && grads.is_some()) {
            break;
        }
        if need_dx {
            ensure(&mut gx, n * in_len);
        }
        let prm = &params[i];
        match *op {
            Op::Dense { inputs, outputs } => {
                if let Some(gr) = grads.as_deref_mut() {
                    let gp = &mut gr[i];
                    ensure(&mut gp.weight, outputs * inputs);
                    ensure(&mut gp.bias, outputs);
                    matmul(
                        &mut gp.weight,
                        Mat::rm_t(&g, n, outputs),
                        Mat::rm(input, n, inputs),
                        false,
                    );
                    gp.bias.fill(0.0);
                    for row in g.chunks_exact(outputs) {
                        for (b, &d) in gp.bias.iter_mut().zip(row) {
                            *b += d;
                        }
                    }
                }
                if need_dx {
                    matmul(
                        &mut gx,
                        Mat::rm(&g, n, outputs),
                        Mat::rm(&prm.weight, outputs, inputs),
                        false,
                    );
                }
            }
            Op::Conv {
                c,
                h,
                w,
                oc,
                k,
                s,
                p,
                oh,
                ow,
            } => {
                let pp = oh * ow;
                let kk = c * k * k;
                // dY from NCHW to [oc, n·p] (contiguous blocks of p values).
                ensure(&mut ws.tmp, n * pp * oc);
                ws.tmp
                    .par_chunks_mut(n * pp)
                    .enumerate()
                    .for_each(|(ch, row)| {
                        for (b, dst) in row.chunks_exact_mut(pp).enumerate() {
                            dst.copy_from_slice(&g[(b * oc + ch) * pp..][..pp]);
                        }
                    });
                if let Some(gr) = grads.as_deref_mut() {
                    let gp = &mut gr[i];
                    ensure(&mut gp.weight, oc * kk);
                    ensure(&mut gp.bias, oc);
                    // dW [oc, kk] = dY [oc, n·p] · cols [n·p, kk]
                    matmul(
                        &mut gp.weight,
                        Mat::rm(&ws.tmp, oc, n * pp),
                        Mat::rm(&ws.cols[i], n * pp, kk),
                        false,
                    );
                    for (b, row) in gp.bias.iter_mut().zip(ws.tmp.chunks_exact(n * pp)) {
                        *b = row.iter().sum();
                    }
                }
                if need_dx {
                    ensure(&mut ws.dcols, n * pp * kk);
                    // dcols [n·p, kk] = dYᵀ [n·p, oc] · W [oc, kk]
                    matmul(
                        &mut ws.dcols,
                        Mat::rm_t(&ws.tmp, oc, n * pp),
                        Mat::rm(&prm.weight, oc, kk),
                        false,
                    );
                    gx.par_chunks_mut(c * h * w)
                        .zip(ws.dcols.par_chunks(pp * kk))
                        .for_each(|(img, col)| col2im(col, img, c, h, w, k, s, p, oh, ow));
                }
            }
            Op::Relu => {
                let out = &ws.acts[i];
                gx.par_chunks_mut(4096)
                    .zip(g.par_chunks(4096))
                    .zip(out.par_chunks(4096))
                    .for_each(|((dx, dy), o)| {
                        for ((a, &b), &y) in dx.iter_mut().zip(dy).zip(o) {
                            *a = if y > 0.0 { b } else { 0.0 };
                        }
                    });
            }
            Op::Pool { h, w, oh, ow, .. } => {
                let am = &ws.argmax[i];
                gx.par_chunks_mut(h * w)
                    .zip(g.par_chunks(oh * ow))
                    .zip(am.par_chunks(oh * ow))
                    .for_each(|((dx, dy), a)| {
                        dx.fill(0.0);
                        for (&d, &at) in dy.iter().zip(a) {
                            dx[at as usize] += d;
                        }
                    });
            }
            Op::Flatten => gx.copy_from_slice(&g),
            Op::Binary => {
                for (dx, dy) in gx.iter_mut().zip(g.chunks_exact(2)) {
                    *dx = dy[1];
                }
            }
        }
        if !need_dx {
            break;
        }
        std::mem::swap(&mut g, &mut gx);
    }
    let result = if want_input { g.clone() } else { Vec::new() };
    ws.g0 = g;
    ws.g1 = gx;
    result
}
