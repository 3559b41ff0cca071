//! Conformance: one table of cases (op x shapes x dtypes, each with its tolerance), run on every
//! available device and compared with the CPU oracle. A meta-test fails when an op has no case.
//!
//! Tolerances are per op and set from what the maths allows, not from observed errors:
//! exact for gathers and selection, a few f32 ulps for elementwise maths, sqrt(K)-scaled for
//! f32 dot products, and the WebGPU/Vulkan precision of exp/sin/cos for softmax, attention, RoPE.

use std::collections::HashSet;
use taskloom::op::LORA_EMPTY;
use taskloom::{DType, Device, GeluKind, Op, OpKind, TensorData};
use taskloom_tests::{compare, gpu_or_skip, Rng};

struct Case {
    name: String,
    op: Op,
    inputs: Vec<TensorData>,
    atol: f32,
    rtol: f32,
}

fn f32s(rng: &mut Rng, dims: &[usize], lo: f32, hi: f32) -> TensorData {
    TensorData::f32(dims, rng.vec(dims.iter().product(), lo, hi)).unwrap()
}

fn weights(rng: &mut Rng, dims: &[usize], dtype: DType) -> TensorData {
    TensorData::from_f32_as(dims, &rng.vec(dims.iter().product(), -1.0, 1.0), dtype).unwrap()
}

fn case(name: String, op: Op, inputs: Vec<TensorData>, atol: f32, rtol: f32) -> Case {
    Case { name, op, inputs, atol, rtol }
}

fn matmul_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    let sizes = [(1, 1, 1), (3, 17, 5), (17, 3, 255), (255, 257, 17), (257, 64, 3), (64, 255, 257), (1, 256, 255)];
    for (i, &(m, k, n)) in sizes.iter().enumerate() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            for trans_b in [false, true] {
                let a = f32s(rng, &[m, k], -1.0, 1.0);
                let b_dims = if trans_b { [n, k] } else { [k, n] };
                let b = weights(rng, &b_dims, dt);
                let mut inputs = vec![a, b];
                let bias = (i + trans_b as usize).is_multiple_of(2);
                if bias {
                    inputs.push(f32s(rng, &[n], -1.0, 1.0));
                }
                let atol = 2e-6 * (k as f32).sqrt() * 4.0;
                v.push(case(format!("matmul {m}x{k}x{n} {dt} trans_b={trans_b} bias={bias}"), Op::Matmul { trans_b }, inputs, atol, 1e-5));
            }
        }
    }
    // Batched: a [2, 3, m, k] with a shared rank-2 b, and with a per-batch b [6, k, n].
    for (shared, dt) in [(true, DType::F16), (false, DType::F32), (false, DType::BF16)] {
        let (m, k, n) = (17, 33, 19);
        let a = f32s(rng, &[2, 3, m, k], -1.0, 1.0);
        let b = if shared { weights(rng, &[k, n], dt) } else { weights(rng, &[6, k, n], dt) };
        v.push(case(format!("matmul batched shared_b={shared} {dt}"), Op::Matmul { trans_b: false }, vec![a, b], 5e-5, 1e-5));
    }
}

fn elementwise_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    let shapes: [&[usize]; 4] = [&[1], &[3, 17], &[17, 255], &[2, 3, 257]];
    for s in shapes {
        let suffix = &s[s.len() - 1..];
        for (op, b_dims) in [(Op::Add, s), (Op::Add, suffix), (Op::Mul, s), (Op::Mul, suffix)] {
            let inputs = vec![f32s(rng, s, -4.0, 4.0), f32s(rng, b_dims, -4.0, 4.0)];
            v.push(case(format!("{} {s:?} + {b_dims:?}", op.name()), op, inputs, 0.0, 1e-6));
        }
        v.push(case(format!("scale {s:?}"), Op::Scale { alpha: -0.37 }, vec![f32s(rng, s, -4.0, 4.0)], 0.0, 1e-6));
        let (x, y) = (f32s(rng, s, -4.0, 4.0), f32s(rng, s, -4.0, 4.0));
        v.push(case(format!("axpy {s:?}"), Op::Axpy { alpha: 1.75 }, vec![x, y], 1e-6, 1e-6));
        for op in [Op::Gelu(GeluKind::Erf), Op::Gelu(GeluKind::Tanh), Op::Silu, Op::Sigmoid, Op::Relu] {
            v.push(case(format!("{op:?} {s:?}"), op, vec![f32s(rng, s, -10.0, 10.0)], 1e-6, 2e-6));
        }
    }
}

