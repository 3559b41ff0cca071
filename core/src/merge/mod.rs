//! # Model merging: mergekit recipes, tensor-streamed, on the CPU or the GPU
//!
//! `merge` reads a mergekit YAML recipe unchanged ([`Recipe`]), opens every input model (memory-mapped
//! natively), and writes the merged Hugging Face folder one tensor at a time: read that tensor from
//! every input, compute, write it into its shard, drop it. Peak memory is about one tensor × inputs.
//! [`merge_sources`] does the same from [`Source`]s whose shards may be lazy ([`source`]): only the
//! headers are read up front and each tensor's byte range when it is merged (the browser reads
//! `File` slices, HTTP `Range`s or the caller's buffers this way), so no input is ever held whole.
//!
//! ## Methods and their semantics
//! mergekit 0.1.5's, per tensor: `linear`, `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`,
//! `breadcrumbs`, `breadcrumbs_ties`, `della`, `della_linear`, `slerp`, `model_stock`, and
//! `passthrough` (with `slices` to stack layers). The task-arithmetic family runs as ops of the op
//! table ([`crate::Op::MagnitudeMask`], `RandomMask`, `DellaMask`, `MaskedRescale`, `TaskMerge`) on the
//! GPU; on the CPU the same arithmetic runs fused (`fused.rs`: a histogram pass for magnitude
//! selection, then one merge pass straight from the mapped inputs, bit-identical to the ops; DELLA,
//! imported masks and TALL use the ops). The others are cheap and memory-bound and run on the host.
//!
//! Where taskloom differs from mergekit, on purpose:
//! - **Ties in magnitude selection** go to the lower flat index (mergekit's `argsort` leaves them open).
//! - **Breadcrumbs keeps at least one entry** (`max(1, ⌊ρn⌋)`): mergekit zeroes a tensor with `ρn < 1`.
//! - **Randomness** (DARE, DELLA) comes from the counter-based RNG of [`crate::sparsify`], keyed by
//!   (seed, output tensor name, flat index `r·N + j` in the stacked `[R, N]` non-base inputs), so CPU,
//!   GPU and wasm draw identical masks. mergekit's torch draws can be imported instead ([`masks`]).
//! - **Arithmetic** is f32 with f64 reductions whatever the recipe's `dtype` (inputs are rounded to
//!   that dtype first, as mergekit casts them); DELLA ranks ties by lower index; DELLA on tensors of
//!   rank > 2 is refused.
//! - **Ranges are checked**: density outside (0, 1], gamma outside [0, 1), DELLA's ρ ± ε outside (0, 1)
//!   are errors naming the model and tensor (mergekit clamps or silently zeroes).
//!
//! ## The semantics switch (`taskloom: {semantics: peft}`)
//! `mergekit` (default) elects TIES signs on the **weighted** task vectors, divides by the sum of the
//! agreeing weights (when `normalize`), and rescales DARE / DELLA to the task vector's L1 norm.
//! `peft` (= `peft.utils.merge_utils`, and for DARE the paper's rescale) elects signs on the
//! **unweighted** pruned vectors, divides by the **count** of agreeing entries, and rescales DARE by
//! `1/density`.
//!
//! ## Beyond mergekit (parameters of the task-arithmetic methods)
//! - `lines_alpha`, `lines_beta` (LiNeS): the merged task vector of a tensor at layer position
//!   `t ∈ [0, 1]` (0 for embeddings / head / final norm) is scaled by `α + β·t` (on top of `lambda`).
//! - `tall_masks: true` (TALL): per task `k`, mask `|τ_k| > tall_lambda_k · |τ_MTL − τ_k|` (τ_MTL the
//!   merged task vector; `tall_lambda` per model, default 0.6), written bit-packed (numpy `packbits`,
//!   MSB first, per tensor, key `NAME:K`) to `tall_masks.safetensors` next to the model.
//! - `consensus_k: k` (Consensus merging): elements where fewer than `k` TALL masks agree keep the base.
//!
//! - `merge_method: pcb` (PCB merging, seed-methods §1.6; [`pcb`]): per tensor, `weight` per model,
//!   `lambda`, `pcb_ratio` (r, default 0.1), `pcb_clip` (default 0.0001); host-only, f64.
//! - `taskloom run --task-mask NAME` ([`task_mask`]): the merged model switched to one task's TALL
//!   mask as it loads; the masks file records the tasks (the recipe's model names) and the base.
//!
//! The summary reports the peak tensor memory the engine held (inputs of one tensor, mapped or
//! decoded, its output and the method's intermediates) and, natively, compute / write seconds.
//!
//! Not implemented: `modules`, `tokenizer` / `tokenizer_source: union`, LoRA model references,
//! `residual_weight`, mergekit's other methods (nuslerp, karcher, sce, ...): each is a recipe error.

mod engine;
mod fused;
pub mod gta;
pub mod interp;
pub mod masks;
pub mod method;
pub(crate) mod ops;
pub mod pcb;
pub mod output;
pub mod plan;
pub mod recipe;
pub mod setting;
pub mod source;
pub mod task_mask;

