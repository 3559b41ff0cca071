// The `taskloom` npm package: an ESM facade over the wasm-bindgen output in ./dist/.
//
// Why a facade: the raw bindings report failures as `Error("CODE: message")` (JsError carries no
// properties); this layer turns them into `TaskloomError` with a stable `.code`, loads the .wasm in
// both the browser (fetch) and Node (file read), and guards use-after-dispose.

import initWasm, { Runtime as RawRuntime } from "./dist/taskloom_web.js";

const CODES = new Set(["BAD_INPUT", "UNSUPPORTED", "DEVICE", "OUT_OF_MEMORY", "IO"]);

/** A failure with a stable `code`: BAD_INPUT, UNSUPPORTED, DEVICE, OUT_OF_MEMORY, IO or INTERNAL. */
export class TaskloomError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "TaskloomError";
    this.code = code;
  }
}

function toTaskloomError(e) {
  if (e instanceof TaskloomError) return e;
  if (e instanceof Error) {
    const m = /^([A-Z_]+): ([\s\S]*)$/.exec(e.message);
    if (m && CODES.has(m[1])) return new TaskloomError(m[1], m[2], { cause: e });
    // A trap (a Rust panic) is a bug in taskloom, never the caller's fault.
    if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
      return new TaskloomError("INTERNAL", `taskloom crashed: ${e.message}`, { cause: e });
    }
  }
  return e;
}

/** Runs `f`, mapping a thrown error or a rejection to a TaskloomError. */
function call(f) {
  let r;
  try {
    r = f();
  } catch (e) {
    throw toTaskloomError(e);
  }
  if (r && typeof r.then === "function") {
    return r.then(undefined, (e) => {
      throw toTaskloomError(e);
    });
  }
  return r;
}

let ready = null;

/**
 * Loads the WebAssembly module once. `Runtime.create` calls it for you; call it yourself to load
 * early or from another place (`source`: a URL, Response, BufferSource or WebAssembly.Module).
 */
export function init(source) {
  if (!ready) {
    ready = (async () => {
      let src = source;
      if (src === undefined) {
        const url = new URL("./dist/taskloom_web_bg.wasm", import.meta.url);
        // Node (and Deno) cannot fetch file: URLs; read the bytes instead.
        if (url.protocol === "file:") {
          const fs = await import("node:fs/promises");
          src = await fs.readFile(url);
        } else {
          src = url;
        }
      }
      await initWasm({ module_or_path: src });
    })().catch((e) => {
      ready = null; // let a later call retry
      throw new TaskloomError("IO", `could not load the taskloom WebAssembly module: ${e?.message ?? e}`, { cause: e });
    });
  }
  return ready;
}

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

function describe(v) {
  return v === null ? "null" : typeof v === "object" ? v.constructor?.name ?? "object" : typeof v;
}

/** A runtime bound to one device ("webgpu" or "cpu"). Make one with `await Runtime.create()`. */
export class Runtime {
  #raw;
  constructor(raw) {
    if (!(raw instanceof RawRuntime)) throw new TypeError("use `await Runtime.create(opts)`");
    this.#raw = raw;
  }

  /** `opts.device`: "auto" (default: WebGPU if an adapter exists, else the CPU), "webgpu" or "cpu". */
  static async create(opts = {}) {
    await init();
    return new Runtime(await call(() => RawRuntime.create(opts)));
  }

  #self() {
    if (!this.#raw) throw new TaskloomError("BAD_INPUT", "runtime was disposed");
    return this.#raw;
  }

  /** "webgpu" or "cpu". */
  get device() {
    return this.#self().device;
  }

  /** Device facts: kind, name, backend, device_type, limits. */
  info() {
    return call(() => this.#self().info());
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
