//! Add, Mul (with suffix broadcast), GELU, SiLU.

use crate::op::GeluKind;

/// `f(a[i], b[i % b.len()])`: `b`'s shape is a suffix of `a`'s, so it repeats with period `b.len()`.
pub(super) fn broadcast(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    if b.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(a.len());
    for row in a.chunks(b.len()) {
        out.extend(row.iter().zip(b).map(|(&x, &y)| f(x, y)));
    }
    out
}

pub(super) fn gelu(x: f32, kind: GeluKind) -> f32 {
    let x = x as f64;
    let y = match kind {
        GeluKind::Erf => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        GeluKind::Tanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    };
    y as f32
}

pub(super) fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

/// erf in f64 (libm's port of FreeBSD msun, < 1 ulp): std has no erf.
pub(crate) fn erf(x: f64) -> f64 {
    libm::erf(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (2.0, 0.995_322_265_018_952_7), (3.0, 0.999_977_909_503_001_4), (-1.0, -0.842_700_792_949_714_9)] {
            assert!((super::erf(x) - e).abs() < 1e-13, "erf({x}) = {} want {e}", super::erf(x));
        }
    }
}
