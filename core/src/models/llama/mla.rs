//! Multi-head Latent Attention (DeepSeek-V2/V3, `DeepseekV3Attention` in transformers): the query
//! comes from the hidden state through an optional low-rank bottleneck (`q_a_proj` → RMSNorm →
//! `q_b_proj`, or `q_proj`); keys and values from a shared compressed latent (`kv_a_proj_with_mqa`
//! → RMSNorm → `kv_b_proj`), plus one RoPE key part shared by every head. Per head:
//! `q = [q_nope | rope(q_pe)]`, `k = [k_nope | rope(k_pe)]`, `v`; attention scale `(Dn + Dr)^-0.5`.
//!
//! The checkpoint's fused projections are split by rows at load, so that no slicing op is needed:
//! `q_b_proj` into each head's nope and RoPE rows, `kv_a_proj_with_mqa` into the latent and the
//! RoPE key, `kv_b_proj` into each head's k_nope and v rows. DeepSeek stores the RoPE dims as
//! interleaved pairs `(x0, x1), (x2, x3), ...` (`rope_interleave`, transformers' default); the
//! RoPE rows are permuted to `[x0, x2, .., x1, x3, ..]` at load, which turns transformers'
//! interleaved rotation into [`Op::Rope`]'s rotate-half one exactly (the same values in the same
//! output order, as transformers' `apply_rotary_pos_emb_interleave` writes them).
//!
//! The shared RoPE key is rotated once (`[B, 1, T, Dr]`) and broadcast to the heads by a gather
//! ([`Op::Embedding`] with ids `b*T + t` for every head). The KV cache holds the expanded per-head
//! keys `[B, H, S, Dn+Dr]` and values `[B, H, S, Dv]` (as for grouped-query attention), not the
//! latent: the attention op reads them directly and a decode step does not re-expand the whole
//! latent through `kv_b_proj`; the cost is H·(Dn+Dr+Dv) floats per token instead of Rkv+Dr.
//! [`Op::Attention`] takes a value width different from the key width, so v is not padded.
//!
//! Shapes: B rows, T new tokens, C hidden, H heads, Rq / Rkv query / latent ranks, Dn / Dr / Dv
//! per-head nope / RoPE / value widths.

use crate::device::Device;
use crate::error::{Error, FileError, Result};
use crate::lora::runtime::RowSel;
use crate::models::config::MlaSpec;
use crate::models::{Linear, Norm, Weights};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

/// A weight `[rows, cols]` with an optional bias `[rows]`, used through a plain matmul.
struct Proj {
    w: Tensor,
    b: Option<Tensor>,
}

impl Proj {
    fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        let op = Op::Matmul { trans_b: true };
        match &self.b {
            Some(b) => dev.exec1(&op, &[x, &self.w, b]),
            None => dev.exec1(&op, &[x, &self.w]),
        }
    }
}

enum Query {
    /// `q_proj` split into nope rows `[H*Dn, C]` and RoPE rows `[H*Dr, C]`.
    Full { nope: Proj, rope: Proj },
    /// `q_a_proj [Rq, C]` → `q_a_layernorm [Rq]` → `q_b_proj` split into `[H*Dn, Rq]` and `[H*Dr, Rq]`.
    LowRank { a: Linear, norm: Norm, nope: Proj, rope: Proj },
}

pub(super) struct Mla {
    q: Query,
    latent: Proj,   // kv_a_proj_with_mqa's first Rkv rows: [Rkv, C]
    k_rope: Proj,   // its last Dr rows, rotate-half order: [Dr, C]
    kv_norm: Norm,  // kv_a_layernorm [Rkv]
    k_nope: Proj,   // kv_b_proj's k rows: [H*Dn, Rkv]
    v: Proj,        // kv_b_proj's v rows: [H*Dv, Rkv]
    pub o: Linear,  // o_proj [C, H*Dv]
    /// RoPE over the Dr dims (rotate-half, after the load-time row permutation).
    rope_op: Op,
    spec: MlaSpec,
    heads: usize,
}

/// `DeepseekV3RMSNorm`'s default eps: `q_a_layernorm` and `kv_a_layernorm` use it, not `rms_norm_eps`.
const LATENT_NORM_EPS: f32 = 1e-6;

