//! Model-level CPU benchmarks, the taskloom side of `shared/peers` (`minilm_torch.py`,
//! `minilm_ort.py`, `smollm2_torch_decode.py`, `smollm2_llamacpp.py`); `scripts/bench_models.sh` runs
//! both sides back to back and prints ratios. Threads: rayon's pool (`RAYON_NUM_THREADS=2`).
//!
//! ```text
//! cargo build --release -p taskloom --example bench_models
//! bench_models minilm MINILM_DIR INPUTS_JSON [--runs N] [--ref REF_JSON] [--ops]
//! bench_models smollm GGUF [--runs N] [--new 64] [--ops]
//! ```
//!
//! Every figure is the median of the timed runs after warm-up (as `_common.bench` does), printed
//! as one `bench=<name> key=value ...` line.
//!
//! * `minilm`: `Encoder::hidden` (the forward, result downloaded) + mean pooling + L2 normalise on
//!   pre-tokenised inputs (tokenisation not timed): `text128` (exactly 128 tokens) as batch 1, the
//!   32 `batch32` texts truncated to 128 tokens the way `transformers` truncates (the row's last
//!   token, `[SEP]`, kept at position 127) as batch 32. `--ref` compares the batch-1 embedding with
//!   the PyTorch one written by `minilm_export_onnx.py` (`ref_text128.json`). `--ops` adds a
//!   breakdown: every op of one encoder layer timed alone on the same shapes, times 6 layers,
//!   against the batch-1 forward alone (`fwd_b1_ms`) and the batch-32 forward + pool.
//! * `smollm`: the peers' prompt through the GGUF's chat template; `prefill` = one forward of the
//!   prompt (last-position logits only) + argmax; `decode` = `--new` single-token forwards with the
//!   KV cache, each with logits download + argmax (prefill excluded); `pp256` = one 256-token
//!   forward on a fresh cache; `generate` = `CausalLm::generate` (greedy, `--new` tokens, EOS not
//!   stopping, as the peer's `min_new_tokens`), new tokens / total time. Peak RSS from
//!   `/proc/self/status` (VmHWM), before `--ops` allocates its own weights. `--ops` times the
//!   decode-step pieces alone (layer matmuls over 30 cold weight sets, lm_head, attention at the
//!   mid-decode cache length, the small ops).

use std::time::Instant;

use taskloom::models::causal::CausalLm;
use taskloom::models::generate::Sampling;
use taskloom::models::hf::{DirFiles, Encoder};
use taskloom::models::bert::{pool, EncoderInput, Pooling};
use taskloom::{Device, GeluKind, Op, Tensor, TensorData};

type R<T> = Result<T, Box<dyn std::error::Error>>;

const PROMPT: &str = "What is the capital of France? Answer in one sentence.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median seconds of `f` over `runs` timed calls after `warmup` untimed ones.
fn bench(runs: usize, warmup: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn opt(args: &[String], name: &str, default: usize) -> R<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} needs a value"))?.parse()?),
        None => Ok(default),
    }
}

fn opt_str<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|s| s.as_str())
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A `kB` field of `/proc/self/status` in MB (VmHWM, VmRSS, RssAnon, RssFile).
fn status_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn rand_tensor(dev: &Device, shape: &[usize], seed: u64) -> R<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    Ok(dev.upload(&TensorData::f32(shape, v)?)?)
}

/// Median ms of one op on the CPU (exec is synchronous there; the result is dropped).
fn time_op(dev: &Device, op: &Op, inputs: &[&Tensor], runs: usize) -> R<f64> {
    Ok(bench(runs, 2, || {
        let _ = dev.exec1(op, inputs)?;
        Ok(())
    })? * 1e3)
}

