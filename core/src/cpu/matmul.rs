//! Matmul on the CPU through the `gemm` crate. `core/benches/cpu_gemm.rs` measured it against
//! `matrixmultiply` on the 2-core reference machine: with the rows split across rayon threads
//! (below) gemm is within a few percent of matrixmultiply and of OpenBLAS at 1024 and 2048, and
//! it brings SIMD128 microkernels to the single-threaded wasm build, which decided it.
//! f16/bf16 weights are widened to f32 once per call.
//! The wasm build with SIMD128 runs [`super::tiled`]'s register-tiled kernel instead of gemm's
//! (`gemm_block`): about 25% faster on the MiniLM forward in Chromium (figures in tiled.rs).

use crate::shape::Shape;
use crate::tensor::HostData;
use gemm::Parallelism;
use std::borrow::Cow;

fn widen(d: &HostData) -> Cow<'_, [f32]> {
    match d {
        HostData::F32(v) => Cow::Borrowed(v),
        other => Cow::Owned(other.to_f32_vec()),
    }
}

pub(super) fn matmul(a_shape: &Shape, a: &[f32], b_shape: &Shape, b: &HostData, trans_b: bool, bias: Option<&[f32]>) -> Vec<f32> {
    let (m, k) = (a_shape.from_end(1), a_shape.from_end(0));
    let n = if trans_b { b_shape.from_end(1) } else { b_shape.from_end(0) };
    // Batch = product of the leading dims (also right when M or K is 0).
    let batch: usize = a_shape.dims()[..a_shape.rank() - 2].iter().product();
    let shared_b = b_shape.rank() == 2;
    let b = widen(b);
    let mut out = vec![0.0f32; batch * m * n];
    for bi in 0..batch {
        let a_off = bi * m * k;
        let b_off = if shared_b { 0 } else { bi * k * n };
        let o = &mut out[bi * m * n..(bi + 1) * m * n];
        sgemm(m, n, k, &a[a_off..a_off + m * k], &b[b_off..b_off + k * n], trans_b, bias, o);
    }
    out
}

/// `out [R, K, N]`: row `r` (or `(r, j)`) of `x` times expert `idx[r, j]` of `w [E, N, Cin]`.
pub(super) fn expert_matmul(xs: &Shape, x: &[f32], ws: &Shape, w: &HostData, idx: &[u32], is: &Shape) -> Vec<f32> {
    let (e, n, cin) = (ws.dims()[0], ws.dims()[1], ws.dims()[2]);
    let (r, k) = (is.dims()[0], is.dims()[1]);
    let per_pick = xs.rank() == 3;
    let w = widen(w);
    let mut out = vec![0.0f32; r * k * n];
    for ri in 0..r {
        for j in 0..k {
            let ex = idx[ri * k + j] as usize;
            if ex >= e {
                continue;
            }
            let xr = if per_pick { &x[(ri * k + j) * cin..][..cin] } else { &x[ri * cin..][..cin] };
            let o = &mut out[(ri * k + j) * n..][..n];
            sgemm(1, n, cin, xr, &w[ex * n * cin..(ex + 1) * n * cin], true, None, o);
        }
    }
    out
}

/// `out [M, N] = a [M, K] · b (+ bias [N])`, `b` being `[K, N]` or, with `trans_b`, `[N, K]`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, bias: Option<&[f32]>, out: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n, "sgemm slice lengths");
    if m == 0 || n == 0 {
        return;
    }
    if let Some(bias) = bias {
        for row in out.chunks_mut(n).take(m) {
            row.copy_from_slice(&bias[..n]);
        }
    } else {
        out[..m * n].fill(0.0);
    }
    if k == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Row blocks, one per thread, each a single-threaded gemm: gemm's own rayon mode packs all
        // of B and synchronises every K step, which measured 7-20% slower on 2 cores.
        let threads = rayon::current_num_threads();
        // Short and wide (few rows, many columns: a layer on a short sequence): split the columns
        // instead, so each thread packs only its share of B rather than all of it.
        if threads > 1 && n >= 4 * m && n >= 64 * threads && m * n * k >= 64 * 64 * 64 {
            gemm_cols(m, n, k, a, b, trans_b, bias.is_some(), out, threads);
            return;
        }
        if threads > 1 && m >= 32 * threads && m * n * k >= 64 * 64 * 64 {
            use rayon::prelude::*;
            let rows = m.div_ceil(threads);
            out[..m * n].par_chunks_mut(rows * n).zip(a[..m * k].par_chunks(rows * k)).for_each(|(o, a)| {
                gemm_block(o.len() / n, n, k, a, b, trans_b, bias.is_some(), o, Parallelism::None);
            });
            return;
        }
    }
    gemm_block(m, n, k, a, b, trans_b, bias.is_some(), out, parallelism(m, n, k));
}

