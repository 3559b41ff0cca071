//! Sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE): router → softmax → top-k (→ renormalised)
//! → SiLU-gated experts through `ExpertMatmul` → weighted sum, plus Qwen2-MoE's shared expert
//! behind a sigmoid gate. Everything stays on the device: the routing ids feed the expert kernels
//! directly, with no host readback (8 dispatches per Mixtral layer). DeepSeek-style routing (sigmoid
//! scores, a selection-only bias, group-limited top-k, a scaling factor) is the same op, configured.
//!
//! Shapes: T tokens, C hidden, E experts, K picks per token, F expert MLP width.

use super::config::MoeSpec;
use super::{load, Linear, Weights};
use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

pub(crate) struct SparseMoe {
    router: Tensor, // [E, C]
    gate: Tensor,   // [E, F, C]
    up: Tensor,     // [E, F, C]
    down: Tensor,   // [E, C, F]
    /// The router op: softmax or sigmoid, groups, renormalisation, scale.
    route: Op,
    /// DeepSeek-style selection bias `[E]` (`mlp.gate.e_score_correction_bias`).
    bias: Option<Tensor>,
    k: usize,
    shared: Option<Shared>,
}

/// Qwen2-MoE's always-on expert: `sigmoid(h · g) * mlp(h)`.
struct Shared {
    gate: Linear,      // [S, C]
    up: Linear,        // [S, C]
    down: Linear,      // [C, S]
    gate_proj: Tensor, // [1, C]
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
    pub fn load(dev: &Device, w: &dyn Weights, layer: &str, c: usize, spec: MoeSpec) -> Result<SparseMoe> {
        let (e, f, k) = (spec.experts, spec.width, spec.k);
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
            // Per expert: Mixtral's block_sparse_moe.experts.N.w1/w3/w2, or Qwen2-MoE's
            // mlp.experts.N.gate_proj/up_proj/down_proj.
            let mixtral = w.contains(&format!("{layer}.block_sparse_moe.gate.weight"));
            let (p, [g, u, d]) =
                if mixtral { (format!("{layer}.block_sparse_moe"), ["w1", "w3", "w2"]) } else { (format!("{layer}.mlp"), ["gate_proj", "up_proj", "down_proj"]) };
            let names = |wn: &str| (0..e).map(|i| format!("{p}.experts.{i}.{wn}.weight")).collect::<Vec<_>>();
            (
                load(dev, w, &format!("{p}.gate.weight"), &[e, c])?,
                dev.upload(&stack(w, &names(g), f, c)?)?,
                dev.upload(&stack(w, &names(u), f, c)?)?,
                dev.upload(&stack(w, &names(d), c, f)?)?,
            )
        };
        let shared = if spec.shared_width > 0 {
            let (p, s) = (format!("{layer}.mlp.shared_expert"), spec.shared_width);
            Some(Shared {
                gate: Linear::load(dev, w, &format!("{p}.gate_proj"), c, s, false)?,
                up: Linear::load(dev, w, &format!("{p}.up_proj"), c, s, false)?,
                down: Linear::load(dev, w, &format!("{p}.down_proj"), s, c, false)?,
                gate_proj: load(dev, w, &format!("{layer}.mlp.shared_expert_gate.weight"), &[1, c])?,
            })
        } else {
            None
        };
        let bias_name = format!("{layer}.mlp.gate.e_score_correction_bias");
        let bias = if w.contains(&bias_name) { Some(load(dev, w, &bias_name, &[e])?) } else { None };
        let route = Op::MoeRoute {
            k,
            sigmoid: spec.sigmoid,
            groups: spec.groups,
            topk_group: spec.topk_group,
            norm: spec.norm_topk,
            scale: spec.scale,
        };
        Ok(SparseMoe { router, gate, up, down, route, bias, k, shared })
    }

    /// `h [T, C]` → `[T, C]`.
    pub fn forward(&self, dev: &Device, h: &Tensor) -> Result<Tensor> {
        let (t, c) = (h.dims()[0], h.dims()[1]);
        let logits = dev.exec1(&Op::Matmul { trans_b: true }, &[h, &self.router])?; // [T, E]
        let mut picks = match &self.bias {
            Some(b) => dev.exec(&self.route, &[&logits, b])?,
            None => dev.exec(&self.route, &[&logits])?,
        }; // (weights [T, K] f32, idx [T, K] u32)
        let idx = picks.pop().expect("routing has two outputs");
        let weights = picks.pop().expect("routing has two outputs");
        let idx = &idx;
        let g = dev.exec1(&Op::ExpertMatmul, &[h, &self.gate, idx])?; // [T, K, F]
        let u = dev.exec1(&Op::ExpertMatmul, &[h, &self.up, idx])?;
        let m = dev.exec1(&Op::Mul, &[&dev.exec1(&Op::Silu, &[&g])?, &u])?;
        let d = dev.exec1(&Op::ExpertMatmul, &[&m, &self.down, idx])?; // [T, K, C]
        // out[t] = weights[t] (1 x K) · d[t] (K x C), one small matmul per token.
        let out = dev.exec1(&Op::Matmul { trans_b: false }, &[&weights.reshape(&[t, 1, self.k])?, &d])?;
        let out = out.reshape(&[t, c])?;
        let Some(s) = &self.shared else { return Ok(out) };
        let g = dev.exec1(&Op::Silu, &[&s.gate.forward(dev, h, None)?])?;
        let y = s.down.forward(dev, &dev.exec1(&Op::Mul, &[&g, &s.up.forward(dev, h, None)?])?, None)?; // [T, C]
        let gate = dev.exec1(&Op::Sigmoid, &[&dev.exec1(&Op::Matmul { trans_b: true }, &[h, &s.gate_proj])?])?; // [T, 1]
        // gate[t] (1 x 1) · y[t] (1 x C): the per-token scale as a batched matmul.
        let y = dev.exec1(&Op::Matmul { trans_b: false }, &[&gate.reshape(&[t, 1, 1])?, &y.reshape(&[t, 1, c])?])?;
        dev.exec1(&Op::Add, &[&out, &y.reshape(&[t, c])?])
    }
}
