//! `taskloom lora fuse` (an HF folder with adapters merged into its weights, as PEFT's
//! `merge_and_unload` + `save_pretrained` would write it) and `taskloom lora combine` (PEFT
//! `add_weighted_adapter` combinations written as a PEFT adapter folder).

use crate::run::load_adapters;
use crate::util::{open_device, parse_device};
use crate::{CliError, CliResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use taskloom::models::bert::Bert;
use taskloom::models::config::ModelConfig;
use taskloom::models::hf::{DirFiles, Files};
use taskloom::models::llama::Llama;
use taskloom::{DeviceChoice, TensorData};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Merge adapters into a model's weights and write the merged Hugging Face folder.
    Fuse(FuseArgs),
    /// Combine adapters into one (PEFT add_weighted_adapter) and write it as a PEFT adapter folder.
    Combine(CombineArgs),
}

#[derive(clap::Args)]
struct FuseArgs {
    /// The base model: a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder with an optional scale (DIR=0.5); repeatable, deltas are summed.
    #[arg(long = "adapter", value_name = "DIR[=SCALE]", required = true)]
    adapters: Vec<String>,
    /// Output folder.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CombineArgs {
    /// The base model the adapters were trained on (checked against the adapters).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter folder and its weight (DIR=0.6); repeatable.
    #[arg(long = "adapter", value_name = "DIR=WEIGHT", required = true)]
    adapters: Vec<String>,
    /// linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
    /// magnitude_prune, magnitude_prune_svd.
    #[arg(long)]
    combination: String,
    #[arg(long)]
    density: Option<f32>,
    #[arg(long)]
    svd_rank: Option<usize>,
    /// Seed of the counter-based RNG for the DARE types.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// total or frequency (TIES sign election).
    #[arg(long, default_value = "total")]
    majority_sign_method: String,
    /// Name of the combined adapter (in messages).
    #[arg(long, default_value = "combined")]
    name: String,
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> CliResult {
    match a.cmd {
        Cmd::Fuse(f) => fuse(f),
        Cmd::Combine(c) => combine(c),
    }
}

fn msg(m: impl Into<String>) -> CliError {
    CliError::Msg(m.into())
}

fn config(model: &std::path::Path) -> CliResult<(DirFiles, ModelConfig)> {
    let files = DirFiles(model.to_path_buf());
    let bytes = files.read("config.json")?.ok_or_else(|| msg(format!("{}: no config.json (lora commands need a Hugging Face folder)", model.display())))?;
    let cfg = ModelConfig::parse("config.json", &String::from_utf8_lossy(&bytes))?;
    Ok((files, cfg))
}

fn fuse(a: FuseArgs) -> CliResult {
    let dev = open_device(a.device)?;
    let adapters = load_adapters(&a.adapters)?;
    let mix: Vec<(String, f32)> = adapters.iter().map(|(ad, w)| (ad.name.clone(), *w)).collect();
    let (files, cfg) = config(&a.model)?;
    let weights = files.weights()?;
    let t0 = std::time::Instant::now();
    // Llama and Bert share the adapter calls but no trait; one body serves both.
    macro_rules! fuse_model {
        ($model:expr) => {{
            let mut m = $model;
            let t_load = t0.elapsed();
            for (ad, _) in adapters {
                m.add_adapter(&dev, ad)?;
            }
            m.set_adapters(mix)?;
            m.fuse(&dev)?;
            let out = pollster::block_on(m.fused_tensors(&dev))?;
            report_time(a.json, t_load, t0.elapsed());
            out
        }};
    }
    let replaced: Vec<(String, TensorData)> = match cfg {
        ModelConfig::Llama(c) => fuse_model!(Llama::load(&dev, c, &weights)?),
        ModelConfig::Bert(c) => fuse_model!(Bert::load(&dev, c, &weights)?),
        #[allow(unreachable_patterns)]
        _ => return Err(msg("lora fuse supports BERT and Llama-family folders")),
    };
    let n = replaced.len();
    let map: BTreeMap<String, TensorData> = replaced.into_iter().collect();
    let done = taskloom::lora::export::write_folder(&a.model, &a.out, &map)?;
    if a.json {
        crate::util::print_json(&serde_json::json!({ "out": a.out, "tensors_replaced": done, "device": dev.info() }))
    } else {
        println!("wrote {} ({n} tensors fused, on {})", a.out.display(), dev.kind());
        Ok(())
    }
}

fn report_time(json: bool, load: std::time::Duration, total: std::time::Duration) {
    if !json {
        eprintln!("[load {:.1} ms, fuse {:.1} ms]", load.as_secs_f64() * 1e3, (total - load).as_secs_f64() * 1e3);
    }
}

fn combine(a: CombineArgs) -> CliResult {
    use taskloom::lora::combine::{combine, Combination, CombineOptions, MajoritySign};
    let combination: Combination = a.combination.parse()?;
    let adapters = load_adapters(&a.adapters)?;
    // The adapters must fit the model: registering them on it checks every module and shape.
    let (files, cfg) = config(&a.model)?;
    let dev = taskloom::Device::cpu();
    macro_rules! register_all {
        ($model:expr) => {{
            let mut m = $model;
            for (ad, _) in &adapters {
                m.add_adapter(&dev, ad.clone())?;
            }
        }};
    }
    match cfg {
        ModelConfig::Llama(c) => register_all!(Llama::load(&dev, c, &files.weights()?)?),
        ModelConfig::Bert(c) => register_all!(Bert::load(&dev, c, &files.weights()?)?),
        #[allow(unreachable_patterns)]
        _ => return Err(msg("lora combine supports adapters of BERT and Llama-family models")),
    }
    let mut opts = CombineOptions::new(a.name.clone(), combination);
    opts.density = a.density.map(f64::from);
    opts.svd_rank = a.svd_rank;
    opts.seed = a.seed;
    opts.majority_sign = a.majority_sign_method.parse::<MajoritySign>()?;
    let inputs: Vec<(&taskloom::lora::Adapter, f32)> = adapters.iter().map(|(ad, w)| (ad, *w)).collect();
    let t0 = std::time::Instant::now();
    let out = combine(&inputs, &opts)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    out.save_dir(&a.out)?;
    if a.json {
        crate::util::print_json(&serde_json::json!({
            "out": a.out, "combination": combination.name(), "r": out.config.r, "modules": out.modules.len(), "ms": ms,
        }))
    } else {
        println!("wrote {} ({} adapter, r = {}, {} modules, {ms:.1} ms)", a.out.display(), combination.name(), out.config.r, out.modules.len());
        Ok(())
    }
}
