//! Hugging Face safetensors: reading (memory-mapped natively, by byte ranges from a [`RangeRead`]
//! in wasm, or from bytes) and writing.
//!
//! The header is validated in full when the file is opened (see `header.rs`): offsets inside the
//! data section, no overlaps, byte length = shape × dtype size, sane shapes, a capped header
//! length. After that, slicing the data cannot fail. Tensors whose dtype the runtime does not
//! compute in (I64 `position_ids`, U8, BOOL, F64, ...) are still listed with their dtype string;
//! loading one gives [`FileError::UnsupportedDType`], so a model can skip it.
//!
//! We parse the header ourselves rather than through the `safetensors` crate so that every defect
//! maps to our typed [`FileError`] with the file and tensor named; the crate is used in the tests
//! as the reference that our reader and writer agree with.

mod header;
#[cfg(test)]
mod tests;
mod write;

pub use header::{dtype_size, MAX_HEADER_LEN};
pub use write::serialize;
#[cfg(not(target_arch = "wasm32"))]
pub use write::{write, write_raw, RawTensor};

use crate::dtype::DType;
use super::buffer::{Buffer, RangeRead};
#[cfg(not(target_arch = "wasm32"))]
use super::buffer::map_file;
use crate::error::{Error, FileError, Result};
use crate::shape::Shape;
use crate::tensor::{HostData, TensorData};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// The safetensors dtype name ("F32", "BF16", "I64", ...), whether or not we can load it.
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Length in the data section.
    pub bytes: u64,
    /// Start, relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The runtime dtype this tensor loads as, or `None` when [`SafeTensors::tensor`] refuses it.
    pub fn runtime_dtype(&self) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.safetensors_name() == self.dtype)
    }
}

/// An open, validated safetensors file.
pub struct SafeTensors {
    file: String,
    buf: Buffer,
    data_start: u64,
    /// In file order.
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors").field("file", &self.file).field("tensors", &self.tensors.len()).finish()
    }
}

