//! A register-tiled f32 GEMM written for wasm SIMD128, used by the wasm CPU path instead of the
//! `gemm` crate (`matmul::sgemm`, and attention's two products in `fast.rs`). It never packs:
//!
//! - `out += A · Wᵀ` (`nt`, a linear layer: `W [N, K]` row-major, like every weight here) is a grid
//!   of dot products. A 2×4 tile of outputs (2 rows of A × 4 rows of W) keeps 8 accumulators of 4
//!   k-lanes each; per 4 k it loads 2 vectors of A and 4 of W and does 8 multiply-adds: 8 + 2 + 1
//!   + 1 (a product temporary) = 12 live vectors, within the 15 that V8 gives wasm on x64 (16 XMM,
//!   one scratch). The lanes are summed once per tile at the end. Measured in Node on the 2-core
//!   reference machine (128×384×384, best of 30): 2×4 39 GFLOP/s, 4×2 38, 3×3 28 (V8 spills at 14
//!   live vectors), the 2×4 loop unrolled twice over K 28.
//! - `out += A · B` (`nn`, `B [K, N]` row-major: attention's `P·V`) broadcasts one A value per row
//!   against two vectors of a B row: a 4×8 tile, 8 accumulators, 12 live vectors.
//!
//! Columns of the output are the outer loop (a tile's W rows or B columns stay in L1 while all of A
//! streams from L2) and K is split in blocks of [`KC`] so A's block fits L2 too. Edges (M, N or K
//! not multiples of the tile) run narrower tiles of the same code and a scalar K tail.
//!
//! Why not `gemm`: its packing and its SIMD128 microkernel. MiniLM embedding (batch 1, 128
//! tokens) in headless Chromium (scripts/bench_web.sh, median of 10, Transformers.js 4.3.1 at 1
//! thread in the same series; the 2-core machine is shared, so figures move between runs):
//! gemm 154-204 ms vs Transformers.js 122-133 ms (1.16-1.67×); this kernel with `vmath.rs`
//! 96-117 ms vs 122-147 ms (0.69-0.91×). Native builds keep `gemm` (AVX2/AVX-512 kernels, rayon).
//!
//! The kernels are generic over [`Lanes`] (4 f32 lanes): [`Simd128`] in wasm with SIMD128, and
//! [`Portable`] (a plain `[f32; 4]`) everywhere, which is what the native unit tests run, so the
//! tiling, edges and K blocking are tested natively; the SIMD128 build is checked by the browser
//! and Node tests (MiniLM embeddings against transformers goldens).
//!
//! Rounding: lane-wise partial sums then a 4-lane sum, K blocks added into `out` in order; an f32
//! GEMM with a different summation order than `gemm`'s, held to the same tolerances.

/// Four f32 lanes. Multiply and add are separate operations (plain SIMD128 has no fused
/// multiply-add), so results do not depend on FMA availability.
pub(crate) trait Lanes: Copy {
    fn zero() -> Self;
    /// # Safety
    /// `p..p+4` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` must be readable.
    unsafe fn splat(p: *const f32) -> Self;
    /// # Safety
    /// `p..p+4` must be writable.
    unsafe fn store(self, p: *mut f32);
    /// `self + a·b`.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn sum(self) -> f32;
}

/// The lanes as a plain array (natively, and the reference the SIMD128 lanes follow).
#[derive(Clone, Copy)]
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
pub(crate) struct Portable(pub(crate) [f32; 4]);

impl Lanes for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; 4])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 4 readable floats at p.
        Portable(unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] })
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: the caller guarantees p is readable.
        Portable([unsafe { *p }; 4])
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        for (l, v) in self.0.into_iter().enumerate() {
            // SAFETY: the caller guarantees 4 writable floats at p.
            unsafe { *p.add(l) = v };
        }
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] + a.0[l] * b.0[l]))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        (self.0[0] + self.0[2]) + (self.0[1] + self.0[3])
    }
}

