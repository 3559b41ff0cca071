//! Where a merge reads its input models from: a [`Source`] per model, whose safetensors shards are
//! either whole files at hand ([`Shard::Mapped`]: memory-mapped natively, or bytes in memory) or
//! read one tensor's byte range at a time ([`Shard::Lazy`] over a [`ByteSource`]: in the browser a
//! `File`/`Blob` slice, an HTTP `Range` request, or a caller's `ArrayBuffer` kept on the JS side).
//!
//! A lazy shard holds only its header; the engine asks for each tensor's bytes when it merges that
//! tensor and drops them after, so a merge holds about one tensor × inputs whatever the models' size.
//! Reads are `async` and the futures are not `Send` (wasm's are not).

use crate::error::{Error, FileError, Result};
use crate::formats::safetensors::{SafeTensors, TensorInfo, MAX_HEADER_LEN};
use crate::models::hf::Files;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// A boxed, non-`Send` future (wasm futures are not `Send`).
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Random access to the bytes of one file, asynchronously.
pub trait ByteSource {
    /// The file's name, as used in messages (a URL, a path in the picked folder).
    fn name(&self) -> &str;
    /// The file's size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `out` with the bytes at `start..start + out.len()`; fewer bytes available is an error
    /// naming the file ([`FileError::Truncated`]), a failed read an [`Error::Io`].
    fn read<'a>(&'a self, start: u64, out: &'a mut [u8]) -> LocalFuture<'a, Result<()>>;
}

/// Bytes in memory as a [`ByteSource`] (tests; whole files read at once).
pub struct MemBytes {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ByteSource for MemBytes {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read<'a>(&'a self, start: u64, out: &'a mut [u8]) -> LocalFuture<'a, Result<()>> {
        let r = match usize::try_from(start).ok().and_then(|s| self.bytes.get(s..s.checked_add(out.len())?)) {
            Some(b) => {
                out.copy_from_slice(b);
                Ok(())
            }
            None => Err(short(&self.name, start, out.len() as u64, self.bytes.len() as u64)),
        };
        Box::pin(std::future::ready(r))
    }
}

fn short(file: &str, start: u64, want: u64, len: u64) -> Error {
    Error::File { file: file.to_string(), kind: FileError::Truncated(format!("bytes {start}..{} asked, but the file has {len}", start + want)) }
}

/// A safetensors file whose header is parsed and whose tensors are read on demand.
pub struct LazyShard {
    src: Rc<dyn ByteSource>,
    data_start: u64,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl LazyShard {
    /// Reads and validates the header (two reads: the 8-byte length, then the JSON).
    pub async fn open(src: Rc<dyn ByteSource>) -> Result<LazyShard> {
        let file = src.name().to_string();
        let len = src.len();
        if len < 8 {
            return Err(Error::File { file, kind: FileError::Truncated(format!("{len} bytes, but the header length alone takes 8")) });
        }
        let mut prefix = vec![0u8; 8];
        src.read(0, &mut prefix).await?;
        let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_LEN {
            return Err(Error::File { file, kind: FileError::HeaderTooLarge { len: n, cap: MAX_HEADER_LEN } });
        }
        if 8 + n > len {
            return Err(Error::File { file, kind: FileError::HeaderBeyondFile { len: n, file_size: len } });
        }
        prefix.resize(8 + n as usize, 0);
        src.read(8, &mut prefix[8..]).await?;
        let (tensors, _, data_start) = SafeTensors::parse_header(&file, &prefix, len)?;
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(LazyShard { src, data_start, tensors, index })
    }

    /// Reads the bytes of `t` (an entry of this shard) into `out` (`t.bytes` long).
    pub async fn read(&self, t: &TensorInfo, out: &mut [u8]) -> Result<()> {
        debug_assert_eq!(out.len() as u64, t.bytes);
        self.src.read(self.data_start + t.offset, out).await.map_err(|e| match e {
            Error::File { file, kind: FileError::Truncated(m) } => {
                Error::File { file, kind: FileError::Truncated(format!("tensor '{}': {m}", t.name)) }
            }
            Error::Io { path, source } => Error::Io { path, source: std::io::Error::new(source.kind(), format!("tensor '{}': {source}", t.name)) },
            e => e,
        })
    }
}

/// One safetensors file of an input model.
pub enum Shard {
    /// The whole file at hand: memory-mapped natively, or bytes in memory.
    Mapped(SafeTensors),
    /// Only the header at hand; each tensor is read when it is merged.
    Lazy(LazyShard),
}

impl Shard {
    pub fn file(&self) -> &str {
        match self {
            Shard::Mapped(s) => s.file(),
            Shard::Lazy(l) => l.src.name(),
        }
    }

