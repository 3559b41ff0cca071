//! GGUF (llama.cpp's single-file format): a validated reader, memory-mapped natively, by byte
//! ranges from a [`RangeRead`] in wasm, or from bytes, mirroring [`super::safetensors`].
//!
//! A GGUF header has no length prefix: a ranged reader parses a prefix of the file (1 MiB, then
//! doubled, or as much as the failing read needed) until the header fits, up to
//! [`MAX_RANGED_HEADER`]; a header that claims more than that is refused with
//! [`FileError::BadHeader`] rather than read.
//!
//! The header is validated in full when the file is opened (see `header.rs`): magic, version 2
//! or 3, capped counts and lengths, every string and array inside the file, a power-of-two
//! `general.alignment`, tensor offsets aligned, in range and non-overlapping, a known ggml type
//! whose block evenly divides each row. After that, slicing the data cannot fail.
//!
//! [`Gguf::tensor`] dequantises blocks to f32 (see `ggml.rs`); [`GgufWeights::keep_quantized`]
//! instead serves 2-D Q8_0 / Q4_0 / Q4_1 tensors as `crate::quant::QuantMatrix` data, which the
//! CPU runs as it is (a model loaded on the CPU does this). F32, F16, BF16, Q8_0, Q4_0
//! and Q4_1 load; other types (Q4_K, IQ*, ...) are listed, and loading one gives
//! [`FileError::UnsupportedDType`] naming the tensor and the type.
//!
//! GGUF lists dimensions innermost first (`ne[0]` = row length); [`TensorInfo::shape`] and loaded
//! tensors use the row-major order the rest of the runtime uses, so a ggml `[576, 49152]`
//! embedding loads as `[49152, 576]`, like the Hugging Face tensor.
//!
//! Llama models: [`GgufWeights`] serves tensors under Hugging Face names (undoing llama.cpp's
//! q/k row permutation), [`Gguf::llama_config_json`] writes the matching `config.json`, and
//! [`Gguf::tokenizer`] rebuilds the BPE tokenizer from the metadata.

mod ggml;
mod header;
mod llama;
#[cfg(test)]
mod tests;
mod tokenizer;
mod value;

pub use ggml::{dequantize, GgmlType};
pub use header::{DEFAULT_ALIGNMENT, MAX_ARRAY_ELEMENTS, MAX_KV, MAX_TENSORS};
pub use llama::{hf_to_gguf_name, unpermute_rows, GgufWeights};
pub use value::MetaValue;

use super::buffer::{Buffer, RangeRead};
#[cfg(not(target_arch = "wasm32"))]
use super::buffer::map_file;
use crate::error::{Error, FileError, Result};
use crate::tensor::TensorData;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest header a ranged reader reads (real headers, with 262k-token vocabularies, are tens of
/// MiB); a header claiming more is corrupt or hostile.
pub const MAX_RANGED_HEADER: u64 = 512 << 20;
/// The first prefix a ranged reader parses.
const FIRST_PREFIX: u64 = 1 << 20;

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml order: `ne[0]` is the innermost (contiguous) dimension.
    pub ne: Vec<u64>,
    /// Start, relative to the data section (a multiple of the alignment).
    pub offset: u64,
    /// Length in the data section: blocks × block bytes.
    pub bytes: u64,
}

impl TensorInfo {
    /// Row-major dimensions (`ne` reversed), as the tensor loads.
    pub fn shape(&self) -> Vec<usize> {
        // The header check bounded every dimension by MAX_ELEMENTS, which fits in usize.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// An open, validated GGUF file.
pub struct Gguf {
    file: String,
    buf: Buffer,
    version: u32,
    alignment: u64,
    data_start: u64,
    /// In file order.
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    /// In file order.
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("file", &self.file)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .field("metadata", &self.metadata.len())
            .finish()
    }
}

/// Whether `bytes` start like a GGUF file (for picking a reader by content).
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

impl Gguf {
    /// Maps `path` read-only and validates its header.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Gguf> {
        let (file, buf) = map_file(path.as_ref(), 24, "the fixed header")?;
        Gguf::build(file, buf)
    }

