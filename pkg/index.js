// The `taskloom` npm package: an ESM facade over the wasm-bindgen output in ./dist/.
//
// Why a facade: the raw bindings report failures as `Error("CODE: message")` (JsError carries no
// properties); this layer turns them into `TaskloomError` with a stable `.code`, loads the .wasm in
// both the browser (fetch) and Node (file read), guards use-after-dispose, and honours `signal`
// (an AbortSignal) on every long call: it is checked between steps and passed to `fetch`, and an
// aborted call rejects with code ABORTED (a wasm call already running finishes first; its result
// is dropped and a loaded model is disposed).

import initWasm, { Runtime as RawRuntime, Model as RawModel } from "./dist/taskloom_web.js";

const CODES = new Set(["BAD_INPUT", "UNSUPPORTED", "DEVICE", "OUT_OF_MEMORY", "IO", "ABORTED"]);

/**
 * A failure with a stable `code`: BAD_INPUT, UNSUPPORTED, DEVICE, OUT_OF_MEMORY, IO, ABORTED or
 * INTERNAL. `new TaskloomError(code, message)` gives the subclass for `code` (`BadInputError`, ...),
 * so both `e.code === "BAD_INPUT"` and `e instanceof BadInputError` work.
 */
export class TaskloomError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "TaskloomError";
    this.code = code;
    const sub = new.target === TaskloomError ? SUBCLASS[code] : undefined;
    if (sub) Object.setPrototypeOf(this, sub.prototype);
  }
}
/** code BAD_INPUT: a wrong file, corrupt weights, an unknown task or adapter, a bad option. */
export class BadInputError extends TaskloomError {}
/** code UNSUPPORTED: the model or device cannot do this (e.g. `embed()` on a decoder). */
export class UnsupportedError extends TaskloomError {}
/** code DEVICE: no WebGPU adapter, a refused or lost device. */
export class DeviceError extends TaskloomError {}
/** code OUT_OF_MEMORY: a buffer above the device's limits, or an allocation that failed. */
export class OutOfMemoryError extends TaskloomError {}
/** code ABORTED: the call's `signal` was aborted. */
export class AbortedError extends TaskloomError {}
/** code IO: a download or file read failed. */
export class IoError extends TaskloomError {}
const SUBCLASS = { BAD_INPUT: BadInputError, UNSUPPORTED: UnsupportedError, DEVICE: DeviceError, OUT_OF_MEMORY: OutOfMemoryError, ABORTED: AbortedError, IO: IoError };

/** Throws ABORTED when `signal` is aborted. */
function checkAbort(signal, what = "the call") {
  if (signal?.aborted) throw new TaskloomError("ABORTED", `${what} was aborted${signal.reason?.message ? `: ${signal.reason.message}` : ""}`);
}

/** The `signal` option, checked to be an AbortSignal-like object. */
function signalOf(opts) {
  const s = opts?.signal;
  if (s === undefined || s === null) return undefined;
  if (typeof s !== "object" || typeof s.aborted !== "boolean") throw new TaskloomError("BAD_INPUT", `options.signal must be an AbortSignal, got ${describe(s)}`);
  return s;
}

/** Runs the async `f`, rejecting with ABORTED once `signal` aborts (before or after each step). */
async function abortable(signal, what, f) {
  checkAbort(signal, what);
  const r = await f();
  checkAbort(signal, what);
  return r;
}

