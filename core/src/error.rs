//! One error type for the whole runtime. Bad input is always an `Err`, never a panic.

use crate::dtype::DType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the runtime reports. Variants carry enough context (op, tensor, file) to print one
/// readable line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op}: shape mismatch: expected {expected}, got {got}")]
    ShapeMismatch { op: &'static str, expected: String, got: String },

    #[error("{op}: dtype mismatch: expected {expected}, got {got}")]
    DTypeMismatch { op: &'static str, expected: String, got: DType },

    #[error("rank {rank} is not supported (at most 4 dimensions)")]
    RankTooHigh { rank: usize },

    #[error("absurd shape {dims:?}: {reason}")]
    AbsurdShape { dims: Vec<usize>, reason: &'static str },

    #[error("{op}: expected {expected} input(s), got {got}")]
    Arity { op: &'static str, expected: &'static str, got: usize },

    #[error("{op}: invalid parameter: {reason}")]
    InvalidParam { op: &'static str, reason: String },

    #[error("{op} is not supported on {backend} for dtype {dtype}")]
    UnsupportedOp { op: &'static str, backend: &'static str, dtype: DType },

    #[error("tensor lives on {found}, but this call needs it on {wanted}")]
    WrongDevice { wanted: &'static str, found: &'static str },

    #[error("data length {got} does not match shape {shape:?} ({expected} elements)")]
    DataLength { shape: Vec<usize>, expected: usize, got: usize },

    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("{what} needs {bytes} bytes in one binding, above this adapter's limit of {limit} bytes")]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },

    #[error("{file}: {kind}")]
    File { file: String, kind: FileError },

    /// A LoRA adapter that cannot be used with this model; names the adapter and, where one is
    /// involved, the tensor or module.
    #[error("adapter '{adapter}': {reason}")]
    Adapter { adapter: String, reason: String },

    /// A multi-task model problem that names the task: an unknown task in a request, or a task
    /// whose description or tensors do not fit the model (see [`crate::multitask`]).
    #[error("{model}: task '{task}': {reason}")]
    Task { model: String, task: String, reason: String },
    /// A merge recipe that cannot be used: names the recipe file and, where known, the line or key.
    #[error("{file}: {reason}")]
    Recipe { file: String, reason: String },

    /// A merge that cannot proceed on one tensor: names the tensor and the model(s) involved.
    #[error("merge, tensor '{tensor}': {reason}")]
    Merge { tensor: String, reason: String },

    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
}

/// What is wrong with a weights file. Each variant names the tensor where one is involved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileError {
    #[error("file is truncated: {0}")]
    Truncated(String),
    #[error("header length {len} is beyond the file size {file_size}")]
    HeaderBeyondFile { len: u64, file_size: u64 },
    #[error("header length {len} is above the {cap}-byte cap")]
    HeaderTooLarge { len: u64, cap: u64 },
    #[error("header is not valid: {0}")]
    BadHeader(String),
    #[error("tensor '{tensor}': offsets [{start}, {end}) are outside the data section of {data_len} bytes")]
    OffsetsOutOfRange { tensor: String, start: u64, end: u64, data_len: u64 },
    #[error("tensors '{a}' and '{b}' overlap")]
    Overlap { a: String, b: String },
    #[error("tensor '{tensor}': shape {shape:?} x {dtype} needs {expected} bytes, but the header gives {got}")]
    ByteLength { tensor: String, shape: Vec<usize>, dtype: String, expected: u64, got: u64 },
    #[error("tensor '{tensor}': unsupported dtype {dtype}")]
    UnsupportedDType { tensor: String, dtype: String },
    #[error("tensor '{tensor}': absurd shape {shape:?}")]
    AbsurdShape { tensor: String, shape: Vec<usize> },
    #[error("tensor '{0}' not found")]
    MissingTensor(String),
}

impl Error {
    /// A stable short code for this error's kind, shared by the CLI and the JS surface.
    pub fn code(&self) -> &'static str {
        match self {
            Error::ShapeMismatch { .. }
            | Error::DTypeMismatch { .. }
            | Error::RankTooHigh { .. }
            | Error::AbsurdShape { .. }
            | Error::Arity { .. }
            | Error::InvalidParam { .. }
            | Error::DataLength { .. }
            | Error::File { .. }
            | Error::Adapter { .. }
            | Error::Task { .. }
            | Error::Recipe { .. }
            | Error::Merge { .. } => "BAD_INPUT",
            Error::UnsupportedOp { .. } | Error::WrongDevice { .. } => "UNSUPPORTED",
            Error::NoAdapter(_) | Error::Gpu(_) => "DEVICE",
            Error::BufferTooLarge { .. } => "OUT_OF_MEMORY",
            Error::Io { .. } => "IO",
        }
    }

    pub(crate) fn file(file: impl Into<String>, kind: FileError) -> Self {
        Error::File { file: file.into(), kind }
    }
}