/// `out [M, N]` in column blocks, one single-threaded gemm per rayon thread (disjoint columns).
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
fn gemm_cols(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, accumulate: bool, out: &mut [f32], threads: usize) {
    use rayon::prelude::*;
    // Column blocks rounded to 16 (whole microkernel tiles).
    let cols = n.div_ceil(threads).div_ceil(16) * 16;
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    struct Ptr(*mut f32);
    // SAFETY: each block writes only its own columns [n0, n0 + w) of `out`.
    unsafe impl Sync for Ptr {}
    let dst = Ptr(out.as_mut_ptr());
    (0..n.div_ceil(cols)).into_par_iter().for_each(|j| {
        let n0 = j * cols;
        let w = cols.min(n - n0);
        let dst = &dst;
        // SAFETY: `sgemm` checked the slice lengths; the block's columns lie within `out`, and its
        // B columns (rows with `trans_b`) within `b`; blocks never overlap.
        unsafe {
            let rhs = if trans_b { b.as_ptr().add(n0 * k) } else { b.as_ptr().add(n0) };
            gemm::gemm(m, w, k, dst.0.add(n0), 1, n as isize, accumulate, a.as_ptr(), 1, k as isize, rhs, rhs_cs, rhs_rs, 1.0, 1.0, false, false, false, Parallelism::None)
        }
    });
}

/// One gemm call on row-major blocks; `accumulate` adds to `out` (pre-filled with the bias).
/// In wasm built with SIMD128 it is [`super::tiled`]'s kernel instead (single-threaded there).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_block(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, accumulate: bool, out: &mut [f32], par: Parallelism) {
    let _ = par;
    if !accumulate {
        out[..m * n].fill(0.0);
    }
    super::tiled::gemm::<super::tiled::Native>(m, n, k, a, b, trans_b, out);
}

/// One gemm call on row-major blocks; `accumulate` adds to `out` (pre-filled with the bias).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_block(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, accumulate: bool, out: &mut [f32], par: Parallelism) {
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the slices hold at least m*k, k*n and m*n elements (checked by `sgemm`) and the
    // strides address exactly those row-major layouts.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if m * n * k >= 64 * 64 * 64 && rayon::current_num_threads() > 1 {
            return Parallelism::Rayon(rayon::current_num_threads());
        }
    }
    let _ = (m, n, k);
    Parallelism::None
}

#[cfg(test)]
mod tests {
    use super::sgemm;

    /// Every path of `sgemm` (column split, row split, single call) against a plain f64 loop,
    /// with and without `trans_b` and a bias, on shapes that are not multiples of the tiles.
    #[test]
    fn sgemm_paths_match_a_plain_loop() {
        for &(m, n, k) in &[(17, 1000, 70), (3, 4099, 129), (200, 300, 64), (9, 9, 9), (64, 4096, 33)] {
            for trans_b in [false, true] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 2003) as f32 / 2003.0) - 0.5).collect();
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
                let mut out = vec![f32::NAN; m * n];
                sgemm(m, n, k, &a, &b, trans_b, Some(&bias), &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = bias[j] as f64
                            + (0..k).map(|p| a[i * k + p] as f64 * if trans_b { b[j * k + p] } else { b[p * n + j] } as f64).sum::<f64>();
                        let got = out[i * n + j] as f64;
                        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "m {m} n {n} k {k} trans_b {trans_b} at ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
