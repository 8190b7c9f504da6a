//! A one-hidden-layer ReLU MLP trained by minibatch SGD, implementing `mamori_core::Model`
//! with exact input gradients. Used by the acceptance example while `mamori-ml`'s engine is
//! being written (the example switches to `mamori_ml` once it lands).

#![allow(dead_code, clippy::needless_range_loop)]

use mamori_core::{GradTarget, Model, ModelCard, ModelError, Normalisation, Tensor};
use rand::{Rng, SeedableRng};

/// 784-h-10 ReLU network.
pub struct Mlp {
    card: ModelCard,
    d: usize,
    h: usize,
    c: usize,
    w1: Vec<f32>, // [h, d]
    b1: Vec<f32>,
    w2: Vec<f32>, // [c, h]
    b2: Vec<f32>,
}

impl Mlp {
    fn new(name: &str, d: usize, h: usize, c: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let s1 = (2.0 / d as f32).sqrt();
        let s2 = (2.0 / h as f32).sqrt();
        let card = ModelCard {
            name: name.into(),
            architecture: "mlp".into(),
            architecture_detail: serde_json::Value::Null,
            input_shape: vec![1, 28, 28],
            input_dtype: "FP32".into(),
            input_range: [0.0, 1.0],
            normalisation: Normalisation::default(),
            class_names: (0..c).map(|i| i.to_string()).collect(),
            output_kind: Default::default(),
            dataset: Default::default(),
            test_accuracy: None,
            training_time_s: None,
            seed: Some(seed),
            extra: Default::default(),
        };
        Self {
            card,
            d,
            h,
            c,
            w1: (0..h * d)
                .map(|_| (rng.gen::<f32>() - 0.5) * 2.0 * s1)
                .collect(),
            b1: vec![0.0; h],
            w2: (0..c * h)
                .map(|_| (rng.gen::<f32>() - 0.5) * 2.0 * s2)
                .collect(),
            b2: vec![0.0; c],
        }
    }

    fn hidden(&self, x: &[f32], out: &mut [f32]) {
        for j in 0..self.h {
            let w = &self.w1[j * self.d..(j + 1) * self.d];
            let z: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + self.b1[j];
            out[j] = z.max(0.0);
        }
    }

    fn logits_one(&self, hid: &[f32], out: &mut [f32]) {
        for k in 0..self.c {
            let w = &self.w2[k * self.h..(k + 1) * self.h];
            out[k] = w.iter().zip(hid).map(|(a, b)| a * b).sum::<f32>() + self.b2[k];
        }
    }

    /// Trains on `x` (`n × d`) / `y` with minibatch SGD + momentum.
    pub fn train(name: &str, x: &[f32], y: &[usize], h: usize, epochs: usize, seed: u64) -> Self {
        let d = x.len() / y.len();
        let c = y.iter().max().map_or(1, |m| m + 1);
        let mut m = Self::new(name, d, h, c, seed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
        let mut order: Vec<usize> = (0..y.len()).collect();
        let (lr, mom, bs) = (0.05f32, 0.9f32, 32usize);
        let mut v1 = vec![0.0f32; m.w1.len()];
        let mut vb1 = vec![0.0f32; h];
        let mut v2 = vec![0.0f32; m.w2.len()];
        let mut vb2 = vec![0.0f32; c];
        let (mut hid, mut lg, mut dh) = (vec![0.0; h], vec![0.0; c], vec![0.0; h]);
        for _ in 0..epochs {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rng);
            for batch in order.chunks(bs) {
                let mut g1 = vec![0.0f32; m.w1.len()];
                let mut gb1 = vec![0.0f32; h];
                let mut g2 = vec![0.0f32; m.w2.len()];
                let mut gb2 = vec![0.0f32; c];
                for &i in batch {
                    let xi = &x[i * d..(i + 1) * d];
                    m.hidden(xi, &mut hid);
                    m.logits_one(&hid, &mut lg);
                    let mx = lg.iter().copied().fold(f32::MIN, f32::max);
                    let s: f32 = lg.iter().map(|v| (v - mx).exp()).sum();
                    for k in 0..c {
                        let p = (lg[k] - mx).exp() / s;
                        let g = p - if k == y[i] { 1.0 } else { 0.0 };
                        gb2[k] += g;
                        for j in 0..h {
                            g2[k * h + j] += g * hid[j];
                        }
                        lg[k] = g;
                    }
                    for j in 0..h {
                        let mut s = 0.0;
                        for k in 0..c {
                            s += lg[k] * m.w2[k * h + j];
                        }
                        dh[j] = if hid[j] > 0.0 { s } else { 0.0 };
                    }
                    for j in 0..h {
                        if dh[j] == 0.0 {
                            continue;
                        }
                        gb1[j] += dh[j];
                        let row = &mut g1[j * d..(j + 1) * d];
                        for (g, xv) in row.iter_mut().zip(xi) {
                            *g += dh[j] * xv;
                        }
                    }
                }
                let scale = lr / batch.len() as f32;
                for (p, (v, g)) in m.w1.iter_mut().zip(v1.iter_mut().zip(&g1)) {
                    *v = mom * *v - scale * g;
                    *p += *v;
                }
                for (p, (v, g)) in m.b1.iter_mut().zip(vb1.iter_mut().zip(&gb1)) {
                    *v = mom * *v - scale * g;
                    *p += *v;
                }
                for (p, (v, g)) in m.w2.iter_mut().zip(v2.iter_mut().zip(&g2)) {
                    *v = mom * *v - scale * g;
                    *p += *v;
                }
                for (p, (v, g)) in m.b2.iter_mut().zip(vb2.iter_mut().zip(&gb2)) {
                    *v = mom * *v - scale * g;
                    *p += *v;
                }
            }
        }
        m
    }
}

impl Model for Mlp {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let n = x.batch_size();
        let mut out = vec![0.0f32; n * self.c];
        let mut hid = vec![0.0f32; self.h];
        for i in 0..n {
            self.hidden(x.row(i), &mut hid);
            self.logits_one(&hid, &mut out[i * self.c..(i + 1) * self.c]);
        }
        Ok(Tensor::new(vec![n, self.c], out).expect("shape"))
    }

    fn input_gradient(&self, x: &Tensor, target: &GradTarget) -> Result<Tensor, ModelError> {
        let GradTarget::Logit(classes) = target else {
            return Err(ModelError::GradientUnsupported);
        };
        let n = x.batch_size();
        let mut out = vec![0.0f32; n * self.d];
        let mut hid = vec![0.0f32; self.h];
        for i in 0..n {
            self.hidden(x.row(i), &mut hid);
            let k = classes[i];
            for j in 0..self.h {
                if hid[j] > 0.0 {
                    let g = self.w2[k * self.h + j];
                    let w = &self.w1[j * self.d..(j + 1) * self.d];
                    for (o, wv) in out[i * self.d..(i + 1) * self.d].iter_mut().zip(w) {
                        *o += g * wv;
                    }
                }
            }
        }
        Ok(Tensor::new(x.shape().to_vec(), out).expect("shape"))
    }
}
