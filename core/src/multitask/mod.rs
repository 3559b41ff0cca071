//! Multi-task models described by `taskloom.json` (see [`spec`] and the README): a shared trunk (a
//! small ViT from the op table, or a Hugging Face BERT-family encoder), task-conditioned MoE blocks
//! (one gate per task over shared experts, M³ViT), a multi-gate mixture (MMoE) and per-task heads.
//!
//! Design:
//! - **A request names its tasks**; the shared part runs once and only those tasks' gates, experts
//!   and heads run. Routing depends on the task, so the token stream forks at the first MoE block.
//! - **Routing stays on the device** (see [`routed`]); the small routing ids are read back only
//!   at the end, with the outputs, to count tokens per expert ([`Run::routing`]).
//! - **Residency**: loading with a task subset uploads the trunk plus only what those tasks use (the
//!   union of their experts, re-indexed; their gates, heads and MMoE parts). [`MultiTask::resident_bytes`]
//!   is measured from what was uploaded; [`MultiTask::all_tasks_bytes`] from loading every task's
//!   parts (on the CPU, when a subset was asked for).

pub mod branches;
pub mod deltas;
pub mod heads;
pub mod routed;
pub mod spec;
pub mod vit;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::bert::{pool, Pooling};
use crate::models::hf::{Encoder, Files, Shards};
use crate::lora::runtime::{LoraHost, Mix};
use crate::models::{Progress, Weights};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use heads::{Head, Mmoe};
use routed::RoutedMoe;
use serde::Serialize;
use spec::{InputSpec, Level, Spec, TaskType, TrunkSpec};
use std::cell::Cell;
use std::collections::BTreeMap;

/// Bytes uploaded to the device, by part of the model.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Residency {
    /// Every trunk tensor except the MoE experts and gates (for an hf trunk: its weight files).
    pub trunk: u64,
    /// The resident experts of every MoE block.
    pub experts: u64,
    /// The loaded tasks' MoE gates, re-indexed to the resident experts, with their routing vectors
    /// (logit offset for softmax, selection bias): `[E_res, C] + 2 x [E_res]` per task and block.
    pub gates: u64,
    pub heads: u64,
    /// The MMoE experts and the loaded tasks' MMoE gates (0 when no loaded task reads the mixture).
    pub mmoe: u64,
    /// LoRA factors (the shared adapter, the loaded tasks' adapters and the input-routed task
    /// deltas, stacked per linear as the multi-LoRA kernels read them) and the deltas' router.
    pub adapters: u64,
}

impl Residency {
    pub fn total(&self) -> u64 {
        self.trunk + self.experts + self.gates + self.heads + self.mmoe + self.adapters
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Part {
    Trunk,
    Experts,
    Gates,
    Heads,
    Mmoe,
    Adapters,
}

/// Reads tensors (as f32) and uploads them, counting the bytes that reach the device by [`Part`].
pub(crate) struct Loader<'a> {
    dev: &'a Device,
    w: &'a Shards,
    part: Cell<Part>,
    bytes: Cell<Residency>,
}

impl<'a> Loader<'a> {
    fn new(dev: &'a Device, w: &'a Shards) -> Self {
        Loader { dev, w, part: Cell::new(Part::Trunk), bytes: Cell::new(Residency::default()) }
    }
    /// Counts the following uploads as `part`.
    pub fn part(&self, part: Part) {
        self.part.set(part);
    }
    fn add(&self, n: u64) {
        let mut r = self.bytes.get();
        match self.part.get() {
            Part::Trunk => r.trunk += n,
            Part::Experts => r.experts += n,
            Part::Gates => r.gates += n,
            Part::Heads => r.heads += n,
            Part::Mmoe => r.mmoe += n,
            Part::Adapters => r.adapters += n,
        }
        self.bytes.set(r);
    }
    pub fn data(&self, name: &str) -> Result<TensorData> {
        let t = self.w.tensor(name)?;
        TensorData::f32(t.dims(), t.to_f32_vec())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.w.contains(name)
    }
    pub fn upload(&self, d: &TensorData) -> Result<Tensor> {
        self.add(d.data().as_bytes().len() as u64);
        self.dev.upload(d)
    }
    pub fn load(&self, name: &str) -> Result<Tensor> {
        self.upload(&self.data(name)?)
    }
    /// [`Loader::upload`] for an expert stack `[E, N, C]`, which on a GPU is split between experts
    /// when it is above the binding limit ([`Device::upload_weight`]).
    pub fn upload_experts(&self, d: &TensorData, name: &str) -> Result<Tensor> {
        self.add(d.data().as_bytes().len() as u64);
        self.dev.upload_weight(d, name)
    }
}

/// One request's input.
#[derive(Clone, Debug)]
pub enum Input {
    /// Row-major pixels `[H*W*C]` (before the model's `scale`).
    Image(Vec<f32>),
    Text(String),
}

/// One task's answer for one input (or one token).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Prediction {
    /// Classification: the top label, its index and its softmax probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Classification: the logits; regression: the raw values.
    #[serde(rename = "values")]
    pub values: Vec<f32>,
    /// Classification: softmax of the logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probs: Option<Vec<f32>>,
}

