//! From a recipe and the opened input models to the list of output tensors ([`Job`]s), each with
//! its inputs and resolved parameters. Mirrors mergekit's planner without its architecture tables:
//! tensors are taken from the reference model (the base, else the first source) by name, and a
//! tensor's layer is the number after `layers.` / `h.` / `layer.` / `blocks.` in its name.
//!
//! - `models:` form: every tensor of the reference model, same name in every input;
//! - `slices:` form: non-layer tensors whose name mentions an embedding (`embed`, `wte`, `wpe`) come
//!   from the first slice's sources, other non-layer tensors (final norm, head) from the last
//!   slice's; layer `start+i` of each source becomes output layer `offset+i`, numbered on across slices.
//!
//! Parameters resolve as mergekit does, highest precedence first: the source model's
//! `parameters`, the slice's, the top level's; then the method's default.

use super::method::{Kind, Method, Scope};
use super::recipe::{Params, Recipe};
use super::setting::Scalar;
use crate::dtype::DType;
use crate::error::{Error, Result};
use super::source::Shard;
use crate::formats::safetensors::TensorInfo;
use std::collections::BTreeMap;

/// One opened input model.
pub struct Model {
    /// The reference as the recipe spells it.
    pub name: String,
    pub shards: Vec<Shard>,
    /// `config.json`, when the folder has one.
    pub config: Option<serde_json::Value>,
}

impl Model {
    pub fn info(&self, tensor: &str) -> Option<(&Shard, &TensorInfo)> {
        self.shards.iter().find_map(|s| s.info(tensor).map(|i| (s, i)))
    }

    /// Tensor names in shard order, then file order.
    pub fn names(&self) -> Vec<&str> {
        self.shards.iter().flat_map(|s| s.names()).collect()
    }

    pub fn num_layers(&self) -> usize {
        let from_cfg = self.config.as_ref().and_then(|c| {
            ["num_hidden_layers", "n_layer", "num_layers"].iter().find_map(|k| c.get(k).and_then(|v| v.as_u64()))
        });
        match from_cfg {
            Some(n) => n as usize,
            None => self.names().iter().filter_map(|n| layer_of(n).map(|l| l.0 + 1)).max().unwrap_or(0),
        }
    }
}

/// Resolved parameter values by name.
pub type Values = BTreeMap<&'static str, Scalar>;

/// One output tensor to compute.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// `(model index, tensor name in that model)`, in source order.
    pub inputs: Vec<(usize, String)>,
    /// Position of the base model in `inputs`.
    pub base: Option<usize>,
    /// Layer position in [0, 1] used for gradients (0 for non-layer tensors).
    pub t: f64,
    pub shared: Values,
    pub per_input: Vec<Values>,
}

pub struct Plan {
    pub jobs: Vec<Job>,
    /// Layers of the output model (its `num_hidden_layers`).
    pub out_layers: usize,
    /// Index of the model whose `config.json` the output starts from.
    pub config_model: usize,
}

/// `(layer, byte range of its digits)` of a tensor name such as `model.layers.12.mlp.up_proj.weight`.
pub fn layer_of(name: &str) -> Option<(usize, std::ops::Range<usize>)> {
    let mut pos = 0;
    let mut prev = "";
    for seg in name.split('.') {
        if matches!(prev, "layers" | "h" | "layer" | "blocks" | "block") && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            return seg.parse().ok().map(|l| (l, pos..pos + seg.len()));
        }
        prev = seg;
        pos += seg.len() + 1;
    }
    None
}

fn with_layer(name: &str, layer: usize) -> String {
    match layer_of(name) {
        Some((_, r)) => format!("{}{layer}{}", &name[..r.start], &name[r.end..]),
        None => name.to_string(),
    }
}

fn is_pre(name: &str) -> bool {
    ["embed", "wte", "wpe"].iter().any(|p| name.contains(p))
}

/// `float32` / `float16` / `bfloat16` (and torch's aliases).
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s {
        "float32" | "fp32" | "float" => Some(DType::F32),
        "float16" | "fp16" | "half" => Some(DType::F16),
        "bfloat16" | "bf16" => Some(DType::BF16),
        _ => None,
    }
}

