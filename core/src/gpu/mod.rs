//! The wgpu backend (under construction).
use crate::device::{Backend, DeviceInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};

#[derive(Clone, Debug)]
pub struct GpuBuffer {}

#[derive(Clone, Debug)]
pub struct GpuBackend {}

impl GpuBackend {
    pub async fn new() -> Result<GpuBackend> {
        Err(Error::NoAdapter("not built yet".into()))
    }
    pub fn info(&self) -> DeviceInfo {
        crate::cpu::CpuBackend::new().info()
    }
}

impl Backend for GpuBackend {
    fn upload(&self, _data: &TensorData) -> Result<Tensor> {
        Err(Error::NoAdapter("x".into()))
    }
    async fn download(&self, _t: &Tensor) -> Result<TensorData> {
        Err(Error::NoAdapter("x".into()))
    }
    fn exec(&self, _op: &Op, _inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        Err(Error::NoAdapter("x".into()))
    }
    fn supports(&self, _op: &Op, _dtype: DType) -> bool {
        false
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