fn reduction_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    let shapes: [&[usize]; 5] = [&[1, 1], &[3, 17], &[17, 255], &[4, 257], &[2, 3, 64]];
    for s in shapes {
        let c = *s.last().unwrap();
        v.push(case(format!("softmax {s:?}"), Op::Softmax, vec![f32s(rng, s, -30.0, 30.0)], 1e-6, 1e-5));
        let (x, g, b) = (f32s(rng, s, -3.0, 5.0), f32s(rng, &[c], 0.5, 1.5), f32s(rng, &[c], -1.0, 1.0));
        v.push(case(format!("layer_norm {s:?}"), Op::LayerNorm { eps: 1e-5 }, vec![x.clone(), g.clone(), b], 2e-5, 2e-5));
        v.push(case(format!("rms_norm {s:?}"), Op::RmsNorm { eps: 1e-6 }, vec![x, g], 1e-5, 2e-5));
    }
    // Stability: huge logits must not overflow.
    v.push(case("softmax large logits".into(), Op::Softmax, vec![f32s(rng, &[3, 255], 1e4, 2e4)], 1e-6, 1e-4));
}

fn gather_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    for (vocab, c, ids_dims) in [(17usize, 3usize, vec![1usize]), (257, 64, vec![3, 17]), (255, 17, vec![2, 3, 5])] {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let n: usize = ids_dims.iter().product();
            // A few ids past the vocabulary: they must give zero rows on every device.
            let ids = (0..n).map(|i| if i % 7 == 6 { vocab as u32 + i as u32 } else { rng.below(vocab as u32) }).collect();
            let inputs = vec![weights(rng, &[vocab, c], dt), TensorData::u32(&ids_dims, ids).unwrap()];
            v.push(case(format!("embedding {vocab}x{c} {dt} ids {ids_dims:?}"), Op::Embedding, inputs, 0.0, 0.0));
        }
    }
    for (dims, theta) in [(vec![1usize, 1, 1, 2], 10000.0), (vec![2, 3, 17, 64], 10000.0), (vec![1, 2, 255, 16], 500000.0), (vec![3, 6], 100.0)] {
        let t = dims[dims.len() - 2];
        let pos = (0..t).map(|i| (i as u32 * 3 + 1) % 300).collect();
        let inputs = vec![f32s(rng, &dims, -1.0, 1.0), TensorData::u32(&[t], pos).unwrap()];
        v.push(case(format!("rope {dims:?} theta={theta}"), Op::Rope { theta }, inputs, 2e-4, 0.0));
    }
    // Per-batch positions [B, T] (left-padded batches).
    let pos = (0..2 * 17).map(|i| (i as u32 * 7) % 40).collect();
    let inputs = vec![f32s(rng, &[2, 3, 17, 16], -1.0, 1.0), TensorData::u32(&[2, 17], pos).unwrap()];
    v.push(case("rope per-batch positions".into(), Op::Rope { theta: 10000.0 }, inputs, 2e-4, 0.0));
}

fn attention_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    // (B, Hq, Hkv, Tq, Tk, D, Dv, causal, mask)
    let specs = [
        (1, 1, 1, 1, 1, 1, 1, false, false),
        (2, 4, 2, 17, 17, 16, 16, true, false),
        (1, 2, 1, 3, 257, 8, 17, true, true),
        (2, 3, 3, 5, 33, 32, 64, false, true),
        (1, 4, 1, 17, 9, 16, 16, true, true),
    ];
    for (b, hq, hkv, tq, tk, d, dv, causal, masked) in specs {
        let mut inputs =
            vec![f32s(rng, &[b, hq, tq, d], -1.0, 1.0), f32s(rng, &[b, hkv, tk, d], -1.0, 1.0), f32s(rng, &[b, hkv, tk, dv], -1.0, 1.0)];
        if masked {
            // Batch 0 pads its last third; the last batch masks every key (its rows must be 0).
            let mask = (0..b * tk).map(|i| if i / tk == b - 1 && b > 1 { 0 } else { (i % tk < tk - tk / 3) as u32 }).collect();
            inputs.push(TensorData::u32(&[b, tk], mask).unwrap());
        }
        let op = Op::Attention { causal, scale: 1.0 / (d as f32).sqrt() };
        v.push(case(format!("attention b{b} hq{hq} hkv{hkv} tq{tq} tk{tk} d{d} dv{dv} causal={causal} mask={masked}"), op, inputs, 2e-5, 1e-4));
    }
}

