//! `taskloom bench matmul`: f32 GEMM throughput per size per device.
//!
//! Method (the same on every device): inputs are uploaded once. One timed run records R matmuls
//! `[N, N] x [N, N]` back to back (R chosen so a run is about 2 GFLOP, as the OpenBLAS peer script
//! does), then a tiny probe matmul `[1, N] x C` that reads the last result, and downloads only the
//! probe. The download waits for the queue, so the run covers all R matmuls and their submit, but
//! not an N x N readback (which would measure PCIe, not the kernel). Time / R gives one matmul;
//! the figure is the median of `--runs` runs after one untimed warm-up run (pipeline compilation).

use crate::util::{describe, open_device, parse_device, print_json, pseudo_random};
use crate::{CliError, CliResult};
use std::time::Instant;
use taskloom::{Device, DeviceChoice, Op, TensorData};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// f32 matmul GFLOP/s (2·N³ flops per matmul).
    Matmul(MatmulArgs),
}

#[derive(clap::Args)]
struct MatmulArgs {
    /// Square sizes N, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
    sizes: Vec<usize>,
    /// auto, cpu, gpu, or all (the CPU and, when there is one, the GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Timed runs per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    device: &'static str,
    name: String,
    backend: String,
    n: usize,
    /// Matmuls per timed run.
    reps: usize,
    runs: usize,
    median_ms: f64,
    gflops: f64,
}

pub fn run(a: Args) -> CliResult {
    match a.what {
        What::Matmul(m) => matmul(m),
    }
}

fn matmul(a: MatmulArgs) -> CliResult {
    if a.runs == 0 || a.sizes.is_empty() || a.sizes.contains(&0) {
        return Err(CliError::Msg("bench matmul: --runs and every --sizes entry must be at least 1".into()));
    }
    let devices = select(&a.device)?;
    let mut rows = Vec::new();
    if !a.json {
        println!("f32 matmul [N,N]x[N,N]: median of {} runs after a warm-up; GFLOP/s = 2·N³ / time", a.runs);
    }
    for dev in &devices {
        if !a.json {
            println!("{}", describe(dev));
        }
        for &n in &a.sizes {
            let row = bench_one(dev, n, a.runs)?;
            if !a.json {
                println!("  N={:<5} {:>9.3} ms  {:>8.1} GFLOP/s  ({} per run)", n, row.median_ms, row.gflops, row.reps);
            }
            rows.push(row);
        }
    }
    if a.json {
        return print_json(&serde_json::json!({ "bench": "matmul", "runs": a.runs, "results": rows }));
    }
    Ok(())
}

/// `all` = the CPU, plus the GPU when an adapter exists (its absence is then noted, not an error).
fn select(s: &str) -> CliResult<Vec<Device>> {
    if s.eq_ignore_ascii_case("all") {
        let mut v = vec![Device::cpu()];
        match pollster::block_on(Device::gpu()) {
            Ok(g) => v.push(g),
            Err(e) => eprintln!("taskloom: note: GPU skipped: {e}"),
        }
        return Ok(v);
    }
    let choice: DeviceChoice = parse_device(s).map_err(|e| CliError::Msg(format!("--device: {e}, or all")))?;
    Ok(vec![open_device(choice)?])
}

fn bench_one(dev: &Device, n: usize, runs: usize) -> CliResult<Row> {
    let flops = 2.0 * (n as f64).powi(3);
    let reps = (2e9 / flops).clamp(1.0, 1000.0) as usize;
    let a = dev.upload(&TensorData::f32(&[n, n], pseudo_random(n * n, 1))?)?;
    let b = dev.upload(&TensorData::f32(&[n, n], pseudo_random(n * n, 2))?)?;
    let probe = dev.upload(&TensorData::f32(&[1, n], vec![1.0; n])?)?;
    let op = Op::Matmul { trans_b: false };
    let timed_run = || -> CliResult<f64> {
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..reps {
            last = Some(dev.exec1(&op, &[&a, &b])?);
        }
        let c = last.ok_or_else(|| CliError::Msg("no matmul ran".into()))?;
        let p = dev.exec1(&op, &[&probe, &c])?;
        dev.flush()?;
        pollster::block_on(dev.download(&p))?;
        Ok(t0.elapsed().as_secs_f64() / reps as f64)
    };
    timed_run()?;
    let mut times = (0..runs).map(|_| timed_run()).collect::<CliResult<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let info = dev.info();
    Ok(Row {
        device: info.kind,
        name: info.name,
        backend: info.backend,
        n,
        reps,
        runs,
        median_ms: median * 1e3,
        gflops: flops / median / 1e9,
    })
}
