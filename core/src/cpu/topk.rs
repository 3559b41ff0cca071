//! Top-k per row (values descending, ties broken by the lower index) and MoE routing.

pub(super) fn topk(x: &[f32], n: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let mut vals = Vec::with_capacity(rows * k);
    let mut idx = Vec::with_capacity(rows * k);
    let mut order: Vec<u32> = Vec::with_capacity(n);
    for row in x.chunks(n.max(1)).take(rows) {
        order.clear();
        order.extend(0..n as u32);
        // Stable sort by value descending keeps equal values in index order. NaN sorts last.
        order.sort_by(|&a, &b| {
            let (va, vb) = (row[a as usize], row[b as usize]);
            vb.partial_cmp(&va).unwrap_or_else(|| va.is_nan().cmp(&vb.is_nan()))
        });
        for &i in &order[..k] {
            vals.push(row[i as usize]);
            idx.push(i);
        }
    }
    (vals, idx)
}

/// The reference MoE router (see `Op::MoeRoute`), in f64 per row.
#[allow(clippy::too_many_arguments)]
pub(super) fn moe_route(
    logits: &[f32],
    e: usize,
    bias: Option<&[f32]>,
    k: usize,
    sigmoid: bool,
    groups: usize,
    topk_group: usize,
    norm: bool,
    scale: f32,
) -> (Vec<f32>, Vec<u32>) {
    let rows = logits.len().checked_div(e).unwrap_or(0);
    let (mut weights, mut ids) = (Vec::with_capacity(rows * k), Vec::with_capacity(rows * k));
    for row in logits.chunks(e.max(1)).take(rows) {
        let scores: Vec<f64> = if sigmoid {
            row.iter().map(|&l| 1.0 / (1.0 + (-(l as f64)).exp())).collect()
        } else {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let z: f64 = row.iter().map(|&l| (l as f64 - m).exp()).sum();
            row.iter().map(|&l| (l as f64 - m).exp() / z).collect()
        };
        let mut choice: Vec<f64> = scores.iter().enumerate().map(|(i, s)| s + bias.map_or(0.0, |b| b[i] as f64)).collect();
        if groups > 1 {
            let gs = e / groups;
            let mut group_score: Vec<(f64, usize)> = choice
                .chunks(gs)
                .enumerate()
                .map(|(g, c)| {
                    let mut v = c.to_vec();
                    v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
                    (v[0] + v[1], g)
                })
                .collect();
            group_score.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
            let keep: Vec<usize> = group_score[..topk_group].iter().map(|&(_, g)| g).collect();
            for (i, c) in choice.iter_mut().enumerate() {
                if !keep.contains(&(i / gs)) {
                    *c = 0.0;
                }
            }
        }
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| choice[b].partial_cmp(&choice[a]).unwrap_or(std::cmp::Ordering::Equal));
        let picked = &order[..k];
        let sum: f64 = picked.iter().map(|&i| scores[i]).sum::<f64>() + 1e-20;
        for &i in picked {
            let w = if norm { scores[i] / sum } else { scores[i] };
            weights.push((w * scale as f64) as f32);
            ids.push(i as u32);
        }
    }
    (weights, ids)
}