    /// Validates `bytes` (a whole file, e.g. fetched in the browser); `name` is used in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Gguf> {
        Gguf::build(name.into(), Buffer::Owned(bytes))
    }

    /// Validates the header of the file behind `reader`, reading only a prefix that holds it; each
    /// tensor's bytes are read when it is loaded. `name` is used in messages.
    pub fn from_reader(name: impl Into<String>, reader: Arc<dyn RangeRead>) -> Result<Gguf> {
        Gguf::build(name.into(), Buffer::Ranged(reader))
    }

    fn build(file: String, buf: Buffer) -> Result<Gguf> {
        let h = match buf.whole() {
            Some(b) => header::parse(&file, b)?,
            None => Gguf::ranged_header(&file, &buf)?,
        };
        let index = h.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let meta_index = h.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Ok(Gguf {
            file,
            buf,
            version: h.version,
            alignment: h.alignment,
            data_start: h.data_start,
            tensors: h.tensors,
            index,
            metadata: h.metadata,
            meta_index,
        })
    }

    /// Parses growing prefixes of a ranged file until the header fits (see the module docs).
    fn ranged_header(file: &str, buf: &Buffer) -> Result<header::Header> {
        let size = buf.len();
        let mut n = size.min(FIRST_PREFIX);
        loop {
            let prefix = buf.read(file, 0, n)?;
            match header::parse_prefix(&prefix, size) {
                Ok(h) => return Ok(h),
                Err((kind, None)) => return Err(Error::file(file, kind)),
                // A read past the prefix but inside the file: `need` (> n, <= size) bytes at least.
                Err((_, Some(need))) if need <= MAX_RANGED_HEADER => n = need.max(n.saturating_mul(2)).min(size).min(MAX_RANGED_HEADER),
                Err((_, Some(need))) => {
                    return Err(Error::file(file, FileError::BadHeader(format!(
                        "the header needs at least {need} bytes, above the {MAX_RANGED_HEADER}-byte cap for a header read by ranges"
                    ))))
                }
            }
        }
    }

    /// The path or name given when opening, as used in error messages.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every tensor's header entry, in file order (including types that cannot be loaded).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The header entry for `name`, or [`FileError::MissingTensor`].
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        match self.index.get(name) {
            Some(&i) => Ok(&self.tensors[i]),
            None => Err(Error::file(&self.file, FileError::MissingTensor(name.to_owned()))),
        }
    }

    /// The raw blocks of `name`, whatever its type: borrowed from a mapping or owned bytes, read
    /// (one copy of this tensor) from a ranged reader.
    pub fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let t = self.info(name)?;
        // The header check guaranteed offset + bytes <= data length.
        self.buf.read(&self.file, self.data_start + t.offset, t.bytes)
    }

    /// Loads `name` dequantised to f32, in row-major shape ([`TensorInfo::shape`]).
    pub fn tensor(&self, name: &str) -> Result<TensorData> {
        let t = self.info(name)?;
        let unsupported = || Error::file(&self.file, FileError::UnsupportedDType { tensor: t.name.clone(), dtype: t.ggml_type.name().into() });
        if !t.ggml_type.is_loadable() {
            return Err(unsupported());
        }
        let values = if t.ggml_type == GgmlType::F32 && matches!(self.buf, Buffer::Ranged(_)) {
            // Straight into the f32 storage, without a raw copy first.
            let mut v = vec![0f32; t.numel() as usize];
            self.buf.read_into(&self.file, self.data_start + t.offset, bytemuck::cast_slice_mut(&mut v))?;
            v
        } else {
            dequantize(t.ggml_type, &self.bytes(name)?).ok_or_else(unsupported)?
        };
        TensorData::f32(&t.shape(), values)
    }

    /// Sum of all tensors' byte lengths.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `key` converted by `f`; a missing key or a value of another type is a
    /// [`FileError::BadHeader`] naming the key.
    fn typed<'a, T>(&'a self, key: &str, want: &str, f: impl FnOnce(&'a MetaValue) -> Option<T>) -> Result<T> {
        let v = self.get(key).ok_or_else(|| self.bad(format!("metadata key '{key}' is missing")))?;
        f(v).ok_or_else(|| self.bad(format!("metadata '{key}' is {} {v}, expected {want}", v.type_name())))
    }

    fn bad(&self, msg: String) -> Error {
        Error::file(&self.file, FileError::BadHeader(msg))
    }

    /// Any non-negative integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer in u32 range", |v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.typed(key, "an integer", MetaValue::as_i64)
    }

    /// f32 or f64 (narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a float", MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.typed(key, "an array", MetaValue::as_array)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of strings", |v| v.as_array()?.iter().map(MetaValue::as_str).collect())
    }

    /// An array of any integer type, each element as i64.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        self.typed(key, "an array of integers", |v| v.as_array()?.iter().map(MetaValue::as_i64).collect())
    }

    /// An array of floats, each element as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed(key, "an array of floats", |v| v.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
    }

    /// `general.architecture` ("llama", ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The Jinja chat template (`tokenizer.chat_template`).
    pub fn chat_template(&self) -> Result<String> {
        self.get_str("tokenizer.chat_template").map(str::to_owned)
    }
}