/// SIMD128 lanes (`v128` as 4 × f32).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[derive(Clone, Copy)]
pub(crate) struct Simd128(pub(crate) core::arch::wasm32::v128);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes for Simd128 {
    #[inline(always)]
    fn zero() -> Self {
        Simd128(core::arch::wasm32::f32x4_splat(0.0))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable bytes at p; v128_load needs no alignment.
        Simd128(unsafe { core::arch::wasm32::v128_load(p.cast()) })
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: the caller guarantees p is readable.
        Simd128(unsafe { core::arch::wasm32::v128_load32_splat(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 16 writable bytes at p.
        unsafe { core::arch::wasm32::v128_store(p.cast(), self.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        use core::arch::wasm32::{f32x4_add, f32x4_mul};
        Simd128(f32x4_add(self.0, f32x4_mul(a.0, b.0)))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        use core::arch::wasm32::f32x4_extract_lane as e;
        (e::<0>(self.0) + e::<2>(self.0)) + (e::<1>(self.0) + e::<3>(self.0))
    }
}

/// The lanes this build runs: SIMD128 in wasm built with it, else the portable array.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) type Native = Simd128;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub(crate) type Native = Portable;

/// `body` for `i` = 0, 1, .. n-1 (n ≤ 4, a constant), written out: at opt-level "s" LLVM does not
/// unroll the tile loops, and a tile's accumulators only stay in registers when every index into
/// them is a constant.
macro_rules! unroll {
    ($n:expr, $i:ident, $body:block) => {{
        if 0 < $n {
            let $i = 0usize;
            $body
        }
        if 1 < $n {
            let $i = 1usize;
            $body
        }
        if 2 < $n {
            let $i = 2usize;
            $body
        }
        if 3 < $n {
            let $i = 3usize;
            $body
        }
    }};
}

/// K per block: A's block (128 rows × 512 × 4 bytes = 256 KiB for a 128-token layer) stays in L2.
const KC: usize = 512;

/// A row-major matrix view: `rows × cols` with row stride `ld` (elements), checked against its slice.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl View<'_> {
    fn fits(&self) -> bool {
        self.cols <= self.ld && (self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.ld + self.cols <= self.data.len())
    }
}

/// `out [M, N] += A [M, K] · B`, all row-major and contiguous, `B` being `[K, N]` or, with
/// `trans_b`, `[N, K]` (the `gemm`-shaped entry point `matmul::gemm_block` uses in wasm).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<L: Lanes>(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans_b: bool, out: &mut [f32]) {
    let a = View { data: a, rows: m, cols: k, ld: k };
    if trans_b {
        nt::<L>(a, View { data: b, rows: n, cols: k, ld: k }, 1.0, out, n);
    } else {
        nn::<L>(a, View { data: b, rows: k, cols: n, ld: n }, out, n);
    }
}

/// `out [M, N] (row stride ldo) += alpha · A [M, K] · W [N, K]ᵀ`.
pub(crate) fn nt<L: Lanes>(a: View, w: View, alpha: f32, out: &mut [f32], ldo: usize) {
    let (m, n, k) = (a.rows, w.rows, a.cols);
    assert!(a.fits() && w.fits() && w.cols == k && n <= ldo && (m == 0 || n == 0 || (m - 1) * ldo + n <= out.len()), "tiled::nt shapes");
    let (ap, wp, op) = (a.data.as_ptr(), w.data.as_ptr(), out.as_mut_ptr());
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let mut j = 0;
        while j < n {
            let c = (n - j).min(NT_C);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(NT_R);
                // SAFETY: rows i..i+r of A and j..j+c of W, columns k0..k0+kc, and out's (i.., j..)
                // block lie within their slices (asserted above: the views fit and out holds M×N
                // at stride ldo).
                unsafe {
                    let (a0, w0, o0) = (ap.add(i * a.ld + k0), wp.add(j * w.ld + k0), op.add(i * ldo + j));
                    match r {
                        4 => nt_cols::<L, 4>(c, a0, a.ld, w0, w.ld, kc, alpha, o0, ldo),
                        3 => nt_cols::<L, 3>(c, a0, a.ld, w0, w.ld, kc, alpha, o0, ldo),
                        2 => nt_cols::<L, 2>(c, a0, a.ld, w0, w.ld, kc, alpha, o0, ldo),
                        _ => nt_cols::<L, 1>(c, a0, a.ld, w0, w.ld, kc, alpha, o0, ldo),
                    }
                }
                i += r;
            }
            j += c;
        }
    }
}

/// Tile of [`nt`]: rows of A × rows of W.
const NT_R: usize = 2;
const NT_C: usize = 4;

/// [`nt_tile`] for `c` (≤ [`NT_C`]) columns.
///
/// # Safety
/// As [`nt_tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_cols<L: Lanes, const R: usize>(c: usize, a: *const f32, lda: usize, w: *const f32, ldw: usize, k: usize, alpha: f32, o: *mut f32, ldo: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match c {
            4 if NT_C >= 4 => nt_tile::<L, R, 4>(a, lda, w, ldw, k, alpha, o, ldo),
            3 if NT_C >= 3 => nt_tile::<L, R, 3>(a, lda, w, ldw, k, alpha, o, ldo),
            2 => nt_tile::<L, R, 2>(a, lda, w, ldw, k, alpha, o, ldo),
            _ => nt_tile::<L, R, 1>(a, lda, w, ldw, k, alpha, o, ldo),
        }
    }
}

