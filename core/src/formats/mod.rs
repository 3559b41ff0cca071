//! Weight file formats. Each reader validates the whole header before it trusts a single offset,
//! and reports every defect as [`crate::Error::File`] naming the file and, where one is involved,
//! the tensor ([`crate::FileError`]). Readers never panic on bad input: a weights file is user input.
//!
//! - [`safetensors`]: Hugging Face safetensors, memory-mapped natively, from bytes in wasm; plus a
//!   writer (for fixtures and dumping activations/logits).
//! - [`gguf`]: llama.cpp's GGUF, memory-mapped natively, from bytes in wasm; blocks dequantised to
//!   f32 at load; Llama files served under Hugging Face names, config and tokenizer rebuilt.

mod buffer;
pub mod gguf;
pub mod safetensors;
