//! The merging ops (see [`crate::Op::MagnitudeMask`] and the four after it): the oracle for
//! `shaders/merge_*.wgsl`, and what the merge engine runs on the CPU. Rows are independent, so
//! natively they run in parallel (rayon); results do not depend on the thread count.

use crate::op::Consensus;
use crate::sparsify::{abs_key, rank_range_mask, sign, uniform};

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// Runs `f(row_index, row_out)` for every row of `out` (chunks of `n`), in parallel natively.
fn rows<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if n == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    out.par_chunks_mut(n).enumerate().for_each(|(r, o)| f(r, o));
    #[cfg(target_arch = "wasm32")]
    out.chunks_mut(n).enumerate().for_each(|(r, o)| f(r, o));
}

pub(crate) fn magnitude_mask(x: &[f32], n: usize, ranks: &[u32]) -> Vec<u32> {
    let mut out = vec![0u32; x.len()];
    rows(&mut out, n, |r, o| {
        let m = rank_range_mask(&x[r * n..(r + 1) * n], ranks[2 * r] as usize, ranks[2 * r + 1] as usize);
        o.iter_mut().zip(m).for_each(|(o, k)| *o = k as u32);
    });
    out
}

pub(crate) fn random_mask(n: usize, rows_n: usize, p: &[f32], seed: u64, key: u32) -> Vec<u32> {
    let mut out = vec![0u32; rows_n * n];
    rows(&mut out, n, |r, o| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = (uniform(seed, key, (r * n + j) as u64) < p[r]) as u32;
        }
    });
    out
}

/// `x [R, G, C]`: each group of C is ranked by (|x|, index) ascending.
pub(crate) fn della_mask(x: &[f32], g: usize, c: usize, p: &[f32], seed: u64, key: u32) -> Vec<u32> {
    let mut out = vec![0u32; x.len()];
    rows(&mut out, c, |row, o| {
        let r = row / g.max(1);
        let base = row * c;
        let xs = &x[base..base + c];
        let mut order: Vec<u32> = (0..c as u32).collect();
        order.sort_unstable_by_key(|&i| (abs_key(xs[i as usize]), i));
        for (q, &i) in order.iter().enumerate() {
            let u = uniform(seed, key, (base + i as usize) as u64);
            o[i as usize] = (u < p[r * c + q]) as u32;
        }
    });
    out
}

pub(crate) fn masked_rescale(x: &[f32], mask: &[u32], n: usize, scale: &[f32], l1: bool) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    rows(&mut out, n, |r, o| {
        let (xr, mr) = (&x[r * n..(r + 1) * n], &mask[r * n..(r + 1) * n]);
        let mut factor = scale[r];
        if l1 {
            let before: f64 = xr.iter().map(|v| v.abs() as f64).sum();
            let after: f64 = xr.iter().zip(mr).filter(|(_, m)| **m != 0).map(|(v, _)| v.abs() as f64).sum();
            let (before, after) = (before as f32, after as f32);
            if before >= 1e-7 && after >= 1e-7 {
                factor *= before / after;
            }
        }
        for ((o, &v), &m) in o.iter_mut().zip(xr).zip(mr) {
            *o = if m != 0 { v * factor } else { 0.0 };
        }
    });
    out
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn task_merge(
    base: &[f32],
    deltas: &[f32],
    weights: &[f32],
    consensus: Consensus,
    weighted_sign: bool,
    count_divisor: bool,
    normalize: bool,
    lambda: f32,
) -> Vec<f32> {
    let n = base.len();
    let r_n = weights.len();
    let mut out = base.to_vec();
    let chunk = 4096;
    rows(&mut out, chunk, |c, o| {
        for (k, o) in o.iter_mut().enumerate() {
            let j = c * chunk + k;
            let v = |r: usize| {
                let d = deltas[r * n + j];
                if weighted_sign { d * weights[r] } else { d }
            };
            let elected = match consensus {
                Consensus::None => 0.0,
                Consensus::Sum => {
                    let s = (0..r_n).fold(0f32, |a, r| a + v(r));
                    if s >= 0.0 { 1.0 } else { -1.0 }
                }
                Consensus::Count => {
                    let s = (0..r_n).fold(0f32, |a, r| a + sign(v(r)));
                    if s >= 0.0 { 1.0 } else { -1.0 }
                }
            };
            let (mut mixed, mut div) = (0f32, 0f32);
            for r in 0..r_n {
                let agree = consensus == Consensus::None || sign(v(r)) == elected;
                if agree {
                    mixed += deltas[r * n + j] * weights[r];
                    div += if count_divisor { 1.0 } else { weights[r] };
                }
            }
            let div = if consensus == Consensus::None {
                if div.abs() < 1e-8 { 1.0 } else { div }
            } else if div == 0.0 {
                1.0
            } else {
                div
            };
            if normalize {
                mixed /= div;
            }
            *o += lambda * mixed;
        }
    });
    out
}
