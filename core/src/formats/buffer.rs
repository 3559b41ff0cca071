//! The bytes of a weights file: a read-only memory mapping natively, a buffer handed over (tests),
//! or a [`RangeRead`]er that fetches byte ranges on demand (wasm: an `ArrayBuffer` kept on the JS
//! side, so the weights never sit whole in the wasm heap). Shared by every reader so opening a file
//! is checked the same way everywhere.

use crate::error::{Error, FileError, Result};
use std::borrow::Cow;
use std::sync::Arc;

/// `Send + Sync` natively (readers may be shared with worker threads); nothing in wasm, where there
/// is one thread and a JS buffer handle is neither.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}
/// `Send + Sync` natively; nothing in wasm.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// Synchronous random access to a file's bytes (a `Uint8Array` on the JS side, a test double).
/// Readers built over one ([`crate::formats::safetensors::SafeTensors::from_reader`],
/// [`crate::formats::gguf::Gguf::from_reader`]) read the header once and then each tensor's range
/// when it is loaded, so at most one tensor's raw bytes are copied into memory at a time.
pub trait RangeRead: MaybeSendSync {
    /// The file size in bytes.
    fn len(&self) -> u64;
    /// Fills `out` with the bytes at `[start, start + out.len())`; a range past the end is an
    /// error (the readers never ask for one: they check every offset against [`RangeRead::len`]).
    fn read_at(&self, start: u64, out: &mut [u8]) -> std::io::Result<()>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes in memory as a [`RangeRead`] (tests; a host that has the file whole anyway).
impl RangeRead for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, start: u64, out: &mut [u8]) -> std::io::Result<()> {
        let s = usize::try_from(start).ok().and_then(|s| self.get(s..s.checked_add(out.len())?));
        let src = s.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "range past the end of the buffer"))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

pub(crate) enum Buffer {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Ranged(Arc<dyn RangeRead>),
}

impl Buffer {
    /// The file size.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Buffer::Owned(v) => v.len() as u64,
            #[cfg(not(target_arch = "wasm32"))]
            Buffer::Mapped(m) => m.len() as u64,
            Buffer::Ranged(r) => r.len(),
        }
    }

    /// The whole file, when it is in memory (owned or mapped); `None` for a ranged reader.
    pub(crate) fn whole(&self) -> Option<&[u8]> {
        match self {
            Buffer::Owned(v) => Some(v),
            #[cfg(not(target_arch = "wasm32"))]
            Buffer::Mapped(m) => Some(m),
            Buffer::Ranged(_) => None,
        }
    }

    /// The bytes `[start, start + len)`: borrowed when the file is in memory, read otherwise.
    /// `file` names the file in errors.
    pub(crate) fn read(&self, file: &str, start: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let out_of_range = || {
            Error::file(file, FileError::Truncated(format!("bytes {start}..{} asked of a file of {} bytes", start.saturating_add(len), self.len())))
        };
        let end = start.checked_add(len).filter(|&e| e <= self.len()).ok_or_else(out_of_range)?;
        match self.whole() {
            // end <= the length of a buffer in memory, so both fit in usize.
            Some(b) => Ok(Cow::Borrowed(&b[start as usize..end as usize])),
            None => {
                let n = usize::try_from(len).map_err(|_| out_of_range())?;
                let mut v = vec![0u8; n];
                self.read_into(file, start, &mut v)?;
                Ok(Cow::Owned(v))
            }
        }
    }

    /// Copies `[start, start + out.len())` into `out` (for a ranged reader: straight from its
    /// source, with no intermediate copy).
    pub(crate) fn read_into(&self, file: &str, start: u64, out: &mut [u8]) -> Result<()> {
        match self {
            Buffer::Ranged(r) => r.read_at(start, out).map_err(|source| Error::Io { path: file.to_string(), source }),
            _ => {
                let b = self.read(file, start, out.len() as u64)?;
                out.copy_from_slice(&b);
                Ok(())
            }
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
