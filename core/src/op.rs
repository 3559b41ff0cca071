//! The op table: every computation a backend performs. The same name is used for the `Op` variant,
//! the CPU function (`cpu::<family>`), the WGSL file (`shaders/<name>.wgsl`) and the conformance cases,
//! so one grep finds all of an op.
//!
//! Shapes use: B batch, H heads, T tokens, C channels, D head dim, M/N/K matmul dims, V vocabulary;
//! for the multi-LoRA ops, M rows, K adapter slots per row, N stacked adapters, R (padded) rank.
//! All activations are f32; weights (matmul `b`, embedding tables) may be f32, f16 or bf16.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// GELU form: exact (erf) as in `nn.GELU()`, or the tanh approximation (`approximate="tanh"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluKind {
    Erf,
    Tanh,
}

/// How task vectors vote on each element's sign before a disjoint merge (TIES family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consensus {
    /// No vote: every (weighted) task vector is summed.
    None,
    /// The sign of the sum (TIES' "mass"); a zero sum elects +.
    Sum,
    /// The sign of the sum of signs ("frequency"); a tie elects +.
    Count,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `a [.., M, K] f32` times `b` (`[.., K, N]`, or `[.., N, K]` with `trans_b`; f32/f16/bf16;
    /// rank 2 is shared by every batch) plus an optional third input `bias [N] f32` → `[.., M, N] f32`.
    Matmul { trans_b: bool },
    /// `a + b`, `b`'s shape a suffix of `a`'s (broadcast over leading dims).
    Add,
    /// `a * b`, broadcast as [`Op::Add`].
    Mul,
    /// `alpha * x`.
    Scale { alpha: f32 },
    /// `alpha * x + y` for inputs `(x, y)` of one shape.
    Axpy { alpha: f32 },
    /// Numerically stable softmax over the last dimension.
    Softmax,
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dim; inputs `(x, gamma [C], beta [C])`.
    LayerNorm { eps: f32 },
    /// `x / sqrt(mean(x²) + eps) * gamma` over the last dim; inputs `(x, gamma [C])`.
    RmsNorm { eps: f32 },
    Gelu(GeluKind),
    /// `x * sigmoid(x)`.
    Silu,
    /// `1 / (1 + exp(-x))` (MoE shared-expert gates, sigmoid routers).
    Sigmoid,
    /// `max(x, 0)` (multi-task heads and MMoE experts).
    Relu,
    /// Inputs `(table [V, C] f32/f16/bf16, ids [..] u32)` → `[.., C] f32`. Ids `>= V` give zero rows.
    Embedding,
    /// Rotary embedding, HF rotate-half convention, on `x [.., T, D]` with `positions [T] u32`
    /// shared by every row, or `positions [B, T]` per batch row for `x [B, .., T, D]` (left-padded
    /// batches, where each row's tokens start at its own position 0):
    /// for `i < D/2`, angle `= pos * theta^(-2i/D)`, `out[i] = x[i]cos - x[i+D/2]sin`,
    /// `out[i+D/2] = x[i+D/2]cos + x[i]sin`.
    Rope { theta: f32 },
    /// Scaled dot-product attention. Inputs `q [B, Hq, Tq, D]`, `k [B, Hkv, Tk, D]`,
    /// `v [B, Hkv, Tk, Dv]`, optional `mask [B, Tk] u32` (0 = padding) → `[B, Hq, Tq, Dv]`.
    /// Query head `h` reads kv head `h / (Hq / Hkv)` (grouped-query). With `causal`, query `i` sits at
    /// absolute position `Tk - Tq + i` and sees keys `j <= Tk - Tq + i`. A row with no visible key gives 0.
    Attention { causal: bool, scale: f32 },
    /// Reorders dimensions: output dim `i` is input dim `perm[i]`, for `i < rank` (entries past the
    /// input's rank are ignored). `[B, T, H, D] -> [B, H, T, D]` is `perm = [0, 2, 1, 3]`.
    Permute { perm: [usize; 4] },
    /// MoE routing of `logits [T, E]` (optional second input `bias [E]`, added for choosing only):
    /// scores = softmax or sigmoid of the logits; choice = scores + bias; with `groups > 1`, only the
    /// `topk_group` groups (of E/groups experts) with the largest sum of their two best choices stay
    /// eligible (the others' choice set to 0, as DeepSeek-V3 does); the `k` best eligible experts
    /// (choice descending, lower index first on ties) → `(weights [T, K] f32, idx [T, K] u32)` with
    /// weights = scores at idx, divided by their sum when `norm` (plus 1e-20), times `scale`.
    MoeRoute { k: usize, sigmoid: bool, groups: usize, topk_group: usize, norm: bool, scale: f32 },
    /// Each row multiplied by the expert weights its router picked (the MoE expert matmul; also
    /// known as gather-matmul or `mul_mat_id`). Inputs `x [R, Cin] f32` (one row for all K picks) or
    /// `[R, K, Cin]` (a row per pick), `w [E, N, Cin]` (f32/f16/bf16, `nn.Linear` layout per expert),
    /// `idx [R, K] u32` → `[R, K, N] f32`: `out[r, j] = w[idx[r, j]] · x[r(, j)]`. Ids `>= E` give 0.
    ExpertMatmul,
    /// MoE bucketing by prefix sums (Edge-MoE's "patch reordering"): the picks of `idx [R, K] u32`
    /// (from [`Op::MoeRoute`]) grouped by expert → `(offsets [E+2] u32, order [R, K] u32)`.
    /// `offsets[e]` is the exclusive prefix sum of the per-expert pick counts, so expert `e`'s picks
    /// are `order[offsets[e]..offsets[e+1]]` (order read flat); ids `>= E` form a trailing invalid
    /// bucket `offsets[E]..offsets[E+1]`, with `offsets[E]` the number of valid picks and
    /// `offsets[E+1] = R*K`. `order` holds pick ids `p = r*K + j`, ascending within a bucket (stable),
    /// so the result is deterministic. It is shaped `[R, K]` like `idx` (R*K entries) so that
    /// [`Op::GroupedMatmul`] can infer K even for `x [R, Cin]`. E is at most [`MOE_MAX_EXPERTS`].
    MoeBucket { experts: usize },
    /// The bucketed expert matmul (grouped GEMM): the same result as [`Op::ExpertMatmul`] `(x, w, idx)`,
    /// computed expert by expert over the buckets of [`Op::MoeBucket`], so each expert's weights are
    /// read once per tile of its rows instead of once per pick. Inputs `x [R, Cin] f32` or
    /// `[R, K, Cin]`, `w [E, N, Cin]` (f32/f16/bf16), `offsets [E+2] u32`, `order [R, K] u32`, and an
    /// optional `bias [E, N] f32` (added per expert) → `out [R, K, N] f32`, indexed by pick:
    /// `out[r, j] = w[e] · x[r(, j)] (+ bias[e])` for pick `p = r*K + j` in expert `e`'s bucket; the
    /// invalid bucket's picks give 0. `offsets`/`order` must come from `MoeBucket` on the same `idx`:
    /// the CPU rejects malformed ones (`InvalidParam`); GPU kernels clamp their reads (memory-safe,
    /// result unspecified).
    GroupedMatmul,
    /// Joins two tensors along `axis`; every other dimension must agree (the KV cache grows this way).
    Concat { axis: usize },
    /// Top-k of each row of `x [.., N] f32` → `(values [.., k] f32, indices [.., k] u32)`, descending,
    /// ties broken by lower index.
    TopK { k: usize },
    /// Multi-LoRA "shrink" (Punica/S-LoRA BGMV/SGMV): each row projected by its own adapters' A.
    /// Inputs `x [.., In] f32` (M rows = product of the leading dims), `a [N, R, In]` (f32/f16/bf16:
    /// N adapters' A stacked, zero-padded to a common rank R) and `sel [M, K] u32` (the adapter of
    /// each of a row's K slots) → `v [M, K, R] f32` with `v[m, k, r] = Σ_i a[sel[m, k], r, i] · x[m, i]`.
    /// A slot whose index is `>= N` — [`LORA_EMPTY`] marks an empty slot on purpose — gives zeros,
    /// on every backend (like [`Op::Embedding`]: a kernel cannot report a bad index). The GPU
    /// backend takes R and K up to 16384 (`UnsupportedOp` above), for both LoRA ops.
    LoraShrink,
    /// Multi-LoRA "expand", the second half of [`Op::LoraShrink`]: inputs `y [.., Out] f32` (M rows),
    /// `v [M, K, R] f32`, `b [N, Out, R]` (f32/f16/bf16: the adapters' B, zero-padded to rank R),
    /// `sel [M, K] u32` and `w [M, K] f32` (per-slot weights, e.g. mixing weight · alpha / rank) →
    /// `[.., Out] f32`, shaped as `y`:
    /// `out[m, o] = y[m, o] + Σ_k w[m, k] · Σ_r b[sel[m, k], o, r] · v[m, k, r]`.
    /// Slots whose index is `>= N` (empty, [`LORA_EMPTY`], or out of range) contribute nothing: their
    /// `w` and `v` are not read, so not even a NaN there reaches the output.
    LoraExpand,
    /// Merging: inputs `x [R, N] f32`, `ranks [R, 2] u32` → `mask [R, N] u32`, 1 where the element's
    /// rank in its row, ordered by |x| descending with ties to the lower index (rank 0 = largest),
    /// lies in `[ranks[r, 0], ranks[r, 1])`. TIES keeps `[0, k)`; Breadcrumbs a band below the outliers.
    MagnitudeMask,
    /// Merging (DARE): inputs `x [R, N] f32` (for its shape), `p [R] f32` → keep `mask [R, N] u32`,
    /// 1 where `sparsify::uniform(seed, key, r·N + j) < p[r]` (the counter-based RNG).
    RandomMask { seed: u64, key: u32 },
    /// Merging (DELLA): inputs `x [R, G, C] f32`, `p [R, C] f32` → keep `mask [R, G, C] u32`, 1 where
    /// `sparsify::uniform(seed, key, flat index) < p[r, q]`, `q` = the element's rank among the C of
    /// its group by |x| ascending, ties to the lower index first.
    DellaMask { seed: u64, key: u32 },
    /// Merging: inputs `x [R, N] f32`, `mask [R, N] u32`, `scale [R] f32` → `x·mask·scale[r]`; with
    /// `l1`, also times `‖x_r‖₁ / ‖x_r·mask_r‖₁` when both norms are ≥ 1e-7 (mergekit's rescale).
    MaskedRescale { l1: bool },
    /// Merging: inputs `base [N] f32`, `deltas [R, N] f32`, `weights [R] f32` → `[N] f32`:
    /// `v_r = w_r·δ_r` (or `δ_r` for the vote without `weighted_sign`), elected sign `s` by
    /// `consensus`, agreeing set `a_r = [sign(v_r) = s]` (all r with `Consensus::None`);
    /// `m = Σ a_r·w_r·δ_r`, divisor `Σ a_r·w_r` (or `Σ a_r` with `count_divisor`; 0 → 1, and
    /// |Σ w| < 1e-8 → 1 without consensus); out `= base + lambda·(normalize ? m / divisor : m)`.
    /// Sums run over r in order in f32, so the elected sign is the same on every backend.
    TaskMerge { consensus: Consensus, weighted_sign: bool, count_divisor: bool, normalize: bool, lambda: f32 },
}

