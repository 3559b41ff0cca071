//! The tensor-streamed merge: for each output tensor, read it from every input (memory-mapped
//! natively), compute, write it to its shard, drop it. Peak memory ≈ one tensor × (inputs + a few).

use super::gta::{self, Row};
use super::method::Method;
use super::output::{self, Entry, Sink};
use super::plan::{parse_dtype, Job, Model, Plan};
use super::recipe::Recipe;
use super::setting::Scalar;
use super::source::{Shard, Source};
use super::{Progress, Summary};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::safetensors::SafeTensors;
use half::{bf16, f16};
use std::collections::BTreeMap;

/// Settings of one merge run that are not in the recipe.
pub struct Options {
    /// Seed of the DARE / DELLA RNG (overrides the recipe's `taskloom.random_seed`; default 0).
    pub random_seed: Option<u64>,
    /// Imported keep masks (see [`crate::merge::masks`]).
    pub masks: Option<SafeTensors>,
    /// Largest shard, in bytes of tensor data (mergekit's default: 5 GB).
    pub shard_bytes: u64,
    /// Extra files copied from the config / tokenizer models when present.
    pub copy_files: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            random_seed: None,
            masks: None,
            shard_bytes: 5_000_000_000,
            copy_files: [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "tokenizer.model",
                "vocab.json",
                "merges.txt",
                "added_tokens.json",
                "chat_template.jinja",
                "generation_config.json",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

fn num(v: &BTreeMap<&'static str, Scalar>, k: &str, default: f64) -> f64 {
    match v.get(k) {
        Some(Scalar::Num(n)) => *n,
        _ => default,
    }
}

fn flag(v: &BTreeMap<&'static str, Scalar>, k: &str) -> bool {
    matches!(v.get(k), Some(Scalar::Bool(true)))
}

/// Decodes a float tensor's little-endian bytes into f32, rounding through `through` first (the
/// recipe's `dtype`, as mergekit casts its inputs).
fn decode(bytes: &[u8], dtype: &str, through: Option<DType>, out: &mut Vec<f32>) {
    match dtype {
        "F32" => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) => out.extend_from_slice(v),
            Err(_) => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        },
        "F16" => out.extend(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        _ => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
    }
    match through {
        Some(DType::F16) => out.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
        Some(DType::BF16) => out.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        _ => {}
    }
}

fn encode(v: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

const FLOATS: [&str; 3] = ["F32", "F16", "BF16"];

/// What the plan says a job writes: its entry, and whether it is a float tensor to merge.
fn entry(r: &Recipe, models: &[Model], job: &Job) -> Result<(Entry, bool)> {
    let merr = |reason: String| Error::Merge { tensor: job.name.clone(), reason };
    let mut infos = Vec::new();
    for (m, name) in &job.inputs {
        let model = &models[*m];
        let (_, info) = model.info(name).ok_or_else(|| {
            let files: Vec<&str> = model.shards.iter().map(|s| s.file()).collect();
            merr(format!("missing from model '{}' (looked up '{name}' in {})", model.name, files.join(", ")))
        })?;
        infos.push((model, info));
    }
    let (m0, i0) = infos[job.base.unwrap_or(0)];
    for (m, i) in &infos {
        if i.shape != i0.shape {
            return Err(merr(format!("shape {:?} in '{}' but {:?} in '{}'", i.shape, m.name, i0.shape, m0.name)));
        }
    }
    let float = infos.iter().all(|(_, i)| FLOATS.contains(&i.dtype.as_str()));
    let numel: usize = i0.shape.iter().product();
    let (dtype, bytes) = if float {
        let out = r.out_dtype.as_deref().or(r.dtype.as_deref()).and_then(parse_dtype);
        let d = out.map(|d| d.safetensors_name().to_string()).unwrap_or_else(|| i0.dtype.clone());
        let size = if d == "F32" { 4 } else { 2 };
        (d, (numel * size) as u64)
    } else {
        (i0.dtype.clone(), i0.bytes)
    };
    Ok((Entry { name: job.name.clone(), dtype, shape: i0.shape.clone(), bytes }, float))
}

/// Runs a planned merge into `sink`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    recipe: &Recipe,
    models: &[Model],
    paths: &[Option<String>],
    sources: &[&dyn Source],
    dev: &Device,
    opts: &Options,
    sink: &mut dyn Sink,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let plan = Plan::build(recipe, models)?;
    let mut entries = Vec::with_capacity(plan.jobs.len());
    let mut floats = Vec::with_capacity(plan.jobs.len());
    for job in &plan.jobs {
        let (e, f) = entry(recipe, models, job)?;
        entries.push(e);
        floats.push(f);
    }
    let shards = output::shard(&entries, opts.shard_bytes);
    let seed = opts.random_seed.or(recipe.ext.random_seed).unwrap_or(0);
    let through = recipe.dtype.as_deref().and_then(parse_dtype);
    let total_bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut summary = Summary::default();
    let mut tall: Vec<(String, Vec<u8>, usize)> = Vec::new();
    let mut tasks: Vec<super::task_mask::TaskRef> = Vec::new();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    // The output buffer, reused from tensor to tensor (no fresh pages to fault in each time).
    let mut pool: Vec<f32> = Vec::new();
    for (file, range) in &shards {
        sink.begin(file)?;
        sink.write(&output::header(&entries[range.clone()], Some(&meta)))?;
        summary.files.push(file.clone());
        for i in range.clone() {
            let (job, e) = (&plan.jobs[i], &entries[i]);
            let t0 = Clock::now();
            let bytes = if floats[i] {
                let (v, masks, held) = compute(recipe, models, job, &e.shape, dev, opts, seed, through, &mut summary.bytes_read, &mut pool).await?;
                let encoded = if e.dtype == "F32" { 0 } else { e.bytes };
                summary.peak_bytes = summary.peak_bytes.max(held + encoded + masks.iter().map(|(_, m)| m.len() as u64).sum::<u64>());
                summary.compute_seconds += t0.secs();
                let t0 = Clock::now();
                for (k, m) in masks {
                    let model = &models[job.inputs[k].0].name;
                    if !tasks.iter().any(|t: &super::task_mask::TaskRef| t.index == k) {
                        tasks.push(super::task_mask::TaskRef { index: k, model: model.clone() });
                    }
                    tall.push((format!("{}:{k}", job.name), packbits(&m), m.len()));
                }
                let dt = DType::ALL.into_iter().find(|d| d.safetensors_name() == e.dtype).unwrap_or(DType::F32);
                if dt == DType::F32 {
                    // Written straight from the f32 buffer: no byte copy.
                    sink.write(bytemuck::cast_slice(&v))?;
                    summary.write_seconds += t0.secs();
                    pool = v;
                    summary.tensors += 1;
                    summary.bytes_written += e.bytes;
                    on_progress(Progress { tensors: summary.tensors, total_tensors: entries.len(), bytes: summary.bytes_written, total_bytes, tensor: job.name.clone() });
                    continue;
                }
                let bytes = encode(&v, dt);
                pool = v;
                bytes
            } else {
                let (m, name) = &job.inputs[job.base.unwrap_or(0)];
                let (st, _) = models[*m].info(name).expect("checked in entry()");
                summary.bytes_read += e.bytes;
                let b = st.bytes(name).await?.into_owned();
                st.release(name);
                summary.peak_bytes = summary.peak_bytes.max(2 * e.bytes);
                b
            };
            let t0 = Clock::now();
            sink.write(&bytes)?;
            summary.write_seconds += t0.secs();
            summary.tensors += 1;
            summary.bytes_written += bytes.len() as u64;
            on_progress(Progress { tensors: summary.tensors, total_tensors: entries.len(), bytes: summary.bytes_written, total_bytes, tensor: job.name.clone() });
        }
    }
    if shards.len() > 1 {
        sink.put("model.safetensors.index.json", &output::index(&entries, &shards))?;
        summary.files.push("model.safetensors.index.json".into());
    }
    if !tall.is_empty() {
        let tall_entries: Vec<Entry> = tall.iter().map(|(n, b, _)| Entry { name: n.clone(), dtype: "U8".into(), shape: vec![b.len()], bytes: b.len() as u64 }).collect();
        let mut m = BTreeMap::new();
        m.insert("format".to_string(), "taskloom-tall-masks".to_string());
        m.insert("bit_order".to_string(), "numpy packbits, MSB first, per tensor".to_string());
        m.insert("numel".to_string(), serde_json::to_string(&tall.iter().map(|(n, _, l)| (n.clone(), *l)).collect::<BTreeMap<_, _>>()).expect("json"));
        tasks.sort_by_key(|t| t.index);
        m.insert("tasks".to_string(), serde_json::to_string(&tasks).expect("json"));
        if let Some(b) = recipe.base_model {
            m.insert("base_model".to_string(), recipe.models[b].clone());
            if let Some(Some(p)) = paths.get(b) {
                m.insert("base_model_path".to_string(), p.clone());
            }
        }
        sink.begin("tall_masks.safetensors")?;
        sink.write(&output::header(&tall_entries, Some(&m)))?;
        for (_, b, _) in &tall {
            sink.write(b)?;
        }
        summary.tall_masks = tall.len();
        summary.files.push("tall_masks.safetensors".into());
    }
    let config = sources[plan.config_model].read("config.json").await?;
    write_config(recipe, &plan, config, sink, &mut summary)?;
    let tok = recipe.tokenizer_source.unwrap_or(plan.config_model);
    for f in &opts.copy_files {
        if let Some(b) = sources[tok].read(f).await? {
            sink.put(f, &b)?;
            summary.files.push(f.clone());
        }
    }
    sink.put("mergekit_config.yml", recipe_text(recipe).as_bytes())?;
    sink.commit()?;
    Ok(summary)
}

fn recipe_text(r: &Recipe) -> String {
    format!("# merged by taskloom {} from {}\n{}", env!("CARGO_PKG_VERSION"), r.file, r.text)
}

fn write_config(r: &Recipe, plan: &Plan, config: Option<Vec<u8>>, sink: &mut dyn Sink, s: &mut Summary) -> Result<()> {
    let Some(bytes) = config else { return Ok(()) };
    let mut cfg: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Merge { tensor: "(config.json)".into(), reason: format!("{}: {e}", r.models[plan.config_model]) })?;
    if let Some(o) = cfg.as_object_mut() {
        if !r.whole_models {
            o.insert("num_hidden_layers".into(), plan.out_layers.into());
        }
        if let Some(d) = r.out_dtype.as_deref().or(r.dtype.as_deref()).and_then(parse_dtype) {
            let name = match d {
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
                _ => "float32",
            };
            for k in ["torch_dtype", "dtype"] {
                if o.contains_key(k) {
                    o.insert(k.into(), name.into());
                }
            }
        }
    }
    sink.put("config.json", &serde_json::to_vec_pretty(&cfg).expect("JSON"))?;
    s.files.push("config.json".into());
    Ok(())
}