impl Plan {
    pub fn build(r: &Recipe, models: &[Model]) -> Result<Plan> {
        let bad = |reason: String| Error::Recipe { file: r.file.clone(), reason };
        let mut jobs = Vec::new();
        let first = &r.slices[0];
        let last = r.slices.last().expect("at least one slice");
        let base_of = |s: &super::recipe::Slice| s.base_model.or(r.base_model);
        let reference = |s: &super::recipe::Slice| base_of(s).filter(|b| s.sources.iter().any(|x| x.model == *b)).unwrap_or(s.sources[0].model);
        let config_model = r.base_model.unwrap_or(first.sources[0].model);
        let mut out_layers = 0;
        if r.whole_models {
            let m = &models[reference(first)];
            let layers = m.num_layers();
            for name in m.names() {
                let t = match layer_of(name) {
                    Some((l, _)) if layers > 1 => l as f64 / (layers - 1) as f64,
                    Some(_) => 1.0,
                    None => 0.0,
                };
                jobs.push(self::job(r, first, name, first.sources.iter().map(|s| (s.model, name.to_string())).collect(), t)?);
            }
            out_layers = layers;
        } else {
            let pre: Vec<&str> = models[reference(first)].names().into_iter().filter(|n| layer_of(n).is_none() && is_pre(n)).collect();
            for name in pre {
                jobs.push(self::job(r, first, name, first.sources.iter().map(|s| (s.model, name.to_string())).collect(), 0.0)?);
            }
            for s in &r.slices {
                let refm = reference(s);
                let ref_src = s.sources.iter().find(|x| x.model == refm).expect("reference is a source");
                let (start, end) = ref_src.layer_range.expect("slices have layer ranges");
                let n = end - start;
                for i in 0..n {
                    let t = if n > 1 { i as f64 / (n - 1) as f64 } else { 1.0 };
                    let names: Vec<&str> = models[refm].names().into_iter().filter(|x| layer_of(x).is_some_and(|l| l.0 == start + i)).collect();
                    if names.is_empty() {
                        return Err(bad(format!("model '{}' has no tensors for layer {}", models[refm].name, start + i)));
                    }
                    for name in names {
                        let inputs = s.sources.iter().map(|src| (src.model, with_layer(name, src.layer_range.expect("range").0 + i))).collect();
                        let mut job = self::job(r, s, &with_layer(name, out_layers), inputs, t)?;
                        job.name = with_layer(name, out_layers);
                        jobs.push(job);
                    }
                    out_layers += 1;
                }
            }
            let post: Vec<&str> = models[reference(last)].names().into_iter().filter(|n| layer_of(n).is_none() && !is_pre(n)).collect();
            for name in post {
                jobs.push(self::job(r, last, name, last.sources.iter().map(|s| (s.model, name.to_string())).collect(), 0.0)?);
            }
        }
        Ok(Plan { jobs, out_layers, config_model })
    }
}

fn job(r: &Recipe, s: &super::recipe::Slice, out: &str, inputs: Vec<(usize, String)>, t: f64) -> Result<Job> {
    let base_model = s.base_model.or(r.base_model);
    let base = base_model.and_then(|b| s.sources.iter().position(|x| x.model == b));
    let specs = r.method.params();
    let bad = |reason: String| Error::Recipe { file: r.file.clone(), reason };
    let resolve = |spec: &super::method::ParamSpec, scopes: &[&Params], tensor: &str, who: &str| -> Result<Option<Scalar>> {
        let v = scopes.iter().find_map(|p| p.get(spec.name).and_then(|set| set.eval(tensor, t))).or_else(|| spec.default.clone());
        let v = match v {
            None if spec.required => return Err(bad(format!("missing required parameter '{}' for {who}tensor '{tensor}'", spec.name))),
            None => return Ok(None),
            Some(v) => v,
        };
        let typed = match (spec.kind, &v) {
            (Kind::Float, Scalar::Num(_)) | (Kind::Bool, Scalar::Bool(_)) => Some(v.clone()),
            (Kind::Float, Scalar::Str(s)) => s.trim().parse::<f64>().ok().map(Scalar::Num),
            (Kind::Bool, Scalar::Num(n)) if *n == 0.0 || *n == 1.0 => Some(Scalar::Bool(*n == 1.0)),
            _ => None,
        };
        let want = if spec.kind == Kind::Float { "a number" } else { "true or false" };
        match typed {
            Some(Scalar::Num(n)) if !n.is_finite() => Err(bad(format!("parameter '{}' for {who}tensor '{tensor}' must be finite, got {n}", spec.name))),
            Some(x) => Ok(Some(x)),
            None => Err(bad(format!("parameter '{}' for {who}tensor '{tensor}' must be {want}, got {}", spec.name, v.describe()))),
        }
    };
    let mut shared = Values::new();
    let shared_scopes = [&s.params, &r.params];
    for spec in specs.iter().filter(|p| p.scope == Scope::Shared) {
        if let Some(v) = resolve(spec, &shared_scopes, out, "")? {
            shared.insert(spec.name, v);
        }
    }
    let mut per_input = Vec::new();
    for (j, (m, name)) in inputs.iter().enumerate() {
        let src = &s.sources[j];
        let scopes = [&src.params, &s.params, &r.params];
        let mut vals = Values::new();
        let who = format!("model '{}', ", r.models[*m]);
        for spec in specs.iter().filter(|p| p.scope == Scope::Input || (p.scope == Scope::NonBase && Some(j) != base)) {
            if let Some(v) = resolve(spec, &scopes, name, &who)? {
                vals.insert(spec.name, v);
            }
        }
        check_ranges(r.method, &vals).map_err(|e| bad(format!("{who}tensor '{name}': {e}")))?;
        per_input.push(vals);
    }
    Ok(Job { name: out.to_string(), inputs, base, t, shared, per_input })
}

/// The value ranges taskloom accepts (mergekit silently clamps some of them).
fn check_ranges(method: Method, v: &Values) -> Result<(), String> {
    let num = |k: &str| match v.get(k) {
        Some(Scalar::Num(n)) => Some(*n),
        _ => None,
    };
    if let Some(d) = num("density") {
        if !(d > 0.0 && d <= 1.0) {
            return Err(format!("density {d} is outside (0, 1]"));
        }
        if let Some(e) = num("epsilon") {
            if d < 1.0 && (d + e >= 1.0 || d - e <= 0.0 || e < 0.0) {
                return Err(format!("epsilon {e} with density {d}: density ± epsilon must lie in (0, 1) for {}", method.name()));
            }
        }
    }
    if let Some(g) = num("gamma") {
        if !(0.0..1.0).contains(&g) {
            return Err(format!("gamma {g} is outside [0, 1)"));
        }
    }
    Ok(())
}
