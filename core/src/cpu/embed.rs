//! Embedding gather and rotary position embedding.

use crate::shape::Shape;
use crate::tensor::HostData;

/// Rows of `table [V, C]` picked by `ids`, widened to f32; ids `>= V` give zero rows.
pub(super) fn embedding(table: &Shape, data: &HostData, ids: &[u32]) -> Vec<f32> {
    let (v, c) = (table.dims()[0], table.dims()[1]);
    let mut out = vec![0.0f32; ids.len() * c];
    for (o, &id) in out.chunks_mut(c.max(1)).zip(ids) {
        let id = id as usize;
        if id >= v {
            continue;
        }
        let r = id * c..(id + 1) * c;
        match data {
            HostData::F32(t) => o.copy_from_slice(&t[r]),
            HostData::F16(t) => o.iter_mut().zip(&t[r]).for_each(|(o, x)| *o = x.to_f32()),
            HostData::BF16(t) => o.iter_mut().zip(&t[r]).for_each(|(o, x)| *o = x.to_f32()),
            _ => unreachable!("Op::infer checked the table dtype"),
        }
    }
    out
}

/// HF rotate-half RoPE on `x [.., T, D]`. Angles in f64 so long positions stay exact.
pub(super) fn rope(x: &[f32], shape: &Shape, pos: &[u32], theta: f32) -> Vec<f32> {
    let (t, d) = (shape.from_end(1), shape.from_end(0));
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    if d == 0 || t == 0 {
        return out;
    }
    for (r, (row, o)) in x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
        let p = pos[r % t] as f64;
        for i in 0..half {
            let inv_freq = (theta as f64).powf(-2.0 * i as f64 / d as f64);
            let (s, c) = (p * inv_freq).sin_cos();
            let (a, b) = (row[i] as f64, row[i + half] as f64);
            o[i] = (a * c - b * s) as f32;
            o[i + half] = (b * c + a * s) as f32;
        }
    }
    out
}