fn permute_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    let specs: [(&[usize], [usize; 4]); 5] = [
        (&[1], [0, 0, 0, 0]),
        (&[17, 3], [1, 0, 0, 0]),
        (&[2, 17, 3, 16], [0, 2, 1, 3]),
        (&[3, 5, 257], [2, 0, 1, 0]),
        (&[2, 3, 4, 5], [3, 2, 1, 0]),
    ];
    for (dims, perm) in specs {
        v.push(case(format!("permute {dims:?} {perm:?}"), Op::Permute { perm }, vec![f32s(rng, dims, -1.0, 1.0)], 0.0, 0.0));
    }
    let concat: [(&[usize], &[usize], usize); 4] = [(&[1], &[1], 0), (&[1, 2, 3, 16], &[1, 2, 17, 16], 2), (&[3, 5], &[3, 257], 1), (&[2, 3], &[255, 3], 0)];
    for (a, b, axis) in concat {
        let inputs = vec![f32s(rng, a, -1.0, 1.0), f32s(rng, b, -1.0, 1.0)];
        v.push(case(format!("concat {a:?} {b:?} axis {axis}"), Op::Concat { axis }, inputs, 0.0, 0.0));
    }
    let ids = TensorData::u32(&[3, 17], (0..51).collect()).unwrap();
    v.push(case("permute u32 [3, 17]".into(), Op::Permute { perm: [1, 0, 0, 0] }, vec![ids], 0.0, 0.0));
}

fn expert_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    // (R, K, E, N, Cin, x per pick)
    for (r, k, e, n, cin, per_pick) in [(1, 1, 1, 1, 1, false), (17, 2, 4, 65, 33, false), (3, 3, 8, 17, 257, true), (9, 2, 5, 3, 64, true)] {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = if per_pick { f32s(rng, &[r, k, cin], -1.0, 1.0) } else { f32s(rng, &[r, cin], -1.0, 1.0) };
            // Some ids past E: those picks must give zero rows.
            let idx = (0..r * k).map(|i| if i % 11 == 10 { e as u32 } else { rng.below(e as u32) }).collect();
            let inputs = vec![x, weights(rng, &[e, n, cin], dt), TensorData::u32(&[r, k], idx).unwrap()];
            let atol = 2e-6 * (cin as f32).sqrt() * 4.0;
            v.push(case(format!("expert_matmul r{r} k{k} e{e} n{n} cin{cin} per_pick={per_pick} {dt}"), Op::ExpertMatmul, inputs, atol, 1e-5));
        }
    }
}

/// Expert ids for `r x k` picks of `e` experts in one of the bucketing patterns the kernels must
/// handle: random with some invalid ids (`>= E`, bucket E), all on one expert, or on the first and
/// last experts only (the ones between are empty).
fn moe_ids(rng: &mut Rng, r: usize, k: usize, e: usize, pattern: &str) -> TensorData {
    let e32 = e as u32;
    let ids = (0..r * k)
        .map(|i| match pattern {
            "one" => e32 / 2,
            "ends" => if rng.below(2) == 0 { 0 } else { e32 - 1 },
            _ => match i % 11 {
                10 => e32 + i as u32,
                9 => u32::MAX,
                _ => rng.below(e32),
            },
        })
        .collect();
    TensorData::u32(&[r, k], ids).unwrap()
}

