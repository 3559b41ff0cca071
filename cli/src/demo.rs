//! `taskloom demo [--device auto|cpu|gpu] [--no-self-check]`: the README's main job. Runs the
//! digits multi-task model (a task-routed MoE ViT trained on scikit-learn's digits, embedded in the
//! binary from `tests/fixtures/multitask/digits/`) on its bundled held-out samples: every task's
//! prediction per sample, accuracy on them, tokens per expert, and the memory a one-task load saves.
//! Then a self-check: a 256x256 matmul on the chosen device against a plain f64 triple loop on the
//! CPU (independent of the `gemm` crate the CPU backend uses). Exit status 1 on a mismatch.

use crate::multitask::{describe_prediction, print_routing};
use crate::util::{bytes, describe, open_device, parse_device, pseudo_random};
use crate::{CliError, CliResult};
use std::collections::BTreeMap;
use std::time::Instant;
use taskloom::models::hf::MemFiles;
use taskloom::multitask::{Input, MultiTask, Output};
use taskloom::{Device, DeviceChoice, Op, TensorData};

const N: usize = 256;
/// Entries are sums of 256 products of values in [-1, 1) (typically ~5 in size); f32 accumulation
/// in any order stays within ~1e-5 of the exact value. 1e-3 catches every real kernel bug.
const TOLERANCE: f32 = 1e-3;

const DIGITS_JSON: &[u8] = include_bytes!("../../tests/fixtures/multitask/digits/taskloom.json");
const DIGITS_WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/multitask/digits/model.safetensors");
const DIGITS_EXPECTED: &[u8] = include_bytes!("../../tests/fixtures/multitask/digits/expected.json");

#[derive(clap::Args)]
pub struct Args {
    /// auto (GPU if there is one, else CPU), cpu or gpu.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
    /// Skip the final matmul self-check.
    #[arg(long)]
    no_self_check: bool,
}

fn digits_files() -> MemFiles {
    MemFiles(BTreeMap::from([("taskloom.json".to_string(), DIGITS_JSON.to_vec()), ("model.safetensors".to_string(), DIGITS_WEIGHTS.to_vec())]))
}

pub fn run(a: Args) -> CliResult {
    let dev = open_device(a.device)?;
    println!("device: {}", describe(&dev));
    digits(&dev)?;
    if a.no_self_check {
        return Ok(());
    }
    self_check(&dev)
}

fn digits(dev: &Device) -> CliResult {
    // The fixture writes a regression task's label margin as a bare `Infinity` (not JSON; unused here).
    let text = String::from_utf8_lossy(DIGITS_EXPECTED).replace(":Infinity", ":null");
    let exp: serde_json::Value = serde_json::from_str(&text).map_err(|e| CliError::Msg(format!("embedded expected.json: {e}")))?;
    let model = MultiTask::load(&digits_files(), None, dev.clone(), None)?;
    let samples = exp["samples"].as_array().cloned().unwrap_or_default();
    let inputs: Vec<Input> = samples
        .iter()
        .map(|s| Input::Image(s["pixels"].as_array().map(|p| p.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default()))
        .collect();
    let t0 = Instant::now();
    let run = pollster::block_on(model.run(&inputs, None))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    println!("model {}: tasks {} ({} samples from the held-out set, one batch, {ms:.1} ms)", model.spec.name, model.tasks().join(", "), inputs.len());
    let mut right: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, (s, out)) in samples.iter().zip(&run.outputs).enumerate() {
        let mut line = Vec::new();
        for (task, o) in out {
            let Output::Sequence(p) = o else { continue };
            let want = s["labels"][task.as_str()].as_str();
            line.push(format!("{task}={}", describe_prediction(p)));
            if let (Some(w), Some(l)) = (want, &p.label) {
                let e = right.entry(task.as_str()).or_default();
                e.0 += usize::from(w == l);
                e.1 += 1;
            }
        }
        println!("sample {i} (true digit {}): {}", s["labels"]["digit"].as_str().unwrap_or("?"), line.join("  "));
    }
    for (task, (ok, n)) in &right {
        let full = exp["accuracy"][*task].as_f64().map(|a| format!(", {:.1}% on the whole held-out set (PyTorch)", a * 100.0)).unwrap_or_default();
        println!("accuracy {task}: {ok}/{n} samples{full}");
    }
    print_routing(&run);
    let one = MultiTask::load(&digits_files(), None, dev.clone(), Some(&["parity"]))?;
    println!("resident: all tasks {}, parity alone {} ({} saved)", bytes(model.resident_bytes()), bytes(one.resident_bytes()), bytes(model.resident_bytes().saturating_sub(one.resident_bytes())));
    Ok(())
}

fn self_check(dev: &Device) -> CliResult {
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
        "self-check matmul {N}x{N}x{N}: max |error| vs CPU reference {max_err:.2e} (tolerance {TOLERANCE:.0e}); \
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