/// One R×C tile of [`nt`] over `k` (one K block).
///
/// # Safety
/// `a` addresses R rows of `k` floats at stride `lda`, `w` C rows at stride `ldw`, `o` an R×C block
/// at stride `ldo`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_tile<L: Lanes, const R: usize, const C: usize>(a: *const f32, lda: usize, w: *const f32, ldw: usize, k: usize, alpha: f32, o: *mut f32, ldo: usize) {
    let mut acc = [[L::zero(); C]; R];
    let k4 = k & !3;
    let mut p = 0;
    // SAFETY (whole body): p + 4 <= k4 <= k in the vector loop and p < k in the tail, so every
    // access is within the rows the caller vouched for.
    unsafe {
        while p < k4 {
            let mut av = [L::zero(); R];
            unroll!(R, r, { av[r] = L::load(a.add(r * lda + p)) });
            unroll!(C, c, {
                let wv = L::load(w.add(c * ldw + p));
                unroll!(R, r, { acc[r][c] = acc[r][c].mul_add(av[r], wv) });
            });
            p += 4;
        }
        unroll!(R, r, {
            unroll!(C, c, {
                let mut s = acc[r][c].sum();
                for q in k4..k {
                    s += *a.add(r * lda + q) * *w.add(c * ldw + q);
                }
                *o.add(r * ldo + c) += alpha * s;
            })
        });
    }
}

/// `out [M, N] (row stride ldo) += A [M, K] · B [K, N]`.
pub(crate) fn nn<L: Lanes>(a: View, b: View, out: &mut [f32], ldo: usize) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(a.fits() && b.fits() && b.rows == k && n <= ldo && (m == 0 || n == 0 || (m - 1) * ldo + n <= out.len()), "tiled::nn shapes");
    let (ap, bp, op) = (a.data.as_ptr(), b.data.as_ptr(), out.as_mut_ptr());
    let n4 = n & !3;
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let mut j = 0;
        while j < n4 {
            let c = if n4 - j >= 8 { 2 } else { 1 };
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                // SAFETY: rows i..i+r of A (columns k0..k0+kc), rows k0..k0+kc of B (columns
                // j..j+4c <= n4) and out's (i.., j..) block lie within their slices (asserted above).
                unsafe {
                    let (a0, b0, o0) = (ap.add(i * a.ld + k0), bp.add(k0 * b.ld + j), op.add(i * ldo + j));
                    match (r, c) {
                        (4, 2) => nn_tile::<L, 4, 2>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (4, _) => nn_tile::<L, 4, 1>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (3, 2) => nn_tile::<L, 3, 2>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (3, _) => nn_tile::<L, 3, 1>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (2, 2) => nn_tile::<L, 2, 2>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (2, _) => nn_tile::<L, 2, 1>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        (_, 2) => nn_tile::<L, 1, 2>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                        _ => nn_tile::<L, 1, 1>(a0, a.ld, b0, b.ld, kc, o0, ldo),
                    }
                }
                i += r;
            }
            j += 4 * c;
        }
        // The last N % 4 columns: scalar dot products.
        for i in 0..m {
            for jj in n4..n {
                let mut s = 0.0f32;
                for p in k0..k0 + kc {
                    s += a.data[i * a.ld + p] * b.data[p * b.ld + jj];
                }
                out[i * ldo + jj] += s;
            }
        }
    }
}

/// One R×(4·CV) tile of [`nn`] over `k` (one K block).
///
/// # Safety
/// `a` addresses R rows of `k` floats at stride `lda`, `b` k rows of 4·CV floats at stride `ldb`,
/// `o` an R×4·CV block at stride `ldo`.
#[inline(always)]
unsafe fn nn_tile<L: Lanes, const R: usize, const CV: usize>(a: *const f32, lda: usize, b: *const f32, ldb: usize, k: usize, o: *mut f32, ldo: usize) {
    // SAFETY (whole body): p < k, r < R, c < CV address exactly the blocks the caller vouched for.
    unsafe {
        let mut acc = [[L::zero(); CV]; R];
        unroll!(R, r, { unroll!(CV, c, { acc[r][c] = L::load(o.add(r * ldo + 4 * c)) }) });
        for p in 0..k {
            let mut bv = [L::zero(); CV];
            unroll!(CV, c, { bv[c] = L::load(b.add(p * ldb + 4 * c)) });
            unroll!(R, r, {
                let av = L::splat(a.add(r * lda + p));
                unroll!(CV, c, { acc[r][c] = acc[r][c].mul_add(av, bv[c]) });
            });
        }
        unroll!(R, r, { unroll!(CV, c, { acc[r][c].store(o.add(r * ldo + 4 * c)) }) });
    }
}

