// Types for the `taskloom` npm package (the ESM facade in index.js).

/** Where a runtime runs: "auto" picks WebGPU when the browser offers an adapter, else the CPU. */
export type DeviceOption = "auto" | "webgpu" | "cpu";

/** Stable error codes, shared with the native CLI. INTERNAL means a bug in taskloom (a crash). */
export type ErrorCode = "BAD_INPUT" | "UNSUPPORTED" | "DEVICE" | "OUT_OF_MEMORY" | "IO" | "ABORTED" | "INTERNAL";

/** Every failure taskloom reports. Switch on `code`; `message` is for people. */
export class TaskloomError extends Error {
  readonly name: "TaskloomError";
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
}

export interface RuntimeOptions {
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
  /** Bytes; Number.MAX_SAFE_INTEGER means no limit. */
  max_storage_buffer_binding_size: number;
  /** Bytes; Number.MAX_SAFE_INTEGER means no limit. */
  max_buffer_size: number;
  max_compute_workgroup_storage_size: number;
  max_compute_invocations_per_workgroup: number;
  shader_f16: boolean;
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

/** Per-file download progress while a model loads. */
export interface LoadProgress {
  file: string;
  loaded: number;
  /** 0 when the server sent no content-length. */
  total: number;
}

export interface ModelLoadOptions {
  device?: "auto" | "webgpu" | "cpu";
  onProgress?: (p: LoadProgress) => void;
  /** Multi-task models: load only what these tasks need (default: all). */
  tasks?: string[];
  /** Multi-task models with an hf trunk: the trunk's folder (any model source). */
  trunk?: ModelSource;
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

export interface RequestOptions {
  /** LoRA adapters for this request (default: the mix set by `setAdapters`). */
  adapter?: AdapterChoice;
}

export interface Classification {
  label: string;
  /** Softmax probability of `label`. */
  score: number;
  logits: Float32Array;
}

/** A model source: a URL (folder base or a .gguf file), picked files, a directory handle, or buffers by path. */
export type ModelSource =
  | string
  | URL
  | FileList
  | File[]
  | { kind: "directory"; entries(): AsyncIterable<[string, unknown]> }
  | Record<string, ArrayBuffer | Uint8Array>;

/** A Hugging Face encoder (BERT family) or Llama-family decoder, or a GGUF file. */
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
  run(input: string | ArrayLike<number>, opts?: { tasks?: string[] }): Promise<Record<string, TaskOutput | TaskOutput[]>>;
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
  addAdapter(name: string, source: ModelSource, opts?: { onProgress?: (p: LoadProgress) => void }): Promise<void>;
  removeAdapter(name: string): void;
  /** The default mix for requests that name none. */
  setAdapters(mix: AdapterChoice): void;
  readonly adapters: string[];
  /** Bakes the default mix into the weights; `unfuse()` restores them exactly. */
  fuse(): void;
  unfuse(): void;
  /** Streams generated tokens (decoders). */
  generate(prompt: string, opts?: GenerateOptions): AsyncIterableIterator<{ id: number; text: string }>;
  dispose(): void;
}