function toTaskloomError(e) {
  if (e instanceof TaskloomError) return e;
  if (e?.name === "AbortError") return new TaskloomError("ABORTED", `aborted: ${e.message}`, { cause: e });
  if (e instanceof Error) {
    const m = /^([A-Z_]+): ([\s\S]*)$/.exec(e.message);
    if (m && CODES.has(m[1])) return new TaskloomError(m[1], m[2], { cause: e });
    // wasm allocation failure: the heap could not grow.
    if (e instanceof RangeError && /memory|allocation/i.test(e.message)) return new TaskloomError("OUT_OF_MEMORY", e.message, { cause: e });
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
let wasmMemory = null;

/**
 * Bytes of the WebAssembly heap (0 before `init`). A wasm heap never shrinks, so this is the high-water
 * mark of the CPU path's memory: repeated load/dispose of a model must leave it flat.
 */
export function wasmMemoryBytes() {
  return wasmMemory ? wasmMemory.buffer.byteLength : 0;
}

// ---- WebGPU device loss ---------------------------------------------------------------------
// wgpu asks for its GPUDevice through `GPUAdapter.prototype.requestDevice`. While a model is being
// created, the facade wraps that method (once, passing every call through unchanged) to learn which
// GPUDevice the model got, and watches its `lost` promise (a destroyed device, a driver reset, a
// tab in the background for too long). Devices created outside a `Model.load` are not touched.
const WRAPPED = Symbol.for("taskloom.requestDevice");
let deviceSinks = [];
/** GPUDevice -> the GPUAdapter it came from (its features and limits, for `Runtime.info()`). */
const adapterOf = new WeakMap();

function watchRequestDevice() {
  const A = globalThis.GPUAdapter;
  if (!A?.prototype?.requestDevice || A.prototype.requestDevice[WRAPPED]) return;
  const orig = A.prototype.requestDevice;
  const wrapped = async function requestDevice(...args) {
    const d = await orig.apply(this, args);
    if (d && typeof d === "object") adapterOf.set(d, this);
    for (const sink of deviceSinks) sink(d);
    return d;
  };
  wrapped[WRAPPED] = true;
  A.prototype.requestDevice = wrapped;
}

/** Runs the async `f`; resolves to [its result, the GPUDevices requested while it ran]. */
async function withDevices(f) {
  watchRequestDevice();
  const got = [];
  const sink = (d) => got.push(d);
  deviceSinks.push(sink);
  try {
    return [await f(), got];
  } finally {
    deviceSinks = deviceSinks.filter((x) => x !== sink);
  }
}

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
          // Built at run time so browser bundlers do not try to resolve a Node builtin.
          const fs = await import(/* @vite-ignore */ /* webpackIgnore: true */ ["node", "fs/promises"].join(":"));
          src = await fs.readFile(url);
        } else {
          src = url;
        }
      }
      const exports = await initWasm({ module_or_path: src });
      wasmMemory = exports?.memory ?? null;
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

// Files a Hugging Face folder may hold that a model reads (required ones first).
const HF_FILES = ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json", "modules.json", "1_Pooling/config.json"];
const OPTIONAL = new Set(["tokenizer_config.json", "modules.json", "1_Pooling/config.json"]);
// Files of a PEFT adapter folder.
const ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"];

async function fetchBytes(url, name, onProgress, optional, signal) {
  checkAbort(signal, `loading ${name}`);
  let res;
  try {
    res = await cachedFetch(url, signal);
  } catch (e) {
    if (e?.name === "AbortError" || signal?.aborted) throw new TaskloomError("ABORTED", `loading ${name} was aborted`, { cause: e });
    throw new TaskloomError("IO", `${url}: ${e?.message ?? e}`, { cause: e });
  }
  if (!res.ok) {
    if (optional && res.status === 404) return null;
    throw new TaskloomError("IO", `${url}: HTTP ${res.status}`);
  }
  const total = Number(res.headers.get("content-length")) || 0;
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  // With a length (of the body as it arrives: no Content-Encoding), chunks go straight into one
  // buffer, so a weights file is held once, not as chunks plus their concatenation. The buffer is
  // handed to the wasm side as it is: weights are read from it tensor by tensor, never copied whole.
  let out = total && !res.headers.get("content-encoding") ? new Uint8Array(total) : null;
  const chunks = [];
  let loaded = 0;
  for (;;) {
    let step;
    try {
      step = await reader.read();
    } catch (e) {
      if (e?.name === "AbortError" || signal?.aborted) throw new TaskloomError("ABORTED", `loading ${name} was aborted`, { cause: e });
      throw new TaskloomError("IO", `${url}: ${e?.message ?? e}`, { cause: e });
    }
    const { done, value } = step;
    if (done) break;
    if (out && loaded + value.length > out.length) {
      // More than the declared length: keep what came as a chunk and collect the rest.
      chunks.push(out.subarray(0, loaded));
      out = null;
    }
    if (out) out.set(value, loaded);
    else chunks.push(value);
    loaded += value.length;
    onProgress?.({ file: name, loaded, total });
  }
  if (out) return loaded === out.length ? out : out.subarray(0, loaded);
  const all = new Uint8Array(loaded);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return all;
}

