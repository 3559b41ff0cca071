//! `taskloom.json` (format version 1, `/work/spec/taskloom-json.md`, summarised in the README):
//! parsed with unknown keys rejected, then checked against the weight files' headers before any
//! tensor is read, so a bad model fails with an error naming the file, tensor or task.

use crate::error::{Error, FileError, Result};
use crate::formats::safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const FILE: &str = "taskloom.json";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub taskloom: u32,
    pub name: String,
    pub weights: Vec<String>,
    pub input: InputSpec,
    pub trunk: TrunkSpec,
    #[serde(default)]
    pub moe: Option<MoeSpec>,
    #[serde(default)]
    pub mmoe: Option<MmoeSpec>,
    /// Input-routed task deltas (Twin-Merging / WEMoE), applied in factored form.
    #[serde(default)]
    pub deltas: Option<DeltaSpec>,
    /// A PEFT LoRA adapter folder (relative to taskloom.json) every task's trunk pass uses
    /// (MTLoRA's task-agnostic branch); hf trunks only.
    #[serde(default)]
    pub shared_adapter: Option<String>,
    /// In name order (the order outputs and statistics are reported in).
    pub tasks: BTreeMap<String, TaskSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputSpec {
    /// Row-major pixels `[H*W*C]`, multiplied by `scale`.
    Image { height: usize, width: usize, channels: usize, #[serde(default = "one")] scale: f32 },
    /// Text for the hf trunk's tokenizer.
    Text,
}

fn one() -> f32 {
    1.0
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    Gelu,
    GeluTanh,
    Relu,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Cls,
    Mean,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TrunkSpec {
    Vit(VitSpec),
    /// A Hugging Face BERT-family folder: relative to taskloom.json, absolute, or `${VAR}/...`.
    Hf { path: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitSpec {
    #[serde(default = "trunk_prefix")]
    pub prefix: String,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    #[serde(default = "vit_eps")]
    pub eps: f32,
    #[serde(default = "gelu")]
    pub act: Act,
    #[serde(default = "cls")]
    pub pool: Pool,
    #[serde(default)]
    pub moe_blocks: Vec<usize>,
}

fn trunk_prefix() -> String {
    "trunk".into()
}
fn vit_eps() -> f32 {
    1e-6
}
fn gelu() -> Act {
    Act::Gelu
}
fn cls() -> Pool {
    Pool::Cls
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    Softmax,
    Sigmoid,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    #[serde(default = "softmax")]
    pub score: Score,
    #[serde(default)]
    pub normalize_top_k: bool,
    #[serde(default = "gelu")]
    pub act: Act,
}

fn softmax() -> Score {
    Score::Softmax
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmoeSpec {
    pub experts: usize,
    pub hidden: usize,
    pub out: usize,
    #[serde(default = "relu")]
    pub act: Act,
}

fn relu() -> Act {
    Act::Relu
}

/// Input-routed task deltas: `y = W·x + Σ_t r_t(input)·B_t·A_t·x` on each target linear, with
/// `r = score(router(f))` per input, `f` the pooled feature of a first trunk pass without deltas
/// (Twin-Merging's router on the shared model). Tensors `deltas.{name}.{target}.A [r, in]` and
/// `.B [out, r]` (any rank, per name and target; a name may skip a target), router layers
/// `deltas.router.{i}.{weight,bias}` (`[C, ..] → [len(names)]`, `act` between layers).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSpec {
    /// The deltas, in the order of the router's outputs.
    pub names: Vec<String>,
    /// Linear modules (ViT: `{prefix}.blocks.{i}.attn.qkv|attn.proj|mlp.fc1|mlp.fc2`; hf: the
    /// model's module paths, as PEFT names them).
    pub targets: Vec<String>,
    #[serde(default)]
    pub router: RouterSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    #[serde(default = "one_layer")]
    pub layers: usize,
    #[serde(default = "relu")]
    pub act: Act,
    /// `softmax` (Twin-Merging) or `none` (raw outputs, as WEMoE's gate).
    #[serde(default = "router_softmax")]
    pub score: RouterScore,
}

impl Default for RouterSpec {
    fn default() -> Self {
        RouterSpec { layers: 1, act: Act::Relu, score: RouterScore::Softmax }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouterScore {
    Softmax,
    None,
}

fn router_softmax() -> RouterScore {
    RouterScore::Softmax
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Classification,
    Regression,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Sequence,
    Token,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(rename = "type")]
    pub kind: TaskType,
    #[serde(default)]
    pub level: Level,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub head: HeadSpec,
    /// Experts this task's MoE gates may pick; `None`: all.
    #[serde(default)]
    pub experts: Option<Vec<usize>>,
    #[serde(default)]
    pub mmoe: bool,
    /// A PEFT LoRA adapter folder (relative to taskloom.json) for this task's trunk pass
    /// (MTLoRA's task-specific branch, added to the shared adapter); hf trunks only.
    #[serde(default)]
    pub adapter: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    #[serde(default = "one_layer")]
    pub layers: usize,
    #[serde(default = "relu")]
    pub act: Act,
}

impl Default for HeadSpec {
    fn default() -> Self {
        HeadSpec { layers: 1, act: Act::Relu }
    }
}

fn one_layer() -> usize {
    1
}

fn bad(reason: String) -> Error {
    Error::File { file: FILE.into(), kind: FileError::BadHeader(reason) }
}

/// `(block, linear)` of a ViT deltas target `{prefix}.blocks.{i}.{linear}`.
pub fn vit_target<'a>(v: &VitSpec, target: &'a str) -> Option<(usize, &'a str)> {
    let rest = target.strip_prefix(&v.prefix)?.strip_prefix(".blocks.")?;
    let (i, lin) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    (i < v.depth && ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"].contains(&lin)).then_some((i, lin))
}

pub(crate) fn task_err(model: &str, task: &str, reason: String) -> Error {
    Error::Task { model: model.into(), task: task.into(), reason }
}

impl Spec {
    /// Parses and checks the description on its own (the weights are checked by [`Spec::check_weights`]).
    pub fn parse(json: &[u8]) -> Result<Spec> {
        let spec: Spec = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        if self.taskloom != 1 {
            return Err(bad(format!("format version {} is not supported (this runtime reads version 1)", self.taskloom)));
        }
        if self.weights.is_empty() {
            return Err(bad("'weights' names no file".into()));
        }
        if self.tasks.is_empty() {
            return Err(bad("'tasks' is empty".into()));
        }
        match (&self.trunk, &self.input) {
            (TrunkSpec::Vit(v), InputSpec::Image { height, width, channels, scale }) => {
                if v.patch == 0 || v.dim == 0 || v.heads == 0 || v.dim % v.heads != 0 || v.mlp_dim == 0 {
                    return Err(bad(format!("trunk: patch {}, dim {}, heads {}, mlp_dim {} (dim must be a multiple of heads)", v.patch, v.dim, v.heads, v.mlp_dim)));
                }
                if *height == 0 || *width == 0 || *channels == 0 || height % v.patch != 0 || width % v.patch != 0 || !scale.is_finite() {
                    return Err(bad(format!("input {height}x{width}x{channels} (scale {scale}) is not tiled by {}-pixel patches", v.patch)));
                }
                if !v.eps.is_finite() || v.eps <= 0.0 {
                    return Err(bad(format!("trunk: eps must be positive, got {}", v.eps)));
                }
                let mut seen = vec![false; v.depth];
                for &b in &v.moe_blocks {
                    if b >= v.depth || std::mem::replace(&mut seen[b], true) {
                        return Err(bad(format!("trunk: moe_blocks {:?} must be distinct blocks below depth {}", v.moe_blocks, v.depth)));
                    }
                }
                if !v.moe_blocks.is_empty() && self.moe.is_none() {
                    return Err(bad("trunk has moe_blocks but there is no 'moe' section".into()));
                }
            }
            (TrunkSpec::Hf { .. }, InputSpec::Text) => {}
            _ => return Err(bad("an image input needs a vit trunk, a text input an hf trunk".into())),
        }
        if let Some(m) = &self.moe {
            if m.experts == 0 || m.hidden == 0 || m.top_k == 0 || m.top_k > m.experts || m.experts > 1024 {
                return Err(bad(format!("moe: top_k {} of {} experts (hidden {}) is not valid", m.top_k, m.experts, m.hidden)));
            }
        }
        if let Some(m) = &self.mmoe {
            if m.experts == 0 || m.hidden == 0 || m.out == 0 {
                return Err(bad(format!("mmoe: {} experts, hidden {}, out {} must all be positive", m.experts, m.hidden, m.out)));
            }
        }
        let hf = matches!(self.trunk, TrunkSpec::Hf { .. });
        if self.shared_adapter.is_some() && !hf {
            return Err(bad("shared_adapter needs an hf trunk (LoRA branches run through the hf models' adapter machinery)".into()));
        }
        if let Some(d) = &self.deltas {
            let dup = |v: &[String]| v.iter().enumerate().any(|(i, a)| v[..i].contains(a));
            if d.names.is_empty() || d.targets.is_empty() || dup(&d.names) || dup(&d.targets) || d.names.iter().any(|n| n.is_empty() || n.contains('.')) {
                return Err(bad(format!("deltas: names {:?} and targets {:?} must be non-empty lists of distinct entries (names without '.')", d.names, d.targets)));
            }
            if d.router.layers == 0 {
                return Err(bad("deltas.router.layers must be at least 1".into()));
            }
            if let TrunkSpec::Vit(v) = &self.trunk {
                if !v.moe_blocks.is_empty() {
                    return Err(bad("deltas cannot be combined with moe_blocks (the router reads one shared trunk pass)".into()));
                }
                for t in &d.targets {
                    if vit_target(v, t).is_none() {
                        return Err(bad(format!(
                            "deltas target '{t}' is not a linear of this trunk ({}.blocks.I.attn.qkv | attn.proj | mlp.fc1 | mlp.fc2, I < {})",
                            v.prefix, v.depth
                        )));
                    }
                }
            }
        }
        for (name, t) in &self.tasks {
            let err = |r: String| Err(task_err(&self.name, name, r));
            if t.adapter.is_some() && !hf {
                return err("a task adapter needs an hf trunk (LoRA branches run through the hf models' adapter machinery)".into());
            }
            if name.is_empty() || name.contains(',') {
                return err("a task name must be non-empty and contain no comma".into());
            }
            if t.head.layers == 0 {
                return err("head.layers must be at least 1".into());
            }
            if t.kind == TaskType::Classification && t.labels.is_empty() {
                return err("a classification task needs labels".into());
            }
            if t.mmoe && self.mmoe.is_none() {
                return err("reads the MMoE mixture, but the model has no 'mmoe' section".into());
            }
            if t.mmoe && t.level == Level::Token {
                return err("an MMoE head is sequence-level (the mixture reads the pooled feature)".into());
            }
            if let Some(list) = &t.experts {
                let Some(m) = &self.moe else { return err("lists experts, but the model has no 'moe' section".into()) };
                let mut seen = vec![false; m.experts];
                for &e in list {
                    if e >= m.experts || std::mem::replace(&mut seen[e], true) {
                        return err(format!("experts {list:?} must be distinct indices below {}", m.experts));
                    }
                }
                if list.len() < m.top_k && self.has_moe_blocks() {
                    return err(format!("allows {} experts, fewer than top_k = {}", list.len(), m.top_k));
                }
            }
        }
        Ok(())
    }

    /// `[in, out]` of a deltas target, for the ViT trunk's dims.
    pub fn vit_target_dims(&self, target: &str) -> Option<[usize; 2]> {
        let TrunkSpec::Vit(v) = &self.trunk else { return None };
        let (c, h) = (v.dim, v.mlp_dim);
        Some(match vit_target(v, target)?.1 {
            "attn.qkv" => [c, 3 * c],
            "mlp.fc1" => [c, h],
            "mlp.fc2" => [h, c],
            _ => [c, c],
        })
    }

    pub fn has_moe_blocks(&self) -> bool {
        matches!(&self.trunk, TrunkSpec::Vit(v) if !v.moe_blocks.is_empty())
    }

    /// The experts `task`'s gates may pick, ascending.
    pub fn allowed(&self, task: &TaskSpec) -> Vec<usize> {
        let e = self.moe.as_ref().map_or(0, |m| m.experts);
        let mut v = task.experts.clone().unwrap_or_else(|| (0..e).collect());
        v.sort_unstable();
        v
    }

    /// The tasks a request names (`None` or empty: all), checked, in name order.
    pub fn select(&self, tasks: Option<&[&str]>) -> Result<Vec<String>> {
        let Some(list) = tasks.filter(|l| !l.is_empty()) else { return Ok(self.tasks.keys().cloned().collect()) };
        for t in list {
            if !self.tasks.contains_key(*t) {
                let known = self.tasks.keys().cloned().collect::<Vec<_>>().join(", ");
                return Err(task_err(&self.name, t, format!("unknown task (this model has: {known})")));
            }
        }
        Ok(self.tasks.keys().filter(|k| list.contains(&k.as_str())).cloned().collect())
    }

    /// Feature width the heads see (the trunk's).
    pub fn feature_dim(&self, trunk_dim: usize) -> usize {
        trunk_dim
    }

    /// Every tensor the description implies, with its shape, checked against the files' headers
    /// (missing tensors, shape mismatches, gates wider than the expert list) before any data is read.
    /// Head hidden widths come from the files; the checked head shapes are returned per task.
    pub fn check_weights(&self, files: &[SafeTensors], trunk_dim: usize) -> Result<BTreeMap<String, Vec<[usize; 2]>>> {
        let find = |name: &str| files.iter().find_map(|f| f.info(name).ok().map(|i| (f.file().to_string(), i.shape.clone())));
        let origin = || files.iter().map(|f| f.file().to_string()).collect::<Vec<_>>().join(", ");
        let missing = |name: &str| Error::File { file: origin(), kind: FileError::MissingTensor(name.into()) };
        let expect = |name: &str, dims: &[usize]| -> Result<()> {
            let (file, got) = find(name).ok_or_else(|| missing(name))?;
            if got != dims {
                return Err(Error::File {
                    file,
                    kind: FileError::BadHeader(format!("tensor '{name}' has shape {got:?}, {FILE} implies {dims:?}")),
                });
            }
            Ok(())
        };
        if let TrunkSpec::Vit(v) = &self.trunk {
            let InputSpec::Image { height, width, channels, .. } = self.input else { unreachable!("checked in parse") };
            let (p, c) = (&v.prefix, v.dim);
            let n = (height / v.patch) * (width / v.patch);
            expect(&format!("{p}.patch.weight"), &[c, v.patch * v.patch * channels])?;
            expect(&format!("{p}.patch.bias"), &[c])?;
            expect(&format!("{p}.cls"), &[c])?;
            expect(&format!("{p}.pos"), &[n + 1, c])?;
            for i in 0..v.depth {
                let b = format!("{p}.blocks.{i}");
                for ln in ["ln1", "ln2"] {
                    expect(&format!("{b}.{ln}.weight"), &[c])?;
                    expect(&format!("{b}.{ln}.bias"), &[c])?;
                }
                expect(&format!("{b}.attn.qkv.weight"), &[3 * c, c])?;
                expect(&format!("{b}.attn.qkv.bias"), &[3 * c])?;
                expect(&format!("{b}.attn.proj.weight"), &[c, c])?;
                expect(&format!("{b}.attn.proj.bias"), &[c])?;
                if v.moe_blocks.contains(&i) {
                    let m = self.moe.as_ref().expect("checked in parse");
                    let (e, h) = (m.experts, m.hidden);
                    for task in self.tasks.keys() {
                        let g = format!("{b}.moe.gate.{task}.weight");
                        let (file, got) = find(&g).ok_or_else(|| missing(&g))?;
                        if got.len() == 2 && got[0] > e && got[1] == c {
                            return Err(task_err(&self.name, task, format!("gate '{g}' in {file} has {} rows, wider than the {e} experts", got[0])));
                        }
                        expect(&g, &[e, c])?;
                        let gb = format!("{b}.moe.gate.{task}.bias");
                        if find(&gb).is_some() {
                            expect(&gb, &[e])?;
                        }
                    }
                    // After the gates, so a gate wider than the expert list is reported as such.
                    expect(&format!("{b}.moe.fc1.weight"), &[e, h, c])?;
                    expect(&format!("{b}.moe.fc1.bias"), &[e, h])?;
                    expect(&format!("{b}.moe.fc2.weight"), &[e, c, h])?;
                    expect(&format!("{b}.moe.fc2.bias"), &[e, c])?;
                } else {
                    expect(&format!("{b}.mlp.fc1.weight"), &[v.mlp_dim, c])?;
                    expect(&format!("{b}.mlp.fc1.bias"), &[v.mlp_dim])?;
                    expect(&format!("{b}.mlp.fc2.weight"), &[c, v.mlp_dim])?;
                    expect(&format!("{b}.mlp.fc2.bias"), &[c])?;
                }
            }
            expect(&format!("{p}.norm.weight"), &[c])?;
            expect(&format!("{p}.norm.bias"), &[c])?;
        }
        if let Some(m) = &self.mmoe {
            if self.tasks.values().any(|t| t.mmoe) {
                for e in 0..m.experts {
                    expect(&format!("mmoe.experts.{e}.0.weight"), &[m.hidden, trunk_dim])?;
                    expect(&format!("mmoe.experts.{e}.0.bias"), &[m.hidden])?;
                    expect(&format!("mmoe.experts.{e}.1.weight"), &[m.out, m.hidden])?;
                    expect(&format!("mmoe.experts.{e}.1.bias"), &[m.out])?;
                }
            }
        }
        if let Some(d) = &self.deltas {
            let mut inp = trunk_dim;
            for i in 0..d.router.layers {
                let w = format!("deltas.router.{i}.weight");
                let (_, got) = find(&w).ok_or_else(|| missing(&w))?;
                let out = if i + 1 == d.router.layers { d.names.len() } else { got.first().copied().unwrap_or(0) };
                if out == 0 {
                    return Err(bad(format!("router layer '{w}' has no outputs")));
                }
                expect(&w, &[out, inp])?;
                expect(&format!("deltas.router.{i}.bias"), &[out])?;
                inp = out;
            }
            for name in &d.names {
                if !d.targets.iter().any(|t| find(&format!("deltas.{name}.{t}.A")).is_some() || find(&format!("deltas.{name}.{t}.B")).is_some()) {
                    return Err(missing(&format!("deltas.{name}.{}.A", d.targets[0])));
                }
                for target in &d.targets {
                    let (a, b) = (format!("deltas.{name}.{target}.A"), format!("deltas.{name}.{target}.B"));
                    let (fa, fb) = (find(&a), find(&b));
                    let (Some((file, sa)), Some((_, sb))) = (&fa, &fb) else {
                        if fa.is_some() != fb.is_some() {
                            return Err(missing(if fa.is_none() { &a } else { &b }));
                        }
                        continue; // this delta leaves the target alone
                    };
                    let r = sa.first().copied().unwrap_or(0);
                    if r == 0 || sa.len() != 2 || sb.len() != 2 || sb[1] != r {
                        return Err(Error::File { file: file.clone(), kind: FileError::BadHeader(format!("delta factors '{a}' {sa:?} and '{b}' {sb:?} are not [r, in] and [out, r]")) });
                    }
                    if let Some([i, o]) = self.vit_target_dims(target) {
                        expect(&a, &[r, i])?;
                        expect(&b, &[o, r])?;
                    }
                }
            }
        }
        let mut heads = BTreeMap::new();
        for (task, t) in &self.tasks {
            if t.mmoe {
                let m = self.mmoe.as_ref().expect("checked in parse");
                let g = format!("mmoe.gate.{task}.weight");
                if let Some((file, got)) = find(&g) {
                    if got.len() == 2 && got[0] > m.experts && got[1] == trunk_dim {
                        return Err(task_err(&self.name, task, format!("gate '{g}' in {file} has {} rows, wider than the {} MMoE experts", got[0], m.experts)));
                    }
                }
                expect(&g, &[m.experts, trunk_dim])?;
                expect(&format!("mmoe.gate.{task}.bias"), &[m.experts])?;
            }
            let mut inp = if t.mmoe { self.mmoe.as_ref().map_or(0, |m| m.out) } else { trunk_dim };
            let mut shapes = Vec::new();
            for i in 0..t.head.layers {
                let w = format!("heads.{task}.{i}.weight");
                let (_, got) = find(&w).ok_or_else(|| missing(&w))?;
                let out = if i + 1 == t.head.layers && t.kind == TaskType::Classification { t.labels.len() } else { got.first().copied().unwrap_or(0) };
                if out == 0 {
                    return Err(task_err(&self.name, task, format!("head layer '{w}' has no outputs")));
                }
                expect(&w, &[out, inp])?;
                expect(&format!("heads.{task}.{i}.bias"), &[out])?;
                shapes.push([out, inp]);
                inp = out;
            }
            heads.insert(task.clone(), shapes);
        }
        Ok(heads)
    }
}
