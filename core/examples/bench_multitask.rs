//! One task vs all tasks of a multi-task model (`taskloom.json`): resident bytes and time per
//! request, each configuration loaded on its own (so a one-task load keeps only that task's parts).
//!
//! ```text
//! cargo run --release -p taskloom --example bench_multitask -- DIR [--device cpu|gpu|auto] [--rounds N]
//! ```
//! Inputs come from `DIR/expected.json` (`inputs`: pixel lists or texts). Reports, per
//! configuration: resident bytes, the median time of a one-input request, and of one batched
//! request over every input; then ratios to the all-tasks configuration.

use std::time::Instant;
use taskloom::multitask::{Input, MultiTask};
use taskloom::{Device, DeviceChoice};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().ok_or("usage: bench_multitask DIR [--device cpu|gpu|auto] [--rounds N]")?);
    let opt = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let device = match opt("--device").as_deref().unwrap_or("cpu") {
        "gpu" => DeviceChoice::Gpu,
        "auto" => DeviceChoice::Auto,
        _ => DeviceChoice::Cpu,
    };
    let rounds: usize = opt("--rounds").map_or(Ok(20), |r| r.parse())?;
    let dev = pollster::block_on(Device::from_choice(device))?;
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?.replace(":Infinity", ":null"))?;
    let inputs: Vec<Input> = exp["inputs"]
        .as_array()
        .ok_or("expected.json has no inputs")?
        .iter()
        .map(|i| match i.as_str() {
            Some(t) => Input::Text(t.into()),
            None => Input::Image(i.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect()).unwrap_or_default()),
        })
        .collect();
    let all = MultiTask::load_dir(&dir, dev.clone(), None)?;
    let tasks: Vec<String> = all.tasks().to_vec();
    drop(all);
    let mut configs: Vec<Vec<String>> = vec![tasks.clone()];
    configs.extend(tasks.iter().map(|t| vec![t.clone()]));
    println!("model {} on {}: {} inputs, {rounds} rounds", dir.display(), dev.kind(), inputs.len());
    println!("{:<40} {:>12} {:>12} {:>14}", "tasks", "resident B", "1 input ms", "batch ms");
    let mut base: Option<(u64, f64, f64)> = None;
    for c in &configs {
        let names: Vec<&str> = c.iter().map(String::as_str).collect();
        let m = MultiTask::load_dir(&dir, dev.clone(), Some(&names))?;
        // Warm-up (pipelines, caches), then timed requests.
        pollster::block_on(m.run(&inputs[..1], None))?;
        pollster::block_on(m.run(&inputs, None))?;
        let one = median((0..rounds).map(|i| {
            let t = Instant::now();
            pollster::block_on(m.run(&inputs[i % inputs.len()..][..1], None)).expect("run");
            t.elapsed().as_secs_f64() * 1e3
        }).collect());
        let batch = median((0..rounds.div_ceil(4).max(3)).map(|_| {
            let t = Instant::now();
            pollster::block_on(m.run(&inputs, None)).expect("run");
            t.elapsed().as_secs_f64() * 1e3
        }).collect());
        let r = m.resident_bytes();
        let label = if c.len() == tasks.len() { format!("all ({})", c.join(",")) } else { c.join(",") };
        let (rb, ob, bb) = *base.get_or_insert((r, one, batch));
        println!("{label:<40} {r:>12} {one:>12.2} {batch:>14.2}   ratio to all: resident {:.3}, 1 input {:.3}, batch {:.3}", r as f64 / rb as f64, one / ob, batch / bb);
    }
    Ok(())
}
