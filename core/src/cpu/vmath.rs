//! Four-lane versions of [`super::fast`]'s `exp` and erf GELU, for the wasm build: there LLVM
//! optimises for size and does not vectorise the scalar loops, and the GELU over `[T, 4C]` and the
//! attention's `exp` over `[H, T, T]` were, after the matmuls, the largest part of a MiniLM forward.
//!
//! Each function performs exactly the scalar formula's operations in the same order, lane by lane
//! (f32 multiply and add stay separate in both: Rust never fuses them, plain SIMD128 has no FMA),
//! so the results are bit-identical to the scalar ones; the tests check that on the [`Portable`]
//! lanes natively, and the SIMD128 lanes run the same generic code.

use super::tiled::{Lanes, Portable};

/// The lane operations the formulas need, on top of [`super::tiled::Lanes`]' storage.
pub(crate) trait Math: Copy {
    fn splat(v: f32) -> Self;
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn div(self, b: Self) -> Self;
    /// `clamp(lo, hi)` as `f32::clamp` (NaN stays NaN).
    fn clamp(self, lo: f32, hi: f32) -> Self;
    fn abs(self) -> Self;
    /// `if self >= 0 { a } else { b }` per lane.
    fn select_nonneg(self, a: Self, b: Self) -> Self;
    /// `if self == -∞ { 0 } else { v }` per lane.
    fn zero_where_neg_inf(self, v: Self) -> Self;
    /// `f32::from_bits(((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32)`.
    fn pow2_from_rounded(self, round: f32) -> Self;
}

impl Math for Portable {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Portable([v; 4])
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] + b.0[l]))
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] - b.0[l]))
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] * b.0[l]))
    }
    #[inline(always)]
    fn div(self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] / b.0[l]))
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        Portable(self.0.map(|v| v.clamp(lo, hi)))
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Portable(self.0.map(f32::abs))
    }
    #[inline(always)]
    fn select_nonneg(self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| if self.0[l] >= 0.0 { a.0[l] } else { b.0[l] }))
    }
    #[inline(always)]
    fn zero_where_neg_inf(self, v: Self) -> Self {
        Portable(std::array::from_fn(|l| if self.0[l] == f32::NEG_INFINITY { 0.0 } else { v.0[l] }))
    }
    #[inline(always)]
    fn pow2_from_rounded(self, round: f32) -> Self {
        Portable(self.0.map(|t| f32::from_bits((((t.to_bits() as i32).wrapping_sub(round.to_bits() as i32) + 127) << 23) as u32)))
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Math for super::tiled::Simd128 {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Self(core::arch::wasm32::f32x4_splat(v))
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Self(core::arch::wasm32::f32x4_add(self.0, b.0))
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        Self(core::arch::wasm32::f32x4_sub(self.0, b.0))
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        Self(core::arch::wasm32::f32x4_mul(self.0, b.0))
    }
    #[inline(always)]
    fn div(self, b: Self) -> Self {
        Self(core::arch::wasm32::f32x4_div(self.0, b.0))
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        use core::arch::wasm32::{f32x4_max, f32x4_min, f32x4_splat};
        // f32x4.max/min propagate NaN, as f32::clamp does.
        Self(f32x4_min(f32x4_max(self.0, f32x4_splat(lo)), f32x4_splat(hi)))
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Self(core::arch::wasm32::f32x4_abs(self.0))
    }
    #[inline(always)]
    fn select_nonneg(self, a: Self, b: Self) -> Self {
        use core::arch::wasm32::{f32x4_ge, f32x4_splat, v128_bitselect};
        Self(v128_bitselect(a.0, b.0, f32x4_ge(self.0, f32x4_splat(0.0))))
    }
    #[inline(always)]
    fn zero_where_neg_inf(self, v: Self) -> Self {
        use core::arch::wasm32::{f32x4_eq, f32x4_splat, v128_andnot};
        Self(v128_andnot(v.0, f32x4_eq(self.0, f32x4_splat(f32::NEG_INFINITY))))
    }
    #[inline(always)]
    fn pow2_from_rounded(self, round: f32) -> Self {
        use core::arch::wasm32::{i32x4_add, i32x4_shl, i32x4_splat, i32x4_sub};
        Self(i32x4_shl(i32x4_add(i32x4_sub(self.0, i32x4_splat(round.to_bits() as i32)), i32x4_splat(127)), 23))
    }
}

/// [`super::fast::exp`] lane-wise (same constants, same operations).
#[inline(always)]
pub(crate) fn exp<V: Math>(x: V) -> V {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let s = V::splat;
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul(s(LOG2E)).add(s(ROUND));
    let n = t.sub(s(ROUND));
    let r = x.sub(n.mul(s(LN2_HI))).sub(n.mul(s(LN2_LO)));
    let mut p = s(1.987_569_2e-4).mul(r).add(s(1.398_199_9e-3));
    p = p.mul(r).add(s(8.333_452e-3));
    p = p.mul(r).add(s(4.166_579_6e-2));
    p = p.mul(r).add(s(1.666_666_5e-1));
    p = p.mul(r).add(s(0.5));
    p = p.mul(r).mul(r).add(r).add(s(1.0));
    t.pow2_from_rounded(ROUND).mul(p)
}

