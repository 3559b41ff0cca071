//! Truncated SVD for the `*svd` LoRA combinations, in f64 with `faer`.
//!
//! Both functions return the PEFT factors of the best rank-`k` approximation of a matrix `M [m, n]`:
//! `B = U_k·diag(S_k)` `[m, k]` and `A = V_kᵀ` `[k, n]`, row-major. Singular vectors carry a sign
//! ambiguity, so only `B·A` is comparable across implementations.
//!
//! [`truncated_product`] never forms `M = P·Q` (`P [m, R]`, `Q [R, n]`, `R < min(m, n)`): with thin
//! QRs `P = Q_p·R_p` and `Qᵀ = Q_q·R_q`, `M = Q_p·(R_p·R_qᵀ)·Q_qᵀ`, so the SVD of the small `R × R`
//! core gives `M`'s. It is exact (no dense `m × n` SVD, whose cost is cubic) and is what the plain
//! `svd` combination uses: its sum of deltas has rank at most `Σ rᵢ`.

use crate::error::{Error, Result};
use faer::{Mat, MatRef};

fn no_convergence(what: &str) -> Error {
    Error::InvalidParam { op: "lora combine", reason: format!("the SVD of {what} did not converge") }
}

/// `(B [m, k], A [k, n])` from `U [m, ≥k]`, `S`, `V [n, ≥k]`; columns past `S.len()` are zero.
fn factors(u: MatRef<'_, f64>, s: &[f64], v: MatRef<'_, f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let (m, n) = (u.nrows(), v.nrows());
    let kk = k.min(s.len()).min(u.ncols()).min(v.ncols());
    let mut b = vec![0.0; m * k];
    let mut a = vec![0.0; k * n];
    for j in 0..kk {
        for i in 0..m {
            b[i * k + j] = u[(i, j)] * s[j];
        }
        for i in 0..n {
            a[j * n + i] = v[(i, j)];
        }
    }
    (b, a)
}

/// Rank-`k` factors of the row-major dense matrix `x [m, n]` (`k ≤ min(m, n)`).
pub(crate) fn truncated_dense(m: usize, n: usize, x: &[f64], k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    debug_assert_eq!(x.len(), m * n);
    let mat = Mat::<f64>::from_fn(m, n, |i, j| x[i * n + j]);
    let svd = mat.thin_svd().map_err(|_| no_convergence(&format!("a {m}×{n} delta")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    Ok(factors(svd.U(), &s, svd.V(), k))
}

/// Rank-`k` factors of `P·Q` (`P [m, r]`, `Q [r, n]`, row-major, `r < min(m, n)`), without
/// forming the product. `k` may exceed `r`: the extra singular values are 0 and their factor
/// rows/columns are left zero.
pub(crate) fn truncated_product(m: usize, r: usize, n: usize, p: &[f64], q: &[f64], k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    debug_assert!(r < m.min(n) && p.len() == m * r && q.len() == r * n);
    let pm = Mat::<f64>::from_fn(m, r, |i, j| p[i * r + j]);
    let qt = Mat::<f64>::from_fn(n, r, |i, j| q[j * n + i]);
    let (qr_p, qr_q) = (pm.qr(), qt.qr());
    let (q_p, q_q) = (qr_p.compute_thin_Q(), qr_q.compute_thin_Q());
    let core = qr_p.thin_R() * qr_q.thin_R().transpose();
    let svd = core.svd().map_err(|_| no_convergence(&format!("a rank-{r} core")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let u = &q_p * svd.U();
    let v = &q_q * svd.V();
    Ok(factors(u.as_ref(), &s, v.as_ref(), k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| crate::sparsify::uniform(seed, 7, i) as f64 - 0.5).collect()
    }

    fn matmul(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for l in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + l] * b[l * n + j];
                }
            }
        }
        c
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn full_rank_factors_reproduce_the_matrix() {
        for &(m, n) in &[(7, 5), (5, 7), (6, 6)] {
            let x = rand(m * n, m as u64);
            let k = m.min(n);
            let (b, a) = truncated_dense(m, n, &x, k).unwrap();
            assert!(max_diff(&matmul(m, k, n, &b, &a), &x) < 1e-12);
            // A's rows are orthonormal.
            for i in 0..k {
                let d: f64 = (0..n).map(|j| a[i * n + j] * a[i * n + j]).sum();
                assert!((d - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn product_path_equals_the_dense_path() {
        let (m, r, n) = (9, 3, 11);
        let (p, q) = (rand(m * r, 1), rand(r * n, 2));
        let dense = matmul(m, r, n, &p, &q);
        for k in [1, 2, 3, 5] {
            let (b1, a1) = truncated_product(m, r, n, &p, &q, k).unwrap();
            let (b2, a2) = truncated_dense(m, n, &dense, k).unwrap();
            let (x1, x2) = (matmul(m, k, n, &b1, &a1), matmul(m, k, n, &b2, &a2));
            assert!(max_diff(&x1, &x2) < 1e-12, "k = {k}");
            if k >= r {
                assert!(max_diff(&x1, &dense) < 1e-12);
            }
        }
    }
}
