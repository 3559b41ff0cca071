// `Runtime` (a device) and the `Tensor`s it makes.

import { Runtime as RawRuntime } from "./dist/taskloom_web.js";
import { TaskloomError, call, describe } from "./errors.js";
import { init } from "./wasm.js";
import { adapterOf, withDevices } from "./device-loss.js";

let rawOf; // Tensor -> raw wasm tensor, for Runtime only

/** A tensor on its runtime's device. `dispose()` frees it (GPU memory is not collected promptly). */
export class Tensor {
  #raw;
  constructor(raw) {
    this.#raw = raw;
  }
  static {
    rawOf = (t) => {
      if (!(t instanceof Tensor)) throw new TaskloomError("BAD_INPUT", `expected a Tensor, got ${describe(t)}`);
      if (!t.#raw) throw new TaskloomError("BAD_INPUT", "tensor was disposed");
      return t.#raw;
    };
  }
  /** The shape, outermost dimension first. */
  get dims() {
    return Array.from(rawOf(this).dims);
  }
  /** "f32", "f16", "bf16", "u32" or "i32". */
  get dtype() {
    return rawOf(this).dtype;
  }
  /** Downloads the elements. */
  async read() {
    return call(() => rawOf(this).read());
  }
  dispose() {
    this.#raw?.free();
    this.#raw = null;
  }
}

/** A runtime bound to one device ("webgpu" or "cpu"). Make one with `await Runtime.create()`. */
export class Runtime {
  #raw;
  #adapter = null;
  constructor(raw) {
    if (!(raw instanceof RawRuntime)) throw new TypeError("use `await Runtime.create(opts)`");
    this.#raw = raw;
  }

  /**
   * `opts.device`: "auto" (default: WebGPU if an adapter exists, else the CPU), "webgpu" or "cpu".
   * `opts.maxBindingBytes`: lowers (never raises) the WebGPU binding limit; weights above it are
   * split into row blocks at load.
   */
  static async create(opts = {}) {
    await init();
    const [raw, devices] = await withDevices(() => call(() => RawRuntime.create(opts)));
    const rt = new Runtime(raw);
    if (raw.device === "webgpu") rt.#adapter = adapterOf.get(devices.at(-1)) ?? null;
    return rt;
  }

  #self() {
    if (!this.#raw) throw new TaskloomError("BAD_INPUT", "runtime was disposed");
    return this.#raw;
  }

  /** "webgpu" or "cpu". */
  get device() {
    return this.#self().device;
  }

  /**
   * Device facts: kind, name, backend, device_type, limits (`max_storage_buffer_binding_size` is
   * the one in force, after `maxBindingBytes`), and features: `shader_f16` and `subgroups`, read
   * from the GPUAdapter's `features` in the browser (wgpu does not report subgroups there).
   */
  info() {
    const info = call(() => this.#self().info());
    const features = this.#adapter?.features;
    if (features && typeof features.has === "function") {
      info.shader_f16 = features.has("shader-f16");
      info.subgroups = features.has("subgroups");
    }
    return info;
  }

  /** Copies row-major f32 `data` of shape `dims` to the device. */
  upload(data, dims) {
    const raw = this.#self();
    if (!(data instanceof Float32Array)) {
      if (!Array.isArray(data) && !ArrayBuffer.isView(data)) {
        throw new TaskloomError("BAD_INPUT", `data must be a Float32Array or an array of numbers, got ${describe(data)}`);
      }
      data = Float32Array.from(data);
    }
    return new Tensor(call(() => raw.upload(data, dims)));
  }

  /** `a @ b`, or `a @ bᵀ` with `{ transB: true }`: [.., M, K] x [.., K, N] -> [.., M, N]. */
  matmul(a, b, opts = {}) {
    const raw = this.#self();
    const transB = opts?.transB ?? false;
    if (typeof transB !== "boolean") {
      throw new TaskloomError("BAD_INPUT", `options.transB must be a boolean, got ${describe(transB)}`);
    }
    return new Tensor(call(() => raw.matmul(rawOf(a), rawOf(b), transB)));
  }

  /** Downloads a tensor made by this runtime. */
  async read(t) {
    const raw = this.#self();
    return call(() => raw.read(rawOf(t)));
  }

  dispose() {
    this.#raw?.free();
    this.#raw = null;
  }
}