async function gatherFiles(source, onProgress, wanted = HF_FILES, signal) {
  if (typeof source === "string" || source instanceof URL) {
    const base = String(source);
    if (base.endsWith(".gguf")) {
      const name = base.split("/").pop();
      return { [name]: await fetchBytes(base, name, onProgress, false, signal) };
    }
    const root = base.endsWith("/") ? base : base + "/";
    const files = {};
    for (const name of wanted) {
      const b = await fetchBytes(new URL(name, new URL(root, globalThis.location?.href)), name, onProgress, OPTIONAL.has(name), signal);
      if (b) files[name] = b;
    }
    return files;
  }
  checkAbort(signal, "loading");
  // A FileList or an array of File: paths relative to the picked folder.
  if (typeof FileList !== "undefined" && source instanceof FileList) source = Array.from(source);
  if (Array.isArray(source) && source.every((f) => typeof Blob !== "undefined" && f instanceof Blob)) {
    const files = {};
    for (const f of source) {
      const rel = (f.webkitRelativePath || f.name).split("/");
      const name = rel.length > 1 ? rel.slice(1).join("/") : rel[0];
      files[name] = new Uint8Array(await f.arrayBuffer());
      onProgress?.({ file: name, loaded: f.size, total: f.size });
    }
    return files;
  }
  // A directory handle (File System Access API).
  if (source && typeof source.entries === "function" && source.kind === "directory") {
    const files = {};
    const walk = async (dir, prefix) => {
      for await (const [name, h] of dir.entries()) {
        if (h.kind === "directory") await walk(h, `${prefix}${name}/`);
        else files[prefix + name] = new Uint8Array(await (await h.getFile()).arrayBuffer());
      }
    };
    await walk(source, "");
    return files;
  }
  if (source && typeof source === "object") return source; // { path: ArrayBuffer | Uint8Array }
  throw new TaskloomError("BAD_INPUT", `model source must be a URL, files, a directory handle or an object of buffers, got ${describe(source)}`);
}

const TASKLOOM_JSON = "taskloom.json";

/**
 * A model's files; for a multi-task folder (`taskloom.json`) from a URL: taskloom.json first, then
 * the files its `weights` names, and for an `hf` trunk that folder's files under `trunk/` — from
 * `opts.trunk` (any source) or, for a relative `path`, fetched beside taskloom.json.
 */
