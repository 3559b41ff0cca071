//! Primitives shared by model merging ([`crate`]'s merge engine) and LoRA combinations: a
//! counter-based RNG that gives the same random mask on the CPU, in wasm and in WGSL, and
//! deterministic magnitude selection.
//!
//! ## The counter-based RNG (DARE / DELLA masks)
//! A draw is a pure function of `(seed, tensor key, flat element index)`, never of a stream's
//! position, so any backend, any dispatch order and any tensor order give identical masks:
//!
//! ```text
//! key(name)      = FNV-1a 32-bit of the tensor name's UTF-8 bytes
//! mix(x)         = x ^= x>>16; x *= 0x7feb352d; x ^= x>>15; x *= 0x846ca68b; x ^= x>>16   (u32, wrapping)
//! h              = mix(mix(mix(mix(seed_lo ^ 0x9e3779b9) ^ seed_hi ^ key) ^ idx_lo) ^ idx_hi)
//! uniform(...)   = (h >> 8) · 2⁻²⁴         ∈ [0, 1), 24 bits, exact in f32
//! keep(..., p)   = uniform < p
//! ```
//! `seed` is a u64 split in two u32 words; `idx` is the flat row-major index split the same way.
//! The mixer is Wellons' `lowbias32`; it uses only 32-bit wrapping multiplies, shifts and xors,
//! which WGSL has. `shaders/` carry the same function (checked by the conformance tests).
//!
//! ## Selection ties
//! Selecting the k largest magnitudes breaks ties by the lower flat index, so the kept set is the
//! same everywhere (PyTorch's `topk` and `argsort` leave it unspecified).

