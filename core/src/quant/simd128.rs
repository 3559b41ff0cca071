//! The decode GEMV (one row of x) in wasm SIMD128: as the AVX2 kernel, with 4-lane registers and
//! no FMA (SIMD128 has none), per block the quants widened into eight f32x4, multiplied with x and
//! summed in a tree, scaled by `d` into two alternating accumulators; the Q4 offsets add
//! `Σ_b m_b · Σ x_b` per column.

use super::{Out, QuantMatrix, BLOCK};
use crate::dtype::DType;
use core::arch::wasm32::*;

/// Sixteen signed (`SIGNED`) or unsigned bytes as four f32x4.
#[inline(always)]
fn widen16<const SIGNED: bool>(q: v128) -> [v128; 4] {
    let (lo, hi) = if SIGNED { (i16x8_extend_low_i8x16(q), i16x8_extend_high_i8x16(q)) } else { (u16x8_extend_low_u8x16(q), u16x8_extend_high_u8x16(q)) };
    let ext = |h: v128| if SIGNED { (i32x4_extend_low_i16x8(h), i32x4_extend_high_i16x8(h)) } else { (u32x4_extend_low_u16x8(h), u32x4_extend_high_u16x8(h)) };
    let (a, b) = ext(lo);
    let (c, d) = ext(hi);
    [f32x4_convert_i32x4(a), f32x4_convert_i32x4(b), f32x4_convert_i32x4(c), f32x4_convert_i32x4(d)]
}

/// Σ w[i]·x[i] over four lanes-wide pairs, as a tree.
#[inline(always)]
fn dot4(w: [v128; 4], x: &[v128; 4]) -> v128 {
    f32x4_add(f32x4_add(f32x4_mul(w[0], x[0]), f32x4_mul(w[1], x[1])), f32x4_add(f32x4_mul(w[2], x[2]), f32x4_mul(w[3], x[3])))
}

/// # Safety
/// `dst` as in `gemv_cols` with m = 1; `xsum` holds Σ x per block (4-bit kinds; empty for
/// Q8_0).
pub(super) unsafe fn gemv1(x: &[f32], xsum: &[f32], w: &QuantMatrix, c0: usize, cols: usize, dst: &Out) {
    let nb = w.cols / BLOCK;
    let q8 = w.dtype == DType::Q8_0;
    let per = if q8 { 32 } else { 16 };
    assert!(x.len() >= nb * BLOCK && (c0 + cols) * nb <= w.scale.len() && (c0 + cols) * nb * per <= w.qs.len() && (q8 || xsum.len() == nb));
    let xp = x.as_ptr();
    let mask = u8x16_splat(0x0f);
    // SAFETY (whole body): every load reads inside x (nb blocks of 32), w.qs (the column's nb
    // blocks of `per` bytes) or w.scale / w.min (asserted above); v128_load has no alignment
    // requirement; dst as the contract says.
    unsafe {
        for c in c0..c0 + cols {
            let (mut a0, mut a1) = (f32x4_splat(0.0), f32x4_splat(0.0));
            let base = c * nb;
            for b in 0..nb {
                let xb = xp.add(b * BLOCK) as *const v128;
                let x0 = [v128_load(xb), v128_load(xb.add(1)), v128_load(xb.add(2)), v128_load(xb.add(3))];
                let x1 = [v128_load(xb.add(4)), v128_load(xb.add(5)), v128_load(xb.add(6)), v128_load(xb.add(7))];
                let q = w.qs.as_ptr().add((base + b) * per) as *const v128;
                let s = if q8 {
                    f32x4_add(dot4(widen16::<true>(v128_load(q)), &x0), dot4(widen16::<true>(v128_load(q.add(1))), &x1))
                } else {
                    let v = v128_load(q);
                    f32x4_add(dot4(widen16::<false>(v128_and(v, mask)), &x0), dot4(widen16::<false>(u8x16_shr(v, 4)), &x1))
                };
                let d = f32x4_splat(*w.scale.get_unchecked(base + b));
                if b & 1 == 0 {
                    a0 = f32x4_add(a0, f32x4_mul(d, s));
                } else {
                    a1 = f32x4_add(a1, f32x4_mul(d, s));
                }
            }
            let a = f32x4_add(a0, a1);
            let mut v = (f32x4_extract_lane::<0>(a) + f32x4_extract_lane::<2>(a)) + (f32x4_extract_lane::<1>(a) + f32x4_extract_lane::<3>(a));
            if !q8 {
                let mins = &w.min[base..base + nb];
                v += mins.iter().zip(xsum).map(|(m, s)| m * s).sum::<f32>();
            }
            *dst.0.add(c) = v;
        }
    }
}
