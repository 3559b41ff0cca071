//! `taskloom merge RECIPE.yml -o OUTDIR`: a mergekit recipe, merged tensor by tensor into a Hugging
//! Face folder, with a progress bar and a summary (tensors, bytes, time, peak memory).

use crate::util::{bytes, describe, open_device, parse_device};
use crate::CliResult;
use std::io::IsTerminal;
use std::path::PathBuf;
use taskloom::formats::safetensors::SafeTensors;
use taskloom::merge::{self, Options};
use taskloom::DeviceChoice;

#[derive(clap::Args)]
pub struct Args {
    /// A mergekit YAML recipe (read unchanged; see the `taskloom:` key for taskloom's own settings).
    recipe: PathBuf,
    /// Output folder (must not exist or be empty); written aside and renamed when the merge succeeds.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
    /// Seed of the DARE / DELLA masks (overrides the recipe's `taskloom.random_seed`; default 0).
    #[arg(long)]
    random_seed: Option<u64>,
    /// Keep masks to import instead of drawing them (safetensors, keys `TENSOR:K`; overrides the recipe's `taskloom.masks`).
    #[arg(long)]
    masks: Option<PathBuf>,
    /// Largest shard in bytes (default 5e9, as mergekit).
    #[arg(long)]
    shard_bytes: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

pub fn run(a: Args) -> CliResult {
    let start = std::time::Instant::now();
    let recipe = merge::read_recipe(&a.recipe)?;
    for w in &recipe.warnings {
        eprintln!("taskloom: warning: {w}");
    }
    let masks = a.masks.clone().or_else(|| recipe.ext.masks.as_ref().map(PathBuf::from));
    let mut opts = Options { random_seed: a.random_seed, ..Options::default() };
    if let Some(m) = masks {
        opts.masks = Some(SafeTensors::open(&m)?);
    }
    if let Some(b) = a.shard_bytes {
        opts.shard_bytes = b;
    }
    let dev = open_device(a.device)?;
    let bar = if a.json || !std::io::stderr().is_terminal() { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    if let Ok(style) = indicatif::ProgressStyle::with_template("merging {bar:30} {bytes}/{total_bytes} {msg}") {
        bar.set_style(style);
    }
    let mut progress = |p: merge::Progress| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.bytes);
        bar.set_message(format!("{}/{} {}", p.tensors, p.total_tensors, p.tensor));
    };
    let s = pollster::block_on(merge::merge_to_dir(&recipe, &a.out, &dev, &opts, &mut progress))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss();
    if a.json {
        crate::util::print_json(&serde_json::json!({
            "method": recipe.method.name(),
            "out": a.out.display().to_string(),
            "device": dev.kind(),
            "tensors": s.tensors,
            "bytes_read": s.bytes_read,
            "bytes_written": s.bytes_written,
            "seconds": secs,
            "peak_rss_bytes": peak,
            "files": s.files,
            "tall_masks": s.tall_masks,
            "peak_tensor_bytes": s.peak_bytes,
            "compute_seconds": s.compute_seconds,
            "write_seconds": s.write_seconds,
            "compute_GB_s": (s.bytes_read + s.bytes_written) as f64 / s.compute_seconds.max(1e-9) / 1e9,
        }))?;
    } else {
        println!(
            "merged {} ({}) into {}: {} tensors, read {}, wrote {} in {} file(s), {:.2} s (compute {:.2} s, write {:.2} s), peak memory {} (tensors {}), on {}",
            recipe.file,
            recipe.method.name(),
            a.out.display(),
            s.tensors,
            bytes(s.bytes_read),
            bytes(s.bytes_written),
            s.files.len(),
            secs,
            s.compute_seconds,
            s.write_seconds,
            peak.map(bytes).unwrap_or_else(|| "n/a".into()),
            bytes(s.peak_bytes),
            describe(&dev)
        );
    }
    Ok(())
}