pub use engine::{packbits, Options};
pub use method::Method;
pub use output::{MemSink, Sink};
#[cfg(not(target_arch = "wasm32"))]
pub use output::DirSink;
pub use plan::Model;
pub use recipe::{Recipe, Semantics};
pub use source::{ByteSource, LazyShard, LazySource, Shard, Source};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::hf::Files;

/// How far a merge has got.
#[derive(Clone, Debug)]
pub struct Progress {
    pub tensors: usize,
    pub total_tensors: usize,
    /// Bytes of merged tensor data written so far, and in all.
    pub bytes: u64,
    pub total_bytes: u64,
    /// The tensor just written.
    pub tensor: String,
}

/// What a merge did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub tensors: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Files written, in order.
    pub files: Vec<String>,
    /// TALL masks written (tensor × task).
    pub tall_masks: usize,
    /// Peak tensor memory the merge held at once (bytes): the input tensors of one output tensor
    /// (mapped or decoded), its output and the intermediates of its method, as the engine
    /// allocates them. Files' other bytes are never held.
    pub peak_bytes: u64,
    /// Natively: seconds spent computing (reading the mapped inputs included) and writing.
    pub compute_seconds: f64,
    pub write_seconds: f64,
}

/// Opens the recipe's models through `files` (one [`Files`] per model reference, in
/// [`Recipe::models`] order) and merges into `sink`. Shards are memory-mapped natively (or bytes
/// in memory): see [`merge_sources`] for models read tensor by tensor.
pub async fn merge(
    recipe: &Recipe,
    files: &[Box<dyn Files>],
    dev: &Device,
    opts: &Options,
    sink: &mut dyn Sink,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let sources: Vec<source::FilesSource<'_>> = files.iter().map(|f| source::FilesSource(f.as_ref())).collect();
    let refs: Vec<&dyn Source> = sources.iter().map(|s| s as &dyn Source).collect();
    merge_sources(recipe, &refs, dev, opts, sink, on_progress).await
}

/// [`merge`] from [`Source`]s (one per model reference, in [`Recipe::models`] order): lazy shards
/// are read one tensor's byte range at a time, so the merge holds about one tensor × inputs.
pub async fn merge_sources(
    recipe: &Recipe,
    sources: &[&dyn Source],
    dev: &Device,
    opts: &Options,
    sink: &mut dyn Sink,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    if sources.len() != recipe.models.len() {
        return Err(Error::InvalidParam { op: "merge", reason: format!("{} model sources for {} models", sources.len(), recipe.models.len()) });
    }
    let mut models = Vec::with_capacity(sources.len());
    for (name, f) in recipe.models.iter().zip(sources) {
        let shards = f.shards().await?;
        if shards.is_empty() {
            return Err(Error::Recipe { file: recipe.file.clone(), reason: format!("model '{name}' ({}) has no .safetensors files", f.name()) });
        }
        let config = match f.read("config.json").await? {
            Some(b) => serde_json::from_slice(&b).ok(),
            None => None,
        };
        models.push(Model { name: name.clone(), shards, config });
    }
    // Where each model was read from (a folder natively), for the TALL masks' metadata.
    let paths: Vec<Option<String>> = sources.iter().map(|f| location(&f.name())).collect();
    engine::run(recipe, &models, &paths, sources, dev, opts, sink, on_progress).await
}

fn location(name: &str) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Ok(p) = std::fs::canonicalize(name) {
        if p.is_dir() {
            return Some(p.display().to_string());
        }
    }
    let _ = name;
    None
}

/// Native: the recipe's model folders, each path taken relative to the working directory, else to
/// the recipe's folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_dirs(recipe: &Recipe) -> Result<Vec<Box<dyn Files>>> {
    use crate::models::hf::DirFiles;
    let recipe_dir = std::path::Path::new(&recipe.file).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let mut files: Vec<Box<dyn Files>> = Vec::new();
    for m in &recipe.models {
        let p = std::path::Path::new(m);
        let p = if p.is_dir() || p.is_absolute() { p.to_path_buf() } else { recipe_dir.join(p) };
        if !p.is_dir() {
            return Err(Error::Recipe { file: recipe.file.clone(), reason: format!("model '{m}' is not a folder (looked in the working directory and next to the recipe)") });
        }
        files.push(Box::new(DirFiles(p)));
    }
    Ok(files)
}

/// Native convenience: [`merge`] of the recipe's [`model_dirs`] into the folder `out`, which is
/// written aside and renamed at the end (a failed merge leaves nothing behind).
#[cfg(not(target_arch = "wasm32"))]
pub async fn merge_to_dir(
    recipe: &Recipe,
    out: &std::path::Path,
    dev: &Device,
    opts: &Options,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let files = model_dirs(recipe)?;
    let mut sink = DirSink::new(out)?;
    merge(recipe, &files, dev, opts, &mut sink, on_progress).await
}

/// Native: reads and parses a recipe file.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_recipe(path: &std::path::Path) -> Result<Recipe> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    Recipe::parse(&path.display().to_string(), &text)
}
