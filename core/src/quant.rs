//! Block-quantised weight matrices (llama.cpp's Q8_0, Q4_0 and Q4_1) and the CPU kernels that use
//! them as they are: a quantised `[N, K]` weight is never widened whole.
//!
//! Layout: row-major `[rows, cols]`, each row cut into blocks of 32 along `cols`. Per block one f32
//! scale `d` and (4-bit kinds) one f32 offset `m`, widened from the file's f16 once at load, and
//! the quants as the file has them (Q8_0: 32 `i8`; Q4: 16 bytes, the low nibbles holding elements
//! 0-15 and the high nibbles 16-31). An element is `q·d` (Q8_0) or `q·d + m` (Q4_1; Q4_0 is Q4_1
//! with `m = −8·d`): the values `formats::gguf::dequantize` gives, up to one rounding for Q4_0.
//!
//! `x · Wᵀ` ([`matmul_t`]): for a few rows of `x` (decoding), each block is widened into 32
//! registers and used by every row (a GEMV reading 0.56-1.06 bytes per weight instead of 4);
//! for more rows, 64 weight rows at a time are widened into a scratch tile and multiplied with gemm
//! (prefill). Both split the output columns across threads natively. Only the CPU runs quantised
//! tensors; uploading one to a GPU widens it to f32 (see `Device::upload`).

use crate::dtype::DType;
use crate::error::{Error, Result};

pub const BLOCK: usize = 32;

/// A block-quantised `[rows, cols]` matrix (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    dtype: DType,
    rows: usize,
    cols: usize,
    /// `d` per block, `[rows, cols / 32]`.
    scale: Vec<f32>,
    /// `m` per block (4-bit kinds; empty for Q8_0).
    min: Vec<f32>,
    /// The quants, `[rows, cols / 32, 32]` bytes (Q8_0) or `[rows, cols / 32, 16]` (4-bit).
    qs: Vec<u8>,
}

fn half_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl QuantMatrix {
    /// From ggml blocks (`bytes` = the tensor's data in the file, rows of `cols / 32` blocks).
    /// `dtype` is [`DType::Q8_0`], [`DType::Q4_0`] or [`DType::Q4_1`].
    pub fn from_ggml(dtype: DType, rows: usize, cols: usize, bytes: &[u8]) -> Result<QuantMatrix> {
        let bad = |reason: String| Error::InvalidParam { op: "quantise", reason };
        let block_bytes = match dtype {
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            other => return Err(bad(format!("{other} is not a block-quantised type"))),
        };
        if !cols.is_multiple_of(BLOCK) {
            return Err(bad(format!("rows of {cols} elements are not whole blocks of {BLOCK}")));
        }
        let blocks = rows * cols / BLOCK;
        if bytes.len() != blocks * block_bytes {
            return Err(bad(format!("{} bytes for {blocks} {dtype} blocks of {block_bytes} bytes", bytes.len())));
        }
        let per = if dtype == DType::Q8_0 { 32 } else { 16 };
        let mut m = QuantMatrix { dtype, rows, cols, scale: Vec::with_capacity(blocks), min: Vec::new(), qs: Vec::with_capacity(blocks * per) };
        if dtype != DType::Q8_0 {
            m.min.reserve(blocks);
        }
        for b in bytes.chunks_exact(block_bytes) {
            let d = half_at(b, 0);
            m.scale.push(d);
            match dtype {
                DType::Q8_0 => m.qs.extend_from_slice(&b[2..34]),
                DType::Q4_0 => {
                    m.min.push(-8.0 * d);
                    m.qs.extend_from_slice(&b[2..18]);
                }
                _ => {
                    m.min.push(half_at(b, 2));
                    m.qs.extend_from_slice(&b[4..20]);
                }
            }
        }
        // Q4_0 is stored as Q4_1 (q·d + m with m = −8d).
        if dtype == DType::Q4_0 {
            m.dtype = DType::Q4_1;
        }
        Ok(m)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held (scales, offsets and quants).
    pub fn bytes(&self) -> usize {
        4 * (self.scale.len() + self.min.len()) + self.qs.len()
    }

    fn per_block(&self) -> usize {
        if self.dtype == DType::Q8_0 {
            32
        } else {
            16
        }
    }

    /// The rows reordered: output row `i` is input row `src[i]` (llama.cpp's q/k permutation
    /// undone without widening).
    pub fn permute_rows(&self, src: &[usize]) -> QuantMatrix {
        let nb = self.cols / BLOCK;
        let per = self.per_block();
        let mut out = QuantMatrix { dtype: self.dtype, rows: src.len(), cols: self.cols, scale: Vec::new(), min: Vec::new(), qs: Vec::new() };
        for &r in src {
            out.scale.extend_from_slice(&self.scale[r * nb..(r + 1) * nb]);
            if !self.min.is_empty() {
                out.min.extend_from_slice(&self.min[r * nb..(r + 1) * nb]);
            }
            out.qs.extend_from_slice(&self.qs[r * nb * per..(r + 1) * nb * per]);
        }
        out
    }

    /// Widens block `b` (flat index over all rows) into `w`.
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        if self.dtype == DType::Q8_0 {
            widen_block::<true>(self, b, w)
        } else {
            widen_block::<false>(self, b, w)
        }
    }

    /// Row `r` widened into `out` (`cols` elements).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let mut w = [0.0f32; BLOCK];
        for (j, o) in out.chunks_exact_mut(BLOCK).enumerate().take(nb) {
            self.block(r * nb + j, &mut w);
            o.copy_from_slice(&w);
        }
    }

    /// The whole matrix widened to f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
                self.row_into(r, row);
            }
        }
        out
    }
}

