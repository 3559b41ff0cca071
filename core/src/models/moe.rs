//! Sparse mixture-of-experts MLP (Mixtral): router → top-k → softmax over the k picks → SiLU-gated
//! experts through `ExpertMatmul` → weighted sum. Everything stays on the device: the routing ids
//! feed the expert kernels directly, with no host readback (9 dispatches per layer).
//!
//! Shapes: T tokens, C hidden, E experts, K picks per token, F expert MLP width.

use super::{load, Weights};
use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

pub(crate) struct SparseMoe {
    router: Tensor, // [E, C]
    gate: Tensor,   // [E, F, C]
    up: Tensor,     // [E, F, C]
    down: Tensor,   // [E, C, F]
    k: usize,
}

/// `[E, rows, cols]` from E tensors of `[rows, cols]` (the per-expert checkpoint layout).
fn stack(w: &dyn Weights, names: &[String], rows: usize, cols: usize) -> Result<TensorData> {
    let mut v = Vec::with_capacity(names.len() * rows * cols);
    for n in names {
        let t = w.tensor(n)?;
        if t.dims() != [rows, cols] {
            return Err(Error::File {
                file: w.origin(),
                kind: FileError::BadHeader(format!("tensor '{n}' has shape {:?}, the config implies [{rows}, {cols}]", t.dims())),
            });
        }
        v.extend(t.to_f32_vec());
    }
    TensorData::f32(&[names.len(), rows, cols], v)
}

impl SparseMoe {
    /// Reads either layout: fused `mlp.experts.gate_up_proj [E, 2F, C]` + `down_proj [E, C, F]`
    /// (transformers 5), or per-expert `block_sparse_moe.experts.N.w1/w3 [F, C]`, `w2 [C, F]`.
    pub fn load(dev: &Device, w: &dyn Weights, layer: &str, c: usize, f: usize, e: usize, k: usize) -> Result<SparseMoe> {
        let fused = format!("{layer}.mlp.experts.gate_up_proj");
        let (router, gate, up, down) = if w.contains(&fused) {
            let gu = w.tensor(&fused)?;
            if gu.dims() != [e, 2 * f, c] {
                return Err(Error::File {
                    file: w.origin(),
                    kind: FileError::BadHeader(format!("tensor '{fused}' has shape {:?}, the config implies [{e}, {}, {c}]", gu.dims(), 2 * f)),
                });
            }
            let v = gu.to_f32_vec();
            // Per expert: rows 0..F are the gate, F..2F the up projection (transformers' chunk(2)).
            let (mut g, mut u) = (Vec::with_capacity(e * f * c), Vec::with_capacity(e * f * c));
            for ex in v.chunks(2 * f * c) {
                g.extend_from_slice(&ex[..f * c]);
                u.extend_from_slice(&ex[f * c..]);
            }
            (
                load(dev, w, &format!("{layer}.mlp.gate.weight"), &[e, c])?,
                dev.upload(&TensorData::f32(&[e, f, c], g)?)?,
                dev.upload(&TensorData::f32(&[e, f, c], u)?)?,
                load(dev, w, &format!("{layer}.mlp.experts.down_proj"), &[e, c, f])?,
            )
        } else {
            let p = format!("{layer}.block_sparse_moe");
            let names = |wn: &str| (0..e).map(|i| format!("{p}.experts.{i}.{wn}.weight")).collect::<Vec<_>>();
            (
                load(dev, w, &format!("{p}.gate.weight"), &[e, c])?,
                dev.upload(&stack(w, &names("w1"), f, c)?)?,
                dev.upload(&stack(w, &names("w3"), f, c)?)?,
                dev.upload(&stack(w, &names("w2"), c, f)?)?,
            )
        };
        Ok(SparseMoe { router, gate, up, down, k })
    }

    /// `h [T, C]` → `[T, C]`.
    pub fn forward(&self, dev: &Device, h: &Tensor) -> Result<Tensor> {
        let (t, c) = (h.dims()[0], h.dims()[1]);
        let logits = dev.exec1(&Op::Matmul { trans_b: true }, &[h, &self.router])?; // [T, E]
        let picks = dev.exec(&Op::TopK { k: self.k }, &[&logits])?; // ([T, K] f32, [T, K] u32)
        // softmax over all E then renormalised over the K picks = softmax over the K picked logits.
        let weights = dev.exec1(&Op::Softmax, &[&picks[0]])?; // [T, K]
        let idx = &picks[1];
        let g = dev.exec1(&Op::ExpertMatmul, &[h, &self.gate, idx])?; // [T, K, F]
        let u = dev.exec1(&Op::ExpertMatmul, &[h, &self.up, idx])?;
        let m = dev.exec1(&Op::Mul, &[&dev.exec1(&Op::Silu, &[&g])?, &u])?;
        let d = dev.exec1(&Op::ExpertMatmul, &[&m, &self.down, idx])?; // [T, K, C]
        // out[t] = weights[t] (1 x K) · d[t] (K x C), one small matmul per token.
        let out = dev.exec1(&Op::Matmul { trans_b: false }, &[&weights.reshape(&[t, 1, self.k])?, &d])?;
        out.reshape(&[t, c])
    }
}