/// (R, K, E, N, Cin, x per pick, bias, id pattern).
type GroupedSpec = (usize, usize, usize, usize, usize, bool, bool, &'static str);

/// R*K not a multiple of any tile, empty experts, all picks on one expert, invalid ids, and enough
/// rows per expert for the 64-row tile.
const GROUPED: [GroupedSpec; 7] = [
    (1, 1, 1, 1, 1, false, false, "random"),
    (17, 3, 8, 65, 33, false, true, "random"),
    (9, 2, 5, 17, 64, true, false, "ends"),
    (33, 2, 4, 3, 257, true, true, "one"),
    (128, 2, 2, 65, 17, false, false, "random"),
    (255, 1, 3, 64, 16, false, true, "ends"),
    (5, 4, 256, 17, 9, true, false, "random"),
];

/// The inputs of one `GroupedMatmul` case, bucketed by the CPU oracle, plus the ids they came from.
fn grouped_inputs(rng: &mut Rng, spec: GroupedSpec, dt: DType) -> (Vec<TensorData>, TensorData) {
    let (r, k, e, n, cin, per_pick, bias, pattern) = spec;
    let x = if per_pick { f32s(rng, &[r, k, cin], -1.0, 1.0) } else { f32s(rng, &[r, cin], -1.0, 1.0) };
    let ids = moe_ids(rng, r, k, e, pattern);
    let mut b = taskloom::cpu::run(&Op::MoeBucket { experts: e }, &[&ids]).unwrap();
    let order = b.pop().unwrap();
    let offsets = b.pop().unwrap();
    let mut inputs = vec![x, weights(rng, &[e, n, cin], dt), offsets, order];
    if bias {
        inputs.push(f32s(rng, &[e, n], -1.0, 1.0));
    }
    (inputs, ids)
}

fn moe_bucket_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    // (R, K, E, pattern): one pick; several stages of 256 picks; E = 256 and the maximum 1024
    // (a thread owning several buckets); all on one expert; empty experts.
    for (r, k, e, pattern) in
        [(1, 1, 1, "random"), (17, 2, 8, "random"), (129, 2, 8, "random"), (255, 1, 256, "random"), (64, 4, 3, "one"), (100, 3, 1024, "ends"), (0, 2, 4, "random")]
    {
        let ids = moe_ids(rng, r, k, e, pattern);
        v.push(case(format!("moe_bucket r{r} k{k} e{e} {pattern}"), Op::MoeBucket { experts: e }, vec![ids], 0.0, 0.0));
    }
    for spec in GROUPED {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let (r, k, e, n, cin, per_pick, bias, pattern) = spec;
            let (inputs, _) = grouped_inputs(rng, spec, dt);
            let atol = 2e-6 * ((cin + 1) as f32).sqrt() * 4.0;
            let name = format!("grouped_matmul r{r} k{k} e{e} n{n} cin{cin} per_pick={per_pick} bias={bias} {pattern} {dt}");
            v.push(case(name, Op::GroupedMatmul, inputs, atol, 1e-5));
        }
    }
}

fn route_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    // (T, E, k, sigmoid, groups, topk_group, norm, scale, bias)
    let specs = [
        (1, 1, 1, false, 1, 1, true, 1.0, false),
        (17, 8, 2, false, 1, 1, true, 1.0, false),    // Mixtral
        (5, 60, 4, false, 1, 1, false, 1.0, false),   // Qwen2-MoE
        (9, 64, 8, true, 8, 4, true, 2.5, true),      // DeepSeek-V3 style
        (3, 256, 8, true, 8, 3, true, 1.0, true),
        (4, 16, 3, true, 4, 2, false, 1.0, false),
    ];
    for (t, e, k, sigmoid, groups, topk_group, norm, scale, bias) in specs {
        let mut inputs = vec![f32s(rng, &[t, e], -4.0, 4.0)];
        if bias {
            inputs.push(f32s(rng, &[e], -0.5, 0.5));
        }
        let op = Op::MoeRoute { k, sigmoid, groups, topk_group, norm, scale };
        v.push(case(format!("moe_route t{t} e{e} k{k} sigmoid={sigmoid} groups={groups}/{topk_group} norm={norm}"), op, inputs, 1e-6, 1e-5));
    }
}

fn topk_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    for (rows, n, k) in [(1usize, 1usize, 1usize), (17, 255, 8), (3, 257, 257), (5, 3, 2), (2, 1000, 4)] {
        // Multiples of 1/4 in a small range: many exact ties, no near-ties.
        let x = (0..rows * n).map(|_| rng.below(16) as f32 / 4.0 - 2.0).collect();
        v.push(case(format!("topk {rows}x{n} k={k}"), Op::TopK { k }, vec![TensorData::f32(&[rows, n], x).unwrap()], 0.0, 0.0));
    }
}

/// Adapter slots for `m` rows of `k`: a mix of shared and different adapters, empty slots
/// (`LORA_EMPTY`) and an index past the stack (both must contribute nothing on every device).
fn lora_sel(rng: &mut Rng, m: usize, k: usize, n: usize) -> TensorData {
    let ids = (0..m * k)
        .map(|i| match i % 7 {
            5 if k > 1 => LORA_EMPTY,
            6 => n as u32 + i as u32,
            _ => rng.below(n as u32),
        })
        .collect();
    TensorData::u32(&[m, k], ids).unwrap()
}