/// The `sel` entry of an empty adapter slot in [`Op::LoraShrink`] / [`Op::LoraExpand`]. Any index
/// `>= N` behaves the same; this one is out of range for every stack.
pub const LORA_EMPTY: u32 = u32::MAX;

/// Most experts [`Op::MoeBucket`] takes (as [`Op::MoeRoute`]: E <= 1024).
pub const MOE_MAX_EXPERTS: usize = 1024;

macro_rules! op_kinds {
    ($($name:ident),* $(,)?) => {
        /// The op table without parameters: one entry per [`Op`] variant.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind { $($name),* }
        impl OpKind {
            pub const ALL: &'static [OpKind] = &[$(OpKind::$name),*];
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$name => stringify!($name)),* }
            }
        }
    };
}
op_kinds!(
    Matmul, Add, Mul, Scale, Axpy, Softmax, LayerNorm, RmsNorm, Gelu, Silu, Sigmoid, Relu, Embedding, Rope, Attention, Permute, Concat, ExpertMatmul, MoeBucket, GroupedMatmul, MoeRoute, TopK,
    LoraShrink, LoraExpand, MagnitudeMask, RandomMask, DellaMask, MaskedRescale, TaskMerge,
);

/// What an op is given and returns: shape and dtype per tensor.
pub type Meta = (Shape, DType);

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Matmul { .. } => OpKind::Matmul,
            Op::Add => OpKind::Add,
            Op::Mul => OpKind::Mul,
            Op::Scale { .. } => OpKind::Scale,
            Op::Axpy { .. } => OpKind::Axpy,
            Op::Softmax => OpKind::Softmax,
            Op::LayerNorm { .. } => OpKind::LayerNorm,
            Op::RmsNorm { .. } => OpKind::RmsNorm,
            Op::Gelu(_) => OpKind::Gelu,
            Op::Silu => OpKind::Silu,
            Op::Sigmoid => OpKind::Sigmoid,
            Op::Relu => OpKind::Relu,
            Op::Embedding => OpKind::Embedding,
            Op::Rope { .. } => OpKind::Rope,
            Op::Attention { .. } => OpKind::Attention,
            Op::Permute { .. } => OpKind::Permute,
            Op::Concat { .. } => OpKind::Concat,
            Op::ExpertMatmul => OpKind::ExpertMatmul,
            Op::MoeBucket { .. } => OpKind::MoeBucket,
            Op::GroupedMatmul => OpKind::GroupedMatmul,
            Op::MoeRoute { .. } => OpKind::MoeRoute,
            Op::TopK { .. } => OpKind::TopK,
            Op::LoraShrink => OpKind::LoraShrink,
            Op::LoraExpand => OpKind::LoraExpand,
            Op::MagnitudeMask => OpKind::MagnitudeMask,
            Op::RandomMask { .. } => OpKind::RandomMask,
            Op::DellaMask { .. } => OpKind::DellaMask,
            Op::MaskedRescale { .. } => OpKind::MaskedRescale,
            Op::TaskMerge { .. } => OpKind::TaskMerge,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Checks the inputs and returns the outputs' shapes and dtypes. Backends call this before doing
    /// anything, so a kernel never sees inputs that break its contract.
    pub fn infer(&self, inputs: &[Meta]) -> Result<Vec<Meta>> {
        let op = self.name();
        let arity = |lo: usize, hi: usize, what: &'static str| -> Result<()> {
            if inputs.len() < lo || inputs.len() > hi {
                return Err(Error::Arity { op, expected: what, got: inputs.len() });
            }
            Ok(())
        };
        let f32_in = |i: usize| -> Result<&Shape> {
            let (s, d) = &inputs[i];
            if *d != DType::F32 {
                return Err(Error::DTypeMismatch { op, expected: format!("f32 for input {i}"), got: *d });
            }
            Ok(s)
        };
        let mismatch = |expected: String, got: &Shape| Error::ShapeMismatch { op, expected, got: got.to_string() };
        let finite = |v: f32, what: &str| -> Result<()> {
            if !v.is_finite() {
                return Err(Error::InvalidParam { op, reason: format!("{what} must be finite, got {v}") });
            }
            Ok(())
        };
        let out = |s: Shape, d: DType| Ok(vec![(s, d)]);
        // Block-quantised tensors are only ever a matmul's `[N, K]` weight (with trans_b) or an
        // embedding table (`crate::quant`).
        for (i, (s, d)) in inputs.iter().enumerate() {
            let allowed = match self {
                Op::Matmul { trans_b } => i == 1 && *trans_b && s.rank() == 2,
                Op::Embedding => i == 0,
                _ => false,
            };
            if d.is_quantized() && !allowed {
                return Err(Error::DTypeMismatch { op, expected: format!("an unquantised input {i} (a {d} tensor is only a matmul weight [N, K] with trans_b or an embedding table)"), got: *d });
            }
        }
        match *self {
            Op::Matmul { trans_b } => {
                arity(2, 3, "2 (a, b) or 3 (a, b, bias)")?;
                let a = f32_in(0)?;
                let (b, bd) = &inputs[1];
                if !bd.is_float() && !bd.is_quantized() {
                    return Err(Error::DTypeMismatch { op, expected: "f32, f16, bf16 or block-quantised weights".into(), got: *bd });
                }
                if a.rank() < 2 || b.rank() < 2 {
                    return Err(mismatch("a and b of rank >= 2".into(), if a.rank() < 2 { a } else { b }));
                }
                let k = a.from_end(0);
                let (bk, n) = if trans_b { (b.from_end(0), b.from_end(1)) } else { (b.from_end(1), b.from_end(0)) };
                if bk != k {
                    return Err(mismatch(format!("b with inner dimension {k}"), b));
                }
                let batch: usize = a.dims()[..a.rank() - 2].iter().product();
                let b_batch: usize = b.dims()[..b.rank() - 2].iter().product();
                if b.rank() > 2 && b_batch != batch {
                    return Err(mismatch(format!("b with batch {batch} or rank 2"), b));
                }
                if inputs.len() == 3 {
                    let bias = f32_in(2)?;
                    if bias.numel() != n || bias.rank() != 1 {
                        return Err(mismatch(format!("bias [{n}]"), bias));
                    }
                }
                let mut d = a.dims().to_vec();
                *d.last_mut().expect("rank >= 2") = n;
                out(Shape::new(&d)?, DType::F32)
            }
            Op::Add | Op::Mul => {
                arity(2, 2, "2")?;
                let (a, b) = (f32_in(0)?, f32_in(1)?);
                let suffix = b.rank() <= a.rank() && a.dims()[a.rank() - b.rank()..] == *b.dims();
                if !suffix {
                    return Err(mismatch(format!("a suffix of {a}"), b));
                }
                out(*a, DType::F32)
            }
            Op::Scale { alpha } => {
                arity(1, 1, "1")?;
                finite(alpha, "alpha")?;
                out(*f32_in(0)?, DType::F32)
            }
            Op::Axpy { alpha } => {
                arity(2, 2, "2 (x, y)")?;
                finite(alpha, "alpha")?;
                let (x, y) = (f32_in(0)?, f32_in(1)?);
                if x != y {
                    return Err(mismatch(x.to_string(), y));
                }
                out(*x, DType::F32)
            }
            Op::Softmax | Op::Gelu(_) | Op::Silu | Op::Sigmoid | Op::Relu => {
                arity(1, 1, "1")?;
                out(*f32_in(0)?, DType::F32)
            }
            Op::LayerNorm { eps } | Op::RmsNorm { eps } => {
                let ln = matches!(self, Op::LayerNorm { .. });
                if ln { arity(3, 3, "3 (x, gamma, beta)")? } else { arity(2, 2, "2 (x, gamma)")? }
                if eps.is_nan() || eps <= 0.0 || !eps.is_finite() {
                    return Err(Error::InvalidParam { op, reason: format!("eps must be positive, got {eps}") });
                }
                let x = f32_in(0)?;
                let c = x.last();
                for i in 1..inputs.len() {
                    let p = f32_in(i)?;
                    if p.rank() != 1 || p.numel() != c {
                        return Err(mismatch(format!("[{c}] for input {i}"), p));
                    }
                }
                out(*x, DType::F32)
            }
            Op::Embedding => {
                arity(2, 2, "2 (table, ids)")?;
                let (t, td) = &inputs[0];
                let (ids, idd) = &inputs[1];
                if !td.is_float() && !td.is_quantized() {
                    return Err(Error::DTypeMismatch { op, expected: "float or block-quantised table".into(), got: *td });
                }
                if *idd != DType::U32 {
                    return Err(Error::DTypeMismatch { op, expected: "u32 ids".into(), got: *idd });
                }
                if t.rank() != 2 {
                    return Err(mismatch("table [V, C]".into(), t));
                }
                if ids.rank() > 3 {
                    return Err(mismatch("ids of rank <= 3".into(), ids));
                }
                let mut d = ids.dims().to_vec();
                d.push(t.from_end(0));
                out(Shape::new(&d)?, DType::F32)
            }
            Op::Rope { theta } => {
                arity(2, 2, "2 (x, positions)")?;
                if theta.is_nan() || theta <= 0.0 || !theta.is_finite() {
                    return Err(Error::InvalidParam { op, reason: format!("theta must be positive, got {theta}") });
                }
                let x = f32_in(0)?;
                let (p, pd) = &inputs[1];
                if *pd != DType::U32 {
                    return Err(Error::DTypeMismatch { op, expected: "u32 positions".into(), got: *pd });
                }
                if x.rank() < 2 || x.last() % 2 != 0 {
                    return Err(mismatch("x [.., T, D] with even D".into(), x));
                }
                let t = x.from_end(1);
                let per_batch = x.rank() >= 3 && p.dims() == [x.dims()[0], t];
                let shared = p.rank() == 1 && p.numel() == t;
                if !shared && !per_batch {
                    return Err(mismatch(format!("positions [{t}] or [{}, {t}]", x.dims()[0]), p));
                }
                out(*x, DType::F32)
            }
            Op::Attention { scale, .. } => {
                arity(3, 4, "3 (q, k, v) or 4 (q, k, v, mask)")?;
                finite(scale, "scale")?;
                let (q, k, v) = (f32_in(0)?, f32_in(1)?, f32_in(2)?);
                for (name, s) in [("q", q), ("k", k), ("v", v)] {
                    if s.rank() != 4 {
                        return Err(mismatch(format!("{name} [B, H, T, D]"), s));
                    }
                }
                let [b, hq, tq, d] = [q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]];
                let [kb, hkv, tk, kd] = [k.dims()[0], k.dims()[1], k.dims()[2], k.dims()[3]];
                if kb != b || kd != d || hkv == 0 || hq % hkv != 0 {
                    return Err(mismatch(format!("k [{b}, H, Tk, {d}] with H dividing {hq}"), k));
                }
                if v.dims()[..3] != k.dims()[..3] {
                    return Err(mismatch(format!("v [{b}, {hkv}, {tk}, Dv]"), v));
                }
                if inputs.len() == 4 {
                    let (m, md) = &inputs[3];
                    if *md != DType::U32 {
                        return Err(Error::DTypeMismatch { op, expected: "u32 mask".into(), got: *md });
                    }
                    if m.dims() != [b, tk] {
                        return Err(mismatch(format!("mask [{b}, {tk}]"), m));
                    }
                }
                out(Shape::new(&[b, hq, tq, v.dims()[3]])?, DType::F32)
            }
            Op::Permute { perm } => {
                arity(1, 1, "1")?;
                let (x, d) = &inputs[0];
                let r = x.rank();
                let mut seen = [false; 4];
                for &p in &perm[..r] {
                    if p >= r || std::mem::replace(&mut seen[p], true) {
                        return Err(Error::InvalidParam { op, reason: format!("{:?} is not a permutation of 0..{r}", &perm[..r]) });
                    }
                }
                let dims: Vec<usize> = perm[..r].iter().map(|&p| x.dims()[p]).collect();
                out(Shape::new(&dims)?, *d)
            }
            Op::MoeRoute { k, groups, topk_group, scale, .. } => {
                arity(1, 2, "1 (logits) or 2 (logits, bias)")?;
                finite(scale, "scale")?;
                let x = f32_in(0)?;
                let e = x.last();
                if x.rank() != 2 {
                    return Err(mismatch("logits [T, E]".into(), x));
                }
                if inputs.len() == 2 {
                    let b = f32_in(1)?;
                    if b.dims() != [e] {
                        return Err(mismatch(format!("bias [{e}]"), b));
                    }
                }
                let bad = |reason: String| Err(Error::InvalidParam { op, reason });
                if k == 0 || k > e || e > 1024 {
                    return bad(format!("k = {k} must be in 1..={e} (and E <= 1024)"));
                }
                if groups == 0 || e % groups != 0 || groups > 256 || (groups > 1 && (e / groups < 2 || topk_group == 0 || topk_group > groups)) {
                    return bad(format!("{groups} groups of {e} experts with topk_group {topk_group} is not a valid grouping"));
                }
                let s = Shape::new(&[x.dims()[0], k])?;
                Ok(vec![(s, DType::F32), (s, DType::U32)])
            }
            Op::ExpertMatmul => {
                arity(3, 3, "3 (x, w, idx)")?;
                let x = f32_in(0)?;
                let (w, wd) = &inputs[1];
                let (idx, id) = &inputs[2];
                if !wd.is_float() {
                    return Err(Error::DTypeMismatch { op, expected: "f32, f16 or bf16 expert weights".into(), got: *wd });
                }
                if *id != DType::U32 {
                    return Err(Error::DTypeMismatch { op, expected: "u32 expert ids".into(), got: *id });
                }
                if w.rank() != 3 {
                    return Err(mismatch("w [E, N, Cin]".into(), w));
                }
                if idx.rank() != 2 {
                    return Err(mismatch("idx [R, K]".into(), idx));
                }
                let (r, k, cin, n) = (idx.dims()[0], idx.dims()[1], w.dims()[2], w.dims()[1]);
                if x.dims() != [r, cin] && x.dims() != [r, k, cin] {
                    return Err(mismatch(format!("x [{r}, {cin}] or [{r}, {k}, {cin}]"), x));
                }
                out(Shape::new(&[r, k, n])?, DType::F32)
            }
            Op::MoeBucket { experts } => {
                arity(1, 1, "1 (idx)")?;
                let idx = u32_in(inputs, 0, op, "idx")?;
                if idx.rank() != 2 {
                    return Err(mismatch("idx [R, K]".into(), idx));
                }
                if experts == 0 || experts > MOE_MAX_EXPERTS {
                    return Err(Error::InvalidParam { op, reason: format!("experts = {experts} must be in 1..={MOE_MAX_EXPERTS}") });
                }
                if idx.numel() > u32::MAX as usize {
                    return Err(mismatch("idx with fewer than 2^32 picks".into(), idx));
                }
                Ok(vec![(Shape::new(&[experts + 2])?, DType::U32), (*idx, DType::U32)])
            }
            Op::GroupedMatmul => {
                arity(4, 5, "4 (x, w, offsets, order) or 5 (x, w, offsets, order, bias)")?;
                let x = f32_in(0)?;
                let w = float_weights(inputs, 1, op, "expert weights w")?;
                let offsets = u32_in(inputs, 2, op, "offsets")?;
                let order = u32_in(inputs, 3, op, "order")?;
                if w.rank() != 3 {
                    return Err(mismatch("w [E, N, Cin]".into(), w));
                }
                let (e, n, cin) = (w.dims()[0], w.dims()[1], w.dims()[2]);
                if offsets.dims() != [e + 2] {
                    return Err(mismatch(format!("offsets [{}] (E + 2 for w {w})", e + 2), offsets));
                }
                if order.rank() != 2 {
                    return Err(mismatch("order [R, K] (from MoeBucket)".into(), order));
                }
                let (r, k) = (order.dims()[0], order.dims()[1]);
                if x.dims() != [r, cin] && x.dims() != [r, k, cin] {
                    return Err(mismatch(format!("x [{r}, {cin}] or [{r}, {k}, {cin}] (R, K of order, Cin of w)"), x));
                }
                if inputs.len() == 5 {
                    let bias = f32_in(4)?;
                    if bias.dims() != [e, n] {
                        return Err(mismatch(format!("bias [{e}, {n}]"), bias));
                    }
                }
                out(Shape::new(&[r, k, n])?, DType::F32)
            }
            Op::Concat { axis } => {
                arity(2, 2, "2")?;
                let ((a, ad), (b, bd)) = (&inputs[0], &inputs[1]);
                if ad != bd {
                    return Err(Error::DTypeMismatch { op, expected: format!("{ad} for both inputs"), got: *bd });
                }
                if axis >= a.rank() {
                    return Err(Error::InvalidParam { op, reason: format!("axis {axis} on rank {}", a.rank()) });
                }
                let same = a.rank() == b.rank() && (0..a.rank()).all(|i| i == axis || a.dims()[i] == b.dims()[i]);
                if !same {
                    return Err(mismatch(format!("{a} except along axis {axis}"), b));
                }
                let mut d = a.dims().to_vec();
                d[axis] += b.dims()[axis];
                out(Shape::new(&d)?, *ad)
            }
            Op::TopK { k } => {
                arity(1, 1, "1")?;
                let x = f32_in(0)?;
                if k == 0 || k > x.last() {
                    return Err(Error::InvalidParam { op, reason: format!("k = {k} must be in 1..={}", x.last()) });
                }
                let s = x.with_last(k)?;
                Ok(vec![(s, DType::F32), (s, DType::U32)])
            }
            Op::LoraShrink => {
                arity(3, 3, "3 (x, a, sel)")?;
                let x = f32_in(0)?;
                let a = float_weights(inputs, 1, op, "a")?;
                let sel = u32_in(inputs, 2, op, "sel")?;
                if x.rank() == 0 {
                    return Err(mismatch("x [.., In]".into(), x));
                }
                if a.rank() != 3 {
                    return Err(mismatch("a [N, R, In]".into(), a));
                }
                let (r, cin, m) = (a.dims()[1], a.dims()[2], leading(x));
                if x.last() != cin {
                    return Err(mismatch(format!("x [.., {cin}] (In of a {a})"), x));
                }
                if sel.rank() != 2 || sel.dims()[0] != m {
                    return Err(mismatch(format!("sel [{m}, K] (M = {m} rows of x {x})"), sel));
                }
                out(Shape::new(&[m, sel.dims()[1], r])?, DType::F32)
            }
            Op::LoraExpand => {
                arity(5, 5, "5 (y, v, b, sel, w)")?;
                let (y, v) = (f32_in(0)?, f32_in(1)?);
                let b = float_weights(inputs, 2, op, "b")?;
                let sel = u32_in(inputs, 3, op, "sel")?;
                let w = f32_in(4)?;
                if y.rank() == 0 {
                    return Err(mismatch("y [.., Out]".into(), y));
                }
                if b.rank() != 3 {
                    return Err(mismatch("b [N, Out, R]".into(), b));
                }
                let (o, r, m) = (b.dims()[1], b.dims()[2], leading(y));
                if y.last() != o {
                    return Err(mismatch(format!("y [.., {o}] (Out of b {b})"), y));
                }
                if sel.rank() != 2 || sel.dims()[0] != m {
                    return Err(mismatch(format!("sel [{m}, K] (M = {m} rows of y {y})"), sel));
                }
                let k = sel.dims()[1];
                if v.dims() != [m, k, r] {
                    return Err(mismatch(format!("v [{m}, {k}, {r}] (M, K of sel, R of b)"), v));
                }
                if w.dims() != [m, k] {
                    return Err(mismatch(format!("w [{m}, {k}] (as sel)"), w));
                }
                out(*y, DType::F32)
            }
            Op::MagnitudeMask | Op::RandomMask { .. } | Op::DellaMask { .. } | Op::MaskedRescale { .. } | Op::TaskMerge { .. } => {
                crate::merge::ops::infer(self, inputs)
            }
        }
    }
}

/// Rows of a `[.., C]` tensor: the product of the leading dims (so a zero-width row still counts).
fn leading(s: &Shape) -> usize {
    s.dims()[..s.rank().saturating_sub(1)].iter().product()
}

/// Input `i`'s shape, if it is f32, f16 or bf16 (stored weights).
fn float_weights<'a>(inputs: &'a [Meta], i: usize, op: &'static str, name: &str) -> Result<&'a Shape> {
    let (s, d) = &inputs[i];
    if !d.is_float() {
        return Err(Error::DTypeMismatch { op, expected: format!("f32, f16 or bf16 {name} (input {i})"), got: *d });
    }
    Ok(s)
}

/// Input `i`'s shape, if it is u32 (indices).
fn u32_in<'a>(inputs: &'a [Meta], i: usize, op: &'static str, name: &str) -> Result<&'a Shape> {
    let (s, d) = &inputs[i];
    if *d != DType::U32 {
        return Err(Error::DTypeMismatch { op, expected: format!("u32 {name} (input {i})"), got: *d });
    }
    Ok(s)
}
