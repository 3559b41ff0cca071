//! Models built from the op table. A model reads its `config.json`, pulls named tensors from a
//! [`Weights`] source (safetensors natively or from bytes in wasm), uploads them to a [`Device`]
//! and runs its forward pass as a sequence of ops on that device.

pub mod bert;
pub mod causal;
pub mod config;
pub mod generate;
pub mod hf;
pub mod llama;
pub mod moe;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

/// Where a model's named tensors come from.
pub trait Weights {
    /// The tensor, or [`crate::FileError::MissingTensor`] naming it and the file.
    fn tensor(&self, name: &str) -> Result<TensorData>;
    fn contains(&self, name: &str) -> bool;
    /// For messages: the file(s) behind this source.
    fn origin(&self) -> String;
}

/// Fetches `name`, checks its shape, uploads it.
pub(crate) fn load(dev: &Device, w: &dyn Weights, name: &str, dims: &[usize]) -> Result<Tensor> {
    let t = w.tensor(name)?;
    if t.dims() != dims {
        return Err(Error::File {
            file: w.origin(),
            kind: crate::FileError::BadHeader(format!("tensor '{name}' has shape {:?}, the config implies {dims:?}", t.dims())),
        });
    }
    dev.upload(&t)
}

/// `y = x · Wᵀ + b`, with `W [out, in]` as PyTorch's `nn.Linear` stores it.
pub(crate) struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn load(dev: &Device, w: &dyn Weights, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            w: load(dev, w, &format!("{prefix}.weight"), &[out, inp])?,
            b: if bias { Some(load(dev, w, &format!("{prefix}.bias"), &[out])?) } else { None },
        })
    }

    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        let op = Op::Matmul { trans_b: true };
        match &self.b {
            Some(b) => dev.exec1(&op, &[x, &self.w, b]),
            None => dev.exec1(&op, &[x, &self.w]),
        }
    }
}

/// `LayerNorm` with weight and bias.
pub(crate) struct Norm {
    pub gamma: Tensor,
    pub beta: Option<Tensor>,
    pub eps: f32,
}

impl Norm {
    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        match &self.beta {
            Some(b) => dev.exec1(&Op::LayerNorm { eps: self.eps }, &[x, &self.gamma, b]),
            None => dev.exec1(&Op::RmsNorm { eps: self.eps }, &[x, &self.gamma]),
        }
    }
}
