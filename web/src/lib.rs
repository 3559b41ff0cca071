//! The wasm-bindgen layer of the `taskloom` npm package: type conversion only, no logic.
//!
//! Every export returns `Result<_, JsError>`, never panics. A failure's message starts with the
//! stable code of [`taskloom::Error::code`] (`"BAD_INPUT: ..."`, `"DEVICE: ..."`); the ESM facade in
//! `pkg/index.js` turns that prefix into `TaskloomError.code`. Keeping the code in the message (not a
//! property set here) means the raw bindings carry it too.
//!
//! In wasm, `globalThis.navigator.gpu` is checked before wgpu is touched: outside a window or a
//! dedicated worker (Node, some test runners) wgpu panics when asked for an adapter. The crate also
//! builds natively (it is a workspace member), where the check is skipped.

mod merge;
mod model;

pub use model::Model;
use std::sync::atomic::{AtomicU32, Ordering};
use taskloom::{Device, DeviceChoice, DeviceOptions, Op, TensorData};
use wasm_bindgen::prelude::*;

/// A JS error whose message starts with `CODE: `.
pub(crate) fn js_err(code: &str, msg: impl std::fmt::Display) -> JsError {
    JsError::new(&format!("{code}: {msg}"))
}

pub(crate) fn core_err(e: taskloom::Error) -> JsError {
    js_err(e.code(), e)
}

pub(crate) fn bad_input(msg: impl std::fmt::Display) -> JsError {
    js_err("BAD_INPUT", msg)
}

/// Ids tie tensors to the runtime that made them (buffers of two GPU devices do not mix).
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Whether this JS realm offers WebGPU (`navigator.gpu`). Always true natively, where wgpu decides.
fn webgpu_available() -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        let nav = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("navigator"));
        match nav {
            Ok(nav) if nav.is_object() => js_sys::Reflect::get(&nav, &JsValue::from_str("gpu"))
                .map(|gpu| !gpu.is_undefined() && !gpu.is_null())
                .unwrap_or(false),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        true
    }
}

/// A short description of a JS value for error messages (`JsValue`'s Debug output is noisy).
fn show(v: &JsValue) -> String {
    v.as_f64()
        .map(|f| f.to_string())
        .or_else(|| v.as_string().map(|s| format!("{s:?}")))
        .or_else(|| v.js_typeof().as_string())
        .unwrap_or_default()
}

/// Reads `opts[key]` as an optional value (`opts` itself may be undefined or null).
pub(crate) fn opt_field(opts: &JsValue, key: &str) -> Result<Option<JsValue>, JsError> {
    if opts.is_undefined() || opts.is_null() {
        return Ok(None);
    }
    if !opts.is_object() {
        return Err(bad_input(format!("options must be an object, got {}", show(opts))));
    }
    let v = js_sys::Reflect::get(opts, &JsValue::from_str(key))
        .map_err(|e| bad_input(format!("options.{key}: {}", show(&e))))?;
    Ok(if v.is_undefined() { None } else { Some(v) })
}

/// `dims` as given from JS: an array (or typed array) of non-negative safe integers.
fn parse_dims(dims: &JsValue) -> Result<Vec<usize>, JsError> {
    if !js_sys::Array::is_array(dims) && !dims.is_instance_of::<js_sys::Uint32Array>() {
        return Err(bad_input(format!("dims must be an array of integers, got {}", show(dims))));
    }
    js_sys::Array::from(dims)
        .iter()
        .map(|d| match d.as_f64() {
            Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 => Ok(x as usize),
            _ => Err(bad_input(format!("dims must be non-negative integers, got {}", show(&d)))),
        })
        .collect()
}

/// `opts.maxBindingBytes`: a whole number of bytes >= 4 that lowers the WebGPU binding limit
/// (weights above it are split into row blocks at load); never raises the adapter's.
fn device_options(opts: &JsValue) -> Result<DeviceOptions, JsError> {
    let max_binding_bytes = match opt_field(opts, "maxBindingBytes")? {
        None => None,
        Some(v) => match v.as_f64() {
            Some(x) if x >= 4.0 && x.fract() == 0.0 && x <= (1u64 << 53) as f64 => Some(x as u64),
            _ => return Err(bad_input(format!("options.maxBindingBytes must be a whole number of bytes >= 4, got {}", show(&v)))),
        },
    };
    Ok(DeviceOptions { max_binding_bytes })
}

