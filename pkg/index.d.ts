// Types for the `taskloom` npm package (the ESM facade in index.js).

/** Where a runtime runs: "auto" picks WebGPU when the browser offers an adapter, else the CPU. */
export type DeviceOption = "auto" | "webgpu" | "cpu";

/** Stable error codes, shared with the native CLI. INTERNAL means a bug in taskloom (a crash). */
export type ErrorCode = "BAD_INPUT" | "UNSUPPORTED" | "DEVICE" | "OUT_OF_MEMORY" | "IO" | "ABORTED" | "INTERNAL";

/**
 * Every failure taskloom reports. Switch on `code`; `message` is for people. `new TaskloomError(code,
 * message)` returns the subclass for `code` (BadInputError for BAD_INPUT, ...).
 */
export class TaskloomError extends Error {
  readonly name: "TaskloomError";
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
}
/** BAD_INPUT: a wrong or corrupt file, an unknown task or adapter, a bad option. */
export class BadInputError extends TaskloomError {}
/** UNSUPPORTED: the model or device cannot do this. */
export class UnsupportedError extends TaskloomError {}
/** DEVICE: no WebGPU adapter, or a refused or lost device. */
export class DeviceError extends TaskloomError {}
/** OUT_OF_MEMORY: a buffer above the device's limits, or a failed allocation. */
export class OutOfMemoryError extends TaskloomError {}
/** ABORTED: the call's `signal` was aborted. */
export class AbortedError extends TaskloomError {}
/** IO: a download or a file read failed. */
export class IoError extends TaskloomError {}

/** Options every long call accepts. */
export interface Abortable {
  /** Aborting rejects the call with code ABORTED (a wasm step already running finishes first). */
  signal?: AbortSignal;
}

/** WebGPU device options (ignored on the CPU path, which never splits). */
export interface DeviceLimitOptions {
  /**
   * Lowers the bytes one storage binding may hold below the adapter's
   * `maxStorageBufferBindingSize` (never raises it). Weights above the limit in force are split into
   * row blocks at load; for tests, or devices that report more than they handle well. A whole
   * number >= 4, else BAD_INPUT.
   */
  maxBindingBytes?: number;
}

export interface RuntimeOptions extends DeviceLimitOptions {
  /** Default "auto". "webgpu" rejects with code DEVICE when there is no adapter (or no navigator.gpu). */
  device?: DeviceOption;
}

export interface MatmulOptions {
  /** Multiply by bᵀ: b is given as [.., N, K]. Default false. */
  transB?: boolean;
}

/** Facts about the device a runtime uses. */
export interface DeviceInfo {
  /** "gpu" or "cpu". */
  kind: "gpu" | "cpu";
  /** Adapter name (e.g. "SwiftShader Device"), or the CPU architecture. */
  name: string;
  /** "webgpu" in the browser, "cpu" for the CPU path. */
  backend: string;
  /** "DiscreteGpu", "IntegratedGpu", "Cpu" (software adapters), ... */
  device_type: string;
  /**
   * Bytes one storage binding may hold: the adapter's `maxStorageBufferBindingSize`, lowered by
   * `maxBindingBytes` when given. Weights above it are split into row blocks at load.
   * Number.MAX_SAFE_INTEGER means no limit (the CPU).
   */
  max_storage_buffer_binding_size: number;
  /** Bytes; Number.MAX_SAFE_INTEGER means no limit. */
  max_buffer_size: number;
  max_compute_workgroup_storage_size: number;
  max_compute_invocations_per_workgroup: number;
  /** The adapter offers `shader-f16`. */
  shader_f16: boolean;
  /** The adapter offers `subgroups`. */
  subgroups: boolean;
  /** CPU worker threads (1 in wasm); 0 for a GPU. */
  threads: number;
}