async function gatherModel(source, opts) {
  const onProgress = totalProgress(opts?.onProgress);
  const signal = signalOf(opts);
  let files;
  if ((typeof source === "string" || source instanceof URL) && !String(source).endsWith(".gguf")) {
    const base = String(source);
    const root = new URL(base.endsWith("/") ? base : base + "/", globalThis.location?.href);
    const spec = await fetchBytes(new URL(TASKLOOM_JSON, root), TASKLOOM_JSON, onProgress, true, signal);
    if (!spec) return gatherFiles(source, onProgress, HF_FILES, signal);
    let parsed;
    try {
      parsed = JSON.parse(new TextDecoder().decode(spec));
    } catch (e) {
      throw new TaskloomError("BAD_INPUT", `${TASKLOOM_JSON}: ${e.message}`);
    }
    files = { [TASKLOOM_JSON]: spec };
    for (const name of Array.isArray(parsed.weights) ? parsed.weights : []) {
      files[name] = await fetchBytes(new URL(name, root), name, onProgress, false, signal);
    }
    // LoRA branches: every adapter's small config (the all-tasks byte count needs their ranks),
    // and the weights of the shared adapter and of the tasks being loaded only.
    const all = Object.keys(parsed.tasks ?? {});
    const wanted = Array.isArray(opts?.tasks) && opts.tasks.length ? opts.tasks : all;
    const dir = (d) => (typeof d === "string" ? d.replace(/\/+$/, "") : null);
    const adapters = [[dir(parsed.shared_adapter), true], ...all.map((t) => [dir(parsed.tasks[t]?.adapter), wanted.includes(t)])];
    for (const [d, weights] of adapters.filter(([d]) => d)) {
      for (const f of weights ? ["adapter_config.json", "adapter_model.safetensors"] : ["adapter_config.json"]) {
        const name = `${d}/${f}`;
        files[name] = await fetchBytes(new URL(name, root), name, onProgress, false);
      }
    }
    const trunk = parsed.trunk?.type === "hf" ? parsed.trunk.path : null;
    if (trunk && !opts?.trunk && !String(trunk).includes("${")) {
      for (const [k, v] of Object.entries(await gatherFiles(new URL(trunk, root).href, onProgress, HF_FILES, signal))) files[`trunk/${k}`] = v;
    }
  } else {
    files = await gatherFiles(source, onProgress, HF_FILES, signal);
  }
  if (opts?.trunk && files[TASKLOOM_JSON]) {
    for (const [k, v] of Object.entries(await gatherFiles(opts.trunk, onProgress, HF_FILES, signal))) files[`trunk/${k}`] = v;
  }
  checkAbort(signal, "loading");
  return files;
}

/**
 * Wraps a per-file progress callback so each event also carries the running totals over every file
 * seen so far: `{ file, loaded, total, allLoaded, allTotal }` (`allTotal` grows as files start).
 */
function totalProgress(onProgress) {
  if (typeof onProgress !== "function") return undefined;
  const per = new Map();
  return (p) => {
    per.set(p.file, p);
    let allLoaded = 0;
    let allTotal = 0;
    for (const q of per.values()) {
      allLoaded += q.loaded;
      allTotal += q.total || q.loaded;
    }
    onProgress({ ...p, allLoaded, allTotal });
  };
}

/**
 * Fetches a model's files without loading it: `{ path: Uint8Array }`, the object form every
 * `source` accepts (e.g. to load the same weights twice, or as `opts.trunk`). `opts`: onProgress,
 * signal.
 */
export async function fetchModelFiles(source, opts = {}) {
  return call(() => gatherModel(source, opts));
}

// ---- Cache API: fetched weights kept per file, keyed by URL + validator ----------------------

const CACHE_NAME = "taskloom-weights-v1";
const CACHED = /\.(safetensors|gguf|bin)$/;
let cacheEnabled = typeof caches !== "undefined";
let memoryCache = new Map();

/**
 * Turns the Cache API caching of weight files on or off (default: on where `caches` exists, i.e. a
 * secure browser context). Each weights file (a base model, each adapter, each expert shard) is its
 * own entry, keyed by its URL and the server's ETag / Last-Modified, so a new adapter downloads only
 * itself and a changed file is fetched again. When the quota is exceeded the file is kept in memory
 * for this page instead, with a console warning.
 */
export function setCaching(on) {
  cacheEnabled = Boolean(on) && typeof caches !== "undefined";
}

/** Deletes the weights cache (Cache API entries and the in-memory fallback). */
export async function clearCache() {
  memoryCache = new Map();
  if (typeof caches !== "undefined") await caches.delete(CACHE_NAME);
}

