//! Top-k per row: values descending, ties broken by the lower index.

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
