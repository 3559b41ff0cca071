//! `taskloom run`: a Hugging Face folder or a GGUF file, on text or token ids. Encoders print the
//! (pooled) embedding; decoders stream generated text. `--dump` writes activations as safetensors.
//! A folder with `taskloom.json` is a multi-task model: see [`crate::multitask`].

use crate::util::{open_device, parse_device};
use crate::{CliError, CliResult};
use std::io::Write;
use std::path::PathBuf;
use taskloom::formats::safetensors;
use taskloom::models::causal::CausalLm;
use taskloom::models::config::ModelConfig;
use taskloom::models::generate::Sampling;
use taskloom::models::hf::{DirFiles, Encoder, Files};
use taskloom::models::Progress;
use taskloom::{DeviceChoice, TensorData};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder (config.json + *.safetensors + tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Input text (tokenized with the model's tokenizer).
    #[arg(long, conflicts_with = "ids")]
    text: Option<String>,
    /// Input token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Tokens to generate (decoders). 0 runs the prompt only.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap --text in the model's chat template as one user message.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Write `logits` [T, V] (decoders) or `last_hidden_state` [T, C] and `embedding` [C] (encoders).
    #[arg(long)]
    dump: Option<PathBuf>,
    /// A PEFT LoRA adapter folder, optionally with a scale (DIR=0.5). Repeatable: the adapters'
    /// deltas are summed with their scales.
    #[arg(long = "adapter", value_name = "DIR[=SCALE]")]
    adapters: Vec<String>,
    /// Fuse the adapters into the weights before running (else they run unfused).
    #[arg(long)]
    fuse: bool,
    /// Multi-task models (a folder with taskloom.json): the tasks to run, comma-separated
    /// (default: all). Only what these tasks need is loaded.
    #[arg(long = "task", value_name = "NAME[,NAME...]", value_delimiter = ',')]
    tasks: Vec<String>,
    /// Multi-task models: the input. Text for text models; for image models comma-separated pixel
    /// values (row-major) or a file holding them.
    #[arg(long)]
    input: Option<String>,
    /// Multi-task models: also print the tokens routed to each expert, per task and MoE block.
    #[arg(long)]
    routing: bool,
    /// A merged model with TALL masks (`tall_masks.safetensors`): run it as task NAME (a merged
    /// model's name in the recipe, its folder name, or its index), θ_0 + m_NAME ⊙ (θ_merged − θ_0).
    #[arg(long, value_name = "NAME")]
    task_mask: Option<String>,
}

/// `DIR[=SCALE]` → (DIR, SCALE); the scale defaults to 1. A path that itself contains '=' still
/// works when the part after the last '=' is not a number.
pub fn parse_adapter(s: &str) -> CliResult<(PathBuf, f32)> {
    if let Some((dir, scale)) = s.rsplit_once('=') {
        if let Ok(v) = scale.parse::<f32>() {
            if !v.is_finite() {
                return Err(msg(format!("--adapter {s}: the scale must be a finite number")));
            }
            return Ok((PathBuf::from(dir), v));
        }
    }
    Ok((PathBuf::from(s), 1.0))
}

/// Loads every `--adapter` as `(name, adapter, scale)`; names are the folder names, made unique.
pub fn load_adapters(specs: &[String]) -> CliResult<Vec<(taskloom::lora::Adapter, f32)>> {
    let mut out: Vec<(taskloom::lora::Adapter, f32)> = Vec::new();
    for s in specs {
        let (dir, scale) = parse_adapter(s)?;
        let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
        let mut name = base.clone();
        let mut i = 2;
        while out.iter().any(|(a, _)| a.name == name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        out.push((taskloom::lora::Adapter::load_dir(&name, &dir)?, scale));
    }
    Ok(out)
}

fn msg(m: impl Into<String>) -> CliError {
    CliError::Msg(m.into())
}

pub fn run(a: Args) -> CliResult {
    if a.model.join(taskloom::multitask::spec::FILE).is_file() {
        let input = a.input.clone().or(a.text.clone()).ok_or_else(|| msg("give --input (text, or pixels for an image model)"))?;
        let tasks: Vec<&str> = a.tasks.iter().map(|s| s.as_str()).collect();
        return crate::multitask::run(&crate::multitask::Request { model: &a.model, tasks: &tasks, input: &input, routing: a.routing, json: a.json, device: a.device });
    }
    if a.text.is_none() && a.ids.is_none() {
        return Err(msg("give --text TEXT or --ids 1,2,3"));
    }
    let dev = open_device(a.device)?;
    let bar = load_bar(a.json);
    let on_progress = |p: Progress| {
        bar.set_length(p.total);
        bar.set_position(p.loaded);
    };
    let adapters = load_adapters(&a.adapters)?;
    if a.model.extension().is_some_and(|e| e == "gguf") {
        if a.task_mask.is_some() {
            return Err(msg("--task-mask needs a merged Hugging Face folder with tall_masks.safetensors, not a .gguf file"));
        }
        let lm = CausalLm::load_gguf_path_with_progress(&a.model, dev, &on_progress);
        bar.finish_and_clear();
        let mut lm = lm?;
        attach_decoder(&mut lm, adapters, a.fuse)?;
        return decoder(&a, &lm);
    }
    let files = DirFiles(a.model.clone());
    let task_weights = match &a.task_mask {
        Some(t) => Some(taskloom::merge::task_mask::TaskWeights::open(&a.model, t, None)?),
        None => None,
    };
    let task_weights = task_weights.as_ref().map(|w| w as &dyn taskloom::models::Weights);
    let cfg_bytes = files.read("config.json")?.ok_or_else(|| msg(format!("{}: no config.json (nor a .gguf file)", a.model.display())))?;
    match ModelConfig::parse("config.json", &String::from_utf8_lossy(&cfg_bytes))? {
        ModelConfig::Bert(_) => {
            let enc = Encoder::load_with_weights(&files, task_weights, dev, &on_progress);
            bar.finish_and_clear();
            let mut enc = enc?;
            let mix = adapters.iter().map(|(ad, w)| (ad.name.clone(), *w)).collect();
            for (ad, _) in adapters {
                enc.bert.add_adapter(&enc.device, ad)?;
            }
            enc.bert.set_adapters(mix)?;
            if a.fuse {
                enc.bert.fuse(&enc.device)?;
            }
            encoder(&a, &enc)
        }
        _ => {
            let lm = CausalLm::load_with_weights(&files, task_weights, dev, &on_progress);
            bar.finish_and_clear();
            let mut lm = lm?;
            attach_decoder(&mut lm, adapters, a.fuse)?;
            decoder(&a, &lm)
        }
    }
}

fn attach_decoder(lm: &mut CausalLm, adapters: Vec<(taskloom::lora::Adapter, f32)>, fuse: bool) -> CliResult {
    let mix = adapters.iter().map(|(ad, w)| (ad.name.clone(), *w)).collect();
    for (ad, _) in adapters {
        lm.model.add_adapter(&lm.device, ad)?;
    }
    lm.model.set_adapters(mix)?;
    if fuse {
        lm.model.fuse(&lm.device)?;
    }
    Ok(())
}

/// A byte progress bar on stderr while weights load; hidden with --json or when stderr is not a
/// terminal (indicatif draws nothing there).
fn load_bar(json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} ({eta})") {
        bar.set_style(style);
    }
    bar
}

