//! The CPU backend: a complete, readable implementation of every op. It is the oracle the GPU
//! kernels are checked against, and is itself checked against PyTorch goldens (`tests/fixtures`).
//! Reductions accumulate in f64 so the oracle is more accurate than any kernel it judges.

mod attention;
mod elementwise;
mod embed;
mod fast;
mod lora;
pub mod matmul;
pub(crate) mod merge;
mod moe;
mod norm;
// The wasm SIMD128 build's GEMM and vector math; elsewhere only their tests use them (the portable
// lanes are how the tiling and the formulas are tested natively).
#[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
mod tiled;
mod topk;
#[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
mod vmath;

use crate::device::{Backend, DeviceInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::shape::Shape;
use crate::tensor::{HostData, Storage, Tensor, TensorData};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct CpuBackend {}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend {}
    }

    /// `data` as a CPU tensor, kept as it is (no copy).
    pub(crate) fn upload_owned(data: TensorData) -> Tensor {
        Tensor { shape: *data.shape(), dtype: data.dtype(), storage: Storage::Cpu(Arc::new(data.into_data())) }
    }

    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: "cpu",
            name: std::env::consts::ARCH.to_string(),
            backend: "cpu".into(),
            device_type: "Cpu".into(),
            max_storage_buffer_binding_size: u64::MAX,
            max_buffer_size: u64::MAX,
            max_compute_workgroup_storage_size: 0,
            max_compute_invocations_per_workgroup: 0,
            shader_f16: false,
            subgroups: false,
            threads: threads(),
        }
    }
}

/// Worker threads the CPU path uses (rayon's pool natively; 1 in wasm).
pub fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

fn host(t: &Tensor) -> Result<&HostData> {
    match &t.storage {
        Storage::Cpu(d) => Ok(d),
        Storage::Gpu(_) => Err(Error::WrongDevice { wanted: "cpu", found: "gpu" }),
    }
}

impl Backend for CpuBackend {
    fn upload(&self, data: &TensorData) -> Result<Tensor> {
        Ok(CpuBackend::upload_owned(data.clone()))
    }

    async fn download(&self, t: &Tensor) -> Result<TensorData> {
        TensorData::new(t.dims(), host(t)?.clone())
    }

    fn exec(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let views = inputs.iter().map(|t| Ok((t.shape, host(t)?))).collect::<Result<Vec<_>>>()?;
        let outs = match run_fast(op, &views)? {
            Some(outs) => outs,
            None => run_views(op, &views)?,
        };
        Ok(outs
            .into_iter()
            .map(|d| Tensor { shape: *d.shape(), dtype: d.dtype(), storage: Storage::Cpu(Arc::new(d.into_data())) })
            .collect())
    }