fn lora_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    // (x leading dims (M = their product), K, N, R, In, Out)
    let specs = [
        (vec![1usize], 1, 1, 1, 1, 1),
        (vec![17], 1, 4, 16, 33, 65),
        (vec![2, 3], 2, 5, 8, 257, 17),
        (vec![3, 5], 2, 3, 1, 64, 255),
        (vec![9], 3, 8, 16, 255, 3),
        (vec![2, 2, 2], 2, 4, 3, 17, 257),
        (vec![8], 1, 1, 32, 256, 256), // every row on one adapter (bar the past-the-stack slot)
    ];
    for (lead, k, n, r, cin, cout) in specs {
        let m: usize = lead.iter().product();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let sel = lora_sel(rng, m, k, n);
            let x = f32s(rng, &[&lead[..], &[cin]].concat(), -1.0, 1.0);
            let inputs = vec![x, weights(rng, &[n, r, cin], dt), sel.clone()];
            let atol = 2e-6 * (cin as f32).sqrt() * 4.0;
            let what = format!("m{m} k{k} n{n} r{r} in{cin} out{cout} {dt}");
            v.push(case(format!("lora_shrink {what}"), Op::LoraShrink, inputs, atol, 1e-5));
            // Weighted slots: per-slot weights in [0, 1) (a mixture times alpha / r); NaN in the
            // slots that are empty, which must not reach the output.
            let w = (0..m * k).map(|i| if sel.as_u32().unwrap()[i] >= n as u32 { f32::NAN } else { rng.uniform(0.0, 1.0) }).collect();
            let y = f32s(rng, &[&lead[..], &[cout]].concat(), -1.0, 1.0);
            let inputs = vec![y, f32s(rng, &[m, k, r], -1.0, 1.0), weights(rng, &[n, cout, r], dt), sel, TensorData::f32(&[m, k], w).unwrap()];
            let atol = 2e-6 * ((k * r + 1) as f32).sqrt() * 4.0;
            v.push(case(format!("lora_expand {what}"), Op::LoraExpand, inputs, atol, 1e-5));
        }
    }
}