/// [`super::fast`]'s erf GELU lane-wise (`x/2 · erfc(|x|/√2)` below 0, `x/2 · (2 − erfc)` above).
#[inline(always)]
pub(crate) fn gelu_erf<V: Math>(x: V) -> V {
    let s = V::splat;
    let z = x.abs().mul(s(std::f32::consts::FRAC_1_SQRT_2));
    // erfc_pos(z), Numerical Recipes' Chebyshev fit, Horner from the innermost term out.
    let t = s(1.0).div(s(1.0).add(s(0.5).mul(z)));
    let mut q = s(-0.822_152_23).add(t.mul(s(0.170_872_77)));
    q = s(1.488_515_9).add(t.mul(q));
    q = s(-1.135_204).add(t.mul(q));
    q = s(0.278_868_07).add(t.mul(q));
    q = s(-0.186_288_06).add(t.mul(q));
    q = s(0.096_784_18).add(t.mul(q));
    q = s(0.374_091_96).add(t.mul(q));
    q = s(1.000_023_7).add(t.mul(q));
    let poly = s(-1.265_512_2).add(t.mul(q));
    let r = t.mul(exp(s(0.0).sub(z).mul(z).add(poly)));
    let c = x.select_nonneg(s(2.0).sub(r), r);
    s(0.5).mul(x).mul(c)
}

/// `out[i] = f(x[i])`, four lanes at a time through `v`, the tail through the scalar `f`.
#[inline(always)]
pub(crate) fn map<V: Math + Lanes>(x: &[f32], out: &mut [f32], v: impl Fn(V) -> V, f: impl Fn(f32) -> f32) {
    let n = x.len().min(out.len());
    let n4 = n & !3;
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= both lengths.
        unsafe { v(V::load(x.as_ptr().add(i))).store(out.as_mut_ptr().add(i)) };
        i += 4;
    }
    for j in n4..n {
        out[j] = f(x[j]);
    }
}

/// A score row after masking (masked keys at −∞) into softmax numerators: `exp(x − m)`, 0 where
/// `x` is −∞ (exp clamps its argument, so those need the explicit 0).
#[inline(always)]
pub(crate) fn exp_shifted<V: Math + Lanes>(row: &mut [f32], m: f32) {
    let n4 = row.len() & !3;
    let mv = <V as Math>::splat(m);
    let mut i = 0;
    while i < n4 {
        // SAFETY: i + 4 <= n4 <= row.len().
        unsafe {
            let x = <V as Lanes>::load(row.as_ptr().add(i));
            x.zero_where_neg_inf(exp(Math::sub(x, mv))).store(row.as_mut_ptr().add(i));
        }
        i += 4;
    }
    for x in &mut row[n4..] {
        *x = if *x == f32::NEG_INFINITY { 0.0 } else { super::fast::exp(*x - m) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::tiled::Portable;

    /// Bit-identical to the scalar formulas on a dense sweep, the clamps, ±0, ±∞ and NaN.
    #[test]
    fn lanes_equal_the_scalar_formulas_bit_for_bit() {
        let mut xs: Vec<f32> = (0..200_000).map(|i| -100.0 + i as f32 * 0.001).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 88.5, -90.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN]);
        while xs.len() % 4 != 0 {
            xs.push(0.5);
        }
        for c in xs.chunks(4) {
            let v = Portable([c[0], c[1], c[2], c[3]]);
            let (e, g) = (super::exp(v).0, super::gelu_erf(v).0);
            for l in 0..4 {
                let (se, sg) = (super::super::fast::exp(c[l]), super::super::fast::gelu_erf(c[l]));
                assert!(e[l].to_bits() == se.to_bits() || (e[l].is_nan() && se.is_nan()), "exp({}) = {} vs scalar {}", c[l], e[l], se);
                assert!(g[l].to_bits() == sg.to_bits() || (g[l].is_nan() && sg.is_nan()), "gelu({}) = {} vs scalar {}", c[l], g[l], sg);
            }
        }
        // The slice helpers, with tails (length not a multiple of 4) and masked (−∞) keys.
        let x: Vec<f32> = (0..23).map(|i| if i % 5 == 0 { f32::NEG_INFINITY } else { i as f32 * 0.37 - 4.0 }).collect();
        let mut got = x.clone();
        super::exp_shifted::<Portable>(&mut got, 1.5);
        let mut g = vec![0.0f32; x.len()];
        super::map::<Portable>(&x[1..], &mut g[1..], super::gelu_erf, super::super::fast::gelu_erf);
        for (i, &v) in x.iter().enumerate() {
            let want = if v == f32::NEG_INFINITY { 0.0 } else { super::super::fast::exp(v - 1.5) };
            assert_eq!(got[i].to_bits(), want.to_bits(), "exp_shifted at {i}");
            if i > 0 {
                assert_eq!(g[i].to_bits(), super::super::fast::gelu_erf(v).to_bits(), "map at {i}");
            }
        }
    }
}
