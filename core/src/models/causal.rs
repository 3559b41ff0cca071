//! A causal language model ready to chat: decoder + tokenizer + chat template + stop tokens, from a
//! Hugging Face folder or a GGUF file; prompt logits (`--dump`) and streamed generation.

use super::config::{LlamaConfig, ModelConfig};
use super::generate::{sample, Rng, Sampling};
use super::hf::Files;
use super::llama::Llama;
use super::{Progress, Tracked, Weights};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::formats::gguf::{Gguf, GgufWeights};
use crate::lora::runtime::Mix;
use crate::tensor::TensorData;
use crate::tokenizer::Tokenizer;

pub struct CausalLm {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// Jinja source of the chat template (`tokenizer_config.json` or GGUF metadata).
    pub chat_template: Option<String>,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub device: Device,
}

fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl CausalLm {
    /// A Hugging Face folder: `config.json`, safetensors, `tokenizer.json`, `tokenizer_config.json`.
    pub fn load(files: &dyn Files, device: Device) -> Result<CausalLm> {
        CausalLm::load_with_progress(files, device, &|_| {})
    }

    /// [`CausalLm::load`], reporting weight bytes loaded as it goes.
    pub fn load_with_progress(files: &dyn Files, device: Device, on_progress: &dyn Fn(Progress)) -> Result<CausalLm> {
        CausalLm::load_with_weights(files, None, device, on_progress)
    }

    /// [`CausalLm::load_with_progress`] with the weights taken from `weights` instead of the
    /// folder's shards when given (e.g. a merged model switched to one task's TALL mask).
    pub fn load_with_weights(files: &dyn Files, weights: Option<&dyn Weights>, device: Device, on_progress: &dyn Fn(Progress)) -> Result<CausalLm> {
        let need = |rel: &str| {
            files.read(rel)?.ok_or_else(|| Error::Io {
                path: format!("{}/{rel}", files.name()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing from the model folder"),
            })
        };
        let cfg = match ModelConfig::parse("config.json", &String::from_utf8_lossy(&need("config.json")?))? {
            ModelConfig::Llama(c) => c,
            _ => return Err(Error::InvalidParam { op: "generate", reason: format!("{}: config.json describes an encoder", files.name()) }),
        };
        let tokenizer = Tokenizer::from_bytes("tokenizer.json", &need("tokenizer.json")?)?;
        let tc: serde_json::Value = match files.read("tokenizer_config.json")? {
            Some(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        };
        let mut template = tc.get("chat_template").and_then(|t| t.as_str()).map(str::to_string);
        if template.is_none() {
            template = files.read("chat_template.jinja")?.map(|b| String::from_utf8_lossy(&b).into_owned());
        }
        let bos = tc.get("bos_token").and_then(token_text);
        let eos = tc.get("eos_token").and_then(token_text);
        let shards;
        let weights: &dyn Weights = match weights {
            Some(w) => w,
            None => {
                shards = files.weights()?;
                &shards
            }
        };
        CausalLm::from_parts(cfg, &Tracked::new(weights, on_progress), tokenizer, template, bos, eos, device)
    }

    /// A llama.cpp GGUF file: weights (dequantised at load), config, tokenizer and chat template
    /// all come from the one file.
    pub fn from_gguf(gguf: Gguf, device: Device) -> Result<CausalLm> {
        CausalLm::from_gguf_with_progress(gguf, device, &|_| {})
    }

    /// [`CausalLm::from_gguf`], reporting weight bytes loaded as it goes.
    pub fn from_gguf_with_progress(gguf: Gguf, device: Device, on_progress: &dyn Fn(Progress)) -> Result<CausalLm> {
        let cfg = match ModelConfig::parse(gguf.file(), &gguf.llama_config_json()?)? {
            ModelConfig::Llama(c) => c,
            _ => return Err(Error::InvalidParam { op: "gguf", reason: format!("{}: not a Llama-family decoder", gguf.file()) }),
        };
        let tokenizer = gguf.tokenizer()?;
        let template = gguf.chat_template().ok();
        let name = |key: &str| gguf.get_u32(key).ok().and_then(|id| tokenizer.decode(&[id], false).ok());
        let (bos, eos) = (name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id"));
        // The CPU runs Q8_0 / Q4_0 / Q4_1 weights as they are (`crate::quant`); a GPU gets f32.
        let weights = GgufWeights::new(gguf)?.keep_quantized(device.kind() == "cpu");
        CausalLm::from_parts(cfg, &Tracked::new(&weights, on_progress), tokenizer, template, bos, eos, device)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_gguf_path(path: &std::path::Path, device: Device) -> Result<CausalLm> {
        CausalLm::from_gguf(Gguf::open(path)?, device)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_gguf_path_with_progress(path: &std::path::Path, device: Device, on_progress: &dyn Fn(Progress)) -> Result<CausalLm> {
        CausalLm::from_gguf_with_progress(Gguf::open(path)?, device, on_progress)
    }

    pub fn from_parts(
        cfg: LlamaConfig,
        weights: &dyn Weights,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        device: Device,
    ) -> Result<CausalLm> {
        let mut eos = cfg.eos_ids();
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_id(t)) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let model = Llama::load(&device, cfg, weights)?;
        Ok(CausalLm { model, tokenizer, chat_template, eos, bos_token, eos_token, device })
    }

    /// The prompt for one user message through the model's chat template, with the assistant turn
    /// opened (`add_generation_prompt`).
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let src = self.chat_template.as_deref().ok_or_else(|| Error::InvalidParam {
            op: "chat",
            reason: "this model has no chat template".into(),
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let bad = |e: minijinja::Error| Error::InvalidParam { op: "chat template", reason: e.to_string() };
        env.add_template("chat", src).map_err(bad)?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => user }],
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat").map_err(bad)?.render(ctx).map_err(bad)
    }

    /// Token ids of `text` (special tokens added as the tokenizer is configured to).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text)?.ids)
    }

    /// Logits `[T, V]` for every prompt position (a fresh cache).
    pub async fn prompt_logits(&self, ids: &[u32]) -> Result<TensorData> {
        self.prompt_logits_with(ids, None).await
    }

    /// [`CausalLm::prompt_logits`] with an adapter mix (`None`: the active mix).
    pub async fn prompt_logits_with(&self, ids: &[u32], mix: Option<&Mix>) -> Result<TensorData> {
        let mut cache = self.model.new_cache();
        let mixes = mix.map(|m| vec![m.clone()]);
        let l = self.model.forward_mixed(&self.device, &[ids], &mut cache, true, mixes.as_deref())?;
        self.device.download(&l).await
    }

    /// Generates after several prompts at once (one left-padded batch, one forward per step for all
    /// rows); each row stops at its own stop token or `max_tokens`. Row `r` samples with seed
    /// `s.seed + r`. Returns each row's generated ids.
    pub async fn generate_batch(&self, prompts: &[Vec<u32>], s: &Sampling) -> Result<Vec<Vec<u32>>> {
        self.generate_batch_with(prompts, s, None).await
    }

    /// [`CausalLm::generate_batch`] with one adapter mix per prompt (a mixed batch: one forward
    /// per step serves every row with its own adapters).
    pub async fn generate_batch_with(&self, prompts: &[Vec<u32>], s: &Sampling, mixes: Option<&[Mix]>) -> Result<Vec<Vec<u32>>> {
        let b = prompts.len();
        let mut cache = self.model.new_cache();
        let mut rngs: Vec<Rng> = (0..b).map(|r| Rng::new(s.seed.wrapping_add(r as u64))).collect();
        let mut history: Vec<Vec<u32>> = prompts.to_vec();
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
        let v = self.model.cfg.vocab_size;
        for _ in 0..s.max_tokens {
            let refs: Vec<&[u32]> = inputs.iter().map(|r| r.as_slice()).collect();
            let logits = self.model.forward_mixed(&self.device, &refs, &mut cache, false, mixes)?;
            let rows = self.device.download(&logits).await?;
            let rows = rows.as_f32()?;
            for r in 0..b {
                // Finished rows keep feeding their last token (masked in nothing, ignored after).
                if !done[r] {
                    let tok = sample(&rows[r * v..(r + 1) * v], &history[r], s, &mut rngs[r]);
                    out[r].push(tok);
                    history[r].push(tok);
                    done[r] = self.eos.contains(&tok) || s.stop.contains(&tok);
                }
                inputs[r] = vec![*history[r].last().unwrap_or(&0)];
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    }

    /// Generates after `prompt`; `on_token(id, new_text)` gets each token and the text it adds, and
    /// may return `false` to stop. Returns the generated ids (stop token included when hit).
    pub async fn generate(&self, prompt: &[u32], s: &Sampling, on_token: impl FnMut(u32, &str) -> bool) -> Result<Vec<u32>> {
        self.generate_with(prompt, s, None, on_token).await
    }

    /// [`CausalLm::generate`] with an adapter mix (`None`: the active mix).
    pub async fn generate_with(&self, prompt: &[u32], s: &Sampling, mix: Option<&Mix>, mut on_token: impl FnMut(u32, &str) -> bool) -> Result<Vec<u32>> {
        let mixes = mix.map(|m| vec![m.clone()]);
        let mut cache = self.model.new_cache();
        let mut rng = Rng::new(s.seed);
        let mut all = prompt.to_vec();
        let mut out = Vec::new();
        let mut text_len = 0;
        let mut next_input = prompt.to_vec();
        while out.len() < s.max_tokens {
            let logits = self.model.forward_mixed(&self.device, &[&next_input], &mut cache, false, mixes.as_deref())?;
            let row = self.device.download(&logits).await?;
            let tok = sample(row.as_f32()?, &all, s, &mut rng);
            out.push(tok);
            all.push(tok);
            let stop = self.eos.contains(&tok) || s.stop.contains(&tok);
            let text = self.tokenizer.decode(&out, true)?;
            // Emit only whole characters: a byte-level token may end mid-way through one.
            let piece = match text.get(text_len..) {
                Some(p) if !text.ends_with('\u{FFFD}') => {
                    let p = p.to_string();
                    text_len = text.len();
                    p
                }
                _ => String::new(),
            };
            if !on_token(tok, &piece) || stop {
                break;
            }
            next_input = vec![tok];
        }
        Ok(out)
    }
}