/// A task's output for one input: one prediction (sequence-level) or one per token.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Output {
    Sequence(Prediction),
    Token(Vec<Prediction>),
}

/// Tokens routed to each expert (original numbering), per task and MoE block:
/// `{ task: { block: [count per expert] } }`. A token counts once for each of its k picks.
pub type Routing = BTreeMap<String, BTreeMap<usize, Vec<u64>>>;

/// The result of [`MultiTask::run`].
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Per input: `{ task: output }`.
    pub outputs: Vec<BTreeMap<String, Output>>,
    pub routing: Routing,
    /// Per input, the deltas' router weights (in `deltas.names` order); empty without deltas.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Vec<f32>>,
}

enum Trunk {
    /// The ViT and, per block, the task-routed MoE (for `moe_blocks`).
    Vit(Box<vit::Vit>, Vec<Option<RoutedMoe>>),
    Hf(Box<Encoder>),
}

/// A loaded multi-task model (see the module docs).
pub struct MultiTask {
    pub spec: Spec,
    pub device: Device,
    tasks: Vec<String>,
    trunk: Trunk,
    mmoe: Option<Mmoe>,
    heads: BTreeMap<String, Head>,
    /// The deltas' router (when the model has `deltas`).
    router: Option<deltas::Router>,
    resident: Residency,
    all_tasks: u64,
}

/// What the tasks-dependent part of a model holds.
struct TaskParts {
    moe: Vec<Option<RoutedMoe>>,
    mmoe: Option<Mmoe>,
    heads: BTreeMap<String, Head>,
}

fn load_parts(l: &Loader, spec: &Spec, tasks: &[String], head_shapes: &BTreeMap<String, Vec<[usize; 2]>>, c: usize) -> Result<TaskParts> {
    let mut moe = Vec::new();
    l.part(Part::Experts);
    if let TrunkSpec::Vit(v) = &spec.trunk {
        let allowed: Vec<(String, Vec<usize>)> = tasks.iter().map(|t| (t.clone(), spec.allowed(&spec.tasks[t]))).collect();
        for i in 0..v.depth {
            moe.push(match (v.moe_blocks.contains(&i), &spec.moe) {
                (true, Some(m)) => Some(RoutedMoe::load(l, &format!("{}.blocks.{i}", v.prefix), m, &allowed)?),
                _ => None,
            });
        }
    }
    let mmoe_tasks: Vec<String> = tasks.iter().filter(|t| spec.tasks[*t].mmoe).cloned().collect();
    l.part(Part::Mmoe);
    let mmoe = match &spec.mmoe {
        Some(m) if !mmoe_tasks.is_empty() => Some(Mmoe::load(l, m, c, &mmoe_tasks)?),
        _ => None,
    };
    l.part(Part::Heads);
    let mut heads = BTreeMap::new();
    for t in tasks {
        heads.insert(t.clone(), Head::load(l, t, &head_shapes[t], spec.tasks[t].head.act)?);
    }
    Ok(TaskParts { moe, mmoe, heads })
}

