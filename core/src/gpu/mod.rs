//! The wgpu backend: Vulkan/Metal/DX12/GL natively, WebGPU in the browser.
//!
//! Tensors live in storage buffers (f16/bf16 packed two per `u32`, padded to 4 bytes). `exec`
//! records compute passes into one pending command encoder; `flush` (or the next `download`)
//! submits it, so a whole forward pass is one submission. Pipelines are cached by
//! (shader, entry, override constants).

pub mod kernels;
mod merge;
mod ops;

use crate::device::{Backend, DeviceInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::shape::Shape;
use crate::tensor::{HostData, Storage, Tensor, TensorData};
use kernels::{PipelineCache, Shader};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// A device buffer holding one tensor's elements.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub(crate) buf: wgpu::Buffer,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    info: DeviceInfo,
    cache: Mutex<PipelineCache>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    dispatches: AtomicU64,
    /// Bytes handed to `upload` so far (allocator statistics: what a model keeps resident).
    uploaded: AtomicU64,
    /// Bound where a kernel's optional input is absent (WebGPU forbids zero-sized bindings).
    dummy: wgpu::Buffer,
    /// Errors wgpu reports out of band (validation, out of memory), surfaced at the next flush.
    error: Arc<Mutex<Option<String>>>,
}

#[derive(Clone)]
pub struct GpuBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuBackend({} on {})", self.inner.info.name, self.inner.info.backend)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-record; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn instance() -> wgpu::Instance {
    // Honours WGPU_BACKEND / WGPU_ADAPTER_NAME style overrides from the environment natively.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn describe(adapter: &wgpu::Adapter, limits: &wgpu::Limits) -> DeviceInfo {
    let ai = adapter.get_info();
    DeviceInfo {
        kind: "gpu",
        name: ai.name.clone(),
        backend: format!("{:?}", ai.backend).to_lowercase().replace("browserwebgpu", "webgpu"),
        device_type: format!("{:?}", ai.device_type),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
        threads: 0,
    }
}

/// Every adapter wgpu can see on this machine (natively; empty in wasm, where the browser offers one).
pub fn adapters() -> Vec<DeviceInfo> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let inst = instance();
        pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(|a| describe(a, &a.limits()))
            .collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        Vec::new()
    }
}

impl GpuBackend {
    pub async fn new() -> Result<GpuBackend> {
        let inst = instance();
        let adapter = inst
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        // Ask for everything the adapter offers: large weights need its full buffer limits.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("taskloom"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: Default::default(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: Default::default(),
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("request_device: {e}")))?;
        let error = Arc::new(Mutex::new(None));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&slot).get_or_insert_with(|| e.to_string());
        }));
        let info = describe(&adapter, &limits);
        let dummy = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dummy"),
            contents: &[0u8; 16],
            usage: wgpu::BufferUsages::STORAGE,
        });
        // Natively wgpu's handles are Send + Sync, so the backend is too; in wasm they are not, and
        // there is only one thread, so the Arc is just shared ownership.
        #[allow(clippy::arc_with_non_send_sync)]
        Ok(GpuBackend {
            inner: Arc::new(Inner {
                device,
                queue,
                limits,
                info,
                cache: Mutex::default(),
                encoder: Mutex::new(None),
                dispatches: AtomicU64::new(0),
                uploaded: AtomicU64::new(0),
                dummy,
                error,
            }),
        })
    }

    pub fn info(&self) -> DeviceInfo {
        self.inner.info.clone()
    }

    /// Compute dispatches recorded since the backend was created (for benchmarks).
    pub fn dispatch_count(&self) -> u64 {
        self.inner.dispatches.load(Ordering::Relaxed)
    }

    /// Bytes of buffers created by uploads since the backend was created (padded to 4 bytes).
    pub fn uploaded_bytes(&self) -> u64 {
        self.inner.uploaded.load(Ordering::Relaxed)
    }

    /// Pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        lock(&self.inner.cache).len()
    }

    fn take_error(&self) -> Result<()> {
        match lock(&self.inner.error).take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Checks one binding's size against the adapter's limits.
    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        // Kernels index elements with u32, so one binding also stays under 4 GiB.
        let limits = &self.inner.limits;
        let limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(u32::MAX as u64);
        if bytes > limit {
            return Err(Error::BufferTooLarge { what: what.to_string(), bytes, limit });
        }
        Ok(())
    }

    /// A zeroed device tensor (the output of an op).
    pub(crate) fn alloc(&self, shape: Shape, dtype: DType, what: &str) -> Result<Tensor> {
        let bytes = padded(shape.numel() as u64 * dtype.size_in_bytes() as u64);
        self.check_size(what, bytes)?;
        let buf = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Tensor { shape, dtype, storage: Storage::Gpu(GpuBuffer { buf }) })
    }

    /// A small read-only buffer for an unused binding.
    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.inner.dummy
    }

    pub(crate) fn max_groups(&self) -> u32 {
        self.inner.limits.max_compute_workgroups_per_dimension
    }

    /// Records one dispatch of `shader::entry`: binding 0 = `params`, then `bufs` in order.
    pub(crate) fn dispatch(
        &self,
        shader: Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        params: &[u8],
        bufs: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.max_groups();
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!("{entry}: grid {groups:?} exceeds {max} workgroups per dimension")));
        }
        let dev = &self.inner.device;
        let (pipeline, bgl) = lock(&self.inner.cache).get(dev, shader, entry, constants);
        let mut padded_params = params.to_vec();
        padded_params.resize(params.len().div_ceil(16).max(1) * 16, 0);
        let ubuf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &padded_params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(entry), layout: &bgl, entries: &entries });
        let mut enc = lock(&self.inner.encoder);
        let enc = enc.get_or_insert_with(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") }));
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.inner.dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A 1-D grid of `n` invocations in workgroups of `wg`, folded into 2-D past the per-dimension
    /// limit. Shaders index `gid.x + gid.y * num_workgroups.x * wg`.
    pub(crate) fn grid(&self, n: usize, wg: u32) -> Result<[u32; 3]> {
        let groups = n.div_ceil(wg as usize);
        let max = self.max_groups() as usize;
        let x = groups.min(max);
        let y = if x == 0 { 0 } else { groups.div_ceil(x) };
        if y > max {
            return Err(Error::Gpu(format!("{n} invocations exceed the adapter's dispatch grid")));
        }
        Ok([x as u32, y as u32, 1])
    }
}

fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

pub(crate) fn buffer(t: &Tensor) -> Result<&wgpu::Buffer> {
    match &t.storage {
        Storage::Gpu(g) => Ok(&g.buf),
        Storage::Cpu(_) => Err(Error::WrongDevice { wanted: "gpu", found: "cpu" }),
    }
}

impl Backend for GpuBackend {
    fn upload(&self, data: &TensorData) -> Result<Tensor> {
        let bytes = data.data().as_bytes();
        self.check_size("upload", padded(bytes.len() as u64))?;
        let mut contents = bytes.to_vec();
        contents.resize(padded(bytes.len() as u64) as usize, 0);
        self.inner.uploaded.fetch_add(contents.len() as u64, Ordering::Relaxed);
        let buf = self.inner.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        Ok(Tensor { shape: *data.shape(), dtype: data.dtype(), storage: Storage::Gpu(GpuBuffer { buf }) })
    }

    async fn download(&self, t: &Tensor) -> Result<TensorData> {
        let src = buffer(t)?;
        let len = t.shape.numel() as u64 * t.dtype.size_in_bytes() as u64;
        let size = padded(len);
        let dev = &self.inner.device;
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = lock(&self.inner.encoder)
            .take()
            .unwrap_or_else(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") }));
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.inner.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        dev.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
        let mapped = rx.await.map_err(|_| Error::Gpu("readback was cancelled (device lost?)".into()))?;
        self.take_error()?;
        mapped.map_err(|e| Error::Gpu(format!("map_async: {e}")))?;
        let data = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(e.to_string()))?;
            HostData::from_bytes(t.dtype, &view[..len as usize])?
        };
        staging.unmap();
        TensorData::new(t.dims(), data)
    }

    fn exec(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let metas: Vec<_> = inputs.iter().map(|t| (t.shape, t.dtype)).collect();
        let outs = op.infer(&metas)?;
        for t in inputs {
            buffer(t)?;
        }
        ops::encode(self, op, inputs, &outs)
    }

    fn supports(&self, op: &Op, dtype: DType) -> bool {
        ops::supports(op, dtype)
    }

    fn flush(&self) -> Result<()> {
        if let Some(enc) = lock(&self.inner.encoder).take() {
            self.inner.queue.submit([enc.finish()]);
        }
        self.take_error()
    }
}
