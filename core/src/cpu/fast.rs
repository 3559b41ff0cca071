//! The CPU device's fast path: f32 versions of the ops that cost the most in a transformer forward
//! after the matmuls. `cpu::run` (f64 accumulation) stays the oracle; `Device::cpu()` runs these
//! instead, and `tests/tests/conformance.rs` holds them to the same tolerances as the GPU kernels
//! (which are f32 too), so the CPU device is checked against the oracle like any other device.
//!
//! - Attention: per (batch, head) `S = scale·Q·Kᵀ` and `O = P·V` are two gemm calls; the masked
//!   softmax between them is f32 with the polynomial `exp` below. (Batch, head) blocks run in
//!   parallel natively.
//! - LayerNorm / RMSNorm: f32 two-pass rows with f64-combined sums, rows in parallel.
//! - Softmax, GELU (erf and tanh), SiLU, sigmoid: branch-free f32 formulas built on [`exp`], so
//!   the loops vectorise (SSE/AVX natively, SIMD128 in wasm); long tensors split across threads.
//!
//! In wasm (built for size, so LLVM does not vectorise these loops) the erf GELU and attention's
//! `exp` run four lanes at a time through `vmath.rs`, bit-identical to the scalar formulas here.
//!
//! Error budget (relative, per element): `exp` within 2 f32 ulps on the range it clamps to; erf
//! from Numerical Recipes' erfc (fractional error < 1.2e-7, the formula the WGSL kernel uses);
//! GELU's negative half is computed as `x/2 · erfc(|x|/√2)`, never as `1 + erf` (no cancellation).

/// `e^x` in f32: `2^n · p(r)`, `n = round(x / ln 2)`, `r = x − n·ln 2` (split in two constants, as
/// Cephes' expf), `p` Cephes' degree-7 polynomial on |r| ≤ ln2/2. `x` is clamped to [-87, 88]
/// (results stay normal: e^-87 ≈ 1.6e-38 stands in for smaller values, which is below every
/// tolerance; nothing here needs an overflow to infinity). Branch-free, so it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer (to nearest)
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits (|n| < 2^22).
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5) * r) * r
        + r
        + 1.0;
    f32::from_bits(((ni + 127) << 23) as u32) * p
}

/// `erfc(z)` for `z >= 0` (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7 + t * (0.374_091_96 + t * (0.096_784_18 + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> f32 {
    // x·Φ(x) = x/2 · (1 + erf(x/√2)) = x/2 · (2 − erfc(x/√2)) for x >= 0, x/2 · erfc(|x|/√2) below.
    let r = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let c = if x >= 0.0 { 2.0 - r } else { r };
    0.5 * x * c
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    // 0.5·x·(1 + tanh(u)) = x · σ(2u), u = √(2/π)·(x + 0.044715·x³).
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Elements per parallel task of the elementwise ops (below it one thread does all).
#[cfg(not(target_arch = "wasm32"))]
const CHUNK: usize = 1 << 15;

/// `f` over `x`, in parallel chunks natively when `x` is long.
fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    let body = |(o, i): (&mut [f32], &[f32])| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v));
    #[cfg(not(target_arch = "wasm32"))]
    if x.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(body);
        return out;
    }
    body((&mut out, x));
    out
}

pub(super) fn gelu(x: &[f32], kind: crate::op::GeluKind) -> Vec<f32> {
    // wasm: four lanes explicitly (the size-optimised build does not vectorise `map`).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if kind == crate::op::GeluKind::Erf {
        let mut out = vec![0.0f32; x.len()];
        super::vmath::map::<super::tiled::Native>(x, &mut out, super::vmath::gelu_erf, gelu_erf);
        return out;
    }
    match kind {
        crate::op::GeluKind::Erf => map(x, gelu_erf),
        crate::op::GeluKind::Tanh => map(x, gelu_tanh),
    }
}

pub(super) fn silu_all(x: &[f32]) -> Vec<f32> {
    map(x, silu)
}

pub(super) fn sigmoid_all(x: &[f32]) -> Vec<f32> {
    map(x, sigmoid)
}

/// Softmax of one row into `o`: the max, `exp(x - max)`, their sum (eight f32 lanes, then f64),
/// one multiply by its inverse.
fn softmax_row(row: &[f32], o: &mut [f32]) {
    let m = max(row);
    o.iter_mut().zip(row).for_each(|(o, &v)| *o = exp(v - m));
    let inv = (1.0 / sum(o)) as f32;
    o.iter_mut().for_each(|v| *v *= inv);
}