/** A tensor on its runtime's device. */
export class Tensor {
  private constructor();
  /** The shape, outermost dimension first. */
  readonly dims: number[];
  readonly dtype: "f32" | "f16" | "bf16" | "u32" | "i32";
  /** Downloads the elements (f32 tensors). */
  read(): Promise<Float32Array>;
  /** Frees the device memory now. Using the tensor afterwards throws BAD_INPUT. */
  dispose(): void;
}

/** A runtime bound to one device. */
export class Runtime {
  private constructor();
  /** Loads the wasm module if needed and opens the device. */
  static create(opts?: RuntimeOptions): Promise<Runtime>;
  /** Where this runtime's tensors live and ops run. */
  readonly device: "webgpu" | "cpu";
  info(): DeviceInfo;
  /** Copies row-major f32 data of shape `dims` to the device; BAD_INPUT when the sizes disagree. */
  upload(data: Float32Array | ArrayLike<number>, dims: number[]): Tensor;
  /** a [.., M, K] @ b [.., K, N] (or bᵀ with transB) -> [.., M, N]. */
  matmul(a: Tensor, b: Tensor, opts?: MatmulOptions): Tensor;
  /** Same as `t.read()`, for a tensor made by this runtime. */
  read(t: Tensor): Promise<Float32Array>;
  /** Frees the runtime. Tensors it made stay readable until disposed. */
  dispose(): void;
}

/**
 * Loads the WebAssembly module (once). Optional: Runtime.create calls it. `source` overrides where
 * the .wasm comes from (URL, Response, bytes or a compiled module).
 */
export function init(source?: string | URL | Request | Response | BufferSource | WebAssembly.Module): Promise<void>;

/** Per-file download progress while a model loads, with running totals over the files so far. */
export interface LoadProgress {
  file: string;
  loaded: number;
  /** 0 when the server sent no content-length. */
  total: number;
  /** Bytes of every file of this load so far. */
  allLoaded: number;
  /** Sizes of the files started so far (grows as files start). */
  allTotal: number;
}

/** Fetches a model's files without loading it: `{ path: Uint8Array }` (a ModelSource itself). */
export function fetchModelFiles(source: ModelSource, opts?: { onProgress?: (p: LoadProgress) => void; signal?: AbortSignal }): Promise<Record<string, Uint8Array>>;

/**
 * Cache API caching of fetched weights files (on by default in secure browser contexts): one entry
 * per file (base, each adapter, each expert shard), keyed by URL + the server's ETag/Last-Modified.
 * A quota error keeps the file in memory for the page instead, with a console warning.
 */
export function setCaching(on: boolean): void;
/** Deletes the weights cache. */
export function clearCache(): Promise<void>;
/** Bytes of the WebAssembly heap (never shrinks: the CPU path's high-water mark); 0 before `init`. */
export function wasmMemoryBytes(): number;

export interface ModelLoadOptions extends Abortable, DeviceLimitOptions {
  device?: "auto" | "webgpu" | "cpu";
  onProgress?: (p: LoadProgress) => void;
  /** Multi-task models: load only what these tasks need (default: all). */
  tasks?: string[];
  /** Multi-task models with an hf trunk: the trunk's folder (any model source). */
  trunk?: ModelSource;
  /**
   * Called when the model's WebGPU device is lost (`GPUDevice.lost`: a driver reset, `destroy()`).
   * The model's next call reloads it from its source on a new device (or the CPU for
   * `device: "auto"`) and replays its adapter calls; see README "Device loss".
   */
  onDeviceLost?: (info: { reason: string; message: string }) => void;
}

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  seed?: number;
  /** Wrap the prompt in the model's chat template as one user message. */
  chat?: boolean;
  /** LoRA adapters for this request (default: the mix set by `setAdapters`). */
  adapter?: AdapterChoice;
  /** Stops generation; the iterator then throws ABORTED. */
  signal?: AbortSignal;
}

/** An adapter name (weight 1) or adapter names with weights: `{ a: 0.7, b: 0.3 }`; `{}` = the base. */
export type AdapterChoice = string | Record<string, number>;

