//! `taskloom demo [--device auto|cpu|gpu]`: the self-check a user runs first. A 256x256 matmul on
//! the chosen device, compared with a plain f64 triple loop on the CPU (independent of the `gemm`
//! crate the CPU backend uses, so it also checks the CPU path). Exit status 1 on a mismatch.

use crate::util::{describe, open_device, parse_device, pseudo_random};
use crate::{CliError, CliResult};
use std::time::Instant;
use taskloom::{DeviceChoice, Op, TensorData};

const N: usize = 256;
/// Entries are sums of 256 products of values in [-1, 1) (typically ~5 in size); f32 accumulation
/// in any order stays within ~1e-5 of the exact value. 1e-3 catches every real kernel bug.
const TOLERANCE: f32 = 1e-3;

#[derive(clap::Args)]
pub struct Args {
    /// auto (GPU if there is one, else CPU), cpu or gpu.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
}

pub fn run(a: Args) -> CliResult {
    let dev = open_device(a.device)?;
    println!("device: {}", describe(&dev));
    let (av, bv) = (pseudo_random(N * N, 11), pseudo_random(N * N, 12));
    let (ad, bd) = (TensorData::f32(&[N, N], av.clone())?, TensorData::f32(&[N, N], bv.clone())?);
    let op = Op::Matmul { trans_b: false };

    // The first run compiles the pipeline on a GPU; the second shows the steady state.
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..2 {
        let t0 = Instant::now();
        let res = pollster::block_on(dev.run(&op, &[&ad, &bd]))?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        out = res.into_iter().next();
    }
    let got = out.ok_or_else(|| CliError::Msg("matmul returned no output".into()))?;
    let got = got.as_f32()?;

    let want = reference(&av, &bv);
    let max_err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    let nan = got.iter().any(|g| !g.is_finite());
    println!(
        "matmul {N}x{N}x{N}: max |error| vs CPU reference {max_err:.2e} (tolerance {TOLERANCE:.0e}); \
         {:.2} ms first run, {:.2} ms second (upload + run + download)",
        times[0], times[1]
    );
    if nan || max_err > TOLERANCE {
        return Err(CliError::Msg(format!(
            "self-check FAILED on {}: max error {max_err:.3e} above {TOLERANCE:.0e}{}",
            dev.kind(),
            if nan { " (non-finite output)" } else { "" }
        )));
    }
    println!("ok");
    Ok(())
}

/// `a [N, N] · b [N, N]` accumulated in f64.
fn reference(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; N * N];
    for i in 0..N {
        let mut row = [0.0f64; N];
        for k in 0..N {
            let x = a[i * N + k] as f64;
            for (r, &y) in row.iter_mut().zip(&b[k * N..(k + 1) * N]) {
                *r += x * y as f64;
            }
        }
        for (o, r) in out[i * N..(i + 1) * N].iter_mut().zip(row) {
            *o = r as f32;
        }
    }
    out
}
