//! Data movement: embedding gather, rotary position embedding, permute.

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
            HostData::Quant(q) => q.row_into(id, o),
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
    // Rows per batch entry when positions are per batch row ([B, T]), else 0.
    let rows_per_batch = if pos.len() > t { x.len() / d / shape.dims()[0] } else { 0 };
    for (r, (row, o)) in x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
        let pi = r.checked_div(rows_per_batch).map_or(r % t, |b| b * t + r % t);
        let p = pos[pi] as f64;
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

/// Strided copy: output dim `i` is input dim `perm[i]`. Shapes are padded to rank 4 with leading 1s.
pub(super) fn permute<T: Copy>(x: &[T], shape: &Shape, perm: &[usize; 4]) -> Vec<T> {
    let (od, os) = shape.permuted_layout(perm);
    let mut out = Vec::with_capacity(x.len());
    for a in 0..od[0] {
        for b in 0..od[1] {
            for c in 0..od[2] {
                let base = a * os[0] + b * os[1] + c * os[2];
                out.extend((0..od[3]).map(|d| x[base + d * os[3]]));
            }
        }
    }
    out
}

/// `outer` blocks, each `ra` elements of `a` followed by `rb` of `b`.
pub(super) fn concat<T: Copy>(a: &[T], b: &[T], outer: usize, ra: usize, rb: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for o in 0..outer {
        out.extend_from_slice(&a[o * ra..(o + 1) * ra]);
        out.extend_from_slice(&b[o * rb..(o + 1) * rb]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_swaps_middle_axes() {
        // x [1, 2, 3, 1] with values 0..6 -> [1, 3, 2, 1]
        let s = Shape::new(&[1, 2, 3, 1]).unwrap();
        let x: Vec<u32> = (0..6).collect();
        assert_eq!(permute(&x, &s, &[0, 2, 1, 3]), vec![0, 3, 1, 4, 2, 5]);
        let s2 = Shape::new(&[2, 3]).unwrap();
        assert_eq!(permute(&x, &s2, &[1, 0, 0, 0]), vec![0, 3, 1, 4, 2, 5]);
    }
}
