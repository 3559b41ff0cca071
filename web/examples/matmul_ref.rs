//! The native reference for the browser test: one matmul on the CPU oracle, printed as JSON.
//!
//! `cargo run -p taskloom-web --example matmul_ref -- M K N [t]` multiplies a [M, K] by b [K, N]
//! (or, with `t`, by b stored as [N, K] and transposed). Inputs come from [`fill`]; the test page
//! computes the same formula in JS (`tests/browser/cases.js`), so both sides see identical bits.

use taskloom::{Op, TensorData};

/// Element (i, j) of input `seed`: a value in [-0.5, 0.5) whose f64 -> f32 rounding is the same in
/// Rust and JS (one correctly rounded division, one subtraction, one `Math.fround`).
fn fill(seed: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            v.push((((i * 131 + j * 71 + seed * 37) % 257) as f64 / 257.0 - 0.5) as f32);
        }
    }
    v
}

fn main() {
    if let Err(e) = run() {
        eprintln!("matmul_ref: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: matmul_ref M K N [t]";
    let num = |i: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).ok_or(usage)?.parse::<usize>().map_err(|e| format!("{usage}: {e}"))?)
    };
    let (m, k, n) = (num(0)?, num(1)?, num(2)?);
    let trans_b = args.get(3).map(String::as_str) == Some("t");
    let a = TensorData::f32(&[m, k], fill(1, m, k))?;
    let b_dims = if trans_b { [n, k] } else { [k, n] };
    let b = TensorData::f32(&b_dims, fill(2, b_dims[0], b_dims[1]))?;
    let out = taskloom::cpu::run(&Op::Matmul { trans_b }, &[&a, &b])?;
    let c = out.first().ok_or("matmul returned no output")?;
    // `{:?}` prints the shortest decimal that round-trips to the same f32: valid JSON numbers.
    let data: Vec<String> = c.as_f32()?.iter().map(|x| format!("{x:?}")).collect();
    println!(
        "{{\"m\":{m},\"k\":{k},\"n\":{n},\"transB\":{trans_b},\"dims\":{:?},\"data\":[{}]}}",
        c.dims(),
        data.join(",")
    );
    Ok(())
}
