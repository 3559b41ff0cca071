//! Add, Mul (with suffix broadcast), GELU, SiLU.

use crate::op::GeluKind;

/// `f(a[i], b[i % b.len()])`: `b`'s shape is a suffix of `a`'s, so it repeats with period `b.len()`.
pub(super) fn broadcast(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    if b.is_empty() {
        return Vec::new();
    }
    a.iter().enumerate().map(|(i, &x)| f(x, b[i % b.len()])).collect()
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

/// erf to ~1e-15 (Abramowitz–Stegun 7.1.26 is too coarse for an oracle): series for small |x|,
/// continued fraction for the complement otherwise.
pub(crate) fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc via Lentz's continued fraction.
        let tiny = 1e-300;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for i in 1..200 {
            let a = i as f64 / 2.0;
            d = ax + a * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = ax + a / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        1.0 - erfc
    };
    if x < 0.0 { -r } else { r }
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