/** URL + validator; null when the server sends none (then the file could change unseen: not cached). */
function cacheKey(url, res) {
  const v = res.headers.get("etag") || res.headers.get("last-modified");
  if (!v) return null;
  // A query parameter, not a fragment: the Cache API ignores fragments when matching.
  const href = new URL(url, globalThis.location?.href).href;
  return `${href}${href.includes("?") ? "&" : "?"}taskloom-cache=${encodeURIComponent(v)}`;
}

/** `fetch(url)`; weights files go through the cache (validated with a HEAD request). */
async function cachedFetch(url, signal) {
  const href = String(url);
  if (!CACHED.test(new URL(href, globalThis.location?.href).pathname) || !(cacheEnabled || memoryCache.size)) return fetch(url, { signal });
  let head;
  try {
    head = await fetch(url, { method: "HEAD", signal });
  } catch (e) {
    if (e?.name === "AbortError") throw e;
    return fetch(url, { signal });
  }
  if (!head.ok) return head;
  const key = cacheKey(href, head);
  if (!key) return fetch(url, { signal });
  const mem = memoryCache.get(key);
  if (mem) return new Response(mem, { headers: { "content-length": String(mem.byteLength), "x-taskloom-cache": "memory" } });
  let cache = null;
  if (cacheEnabled) {
    try {
      cache = await caches.open(CACHE_NAME);
      const hit = await cache.match(key);
      if (hit) return hit;
    } catch {
      cache = null;
    }
  }
  const res = await fetch(url, { signal });
  if (!res.ok || !cacheEnabled) return res;
  const bytes = await res.arrayBuffer();
  const headers = { "content-type": res.headers.get("content-type") ?? "application/octet-stream", "content-length": String(bytes.byteLength), "x-taskloom-cache": "cache" };
  try {
    if (!cache) throw new Error("the Cache API is not available here");
    // Old versions of this file (another validator) are dropped first.
    const prefix = key.slice(0, key.lastIndexOf("taskloom-cache=") + "taskloom-cache=".length);
    for (const k of await cache.keys()) if (k.url.startsWith(prefix)) await cache.delete(k);
    await cache.put(key, new Response(bytes.slice(0), { headers }));
  } catch (e) {
    console.warn(`taskloom: could not cache ${href} (${e?.name === "QuotaExceededError" ? "storage quota exceeded" : e?.message ?? e}); keeping it in memory for this page`);
    memoryCache.set(key, bytes.slice(0));
  }
  return new Response(bytes, { headers: { ...headers, "x-taskloom-cache": "miss" } });
}

/**
 * A Hugging Face model (an encoder such as MiniLM, or a Llama-family decoder), a GGUF file, or a
 * multi-task folder (`taskloom.json`; `opts.tasks` loads only what those tasks need, `opts.trunk`
 * gives an hf trunk's folder).
 * `await Model.load(source, { device, onProgress })`; `source`: a URL (folder base or .gguf), a
 * FileList / File[] / directory handle, or `{ "config.json": ArrayBuffer, ... }`.
 */
export class Model {
  #raw;
  // Device loss: how to load the model again, the calls that changed it since (adapters, mixes,
  // fusing; replayed in order), the GPUDevice it runs on and, once that is lost, the loss info.
  #source = null;
  #opts = null;
  #replay = [];
  #gpu = null;
  #lost = null;
  #recovering = null;
  constructor(raw) {
    if (!(raw instanceof RawModel)) throw new TypeError("use `await Model.load(source, opts)`");
    this.#raw = raw;
  }

