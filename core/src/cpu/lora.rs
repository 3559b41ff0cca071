//! Multi-LoRA shrink and expand (`Op::LoraShrink`, `Op::LoraExpand`): every row applies its own
//! adapters, picked by index from a stack. Dot products accumulate in f64 and round once; packed
//! f16/bf16 weights are widened element by element (exactly), never copied out whole, since a stack
//! of many adapters is read only at the rows that select them. Rows run in parallel natively.

use crate::shape::Shape;
use crate::tensor::HostData;

/// `v [M, K, R]`: `v[m, k] = a[sel[m, k]] · x[m]` for `x [M, In]`, `a [N, R, In]`, `sel [M, K]`;
/// zeros for an index `>= N` (an empty slot).
pub(super) fn lora_shrink(x: &[f32], a_shape: &Shape, a: &HostData, sel: &[u32], k: usize) -> Vec<f32> {
    let dims = (a_shape.dims()[0], a_shape.dims()[1], a_shape.dims()[2]);
    match a {
        HostData::F32(a) => shrink(x, a, dims, sel, k),
        HostData::F16(a) => shrink(x, a, dims, sel, k),
        HostData::BF16(a) => shrink(x, a, dims, sel, k),
        _ => unreachable!("Op::infer checked a's dtype"),
    }
}

fn shrink<T: Copy + Into<f64> + Sync>(x: &[f32], a: &[T], (n, r, cin): (usize, usize, usize), sel: &[u32], k: usize) -> Vec<f32> {
    let m = sel.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0.0f32; m * k * r];
    let row = |mi: usize, o: &mut [f32]| {
        let xr = &x[mi * cin..][..cin];
        for (slot, ov) in o.chunks_mut(r).enumerate() {
            let ad = sel[mi * k + slot] as usize;
            if ad >= n {
                continue; // empty slot or out of range: zeros
            }
            for (ri, ov) in ov.iter_mut().enumerate() {
                let ar = &a[(ad * r + ri) * cin..][..cin];
                *ov = ar.iter().zip(xr).map(|(&w, &xv)| w.into() * xv as f64).sum::<f64>() as f32;
            }
        }
    };
    for_rows(&mut out, k * r, k * r * cin, row);
    out
}

/// `[M, Out]`: `y[m] + Σ_k w[m, k] · (b[sel[m, k]] · v[m, k])` for `y [M, Out]`, `v [M, K, R]`,
/// `b [N, Out, R]`, `sel`, `w [M, K]`; a slot with index `>= N` is skipped (its `w`, `v` unread).
pub(super) fn lora_expand(y: &[f32], v: &[f32], b_shape: &Shape, b: &HostData, sel: &[u32], w: &[f32], k: usize) -> Vec<f32> {
    let dims = (b_shape.dims()[0], b_shape.dims()[1], b_shape.dims()[2]);
    match b {
        HostData::F32(b) => expand(y, v, b, dims, sel, w, k),
        HostData::F16(b) => expand(y, v, b, dims, sel, w, k),
        HostData::BF16(b) => expand(y, v, b, dims, sel, w, k),
        _ => unreachable!("Op::infer checked b's dtype"),
    }
}

fn expand<T: Copy + Into<f64> + Sync>(
    y: &[f32],
    v: &[f32],
    b: &[T],
    (n, cout, r): (usize, usize, usize),
    sel: &[u32],
    w: &[f32],
    k: usize,
) -> Vec<f32> {
    let mut out = y.to_vec();
    let row = |mi: usize, o: &mut [f32]| {
        let slots: Vec<(usize, f64, &[f32])> = (0..k)
            .filter_map(|slot| {
                let ad = sel[mi * k + slot] as usize;
                (ad < n).then(|| (ad, w[mi * k + slot] as f64, &v[(mi * k + slot) * r..][..r]))
            })
            .collect();
        for (oi, out) in o.iter_mut().enumerate() {
            let mut acc = *out as f64;
            for &(ad, wk, vk) in &slots {
                let br = &b[(ad * cout + oi) * r..][..r];
                acc += wk * br.iter().zip(vk).map(|(&bv, &vv)| bv.into() * vv as f64).sum::<f64>();
            }
            *out = acc as f32;
        }
    };
    for_rows(&mut out, cout, cout * k * r, row);
    out
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
        // Two adapters of rank 2 on In = 3, Out = 2; row 0 uses adapter 1, row 1 adapters 0 and an
        // empty slot, row 2 an index past the stack.
        let a = HostData::F32(vec![1., 0., 0., 0., 1., 0., /* adapter 1 */ 0., 0., 2., 1., 1., 1.]);
        let a_shape = Shape::new(&[2, 2, 3]).unwrap();
        let x = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        let sel = [1, 0, 0, u32::MAX, 5, 1];
        let v = lora_shrink(&x, &a_shape, &a, &sel, 2);
        assert_eq!(v, vec![6., 6., 1., 2., 4., 5., 0., 0., 0., 0., 18., 24.]);
        let b = HostData::F32(vec![1., 0., 0., 1., /* adapter 1 */ 1., 1., 0., 0.]);
        let b_shape = Shape::new(&[2, 2, 2]).unwrap();
        let y = [10., 20., 30., 40., 50., 60.];
        // NaN weights sit only in slots that are empty or out of range: they must not leak.
        let w = [0.5, 3.0, 2.0, f32::NAN, f32::NAN, 1.0];
        let out = lora_expand(&y, &v, &b_shape, &b, &sel, &w, 2);
        // Row 0: y + 0.5 * (b1 · [6, 6]) + 3 * (b0 · [1, 2]); row 1: y + 2 * (b0 · [4, 5]);
        // row 2: y + 1 * (b1 · [18, 24]).
        assert_eq!(out, vec![19., 26., 38., 50., 92., 60.]);
    }
}