/// The largest of `v` (NaN ignored, as `f32::max` does; −∞ when empty), over four running maxima
/// compared with `>` (`f32::max` is a libm call in wasm).
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 4];
    let c = v.chunks_exact(4);
    let tail = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for x in c {
        for l in 0..4 {
            if x[l] > acc[l] {
                acc[l] = x[l];
            }
        }
    }
    acc.into_iter().fold(tail, |a, b| if b > a { b } else { a })
}

/// `Σ v` over eight f32 lanes (vectorised, pipelined) combined in f64.
fn sum(v: &[f32]) -> f64 {
    let mut acc = [0.0f32; 8];
    let c = v.chunks_exact(8);
    let tail: f64 = c.remainder().iter().map(|&x| x as f64).sum();
    for x in c {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

pub(super) fn softmax(x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    if n == 0 {
        return out;
    }
    #[cfg(not(target_arch = "wasm32"))]
    if x.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        let rows = (CHUNK / n).max(1) * n;
        out.par_chunks_mut(rows).zip(x.par_chunks(rows)).for_each(|(o, x)| o.chunks_mut(n).zip(x.chunks(n)).for_each(|(o, r)| softmax_row(r, o)));
        return out;
    }
    out.chunks_mut(n).zip(x.chunks(n)).for_each(|(o, r)| softmax_row(r, o));
    out
}

/// LayerNorm (`beta` given) or RMSNorm over rows of `gamma.len()`: mean and variance from f32
/// sums over eight lanes combined in f64, two passes over the row (no E[x²] − E[x]² cancellation);
/// rows in parallel natively.
pub(super) fn norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let c = gamma.len();
    let mut out = vec![0.0f32; x.len()];
    if c == 0 {
        return out;
    }
    let row = |(o, r): (&mut [f32], &[f32])| {
        let mean = if beta.is_some() { (sum(r) / c as f64) as f32 } else { 0.0 };
        o.iter_mut().zip(r).for_each(|(o, &v)| *o = (v - mean) * (v - mean));
        let inv = (1.0 / (sum(o) / c as f64 + eps as f64).sqrt()) as f32;
        match beta {
            Some(b) => o.iter_mut().zip(r).zip(gamma.iter().zip(b)).for_each(|((o, &v), (&g, &b))| *o = (v - mean) * inv * g + b),
            None => o.iter_mut().zip(r).zip(gamma).for_each(|((o, &v), &g)| *o = v * inv * g),
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    if x.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(c).zip(x.par_chunks(c)).with_min_len((CHUNK / c).max(1)).for_each(row);
        return out;
    }
    out.chunks_mut(c).zip(x.chunks(c)).for_each(row);
    out
}

/// Scaled dot-product attention (the op's semantics: causal and padding masks, grouped-query
/// heads, rows with no visible key are 0) with both products on gemm.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    qs: &crate::shape::Shape,
    q: &[f32],
    ks: &crate::shape::Shape,
    k: &[f32],
    vs: &crate::shape::Shape,
    v: &[f32],
    mask: Option<&[u32]>,
    causal: bool,
    scale: f32,
) -> Vec<f32> {
    let heads = super::attention::Heads::new(qs, ks, vs);
    let super::attention::Heads { hq, tq, d, hkv, tk, dv, .. } = heads;
    let group = hq / hkv.max(1);
    // One (batch, query head) block of the output: [Tq, Dv].
    let head = |bh: usize, o: &mut [f32]| {
        let (bi, h) = (bh / hq, bh % hq);
        let kv0 = (bi * hkv + h / group) * tk;
        let (qh, kh, vh) = (&q[bh * tq * d..][..tq * d], &k[kv0 * d..][..tk * d], &v[kv0 * dv..][..tk * dv]);
        let mut s = vec![0.0f32; tq * tk];
        if d > 0 {
            scores(tq, tk, d, qh, kh, scale, &mut s);
        }
        let mut inv = vec![0.0f32; tq];
        let keys = mask.map(|m| &m[bi * tk..][..tk]);
        // Every key visible (no causal mask, no padding): the common encoder case skips the masking.
        let all_visible = !causal && keys.is_none_or(|m| m.iter().all(|&v| v != 0));
        for (i, row) in s.chunks_mut(tk).enumerate() {
            if !all_visible {
                let limit = if causal { (tk + i + 1).saturating_sub(tq) } else { tk };
                for (j, x) in row.iter_mut().enumerate() {
                    if j >= limit || keys.is_some_and(|m| m[j] == 0) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let m = max(row);
            if m == f32::NEG_INFINITY {
                row.fill(0.0); // no visible key: the row stays 0
                continue;
            }
            // exp clamps its argument, so masked keys (−∞ − m) need an explicit 0.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            super::vmath::exp_shifted::<super::tiled::Native>(row, m);
            #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
            row.iter_mut().for_each(|x| *x = if *x == f32::NEG_INFINITY { 0.0 } else { exp(*x - m) });
            inv[i] = (1.0 / sum(row)) as f32;
        }
        weighted_values(tq, dv, tk, &s, vh, o);
        for (row, &f) in o.chunks_mut(dv).zip(&inv) {
            row.iter_mut().for_each(|x| *x *= f);
        }
    };
    heads.run(head)
}

/// `s [Tq, Tk] = scale · q [Tq, D] · k [Tk, D]ᵀ` (`s` starts at 0).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn scores(tq: usize, tk: usize, d: usize, q: &[f32], k: &[f32], scale: f32, s: &mut [f32]) {
    // SAFETY: q [Tq, D], k [Tk, D] (read as Kᵀ through its strides) and s [Tq, Tk] are row-major
    // slices of exactly those sizes.
    unsafe {
        gemm::gemm(tq, tk, d, s.as_mut_ptr(), 1, tk as isize, false, q.as_ptr(), 1, d as isize, k.as_ptr(), d as isize, 1, 0.0, scale, false, false, false, gemm::Parallelism::None);
    }
}

/// `o [Tq, Dv] = p [Tq, Tk] · v [Tk, Dv]` (`o` starts at 0).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn weighted_values(tq: usize, dv: usize, tk: usize, p: &[f32], v: &[f32], o: &mut [f32]) {
    // SAFETY: p [Tq, Tk], v [Tk, Dv] and o [Tq, Dv] are row-major slices of those sizes.
    unsafe {
        gemm::gemm(tq, dv, tk, o.as_mut_ptr(), 1, dv as isize, false, p.as_ptr(), 1, tk as isize, v.as_ptr(), 1, dv as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
    }
}

/// [`scores`] on the SIMD128 kernel ([`super::tiled`]) in wasm.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn scores(tq: usize, tk: usize, d: usize, q: &[f32], k: &[f32], scale: f32, s: &mut [f32]) {
    use super::tiled::{nt, Native, View};
    nt::<Native>(View { data: q, rows: tq, cols: d, ld: d }, View { data: k, rows: tk, cols: d, ld: d }, scale, s, tk);
}