/// The tensor `name` as f32, checked to be `[rows, cols]` (or `[rows]` for a bias, cols = 0).
fn fetch(w: &dyn Weights, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
    let t = w.tensor(name)?;
    let want: &[usize] = if cols == 0 { &[rows] } else { &[rows, cols] };
    if t.dims() != want {
        return Err(Error::File {
            file: w.origin(),
            kind: FileError::BadHeader(format!("tensor '{name}' has shape {:?}, the config implies {want:?}", t.dims())),
        });
    }
    Ok(t.to_f32_vec())
}

/// Rows `idx` of `m` (rows of `cols` values; cols = 1 for a bias), uploaded as `[idx.len(), cols]`
/// (or `[idx.len()]`).
fn pick(dev: &Device, m: &[f32], cols: usize, idx: &[usize], bias: bool) -> Result<Tensor> {
    let v: Vec<f32> = idx.iter().flat_map(|&r| m[r * cols..(r + 1) * cols].iter().copied()).collect();
    let shape: Vec<usize> = if bias { vec![idx.len()] } else { vec![idx.len(), cols] };
    dev.upload(&TensorData::f32(&shape, v)?)
}

/// Two [`Proj`]s from the weight `{prefix}.weight` (`[rows, cols]`, read once) and, with `bias`,
/// `{prefix}.bias`: rows `a` and rows `b`.
#[allow(clippy::too_many_arguments)]
fn split(dev: &Device, w: &dyn Weights, prefix: &str, rows: usize, cols: usize, bias: bool, a: &[usize], b: &[usize]) -> Result<(Proj, Proj)> {
    let m = fetch(w, &format!("{prefix}.weight"), rows, cols)?;
    let bv = if bias { Some(fetch(w, &format!("{prefix}.bias"), rows, 0)?) } else { None };
    let proj = |idx: &[usize]| -> Result<Proj> {
        let b = match &bv {
            Some(v) => Some(pick(dev, v, 1, idx, true)?),
            None => None,
        };
        Ok(Proj { w: pick(dev, &m, cols, idx, false)?, b })
    };
    Ok((proj(a)?, proj(b)?))
}

impl Mla {
    /// Loads `{layer}.self_attn.*` for hidden width `c`, `heads` heads; `bias` is the config's
    /// `attention_bias` (on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj`, as transformers has it).
    #[allow(clippy::too_many_arguments)]
    pub fn load(dev: &Device, w: &dyn Weights, layer: &str, c: usize, heads: usize, spec: MlaSpec, theta: f32, bias: bool) -> Result<Mla> {
        let p = format!("{layer}.self_attn");
        let (h, dn, dr, dv, rkv) = (heads, spec.nope, spec.rope, spec.v, spec.kv_rank);
        let dq = dn + dr;
        let rope = rope_order(dr, spec.interleave);
        // Per head: rows h*dq + 0..dn are nope, h*dq + dn + rope[j] the RoPE part.
        let q_nope: Vec<usize> = (0..h).flat_map(|i| (0..dn).map(move |j| i * dq + j)).collect();
        let q_rope: Vec<usize> = (0..h).flat_map(|i| rope.iter().map(move |&j| i * dq + dn + j)).collect();
        let q = match spec.q_rank {
            None => {
                let (nope, rope) = split(dev, w, &format!("{p}.q_proj"), h * dq, c, false, &q_nope, &q_rope)?;
                Query::Full { nope, rope }
            }
            Some(rq) => {
                let a = Linear::load(dev, w, &format!("{p}.q_a_proj"), c, rq, bias)?;
                let gamma = crate::models::load(dev, w, &format!("{p}.q_a_layernorm.weight"), &[rq])?;
                let (nope, rope) = split(dev, w, &format!("{p}.q_b_proj"), h * dq, rq, false, &q_nope, &q_rope)?;
                Query::LowRank { a, norm: Norm { gamma, beta: None, eps: LATENT_NORM_EPS }, nope, rope }
            }
        };
        let kv_a = format!("{p}.kv_a_proj_with_mqa");
        let latent_rows: Vec<usize> = (0..rkv).collect();
        let k_rope_rows: Vec<usize> = rope.iter().map(|&j| rkv + j).collect();
        // Per head: rows h*(dn+dv) + 0..dn are k_nope, + dn..dn+dv are v.
        let kvb = dn + dv;
        let k_rows: Vec<usize> = (0..h).flat_map(|i| (0..dn).map(move |j| i * kvb + j)).collect();
        let v_rows: Vec<usize> = (0..h).flat_map(|i| (dn..kvb).map(move |j| i * kvb + j)).collect();
        let (latent, k_rope) = split(dev, w, &kv_a, rkv + dr, c, bias, &latent_rows, &k_rope_rows)?;
        let kv_gamma = crate::models::load(dev, w, &format!("{p}.kv_a_layernorm.weight"), &[rkv])?;
        let (k_nope, v) = split(dev, w, &format!("{p}.kv_b_proj"), h * kvb, rkv, false, &k_rows, &v_rows)?;
        Ok(Mla {
            q,
            latent,
            k_rope,
            kv_norm: Norm { gamma: kv_gamma, beta: None, eps: LATENT_NORM_EPS },
            k_nope,
            v,
            o: Linear::load(dev, w, &format!("{p}.o_proj"), h * dv, c, bias)?,
            rope_op: Op::Rope { theta },
            spec,
            heads,
        })
    }

