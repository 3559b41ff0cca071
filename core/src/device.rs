//! The user-facing [`Device`]: a closed enum over the two backends, and the small internal
//! [`Backend`] trait they both implement.

use crate::cpu::CpuBackend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuBackend;
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use std::str::FromStr;

/// What a backend does. Recording work (`exec`) is synchronous; reading results back is async on
/// every target, because WebGPU can only map buffers asynchronously.
pub(crate) trait Backend {
    fn upload(&self, data: &TensorData) -> Result<Tensor>;
    async fn download(&self, t: &Tensor) -> Result<TensorData>;
    fn exec(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;
    fn supports(&self, op: &Op, dtype: DType) -> bool;
    /// Submits recorded work. A no-op on the CPU.
    fn flush(&self) -> Result<()>;
}

/// The caller's device choice, as the CLI's `--device` and the JS `device` option spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" | "webgpu" => Ok(DeviceChoice::Gpu),
            _ => Err(Error::InvalidParam {
                op: "device",
                reason: format!("'{s}' is not one of auto, cpu, gpu (or webgpu)"),
            }),
        }
    }
}

/// How to open a GPU device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Caps the bytes one storage binding may hold below the adapter's
    /// `maxStorageBufferBindingSize` (never above it): weights larger than this are split into row
    /// blocks at load (see [`crate::gpu`]). For tests and for devices that report more than they
    /// handle well. `None`: the adapter's limit, or `TASKLOOM_MAX_BINDING_BYTES` natively when set.
    pub max_binding_bytes: Option<u64>,
}

/// Facts about a device, for `taskloom devices` and `Runtime.info()` in JS.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// "cpu" or "gpu".
    pub kind: &'static str,
    /// Adapter or CPU name.
    pub name: String,
    /// wgpu backend ("vulkan", "metal", "dx12", "gl", "webgpu") or "cpu".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu" (software adapters such as lavapipe), ...
    pub device_type: String,
    /// Bytes one storage binding may hold: the adapter's `maxStorageBufferBindingSize`, lowered by
    /// [`DeviceOptions::max_binding_bytes`] (and to 4 GiB, as kernels index with u32). Weights above
    /// it are split into row blocks.
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    /// The adapter offers `shader-f16` (f16 arithmetic in shaders).
    pub shader_f16: bool,
    /// The adapter offers subgroup operations (`subgroups`).
    pub subgroups: bool,
    pub threads: usize,
}

/// A place to run ops: the CPU (always there, the reference for every kernel) or a GPU through wgpu
/// (Vulkan/Metal/DX12 natively, WebGPU in the browser).
#[derive(Clone, Debug)]
pub enum Device {
    Cpu(CpuBackend),
    Gpu(GpuBackend),
}

impl Device {
    pub fn cpu() -> Device {
        Device::Cpu(CpuBackend::new())
    }

    /// The first GPU adapter wgpu finds (high performance preferred), or [`Error::NoAdapter`].
    pub async fn gpu() -> Result<Device> {
        Ok(Device::Gpu(GpuBackend::new().await?))
    }

    /// [`Device::gpu`] with options (e.g. a smaller binding limit).
    pub async fn gpu_with(options: &DeviceOptions) -> Result<Device> {
        Ok(Device::Gpu(GpuBackend::with_options(options).await?))
    }

    /// A GPU when one exists, else the CPU.
    pub async fn best() -> Device {
        match Device::gpu().await {
            Ok(d) => d,
            Err(_) => Device::cpu(),
        }
    }

    /// `Auto` → [`Device::best`]; `Gpu` fails with [`Error::NoAdapter`] rather than falling back.
    pub async fn from_choice(choice: DeviceChoice) -> Result<Device> {
        Device::from_choice_with(choice, &DeviceOptions::default()).await
    }

    /// [`Device::from_choice`] with GPU options. Bad options fail even under `Auto`.
    pub async fn from_choice_with(choice: DeviceChoice, options: &DeviceOptions) -> Result<Device> {
        match choice {
            DeviceChoice::Auto => match Device::gpu_with(options).await {
                Ok(d) => Ok(d),
                Err(e @ Error::InvalidParam { .. }) => Err(e),
                Err(_) => Ok(Device::cpu()),
            },
            DeviceChoice::Cpu => Ok(Device::cpu()),
            DeviceChoice::Gpu => Device::gpu_with(options).await,
        }
    }

