//! Writing safetensors files (fixtures, dumped logits). Output matches the reference writer: the
//! header is padded with spaces to a multiple of 8 bytes so the data section is 8-byte aligned, and
//! tensors are laid out back to back in the order given.

use crate::error::{Error, Result};
use crate::tensor::TensorData;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

const OP: &str = "safetensors::write";

/// The whole file in memory.
pub fn serialize(tensors: &[(&str, &TensorData)], metadata: Option<&BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let mut out = prefix_and_header(tensors, metadata)?;
    for (_, t) in tensors {
        out.extend_from_slice(t.data().as_bytes());
    }
    Ok(out)
}

/// Writes the file to `path`, streaming tensor data rather than building the file in memory.
#[cfg(not(target_arch = "wasm32"))]
pub fn write(
    path: impl AsRef<std::path::Path>,
    tensors: &[(&str, &TensorData)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let head = prefix_and_header(tensors, metadata)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    w.write_all(&head).map_err(io)?;
    for (_, t) in tensors {
        w.write_all(t.data().as_bytes()).map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(not(target_arch = "wasm32"))]
/// One tensor given as raw little-endian bytes and its safetensors dtype name ("F32", "I64", ...):
/// copies tensors the runtime does not load (integer buffers) unchanged.
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// Writes raw tensors (streamed to `path`), in the order given.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_raw(path: impl AsRef<std::path::Path>, tensors: &[RawTensor<'_>], metadata: Option<&BTreeMap<String, String>>) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let mut header = Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), json!(m));
    }
    let mut offset = 0u64;
    for t in tensors {
        if t.name == "__metadata__" || header.contains_key(t.name) {
            return Err(Error::InvalidParam { op: OP, reason: format!("tensor name '{}' is reserved or repeated", t.name) });
        }
        let len = t.bytes.len() as u64;
        header.insert(t.name.to_owned(), json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len] }));
        offset += len;
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::InvalidParam { op: OP, reason: format!("header: {e}") })?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for t in tensors {
        w.write_all(t.bytes).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// The 8-byte length, then the padded JSON header.
fn prefix_and_header(tensors: &[(&str, &TensorData)], metadata: Option<&BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let mut header = Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), json!(m));
    }
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    for (name, t) in tensors {
        if *name == "__metadata__" || !seen.insert(*name) {
            let why = if *name == "__metadata__" { "is reserved" } else { "appears twice" };
            return Err(Error::InvalidParam { op: OP, reason: format!("tensor name '{name}' {why}") });
        }
        let len = t.data().as_bytes().len() as u64;
        let entry = json!({
            "dtype": t.dtype().safetensors_name(),
            "shape": t.dims(),
            "data_offsets": [offset, offset + len],
        });
        header.insert((*name).to_owned(), entry);
        offset += len;
    }
    let mut json = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::InvalidParam { op: OP, reason: format!("header: {e}") })?;
    // Pad so the data section starts 8-byte aligned, as the reference writer does.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}
