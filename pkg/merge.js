// `taskloom.merge(recipe, sources, opts)`: a mergekit recipe run in the page or in Node, tensor by
// tensor, on WebGPU or the CPU (the same engine as `taskloom merge`; semantics in the README).

import { mergeModels } from "./dist/taskloom_web.js";
import { init, Model, TaskloomError, fetchModelFiles } from "./index.js";

const CODES = /^(BAD_INPUT|UNSUPPORTED|DEVICE|OUT_OF_MEMORY|IO|ABORTED|INTERNAL): ([\s\S]*)$/;

function checkAbort(signal) {
  if (signal?.aborted) throw new TaskloomError("ABORTED", "merge was aborted");
}

/**
 * Merges the models of a mergekit `recipe` (YAML text). `sources`: `{ [model reference in the
 * recipe]: source }`, each a URL base (an HF folder), files, a directory handle or `{ path:
 * ArrayBuffer | Uint8Array }`. `opts`: device ("auto" | "webgpu" | "cpu"), randomSeed, onProgress
 * (`{ tensors, totalTensors, bytes, totalBytes, tensor }` after each tensor, and the fetch
 * progress of the sources), signal, load (true: resolve to a loaded `Model` of the merged files).
 * Resolves to `{ files: { name: Blob }, summary }` (or the Model with `load`).
 */
export async function merge(recipe, sources, opts = {}) {
  if (typeof recipe !== "string") throw new TaskloomError("BAD_INPUT", "recipe must be the recipe's YAML text");
  if (!sources || typeof sources !== "object") throw new TaskloomError("BAD_INPUT", "sources must be an object { [model]: source }");
  const signal = opts.signal;
  checkAbort(signal);
  await init();
  const files = {};
  for (const [name, src] of Object.entries(sources)) {
    files[name] = await fetchModelFiles(src, { signal });
    checkAbort(signal);
  }
  let out;
  try {
    out = await mergeModels(recipe, files, { device: opts.device ?? "auto", randomSeed: opts.randomSeed }, opts.onProgress ? (p) => opts.onProgress(p) : undefined);
  } catch (e) {
    const m = e instanceof Error ? CODES.exec(e.message) : null;
    throw m ? new TaskloomError(m[1], m[2], { cause: e }) : e;
  }
  checkAbort(signal);
  if (opts.load) return Model.load(out.files, { device: opts.device ?? "auto", signal });
  const blobs = {};
  for (const [name, bytes] of Object.entries(out.files)) blobs[name] = new Blob([bytes]);
  return { files: blobs, summary: out.summary };
}
