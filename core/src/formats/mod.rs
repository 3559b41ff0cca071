//! Weight file formats. Each reader validates the whole header before it trusts a single offset,
//! and reports every defect as [`crate::Error::File`] naming the file and, where one is involved,
//! the tensor ([`crate::FileError`]). Readers never panic on bad input: a weights file is user input.
//!
//! - [`safetensors`]: Hugging Face safetensors, memory-mapped natively, read by byte ranges in wasm
//!   (or from bytes); plus a writer (for fixtures and dumping activations/logits).
//! - [`gguf`]: llama.cpp's GGUF, memory-mapped natively, read by byte ranges in wasm (or from
//!   bytes); blocks dequantised to f32 at load; Llama files served under Hugging Face names, config
//!   and tokenizer rebuilt.
//!
//! A [`RangeRead`] is any synchronous random-access source (in wasm, a JS `Uint8Array`): a reader
//! opened on one keeps only the header in memory and copies each tensor's bytes when it is loaded.

mod buffer;
pub use buffer::{MaybeSendSync, RangeRead};
pub mod gguf;
pub mod safetensors;
