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

pub mod heads;
pub mod routed;
pub mod spec;
pub mod vit;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::formats::safetensors::SafeTensors;
use crate::models::bert::{pool, Pooling};
use crate::models::hf::{Encoder, Files, Shards};
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
}

impl Residency {
    pub fn total(&self) -> u64 {
        self.trunk + self.experts + self.gates + self.heads + self.mmoe
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Part {
    Trunk,
    Experts,
    Gates,
    Heads,
    Mmoe,
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
            let bytes = files.read(name)?.ok_or_else(|| Error::Io {
                path: format!("{}/{name}", files.name()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("named in {} 'weights' but missing", spec::FILE)),
            })?;
            shards.push(SafeTensors::from_bytes(name.clone(), bytes)?);
        }
        let w = Shards(shards);
        let l = Loader::new(&device, &w);
        let (trunk, c) = match (&spec.trunk, &spec.input) {
            (TrunkSpec::Vit(v), InputSpec::Image { height, width, channels, scale }) => {
                let heads = spec.check_weights(&w.0, v.dim)?;
                let vit = vit::Vit::load(&l, v, (*height, *width, *channels), *scale)?;
                ((Trunk::Vit(Box::new(vit), Vec::new()), heads), v.dim)
            }
            (TrunkSpec::Hf { path }, _) => {
                let tf = trunk.ok_or_else(|| Error::InvalidParam {
                    op: "multitask",
                    reason: format!("{}: the hf trunk '{path}' was not given (pass the trunk's files)", spec.name),
                })?;
                let loaded = Cell::new(0u64);
                let enc = Encoder::load_with_progress(tf, device.clone(), &|p: Progress| loaded.set(p.loaded))?;
                l.add(loaded.get());
                let c = enc.bert.cfg.hidden_size;
                let heads = spec.check_weights(&w.0, c)?;
                ((Trunk::Hf(Box::new(enc)), heads), c)
            }
            _ => unreachable!("Spec::parse pairs inputs with trunks"),
        };
        let (mut trunk, head_shapes) = trunk;
        let parts = load_parts(&l, &spec, &selected, &head_shapes, c)?;
        let resident = l.bytes.get();
        let all_tasks = if selected.len() == spec.tasks.len() {
            resident.total()
        } else {
            let cpu = Device::cpu();
            let counter = Loader::new(&cpu, &w);
            let all: Vec<String> = spec.tasks.keys().cloned().collect();
            load_parts(&counter, &spec, &all, &head_shapes, c)?;
            resident.trunk + counter.bytes.get().total()
        };
        if let Trunk::Vit(_, moe) = &mut trunk {
            *moe = parts.moe;
        }
        Ok(MultiTask { spec, device, tasks: selected, trunk, mmoe: parts.mmoe, heads: parts.heads, resident, all_tasks })
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
        match &self.trunk {
            Trunk::Vit(v, moe) => {
                let imgs = inputs
                    .iter()
                    .map(|i| match i {
                        Input::Image(p) => Ok(p.as_slice()),
                        Input::Text(_) => Err(Error::InvalidParam { op: "multitask", reason: format!("{} takes images, not text", self.spec.name) }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut x = v.embed(dev, &imgs)?;
                let first = v.spec.moe_blocks.iter().copied().min().unwrap_or(v.spec.depth);
                for i in 0..first {
                    x = v.mlp(dev, i, &v.attention(dev, i, &x)?)?;
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
                            xt = v.attention(dev, i, &xt)?;
                            xt = match routed {
                                None => v.mlp(dev, i, &xt)?,
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
                let texts = inputs
                    .iter()
                    .map(|i| match i {
                        Input::Text(t) => Ok(t.as_str()),
                        Input::Image(_) => Err(Error::InvalidParam { op: "multitask", reason: format!("{} takes text, not images", self.spec.name) }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let input = enc.tokenize(&texts)?;
                let h = enc.bert.forward(dev, &input)?; // [B, T, C]
                let host = dev.download(&h).await?;
                let (mode, norm) = enc.pooling.unwrap_or((Pooling::Mean, false));
                let pooled = pool(&host, &input.mask, mode, norm)?;
                let c = h.dims()[2];
                let pooled = dev.upload(&TensorData::f32(&[inputs.len(), c], pooled.concat())?)?;
                valid = input.mask.chunks(input.tokens).map(|m| m.iter().map(|&x| x != 0).collect()).collect();
                selected.iter().for_each(|t| _ = feats.insert(t.clone(), (h.clone(), pooled.clone())));
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
        Ok(Run { outputs, routing })
    }
}
