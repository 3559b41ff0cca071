// The wasm module handle: loads the WebAssembly once (`init`) and keeps its memory for
// `wasmMemoryBytes`. Imports only ./errors.js and the wasm-bindgen output.

import initWasm from "./dist/taskloom_web.js";
import { TaskloomError } from "./errors.js";

let ready = null;
let wasmMemory = null;

/**
 * Bytes of the WebAssembly heap (0 before `init`). A wasm heap never shrinks, so this is the high-water
 * mark of the CPU path's memory: repeated load/dispose of a model must leave it flat.
 */
export function wasmMemoryBytes() {
  return wasmMemory ? wasmMemory.buffer.byteLength : 0;
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
