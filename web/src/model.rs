//! `Model`: a Hugging Face folder (an encoder such as MiniLM, or a Llama-family decoder) or a GGUF
//! file, handed over as buffers by the JS facade (which fetches URLs, reads `File`s, reports
//! progress). The buffers stay on the JS side: core reads them by byte ranges ([`JsBytes`]), so the
//! weights reach the device one tensor at a time without a whole copy in the wasm heap. Type
//! conversion only; the work is in `taskloom::models`. A file set with
//! `taskloom.json` is a multi-task model (`taskloom::multitask`); an hf trunk's files come under
//! `trunk/` in the same object.

use crate::{bad_input, choose_device, core_err, opt_field};
use std::collections::BTreeMap;
use std::sync::Arc;
use taskloom::formats::gguf::Gguf;
use taskloom::formats::RangeRead;
use taskloom::models::causal::CausalLm;
use taskloom::models::config::ModelConfig;
use taskloom::models::generate::Sampling;
use taskloom::lora::runtime::Mix;
use taskloom::lora::Adapter;
use taskloom::models::hf::{Encoder, Files, RangedFiles};
use taskloom::multitask::{Input, MultiTask, Routing};
use wasm_bindgen::prelude::*;

#[allow(clippy::large_enum_variant)] // one per loaded model
enum Kind {
    Encoder(Encoder),
    Decoder(CausalLm),
    /// With the routing statistics of the last `run`.
    MultiTask(Box<MultiTask>, std::cell::RefCell<Routing>),
}

fn unsupported(what: &str) -> JsError {
    crate::js_err("UNSUPPORTED", format!("{what} is not available on a multi-task model"))
}

pub(crate) fn to_js(v: &impl serde::Serialize) -> Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| crate::js_err("INTERNAL", e))
}

/// `opts.tasks`: an array of task names, or absent (all loaded tasks).
fn tasks_opt(opts: &JsValue) -> Result<Option<Vec<String>>, JsError> {
    match opt_field(opts, "tasks")? {
        None => Ok(None),
        Some(v) => {
            if let Some(s) = v.as_string() {
                return Ok(Some(vec![s]));
            }
            if !js_sys::Array::is_array(&v) {
                return Err(bad_input("options.tasks must be an array of task names"));
            }
            js_sys::Array::from(&v).iter().map(|t| t.as_string().ok_or_else(|| bad_input("options.tasks must hold strings"))).collect::<Result<Vec<_>, _>>().map(Some)
        }
    }
}

#[wasm_bindgen]
pub struct Model {
    kind: Kind,
}

/// A `Uint8Array` left on the JS side, read by ranges (`subarray(..).copyTo`: synchronous, one copy
/// straight into the destination).
struct JsBytes(js_sys::Uint8Array);

impl RangeRead for JsBytes {
    fn len(&self) -> u64 {
        self.0.length() as u64
    }
    fn read_at(&self, start: u64, out: &mut [u8]) -> std::io::Result<()> {
        // A detached buffer (transferred away meanwhile) has length 0, so it fails here too.
        let end = start.checked_add(out.len() as u64).filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("bytes {start}.. past the end of a {}-byte buffer", self.len())));
        };
        // end <= length, a u32.
        self.0.subarray(start as u32, end as u32).copy_to(out);
        Ok(())
    }
}

/// `{ "config.json": Uint8Array | ArrayBuffer, ... }` → relative path → a reader of the buffer
/// (not copied).
pub(crate) fn files_from_js(files: &JsValue) -> Result<RangedFiles, JsError> {
    if !files.is_object() {
        return Err(bad_input("model files must be an object of { path: Uint8Array | ArrayBuffer }"));
    }
    let obj = js_sys::Object::from(files.clone());
    let mut out = BTreeMap::new();
    for entry in js_sys::Object::entries(&obj).iter() {
        let pair = js_sys::Array::from(&entry);
        let name = pair.get(0).as_string().unwrap_or_default();
        let v = pair.get(1);
        let bytes = if v.is_instance_of::<js_sys::Uint8Array>() {
            js_sys::Uint8Array::from(v)
        } else if v.is_instance_of::<js_sys::ArrayBuffer>() {
            js_sys::Uint8Array::new(&v)
        } else {
            return Err(bad_input(format!("model file '{name}' must be a Uint8Array or ArrayBuffer")));
        };
        // One thread in wasm: the Arc is only shared ownership (core's readers take one).
        #[allow(clippy::arc_with_non_send_sync)]
        let reader: Arc<dyn RangeRead> = Arc::new(JsBytes(bytes));
        out.insert(name, reader);
    }
    Ok(RangedFiles(out))
}