/// Merging ops: masks must agree exactly (ties included), rescale and merge within f32 reduction and
/// division error.
fn merge_cases(rng: &mut Rng, v: &mut Vec<Case>) {
    use taskloom::merge::gta::della_probs;
    use taskloom::Consensus;
    // Multiples of 1/8 in [-2, 2): many exact magnitude ties (and zeros, and -0 vs +0).
    let tied = |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.below(32) as f32 / 8.0 - 2.0).collect() };
    for (r, n, bands) in [
        (1usize, 1usize, vec![(0u32, 1u32)]),
        (3, 17, vec![(0, 5), (3, 9), (0, 0)]),
        (2, 255, vec![(0, 255), (200, 255)]),
        (3, 257, vec![(0, 1), (10, 100), (256, 257)]),
        (3, 9000, vec![(0, 4500), (90, 7200), (0, 8999)]),
        (1, 65536, vec![(0, 13107)]),
    ] {
        let x = if n > 1000 { rng.vec(r * n, -1.0, 1.0) } else { tied(rng, r * n) };
        let ranks: Vec<u32> = (0..r).flat_map(|i| { let (a, b) = bands[i % bands.len()]; [a, b] }).collect();
        let inputs = vec![TensorData::f32(&[r, n], x).unwrap(), TensorData::u32(&[r, 2], ranks).unwrap()];
        v.push(case(format!("magnitude_mask {r}x{n}"), Op::MagnitudeMask, inputs, 0.0, 0.0));
    }
    // Ties of a large tensor: magnitudes in 4 values, so the index passes decide most of the band.
    let x: Vec<f32> = (0..3 * 9000).map(|_| rng.below(8) as f32 / 4.0 - 1.0).collect();
    let inputs = vec![TensorData::f32(&[3, 9000], x).unwrap(), TensorData::u32(&[3, 2], vec![0, 4000, 1000, 8000, 5, 6]).unwrap()];
    v.push(case("magnitude_mask 3x9000 tied".into(), Op::MagnitudeMask, inputs, 0.0, 0.0));
    for (r, n, seed) in [(1usize, 1usize, 0u64), (3, 257, 42), (2, 65536, (1 << 40) + 5)] {
        let p: Vec<f32> = [0.3f32, 1.0, 0.0].iter().cycle().take(r).copied().collect();
        let inputs = vec![f32s(rng, &[r, n], -1.0, 1.0), TensorData::f32(&[r], p).unwrap()];
        v.push(case(format!("random_mask {r}x{n}"), Op::RandomMask { seed, key: 0xdead_beef }, inputs, 0.0, 0.0));
    }
    for (r, g, c) in [(1usize, 1usize, 1usize), (3, 17, 33), (2, 1, 257), (3, 64, 255)] {
        let x = tied(rng, r * g * c);
        let p: Vec<f32> = (0..r).flat_map(|i| della_probs([0.5, 0.3, 1.0][i % 3], 0.15, c)).collect();
        let inputs = vec![TensorData::f32(&[r, g, c], x).unwrap(), TensorData::f32(&[r, c], p).unwrap()];
        v.push(case(format!("della_mask {r}x{g}x{c}"), Op::DellaMask { seed: 9, key: 17 }, inputs, 0.0, 0.0));
    }
    for (r, n) in [(1usize, 1usize), (3, 257), (4, 9000)] {
        let x = f32s(rng, &[r, n], -0.1, 0.1);
        // Row 1 keeps nothing: its norm is below the threshold and the row stays unscaled (zeros).
        let mask: Vec<u32> = (0..r * n).map(|i| if i / n == 1 { 0 } else { (rng.below(3) != 0) as u32 }).collect();
        let scale: Vec<f32> = (0..r).map(|i| [1.0f32, 2.5, 0.5, 1.0][i % 4]).collect();
        for l1 in [false, true] {
            let inputs = vec![x.clone(), TensorData::u32(&[r, n], mask.clone()).unwrap(), TensorData::f32(&[r], scale.clone()).unwrap()];
            v.push(case(format!("masked_rescale {r}x{n} l1={l1}"), Op::MaskedRescale { l1 }, inputs, 1e-6, 4e-6));
        }
    }
    for (r, n) in [(1usize, 1usize), (3, 257), (4, 1000)] {
        let base = f32s(rng, &[n], -1.0, 1.0);
        // Sparse deltas (a third zero), so agreement and empty divisors both occur.
        let d: Vec<f32> = (0..r * n).map(|_| if rng.below(3) == 0 { 0.0 } else { rng.uniform(-0.1, 0.1) }).collect();
        let w: Vec<f32> = (0..r).map(|i| [1.0f32, 0.3, -0.7, 0.5][i % 4]).collect();
        for consensus in [Consensus::None, Consensus::Sum, Consensus::Count] {
            for (weighted_sign, count_divisor, normalize) in [(true, false, true), (false, true, true), (true, false, false)] {
                let op = Op::TaskMerge { consensus, weighted_sign, count_divisor, normalize, lambda: 0.8 };
                let inputs = vec![base.clone(), TensorData::f32(&[r, n], d.clone()).unwrap(), TensorData::f32(&[r], w.clone()).unwrap()];
                v.push(case(format!("task_merge {r}x{n} {consensus:?} ws={weighted_sign} cd={count_divisor} norm={normalize}"), op, inputs, 1e-6, 1e-6));
            }
        }
    }
}

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(7);
    let mut v = Vec::new();
    matmul_cases(&mut rng, &mut v);
    elementwise_cases(&mut rng, &mut v);
    reduction_cases(&mut rng, &mut v);
    gather_cases(&mut rng, &mut v);
    attention_cases(&mut rng, &mut v);
    permute_cases(&mut rng, &mut v);
    expert_cases(&mut rng, &mut v);
    moe_bucket_cases(&mut rng, &mut v);
    route_cases(&mut rng, &mut v);
    topk_cases(&mut rng, &mut v);
    lora_cases(&mut rng, &mut v);
    merge_cases(&mut rng, &mut v);
    v
}

#[test]
fn every_op_has_a_case() {
    let covered: HashSet<OpKind> = cases().iter().map(|c| c.op.kind()).collect();
    let missing: Vec<_> = OpKind::ALL.iter().filter(|k| !covered.contains(k)).map(|k| k.name()).collect();
    assert!(missing.is_empty(), "ops without a conformance case: {missing:?}");
}

fn run_all(dev: &Device) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases() {
        let refs: Vec<&TensorData> = c.inputs.iter().collect();
        let want = taskloom::cpu::run(&c.op, &refs).unwrap_or_else(|e| panic!("{}: CPU oracle failed: {e}", c.name));
        match pollster::block_on(dev.run(&c.op, &refs)) {
            Err(e) => failures.push(format!("{}: {e}", c.name)),
            Ok(got) => {
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if let Err(e) = compare(g, w, c.atol, c.rtol) {
                        failures.push(format!("{} output {i}: {e}", c.name));
                    }
                }
            }
        }
    }
    failures
}

#[test]
fn gpu_matches_cpu_on_every_case() {
    let Some(dev) = gpu_or_skip("conformance") else { return };
    eprintln!("conformance on {:?}", dev.info().name);
    let failures = run_all(&dev);
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases().len(), failures.join("\n"));
}

