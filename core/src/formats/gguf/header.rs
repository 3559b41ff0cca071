//! Parsing and validation of a GGUF header (versions 2 and 3, little-endian). Layout:
//!
//! ```text
//! "GGUF"  u32 version  u64 n_tensors  u64 n_kv
//! n_kv ×      string key, u32 value type, value        (string = u64 length + UTF-8 bytes;
//!                                                        array = u32 type, u64 count, elements)
//! n_tensors × string name, u32 n_dims, u64 ne[n_dims] (innermost first), u32 ggml type,
//!             u64 offset (relative to the data section)
//! padding to `general.alignment` (default 32), then the data section to the end of the file
//! ```
//!
//! Every count and length is checked against what is left of the file before anything is
//! allocated, and array elements are capped in total, so a lying header costs at most the file
//! size plus [`MAX_ARRAY_ELEMENTS`] parsed values in memory, and comes back as a typed error,
//! never a panic.

use super::ggml::GgmlType;
use super::value::MetaValue;
use super::TensorInfo;
use crate::error::{Error, FileError, Result};
use crate::shape::MAX_ELEMENTS;
use std::collections::HashSet;

/// More tensors than this is corruption: the largest MoE checkpoints have tens of thousands.
pub const MAX_TENSORS: u64 = 1 << 20;
/// More metadata entries than this is corruption (real files have tens).
pub const MAX_KV: u64 = 1 << 20;
/// Array elements accepted across the whole header (each parsed element takes 32 bytes, whatever
/// its size in the file). The largest real headers (262k-token vocabularies with scores and
/// types, or 128k tokens with 280k merges) hold under a million.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 22;
/// Keys and tensor names: the GGUF spec caps keys at 65535 bytes; names are far shorter.
const MAX_NAME_LEN: u64 = 65_535;
/// Arrays of arrays are legal; deeper nesting than this only serves to exhaust the stack.
const MAX_DEPTH: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";

pub(super) struct Header {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: u64,
}

/// A cursor over the file that refuses to read past its end. `buf` holds the file's first bytes
/// (all of them, or a prefix that a ranged reader grows until the header fits).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The whole file's size: what every length is checked against.
    file_size: u64,
    /// Array elements read so far, against [`MAX_ARRAY_ELEMENTS`].
    elements: u64,
    /// Set when a read fit in the file but not in `buf`: the parse failed for want of a longer
    /// prefix, and needs at least this many bytes.
    short: Option<u64>,
}

impl<'a> Reader<'a> {
    /// Bytes of the file after the cursor.
    fn remaining(&self) -> u64 {
        self.file_size - self.pos as u64
    }

    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], FileError> {
        if n > self.remaining() {
            return Err(FileError::Truncated(format!(
                "{what} at byte {} needs {n} bytes, but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        // n <= remaining, so pos + n <= file_size.
        let end = self.pos as u64 + n;
        if end > self.buf.len() as u64 {
            self.short = Some(end);
            return Err(FileError::Truncated(format!("{what} at byte {} lies beyond the {} bytes read", self.pos, self.buf.len())));
        }
        // end <= buf.len() <= usize::MAX.
        let s = &self.buf[self.pos..end as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], FileError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, FileError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, FileError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string; `cap` bounds keys and names, values are bounded by the file.
    fn bytes(&mut self, what: &str, cap: Option<u64>) -> std::result::Result<&'a [u8], FileError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if let Some(cap) = cap.filter(|&c| len > c) {
            return Err(FileError::BadHeader(format!("{what} at byte {at} claims {len} bytes, above the {cap}-byte cap")));
        }
        self.take(len, what)
    }

    fn name(&mut self, what: &str) -> std::result::Result<String, FileError> {
        let at = self.pos;
        let b = self.bytes(what, Some(MAX_NAME_LEN))?;
        String::from_utf8(b.to_vec()).map_err(|_| FileError::BadHeader(format!("{what} at byte {at} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> std::result::Result<MetaValue, FileError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(FileError::BadHeader(format!("{what}: bool byte {b} is neither 0 nor 1"))),
            },
            // Values (token lists especially) may hold bytes that are not UTF-8 in files from
            // some converters; they are kept, with U+FFFD in place of the bad bytes.
            8 => MetaValue::Str(String::from_utf8_lossy(self.bytes(what, None)?).into_owned()),
            9 => self.array_value(what, depth)?,
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(FileError::BadHeader(format!("{what}: unknown value type {t}"))),
        })
    }

    fn array_value(&mut self, what: &str, depth: u32) -> std::result::Result<MetaValue, FileError> {
        if depth >= MAX_DEPTH {
            return Err(FileError::BadHeader(format!("{what}: arrays nested deeper than {MAX_DEPTH}")));
        }
        let ty = self.u32(what)?;
        let n = self.u64(what)?;
        self.elements = self.elements.saturating_add(n);
        if self.elements > MAX_ARRAY_ELEMENTS {
            return Err(FileError::BadHeader(format!(
                "{what}: array of {n} elements takes the header above the cap of {MAX_ARRAY_ELEMENTS} array elements"
            )));
        }
        // Smallest encoding of one element: checked before allocating room for `n` of them.
        let min = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(FileError::BadHeader(format!("{what}: unknown array element type {t}"))),
        };
        if n * min > self.remaining() {
            return Err(FileError::Truncated(format!(
                "{what}: array of {n} elements needs at least {} bytes, but only {} remain",
                n * min,
                self.remaining()
            )));
        }
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            v.push(self.value(ty, what, depth + 1)?);
        }
        Ok(MetaValue::Array(v))
    }
}

