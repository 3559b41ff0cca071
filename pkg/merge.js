// `taskloom.merge(recipe, sources, opts)`: a mergekit recipe run in the page or in Node, tensor by
// tensor, on WebGPU or the CPU (the same engine as `taskloom merge`; semantics in the README).
//
// Memory: every source is read one tensor's byte range at a time (HTTP `Range` requests for a URL,
// `blob.slice(a, b)` for a File / Blob, a view for an ArrayBuffer the caller holds), and each output
// piece leaves the wasm heap as soon as it is written (the Blobs are assembled here), so the wasm
// heap holds about one tensor × models, never whole checkpoints nor the merged model.

import { mergeModels } from "./dist/taskloom_web.js";
import { TaskloomError } from "./errors.js";
import { init } from "./wasm.js";
import { Model } from "./model.js";

const CODES = /^(BAD_INPUT|UNSUPPORTED|DEVICE|OUT_OF_MEMORY|IO|ABORTED|INTERNAL): ([\s\S]*)$/;
const INDEX = "model.safetensors.index.json";
// The first request for a URL shard asks for this many bytes: the header length and, for most
// files, the whole header, in one round trip.
const PROBE = 1 << 16;

function checkAbort(signal) {
  if (signal?.aborted) throw new TaskloomError("ABORTED", "merge was aborted");
}

function describe(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? (v.constructor?.name ?? "object") : typeof v;
}

const isBlob = (v) => typeof Blob !== "undefined" && v instanceof Blob;

/** Bytes of `v` (ArrayBuffer, typed array, DataView) as a Uint8Array view, or null. */
function bytesView(v) {
  if (v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && v instanceof SharedArrayBuffer)) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  return null;
}

/** The shard file names of a folder: those its index lists, else every `.safetensors`, in name order. */
function shardNames(index, names, where) {
  if (index) {
    let map;
    try {
      map = JSON.parse(new TextDecoder().decode(index)).weight_map;
    } catch (e) {
      throw new TaskloomError("BAD_INPUT", `${where}/${INDEX}: ${e.message}`);
    }
    if (!map || typeof map !== "object") throw new TaskloomError("BAD_INPUT", `${where}/${INDEX}: no "weight_map" object`);
    return [...new Set(Object.values(map).map(String))].sort();
  }
  return names.filter((n) => n.endsWith(".safetensors")).sort();
}

/** A model given as files in hand: `{ path: File | Blob | ArrayBuffer | typed array }`. */
async function localSource(model, entries, guard) {
  const file = (rel) => entries.get(rel);
  const whole = async (v) => (isBlob(v) ? new Uint8Array(await v.arrayBuffer()) : bytesView(v));
  for (const [rel, v] of entries) {
    if (!isBlob(v) && !bytesView(v)) throw new TaskloomError("BAD_INPUT", `model '${model}': file ${rel} is ${describe(v)}, not a File, Blob, ArrayBuffer or Uint8Array`);
  }
  const index = entries.has(INDEX) ? await whole(file(INDEX)) : null;
  const shards = shardNames(index, [...entries.keys()], model).map((rel) => {
    const v = file(rel);
    const name = `${model}/${rel}`;
    if (v === undefined) throw new TaskloomError("BAD_INPUT", `model '${model}': ${INDEX} names ${rel}, which is not among the files given`);
    if (isBlob(v)) return { name, size: v.size, read: guard(async (a, b) => new Uint8Array(await v.slice(a, b).arrayBuffer())) };
    const u8 = bytesView(v);
    return { name, size: u8.byteLength, read: guard(async (a, b) => u8.subarray(a, b)) };
  });
  return { name: model, readFile: guard(async (rel) => (entries.has(rel) ? whole(file(rel)) : null)), shards };
}

/** `fetch`, with network failures and aborts as TaskloomErrors. */
async function get(url, signal, headers) {
  checkAbort(signal);
  try {
    return await fetch(url, { signal, headers });
  } catch (e) {
    if (e?.name === "AbortError" || signal?.aborted) throw new TaskloomError("ABORTED", `reading ${url} was aborted`, { cause: e });
    throw new TaskloomError("IO", `${url}: ${e?.message ?? e}`, { cause: e });
  }
}

