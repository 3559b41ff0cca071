//! Softmax, LayerNorm and RMSNorm over the last dimension, accumulated in f64.

pub(super) fn softmax(x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    if n == 0 {
        return out;
    }
    for (row, o) in x.chunks(n).zip(out.chunks_mut(n)) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for (oi, &v) in o.iter_mut().zip(row) {
            *oi = ((v as f64 - m).exp() / sum) as f32;
        }
    }
    out
}

/// LayerNorm (`center = true`, with `beta`) or RMSNorm (`center = false`, no beta).
pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, center: bool) -> Vec<f32> {
    let c = gamma.len();
    let mut out = vec![0.0; x.len()];
    if c == 0 {
        return out;
    }
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let mean = if center { row.iter().map(|&v| v as f64).sum::<f64>() / c as f64 } else { 0.0 };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            let b = beta.map_or(0.0, |b| b[i] as f64);
            o[i] = ((row[i] as f64 - mean) * inv * gamma[i] as f64 + b) as f32;
        }
    }
    out
}
