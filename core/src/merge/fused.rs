//! The task-arithmetic family on the host in one or two streaming passes over the inputs, straight
//! from the (memory-mapped) input tensors into the output buffer: no copies of the inputs, no
//! `[R, N]` delta / mask intermediates. Results equal the op-by-op path ([`super::gta`] on
//! `Device::Cpu`, i.e. the CPU ops `MagnitudeMask` / `RandomMask` / `MaskedRescale` / `TaskMerge`)
//! bit for bit: every element goes through the same f32 operations in the same order (checked by
//! the tests below). One caveat: DARE's L1 norms are f64 sums per chunk, then across chunks in
//! order (the op sums a row in one f64 sum), so the f32 rescale factor may differ in its last bit
//! in rare cases — still deterministic, whatever the thread count.
//!
//! Passes, for `R` task vectors `d_r = θ_r − θ_0` of `N` elements:
//! 1. **stats** (only when needed): per magnitude-selected row, a histogram of the top 16 bits of
//!    `|d|`'s float bits (a radix-select's first level), which gives the bin holding each rank
//!    bound; per DARE row with the L1 rescale, the L1 norms before and after the draw (f64, summed
//!    per chunk, chunks in order, so the result does not depend on the thread count).
//! 2. **merge**: each element's kept, rescaled deltas, sign election and disjoint mean, written to
//!    the output. Elements whose magnitude falls in a boundary bin cannot be decided yet: they are
//!    collected (key, index), the exact k-th element (|x| descending, index ascending — the order
//!    of [`crate::sparsify::rank_range_mask`]) is selected among them, and those few elements are
//!    recomputed by the same code.
//!
//! Not covered (the caller falls back to the op path): DELLA, imported masks, TALL / Consensus,
//! magnitude selection with the L1 rescale.

use super::gta::{rank_band, Args};
use super::method::Sparsify;
use super::recipe::Semantics;
use crate::sparsify::{mix32, tensor_key};

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// Elements per parallel chunk, and per block inside a chunk (block buffers stay in L1).
const CHUNK: usize = 1 << 16;
const BLOCK: usize = 256;
const BINS: usize = 1 << 15;

/// A rank bound of a magnitude selection: is element (key, index) among the top `b`?
#[derive(Clone, Copy, Debug)]
enum Th {
    Always,
    Never,
    /// Not resolved yet: above when its bin (key >> 16) is above this one, undecided when equal.
    /// `need` = rank of the bound inside the bin (1-based).
    Bin(u32, usize),
    /// Resolved: (key, index) of the b-th element.
    Exact(u32, u32),
}

impl Th {
    /// 0 = below, 1 = above, 2 = undecided.
    #[inline(always)]
    fn above(self, key: u32, j: u32) -> u8 {
        match self {
            Th::Always => 1,
            Th::Never => 0,
            Th::Bin(b, _) => {
                let k = key >> 16;
                if k > b {
                    1
                } else if k < b {
                    0
                } else {
                    2
                }
            }
            Th::Exact(k, i) => (key > k || (key == k && j <= i)) as u8,
        }
    }