    /// Tensor names in file order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Shard::Mapped(s) => s.names(),
            Shard::Lazy(l) => l.tensors.iter().map(|t| t.name.as_str()).collect(),
        }
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        match self {
            Shard::Mapped(s) => s.info(name).ok(),
            Shard::Lazy(l) => l.index.get(name).map(|&i| &l.tensors[i]),
        }
    }

    /// The raw bytes of `name` (an entry of this shard): borrowed from the mapping, or read.
    pub async fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        match self {
            Shard::Mapped(s) => s.bytes(name),
            Shard::Lazy(l) => {
                let t = l.index.get(name).map(|&i| &l.tensors[i]).ok_or_else(|| Error::File { file: l.src.name().into(), kind: FileError::MissingTensor(name.into()) })?;
                let mut v = vec![0u8; t.bytes as usize];
                l.read(t, &mut v).await?;
                Ok(Cow::Owned(v))
            }
        }
    }

    /// See [`SafeTensors::prefetch`] (mapped files only).
    pub fn prefetch(&self, name: &str) {
        if let Shard::Mapped(s) = self {
            s.prefetch(name);
        }
    }

    /// See [`SafeTensors::release`] (mapped files only).
    pub fn release(&self, name: &str) {
        if let Shard::Mapped(s) = self {
            s.release(name);
        }
    }

    /// Whether reading a tensor of this shard allocates its bytes (a lazy read) rather than
    /// borrowing them from a mapping.
    pub fn is_lazy(&self) -> bool {
        matches!(self, Shard::Lazy(_))
    }
}

/// One input model of a merge.
pub trait Source {
    /// Where the model comes from, for messages (a folder, a URL).
    fn name(&self) -> String;
    /// A small file read whole (`config.json`, tokenizer files); `None` when the model has none.
    fn read<'a>(&'a self, rel: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>>>;
    /// The safetensors shards, in name order, headers validated.
    fn shards(&self) -> LocalFuture<'_, Result<Vec<Shard>>>;
}

/// A [`Files`] (a folder, mapped natively; bytes in memory) as a [`Source`]: every shard is
/// [`Shard::Mapped`], exactly what the synchronous readers see.
pub struct FilesSource<'a>(pub &'a dyn Files);

impl Source for FilesSource<'_> {
    fn name(&self) -> String {
        self.0.name()
    }
    fn read<'a>(&'a self, rel: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(std::future::ready(self.0.read(rel)))
    }
    fn shards(&self) -> LocalFuture<'_, Result<Vec<Shard>>> {
        Box::pin(std::future::ready(self.0.weights().map(|w| w.0.into_iter().map(Shard::Mapped).collect())))
    }
}

/// A model whose shards are [`ByteSource`]s read lazily and whose small files are read whole
/// through `files` (e.g. a [`MemFiles`](crate::models::hf::MemFiles) of `config.json` and the
/// tokenizer). Shards are opened in the order given.
pub struct LazySource<F: Files> {
    pub name: String,
    pub files: F,
    pub shards: Vec<Rc<dyn ByteSource>>,
}

impl<F: Files> Source for LazySource<F> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read<'a>(&'a self, rel: &'a str) -> LocalFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(std::future::ready(self.files.read(rel)))
    }
    fn shards(&self) -> LocalFuture<'_, Result<Vec<Shard>>> {
        Box::pin(async move {
            let mut v = Vec::with_capacity(self.shards.len());
            for s in &self.shards {
                v.push(Shard::Lazy(LazyShard::open(s.clone()).await?));
            }
            Ok(v)
        })
    }
}
