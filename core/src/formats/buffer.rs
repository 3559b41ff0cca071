//! The bytes of a weights file: a read-only memory mapping natively, or a buffer handed over (wasm,
//! tests). Shared by every reader so opening a file is checked the same way everywhere.

#[cfg(not(target_arch = "wasm32"))]
use crate::error::{Error, FileError, Result};

pub(crate) enum Buffer {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl Buffer {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            Buffer::Mapped(m) => m,
        }
    }

    /// Maps `range` in one go (natively, Linux `MADV_POPULATE_READ`; a no-op elsewhere or where the
    /// kernel lacks it): a streamed reader about to read a whole tensor saves a page fault per page.
    pub(crate) fn prefetch(&self, range: std::ops::Range<usize>) {
        #[cfg(all(target_os = "linux", not(target_arch = "wasm32")))]
        if let Buffer::Mapped(m) = self {
            let _ = m.advise_range(memmap2::Advice::PopulateRead, range.start, range.len());
        }
        let _ = range;
    }

    /// Hints that `range` will not be read again soon: natively its pages leave this process's
    /// resident set (they stay in the page cache and fault back in if read). Streamed merges call
    /// this after each tensor so peak RSS stays near one tensor per input, not whole files.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(all(unix, not(target_arch = "wasm32")))]
        if let Buffer::Mapped(m) = self {
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops pages
            // that are read back from the file on the next access; no data is lost or changed.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
        }
        let _ = range;
    }
}

/// Maps `path` read-only; `min_len` bytes (the format's fixed header, `what`) must be there.
/// Returns the name used in messages and the mapping.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn map_file(path: &std::path::Path, min_len: u64, what: &str) -> Result<(String, Buffer)> {
    let file = path.display().to_string();
    let io = |source| Error::Io { path: file.clone(), source };
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.len() < min_len {
        // Checked before mapping: mapping an empty file fails on some platforms with a vaguer error.
        return Err(Error::file(file, FileError::Truncated(format!("{} bytes, but {what} alone takes {min_len}", meta.len()))));
    }
    // SAFETY: the mapping is read-only and no reference into it outlives its owner. Another
    // process truncating or rewriting the file while it is mapped is undefined behaviour; every
    // mmap-based weights loader (candle, llama.cpp, the safetensors Python package) accepts that
    // risk to avoid copying gigabytes.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok((file, Buffer::Mapped(map)))
}