fn num(opts: &JsValue, key: &str) -> Result<Option<f64>, JsError> {
    match opt_field(opts, key)? {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad_input(format!("options.{key} must be a number"))),
    }
}

/// An adapter choice: `"name"` (weight 1), `{ name: weight, ... }`, or null/undefined (none given).
fn mix_from_js(v: &JsValue) -> Result<Option<Mix>, JsError> {
    if v.is_null() || v.is_undefined() {
        return Ok(None);
    }
    if let Some(s) = v.as_string() {
        return Ok(Some(vec![(s, 1.0)]));
    }
    if !v.is_object() {
        return Err(bad_input("an adapter choice must be a name or an object of { name: weight }"));
    }
    let mut mix = Vec::new();
    for entry in js_sys::Object::entries(&js_sys::Object::from(v.clone())).iter() {
        let pair = js_sys::Array::from(&entry);
        let name = pair.get(0).as_string().unwrap_or_default();
        let w = pair.get(1).as_f64().ok_or_else(|| bad_input(format!("adapter weight for '{name}' must be a number")))?;
        mix.push((name, w as f32));
    }
    Ok(Some(mix))
}

/// `opts.adapter` (or `opts.adapters`) of a request.
fn request_mix(opts: &JsValue) -> Result<Option<Mix>, JsError> {
    match opt_field(opts, "adapter")? {
        Some(v) => mix_from_js(&v),
        None => match opt_field(opts, "adapters")? {
            Some(v) => mix_from_js(&v),
            None => Ok(None),
        },
    }
}

