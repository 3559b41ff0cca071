//! Element types. Storage types (F32, F16, BF16) hold weights and activations; U32/I32 hold indices.

use std::fmt;

/// Element type of a tensor. The block-quantised types (llama.cpp's Q8_0, Q4_0, Q4_1) have no
/// fixed per-element size: their data is a [`crate::quant::QuantMatrix`], which only the CPU runs
/// (as a matmul weight or an embedding table); uploading one to a GPU widens it to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    F32,
    F16,
    BF16,
    U32,
    I32,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::U32, DType::I32];

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            // Not a per-element size (about 1.06 and 0.56-0.75 bytes): see `QuantMatrix::bytes`.
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 1,
        }
    }

    /// A block-quantised type (its data is a `QuantMatrix`).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The name safetensors uses for this dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            // ggml's names: safetensors has no block-quantised dtypes.
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
        }
    }

    /// Shader-side code: how a `array<u32>` binding is to be decoded (see `shaders/*.wgsl`).
    pub(crate) fn shader_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::U32 => 3,
            DType::I32 => 4,
            // Never bound by a shader (the GPU widens quantised tensors at upload).
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => u32::MAX,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
        })
    }
}