    /// For an unresolved bound, the bin as an i32: above when a key's bin is greater, undecided
    /// when equal (-1: always above; 0x8000, above every bin: never).
    #[inline(always)]
    fn bin(self) -> i32 {
        match self {
            Th::Always => -1,
            Th::Never => 0x8000,
            Th::Bin(b, _) => b as i32,
            Th::Exact(..) => unreachable!("resolved bounds are only used in the fix-up"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Sel {
    /// Every entry (no sparsification, or density ≥ 1).
    All,
    /// Rank band `[lo, hi)` by magnitude: kept when above `hi` and not above `lo`.
    Band { hi: Th, lo: Th },
    /// DARE: kept when `uniform(seed, key, r·N + j) < p`.
    Random { p: f32 },
}

/// Can [`run`] do this merge?
pub(crate) fn supports(a: &Args<'_>) -> bool {
    let peft = a.semantics == Semantics::Peft;
    let l1 = a.rescale && !peft;
    let no_masks = a.rows.iter().all(|r| r.mask.is_none());
    let sparsify_ok = match a.gta.sparsify {
        None => true,
        Some(Sparsify::Random) => true,
        Some(Sparsify::Magnitude | Sparsify::Outliers) => !l1,
        Some(Sparsify::Della) => false,
    };
    no_masks && sparsify_ok && !a.tall && a.consensus_k == 0 && !a.rows.is_empty()
}

struct Ctx<'a> {
    base: &'a [f32],
    thetas: &'a [&'a [f32]],
    n: usize,
    sel: Vec<Sel>,
    /// Per row: the masked-rescale factor (only applied when sparsifying).
    factor: Vec<f32>,
    sparsify: bool,
    seed: u64,
    key: u32,
    w: Vec<f32>,
    consensus: bool,
    weighted_sign: bool,
    count_divisor: bool,
    normalize: bool,
    lambda: f32,
}

/// Per-chunk results of the merge pass: undecided elements, and per (row, bound) the candidates.
#[derive(Default)]
struct Pending {
    deferred: Vec<u32>,
    /// Indexed `2·row + (0 = hi, 1 = lo)`.
    cands: Vec<Vec<(u32, u32)>>,
}

fn par_chunks_map<T: Send>(out: &mut [f32], f: impl Fn(usize, &mut [f32]) -> T + Sync + Send) -> Vec<T> {
    #[cfg(not(target_arch = "wasm32"))]
    return out.par_chunks_mut(CHUNK).enumerate().map(|(c, o)| f(c, o)).collect();
    #[cfg(target_arch = "wasm32")]
    return out.chunks_mut(CHUNK).enumerate().map(|(c, o)| f(c, o)).collect();
}

impl Ctx<'_> {
    /// The (seed, key) part of [`crate::sparsify::hash`], hoisted.
    #[inline(always)]
    fn h0(&self) -> u32 {
        let (slo, shi) = (self.seed as u32, (self.seed >> 32) as u32);
        mix32(mix32(slo ^ 0x9e37_79b9) ^ shi ^ self.key)
    }

    /// Computes `out[j0 .. j0 + len]`. With `pending`, undecided elements are recorded there (and
    /// their output is left for the fix-up); without, every bound must be resolved.
    #[inline(always)]
    fn block(&self, j0: usize, out: &mut [f32], d: &mut [f32], pending: Option<&mut Pending>) {
        let len = out.len();
        let n = self.n;
        let r_n = self.thetas.len();
        let bs = &self.base[j0..j0 + len];
        let mut pending = pending;
        for r in 0..r_n {
            let th = &self.thetas[r][j0..j0 + len];
            let dr = &mut d[r * BLOCK..r * BLOCK + len];
            for ((x, &t), &b) in dr.iter_mut().zip(th).zip(bs) {
                *x = t - b;
            }
            if !self.sparsify {
                continue;
            }
            let f = self.factor[r];
            match self.sel[r] {
                Sel::All => {
                    for x in dr.iter_mut() {
                        *x *= f;
                    }
                }
                Sel::Random { p } => {
                    let idx = (r * n + j0) as u64;
                    draws(self.h0(), idx, p, dr, |x, keep| if keep { x * f } else { 0.0 });
                }
                Sel::Band { hi, lo } => match pending.as_deref_mut() {
                    Some(p) => {
                        // Bounds are bins here: decided when the key's bin differs (i32 lanes).
                        let (hb, lb) = (hi.bin(), lo.bin());
                        let mut undecided = false;
                        for x in dr.iter_mut() {
                            let kb = ((x.to_bits() & 0x7fff_ffff) >> 16) as i32;
                            let (ha, hu) = (kb > hb, kb == hb);
                            let (la, lu) = (kb > lb, kb == lb);
                            undecided |= hu | lu;
                            *x = if ha & !la & !lu { *x * f } else { 0.0 };
                        }
                        if undecided {
                            for (i, x) in th.iter().zip(bs).map(|(t, b)| t - b).enumerate() {
                                let key = x.to_bits() & 0x7fff_ffff;
                                let j = (j0 + i) as u32;
                                let (hu, lu) = (hi.above(key, j) == 2, lo.above(key, j) == 2);
                                if hu || lu {
                                    p.deferred.push(j);
                                }
                                if hu {
                                    p.cands[2 * r].push((key, j));
                                }
                                if lu {
                                    p.cands[2 * r + 1].push((key, j));
                                }
                            }
                        }
                    }
                    None => {
                        for (i, x) in dr.iter_mut().enumerate() {
                            let key = x.to_bits() & 0x7fff_ffff;
                            let j = (j0 + i) as u32;
                            let (a, b) = (hi.above(key, j), lo.above(key, j));
                            debug_assert!(a != 2 && b != 2, "bounds are resolved in the fix-up");
                            *x = if a == 1 && b == 0 { *x * f } else { 0.0 };
                        }
                    }
                },
            }
        }
        // TaskMerge, element by element in the order of `cpu::merge::task_merge`, vectorised over
        // the block: sum of the (weighted) votes, then the agreeing weighted deltas and divisor.
        let mut s = [0f32; BLOCK];
        let mut mixed = [0f32; BLOCK];
        let mut div = [0f32; BLOCK];
        let (s, mixed, div) = (&mut s[..len], &mut mixed[..len], &mut div[..len]);
        if self.consensus {
            for r in 0..r_n {
                let dr = &d[r * BLOCK..r * BLOCK + len];
                // x · 1 = x: the unweighted vote is the same expression.
                let ws = if self.weighted_sign { self.w[r] } else { 1.0 };
                for (si, &x) in s.iter_mut().zip(dr) {
                    *si += x * ws;
                }
            }
            for r in 0..r_n {
                let dr = &d[r * BLOCK..r * BLOCK + len];
                let w = self.w[r];
                let ws = if self.weighted_sign { w } else { 1.0 };
                let dw = if self.count_divisor { 1.0 } else { w };
                for ((m, dv), (&x, &si)) in mixed.iter_mut().zip(div.iter_mut()).zip(dr.iter().zip(s.iter())) {
                    let v = x * ws;
                    // sign(v) == elected, elected = +1 when s >= 0 else -1.
                    let agree = ((si >= 0.0) & (v > 0.0)) | ((si < 0.0) & (v < 0.0));
                    *m += if agree { x * w } else { 0.0 };
                    *dv += if agree { dw } else { 0.0 };
                }
            }
        } else {
            for r in 0..r_n {
                let dr = &d[r * BLOCK..r * BLOCK + len];
                let w = self.w[r];
                let dw = if self.count_divisor { 1.0 } else { w };
                for ((m, dv), &x) in mixed.iter_mut().zip(div.iter_mut()).zip(dr) {
                    *m += x * w;
                    *dv += dw;
                }
            }
        }
        let lambda = self.lambda;
        let consensus = self.consensus;
        if self.normalize {
            for ((o, &b), (&m, &dv)) in out.iter_mut().zip(bs).zip(mixed.iter().zip(div.iter())) {
                let dv = if !consensus {
                    if dv.abs() < 1e-8 { 1.0 } else { dv }
                } else if dv == 0.0 {
                    1.0
                } else {
                    dv
                };
                *o = b + lambda * (m / dv);
            }
        } else {
            for ((o, &b), &m) in out.iter_mut().zip(bs).zip(mixed.iter()) {
                *o = b + lambda * m;
            }
        }
    }
}

/// `x[i] = g(x[i], keep)` with `keep = uniform(seed, key, idx + i) < p` (the DARE draw), in u32
/// lanes (AVX2 when the CPU has it: the hash's 32-bit multiplies need it to vectorise).
#[inline(always)]
fn draws(h0: u32, idx: u64, p: f32, x: &mut [f32], g: impl Fn(f32, bool) -> f32 + Copy) {
    let lo = idx as u32;
    if (lo as u64) + (x.len() as u64) > (1u64 << 32) {
        // The low word wraps inside this block: element by element, as `uniform` does.
        for (i, v) in x.iter_mut().enumerate() {
            *v = g(*v, uniform_h0(h0, idx + i as u64) < p);
        }
        return;
    }
    let hi = (idx >> 32) as u32;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { draws_avx2(h0, lo, hi, p, x, g) };
        return;
    }
    draws_lanes(h0, lo, hi, p, x, g);
}

