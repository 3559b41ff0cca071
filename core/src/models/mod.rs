//! Models built from the op table. A model reads its `config.json`, pulls named tensors from a
//! [`Weights`] source (safetensors natively or from bytes in wasm), uploads them to a [`Device`]
//! and runs its forward pass as a sequence of ops on that device.
//!
//! Weights go up through [`Device::upload_weight`]: on a GPU, one larger than a storage binding may
//! hold (a vocabulary's embedding table or LM head, a big linear) is split into row blocks that each
//! fit, and `Matmul`/`Embedding` run over the blocks, so model code is the same either way (a tied
//! LM head shares the embedding's blocks; a bias is split like its weight). MoE expert stacks
//! `[E, N, C]` are split between experts and the expert matmuls run per block; LoRA adapters fuse
//! into a split weight block by block.

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
    /// Bytes `name` occupies in its file (0 when unknown): what loading progress counts.
    fn stored_bytes(&self, _name: &str) -> u64 {
        0
    }
    /// Bytes of every tensor in the source (0 when unknown).
    fn total_bytes(&self) -> u64 {
        0
    }
}

/// How far a model load has got, in bytes of the weight files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub loaded: u64,
    pub total: u64,
}

/// A [`Weights`] source that reports every tensor it hands out to a progress callback.
pub struct Tracked<'a> {
    inner: &'a dyn Weights,
    loaded: std::cell::Cell<u64>,
    on_progress: &'a dyn Fn(Progress),
}

impl<'a> Tracked<'a> {
    pub fn new(inner: &'a dyn Weights, on_progress: &'a dyn Fn(Progress)) -> Tracked<'a> {
        Tracked { inner, loaded: std::cell::Cell::new(0), on_progress }
    }
}

impl Weights for Tracked<'_> {
    fn tensor(&self, name: &str) -> Result<TensorData> {
        let t = self.inner.tensor(name)?;
        self.loaded.set(self.loaded.get() + self.inner.stored_bytes(name));
        (self.on_progress)(Progress { loaded: self.loaded.get(), total: self.inner.total_bytes() });
        Ok(t)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn origin(&self) -> String {
        self.inner.origin()
    }
    fn stored_bytes(&self, name: &str) -> u64 {
        self.inner.stored_bytes(name)
    }
    fn total_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }
}

/// Fetches `name` and checks its shape.
fn fetch(w: &dyn Weights, name: &str, dims: &[usize]) -> Result<TensorData> {
    let t = w.tensor(name)?;
    if t.dims() != dims {
        return Err(Error::File {
            file: w.origin(),
            kind: crate::FileError::BadHeader(format!("tensor '{name}' has shape {:?}, the config implies {dims:?}", t.dims())),
        });
    }
    Ok(t)
}

/// Fetches `name`, checks its shape, uploads it (split into row blocks on a GPU when it is larger
/// than one binding may hold: see [`Device::upload_weight`]).
pub(crate) fn load(dev: &Device, w: &dyn Weights, name: &str, dims: &[usize]) -> Result<Tensor> {
    dev.upload_weight_owned(fetch(w, name, dims)?, name)
}

/// `y = x · Wᵀ + b`, with `W [out, in]` as PyTorch's `nn.Linear` stores it, plus the LoRA
/// adapters registered on it (see [`crate::lora::runtime`]).
pub struct Linear {
    /// The module path (`model.layers.0.self_attn.q_proj`): what PEFT adapters name.
    pub name: String,
    /// The weight in use: the original, or the original plus fused adapters.
    pub w: Tensor,
    /// The original weight while adapters are fused into `w` (restored exactly by unfusing).
    pub base: Option<Tensor>,
    pub b: Option<Tensor>,
    pub inp: usize,
    pub out: usize,
    /// Every registered adapter's factors, stacked for the shrink/expand kernels.
    pub lora: Option<crate::lora::runtime::LoraStack>,
}

impl Linear {
    pub fn load(dev: &Device, w: &dyn Weights, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        let weight = load(dev, w, &format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            let name = format!("{prefix}.bias");
            // Split into the weight's row blocks when the weight is split.
            Some(dev.upload_like(&fetch(w, &name, &[out])?, &name, &weight)?)
        } else {
            None
        };
        Ok(Linear { name: prefix.to_string(), w: weight, base: None, b, inp, out, lora: None })
    }

    /// `x [.., in]` → `[.., out]`; with `sel`, each row also gets its adapters' `Σ wᵢ·sᵢ·Bᵢ·(Aᵢ·x)`.
    pub fn forward(&self, dev: &Device, x: &Tensor, sel: Option<&crate::lora::runtime::RowSel>) -> Result<Tensor> {
        let op = Op::Matmul { trans_b: true };
        let y = match &self.b {
            Some(b) => dev.exec1(&op, &[x, &self.w, b])?,
            None => dev.exec1(&op, &[x, &self.w])?,
        };
        match (&self.lora, sel) {
            (Some(stack), Some(sel)) => stack.apply(dev, x, y, sel),
            _ => Ok(y),
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