  /**
   * `opts`: device ("auto" | "webgpu" | "cpu"), maxBindingBytes (lowers the WebGPU binding limit;
   * weights above it are split into row blocks), tasks, trunk, onProgress, signal, onDeviceLost
   * (called with `{ reason, message }` when the WebGPU device is lost; the next call reloads the
   * model — see README.md, "Device loss").
   */
  static async load(source, opts = {}) {
    const signal = call(() => signalOf(opts));
    call(() => checkAbort(signal, "Model.load"));
    await init();
    const files = await call(() => gatherModel(source, opts));
    call(() => checkAbort(signal, "Model.load"));
    const [raw, devices] = await withDevices(() => call(() => RawModel.load(files, { device: opts?.device ?? "auto", tasks: opts?.tasks, maxBindingBytes: opts?.maxBindingBytes })));
    if (signal?.aborted) {
      raw.free();
      call(() => checkAbort(signal, "Model.load"));
    }
    const m = new Model(raw);
    const { signal: _s, onProgress: _p, ...keep } = opts ?? {};
    m.#source = source;
    m.#opts = keep;
    m.#watch(raw, devices);
    return m;
  }

  #watch(raw, devices) {
    this.#gpu = raw.device === "webgpu" ? (devices.at(-1) ?? null) : null;
    const gpu = this.#gpu;
    gpu?.lost?.then((info) => {
      if (this.#gpu !== gpu || !this.#raw) return; // replaced or disposed meanwhile
      this.#lost = { reason: info?.reason ?? "unknown", message: info?.message ?? "" };
      try {
        this.#opts?.onDeviceLost?.(this.#lost);
      } catch (e) {
        console.warn("taskloom: onDeviceLost threw", e);
      }
    });
  }

  /** Whether the model's WebGPU device was lost and the next call will reload it. */
  get deviceLost() {
    return this.#lost !== null;
  }

