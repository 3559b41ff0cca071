//! Where a merge writes: a [`Sink`] of files. Safetensors shards are written tensor by tensor:
//! every output tensor's shape and dtype are known from the plan, so each shard's header is
//! written first and its data streamed after it, never holding a shard in memory.
//!
//! Natively, [`DirSink`] writes into a hidden sibling folder and renames it to the output folder
//! only when the merge succeeded, so a failed merge leaves no partial output behind.

use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::Error;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A destination for the merged files.
pub trait Sink {
    /// Starts a file that is then filled with [`Sink::write`].
    fn begin(&mut self, file: &str) -> Result<()>;
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// A whole small file (config, index, masks).
    fn put(&mut self, file: &str, bytes: &[u8]) -> Result<()> {
        self.begin(file)?;
        self.write(bytes)
    }
    /// Everything was written: make it visible.
    fn commit(&mut self) -> Result<()>;
}

/// Files in memory (wasm, tests): file name → bytes.
#[derive(Default)]
pub struct MemSink {
    pub files: BTreeMap<String, Vec<u8>>,
    current: Option<String>,
}

impl Sink for MemSink {
    fn begin(&mut self, file: &str) -> Result<()> {
        self.files.insert(file.to_string(), Vec::new());
        self.current = Some(file.to_string());
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.current.as_ref().expect("begin before write");
        self.files.get_mut(f).expect("begun").extend_from_slice(bytes);
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A folder on disk, made visible by renaming on [`Sink::commit`]; dropped uncommitted, it removes
/// what it wrote.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirSink {
    out: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    committed: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirSink {
    /// Fails when `out` exists and is not an empty folder (nothing is overwritten).
    pub fn new(out: impl Into<std::path::PathBuf>) -> Result<DirSink> {
        let out = out.into();
        let io = |p: &std::path::Path, source| Error::Io { path: p.display().to_string(), source };
        if out.exists() {
            let empty = std::fs::read_dir(&out).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !empty {
                return Err(io(&out, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "output folder exists and is not empty")));
            }
        }
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "merged".into());
        let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        Ok(DirSink { out, tmp, file: None, committed: false })
    }

    fn finish_file(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(mut f) = self.file.take() {
            f.flush().map_err(|e| Error::Io { path: self.tmp.display().to_string(), source: e })?;
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Sink for DirSink {
    fn begin(&mut self, file: &str) -> Result<()> {
        self.finish_file()?;
        let p = self.tmp.join(file);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::Io { path: d.display().to_string(), source: e })?;
        }
        let f = std::fs::File::create(&p).map_err(|e| Error::Io { path: p.display().to_string(), source: e })?;
        self.file = Some(std::io::BufWriter::with_capacity(1 << 20, f));
        Ok(())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let f = self.file.as_mut().expect("begin before write");
        f.write_all(bytes).map_err(|e| Error::Io { path: self.tmp.display().to_string(), source: e })
    }
    fn commit(&mut self) -> Result<()> {
        self.finish_file()?;
        if self.out.exists() {
            let _ = std::fs::remove_dir(&self.out); // empty, checked in `new`
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::Io { path: self.out.display().to_string(), source: e })?;
        self.committed = true;
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for DirSink {
    fn drop(&mut self) {
        if !self.committed {
            self.file = None;
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// One output tensor as its shard header lists it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// safetensors dtype name.
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// The safetensors header (8-byte length + JSON padded with spaces to a multiple of 8), for tensors
/// laid out back to back in the given order.
pub fn header(entries: &[Entry], metadata: Option<&BTreeMap<String, String>>) -> Vec<u8> {
    let mut h = Map::new();
    if let Some(m) = metadata {
        h.insert("__metadata__".into(), json!(m));
    }
    let mut off = 0u64;
    for e in entries {
        h.insert(e.name.clone(), json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.bytes]}));
        off += e.bytes;
    }
    let mut j = serde_json::to_vec(&Value::Object(h)).expect("a JSON map serializes");
    j.resize(j.len().next_multiple_of(8), b' ');
    let mut out = (j.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&j);
    out
}

/// Splits entries (in write order) into shards of at most `max_bytes` of data (a larger tensor gets
/// a shard of its own). One shard is named `model.safetensors`; several are
/// `model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json`.
pub fn shard(entries: &[Entry], max_bytes: u64) -> Vec<(String, std::ops::Range<usize>)> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, e) in entries.iter().enumerate() {
        if i > start && size + e.bytes > max_bytes {
            ranges.push(start..i);
            start = i;
            size = 0;
        }
        size += e.bytes;
    }
    if start < entries.len() || entries.is_empty() {
        ranges.push(start..entries.len());
    }
    let n = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| (if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) }, r))
        .collect()
}

/// `model.safetensors.index.json` for a sharded output.
pub fn index(entries: &[Entry], shards: &[(String, std::ops::Range<usize>)]) -> Vec<u8> {
    let mut map = Map::new();
    for (file, r) in shards {
        for e in &entries[r.clone()] {
            map.insert(e.name.clone(), json!(file));
        }
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    serde_json::to_vec_pretty(&json!({"metadata": {"total_size": total}, "weight_map": map})).expect("JSON")
}
