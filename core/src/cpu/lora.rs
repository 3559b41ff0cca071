//! Multi-LoRA shrink and expand (`Op::LoraShrink`, `Op::LoraExpand`): every row applies its own
//! adapters, picked by index from a stack. Dot products accumulate in f64 and round once. Packed
//! f16/bf16 stacks are widened once per call, and only the adapters some row selects: a stack of
//! many adapters costs what the batch uses. Rows run in parallel natively.

use crate::tensor::HostData;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;

/// `v [M, K, R]`: `v[m, k] = a[sel[m, k]] · x[m]` for `x [M, In]`, `a [N, R, In]`, `sel [M, K]`;
/// zeros for an index `>= N` (an empty slot).
pub(super) fn lora_shrink(x: &[f32], a: &HostData, [n, r, cin]: [usize; 3], sel: &[u32], k: usize) -> Vec<f32> {
    let m = sel.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0.0f32; m * k * r];
    let adapters = selected(a, n, r * cin, sel);
    let row = |mi: usize, o: &mut [f32]| {
        let xr = &x[mi * cin..][..cin];
        for (slot, ov) in o.chunks_mut(r).enumerate() {
            let Some(ad) = adapters.get(sel[mi * k + slot] as usize) else {
                continue; // empty slot or out of range: zeros
            };
            for (ov, ar) in ov.iter_mut().zip(ad.chunks_exact(cin.max(1))) {
                *ov = dot(ar, xr) as f32;
            }
        }
    };
    for_rows(&mut out, k * r, k * r * cin, row);
    out
}

/// `[M, Out]`: `y[m] + Σ_k w[m, k] · (b[sel[m, k]] · v[m, k])` for `y [M, Out]`, `v [M, K, R]`,
/// `b [N, Out, R]`, `sel`, `w [M, K]`; a slot with index `>= N` is skipped (its `w`, `v` unread).
pub(super) fn lora_expand(y: &[f32], v: &[f32], b: &HostData, [n, cout, r]: [usize; 3], sel: &[u32], w: &[f32], k: usize) -> Vec<f32> {
    let mut out = y.to_vec();
    let adapters = selected(b, n, cout * r, sel);
    let row = |mi: usize, o: &mut [f32]| {
        // The row's live slots: (B [Out, R], weight, v [R]).
        let slots: Vec<(&[f32], f64, &[f32])> = (0..k)
            .filter_map(|slot| {
                let ad = adapters.get(sel[mi * k + slot] as usize)?;
                Some((&ad[..], w[mi * k + slot] as f64, &v[(mi * k + slot) * r..][..r]))
            })
            .collect();
        for (oi, out) in o.iter_mut().enumerate() {
            let mut acc = *out as f64;
            for &(bm, wk, vk) in &slots {
                acc += wk * dot(&bm[oi * r..][..r], vk);
            }
            *out = acc as f32;
        }
    };
    for_rows(&mut out, cout, cout * k * r, row);
    out
}

/// The stack's adapters (`per` elements each) as f32, indexed by adapter: borrowed for f32, widened
/// for f16/bf16 where `sel` selects them (empty otherwise, never read).
fn selected<'a>(stack: &'a HostData, n: usize, per: usize, sel: &[u32]) -> Vec<Cow<'a, [f32]>> {
    let part = |i: usize| i * per..(i + 1) * per;
    match stack {
        HostData::F32(s) => (0..n).map(|i| Cow::Borrowed(&s[part(i)])).collect(),
        HostData::F16(_) | HostData::BF16(_) => {
            let mut used = vec![false; n];
            sel.iter().filter(|&&i| (i as usize) < n).for_each(|&i| used[i as usize] = true);
            let widen = |i: usize| -> Vec<f32> {
                let mut w = vec![0.0f32; per];
                match stack {
                    // F16C where the CPU has it (half detects it at run time).
                    HostData::F16(s) => s[part(i)].convert_to_f32_slice(&mut w),
                    HostData::BF16(s) => s[part(i)].convert_to_f32_slice(&mut w),
                    _ => unreachable!(),
                }
                w
            };
            (0..n).map(|i| Cow::Owned(if used[i] { widen(i) } else { Vec::new() })).collect()
        }
        _ => unreachable!("Op::infer checked the weights' dtype"),
    }
}

/// `Σ a[i] b[i]` in f64, in eight interleaved partial sums so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mut acc = [0.0f64; 8];
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] as f64 * y[j] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Calls `f(row, out_row)` for each `row_len`-long row of `out`; in parallel natively, with rows
/// batched so each task does at least ~64k multiply-adds (`row_work` per row).
fn for_rows(out: &mut [f32], row_len: usize, row_work: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if row_len == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        let min_rows = (1 << 16) / row_work.max(1) + 1;
        out.par_chunks_mut(row_len).with_min_len(min_rows).enumerate().for_each(|(i, o)| f(i, o));
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = row_work;
        out.chunks_mut(row_len).enumerate().for_each(|(i, o)| f(i, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_then_expand_by_hand() {
        // Two adapters of rank 2 on In = 3, Out = 2; row 0 uses adapters 1 and 0, row 1 adapter 0
        // and an empty slot, row 2 an index past the stack and adapter 1.
        let a = HostData::F32(vec![1., 0., 0., 0., 1., 0., /* adapter 1 */ 0., 0., 2., 1., 1., 1.]);
        let x = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        let sel = [1, 0, 0, u32::MAX, 5, 1];
        let v = lora_shrink(&x, &a, [2, 2, 3], &sel, 2);
        assert_eq!(v, vec![6., 6., 1., 2., 4., 5., 0., 0., 0., 0., 18., 24.]);
        // The same through f16 storage (every value here is exact in f16).
        let a16 = HostData::F16(a.to_f32_vec().into_iter().map(half::f16::from_f32).collect());
        assert_eq!(lora_shrink(&x, &a16, [2, 2, 3], &sel, 2), v);
        let b = HostData::F32(vec![1., 0., 0., 1., /* adapter 1 */ 1., 1., 0., 0.]);
        let y = [10., 20., 30., 40., 50., 60.];
        // NaN weights sit only in slots that are empty or out of range: they must not leak.
        let w = [0.5, 3.0, 2.0, f32::NAN, f32::NAN, 1.0];
        let out = lora_expand(&y, &v, &b, [2, 2, 2], &sel, &w, 2);
        // Row 0: y + 0.5 * (b1 · [6, 6]) + 3 * (b0 · [1, 2]); row 1: y + 2 * (b0 · [4, 5]);
        // row 2: y + 1 * (b1 · [18, 24]).
        assert_eq!(out, vec![19., 26., 38., 50., 92., 60.]);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for len in [0, 1, 7, 8, 9, 33] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let plain: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-12, "len {len}");
        }
    }
}
