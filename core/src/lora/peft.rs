//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, read and written
//! unchanged.
//!
//! Keys: `base_model.model.<module>.lora_A.weight [R, In]`, `….lora_B.weight [Out, R]`, and the
//! `modules_to_save` copies as `base_model.model.<module>.<param>` (older writers may add
//! `.modules_to_save.<adapter>`; both are read).
//!
//! Config keys: every key PEFT 0.21's `LoraConfig` writes is known. Features taskloom does not
//! implement (DoRA, LoRA biases, layer replication, target_parameters, trainable tokens, QALoRA,
//! aLoRA, ...) are an error when set to a non-default value. A key PEFT does not define is an error
//! when its value is not null/false/empty (it would change the adapter in a way we cannot know).

use super::{Adapter, LoraConfig, LoraModule, Targets};
use crate::error::{Error, Result};
use crate::formats::safetensors::SafeTensors;
use crate::models::hf::Files;
use crate::tensor::TensorData;
use serde_json::Value;
use std::collections::BTreeMap;

const PREFIX: &str = "base_model.model.";

/// Keys of PEFT's `LoraConfig` that need nothing from the runtime whatever their value.
const HARMLESS: &[&str] = &[
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "corda_config", "eva_config", "exclude_modules",
    "fan_in_fan_out", "inference_mode", "init_lora_weights", "layers_pattern", "layers_to_transform", "loftq_config",
    "lora_alpha", "lora_dropout", "lora_ga_config", "megatron_core", "modules_to_save", "peft_type", "peft_version",
    "qalora_group_size", "r", "rank_pattern", "revision", "target_modules", "task_type", "use_rslora",
    "ensure_weight_tying", "bias",
];
/// Keys of PEFT's `LoraConfig` for features taskloom does not run: an error when set.
const UNSUPPORTED: &[&str] = &[
    "alora_invocation_tokens", "arrow_config", "kasa_config", "layer_replication", "lora_bias", "megatron_config",
    "monteclora_config", "target_parameters", "trainable_token_indices", "use_bdlora", "use_dora", "use_qalora",
    "velora_config",
];

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn bad(adapter: &str, reason: impl Into<String>) -> Error {
    Error::Adapter { adapter: adapter.into(), reason: reason.into() }
}

/// PEFT's `get_pattern_key`: the first pattern `p` with `re.match(r"(.*\.)?(p)$", module)`.
fn pattern_value<'a, T>(adapter: &str, patterns: &'a BTreeMap<String, T>, order: &[String], module: &str) -> Result<Option<&'a T>> {
    for key in order {
        let re = regex::Regex::new(&format!(r"^(.*\.)?({key})$")).map_err(|e| bad(adapter, format!("pattern '{key}': {e}")))?;
        if re.is_match(module) {
            return Ok(patterns.get(key));
        }
    }
    Ok(None)
}