/// [`crate::sparsify::uniform`] with its (seed, key) part `h0` precomputed.
#[inline(always)]
fn uniform_h0(h0: u32, idx: u64) -> f32 {
    let h = mix32(mix32(h0 ^ idx as u32) ^ (idx >> 32) as u32);
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[inline(always)]
fn draws_lanes(h0: u32, lo: u32, hi: u32, p: f32, x: &mut [f32], g: impl Fn(f32, bool) -> f32 + Copy) {
    for (i, v) in x.iter_mut().enumerate() {
        let h = mix32(mix32(h0 ^ lo.wrapping_add(i as u32)) ^ hi);
        // h >> 8 < 2^24: the signed conversion is exact and vectorises.
        let u = ((h >> 8) as i32) as f32 * (1.0 / 16_777_216.0);
        *v = g(*v, u < p);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn draws_avx2(h0: u32, lo: u32, hi: u32, p: f32, x: &mut [f32], g: impl Fn(f32, bool) -> f32 + Copy) {
    draws_lanes(h0, lo, hi, p, x, g)
}

/// Merges `base [N]` and the non-base `thetas` (R slices of N) into `out [N]`.
pub(crate) fn run(a: &Args<'_>, base: &[f32], thetas: &[&[f32]], out: &mut [f32]) {
    let n = base.len();
    let r_n = thetas.len();
    debug_assert!(thetas.iter().all(|t| t.len() == n) && out.len() == n);
    let peft = a.semantics == Semantics::Peft;
    let l1 = a.rescale && !peft;
    let kind = a.gta.sparsify;
    let random = matches!(kind, Some(Sparsify::Random));
    let mut sel = Vec::with_capacity(r_n);
    let mut factor = Vec::with_capacity(r_n);
    for row in &a.rows {
        let s = match kind {
            None => Sel::All,
            Some(Sparsify::Random) => Sel::Random { p: if row.density >= 1.0 { 1.0 } else { row.density as f32 } },
            Some(k) => {
                let (lo, hi) = rank_band(k, n, row.density, row.gamma);
                let bound = |b: usize| if b == 0 { Th::Never } else if b >= n { Th::Always } else { Th::Bin(0, b) };
                match (bound(hi), bound(lo)) {
                    (Th::Always, Th::Never) => Sel::All,
                    (hi, lo) => Sel::Band { hi, lo },
                }
            }
        };
        sel.push(s);
        factor.push(if peft && random && a.rescale && row.density < 1.0 { (1.0 / row.density) as f32 } else { 1.0 });
    }
    let consensus = a.gta.consensus;
    let mut ctx = Ctx {
        base,
        thetas,
        n,
        sel,
        factor,
        sparsify: kind.is_some(),
        seed: a.seed,
        key: tensor_key(a.name),
        w: a.rows.iter().map(|r| r.weight as f32).collect(),
        consensus,
        weighted_sign: !peft,
        count_divisor: peft && consensus,
        normalize: if peft { consensus } else { a.normalize },
        lambda: a.lambda as f32,
    };
    if n == 0 {
        return;
    }
    stats(&mut ctx, random && l1);
    // Merge pass.
    let pend: Vec<Pending> = par_chunks_map(out, |c, o| {
        let mut p = Pending { deferred: Vec::new(), cands: vec![Vec::new(); 2 * r_n] };
        let mut d = vec![0f32; r_n * BLOCK];
        let j0 = c * CHUNK;
        for (b, ob) in o.chunks_mut(BLOCK).enumerate() {
            ctx.block(j0 + b * BLOCK, ob, &mut d, Some(&mut p));
        }
        p
    });
    if pend.iter().all(|p| p.deferred.is_empty()) {
        return;
    }
    // Resolve each undecided bound among its bin's elements, then recompute the undecided elements.
    for r in 0..r_n {
        if let Sel::Band { hi, lo } = &mut ctx.sel[r] {
            for (which, th) in [hi, lo].into_iter().enumerate() {
                if let Th::Bin(_, need) = *th {
                    let mut c: Vec<(u32, u32)> = pend.iter().flat_map(|p| p.cands[2 * r + which].iter().copied()).collect();
                    // (key descending, index ascending): the need-th.
                    let (_, e, _) = c.select_nth_unstable_by(need - 1, |x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
                    *th = Th::Exact(e.0, e.1);
                }
            }
        }
    }
    let mut d = vec![0f32; r_n * BLOCK];
    let mut one = [0f32; 1];
    for p in &pend {
        for &j in &p.deferred {
            ctx.block(j as usize, &mut one, &mut d, None);
            out[j as usize] = one[0];
        }
    }
}

/// One thread's histograms, and per chunk the L1 sums (before, after) per row.
type GroupStats = (Vec<u32>, Vec<Vec<(f64, f64)>>);

/// Pass 1: boundary bins of the magnitude bounds, L1 factors of the DARE rows.
fn stats(ctx: &mut Ctx<'_>, l1: bool) {
    let (n, r_n) = (ctx.n, ctx.thetas.len());
    let hist_rows: Vec<usize> = (0..r_n).filter(|&r| matches!(ctx.sel[r], Sel::Band { .. })).collect();
    if hist_rows.is_empty() && !l1 {
        return;
    }
    let chunks = n.div_ceil(CHUNK);
    let h = hist_rows.len();
    let c = &*ctx;
    // Per chunk: (histograms of the chunk, L1 sums before / after per row). Histograms are summed
    // across chunks (integers: any order), the f64 sums in chunk order.
    let per_chunk = |ci: usize, hist: &mut [u32]| -> Vec<(f64, f64)> {
        let (j0, j1) = (ci * CHUNK, ((ci + 1) * CHUNK).min(n));
        let bs = &c.base[j0..j1];
        for (hi, &r) in hist_rows.iter().enumerate() {
            let th = &c.thetas[r][j0..j1];
            let hr = &mut hist[hi * BINS..(hi + 1) * BINS];
            for (t, b) in th.iter().zip(bs) {
                hr[(((t - b).to_bits() & 0x7fff_ffff) >> 16) as usize] += 1;
            }
        }
        let mut sums = Vec::new();
        if l1 {
            for r in 0..r_n {
                let Sel::Random { p } = c.sel[r] else { unreachable!("l1 stats are for DARE rows") };
                let th = &c.thetas[r][j0..j1];
                let (mut before, mut after) = (0f64, 0f64);
                let mut kept = [0f32; BLOCK];
                for (bi, (tb, bb)) in th.chunks(BLOCK).zip(bs.chunks(BLOCK)).enumerate() {
                    let k = &mut kept[..tb.len()];
                    draws(c.h0(), (r * n + j0 + bi * BLOCK) as u64, p, k, |_, keep| if keep { 1.0 } else { 0.0 });
                    // In element order, as the op sums them.
                    for ((t, b), &k) in tb.iter().zip(bb).zip(k.iter()) {
                        let v = (t - b).abs() as f64;
                        before += v;
                        // Branch-free (the draw is a coin flip): v·1 = v, and adding +0 changes nothing.
                        after += v * k as f64;
                    }
                }
                sums.push((before, after));
            }
        }
        sums
    };
    // One histogram per thread: contiguous groups of chunks (a fold per rayon split would
    // allocate and fault in a fresh histogram dozens of times per tensor).
    #[cfg(not(target_arch = "wasm32"))]
    let groups = rayon::current_num_threads().max(1).min(chunks);
    #[cfg(target_arch = "wasm32")]
    let groups = 1;
    let per_group = chunks.div_ceil(groups.max(1));
    let run_group = |g: usize| {
        let mut hist = vec![0u32; h * BINS];
        let sums: Vec<Vec<(f64, f64)>> = (g * per_group..((g + 1) * per_group).min(chunks)).map(|ci| per_chunk(ci, &mut hist)).collect();
        (hist, sums)
    };
    #[cfg(not(target_arch = "wasm32"))]
    let parts: Vec<GroupStats> = (0..groups).into_par_iter().map(run_group).collect();
    #[cfg(target_arch = "wasm32")]
    let parts: Vec<GroupStats> = (0..groups).map(run_group).collect();
    let mut hist = vec![0u32; h * BINS];
    let mut sums: Vec<(usize, Vec<(f64, f64)>)> = Vec::with_capacity(chunks);
    for (hg, sg) in parts {
        hist.iter_mut().zip(&hg).for_each(|(x, y)| *x += y);
        sums.extend(sg.into_iter().map(|s| (0, s)));
    }
    if l1 {
        for r in 0..r_n {
            let (mut before, mut after) = (0f64, 0f64);
            for (_, s) in &sums {
                before += s[r].0;
                after += s[r].1;
            }
            let (before, after) = (before as f32, after as f32);
            if before >= 1e-7 && after >= 1e-7 {
                ctx.factor[r] *= before / after;
            }
        }
    }
    for (hi, &r) in hist_rows.iter().enumerate() {
        let hr = &hist[hi * BINS..(hi + 1) * BINS];
        let resolve = |th: &mut Th| {
            if let Th::Bin(_, b) = *th {
                // The bin holding the b-th largest: counts from the top bin down.
                let mut above = 0usize;
                for bin in (0..BINS).rev() {
                    let k = hr[bin] as usize;
                    if above + k >= b {
                        *th = Th::Bin(bin as u32, b - above);
                        return;
                    }
                    above += k;
                }
                unreachable!("b <= n elements were counted");
            }
        };
        if let Sel::Band { hi, lo } = &mut ctx.sel[r] {
            resolve(hi);
            resolve(lo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gta::{self, Row};
    use super::super::method::Method;
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Coarse values so that ties in magnitude are frequent.
                let v = ((s >> 8) % 2001) as f32 / 1000.0 - 1.0;
                if i % 97 == 0 { 0.0 } else { v }
            })
            .collect()
    }

    /// The lane-wise DARE draws equal `uniform` exactly, also above 2^32 and across the wrap of
    /// the index's low word.
    #[test]
    fn draws_equal_the_documented_rng() {
        let (seed, key) = (0x1234_5678_9abc_def0u64, tensor_key("model.embed_tokens.weight"));
        let h0 = mix32(mix32((seed as u32) ^ 0x9e37_79b9) ^ (seed >> 32) as u32 ^ key);
        for idx in [0u64, 77, (1 << 32) - 100, (1 << 32) + 5, (3 << 32) - 1] {
            let mut x = [0f32; BLOCK];
            draws(h0, idx, 0.4, &mut x, |_, keep| keep as u8 as f32);
            for (i, v) in x.iter().enumerate() {
                let want = crate::sparsify::uniform(seed, key, idx + i as u64) < 0.4;
                assert_eq!(*v == 1.0, want, "idx {idx} + {i}");
            }
        }
    }

    /// The fused path equals the op path (`gta::run` on the CPU) bit for bit, for every supported
    /// method and semantics, on sizes crossing chunk and block edges.
    #[test]
    fn fused_equals_the_op_path_exactly() {
        let mut compared = 0;
        for n in [1usize, 7, 300, 70_001, 200_000] {
            let base = data(n, 1);
            let thetas: Vec<Vec<f32>> = (2..5).map(|s| data(n, s)).collect();
            for m in [Method::TaskArithmetic, Method::Ties, Method::DareTies, Method::DareLinear, Method::Breadcrumbs, Method::BreadcrumbsTies] {
                for sem in [Semantics::Mergekit, Semantics::Peft] {
                    for (normalize, rescale) in [(true, true), (false, false), (true, false)] {
                        let g = m.gta().unwrap();
                        let rows: Vec<Row> = [(0.7, 0.5, 0.01), (0.3, 0.2, 0.1), (1.2, 1.0, 0.0)]
                            .iter()
                            .map(|&(weight, density, gamma)| Row { weight, density, gamma, epsilon: 0.1, tall_lambda: 0.6, mask: None })
                            .collect();
                        let args = gta::Args {
                            name: "model.layers.0.mlp.up_proj.weight",
                            dims: &[n],
                            gta: g,
                            semantics: sem,
                            seed: 5,
                            normalize,
                            rescale,
                            lambda: 0.9,
                            rows,
                            tall: false,
                            consensus_k: 0,
                        };
                        if !supports(&args) {
                            continue;
                        }
                        compared += 1;
                        let flat: Vec<f32> = thetas.iter().flatten().copied().collect();
                        let want = gta::run_host(&args, base.clone(), flat).unwrap().merged;
                        let refs: Vec<&[f32]> = thetas.iter().map(|t| t.as_slice()).collect();
                        let mut got = vec![0f32; n];
                        run(&args, &base, &refs, &mut got);
                        for j in 0..n {
                            assert_eq!(got[j].to_bits(), want[j].to_bits(), "{m:?} {sem:?} n={n} norm={normalize} rescale={rescale} [{j}]: {} vs {}", got[j], want[j]);
                        }
                    }
                }
            }
        }
        assert!(compared >= 5 * 20, "only {compared} cases compared");
    }
}
