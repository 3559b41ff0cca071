//! The wgpu backend: Vulkan/Metal/DX12/GL natively, WebGPU in the browser.
//!
//! Tensors live in storage buffers (f16/bf16 packed two per `u32`, padded to 4 bytes). `exec`
//! records compute passes into one pending command encoder; `flush` (or the next `download`)
//! submits it, so a whole forward pass is one submission. Pipelines are cached by
//! (shader, entry, override constants).
//!
//! ## Weights above the binding limit
//! One storage binding holds at most `maxStorageBufferBindingSize` bytes (WebGPU's default is
//! 128 MiB; some mobile GPUs offer less; [`crate::DeviceOptions::max_binding_bytes`] or
//! `TASKLOOM_MAX_BINDING_BYTES` lower it further, e.g. for tests). [`GpuBackend::upload_weight`]
//! splits a weight above it into blocks along its first dimension (rows of a matrix, whole experts
//! of an expert stack) that each fit, and the ops that take a weight run once per block: see
//! `split.rs`. Activations are never split.

pub mod kernels;
mod merge;
mod ops;
mod split;

use crate::device::{Backend, DeviceInfo, DeviceOptions};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::shape::Shape;
use crate::tensor::{HostData, Storage, Tensor, TensorData};
use kernels::{PipelineCache, Shader};
pub(crate) use split::{blocks, split_of, Split};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// A device buffer holding one tensor's elements, or a weight split into row blocks.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    mem: Mem,
}

#[derive(Clone, Debug)]
enum Mem {
    One(wgpu::Buffer),
    Split(Arc<Split>),
}

impl GpuBuffer {
    fn one(buf: wgpu::Buffer) -> GpuBuffer {
        GpuBuffer { mem: Mem::One(buf) }
    }
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    /// Bytes one binding may hold: the adapter's binding and buffer limits, u32 indexing, and the
    /// caller's [`DeviceOptions::max_binding_bytes`], whichever is least.
    max_binding: u64,
    info: DeviceInfo,
    cache: Mutex<PipelineCache>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    dispatches: AtomicU64,
    /// Bytes handed to `upload` so far (allocator statistics: what a model keeps resident).
    uploaded: AtomicU64,
    /// Tensors split into row blocks by `upload_weight`, and their blocks.
    split_tensors: AtomicU64,
    split_blocks: AtomicU64,
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

/// What the adapter offers; `max_binding` is the effective binding limit (clamped by the options).
fn describe(adapter: &wgpu::Adapter, limits: &wgpu::Limits, max_binding: u64) -> DeviceInfo {
    let ai = adapter.get_info();
    let features = adapter.features();
    DeviceInfo {
        kind: "gpu",
        name: ai.name.clone(),
        backend: format!("{:?}", ai.backend).to_lowercase().replace("browserwebgpu", "webgpu"),
        device_type: format!("{:?}", ai.device_type),
        max_storage_buffer_binding_size: max_binding,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
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
            .map(|a| {
                let l = a.limits();
                describe(a, &l, binding_limit(&l, None))
            })
            .collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        Vec::new()
    }
}

/// The largest binding taskloom uses on an adapter with `limits`, clamped by `forced` (never raised),
/// rounded down to whole 4-byte words.
fn binding_limit(limits: &wgpu::Limits, forced: Option<u64>) -> u64 {
    // Kernels index elements with u32, so one binding also stays under 4 GiB.
    let l = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(u32::MAX as u64);
    forced.map_or(l, |f| f.min(l)) / 4 * 4
}

/// `options.max_binding_bytes`, else `TASKLOOM_MAX_BINDING_BYTES` (natively), checked.
fn forced_limit(options: &DeviceOptions) -> Result<Option<u64>> {
    #[cfg(not(target_arch = "wasm32"))]
    let env = std::env::var("TASKLOOM_MAX_BINDING_BYTES").ok();
    #[cfg(target_arch = "wasm32")]
    let env: Option<String> = None;
    forced_from(options, env.as_deref())
}

/// [`forced_limit`] with the environment variable's value given.
fn forced_from(options: &DeviceOptions, env: Option<&str>) -> Result<Option<u64>> {
    let bad = |reason: String| Error::InvalidParam { op: "max_binding_bytes", reason };
    let env = match env.map(str::trim) {
        Some(v) if !v.is_empty() => {
            Some(v.parse::<u64>().map_err(|_| bad(format!("TASKLOOM_MAX_BINDING_BYTES='{v}' is not a whole number of bytes")))?)
        }
        _ => None,
    };
    let forced = options.max_binding_bytes.or(env);
    if let Some(f) = forced {
        if f < 4 {
            return Err(bad(format!("{f} bytes: a binding needs at least 4")));
        }
    }
    Ok(forced)
}

impl GpuBackend {
    pub async fn new() -> Result<GpuBackend> {
        GpuBackend::with_options(&DeviceOptions::default()).await
    }

    pub async fn with_options(options: &DeviceOptions) -> Result<GpuBackend> {
        let forced = forced_limit(options)?;
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
        let max_binding = binding_limit(&limits, forced);
        let info = describe(&adapter, &limits, max_binding);
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
                max_binding,
                info,
                cache: Mutex::default(),
                encoder: Mutex::new(None),
                dispatches: AtomicU64::new(0),
                uploaded: AtomicU64::new(0),
                split_tensors: AtomicU64::new(0),
                split_blocks: AtomicU64::new(0),
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

    /// Tensors `upload_weight` split into row blocks so far, and the blocks they became.
    pub fn split_stats(&self) -> (u64, u64) {
        (self.inner.split_tensors.load(Ordering::Relaxed), self.inner.split_blocks.load(Ordering::Relaxed))
    }

    /// Bytes one binding may hold on this device (after any forced limit).
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.max_binding
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
        let limit = self.inner.max_binding;
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
        Ok(Tensor { shape, dtype, storage: Storage::Gpu(GpuBuffer::one(buf)) })
    }

