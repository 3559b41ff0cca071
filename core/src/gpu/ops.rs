//! Records each op of the table as dispatches of the kernels in `shaders/`. Inputs were validated by
//! `Op::infer`, so only device limits are checked here.

use super::kernels::{
    grouped_matmul_constants, grouped_matmul_tile, lora_shrink_constants, lora_shrink_lanes, matmul_constants, Shader, LORA_SHRINK_WG,
    MATMUL_TILES,
};
use super::{blocks, buffer, split_of, GpuBackend};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::{GeluKind, Meta, Op};
use crate::tensor::Tensor;

/// Workgroup size of the 1-D kernels (must match the shaders' `WG` default).
const WG: u32 = 256;
const ATTN_WG: u32 = 64;
/// `lora_expand`'s workgroup: outputs per workgroup (must match the shader's `WG` default).
const LORA_EXPAND_WG: u32 = 64;
/// Largest LoRA rank and slots per row the GPU kernels take: far above any real use, and it keeps
/// the shaders' loops under lavapipe's ~65k-iteration cap without chunking them.
const LORA_MAX: usize = 1 << 14;

pub(super) fn supports(op: &Op, dtype: DType) -> bool {
    match op {
        Op::Matmul { .. } | Op::Embedding | Op::ExpertMatmul | Op::GroupedMatmul | Op::LoraShrink | Op::LoraExpand => dtype.is_float(),
        Op::MoeBucket { .. } => dtype == DType::U32,
        Op::Permute { .. } | Op::Concat { .. } => dtype.size_in_bytes() == 4,
        _ => dtype == DType::F32,
    }
}

/// `Params` structs are arrays of 32-bit words; floats go in as their bits.
fn words(w: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(w).to_vec()
}

fn u(x: usize) -> u32 {
    x as u32 // every count fits: buffers are capped by the u32 binding-size limit
}

/// `n` workgroups as (y, z) under the per-dimension limit; kernels index `y + z * num_workgroups.y`.
fn fold(n: usize, max: u32) -> [u32; 2] {
    let max = max as usize;
    [u(n.min(max)), u(n.div_ceil(max))]
}

fn lora_fits(op: &'static str, r: usize, k: usize) -> Result<()> {
    if r > LORA_MAX || k > LORA_MAX {
        return Err(Error::UnsupportedOp { op, backend: "gpu (LoRA rank or slots per row above 16384)", dtype: DType::F32 });
    }
    Ok(())
}

