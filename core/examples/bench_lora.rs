//! LoRA benchmarks, the taskloom side of `shared/peers/lora_merge_unload.py` and
//! `lora_mixed_batch.py`; `scripts/bench_lora.sh` runs both sides back to back and prints ratios.
//!
//! ```text
//! cargo build --release -p taskloom --example bench_lora
//! bench_lora SMOLLM_HF_DIR LORA_DIR [--device cpu|gpu] [--runs N]
//! ```
//! `LORA_DIR` holds the peers' adapters `a0` .. `a7` (r = 16 on q, k, v, o, gate, up, down).
//! Every figure is a median of the timed runs after warm-up, printed as `bench=<name> key=value`.
//!
//! * `lora_fuse`: `fuse()` of adapter a0 into the loaded base (W + s·B·A for the 210 targeted
//!   linears, on the device; on a GPU, waited for by reading back one fused weight), against
//!   PEFT's `merge_and_unload()`.
//! * `lora_mixed_batch`: one forward of 8 sequences × 32 tokens (logits for every position,
//!   downloaded), the same random ids as the peer (different values: torch's RNG), with (a) no
//!   adapter, (b) a0 for every row, (c) row i with a_i; interleaved rounds, ratio c / b.
//! * `lora_switch`: time to first token (a 16-token prompt, prefill + argmax) right after
//!   switching the active adapter from a0 to a1 (alternating): unfused (just a new mix) vs fused
//!   (re-fuse, then prefill).

use std::time::Instant;
use taskloom::lora::Adapter;
use taskloom::models::config::ModelConfig;
use taskloom::models::hf::{DirFiles, Files};
use taskloom::models::llama::Llama;
use taskloom::models::generate::argmax;
use taskloom::Device;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn mix(name: &str) -> Vec<(String, f32)> {
    vec![(name.to_string(), 1.0)]
}

/// Waits for queued GPU work by reading back one small tensor's worth (the first fused linear).
fn sync(dev: &Device, m: &mut Llama) -> R<()> {
    let _ = pollster::block_on(m.linear_weight(dev, "model.layers.0.self_attn.k_proj"))?;
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bench_lora SMOLLM_HF_DIR LORA_DIR [--device cpu|gpu] [--runs N]".into());
    }
    let flag = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = flag("--runs").map_or(Ok(7), |s| s.parse())?;
    let dev = match flag("--device").as_deref() {
        Some("gpu") => pollster::block_on(Device::gpu())?,
        _ => Device::cpu(),
    };
    let dir = DirFiles(args[1].clone().into());
    let ModelConfig::Llama(cfg) = ModelConfig::parse("config.json", &String::from_utf8_lossy(&dir.read("config.json")?.ok_or("no config.json")?))? else {
        return Err("not a Llama-family folder".into());
    };
    let vocab = cfg.vocab_size;
    let mut m = Llama::load(&dev, cfg, &dir.weights()?)?;
    let lora = std::path::PathBuf::from(&args[2]);
    for i in 0..8 {
        m.add_adapter(&dev, Adapter::load_dir(&format!("a{i}"), lora.join(format!("a{i}")))?)?;
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let device = dev.kind();

    // Fuse a0 (re-fused from the kept originals each time).
    m.set_adapters(mix("a0"))?;
    let mut ts = Vec::new();
    for r in 0..runs + 1 {
        m.unfuse()?;
        sync(&dev, &mut m)?;
        let t0 = Instant::now();
        m.fuse(&dev)?;
        sync(&dev, &mut m)?;
        if r > 0 {
            ts.push(t0.elapsed().as_secs_f64());
        }
    }
    println!("bench=lora_fuse device={device} threads={threads} r=16 pairs=210 runs={runs} fuse_ms={:.1} min_ms={:.1}", median(ts.clone()) * 1e3, ts.iter().cloned().fold(f64::INFINITY, f64::min) * 1e3);
    m.unfuse()?;
    m.set_adapters(Vec::new())?;

    // Mixed batch: 8 × 32 random ids.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let rows: Vec<Vec<u32>> = (0..8)
        .map(|_| {
            (0..32)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % vocab as u64) as u32
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let variants: [(&str, Vec<Vec<(String, f32)>>); 3] = [
        ("base", vec![Vec::new(); 8]),
        ("one", vec![mix("a0"); 8]),
        ("mix", (0..8).map(|i| mix(&format!("a{i}"))).collect()),
    ];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..runs + 2 {
        for j in 0..3 {
            let k = (j + r) % 3;
            let mut cache = m.new_cache();
            let t0 = Instant::now();
            let l = m.forward_mixed(&dev, &refs, &mut cache, true, Some(&variants[k].1))?;
            let _ = pollster::block_on(dev.download(&l))?;
            if r >= 2 {
                times[k].push(t0.elapsed().as_secs_f64());
            }
        }
    }
    let [tb, t1, tm] = times.map(median);
    println!(
        "bench=lora_mixed_batch device={device} threads={threads} batch=8x32 runs={runs} base_ms={:.1} one_adapter_ms={:.1} mixed8_ms={:.1} ratio_mixed_over_one={:.3}",
        tb * 1e3, t1 * 1e3, tm * 1e3, tm / t1
    );

    // Switching: time to first token after a switch, unfused vs fused.
    let prompt: Vec<u32> = rows[0][..16].to_vec();
    let ttft = |fused: bool, m: &mut Llama| -> R<f64> {
        let mut ts = Vec::new();
        for r in 0..runs + 1 {
            let name = if r % 2 == 0 { "a1" } else { "a0" };
            let t0 = Instant::now();
            m.set_adapters(mix(name))?;
            if fused {
                m.fuse(&dev)?;
            }
            let mut cache = m.new_cache();
            let l = m.forward(&dev, &prompt, &mut cache, false)?;
            let _tok = argmax(pollster::block_on(dev.download(&l))?.as_f32()?);
            if r > 0 {
                ts.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(median(ts))
    };
    let unfused = ttft(false, &mut m)?;
    let fused = ttft(true, &mut m)?;
    m.unfuse()?;
    println!("bench=lora_switch device={device} threads={threads} prompt=16 runs={runs} ttft_unfused_ms={:.1} ttft_fused_ms={:.1}", unfused * 1e3, fused * 1e3);
    Ok(())
}
