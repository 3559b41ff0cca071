//! Scaled dot-product attention with causal and padding masks and grouped-query heads.

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
    let [b, hq, tq, d] = [qs.dims()[0], qs.dims()[1], qs.dims()[2], qs.dims()[3]];
    let [hkv, tk] = [ks.dims()[1], ks.dims()[2]];
    let dv = vs.dims()[3];
    let group = hq / hkv;
    let mut out = vec![0.0f32; b * hq * tq * dv];
    let mut scores = vec![0.0f64; tk];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for i in 0..tq {
                let qrow = &q[((bi * hq + h) * tq + i) * d..][..d];
                let limit = if causal { (tk + i + 1).saturating_sub(tq) } else { tk };
                let mut max = f64::NEG_INFINITY;
                for j in 0..tk {
                    let visible = j < limit && mask.is_none_or(|m| m[bi * tk + j] != 0);
                    scores[j] = if visible {
                        let krow = &k[((bi * hkv + kh) * tk + j) * d..][..d];
                        let dot: f64 = qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum();
                        dot * scale as f64
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = max.max(scores[j]);
                }
                if max == f64::NEG_INFINITY {
                    continue; // no visible key: the row stays 0
                }
                let sum: f64 = scores.iter().map(|&s| (s - max).exp()).sum();
                let o = &mut out[((bi * hq + h) * tq + i) * dv..][..dv];
                for (c, oc) in o.iter_mut().enumerate() {
                    let mut acc = 0.0f64;
                    for j in 0..tk {
                        if scores[j] != f64::NEG_INFINITY {
                            acc += (scores[j] - max).exp() * v[((bi * hkv + kh) * tk + j) * dv + c] as f64;
                        }
                    }
                    *oc = (acc / sum) as f32;
                }
            }
        }
    }
    out
}
