//! TALL task masks at run time: one merged model, switched to task `t`'s weights
//! `θ_t = θ_0 + m_t ⊙ (θ_merged − θ_0)` (TALL-masks, seed-methods §1.5) as it loads.
//!
//! A merge with `tall_masks: true` writes `tall_masks.safetensors` next to the model: per merged
//! tensor `NAME` and task `K`, the bit-packed mask `NAME:K` (numpy `packbits`, MSB first). Its
//! `__metadata__` says what switching needs:
//! - `numel`: JSON map mask key → element count;
//! - `tasks`: JSON list of `{"index": K, "model": REF}`, `REF` the model as the recipe names it;
//! - `base_model`: the base model as the recipe names it, and `base_model_path`: the folder it was
//!   read from (absolute, when the merge read folders).
//!
//! [`TaskWeights`] is a [`Weights`] source over the merged folder: each tensor is computed when the
//! model loader asks for it, from the memory-mapped merged and base tensors and the mask; tensors
//! without a mask (no task vector) are the merged ones.

use crate::error::{Error, FileError, Result};
use crate::formats::safetensors::SafeTensors;
use crate::models::hf::Shards;
use crate::models::Weights;
use crate::tensor::TensorData;
use std::collections::BTreeMap;
use std::path::Path;

/// The masks file name, next to the merged model.
pub const FILE: &str = "tall_masks.safetensors";

/// Task `k` of the masks file: the model the recipe names and its index among the merge inputs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskRef {
    pub index: usize,
    pub model: String,
}

/// The merged model's weights as task `task` sees them.
pub struct TaskWeights {
    merged: Shards,
    base: Shards,
    masks: SafeTensors,
    numel: BTreeMap<String, usize>,
    /// The mask key suffix `:K`.
    suffix: String,
    origin: String,
}

/// The tasks of a masks file, from its metadata.
pub fn tasks(masks: &SafeTensors) -> Result<Vec<TaskRef>> {
    let bad = |reason: String| Error::File { file: masks.file().to_string(), kind: FileError::BadHeader(reason) };
    let t = masks.metadata().get("tasks").ok_or_else(|| bad("no 'tasks' in the metadata (written by an older taskloom?)".into()))?;
    serde_json::from_str(t).map_err(|e| bad(format!("metadata 'tasks': {e}")))
}

/// Finds task `name`: a model as the recipe names it, its folder name, or its index.
pub fn find_task<'a>(tasks: &'a [TaskRef], name: &str, model: &str) -> Result<&'a TaskRef> {
    let last = |s: &str| Path::new(s).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let hit = tasks
        .iter()
        .find(|t| t.model == name)
        .or_else(|| tasks.iter().find(|t| last(&t.model) == name))
        .or_else(|| name.parse::<usize>().ok().and_then(|i| tasks.iter().find(|t| t.index == i)));
    hit.ok_or_else(|| Error::Task {
        model: model.to_string(),
        task: name.to_string(),
        reason: format!(
            "no such task in {FILE}; the tasks are {}",
            tasks.iter().map(|t| format!("{} ({})", last(&t.model), t.index)).collect::<Vec<_>>().join(", ")
        ),
    })
}

impl TaskWeights {
    /// Opens the merged folder `dir` for task `name`; the base model is `base` when given, else the
    /// folder recorded in the masks file (`base_model_path`, then `base_model` relative to `dir`'s
    /// parent).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &Path, name: &str, base: Option<&Path>) -> Result<TaskWeights> {
        let model = dir.display().to_string();
        let mpath = dir.join(FILE);
        if !mpath.is_file() {
            return Err(Error::Task { model, task: name.to_string(), reason: format!("no {FILE} (merge with `tall_masks: true`)") });
        }
        let masks = SafeTensors::open(&mpath)?;
        let base_dir = match base {
            Some(b) => b.to_path_buf(),
            None => {
                let meta = masks.metadata();
                let candidates: Vec<std::path::PathBuf> = [meta.get("base_model_path").map(std::path::PathBuf::from), meta.get("base_model").map(|b| dir.parent().unwrap_or(Path::new(".")).join(b))]
                    .into_iter()
                    .flatten()
                    .collect();
                candidates.iter().find(|p| p.is_dir()).cloned().ok_or_else(|| Error::Task {
                    model: model.clone(),
                    task: name.to_string(),
                    reason: format!("the base model is not found (looked in {})", candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
                })?
            }
        };
        use crate::models::hf::{DirFiles, Files};
        let merged = DirFiles(dir.to_path_buf()).weights()?;
        let merged = Shards(merged.0.into_iter().filter(|s| !s.file().ends_with(FILE)).collect());
        let base = DirFiles(base_dir).weights()?;
        TaskWeights::new(merged, base, masks, name, &model)
    }

    /// From opened shards (any source: wasm, tests).
    pub fn new(merged: Shards, base: Shards, masks: SafeTensors, name: &str, model: &str) -> Result<TaskWeights> {
        let tasks = tasks(&masks)?;
        let t = find_task(&tasks, name, model)?;
        let numel: BTreeMap<String, usize> = match masks.metadata().get("numel") {
            Some(s) => serde_json::from_str(s).map_err(|e| Error::File { file: masks.file().to_string(), kind: FileError::BadHeader(format!("metadata 'numel': {e}")) })?,
            None => BTreeMap::new(),
        };
        let origin = format!("{} (task '{}' of {})", merged.origin(), t.model, masks.file());
        Ok(TaskWeights { merged, base, masks, numel, suffix: format!(":{}", t.index), origin })
    }
}

impl Weights for TaskWeights {
    fn tensor(&self, name: &str) -> Result<TensorData> {
        let merged = self.merged.tensor(name)?;
        let key = format!("{name}{}", self.suffix);
        if !self.masks.contains(&key) {
            return Ok(merged);
        }
        let bits = self.masks.bytes(&key)?;
        let n = merged.shape().numel();
        let bad = |reason: String| Error::Merge { tensor: name.to_string(), reason: format!("{}: {reason}", self.masks.file()) };
        if self.numel.get(&key).is_some_and(|m| *m != n) || bits.len() != n.div_ceil(8) {
            return Err(bad(format!("mask '{key}' has {} bytes for {n} elements", bits.len())));
        }
        let base = self.base.tensor(name)?;
        if base.dims() != merged.dims() {
            return Err(bad(format!("base shape {} but merged {}", base.shape(), merged.shape())));
        }
        let (b, m) = (base.to_f32_vec(), merged.to_f32_vec());
        let out: Vec<f32> = b
            .iter()
            .zip(&m)
            .enumerate()
            .map(|(j, (b, m))| if bits[j / 8] >> (7 - j % 8) & 1 == 1 { b + (m - b) } else { *b })
            .collect();
        TensorData::f32(merged.dims(), out)
    }
    fn contains(&self, name: &str) -> bool {
        self.merged.contains(name)
    }
    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn stored_bytes(&self, name: &str) -> u64 {
        self.merged.stored_bytes(name)
    }
    fn total_bytes(&self) -> u64 {
        self.merged.total_bytes()
    }
}