fn encoder(a: &Args, enc: &Encoder) -> CliResult {
    let input = match (&a.text, &a.ids) {
        (Some(t), _) => enc.tokenize(&[t.as_str()])?,
        (None, Some(ids)) => {
            let n = ids.len();
            taskloom::models::bert::EncoderInput { ids: ids.clone(), type_ids: vec![0; n], mask: vec![1; n], batch: 1, tokens: n }
        }
        (None, None) => unreachable!("checked in run"),
    };
    let t0 = std::time::Instant::now();
    if enc.bert.head.is_some() {
        return classify(a, enc, &input, t0);
    }
    let hidden = pollster::block_on(enc.hidden(&input))?;
    let (mode, norm) = enc.pooling.unwrap_or((taskloom::models::bert::Pooling::Mean, false));
    let emb = taskloom::models::bert::pool(&hidden, &input.mask, mode, norm)?.remove(0);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(p) = &a.dump {
        let (t, c) = (input.tokens, enc.bert.cfg.hidden_size);
        let h = TensorData::f32(&[t, c], hidden.as_f32()?.to_vec())?;
        let e = TensorData::f32(&[c], emb.clone())?;
        safetensors::write(p, &[("last_hidden_state", &h), ("embedding", &e)], None)?;
    }
    if a.json {
        crate::util::print_json(&serde_json::json!({ "ids": input.ids, "embedding": emb, "ms": ms, "device": enc.device.info() }))
    } else {
        let head: Vec<String> = emb.iter().take(8).map(|v| format!("{v:.6}")).collect();
        println!("embedding [{}] ({} tokens, {ms:.1} ms on {}): [{}, ...]", emb.len(), input.tokens, enc.device.kind(), head.join(", "));
        Ok(())
    }
}