impl LoraConfig {
    /// Parses and checks `adapter_config.json` (`adapter` names it in errors).
    pub fn parse(adapter: &str, text: &str) -> Result<LoraConfig> {
        let raw: Value = serde_json::from_str(text).map_err(|e| bad(adapter, format!("adapter_config.json: {e}")))?;
        let obj = raw.as_object().ok_or_else(|| bad(adapter, "adapter_config.json is not a JSON object"))?;
        if let Some(t) = obj.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(bad(adapter, format!("peft_type '{t}' is not supported (only LORA)")));
            }
        }
        for (k, v) in obj {
            if HARMLESS.contains(&k.as_str()) {
                continue;
            }
            if UNSUPPORTED.contains(&k.as_str()) {
                if !is_default(v) {
                    return Err(bad(adapter, format!("adapter_config.json sets '{k}' = {v}, which taskloom does not support")));
                }
            } else if !is_default(v) {
                return Err(bad(adapter, format!("adapter_config.json has an unknown key '{k}' = {v}")));
            }
        }
        if let Some(b) = obj.get("bias").and_then(Value::as_str) {
            if b != "none" {
                return Err(bad(adapter, format!("bias '{b}' is not supported (only \"none\")")));
            }
        }
        let r = match obj.get("r").and_then(Value::as_u64) {
            Some(r) if r > 0 => r as usize,
            Some(_) => return Err(bad(adapter, "r must be at least 1")),
            None => return Err(bad(adapter, "adapter_config.json has no integer 'r'")),
        };
        let lora_alpha = obj.get("lora_alpha").map_or(Some(8.0), Value::as_f64).ok_or_else(|| bad(adapter, "lora_alpha is not a number"))? as f32;
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        let target_modules = match obj.get("target_modules") {
            Some(Value::String(s)) => {
                regex::Regex::new(s).map_err(|e| bad(adapter, format!("target_modules regex: {e}")))?;
                Targets::Regex(s.clone())
            }
            Some(Value::Array(a)) => Targets::Names(
                a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(adapter, "target_modules holds a non-string"))).collect::<Result<_>>()?,
            ),
            Some(Value::Null) | None => Targets::Names(Vec::new()),
            Some(v) => return Err(bad(adapter, format!("target_modules {v} is neither a list nor a string"))),
        };
        let map = |k: &str| -> Result<Vec<(String, f64)>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(p, v)| v.as_f64().map(|x| (p.clone(), x)).ok_or_else(|| bad(adapter, format!("{k}['{p}'] is not a number"))))
                    .collect(),
                Some(v) => Err(bad(adapter, format!("{k} {v} is not an object"))),
            }
        };
        let mut rank_pattern = BTreeMap::new();
        for (p, v) in map("rank_pattern")? {
            if v < 1.0 || v.fract() != 0.0 {
                return Err(bad(adapter, format!("rank_pattern['{p}'] = {v} is not a rank ≥ 1")));
            }
            rank_pattern.insert(p, v as usize);
        }
        let alpha_pattern = map("alpha_pattern")?.into_iter().map(|(p, v)| (p, v as f32)).collect();
        let modules_to_save = match obj.get("modules_to_save") {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        Ok(LoraConfig {
            r,
            lora_alpha,
            use_rslora: flag("use_rslora"),
            fan_in_fan_out: flag("fan_in_fan_out"),
            target_modules,
            rank_pattern,
            alpha_pattern,
            modules_to_save,
            raw,
        })
    }

    /// Reads and parses `adapter_config.json` from an adapter's files.
    pub fn read(adapter: &str, files: &dyn Files) -> Result<LoraConfig> {
        let bytes = files.read("adapter_config.json")?.ok_or_else(|| bad(adapter, format!("{}: no adapter_config.json", files.name())))?;
        LoraConfig::parse(adapter, &String::from_utf8_lossy(&bytes))
    }

    /// Does PEFT target `module` (a full module path) with this config?
    pub fn targets(&self, module: &str) -> bool {
        match &self.target_modules {
            Targets::Regex(r) => regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(module)),
            Targets::Names(n) => n.iter().any(|t| module == t || module.ends_with(&format!(".{t}"))),
        }
    }

    /// `(r, scale)` for `module`, with the rank and alpha patterns applied (PEFT `update_layer`).
    pub fn rank_and_scale(&self, adapter: &str, module: &str) -> Result<(usize, f32)> {
        // PEFT iterates the pattern dicts in insertion order; JSON object order is kept in `raw`.
        let order = |k: &str| -> Vec<String> { self.raw.get(k).and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default() };
        let r = *pattern_value(adapter, &self.rank_pattern, &order("rank_pattern"), module)?.unwrap_or(&self.r);
        let alpha = *pattern_value(adapter, &self.alpha_pattern, &order("alpha_pattern"), module)?.unwrap_or(&self.lora_alpha);
        let scale = if self.use_rslora { alpha / (r as f32).sqrt() } else { alpha / r as f32 };
        Ok((r, scale))
    }
}