export interface RequestOptions extends Abortable {
  /** LoRA adapters for this request (default: the mix set by `setAdapters`). */
  adapter?: AdapterChoice;
}

export interface Classification {
  label: string;
  /** Softmax probability of `label`. */
  score: number;
  logits: Float32Array;
}

/**
 * A model source: a URL (folder base or a .gguf file), picked files, a directory handle, or buffers by
 * path. Buffers are read in place, tensor by tensor (weights are never copied whole into the wasm
 * heap): keep them attached until the load resolves.
 */
export type ModelSource =
  | string
  | URL
  | FileList
  | File[]
  | { kind: "directory"; entries(): AsyncIterable<[string, unknown]> }
  | Record<string, ArrayBuffer | Uint8Array>;

export type Combination =
  | "linear" | "cat" | "svd" | "ties" | "ties_svd" | "dare_linear" | "dare_ties"
  | "dare_linear_svd" | "dare_ties_svd" | "magnitude_prune" | "magnitude_prune_svd";

export interface CombineOptions extends Abortable {
  /** Registered adapters and their weights (may be negative). */
  adapters: Record<string, number>;
  /** Default "linear". */
  combination?: Combination;
  /** Fraction kept, in (0, 1]; required by the pruning types. */
  density?: number;
  /** Rank of the `*svd` results (default: the largest input rank). */
  svdRank?: number;
  /** DARE's seed (counter-based RNG). Default 0. */
  seed?: number;
  majoritySign?: "total" | "frequency";
}

/** One task's prediction (a token-level task gives one per token). */
export interface TaskOutput {
  /** Classification: the top label, its index and its softmax probability. */
  label?: string;
  index?: number;
  score?: number;
  /** Classification: the logits; regression: the values. */
  values: number[];
  /** Classification: softmax of the logits. */
  probs?: number[];
}

export class Model {
  private constructor();
  static load(source: ModelSource, opts?: ModelLoadOptions): Promise<Model>;
  readonly kind: "encoder" | "decoder" | "multitask";
  readonly device: "webgpu" | "cpu";
  /** Multi-task models: runs `opts.tasks` (default: all loaded) on one input → `{ [task]: output }`. */
  run(input: string | ArrayLike<number>, opts?: { tasks?: string[]; signal?: AbortSignal }): Promise<Record<string, TaskOutput | TaskOutput[]>>;
  /** Multi-task models: tokens routed to each expert by the last `run`, per task and MoE block. */
  routingStats(): Record<string, Record<string, number[]>>;
  /** Multi-task models: bytes on the device for the loaded tasks. */
  residentBytes(): number;
  /** Multi-task models: bytes the model loaded for every task would hold. */
  allTasksBytes(): number;
  /** Multi-task models: the loaded tasks. */
  readonly tasks: string[];
  /** Token ids of `text` with the model's tokenizer. */
  encode(text: string): number[];
  /** Logits for every position of `ids` (decoders), from a fresh KV cache. */
  logits(ids: number[], opts?: RequestOptions): Promise<{ dims: [number, number]; data: Float32Array }>;
  /** Pooled sentence embedding(s) (encoders). */
  embed(text: string, opts?: RequestOptions): Promise<Float32Array>;
  embed(texts: string[], opts?: RequestOptions): Promise<Float32Array[]>;
  /** Sequence classification (a `*ForSequenceClassification` folder). */
  classify(text: string, opts?: RequestOptions): Promise<Classification>;
  classify(texts: string[], opts?: RequestOptions): Promise<Classification[]>;
  /** Class names of a sequence classifier. */
  readonly labels: string[];
  /** Registers a PEFT LoRA adapter folder under `name` without reloading the base. */
  addAdapter(name: string, source: ModelSource, opts?: { onProgress?: (p: LoadProgress) => void; signal?: AbortSignal }): Promise<void>;
  /**
   * Combines registered adapters into a new registered adapter `name` (PEFT add_weighted_adapter,
   * as `taskloom lora combine`).
   */
  combineAdapters(name: string, opts: CombineOptions): Promise<{ r: number; modules: number; ms: number }>;
  removeAdapter(name: string): void;
  /** The default mix for requests that name none. */
  setAdapters(mix: AdapterChoice): void;
  readonly adapters: string[];
  /** Bakes the default mix into the weights; `unfuse()` restores them exactly. */
  fuse(): void;
  unfuse(): void;
  /** Streams generated tokens (decoders). */
  generate(prompt: string, opts?: GenerateOptions): AsyncIterableIterator<{ id: number; text: string }>;
  /** True after the model's WebGPU device was lost, until the next call has reloaded it. */
  readonly deviceLost: boolean;
  /** Frees the model now; on WebGPU also destroys its GPUDevice (all of its GPU memory). */
  dispose(): void;
}

