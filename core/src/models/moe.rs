//! Sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE, DeepSeek-V3): router → softmax → top-k (→
//! renormalised) → SiLU-gated experts → weighted sum, plus a shared expert: Qwen2-MoE's behind a
//! sigmoid gate, DeepSeek's (`mlp.shared_experts`, `n_shared_experts` experts as one MLP) added as
//! is. DeepSeek-V3 routing (sigmoid scores, the selection-only `e_score_correction_bias`,
//! group-limited top-k, `routed_scaling_factor`) is the same op, configured.
//!
//! The experts run through [`ExpertRouting`]: from [`BUCKET_MIN_PICKS_PER_EXPERT`] picks per
//! expert on (prefill, batches) the picks are bucketed by expert once per layer (`MoeBucket`:
//! prefix sums on the device) and gate, up and down are each one `GroupedMatmul`, which reads an
//! expert's weights once per tile of its rows; below it (decode) each is one `ExpertMatmul` (a GEMV
//! per pick), which saves the bucketing dispatch where there is nothing to share. Everything stays on the device: the routing
//! ids feed the expert kernels directly, with no host readback. Dispatches per Mixtral layer:
//! router matmul, routing, bucketing, 3 expert matmuls, SiLU, mul, weighted sum = 9 (8 without
//! bucketing, e.g. decoding one token). A DeepSeek layer adds its ungated shared experts: gate,
//! SiLU, up, mul, down, add = 6 more, 15 (14).
//!
//! An expert stack above the GPU's binding limit is uploaded split between experts
//! ([`Device::upload_weight`]); both expert matmuls then run once per block of experts, with the
//! same results (`gpu/split.rs`).
//!
//! Shapes: T tokens, C hidden, E experts, K picks per token, F expert MLP width.

use super::config::MoeSpec;
use super::{load, Linear, Weights};
use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

/// Picks per expert from which [`ExpertRouting::new`] buckets: R*K >= this * E buckets, fewer run
/// a GEMV per pick. `core/examples/bench_moe.rs --sweep` on the 2-core CPU (top-2 of 8, C = 512,
/// F = 2048, GELU experts; two runs of 9-15 interleaved rounds on a loaded, shared machine): per
/// pick was 1.1-1.4x faster at 2 tokens (0.5 picks per expert) and 1.4-1.8x at 4 tokens (1 per
/// expert); bucketed was 1.1-2.5x faster at 8 tokens (2 per expert), 1.3-2.2x at 16, 1.4-1.9x at
/// 32 and 3.3-4.5x at 128. With a pick per expert or fewer there is no weight reuse to win, and
/// bucketing adds a pass and (on a GPU) a dispatch.
pub const BUCKET_MIN_PICKS_PER_EXPERT: usize = 2;

/// One MoE layer's routing, computed once and shared by all of the layer's expert matmuls:
/// the ids `[R, K] u32` and, when bucketed, `MoeBucket`'s `(offsets [E+2], order [R, K])`.
pub struct ExpertRouting {
    idx: Tensor,
    buckets: Option<(Tensor, Tensor)>,
}

impl ExpertRouting {
    /// `idx [R, K] u32` over `experts` experts, bucketed when R*K >= E ·
    /// [`BUCKET_MIN_PICKS_PER_EXPERT`] (decode steps and tiny batches take the GEMVs).
    pub fn new(dev: &Device, idx: Tensor, experts: usize) -> Result<ExpertRouting> {
        let bucketed = idx.shape.numel() >= BUCKET_MIN_PICKS_PER_EXPERT * experts;
        ExpertRouting::with(dev, idx, experts, bucketed)
    }

    /// As [`ExpertRouting::new`] with the choice made by the caller (benchmarks, tests).
    pub fn with(dev: &Device, idx: Tensor, experts: usize, bucketed: bool) -> Result<ExpertRouting> {
        let buckets = if bucketed {
            let mut b = dev.exec(&Op::MoeBucket { experts }, &[&idx])?;
            let order = b.pop().expect("bucketing has two outputs");
            Some((b.pop().expect("bucketing has two outputs"), order))
        } else {
            None
        };
        Ok(ExpertRouting { idx, buckets })
    }

    /// The routing ids `[R, K] u32`.
    pub fn idx(&self) -> &Tensor {
        &self.idx
    }

    pub fn is_bucketed(&self) -> bool {
        self.buckets.is_some()
    }

    /// `x [R, Cin]` (one row for all K picks) or `[R, K, Cin]` times each pick's expert of
    /// `w [E, N, Cin]`, plus that expert's row of `bias [E, N]` → `[R, K, N]`; ids `>= E` give 0.
    pub fn matmul(&self, dev: &Device, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match (&self.buckets, bias) {
            (Some((offsets, order)), Some(b)) => dev.exec1(&Op::GroupedMatmul, &[x, w, offsets, order, b]),
            (Some((offsets, order)), None) => dev.exec1(&Op::GroupedMatmul, &[x, w, offsets, order]),
            (None, None) => dev.exec1(&Op::ExpertMatmul, &[x, w, &self.idx]),
            (None, Some(b)) => {
                let y = dev.exec1(&Op::ExpertMatmul, &[x, w, &self.idx])?;
                dev.exec1(&Op::Add, &[&y, &dev.exec1(&Op::Embedding, &[b, &self.idx])?])
            }
        }
    }
}

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