/// `${VAR}` expanded; an unset `TASKLOOM_MODELS` means `target/models` (where
/// `scripts/fetch-models.sh` puts the packaged models), relative to the working directory.
#[cfg(not(target_arch = "wasm32"))]
pub fn resolve_trunk_path(dir: &std::path::Path, path: &str) -> Result<std::path::PathBuf> {
    let mut out = String::new();
    let mut rest = path;
    while let Some(s) = rest.find("${") {
        out.push_str(&rest[..s]);
        let Some(e) = rest[s..].find('}') else { break };
        let var = &rest[s + 2..s + e];
        match std::env::var(var) {
            Ok(v) => out.push_str(&v),
            Err(_) if var == "TASKLOOM_MODELS" => out.push_str("target/models"),
            Err(_) => return Err(Error::InvalidParam { op: "multitask", reason: format!("trunk path '{path}' uses ${{{var}}}, which is not set") }),
        }
        rest = &rest[s + e + 1..];
    }
    out.push_str(rest);
    let p = std::path::PathBuf::from(out);
    Ok(if p.is_absolute() || path.starts_with("${") { p } else { dir.join(p) })
}

impl MultiTask {
    /// Loads the model in the folder `dir` (holding `taskloom.json`) for `tasks` (`None`: all).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(dir: &std::path::Path, device: Device, tasks: Option<&[&str]>) -> Result<MultiTask> {
        use crate::models::hf::DirFiles;
        let files = DirFiles(dir.to_path_buf());
        let text = files.read(spec::FILE)?.ok_or_else(|| Error::Io {
            path: dir.join(spec::FILE).display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no taskloom.json in the model folder"),
        })?;
        let s = Spec::parse(&text)?;
        let trunk = match &s.trunk {
            TrunkSpec::Hf { path } => Some(DirFiles(resolve_trunk_path(dir, path)?)),
            TrunkSpec::Vit(_) => None,
        };
        MultiTask::load(&files, trunk.as_ref().map(|t| t as &dyn Files), device, tasks)
    }

    /// Loads from `files` (taskloom.json and its weights); `trunk` holds the hf trunk's folder.
    pub fn load(files: &dyn Files, trunk: Option<&dyn Files>, device: Device, tasks: Option<&[&str]>) -> Result<MultiTask> {
        let text = files.read(spec::FILE)?.ok_or_else(|| Error::Io {
            path: format!("{}/{}", files.name(), spec::FILE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing from the model folder"),
        })?;
        let spec = Spec::parse(&text)?;
        let selected = spec.select(tasks)?;
        let mut shards = Vec::new();
        for name in &spec.weights {
            let st = files.safetensors(name)?.ok_or_else(|| Error::Io {
                path: format!("{}/{name}", files.name()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("named in {} 'weights' but missing", spec::FILE)),
            })?;
            shards.push(st);
        }
        let w = Shards(shards);
        let l = Loader::new(&device, &w);
        // Adapter bytes for every task (an hf trunk with a task subset; else counted below).
        let (mut loaded_stacks, mut all_stacks) = (0u64, 0u64);
        let (trunk, c) = match (&spec.trunk, &spec.input) {
            (TrunkSpec::Vit(v), InputSpec::Image { height, width, channels, scale }) => {
                let heads = spec.check_weights(&w.0, v.dim)?;
                let mut vit = vit::Vit::load(&l, v, (*height, *width, *channels), *scale)?;
                if spec.deltas.is_some() {
                    l.part(Part::Adapters);
                    deltas::attach_vit(&l, &spec, v, &mut vit)?;
                    l.part(Part::Trunk);
                }
                ((Trunk::Vit(Box::new(vit), Vec::new()), heads), v.dim)
            }
            (TrunkSpec::Hf { path }, _) => {
                let tf = trunk.ok_or_else(|| Error::InvalidParam {
                    op: "multitask",
                    reason: format!("{}: the hf trunk '{path}' was not given (pass the trunk's files)", spec.name),
                })?;
                let loaded = Cell::new(0u64);
                let mut enc = Encoder::load_with_progress(tf, device.clone(), &|p: Progress| loaded.set(p.loaded))?;
                l.add(loaded.get());
                let c = enc.bert.cfg.hidden_size;
                let heads = spec.check_weights(&w.0, c)?;
                let adapters = branches::load(files, &l, &spec, &selected)?;
                let linears: Vec<(String, usize, usize)> = enc.bert.lora_parts().1.iter().map(|x| (x.name.clone(), x.inp, x.out)).collect();
                l.part(Part::Adapters);
                loaded_stacks = branches::stack_bytes(&adapters, &linears);
                l.add(loaded_stacks);
                if selected.len() < spec.tasks.len() {
                    let cpu = Device::cpu();
                    all_stacks = branches::stack_bytes(&branches::all_task_shapes(files, &Loader::new(&cpu, &w), &spec, &linears)?, &linears);
                }
                if !adapters.is_empty() {
                    enc.bert.add_adapters(&device, adapters)?;
                }
                l.part(Part::Trunk);
                ((Trunk::Hf(Box::new(enc)), heads), c)
            }
            _ => unreachable!("Spec::parse pairs inputs with trunks"),
        };
        let (mut trunk, head_shapes) = trunk;
        let parts = load_parts(&l, &spec, &selected, &head_shapes, c)?;
        l.part(Part::Adapters);
        let router = match &spec.deltas {
            Some(d) => Some(deltas::Router::load(&l, d, c)?),
            None => None,
        };
        let resident = l.bytes.get();
        let all_tasks = if selected.len() == spec.tasks.len() {
            resident.total()
        } else {
            let cpu = Device::cpu();
            let counter = Loader::new(&cpu, &w);
            let all: Vec<String> = spec.tasks.keys().cloned().collect();
            load_parts(&counter, &spec, &all, &head_shapes, c)?;
            // The trunk and everything every task shares (ViT deltas and the router) are resident
            // either way; an hf trunk's adapter stacks grow with the number of task adapters.
            resident.trunk + resident.adapters - loaded_stacks + all_stacks + counter.bytes.get().total()
        };
        if let Trunk::Vit(_, moe) = &mut trunk {
            *moe = parts.moe;
        }
        Ok(MultiTask { spec, device, tasks: selected, trunk, mmoe: parts.mmoe, heads: parts.heads, router, resident, all_tasks })
    }

    /// The tasks this model was loaded for (in name order).
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    /// Bytes uploaded to the device for the loaded tasks (trunk included).
    pub fn resident_bytes(&self) -> u64 {
        self.resident.total()
    }

    /// [`MultiTask::resident_bytes`] by part.
    pub fn residency(&self) -> Residency {
        self.resident
    }

    /// Bytes the same model loaded for every task uploads.
    pub fn all_tasks_bytes(&self) -> u64 {
        self.all_tasks
    }

    /// Each input as the kind this model takes (`what`, for the error), or a typed error.
    fn unpack<'a, T>(&self, inputs: &'a [Input], what: &str, f: impl Fn(&'a Input) -> Option<T>) -> Result<Vec<T>> {
        inputs
            .iter()
            .map(|i| f(i).ok_or_else(|| Error::InvalidParam { op: "multitask", reason: format!("{} takes {what} only", self.spec.name) }))
            .collect()
    }

    /// Runs `tasks` (`None` or empty: every loaded task) on a batch of inputs.
    pub async fn run(&self, inputs: &[Input], tasks: Option<&[&str]>) -> Result<Run> {
        let selected = self.spec.select(tasks)?;
        let selected: Vec<String> = match tasks.filter(|t| !t.is_empty()) {
            None => self.tasks.clone(),
            Some(_) => selected,
        };
        for t in &selected {
            if !self.tasks.contains(t) {
                return Err(spec::task_err(&self.spec.name, t, format!("was not loaded (loaded: {})", self.tasks.join(", "))));
            }
        }
        if inputs.is_empty() {
            return Err(Error::InvalidParam { op: "multitask", reason: "no inputs".into() });
        }
        let dev = &self.device;
        // Per task: (tokens [B, T, C], pooled [B, C]); valid tokens per input; routing ids per block.
        let mut feats: BTreeMap<String, (Tensor, Tensor)> = BTreeMap::new();
        let valid: Vec<Vec<bool>>;
        let mut ids: Vec<(String, usize, Tensor)> = Vec::new();
        // The deltas' router weights [B, T], when the model has deltas.
        let mut delta_w: Option<Tensor> = None;
        match &self.trunk {
            Trunk::Vit(v, moe) => {
                let imgs = self.unpack(inputs, "images", |i| match i {
                    Input::Image(p) => Some(p.as_slice()),
                    Input::Text(_) => None,
                })?;
                let mut x = v.embed(dev, &imgs)?;
                let first = v.spec.moe_blocks.iter().copied().min().unwrap_or(v.spec.depth);
                // Deltas (never with MoE blocks): a first pass with the shared weights feeds the router.
                let sel = match &self.router {
                    Some(router) => {
                        let mut x1 = x.clone();
                        for i in 0..v.spec.depth {
                            x1 = v.mlp(dev, i, &v.attention(dev, i, &x1, None)?, None)?;
                        }
                        let r = router.weights(dev, &v.finish(dev, &x1)?.1)?;
                        delta_w = Some(r.clone());
                        Some(deltas::row_sel(dev, &r, v.tokens())?)
                    }
                    None => None,
                };
                for i in 0..first {
                    x = v.mlp(dev, i, &v.attention(dev, i, &x, sel.as_ref())?, sel.as_ref())?;
                }
                // Token-level heads read the patch tokens, not cls (the fixtures' documented choice).
                let row: Vec<bool> = (0..v.tokens()).map(|i| i > 0).collect();
                valid = vec![row; inputs.len()];
                if first == v.spec.depth {
                    let f = v.finish(dev, &x)?;
                    selected.iter().for_each(|t| _ = feats.insert(t.clone(), f.clone()));
                } else {
                    for t in &selected {
                        let mut xt = x.clone();
                        for (i, routed) in moe.iter().enumerate().skip(first) {
                            xt = v.attention(dev, i, &xt, None)?;
                            xt = match routed {
                                None => v.mlp(dev, i, &xt, None)?,
                                Some(m) => {
                                    let (b, tk, c) = (xt.dims()[0], xt.dims()[1], xt.dims()[2]);
                                    let h = v.blocks[i].ln2.forward(dev, &xt.reshape(&[b * tk, c])?)?;
                                    let (y, idx) = m.forward(dev, t, &h)?;
                                    ids.push((t.clone(), i, idx));
                                    dev.exec1(&Op::Add, &[&xt, &y.reshape(&[b, tk, c])?])?
                                }
                            };
                        }
                        feats.insert(t.clone(), v.finish(dev, &xt)?);
                    }
                }
            }
            Trunk::Hf(enc) => {
                let texts = self.unpack(inputs, "text", |i| match i {
                    Input::Text(t) => Some(t.as_str()),
                    Input::Image(_) => None,
                })?;
                let b = texts.len();
                let input = enc.tokenize(&texts)?;
                let (mode, norm) = enc.pooling.unwrap_or((Pooling::Mean, false));
                let adapters = !enc.bert.lora.is_empty();
                // Each distinct adapter mix among the selected tasks is one trunk stream (MTLoRA);
                // all streams run as one mixed batch.
                let mut groups: Vec<Mix> = Vec::new();
                let mut group_of = BTreeMap::new();
                for t in &selected {
                    let m = branches::task_mix(&self.spec, t);
                    let g = groups.iter().position(|x| *x == m).unwrap_or_else(|| {
                        groups.push(m);
                        groups.len() - 1
                    });
                    group_of.insert(t.clone(), g);
                }
                // Deltas: the router reads the pooled feature of a pass with the shared adapter only.
                let mut router_w: Option<Vec<f32>> = None;
                if let Some(router) = &self.router {
                    let shared = vec![branches::shared_mix(&self.spec); b];
                    let h = enc.bert.forward_mixed(dev, &input, Some(&shared))?;
                    let f = pool(&dev.download(&h).await?, &input.mask, mode, norm)?;
                    let f = dev.upload(&TensorData::f32(&[b, h.dims()[2]], f.concat())?)?;
                    let r = router.weights(dev, &f)?;
                    router_w = Some(dev.download(&r).await?.to_f32_vec());
                    delta_w = Some(r);
                }
                let names: Vec<String> = self.spec.deltas.iter().flat_map(|d| d.names.iter().map(|n| format!("delta:{n}"))).collect();
                let mut mixes: Vec<Mix> = Vec::with_capacity(b * groups.len());
                for g in &groups {
                    for bi in 0..b {
                        let mut m = g.clone();
                        if let Some(r) = &router_w {
                            m.extend(names.iter().enumerate().map(|(j, n)| (n.clone(), r[bi * names.len() + j])));
                        }
                        mixes.push(m);
                    }
                }
                let input = if groups.len() == 1 { input } else { input.repeat(groups.len()) };
                let h = if adapters { enc.bert.forward_mixed(dev, &input, Some(&mixes))? } else { enc.bert.forward(dev, &input)? }; // [G*B, T, C]
                let host = dev.download(&h).await?;
                let pooled = pool(&host, &input.mask, mode, norm)?;
                let (tk, c) = (h.dims()[1], h.dims()[2]);
                let hv = host.as_f32()?;
                let mut streams = Vec::new();
                for g in 0..groups.len() {
                    let tokens = if groups.len() == 1 { h.clone() } else { dev.upload(&TensorData::f32(&[b, tk, c], hv[g * b * tk * c..(g + 1) * b * tk * c].to_vec())?)? };
                    let p = dev.upload(&TensorData::f32(&[b, c], pooled[g * b..(g + 1) * b].concat())?)?;
                    streams.push((tokens, p));
                }
                valid = input.mask.chunks(input.tokens).take(b).map(|m| m.iter().map(|&x| x != 0).collect()).collect();
                selected.iter().for_each(|t| _ = feats.insert(t.clone(), streams[group_of[t]].clone()));
            }
        }
        // MMoE experts once per distinct pooled feature (once for all tasks until the stream forks).
        let mut mixed: BTreeMap<String, Tensor> = BTreeMap::new();
        if let Some(m) = &self.mmoe {
            let mut shared: Option<Tensor> = None;
            let forked = !ids.is_empty();
            for t in selected.iter().filter(|t| self.spec.tasks[*t].mmoe) {
                let f = &feats[t].1;
                let ex = match (&shared, forked) {
                    (Some(e), false) => e.clone(),
                    _ => m.experts(dev, f)?,
                };
                shared = Some(ex.clone());
                mixed.insert(t.clone(), m.mix(dev, t, f, &ex)?);
            }
        }
        let mut logits = Vec::new();
        for t in &selected {
            let ts = &self.spec.tasks[t];
            let (tokens, pooled) = &feats[t];
            let x = match ts.level {
                Level::Sequence => mixed.get(t).unwrap_or(pooled).clone(),
                Level::Token => tokens.reshape(&[tokens.dims()[0] * tokens.dims()[1], tokens.dims()[2]])?,
            };
            let y = self.heads[t].forward(dev, &x)?;
            let p = if ts.kind == TaskType::Classification { Some(dev.exec1(&Op::Softmax, &[&y])?) } else { None };
            logits.push((t.clone(), y, p));
        }
        dev.flush()?;
        let b = inputs.len();
        let mut outputs = vec![BTreeMap::new(); b];
        for (t, y, p) in logits {
            let ts = &self.spec.tasks[&t];
            let y = dev.download(&y).await?;
            let n = y.dims()[1];
            let yv = y.as_f32()?;
            let pv = match &p {
                Some(p) => Some(dev.download(p).await?.to_f32_vec()),
                None => None,
            };
            let pred = |row: usize| {
                let values = yv[row * n..(row + 1) * n].to_vec();
                let probs = pv.as_ref().map(|p| p[row * n..(row + 1) * n].to_vec());
                let (index, label, score) = match &probs {
                    Some(pr) => {
                        // argmax of the logits, the first on ties (as torch.argmax).
                        let i = values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best });
                        (Some(i), ts.labels.get(i).cloned(), Some(pr[i]))
                    }
                    None => (None, None, None),
                };
                Prediction { label, index, score, values, probs }
            };
            for (bi, out) in outputs.iter_mut().enumerate() {
                let o = match ts.level {
                    Level::Sequence => Output::Sequence(pred(bi)),
                    Level::Token => {
                        let per = y.dims()[0] / b;
                        Output::Token((0..per).filter(|&ti| valid[bi].get(ti).copied().unwrap_or(false)).map(|ti| pred(bi * per + ti)).collect())
                    }
                };
                out.insert(t.clone(), o);
            }
        }
        let mut routing: Routing = selected.iter().map(|t| (t.clone(), BTreeMap::new())).collect();
        if let Trunk::Vit(_, moe) = &self.trunk {
            let e = self.spec.moe.as_ref().map_or(0, |m| m.experts);
            for (t, block, idx) in &ids {
                let resident = &moe[*block].as_ref().expect("ids come from MoE blocks").resident;
                let mut counts = vec![0u64; e];
                for &r in dev.download(idx).await?.as_u32()? {
                    counts[resident[r as usize]] += 1;
                }
                routing.get_mut(t).expect("selected").insert(*block, counts);
            }
        }
        let deltas = match delta_w {
            Some(r) => {
                let n = r.dims()[1];
                dev.download(&r).await?.to_f32_vec().chunks(n).map(<[f32]>::to_vec).collect()
            }
            None => Vec::new(),
        };
        Ok(Run { outputs, routing, deltas })
    }
}
