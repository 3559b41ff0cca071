//! mergekit YAML recipes, read unchanged. Every key is known: an unknown key is an error that names
//! it (and, from the YAML parser, its line), never silently ignored. Keys mergekit has but taskloom
//! does not implement (`modules`, `tokenizer`, `residual_weight`, `tokenizer_source: union`, LoRA
//! model references) are errors too; `chat_template` is accepted with a warning.
//!
//! taskloom's own settings live under one extra top-level key, `taskloom:` (see [`Extensions`]), so a
//! recipe without it is exactly what mergekit reads.

use super::method::Method;
use super::setting::Setting;
use crate::error::{Error, Result};
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    merge_method: String,
    base_model: Option<Value>,
    models: Option<Vec<RawModel>>,
    slices: Option<Vec<RawSlice>>,
    modules: Option<Value>,
    parameters: Option<BTreeMap<String, Value>>,
    dtype: Option<String>,
    out_dtype: Option<String>,
    tokenizer_source: Option<Value>,
    tokenizer: Option<Value>,
    chat_template: Option<String>,
    taskloom: Option<Extensions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: Value,
    parameters: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlice {
    sources: Vec<RawSource>,
    base_model: Option<Value>,
    residual_weight: Option<f64>,
    parameters: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    model: Value,
    layer_range: [usize; 2],
    parameters: Option<BTreeMap<String, Value>>,
}

/// taskloom-only settings, under the top-level key `taskloom:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Extensions {
    /// `mergekit` (default) or `peft`: where TIES / DARE semantics differ (see the module docs of
    /// [`crate::merge`]).
    pub semantics: Option<Semantics>,
    /// A safetensors file of masks to use instead of drawing DARE / DELLA masks (see
    /// [`crate::merge::masks`]).
    pub masks: Option<String>,
    /// Seed of the counter-based RNG (overridden by `--random-seed`).
    pub random_seed: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Semantics {
    #[default]
    Mergekit,
    Peft,
}

/// Parameters of one scope, by name.
pub type Params = BTreeMap<String, Setting>;

/// One input of a slice: a model (index into [`Recipe::models`]) and the layers it contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub model: usize,
    /// `None` in the `models:` form: all of the model's layers.
    pub layer_range: Option<(usize, usize)>,
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub sources: Vec<Source>,
    pub base_model: Option<usize>,
    pub params: Params,
}

/// A validated recipe. Model references are the strings of the YAML (paths), deduplicated in
/// first-seen order.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub file: String,
    /// The YAML as given (written to the output folder as `mergekit_config.yml`, as mergekit does).
    pub text: String,
    pub method: Method,
    pub models: Vec<String>,
    pub base_model: Option<usize>,
    /// `true` for the `models:` form (one slice over every layer of every model).
    pub whole_models: bool,
    pub slices: Vec<Slice>,
    pub params: Params,
    pub dtype: Option<String>,
    pub out_dtype: Option<String>,
    /// Model whose tokenizer files are copied (default: the base model, else the first model).
    pub tokenizer_source: Option<usize>,
    pub ext: Extensions,
    /// Things the caller should show the user (accepted but not acted on).
    pub warnings: Vec<String>,
}