fn f32_data(adapter: &str, key: &str, t: TensorData) -> Result<Vec<f32>> {
    if !t.dtype().is_float() {
        return Err(bad(adapter, format!("tensor '{key}' has dtype {}, not a float type", t.dtype())));
    }
    let v = t.to_f32_vec();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(adapter, format!("tensor '{key}' holds a non-finite value ({}) at index {i}", v[i])));
    }
    Ok(v)
}

impl Adapter {
    /// Reads a PEFT adapter from its files (`adapter_config.json`, `adapter_model.safetensors`).
    pub fn load(name: &str, files: &dyn Files) -> Result<Adapter> {
        let config = LoraConfig::read(name, files)?;
        let st = match files.safetensors("adapter_model.safetensors")? {
            Some(st) => st,
            None if files.read("adapter_model.bin")?.is_some() => {
                return Err(bad(name, "adapter_model.bin (a pickle) is not supported; save the adapter with safe_serialization"))
            }
            None => return Err(bad(name, format!("{}: no adapter_model.safetensors", files.name()))),
        };
        Adapter::from_parts(name, config, &st)
    }

    /// Reads a PEFT adapter folder from disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(name: &str, dir: impl AsRef<std::path::Path>) -> Result<Adapter> {
        Adapter::load(name, &crate::models::hf::DirFiles(dir.as_ref().to_path_buf()))
    }

    /// Builds an adapter from a parsed config and its weights file.
    pub fn from_parts(name: &str, config: LoraConfig, st: &SafeTensors) -> Result<Adapter> {
        let mut a_map: BTreeMap<String, TensorData> = BTreeMap::new();
        let mut b_map: BTreeMap<String, TensorData> = BTreeMap::new();
        let mut saved = BTreeMap::new();
        for key in st.names() {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                return Err(bad(name, format!("tensor '{key}' does not start with '{PREFIX}' (not a PEFT LoRA file?)")));
            };
            if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                a_map.insert(m.to_string(), st.tensor(key)?);
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                b_map.insert(m.to_string(), st.tensor(key)?);
            } else if rest.contains(".lora_") {
                return Err(bad(name, format!("tensor '{key}' is a LoRA variant taskloom does not support")));
            } else if config.modules_to_save.iter().any(|m| rest == m || rest.starts_with(&format!("{m}.")) || rest.contains(&format!(".{m}."))) {
                // `classifier.modules_to_save.default.weight` (older writers) → `classifier.weight`.
                let clean = match rest.find(".modules_to_save.") {
                    Some(i) => {
                        let tail = &rest[i + ".modules_to_save.".len()..];
                        format!("{}.{}", &rest[..i], tail.split_once('.').map_or(tail, |(_, p)| p))
                    }
                    None => rest.to_string(),
                };
                saved.insert(clean, st.tensor(key)?);
            } else {
                return Err(bad(name, format!("tensor '{key}' is neither a LoRA factor nor one of modules_to_save {:?}", config.modules_to_save)));
            }
        }
        let mut modules = BTreeMap::new();
        for (m, a) in a_map {
            let b = b_map.remove(&m).ok_or_else(|| bad(name, format!("module '{m}' has lora_A but no lora_B")))?;
            let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
            if ad.len() != 2 || bd.len() != 2 || ad[0] != bd[1] {
                return Err(bad(name, format!("module '{m}': lora_A {ad:?} and lora_B {bd:?} are not [R, In] and [Out, R]")));
            }
            let (r, scale) = config.rank_and_scale(name, &m)?;
            if r != ad[0] {
                return Err(bad(name, format!("module '{m}': lora_A has rank {}, the config gives r = {r}", ad[0])));
            }
            if ad[1] == 0 || bd[0] == 0 {
                return Err(bad(name, format!("module '{m}': empty factor shapes {ad:?} / {bd:?}")));
            }
            let a_v = f32_data(name, &format!("{m}.lora_A.weight"), a)?;
            let b_v = f32_data(name, &format!("{m}.lora_B.weight"), b)?;
            modules.insert(m, LoraModule { a: a_v, b: b_v, r, inp: ad[1], out: bd[0], scale });
        }
        if let Some(m) = b_map.keys().next() {
            return Err(bad(name, format!("module '{m}' has lora_B but no lora_A")));
        }
        if modules.is_empty() && saved.is_empty() {
            return Err(bad(name, "the weights file holds no LoRA factors"));
        }
        for (k, t) in &saved {
            if t.dtype().is_float() {
                f32_data(name, k, t.clone())?;
            }
        }
        Ok(Adapter { name: name.to_string(), config, modules, saved })
    }

    /// The adapter as PEFT's `save_pretrained` writes it: `adapter_config.json` (the config read,
    /// with `r`, `lora_alpha`, `target_modules` and the patterns updated) and
    /// `adapter_model.safetensors`.
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut raw = match &self.config.raw {
            Value::Object(o) => o.clone(),
            _ => serde_json::Map::new(),
        };
        let c = &self.config;
        raw.insert("peft_type".into(), "LORA".into());
        raw.insert("r".into(), c.r.into());
        // PEFT writes an integral alpha as an integer.
        let alpha = if c.lora_alpha.fract() == 0.0 && c.lora_alpha.abs() < 1e9 { serde_json::json!(c.lora_alpha as i64) } else { serde_json::json!(c.lora_alpha) };
        raw.insert("lora_alpha".into(), alpha);
        raw.insert("use_rslora".into(), c.use_rslora.into());
        raw.insert("fan_in_fan_out".into(), c.fan_in_fan_out.into());
        raw.insert(
            "target_modules".into(),
            match &c.target_modules {
                Targets::Regex(r) => Value::String(r.clone()),
                Targets::Names(n) => n.iter().cloned().map(Value::String).collect(),
            },
        );
        raw.insert("rank_pattern".into(), serde_json::json!(c.rank_pattern));
        let alphas: serde_json::Map<String, Value> = c
            .alpha_pattern
            .iter()
            .map(|(k, v)| (k.clone(), if v.fract() == 0.0 && v.abs() < 1e9 { serde_json::json!(*v as i64) } else { serde_json::json!(v) }))
            .collect();
        raw.insert("alpha_pattern".into(), Value::Object(alphas));
        raw.insert(
            "modules_to_save".into(),
            if c.modules_to_save.is_empty() { Value::Null } else { c.modules_to_save.iter().cloned().map(Value::String).collect() },
        );
        raw.entry("bias").or_insert("none".into());
        raw.entry("inference_mode").or_insert(true.into());
        let cfg = serde_json::to_vec_pretty(&Value::Object(raw)).map_err(|e| bad(&self.name, e.to_string()))?;
        let mut owned: Vec<(String, TensorData)> = Vec::new();
        for (m, l) in &self.modules {
            owned.push((format!("{PREFIX}{m}.lora_A.weight"), TensorData::f32(&[l.r, l.inp], l.a.clone())?));
            owned.push((format!("{PREFIX}{m}.lora_B.weight"), TensorData::f32(&[l.out, l.r], l.b.clone())?));
        }
        for (k, t) in &self.saved {
            owned.push((format!("{PREFIX}{k}"), t.clone()));
        }
        let refs: Vec<(&str, &TensorData)> = owned.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let st = crate::formats::safetensors::serialize(&refs, Some(&meta))?;
        Ok(vec![("adapter_config.json".into(), cfg), ("adapter_model.safetensors".into(), st)])
    }

    /// Writes the adapter folder (created if missing).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_dir(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let dir = dir.as_ref();
        let io = |p: &std::path::Path, source| Error::Io { path: p.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (f, bytes) in self.to_files()? {
            let p = dir.join(f);
            std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
        }
        Ok(())
    }
}