#[cfg(test)]
mod tests {
    use super::{nn, nt, Native, Portable, View};

    fn fill(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2011) as f32 / 2011.0) - 0.5).collect()
    }

    /// Both kernels against a plain f64 loop on shapes that hit every tile edge: M, N, K not
    /// multiples of the tiles, one row, one column, K = 1, K across several K blocks, padded row
    /// strides, a non-zero starting `out` (the bias) and alpha.
    #[test]
    fn tiles_match_a_plain_loop() {
        let shapes = [(1, 1, 1), (1, 7, 1), (5, 1, 3), (3, 3, 4), (7, 11, 13), (4, 8, 9), (13, 17, 1030), (2, 33, 5), (128, 12, 64), (9, 4, 517)];
        for &(m, n, k) in &shapes {
            let (lda, ldb, ldo) = (k + 3, n + 2, n + 1);
            let a = fill(m * lda, 1);
            let w = fill(n * (k + 1), 2); // W [N, K] at stride k + 1
            let b = fill(k * ldb, 3); // B [K, N] at stride n + 2
            let init = fill(m * ldo, 4);
            let av = View { data: &a, rows: m, cols: k, ld: lda };
            let alpha = 0.37;
            let mut got_nt = init.clone();
            nt::<Portable>(av, View { data: &w, rows: n, cols: k, ld: k + 1 }, alpha, &mut got_nt, ldo);
            let mut got_nn = init.clone();
            nn::<Portable>(av, View { data: &b, rows: k, cols: n, ld: ldb }, &mut got_nn, ldo);
            for i in 0..m {
                for j in 0..ldo {
                    let (t, nn_) = (got_nt[i * ldo + j] as f64, got_nn[i * ldo + j] as f64);
                    if j >= n {
                        // The padding between rows is never written.
                        assert_eq!((t, nn_), (init[i * ldo + j] as f64, init[i * ldo + j] as f64), "padding at ({i}, {j})");
                        continue;
                    }
                    let dot = |f: &dyn Fn(usize) -> f64| (0..k).map(|p| a[i * lda + p] as f64 * f(p)).sum::<f64>();
                    let want_nt = init[i * ldo + j] as f64 + alpha as f64 * dot(&|p| w[j * (k + 1) + p] as f64);
                    let want_nn = init[i * ldo + j] as f64 + dot(&|p| b[p * ldb + j] as f64);
                    let tol = 1e-5 * (1.0 + k as f64).sqrt();
                    assert!((t - want_nt).abs() <= tol, "nt m {m} n {n} k {k} at ({i}, {j}): {t} vs {want_nt}");
                    assert!((nn_ - want_nn).abs() <= tol, "nn m {m} n {n} k {k} at ({i}, {j}): {nn_} vs {want_nn}");
                }
            }
        }
    }

    /// The contiguous entry point is the two kernels on row-major slices.
    #[test]
    fn gemm_entry_matches_a_plain_loop() {
        let (m, n, k) = (6, 10, 7);
        let (a, b) = (fill(m * k, 5), fill(n * k, 6));
        for trans_b in [false, true] {
            let mut out = vec![0.5f32; m * n];
            super::gemm::<Portable>(m, n, k, &a, &b, trans_b, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let want = 0.5 + (0..k).map(|p| a[i * k + p] as f64 * if trans_b { b[j * k + p] } else { b[p * n + j] } as f64).sum::<f64>();
                    assert!((out[i * n + j] as f64 - want).abs() <= 1e-5, "trans_b {trans_b} at ({i}, {j})");
                }
            }
        }
    }

    /// Empty shapes are no-ops, and `Native` is the type the build dispatches to.
    #[test]
    fn empty_shapes_do_nothing() {
        let mut out = vec![1.0f32; 4];
        let e: &[f32] = &[];
        nt::<Native>(View { data: e, rows: 0, cols: 5, ld: 5 }, View { data: e, rows: 0, cols: 5, ld: 5 }, 1.0, &mut out, 2);
        nt::<Native>(View { data: &[1.0; 4], rows: 2, cols: 0, ld: 2 }, View { data: &[1.0; 4], rows: 2, cols: 0, ld: 2 }, 1.0, &mut out, 2);
        nn::<Native>(View { data: &[1.0; 4], rows: 2, cols: 0, ld: 2 }, View { data: e, rows: 0, cols: 2, ld: 2 }, &mut out, 2);
        assert_eq!(out, vec![1.0; 4]);
    }
}
