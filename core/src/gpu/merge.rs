//! Encoders for the merging ops (`shaders/merge_*.wgsl`).

use super::GpuBackend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::tensor::Tensor;

pub(super) fn encode(_g: &GpuBackend, op: &Op, _inputs: &[&Tensor], _out: &[Tensor]) -> Result<()> {
    Err(Error::UnsupportedOp { op: op.name(), backend: "gpu", dtype: DType::F32 })
}
