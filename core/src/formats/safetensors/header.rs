//! Parsing and validation of a safetensors header. Layout of a file:
//!
//! ```text
//! [0, 8)        n: u64 little-endian, the header length
//! [8, 8 + n)    JSON object: { "__metadata__": {str: str}?, name: {dtype, shape, data_offsets}, ... }
//! [8 + n, end)  data section; `data_offsets` are relative to its start
//! ```
//!
//! Everything in the header is checked here, before any offset is used to slice the data: a lying
//! header must come back as a typed error, never as a panic, a huge allocation or an aliasing read.

use super::TensorInfo;
use crate::error::{Error, FileError, Result};
use crate::shape::MAX_ELEMENTS;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Largest header accepted, as in the reference implementation (`safetensors` crate): real headers
/// are kilobytes; a bigger length is corruption or an attempt to make us allocate.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Ranks above this are corruption rather than an unusual model. Ranks 5..=8 are real (conv3d
/// weights, ...) but unusable by this runtime: they are listed, and refused only when loaded.
const MAX_RANK_LISTED: usize = 8;

const METADATA_KEY: &str = "__metadata__";

pub(super) struct Header {
    /// Sorted by offset (file order).
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file (8 + header length).
    pub data_start: usize,
}

/// Element size in bytes of each safetensors dtype name; `None` for names we do not know (newer
/// sub-byte formats such as F4), whose byte length is then not checked.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Validates the prefix, the JSON and every entry of `buf` (the whole file).
pub(super) fn parse(file: &str, buf: &[u8]) -> Result<Header> {
    parse_sized(file, buf, buf.len() as u64)
}

/// [`parse`] of a file of `file_size` bytes of which `buf` holds at least the beginning through
/// the end of the header (a reader that fetches tensors' byte ranges later, e.g. by HTTP `Range`).
pub(super) fn parse_sized(file: &str, buf: &[u8], file_size: u64) -> Result<Header> {
    let err = |kind| Error::file(file, kind);
    let Some(prefix) = buf.first_chunk::<8>() else {
        return Err(err(FileError::Truncated(format!(
            "{file_size} bytes, but the header length alone takes 8"
        ))));
    };
    let len = u64::from_le_bytes(*prefix);
    if len > MAX_HEADER_LEN {
        return Err(err(FileError::HeaderTooLarge { len, cap: MAX_HEADER_LEN }));
    }
    // `len <= MAX_HEADER_LEN`, so neither the addition nor the conversion can overflow.
    let data_start = 8 + len as usize;
    if data_start as u64 > file_size {
        return Err(err(FileError::HeaderBeyondFile { len, file_size }));
    }
    if data_start > buf.len() {
        return Err(err(FileError::Truncated(format!("{} bytes read, but the header ends at byte {data_start}", buf.len()))));
    }
    let json: Map<String, Value> = serde_json::from_slice(&buf[8..data_start])
        .map_err(|e| err(FileError::BadHeader(format!("not a JSON object: {e}"))))?;
    let data_len = file_size - data_start as u64;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(json.len());
    for (name, value) in &json {
        if name == METADATA_KEY {
            metadata = parse_metadata(value).map_err(|m| err(FileError::BadHeader(m)))?;
        } else {
            tensors.push(parse_entry(name, value, data_len).map_err(err)?);
        }
    }
    tensors.sort_by_key(|t| (t.offset, t.bytes));
    check_overlap(&tensors).map_err(err)?;
    Ok(Header { tensors, metadata, data_start })
}

fn parse_metadata(value: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let obj = value.as_object().ok_or_else(|| format!("'{METADATA_KEY}' is not an object"))?;
    obj.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_owned())),
            None => Err(format!("'{METADATA_KEY}' entry '{k}' is not a string")),
        })
        .collect()
}

fn parse_entry(name: &str, value: &Value, data_len: u64) -> std::result::Result<TensorInfo, FileError> {
    let bad = |what: &str| FileError::BadHeader(format!("tensor '{name}': {what}"));
    let obj = value.as_object().ok_or_else(|| bad("entry is not an object"))?;
    let dtype = obj.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("'dtype' is missing or not a string"))?;
    let dims: Vec<u64> = obj
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .ok_or_else(|| bad("'shape' is missing or not an array of non-negative integers"))?;
    let offsets: Vec<u64> = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .filter(|v: &Vec<u64>| v.len() == 2)
        .ok_or_else(|| bad("'data_offsets' is missing or not two non-negative integers"))?;
    let (start, end) = (offsets[0], offsets[1]);

    let numel = element_count(&dims).ok_or_else(|| FileError::AbsurdShape {
        tensor: name.to_owned(),
        shape: dims.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect(),
    })?;
    // element_count has bounded every dim by MAX_ELEMENTS, which fits in usize on every target.
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    if start > end || end > data_len {
        return Err(FileError::OffsetsOutOfRange { tensor: name.to_owned(), start, end, data_len });
    }
    if let Some(size) = dtype_size(dtype) {
        // numel <= 2^40 and size <= 8: no overflow.
        let expected = numel * size;
        if expected != end - start {
            return Err(FileError::ByteLength {
                tensor: name.to_owned(),
                shape,
                dtype: dtype.to_owned(),
                expected,
                got: end - start,
            });
        }
    }
    Ok(TensorInfo { name: name.to_owned(), dtype: dtype.to_owned(), shape, bytes: end - start, offset: start })
}

/// The element count, or `None` for a shape no real file has: rank above [`MAX_RANK_LISTED`], a
/// dimension or product above [`MAX_ELEMENTS`] (this also keeps every size within a wasm32 `usize`).
fn element_count(dims: &[u64]) -> Option<u64> {
    if dims.len() > MAX_RANK_LISTED || dims.iter().any(|&d| d > MAX_ELEMENTS) {
        return None;
    }
    let n = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    (n <= MAX_ELEMENTS && usize::try_from(n).is_ok()).then_some(n)
}

/// `tensors` sorted by offset: any overlap shows up between neighbours (if no neighbours overlap,
/// each tensor ends before the next begins). Empty tensors occupy no bytes and overlap nothing.
fn check_overlap(tensors: &[TensorInfo]) -> std::result::Result<(), FileError> {
    let mut prev: Option<&TensorInfo> = None;
    for t in tensors.iter().filter(|t| t.bytes > 0) {
        if let Some(p) = prev {
            if t.offset < p.offset + p.bytes {
                return Err(FileError::Overlap { a: p.name.clone(), b: t.name.clone() });
            }
        }
        prev = Some(t);
    }
    Ok(())
}