/// Rows truncated to `max` tokens the way `transformers` truncates a single sequence: the first
/// `max - 1` tokens, then the row's own last token (`[SEP]`).
fn truncate(input: &EncoderInput, lens: &[usize], max: usize) -> EncoderInput {
    if input.tokens <= max {
        return EncoderInput {
            ids: input.ids.clone(),
            type_ids: input.type_ids.clone(),
            mask: input.mask.clone(),
            batch: input.batch,
            tokens: input.tokens,
        };
    }
    let t = input.tokens;
    let (mut ids, mut type_ids, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &len) in lens.iter().enumerate() {
        let row = |v: &Vec<u32>| v[r * t..r * t + max].to_vec();
        let (mut i, ty, m) = (row(&input.ids), row(&input.type_ids), row(&input.mask));
        if len > max {
            i[max - 1] = input.ids[r * t + len - 1];
        }
        ids.extend(i);
        type_ids.extend(ty);
        mask.extend(m);
    }
    EncoderInput { ids, type_ids, mask, batch: input.batch, tokens: max }
}

fn minilm(args: &[String]) -> R<()> {
    let dir = args.first().ok_or("minilm MINILM_DIR INPUTS_JSON")?;
    let inputs = args.get(1).ok_or("minilm MINILM_DIR INPUTS_JSON")?;
    let runs = opt(args, "--runs", 10)?;
    let dev = Device::cpu();
    let threads = dev.info().threads;
    let enc = Encoder::load(&DirFiles(dir.into()), dev.clone())?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(inputs)?)?;
    let text128 = v["text128"].as_str().ok_or("no text128")?;
    let batch32: Vec<&str> = v["batch32"].as_array().ok_or("no batch32")?.iter().filter_map(|s| s.as_str()).collect();
    let (mode, norm) = enc.pooling.unwrap_or((Pooling::Mean, false));

    let e1 = enc.tokenize(&[text128])?;
    let lens1 = [enc.tokenizer.encode(text128)?.ids.len()];
    let e1 = truncate(&e1, &lens1, 128);
    let raw32 = enc.tokenize(&batch32)?;
    let lens32: Vec<usize> = batch32.iter().map(|t| enc.tokenizer.encode(t).map(|e| e.ids.len())).collect::<Result<_, _>>()?;
    let e32 = truncate(&raw32, &lens32, 128);
    assert_eq!((e1.batch, e1.tokens), (1, 128), "text128 must be 128 tokens");
    assert_eq!((e32.batch, e32.tokens), (32, 128));

    let embed = |e: &EncoderInput| -> R<Vec<Vec<f32>>> {
        let h = pollster::block_on(enc.hidden(e))?;
        Ok(pool(&h, &e.mask, mode, norm)?)
    };
    let fwd = |e: &EncoderInput| -> R<()> {
        pollster::block_on(enc.hidden(e))?;
        Ok(())
    };
    let t1 = bench(runs, 3, || embed(&e1).map(|_| ()))?;
    let t32 = bench(runs.div_ceil(2).max(5), 2, || embed(&e32).map(|_| ()))?;
    let f1 = bench(runs, 1, || fwd(&e1))?;

    let mut cos = String::new();
    if let Some(r) = opt_str(args, "--ref") {
        let rv: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r)?)?;
        let want: Vec<f32> = rv["embedding"].as_array().ok_or("no embedding")?.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect();
        let got = &embed(&e1)?[0];
        let dot: f32 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let na: f32 = got.iter().map(|a| a * a).sum::<f32>().sqrt();
        let nb: f32 = want.iter().map(|a| a * a).sum::<f32>().sqrt();
        cos = format!(" cos_vs_torch={:.7}", dot / (na * nb));
    }
    println!(
        "bench=minilm_taskloom threads={threads} seq=128 runs={runs} b1_ms={:.2} b32_ms={:.1} b32_seq_per_s={:.1} \
         fwd_b1_ms={:.2} pool={mode:?} normalize={norm}{cos}",
        t1 * 1e3,
        t32 * 1e3,
        32.0 / t32,
        f1 * 1e3,
    );

    if flag(args, "--ops") {
        let cfg = &enc.bert.cfg;
        let (c, f, h, layers) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers);
        let d = c / h;
        let gelu = match cfg.hidden_act.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => GeluKind::Tanh,
            _ => GeluKind::Erf,
        };
        for (b, total) in [(1usize, f1), (32, t32)] {
            let rows = b * 128;
            let oruns = if b == 1 { 20 } else { 7 };
            let x = rand_tensor(&dev, &[rows, c], 1)?;
            let xf = rand_tensor(&dev, &[rows, f], 2)?;
            let wcc = rand_tensor(&dev, &[c, c], 3)?;
            let wfc = rand_tensor(&dev, &[f, c], 4)?;
            let wcf = rand_tensor(&dev, &[c, f], 5)?;
            let bc = rand_tensor(&dev, &[c], 6)?;
            let bf = rand_tensor(&dev, &[f], 7)?;
            let q = rand_tensor(&dev, &[b, h, 128, d], 8)?;
            let k = rand_tensor(&dev, &[b, h, 128, d], 9)?;
            let vv = rand_tensor(&dev, &[b, h, 128, d], 10)?;
            let mask = dev.upload(&TensorData::u32(&[b, 128], vec![1; b * 128])?)?;
            let bthd = rand_tensor(&dev, &[b, 128, h, d], 11)?;
            let mm = Op::Matmul { trans_b: true };
            let qkvo = time_op(&dev, &mm, &[&x, &wcc, &bc], oruns)?;
            let up = time_op(&dev, &mm, &[&x, &wfc, &bf], oruns)?;
            let down = time_op(&dev, &mm, &[&xf, &wcf, &bc], oruns)?;
            let attn = time_op(&dev, &Op::Attention { causal: false, scale: 1.0 / (d as f32).sqrt() }, &[&q, &k, &vv, &mask], oruns)?;
            let perm = time_op(&dev, &Op::Permute { perm: [0, 2, 1, 3] }, &[&bthd], oruns)?;
            let ln = time_op(&dev, &Op::LayerNorm { eps: 1e-12 }, &[&x, &bc, &bc], oruns)?;
            let add = time_op(&dev, &Op::Add, &[&x, &x], oruns)?;
            let ge = time_op(&dev, &Op::Gelu(gelu), &[&xf], oruns)?;
            let l = layers as f64;
            let matmul = l * (4.0 * qkvo + up + down);
            let attn_t = l * attn;
            let other = l * (4.0 * perm + 2.0 * ln + 2.0 * add + ge);
            let sum = matmul + attn_t + other;
            let tot = total * 1e3;
            println!(
                "bench=minilm_taskloom_ops batch={b} layers={layers} matmul_ms={matmul:.2} attention_ms={attn_t:.2} elementwise_ms={other:.2} \
                 sum_ms={sum:.2} forward_ms={tot:.2} matmul_share={:.0}% attention_share={:.0}% elementwise_share={:.0}% unaccounted={:.0}% \
                 layer_qkvo_ms={qkvo:.3}x4 layer_up_ms={up:.3} layer_down_ms={down:.3} layer_attention_ms={attn:.3} layer_gelu_ms={ge:.3} \
                 layer_permute_ms={perm:.3}x4 layer_layernorm_ms={ln:.3}x2 layer_add_ms={add:.3}x2 \
                 matmul_gflops={:.1}",
                100.0 * matmul / tot,
                100.0 * attn_t / tot,
                100.0 * other / tot,
                100.0 * (tot - sum) / tot,
                l * 2.0 * rows as f64 * (4.0 * (c * c) as f64 + 2.0 * (c * f) as f64) / (matmul * 1e-3) / 1e9,
            );
        }
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn smollm(args: &[String]) -> R<()> {
    let path = args.first().ok_or("smollm GGUF")?;
    let runs = opt(args, "--runs", 5)?;
    let new = opt(args, "--new", 64)?;
    let dev = Device::cpu();
    let threads = dev.info().threads;
    let t0 = Instant::now();
    let mut lm = CausalLm::load_gguf_path(std::path::Path::new(path), dev.clone())?;
    // Exactly `new` tokens from `generate` too (the peer's min_new_tokens): no stop on EOS.
    lm.eos.clear();
    let lm = lm;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = format!(
        "rss_after_load_mb={:.0} rss_anon_mb={:.0} rss_file_mb={:.0} hwm_after_load_mb={:.0}",
        status_mb("VmRSS:"),
        status_mb("RssAnon:"),
        status_mb("RssFile:"),
        peak_rss_mb()
    );
    let prompt = lm.chat_prompt(PROMPT)?;
    let ids = lm.encode(&prompt)?;
    let p = ids.len();
    let model = &lm.model;

    let mut out_ids = Vec::new();
    let mut run = || -> R<(f64, f64)> {
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let l = model.forward(&dev, &ids, &mut cache, false)?;
        let mut nxt = argmax(pollster::block_on(dev.download(&l))?.as_f32()?);
        let t1 = Instant::now();
        let mut toks = vec![nxt];
        for _ in 0..new {
            let l = model.forward(&dev, &[nxt], &mut cache, false)?;
            nxt = argmax(pollster::block_on(dev.download(&l))?.as_f32()?);
            toks.push(nxt);
        }
        let t2 = Instant::now();
        out_ids = toks;
        Ok(((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64()))
    };
    let pp_ids: Vec<u32> = ids.iter().cycle().take(256).copied().collect();
    let pp = || -> R<f64> {
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let l = model.forward(&dev, &pp_ids, &mut cache, false)?;
        pollster::block_on(dev.download(&l))?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let s = Sampling { max_tokens: new, ..Default::default() };
    let gen = || -> R<(f64, usize)> {
        let t0 = Instant::now();
        let out = pollster::block_on(lm.generate(&ids, &s, |_, _| true))?;
        Ok((t0.elapsed().as_secs_f64(), out.len()))
    };
    for _ in 0..2 {
        run()?;
        gen()?;
        pp()?;
    }
    let (mut pre, mut dec, mut gt, mut pps, mut gn) = (vec![], vec![], vec![], vec![], 0);
    for _ in 0..runs {
        let (a, b) = run()?;
        pre.push(a);
        dec.push(b);
        let (g, n) = gen()?;
        gt.push(g);
        gn = n;
        pps.push(pp()?);
    }
    let (pre, dec, gt, pps) = (median(pre), median(dec), median(gt), median(pps));
    let start = lm.tokenizer.decode(&out_ids[..12.min(out_ids.len())], true)?.replace('\n', " ").replace(' ', "_");
    println!(
        "bench=smollm2_taskloom weights=gguf_q4_1_quantised_cpu threads={threads} prompt_tokens={p} new={new} runs={runs} \
         prefill_ms={:.1} prefill_tok_s={:.1} decode_tok_s={:.1} generate_tok_s={:.1} generate_tokens={gn} pp256_tok_s={:.1} \
         load_s={load_s:.2} {rss_loaded} peak_rss_mb={:.0} start={}",
        pre * 1e3,
        p as f64 / pre,
        new as f64 / dec,
        gn as f64 / gt,
        256.0 / pps,
        peak_rss_mb(),
        start.chars().take(60).collect::<String>()
    );

    if flag(args, "--ops") {
        // One decode step at cache length ~ P + new/2, piece by piece. The layer matmuls run as a
        // chain over 30 distinct weight sets (538 MB, as in the model: cold in cache, like a real
        // step); the small ops are timed alone on the step's shapes, times their count per step.
        let cfg = &model.cfg;
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (hq, hkv, d, layers) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim(), cfg.num_hidden_layers);
        let tk = p + new / 2;
        let oruns = 30;
        let mm = Op::Matmul { trans_b: true };
        let x = rand_tensor(&dev, &[1, c], 1)?;
        let xf = rand_tensor(&dev, &[1, f], 2)?;
        let mut ws = Vec::new();
        for i in 0..layers as u64 {
            let s = 100 + 10 * i;
            ws.push([
                rand_tensor(&dev, &[hq * d, c], s)?,
                rand_tensor(&dev, &[hkv * d, c], s + 1)?,
                rand_tensor(&dev, &[hkv * d, c], s + 2)?,
                rand_tensor(&dev, &[c, hq * d], s + 3)?,
                rand_tensor(&dev, &[f, c], s + 4)?,
                rand_tensor(&dev, &[f, c], s + 5)?,
                rand_tensor(&dev, &[c, f], s + 6)?,
            ]);
        }
        let head = rand_tensor(&dev, &[v, c], 8)?;
        let layer_mm = bench(10, 2, || {
            for w in &ws {
                for (i, wt) in w.iter().enumerate() {
                    let _ = dev.exec1(&mm, &[if i == 6 { &xf } else { &x }, wt])?;
                }
            }
            Ok(())
        })? * 1e3;
        let q = rand_tensor(&dev, &[1, hq, 1, d], 9)?;
        let k = rand_tensor(&dev, &[1, hkv, tk, d], 10)?;
        let vv = rand_tensor(&dev, &[1, hkv, tk, d], 11)?;
        let kn = rand_tensor(&dev, &[1, hkv, 1, d], 12)?;
        let g = rand_tensor(&dev, &[c], 13)?;
        let q4 = rand_tensor(&dev, &[1, 1, hq, d], 14)?;
        let pos = dev.upload(&TensorData::u32(&[1], vec![tk as u32])?)?;
        let th = time_op(&dev, &mm, &[&x, &head], oruns)?;
        let ta = time_op(&dev, &Op::Attention { causal: true, scale: 1.0 / (d as f32).sqrt() }, &[&q, &k, &vv], oruns)?;
        let tc = time_op(&dev, &Op::Concat { axis: 2 }, &[&k, &kn], oruns)?;
        let tn = time_op(&dev, &Op::RmsNorm { eps: 1e-5 }, &[&x, &g], oruns)?;
        let tr = time_op(&dev, &Op::Rope { theta: cfg.theta() }, &[&q, &pos], oruns)?;
        let tp = time_op(&dev, &Op::Permute { perm: [0, 2, 1, 3] }, &[&q4], oruns)?;
        let ts = time_op(&dev, &Op::Silu, &[&xf], oruns)?;
        let tm = time_op(&dev, &Op::Mul, &[&xf, &xf], oruns)?;
        let tad = time_op(&dev, &Op::Add, &[&x, &x], oruns)?;
        let l = layers as f64;
        let attn = l * ta;
        let concat = l * 2.0 * tc;
        let small = (2.0 * l + 1.0) * tn + l * (2.0 * tr + 4.0 * tp + ts + tm + 2.0 * tad);
        let step = dec * 1e3 / new as f64;
        let wbytes = 4.0 * (l * (2 * hq * d * c + 2 * hkv * d * c + 3 * c * f) as f64 + (v * c) as f64);
        println!(
            "bench=smollm2_taskloom_decode_ops cache_len={tk} step_ms={step:.2} layer_matmul_ms={layer_mm:.2} lm_head_ms={th:.2} \
             attention_ms={attn:.2} kv_concat_ms={concat:.2} norm_rope_permute_silu_mul_add_ms={small:.2} unaccounted_ms={:.2} \
             matmul_weight_mb={:.0} matmul_gb_s={:.1}",
            step - layer_mm - th - attn - concat - small,
            wbytes / 1e6,
            wbytes / ((layer_mm + th) * 1e-3) / 1e9
        );
    }
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("minilm") => minilm(&args[1..]),
        Some("smollm") => smollm(&args[1..]),
        _ => Err("usage: bench_models minilm MINILM_DIR INPUTS_JSON [--runs N] [--ref JSON] [--ops] | smollm GGUF [--runs N] [--new N] [--ops]".into()),
    }
}
