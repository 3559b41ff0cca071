//! MoE bucketing and the bucketed (grouped) expert matmul on the CPU.
//!
//! `ExpertMatmul` multiplies every pick by its expert on its own: a GEMV per pick that re-reads
//! the expert's whole `[N, Cin]` matrix each time. Here the picks are first grouped by expert
//! (`moe_bucket`: counts, exclusive prefix sum, stable scatter), then each expert's rows are
//! gathered into one `[m, Cin]` block and multiplied with one gemm call (a GEMV per row below
//! `GEMM_MIN_ROWS`), and the result rows are scattered back to their picks. Experts run in parallel (rayon), each gemm single-threaded, so an
//! expert's weights are read once per call; f16/bf16 weights are widened one expert at a time.

use super::matmul::gemm_block;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::HostData;
use gemm::Parallelism;
use std::borrow::Cow;

/// Rows of one expert from which one gemm call beats a GEMV per row: gemm packs the expert's
/// whole weight matrix first, which a handful of rows does not repay (bench_moe --sweep on the
/// 2-core machine: 4 rows per expert 30% slower as one gemm, 8 rows even).
const GEMM_MIN_ROWS: usize = 8;

/// `idx [R*K]` (expert per pick) → `(offsets [E+2], order [R*K])`: bucket `b` (expert `b`, or
/// `E` for ids `>= E`) holds `order[offsets[b]..offsets[b+1]]`, pick ids ascending.
pub(super) fn moe_bucket(idx: &[u32], e: usize) -> (Vec<u32>, Vec<u32>) {
    let bucket = |i: u32| (i as usize).min(e);
    let mut offsets = vec![0u32; e + 2];
    for &i in idx {
        offsets[bucket(i) + 1] += 1;
    }
    for b in 0..=e {
        offsets[b + 1] += offsets[b];
    }
    let mut cursor = offsets[..=e].to_vec();
    let mut order = vec![0u32; idx.len()];
    for (p, &i) in idx.iter().enumerate() {
        let c = &mut cursor[bucket(i)];
        order[*c as usize] = p as u32;
        *c += 1;
    }
    (offsets, order)
}

/// Checks that `offsets`/`order` describe buckets of `picks` picks, so indexing cannot go wrong.
fn check_buckets(offsets: &[u32], order: &[u32], picks: usize) -> Result<()> {
    let bad = |reason: String| Err(Error::InvalidParam { op: "GroupedMatmul", reason });
    let e = offsets.len() - 2;
    if offsets[0] != 0 || offsets[e + 1] as usize != picks || offsets.windows(2).any(|w| w[0] > w[1]) {
        return bad(format!("offsets must rise from 0 to {picks} (the output of MoeBucket), got {offsets:?}"));
    }
    if let Some(p) = order.iter().find(|&&p| p as usize >= picks) {
        return bad(format!("order holds pick {p}, past the {picks} picks"));
    }
    Ok(())
}

/// Expert `ex`'s `[N, Cin]` block of `w [E, N, Cin]` as f32 (borrowed when already f32).
fn expert_weights(w: &HostData, ex: usize, len: usize) -> Cow<'_, [f32]> {
    let r = ex * len..(ex + 1) * len;
    match w {
        HostData::F32(v) => Cow::Borrowed(&v[r]),
        HostData::F16(v) => Cow::Owned(v[r].iter().map(|h| h.to_f32()).collect()),
        HostData::BF16(v) => Cow::Owned(v[r].iter().map(|h| h.to_f32()).collect()),
        _ => unreachable!("Op::infer checked the weights are float"),
    }
}

/// `out [R, K, N]`: every pick's row of `x` (`[R, Cin]` or `[R, K, Cin]`) times its expert's
/// `w [E, N, Cin]` (plus `bias [E, N]`), one gemm per non-empty expert; invalid picks give 0.
#[allow(clippy::too_many_arguments)]
pub(super) fn grouped_matmul(
    xs: &Shape,
    x: &[f32],
    ws: &Shape,
    w: &HostData,
    offsets: &[u32],
    order: &[u32],
    k: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let (e, n, cin) = (ws.dims()[0], ws.dims()[1], ws.dims()[2]);
    let picks = order.len();
    check_buckets(offsets, order, picks)?;
    let per_pick = xs.rank() == 3;
    let mut out = vec![0.0f32; picks * n];
    if n == 0 {
        return Ok(out);
    }
    // One expert: gather its rows, one gemm (accumulating onto the bias rows when there is a bias).
    let run = |ex: usize| -> Vec<f32> {
        let rows = &order[offsets[ex] as usize..offsets[ex + 1] as usize];
        let m = rows.len();
        let mut a = Vec::with_capacity(m * cin);
        for &p in rows {
            let xr = if per_pick { p as usize } else { p as usize / k };
            a.extend_from_slice(&x[xr * cin..(xr + 1) * cin]);
        }
        let mut o = vec![0.0f32; m * n];
        if let Some(b) = bias {
            for row in o.chunks_mut(n) {
                row.copy_from_slice(&b[ex * n..(ex + 1) * n]);
            }
        }
        if cin > 0 {
            let wt = expert_weights(w, ex, n * cin);
            if m < GEMM_MIN_ROWS {
                // A few rows: gemm would pack the whole [N, Cin] weight for them; row GEMVs stream it.
                for (ar, or) in a.chunks(cin).zip(o.chunks_mut(n)) {
                    gemm_block(1, n, cin, ar, &wt, true, bias.is_some(), or, Parallelism::None);
                }
            } else {
                gemm_block(m, n, cin, &a, &wt, true, bias.is_some(), &mut o, Parallelism::None);
            }
        }
        o
    };
    let busy: Vec<usize> = (0..e).filter(|&ex| offsets[ex + 1] > offsets[ex]).collect();
    #[cfg(not(target_arch = "wasm32"))]
    let results: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        busy.par_iter().map(|&ex| run(ex)).collect()
    };
    #[cfg(target_arch = "wasm32")]
    let results: Vec<Vec<f32>> = busy.iter().map(|&ex| run(ex)).collect();
    for (&ex, o) in busy.iter().zip(&results) {
        let rows = &order[offsets[ex] as usize..offsets[ex + 1] as usize];
        for (&p, src) in rows.iter().zip(o.chunks(n)) {
            out[p as usize * n..(p as usize + 1) * n].copy_from_slice(src);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_prefix_sums_with_a_trailing_invalid_bucket() {
        // 3 experts; picks: 2 0 5 2 0 9 1 (5 and 9 are invalid).
        let (off, ord) = moe_bucket(&[2, 0, 5, 2, 0, 9, 1], 3);
        assert_eq!(off, vec![0, 2, 3, 5, 7]);
        assert_eq!(ord, vec![1, 4, 6, 0, 3, 2, 5]);
        let (off, ord) = moe_bucket(&[], 2);
        assert_eq!((off, ord), (vec![0, 0, 0, 0], vec![]));
    }

    #[test]
    fn malformed_buckets_are_errors() {
        assert!(check_buckets(&[0, 2, 1, 3], &[0, 1, 2], 3).is_err());
        assert!(check_buckets(&[0, 1, 2, 2], &[0, 1, 2], 3).is_err());
        assert!(check_buckets(&[0, 1, 2, 3], &[0, 1, 3], 3).is_err());
        assert!(check_buckets(&[0, 1, 2, 3], &[2, 1, 0], 3).is_ok());
    }
}
