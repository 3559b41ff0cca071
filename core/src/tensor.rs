//! Host-side tensor data ([`TensorData`]) and device-resident tensors ([`Tensor`]).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use half::{bf16, f16};
use std::sync::Arc;

/// Typed element storage on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    /// A block-quantised `[rows, cols]` matrix (CPU only; see [`crate::quant`]).
    Quant(Arc<crate::quant::QuantMatrix>),
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::U32(_) => DType::U32,
            HostData::I32(_) => DType::I32,
            HostData::Quant(q) => q.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::U32(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::Quant(q) => q.rows() * q.cols(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Little-endian bytes of the elements, as safetensors and GPU buffers store them. Empty for a
    /// quantised matrix, which has no such layout (widen it first: [`HostData::to_f32_vec`]).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostData::Quant(_) => &[],
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::BF16(v) => bytemuck::cast_slice(v),
            HostData::U32(v) => bytemuck::cast_slice(v),
            HostData::I32(v) => bytemuck::cast_slice(v),
        }
    }

    /// Decodes little-endian bytes. `bytes.len()` must be a multiple of the element size.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<HostData> {
        let es = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(es) {
            return Err(Error::InvalidParam {
                op: "from_bytes",
                reason: format!("{} bytes is not a whole number of {dtype} elements", bytes.len()),
            });
        }
        // Copy through `pod_collect_to_vec` so unaligned input (an mmap slice) is fine.
        Ok(match dtype {
            DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => HostData::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => HostData::U32(bytemuck::pod_collect_to_vec(bytes)),
            DType::I32 => HostData::I32(bytemuck::pod_collect_to_vec(bytes)),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                return Err(Error::InvalidParam { op: "from_bytes", reason: format!("{dtype} data needs its shape: use QuantMatrix::from_ggml") })
            }
        })
    }

    /// All elements widened to f32 (indices converted by value).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::Quant(q) => q.dequantize(),
        }
    }
}

/// A tensor's shape and elements on the host: what goes in and comes out of a device.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    shape: Shape,
    data: HostData,
}

impl TensorData {
    /// Pairs a shape with data, checking that the element counts agree.
    pub fn new(shape: &[usize], data: HostData) -> Result<TensorData> {
        let shape = Shape::new(shape)?;
        if shape.numel() != data.len() {
            return Err(Error::DataLength { shape: shape.dims().to_vec(), expected: shape.numel(), got: data.len() });
        }
        Ok(TensorData { shape, data })
    }

    pub fn f32(shape: &[usize], v: Vec<f32>) -> Result<TensorData> {
        TensorData::new(shape, HostData::F32(v))
    }

    pub fn u32(shape: &[usize], v: Vec<u32>) -> Result<TensorData> {
        TensorData::new(shape, HostData::U32(v))
    }

    /// f32 values rounded to `dtype` (F32, F16 or BF16).
    pub fn from_f32_as(shape: &[usize], v: &[f32], dtype: DType) -> Result<TensorData> {
        let data = match dtype {
            DType::F32 => HostData::F32(v.to_vec()),
            DType::F16 => HostData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => HostData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::U32 => HostData::U32(v.iter().map(|&x| x as u32).collect()),
            DType::I32 => HostData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                return Err(Error::InvalidParam { op: "from_f32_as", reason: format!("taskloom does not quantise to {dtype}") })
            }
        };
        TensorData::new(shape, data)
    }

    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<TensorData> {
        TensorData::new(shape, HostData::from_bytes(dtype, bytes)?)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn data(&self) -> &HostData {
        &self.data
    }

    pub fn into_data(self) -> HostData {
        self.data
    }

    /// The f32 elements, or a dtype error naming `op`.
    pub fn as_f32(&self) -> Result<&[f32]> {
        match &self.data {
            HostData::F32(v) => Ok(v),
            other => Err(Error::DTypeMismatch { op: "as_f32", expected: "f32".into(), got: other.dtype() }),
        }
    }

    pub fn as_u32(&self) -> Result<&[u32]> {
        match &self.data {
            HostData::U32(v) => Ok(v),
            other => Err(Error::DTypeMismatch { op: "as_u32", expected: "u32".into(), got: other.dtype() }),
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.to_f32_vec()
    }
}

/// Where a tensor's elements live.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    Cpu(Arc<HostData>),
    Gpu(crate::gpu::GpuBuffer),
}

/// A tensor resident on a device. Cheap to clone (storage is shared). Created by
/// [`crate::Device::upload`] or returned by [`crate::Device::exec`]; read with
/// [`crate::Device::download`].
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) shape: Shape,
    pub(crate) dtype: DType,
    pub(crate) storage: Storage,
}

impl Tensor {
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The same elements under another shape with the same element count (no copy: tensors are
    /// always contiguous, row-major).
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims)?;
        if shape.numel() != self.shape.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                expected: format!("{} elements", self.shape.numel()),
                got: shape.to_string(),
            });
        }
        if self.dtype.is_quantized() && shape != self.shape {
            return Err(Error::DTypeMismatch { op: "reshape", expected: "an unquantised tensor (blocks are laid out per row)".into(), got: self.dtype });
        }
        Ok(Tensor { shape, dtype: self.dtype, storage: self.storage.clone() })
    }

    /// A block-quantised CPU tensor widened to f32 (anything else: itself). For the ops that take
    /// only f32, such as adding a LoRA delta to a weight.
    pub(crate) fn widened(&self) -> Result<Tensor> {
        match &self.storage {
            Storage::Cpu(d) if self.dtype.is_quantized() => {
                Ok(Tensor { shape: self.shape, dtype: DType::F32, storage: Storage::Cpu(Arc::new(HostData::F32(d.to_f32_vec()))) })
            }
            _ => Ok(self.clone()),
        }
    }

    /// "cpu" or "gpu".
    pub fn location(&self) -> &'static str {
        match self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Gpu(_) => "gpu",
        }
    }
}