    /// One storage buffer holding `bytes` (padded to 4), counted as uploaded. Written with
    /// `write_buffer` straight from `bytes`: no host copy (in wasm, a mapped-at-creation buffer
    /// would mirror the whole tensor in the wasm heap, and a padded copy would be one more).
    fn upload_bytes(&self, bytes: &[u8]) -> wgpu::Buffer {
        let size = padded(bytes.len() as u64);
        self.inner.uploaded.fetch_add(size, Ordering::Relaxed);
        let buf = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // write_buffer takes multiples of 4 bytes: the whole words, then the last partial one padded.
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.inner.queue.write_buffer(&buf, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.inner.queue.write_buffer(&buf, whole as u64, &tail);
        }
        buf
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
        Storage::Gpu(GpuBuffer { mem: Mem::One(buf) }) => Ok(buf),
        Storage::Gpu(GpuBuffer { mem: Mem::Split(s) }) => Err(s.refused("this op", 0)),
        Storage::Cpu(_) => Err(Error::WrongDevice { wanted: "gpu", found: "cpu" }),
    }
}

impl Backend for GpuBackend {
    fn upload(&self, data: &TensorData) -> Result<Tensor> {
        let bytes = data.data().as_bytes();
        self.check_size("upload", padded(bytes.len() as u64))?;
        let buf = self.upload_bytes(bytes);
        Ok(Tensor { shape: *data.shape(), dtype: data.dtype(), storage: Storage::Gpu(GpuBuffer::one(buf)) })
    }

    async fn download(&self, t: &Tensor) -> Result<TensorData> {
        // (buffer, bytes) per block: one for a whole tensor.
        let total = t.shape.numel() as u64 * t.dtype.size_in_bytes() as u64;
        let rows = t.dims().first().map_or(1, |&r| r.max(1)) as u64;
        let parts: Vec<(&wgpu::Buffer, u64)> = blocks(t)?.into_iter().map(|(buf, _, n)| (buf, n as u64 * total / rows)).collect();
        let dev = &self.inner.device;
        let mut enc = lock(&self.inner.encoder)
            .take()
            .unwrap_or_else(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") }));
        let mut staged = Vec::with_capacity(parts.len());
        for &(src, len) in &parts {
            let size = padded(len);
            let staging = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            staged.push((staging, len));
        }
        self.inner.queue.submit([enc.finish()]);
        let mut waits = Vec::with_capacity(staged.len());
        for (staging, _) in &staged {
            let (tx, rx) = futures_channel::oneshot::channel();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            waits.push(rx);
        }
        #[cfg(not(target_arch = "wasm32"))]
        dev.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
        let mut bytes = Vec::with_capacity(staged.iter().map(|(_, l)| *l as usize).sum());
        for ((staging, len), rx) in staged.iter().zip(waits) {
            let mapped = rx.await.map_err(|_| Error::Gpu("readback was cancelled (device lost?)".into()))?;
            self.take_error()?;
            mapped.map_err(|e| Error::Gpu(format!("map_async: {e}")))?;
            {
                let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(e.to_string()))?;
                bytes.extend_from_slice(&view[..*len as usize]);
            }
            staging.unmap();
        }
        TensorData::new(t.dims(), HostData::from_bytes(t.dtype, &bytes)?)
    }

    fn exec(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let metas: Vec<_> = inputs.iter().map(|t| (t.shape, t.dtype)).collect();
        let outs = op.infer(&metas)?;
        split::check_inputs(self, op, inputs)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_limits_clamp_and_never_raise() {
        let none = DeviceOptions::default();
        let opt = |b| DeviceOptions { max_binding_bytes: Some(b) };
        assert_eq!(forced_from(&none, None).unwrap(), None);
        assert_eq!(forced_from(&none, Some(" ")).unwrap(), None);
        assert_eq!(forced_from(&none, Some(" 4096 ")).unwrap(), Some(4096));
        // The option wins over the environment.
        assert_eq!(forced_from(&opt(3000), Some("4096")).unwrap(), Some(3000));
        for bad in ["12k", "-1", "1.5"] {
            assert!(matches!(forced_from(&none, Some(bad)), Err(Error::InvalidParam { .. })), "{bad}");
        }
        assert!(matches!(forced_from(&opt(3), None), Err(Error::InvalidParam { .. })));
        let limits = wgpu::Limits { max_storage_buffer_binding_size: 1 << 27, max_buffer_size: 1 << 28, ..Default::default() };
        assert_eq!(binding_limit(&limits, None), 1 << 27);
        assert_eq!(binding_limit(&limits, Some(3001)), 3000, "whole 4-byte words");
        assert_eq!(binding_limit(&limits, Some(1 << 40)), 1 << 27, "never raised");
        let big = wgpu::Limits { max_storage_buffer_binding_size: 1 << 40, max_buffer_size: 1 << 40, ..Default::default() };
        assert_eq!(binding_limit(&big, None), (u32::MAX as u64) / 4 * 4, "u32 indexing");
    }
}
