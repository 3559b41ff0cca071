//! The methods that are not task arithmetic: `linear`, `slerp`, `model_stock`, `passthrough`.
//! They are memory-bound and cheap, so they run on the host (in f32, as mergekit does, with
//! reductions in f64) whatever the device.

/// `Σ wᵢ·xᵢ`, divided by `Σ wᵢ` when `normalize` (mergekit `linear`).
pub fn linear(xs: &[&[f32]], w: &[f32], normalize: bool) -> Vec<f32> {
    let mut out = vec![0f32; xs[0].len()];
    for (x, &w) in xs.iter().zip(w) {
        out.iter_mut().zip(x.iter()).for_each(|(o, v)| *o += v * w);
    }
    if normalize {
        let d: f32 = w.iter().sum();
        out.iter_mut().for_each(|o| *o /= d);
    }
    out
}

/// Spherical interpolation of two whole tensors (flattened), falling back to linear when they are
/// (anti)collinear, as mergekit `slerp` does (dot threshold 0.9995, norms below 1e-8 taken as 1).
pub fn slerp(t: f32, a: &[f32], b: &[f32]) -> Vec<f32> {
    let norm = |v: &[f32]| {
        let n = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt() as f32;
        if n > 1e-8 { n } else { 1.0 }
    };
    let (na, nb) = (norm(a), norm(b));
    let dot = a.iter().zip(b).map(|(x, y)| ((*x / na) as f64) * ((*y / nb) as f64)).sum::<f64>().clamp(-1.0, 1.0) as f32;
    let (ca, cb) = if dot.abs() > 0.9995 {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        let s = theta.sin();
        (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
    };
    a.iter().zip(b).map(|(x, y)| ca * x + cb * y).collect()
}

/// Model Stock: `t·mean(wᵢ) + (1−t)·w₀` with `t = N·cos / (1 + (N−1)·cos)`, `cos` the mean pairwise
/// cosine of the offsets `wᵢ − w₀`, over the whole tensor or (`filter_wise`) per row of the last dim.
pub fn model_stock(w0: &[f32], ws: &[&[f32]], row: usize) -> Vec<f32> {
    let n = ws.len();
    let mut out = vec![0f32; w0.len()];
    let row = row.max(1);
    for (r, o) in out.chunks_mut(row).enumerate() {
        let span = r * row..(r + 1) * row;
        let offs: Vec<Vec<f32>> = ws.iter().map(|w| w[span.clone()].iter().zip(&w0[span.clone()]).map(|(a, b)| a - b).collect()).collect();
        let mut cos_sum = 0f64;
        let mut pairs = 0;
        for i in 0..n {
            for j in i + 1..n {
                let dot: f64 = offs[i].iter().zip(&offs[j]).map(|(a, b)| *a as f64 * *b as f64).sum();
                let na = offs[i].iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                let nb = offs[j].iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                cos_sum += (dot / (na * nb).max(1e-6)).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        let cos = (cos_sum / pairs as f64) as f32;
        let den = 1.0 + (n as f32 - 1.0) * cos;
        let t = if den.abs() < 1e-6 { 0.0 } else { n as f32 * cos / den };
        for (k, o) in o.iter_mut().enumerate() {
            let i = span.start + k;
            let mut avg = 0f32;
            for w in ws {
                avg += w[i];
            }
            avg /= n as f32;
            *o = t * avg + (1.0 - t) * w0[i];
        }
    }
    out
}