/// Rows of `x` at or below which [`matmul_t`] runs the quantised GEMV (above: widen + gemm).
pub const GEMV_MAX_ROWS: usize = 4;

/// `out [M, N] = x [M, K] · Wᵀ (+ bias [N])` for a quantised `W [N, K]`.
pub fn matmul_t(x: &[f32], m: usize, w: &QuantMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    let n = w.rows;
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    if m <= GEMV_MAX_ROWS {
        gemv(x, m, w, &mut out);
    } else {
        widen_gemm(x, m, w, &mut out);
    }
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
    out
}

/// Runs `f(first_col, cols)` over column blocks of `n`, in parallel natively: about two blocks per
/// thread (at least 64 columns each), so a decode step's many small matmuls pay little rayon
/// overhead.
fn for_col_blocks(n: usize, f: impl Fn(usize, usize) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = rayon::current_num_threads();
        let per = n.div_ceil(2 * threads).max(64).div_ceil(16) * 16;
        let blocks = n.div_ceil(per);
        if threads > 1 && blocks > 1 {
            use rayon::prelude::*;
            (0..blocks).into_par_iter().for_each(|j| f(j * per, per.min(n - j * per)));
            return;
        }
    }
    f(0, n)
}

/// A raw output pointer shared by tasks that write disjoint elements.
struct Out(*mut f32);
// SAFETY: every task writes only its own columns (see the callers).
unsafe impl Sync for Out {}