pub(super) fn encode(g: &GpuBackend, op: &Op, inputs: &[&Tensor], outs: &[Meta]) -> Result<Vec<Tensor>> {
    let name = op.name();
    if !supports(op, inputs.first().map_or(DType::F32, |t| t.dtype)) {
        let dtype = inputs[0].dtype;
        return Err(Error::UnsupportedOp { op: name, backend: "gpu", dtype });
    }
    let out = outs.iter().map(|(s, d)| g.alloc(*s, *d, name)).collect::<Result<Vec<_>>>()?;
    let ob = buffer(&out[0])?;
    let inb = |i: usize| buffer(inputs[i]);
    let numel = out[0].shape.numel();
    if numel == 0 {
        return Ok(out);
    }
    match *op {
        Op::Matmul { trans_b } => {
            let (a, b) = (&inputs[0].shape, &inputs[1].shape);
            let (m, k) = (a.from_end(1), a.from_end(0));
            let n = out[0].shape.from_end(0);
            let batch = numel / (m * n);
            let stride = if b.rank() == 2 { 0 } else { k * n };
            // One dispatch per row block of a split weight (one block covering every row otherwise),
            // each writing output columns [first, first + rows).
            let weight = if split_of(inputs[1]).is_some() { blocks(inputs[1])? } else { vec![(inb(1)?, 0, n)] };
            let bias = match inputs.get(2) {
                Some(t) if split_of(t).is_some() => {
                    let bb = blocks(t)?;
                    if bb.iter().map(|x| (x.1, x.2)).ne(weight.iter().map(|x| (x.1, x.2))) {
                        return Err(split_of(t).expect("split").refused("matmul (a bias split unlike its weight)", g.max_binding_bytes()));
                    }
                    bb.into_iter().map(|x| (x.0, false)).collect()
                }
                Some(t) => vec![(buffer(t)?, true); weight.len()],
                None => vec![(g.dummy(), false); weight.len()],
            };
            let consts_for = |tile| matmul_constants(inputs[1].dtype.shader_code(), trans_b, tile);
            for (&(wb, first, rows), &(bb, whole)) in weight.iter().zip(&bias) {
                let tile = if m <= 16 || rows <= 16 || m * rows <= 64 * 64 { &MATMUL_TILES[1] } else { &MATMUL_TILES[0] };
                let bias_off = if whole { first } else { 0 };
                let params = words(&[u(m), u(rows), u(k), u(stride), inputs.len() as u32 - 2, u(first), u(n), u(bias_off)]);
                let groups = [u(rows).div_ceil(tile.bn()), u(m).div_ceil(tile.bm()), u(batch)];
                g.dispatch(Shader::Matmul, "matmul", &consts_for(tile), &params, &[inb(0)?, wb, bb, ob], groups)?;
            }
        }
        Op::Add | Op::Mul | Op::Axpy { .. } | Op::Scale { .. } | Op::Gelu(_) | Op::Silu | Op::Sigmoid | Op::Relu => {
            let (entry, alpha) = match *op {
                Op::Add => ("add", 0.0),
                Op::Mul => ("mul", 0.0),
                Op::Axpy { alpha } => ("axpy", alpha),
                Op::Scale { alpha } => ("scale", alpha),
                Op::Gelu(GeluKind::Erf) => ("gelu_erf", 0.0),
                Op::Gelu(GeluKind::Tanh) => ("gelu_tanh", 0.0),
                Op::Sigmoid => ("sigmoid", 0.0),
                Op::Relu => ("relu", 0.0),
                _ => ("silu", 0.0),
            };
            let (b, b_len) = match inputs.get(1) {
                Some(t) => (buffer(t)?, t.shape.numel()),
                None => (g.dummy(), 1),
            };
            let params = words(&[u(numel), u(b_len.max(1)), alpha.to_bits(), 0]);
            g.dispatch(Shader::Elementwise, entry, &[], &params, &[inb(0)?, b, ob], g.grid(numel, WG)?)?;
        }
        Op::Softmax | Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
            let (entry, eps) = match *op {
                Op::Softmax => ("softmax", 0.0),
                Op::LayerNorm { eps } => ("layer_norm", eps),
                Op::RmsNorm { eps } => ("rms_norm", eps),
                _ => unreachable!(),
            };
            let shape = &inputs[0].shape;
            let gamma = if inputs.len() > 1 { inb(1)? } else { g.dummy() };
            let beta = if inputs.len() > 2 { inb(2)? } else { g.dummy() };
            let params = words(&[u(shape.rows()), u(shape.last()), eps.to_bits(), 0]);
            g.dispatch(Shader::Norm, entry, &[], &params, &[inb(0)?, gamma, beta, ob], g.grid(shape.rows(), 1)?)?;
        }
        Op::Embedding => {
            // One dispatch per row block of a split table: the first writes zeros for ids outside
            // its rows, the later ones only their own rows.
            let cols = inputs[0].shape.dims()[1];
            let consts = [("T_DTYPE", inputs[0].dtype.shader_code() as f64)];
            for (i, (tb, first, rows)) in blocks(inputs[0])?.into_iter().enumerate() {
                let params = words(&[u(numel), u(cols), u(rows), u(first), (i == 0) as u32, 0, 0, 0]);
                g.dispatch(Shader::Embedding, "embedding", &consts, &params, &[tb, inb(1)?, ob], g.grid(numel, WG)?)?;
            }
        }
        Op::Rope { theta } => {
            let x = &inputs[0].shape;
            let pairs = numel / 2;
            let (t, d) = (x.from_end(1), x.last());
            let rows_per_batch = if inputs[1].shape.numel() > t { numel / d / x.dims()[0] } else { 0 };
            let params = words(&[u(pairs), u(t), u(d), theta.to_bits(), u(rows_per_batch), 0, 0, 0]);
            g.dispatch(Shader::Rope, "rope", &[], &params, &[inb(0)?, inb(1)?, ob], g.grid(pairs, WG)?)?;
        }
        Op::Attention { causal, scale } => {
            let (q, k, v) = (inputs[0].shape.dims(), inputs[1].shape.dims(), inputs[2].shape.dims());
            if v[3] > 4 * ATTN_WG as usize {
                return Err(Error::UnsupportedOp { op: name, backend: "gpu (value head dim > 256)", dtype: DType::F32 });
            }
            let mask = match inputs.get(3) {
                Some(t) => buffer(t)?,
                None => g.dummy(),
            };
            let params = words(&[
                u(q[1]),
                u(k[1]),
                u(q[2]),
                u(k[2]),
                u(q[3]),
                u(v[3]),
                causal as u32,
                (inputs.len() == 4) as u32,
                scale.to_bits(),
                0,
                0,
                0,
            ]);
            let groups = [u(q[2]), u(q[1]), u(q[0])];
            g.dispatch(Shader::Attention, "attention", &[], &params, &[inb(0)?, inb(1)?, inb(2)?, mask, ob], groups)?;
        }
        Op::Permute { perm } => {
            let x = &inputs[0].shape;
            let (dims, strides) = x.permuted_layout(&perm);
            let (od, os) = (dims.map(u), strides.map(u));
            let mut w = od.to_vec();
            w.extend_from_slice(&os);
            w.extend_from_slice(&[u(numel), 0, 0, 0]);
            g.dispatch(Shader::Permute, "permute", &[], &words(&w), &[inb(0)?, ob], g.grid(numel, WG)?)?;
        }
        Op::MoeRoute { k, sigmoid, groups, topk_group, norm, scale } => {
            let x = &inputs[0].shape;
            let bias = match inputs.get(1) {
                Some(t) => buffer(t)?,
                None => g.dummy(),
            };
            let params = words(&[
                u(x.rows()),
                u(x.last()),
                u(k),
                sigmoid as u32,
                u(groups),
                u(topk_group),
                norm as u32,
                (inputs.len() == 2) as u32,
                scale.to_bits(),
                0,
                0,
                0,
            ]);
            let ib = buffer(&out[1])?;
            g.dispatch(Shader::MoeRoute, "moe_route", &[], &params, &[inb(0)?, bias, ob, ib], g.grid(x.rows(), 64)?)?;
        }
        Op::ExpertMatmul => {
            let (w, idx) = (&inputs[1].shape, &inputs[2].shape);
            let (n, cin) = (w.dims()[1], w.dims()[2]);
            let (picks, k) = (idx.numel(), idx.dims()[1]);
            let per_pick = (inputs[0].shape.rank() == 3) as u32;
            let max = g.max_groups() as usize;
            let (gy, gz) = (picks.min(max), picks.div_ceil(max));
            let groups = [u(n).div_ceil(64), u(gy), u(gz)];
            let consts = [("W_DTYPE", inputs[1].dtype.shader_code() as f64)];
            // One dispatch per block of experts of a split stack (one block of all E otherwise): each
            // computes the picks routed to its experts, the first also writes 0 for every other pick.
            for (i, (wb, first, experts)) in blocks(inputs[1])?.into_iter().enumerate() {
                let params = words(&[u(picks), u(k), u(n), u(cin), u(experts), per_pick, u(first), (i == 0) as u32]);
                g.dispatch(Shader::ExpertMatmul, "expert_matmul", &consts, &params, &[inb(0)?, wb, inb(2)?, ob], groups)?;
            }
        }
        Op::MoeBucket { experts } => {
            let picks = inputs[0].shape.numel();
            let params = words(&[u(picks), u(experts), 0, 0]);
            let order = buffer(&out[1])?;
            // One workgroup: see moe_bucket.wgsl for the cost and the limits.
            g.dispatch(Shader::MoeBucket, "moe_bucket", &[], &params, &[inb(0)?, ob, order], [1, 1, 1])?;
        }
        Op::GroupedMatmul => {
            let w = &inputs[1].shape;
            let (e, n, cin) = (w.dims()[0], w.dims()[1], w.dims()[2]);
            let (picks, k) = (inputs[3].shape.numel(), inputs[3].shape.dims()[1]);
            let per_pick = (inputs[0].shape.rank() == 3) as u32;
            let bias = match inputs.get(4) {
                Some(t) => buffer(t)?,
                None => g.dummy(),
            };
            let tile = grouped_matmul_tile(picks, e, n);
            let consts = grouped_matmul_constants(inputs[1].dtype.shader_code(), tile);
            // One dispatch per block of experts of a split stack (one block of all E otherwise): each
            // takes its experts' buckets; the first also the invalid bucket (ids >= E, written as 0).
            for (i, (wb, first, count)) in blocks(inputs[1])?.into_iter().enumerate() {
                let params = words(&[
                    u(picks),
                    u(k),
                    u(n),
                    u(cin),
                    u(e),
                    per_pick,
                    (inputs.len() == 5) as u32,
                    u(first),
                    u(count),
                    (i == 0) as u32,
                    0,
                    0,
                ]);
                // The block's buckets' tiles, bounded without reading the counts back (grouped_matmul.wgsl).
                let tiles = picks.div_ceil(tile.bm() as usize) + count + 1;
                let [gy, gz] = fold(tiles, g.max_groups());
                let groups = [u(n).div_ceil(tile.bn()), gy, gz];
                let bufs = [inb(0)?, wb, inb(2)?, inb(3)?, bias, ob];
                g.dispatch(Shader::GroupedMatmul, "grouped_matmul", &consts, &params, &bufs, groups)?;
            }
        }
        Op::Concat { axis } => {
            let (a, b) = (&inputs[0].shape, &inputs[1].shape);
            let outer: usize = a.dims()[..axis].iter().product();
            let params = words(&[u(numel), u(a.numel() / outer), u(b.numel() / outer), 0]);
            g.dispatch(Shader::Concat, "concat", &[], &params, &[inb(0)?, inb(1)?, ob], g.grid(numel, WG)?)?;
        }
        Op::TopK { k } => {
            let x = &inputs[0].shape;
            let params = words(&[u(x.rows()), u(x.last()), u(k), 0]);
            let ib = buffer(&out[1])?;
            g.dispatch(Shader::TopK, "topk", &[], &params, &[inb(0)?, ob, ib], g.grid(x.rows(), 1)?)?;
        }
        Op::LoraShrink => {
            let (a, sel) = (&inputs[1].shape, &inputs[2].shape);
            let (n, r, cin) = (a.dims()[0], a.dims()[1], a.dims()[2]);
            let (picks, k) = (sel.numel(), sel.dims()[1]);
            lora_fits(name, r, k)?;
            let params = words(&[u(picks), u(k), u(r), u(cin), u(n), 0, 0, 0]);
            let lanes = lora_shrink_lanes(r);
            let [gy, gz] = fold(picks, g.max_groups());
            let groups = [u(r).div_ceil(LORA_SHRINK_WG / lanes), gy, gz];
            let consts = lora_shrink_constants(inputs[1].dtype.shader_code(), lanes);
            g.dispatch(Shader::LoraShrink, "lora_shrink", &consts, &params, &[inb(0)?, inb(1)?, inb(2)?, ob], groups)?;
        }
        Op::LoraExpand => {
            let (b, sel) = (&inputs[2].shape, &inputs[3].shape);
            let (n, cout, r) = (b.dims()[0], b.dims()[1], b.dims()[2]);
            let (rows, k) = (sel.dims()[0], sel.dims()[1]);
            lora_fits(name, r, k)?;
            let params = words(&[u(rows), u(k), u(r), u(cout), u(n), 0, 0, 0]);
            let [gy, gz] = fold(rows, g.max_groups());
            let groups = [u(cout).div_ceil(LORA_EXPAND_WG), gy, gz];
            let consts = [("W_DTYPE", inputs[2].dtype.shader_code() as f64)];
            let bufs = [inb(0)?, inb(1)?, inb(2)?, inb(3)?, inb(4)?, ob];
            g.dispatch(Shader::LoraExpand, "lora_expand", &consts, &params, &bufs, groups)?;
        }
        Op::MagnitudeMask | Op::RandomMask { .. } | Op::DellaMask { .. } | Op::MaskedRescale { .. } | Op::TaskMerge { .. } => {
            super::merge::encode(g, op, inputs, &out)?;
        }
    }
    Ok(out)
}