/// [`weighted_values`] on the SIMD128 kernel ([`super::tiled`]) in wasm.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn weighted_values(tq: usize, dv: usize, tk: usize, p: &[f32], v: &[f32], o: &mut [f32]) {
    super::tiled::gemm::<super::tiled::Native>(tq, dv, tk, p, v, false, o);
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst <= 2.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert!(super::exp(-1e30) > 0.0 && super::exp(1e30).is_finite() && super::exp(0.0) == 1.0);
    }

    #[test]
    fn max_ignores_nan_like_f32_max() {
        for v in [vec![], vec![f32::NAN], vec![1.0, f32::NAN, 3.0, -2.0, 7.5, 0.0, f32::NEG_INFINITY], vec![f32::NEG_INFINITY; 9], (0..37).map(|i| ((i * 17) % 23) as f32 - 11.0).collect()] {
            let want = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(super::max(&v).to_bits(), want.to_bits(), "{v:?}");
        }
    }

    #[test]
    fn gelu_and_silu_match_the_f64_formulas() {
        let mut x = -12.0f32;
        while x <= 12.0 {
            let g = super::gelu_erf(x) as f64;
            let want = 0.5 * x as f64 * libm::erfc(-(x as f64) / std::f64::consts::SQRT_2);
            assert!((g - want).abs() <= 1e-7 + 1e-6 * want.abs(), "gelu({x}) = {g}, want {want}");
            let s = super::silu(x) as f64;
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!((s - want).abs() <= 1e-7 + 1e-6 * want.abs(), "silu({x}) = {s}, want {want}");
            x += 0.001_3;
        }
    }
}
