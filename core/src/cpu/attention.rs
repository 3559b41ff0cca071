//! Scaled dot-product attention with causal and padding masks and grouped-query heads.
//! Accumulates in f64 (the oracle); (batch, head) pairs run in parallel natively.

use crate::shape::Shape;

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    qs: &Shape,
    q: &[f32],
    ks: &Shape,
    k: &[f32],
    vs: &Shape,
    v: &[f32],
    mask: Option<&[u32]>,
    causal: bool,
    scale: f32,
) -> Vec<f32> {
    let heads = Heads::new(qs, ks, vs);
    let Heads { hq, tq, d, hkv, tk, dv, .. } = heads;
    let group = hq / hkv;
    // One (batch, query head) block of the output: [Tq, Dv].
    let head = |bh: usize, o: &mut [f32]| {
        let (bi, h) = (bh / hq, bh % hq);
        let kh = h / group;
        let kv0 = (bi * hkv + kh) * tk;
        let mut w = vec![0.0f64; tk];
        let mut acc = vec![0.0f64; dv];
        for i in 0..tq {
            let qrow = &q[((bi * hq + h) * tq + i) * d..][..d];
            let limit = if causal { (tk + i + 1).saturating_sub(tq) } else { tk };
            let mut max = f64::NEG_INFINITY;
            for (j, wj) in w.iter_mut().enumerate() {
                let visible = j < limit && mask.is_none_or(|m| m[bi * tk + j] != 0);
                *wj = if visible {
                    let krow = &k[(kv0 + j) * d..][..d];
                    dot64(qrow, krow) * scale as f64
                } else {
                    f64::NEG_INFINITY
                };
                max = max.max(*wj);
            }
            if max == f64::NEG_INFINITY {
                continue; // no visible key: the row stays 0
            }
            // Softmax weights once per key, then one pass over V.
            let mut sum = 0.0;
            for wj in w.iter_mut() {
                *wj = if *wj == f64::NEG_INFINITY { 0.0 } else { (*wj - max).exp() };
                sum += *wj;
            }
            acc.fill(0.0);
            for (j, &wj) in w.iter().enumerate() {
                if wj != 0.0 {
                    let vrow = &v[(kv0 + j) * dv..][..dv];
                    acc.iter_mut().zip(vrow).for_each(|(a, &x)| *a += wj * x as f64);
                }
            }
            for (oc, a) in o[i * dv..(i + 1) * dv].iter_mut().zip(&acc) {
                *oc = (a / sum) as f32;
            }
        }
    };
    heads.run(head)
}

/// The shapes of one attention call (`q [B, Hq, Tq, D]`, `k [B, Hkv, Tk, D]`, `v [B, Hkv, Tk, Dv]`)
/// and its per-head driver, shared by the oracle and the fast path (`fast.rs`).
pub(super) struct Heads {
    pub b: usize,
    pub hq: usize,
    pub tq: usize,
    pub d: usize,
    pub hkv: usize,
    pub tk: usize,
    pub dv: usize,
}

impl Heads {
    pub(super) fn new(qs: &Shape, ks: &Shape, vs: &Shape) -> Heads {
        let (q, k) = (qs.dims(), ks.dims());
        Heads { b: q[0], hq: q[1], tq: q[2], d: q[3], hkv: k[1], tk: k[2], dv: vs.dims()[3] }
    }

    /// The output `[B, Hq, Tq, Dv]`: `head(bh, block)` fills the `[Tq, Dv]` block of (batch,
    /// query head) `bh`; blocks run in parallel natively.
    pub(super) fn run(&self, head: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let mut out = vec![0.0f32; self.b * self.hq * self.tq * self.dv];
        let block = self.tq * self.dv;
        if block == 0 {
            return out;
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(block).enumerate().for_each(|(bh, o)| head(bh, o));
        }
        #[cfg(target_arch = "wasm32")]
        out.chunks_mut(block).enumerate().for_each(|(bh, o)| head(bh, o));
        out
    }
}

/// `Σ a·b` in f64 with eight independent partial sums: still an f64 accumulation (the oracle's
/// precision), but not one serial chain of dependent additions, so it vectorises and pipelines.
fn dot64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| x as f64 * y as f64).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