/// `torch.sign`: -1, 0 or 1 (0 for ±0); the sign TIES-style elections vote with.
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// FNV-1a (32-bit) of a tensor name: the tensor part of the RNG key.
pub fn tensor_key(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Wellons' `lowbias32` integer mixer.
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32 random bits for element `idx` of the tensor keyed `key` under `seed`.
#[inline]
pub fn hash(seed: u64, key: u32, idx: u64) -> u32 {
    let (slo, shi) = (seed as u32, (seed >> 32) as u32);
    let (ilo, ihi) = (idx as u32, (idx >> 32) as u32);
    mix32(mix32(mix32(mix32(slo ^ 0x9e37_79b9) ^ shi ^ key) ^ ilo) ^ ihi)
}

/// A uniform draw in [0, 1) with 24 bits (exact in f32).
#[inline]
pub fn uniform(seed: u64, key: u32, idx: u64) -> f32 {
    (hash(seed, key, idx) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Bernoulli(p) keep decision for one element.
#[inline]
pub fn keep(seed: u64, key: u32, idx: u64, p: f32) -> bool {
    uniform(seed, key, idx) < p
}

/// Keep mask with rate `p` for a whole tensor of `n` elements.
pub fn bernoulli_mask(seed: u64, key: u32, n: usize, p: f32) -> Vec<bool> {
    (0..n as u64).map(|i| keep(seed, key, i, p)).collect()
}

/// The indices of the `k` largest `|x|`, ties to the lower index, as a mask. NaN counts as the
/// largest magnitude (callers reject NaN input before this).
pub fn topk_abs_mask(x: &[f32], k: usize) -> Vec<bool> {
    let n = x.len();
    let mut mask = vec![false; n];
    if k == 0 {
        return mask;
    }
    if k >= n {
        mask.iter_mut().for_each(|m| *m = true);
        return mask;
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    // Descending |x|, then ascending index: a strict total order, so the selected set is unique.
    let cmp = |a: &u32, b: &u32| {
        let (fa, fb) = (x[*a as usize].abs(), x[*b as usize].abs());
        fb.total_cmp(&fa).then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, cmp);
    for &i in &idx[..k] {
        mask[i as usize] = true;
    }
    mask
}

/// The `k`-th largest magnitude (1-based k), or `None` when `k` is 0 or above the length.
pub fn kth_largest_abs(x: &[f32], k: usize) -> Option<f32> {
    if k == 0 || k > x.len() {
        return None;
    }
    let mut a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let (_, v, _) = a.select_nth_unstable_by(k - 1, |p, q| q.total_cmp(p));
    Some(*v)
}


/// The order key of `|x|`: its float bits without the sign. For non-negative floats the bit
/// pattern orders like the value (NaN above infinity), so selection can work on integers.
#[inline]
pub fn abs_key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The `k`-th element (1-based) of `x` in the order (|x| descending, index ascending), as
/// `(abs_key, index)`; `None` when `k` is 0 or above the length. Element `i` is among the top `k`
/// exactly when `abs_key(x[i]) > key || (abs_key(x[i]) == key && i <= index)`: the same set as
/// [`topk_abs_mask`]. Radix select on the key bits, 8 at a time from the top (the GPU kernel
/// `shaders/merge_select.wgsl` does the same passes), then the tied elements in index order.
pub fn topk_threshold(x: &[f32], k: usize) -> Option<(u32, u32)> {
    if k == 0 || k > x.len() {
        return None;
    }
    let (mut prefix, mut known, mut k) = (0u32, 0u32, k);
    for shift in [24u32, 16, 8, 0] {
        let mut hist = [0usize; 256];
        for v in x {
            let b = abs_key(*v);
            if b & known == prefix {
                hist[((b >> shift) & 255) as usize] += 1;
            }
        }
        let mut d = 255usize;
        while hist[d] < k {
            k -= hist[d];
            d -= 1; // cannot pass 0: the histogram holds at least k elements
        }
        prefix |= (d as u32) << shift;
        known |= 255 << shift;
    }
    let mut seen = 0;
    for (i, v) in x.iter().enumerate() {
        if abs_key(*v) == prefix {
            seen += 1;
            if seen == k {
                return Some((prefix, i as u32));
            }
        }
    }
    unreachable!("k ties were counted")
}

/// Mask of the elements whose rank in (|x| descending, index ascending) order lies in `[lo, hi)`.
pub fn rank_range_mask(x: &[f32], lo: usize, hi: usize) -> Vec<bool> {
    let hi = hi.min(x.len());
    let above = |t: Option<(u32, u32)>, i: usize, v: f32| t.is_some_and(|(key, idx)| abs_key(v) > key || (abs_key(v) == key && i as u32 <= idx));
    let (th, tl) = (topk_threshold(x, hi), topk_threshold(x, lo.min(hi)));
    x.iter().enumerate().map(|(i, &v)| above(th, i, v) && !above(tl, i, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_a_pure_function_and_fair() {
        let key = tensor_key("model.layers.0.mlp.down_proj.weight");
        assert_eq!(hash(42, key, 7), hash(42, key, 7));
        assert_ne!(hash(42, key, 7), hash(43, key, 7));
        assert_ne!(hash(42, key, 7), hash(42, key ^ 1, 7));
        assert_ne!(hash(1 << 32, key, 7), hash(0, key, 7));
        let n = 200_000usize;
        let p = 0.3f32;
        let kept = bernoulli_mask(5, key, n, p).iter().filter(|k| **k).count() as f64;
        let (mean, sd) = (n as f64 * p as f64, (n as f64 * p as f64 * (1.0 - p as f64)).sqrt());
        assert!((kept - mean).abs() < 4.0 * sd, "kept {kept}, expected {mean} ± {sd}");
        let u: f64 = (0..n as u64).map(|i| uniform(9, key, i) as f64).sum::<f64>() / n as f64;
        assert!((u - 0.5).abs() < 0.005, "mean uniform {u}");
    }

    #[test]
    fn known_values_pin_the_documented_formula() {
        // FNV-1a test vector ("a" → 0xe40c292c) and the mixer's fixed point at 0.
        assert_eq!(tensor_key("a"), 0xe40c_292c);
        assert_eq!(mix32(0), 0);
        let by_hand = mix32(mix32(mix32(mix32(1 ^ 0x9e37_79b9) ^ 0 ^ 5) ^ 3) ^ 0);
        assert_eq!(hash(1, 5, 3), by_hand);
    }

    #[test]
    fn topk_breaks_ties_by_index() {
        let x = [1.0, -3.0, 2.0, 3.0, -2.0, 0.5];
        let m = topk_abs_mask(&x, 3);
        assert_eq!(m, vec![false, true, true, true, false, false]);
        assert_eq!(topk_abs_mask(&x, 0), vec![false; 6]);
        assert_eq!(topk_abs_mask(&x, 9), vec![true; 6]);
        assert_eq!(kth_largest_abs(&x, 3), Some(2.0));
        assert_eq!(kth_largest_abs(&x, 7), None);
    }

    #[test]
    fn radix_threshold_selects_the_topk_set() {
        let mut v: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        v[10] = 3.0;
        v[20] = -3.0;
        v[30] = f32::NAN;
        for k in [1, 2, 7, 333, 999, 1000] {
            let mask = rank_range_mask(&v, 0, k);
            assert_eq!(mask, topk_abs_mask(&v, k), "k = {k}");
        }
        let band = rank_range_mask(&v, 5, 17);
        let want: Vec<bool> = topk_abs_mask(&v, 17).iter().zip(topk_abs_mask(&v, 5)).map(|(a, b)| *a && !b).collect();
        assert_eq!(band, want);
        assert_eq!(band.iter().filter(|b| **b).count(), 12);
        assert_eq!(topk_threshold(&v, 0), None);
    }
}
