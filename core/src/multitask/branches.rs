//! Per-task LoRA branches (MTLoRA) on an hf trunk: the PEFT adapter folders `taskloom.json` names
//! (`shared_adapter`, each task's `adapter`), registered on the trunk's BERT beside the
//! input-routed deltas ([`super::deltas`]), the mix each task's trunk pass uses, and the device
//! bytes their stacked factors take.

use super::deltas;
use super::spec::Spec;
use super::Loader;
use crate::error::{Error, Result};
use crate::lora::runtime::Mix;
use crate::lora::{Adapter, LoraConfig, LoraModule};
use crate::models::hf::{Files, Shards};
use std::collections::BTreeMap;

const SHARED: &str = "shared";

/// The mix of a pass with the shared adapter only (the deltas' router pass).
pub(crate) fn shared_mix(spec: &Spec) -> Mix {
    spec.shared_adapter.iter().map(|_| (SHARED.to_string(), 1.0)).collect()
}

/// The adapter mix of `task`'s trunk pass: the shared adapter and its own.
pub(crate) fn task_mix(spec: &Spec, task: &str) -> Mix {
    let mut m = shared_mix(spec);
    if spec.tasks[task].adapter.is_some() {
        m.push((format!("task:{task}"), 1.0));
    }
    m
}

/// `files` under the folder `dir/` (an adapter folder beside taskloom.json).
struct SubFiles<'a> {
    files: &'a dyn Files,
    dir: String,
}

impl Files for SubFiles<'_> {
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        self.files.read(&format!("{}/{rel}", self.dir))
    }
    fn safetensors(&self, rel: &str) -> Result<Option<crate::formats::safetensors::SafeTensors>> {
        self.files.safetensors(&format!("{}/{rel}", self.dir))
    }
    fn weights(&self) -> Result<Shards> {
        Err(Error::InvalidParam { op: "multitask", reason: format!("{}: an adapter folder has no model weights", self.name()) })
    }
    fn name(&self) -> String {
        format!("{}/{}", self.files.name(), self.dir)
    }
}

/// The adapter folders `tasks` use (the shared one first), with the names [`task_mix`] gives them.
fn folders<'a>(files: &'a dyn Files, spec: &'a Spec, tasks: &'a [String]) -> impl Iterator<Item = (String, SubFiles<'a>)> + 'a {
    let sub = move |dir: &String| SubFiles { files, dir: dir.trim_end_matches('/').to_string() };
    let shared = spec.shared_adapter.iter().map(move |d| (SHARED.to_string(), sub(d)));
    shared.chain(tasks.iter().filter_map(move |t| spec.tasks[t].adapter.as_ref().map(|d| (format!("task:{t}"), sub(d)))))
}

/// The adapters an hf trunk holds for `tasks`: the shared one, the tasks' own (read from their
/// folders) and the deltas.
pub(crate) fn load(files: &dyn Files, l: &Loader, spec: &Spec, tasks: &[String]) -> Result<Vec<Adapter>> {
    let mut out = folders(files, spec, tasks).map(|(name, dir)| Adapter::load(&name, &dir)).collect::<Result<Vec<_>>>()?;
    out.extend(deltas::hf_adapters(l, spec)?);
    Ok(out)
}

/// The shapes (ranks per targeted linear, no factors) of every adapter the trunk would hold with
/// all tasks loaded, from the adapters' `adapter_config.json` only — so a task subset can report
/// the all-tasks bytes without reading (or, in a browser, downloading) the other tasks' weights.
pub(crate) fn all_task_shapes(files: &dyn Files, l: &Loader, spec: &Spec, linears: &[(String, usize, usize)]) -> Result<Vec<Adapter>> {
    let all: Vec<String> = spec.tasks.keys().cloned().collect();
    let mut out = Vec::new();
    for (name, dir) in folders(files, spec, &all) {
        let config = LoraConfig::read(&name, &dir)?;
        let mut modules = BTreeMap::new();
        for (m, i, o) in linears.iter().filter(|(m, ..)| config.targets(m)) {
            let (r, scale) = config.rank_and_scale(&name, m)?;
            modules.insert(m.clone(), LoraModule { a: Vec::new(), b: Vec::new(), r, inp: *i, out: *o, scale });
        }
        out.push(Adapter { name, config, modules, saved: BTreeMap::new() });
    }
    out.extend(deltas::hf_adapters(l, spec)?);
    Ok(out)
}

/// Bytes of the stacked factors `adapters` give `linears` (`(name, in, out)`): every targeted
/// linear holds `N × R_max × (in + out)` f32s, N = all adapters (see `lora::runtime`).
pub(crate) fn stack_bytes(adapters: &[Adapter], linears: &[(String, usize, usize)]) -> u64 {
    linears
        .iter()
        .map(|(name, i, o)| {
            let r = adapters.iter().filter_map(|a| a.modules.get(name)).map(|m| m.r).max().unwrap_or(0);
            (adapters.len() * r * (i + o) * 4) as u64
        })
        .sum()
}