/// The device `opts.device` asks for: "auto" (WebGPU when an adapter exists, else the CPU),
/// "webgpu" (rejects with DEVICE when there is none) or "cpu"; `opts.maxBindingBytes` as in
/// [`device_options`].
pub(crate) async fn choose_device(opts: &JsValue) -> Result<Device, JsError> {
    let options = device_options(opts)?;
    let choice = match opt_field(opts, "device")? {
        None => DeviceChoice::Auto,
        Some(v) => {
            let s = v.as_string().ok_or_else(|| bad_input(format!("options.device must be a string, got {}", show(&v))))?;
            s.parse::<DeviceChoice>().map_err(core_err)?
        }
    };
    let device = match (choice, webgpu_available()) {
        (DeviceChoice::Gpu, false) => {
            return Err(js_err("DEVICE", "no GPU adapter: navigator.gpu is not available here (no WebGPU in this browser, or not a browser)"))
        }
        (DeviceChoice::Auto | DeviceChoice::Cpu, false) => Device::cpu(),
        (c, true) => Device::from_choice_with(c, &options).await.map_err(core_err)?,
    };
    Ok(device)
}

/// A runtime bound to one device. `Runtime.create()` picks it; every tensor it makes lives there.
#[wasm_bindgen]
pub struct Runtime {
    device: Device,
    id: u32,
}

#[wasm_bindgen]
impl Runtime {
    /// `opts.device`: "auto" (default: WebGPU when an adapter exists, else the CPU), "webgpu"
    /// (rejects with DEVICE when there is none), or "cpu". `opts.maxBindingBytes` lowers the WebGPU
    /// binding limit (for tests of weight splitting).
    pub async fn create(opts: JsValue) -> Result<Runtime, JsError> {
        let device = choose_device(&opts).await?;
        Ok(Runtime { device, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) })
    }

    /// "webgpu" or "cpu": where this runtime's tensors live and ops run.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        match self.device.kind() {
            "gpu" => "webgpu".into(),
            other => other.into(),
        }
    }

    /// The device's facts (name, backend, limits, `shader_f16`, `subgroups`) as a plain object.
    /// Limits beyond `Number.MAX_SAFE_INTEGER` (the CPU's "no limit") are clamped to it.
    /// `max_storage_buffer_binding_size` is the limit in force (after `maxBindingBytes`).
    pub fn info(&self) -> Result<JsValue, JsError> {
        const MAX_SAFE: u64 = (1 << 53) - 1;
        let mut info = self.device.info();
        info.max_buffer_size = info.max_buffer_size.min(MAX_SAFE);
        info.max_storage_buffer_binding_size = info.max_storage_buffer_binding_size.min(MAX_SAFE);
        let ser = serde_wasm_bindgen::Serializer::json_compatible();
        serde::Serialize::serialize(&info, &ser).map_err(|e| js_err("DEVICE", e))
    }

    /// Copies f32 data of shape `dims` (row-major) to the device.
    pub fn upload(&self, data: &[f32], dims: JsValue) -> Result<Tensor, JsError> {
        let dims = parse_dims(&dims)?;
        let td = TensorData::f32(&dims, data.to_vec()).map_err(core_err)?;
        let t = self.device.upload(&td).map_err(core_err)?;
        Ok(Tensor { t, device: self.device.clone(), runtime: self.id })
    }

    /// `a @ b` (or `a @ bᵀ` with `transB`): a [.., M, K], b [.., K, N] (or [.., N, K]) -> [.., M, N].
    pub fn matmul(&self, a: &Tensor, b: &Tensor, trans_b: bool) -> Result<Tensor, JsError> {
        for t in [a, b] {
            self.check(t)?;
        }
        let t = self.device.exec1(&Op::Matmul { trans_b }, &[&a.t, &b.t]).map_err(core_err)?;
        Ok(Tensor { t, device: self.device.clone(), runtime: self.id })
    }

    /// Reads a tensor back (f32 only for now), as a new Float32Array.
    pub async fn read(&self, t: &Tensor) -> Result<js_sys::Float32Array, JsError> {
        self.check(t)?;
        t.read().await
    }

    fn check(&self, t: &Tensor) -> Result<(), JsError> {
        if t.runtime != self.id {
            return Err(bad_input("tensor belongs to another Runtime"));
        }
        Ok(())
    }
}

/// A tensor on its runtime's device. Free it with `dispose()` when done (GPU memory is not
/// garbage-collected promptly).
#[wasm_bindgen]
pub struct Tensor {
    t: taskloom::Tensor,
    device: Device,
    runtime: u32,
}

#[wasm_bindgen]
impl Tensor {
    /// The shape, outermost dimension first.
    #[wasm_bindgen(getter)]
    pub fn dims(&self) -> Vec<u32> {
        // Shapes are capped well below u32::MAX elements by the core.
        self.t.dims().iter().map(|&d| d as u32).collect()
    }

    /// "f32", "f16", "bf16", "u32" or "i32".
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        self.t.dtype().to_string()
    }

    /// Downloads the elements as a new Float32Array.
    pub async fn read(&self) -> Result<js_sys::Float32Array, JsError> {
        let td = self.device.download(&self.t).await.map_err(core_err)?;
        let v = td.as_f32().map_err(core_err)?;
        Ok(js_sys::Float32Array::from(v))
    }
}