impl SafeTensors {
    /// Maps `path` read-only and validates its header.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<SafeTensors> {
        let (file, buf) = map_file(path.as_ref(), 8, "the header length")?;
        SafeTensors::build(file, buf)
    }

    /// Validates `bytes` (a whole file, e.g. fetched in the browser); `name` is used in messages.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<SafeTensors> {
        SafeTensors::build(name.into(), Buffer::Owned(bytes))
    }

    /// Validates the header of the file behind `reader`, reading only its length prefix and the
    /// header; each tensor's bytes are read when it is loaded. `name` is used in messages.
    pub fn from_reader(name: impl Into<String>, reader: Arc<dyn RangeRead>) -> Result<SafeTensors> {
        SafeTensors::build(name.into(), Buffer::Ranged(reader))
    }

    fn build(file: String, buf: Buffer) -> Result<SafeTensors> {
        let h = match buf.whole() {
            Some(b) => header::parse(&file, b)?,
            None => {
                let size = buf.len();
                let prefix = buf.read(&file, 0, size.min(8))?;
                let len = prefix.first_chunk::<8>().map_or(0, |p| u64::from_le_bytes(*p));
                // Read the header only when the prefix check would pass; otherwise the prefix
                // alone gives the same error as the whole file would.
                let whole = if prefix.len() == 8 && len <= MAX_HEADER_LEN && 8 + len <= size { buf.read(&file, 0, 8 + len)? } else { prefix };
                header::parse_sized(&file, &whole, size)?
            }
        };
        let index = h.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafeTensors { file, buf, data_start: h.data_start as u64, tensors: h.tensors, index, metadata: h.metadata })
    }

    /// The path or name given when opening, as used in error messages.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Tensor names in file order (including those with unsupported dtypes).
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// Every tensor's header entry, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The `__metadata__` object (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The header entry for `name`, or [`FileError::MissingTensor`].
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        match self.index.get(name) {
            Some(&i) => Ok(&self.tensors[i]),
            None => Err(Error::file(&self.file, FileError::MissingTensor(name.to_owned()))),
        }
    }

    /// The raw little-endian bytes of `name`, whatever its dtype. Not aligned in general. Borrowed
    /// from a mapping or owned bytes; read (one copy of this tensor) from a ranged reader.
    pub fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let t = self.info(name)?;
        // The header check guaranteed offset + bytes <= data length, so this cannot go out of range.
        self.buf.read(&self.file, self.data_start + t.offset, t.bytes)
    }

    /// The bytes of `name` borrowed from the file in memory (mapped or owned); `None` when the file
    /// is read by ranges (then [`SafeTensors::bytes`] reads them).
    pub fn in_memory(&self, name: &str) -> Result<Option<&[u8]>> {
        let t = self.info(name)?;
        let Some(b) = self.buf.whole() else { return Ok(None) };
        // The header check guaranteed offset + bytes <= data length; the file is in memory.
        let start = (self.data_start + t.offset) as usize;
        Ok(Some(&b[start..start + t.bytes as usize]))
    }

    /// Drops the pages of `name` from this process's resident set (natively; a no-op for bytes in
    /// memory). For streaming readers that are done with a tensor.
    pub fn release(&self, name: &str) {
        if let Ok(t) = self.info(name) {
            let start = (self.data_start + t.offset) as usize;
            self.buf.release(start..start + t.bytes as usize);
        }
    }

    /// Maps the pages of `name` in one go before a streaming reader reads all of it (natively on
    /// Linux; a no-op otherwise).
    pub fn prefetch(&self, name: &str) {
        if let Ok(t) = self.info(name) {
            let start = (self.data_start + t.offset) as usize;
            self.buf.prefetch(start..start + t.bytes as usize);
        }
    }

    /// Loads `name` into host memory (one copy out of the mapping or the ranged reader: a ranged
    /// read goes straight into the tensor's typed storage). Unsupported dtypes give
    /// [`FileError::UnsupportedDType`], ranks above 4 [`FileError::AbsurdShape`].
    pub fn tensor(&self, name: &str) -> Result<TensorData> {
        let t = self.info(name)?;
        let Some(dtype) = t.runtime_dtype() else {
            return Err(Error::file(&self.file, FileError::UnsupportedDType { tensor: t.name.clone(), dtype: t.dtype.clone() }));
        };
        if Shape::new(&t.shape).is_err() {
            return Err(Error::file(&self.file, FileError::AbsurdShape { tensor: t.name.clone(), shape: t.shape.clone() }));
        }
        if let Buffer::Ranged(_) = self.buf {
            let start = self.data_start + t.offset;
            // The header check bounded the element count (and tied it to the byte length).
            let n = t.shape.iter().product::<usize>();
            let data = match dtype {
                DType::F32 => HostData::F32(self.read_vec(start, n)?),
                DType::F16 => HostData::F16(self.read_vec(start, n)?),
                DType::BF16 => HostData::BF16(self.read_vec(start, n)?),
                DType::U32 => HostData::U32(self.read_vec(start, n)?),
                DType::I32 => HostData::I32(self.read_vec(start, n)?),
                _ => HostData::from_bytes(dtype, &self.bytes(name)?)?,
            };
            return TensorData::new(&t.shape, data);
        }
        TensorData::from_bytes(dtype, &t.shape, &self.bytes(name)?)
    }

    /// `n` little-endian elements at `start`, read straight into their vector.
    fn read_vec<T: bytemuck::Pod>(&self, start: u64, n: usize) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); n];
        self.buf.read_into(&self.file, start, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }

    /// Validates the header of a file of `file_size` bytes from `prefix`, its first bytes through the
    /// end of the header (`8 + n` for the length `n` in its first 8 bytes), without the data: for
    /// readers that fetch each tensor's byte range on demand. Returns the tensors (file order), the
    /// metadata and where the data section starts; every offset is checked against `file_size`.
    pub fn parse_header(file: &str, prefix: &[u8], file_size: u64) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>, u64)> {
        let h = header::parse_sized(file, prefix, file_size)?;
        Ok((h.tensors, h.metadata, h.data_start as u64))
    }

    /// Sum of all tensors' byte lengths.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
}
