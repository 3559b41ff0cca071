//! Matmul on the CPU through the `gemm` crate (chosen over `matrixmultiply` by the benchmark in
//! `core/benches/cpu_gemm.rs`: faster at every size we run, rayon threads natively, SIMD128
//! microkernels in wasm). f16/bf16 weights are widened to f32 once per call.

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
    let (rhs_cs, rhs_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let par = parallelism(m, n, k);
    // SAFETY: the slices hold at least m*k, k*n and m*n elements (asserted above) and the strides
    // address exactly those row-major layouts.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
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
