//! The decode GEMV (one row of x) in AVX2 + FMA intrinsics: per block the quants are widened in
//! four 8-lane registers, multiplied with x, scaled by `d` into two alternating accumulators;
//! the Q4 offsets add `Σ_b m_b · Σ x_b` per column.

use super::{Out, QuantMatrix, BLOCK};
use crate::dtype::DType;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics, AVX enabled by the caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// # Safety
/// AVX2 and FMA are available; `dst` as in `gemv_cols` with m = 1; `xsum` holds Σ x per block
/// (4-bit kinds; empty for Q8_0).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemv1(x: &[f32], xsum: &[f32], w: &QuantMatrix, c0: usize, cols: usize, dst: &Out) {
    let nb = w.cols / BLOCK;
    let q8 = w.dtype == DType::Q8_0;
    assert!(x.len() >= nb * BLOCK && (c0 + cols) * nb <= w.scale.len() && (q8 || xsum.len() == nb));
    let xp = x.as_ptr();
    // SAFETY (whole body): every load reads inside x (nb blocks of 32), w.qs (the column's nb
    // blocks of 16 or 32 bytes) or w.scale / w.min (asserted above); dst as the contract says.
    unsafe {
        let mask = _mm_set1_epi8(0x0f);
        for c in c0..c0 + cols {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let base = c * nb;
            let mut b = 0;
            while b < nb {
                let xb = xp.add(b * BLOCK);
                let (x0, x1, x2, x3) = (_mm256_loadu_ps(xb), _mm256_loadu_ps(xb.add(8)), _mm256_loadu_ps(xb.add(16)), _mm256_loadu_ps(xb.add(24)));
                let s = if q8 {
                    let q = w.qs.as_ptr().add((base + b) * 32);
                    let lo = _mm_loadu_si128(q as *const __m128i);
                    let hi = _mm_loadu_si128(q.add(16) as *const __m128i);
                    let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
                    let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
                    let w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
                    let w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
                    _mm256_fmadd_ps(w3, x3, _mm256_fmadd_ps(w2, x2, _mm256_fmadd_ps(w1, x1, _mm256_mul_ps(w0, x0))))
                } else {
                    let q = _mm_loadu_si128(w.qs.as_ptr().add((base + b) * 16) as *const __m128i);
                    let lo = _mm_and_si128(q, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                    let w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
                    let w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
                    let w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
                    let w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
                    _mm256_fmadd_ps(w3, x3, _mm256_fmadd_ps(w2, x2, _mm256_fmadd_ps(w1, x1, _mm256_mul_ps(w0, x0))))
                };
                let d = _mm256_set1_ps(*w.scale.get_unchecked(base + b));
                if b & 1 == 0 {
                    a0 = _mm256_fmadd_ps(d, s, a0);
                } else {
                    a1 = _mm256_fmadd_ps(d, s, a1);
                }
                b += 1;
            }
            let mut v = hsum(_mm256_add_ps(a0, a1));
            if !q8 {
                let mins = &w.min[base..base + nb];
                v += mins.iter().zip(xsum).map(|(m, s)| m * s).sum::<f32>();
            }
            *dst.0.add(c) = v;
        }
    }
}