#[wasm_bindgen]
impl Model {
    /// Registers a PEFT adapter from its files (`adapter_config.json`, `adapter_model.safetensors`);
    /// the base weights are not reloaded.
    #[wasm_bindgen(js_name = addAdapter)]
    pub fn add_adapter(&mut self, name: String, files: JsValue) -> Result<(), JsError> {
        let ad = Adapter::load(&name, &files_from_js(&files)?).map_err(core_err)?;
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.add_adapter(&e.device, ad),
            Kind::Decoder(d) => d.model.add_adapter(&d.device, ad),
            Kind::MultiTask(..) => return Err(unsupported("addAdapter()")),
        }
        .map_err(core_err)
    }

    /// Combines registered adapters into a new one registered as `name` (PEFT
    /// `add_weighted_adapter`, as `taskloom lora combine`). `opts`: `adapters` `{ name: weight }`,
    /// `combination` (linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, their `_svd`
    /// forms), `density`, `svdRank`, `seed` (DARE), `majoritySign` ("total" | "frequency").
    /// Resolves to `{ r, modules }` of the new adapter.
    #[wasm_bindgen(js_name = combineAdapters)]
    pub fn combine_adapters(&mut self, name: String, opts: JsValue) -> Result<JsValue, JsError> {
        use taskloom::lora::combine::{combine, Combination, CombineOptions, MajoritySign};
        let combination: Combination = match opt_field(&opts, "combination")? {
            Some(v) => v.as_string().ok_or_else(|| bad_input("options.combination must be a string"))?.parse().map_err(core_err)?,
            None => Combination::Linear,
        };
        let mix = match opt_field(&opts, "adapters")? {
            Some(v) => mix_from_js(&v)?.unwrap_or_default(),
            None => Vec::new(),
        };
        if mix.is_empty() {
            return Err(bad_input("options.adapters must name at least one registered adapter: { name: weight }"));
        }
        let mut o = CombineOptions::new(name, combination);
        o.density = num(&opts, "density")?;
        o.svd_rank = num(&opts, "svdRank")?.map(|v| v as usize);
        o.seed = num(&opts, "seed")?.map_or(0, |v| v as u64);
        if let Some(v) = opt_field(&opts, "majoritySign")? {
            o.majority_sign = v.as_string().ok_or_else(|| bad_input("options.majoritySign must be a string"))?.parse::<MajoritySign>().map_err(core_err)?;
        }
        let set = match &self.kind {
            Kind::Encoder(e) => &e.bert.lora,
            Kind::Decoder(d) => &d.model.lora,
            Kind::MultiTask(..) => return Err(unsupported("combineAdapters()")),
        };
        let held = mix
            .iter()
            .map(|(n, w)| set.get(n).cloned().map(|a| (a, *w)).ok_or_else(|| bad_input(format!("adapter '{n}' is not registered (registered: {:?})", set.names()))))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<(&Adapter, f32)> = held.iter().map(|(a, w)| (a.as_ref(), *w)).collect();
        let out = combine(&inputs, &o).map_err(core_err)?;
        let info = BTreeMap::from([("r", out.config.r), ("modules", out.modules.len())]);
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.add_adapter(&e.device, out).map_err(core_err)?,
            Kind::Decoder(d) => d.model.add_adapter(&d.device, out).map_err(core_err)?,
            Kind::MultiTask(..) => return Err(unsupported("combineAdapters()")),
        }
        to_js(&info)
    }

    #[wasm_bindgen(js_name = removeAdapter)]
    pub fn remove_adapter(&mut self, name: String) -> Result<(), JsError> {
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.remove_adapter(&e.device, &name),
            Kind::Decoder(d) => d.model.remove_adapter(&d.device, &name),
            Kind::MultiTask(..) => return Err(unsupported("removeAdapter()")),
        }
        .map_err(core_err)
    }

    /// The default mix: `{ a: 0.7, b: 0.3 }`, a name, or `{}` for the base model.
    #[wasm_bindgen(js_name = setAdapters)]
    pub fn set_adapters(&mut self, mix: JsValue) -> Result<(), JsError> {
        let mix = mix_from_js(&mix)?.unwrap_or_default();
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.set_adapters(mix),
            Kind::Decoder(d) => d.model.set_adapters(mix),
            Kind::MultiTask(..) => return Err(unsupported("setAdapters()")),
        }
        .map_err(core_err)
    }

    /// Names of the registered adapters.
    pub fn adapters(&self) -> Vec<String> {
        match &self.kind {
            Kind::Encoder(e) => e.bert.lora.names(),
            Kind::Decoder(d) => d.model.lora.names(),
            Kind::MultiTask(..) => Vec::new(),
        }
    }

    /// Bakes the default mix into the weights (only the touched tensors are recomputed).
    pub fn fuse(&mut self) -> Result<(), JsError> {
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.fuse(&e.device),
            Kind::Decoder(d) => d.model.fuse(&d.device),
            Kind::MultiTask(..) => return Err(unsupported("fuse()")),
        }
        .map_err(core_err)
    }

    /// Restores the original weights exactly.
    pub fn unfuse(&mut self) -> Result<(), JsError> {
        match &mut self.kind {
            Kind::Encoder(e) => e.bert.unfuse(),
            Kind::Decoder(d) => d.model.unfuse(),
            Kind::MultiTask(..) => return Err(unsupported("unfuse()")),
        }
        .map_err(core_err)
    }

    /// Class logits of a sequence classifier, one Float32Array per text; `opts.adapter` as for
    /// `generate`. Label names: `labels()`.
    pub async fn classify(&self, texts: Vec<String>, opts: JsValue) -> Result<Vec<js_sys::Float32Array>, JsError> {
        let Kind::Encoder(e) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "classify() needs a classification model")) };
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let input = e.tokenize(&refs).map_err(core_err)?;
        let mixes = request_mix(&opts)?.map(|m| vec![m; texts.len()]);
        let l = e.bert.classify(&e.device, &input, mixes.as_deref()).await.map_err(core_err)?;
        let n = l.dims()[1];
        let v = l.as_f32().map_err(core_err)?;
        Ok(v.chunks(n.max(1)).map(js_sys::Float32Array::from).collect())
    }

    /// Class names of a sequence classifier (empty for other models).
    pub fn labels(&self) -> Vec<String> {
        match &self.kind {
            Kind::Encoder(e) => e.bert.head.as_ref().map(|h| h.labels.clone()).unwrap_or_default(),
            Kind::Decoder(_) | Kind::MultiTask(..) => Vec::new(),
        }
    }

    /// `files`: the model's files by relative path. A single `*.gguf` entry loads that file.
    /// `opts.device`: "auto" | "webgpu" | "cpu".
    pub async fn load(files: JsValue, opts: JsValue) -> Result<Model, JsError> {
        let device = choose_device(&opts).await?;
        let files = files_from_js(&files)?;
        if let Some((name, reader)) = files.gguf_name().and_then(|n| files.0.get(&n).map(|r| (n, r.clone()))) {
            let lm = CausalLm::from_gguf(Gguf::from_reader(name, reader).map_err(core_err)?, device).map_err(core_err)?;
            return Ok(Model { kind: Kind::Decoder(lm) });
        }
        if files.0.contains_key(taskloom::multitask::spec::FILE) {
            let (trunk, own): (BTreeMap<_, _>, BTreeMap<_, _>) = files.0.into_iter().partition(|(k, _)| k.starts_with("trunk/"));
            let trunk = RangedFiles(trunk.into_iter().map(|(k, v)| (k["trunk/".len()..].to_string(), v)).collect());
            let tasks = tasks_opt(&opts)?;
            let names: Option<Vec<&str>> = tasks.as_ref().map(|t| t.iter().map(|s| s.as_str()).collect());
            let trunk_ref: Option<&dyn Files> = if trunk.0.is_empty() { None } else { Some(&trunk) };
            let m = MultiTask::load(&RangedFiles(own), trunk_ref, device, names.as_deref()).map_err(core_err)?;
            return Ok(Model { kind: Kind::MultiTask(Box::new(m), Default::default()) });
        }
        let mem = files;
        let cfg = mem.read("config.json").map_err(core_err)?.ok_or_else(|| bad_input("model files lack config.json (or a .gguf file)"))?;
        let kind = match ModelConfig::parse("config.json", &String::from_utf8_lossy(&cfg)).map_err(core_err)? {
            ModelConfig::Bert(_) => Kind::Encoder(Encoder::load(&mem, device).map_err(core_err)?),
            _ => Kind::Decoder(CausalLm::load(&mem, device).map_err(core_err)?),
        };
        Ok(Model { kind })
    }

    /// "encoder", "decoder" or "multitask".
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        match self.kind {
            Kind::Encoder(_) => "encoder".into(),
            Kind::Decoder(_) => "decoder".into(),
            Kind::MultiTask(..) => "multitask".into(),
        }
    }

    /// Multi-task models: runs `opts.tasks` (default: every loaded task) on one input (text, or an
    /// array of pixel values) → `{ [task]: { label, index, score, values, probs } }`, or for a
    /// token-level task an array of those.
    pub async fn run(&self, input: JsValue, opts: JsValue) -> Result<JsValue, JsError> {
        let Kind::MultiTask(m, routing) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "run() needs a multi-task model (taskloom.json)")) };
        let input = if let Some(s) = input.as_string() {
            Input::Text(s)
        } else if js_sys::Array::is_array(&input) || input.is_instance_of::<js_sys::Float32Array>() || input.is_instance_of::<js_sys::Uint8Array>() || input.is_instance_of::<js_sys::Float64Array>() {
            let arr = js_sys::Array::from(&input);
            Input::Image(arr.iter().map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| bad_input("pixel values must be numbers"))).collect::<Result<_, _>>()?)
        } else {
            return Err(bad_input("input must be a string (text models) or an array of pixel values (image models)"));
        };
        let tasks = tasks_opt(&opts)?;
        let names: Option<Vec<&str>> = tasks.as_ref().map(|t| t.iter().map(|s| s.as_str()).collect());
        let out = m.run(std::slice::from_ref(&input), names.as_deref()).await.map_err(core_err)?;
        *routing.borrow_mut() = out.routing;
        to_js(&out.outputs[0])
    }

    /// Multi-task models: tokens per expert of the last `run`: `{ task: { block: [count per expert] } }`.
    #[wasm_bindgen(js_name = routingStats)]
    pub fn routing_stats(&self) -> Result<JsValue, JsError> {
        let Kind::MultiTask(_, routing) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "routingStats() needs a multi-task model")) };
        let routing = routing.borrow();
        let r: BTreeMap<&String, BTreeMap<String, &Vec<u64>>> = routing.iter().map(|(t, b)| (t, b.iter().map(|(k, v)| (k.to_string(), v)).collect())).collect();
        to_js(&r)
    }

    /// Multi-task models: bytes uploaded for the loaded tasks (`allTasksBytes()`: for every task).
    #[wasm_bindgen(js_name = residentBytes)]
    pub fn resident_bytes(&self) -> Result<f64, JsError> {
        let Kind::MultiTask(m, _) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "residentBytes() needs a multi-task model")) };
        Ok(m.resident_bytes() as f64)
    }

    #[wasm_bindgen(js_name = allTasksBytes)]
    pub fn all_tasks_bytes(&self) -> Result<f64, JsError> {
        let Kind::MultiTask(m, _) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "allTasksBytes() needs a multi-task model")) };
        Ok(m.all_tasks_bytes() as f64)
    }

    /// Multi-task models: the loaded tasks.
    pub fn tasks(&self) -> Vec<String> {
        match &self.kind {
            Kind::MultiTask(m, _) => m.tasks().to_vec(),
            _ => Vec::new(),
        }
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        let d = match &self.kind {
            Kind::Encoder(e) => &e.device,
            Kind::Decoder(d) => &d.device,
            Kind::MultiTask(m, _) => &m.device,
        };
        if d.kind() == "gpu" { "webgpu".into() } else { "cpu".into() }
    }

    /// Token ids of `text` with the model's tokenizer.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        let tok = match &self.kind {
            Kind::Encoder(e) => &e.tokenizer,
            Kind::Decoder(d) => &d.tokenizer,
            Kind::MultiTask(..) => return Err(unsupported("encode()")),
        };
        tok.encode(text).map(|e| e.ids).map_err(core_err)
    }

    /// Logits `[T, V]` (row-major) for every position of `ids` (decoders), from a fresh cache.
    pub async fn logits(&self, ids: Vec<u32>, opts: JsValue) -> Result<js_sys::Float32Array, JsError> {
        let Kind::Decoder(lm) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "logits() needs a decoder model")) };
        let mix = request_mix(&opts)?;
        let l = lm.prompt_logits_with(&ids, mix.as_ref()).await.map_err(core_err)?;
        Ok(js_sys::Float32Array::from(l.as_f32().map_err(core_err)?))
    }

    /// Pooled sentence embeddings (encoders): one Float32Array per text.
    pub async fn embed(&self, texts: Vec<String>, opts: JsValue) -> Result<Vec<js_sys::Float32Array>, JsError> {
        let Kind::Encoder(e) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "embed() needs an encoder model")) };
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mixes = request_mix(&opts)?.map(|m| vec![m; texts.len()]);
        let v = e.embed_with(&refs, mixes.as_deref()).await.map_err(core_err)?;
        Ok(v.iter().map(|x| js_sys::Float32Array::from(&x[..])).collect())
    }

    /// Generates after `prompt` (decoders), calling `onToken(id, text)` for each token; a `false`
    /// return stops. `opts`: maxTokens, temperature, topK, topP, repetitionPenalty, seed, chat.
    /// Resolves to the generated ids.
    pub async fn generate(&self, prompt: String, opts: JsValue, on_token: js_sys::Function) -> Result<Vec<u32>, JsError> {
        let Kind::Decoder(lm) = &self.kind else { return Err(crate::js_err("UNSUPPORTED", "generate() needs a decoder model")) };
        let d = Sampling::default();
        let s = Sampling {
            max_tokens: num(&opts, "maxTokens")?.map_or(d.max_tokens, |v| v as usize),
            temperature: num(&opts, "temperature")?.map_or(d.temperature, |v| v as f32),
            top_k: num(&opts, "topK")?.map_or(d.top_k, |v| v as usize),
            top_p: num(&opts, "topP")?.map_or(d.top_p, |v| v as f32),
            repetition_penalty: num(&opts, "repetitionPenalty")?.map_or(d.repetition_penalty, |v| v as f32),
            seed: num(&opts, "seed")?.map_or(d.seed, |v| v as u64),
            stop: Vec::new(),
        };
        let chat = opt_field(&opts, "chat")?.is_some_and(|v| v.is_truthy());
        let text = if chat { lm.chat_prompt(&prompt).map_err(core_err)? } else { prompt };
        let ids = lm.encode(&text).map_err(core_err)?;
        let mix = request_mix(&opts)?;
        let out = lm
            .generate_with(&ids, &s, mix.as_ref(), |id, piece| {
                let r = on_token.call2(&JsValue::NULL, &JsValue::from(id), &JsValue::from_str(piece));
                // A callback that throws stops generation like one that returns false.
                matches!(r, Ok(v) if v != JsValue::FALSE)
            })
            .await
            .map_err(core_err)?;
        Ok(out)
    }
}
