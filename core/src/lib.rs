//! # taskloom
//!
//! One runtime for small multi-task, LoRA-fused and mixture-of-experts models, in the browser
//! (wasm + WebGPU) and natively on edge devices (wgpu on Vulkan/Metal/DX12, or the CPU).
//!
//! ## Design
//! - **One op table** ([`Op`]): every computation has a CPU implementation ([`cpu::run`]), which is
//!   the readable oracle, and a WGSL kernel in `shaders/<op>.wgsl`. Kernels are checked against the
//!   CPU by the conformance suite; the CPU is checked against PyTorch goldens.
//! - **A closed [`Device`] enum** at the user boundary (`Cpu` | `Gpu`); a small `Backend` trait inside.
//!   No backend generics leak into user-facing types.
//! - **Async readback** ([`Device::download`]) on every target, because WebGPU can only map buffers
//!   asynchronously. Recording work is synchronous; a batch of ops goes out as one command buffer.
//! - **Weights stay packed**: f16/bf16 weights are stored two per `u32` and unpacked in the shader, so
//!   no `shader-f16` feature is required.
//! - **Bad input is an `Err`**, never a panic: [`Error`] names the op, file or tensor.
//!
//! ## Not (yet)
//! Training, autograd, quantised kernels (GGUF blocks are dequantised at load), multi-GPU.
//!
//! Shapes: B batch, H heads, T tokens, C channels, D head dim, V vocab, E experts, K top-k, R rank.

pub mod cpu;
mod device;
pub mod models;
pub mod multitask;
pub mod dtype;
pub mod error;
pub mod formats;
pub mod gpu;
pub mod lora;
pub mod merge;
pub mod op;
pub mod quant;
pub mod shape;
pub mod sparsify;
pub mod tensor;
pub mod tokenizer;

pub use device::{Device, DeviceChoice, DeviceInfo, DeviceOptions};
pub use dtype::DType;
pub use error::{Error, FileError, Result};
pub use op::{Consensus, GeluKind, Op, OpKind};
pub use shape::Shape;
pub use tensor::{HostData, Tensor, TensorData};