  /**
   * After a device loss: loads the model again from its source (device "auto" may now give the CPU;
   * "webgpu" must get a new device) and replays the adapter calls made since the load. A failure
   * is a DEVICE error; the model stays lost, so a later call tries again (or `Model.load` anew).
   */
  async #recover() {
    if (!this.#lost) return this.#self();
    this.#recovering ??= (async () => {
      const lost = this.#lost;
      const lostGpu = this.#gpu;
      try {
        const files = await gatherModel(this.#source, this.#opts);
        const [raw, devices] = await withDevices(() => call(() => RawModel.load(files, { device: this.#opts?.device ?? "auto", tasks: this.#opts?.tasks, maxBindingBytes: this.#opts?.maxBindingBytes })));
        for (const [op, ...args] of this.#replay) call(() => raw[op](...args));
        if (!this.#raw) {
          raw.free(); // disposed while reloading
          return;
        }
        const old = this.#raw;
        this.#raw = raw;
        this.#lost = null;
        this.#watch(raw, devices);
        try {
          old.free();
          lostGpu?.destroy();
        } catch {}
        console.warn(`taskloom: the WebGPU device was lost (${lost.reason}${lost.message ? `: ${lost.message}` : ""}); model reloaded on ${raw.device}`);
      } catch (e) {
        const t = toTaskloomError(e);
        throw new TaskloomError("DEVICE", `the WebGPU device was lost (${lost.reason}) and the model could not be reloaded: ${t?.message ?? t}; load it again with Model.load`, { cause: e });
      } finally {
        this.#recovering = null;
      }
    })();
    await this.#recovering;
    return this.#self();
  }

  /** Runs `f(raw)` on a live device: recovers first, and maps a failure during a loss to DEVICE. */
  async #onDevice(f) {
    const raw = await this.#recover();
    try {
      return await f(raw);
    } catch (e) {
      if (this.#lost && !(e instanceof TaskloomError && e.code === "ABORTED")) {
        throw new TaskloomError("DEVICE", `the WebGPU device was lost during the call (${this.#lost.reason}); the next call reloads the model`, { cause: e });
      }
      throw e;
    }
  }

  /** A call that changes the model's adapters or weights: applied now, replayed after a device loss. */
  #change(op, ...args) {
    const raw = this.#self();
    if (!this.#lost) call(() => raw[op](...args));
    // A copy: the caller may change its mix object afterwards.
    if (this.#gpu) this.#replay.push([op, ...args.map((a) => (op === "addAdapter" ? a : structuredClone(a)))]);
  }

  /**
   * Multi-task models: runs `opts.tasks` (default: every loaded task) on one input — text, or an
   * array of pixel values — and resolves to `{ [task]: output }`.
   */
  async run(input, opts = {}) {
    this.#self();
    if (typeof input !== "string" && !Array.isArray(input) && !ArrayBuffer.isView(input)) {
      throw new TaskloomError("BAD_INPUT", `input must be a string (text models) or an array of pixel values (image models), got ${describe(input)}`);
    }
    const x = typeof input === "string" ? input : Array.from(input);
    return await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "run()", () => raw.run(x, { tasks: opts?.tasks }))));
  }

  /** Multi-task models: tokens per expert of the last `run`: `{ task: { block: counts } }`. */
  routingStats() {
    return call(() => this.#self().routingStats());
  }

  /** Multi-task models: bytes on the device for the loaded tasks. */
  residentBytes() {
    return call(() => this.#self().residentBytes());
  }

  /** Multi-task models: bytes the same model loaded for every task would hold. */
  allTasksBytes() {
    return call(() => this.#self().allTasksBytes());
  }

  /** Multi-task models: the loaded tasks. */
  get tasks() {
    return Array.from(this.#self().tasks());
  }

  #self() {
    if (!this.#raw) throw new TaskloomError("BAD_INPUT", "model was disposed");
    return this.#raw;
  }

  /** "encoder" or "decoder". */
  get kind() {
    return this.#self().kind;
  }

  /** "webgpu" or "cpu". */
  get device() {
    return this.#self().device;
  }

  /** Token ids of `text`. */
  encode(text) {
    return Array.from(call(() => this.#self().encode(text)));
  }

  /**
   * Registers a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) under
   * `name`, from a URL base, files, a directory handle or an object of buffers. The base model is
   * not reloaded. `opts.onProgress` as for `Model.load`.
   */
  async addAdapter(name, source, opts = {}) {
    this.#self();
    const signal = call(() => signalOf(opts));
    const files = await call(() => gatherFiles(source, totalProgress(opts?.onProgress), ADAPTER_FILES, signal));
    call(() => checkAbort(signal, "addAdapter()"));
    await this.#recover();
    this.#change("addAdapter", String(name), files);
  }

  /**
   * Combines registered adapters into a new adapter `name` (PEFT `add_weighted_adapter`, like
   * `taskloom lora combine`): `opts.adapters` `{ a: 0.6, b: 0.4 }`, `opts.combination` (linear, cat,
   * svd, ties, dare_linear, dare_ties, magnitude_prune, or their `_svd` forms), `density`,
   * `svdRank`, `seed` (DARE), `majoritySign`. Resolves to `{ r, modules, ms }`.
   */
  async combineAdapters(name, opts = {}) {
    this.#self();
    const signal = call(() => signalOf(opts));
    call(() => checkAbort(signal, "combineAdapters()"));
    const { signal: _s, ...rest } = opts ?? {};
    await this.#recover();
    const t0 = performance.now();
    const info = call(() => this.#self().combineAdapters(String(name), rest));
    if (this.#gpu) this.#replay.push(["combineAdapters", String(name), structuredClone(rest)]);
    return { ...info, ms: performance.now() - t0 };
  }

  /** Unregisters an adapter (unfusing it first if it is fused). */
  removeAdapter(name) {
    this.#change("removeAdapter", String(name));
  }

  /** The default adapter mix for requests that name none: `{ a: 0.7, b: 0.3 }`, a name, or `{}`. */
  setAdapters(mix) {
    this.#change("setAdapters", mix ?? {});
  }

  /** Names of the registered adapters. */
  get adapters() {
    return Array.from(this.#self().adapters());
  }

  /** Bakes the default mix into the weights (W + s·B·A); requests for other mixes still work. */
  fuse() {
    this.#change("fuse");
  }

  /** Restores the original weights exactly. */
  unfuse() {
    this.#change("unfuse");
  }

  /** Class names of a sequence-classification model. */
  get labels() {
    return Array.from(this.#self().labels());
  }

  /**
   * Sequence classification: `{ label, score, logits }` per text (an array for an array).
   * `opts.adapter`: a name or `{ name: weight }` for this request (its saved classifier is used).
   */
  async classify(text, opts = {}) {
    this.#self();
    const many = Array.isArray(text);
    const out = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "classify()", () => raw.classify(many ? text : [text], { adapter: opts?.adapter }))));
    const labels = this.labels;
    const res = out.map((logits) => {
      const m = Math.max(...logits);
      const e = Array.from(logits, (x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      let best = 0;
      for (let i = 1; i < e.length; i++) if (e[i] > e[best]) best = i;
      return { label: labels[best], score: e[best] / z, logits };
    });
    return many ? res : res[0];
  }

  /**
   * Logits for every position of `ids` (decoders): `{ dims: [T, V], data: Float32Array }`.
   * `opts.adapter`: a name or `{ name: weight }` for this request.
   */
  async logits(ids, opts = {}) {
    this.#self();
    const data = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "logits()", () => raw.logits(Uint32Array.from(ids), { adapter: opts?.adapter }))));
    const t = ids.length;
    return { dims: [t, t ? data.length / t : 0], data };
  }

  /**
   * Pooled embedding(s): a Float32Array for a string, an array of them for an array of strings.
   * `opts.adapter`: a name or `{ name: weight }` for this request.
   */
  async embed(text, opts = {}) {
    const many = Array.isArray(text);
    this.#self();
    const out = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "embed()", () => raw.embed(many ? text : [text], { adapter: opts?.adapter }))));
    return many ? out : out[0];
  }

  /**
   * Streams generated tokens as `{ id, text }`. `opts`: maxTokens, temperature, topK, topP,
   * repetitionPenalty, seed, chat (wrap the prompt in the chat template), adapter (a name or
   * `{ name: weight }` for this request), signal (AbortSignal).
   */
  async *generate(prompt, opts = {}) {
    this.#self();
    const raw = await this.#recover();
    const queue = [];
    let wake = null;
    let done = false;
    let failure = null;
    let stopped = false;
    const signal = opts?.signal;
    const onToken = (id, text) => {
      queue.push({ id, text });
      wake?.();
      return !stopped && !signal?.aborted;
    };
    const { signal: _s, ...rawOpts } = opts ?? {};
    call(() => raw.generate(String(prompt), rawOpts, onToken)).then(
      () => {
        done = true;
        wake?.();
      },
      (e) => {
        failure = e;
        done = true;
        wake?.();
      },
    );
    try {
      for (;;) {
        if (queue.length) {
          yield queue.shift();
          continue;
        }
        if (done) break;
        await new Promise((r) => (wake = r));
        wake = null;
      }
      if (failure) throw failure;
      if (signal?.aborted) throw new TaskloomError("ABORTED", "generation was aborted");
    } finally {
      stopped = true;
    }
  }

  /**
   * Frees the model now. On WebGPU this also destroys the model's GPUDevice (each model has its
   * own): wgpu's WebGPU backend never destroys buffers itself, leaving GPU memory to the garbage
   * collector, so without this repeated load/dispose grows GPU memory.
   */
  dispose() {
    const gpu = this.#gpu;
    this.#gpu = null; // before destroy(): the `lost` handler ignores a device that is no longer ours
    this.#raw?.free();
    this.#raw = null;
    try {
      gpu?.destroy();
    } catch {}
    this.#lost = null;
    this.#replay = [];
    this.#source = null;
  }
}

export { merge } from "./merge.js";