/// Validates the whole header of `buf` (the whole file).
pub(super) fn parse(file: &str, buf: &[u8]) -> Result<Header> {
    parse_prefix(buf, buf.len() as u64).map_err(|(kind, _)| Error::file(file, kind))
}

/// Validates the header of a file of `file_size` bytes from `prefix`, its first bytes. On failure,
/// also returns how many bytes a retry needs when the failure came from reading past `prefix`
/// (still inside the file): the caller reads a longer prefix and parses again.
pub(super) fn parse_prefix(prefix: &[u8], file_size: u64) -> std::result::Result<Header, (FileError, Option<u64>)> {
    let mut r = Reader { buf: prefix, pos: 0, file_size, elements: 0, short: None };
    parse_inner(&mut r).map_err(|kind| (kind, r.short))
}

fn parse_inner(r: &mut Reader) -> std::result::Result<Header, FileError> {
    let magic: [u8; 4] = r.array("magic")?;
    if &magic != MAGIC {
        return Err(FileError::BadHeader(format!("not a GGUF file: magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(FileError::BadHeader("GGUF version 1 is not supported (2 and 3 are)".into())),
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(FileError::BadHeader("big-endian GGUF is not supported".into()))
        }
        v => return Err(FileError::BadHeader(format!("GGUF version {v} is not supported (2 and 3 are)"))),
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    if n_tensors > MAX_TENSORS {
        return Err(FileError::BadHeader(format!("{n_tensors} tensors, above the cap of {MAX_TENSORS}")));
    }
    if n_kv > MAX_KV {
        return Err(FileError::BadHeader(format!("{n_kv} metadata entries, above the cap of {MAX_KV}")));
    }

    // Each entry takes at least 13 bytes (key length, type, one-byte value), so `n_kv` entries
    // cannot be preallocated blindly; grow as they are read.
    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = r.name(&format!("metadata key #{i}"))?;
        let what = format!("metadata '{key}'");
        let ty = r.u32(&what)?;
        let value = r.value(ty, &what, 0)?;
        if !keys.insert(key.clone()) {
            return Err(FileError::BadHeader(format!("metadata key '{key}' appears twice")));
        }
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(FileError::BadHeader(format!("general.alignment {v} is not a power of two"))),
        },
    };

    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let t = tensor_info(r, i)?;
        if !names.insert(t.name.clone()) {
            return Err(FileError::BadHeader(format!("tensor '{}' appears twice", t.name)));
        }
        tensors.push(t);
    }

    let file_size = r.file_size;
    let header_end = r.pos as u64;
    let data_start = match header_end.div_ceil(alignment).checked_mul(alignment) {
        Some(s) if s <= file_size => s,
        // A file without tensors may end right after its header, unpadded.
        _ if tensors.is_empty() => file_size,
        _ => {
            return Err(FileError::Truncated(format!(
                "the data section would start at byte {header_end} aligned to {alignment}, beyond the file size {file_size}"
            )))
        }
    };
    let data_len = file_size - data_start;
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(FileError::BadHeader(format!(
                "tensor '{}': data offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        match t.offset.checked_add(t.bytes) {
            Some(end) if end <= data_len => {}
            end => {
                return Err(FileError::OffsetsOutOfRange {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_len,
                })
            }
        }
    }
    check_overlap(&tensors)?;
    Ok(Header { version, metadata, tensors, alignment, data_start })
}

fn tensor_info(r: &mut Reader, i: u64) -> std::result::Result<TensorInfo, FileError> {
    let name = r.name(&format!("tensor name #{i}"))?;
    let what = format!("tensor '{name}'");
    let n_dims = r.u32(&what)?;
    if n_dims > 4 {
        return Err(FileError::BadHeader(format!("{what}: {n_dims} dimensions (ggml has at most 4)")));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        ne.push(r.u64(&what)?);
    }
    let type_id = r.u32(&what)?;
    let offset = r.u64(&what)?;
    let absurd = || FileError::AbsurdShape {
        tensor: name.clone(),
        shape: ne.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect(),
    };
    let numel = ne.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or_else(absurd)?;
    if numel > MAX_ELEMENTS || usize::try_from(numel).is_err() {
        return Err(absurd());
    }
    let Some(ggml_type) = GgmlType::from_id(type_id) else {
        return Err(FileError::UnsupportedDType { tensor: name, dtype: format!("unknown ggml type id {type_id}") });
    };
    let row = ne.first().copied().unwrap_or(1);
    if row % ggml_type.block_len() != 0 {
        return Err(FileError::BadHeader(format!(
            "{what}: row length {row} is not a multiple of the {ggml_type} block of {}",
            ggml_type.block_len()
        )));
    }
    // numel <= 2^40 and a block is at most a few hundred bytes: no overflow.
    let bytes = numel / ggml_type.block_len() * ggml_type.block_bytes();
    Ok(TensorInfo { name, ggml_type, ne, offset, bytes })
}

/// Sorted by offset, any overlap shows between neighbours. Empty tensors overlap nothing.
fn check_overlap(tensors: &[TensorInfo]) -> std::result::Result<(), FileError> {
    let mut sorted: Vec<&TensorInfo> = tensors.iter().filter(|t| t.bytes > 0).collect();
    sorted.sort_by_key(|t| t.offset);
    for w in sorted.windows(2) {
        // Offsets + bytes were checked against the data length, so the sum cannot overflow.
        if w[1].offset < w[0].offset + w[0].bytes {
            return Err(FileError::Overlap { a: w[0].name.clone(), b: w[1].name.clone() });
        }
    }
    Ok(())
}
