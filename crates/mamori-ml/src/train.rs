//! Mini-batch training with Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization",
//! ICLR 2015) on softmax cross-entropy, against hard labels or soft targets.

use crate::api::{MlError, Plateau, SoftLoss, Targets, TrainConfig, TrainReport};
use crate::arch::{LayerParams, Network};
use crate::engine::{self, Workspace};
use crate::loss::{logit_mse_soft, prob_mse_soft, xent_labels, xent_soft};
use indicatif::{ProgressBar, ProgressStyle};
use mamori_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Adam state for every parameter of a network.
struct Adam {
    m: Vec<LayerParams>,
    v: Vec<LayerParams>,
    t: i32,
    lr: f32,
    wd: f32,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

impl Adam {
    fn new(params: &[LayerParams], lr: f32, wd: f32) -> Self {
        let zeros: Vec<LayerParams> = params
            .iter()
            .map(|p| LayerParams {
                weight: vec![0.0; p.weight.len()],
                bias: vec![0.0; p.bias.len()],
            })
            .collect();
        Self {
            m: zeros.clone(),
            v: zeros,
            t: 0,
            lr,
            wd,
        }
    }

    /// One step. Weight decay is an L2 penalty `wd/2 · ‖w‖²` on weights (not biases), added to
    /// the gradient before the moment estimates.
    fn step(&mut self, params: &mut [LayerParams], grads: &[LayerParams]) {
        self.t += 1;
        let c1 = 1.0 - BETA1.powi(self.t);
        let c2 = 1.0 - BETA2.powi(self.t);
        let step = self.lr * c2.sqrt() / c1;
        let eps = EPS * c2.sqrt();
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            update(
                &mut p.weight,
                &g.weight,
                &mut m.weight,
                &mut v.weight,
                self.wd,
                step,
                eps,
            );
            update(
                &mut p.bias,
                &g.bias,
                &mut m.bias,
                &mut v.bias,
                0.0,
                step,
                eps,
            );
        }
    }
}

fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], wd: f32, step: f32, eps: f32) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g + wd * *p;
        *m = BETA1 * *m + (1.0 - BETA1) * g;
        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
        *p -= step * *m / (v.sqrt() + eps);
    }
}

fn check(net: &Network, x: &Tensor, y: &Targets, cfg: &TrainConfig) -> Result<usize, MlError> {
    let bad = |m: String| Err(MlError::Training(m));
    if cfg.batch_size == 0 {
        return bad("batch size must be positive".into());
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return bad(format!(
            "learning rate must be positive, got {}",
            cfg.learning_rate
        ));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return bad(format!(
            "weight decay must be ≥ 0, got {}",
            cfg.weight_decay
        ));
    }
    if x.sample_shape() != net.input_shape.as_slice() {
        return bad(format!(
            "inputs have sample shape {:?}, the network takes {:?}",
            x.sample_shape(),
            net.input_shape
        ));
    }
    let plan = net.plan().map_err(MlError::Training)?;
    let n = x.batch_size();
    if n == 0 {
        return bad("no training samples".into());
    }
    if let Some(i) = x.data().iter().position(|v| !v.is_finite()) {
        return bad(format!("input value {i} is not finite"));
    }
    match y {
        Targets::Labels(l) => {
            if l.len() != n {
                return bad(format!("{} labels for {n} samples", l.len()));
            }
            if let Some((i, &c)) = l.iter().enumerate().find(|(_, &c)| c >= plan.classes) {
                return bad(format!(
                    "label {c} of sample {i} out of range for {} classes",
                    plan.classes
                ));
            }
        }
        Targets::Soft(t) => {
            if t.shape() != [n, plan.classes] {
                return bad(format!(
                    "soft targets have shape {:?}, expected [{n}, {}]",
                    t.shape(),
                    plan.classes
                ));
            }
            if let Some(i) = t.data().iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(format!("soft target value {i} is negative or not finite"));
            }
        }
    }
    Ok(n)
}