fn gemv(x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    let dst = Out(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    // The one-row SIMD kernels: AVX2 + FMA natively where the CPU has them, SIMD128 in a wasm built
    // with it.
    let simd1 = m == 1 && (avx2 || cfg!(all(target_arch = "wasm32", target_feature = "simd128")));
    // Σ x per block, once for all tasks: the one-row SIMD kernels' Q4 offsets term.
    let xsum: Vec<f32> = if simd1 && w.dtype != DType::Q8_0 {
        x[..w.cols / BLOCK * BLOCK].chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
    } else {
        Vec::new()
    };
    let _ = &xsum;
    for_col_blocks(w.rows, |c0, cols| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked above); the columns are this task's own.
            return unsafe { gemv_cols_avx2(x, &xsum, m, w, c0, cols, &dst) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if simd1 {
            // SAFETY: the wasm was built with SIMD128; the columns are this task's own.
            return unsafe { simd128::gemv1(x, &xsum, w, c0, cols, &dst) };
        }
        // SAFETY: as above.
        unsafe { gemv_cols(x, m, w, c0, cols, &dst) }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_cols_avx2(x: &[f32], xsum: &[f32], m: usize, w: &QuantMatrix, c0: usize, cols: usize, dst: &Out) {
    // SAFETY: the caller's contract, passed on; AVX2 and FMA are enabled here.
    unsafe {
        if m == 1 {
            avx2::gemv1(x, xsum, w, c0, cols, dst)
        } else {
            gemv_cols(x, m, w, c0, cols, dst)
        }
    }
}

/// The one-row decode GEMV in AVX2 + FMA intrinsics.
#[cfg(target_arch = "x86_64")]
mod avx2;

/// The one-row decode GEMV in wasm SIMD128 intrinsics.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

/// Output columns `c0..c0 + cols` of `x [m, K] · Wᵀ` for `m <= 4`.
///
/// # Safety
/// `dst` points at the `[m, N]` output and no other task writes these columns.
#[inline(always)]
unsafe fn gemv_cols(x: &[f32], m: usize, w: &QuantMatrix, c0: usize, cols: usize, dst: &Out) {
    // One instantiation per kind and row count, so the inner loops have no branches.
    macro_rules! go {
        ($q8:literal) => {
            match m {
                1 => gemv_kind::<$q8, 1>(x, w, c0, cols, dst),
                2 => gemv_kind::<$q8, 2>(x, w, c0, cols, dst),
                3 => gemv_kind::<$q8, 3>(x, w, c0, cols, dst),
                _ => gemv_kind::<$q8, 4>(x, w, c0, cols, dst),
            }
        };
    }
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if w.dtype == DType::Q8_0 {
            go!(true)
        } else {
            go!(false)
        }
    }
}

/// Block `b` widened (`Q8` selects the kind at compile time).
#[inline(always)]
fn widen_block<const Q8: bool>(w: &QuantMatrix, b: usize, out: &mut [f32; BLOCK]) {
    let d = w.scale[b];
    if Q8 {
        let q: &[u8; 32] = w.qs[b * 32..b * 32 + 32].try_into().expect("32 quants");
        for j in 0..32 {
            out[j] = f32::from(q[j] as i8) * d;
        }
    } else {
        let m = w.min[b];
        let q: &[u8; 16] = w.qs[b * 16..b * 16 + 16].try_into().expect("16 quants");
        for j in 0..16 {
            out[j] = f32::from(q[j] & 0x0f) * d + m;
            out[j + 16] = f32::from(q[j] >> 4) * d + m;
        }
    }
}

/// The GEMV for `M` rows: each block widened once and used by every row; per row 32 f32 lanes
/// (`M` = 1: four independent vector accumulators, so the adds pipeline) or 8 (`M` > 1).
///
/// # Safety
/// As [`gemv_cols`].
#[inline(always)]
unsafe fn gemv_kind<const Q8: bool, const M: usize>(x: &[f32], w: &QuantMatrix, c0: usize, cols: usize, dst: &Out) {
    let (n, k) = (w.rows, w.cols);
    let nb = k / BLOCK;
    let mut wb = [0.0f32; BLOCK];
    for c in c0..c0 + cols {
        let mut dots = [0.0f32; M];
        if M == 1 {
            let mut acc = [0.0f32; BLOCK];
            for b in 0..nb {
                widen_block::<Q8>(w, c * nb + b, &mut wb);
                let xb: &[f32; BLOCK] = x[b * BLOCK..b * BLOCK + BLOCK].try_into().expect("a block of x");
                for j in 0..BLOCK {
                    acc[j] += wb[j] * xb[j];
                }
            }
            let mut l8 = [0.0f32; 8];
            for (j, v) in acc.iter().enumerate() {
                l8[j % 8] += v;
            }
            dots[0] = ((l8[0] + l8[4]) + (l8[1] + l8[5])) + ((l8[2] + l8[6]) + (l8[3] + l8[7]));
        } else {
            let mut acc = [[0.0f32; 8]; M];
            for b in 0..nb {
                widen_block::<Q8>(w, c * nb + b, &mut wb);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xb: &[f32; BLOCK] = x[i * k + b * BLOCK..i * k + b * BLOCK + BLOCK].try_into().expect("a block of x");
                    for l in 0..4 {
                        for j in 0..8 {
                            a[j] += wb[l * 8 + j] * xb[l * 8 + j];
                        }
                    }
                }
            }
            for (d, a) in dots.iter_mut().zip(&acc) {
                *d = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            }
        }
        for (i, &v) in dots.iter().enumerate() {
            // SAFETY: (i, c) lies in the [m, n] output; column c is this task's (the contract).
            unsafe { *dst.0.add(i * n + c) = v };
        }
    }
}

/// More rows: 64 weight rows at a time widened into a scratch `[64, K]` tile, times `x` by gemm,
/// written straight into their output columns.
fn widen_gemm(x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let dst = Out(out.as_mut_ptr());
    const TILE: usize = 64;
    for_col_blocks(n, |first, count| {
        let mut tile = vec![0.0f32; TILE * k];
        let dst = &dst;
        for c0 in (first..first + count).step_by(TILE) {
            let cols = TILE.min(first + count - c0);
            for (r, row) in tile.chunks_exact_mut(k.max(1)).enumerate().take(cols) {
                w.row_into(c0 + r, row);
            }
            // SAFETY: x [m, k] and tile [cols, k] (read as its transpose) are row-major slices of
            // those sizes; the destination block is columns c0..c0+cols of the [m, n] output (row
            // stride n), which no other task writes.
            unsafe {
                gemm::gemm(m, cols, k, dst.0.add(c0), 1, n as isize, false, x.as_ptr(), 1, k as isize, tile.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(dtype: DType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as u8
        };
        let mut v = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = half::f16::from_f32(0.01 + next() as f32 / 5000.0).to_le_bytes();
            let m = half::f16::from_f32(-0.1 + next() as f32 / 2000.0).to_le_bytes();
            v.extend_from_slice(&d);
            match dtype {
                DType::Q8_0 => (0..32).for_each(|_| v.push(next())),
                DType::Q4_0 => (0..16).for_each(|_| v.push(next())),
                _ => {
                    v.extend_from_slice(&m);
                    (0..16).for_each(|_| v.push(next()));
                }
            }
        }
        v
    }

    #[test]
    fn matmul_matches_the_widened_weights_on_both_paths() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let (n, k) = (150, 96);
            let q = QuantMatrix::from_ggml(dtype, n, k, &blocks(dtype, n, k, 7)).unwrap();
            let wf = q.dequantize();
            for m in [1, 3, 4, 5, 17] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.001).collect();
                let got = matmul_t(&x, m, &q, Some(&bias));
                for i in 0..m {
                    for c in 0..n {
                        let want: f64 = bias[c] as f64 + (0..k).map(|p| x[i * k + p] as f64 * wf[c * k + p] as f64).sum::<f64>();
                        let g = got[i * n + c] as f64;
                        assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{dtype} m {m} ({i}, {c}): {g} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn portable_gemv_equals_the_dispatched_one() {
        // The dispatched path may be AVX2 (m = 1); the portable one must agree with it anyway.
        for dtype in [DType::Q8_0, DType::Q4_1] {
            let (n, k) = (70, 128);
            let q = QuantMatrix::from_ggml(dtype, n, k, &blocks(dtype, n, k, 11)).unwrap();
            for m in 1..=GEMV_MAX_ROWS {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0).collect();
                let want = matmul_t(&x, m, &q, None);
                let mut got = vec![0.0f32; m * n];
                let dst = Out(got.as_mut_ptr());
                // SAFETY: one task writes all n columns of the [m, n] output.
                unsafe { gemv_cols(&x, m, &q, 0, n, &dst) };
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{dtype} m {m}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn dequantize_matches_the_gguf_reader() {
        for (dtype, g) in [(DType::Q8_0, crate::formats::gguf::GgmlType::Q8_0), (DType::Q4_1, crate::formats::gguf::GgmlType::Q4_1), (DType::Q4_0, crate::formats::gguf::GgmlType::Q4_0)] {
            let raw = blocks(dtype, 3, 64, 3);
            let q = QuantMatrix::from_ggml(dtype, 3, 64, &raw).unwrap();
            let want = crate::formats::gguf::dequantize(g, &raw).unwrap();
            for (a, b) in q.dequantize().iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{dtype}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn permuted_rows_move_whole() {
        let q = QuantMatrix::from_ggml(DType::Q4_1, 4, 32, &blocks(DType::Q4_1, 4, 32, 9)).unwrap();
        let p = q.permute_rows(&[2, 0, 3, 1]);
        let (a, b) = (q.dequantize(), p.dequantize());
        for (i, &src) in [2, 0, 3, 1].iter().enumerate() {
            assert_eq!(b[i * 32..(i + 1) * 32], a[src * 32..(src + 1) * 32]);
        }
        assert!(QuantMatrix::from_ggml(DType::Q4_1, 4, 32, &[0; 7]).is_err());
        assert!(QuantMatrix::from_ggml(DType::Q8_0, 1, 33, &[0; 34]).is_err());
    }
}