impl Recipe {
    /// Parses a recipe; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Recipe> {
        let bad = |reason: String| Error::Recipe { file: file.to_string(), reason };
        let raw: RawRecipe = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
        let method: Method = raw.merge_method.parse().map_err(bad)?;
        let unsupported = |key: &str, why: &str| bad(format!("`{key}` is not supported by taskloom ({why})"));
        if raw.modules.is_some() {
            return Err(unsupported("modules", "multi-module architectures; use `models` or `slices`"));
        }
        if raw.tokenizer.is_some() {
            return Err(unsupported("tokenizer", "vocabulary surgery; use `tokenizer_source: base` or a model"));
        }
        let mut models: Vec<String> = Vec::new();
        let mut model_ref = |v: &Value, at: &str| -> Result<usize> {
            let s = match v {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad(format!("{at}: a model must be a path string, found {v:?} (LoRA and hub references are not supported)"))),
            };
            if s.contains('+') && !std::path::Path::new(&s).exists() {
                return Err(bad(format!("{at}: '{s}' looks like a model+LoRA reference, which is not supported")));
            }
            Ok(match models.iter().position(|m| *m == s) {
                Some(i) => i,
                None => {
                    models.push(s);
                    models.len() - 1
                }
            })
        };
        let base_model = raw.base_model.as_ref().map(|v| model_ref(v, "base_model")).transpose()?;
        let params = |m: Option<BTreeMap<String, Value>>, at: &str| -> Result<Params> {
            m.unwrap_or_default()
                .into_iter()
                .map(|(k, v)| Setting::from_yaml(&v).map(|s| (k.clone(), s)).map_err(|e| bad(format!("{at}.{k}: {e}"))))
                .collect()
        };
        let (whole_models, slices) = match (raw.models, raw.slices) {
            (Some(ms), None) => {
                if ms.is_empty() {
                    return Err(bad("`models` is empty".into()));
                }
                let mut sources = Vec::new();
                for (i, m) in ms.into_iter().enumerate() {
                    let at = format!("models[{i}]");
                    let model = model_ref(&m.model, &at)?;
                    if sources.iter().any(|s: &Source| s.model == model) {
                        return Err(bad(format!("{at}: model '{}' is listed twice", models[model])));
                    }
                    sources.push(Source { model, layer_range: None, params: params(m.parameters, &format!("{at}.parameters"))? });
                }
                if let Some(b) = base_model {
                    if !sources.iter().any(|s| s.model == b) {
                        sources.push(Source { model: b, layer_range: None, params: Params::new() });
                    }
                }
                (true, vec![Slice { sources, base_model: None, params: Params::new() }])
            }
            (None, Some(ss)) => {
                if ss.is_empty() {
                    return Err(bad("`slices` is empty".into()));
                }
                let mut slices = Vec::new();
                for (i, s) in ss.into_iter().enumerate() {
                    let at = format!("slices[{i}]");
                    if s.residual_weight.is_some() {
                        return Err(unsupported(&format!("{at}.residual_weight"), "not implemented"));
                    }
                    if s.sources.is_empty() {
                        return Err(bad(format!("{at}: no sources")));
                    }
                    let mut sources = Vec::new();
                    for (j, src) in s.sources.into_iter().enumerate() {
                        let at = format!("{at}.sources[{j}]");
                        let [a, b] = src.layer_range;
                        if a >= b {
                            return Err(bad(format!("{at}: layer_range [{a}, {b}] is empty")));
                        }
                        let model = model_ref(&src.model, &at)?;
                        sources.push(Source { model, layer_range: Some((a, b)), params: params(src.parameters, &format!("{at}.parameters"))? });
                    }
                    let len = |s: &Source| s.layer_range.map_or(0, |(a, b)| b - a);
                    if sources.iter().any(|x| len(x) != len(&sources[0])) {
                        return Err(bad(format!("{at}: all sources of a slice must have the same number of layers")));
                    }
                    let base = s.base_model.as_ref().map(|v| model_ref(v, &format!("{at}.base_model"))).transpose()?;
                    slices.push(Slice { sources, base_model: base, params: params(s.parameters, &format!("{at}.parameters"))? });
                }
                (false, slices)
            }
            _ => return Err(bad("exactly one of `models` or `slices` must be present".into())),
        };
        let tokenizer_source = match &raw.tokenizer_source {
            None => None,
            Some(Value::String(s)) if s == "base" => base_model.or(Some(0)),
            Some(Value::String(s)) if s == "union" => {
                return Err(unsupported("tokenizer_source: union", "vocabulary merging; use `base` or a model path"))
            }
            Some(v) => Some(model_ref(v, "tokenizer_source")?),
        };
        let mut warnings = Vec::new();
        if raw.chat_template.is_some() {
            warnings.push("`chat_template` is ignored: the tokenizer files are copied unchanged".to_string());
        }
        for (key, d) in [("dtype", &raw.dtype), ("out_dtype", &raw.out_dtype)] {
            if let Some(d) = d {
                super::plan::parse_dtype(d).ok_or_else(|| bad(format!("{key}: '{d}' is not one of float32, float16, bfloat16")))?;
            }
        }
        let recipe = Recipe {
            file: file.to_string(),
            text: text.to_string(),
            method,
            models,
            base_model,
            whole_models,
            slices,
            params: params(raw.parameters, "parameters")?,
            dtype: raw.dtype,
            out_dtype: raw.out_dtype,
            tokenizer_source,
            ext: raw.taskloom.unwrap_or_default(),
            warnings,
        };
        recipe.check_parameters()?;
        method.check_inputs(&recipe).map_err(bad)?;
        Ok(recipe)
    }

    /// Every parameter name must be one the method knows, in a scope where it means something.
    fn check_parameters(&self) -> Result<()> {
        let bad = |reason: String| Error::Recipe { file: self.file.clone(), reason };
        let specs = self.method.params();
        let known = || specs.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
        let check = |ps: &Params, at: &str, per_model: bool| -> Result<()> {
            for k in ps.keys() {
                match specs.iter().find(|p| p.name == k) {
                    None => return Err(bad(format!("{at}: unknown parameter '{k}' for {} (known: {})", self.method.name(), known()))),
                    Some(p) if per_model && p.scope == super::method::Scope::Shared => {
                        return Err(bad(format!("{at}: '{k}' applies to the whole merge; set it under the top-level or slice `parameters`")))
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        check(&self.params, "parameters", false)?;
        for (i, s) in self.slices.iter().enumerate() {
            check(&s.params, &format!("slices[{i}].parameters"), false)?;
            for (j, src) in s.sources.iter().enumerate() {
                let at = if self.whole_models { format!("models[{j}].parameters") } else { format!("slices[{i}].sources[{j}].parameters") };
                check(&src.params, &at, true)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ties_recipe_and_rejects_unknown_keys() {
        let y = "merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n    parameters: {weight: 0.5, density: [0.2, 0.8]}\n  - model: b\nparameters:\n  normalize: true\ndtype: float32\n";
        let r = Recipe::parse("r.yml", y).unwrap();
        assert_eq!(r.models, vec!["b".to_string(), "a".to_string()]);
        assert_eq!(r.slices[0].sources.len(), 2);
        let e = Recipe::parse("r.yml", &y.replace("dtype:", "dtpye:")).unwrap_err().to_string();
        assert!(e.contains("dtpye") && e.contains("line"), "{e}");
        let e = Recipe::parse("r.yml", &y.replace("density", "densty")).unwrap_err().to_string();
        assert!(e.contains("unknown parameter 'densty'"), "{e}");
        let e = Recipe::parse("r.yml", &y.replace("ties", "tiez")).unwrap_err().to_string();
        assert!(e.contains("tiez"), "{e}");
        let e = Recipe::parse("r.yml", &y.replace("normalize: true", "normalize: true\n  residual: 1")).unwrap_err().to_string();
        assert!(e.contains("residual"), "{e}");
    }
}