pub(crate) fn train(
    net: &mut Network,
    x: &Tensor,
    y: &Targets,
    cfg: &TrainConfig,
    soft_loss: SoftLoss,
    stop: Option<&Plateau>,
) -> Result<TrainReport, MlError> {
    let soft_fn = match soft_loss {
        SoftLoss::CrossEntropy => xent_soft,
        SoftLoss::LogitMse => logit_mse_soft,
        SoftLoss::ProbabilityMse => prob_mse_soft,
    };
    let n = check(net, x, y, cfg)?;
    let plan = net.plan().map_err(MlError::Training)?;
    let start = Instant::now();
    let (d, classes) = (plan.in_len, plan.classes);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut ws = Workspace::default();
    let mut grads: Vec<LayerParams> = vec![LayerParams::default(); net.params.len()];
    let mut adam = Adam::new(&net.params, cfg.learning_rate, cfg.weight_decay);
    let bs = cfg.batch_size.min(n);
    let mut xb = vec![0.0f32; bs * d];
    let mut yb: Vec<usize> = Vec::with_capacity(bs);
    let mut tb = vec![0.0f32; bs * classes];
    let mut dlogits = vec![0.0f32; bs * classes];
    let bar = if cfg.progress {
        let b = ProgressBar::new((cfg.epochs * n) as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} samples, ETA {eta} — {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut report = TrainReport::default();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (bi, idx) in order.chunks(bs).enumerate() {
            let m = idx.len();
            for (dst, &i) in xb.chunks_exact_mut(d).zip(idx) {
                dst.copy_from_slice(x.row(i));
            }
            let xb = &xb[..m * d];
            engine::forward(&plan, &net.params, xb, m, &mut ws);
            let scale = 1.0 / m as f32;
            let dl = &mut dlogits[..m * classes];
            let (l, c) = match y {
                Targets::Labels(labels) => {
                    yb.clear();
                    yb.extend(idx.iter().map(|&i| labels[i]));
                    xent_labels(ws.logits(), &yb, classes, scale, dl)
                }
                Targets::Soft(t) => {
                    for (dst, &i) in tb.chunks_exact_mut(classes).zip(idx) {
                        dst.copy_from_slice(t.row(i));
                    }
                    soft_fn(ws.logits(), &tb[..m * classes], classes, scale, dl)
                }
            };
            loss_sum += l;
            correct += c;
            engine::backward(&plan, &net.params, xb, &mut ws, dl, Some(&mut grads), false);
            adam.step(&mut net.params, &grads);
            bar.inc(m as u64);
            if bi % 20 == 0 {
                let seen = (bi * bs + m) as f64;
                bar.set_message(format!(
                    "epoch {}/{} loss {:.4} acc {:.4}",
                    epoch + 1,
                    cfg.epochs,
                    loss_sum / seen,
                    correct as f64 / seen
                ));
            }
        }
        if !loss_sum.is_finite() {
            bar.abandon();
            return Err(MlError::Training(format!(
                "loss diverged (non-finite) in epoch {}; lower the learning rate",
                epoch + 1
            )));
        }
        report.epoch_loss.push((loss_sum / n as f64) as f32);
        report
            .epoch_accuracy
            .push((correct as f64 / n as f64) as f32);
        bar.set_message(format!(
            "epoch {}/{} loss {:.4} acc {:.4}",
            epoch + 1,
            cfg.epochs,
            loss_sum / n as f64,
            correct as f64 / n as f64
        ));
        if stop.is_some_and(|p| p.reached(&report.epoch_accuracy)) {
            break;
        }
    }
    bar.finish();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Mean softmax cross-entropy of `net` on `(x, y)` and its gradient w.r.t. every parameter.
pub(crate) fn loss_and_gradients(
    net: &Network,
    x: &Tensor,
    y: &Targets,
) -> Result<(f64, Vec<LayerParams>), MlError> {
    let n = check(net, x, y, &TrainConfig::default())?;
    let plan = net.plan().map_err(MlError::Training)?;
    let mut ws = Workspace::default();
    engine::forward(&plan, &net.params, x.data(), n, &mut ws);
    let mut dl = vec![0.0f32; n * plan.classes];
    let scale = 1.0 / n as f32;
    let (loss, _) = match y {
        Targets::Labels(l) => xent_labels(ws.logits(), l, plan.classes, scale, &mut dl),
        Targets::Soft(t) => xent_soft(ws.logits(), t.data(), plan.classes, scale, &mut dl),
    };
    let mut grads = vec![LayerParams::default(); net.params.len()];
    engine::backward(
        &plan,
        &net.params,
        x.data(),
        &mut ws,
        &dl,
        Some(&mut grads),
        false,
    );
    Ok((loss / n as f64, grads))
}
