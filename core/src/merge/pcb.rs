//! PCB merging (Parameter Competition Balancing; seed-methods §1.6), a taskloom extension:
//! `merge_method: pcb`. Per tensor (as every method here; the paper flattens the whole model),
//! with `T` task vectors `τ_t = θ_t − θ_0` of `d` elements (f32 differences, then f64):
//!
//! 1. clip: `|τ_t|` clamped between its ascending order statistics at `⌊d·c⌋` and `⌊d·(1−c)−1⌋`
//!    (`c` = `pcb_clip`, default 0.0001); `τ̃_t = sign(τ_t)·clip(|τ_t|)`;
//! 2. intra-balancing: `a_t = exp(T · minmax(clip(|τ_t|))²)`;
//! 3. inter-balancing: `b_t = tanh(τ_t ⊙ Σ_s τ_s)`;
//! 4. `β_t = a_t ⊙ b_t`, clamped from below at its order statistic `⌊d·(1−r)⌋` (`r` = `pcb_ratio`,
//!    default 0.1) and min-max normalised: entries at or below the threshold become 0;
//! 5. `θ = θ_0 + λ · Σ_t w_t·τ̃_t ⊙ β_t / max(Σ_t β_t, 1e−12)` (`weight` per model, default 1;
//!    `lambda`, default 1).
//!
//! `minmax(x) = (x − min)/(max − min)`, and 0 for a constant row (the reference divides by zero).
//! Host only (sorting and transcendental functions per element; like `slerp`), in f64, rounded to
//! f32 at the end. The reference is `pcb_merge` in `tests/fixtures/make_merge_goldens.py`.

/// Ascending order statistic at `idx` (clamped into range) of `x`.
fn order_stat(x: &[f64], idx: usize) -> f64 {
    let mut v = x.to_vec();
    let i = idx.min(v.len() - 1);
    let (_, e, _) = v.select_nth_unstable_by(i, |a, b| a.total_cmp(b));
    *e
}

fn minmax(x: &mut [f64]) {
    let (lo, hi) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    let span = hi - lo;
    x.iter_mut().for_each(|v| *v = if span > 0.0 { (*v - lo) / span } else { 0.0 });
}

/// `base [d]`, `thetas` (T slices of d), per-task `weights`.
pub fn pcb(base: &[f32], thetas: &[&[f32]], weights: &[f64], ratio: f64, clip: f64, lambda: f64) -> Vec<f32> {
    let d = base.len();
    let t = thetas.len();
    if d == 0 || t == 0 {
        return base.to_vec();
    }
    let tau: Vec<Vec<f64>> = thetas.iter().map(|th| th.iter().zip(base).map(|(x, b)| (x - b) as f64).collect()).collect();
    let mut col = vec![0f64; d];
    for row in &tau {
        col.iter_mut().zip(row).for_each(|(c, v)| *c += v);
    }
    let (lo_i, hi_i) = ((d as f64 * clip) as usize, (d as f64 * (1.0 - clip) - 1.0) as usize);
    let keep_i = (d as f64 * (1.0 - ratio)) as usize;
    let mut num = vec![0f64; d];
    let mut den = vec![0f64; d];
    for (row, w) in tau.iter().zip(weights) {
        let abs: Vec<f64> = row.iter().map(|v| v.abs()).collect();
        let (lo, hi) = (order_stat(&abs, lo_i), order_stat(&abs, hi_i));
        let clipped: Vec<f64> = abs.iter().map(|v| v.max(lo).min(hi)).collect();
        let mut mm = clipped.clone();
        minmax(&mut mm);
        let mut beta: Vec<f64> = (0..d).map(|j| (t as f64 * mm[j] * mm[j]).exp() * (row[j] * col[j]).tanh()).collect();
        let th = order_stat(&beta, keep_i);
        beta.iter_mut().for_each(|b| *b = b.max(th));
        minmax(&mut beta);
        for j in 0..d {
            let sign = if row[j] > 0.0 { 1.0 } else if row[j] < 0.0 { -1.0 } else { 0.0 };
            num[j] += w * sign * clipped[j] * beta[j];
            den[j] += beta[j];
        }
    }
    (0..d).map(|j| (base[j] as f64 + lambda * (num[j] / den[j].max(1e-12))) as f32).collect()
}