async function body(res, url, signal) {
  try {
    return new Uint8Array(await res.arrayBuffer());
  } catch (e) {
    if (e?.name === "AbortError" || signal?.aborted) throw new TaskloomError("ABORTED", `reading ${url} was aborted`, { cause: e });
    throw new TaskloomError("IO", `${url}: ${e?.message ?? e}`, { cause: e });
  }
}

/** One safetensors file at `url`, read by HTTP `Range` requests (whole, once, if the server ignores them). */
async function urlShard(url, signal, guard) {
  let res = await get(url, signal, { Range: `bytes=0-${PROBE - 1}` });
  let whole = null;
  let prefix = null;
  let size;
  if (res.status === 206) {
    prefix = await body(res, url, signal);
    const total = /\/(\d+)\s*$/.exec(res.headers.get("content-range") ?? "");
    if (total) size = Number(total[1]);
    else if (prefix.byteLength < PROBE) size = prefix.byteLength; // the whole file fit in the probe
    else {
      const head = await get(url, signal, { Range: "bytes=0-0" });
      const t = /\/(\d+)\s*$/.exec(head.headers.get("content-range") ?? "");
      if (!t) throw new TaskloomError("IO", `${url}: the server answers Range requests without a Content-Range size`);
      size = Number(t[1]);
    }
  } else if (res.status === 416) {
    // Shorter than the probe range asks for (an empty file): read it whole.
    res = await get(url, signal);
  }
  if (!res.ok) throw new TaskloomError("IO", `${url}: HTTP ${res.status}`);
  if (res.status === 200) {
    console.warn(`taskloom.merge: ${url}: the server ignored the Range request (HTTP 200); reading the whole file once`);
    whole = await body(res, url, signal);
    size = whole.byteLength;
  }
  const read = async (a, b) => {
    if (whole) return whole.subarray(a, b);
    if (b <= prefix.byteLength) return prefix.subarray(a, b);
    const r = await get(url, signal, { Range: `bytes=${a}-${b - 1}` });
    if (r.status === 200) {
      console.warn(`taskloom.merge: ${url}: the server stopped honouring Range requests; reading the whole file once`);
      whole = await body(r, url, signal);
      return whole.subarray(a, b);
    }
    if (r.status !== 206) throw new TaskloomError("IO", `${url}: bytes ${a}-${b - 1}: HTTP ${r.status}`);
    return body(r, url, signal);
  };
  return { name: url, size, read: guard(read) };
}

/** A model at a URL (an HF folder): small files fetched whole, shards read by ranges. */
async function urlSource(model, base, signal, guard) {
  const root = new URL(base.endsWith("/") ? base : base + "/", globalThis.location?.href);
  const readFile = async (rel) => {
    const url = new URL(rel, root).href;
    const res = await get(url, signal);
    if (res.status === 404) return null;
    if (!res.ok) throw new TaskloomError("IO", `${url}: HTTP ${res.status}`);
    return body(res, url, signal);
  };
  const index = await guard(readFile)(INDEX);
  const names = shardNames(index, ["model.safetensors"], root.href.replace(/\/$/, ""));
  const shards = [];
  for (const n of names) shards.push(await urlShard(new URL(n, root).href, signal, guard));
  return { name: root.href, readFile: guard(readFile), shards };
}

/** Files of a picked folder (`webkitRelativePath` below its top folder) or a directory handle, by path. */
async function fileEntries(source) {
  const entries = new Map();
  if (typeof FileList !== "undefined" && source instanceof FileList) source = Array.from(source);
  if (Array.isArray(source)) {
    for (const f of source) {
      if (!isBlob(f)) throw new TaskloomError("BAD_INPUT", `a list of model files must hold File objects, got ${describe(f)}`);
      const rel = (f.webkitRelativePath || f.name || "").split("/");
      entries.set(rel.length > 1 ? rel.slice(1).join("/") : rel[0], f);
    }
    return entries;
  }
  const walk = async (dir, prefix) => {
    for await (const [name, h] of dir.entries()) {
      if (h.kind === "directory") await walk(h, `${prefix}${name}/`);
      else entries.set(prefix + name, await h.getFile()); // a File: nothing is read yet
    }
  };
  await walk(source, "");
  return entries;
}

