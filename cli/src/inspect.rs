//! `taskloom inspect PATH [--json]`: what a checkpoint holds, read from headers only (the data is
//! mapped, not read). PATH is one .safetensors file or a folder of them (sharded checkpoints).

use crate::util::{bytes, print_json};
use crate::{CliError, CliResult};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use taskloom::formats::safetensors::{SafeTensors, TensorInfo};

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, or a folder whose .safetensors files are all listed.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Tensor<'a> {
    #[serde(flatten)]
    info: &'a TensorInfo,
    params: u64,
    /// False for dtypes the runtime does not compute in (I64, U8, BOOL, F64, ...): skipped on load.
    loadable: bool,
}

#[derive(serde::Serialize)]
struct FileReport<'a> {
    file: &'a str,
    metadata: &'a BTreeMap<String, String>,
    tensors: Vec<Tensor<'a>>,
    bytes: u64,
}

#[derive(serde::Serialize, Default)]
struct Totals {
    files: usize,
    tensors: usize,
    params: u64,
    bytes: u64,
    /// Tensor count per dtype name.
    dtypes: BTreeMap<String, usize>,
}

pub fn run(a: Args) -> CliResult {
    let files = safetensors_files(&a.path)?;
    let opened = files.iter().map(SafeTensors::open).collect::<Result<Vec<_>, _>>()?;
    let mut totals = Totals { files: opened.len(), ..Totals::default() };
    let reports: Vec<FileReport> = opened
        .iter()
        .map(|st| {
            let tensors: Vec<Tensor> = st
                .tensors()
                .iter()
                .map(|info| Tensor { info, params: info.shape.iter().map(|&d| d as u64).product(), loadable: info.runtime_dtype().is_some() })
                .collect();
            for t in &tensors {
                totals.tensors += 1;
                totals.params += t.params;
                totals.bytes += t.info.bytes;
                *totals.dtypes.entry(t.info.dtype.clone()).or_default() += 1;
            }
            FileReport { file: st.file(), metadata: st.metadata(), tensors, bytes: st.total_bytes() }
        })
        .collect();
    if a.json {
        return print_json(&serde_json::json!({ "files": reports, "total": totals }));
    }
    for r in &reports {
        print_file(r);
    }
    let dtypes: Vec<String> = totals.dtypes.iter().map(|(d, n)| format!("{n} {d}")).collect();
    println!(
        "total: {} file(s), {} tensors ({}), {} parameters, {}",
        totals.files,
        totals.tensors,
        dtypes.join(", "),
        totals.params,
        bytes(totals.bytes)
    );
    Ok(())
}

fn print_file(r: &FileReport) {
    println!("{}: {} tensors, {}", r.file, r.tensors.len(), bytes(r.bytes));
    for (k, v) in r.metadata {
        println!("  metadata {k} = {v}");
    }
    let width = r.tensors.iter().map(|t| t.info.name.len()).max().unwrap_or(0);
    for t in &r.tensors {
        let note = if t.loadable { "" } else { "  (dtype not supported: skipped on load)" };
        println!(
            "  {:width$}  {:<5} {:<22} {:>10}{note}",
            t.info.name,
            t.info.dtype,
            format!("{:?}", t.info.shape),
            bytes(t.info.bytes),
        );
    }
}

/// PATH itself, or the .safetensors files directly inside it, sorted (shard order).
fn safetensors_files(path: &Path) -> CliResult<Vec<PathBuf>> {
    let io = |e: std::io::Error| CliError::Core(taskloom::Error::Io { path: path.display().to_string(), source: e });
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(CliError::Msg(format!("{}: no .safetensors files in this folder", path.display())));
    }
    files.sort();
    Ok(files)
}