    /// "cpu" or "gpu".
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            Device::Gpu(_) => "gpu",
        }
    }

    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Cpu(c) => c.info(),
            Device::Gpu(g) => g.info(),
        }
    }

    /// Copies host data to the device.
    pub fn upload(&self, data: &TensorData) -> Result<Tensor> {
        match self {
            Device::Cpu(b) => b.upload(data),
            Device::Gpu(b) => b.upload(&*for_gpu(data)?),
        }
    }

    /// Uploads the weight `name`. On a GPU, a weight above the binding limit is split into blocks
    /// that each fit: a matrix into row blocks (usable as a `Matmul { trans_b: true }` weight or an
    /// `Embedding` table), an expert stack `[E, N, C]` between experts (usable by `ExpertMatmul` and
    /// `GroupedMatmul`); any other op given it fails with [`Error::BufferTooLarge`] naming it. The
    /// CPU never splits.
    pub fn upload_weight(&self, data: &TensorData, name: &str) -> Result<Tensor> {
        match self {
            Device::Cpu(b) => b.upload(data),
            Device::Gpu(b) => b.upload_weight(&*for_gpu(data)?, name),
        }
    }

    /// [`Device::upload_weight`] taking the data: the CPU keeps it as it is rather than copying it,
    /// so a loaded weight is in memory once (not twice while it is being loaded).
    pub fn upload_weight_owned(&self, data: TensorData, name: &str) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => Ok(crate::cpu::CpuBackend::upload_owned(data)),
            Device::Gpu(_) => self.upload_weight(&data, name),
        }
    }

    /// [`Device::upload_weight`] for a tensor that follows another's split (a bias: the same row
    /// blocks as its weight).
    pub fn upload_like(&self, data: &TensorData, name: &str, like: &Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(b) => b.upload(data),
            Device::Gpu(b) => b.upload_like(data, name, like),
        }
    }

    /// Row blocks `t` is stored as: 1 unless it is a GPU weight split to fit.
    pub fn blocks(&self, t: &Tensor) -> usize {
        crate::gpu::split_of(t).map_or(1, |s| s.blocks.len())
    }

    /// `f(block, first row)` on each row block of a split weight, gathered into a tensor split the
    /// same way; on a whole tensor (and on the CPU), `f(t, 0)`. For element-wise updates of a weight
    /// that may be split, such as fusing a LoRA delta into it.
    pub(crate) fn map_row_blocks(&self, t: &Tensor, f: &mut dyn FnMut(&Tensor, usize) -> Result<Tensor>) -> Result<Tensor> {
        match self {
            Device::Gpu(g) => g.map_blocks(t, f),
            Device::Cpu(_) => f(t, 0),
        }
    }

    /// Weights this device split into row blocks so far, and the blocks they became ((0, 0) on the
    /// CPU).
    pub fn split_stats(&self) -> (u64, u64) {
        match self {
            Device::Cpu(_) => (0, 0),
            Device::Gpu(g) => g.split_stats(),
        }
    }

    /// Reads a tensor back to the host (submits pending GPU work first).
    pub async fn download(&self, t: &Tensor) -> Result<TensorData> {
        match self {
            Device::Cpu(b) => b.download(t).await,
            Device::Gpu(b) => b.download(t).await,
        }
    }

    /// Runs one op. On the GPU this records the work; it is submitted on [`Device::flush`] or the
    /// next download, so a whole forward pass goes to the queue as one command buffer.
    pub fn exec(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        match self {
            Device::Cpu(b) => b.exec(op, inputs),
            Device::Gpu(b) => b.exec(op, inputs),
        }
    }

    /// [`Device::exec`] for ops with exactly one output.
    pub fn exec1(&self, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
        let mut v = self.exec(op, inputs)?;
        debug_assert_eq!(v.len(), 1, "{} has {} outputs", op.name(), v.len());
        Ok(v.swap_remove(0))
    }

    pub fn supports(&self, op: &Op, dtype: DType) -> bool {
        match self {
            Device::Cpu(b) => b.supports(op, dtype),
            Device::Gpu(b) => b.supports(op, dtype),
        }
    }

    /// Bytes uploaded to this device so far (GPU allocator statistics); `None` on the CPU, where
    /// an upload shares the host data.
    pub fn uploaded_bytes(&self) -> Option<u64> {
        match self {
            Device::Cpu(_) => None,
            Device::Gpu(g) => Some(g.uploaded_bytes()),
        }
    }

    pub fn flush(&self) -> Result<()> {
        match self {
            Device::Cpu(b) => b.flush(),
            Device::Gpu(b) => b.flush(),
        }
    }

    /// Upload, run one op, download every output: the convenience used by tests and bindings.
    pub async fn run(&self, op: &Op, inputs: &[&TensorData]) -> Result<Vec<TensorData>> {
        let ts = inputs.iter().map(|d| self.upload(d)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        let outs = self.exec(op, &refs)?;
        let mut res = Vec::with_capacity(outs.len());
        for o in &outs {
            res.push(self.download(o).await?);
        }
        Ok(res)
    }
}

/// `data` as the GPU kernels can read it (f32/f16/bf16/u32/i32): a block-quantised weight is
/// widened to f32 on the way, anything else passes as it is.
fn for_gpu(data: &TensorData) -> Result<std::borrow::Cow<'_, TensorData>> {
    if data.dtype().is_quantized() {
        Ok(std::borrow::Cow::Owned(TensorData::f32(data.dims(), data.to_f32_vec())?))
    } else {
        Ok(std::borrow::Cow::Borrowed(data))
    }
}
