// Loading a model's files: URL (with progress and the weights cache), File / FileList, a directory
// handle or an object of buffers; multi-task folders (taskloom.json) fetch what their spec names.

import { TaskloomError, call, checkAbort, describe, signalOf } from "./errors.js";
import { cachedFetch } from "./cache.js";

// Files a Hugging Face folder may hold that a model reads (required ones first).
const HF_FILES = ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json", "modules.json", "1_Pooling/config.json"];
const OPTIONAL = new Set(["tokenizer_config.json", "modules.json", "1_Pooling/config.json"]);
// Files of a PEFT adapter folder.
export const ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"];

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

export async function gatherFiles(source, onProgress, wanted = HF_FILES, signal) {
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
export async function gatherModel(source, opts) {
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
export function totalProgress(onProgress) {
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
