//! Imported keep masks, for exact parity with a reference (mergekit draws DARE / DELLA masks from
//! torch's global RNG, which no other implementation can reproduce).
//!
//! ## File scheme
//! One safetensors file. For output tensor `NAME` and input `K`, the tensor **`NAME:K`** holds the
//! keep mask: dtype `U8` or `BOOL` (any non-zero byte = keep), shape = the tensor's shape (or flat
//! with the same element count). `K` is the input's position in the recipe: the index in the
//! `models:` list (with the base model appended at the end when it is not listed), or in the slice's
//! `sources:` list. Every input that is sparsified (density < 1) needs its mask; masks replace the
//! selection or random draw, and the rescale and merge steps then run as usual.
//! `tests/fixtures/make_merge_goldens.py` writes such files from mergekit's own draws.

use crate::error::{Error, Result};
use crate::formats::safetensors::SafeTensors;

/// The mask for `(tensor, input k)`, or `None` when the file has none.
pub fn lookup(st: &SafeTensors, tensor: &str, k: usize, numel: usize) -> Result<Option<Vec<u32>>> {
    let key = format!("{tensor}:{k}");
    let Ok(info) = st.info(&key) else { return Ok(None) };
    let bad = |reason: String| Error::Merge { tensor: tensor.to_string(), reason: format!("imported mask '{key}' in {}: {reason}", st.file()) };
    if info.dtype != "U8" && info.dtype != "BOOL" {
        return Err(bad(format!("dtype {} (want U8 or BOOL)", info.dtype)));
    }
    let bytes = st.bytes(&key)?;
    if bytes.len() != numel {
        return Err(bad(format!("{} elements, the tensor has {numel}", bytes.len())));
    }
    Ok(Some(bytes.iter().map(|b| (*b != 0) as u32).collect()))
}
