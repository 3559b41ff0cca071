//! Which CPU GEMM the runtime should use: `gemm` (what `cpu::matmul` calls, on rayon) against
//! `matrixmultiply` (its `threading` feature, 2 threads unless `MATMUL_NUM_THREADS` says otherwise).
//! A third column, "gemm split", runs `gemm` single-threaded on row panels, one per rayon thread:
//! a candidate for `cpu::matmul` if it keeps beating gemm's own rayon split.
//!
//! Run: `cargo bench -p taskloom --bench cpu_gemm [-- SIZES [RUNS]]`, e.g. `-- 256,512,1024,2048 7`.
//! Same method as the OpenBLAS peer (`/work/shared/peers/sgemm.py`) so the figures compare: square
//! f32 `C = A·B`, row-major, 3 warm-up calls, then the median of RUNS timed runs, each run repeating
//! the call enough times for about 2 GFLOP; GFLOP/s = 2·N³ / time per call.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let sizes: Vec<usize> = args
        .first()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 512, 1024, 2048]);
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(7).max(5);
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // matrixmultiply reads this once, on first use; its default is the physical core count,
        // capped at 4. Pin it to what the target edge machines have and what the peer uses.
        std::env::set_var("MATMUL_NUM_THREADS", "2");
    }
    println!(
        "f32 GEMM, median of {runs} runs, GFLOP/s (gemm on {} rayon threads, matrixmultiply on {})",
        rayon::current_num_threads(),
        std::env::var("MATMUL_NUM_THREADS").unwrap_or_default()
    );
    println!("{:>6} {:>10} {:>12} {:>16} {:>12}", "N", "gemm", "gemm split", "matrixmultiply", "gemm/mm");
    for n in sizes {
        let a = fill(n * n, 1);
        let b = fill(n * n, 2);
        let mut c = vec![0.0f32; n * n];
        let g = gflops(n, runs, || taskloom::cpu::matmul::sgemm(n, n, n, &a, &b, false, None, &mut c));
        let check = c.clone();
        let split = gflops(n, runs, || gemm_split(n, &a, &b, &mut c));
        let mm = gflops(n, runs, || mm_sgemm(n, &a, &b, &mut c));
        let diff = check.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        if diff > 1e-2 {
            eprintln!("N={n}: the libraries disagree by {diff}");
        }
        println!("{n:>6} {g:>10.1} {split:>12.1} {mm:>16.1} {:>12.2}", g / mm);
    }
}

fn mm_sgemm(n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let s = n as isize;
    // SAFETY: a, b and c each hold n*n elements; the strides describe row-major n x n matrices.
    unsafe {
        matrixmultiply::sgemm(n, n, n, 1.0, a.as_ptr(), s, 1, b.as_ptr(), s, 1, 0.0, c.as_mut_ptr(), s, 1);
    }
}

/// Rows split into one panel per rayon thread, each a single-threaded `gemm` call: every thread
/// packs its own copy of B, but no fork-join happens inside the k loop.
fn gemm_split(n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    use rayon::prelude::*;
    let rows = n.div_ceil(rayon::current_num_threads()).max(1);
    c.par_chunks_mut(rows * n).zip(a.par_chunks(rows * n)).for_each(|(c, a)| {
        let m = c.len() / n;
        let s = n as isize;
        // SAFETY: c and a hold m rows of n elements, b holds n x n; strides are row-major.
        unsafe {
            gemm::gemm(m, n, n, c.as_mut_ptr(), 1, s, false, a.as_ptr(), 1, s, b.as_ptr(), 1, s, 1.0, 1.0, false, false, false, gemm::Parallelism::None)
        }
    });
}

fn gflops(n: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let flops = 2.0 * (n as f64).powi(3);
    let reps = ((2e9 / flops) as usize).max(1);
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..reps {
                f();
            }
            t0.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    flops / times[runs / 2] / 1e9
}

/// Deterministic values in [-1, 1).
fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