async function openSource(model, src, signal, guard) {
  if (typeof src === "string" || src instanceof URL) return urlSource(model, String(src), signal, guard);
  if (Array.isArray(src) || (typeof FileList !== "undefined" && src instanceof FileList) || (src && typeof src.entries === "function" && src.kind === "directory")) {
    return localSource(model, await fileEntries(src), guard);
  }
  if (src && typeof src === "object" && !isBlob(src) && !bytesView(src)) return localSource(model, new Map(Object.entries(src)), guard);
  throw new TaskloomError("BAD_INPUT", `model '${model}': a source must be a URL, a list of Files, a directory handle or { path: File | Blob | ArrayBuffer | Uint8Array }, got ${describe(src)}`);
}

/**
 * Merges the models of a mergekit `recipe` (YAML text). `sources`: `{ [model reference in the
 * recipe]: source }`, each the URL of an HF folder (config.json, model.safetensors or
 * model.safetensors.index.json + shards; read by HTTP Range requests), a list of Files (a picked
 * folder), a directory handle, or `{ path: File | Blob | ArrayBuffer | Uint8Array }`. Only one
 * tensor's bytes per model are in the wasm heap at a time. `opts`: device ("auto" | "webgpu" |
 * "cpu"), maxBindingBytes (lowers the WebGPU binding limit, as for `Model.load`: a tensor whose merge
 * would not fit one binding merges on the CPU; with `load`, the merged model's weights split to fit),
 * randomSeed, onProgress (`{ tensors, totalTensors, bytes, totalBytes, tensor }` after each
 * tensor), signal, load (true: resolve to a loaded `Model` of the merged files). Resolves to
 * `{ files: { name: Blob }, summary }` (or the Model with `load`).
 */
export async function merge(recipe, sources, opts = {}) {
  if (typeof recipe !== "string") throw new TaskloomError("BAD_INPUT", "recipe must be the recipe's YAML text");
  if (!sources || typeof sources !== "object") throw new TaskloomError("BAD_INPUT", "sources must be an object { [model]: source }");
  const signal = opts.signal;
  checkAbort(signal);
  await init();
  // The first failure of a JS reader is what the caller sees (wasm only gets its message).
  let failure = null;
  const guard = (f) => async (...args) => {
    try {
      checkAbort(signal);
      return await f(...args);
    } catch (e) {
      failure ??= e instanceof TaskloomError ? e : new TaskloomError("IO", String(e?.message ?? e), { cause: e });
      throw failure;
    }
  };
  const models = {};
  for (const [name, src] of Object.entries(sources)) {
    models[name] = await openSource(name, src, signal, guard);
    checkAbort(signal);
  }
  const parts = new Map();
  const onWrite = (file, bytes) => {
    if (!parts.has(file)) parts.set(file, []);
    if (bytes.byteLength) parts.get(file).push(bytes);
  };
  let summary;
  try {
    summary = await mergeModels(recipe, models, { device: opts.device ?? "auto", randomSeed: opts.randomSeed, maxBindingBytes: opts.maxBindingBytes }, opts.onProgress ? (p) => opts.onProgress(p) : undefined, onWrite);
  } catch (e) {
    if (failure) throw failure;
    const m = e instanceof Error ? CODES.exec(e.message) : null;
    throw m ? new TaskloomError(m[1], m[2], { cause: e }) : e;
  }
  checkAbort(signal);
  if (opts.load) {
    const files = {};
    for (const [name, ps] of parts) {
      const u8 = new Uint8Array(ps.reduce((n, p) => n + p.byteLength, 0));
      let o = 0;
      for (const p of ps.splice(0)) {
        u8.set(p, o);
        o += p.byteLength;
      }
      files[name] = u8;
    }
    return Model.load(files, { device: opts.device ?? "auto", maxBindingBytes: opts.maxBindingBytes, signal });
  }
  const blobs = {};
  for (const [name, ps] of parts) blobs[name] = new Blob(ps);
  return { files: blobs, summary };
}