/// The always-on expert: `sigmoid(h · g) * mlp(h)` (Qwen2-MoE) or `mlp(h)` (DeepSeek).
struct Shared {
    gate: Linear,              // [S, C]
    up: Linear,                // [S, C]
    down: Linear,              // [C, S]
    gate_proj: Option<Tensor>, // [1, C]
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

/// The selection bias `[E]`, shifted so that every choice (score + bias, scores > 0) is positive when
/// groups are limited. [`Op::MoeRoute`] sets the choices of the groups left out to 0 (DeepSeek's
/// own code); transformers' `DeepseekV3TopkRouter` sets them to -inf. The two pick differently only
/// when an eligible expert's choice is negative, which a negative bias allows. Adding one constant
/// to every expert's bias changes no ranking (each group's score, the sum of its two best choices,
/// moves by twice the constant) and no weight (weights read the scores), so shifting the bias by
/// `-min(bias)` makes the op pick exactly as transformers does.
fn selection_bias(dev: &Device, w: &dyn Weights, name: &str, e: usize, spec: MoeSpec) -> Result<Tensor> {
    let t = w.tensor(name)?;
    if t.dims() != [e] {
        return Err(Error::File { file: w.origin(), kind: FileError::BadHeader(format!("tensor '{name}' has shape {:?}, the config implies [{e}]", t.dims())) });
    }
    let mut b = t.to_f32_vec();
    if let Some(bad) = b.iter().find(|v| !v.is_finite()) {
        return Err(Error::File { file: w.origin(), kind: FileError::BadHeader(format!("tensor '{name}' holds {bad}")) });
    }
    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
    if spec.groups > 1 && min < 0.0 {
        b.iter_mut().for_each(|v| *v -= min);
    }
    dev.upload(&TensorData::f32(&[e], b)?)
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
                dev.upload_weight(&TensorData::f32(&[e, f, c], g)?, &format!("{fused} (gate half)"))?,
                dev.upload_weight(&TensorData::f32(&[e, f, c], u)?, &format!("{fused} (up half)"))?,
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
                dev.upload_weight(&stack(w, &names(g), f, c)?, &format!("{p}.experts.*.{g}.weight"))?,
                dev.upload_weight(&stack(w, &names(u), f, c)?, &format!("{p}.experts.*.{u}.weight"))?,
                dev.upload_weight(&stack(w, &names(d), c, f)?, &format!("{p}.experts.*.{d}.weight"))?,
            )
        };
        let shared = if spec.shared_width > 0 {
            let s = spec.shared_width;
            let p = if spec.shared_gate { format!("{layer}.mlp.shared_expert") } else { format!("{layer}.mlp.shared_experts") };
            Some(Shared {
                gate: Linear::load(dev, w, &format!("{p}.gate_proj"), c, s, false)?,
                up: Linear::load(dev, w, &format!("{p}.up_proj"), c, s, false)?,
                down: Linear::load(dev, w, &format!("{p}.down_proj"), s, c, false)?,
                gate_proj: if spec.shared_gate { Some(load(dev, w, &format!("{layer}.mlp.shared_expert_gate.weight"), &[1, c])?) } else { None },
            })
        } else {
            None
        };
        let bias_name = format!("{layer}.mlp.gate.e_score_correction_bias");
        let bias = if w.contains(&bias_name) { Some(selection_bias(dev, w, &bias_name, e, spec)?) } else { None };
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
        let experts = self.router.dims()[0];
        let r = ExpertRouting::new(dev, idx, experts)?; // bucketed once, shared by gate, up, down
        let g = r.matmul(dev, h, &self.gate, None)?; // [T, K, F]
        let u = r.matmul(dev, h, &self.up, None)?;
        let m = dev.exec1(&Op::Mul, &[&dev.exec1(&Op::Silu, &[&g])?, &u])?;
        let d = r.matmul(dev, &m, &self.down, None)?; // [T, K, C]
        // out[t] = weights[t] (1 x K) · d[t] (K x C), one small matmul per token.
        let out = dev.exec1(&Op::Matmul { trans_b: false }, &[&weights.reshape(&[t, 1, self.k])?, &d])?;
        let out = out.reshape(&[t, c])?;
        let Some(s) = &self.shared else { return Ok(out) };
        let g = dev.exec1(&Op::Silu, &[&s.gate.forward(dev, h, None)?])?;
        let y = s.down.forward(dev, &dev.exec1(&Op::Mul, &[&g, &s.up.forward(dev, h, None)?])?, None)?; // [T, C]
        let Some(gate_proj) = &s.gate_proj else { return dev.exec1(&Op::Add, &[&out, &y]) };
        let gate = dev.exec1(&Op::Sigmoid, &[&dev.exec1(&Op::Matmul { trans_b: true }, &[h, gate_proj])?])?; // [T, 1]
        // gate[t] (1 x 1) · y[t] (1 x C): the per-token scale as a batched matmul.
        let y = dev.exec1(&Op::Matmul { trans_b: false }, &[&gate.reshape(&[t, 1, 1])?, &y.reshape(&[t, 1, c])?])?;
        dev.exec1(&Op::Add, &[&out, &y.reshape(&[t, c])?])
    }
}