/** What `merge` did. */
export interface MergeSummary {
  tensors: number;
  bytesRead: number;
  bytesWritten: number;
  /** Files written, in order (shards, index, config, tokenizer, TALL masks). */
  files: string[];
  tallMasks: number;
  /** Peak tensor memory the merge held at once (bytes): the inputs of one tensor, its output and
   * its method's intermediates. */
  peakBytes: number;
  /** "webgpu" or "cpu". */
  device: string;
}

export interface MergeProgress {
  tensors: number;
  totalTensors: number;
  bytes: number;
  totalBytes: number;
  tensor: string;
}

/**
 * One input model of `merge`: the URL of a Hugging Face folder (`config.json`, `model.safetensors`
 * or `model.safetensors.index.json` and its shards; weights read by HTTP `Range` requests, or
 * whole once, with a console warning, from a server that ignores them), a list of `File`s (a picked
 * folder), a directory handle, or `{ path: File | Blob | ArrayBuffer | Uint8Array }` (buffers stay
 * on the JS side).
 */
export type MergeSource =
  | string
  | URL
  | File[]
  | FileList
  | { kind: "directory"; entries(): AsyncIterable<[string, unknown]> }
  | Record<string, Blob | ArrayBuffer | ArrayBufferView>;

/**
 * Runs a mergekit recipe (YAML text) on the models in `sources` (keyed by the recipe's model
 * references), tensor by tensor, on WebGPU or the CPU — the same engine and semantics as
 * `taskloom merge`. Resolves to the merged files as Blobs with a summary, or with `load: true`
 * to a loaded Model.
 *
 * Memory: each input tensor's byte range is read when that tensor is merged (`blob.slice`, an HTTP
 * `Range`, a view of the caller's buffer) and copied into the wasm heap alone; each output piece
 * is handed back to JS as it is written and the Blobs are assembled from those pieces. The wasm
 * heap so holds about one tensor × models (`summary.peakBytes`), never whole checkpoints nor the
 * merged model. Failures reject with a TaskloomError: IO for a failed read (naming the URL or
 * file), BAD_INPUT for a truncated or inconsistent file (naming the file and tensor) or a bad recipe.
 * `maxBindingBytes` lowers the WebGPU binding limit: a tensor whose merge would not fit one binding
 * merges on the CPU, and with `load: true` the merged model's weights are split to fit.
 */
export function merge(
  recipe: string,
  sources: Record<string, MergeSource>,
  opts?: { device?: "auto" | "webgpu" | "cpu"; randomSeed?: number; onProgress?: (p: MergeProgress) => void; signal?: AbortSignal; load?: false } & DeviceLimitOptions,
): Promise<{ files: Record<string, Blob>; summary: MergeSummary }>;
export function merge(
  recipe: string,
  sources: Record<string, MergeSource>,
  opts: { device?: "auto" | "webgpu" | "cpu"; randomSeed?: number; onProgress?: (p: MergeProgress) => void; signal?: AbortSignal; load: true } & DeviceLimitOptions,
): Promise<Model>;