    /// Ids `[B, H, T] u32` that gather row `b*T + t` of a `[B*T, Dr]` table for every head: the
    /// broadcast of the shared RoPE key (one upload per forward, shared by the layers).
    pub fn broadcast_ids(dev: &Device, b: usize, heads: usize, t: usize) -> Result<Tensor> {
        let ids = (0..b).flat_map(|r| (0..heads).flat_map(move |_| (0..t).map(move |s| (r * t + s) as u32))).collect();
        dev.upload(&TensorData::u32(&[b, heads, t], ids)?)
    }

    /// Attention scale: `(Dn + Dr)^-0.5` (scaled RoPE, which would change it, is refused at parse).
    pub fn scale(&self) -> f32 {
        1.0 / ((self.spec.nope + self.spec.rope) as f32).sqrt()
    }

    pub fn value_dim(&self) -> usize {
        self.spec.v
    }

    /// The LoRA-capable linears (PEFT names them by module): `q_a_proj` when present and `o_proj`.
    /// The split projections are plain weights.
    pub fn linears(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        if let Query::LowRank { a, .. } = &mut self.q {
            v.push(a);
        }
        v.push(&mut self.o);
        v
    }

    /// `h [B*T, C]`, `pos [B, T] u32`, `bcast` from [`Mla::broadcast_ids`] → the new tokens'
    /// `q [B, H, T, Dn+Dr]`, `k [B, H, T, Dn+Dr]`, `v [B, H, T, Dv]`.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv(&self, dev: &Device, h: &Tensor, b: usize, t: usize, pos: &Tensor, bcast: &Tensor, sel: Option<&RowSel>) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, s) = (self.heads, &self.spec);
        let to_heads = |y: Tensor, d: usize| dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&y.reshape(&[b, t, nh, d])?]);
        let cat = Op::Concat { axis: 3 };
        let (q_in, q_nope, q_rope) = match &self.q {
            Query::Full { nope, rope } => (h.clone(), nope, rope),
            Query::LowRank { a, norm, nope, rope } => (norm.forward(dev, &a.forward(dev, h, sel)?)?, nope, rope),
        };
        let qn = to_heads(q_nope.forward(dev, &q_in)?, s.nope)?;
        let qr = dev.exec1(&self.rope_op, &[&to_heads(q_rope.forward(dev, &q_in)?, s.rope)?, pos])?;
        let q = dev.exec1(&cat, &[&qn, &qr])?;
        let latent = self.kv_norm.forward(dev, &self.latent.forward(dev, h)?)?; // [B*T, Rkv]
        // The shared RoPE key: rotated once as one head, then gathered for every head.
        let kr = self.k_rope.forward(dev, h)?.reshape(&[b, 1, t, s.rope])?;
        let kr = dev.exec1(&self.rope_op, &[&kr, pos])?.reshape(&[b * t, s.rope])?;
        let kr = dev.exec1(&Op::Embedding, &[&kr, bcast])?; // [B, H, T, Dr]
        let k = dev.exec1(&cat, &[&to_heads(self.k_nope.forward(dev, &latent)?, s.nope)?, &kr])?;
        let v = to_heads(self.v.forward(dev, &latent)?, s.v)?;
        Ok((q, k, v))
    }
}

/// `[0, 2, 4, .., 1, 3, 5, ..]` for interleaved pairs (DeepSeek's layout), else the identity.
fn rope_order(d: usize, interleave: bool) -> Vec<usize> {
    if interleave {
        (0..d).step_by(2).chain((1..d).step_by(2)).collect()
    } else {
        (0..d).collect()
    }
}
