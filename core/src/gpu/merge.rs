//! Encoders for the merging ops (`shaders/merge_*.wgsl`). Inputs were checked by `Op::infer`.

use super::kernels::Shader;
use super::{buffer, GpuBackend};
use crate::dtype::DType;
use crate::error::Result;
use crate::op::{Consensus, Op};
use crate::shape::Shape;
use crate::tensor::Tensor;

const WG: u32 = 256;
/// Elements per workgroup in the row-chunked kernels (16 per thread).
const CHUNK: usize = 4096;

fn words(w: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(w).to_vec()
}

fn u(x: usize) -> u32 {
    x as u32 // counts fit: buffers are capped by the u32 binding-size limit
}

pub(super) fn encode(g: &GpuBackend, op: &Op, inputs: &[&Tensor], out: &[Tensor]) -> Result<()> {
    let inb = |i: usize| buffer(inputs[i]);
    let ob = buffer(&out[0])?;
    let numel = out[0].shape.numel();
    match *op {
        Op::MagnitudeMask => {
            let x = &inputs[0].shape;
            let (r, n) = (x.dims()[0], x.dims()[1]);
            let scratch = g.alloc(Shape::new(&[r * 2 * 260])?, DType::U32, "MagnitudeMask scratch")?;
            let sb = buffer(&scratch)?;
            let chunks = n.div_ceil(CHUNK);
            let bufs = [inb(0)?, inb(1)?, sb, ob];
            let params = |pass: u32, shift: u32, known: u32| words(&[u(r), u(n), pass, shift, known, u(CHUNK), 0, 0]);
            let small = [u(r * 2).div_ceil(64), 1, 1];
            g.dispatch(Shader::MergeSelect, "sel_init", &[], &params(0, 0, 0), &bufs, small)?;
            for pass in 0..8u32 {
                let shift = 24 - 8 * (pass % 4);
                let known = if shift == 24 { 0 } else { u32::MAX << (shift + 8) };
                let pr = params(pass, shift, known);
                g.dispatch(Shader::MergeSelect, "sel_hist", &[], &pr, &bufs, [u(chunks), u(r), 1])?;
                g.dispatch(Shader::MergeSelect, "sel_pick", &[], &pr, &bufs, small)?;
            }
            g.dispatch(Shader::MergeSelect, "sel_mask", &[], &params(0, 0, 0), &bufs, [u(chunks), u(r), 1])?;
        }
        Op::RandomMask { seed, key } | Op::DellaMask { seed, key } => {
            let d = inputs[0].shape.dims();
            let (entry, n, groups) = match op {
                Op::RandomMask { .. } => ("random_mask", d[1], 1),
                _ => ("della_mask", d[2], d[1]),
            };
            let params = words(&[u(numel), u(n), u(groups), seed as u32, (seed >> 32) as u32, key, 0, 0]);
            g.dispatch(Shader::MergeRandom, entry, &[], &params, &[inb(0)?, inb(1)?, ob], g.grid(numel, WG)?)?;
        }
        Op::MaskedRescale { l1 } => {
            let x = &inputs[0].shape;
            let (r, n) = (x.dims()[0], x.dims()[1]);
            let chunks = n.div_ceil(CHUNK).max(1);
            let part = g.alloc(Shape::new(&[r * chunks * 2 + r])?, DType::F32, "MaskedRescale scratch")?;
            let bufs = [inb(0)?, inb(1)?, inb(2)?, buffer(&part)?, ob];
            let params = words(&[u(r), u(n), u(CHUNK), u(chunks), l1 as u32, 0, 0, 0]);
            g.dispatch(Shader::MergeRescale, "rescale_partial", &[], &params, &bufs, [u(chunks), u(r), 1])?;
            g.dispatch(Shader::MergeRescale, "rescale_factor", &[], &params, &bufs, [u(r).div_ceil(64), 1, 1])?;
            g.dispatch(Shader::MergeRescale, "rescale_apply", &[], &params, &bufs, [u(chunks), u(r), 1])?;
        }
        Op::TaskMerge { consensus, weighted_sign, count_divisor, normalize, lambda } => {
            let r = inputs[1].shape.dims()[0];
            let c = match consensus {
                Consensus::None => 0,
                Consensus::Sum => 1,
                Consensus::Count => 2,
            };
            let params = words(&[u(numel), u(r), c, weighted_sign as u32, count_divisor as u32, normalize as u32, lambda.to_bits(), 0]);
            g.dispatch(Shader::MergeCombine, "task_merge", &[], &params, &[inb(0)?, inb(1)?, inb(2)?, ob], g.grid(numel, WG)?)?;
        }
        _ => unreachable!("only merge ops are routed here"),
    }
    Ok(())
}
