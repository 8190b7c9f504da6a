//! A minimal row-major `f32` tensor used at crate boundaries.
//!
//! Heavy numerical work happens inside `mamori-ml`; this type only carries data between
//! crates (datasets, models, oracles, the gateway) with its shape.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// Row-major `f32` tensor. The first dimension is the batch dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that `data.len()` equals the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, CoreError> {
        let expected: usize = shape.iter().product();
        if shape.is_empty() {
            return Err(CoreError::NoBatchDim);
        }
        if expected != data.len() {
            return Err(CoreError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Stacks equally long samples into a batch of shape `[rows, sample_shape...]`.
    pub fn from_rows<'a, I>(sample_shape: &[usize], rows: I) -> Result<Self, CoreError>
    where
        I: IntoIterator<Item = &'a [f32]>,
    {
        let per: usize = sample_shape.iter().product();
        let mut data = Vec::new();
        let mut n = 0usize;
        for r in rows {
            if r.len() != per {
                let mut shape = vec![n + 1];
                shape.extend_from_slice(sample_shape);
                return Err(CoreError::ShapeMismatch {
                    shape,
                    expected: per,
                    got: r.len(),
                });
            }
            data.extend_from_slice(r);
            n += 1;
        }
        let mut shape = vec![n];
        shape.extend_from_slice(sample_shape);
        Ok(Self { shape, data })
    }

    /// The full shape, batch dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The shape of one sample (the shape without its first dimension).
    pub fn sample_shape(&self) -> &[usize] {
        &self.shape[1..]
    }

    /// Number of samples (first dimension).
    pub fn batch_size(&self) -> usize {
        self.shape[0]
    }

    /// Number of values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// All values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// All values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning its values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Sample `i` as a flat slice. Panics if `i` is out of range (a programming error).
    pub fn row(&self, i: usize) -> &[f32] {
        let per = self.sample_len();
        &self.data[i * per..(i + 1) * per]
    }

    /// Sample `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let per = self.sample_len();
        &mut self.data[i * per..(i + 1) * per]
    }

    /// Iterates over samples as flat slices.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        let per = self.sample_len().max(1);
        self.data.chunks(per)
    }

    /// Copies the samples at `indices` into a new batch.
    pub fn select(&self, indices: &[usize]) -> Tensor {
        let per = self.sample_len();
        let mut data = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        let mut shape = self.shape.clone();
        shape[0] = indices.len();
        Tensor { shape, data }
    }

    /// Samples `start..end` as a new batch.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let per = self.sample_len();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Tensor {
            shape,
            data: self.data[start * per..end * per].to_vec(),
        }
    }

    /// Same data, new shape (the product must match).
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, CoreError> {
        Tensor::new(shape, self.data)
    }

    /// Index of the largest value of each row (first index wins ties).
    pub fn argmax_rows(&self) -> Vec<usize> {
        self.rows()
            .map(|r| {
                let mut best = 0;
                for (i, v) in r.iter().enumerate() {
                    if *v > r[best] {
                        best = i;
                    }
                }
                best
            })
            .collect()
    }

    /// Concatenates batches with the same sample shape.
    pub fn concat(parts: &[Tensor]) -> Result<Tensor, CoreError> {
        let first = parts.first().ok_or(CoreError::NoBatchDim)?;
        let sample = first.sample_shape().to_vec();
        let mut data = Vec::new();
        let mut n = 0;
        for p in parts {
            if p.sample_shape() != sample.as_slice() {
                return Err(CoreError::ShapeMismatch {
                    shape: p.shape.clone(),
                    expected: sample.iter().product(),
                    got: p.sample_len(),
                });
            }
            data.extend_from_slice(&p.data);
            n += p.batch_size();
        }
        let mut shape = vec![n];
        shape.extend(sample);
        Ok(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::new(vec![], vec![]).is_err());
        let t = Tensor::new(vec![2, 3], (0..6).map(|v| v as f32).collect()).unwrap();
        assert_eq!(t.row(1), &[3.0, 4.0, 5.0]);
        assert_eq!(t.sample_shape(), &[3]);
    }

    #[test]
    fn argmax_select_concat() {
        let t = Tensor::new(vec![2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.1, 0.4]).unwrap();
        assert_eq!(t.argmax_rows(), vec![1, 0]);
        let s = t.select(&[1, 1]);
        assert_eq!(s.shape(), &[2, 3]);
        let c = Tensor::concat(&[t.clone(), s]).unwrap();
        assert_eq!(c.batch_size(), 4);
        assert_eq!(c.row(3), t.row(1));
    }

    #[test]
    fn from_rows_rejects_ragged() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        assert!(Tensor::from_rows(&[2], [&a[..], &b[..]]).is_err());
        let t = Tensor::from_rows(&[2], [&a[..], &a[..]]).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
    }
}