/// numpy `packbits` (MSB first) of a boolean vector.
pub fn packbits(m: &[bool]) -> Vec<u8> {
    m.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (i, &x)| b | ((x as u8) << (7 - i)))).collect()
}

#[allow(clippy::too_many_arguments)]
async fn compute(
    r: &Recipe,
    models: &[Model],
    job: &Job,
    dims: &[usize],
    dev: &Device,
    opts: &Options,
    seed: u64,
    through: Option<DType>,
    read: &mut u64,
    pool: &mut Vec<f32>,
) -> Result<(Vec<f32>, Vec<(usize, Vec<bool>)>, u64)> {
    let numel: usize = dims.iter().product();
    // Tensor bytes held at once: mapped inputs (or a lazily read input's raw bytes while it is
    // decoded; f32 ones are read straight into their decoded buffer), decoded copies, output,
    // intermediates.
    let mapped: u64 = job
        .inputs
        .iter()
        .map(|(m, name)| match models[*m].info(name) {
            Some((Shard::Lazy(_), i)) if i.dtype == "F32" => 0,
            Some((_, i)) => i.bytes,
            None => 0,
        })
        .sum();
    let f32s = |k: usize| (k * numel * 4) as u64;
    let rd = Reader { models, job, through };
    let w = |k: usize, key: &str| num(&job.per_input[k], key, 1.0) as f32;
    let out = match r.method {
        Method::Passthrough => {
            let mut v = rd.one(0, read).await?;
            if let Some(Scalar::Num(s)) = job.per_input[0].get("scale") {
                let s = *s as f32;
                v.iter_mut().for_each(|x| *x *= s);
            }
            v
        }
        Method::Linear => {
            let mut xs = Vec::with_capacity(job.inputs.len());
            for k in 0..job.inputs.len() {
                xs.push(rd.one(k, read).await?);
            }
            let refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
            let ws: Vec<f32> = (0..xs.len()).map(|k| w(k, "weight")).collect();
            super::interp::linear(&refs, &ws, flag(&job.shared, "normalize"))
        }
        Method::Slerp => {
            let b = job.base.expect("checked: slerp has a base");
            let (a, o) = (rd.one(b, read).await?, rd.one(1 - b, read).await?);
            super::interp::slerp(num(&job.shared, "t", 0.5) as f32, &a, &o)
        }
        Method::Pcb => {
            let b = job.base.expect("checked: pcb has a base");
            let base = rd.one(b, read).await?;
            let others: Vec<usize> = (0..job.inputs.len()).filter(|k| *k != b).collect();
            let mut thetas = Vec::with_capacity(others.len());
            for &k in &others {
                thetas.push(rd.one(k, read).await?);
            }
            let refs: Vec<&[f32]> = thetas.iter().map(|v| v.as_slice()).collect();
            let ws: Vec<f64> = others.iter().map(|&k| num(&job.per_input[k], "weight", 1.0)).collect();
            let ratio = num(&job.shared, "pcb_ratio", 0.1);
            let clip = num(&job.shared, "pcb_clip", 0.0001);
            let merr = |reason: String| Error::Merge { tensor: job.name.clone(), reason };
            if !(ratio > 0.0 && ratio <= 1.0) {
                return Err(merr(format!("pcb_ratio {ratio} outside (0, 1]")));
            }
            if !(0.0..0.5).contains(&clip) {
                return Err(merr(format!("pcb_clip {clip} outside [0, 0.5)")));
            }
            let out = super::pcb::pcb(&base, &refs, &ws, ratio, clip, num(&job.shared, "lambda", 1.0));
            // Base, T inputs and per task: |τ|, clipped, β (f64), plus the f64 sums.
            let held = mapped + f32s(1 + others.len()) + 2 * f32s(3 * others.len() + 3);
            return Ok((out, Vec::new(), held));
        }
        Method::ModelStock => {
            let b = job.base.expect("checked: model_stock has a base");
            let w0 = rd.one(b, read).await?;
            let mut ws = Vec::with_capacity(job.inputs.len());
            for k in (0..job.inputs.len()).filter(|k| *k != b) {
                ws.push(rd.one(k, read).await?);
            }
            let refs: Vec<&[f32]> = ws.iter().map(|v| v.as_slice()).collect();
            let row = if flag(&job.shared, "filter_wise") && dims.len() >= 2 { *dims.last().expect("rank >= 2") } else { w0.len() };
            super::interp::model_stock(&w0, &refs, row)
        }
        m => {
            let g = m.gta().expect("the other methods are task arithmetic");
            let b = job.base.expect("checked: task arithmetic has a base");
            let others: Vec<usize> = (0..job.inputs.len()).filter(|k| *k != b).collect();
            if others.is_empty() {
                return Ok((rd.one(b, read).await?, Vec::new(), mapped + f32s(1)));
            }
            let mut rows = Vec::new();
            for &k in &others {
                let p = &job.per_input[k];
                let mask = match &opts.masks {
                    Some(st) if g.sparsify.is_some() => super::masks::lookup(st, &job.name, k, numel)?,
                    _ => None,
                };
                rows.push(Row {
                    weight: num(p, "weight", 1.0),
                    density: num(p, "density", 1.0),
                    gamma: num(p, "gamma", 0.01),
                    epsilon: num(p, "epsilon", 0.15),
                    tall_lambda: num(p, "tall_lambda", 0.6),
                    mask,
                });
            }
            let lines = num(&job.shared, "lines_alpha", 1.0) + num(&job.shared, "lines_beta", 0.0) * job.t;
            let args = gta::Args {
                name: &job.name,
                dims,
                gta: g,
                semantics: r.ext.semantics.unwrap_or_default(),
                seed,
                normalize: flag(&job.shared, "normalize"),
                rescale: flag(&job.shared, "rescale"),
                lambda: num(&job.shared, "lambda", 1.0) * lines,
                rows,
                tall: flag(&job.shared, "tall_masks"),
                consensus_k: num(&job.shared, "consensus_k", 0.0).max(0.0) as usize,
            };
            if matches!(dev, Device::Cpu(_)) && super::fused::supports(&args) {
                // Straight from the mapped inputs (f32 ones are not copied) into the pooled output.
                let order: Vec<usize> = std::iter::once(b).chain(others.iter().copied()).collect();
                let mut views: Vec<std::borrow::Cow<'_, [f32]>> = Vec::with_capacity(order.len());
                for &k in &order {
                    let (m, name) = &job.inputs[k];
                    let (st, info) = models[*m].info(name).expect("checked in entry()");
                    let Shard::Mapped(st) = st else {
                        // Read now, as decoded f32.
                        views.push(std::borrow::Cow::Owned(rd.one(k, read).await?));
                        continue;
                    };
                    st.prefetch(name);
                    let Some(bytes) = st.in_memory(name)? else {
                        views.push(std::borrow::Cow::Owned(rd.one(k, read).await?));
                        continue;
                    };
                    *read += bytes.len() as u64;
                    let plain = info.dtype == "F32" && !matches!(through, Some(DType::F16 | DType::BF16));
                    match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                        Ok(v) if plain => views.push(std::borrow::Cow::Borrowed(v)),
                        _ => {
                            let mut v = Vec::with_capacity(numel);
                            decode(bytes, &info.dtype, through, &mut v);
                            views.push(std::borrow::Cow::Owned(v));
                        }
                    }
                }
                let mut out = std::mem::take(pool);
                if out.len() < numel {
                    out.resize(numel, 0.0);
                } else {
                    out.truncate(numel);
                }
                let decoded: usize = views.iter().filter(|v| matches!(v, std::borrow::Cow::Owned(_))).count();
                let held = mapped + f32s(decoded + 1);
                let thetas: Vec<&[f32]> = views[1..].iter().map(|v| v.as_ref()).collect();
                super::fused::run(&args, &views[0], &thetas, &mut out);
                drop(views);
                for (m, name) in &job.inputs {
                    let (st, _) = models[*m].info(name).expect("checked in entry()");
                    st.release(name);
                }
                return Ok((out, Vec::new(), held));
            }
            let base = rd.one(b, read).await?;
            let mut thetas = Vec::with_capacity(base.len() * others.len());
            for &k in &others {
                rd.load(k, &mut thetas, read).await?;
            }
            let o = gta::run(dev, &args, base, thetas).await?;
            let masks = if args.tall { others.iter().copied().zip(o.tall_masks).collect() } else { Vec::new() };
            // Inputs decoded, then per task vector: raw, mask (u32), rescaled deltas; the output.
            let r_n = others.len();
            return Ok((o.merged, masks, mapped + f32s(1 + r_n) + f32s(3 * r_n) + f32s(1)));
        }
    };
    // Every input decoded at once (linear, model_stock) or fewer, and the output.
    Ok((out, Vec::new(), mapped + f32s(job.inputs.len() + 1)))
}

