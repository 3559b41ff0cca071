//! LoRA adapters (PEFT format): loading, combining, and running them on a base model fused
//! (`W' = W + s·B·A`) or unfused (`y = W·x + s·B·(A·x)`), several at once and a different one per
//! sequence in a batch.
//!
//! Shapes: R rank, In/Out the targeted linear's input/output features. `A [R, In]`, `B [Out, R]`
//! as PEFT stores them (`lora_A.weight`, `lora_B.weight`).

pub mod combine;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
pub mod peft;
pub mod runtime;

use crate::tensor::TensorData;
use std::collections::BTreeMap;

/// The fields of `adapter_config.json` taskloom uses. Unknown keys are kept in `raw` (and written
/// back unchanged when an adapter is saved).
#[derive(Clone, Debug)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub use_rslora: bool,
    pub fan_in_fan_out: bool,
    /// Module names or one regular expression (PEFT: a string is a full-match regex).
    pub target_modules: Targets,
    /// Per-module rank / alpha overrides, keyed by a pattern matched against the module path's end.
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f32>,
    /// Modules whose full weights the adapter carries (e.g. a task's classifier head).
    pub modules_to_save: Vec<String>,
    /// The whole JSON object as read.
    pub raw: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    Names(Vec<String>),
    Regex(String),
}

/// One adapted module: `ΔW = scale · B · A`.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// `[R, In]` row-major f32.
    pub a: Vec<f32>,
    /// `[Out, R]` row-major f32.
    pub b: Vec<f32>,
    pub r: usize,
    pub inp: usize,
    pub out: usize,
    /// `alpha / r` (or `alpha / √r` with rsLoRA), with any rank/alpha pattern applied.
    pub scale: f32,
}

/// A loaded adapter, on the host. Module paths are the base model's names without the PEFT
/// prefix and suffix: `model.layers.0.self_attn.q_proj`.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub name: String,
    pub config: LoraConfig,
    pub modules: BTreeMap<String, LoraModule>,
    /// `modules_to_save` tensors by their base-model name (`classifier.weight`).
    pub saved: BTreeMap<String, TensorData>,
}
