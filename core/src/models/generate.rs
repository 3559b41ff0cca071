//! Token sampling for generation: repetition penalty → temperature → top-k → top-p → draw, in the
//! order transformers applies its logits processors. Seeded, so a (seed, prompt) pair always gives
//! the same tokens on every target.

/// How to pick each next token. `temperature == 0` is greedy (argmax, lowest id on ties).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 1.0 = off (HF semantics: positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Generation stops after producing any of these (the model's EOS ids are added by the caller).
    pub stop: Vec<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { max_tokens: 64, temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0, stop: Vec::new() }
    }
}

/// SplitMix64: tiny, portable, and identical natively and in wasm.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from one row of logits `[V]`, given the tokens so far.
pub fn sample(logits: &[f32], previous: &[u32], s: &Sampling, rng: &mut Rng) -> u32 {
    let mut l: Vec<f32> = logits.to_vec();
    if s.repetition_penalty != 1.0 {
        let mut seen = previous.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(v) = l.get_mut(t as usize) {
                *v = if *v < 0.0 { *v * s.repetition_penalty } else { *v / s.repetition_penalty };
            }
        }
    }
    if s.temperature <= 0.0 {
        return argmax(&l);
    }
    l.iter_mut().for_each(|v| *v /= s.temperature);
    // Candidates sorted by logit, descending (stable: lower id first on ties).
    let mut idx: Vec<u32> = (0..l.len() as u32).collect();
    idx.sort_by(|&a, &b| l[b as usize].partial_cmp(&l[a as usize]).unwrap_or(std::cmp::Ordering::Equal));
    if s.top_k > 0 && s.top_k < idx.len() {
        idx.truncate(s.top_k);
    }
    let m = l[idx[0] as usize] as f64;
    let mut p: Vec<f64> = idx.iter().map(|&i| ((l[i as usize] as f64) - m).exp()).collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    if s.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut acc = 0.0;
        let mut keep = p.len();
        for (i, &x) in p.iter().enumerate() {
            acc += x;
            if acc >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        idx.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
    }
    let mut r = rng.next_f64();
    for (i, &x) in p.iter().enumerate() {
        if r < x {
            return idx[i];
        }
        r -= x;
    }
    *idx.last().unwrap_or(&0)
}

/// Index of the largest value, the lowest index on ties (NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let s = Sampling::default();
        let mut r = Rng::new(1);
        assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &[], &s, &mut r), 1);
        let s = Sampling { repetition_penalty: 2.0, ..Sampling::default() };
        // 3.0 / 2 = 1.5 < 2.0
        assert_eq!(sample(&[2.0, 3.0], &[1], &s, &mut r), 0);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let s = Sampling { temperature: 0.8, top_k: 5, seed: 42, ..Sampling::default() };
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..50).map(|_| sample(&logits, &[], &s, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        let allowed = [6u32, 13, 20, 27, 34]; // the five highest logits, lowest ids first
        assert!(draw(42).iter().all(|t| allowed.contains(t)), "{:?}", draw(42));
    }

    #[test]
    fn top_p_keeps_the_head() {
        let s = Sampling { temperature: 1.0, top_p: 0.5, ..Sampling::default() };
        let mut r = Rng::new(3);
        for _ in 0..20 {
            assert_eq!(sample(&[10.0, 0.0, 0.0], &[], &s, &mut r), 0);
        }
    }
}
