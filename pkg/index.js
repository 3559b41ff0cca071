// The `taskloom` npm package: an ESM facade over the wasm-bindgen output in ./dist/.
//
// Why a facade: the raw bindings report failures as `Error("CODE: message")` (JsError carries no
// properties); this layer turns them into `TaskloomError` with a stable `.code`, loads the .wasm in
// both the browser (fetch) and Node (file read), guards use-after-dispose, and honours `signal`
// (an AbortSignal) on every long call: it is checked between steps and passed to `fetch`, and an
// aborted call rejects with code ABORTED (a wasm call already running finishes first; its result
// is dropped and a loaded model is disposed).
//
// The public API; the implementation is split by concern: errors.js (TaskloomError, call and
// signal plumbing), wasm.js (the wasm module handle: init, wasmMemoryBytes), device-loss.js (which
// GPUDevice a model got), runtime.js (Runtime, Tensor), load.js (URL / File / folder loading with
// progress), cache.js (the Cache API weights cache), model.js (Model) and merge.js (merge).

export { TaskloomError, BadInputError, UnsupportedError, DeviceError, OutOfMemoryError, AbortedError, IoError } from "./errors.js";
export { init, wasmMemoryBytes } from "./wasm.js";
export { Tensor, Runtime } from "./runtime.js";
export { fetchModelFiles } from "./load.js";
export { setCaching, clearCache } from "./cache.js";
export { Model } from "./model.js";
export { merge } from "./merge.js";