/// A sequence classifier: every label's score (softmax) and the top one.
fn classify(a: &Args, enc: &Encoder, input: &taskloom::models::bert::EncoderInput, t0: std::time::Instant) -> CliResult {
    let head = enc.bert.head.as_ref().ok_or_else(|| msg("this model has no classification head"))?;
    let logits = pollster::block_on(enc.bert.classify(&enc.device, input, None))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let l = logits.as_f32()?;
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = l.iter().map(|x| ((x - m) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    let probs: Vec<f64> = e.iter().map(|x| x / z).collect();
    let best = probs.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(i, _)| i).unwrap_or(0);
    if let Some(p) = &a.dump {
        safetensors::write(p, &[("logits", &logits)], None)?;
    }
    if a.json {
        crate::util::print_json(&serde_json::json!({
            "ids": input.ids, "logits": l, "label": head.labels[best], "score": probs[best],
            "labels": head.labels, "ms": ms, "device": enc.device.info(),
        }))
    } else {
        println!("{} ({:.4}) ({} tokens, {ms:.1} ms on {})", head.labels[best], probs[best], input.tokens, enc.device.kind());
        Ok(())
    }
}

fn decoder(a: &Args, lm: &CausalLm) -> CliResult {
    let prompt_ids = match (&a.text, &a.ids) {
        (Some(t), _) if a.chat => lm.encode(&lm.chat_prompt(t)?)?,
        (Some(t), _) => lm.encode(t)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => unreachable!("checked in run"),
    };
    if let Some(p) = &a.dump {
        let logits = pollster::block_on(lm.prompt_logits(&prompt_ids))?;
        safetensors::write(p, &[("logits", &logits)], None)?;
    }
    let s = Sampling {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop: Vec::new(),
    };
    if s.max_tokens == 0 {
        return if a.json { crate::util::print_json(&serde_json::json!({ "prompt_ids": prompt_ids })) } else { Ok(()) };
    }
    let t0 = std::time::Instant::now();
    let mut first: Option<f64> = None;
    let mut out = std::io::stdout();
    let ids = pollster::block_on(lm.generate(&prompt_ids, &s, |_, piece| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if !a.json {
            // A closed stdout (e.g. piped into `head`) just ends the stream.
            return write!(out, "{piece}").and_then(|_| out.flush()).is_ok();
        }
        true
    }))?;
    let total = t0.elapsed().as_secs_f64();
    let decode_tps = if ids.len() > 1 { (ids.len() - 1) as f64 / (total - first.unwrap_or(0.0)).max(1e-9) } else { 0.0 };
    let text = lm.tokenizer.decode(&ids, true)?;
    if a.json {
        crate::util::print_json(&serde_json::json!({
            "prompt_ids": prompt_ids, "ids": ids, "text": text,
            "prefill_s": first, "decode_tokens_per_s": decode_tps, "device": lm.device.info(),
        }))
    } else {
        println!();
        eprintln!("[{} prompt + {} generated tokens on {}; first token {:.2} s, decode {decode_tps:.1} tok/s]", prompt_ids.len(), ids.len(), lm.device.kind(), first.unwrap_or(0.0));
        Ok(())
    }
}