#[test]
fn cpu_device_matches_cpu_oracle() {
    // The Device::Cpu path (upload, exec, download; its fast f32 ops, `cpu/fast.rs`) must agree
    // with the oracle to the tolerances every GPU kernel meets.
    let failures = run_all(&Device::cpu());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bucket_then_grouped_matmul_equals_expert_matmul_on_every_device() {
    // The drop-in claim: MoeBucket + GroupedMatmul on the device (no host step between them) give
    // ExpertMatmul's result (plus the per-expert bias gathered per pick) from the same ids.
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu_or_skip("grouped matmul chain"));
    for dev in &devices {
        let mut rng = Rng::new(11);
        for spec in GROUPED {
            for dt in [DType::F32, DType::BF16] {
                let (inputs, ids) = grouped_inputs(&mut rng, spec, dt);
                let (e, cin) = (spec.2, spec.4);
                let mut want = taskloom::cpu::run(&Op::ExpertMatmul, &[&inputs[0], &inputs[1], &ids]).unwrap().remove(0);
                if let Some(bias) = inputs.get(4) {
                    let b = taskloom::cpu::run(&Op::Embedding, &[bias, &ids]).unwrap().remove(0);
                    want = taskloom::cpu::run(&Op::Add, &[&want, &b]).unwrap().remove(0);
                }
                let up = |t: &TensorData| dev.upload(t).unwrap();
                let (x, w, idx) = (up(&inputs[0]), up(&inputs[1]), up(&ids));
                let b = dev.exec(&Op::MoeBucket { experts: e }, &[&idx]).unwrap();
                let mut ins = vec![&x, &w, &b[0], &b[1]];
                let bias = inputs.get(4).map(up);
                ins.extend(bias.as_ref());
                let got = pollster::block_on(dev.download(&dev.exec1(&Op::GroupedMatmul, &ins).unwrap())).unwrap();
                let atol = 2e-6 * ((cin + 1) as f32).sqrt() * 4.0;
                compare(&got, &want, atol, 1e-5).unwrap_or_else(|err| panic!("{spec:?} {dt} on {}: {err}", dev.kind()));
            }
        }
    }
}

#[test]
fn expert_routing_buckets_from_two_picks_per_expert_and_both_paths_agree() {
    // The helper both MoE layers use: bucketed (MoeBucket + GroupedMatmul, fused bias) from
    // 2 picks per expert on, else ExpertMatmul + Embedding/Add of the bias; the two must agree.
    use taskloom::models::moe::ExpertRouting;
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu_or_skip("expert routing"));
    for dev in &devices {
        let mut rng = Rng::new(5);
        for (r, k, e) in [(1usize, 2usize, 4usize), (3, 2, 4), (4, 2, 4), (17, 3, 8)] {
            let (n, cin) = (19, 33);
            let up = |t: TensorData| dev.upload(&t).unwrap();
            let x = up(f32s(&mut rng, &[r, cin], -1.0, 1.0));
            let w = up(weights(&mut rng, &[e, n, cin], DType::F16));
            let bias = up(f32s(&mut rng, &[e, n], -1.0, 1.0));
            let idx = up(moe_ids(&mut rng, r, k, e, "random"));
            let auto = ExpertRouting::new(dev, idx.clone(), e).unwrap();
            assert_eq!(auto.is_bucketed(), r * k >= 2 * e, "r{r} k{k} e{e}");
            let read = |t: taskloom::Tensor| pollster::block_on(dev.download(&t)).unwrap();
            let mut outs = Vec::new();
            for bucketed in [false, true] {
                let routing = ExpertRouting::with(dev, idx.clone(), e, bucketed).unwrap();
                outs.push(read(routing.matmul(dev, &x, &w, Some(&bias)).unwrap()));
            }
            let atol = 2e-6 * ((cin + 1) as f32).sqrt() * 4.0;
            compare(&outs[1], &outs[0], atol, 1e-5).unwrap_or_else(|err| panic!("r{r} k{k} e{e} on {}: {err}", dev.kind()));
        }
    }
}