    fn supports(&self, _op: &Op, _dtype: DType) -> bool {
        true
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Runs `op` on host data: the reference semantics of the op table.
pub fn run(op: &Op, inputs: &[&TensorData]) -> Result<Vec<TensorData>> {
    let views: Vec<(Shape, &HostData)> = inputs.iter().map(|d| (*d.shape(), d.data())).collect();
    run_views(op, &views)
}

fn f32s(d: &HostData) -> &[f32] {
    match d {
        HostData::F32(v) => v,
        _ => unreachable!("Op::infer checked the dtype"),
    }
}

fn u32s(d: &HostData) -> &[u32] {
    match d {
        HostData::U32(v) => v,
        _ => unreachable!("Op::infer checked the dtype"),
    }
}

/// The device's fast f32 versions of the costly non-matmul ops ([`fast`]); `None`: the op runs
/// as the oracle does.
fn run_fast(op: &Op, inputs: &[(Shape, &HostData)]) -> Result<Option<Vec<TensorData>>> {
    if !matches!(op, Op::Attention { .. } | Op::Softmax | Op::Gelu(_) | Op::Silu | Op::Sigmoid | Op::LayerNorm { .. } | Op::RmsNorm { .. }) {
        return Ok(None);
    }
    let metas: Vec<_> = inputs.iter().map(|(s, d)| (*s, d.dtype())).collect();
    let out_shape = op.infer(&metas)?[0].0;
    let x = |i: usize| f32s(inputs[i].1);
    let v = match *op {
        Op::Attention { causal, scale } => {
            let mask = inputs.get(3).map(|m| u32s(m.1));
            fast::attention(&inputs[0].0, x(0), &inputs[1].0, x(1), &inputs[2].0, x(2), mask, causal, scale)
        }
        Op::Softmax => fast::softmax(x(0), out_shape.last()),
        Op::LayerNorm { eps } => fast::norm(x(0), x(1), Some(x(2)), eps),
        Op::RmsNorm { eps } => fast::norm(x(0), x(1), None, eps),
        Op::Gelu(kind) => fast::gelu(x(0), kind),
        Op::Silu => fast::silu_all(x(0)),
        Op::Sigmoid => fast::sigmoid_all(x(0)),
        _ => unreachable!("matched above"),
    };
    Ok(Some(vec![TensorData::f32(out_shape.dims(), v)?]))
}

fn run_views(op: &Op, inputs: &[(Shape, &HostData)]) -> Result<Vec<TensorData>> {
    let metas: Vec<_> = inputs.iter().map(|(s, d)| (*s, d.dtype())).collect();
    let outs = op.infer(&metas)?;
    let out_shape = outs[0].0;
    let x = |i: usize| f32s(inputs[i].1);
    let one = |v: Vec<f32>| Ok(vec![TensorData::f32(out_shape.dims(), v)?]);
    match *op {
        Op::Matmul { .. } if matches!(inputs[1].1, HostData::Quant(_)) => {
            let HostData::Quant(w) = inputs[1].1 else { unreachable!("matched above") };
            let m = inputs[0].0.numel() / inputs[0].0.last().max(1);
            one(crate::quant::matmul_t(x(0), m, w, inputs.get(2).map(|b| f32s(b.1))))
        }
        Op::Matmul { trans_b } => {
            one(matmul::matmul(&inputs[0].0, x(0), &inputs[1].0, inputs[1].1, trans_b, inputs.get(2).map(|b| f32s(b.1))))
        }
        Op::Add => one(elementwise::broadcast(x(0), x(1), |a, b| a + b)),
        Op::Mul => one(elementwise::broadcast(x(0), x(1), |a, b| a * b)),
        Op::Scale { alpha } => one(x(0).iter().map(|v| alpha * v).collect()),
        Op::Axpy { alpha } => one(x(0).iter().zip(x(1)).map(|(a, b)| alpha * a + b).collect()),
        Op::Softmax => one(norm::softmax(x(0), out_shape.last())),
        Op::LayerNorm { eps } => one(norm::layer_norm(x(0), x(1), Some(x(2)), eps, true)),
        Op::RmsNorm { eps } => one(norm::layer_norm(x(0), x(1), None, eps, false)),
        Op::Gelu(kind) => one(x(0).iter().map(|&v| elementwise::gelu(v, kind)).collect()),
        Op::Silu => one(x(0).iter().map(|&v| elementwise::silu(v)).collect()),
        Op::Sigmoid => one(x(0).iter().map(|&v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32).collect()),
        Op::Relu => one(x(0).iter().map(|&v| v.max(0.0)).collect()),
        Op::Embedding => one(embed::embedding(&inputs[0].0, inputs[0].1, u32s(inputs[1].1))),
        Op::Rope { theta } => one(embed::rope(x(0), &inputs[0].0, u32s(inputs[1].1), theta)),
        Op::Attention { causal, scale } => {
            let mask = inputs.get(3).map(|m| u32s(m.1));
            one(attention::attention(&inputs[0].0, x(0), &inputs[1].0, x(1), &inputs[2].0, x(2), mask, causal, scale))
        }
        Op::Permute { perm } => {
            let src = &inputs[0];
            let data = match src.1 {
                HostData::F32(v) => HostData::F32(embed::permute(v, &src.0, &perm)),
                HostData::F16(v) => HostData::F16(embed::permute(v, &src.0, &perm)),
                HostData::BF16(v) => HostData::BF16(embed::permute(v, &src.0, &perm)),
                HostData::U32(v) => HostData::U32(embed::permute(v, &src.0, &perm)),
                HostData::I32(v) => HostData::I32(embed::permute(v, &src.0, &perm)),
                HostData::Quant(_) => unreachable!("Op::infer refuses quantised inputs here"),
            };
            Ok(vec![TensorData::new(out_shape.dims(), data)?])
        }
        Op::MoeRoute { k, sigmoid, groups, topk_group, norm, scale } => {
            let e = inputs[0].0.last();
            let bias = inputs.get(1).map(|b| f32s(b.1));
            let (w, idx) = topk::moe_route(x(0), e, bias, k, sigmoid, groups, topk_group, norm, scale);
            Ok(vec![TensorData::f32(out_shape.dims(), w)?, TensorData::u32(out_shape.dims(), idx)?])
        }
        Op::ExpertMatmul => one(matmul::expert_matmul(&inputs[0].0, x(0), &inputs[1].0, inputs[1].1, u32s(inputs[2].1), &inputs[2].0)),
        Op::MoeBucket { experts } => {
            let (offsets, order) = moe::moe_bucket(u32s(inputs[0].1), experts);
            Ok(vec![TensorData::u32(out_shape.dims(), offsets)?, TensorData::u32(outs[1].0.dims(), order)?])
        }
        Op::GroupedMatmul => {
            let (offsets, order) = (u32s(inputs[2].1), u32s(inputs[3].1));
            let k = inputs[3].0.dims()[1];
            let bias = inputs.get(4).map(|b| f32s(b.1));
            one(moe::grouped_matmul(&inputs[0].0, x(0), &inputs[1].0, inputs[1].1, offsets, order, k, bias)?)
        }
        Op::Concat { axis } => {
            let (a, b) = (&inputs[0], &inputs[1]);
            let outer: usize = a.0.dims()[..axis].iter().product();
            let (ra, rb) = (a.0.numel() / outer.max(1), b.0.numel() / outer.max(1));
            let data = match (a.1, b.1) {
                (HostData::F32(x), HostData::F32(y)) => HostData::F32(embed::concat(x, y, outer, ra, rb)),
                (HostData::F16(x), HostData::F16(y)) => HostData::F16(embed::concat(x, y, outer, ra, rb)),
                (HostData::BF16(x), HostData::BF16(y)) => HostData::BF16(embed::concat(x, y, outer, ra, rb)),
                (HostData::U32(x), HostData::U32(y)) => HostData::U32(embed::concat(x, y, outer, ra, rb)),
                (HostData::I32(x), HostData::I32(y)) => HostData::I32(embed::concat(x, y, outer, ra, rb)),
                _ => unreachable!("Op::infer checked the dtypes agree"),
            };
            Ok(vec![TensorData::new(out_shape.dims(), data)?])
        }
        Op::TopK { k } => {
            let (vals, idx) = topk::topk(x(0), inputs[0].0.last(), k);
            Ok(vec![TensorData::f32(out_shape.dims(), vals)?, TensorData::u32(outs[1].0.dims(), idx)?])
        }
        Op::LoraShrink => {
            let (a, sel) = (&inputs[1], &inputs[2].0);
            let [n, r, cin] = [a.0.dims()[0], a.0.dims()[1], a.0.dims()[2]];
            one(lora::lora_shrink(x(0), a.1, [n, r, cin], u32s(inputs[2].1), sel.dims()[1]))
        }
        Op::LoraExpand => {
            let (b, sel) = (&inputs[2], &inputs[3].0);
            let [n, cout, r] = [b.0.dims()[0], b.0.dims()[1], b.0.dims()[2]];
            one(lora::lora_expand(x(0), x(1), b.1, [n, cout, r], u32s(inputs[3].1), x(4), sel.dims()[1]))
        }
        Op::MagnitudeMask => Ok(vec![TensorData::u32(out_shape.dims(), merge::magnitude_mask(x(0), out_shape.last(), u32s(inputs[1].1)))?]),
        Op::RandomMask { seed, key } => {
            Ok(vec![TensorData::u32(out_shape.dims(), merge::random_mask(out_shape.last(), out_shape.rows(), x(1), seed, key))?])
        }
        Op::DellaMask { seed, key } => {
            let d = out_shape.dims();
            Ok(vec![TensorData::u32(d, merge::della_mask(x(0), d[1], d[2], x(1), seed, key))?])
        }
        Op::MaskedRescale { l1 } => one(merge::masked_rescale(x(0), u32s(inputs[1].1), out_shape.last(), x(2), l1)),
        Op::TaskMerge { consensus, weighted_sign, count_divisor, normalize, lambda } => {
            one(merge::task_merge(x(0), x(1), x(2), consensus, weighted_sign, count_divisor, normalize, lambda))
        }
    }
}