/// Reads a job's inputs as f32 (rounded through the recipe's `dtype`).
struct Reader<'a> {
    models: &'a [Model],
    job: &'a Job,
    through: Option<DType>,
}

impl Reader<'_> {
    /// Appends input `k` of the job to `out`.
    async fn load(&self, k: usize, out: &mut Vec<f32>, read: &mut u64) -> Result<()> {
        let (m, name) = &self.job.inputs[k];
        let (st, info) = self.models[*m].info(name).expect("checked in entry()");
        match st {
            Shard::Lazy(l) if info.dtype == "F32" => {
                // Read straight into the f32 buffer (little-endian, as wasm and every native
                // target this runs on): no byte copy.
                let start = out.len();
                out.resize(start + (info.bytes / 4) as usize, 0.0);
                l.read(info, bytemuck::cast_slice_mut(&mut out[start..])).await?;
                *read += info.bytes;
                match self.through {
                    Some(DType::F16) => out[start..].iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
                    Some(DType::BF16) => out[start..].iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
                    _ => {}
                }
            }
            _ => {
                let bytes = st.bytes(name).await?;
                *read += bytes.len() as u64;
                decode(&bytes, &info.dtype, self.through, out);
                drop(bytes);
                st.release(name);
            }
        }
        Ok(())
    }

    async fn one(&self, k: usize, read: &mut u64) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        self.load(k, &mut v, read).await?;
        Ok(v)
    }
}

/// Wall time natively (`std::time::Instant` does not exist in wasm32-unknown-unknown).
struct Clock(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

impl Clock {
    fn now() -> Clock {
        Clock(
            #[cfg(not(target_arch = "wasm32"))]
            std::time::Instant::now(),
        )
    }
    fn secs(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return self.0.elapsed().as_secs_f64();
        #[cfg(target_arch = "wasm32")]
        0.0
    }
}