#[test]
fn one_encoder_per_batch_and_cached_pipelines() {
    let Some(dev) = gpu_or_skip("batching") else { return };
    let taskloom::Device::Gpu(g) = &dev else { unreachable!() };
    let mut rng = Rng::new(3);
    let x = dev.upload(&f32s(&mut rng, &[8, 64], -1.0, 1.0)).unwrap();
    let w = dev.upload(&f32s(&mut rng, &[64, 64], -1.0, 1.0)).unwrap();
    let chain = |x: &taskloom::Tensor| {
        let h = dev.exec1(&Op::Matmul { trans_b: false }, &[x, &w]).unwrap();
        let h = dev.exec1(&Op::Gelu(GeluKind::Erf), &[&h]).unwrap();
        dev.exec1(&Op::Softmax, &[&h]).unwrap()
    };
    let before = g.dispatch_count();
    let y = chain(&chain(&x));
    assert_eq!(g.dispatch_count() - before, 6, "one dispatch per op");
    let pipelines = g.pipeline_count();
    let y = chain(&y);
    assert_eq!(g.pipeline_count(), pipelines, "pipelines are reused, not rebuilt");
    let out = pollster::block_on(dev.download(&y)).unwrap();
    let sums: Vec<f32> = out.as_f32().unwrap().chunks(64).map(|r| r.iter().sum()).collect();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "softmax rows sum to 1: {sums:?}");
}

/// Weights split into row blocks (a GPU with a 2 KiB binding limit) through the two ops that take
/// them, against the CPU oracle on the whole tensors: `Matmul { trans_b }` with a whole bias, a
/// bias split like its weight, no bias, a batched `x`; `Embedding` with ids in every block and past
/// the vocabulary; f32, f16 and bf16 weights with odd row lengths.
#[test]
fn split_weights_match_the_cpu_oracle() {
    if gpu_or_skip("split weights").is_none() {
        return;
    }
    let limit = 2048;
    let dev = pollster::block_on(Device::gpu_with(&taskloom::DeviceOptions { max_binding_bytes: Some(limit) })).unwrap();
    let mut rng = Rng::new(0x5b11);
    let mut failures = Vec::new();
    let mut check = |name: String, op: Op, inputs: Vec<(TensorData, bool)>, atol: f32, rtol: f32| {
        let host: Vec<&TensorData> = inputs.iter().map(|(t, _)| t).collect();
        let want = taskloom::cpu::run(&op, &host).unwrap_or_else(|e| panic!("{name}: CPU oracle failed: {e}"));
        // Inputs marked `true` go up as weights (split when above the limit); a bias follows the weight.
        let mut ts: Vec<taskloom::Tensor> = Vec::new();
        for (i, (t, weight)) in inputs.iter().enumerate() {
            let up = match (weight, i) {
                (true, 2) => dev.upload_like(t, &format!("{name} bias"), &ts[1]),
                (true, _) => dev.upload_weight(t, &format!("{name} weight")),
                (false, _) => dev.upload(t),
            };
            ts.push(up.unwrap_or_else(|e| panic!("{name}: upload {i}: {e}")));
        }
        let split = ts.iter().any(|t| dev.blocks(t) > 1);
        assert!(split, "{name}: nothing was split at {limit} bytes");
        let refs: Vec<&taskloom::Tensor> = ts.iter().collect();
        match dev.exec1(&op, &refs).and_then(|y| pollster::block_on(dev.download(&y))) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(got) => {
                if let Err(e) = compare(&got, &want[0], atol, rtol) {
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
    };
    for dt in [DType::F32, DType::F16, DType::BF16] {
        // [n, k] weights of 90..157 rows, 3 to 13 blocks (each output still fits one binding).
        for (xd, n, k, bias) in [(vec![3usize, 41], 157usize, 41usize, "whole"), (vec![2, 2, 33], 90, 33, "split"), (vec![3, 17], 137, 17, "none")] {
            let atol = 2e-6 * (k as f32).sqrt() * 4.0;
            let mut inputs = vec![(f32s(&mut rng, &xd, -1.0, 1.0), false), (weights(&mut rng, &[n, k], dt), true)];
            match bias {
                "whole" => inputs.push((f32s(&mut rng, &[n], -1.0, 1.0), false)),
                "split" => inputs.push((f32s(&mut rng, &[n], -1.0, 1.0), true)),
                _ => {}
            }
            check(format!("split matmul x{xd:?} w[{n}, {k}] {dt} bias {bias}"), Op::Matmul { trans_b: true }, inputs, atol, 1e-5);
        }
        for (vocab, c) in [(257usize, 17usize), (96, 33)] {
            let n = 13;
            let ids = (0..n).map(|i| if i % 7 == 6 { vocab as u32 + i as u32 } else { rng.below(vocab as u32) }).collect();
            let inputs = vec![(weights(&mut rng, &[vocab, c], dt), true), (TensorData::u32(&[n], ids).unwrap(), false)];
            check(format!("split embedding {vocab}x{c} {dt}"), Op::Embedding, inputs, 0.0, 0.0);
        }
    }
    assert!(failures.is_empty(), "{} split cases failed:\n{}", failures.len(), failures.join("\n"));
}
